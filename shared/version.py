"""The release: its version (the one place it is written; setup.cfg reads it) and the database schemas
its processes work with.

Every process reads the schema's version at start and refuses, in one line naming both, a database
outside [:data:`SCHEMA_MIN`, :data:`SCHEMA_MAX`] (``shared.db.check_schema``). Migrations are one
explicit step (``dynconfig-migrate``, dynconfig_admin/migrate.py) run before a release's processes roll
out.

Expand, then contract (SPEC §1): a release works with the schema of the release before it and the
release after it, so old and new pods can serve side by side during a rolling upgrade.

- This release ships migrations up to 11 (shared/migrations.py) and needs 11: transactions write
  ``outbox.txn`` (and 9's sealed audit head is read and written).
- The next release may append migrations 12 to :data:`SCHEMA_MAX`, and every one of them must be
  add-only as this release sees it (the rule is in shared/migrations.py): this release keeps working
  on them (tests/test_upgrade.py runs it on a schema with an extra add-only migration).
- A contract migration (dropping or renaming what this release reads or writes, a NOT NULL on a column
  it does not fill, a changed meaning) is numbered above :data:`SCHEMA_MAX` and ships no earlier than
  the release after next, once no process of this release can be running.
"""

from __future__ import annotations

#: The release. Bump it here only: setup.cfg (``attr:``), ``--version`` and ``/health`` read it.
VERSION = "0.2.0"

#: The oldest schema this release's code works with.
SCHEMA_MIN = 11
#: The newest: this release's last migration (11) plus the next release's add-only ones (12-19).
SCHEMA_MAX = 19


def version_line(program: str) -> str:
    """What ``--version`` prints: the program, the release and the schemas it works with."""
    return f"{program} {VERSION} (database schema {SCHEMA_MIN}–{SCHEMA_MAX})"


def schema_refusal(found: int) -> str | None:
    """Why a process of this release cannot run on a database at schema ``found`` (one line naming
    both versions), or None when it can."""
    if found < SCHEMA_MIN:
        what = "has no DynConfig schema" if found == 0 else f"schema is version {found}"
        return f"database {what}, this release ({VERSION}) needs {SCHEMA_MIN}–{SCHEMA_MAX}; run dynconfig-migrate first"
    if found > SCHEMA_MAX:
        return (
            f"database schema is version {found}, newer than this release ({VERSION}) works with "
            f"({SCHEMA_MIN}–{SCHEMA_MAX}); deploy a newer release"
        )
    return None
