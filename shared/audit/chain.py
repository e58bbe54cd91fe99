"""The tamper-evident audit trail: every audit row is sealed with an HMAC chained over the row before it,
and the chain's head is sealed too.

Each row gets ``seq`` (1, 2, 3, … with no gap, in the order rows are appended) and
``mac = HMAC-SHA256(key, mac of seq - 1 ‖ canonical(row))`` (:func:`message`), the key named in
``mac_key``. Whoever appends takes the one-row ``audit_chain`` head ``FOR UPDATE`` inside its own
transaction (``shared.sql.audit.lock_head``), seals its rows after it and moves the head in the statement
that inserts them, so rows are chained in commit order: the change writer (``shared.changes.writes``), the
batched read and denial records (``shared.audit.writer.AuditWriter``), namespace ACL changes and the chain's
own records (``shared.audit.adopt``) alike. Only holders of the key can make a row that verifies, so
``shared.audit.verify`` finds the first row that was altered, inserted, deleted or moved.

The head is sealed as well (:func:`seal_head`, over its seq, its MAC and ``adopted_through``), in the
same statement that moves it, so cutting rows off the end and moving the head back is caught. The
first row of each batch records the head it was appended after (``link_seq``, ``link_seal``: the seal
as its writer found it, sealed into the row), so a cut stays on record even after later writes have
moved the head on. What no seal inside the database can catch is the whole table put back as it was
(seal included): checkpoints of the head leave the database for that (``api_server.auditkeeper``).

Keys: ``AUDIT_HMAC_KEY`` (a keyring like ``ENCRYPTION_KEYS``: the first seals, all verify). Without
it, each encryption key gives one by HKDF (id ``enc.<id>``, :func:`derived_keys`). Once a row is
sealed with an ``AUDIT_HMAC_KEY`` key, derived keys are no longer valid for any later row or head
seal: whoever holds only the encryption keys cannot re-seal a suffix.

A release before this one (migration 8) seals rows the same way (rows without ``detail`` or a link
have the same MAC as then) but moves the head without sealing it: its rows leave the seal stale, and
the next batch of this release records that in its link.

Lock order: ``audit_chain`` before ``relay_state`` (``shared/sql/writes.py``), never the reverse.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.settings import DERIVED_AUDIT_KEY_PREFIX, Settings

GENESIS = bytes(32)
_HEAD_CONTEXT = b"dynconfig audit chain head\n"


def is_derived(key_id: str | None) -> bool:
    """Whether ``key_id`` names a key derived from an encryption key (not an ``AUDIT_HMAC_KEY``)."""
    return key_id is not None and key_id.startswith(DERIVED_AUDIT_KEY_PREFIX)


@dataclass(frozen=True)
class Head:
    """The ``audit_chain`` row: the last row's ``seq`` and ``mac`` (0 and :data:`GENESIS` when empty),
    and the head's seal: the ``sealed_seq`` and ``sealed_mac`` it covers, the ``seal`` and the key that
    made it, and ``adopted_through`` (rows without a seal whose ids are up to it are vouched for by
    adoption records). The seal fields are None until a process of this release first appends."""

    seq: int
    mac: bytes
    sealed_seq: int | None = None
    sealed_mac: bytes | None = None
    seal: bytes | None = None
    seal_key: str | None = None
    adopted_through: int | None = None

    @classmethod
    def from_db(cls, row: Sequence[Any]) -> Head:
        seq, mac, sealed_seq, sealed_mac, seal, seal_key, adopted_through = row[:7]
        return cls(seq, bytes(mac), sealed_seq, _bytes(sealed_mac), _bytes(seal), seal_key, adopted_through)

    def seal_verifies(self, keys: Mapping[str, bytes]) -> bool:
        """Whether the seal is genuine (made with a key in ``keys``) for what it names: says nothing of
        whether it is current (``sealed_seq`` may be behind ``seq``) or the newest ever made."""
        key = keys.get(self.seal_key or "")
        if key is None or self.seal is None or self.sealed_seq is None or self.sealed_mac is None:
            return False
        expected = seal_head(key, self.sealed_seq, self.sealed_mac, self.adopted_through)
        return hmac.compare_digest(expected, self.seal)


@dataclass(frozen=True)
class Link:
    """The head a batch was appended after, as its writer found it: the seq its seal named (None when
    the head had no seal) and the seal (empty then). Stored on the batch's first row, and sealed in it."""

    seq: int | None
    seal: bytes


@dataclass(frozen=True)
class Entry:
    """The sealed fields of one audit row, as stored (``detail``: only the chain's own records)."""

    at: datetime
    actor: str | None
    action: str
    key: str | None
    version: int | None
    outcome: str
    request_id: str | None
    detail: str | None = None


@dataclass(frozen=True)
class Row:
    """One stored row as verification reads it."""

    id: int
    seq: int | None
    entry: Entry
    mac: bytes | None
    mac_key: str | None
    link: Link | None = None

    @classmethod
    def from_db(cls, row: Sequence[Any]) -> Row:
        id_, seq, at, actor, action, key, version, outcome, request_id, detail, link_seq, link_seal, mac, mac_key = row
        entry = Entry(at, actor, action, key, version, outcome, request_id, detail)
        link = Link(link_seq, bytes(link_seal)) if link_seal is not None else None
        return cls(id_, seq, entry, _bytes(mac), mac_key, link)

    def describe(self) -> str:
        e = self.entry
        what = f"{e.action} of {e.key!r}" if e.key is not None else e.action
        return f"seq {self.seq} (id {self.id}, {e.at.astimezone(UTC).isoformat()}, {what} by {e.actor!r})"


def _bytes(value: Any) -> bytes | None:
    return bytes(value) if value is not None else None


def canonical(e: Entry) -> list[Any]:
    """A row's fields as its MAC (and an adoption's digest) covers them: ``at`` in UTC to the
    microsecond, as Postgres stores it."""
    at = e.at.astimezone(UTC).isoformat(timespec="microseconds")
    return [at, e.actor, e.action, e.key, e.version, e.outcome, e.request_id]


def message(prev: bytes, seq: int, e: Entry, link: Link | None = None) -> bytes:
    """What a row's MAC covers: the previous MAC, then the row's position and fields as compact JSON
    (ASCII only, so the bytes are fixed); ``detail`` and the link when the row has either (a row
    without them has the MAC the previous release gave it)."""
    fields: list[Any] = [seq, *canonical(e)]
    if e.detail is not None or link is not None:
        fields += [e.detail, link.seq, link.seal.hex()] if link is not None else [e.detail, None, None]
    return prev + json.dumps(fields, separators=(",", ":")).encode()


def seal(key: bytes, prev: bytes, seq: int, e: Entry, link: Link | None = None) -> bytes:
    return hmac.new(key, message(prev, seq, e, link), hashlib.sha256).digest()


def seal_head(key: bytes, seq: int, mac: bytes, adopted_through: int | None) -> bytes:
    """The head's seal: that the chain ended at ``seq`` with ``mac``, and how far adoptions reached."""
    text = json.dumps([seq, mac.hex(), adopted_through], separators=(",", ":")).encode()
    return hmac.new(key, _HEAD_CONTEXT + text, hashlib.sha256).digest()


def derived_keys(encryption_keys: Iterable[tuple[str, bytes]]) -> tuple[tuple[str, bytes], ...]:
    """One HMAC key per encryption key (HKDF-SHA256), for a deployment without ``AUDIT_HMAC_KEY``."""
    return tuple(
        (
            f"{DERIVED_AUDIT_KEY_PREFIX}{key_id}",
            HKDF(hashes.SHA256(), 32, salt=None, info=b"dynconfig audit chain v1").derive(secret),
        )
        for key_id, secret in encryption_keys
    )


class AuditChain:
    """Seals audit rows and the head with the active key; knows every configured key for verification."""

    def __init__(self, keys: Sequence[tuple[str, bytes]], also_verify: Sequence[tuple[str, bytes]] = ()) -> None:
        if not keys:
            raise ValueError("the audit chain needs at least one key")
        self.active_id, self._active = keys[0]
        #: Every key a row may have been sealed with, by id.
        self.keys: dict[str, bytes] = {**dict(also_verify), **dict(keys)}

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditChain:
        """Sealing with the first ``AUDIT_HMAC_KEY``, or without one the key derived from the active
        encryption key; verifying with all of them (rows sealed before ``AUDIT_HMAC_KEY`` was set
        carry a derived key's id)."""
        derived = derived_keys(settings.encryption_keys)
        return cls(settings.audit_hmac_keys or derived, also_verify=derived)

    @property
    def has_audit_key(self) -> bool:
        """Whether an ``AUDIT_HMAC_KEY`` is configured (it then seals; derived keys only verify)."""
        return not is_derived(self.active_id)

    def columns(self, after: Head, entries: Sequence[Entry], *, adopted_through: int | None = None) -> dict[str, Any]:
        """``seq``, ``mac``, ``mac_key``, ``link_seq`` and ``link_seal`` for ``entries`` appended after
        ``after``, one list each, plus the new head (``head_seq``, ``head_mac``, ``seal``, ``seal_key``,
        ``adopted_through``: ``after``'s unless given) — the parameters the inserting statements take.
        One HMAC per row and one for the head, no round trip."""
        if not entries:
            raise ValueError("nothing to append")  # re-sealing the head alone would hide what it held
        found = Link(after.sealed_seq, after.seal or b"")
        seqs, macs = [], []
        prev = after.mac
        for n, entry in enumerate(entries, start=after.seq + 1):
            prev = seal(self._active, prev, n, entry, found if n == after.seq + 1 else None)
            seqs.append(n)
            macs.append(prev)
        head_seq = after.seq + len(entries)
        adopted = after.adopted_through if adopted_through is None else adopted_through
        if adopted_through is None and after.seal_key in self.keys and not after.seal_verifies(self.keys):
            # The head was tampered with (its seal no longer covers what it holds): seal no claim that
            # unsealed rows are adopted rather than carry a forged one forward. The found seal, in
            # this batch's link, keeps the evidence; verification reports it.
            adopted = None
        return {
            "seq": seqs,
            "mac": macs,
            "mac_key": [self.active_id] * len(entries),
            "link_seq": [found.seq] + [None] * (len(entries) - 1),
            "link_seal": [found.seal] + [None] * (len(entries) - 1),
            "head_seq": head_seq,
            "head_mac": prev,
            "seal": seal_head(self._active, head_seq, prev, adopted),
            "seal_key": self.active_id,
            "adopted_through": adopted,
        }


AUDIT_CHAIN = web.AppKey("audit_chain", AuditChain)
