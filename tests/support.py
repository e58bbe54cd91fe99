"""Helpers several test modules share (not fixtures: those live in conftest.py)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import time
from pathlib import Path
from typing import Any

import aiopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def write_self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, written as PEM files: (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls-cert.pem", directory / "tls-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client WebSocket frame (RFC 6455 §5.2), for raw-socket watchers."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def wait_caught_up(pg: aiopg.Pool, server: Any, timeout: float = 10.0) -> None:
    """Synchronisation only: every committed change is relayed and fanned out by the notifier ``server``
    (an aiohttp TestServer), so a watcher that connects now is not sent changes made before it."""
    from notifier.main import HUB  # late: importing the notifier is not free

    deadline = time.monotonic() + timeout
    while True:
        async with pg.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT (SELECT count(*) FROM outbox WHERE revision IS NULL), head FROM relay_state")
            pending, head = await cur.fetchone()
        if pending == 0 and server.app[HUB].last >= head:
            return
        assert time.monotonic() < deadline, "notifier did not catch up with the change log"
        await asyncio.sleep(0.01)
