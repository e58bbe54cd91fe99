"""The names of what happened: the kinds a change can be (SPEC §6, :class:`EventKind`) and the
actions the audit log records (:class:`AuditAction`).

:class:`EventKind` is the one server-side list of kinds, used when a change is written (store,
expiry), when it is read back (change log, snapshot SQL) and in the OpenAPI document. Two copies stay
apart on purpose, and ``tests/client/test_event_kinds.py`` checks that they agree: the CHECK
constraints of ``key_history`` and ``outbox`` (in a shipped migration, never edited) and
``dynconfig_client.models`` (the client does not depend on the server packages).
"""

from __future__ import annotations

import enum


class EventKind(enum.StrEnum):
    """What a change did to a key. A ``str``: it compares equal to, and encodes as, its wire value."""

    UPDATE = "update"
    DELETE = "delete"
    EXPIRED = "expired"


#: The event of a frame (and of a polled event) that holds a transaction's changes (SPEC §6). Not an
#: :class:`EventKind`: no change is of this kind, and no row stores it.
TXN_EVENT = "txn"


class AuditAction(enum.StrEnum):
    """What an audit row records was done (``GET /audit``'s ``action``). A ``str``, stored as its value.

    A PUT is recorded as ``create`` or ``replace``, whether it is written or refused (before 0.2.0 a
    refused one was recorded as ``put``). These strings are on the wire; this enum is their one home."""

    # Key writes, recorded with the change (shared.changes.writes)
    CREATE = "create"
    REPLACE = "replace"
    PATCH = "patch"
    ROLLBACK = "rollback"
    DELETE = "delete"
    EXPIRE = "expire"
    # A transaction's compare, refused (403, 412); its writes are recorded as above
    COMPARE = "compare"
    # Reads
    READ = "read"
    LIST = "list"
    POLL = "poll"
    HISTORY = "history"
    WATCH = "watch"
    # Namespace ACLs and the audit log itself
    NAMESPACE_PUT = "namespace.put"
    NAMESPACE_READ = "namespace.read"
    NAMESPACE_DELETE = "namespace.delete"
    AUDIT_READ = "audit.read"
    AUDIT_VERIFY = "audit.verify"
    # Written by the system into the chain (shared.audit.adopt, shared.audit.prune)
    AUDIT_ADOPT = "audit.adopt"
    AUDIT_KEY = "audit.key"
    AUDIT_PRUNE = "audit.prune"
