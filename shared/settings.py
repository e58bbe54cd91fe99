"""Process settings, read from the environment once at start-up (SPEC §1).

Only ``main()`` functions call :meth:`Settings.from_env`; tests build ``Settings(...)`` directly.
A missing or malformed variable raises :class:`SettingsError`, which ``main()`` turns into one line
on stderr and a non-zero exit.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import ssl
import sys
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from aiohttp import web

LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_USERNAME = re.compile(r"^\S{1,256}$")
#: Ids of audit keys derived from encryption keys (shared/audit/chain.py) start with this; an
#: ``AUDIT_HMAC_KEY`` id may not, so the two kinds never mix.
DERIVED_AUDIT_KEY_PREFIX = "enc."
DAY_SECONDS = 86400
#: Retention beyond this many days is a typo, not a policy (and would overflow a date).
_MAX_RETENTION_DAYS = 100 * 365


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name


#: The settings only some programs use, by the variable that names each (``REDIS_URL`` stands for
#: ``REDIS_HOST``/``REDIS_PORT`` too). The three processes use them all; a one-off command names those
#: it uses (:meth:`Settings.from_env`'s ``uses``), and the others are neither required nor read.
OPTIONAL_PARTS = frozenset({"REDIS_URL", "JWKS_URL", "ENCRYPTION_KEYS", "AUDIT_HMAC_KEY"})


@dataclass(frozen=True)
class Settings:
    """Everything a DynConfig process is configured with."""

    postgres_url: str = field(repr=False)
    #: Empty (and ``encryption_keys`` too) only in a one-off command that does not use it.
    redis_url: str = field(default="", repr=False)
    jwks_url: str = ""
    encryption_keys: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    #: Keys of the audit chain's HMAC (``id:base64key,…``, first active; at least 32 bytes each). Empty:
    #: a key derived from each encryption key is used instead (shared/audit/chain.py).
    audit_hmac_keys: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    rate_limit: int = 1000
    admin_users: frozenset[str] = frozenset({"admin-user"})
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    log_level: str = "INFO"
    host: str = "0.0.0.0"
    api_port: int = 8080
    notifier_port: int = 8081
    expiry_port: int = 8082
    #: Let several processes of one kind share their port (SO_REUSEPORT; the kernel spreads connections
    #: among them): the way to use more than one core per machine outside Kubernetes.
    reuse_port: bool = False
    #: How long a cached current value may live in Redis (a safety net; writes update it).
    cache_ttl_seconds: int = 60
    #: How long a process waits for Postgres at start-up before giving up.
    startup_timeout_seconds: float = 30.0
    #: How long relayed changes stay in the change log (watch resume and polling reach back this far).
    changelog_retention_seconds: int = 86400
    #: JWKS refresh period (unknown ``kid`` also triggers a refresh, at most once per 30 s).
    jwks_refresh_seconds: float = 300.0
    #: How often each process checks that its keyring opens the values in use (shared/security/keyring_check.py).
    keyring_check_seconds: float = 30.0
    #: How often each api_server logs and exports a checkpoint of the audit chain's head.
    audit_checkpoint_seconds: int = 60
    #: ``dynconfig-migrate``: how long a migration waits for a lock (``lock_timeout``) before it gives
    #: up and tries again later, so it never holds every writer up queued behind a long transaction.
    migrate_lock_timeout_seconds: float = 5.0
    #: ``dynconfig-migrate``: the ``statement_timeout`` of a migration's statements in a transaction.
    migrate_statement_timeout_seconds: float = 60.0
    #: ``dynconfig-migrate``: how many times it tries (a lock not had in time, Postgres unreachable).
    migrate_attempts: int = 5
    #: Every Postgres connection (shared/db.py ``dsn_for``). ``statement_timeout`` of the pooled ones
    #: (requests and background batches; the dedicated LISTEN connections have their own).
    postgres_statement_timeout_seconds: int = 10
    #: ``idle_in_transaction_session_timeout`` of every connection: a transaction left open by a stuck
    #: process gives its row locks back after this.
    postgres_idle_in_transaction_timeout_seconds: int = 30
    #: TCP keepalives, both ends of every connection: a peer gone without a word (a node lost, a
    #: partition) is found after idle + interval × count seconds, and its locks released.
    postgres_keepalives_idle_seconds: int = 30
    postgres_keepalives_interval_seconds: int = 10
    postgres_keepalives_count: int = 3
    #: The most connections a process's pool opens (the notifier has a second pool for watchers).
    postgres_pool_size: int = 20
    #: Where the dedicated connections (LISTEN, the relay's lock) go, when not to ``postgres_url``: with
    #: ``POSTGRES_URL`` on a transaction-mode PgBouncer, this one reaches Postgres itself.
    postgres_listen_url: str | None = field(default=None, repr=False)
    #: How long audit records are kept (``AUDIT_RETENTION_DAYS``, or ``AUDIT_RETENTION_SECONDS``), and
    #: past versions of keys (``HISTORY_RETENTION_…``: a key's current version and its 10 newest past
    #: ones are kept whatever their age); api_server/retention.py removes older ones.
    audit_retention_seconds: float = 365 * DAY_SECONDS
    history_retention_seconds: float = 365 * DAY_SECONDS
    #: How often the pruning api_server looks for rows past retention.
    retention_interval_seconds: float = 60.0

    def ssl_context(self) -> ssl.SSLContext | None:
        """A server TLS context (TLS 1.3 minimum) when a certificate is configured."""
        if not self.tls_cert_file:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        return ctx

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed (handy in tests)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, uses: AbstractSet[str] = OPTIONAL_PARTS) -> Settings:
        """Read and validate every setting; raise :class:`SettingsError` naming the first bad one.
        Of :data:`OPTIONAL_PARTS`, only those in ``uses`` are read (a one-off command's own list)."""
        env = os.environ if env is None else env
        cert = _optional(env, "TLS_CERT_FILE")
        key = _optional(env, "TLS_KEY_FILE")
        if bool(cert) != bool(key):
            missing = "TLS_KEY_FILE" if cert else "TLS_CERT_FILE"
            raise SettingsError(missing, "TLS_CERT_FILE and TLS_KEY_FILE must be set together")
        for name, path in (("TLS_CERT_FILE", cert), ("TLS_KEY_FILE", key)):
            if path and not Path(path).is_file():
                raise SettingsError(name, f"no readable file at {path}")
        settings = cls(
            postgres_url=parse_postgres_url(_required(env, "POSTGRES_URL")),
            redis_url=_redis_url(env) if "REDIS_URL" in uses else "",
            jwks_url=parse_jwks_url(_required(env, "JWKS_URL")) if "JWKS_URL" in uses else "",
            encryption_keys=parse_keyring(_required(env, "ENCRYPTION_KEYS")) if "ENCRYPTION_KEYS" in uses else (),
            audit_hmac_keys=_audit_keys(env) if "AUDIT_HMAC_KEY" in uses else (),
            rate_limit=_int(env, "RATE_LIMIT", 1000, minimum=1),
            admin_users=_admins(env),
            jwt_issuer=_optional(env, "JWT_ISSUER"),
            jwt_audience=_optional(env, "JWT_AUDIENCE"),
            tls_cert_file=cert,
            tls_key_file=key,
            log_level=_log_level(env),
            host=_optional(env, "HOST") or "0.0.0.0",
            api_port=_int(env, "API_PORT", 8080, minimum=1, maximum=65535),
            notifier_port=_int(env, "NOTIFIER_PORT", 8081, minimum=1, maximum=65535),
            expiry_port=_int(env, "EXPIRY_PORT", 8082, minimum=1, maximum=65535),
            reuse_port=_bool(env, "REUSE_PORT", False),
            cache_ttl_seconds=_int(env, "CACHE_TTL_SECONDS", 60, minimum=1),
            changelog_retention_seconds=_int(env, "CHANGELOG_RETENTION_SECONDS", 86400, minimum=60),
            startup_timeout_seconds=float(_int(env, "STARTUP_TIMEOUT_SECONDS", 30, minimum=0)),
            keyring_check_seconds=float(_int(env, "KEYRING_CHECK_SECONDS", 30, minimum=1)),
            audit_checkpoint_seconds=_int(env, "AUDIT_CHECKPOINT_SECONDS", 60, minimum=1, maximum=86400),
            migrate_lock_timeout_seconds=float(_int(env, "MIGRATE_LOCK_TIMEOUT_SECONDS", 5, minimum=1, maximum=600)),
            migrate_statement_timeout_seconds=float(
                _int(env, "MIGRATE_STATEMENT_TIMEOUT_SECONDS", 60, minimum=1, maximum=86400)
            ),
            migrate_attempts=_int(env, "MIGRATE_ATTEMPTS", 5, minimum=1, maximum=100),
            postgres_listen_url=_postgres_listen_url(env),
            **_postgres_connection_settings(env),
            audit_retention_seconds=_retention(env, "AUDIT_RETENTION_DAYS", "AUDIT_RETENTION_SECONDS"),
            history_retention_seconds=_retention(env, "HISTORY_RETENTION_DAYS", "HISTORY_RETENTION_SECONDS"),
            retention_interval_seconds=float(_int(env, "RETENTION_INTERVAL_SECONDS", 60, minimum=1, maximum=86400)),
        )
        if cert:
            try:
                settings.ssl_context()
            except (ssl.SSLError, OSError) as exc:
                raise SettingsError("TLS_CERT_FILE", f"cannot load certificate/key: {exc}") from None
        return settings


SETTINGS = web.AppKey("settings", Settings)
#: The process's name ("api_server", "notifier", …), for logs, metrics and connection names.
PROCESS = web.AppKey("process", str)


def exit_on_bad_settings(process: str, exc: SettingsError) -> NoReturn:
    """Print the one line SPEC §1 asks for and stop."""
    print(f"{process}: invalid setting {exc}", file=sys.stderr)
    raise SystemExit(2)


def _optional(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _required(env: Mapping[str, str], name: str) -> str:
    value = _optional(env, name)
    if value is None:
        raise SettingsError(name, "is required but not set")
    return value


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    raw = _optional(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(name, f"must be a whole number, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise SettingsError(name, f"must be {bound}, got {value}")
    return value


def _retention(env: Mapping[str, str], days_name: str, seconds_name: str) -> float:
    """A retention in seconds: ``seconds_name`` (whole seconds, for tests and demos) if set, else
    ``days_name`` (default 365; fractions allowed: 0.5 is twelve hours)."""
    longest = _MAX_RETENTION_DAYS * DAY_SECONDS
    if _optional(env, seconds_name) is not None:
        return float(_int(env, seconds_name, 0, minimum=1, maximum=longest))
    raw = _optional(env, days_name)
    if raw is None:
        return 365.0 * DAY_SECONDS
    try:
        days = float(raw)
    except ValueError:
        raise SettingsError(days_name, f"must be a number of days (fractions allowed), got {raw!r}") from None
    if not 0 < days <= _MAX_RETENTION_DAYS:  # also refuses nan and inf
        raise SettingsError(days_name, f"must be more than 0 and at most {_MAX_RETENTION_DAYS} days, got {raw}")
    return days * DAY_SECONDS


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _optional(env, name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(name, f"must be true or false, got {raw!r}")


def parse_postgres_url(url: str, name: str = "POSTGRES_URL") -> str:
    """Accept ``postgres://`` or ``postgresql://`` URLs with a host and a database name."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise SettingsError(name, "must start with postgresql:// (e.g. postgresql://user:pw@host:5432/db)")
    try:
        _ = parts.port
    except ValueError:
        raise SettingsError(name, "has a malformed port") from None
    if not parts.hostname or parts.path in ("", "/"):
        raise SettingsError(name, "must name a host and a database (postgresql://user@host:5432/db)")
    return url


def _redis_url(env: Mapping[str, str]) -> str:
    url = _optional(env, "REDIS_URL")
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise SettingsError("REDIS_URL", "must start with redis://, rediss:// or unix://")
        try:
            _ = parts.port
        except ValueError:
            raise SettingsError("REDIS_URL", "has a malformed port") from None
        return url
    host = _optional(env, "REDIS_HOST")
    if host is None:
        raise SettingsError("REDIS_HOST", "is required (or set REDIS_URL)")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", host):
        raise SettingsError("REDIS_HOST", f"is not a host name: {host!r}")
    port = _int(env, "REDIS_PORT", 6379, minimum=1, maximum=65535)
    return f"redis://{host}:{port}/0"


def parse_jwks_url(url: str) -> str:
    """``http(s)://…`` or ``file://…`` (SPEC §1)."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname:
        return url
    if parts.scheme == "file" and parts.path:
        return url
    raise SettingsError("JWKS_URL", "must be an http(s)://… or file://… URL")


def parse_keyring(raw: str, setting: str = "ENCRYPTION_KEYS", *, hmac: bool = False) -> tuple[tuple[str, bytes], ...]:
    """``id:base64key,…``; the first is the active one. Every key 32 bytes (AES-256), or for an HMAC
    keyring at least 32 bytes."""
    keys: list[tuple[str, bytes]] = []
    for item in raw.split(","):
        item = item.strip()
        key_id, sep, b64 = item.partition(":")
        if not sep or not _KEY_ID.match(key_id):
            raise SettingsError(setting, "must be id:base64key[,id:base64key…] with ids of A-Z a-z 0-9 _ . -")
        try:
            secret = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise SettingsError(setting, f"key {key_id!r} is not valid base64") from None
        if hmac and len(secret) < 32:
            raise SettingsError(setting, f"key {key_id!r} must be at least 32 bytes, got {len(secret)}")
        if not hmac and len(secret) != 32:
            raise SettingsError(setting, f"key {key_id!r} must be 32 bytes (AES-256), got {len(secret)}")
        if any(key_id == existing for existing, _ in keys):
            raise SettingsError(setting, f"key id {key_id!r} appears twice")
        keys.append((key_id, secret))
    return tuple(keys)


def _audit_keys(env: Mapping[str, str]) -> tuple[tuple[str, bytes], ...]:
    raw = _optional(env, "AUDIT_HMAC_KEY")
    keys = () if raw is None else parse_keyring(raw, "AUDIT_HMAC_KEY", hmac=True)
    for key_id, _ in keys:
        if key_id.startswith(DERIVED_AUDIT_KEY_PREFIX):
            raise SettingsError("AUDIT_HMAC_KEY", f"key id {key_id!r} may not start with {DERIVED_AUDIT_KEY_PREFIX!r}")
    return keys


def _postgres_connection_settings(env: Mapping[str, str]) -> dict[str, int]:
    """The ``POSTGRES_*`` numbers of every connection (shared/db.py ``connector``)."""
    return {
        "postgres_statement_timeout_seconds": _int(
            env, "POSTGRES_STATEMENT_TIMEOUT_SECONDS", 10, minimum=1, maximum=3600
        ),
        "postgres_idle_in_transaction_timeout_seconds": _int(
            env, "POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS", 30, minimum=1, maximum=86400
        ),
        "postgres_keepalives_idle_seconds": _int(env, "POSTGRES_KEEPALIVES_IDLE_SECONDS", 30, minimum=1, maximum=7200),
        "postgres_keepalives_interval_seconds": _int(
            env, "POSTGRES_KEEPALIVES_INTERVAL_SECONDS", 10, minimum=1, maximum=600
        ),
        "postgres_keepalives_count": _int(env, "POSTGRES_KEEPALIVES_COUNT", 3, minimum=1, maximum=100),
        # The committer's two lanes, reads, the audit writer and the checks share it: fewer than 4 starve.
        "postgres_pool_size": _int(env, "POSTGRES_POOL_SIZE", 20, minimum=4, maximum=1000),
    }


def _postgres_listen_url(env: Mapping[str, str]) -> str | None:
    url = _optional(env, "POSTGRES_LISTEN_URL")
    return None if url is None else parse_postgres_url(url, "POSTGRES_LISTEN_URL")


def _admins(env: Mapping[str, str]) -> frozenset[str]:
    raw = env.get("ADMIN_USERS")
    if raw is None:
        return frozenset({"admin-user"})
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if not names or not all(_USERNAME.match(n) for n in names):
        raise SettingsError("ADMIN_USERS", "must be a comma-separated list of usernames")
    return frozenset(names)


def _log_level(env: Mapping[str, str]) -> str:
    level = (_optional(env, "LOG_LEVEL") or "INFO").upper()
    if level not in LOG_LEVELS:
        raise SettingsError("LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}")
    return level
