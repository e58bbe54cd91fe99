"""The manifest of a backup (``dynconfig-backup dump FILE`` writes it as FILE.json): what the backup
holds, read in the snapshot it was taken from, so a restore can be checked against it, and the ids of
the keys needed to read it (never the keys)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from shared.audit.verify import Checkpoint
from shared.sql import backup as sql

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class Manifest:
    """What a backup holds, as recorded beside it (FILE.json, in camelCase) and compared after a restore."""

    format: int
    taken_at: str
    database: str
    schema_version: int
    revision: int
    pruned_through: int
    keys: int
    versions: int
    audit_rows: int
    audit_checkpoint: str
    encryption_key_ids: list[str]
    audit_key_ids: list[str]
    file: str = ""
    bytes: int = 0
    sha256: str = ""

    def as_json(self) -> dict[str, Any]:
        return {_camel(name): value for name, value in asdict(self).items()}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Manifest:
        return cls(**{name: document[_camel(name)] for name in cls.__dataclass_fields__ if _camel(name) in document})

    def content(self) -> tuple[Any, ...]:
        """What a restored database must match."""
        return (
            self.schema_version,
            self.revision,
            self.pruned_through,
            self.keys,
            self.versions,
            self.audit_rows,
            self.audit_checkpoint,
        )


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def read_manifest(cur: Any, taken_at: str, database: str) -> Manifest:
    """The facts of the database as ``cur``'s transaction sees it."""
    facts = sql.read_facts(cur)
    return Manifest(
        format=MANIFEST_FORMAT,
        taken_at=taken_at,
        database=database,
        schema_version=facts.schema_version,
        revision=facts.revision,
        pruned_through=facts.pruned_through,
        keys=facts.keys,
        versions=facts.versions,
        audit_rows=facts.audit_rows,
        audit_checkpoint=Checkpoint.of(facts.audit_head).token,
        encryption_key_ids=facts.encryption_key_ids,
        audit_key_ids=facts.audit_key_ids,
    )
