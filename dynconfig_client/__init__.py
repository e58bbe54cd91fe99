"""The DynConfig client: an async HTTP client, a live in-memory view with callbacks, a sync facade.

    from dynconfig_client import Client, LiveConfig, SyncLiveConfig

See the README section "Use it from your service".

Every name below is imported on first use (PEP 562), so ``import dynconfig_client.cli`` does not pay
for aiohttp and cryptography before it knows whether the command needs them (``dynconfig --help``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .auth import TokenSource
    from .client import UNSET, Client, watch_url
    from .errors import (
        ApiError,
        BadRequest,
        ConnectionFailed,
        DynConfigClientError,
        Forbidden,
        NotFound,
        PayloadTooLarge,
        PreconditionFailed,
        RateLimited,
        ServerError,
        Unauthorized,
    )
    from .live import Change, LiveConfig, TxnChange
    from .models import (
        AuditRecord,
        ChangeEvent,
        EventKind,
        KeyPage,
        KeyValue,
        KeyVersion,
        Namespace,
        PollResult,
        TxnEvent,
        TxnResult,
        Version,
        WriteResult,
        parse_event,
    )
    from .stream import EventStream
    from .sync import SyncLiveConfig
    from .txn import Txn

#: Where each exported name lives (module of this package).
_EXPORTS = {
    "TokenSource": "auth",
    **dict.fromkeys(["UNSET", "Client", "watch_url"], "client"),
    **dict.fromkeys(
        [
            "ApiError",
            "BadRequest",
            "ConnectionFailed",
            "DynConfigClientError",
            "Forbidden",
            "NotFound",
            "PayloadTooLarge",
            "PreconditionFailed",
            "RateLimited",
            "ServerError",
            "Unauthorized",
        ],
        "errors",
    ),
    **dict.fromkeys(["Change", "LiveConfig", "TxnChange"], "live"),
    **dict.fromkeys(
        [
            "AuditRecord",
            "ChangeEvent",
            "EventKind",
            "KeyPage",
            "KeyValue",
            "KeyVersion",
            "Namespace",
            "PollResult",
            "TxnEvent",
            "TxnResult",
            "Version",
            "WriteResult",
            "parse_event",
        ],
        "models",
    ),
    "EventStream": "stream",
    "SyncLiveConfig": "sync",
    "Txn": "txn",
}

__all__ = [
    "UNSET",
    "ApiError",
    "AuditRecord",
    "BadRequest",
    "Change",
    "ChangeEvent",
    "Client",
    "ConnectionFailed",
    "DynConfigClientError",
    "EventKind",
    "EventStream",
    "Forbidden",
    "KeyPage",
    "KeyValue",
    "KeyVersion",
    "LiveConfig",
    "Namespace",
    "NotFound",
    "PayloadTooLarge",
    "PollResult",
    "PreconditionFailed",
    "RateLimited",
    "ServerError",
    "SyncLiveConfig",
    "TokenSource",
    "Txn",
    "TxnChange",
    "TxnEvent",
    "TxnResult",
    "Unauthorized",
    "Version",
    "WriteResult",
    "parse_event",
    "watch_url",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
