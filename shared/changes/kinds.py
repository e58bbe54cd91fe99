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


class AuditAction(enum.StrEnum):
    """What an audit row records was done (``GET /audit``'s ``action``). A ``str``, stored as its value.

    A PUT is recorded as ``put`` when it is refused and, when it is written, as ``create`` or
    ``replace``: these strings are on the wire, where the audit log's readers and the tests expect
    them, so they are kept; this enum is their one home."""

    # Key writes, recorded with the change (shared.changes.writes)
    CREATE = "create"
    REPLACE = "replace"
    PATCH = "patch"
    ROLLBACK = "rollback"
    DELETE = "delete"
    EXPIRE = "expire"
    # A PUT refused (403, 404, 412...): recorded before it could be a create or a replace
    PUT = "put"
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
