"""``shared.settings``: every SPEC §1 variable parsed from a dict env; bad ones name themselves."""

from __future__ import annotations

import base64
import dataclasses
import ssl
from pathlib import Path

import pytest
from support import write_self_signed

from shared.settings import Settings, SettingsError

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
PG_PASSWORD = "pg-pass-Zq81x"
BASE_ENV = {
    "POSTGRES_URL": f"postgresql://dynconfig:{PG_PASSWORD}@db.internal:5432/dynconfig",
    "REDIS_HOST": "cache.internal",
    "JWKS_URL": "https://auth.example.com/.well-known/jwks.json",
    "ENCRYPTION_KEYS": f"k1:{base64.b64encode(KEY_A).decode()}",
}


def env(**changes: str | None) -> dict[str, str]:
    """BASE_ENV with some variables set (a value of None removes the variable)."""
    out = dict(BASE_ENV)
    for name, value in changes.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def bad(variable: str, **changes: str | None) -> SettingsError:
    """Parse and expect a SettingsError whose message names ``variable``."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env(**changes))
    assert variable in str(info.value), str(info.value)
    return info.value


@pytest.fixture
def cert_pair(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate and its key, as PEM files."""
    cert, key = write_self_signed(tmp_path)
    return str(cert), str(key)


# --- what parses --------------------------------------------------------------------------------


def test_minimal_env_gives_spec_defaults() -> None:
    s = Settings.from_env(env())
    assert s.postgres_url == BASE_ENV["POSTGRES_URL"]
    assert s.redis_url == "redis://cache.internal:6379/0"
    assert s.jwks_url == BASE_ENV["JWKS_URL"]
    assert s.encryption_keys == (("k1", KEY_A),)
    assert s.rate_limit == 1000
    assert s.admin_users == frozenset({"admin-user"})
    assert s.jwt_issuer is None
    assert s.jwt_audience is None
    assert s.tls_cert_file is None
    assert s.tls_key_file is None
    assert s.ssl_context() is None
    assert s.log_level == "INFO"
    assert s.api_port == 8080


def test_postgres_connection_settings_have_defaults_and_are_read() -> None:
    s = Settings.from_env(env())
    assert (
        s.postgres_statement_timeout_seconds,
        s.postgres_idle_in_transaction_timeout_seconds,
        s.postgres_keepalives_idle_seconds,
        s.postgres_keepalives_interval_seconds,
        s.postgres_keepalives_count,
        s.postgres_pool_size,
    ) == (10, 30, 30, 10, 3, 20)
    s = Settings.from_env(
        env(
            POSTGRES_STATEMENT_TIMEOUT_SECONDS="3",
            POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS="20",
            POSTGRES_KEEPALIVES_IDLE_SECONDS="15",
            POSTGRES_KEEPALIVES_INTERVAL_SECONDS="5",
            POSTGRES_KEEPALIVES_COUNT="4",
            POSTGRES_POOL_SIZE="8",
        )
    )
    assert (
        s.postgres_statement_timeout_seconds,
        s.postgres_idle_in_transaction_timeout_seconds,
        s.postgres_keepalives_idle_seconds,
        s.postgres_keepalives_interval_seconds,
        s.postgres_keepalives_count,
        s.postgres_pool_size,
    ) == (3, 20, 15, 5, 4, 8)


def test_postgres_listen_url_is_optional_and_read() -> None:
    assert Settings.from_env(env()).postgres_listen_url is None
    url = "postgresql://dynconfig@db-direct.internal:5432/dynconfig"
    assert Settings.from_env(env(POSTGRES_LISTEN_URL=url)).postgres_listen_url == url


#: (what the env changes, the settings that follow from it): one row per case.
PARSED = [
    pytest.param(
        {"POSTGRES_URL": "postgres://u@localhost/db"},
        {"postgres_url": "postgres://u@localhost/db"},
        id="postgres-scheme-postgres-accepted",
    ),
    pytest.param(
        {"REDIS_HOST": "10.0.0.7", "REDIS_PORT": "6390"},
        {"redis_url": "redis://10.0.0.7:6390/0"},
        id="redis-host-with-redis-port",
    ),
    pytest.param(
        {"REDIS_HOST": None, "REDIS_URL": "redis://127.0.0.1:7001/3"},
        {"redis_url": "redis://127.0.0.1:7001/3"},
        id="redis-url-alone-is-enough",
    ),
    *(
        pytest.param({"JWKS_URL": url}, {"jwks_url": url}, id=f"jwks-url-{url.split(':')[0]}-accepted")
        for url in (
            "http://127.0.0.1:9000/jwks.json",
            "https://auth.example.com/jwks",
            "file:///etc/dynconfig/jwks.json",
        )
    ),
    pytest.param({"RATE_LIMIT": "250"}, {"rate_limit": 250}, id="rate-limit"),
    pytest.param(
        {"ADMIN_USERS": "alice, bob ,service:ops"},
        {"admin_users": frozenset({"alice", "bob", "service:ops"})},
        id="admin-users-comma-list",
    ),
    pytest.param(
        {"ENCRYPTION_KEYS": f"new:{base64.b64encode(KEY_B).decode()},old:{base64.b64encode(KEY_A).decode()}"},
        {"encryption_keys": (("new", KEY_B), ("old", KEY_A))},
        id="encryption-keys-keep-order-first-is-active",
    ),
    pytest.param({"LOG_LEVEL": "debug"}, {"log_level": "DEBUG"}, id="log-level-case-insensitive"),
    pytest.param(
        {"JWT_ISSUER": "https://issuer.example", "JWT_AUDIENCE": "dynconfig"},
        {"jwt_issuer": "https://issuer.example", "jwt_audience": "dynconfig"},
        id="jwt-issuer-and-audience",
    ),
    pytest.param({"API_PORT": "9090"}, {"api_port": 9090}, id="api-port"),
]


@pytest.mark.parametrize(("changes", "expected"), PARSED)
def test_setting_is_read(changes: dict[str, str | None], expected: dict[str, object]) -> None:
    s = Settings.from_env(env(**changes))
    for name, value in expected.items():
        assert getattr(s, name) == value


def test_tls_cert_and_key_give_a_tls13_context(cert_pair: tuple[str, str]) -> None:
    cert, key = cert_pair
    s = Settings.from_env(env(TLS_CERT_FILE=cert, TLS_KEY_FILE=key))
    assert (s.tls_cert_file, s.tls_key_file) == (cert, key)
    ctx = s.ssl_context()
    assert ctx is not None
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("1", True), ("No", False), ("off", False)])
def test_reuse_port_is_read(raw: str, expected: bool) -> None:
    assert Settings.from_env(env(REUSE_PORT=raw)).reuse_port is expected
    assert Settings.from_env(env()).reuse_port is False


def test_settings_are_frozen() -> None:
    s = Settings.from_env(env())
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.rate_limit = 5  # type: ignore[misc]


# --- what is refused, naming the variable -------------------------------------------------------

SHORT_KEY = base64.b64encode(b"0123456789abcdef").decode()


def refused(variable: str, raw: str | None, *, hidden: str | None = None, **also: str | None) -> object:
    """A row of REFUSED: ``variable`` set to ``raw`` (None: removed) plus ``also``; the error must name
    ``variable`` and must not echo ``hidden``."""
    ident = f"{variable}={raw!r}" + "".join(f",{k}={v!r}" for k, v in also.items())
    return pytest.param(variable, {variable: raw, **also}, hidden, id=ident)


#: (the variable the error names, what the env changes, a secret the error must not echo).
REFUSED = [
    refused("POSTGRES_URL", None),
    refused("POSTGRES_URL", f"mysql://root:{PG_PASSWORD}@db/dynconfig", hidden=PG_PASSWORD),
    refused("POSTGRES_URL", "postgresql://u@db.internal:5432/"),  # no database
    refused("POSTGRES_URL", "postgresql://u@db.internal:notaport/db"),
    refused("POSTGRES_LISTEN_URL", "mysql://db/x"),
    refused("POSTGRES_LISTEN_URL", "postgresql://db.internal:5432"),
    refused("POSTGRES_STATEMENT_TIMEOUT_SECONDS", "0"),
    refused("POSTGRES_STATEMENT_TIMEOUT_SECONDS", "2.5"),
    refused("POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS", "0"),
    refused("POSTGRES_KEEPALIVES_IDLE_SECONDS", "soon"),
    refused("POSTGRES_KEEPALIVES_INTERVAL_SECONDS", "0"),
    refused("POSTGRES_KEEPALIVES_COUNT", "0"),
    refused("POSTGRES_POOL_SIZE", "2"),
    refused("REDIS_HOST", None),  # and no REDIS_URL
    refused("REDIS_PORT", "sixty"),
    refused("REDIS_URL", "http://127.0.0.1:6379", REDIS_HOST=None),
    refused("JWKS_URL", None),
    refused("JWKS_URL", "ftp://auth.example.com/jwks.json"),
    *(refused("RATE_LIMIT", raw) for raw in ("abc", "0", "-5", "1.5")),
    refused("REUSE_PORT", "sometimes"),
    refused("ADMIN_USERS", " , "),
    refused("ENCRYPTION_KEYS", None),
    refused("ENCRYPTION_KEYS", f"k1:{SHORT_KEY}", hidden=SHORT_KEY),  # 16 bytes
    refused("ENCRYPTION_KEYS", "k1:not*base64!"),
    refused("ENCRYPTION_KEYS", base64.b64encode(KEY_A).decode()),  # no id
    refused(
        "ENCRYPTION_KEYS", f"k1:{base64.b64encode(KEY_A).decode()},k1:{base64.b64encode(KEY_B).decode()}"
    ),  # the same id twice
    refused("LOG_LEVEL", "LOUD"),
    *(refused("API_PORT", raw) for raw in ("70000", "0", "http")),
]


@pytest.mark.parametrize(("variable", "changes", "hidden"), REFUSED)
def test_malformed_setting_names_itself(variable: str, changes: dict[str, str | None], hidden: str | None) -> None:
    exc = bad(variable, **changes)
    if hidden is not None:
        assert hidden not in str(exc)


def test_tls_cert_without_key_names_tls_key_file(cert_pair: tuple[str, str]) -> None:
    bad("TLS_KEY_FILE", TLS_CERT_FILE=cert_pair[0])


def test_tls_key_without_cert_names_tls_cert_file(cert_pair: tuple[str, str]) -> None:
    bad("TLS_CERT_FILE", TLS_KEY_FILE=cert_pair[1])


def test_tls_cert_file_that_does_not_exist_names_it(tmp_path: Path, cert_pair: tuple[str, str]) -> None:
    bad("TLS_CERT_FILE", TLS_CERT_FILE=str(tmp_path / "nope.pem"), TLS_KEY_FILE=cert_pair[1])


def test_tls_files_that_are_not_pem_name_tls_cert_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    bad("TLS_CERT_FILE", TLS_CERT_FILE=str(junk), TLS_KEY_FILE=str(junk))


# --- secrets ------------------------------------------------------------------------------------


def test_repr_hides_postgres_password_and_encryption_keys() -> None:
    s = Settings.from_env(env(REDIS_HOST=None, REDIS_URL="redis://:redis-pass-77q@cache.internal:6379/0"))
    for text in (repr(s), str(s)):
        assert PG_PASSWORD not in text
        assert "redis-pass-77q" not in text
        assert base64.b64encode(KEY_A).decode() not in text
        assert repr(KEY_A) not in text
        assert KEY_A.hex() not in text
