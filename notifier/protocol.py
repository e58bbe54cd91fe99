"""The ``/watch`` protocol (SPEC §6) as a client sees it: what it may send and how that is read, and
what it is answered when something is wrong (error events, close codes and their reasons).

Nothing here does I/O: :mod:`notifier.watch` runs one socket with it, and is the only module that
closes a watch socket. It is apart from :mod:`notifier.frames`, which is RFC 6455 framing (bytes for
the hub's fan-out), not what the messages mean.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

from aiohttp import WSCloseCode, web

from shared.errors import DynConfigError, Unauthorized
from shared.security.auth import bearer_token
from shared.validation import key_problem, parse_since_version

MAX_PATTERNS = 1000
AUTH_TIMEOUT_SECONDS = 10.0

CLOSE_UNAUTHORIZED = 4401
CLOSE_SLOW_CONSUMER = 4008
CLOSE_BAD_REQUEST = 4400
CLOSE_TRY_AGAIN = 1013  # RFC 6455 §7.4.1 (IANA): try again later
CLOSE_INTERNAL = WSCloseCode.INTERNAL_ERROR
CLOSE_GOING_AWAY = WSCloseCode.GOING_AWAY
# The reason sent with each close code (a browser shows it as CloseEvent.reason). Every close of a watch
# socket takes its reason from this list.
REASON_INVALID_TOKEN = "unauthorized: invalid or expired token"
REASON_NO_TOKEN = "unauthorized: send a token first"
REASON_AUTH_TIMEOUT = "unauthorized: no valid token within {seconds:g} s"
REASON_TOKEN_EXPIRED = "unauthorized: token expired"
REASON_SLOW_CONSUMER = "slow consumer: backlog over {limit} bytes, resume with since_version"
REASON_HELD_EVENTS = "slow consumer: over {limit} events held back during replay, resume with since_version"
REASON_BAD_SINCE = "bad request: invalid since_version"
REASON_SHUTDOWN = "server shutting down"
REASON_INTERNAL = "internal server error"
REASON_UNAVAILABLE = "database unavailable: reconnect and resume with since_version"
MAX_REASON_BYTES = 123  # RFC 6455 §5.5: 125 bytes of payload, 2 of them the code
_PREFIX = re.compile(r"^[A-Za-z0-9._:/-]{0,255}\*$")


def close_message(reason: str) -> bytes:
    """``reason`` as a close frame's payload: UTF-8, cut to 123 bytes at a character boundary."""
    return reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore").encode()


# --- error events ----------------------------------------------------------------------------------


def error_event(phrase: str, message: str) -> dict[str, Any]:
    """``{"event": "error", "error": <phrase>, "message": ...}``: the phrases are SPEC §4's."""
    return {"event": "error", "error": phrase, "message": message}


def error_event_of(exc: DynConfigError) -> dict[str, Any]:
    """A domain error (a refused token) as an error event, in the JSON error shape."""
    return {"event": "error", **exc.body()}


def bad_request(message: str) -> dict[str, Any]:
    """The answer to a message we cannot take (the connection stays open)."""
    return error_event("Bad Request", message)


NO_TOKEN = error_event("Unauthorized", "Send a token first")
AUTH_TIMEOUT = error_event("Unauthorized", f"No valid token within {AUTH_TIMEOUT_SECONDS:g} s")
TOKEN_EXPIRED = error_event("Unauthorized", "Token expired; reconnect with a fresh token")
OTHER_USER = error_event("Unauthorized", "A fresh token must be for the same user")
UNAVAILABLE = error_event("Service Unavailable", "The database is unavailable; reconnect and resume with since_version")
NOT_TEXT = bad_request("messages are JSON text")


def rate_limited(message: str, retry_after: int) -> dict[str, Any]:
    """A message over the user's rate limit: ignored, the connection stays open."""
    return error_event("Rate Limited", f"{message}; message ignored, retry in {retry_after} s")


# --- what a client sends ---------------------------------------------------------------------------


class BadMessage(Exception):
    """A client message we answer with an error event (the connection stays open)."""


#: How a subscribe may ask for transactions (SPEC §6): as single events with the transaction's
#: revision, or as one ``txn`` frame (the default).
TXN_SPLIT = "split"
TXN_MODES = (TXN_SPLIT, "frame")


class Subscribe(NamedTuple):
    """A ``subscribe`` message, checked."""

    patterns: list[str]
    since: int | None
    snapshot: bool
    #: ``"txn": "split"``: a transaction's changes as single events (True), or as one ``txn`` frame
    #: (False, ``"txn": "frame"``); None when the message does not say (the connection keeps its mode).
    split_txn: bool | None = None


def pattern_problem(pattern: Any) -> str | None:
    """Why ``pattern`` is not a valid watch pattern (exact key, or a prefix ending in ``*``)."""
    if not isinstance(pattern, str):
        return "patterns are strings"
    if pattern.endswith("*"):
        return None if _PREFIX.match(pattern) else f"invalid prefix pattern {pattern!r}"
    problem = key_problem(pattern)
    return f"invalid pattern {pattern!r}: {problem}" if problem else None


def pattern_matches(pattern: str, key: str) -> bool:
    """Does one watch pattern match ``key``?"""
    return key.startswith(pattern[:-1]) if pattern.endswith("*") else key == pattern


def parse_message(text: str) -> dict[str, Any]:
    """A client message: a JSON object."""
    try:
        message = json.loads(text)
    except ValueError:
        raise BadMessage("messages are JSON objects") from None
    if not isinstance(message, dict):
        raise BadMessage("messages are JSON objects")
    return message


def parse_subscribe(message: dict[str, Any], since_default: int | None) -> Subscribe:
    """The fields of a ``subscribe`` message; ``since_default`` stands in for a missing ``since_version``
    (the query parameter's, for a connection's first subscribe)."""
    patterns = message["subscribe"]
    if not isinstance(patterns, list) or not patterns:
        raise BadMessage("subscribe takes a non-empty list of patterns")
    for pattern in patterns:
        problem = pattern_problem(pattern)
        if problem:
            raise BadMessage(problem)
    since = message.get("since_version", since_default)
    if since is not None and (not isinstance(since, int) or isinstance(since, bool) or since < 0):
        raise BadMessage("since_version must be a whole number >= 0")
    snapshot = message.get("snapshot", False)
    if not isinstance(snapshot, bool):
        raise BadMessage("snapshot must be true or false")
    txn = message.get("txn")
    if txn not in (None, *TXN_MODES):
        raise BadMessage(f"txn must be {' or '.join(repr(mode) for mode in TXN_MODES)}")
    return Subscribe(patterns, since, snapshot, None if txn is None else txn == TXN_SPLIT)


def parse_unsubscribe(patterns: Any) -> list[str]:
    """The patterns of an ``unsubscribe`` message."""
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise BadMessage("unsubscribe takes a list of patterns")
    return patterns


def parse_token(token: Any) -> str:
    """The token of a ``token`` message (or of the handshake)."""
    if not isinstance(token, str) or not token:
        raise Unauthorized("token must be a non-empty string")
    return token


def token_from_request(request: web.Request) -> str | None:
    """A token from the Authorization header or the ``access_token`` query parameter."""
    header = request.headers.get("Authorization")
    if header:
        try:
            return bearer_token(header)
        except Unauthorized:
            return ""
    return request.query.get("access_token")


def since_from_request(request: web.Request) -> int | None:
    """The ``since_version`` query parameter, of any size (see :func:`parse_since_version`); raises
    :class:`~shared.errors.BadRequest`."""
    raw = request.query.get("since_version")
    return None if raw is None else parse_since_version(raw, bigint=False)
