"""Typed errors carrying the server's ``error`` phrase and ``message`` (SPEC §4)."""

from __future__ import annotations

from typing import Any


class DynConfigClientError(Exception):
    """Base class: anything the client raises on purpose."""


class ConnectionFailed(DynConfigClientError):
    """The server could not be reached (or the connection broke mid-request)."""


class ApiError(DynConfigClientError):
    """The server answered with an error. ``status``, ``error`` and ``message`` are the server's.

    A failed transaction (``POST /txn``) raises the error of the compare or op that failed it, with
    ``in_`` (``"compare"`` or ``"ops"``, the server's ``in``) and ``index`` (its position in that list)
    saying which; both are None for any other call, and for a transaction body wrong as a whole. The
    text then names the part as the body did: ``412 Precondition Failed at compare[0]: ...``."""

    status: int = 0

    def __init__(self, status: int, error: str, message: str, body: dict[str, Any] | None = None) -> None:
        self.body = body or {}
        index, part = self.body.get("index"), self.body.get("in")
        self.index: int | None = index if isinstance(index, int) and not isinstance(index, bool) else None
        self.in_: str | None = part if isinstance(part, str) and self.index is not None else None
        super().__init__(f"{status} {error}{_where(self.in_, self.index)}: {message}")
        self.status = status
        self.error = error
        self.message = message
        self.fields = self.body.get("fields")


class BadRequest(ApiError):
    """400."""


class Unauthorized(ApiError):
    """401: missing, invalid or expired token."""


class Forbidden(ApiError):
    """403: the ACL denies it."""


class NotFound(ApiError):
    """404: absent, deleted or expired."""


class PreconditionFailed(ApiError):
    """412: ``If-Match`` did not match the key's version, or a transaction's compare did not hold."""


class PayloadTooLarge(ApiError):
    """413: value (or request body) over the limit."""


class RateLimited(ApiError):
    """429: ``retry_after`` seconds until another request is accepted."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status, error, message, body)
        self.retry_after = retry_after


class ServerError(ApiError):
    """5xx."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    412: PreconditionFailed,
    413: PayloadTooLarge,
    429: RateLimited,
}


def _where(part: str | None, index: int | None) -> str:
    """`` at ops[2]``: which part of a transaction failed, as it is written in the body; else nothing."""
    if index is None:
        return ""
    return f" at {part}[{index}]" if part else f" at index {index}"


def error_class(status: int) -> type[ApiError]:
    """The exception class for an HTTP error status."""
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, ApiError)
