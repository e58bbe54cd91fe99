"""The tamper-evident audit trail: every audit row is sealed with an HMAC chained over the row before it.

Each row gets ``seq`` (1, 2, 3, … with no gap, in the order rows are appended) and
``mac = HMAC-SHA256(key, mac of seq - 1 ‖ canonical(row))`` (:func:`message`), the key named in
``mac_key``. Whoever appends takes the one-row ``audit_chain`` head ``FOR UPDATE`` inside its own
transaction (:meth:`AuditChain.link`), seals its rows after it and moves the head in the statement
that inserts them, so rows are chained in commit order: the change writer (``shared.writes``), the
batched read and denial records (``shared.audit.AuditWriter``) and namespace ACL changes alike.
Only holders of the key can make a row that verifies, so :func:`verify` finds the first row that was
altered, inserted, deleted or moved, and the head catches rows cut off the end. An attacker who can
both rewrite rows and the head and who holds the key is out of reach; one who cannot read the key but
rewrites the tail and the head together is caught only against a copy shipped elsewhere
(``python -m api_server.audit stream``).

Keys: ``AUDIT_HMAC_KEY`` (a keyring like ``ENCRYPTION_KEYS``: the first seals, all verify). Without
it, each encryption key gives one by HKDF (id ``enc.<id>``), so the trail is sealed from the start.

Lock order: ``audit_chain`` before ``relay_state`` (``shared/sql/writes.py``), never the reverse.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiopg
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .settings import Settings
from .sql import audit as sql

GENESIS = bytes(32)
#: How far around a row that does not verify :func:`verify` looks to tell what happened to it.
_WINDOW = 32
_PAGE = 5000


@dataclass(frozen=True)
class Link:
    """The chain's head: the last row's ``seq`` and ``mac`` (0 and :data:`GENESIS` when empty)."""

    seq: int
    mac: bytes


@dataclass(frozen=True)
class Entry:
    """The sealed fields of one audit row, as stored."""

    at: datetime
    actor: str | None
    action: str
    key: str | None
    version: int | None
    outcome: str
    request_id: str | None


@dataclass(frozen=True)
class Row:
    """One stored row as :func:`verify` reads it."""

    id: int
    seq: int | None
    entry: Entry
    mac: bytes | None
    mac_key: str | None

    @classmethod
    def from_db(cls, row: Sequence[Any]) -> Row:
        id_, seq, at, actor, action, key, version, outcome, request_id, mac, mac_key = row
        entry = Entry(at, actor, action, key, version, outcome, request_id)
        return cls(id_, seq, entry, bytes(mac) if mac is not None else None, mac_key)

    def describe(self) -> str:
        e = self.entry
        what = f"{e.action} of {e.key!r}" if e.key is not None else e.action
        return f"seq {self.seq} (id {self.id}, {e.at.astimezone(UTC).isoformat()}, {what} by {e.actor!r})"


def message(prev: bytes, seq: int, e: Entry) -> bytes:
    """What a row's MAC covers: the previous MAC, then the row's position and fields as compact JSON
    (``at`` in UTC to the microsecond, as Postgres stores it; ASCII only, so the bytes are fixed)."""
    fields = [seq, e.at.astimezone(UTC).isoformat(timespec="microseconds"), e.actor, e.action, e.key]
    fields += [e.version, e.outcome, e.request_id]
    return prev + json.dumps(fields, separators=(",", ":")).encode()


def seal(key: bytes, prev: bytes, seq: int, e: Entry) -> bytes:
    return hmac.new(key, message(prev, seq, e), hashlib.sha256).digest()


def derived_keys(encryption_keys: Iterable[tuple[str, bytes]]) -> tuple[tuple[str, bytes], ...]:
    """One HMAC key per encryption key (HKDF-SHA256), for a deployment without ``AUDIT_HMAC_KEY``."""
    return tuple(
        (f"enc.{key_id}", HKDF(hashes.SHA256(), 32, salt=None, info=b"dynconfig audit chain v1").derive(secret))
        for key_id, secret in encryption_keys
    )


class AuditChain:
    """Seals audit rows with the active key; knows every configured key for :func:`verify`."""

    def __init__(self, keys: Sequence[tuple[str, bytes]], also_verify: Sequence[tuple[str, bytes]] = ()) -> None:
        if not keys:
            raise ValueError("the audit chain needs at least one key")
        self.active_id, self._active = keys[0]
        #: Every key a row may have been sealed with, by id (:func:`verify`).
        self.keys: dict[str, bytes] = {**dict(also_verify), **dict(keys)}

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditChain:
        """Sealing with the first ``AUDIT_HMAC_KEY``, or without one the key derived from the active
        encryption key; verifying with all of them (rows sealed before ``AUDIT_HMAC_KEY`` was set
        carry a derived key's id)."""
        derived = derived_keys(settings.encryption_keys)
        return cls(settings.audit_hmac_keys or derived, also_verify=derived)

    async def link(self, cur: aiopg.Cursor) -> Link:
        """Lock the head for this transaction and return it (rows appended now follow it)."""
        await cur.execute(sql.CHAIN_HEAD_FOR_UPDATE)
        seq, mac = await cur.fetchone()
        return Link(seq, bytes(mac))

    def columns(self, after: Link, entries: Sequence[Entry]) -> dict[str, Any]:
        """``seq``, ``mac`` and ``mac_key`` for ``entries`` appended after ``after``, one list each, plus
        the new head (``head_seq``, ``head_mac``) — the parameters the inserting statements take."""
        seqs, macs = [], []
        prev = after.mac
        for n, entry in enumerate(entries, start=after.seq + 1):
            prev = seal(self._active, prev, n, entry)
            seqs.append(n)
            macs.append(prev)
        return {
            "seq": seqs,
            "mac": macs,
            "mac_key": [self.active_id] * len(entries),
            "head_seq": after.seq + len(entries),
            "head_mac": prev,
        }


@dataclass(frozen=True)
class Finding:
    """What :func:`verify` found wrong: the kind (``altered``, ``inserted``, ``deleted``, ``reordered``,
    ``unknown-key``, ``truncated``) and a sentence naming the first row concerned."""

    kind: str
    row_id: int | None
    seq: int | None
    detail: str


@dataclass(frozen=True)
class Report:
    checked: int
    head: Link
    unsealed_before_chain: int
    finding: Finding | None

    @property
    def ok(self) -> bool:
        return self.finding is None

    def summary(self) -> str:
        """One line for people: what ``verify`` prints, and what the console shows."""
        legacy = (
            f"; {self.unsealed_before_chain} rows written before the chain began are not sealed"
            if self.unsealed_before_chain
            else ""
        )
        if self.finding is None:
            return f"audit chain intact: {self.checked} rows verified (seq 1–{self.head.seq}){legacy}"
        f = self.finding
        return f"audit chain BROKEN ({f.kind}): {f.detail} — {self.checked} rows verified before it{legacy}"

    def as_json(self) -> dict[str, Any]:
        """``verify --json`` and ``GET /audit/verify``."""
        return {
            "ok": self.ok,
            "checked": self.checked,
            "headSeq": self.head.seq,
            "unsealedBeforeChain": self.unsealed_before_chain,
            "finding": None if self.finding is None else dataclasses.asdict(self.finding),
            "summary": self.summary(),
        }


class Walk:
    """Checks sealed rows in ``seq`` order, fed a page at a time (:meth:`feed`), then :meth:`finish`."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        self._keys = keys
        self._prev, self._expected, self.checked = GENESIS, 1, 0
        self._recent: deque[Row] = deque(maxlen=_WINDOW)
        self._pending: list[Row] = []
        self.finding: Finding | None = None

    def feed(self, rows: Sequence[Row], *, last: bool = False) -> bool:
        """Check ``rows`` (the next ones in order); keep the last few back as context for the next
        page unless ``last``. False once a problem is found."""
        self._pending.extend(rows)
        todo = len(self._pending) if last else max(0, len(self._pending) - _WINDOW)
        for i in range(todo):
            self.finding = self._check(self._pending[i], self._pending[i + 1 : i + 1 + _WINDOW])
            if self.finding is not None:
                return False
        del self._pending[:todo]
        return True

    def _check(self, row: Row, ahead: list[Row]) -> Finding | None:
        assert row.seq is not None
        expected = self._expected
        if row.seq != expected:
            if row.seq > expected:
                missing = f"seq {expected}" if row.seq == expected + 1 else f"seq {expected}–{row.seq - 1}"
                return Finding("deleted", row.id, expected, f"{missing} missing (deleted) before {row.describe()}")
            return Finding("inserted", row.id, row.seq, f"{row.describe()} repeats a position already taken")
        key = self._keys.get(row.mac_key or "")
        if key is None or row.mac is None:
            named = "no key" if not row.mac_key else f"key {row.mac_key!r}, which is not configured"
            kind = "unknown-key" if row.mac_key and row.mac is not None else "altered"
            return Finding(kind, row.id, row.seq, f"{row.describe()} is sealed with {named}")
        if not hmac.compare_digest(seal(key, self._prev, row.seq, row.entry), row.mac):
            return _diagnose(row, self._prev, list(self._recent), ahead, self._keys)
        self._prev, self._expected, self.checked = row.mac, expected + 1, self.checked + 1
        self._recent.append(row)
        return None

    def finish(self, head: Link) -> Finding | None:
        """After the last row: does the head agree with it (rows cut off the end)?"""
        if self.finding is not None:
            return self.finding
        last = self._expected - 1
        if head.seq == last and hmac.compare_digest(head.mac, self._prev):
            return None
        if head.seq > last:
            detail = f"the chain head says seq {head.seq}, but the rows end at seq {last}: the last rows were deleted"
            return Finding("truncated", None, last + 1, detail)
        detail = f"the chain head (seq {head.seq}) does not match the last row (seq {last}): head or tail altered"
        return Finding("altered", None, head.seq, detail)


def verify_rows(rows: Sequence[Row], keys: Mapping[str, bytes], head: Link) -> tuple[int, Finding | None]:
    """:class:`Walk` over rows already in memory."""
    walk = Walk(keys)
    walk.feed(rows, last=True)
    return walk.checked, walk.finish(head)


def _diagnose(row: Row, prev: bytes, recent: list[Row], ahead: list[Row], keys: Mapping[str, bytes]) -> Finding:
    """Tell what happened to ``row``, the first that does not verify after ``prev``."""
    assert row.seq is not None and row.mac is not None
    key = keys[row.mac_key or ""]
    # Moved: its MAC verifies at another position, after another row nearby.
    candidates = [prev] + [r.mac for r in recent + ahead if r.mac is not None]
    for seq in range(max(1, row.seq - _WINDOW), row.seq + _WINDOW + 1):
        if seq != row.seq and any(hmac.compare_digest(seal(key, c, seq, row.entry), row.mac) for c in candidates):
            return Finding(
                "reordered", row.id, row.seq, f"{row.describe()} was written at seq {seq}: rows were reordered"
            )
    nxt = ahead[0] if ahead else None
    nkey = keys.get(nxt.mac_key or "") if nxt is not None else None
    if nxt is not None and nxt.seq is not None and nxt.mac is not None and nkey is not None:

        def links(after: bytes, seq: int) -> bool:
            return hmac.compare_digest(seal(nkey, after, seq, nxt.entry), nxt.mac)  # type: ignore[arg-type]

        if links(row.mac, nxt.seq):
            return Finding(
                "altered", row.id, row.seq, f"{row.describe()} was altered (its fields no longer match its seal)"
            )
        if links(prev, nxt.seq - 1):
            return Finding(
                "inserted", row.id, row.seq, f"{row.describe()} was inserted (the rows after it were renumbered)"
            )
        if links(row.mac, nxt.seq + 1):
            return Finding(
                "deleted", row.id, row.seq, f"the row before {row.describe()} was deleted (later rows renumbered)"
            )
    return Finding("altered", row.id, row.seq, f"{row.describe()} does not verify: altered, inserted or moved")


async def sealed_pages(
    pool: aiopg.Pool, after_seq: int = 0, through: int | None = None, *, page: int = _PAGE
) -> AsyncIterator[list[Row]]:
    """Every sealed row with ``after_seq`` < ``seq`` ≤ ``through`` (None: no bound), in order, a page
    per round trip (the last page is shorter than ``page``, possibly empty)."""
    while True:
        async with pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql.SEALED_PAGE, {"after": after_seq, "through": through, "limit": page})
            rows = [Row.from_db(r) for r in await cur.fetchall()]
        yield rows
        if len(rows) < page:
            return
        after_seq = rows[-1].seq or after_seq


async def verify(pool: aiopg.Pool, keys: Mapping[str, bytes], *, page: int = _PAGE) -> Report:
    """Check the whole trail: every sealed row in order, the head, and that no unsealed row was
    added after the chain began (rows from before it are counted, not checked)."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(sql.CHAIN_STATE)
        head_seq, head_mac, legacy_through = await cur.fetchone()
        await cur.execute(sql.FIRST_UNSEALED_AFTER, {"after": legacy_through})
        intruder = await cur.fetchone()
        await cur.execute(sql.COUNT_UNSEALED_THROUGH, {"through": legacy_through})
        (legacy,) = await cur.fetchone()
    head = Link(head_seq, bytes(head_mac))
    walk = Walk(keys)
    async for rows in sealed_pages(pool, through=head.seq, page=page):  # rows sealed since: next time
        if not walk.feed(rows, last=len(rows) < page):
            break
    finding = walk.finish(head)
    if finding is None and intruder is not None:
        row = Row.from_db(intruder)
        detail = f"row id {row.id} ({row.entry.action} by {row.entry.actor!r}) carries no seal"
        finding = Finding("inserted", row.id, None, detail)
    return Report(walk.checked, head, legacy, finding)
