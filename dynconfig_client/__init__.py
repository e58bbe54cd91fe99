"""The DynConfig client: an async HTTP client, a live in-memory view with callbacks, a sync facade.

    from dynconfig_client import Client, LiveConfig, SyncLiveConfig

See the README section "Use it from your service".
"""

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
from .live import Change, LiveConfig
from .models import AuditRecord, EventKind, KeyPage, KeyValue, Namespace, PollResult, Version, WriteResult
from .stream import EventStream
from .sync import SyncLiveConfig

__all__ = [
    "UNSET",
    "ApiError",
    "AuditRecord",
    "BadRequest",
    "Change",
    "Client",
    "ConnectionFailed",
    "DynConfigClientError",
    "EventKind",
    "EventStream",
    "Forbidden",
    "KeyPage",
    "KeyValue",
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
    "Unauthorized",
    "Version",
    "WriteResult",
    "watch_url",
]
