"""Each process keeps the namespace ACLs in memory (shared.security.nsacls), kept current by NOTIFY: a change
must hold for the very next read, on the replica that made it and on another one, for grants and
revocations alike (SPEC §5: ACLs are evaluated at every check).

What is left is the notice's delivery to the other replica's listener: until it arrives, a read that
the old copy allows is served (a refusal always reads Postgres). A listener whose backend stops
answering is dropped, and its copy untrusted, within RELOAD_SECONDS + DEDICATED_CLIENT_TIMEOUT_SECONDS
(15 s)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import aiohttp
import aiopg
from support import ADMIN, eventually

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


LISTENERS = "SELECT pid FROM pg_stat_activity WHERE application_name = 'dynconfig/api_server/namespace-acls'"


async def listener_pids(pg: aiopg.Pool) -> set[int]:
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute(LISTENERS)
        return {row[0] for row in await cur.fetchall()}


async def test_a_grant_made_through_one_replica_is_honoured_by_another_that_has_not_heard_it_yet(
    spawn: Callable[..., Any], token: Token, pg: aiopg.Pool, unique_prefix: str
) -> None:
    """SPEC §5: a namespace ACL is evaluated at each check. Replica two's copy of the namespace ACLs is
    kept by NOTIFY; until the notice of a grant made through replica one reaches it, the copy is old.
    A refusal is decided on Postgres's state, the namespace ACLs included, so the grantee's write
    through two is not refused by the old copy. The notice is held back by stopping two's listener
    backend (SIGSTOP), as a loaded machine delays it (a repeated run of test_txn met it: 1 in ~15)."""
    ns, writer = f"{unique_prefix}ns", f"{unique_prefix}-writer"
    before = await listener_pids(pg)
    two = spawn("api_server")

    async def its_listener() -> set[int]:
        return await listener_pids(pg) - before

    (held,) = await eventually(its_listener, 10, "replica two's namespace-ACL listener")
    one = spawn("api_server")
    admin, grantee = bearer(token(ADMIN)), bearer(token(writer))
    os.kill(held, signal.SIGSTOP)
    try:
        async with aiohttp.ClientSession() as session:
            acls = {"acls": {"read": [writer], "write": [writer]}}
            assert await _status(session, "PUT", f"{one.url}/namespaces/{ns}", admin, json=acls) in (200, 201)
            assert await _status(session, "PUT", f"{two.url}/keys/{ns}.key", grantee, json={"value": 1}) == 201
            assert await _status(session, "GET", f"{two.url}/keys/{ns}.key", grantee) == 200
    finally:
        os.kill(held, signal.SIGCONT)
