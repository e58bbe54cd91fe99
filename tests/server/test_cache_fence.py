"""The value cache's fence (api_server/fence.py) on a database of its own: changes heard from notices,
changes a writer sent no notice for (the previous release's, during a rolling upgrade) read from the
outbox, and a floor that moves up so that an entry older than the window is never trusted again.
The end-to-end case (Redis going back to an older state under two real replicas) is in
tests/server/test_read_your_writes.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiopg
import pytest
from support import eventually

from api_server import fence as fence_module
from api_server.fence import CacheFence
from shared.runtime.supervisor import cancel_and_wait
from shared.sql import changelog as changelog_sql


@pytest.fixture
async def db(private_db: str) -> AsyncIterator[aiopg.Pool]:
    async with aiopg.create_pool(private_db, minsize=1, maxsize=2) as pool:
        yield pool


@pytest.fixture
async def fence(private_db: str, db: aiopg.Pool) -> AsyncIterator[CacheFence]:
    follower = CacheFence()
    task = asyncio.create_task(follower.run(private_db))
    try:
        await eventually(lambda: follower.trusted, 5, "the fence catching up", interval=0.01)
        yield follower
    finally:
        await cancel_and_wait(task)


async def change(pool: aiopg.Pool, *keys: str, notice: bool = True) -> int:
    """Commit a change of each key as the write statement does (revisions from the head, an outbox
    row each), with its notice, or without one as the previous release's writers do; its last revision."""
    async with pool.acquire() as conn, conn.cursor() as cur, cur.begin():
        await cur.execute("UPDATE relay_state SET head = head + %s RETURNING head", (len(keys),))
        (head,) = await cur.fetchone()
        first = head - len(keys) + 1
        for offset, key in enumerate(keys):
            await cur.execute(
                "INSERT INTO outbox (key, version, event, at, revision) VALUES (%s, 1, 'update', now(), %s)",
                (key, first + offset),
            )
        if notice:
            words = [word for offset, key in enumerate(keys) for word in (str(first + offset), key)]
            await cur.execute("SELECT pg_notify(%s, %s)", (changelog_sql.CHANGES_CHANNEL, " ".join(words)))
    return int(head)


async def test_a_change_heard_fences_older_states_of_that_key_only(fence: CacheFence, db: aiopg.Pool) -> None:
    before = fence.heard
    assert fence.admits("a.x", before) and fence.admits("a.y", before)
    revision = await change(db, "a.x")
    await fence.wait_heard(revision, 5.0)
    assert fence.heard == revision
    assert not fence.admits("a.x", before)  # an entry from before the change (e.g. restored by Redis)
    assert fence.admits("a.x", revision)  # the state the change left, or a fill after it
    assert fence.admits("a.y", before)  # other keys keep their entries


async def test_a_change_sent_without_a_notice_is_read_from_the_outbox(fence: CacheFence, db: aiopg.Pool) -> None:
    before = fence.heard
    silent = await change(db, "b.old-writer", notice=False)
    loud = await change(db, "b.new-writer", "b.other")
    # The notice skips a revision: the follower trusts nothing until it has read the one it missed.
    await fence.wait_heard(loud, 5.0)
    assert fence.heard == loud and fence.trusted
    assert not fence.admits("b.old-writer", before)
    assert fence.admits("b.old-writer", silent)
    assert not fence.admits("b.other", silent)


async def test_without_any_notice_the_poll_finds_the_change(fence: CacheFence, db: aiopg.Pool) -> None:
    before = fence.heard
    silent = await change(db, "c.quiet", notice=False)
    await eventually(
        lambda: fence.heard >= silent, fence_module.POLL_SECONDS * 5, "the poll reading the change", interval=0.01
    )
    assert not fence.admits("c.quiet", before)


async def test_the_floor_trails_the_head_so_an_entry_older_than_the_window_is_read_again(
    private_db: str, db: aiopg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fence_module, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(fence_module, "FLOOR_STEP_SECONDS", 0.05)
    monkeypatch.setattr(fence_module, "WINDOW_SECONDS", 0.3)
    follower = CacheFence()
    task = asyncio.create_task(follower.run(private_db))
    try:
        await eventually(lambda: follower.trusted, 5, "the fence catching up", interval=0.01)
        old = follower.heard
        unrelated = await change(db, "d.busy")
        await follower.wait_heard(unrelated, 5.0)
        assert follower.admits("d.idle", old)  # within the window: no change of d.idle heard
        await eventually(lambda: follower.floor >= unrelated, 5, "the floor moving up", interval=0.01)
        assert not follower.admits("d.idle", old)  # older than anything remembered: read it again
        assert follower.admits("d.idle", unrelated)
        assert "d.busy" not in follower._latest  # forgotten below the floor: memory stays bounded
    finally:
        await cancel_and_wait(task)


async def test_the_write_statement_tells_which_key_changed_at_which_revision(
    client: Any, token: Callable[..., str], pg_server: Any, unique_prefix: str
) -> None:
    """The notices come from the real write path."""
    admin = {"Authorization": f"Bearer {token('admin-user')}"}
    key = f"{unique_prefix}.told"
    async with aiopg.connect(pg_server.url) as conn:
        async with conn.cursor() as cur:
            await cur.execute(f"LISTEN {changelog_sql.CHANGES_CHANNEL}")
        resp = await client.put(f"/keys/{key}", json={"value": 1}, headers=admin)
        assert resp.status == 201, await resp.text()
        revision = (await resp.json())["revision"]
        heard: list[str] = []
        while not any(key in payload for payload in heard):
            heard.append((await asyncio.wait_for(conn.notifies.get(), 5)).payload)
    assert f"{revision} {key}" in heard


async def test_a_batch_of_many_changes_is_told_in_order_in_notices_under_the_size_limit(
    client: Any, token: Callable[..., str], pg_server: Any, unique_prefix: str
) -> None:
    admin = {"Authorization": f"Bearer {token('admin-user')}"}
    keys = [f"{unique_prefix}.{'x' * 200}.{n:03d}" for n in range(60)]  # long keys, batched together
    async with aiopg.connect(pg_server.url) as conn:
        async with conn.cursor() as cur:
            await cur.execute(f"LISTEN {changelog_sql.CHANGES_CHANNEL}")
        answers = await asyncio.gather(*(client.put(f"/keys/{k}", json={"value": 1}, headers=admin) for k in keys))
        revisions = {k: (await resp.json())["revision"] for k, resp in zip(keys, answers, strict=True)}
        told: list[tuple[int, str]] = []
        while len(told) < len(keys):
            words = (await asyncio.wait_for(conn.notifies.get(), 5)).payload.split(" ")
            told += [(int(r), k) for r, k in zip(words[::2], words[1::2], strict=True) if k in revisions]
    assert told == sorted(told)  # revision order, across notices too
    assert dict((k, r) for r, k in told) == revisions
