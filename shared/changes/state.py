"""The current state of one key, as stored in Postgres and mirrored (ciphertext only) in Redis."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.security.acl import Acl


@dataclass(frozen=True)
class KeyState:
    key: str
    version: int
    value_enc: bytes | None
    ttl: int | None
    expires_at: datetime | None
    acl: Acl | None
    creator: str
    deleted: bool
    created_at: datetime
    last_modified: datetime
    #: The global revision of this state (None: a key never written, or written before revisions
    #: were kept on keys).
    revision: int | None = None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> KeyState:
        """A row of ``shared.sql.keys.KEY_COLUMNS`` (the revision may be left out)."""
        key, version, value_enc, ttl, expires_at, acl_read, acl_write, creator, deleted, created_at, modified = row[:11]
        revision = row[11] if len(row) > 11 else None
        acl = Acl.from_columns(acl_read, acl_write)
        return cls(
            key=key,
            version=version,
            value_enc=bytes(value_enc) if value_enc is not None else None,
            ttl=ttl,
            expires_at=expires_at,
            acl=acl,
            creator=creator,
            deleted=deleted,
            created_at=created_at,
            last_modified=modified,
            revision=revision,
        )

    def expired(self, now: datetime) -> bool:
        """Past its deadline (whether or not the expiry worker has got to it yet)."""
        return not self.deleted and self.expires_at is not None and self.expires_at <= now

    def live(self, now: datetime) -> bool:
        """Visible to reads: not deleted and not expired."""
        return not self.deleted and not self.expired(now)

    def to_cache(self) -> bytes:
        """Serialise for the Redis cache; the value stays encrypted."""
        return json.dumps(
            {
                "k": self.key,
                "v": self.version,
                "e": base64.b64encode(self.value_enc).decode() if self.value_enc is not None else None,
                "t": self.ttl,
                "x": self.expires_at.timestamp() if self.expires_at else None,
                "r": list(self.acl.read) if self.acl else None,
                "w": list(self.acl.write) if self.acl else None,
                "c": self.creator,
                "d": self.deleted,
                "ca": self.created_at.timestamp(),
                "m": self.last_modified.timestamp(),
                "rv": self.revision,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_cache(cls, data: bytes | str) -> KeyState:
        d = json.loads(data)
        return cls(
            key=d["k"],
            version=d["v"],
            value_enc=base64.b64decode(d["e"]) if d["e"] is not None else None,
            ttl=d["t"],
            expires_at=_from_ts(d["x"]),
            acl=Acl.from_columns(d["r"], d["w"]),
            creator=d["c"],
            deleted=d["d"],
            created_at=_from_ts(d["ca"]),  # type: ignore[arg-type]
            last_modified=_from_ts(d["m"]),  # type: ignore[arg-type]
            revision=d.get("rv"),
        )


def _from_ts(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)
