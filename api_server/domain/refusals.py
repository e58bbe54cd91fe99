"""Where a refusal is decided so that its timing tells nothing (SPEC §5: a caller without access gets
403 and learns nothing else, not even whether the key exists).

A refusal (403, or 404 for a key the caller could read if it existed) is decided on Postgres's state,
never on the cache's: when the cached state would refuse, Postgres is read before answering
(:func:`decided_on_postgres`) — the key's row and the namespace ACLs above it, for the process's
copy of those can lag a grant made through another replica by the NOTIFY's delivery. So every
refusal costs one cache lookup and two Postgres reads (the row, the ACLs), whether the key exists,
existed or never did, cached or not. What is left between them is decoding the states
that were found; a stand-in state is decoded in place of each one that was not
(:func:`decode_what_was_not_found`) — the idea of Django's ModelBackend, which hashes a password for a
user that does not exist. Measured over real HTTP (tests/test_timing.py), P(a missing key's 403 comes
first): 0.06 before, 0.48-0.64 after; what is left (~15-30 us of ~1.2 ms) is parsing the Redis reply
and the Postgres row of a key that exists.

Writes are screened here too, before they are queued, for an *outsider*: a caller who would get 403
for a key that does not exist (no create right for a PUT; no read right on the namespace for PATCH,
DELETE and rollback). The committer cannot refuse them at equal cost — for a missing key it claims and
drops a placeholder row, or looks for rows other transactions hold. Other callers are not screened
and pay nothing: for them a missing key answers differently (201 or 404) anyway. The committer still
decides every write under the row lock; the screen only refuses early.

The refusals themselves (:func:`read_refusal`, :func:`write_refusal`, :func:`deny`, ...) live here too,
for every caller that decides one: the key operations (``keys.py``), a transaction's parts
(``txn.py``), and the committer's decisions.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from api_server.domain import Store
from shared.changes.state import KeyState
from shared.errors import Forbidden, NotFound
from shared.security.acl import Acl, Principal, governing_namespace, may_access, may_create
from shared.timeutil import utcnow
from shared.validation import namespaces_of

#: Why ``who`` may not do something with a key in ``state`` (None: it never existed), given the
#: namespace ACLs above it; None when it may.
Refusal = Callable[[KeyState | None, dict[str, Acl]], Exception | None]


async def namespace_acls(store: Store, who: Principal, key: str, *, fresh: bool = False) -> dict[str, Acl]:
    """The namespace ACLs above ``key`` (none needed for an admin); ``fresh``: from Postgres, not the
    process's copy."""
    return {} if who.is_admin else await store.namespaces.for_key(key, fresh=fresh)


async def decided_on_postgres(
    store: Store, who: Principal, key: str, refusal: Refusal, *, cached: bool = True
) -> tuple[KeyState | None, int | None]:
    """The key's state once ``refusal`` finds nothing against it (from the cache unless ``cached`` is
    False), and, when it was read from Postgres, the revision it is current as of (to fill the cache
    with); else raise what ``refusal`` finds in Postgres's state."""
    state = cached_state = await store.cache.get(key) if cached else None
    # The namespace ACLs are taken after each read, so a change heard meanwhile counts.
    if refusal(state, await namespace_acls(store, who, key)) is None:
        return state, None
    read = await store.reader.get(key)
    state = read[0] if read is not None else None
    refused = refusal(state, await namespace_acls(store, who, key, fresh=True))
    if refused is not None:
        decode_what_was_not_found(cached=cached_state is not None, stored=read is not None)
        raise refused
    return state, read[1] if read is not None else None


async def screen(
    store: Store, who: Principal, key: str, refusal: Refusal, outsider: Callable[[dict[str, Acl]], bool]
) -> None:
    """Before a write is queued: refuse it here if ``who`` is an ``outsider`` (judged on the namespace
    ACLs) and ``refusal`` finds something against it, decided on Postgres's state."""
    if not who.is_admin and outsider(await namespace_acls(store, who, key)):
        await decided_on_postgres(store, who, key, refusal)


# A key row of the usual size, as Postgres and the cache give it.
_EPOCH = datetime.fromtimestamp(0, UTC)
_STAND_IN_ROW = ("stand.in.key", 2, bytes(64), None, None, None, None, "stand-in", False, _EPOCH, _EPOCH, 1)
_STAND_IN_ENTRY = KeyState.from_row(_STAND_IN_ROW).to_cache()


def decode_what_was_not_found(*, cached: bool, stored: bool) -> None:
    """Before a refusal: decode a stand-in state in place of each one that was not found (``cached``:
    the cache gave one; ``stored``: Postgres did), so refusing a key that exists costs what refusing
    one that does not costs."""
    if not cached:
        KeyState.from_cache(_STAND_IN_ENTRY)
    if not stored:
        KeyState.from_row(_STAND_IN_ROW)


# --- why a caller may not read or write a key (the same answer whether it exists or not) -----------


def deny(action: str, key: str, ns_acls: dict[str, Acl]) -> Forbidden:
    """403 for ``action`` on ``key``; for a write, with how write is granted (a new user's first create
    meets it). The text depends only on the key's name and the namespace ACLs above it (readable by
    anyone), never on the key's own state: it reads the same whether the key exists, existed or never
    did, so it reveals nothing (SPEC §5)."""
    if action != "write":
        return Forbidden(f"You may not {action} key '{key}'")
    takes = f"You may not write key '{key}': writing takes 'write' in the key's own ACL"
    namespaces = namespaces_of(key)
    if not namespaces:
        return Forbidden(f"{takes}; a key outside every namespace is created by admins only")
    governing = governing_namespace(key, ns_acls)
    takes += ", or for a new key or one without its own ACL, in the ACL of its nearest namespace that has one"
    if governing is not None:
        name = governing[0]
        return Forbidden(f"{takes}: here namespace '{name}' (an admin grants it with PUT /namespaces/{name})")
    nearest = namespaces[0]
    return Forbidden(
        f"{takes}, and no namespace above it has an ACL, so only admins create keys here"
        f" (an admin adds one with PUT /namespaces/{nearest})"
    )


def missing_or_denied(
    who: Principal, key: str, state: KeyState | None, ns_acls: dict[str, Acl], action: str = "read"
) -> Exception:
    """404 for a key the caller could read if it existed; otherwise the same 403 an existing key would
    give for ``action`` (never reveal existence, not even through the message)."""
    acl = state.acl if state else None
    creator = state.creator if state else ""
    if may_access(who, "read", key=key, key_acl=acl, creator=creator, namespace_acls=ns_acls):
        return NotFound("Key does not exist")
    return deny(action, key, ns_acls)


def read_refusal(who: Principal, key: str) -> Refusal:
    """Why ``who`` may not read ``key``: 404 for a key it could read if it were live, else 403."""

    def refusal(state: KeyState | None, ns_acls: dict[str, Acl]) -> Exception | None:
        if state is None or not state.live(utcnow()):
            return missing_or_denied(who, key, state, ns_acls)
        if not may_access(who, "read", key=key, key_acl=state.acl, creator=state.creator, namespace_acls=ns_acls):
            return deny("read", key, ns_acls)
        return None

    return refusal


def write_refusal(who: Principal, key: str, *, live: bool) -> Refusal:
    """What the committer would refuse a write of ``key`` for, on the state alone (``live``: the key must
    be live, as for PATCH and DELETE; else it must have existed, as for a rollback)."""

    def refusal(state: KeyState | None, ns_acls: dict[str, Acl]) -> Exception | None:
        gone = state is None or state.version == 0 or (live and not state.live(utcnow()))
        if gone:
            return missing_or_denied(who, key, state if live else None, ns_acls, "write")
        assert state is not None
        if not may_access(who, "write", key=key, key_acl=state.acl, creator=state.creator, namespace_acls=ns_acls):
            return deny("write", key, ns_acls)
        return None

    return refusal


def cannot_create(who: Principal, key: str) -> Callable[[dict[str, Acl]], bool]:
    """Would ``who`` be refused the creation of ``key``?"""
    return lambda ns_acls: not may_create(who, key=key, namespace_acls=ns_acls)


def cannot_see_missing(who: Principal, key: str) -> Callable[[dict[str, Acl]], bool]:
    """Would ``who`` get 403 (not 404) for ``key`` if it did not exist?"""
    return lambda ns_acls: not may_access(who, "read", key=key, key_acl=None, creator="", namespace_acls=ns_acls)
