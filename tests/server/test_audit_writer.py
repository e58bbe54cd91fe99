"""The read/denial audit writer (SPEC §2, §8): a ``username`` with control characters (or over 256
characters) is refused at authentication, and the writer survives any record it is given: one bad
record must not stop the auditing of everyone else's reads and denials; a stopped writer is a 503.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlencode
from uuid import uuid4

import aiopg
from aiohttp.test_utils import TestClient
from support import ADMIN, eventually

from shared.audit.writer import AUDIT, AuditRecord

Client = TestClient[Any, Any]
Token = Callable[..., str]
T = TypeVar("T")

NUL_USER = "ali\u0000ce"
BAD_USERNAMES = {
    "NUL": NUL_USER,
    "newline": "a\nb",
    "DEL": "a\u007fb",
    "257 chars": "a" * 257,
}
REPAIRED_METRIC = "dynconfig_audit_records_repaired_total"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def shared_key(client: Client, token: Token, key: str) -> None:
    """Create ``key`` as the admin, readable and writable by every authenticated caller."""
    response = await client.put(
        f"/keys/{key}", headers=bearer(token(ADMIN)), json={"value": 1, "acls": {"read": ["*"], "write": ["*"]}}
    )
    assert response.status == 201, await response.text()


# --- A. usernames with control characters -------------------------------------------------------


async def test_control_characters_and_overlong_usernames_are_401(
    client: Client, token: Token, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.names"
    await shared_key(client, token, key)

    # The boundary: 256 characters is a valid username, served as usual.
    longest = bearer(token("b" * 256))
    assert (await client.get(f"/keys/{key}", headers=longest)).status == 200
    response = await client.patch(f"/keys/{key}", headers=longest, json={"value": 2})
    assert response.status == 200, await response.text()

    answers: dict[str, tuple[int, int]] = {}
    for label, username in BAD_USERNAMES.items():
        auth = bearer(token(username))
        statuses = []
        for method, body in (("GET", None), ("PATCH", {"value": 3})):
            async with client.request(method, f"/keys/{key}", headers=auth, json=body) as response:
                statuses.append(response.status)
                if response.status == 401:
                    error = await response.json()
                    assert set(error) == {"error", "message"} and error["error"] == "Unauthorized", error
                    assert isinstance(error["message"], str) and error["message"], error
        answers[label] = (statuses[0], statuses[1])
    assert answers == {label: (401, 401) for label in BAD_USERNAMES}, "(GET, PATCH) status per username"


async def test_nul_username_does_not_stop_read_auditing(client: Client, token: Token, unique_prefix: str) -> None:
    writable = f"{unique_prefix}.shared"
    private = f"{unique_prefix}.private"
    await shared_key(client, token, writable)
    response = await client.put(f"/keys/{private}", headers=bearer(token(ADMIN)), json={"value": 1})
    assert response.status == 201, await response.text()

    # The reported abuse: a PATCH with a NUL in the username, on a key it may write (the 500 of the
    # report) and on one it may not (a denial for the batched audit writer). Test 1 covers the status.
    nul = bearer(token(NUL_USER))
    for key in (writable, private):
        await (await client.patch(f"/keys/{key}", headers=nul, json={"value": 2})).read()

    reader = f"{unique_prefix}-reader"
    response = await client.get(f"/keys/{writable}", headers=bearer(token(reader)))
    assert response.status == 200, await response.text()

    async def read_record() -> dict[str, Any] | None:
        query = urlencode({"key": writable, "actor": reader})
        response = await client.get(f"/audit?{query}", headers=bearer(token(ADMIN)))
        assert response.status == 200, await response.text()
        records: list[dict[str, Any]] = (await response.json())["records"]
        return next((r for r in records if r["action"] == "read" and r["outcome"] == "ok"), None)

    assert await eventually(read_record, 3.0, "a normal user's read audited") is not None


async def test_audit_writer_repairs_control_characters_and_keeps_writing(
    client: Client, token: Token, pg: aiopg.Pool, unique_prefix: str
) -> None:
    writer = client.app[AUDIT]
    bad_key, good_key, later_key = (f"{unique_prefix}.{name}" for name in ("bad", "good", "later"))

    def entry(actor: str, key: str) -> AuditRecord:
        return AuditRecord(actor, "read", key, "ok", f"test-{uuid4().hex}")

    async def rows(*keys: str) -> dict[str, str] | None:
        async with pg.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT key, actor FROM audit_log WHERE key = ANY(%s)", (list(keys),))
            found = {key: actor for key, actor in await cur.fetchall()}
        return found if len(found) == len(keys) else None

    writer.add(entry("bad\u0000actor", bad_key))
    writer.add(entry(f"{unique_prefix}-good", good_key))
    landed = await eventually(lambda: rows(bad_key, good_key), 3.0, "audit rows after a record with a NUL actor")
    assert landed is not None, f"audit rows after a record with a NUL actor: {await rows(bad_key, good_key)}"
    assert landed == {bad_key: "bad\\x00actor", good_key: f"{unique_prefix}-good"}

    metrics = await client.get("/metrics")
    assert metrics.status == 200
    pattern = re.compile(rf"^{REPAIRED_METRIC}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    repaired = sum(float(value) for value in pattern.findall(await metrics.text()))
    assert repaired >= 1, f"{REPAIRED_METRIC} missing or 0"

    # The writer is still running: a record added afterwards lands too.
    writer.add(entry(f"{unique_prefix}-later", later_key))
    assert await eventually(lambda: rows(later_key), 3.0, "a record added afterwards") == {
        later_key: f"{unique_prefix}-later"
    }


async def test_a_row_postgres_refuses_costs_only_itself(
    client: Client, token: Token, pg: aiopg.Pool, unique_prefix: str
) -> None:
    writer = client.app[AUDIT]
    keys = [f"{unique_prefix}.{name}" for name in ("before", "refused", "after")]

    async def landed() -> list[str] | None:
        async with pg.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT key FROM audit_log WHERE key = ANY(%s) ORDER BY id", (keys,))
            found = [key for (key,) in await cur.fetchall()]
        return found if len(found) >= 2 else None

    writer.add(AuditRecord("someone", "read", keys[0], "ok", None))
    writer.add(AuditRecord("someone", "read", keys[1], "ok", None, version=2**70))  # not a bigint
    writer.add(AuditRecord("someone", "read", keys[2], "ok", None))
    assert await eventually(landed, 3.0, "the rows around the refused one") == [keys[0], keys[2]]
    assert writer.running
    text = await (await client.get("/metrics")).text()
    assert re.search(r"^dynconfig_audit_dropped_total [1-9]", text, re.MULTILINE), "the refused row is not counted"


async def test_a_stopped_audit_writer_turns_health_503(client: Client) -> None:
    writer = client.app[AUDIT]
    assert (await client.get("/health")).status == 200
    await writer.stop()
    try:
        response = await client.get("/health")
        body = await response.json()
        assert response.status == 503, body
        assert body["error"] == "Service Unavailable" and "audit" in body["message"], body
        assert body["checks"]["audit"] == "stopped", body
    finally:
        writer.start()
    assert (await client.get("/health")).status == 200
