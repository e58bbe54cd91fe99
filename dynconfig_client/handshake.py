"""What a ``/watch`` handshake answered without an upgrade (not 101) means, and what to say about it.

A new user's first mistake is a watch URL on the API's own port, which has no ``/watch`` (a 404): the
message says where ``/watch`` lives. 429 and 5xx are worth another try (a rate limit, a restart, a
front door whose notifier is away); any other status means the URL or the token is wrong, and asking
again will not change it.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from .errors import ApiError, error_class


@dataclass(frozen=True)
class RefusedHandshake:
    """The server at ``url`` answered the WebSocket handshake with ``status``."""

    url: str
    status: int
    retry_after: float = 0.0  # the seconds a 429's Retry-After asked for

    @classmethod
    def from_error(cls, url: str, status: int, headers: Any) -> RefusedHandshake:
        """From what aiohttp's ``WSServerHandshakeError`` carries (its ``status`` and ``headers``)."""
        return cls(url, status, _retry_after(headers) if status == 429 else 0.0)

    @property
    def retryable(self) -> bool:
        """Worth another try: 429, 5xx, or a 101 whose upgrade headers were wrong (a proxy's hiccup)."""
        return self.status in (101, 429) or self.status >= 500

    def said(self, url_setting: str) -> str:
        """One line: the URL, the status and its phrase, and a hint when there is one."""
        text = f"the server at {self.url} answered {self.status} {_phrase(self.status)} to the WebSocket handshake"
        hint = self._hint(url_setting)
        return f"{text}: {hint}" if hint else text

    def error(self, url_setting: str) -> ApiError:
        """The typed error of the status (``NotFound`` for a 404...), saying the same."""
        message = f"the server at {self.url} answered {self.status} to the WebSocket handshake"
        hint = self._hint(url_setting)
        return error_class(self.status)(self.status, _phrase(self.status), f"{message}: {hint}" if hint else message)

    def _hint(self, url_setting: str) -> str:
        if self.status in (404, 405):
            return (
                f"point {url_setting} at the front door or ingress that routes /watch to the notifier"
                " (or at the notifier), not at the API's own port"
            )
        if self.status in (401, 403):
            return "the token was refused before the upgrade"
        if 300 <= self.status < 400:
            return f"it redirects elsewhere: point {url_setting} there (wss:// for https)"
        return ""


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "(unknown status)"


def _retry_after(headers: Any) -> float:
    """The seconds of a ``Retry-After`` given in seconds; 0 when absent or a date."""
    try:
        return max(0.0, float((headers or {}).get("Retry-After", "")))
    except (TypeError, ValueError):
        return 0.0
