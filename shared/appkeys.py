"""Typed keys for application state; nothing is created at import time."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
import aiopg
from aiohttp import web

from .auth import TokenVerifier
from .crypto import Keyring
from .settings import Settings

if TYPE_CHECKING:
    from .audit import AuditWriter
    from .auditchain import AuditChain
    from .keyring_check import KeyringCheck
    from .metrics import Metrics
    from .nsacls import NamespaceAcls
    from .redis import RedisLink
    from .tasks import Supervisor

SETTINGS = web.AppKey("settings", Settings)
DB_POOL = web.AppKey("db_pool", aiopg.Pool)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
KEYRING = web.AppKey("keyring", Keyring)
VERIFIER = web.AppKey("verifier", TokenVerifier)
REDIS: web.AppKey[RedisLink] = web.AppKey("redis")
AUDIT: web.AppKey[AuditWriter] = web.AppKey("audit")
AUDIT_CHAIN: web.AppKey[AuditChain] = web.AppKey("audit_chain")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
SUPERVISOR: web.AppKey[Supervisor] = web.AppKey("supervisor")
NAMESPACE_ACLS: web.AppKey[NamespaceAcls] = web.AppKey("namespace_acls")
KEYRING_CHECK: web.AppKey[KeyringCheck] = web.AppKey("keyring_check")
#: Name of the process ("api_server", "notifier", …), for logs and metrics.
PROCESS = web.AppKey("process", str)
