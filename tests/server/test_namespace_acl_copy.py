"""Each process keeps the namespace ACLs in memory (shared.security.nsacls), kept current by NOTIFY: a change
must hold for the very next read, on the replica that made it and on another one, for grants and
revocations alike (SPEC §5: ACLs are evaluated at every check)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
from support import ADMIN

Token = Callable[..., str]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _status(session: aiohttp.ClientSession, method: str, url: str, auth: dict[str, str], **extra: Any) -> int:
    async with session.request(method, url, headers=auth, **extra) as resp:
        await resp.read()
        return resp.status


async def _flip_and_read(
    session: aiohttp.ClientSession, writer: str, reader: str, token: Token, unique_prefix: str, rounds: int
) -> list[tuple[int, str, int]]:
    """Grant then revoke alice's read of a namespace through ``writer``; right after each answer, alice
    reads a key there through ``reader``. Returns the rounds that got the wrong answer."""
    admin, alice = bearer(token(ADMIN)), bearer(token(f"{unique_prefix}-alice"))
    ns, key = f"{unique_prefix}.ns", f"{unique_prefix}.ns.k"
    assert await _status(session, "PUT", f"{writer}/keys/{key}", admin, json={"value": 1}) == 201
    wrong = []
    for i in range(rounds):
        for readers, expected in (([f"{unique_prefix}-alice"], 200), ([], 403)):
            body = {"acls": {"read": readers, "write": []}}
            assert await _status(session, "PUT", f"{writer}/namespaces/{ns}", admin, json=body) in (200, 201)
            got = await _status(session, "GET", f"{reader}/keys/{key}", alice)
            if got != expected:
                wrong.append((i, "grant" if expected == 200 else "revoke", got))
    assert await _status(session, "DELETE", f"{writer}/namespaces/{ns}", admin) == 204
    assert await _status(session, "GET", f"{reader}/keys/{key}", alice) == 403  # no ACL: the creator only
    return wrong


async def test_a_namespace_acl_change_holds_for_the_next_read_on_the_same_replica(
    spawn: Callable[..., Any], token: Token, unique_prefix: str
) -> None:
    api = spawn("api_server")
    async with aiohttp.ClientSession() as session:
        assert await _flip_and_read(session, api.url, api.url, token, unique_prefix, rounds=15) == []


async def test_a_namespace_acl_change_holds_for_the_next_read_on_another_replica(
    spawn: Callable[..., Any], token: Token, unique_prefix: str
) -> None:
    one, two = spawn("api_server"), spawn("api_server")
    async with aiohttp.ClientSession() as session:
        assert await _flip_and_read(session, one.url, two.url, token, unique_prefix, rounds=15) == []
