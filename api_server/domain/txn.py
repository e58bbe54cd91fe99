"""Transactions (``POST /txn``, SPEC §4): compares and writes of several keys, decided together under
their row locks and written as one, all or nothing, with one revision.

Each write is decided exactly as its own call would be (the same :func:`decide_put`,
:func:`decide_patch` and :func:`decide_delete`, without ``If-Match``: compares do that), in order,
after every compare; the first that fails refuses the whole transaction with its error, marked with
its place (``"in"``, ``"index"``), and nothing is written. A compare reads its key, so it needs
``read`` on it: without it, the same 403 a GET gives, whether or not the key exists. A caller who may
not touch a part at all is refused before anything is queued, as a single write is (:func:`_screen`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from api_server.committer import Decide, Decision, TxnOp
from api_server.domain import Caller, Store
from api_server.domain.keys import check_patch_metadata, decide_delete, decide_patch, decide_put, put_refusal
from api_server.domain.refusals import Refusal, cannot_create, cannot_see_missing, deny, screen, write_refusal
from shared.changes.state import KeyState
from shared.errors import DynConfigError, PreconditionFailed
from shared.security.acl import Acl, Principal, may_access

COMPARE = "compare"
OPS = "ops"


@dataclass(frozen=True)
class Compare:
    """``{key, version}`` (live at that version) or ``{key, exists}`` (live, or not)."""

    key: str
    version: int | None = None
    exists: bool | None = None

    def check(self, who: Principal, state: KeyState | None, ns_acls: dict[str, Acl], now: datetime) -> None:
        """403 unless ``who`` may read the key; then 412 unless it passes (``state``: None when the
        key has no row)."""
        refused = _compare_refusal(who, self.key)(state, ns_acls)
        if refused is not None:
            raise refused
        live = state is not None and state.live(now)
        if self.exists is not None and live != self.exists:
            raise PreconditionFailed(f"Key '{self.key}' {'does not exist' if self.exists else 'exists'}")
        if self.version is not None:
            if not live:
                raise PreconditionFailed(f"Key '{self.key}' does not exist, so it is not at version {self.version}")
            assert state is not None
            if state.version != self.version:
                raise PreconditionFailed(f"Key '{self.key}' is at version {state.version}, not {self.version}")


@dataclass(frozen=True)
class Write:
    """An op: ``put``, ``patch`` or ``delete`` of ``key``, with the body its own call would take."""

    op: str
    key: str
    body: dict[str, Any]


async def transact(
    store: Store, caller: Caller, compares: Sequence[Compare], writes: Sequence[Write]
) -> tuple[int, list[KeyState]]:
    """Apply ``writes`` if every compare passes and every write is allowed; the transaction's revision
    and each key's new state, in order. Raises the first failure, with its place (``exc.part``)."""
    who = caller.principal
    await _screen(store, who, compares, writes)
    decides: list[Decide] = []
    size = 0
    for index, write in enumerate(writes):
        try:  # the values are sealed first: one too large is a 413 of the body, before any compare
            value_enc = store.seal(write.key, write.body["value"]) if "value" in write.body else None
        except DynConfigError as exc:
            raise exc.at(OPS, index) from None
        size += len(value_enc or b"")
        if write.op == "put":
            assert value_enc is not None
            decides.append(decide_put(who, write.key, write.body, value_enc, None))
        elif write.op == "patch":
            decides.append(decide_patch(who, write.key, write.body, value_enc, None))
        else:
            decides.append(decide_delete(who, write.key, None))

    def decide(states: dict[str, KeyState], ns_acls: dict[str, Acl], now: datetime) -> list[Decision]:
        for index, compare in enumerate(compares):
            try:
                compare.check(who, _stored(states.get(compare.key)), ns_acls, now)
            except DynConfigError as exc:
                raise exc.at(COMPARE, index) from None
        decisions = []
        for index, (write, decide_write) in enumerate(zip(writes, decides, strict=True)):
            state = states.get(write.key)
            try:
                if write.op == "patch":
                    check_patch_metadata(who, write.body)
                # A PUT decides on its claimed row; PATCH and DELETE, as alone, on none for a new key.
                decisions.append(decide_write(state if write.op == "put" else _stored(state), ns_acls, now))
            except DynConfigError as exc:
                raise exc.at(OPS, index) from None
        return decisions

    keys = tuple(dict.fromkeys([c.key for c in compares] + [w.key for w in writes]))
    made = await store.committer.submit(TxnOp(keys, decide, who.username, caller.request_id, size=size))
    states = [state for state, _ in made]
    revision = states[0].revision
    assert revision is not None
    return revision, states


async def _screen(store: Store, who: Principal, compares: Sequence[Compare], writes: Sequence[Write]) -> None:
    """Refuse here, before anything is queued or locked, a part ``who`` may not touch at all, as its
    own call would be refused (api_server/domain/refusals.py): for a caller who would get 403 for the
    key if it did not exist, the answer must not depend on whether it does — not even by waiting for
    a row another transaction holds. Parts in order; a refusal found here comes before a failing
    compare of an earlier part that only the locked state can show (a 412), which it would have met
    anyway."""
    for index, compare in enumerate(compares):
        key = compare.key
        try:
            await screen(store, who, key, _compare_refusal(who, key), cannot_see_missing(who, key))
        except DynConfigError as exc:
            raise exc.at(COMPARE, index) from None
    for index, write in enumerate(writes):
        key = write.key
        if write.op == "put":
            refusal, outsider = put_refusal(who, key), cannot_create(who, key)
        else:
            refusal, outsider = write_refusal(who, key, live=True), cannot_see_missing(who, key)
        try:
            await screen(store, who, key, refusal, outsider)
        except DynConfigError as exc:
            raise exc.at(OPS, index) from None


def _compare_refusal(who: Principal, key: str) -> Refusal:
    """What a compare of ``key`` is refused for on the state alone: no read right (403, the same
    whether or not the key exists)."""

    def refusal(state: KeyState | None, ns_acls: dict[str, Acl]) -> Exception | None:
        acl, creator = (state.acl, state.creator) if state and state.version else (None, "")
        if may_access(who, "read", key=key, key_acl=acl, creator=creator, namespace_acls=ns_acls):
            return None
        return deny("read", key, ns_acls)

    return refusal


def _stored(state: KeyState | None) -> KeyState | None:
    """The key's state, None for a key that never existed (the placeholder row claimed for it)."""
    return None if state is None or state.version == 0 else state
