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
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from api_server.domain import Store
from shared.changes.state import KeyState
from shared.security.acl import Acl, Principal

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
