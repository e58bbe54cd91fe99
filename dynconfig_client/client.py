"""The async HTTP client: every route of SPEC §4, typed results, typed errors::

async with Client("http://localhost:8080", token) as client:
    await client.put("app.feature.enabled", True, ttl=3600)
    item = await client.get("app.feature.enabled")
    await client.patch(item.key, False, if_match=item.etag)
    async for key in client.list("app"):
        print(key)
    result = await client.txn().compare_version("app.a", 3).put("app.a", 4).delete("app.b").commit()
"""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from .auth import TokenSource, resolve_token
from .errors import ApiError, ConnectionFailed, RateLimited, error_class
from .models import (
    UNSET,
    Acls,
    AuditRecord,
    KeyPage,
    KeyValue,
    Namespace,
    PollResult,
    TxnResult,
    Unset,
    Version,
    WriteResult,
    parse_time,
)
from .transport import DEFAULT_TIMEOUT_SECONDS, AiohttpTransport, Transport, Unreachable
from .txn import Txn, txn_result, write_fields

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "UNSET",
    "AuditRecord",
    "Client",
    "KeyPage",
    "KeyValue",
    "Namespace",
    "PollResult",
    "Txn",
    "TxnResult",
    "Version",
    "WriteResult",
    "watch_url",
]

logger = logging.getLogger(__name__)


def watch_url(base_url: str) -> str:
    """The WebSocket URL of ``/watch`` behind ``base_url``: ``http://h:8080`` → ``ws://h:8080/watch``."""
    url = urlsplit(base_url)
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if url.scheme not in schemes or not url.netloc:
        raise ValueError(f"not an http(s) URL: {base_url!r}")
    return urlunsplit((schemes[url.scheme], url.netloc, url.path.rstrip("/") + "/watch", "", ""))


class Client:
    """Async client of the DynConfig REST API.

    ``token`` is a JWT string or a callable (sync or async) returning a fresh one; it is resolved for every
    request, and after a 401 a callable is asked once more and the request retried. Errors raise the typed
    exceptions of :mod:`dynconfig_client.errors`; an unreachable server raises ``ConnectionFailed``. The
    client owns (and closes) its ``aiohttp.ClientSession`` unless one is passed in. ``transport`` replaces
    aiohttp altogether (:mod:`dynconfig_client.transport`; the command line uses the standard library's).
    """

    def __init__(
        self,
        base_url: str,
        token: TokenSource,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        transport: Transport | None = None,
    ) -> None:
        if transport is not None and session is not None:
            raise ValueError("pass a session or a transport, not both")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._transport = transport if transport is not None else AiohttpTransport(timeout, session)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        await self._transport.close()

    # --- keys ---------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue:
        """The current value of ``key`` (``NotFound`` if absent, deleted or expired)."""
        body, headers, _ = await self._call("GET", _key_path(key))
        return KeyValue(
            key=body["key"],
            value=body["value"],
            version=body["version"],
            last_modified=_time(body["lastModified"]),
            ttl=body.get("ttl"),
            expires_at=parse_time(body.get("expiresAt")),
            etag=headers.get("ETag") or f'"{body["version"]}"',
            revision=body.get("revision"),
        )

    async def put(
        self,
        key: str,
        value: Any,
        *,
        ttl: int | Unset | None = UNSET,
        acls: Acls | Unset | None = UNSET,
        if_match: int | str | None = None,
    ) -> WriteResult:
        """Create or replace ``key``. ``ttl``/``acls`` left UNSET keep the stored ones; ``None`` clears them."""
        body = write_fields(value, ttl, acls)
        return _written(*await self._call("PUT", _key_path(key), json_body=body, if_match=if_match))

    async def patch(
        self,
        key: str,
        value: Any = UNSET,
        *,
        ttl: int | Unset | None = UNSET,
        acls: Acls | Unset | None = UNSET,
        if_match: int | str | None = None,
    ) -> WriteResult:
        """Change a live key's value and/or (admins only) its ttl and acls."""
        body = write_fields(value, ttl, acls)
        return _written(*await self._call("PATCH", _key_path(key), json_body=body, if_match=if_match))

    async def rollback(self, key: str, version: int, *, if_match: int | str | None = None) -> WriteResult:
        """Write the value of ``key``'s ``version`` again, as a new version (ttl and acls are kept).

        A version that is a delete or an expiry raises :class:`BadRequest`; one that never existed,
        :class:`NotFound`."""
        path = _key_path(key) + "/rollback"
        return _written(*await self._call("POST", path, json_body={"version": version}, if_match=if_match))

    async def delete(self, key: str, *, if_match: int | str | None = None) -> None:
        """Delete ``key`` (a soft delete: its version grows by one)."""
        await self._call("DELETE", _key_path(key), if_match=if_match)

    # --- transactions ---------------------------------------------------------------------------

    def txn(self) -> Txn:
        """A transaction to build, then ``await ….commit()`` (:mod:`dynconfig_client.txn`)::

        await client.txn().compare_version("app.a", 3).put("app.a", 4).delete("app.b").commit()
        """
        return Txn(self.commit_txn)

    async def commit_txn(self, body: Mapping[str, Any]) -> TxnResult:
        """Send a ``POST /txn`` body as it is (``{"compare": [...], "ops": [...]}``, SPEC §4) — from a file,
        say; :meth:`txn` builds one. A failing compare or op raises its typed error, with ``in_`` and
        ``index`` (:class:`~dynconfig_client.errors.ApiError`); nothing is written then."""
        answer, _, _ = await self._call("POST", "/txn", json_body=dict(body))
        return txn_result(answer)

    async def list_page(self, namespace: str | None = None, *, limit: int = 100, cursor: str | None = None) -> KeyPage:
        """One page of the readable keys (of ``namespace``), sorted; pass ``page.next`` as ``cursor``."""
        params = _params(namespace=namespace, limit=limit, cursor=cursor)
        body, _, _ = await self._call("GET", "/keys", params=params)
        return KeyPage(keys=body["keys"], total=body["total"], next=body.get("next"))

    async def list(self, namespace: str | None = None, *, page_size: int = 100) -> AsyncIterator[str]:
        """Every readable key (of ``namespace``), sorted, fetching page after page."""
        cursor: str | None = None
        while True:
            page = await self.list_page(namespace, limit=page_size, cursor=cursor)
            for key in page.keys:
                yield key
            if page.next is None:
                return
            cursor = page.next

    async def history(self, key: str, *, page_size: int = 100) -> AsyncIterator[Version]:
        """Every version of ``key``, newest first (the current one included)."""
        cursor: str | None = None
        while True:
            params = _params(limit=page_size, cursor=cursor)
            body, _, _ = await self._call("GET", _key_path(key) + "/history", params=params)
            for item in body["versions"]:
                yield Version(item["version"], item.get("value"), item["event"], item.get("actor"), _time(item["at"]))
            cursor = body.get("next")
            if cursor is None:
                return

    async def poll(self, since_version: int, *, namespace: str | None = None, limit: int = 100) -> PollResult:
        """Readable change events with a revision above ``since_version``, in revision order."""
        params = _params(since_version=since_version, namespace=namespace, limit=limit)
        body, _, _ = await self._call("GET", "/keys", params=params)
        return PollResult(body["events"], body["revision"], bool(body.get("more")), bool(body.get("reset")))

    # --- namespaces, audit, health --------------------------------------------------------------

    async def get_namespace(self, namespace: str) -> Namespace:
        """The ACL of ``namespace`` (``NotFound`` when it has none)."""
        body, _, _ = await self._call("GET", "/namespaces/" + _quote(namespace))
        return _namespace(body)

    async def put_namespace(self, namespace: str, acls: Acls) -> Namespace:
        """Set the ACL of ``namespace`` (admins only)."""
        payload = {"acls": {kind: builtins.list(entries) for kind, entries in acls.items()}}
        body, _, _ = await self._call("PUT", "/namespaces/" + _quote(namespace), json_body=payload)
        return _namespace(body)

    async def delete_namespace(self, namespace: str) -> None:
        """Remove the ACL of ``namespace`` (admins only; ``NotFound`` when it has none)."""
        await self._call("DELETE", "/namespaces/" + _quote(namespace))

    async def audit(
        self,
        key: str | None = None,
        actor: str | None = None,
        since: datetime | str | None = None,
        limit: int = 100,
    ) -> AsyncIterator[AuditRecord]:
        """The audit log, newest first, filtered by key, actor and time (admins only); ``limit`` per page."""
        if isinstance(since, datetime):
            since = since.isoformat().replace("+00:00", "Z")
        cursor: str | None = None
        while True:
            params = _params(key=key, actor=actor, since=since, limit=limit, cursor=cursor)
            body, _, _ = await self._call("GET", "/audit", params=params)
            for r in body["records"]:
                yield AuditRecord(
                    r["id"],
                    _time(r["at"]),
                    r["actor"],
                    r["action"],
                    r.get("key"),
                    r.get("version"),
                    r["outcome"],
                    r.get("requestId"),
                )
            cursor = body.get("next")
            if cursor is None:
                return

    async def health(self) -> dict[str, Any]:
        """``{"status": "healthy", "checks": {...}}``; an unhealthy server raises ``ServerError`` (503)."""
        body, _, _ = await self._call("GET", "/health", auth=False)
        return body

    # --- plumbing -------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        if_match: int | str | None = None,
        auth: bool = True,
    ) -> tuple[Any, Mapping[str, str], int]:
        """Send one request (again once after a 401 when the token is a callable); the decoded body."""
        url = self.base_url + path + (f"?{urlencode(params, quote_via=quote)}" if params else "")
        headers = {"Accept": "application/json"}
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"' if isinstance(if_match, int) else if_match
        data = None
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        retry = auth and not isinstance(self._token, str)
        while True:
            if auth:
                headers["Authorization"] = "Bearer " + await resolve_token(self._token)
            status, raw, resp_headers = await self._send(method, url, headers, data)
            logger.debug("%s %s -> %s", method, path, status)
            if status == 401 and retry:
                retry = False
                continue
            break
        body: Any = None
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        if status >= 400:
            raise _api_error(status, body, resp_headers)
        if raw.strip() and body is None:
            raise ApiError(status, "Invalid Response", f"{method} {path} answered with non-JSON content")
        return body, resp_headers, status

    async def _send(
        self, method: str, url: str, headers: dict[str, str], data: bytes | None
    ) -> tuple[int, bytes, Mapping[str, str]]:
        try:
            return await self._transport.send(method, url, headers, data)
        except Unreachable as exc:
            raise ConnectionFailed(f"cannot reach {self.base_url}: {exc}") from exc


def _quote(name: str) -> str:
    return quote(name, safe="/:")


def _key_path(key: str) -> str:
    return "/keys/" + _quote(key)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _params(**values: object) -> dict[str, str]:
    return {name: str(value) for name, value in values.items() if value is not None}


def _written(body: Any, headers: Mapping[str, str], status: int) -> WriteResult:
    return WriteResult(
        key=body["key"],
        version=body["version"],
        last_modified=_time(body["lastModified"]),
        expires_at=parse_time(body.get("expiresAt")),
        created=status == 201,
        revision=body.get("revision"),
    )


def _namespace(body: Any) -> Namespace:
    return Namespace(body["namespace"], body["acls"], body.get("updatedBy"), parse_time(body.get("updatedAt")))


def _api_error(status: int, body: Any, headers: Mapping[str, str]) -> ApiError:
    """The typed exception for an error answer, with the server's ``error`` and ``message``."""
    if not isinstance(body, dict):
        body = {}
    error = str(body.get("error") or f"HTTP {status}")
    message = str(body.get("message") or "the server gave no message")
    cls = error_class(status)
    if cls is RateLimited:
        retry_after: float | None
        try:
            retry_after = float(headers.get("Retry-After", ""))
        except ValueError:
            retry_after = None
        return RateLimited(status, error, message, body, retry_after=retry_after)
    return cls(status, error, message, body)
