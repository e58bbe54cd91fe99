"""Operations on keys: each takes the :class:`Store` and the :class:`Caller`, checks the ACL, and
returns states; HTTP concerns (parsing, status codes) stay in ``api_server/handlers/keys.py``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from api_server.committer import Decide, Decision, WriteOp
from api_server.domain import Caller, Store
from api_server.domain.refusals import (
    Refusal,
    cannot_create,
    cannot_see_missing,
    decided_on_postgres,
    deny,
    missing_or_denied,
    read_refusal,
    screen,
    write_refusal,
)
from shared.changes import events as changelog
from shared.changes.kinds import AuditAction, EventKind
from shared.changes.state import KeyState
from shared.changes.writes import NewState
from shared.errors import BadRequest, DynConfigError, Forbidden, NotFound, PreconditionFailed
from shared.security.acl import Acl, Principal, governing_namespace, may_access, may_create
from shared.security.crypto import DecryptionError
from shared.sql import changelog as changelog_sql
from shared.sql import history as history_sql
from shared.sql import keys as keys_sql
from shared.sql import like_escape


@dataclass(frozen=True)
class IfMatch:
    """A parsed ``If-Match`` (SPEC §4, RFC 9110 §13.1.1): ``*``, or the versions its strong tags name."""

    any: bool
    versions: frozenset[str]
    shown: str  # the versions named (weak tags as sent), for the 412 message

    def check(self, state: KeyState | None) -> None:
        """412 unless the key exists (``*``) or is at one of the named versions. Weak tags never match."""
        if state is None:
            raise PreconditionFailed("If-Match was given but the key does not exist")
        if not self.any and str(state.version) not in self.versions:
            raise PreconditionFailed(f"Key is at version {state.version}, not {self.shown}")


def check_if_match(if_match: IfMatch | None, state: KeyState | None) -> None:
    """412 unless ``If-Match`` (when given) admits ``state`` (None: the key does not exist)."""
    if if_match is not None:
        if_match.check(state)


async def put_key(
    store: Store, caller: Caller, key: str, body: dict[str, Any], if_match: IfMatch | None
) -> tuple[KeyState, bool]:
    """Create or replace ``key``; return the new state and whether it was created."""
    who = caller.principal
    await screen(store, who, key, put_refusal(who, key), cannot_create(who, key))
    value_enc = store.seal(key, body["value"])
    decide = decide_put(who, key, body, value_enc, if_match)
    op = WriteOp(key, True, decide, who.username, caller.request_id, size=len(value_enc))
    result, decision = await store.committer.submit(op)
    return result, decision.created


def put_action(state: KeyState | None) -> AuditAction:
    """A PUT is a create of a key that is not there (never was, deleted, expired), else a replace;
    recorded so whether it is written or refused."""
    return AuditAction.CREATE if state is None or state.deleted else AuditAction.REPLACE


def decide_put(who: Principal, key: str, body: dict[str, Any], value_enc: bytes, if_match: IfMatch | None) -> Decide:
    """How the committer decides a PUT of ``body`` (its value sealed as ``value_enc``) on the locked,
    claimed row of ``key``."""

    def decide(state: KeyState | None, ns_acls: dict[str, Acl], now: datetime) -> Decision:
        assert state is not None  # a PUT's row is claimed
        try:
            # Authorization first, then If-Match: a caller without access learns nothing (SPEC §5).
            if state.version == 0:  # never existed: a create
                if not may_create(who, key=key, namespace_acls=ns_acls):
                    raise deny("write", key, ns_acls)
                new = NewState(value_enc, body.get("ttl"), _acl(body.get("acls")), who.username)
            else:
                new = _replacement(who, key, state, ns_acls, value_enc, body)
            check_if_match(if_match, None if state.deleted else state)
        except DynConfigError as exc:
            exc.audit_action = put_action(state)
            raise
        return Decision(state, new, EventKind.UPDATE, put_action(state), created=state.deleted)

    return decide


def _replacement(
    who: Principal, key: str, state: KeyState, ns_acls: dict[str, Acl], value_enc: bytes, body: dict[str, Any]
) -> NewState:
    """What a PUT of ``body`` makes of a key that exists (live, deleted or expired), or 403.

    The key keeps its own ACL and creator, so writing it again is a replace governed by them (SPEC
    §5). A ttl belongs to a live value: writing a deleted key again starts without one unless the
    body sets it, as a create does."""
    if not may_access(who, "write", key=key, key_acl=state.acl, creator=state.creator, namespace_acls=ns_acls):
        raise deny("write", key, ns_acls)
    ttl = body["ttl"] if "ttl" in body else None if state.deleted else state.ttl
    acl = _acl(body["acls"]) if "acls" in body else state.acl
    if not who.is_admin and (acl != state.acl or (ttl != state.ttl and not state.deleted)):
        raise Forbidden("Only admins may change a key's ttl or acls")
    return NewState(value_enc, ttl, acl, state.creator)


async def rollback_key(store: Store, caller: Caller, key: str, version: int, if_match: IfMatch | None) -> KeyState:
    """Write the value of ``version`` again, as a new version (SPEC §4): a PUT of that value by the
    caller, who must also be allowed to read that version (as in its history), so a rollback never
    shows an old value to anyone the caller could not have shown it to by hand."""
    who = caller.principal
    await screen(store, who, key, write_refusal(who, key, live=False), cannot_see_missing(who, key))
    async with store.pool.acquire() as conn, conn.cursor() as cur:  # history is append-only: it stays true
        past = await history_sql.one_version(cur, key, version)
    # Re-sealed with the active key, the bytes as stored (no decode and encode again).
    value_enc = None if past is None or past.value_enc is None else store.keyring.reseal(past.value_enc, aad=key)

    def decide(state: KeyState | None, ns_acls: dict[str, Acl], now: datetime) -> Decision:
        if state is None or state.version == 0:
            raise missing_or_denied(who, key, None, ns_acls, "write")
        # Authorization first (write now, then read of that version), then the version, then If-Match.
        if not may_access(who, "write", key=key, key_acl=state.acl, creator=state.creator, namespace_acls=ns_acls):
            raise deny("write", key, ns_acls)
        if past is None:
            raise NotFound(f"Key '{key}' has no version {version}")
        readers = past.readers
        may_read_now = may_access(
            who, "read", key=key, key_acl=state.acl, creator=state.creator, namespace_acls=ns_acls
        )
        if not (may_read_now and (who.is_admin or readers is None or readers.admits(who.username))):
            raise Forbidden(f"You may not read version {version} of key '{key}', so you may not roll back to it")
        if value_enc is None:
            what = "an expiry" if past.event == EventKind.EXPIRED else f"a {past.event}"
            raise BadRequest(
                f"Version {version} of '{key}' is {what} and holds no value: roll back to an update",
                fields={"version": [f"version {version} is {what}, not an update"]},
            )
        new = _replacement(who, key, state, ns_acls, value_enc, {})
        check_if_match(if_match, None if state.deleted else state)
        return Decision(state, new, EventKind.UPDATE, AuditAction.ROLLBACK)

    op = WriteOp(key, False, decide, who.username, caller.request_id, size=len(value_enc or b""))
    result, _ = await store.committer.submit(op)
    return result


async def patch_key(store: Store, caller: Caller, key: str, body: dict[str, Any], if_match: IfMatch | None) -> KeyState:
    """Change the value (and, for admins, ttl/acls) of a live key."""
    who = caller.principal
    check_patch_metadata(who, body)
    await screen(store, who, key, write_refusal(who, key, live=True), cannot_see_missing(who, key))
    value_enc = store.seal(key, body["value"]) if "value" in body else None
    decide = decide_patch(who, key, body, value_enc, if_match)
    op = WriteOp(key, False, decide, who.username, caller.request_id, size=len(value_enc or b""))
    result, _ = await store.committer.submit(op)
    return result


def check_patch_metadata(who: Principal, body: dict[str, Any]) -> None:
    """403 for a non-admin's PATCH that sets ``ttl`` or ``acls`` (decided on the body alone)."""
    if not who.is_admin and ("ttl" in body or "acls" in body):
        raise Forbidden("Only admins may change a key's ttl or acls")


def decide_patch(
    who: Principal, key: str, body: dict[str, Any], value_enc: bytes | None, if_match: IfMatch | None
) -> Decide:
    """How the committer decides a PATCH of ``body`` on ``key`` (None: the key has no row)."""

    def decide(state: KeyState | None, ns_acls: dict[str, Acl], now: datetime) -> Decision:
        state = _writable(who, key, if_match, state, ns_acls, now)
        new = NewState(
            value_enc if value_enc is not None else state.value_enc,
            body["ttl"] if "ttl" in body else state.ttl,
            _acl(body["acls"]) if "acls" in body else state.acl,
            state.creator,
        )
        return Decision(state, new, EventKind.UPDATE, AuditAction.PATCH)

    return decide


async def delete_key(store: Store, caller: Caller, key: str, if_match: IfMatch | None) -> KeyState:
    """Soft-delete a live key (version +1, ``delete`` event)."""
    who = caller.principal
    await screen(store, who, key, write_refusal(who, key, live=True), cannot_see_missing(who, key))
    op = WriteOp(key, False, decide_delete(who, key, if_match), who.username, caller.request_id)
    result, _ = await store.committer.submit(op)
    return result


def decide_delete(who: Principal, key: str, if_match: IfMatch | None) -> Decide:
    """How the committer decides a DELETE of ``key`` (None: the key has no row)."""

    def decide(state: KeyState | None, ns_acls: dict[str, Acl], now: datetime) -> Decision:
        state = _writable(who, key, if_match, state, ns_acls, now)
        tombstone = NewState(None, state.ttl, state.acl, state.creator)
        return Decision(state, tombstone, EventKind.DELETE, AuditAction.DELETE)

    return decide


def put_refusal(who: Principal, key: str) -> Refusal:
    def refusal(state: KeyState | None, ns_acls: dict[str, Acl]) -> Exception | None:
        refused = None
        if state is None or state.version == 0:
            refused = None if may_create(who, key=key, namespace_acls=ns_acls) else deny("write", key, ns_acls)
        elif not may_access(who, "write", key=key, key_acl=state.acl, creator=state.creator, namespace_acls=ns_acls):
            refused = deny("write", key, ns_acls)
        if refused is not None:
            refused.audit_action = put_action(state)
        return refused

    return refusal


def _writable(
    who: Principal, key: str, if_match: IfMatch | None, state: KeyState | None, ns_acls: dict[str, Acl], now: datetime
) -> KeyState:
    """The locked state of a live key the caller may write and whose version matches ``If-Match``;
    else the error (404 or the same 403 an existing key would give; then 412)."""
    if state is None or not state.live(now):  # expired while we waited for the lock: gone, as for readers
        raise missing_or_denied(who, key, state, ns_acls, "write")
    if not may_access(who, "write", key=key, key_acl=state.acl, creator=state.creator, namespace_acls=ns_acls):
        raise deny("write", key, ns_acls)
    check_if_match(if_match, state)
    return state


async def get_key(store: Store, caller: Caller, key: str, *, cached: bool = True) -> tuple[KeyState, Any]:
    """A live key's state and decrypted value, if the caller may read it; a refusal is decided on
    Postgres's state (``refusals``: its timing tells nothing), and only a state served fills the cache."""
    state, as_of = await decided_on_postgres(
        store, caller.principal, key, read_refusal(caller.principal, key), cached=cached
    )
    assert state is not None and state.value_enc is not None
    if as_of is not None:
        await store.cache.put(state, as_of)
    try:
        return state, store.open(key, state.value_enc)
    except DecryptionError:
        if not cached:
            raise
        # A cached copy sealed by a key since retired: a read that raced `reencrypt` cached the old
        # ciphertext after the command cleared the cache. Postgres holds the re-sealed value.
        return await get_key(store, caller, key, cached=False)


async def key_access(store: Store, caller: Caller, state: KeyState) -> dict[str, Any]:
    """What the caller (who may read the key: it has just been read) may do with it, and the ACL that
    decides that: the key's own (its entries for admins alone, as ``?include=acls``), the nearest
    namespace's (public: ``GET /namespaces/{ns}`` shows it to anyone), or none (its creator and admins)."""
    who = caller.principal
    key = state.key
    ns_acls = await store.namespaces.for_key(key)
    write = may_access(who, "write", key=key, key_acl=state.acl, creator=state.creator, namespace_acls=ns_acls)
    governing = None if state.acl is not None else governing_namespace(key, ns_acls)
    if state.acl is not None:
        governed = {"source": "key", "namespace": None, "acls": state.acl.as_json() if who.is_admin else None}
    elif governing is not None:
        governed = {"source": "namespace", "namespace": governing[0], "acls": governing[1].as_json()}
    else:
        governed = {"source": "none", "namespace": None, "acls": None}
    return {"access": {"read": True, "write": write, "admin": who.is_admin}, "governedBy": governed}


async def list_keys(
    store: Store, caller: Caller, live: keys_sql.LiveRange, after: keys_sql.Position, limit: int, total: int | None
) -> tuple[list[keys_sql.ListedKey], int, bool]:
    """Readable live keys of ``live`` (a namespace, or a search) after ``after`` (which also says the
    order): (page, total readable, more pages?).

    A page reads about a page of rows (keyset on the key, or on the sort column and the key, within
    the namespace's key range).
    ``total`` is counted by Postgres for an admin; for anyone else by groups of keys that share what
    decides access (ACL, creator, parent namespace), on the first page, and carried in the cursor
    (pass it back as ``total``)."""
    who = caller.principal
    page: list[keys_sql.ListedKey] = []
    async with store.pool.acquire() as conn, conn.cursor() as cur:
        ns_acls = await store.namespaces.all(cur) if not who.is_admin else {}

        def readable(row: keys_sql.KeyAccess) -> bool:
            return may_access(who, "read", key=row.key, key_acl=row.acl, creator=row.creator, namespace_acls=ns_acls)

        if total is None and who.is_admin:
            total = await keys_sql.count_live(cur, live)
        elif total is None:
            total = sum(count for group, count in await keys_sql.count_live_by_access(cur, live) if readable(group))
        position, chunk = after, limit + 1
        while len(page) <= limit:
            rows = await keys_sql.list_page(cur, live, position, chunk)
            page.extend(row for row in rows if who.is_admin or readable(row.access))
            if len(rows) < chunk:
                break
            position = position.past(rows[-1])
            chunk = min(chunk * 2, 5000)
    return page[:limit], total, len(page) > limit


async def poll_events(
    store: Store, caller: Caller, since: int, namespace: str | None, limit: int
) -> tuple[list[dict[str, Any]], int, bool, bool]:
    """Readable events after revision ``since``: (events, revision to poll from next, more?, reset?)."""
    who = caller.principal
    patterns = None if namespace is None else [like_escape(namespace) + ".%", like_escape(namespace) + "/%"]
    async with store.pool.acquire() as conn, conn.cursor() as cur:
        # Older than the log, or a revision it never had (a database restored from a backup): start over.
        point = await changelog_sql.resume_point(cur, since)
        head_revision = point.head
        if point.start_over:
            return [], head_revision, False, True
        ns_acls = await store.namespaces.all(cur)
        events: list[dict[str, Any]] = []
        position = since
        while len(events) < limit and position < head_revision:
            page = await changelog_sql.events_after(
                cur, position, through=head_revision, patterns=patterns, limit=limit
            )
            for commit in changelog.commits(page):  # a transaction is one event, whole (SPEC §6)
                position = commit[-1].shown_revision
                readable = [e.wire(store.keyring) for e in commit if changelog.may_read_event(who, e.readers(ns_acls))]
                events.extend(changelog.commit_events(commit, readable))
                if len(events) == limit:
                    break
            if len(page) < limit:
                if len(events) < limit:
                    position = head_revision
                break
        # A prune between reading the boundary and the events would leave a silent gap: look again.
        _, pruned = await changelog_sql.head(cur)
        if since < pruned:
            return [], head_revision, False, True
    return events, position, position < head_revision, False


async def key_history(
    store: Store, caller: Caller, key: str, before: int | None, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Versions of ``key`` newest first, below ``before``; and the cursor for the next page."""
    who = caller.principal
    async with store.pool.acquire() as conn, conn.cursor() as cur:
        state = await keys_sql.get(cur, key)
        ns_acls = await store.namespaces.for_key(key, cur)
        if state is None or state.version == 0:
            raise missing_or_denied(who, key, None, ns_acls)
        if not may_access(who, "read", key=key, key_acl=state.acl, creator=state.creator, namespace_acls=ns_acls):
            raise deny("read", key, ns_acls)
        # Leave out versions the caller could not read when they were written (SPEC §5); read on
        # until the page is full, so paging stays exact.
        rows: list[history_sql.HistoryRow] = []
        position = before if before is not None else 2**62
        while len(rows) <= limit:
            page = await history_sql.history_page(cur, key, position, limit + 1)
            for row in page:
                if who.is_admin or row.readers is None or row.readers.admits(who.username):
                    rows.append(row)
            if len(page) <= limit:
                break
            position = page[-1].version
    versions: list[dict[str, Any]] = [
        {
            "version": row.version,
            "value": store.open(key, row.value_enc) if row.value_enc is not None else None,
            "event": row.event,
            "actor": row.actor,
            "at": row.at,
        }
        for row in rows[:limit]
    ]
    next_before = versions[-1]["version"] if len(rows) > limit else None
    return versions, next_before


def _acl(acls: dict[str, list[str]] | None) -> Acl | None:
    return None if acls is None else Acl.from_lists(acls.get("read"), acls.get("write"))
