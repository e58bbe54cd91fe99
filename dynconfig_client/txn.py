"""``Txn``: a transaction (``POST /txn``) built one compare and one op at a time, then committed::

    result = await (
        client.txn()
        .compare_version("app.limits.max", 3)  # only if the key is live at version 3
        .compare_exists("app.limits.lock", False)  # ... and this one is not live
        .put("app.limits.max", 200, ttl=3600)
        .patch("app.limits.min", 10)
        .delete("app.limits.old")
        .commit()
    )
    result.revision  # one revision for all of it
    result.results  # [KeyVersion("app.limits.max", 4), ...], in the order of the ops

All or nothing: the first compare or op that fails raises the typed error of its status
(``PreconditionFailed`` for a compare, ``Forbidden``, ``NotFound``, ``BadRequest``...) with ``in_`` and
``index`` naming it, and nothing is written. The builder checks nothing itself (the server is the one
judge of keys, values and limits: 1 to 128 ops, a key in at most one op); it only shapes the body.
A builder is reusable: ``commit()`` sends what it holds now, and may be called again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .models import UNSET, Acls, KeyVersion, TxnResult, Unset

#: What commits a body: ``Client.commit_txn``.
Commit = Callable[[Mapping[str, Any]], Awaitable[TxnResult]]


class Txn:
    """A transaction being built (see the module docstring); made by ``Client.txn()``."""

    def __init__(self, commit: Commit) -> None:
        self._commit = commit
        self._compare: list[dict[str, Any]] = []
        self._ops: list[dict[str, Any]] = []

    def compare_version(self, key: str, version: int) -> Txn:
        """Commit only if ``key`` is live at ``version``."""
        self._compare.append({"key": key, "version": version})
        return self

    def compare_exists(self, key: str, exists: bool = True) -> Txn:
        """Commit only if ``key`` is live (``exists=True``) or not live (absent, deleted or expired)."""
        self._compare.append({"key": key, "exists": exists})
        return self

    def put(self, key: str, value: Any, *, ttl: int | Unset | None = UNSET, acls: Acls | Unset | None = UNSET) -> Txn:
        """Create or replace ``key``, as ``Client.put`` (``ttl``/``acls`` UNSET keep, None clears)."""
        self._ops.append({"op": "put", "key": key, **write_fields(value, ttl, acls)})
        return self

    def patch(
        self, key: str, value: Any = UNSET, *, ttl: int | Unset | None = UNSET, acls: Acls | Unset | None = UNSET
    ) -> Txn:
        """Change a live key's value and/or (admins only) its ttl and acls, as ``Client.patch``."""
        self._ops.append({"op": "patch", "key": key, **write_fields(value, ttl, acls)})
        return self

    def delete(self, key: str) -> Txn:
        """Delete a live ``key``."""
        self._ops.append({"op": "delete", "key": key})
        return self

    def body(self) -> dict[str, Any]:
        """The ``POST /txn`` body this builder holds (a copy)."""
        return {"compare": [dict(c) for c in self._compare], "ops": [dict(op) for op in self._ops]}

    async def commit(self) -> TxnResult:
        """Send the transaction; its result, or the typed error of the part that failed it."""
        return await self._commit(self.body())

    def __repr__(self) -> str:
        # Never the values: they may be secrets, and a repr ends up in logs.
        ops = ", ".join(f"{op['op']} {op['key']}" for op in self._ops)
        return f"<Txn {len(self._compare)} compare(s); ops: {ops or 'none'}>"


def write_fields(value: Any, ttl: int | Unset | None, acls: Acls | Unset | None) -> dict[str, Any]:
    """``value``, ``ttl`` and ``acls`` of a write body, each only when not UNSET (None clears ttl and acls)."""
    body: dict[str, Any] = {}
    if value is not UNSET:
        body["value"] = value
    if ttl is not UNSET:
        body["ttl"] = ttl
    if acls is not UNSET:
        body["acls"] = None if acls is None else {kind: list(entries) for kind, entries in acls.items()}
    return body


def txn_result(body: Any) -> TxnResult:
    """The typed answer of a committed ``POST /txn``."""
    return TxnResult(body["revision"], [KeyVersion(item["key"], item["version"]) for item in body["results"]])
