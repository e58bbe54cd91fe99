"""How a :class:`~dynconfig_client.client.Client` puts a request on the wire.

A transport has ``await send(method, url, headers, data) -> (status, body, headers)`` and
``await close()``, and raises :class:`Unreachable` (the reason) when no answer comes. Two exist:

- :class:`AiohttpTransport` (the default): a pooled ``aiohttp.ClientSession``, for services that make
  many requests, concurrently, for hours.
- :class:`StdlibTransport`: one ``http.client`` connection per request, in a worker thread. It costs
  nothing to import, which is what a command line making one or two requests needs: aiohttp alone
  takes ~0.2 s to import (``python -X importtime``).

Both verify TLS certificates against the system's store.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, cast
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import aiohttp

Response = tuple[int, bytes, Mapping[str, str]]

#: How long a request may take, unless the caller says otherwise (the Client's ``timeout``).
DEFAULT_TIMEOUT_SECONDS = 10.0

#: Bodies above this are streamed by aiohttp (it warns about, and would block on, big raw bytes).
_STREAM_OVER = 256 * 1024


class Transport(Protocol):
    async def send(self, method: str, url: str, headers: dict[str, str], data: bytes | None) -> Response: ...

    async def close(self) -> None: ...


class Unreachable(Exception):
    """No answer came; the message says why (the client turns it into ``ConnectionFailed``)."""


def _unreachable(timeout: float, exc: BaseException) -> Unreachable:
    reason = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
    return Unreachable(reason)


class AiohttpTransport:
    """A pooled aiohttp session: created on first use and closed by :meth:`close`, unless it was passed in."""

    def __init__(self, timeout: float, session: aiohttp.ClientSession | None = None) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._timeout_seconds = timeout
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None

    async def send(self, method: str, url: str, headers: dict[str, str], data: bytes | None) -> Response:
        from yarl import URL

        if self._session is None:
            self._session = self._aiohttp.ClientSession()
        body = io.BytesIO(data) if data is not None and len(data) > _STREAM_OVER else data
        try:
            async with self._session.request(
                method, URL(url, encoded=True), headers=headers, data=body, timeout=self._timeout
            ) as resp:
                return resp.status, await resp.read(), resp.headers
        except (self._aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(self._timeout_seconds, exc) from exc

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None


class StdlibTransport:
    """``http.client``, a fresh connection per request, run in a thread so the event loop stays free."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout

    async def send(self, method: str, url: str, headers: dict[str, str], data: bytes | None) -> Response:
        try:
            return await asyncio.to_thread(self._send, method, url, headers, data)
        except (OSError, TimeoutError) as exc:  # refused, reset, DNS, TLS, socket timeout
            raise _unreachable(self._timeout, exc) from exc

    def _send(self, method: str, url: str, headers: dict[str, str], data: bytes | None) -> Response:
        import http.client

        parts = urlsplit(url)
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(parts.netloc, timeout=self._timeout)
        elif parts.scheme == "http":
            conn = http.client.HTTPConnection(parts.netloc, timeout=self._timeout)
        else:
            raise ValueError(f"not an http(s) URL: {url!r}")
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            # An email.message.Message: looked up without regard to case, as aiohttp's headers are.
            return resp.status, resp.read(), cast(Mapping[str, str], resp.headers)
        except http.client.HTTPException as exc:  # a malformed answer, or the connection dropped mid-way
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()

    async def close(self) -> None:
        pass
