"""Keys for the local run: a JWT signing key, the JWKS that verifies it, an encryption keyring.

They are generated once into ``.dev/keys`` (git-ignored, files mode 0600) and reused, so tokens and
encrypted values survive ``./dev/up`` restarts. Nothing here is ever committed.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

logger = logging.getLogger(__name__)

SIGNING_KEY_FILE = "signing-key.pem"
JWKS_FILE = "jwks.json"
ENCRYPTION_KEYS_FILE = "encryption-keys"


@dataclass(frozen=True)
class DevKeys:
    """Paths and values of the local run's keys."""

    signing_key_path: Path
    jwks_path: Path
    kid: str
    encryption_keys: str = field(repr=False)

    @property
    def jwks_url(self) -> str:
        """``file://`` URL of the JWKS, as ``JWKS_URL`` expects it."""
        return self.jwks_path.absolute().as_uri()


def ensure_dev_keys(directory: Path) -> DevKeys:
    """Create the dev keys in ``directory`` unless they exist; return them either way."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    key_path = directory / SIGNING_KEY_FILE
    jwks_path = directory / JWKS_FILE
    ring_path = directory / ENCRYPTION_KEYS_FILE
    if not key_path.exists():
        private = ec.generate_private_key(ec.SECP256R1())
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_private(key_path, pem)
        jwks_path.unlink(missing_ok=True)  # a new key needs a new JWKS
        logger.info("created dev signing key %s", key_path)
    private_key = _load_private(key_path)
    kid = _thumbprint(private_key.public_key())
    if not jwks_path.exists():
        _write_private(jwks_path, json.dumps({"keys": [public_jwk(private_key.public_key(), kid)]}, indent=2).encode())
    if not ring_path.exists():
        ring = "dev1:" + base64.b64encode(os.urandom(32)).decode()
        _write_private(ring_path, ring.encode() + b"\n")
        logger.info("created dev encryption keyring %s", ring_path)
    return DevKeys(
        signing_key_path=key_path,
        jwks_path=jwks_path,
        kid=kid,
        encryption_keys=ring_path.read_text().strip(),
    )


def load_dev_keys(directory: Path) -> DevKeys | None:
    """The dev keys in ``directory``, or None when ``./dev/up`` has not created them yet."""
    directory = Path(directory).absolute()
    names = (SIGNING_KEY_FILE, JWKS_FILE, ENCRYPTION_KEYS_FILE)
    if not all((directory / name).is_file() for name in names):
        return None
    return ensure_dev_keys(directory)


def mint_token(signing_key_path: Path, kid: str, username: str, ttl_seconds: int = 3600, **extra_claims: Any) -> str:
    """An ES256 JWT for ``username`` signed with the dev key; ``extra_claims`` are added as given."""
    now = int(time.time())
    claims: dict[str, Any] = {"username": username, "sub": username, "iat": now, "exp": now + ttl_seconds}
    claims.update(extra_claims)
    return jwt.encode(claims, _load_private(Path(signing_key_path)), algorithm="ES256", headers={"kid": kid})


def public_jwk(public_key: ec.EllipticCurvePublicKey, kid: str) -> dict[str, str]:
    """The JWK of a P-256 public key, marked for ES256 signatures."""
    numbers = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
        "kid": kid,
        "alg": "ES256",
        "use": "sig",
    }


def _thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 thumbprint, so the kid is stable for a given key."""
    jwk = public_jwk(public_key, "")
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(canonical.encode())
    return "dev-" + _b64url(digest.finalize())[:16]


def _load_private(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key")
    return key


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 from the first byte."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
