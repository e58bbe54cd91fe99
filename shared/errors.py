"""The domain errors; one middleware (``shared.runtime.web.error_middleware``) turns them into SPEC §4 JSON."""

from __future__ import annotations

from typing import Any


class DynConfigError(Exception):
    """Base of every error a client may see. ``phrase`` is the ``error`` field of the JSON body."""

    status = 500
    phrase = "Internal Server Error"

    def __init__(self, message: str, *, fields: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields
        self.headers = headers or {}
        #: In a transaction (``POST /txn``): the part that failed, ``("compare" | "ops", index)``.
        self.part: tuple[str, int] | None = None
        #: What the audit log records was refused, when the refusal knows better than the route (a
        #: refused PUT is a refused ``create`` or ``replace``, as it would have been recorded).
        self.audit_action: str | None = None

    def at(self, part: str, index: int) -> DynConfigError:
        """This error, as the failure of part ``index`` of a transaction's ``compare`` or ``ops``."""
        self.part = (part, index)
        return self

    def body(self) -> dict[str, Any]:
        """The JSON error shape of SPEC §4 (with ``index`` and ``in`` for a transaction's part)."""
        body: dict[str, Any] = {"error": self.phrase, "message": self.message}
        if self.fields:
            body["fields"] = self.fields
        if self.part is not None:
            body["in"], body["index"] = self.part
        return body


class BadRequest(DynConfigError):
    status = 400
    phrase = "Bad Request"


class Unauthorized(DynConfigError):
    status = 401
    phrase = "Unauthorized"


class Forbidden(DynConfigError):
    status = 403
    phrase = "Forbidden"


class NotFound(DynConfigError):
    status = 404
    phrase = "Not Found"


class PreconditionFailed(DynConfigError):
    status = 412
    phrase = "Precondition Failed"


class PayloadTooLarge(DynConfigError):
    status = 413
    phrase = "Payload Too Large"


class RateLimited(DynConfigError):
    status = 429
    phrase = "Rate Limited"


class ServiceUnavailable(DynConfigError):
    """Not now (the database unreachable, a write conflict, a shutdown): always with ``Retry-After``."""

    status = 503
    phrase = "Service Unavailable"
    retry_after_seconds = 1

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(self.retry_after_seconds))
