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


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("POSTGRES_LISTEN_URL", "mysql://db/x"),
        ("POSTGRES_LISTEN_URL", "postgresql://db.internal:5432"),
        ("POSTGRES_STATEMENT_TIMEOUT_SECONDS", "0"),
        ("POSTGRES_STATEMENT_TIMEOUT_SECONDS", "2.5"),
        ("POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS", "0"),
        ("POSTGRES_KEEPALIVES_IDLE_SECONDS", "soon"),
        ("POSTGRES_KEEPALIVES_INTERVAL_SECONDS", "0"),
        ("POSTGRES_KEEPALIVES_COUNT", "0"),
        ("POSTGRES_POOL_SIZE", "2"),
    ],
)
def test_malformed_postgres_connection_setting_names_it(variable: str, raw: str) -> None:
    bad(variable, **{variable: raw})


def test_postgres_scheme_postgres_is_accepted() -> None:
    url = "postgres://u@localhost/db"
    assert Settings.from_env(env(POSTGRES_URL=url)).postgres_url == url


def test_redis_host_with_redis_port() -> None:
    s = Settings.from_env(env(REDIS_HOST="10.0.0.7", REDIS_PORT="6390"))
    assert s.redis_url == "redis://10.0.0.7:6390/0"


def test_redis_url_alone_is_enough() -> None:
    s = Settings.from_env(env(REDIS_HOST=None, REDIS_URL="redis://127.0.0.1:7001/3"))
    assert s.redis_url == "redis://127.0.0.1:7001/3"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9000/jwks.json", "https://auth.example.com/jwks", "file:///etc/dynconfig/jwks.json"],
)
def test_jwks_url_http_https_and_file_are_accepted(url: str) -> None:
    assert Settings.from_env(env(JWKS_URL=url)).jwks_url == url


def test_rate_limit_is_parsed() -> None:
    assert Settings.from_env(env(RATE_LIMIT="250")).rate_limit == 250


def test_admin_users_is_a_comma_list() -> None:
    s = Settings.from_env(env(ADMIN_USERS="alice, bob ,service:ops"))
    assert s.admin_users == frozenset({"alice", "bob", "service:ops"})


def test_encryption_keys_keep_order_first_is_active() -> None:
    raw = f"new:{base64.b64encode(KEY_B).decode()},old:{base64.b64encode(KEY_A).decode()}"
    s = Settings.from_env(env(ENCRYPTION_KEYS=raw))
    assert s.encryption_keys == (("new", KEY_B), ("old", KEY_A))


def test_tls_cert_and_key_give_a_tls13_context(cert_pair: tuple[str, str]) -> None:
    cert, key = cert_pair
    s = Settings.from_env(env(TLS_CERT_FILE=cert, TLS_KEY_FILE=key))
    assert (s.tls_cert_file, s.tls_key_file) == (cert, key)
    ctx = s.ssl_context()
    assert ctx is not None
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3


def test_log_level_is_case_insensitive() -> None:
    assert Settings.from_env(env(LOG_LEVEL="debug")).log_level == "DEBUG"


def test_jwt_issuer_and_audience_are_read() -> None:
    s = Settings.from_env(env(JWT_ISSUER="https://issuer.example", JWT_AUDIENCE="dynconfig"))
    assert s.jwt_issuer == "https://issuer.example"
    assert s.jwt_audience == "dynconfig"


def test_api_port_is_read() -> None:
    assert Settings.from_env(env(API_PORT="9090")).api_port == 9090


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("1", True), ("No", False), ("off", False)])
def test_reuse_port_is_read(raw: str, expected: bool) -> None:
    assert Settings.from_env(env(REUSE_PORT=raw)).reuse_port is expected
    assert Settings.from_env(env()).reuse_port is False


def test_settings_are_frozen() -> None:
    s = Settings.from_env(env())
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.rate_limit = 5  # type: ignore[misc]


# --- what is refused, naming the variable -------------------------------------------------------


def test_missing_postgres_url_names_it() -> None:
    bad("POSTGRES_URL", POSTGRES_URL=None)


def test_mysql_postgres_url_names_it_without_echoing_the_password() -> None:
    exc = bad("POSTGRES_URL", POSTGRES_URL=f"mysql://root:{PG_PASSWORD}@db/dynconfig")
    assert PG_PASSWORD not in str(exc)


def test_postgres_url_without_database_names_it() -> None:
    bad("POSTGRES_URL", POSTGRES_URL="postgresql://u@db.internal:5432/")


def test_postgres_url_with_malformed_port_names_it() -> None:
    bad("POSTGRES_URL", POSTGRES_URL="postgresql://u@db.internal:notaport/db")


def test_missing_redis_host_and_url_names_redis_host() -> None:
    bad("REDIS_HOST", REDIS_HOST=None)


def test_malformed_redis_port_names_it() -> None:
    bad("REDIS_PORT", REDIS_PORT="sixty")


def test_redis_url_with_wrong_scheme_names_it() -> None:
    bad("REDIS_URL", REDIS_HOST=None, REDIS_URL="http://127.0.0.1:6379")


def test_missing_jwks_url_names_it() -> None:
    bad("JWKS_URL", JWKS_URL=None)


def test_ftp_jwks_url_names_it() -> None:
    bad("JWKS_URL", JWKS_URL="ftp://auth.example.com/jwks.json")


@pytest.mark.parametrize("raw", ["abc", "0", "-5", "1.5"])
def test_malformed_rate_limit_names_it(raw: str) -> None:
    bad("RATE_LIMIT", RATE_LIMIT=raw)


def test_malformed_reuse_port_names_it() -> None:
    bad("REUSE_PORT", REUSE_PORT="sometimes")


def test_empty_admin_users_names_it() -> None:
    bad("ADMIN_USERS", ADMIN_USERS=" , ")


def test_missing_encryption_keys_names_it() -> None:
    bad("ENCRYPTION_KEYS", ENCRYPTION_KEYS=None)


def test_16_byte_encryption_key_names_it_without_echoing_the_key() -> None:
    short = base64.b64encode(b"0123456789abcdef").decode()
    exc = bad("ENCRYPTION_KEYS", ENCRYPTION_KEYS=f"k1:{short}")
    assert short not in str(exc)


def test_bad_base64_encryption_key_names_it() -> None:
    bad("ENCRYPTION_KEYS", ENCRYPTION_KEYS="k1:not*base64!")


def test_encryption_keys_without_id_names_it() -> None:
    bad("ENCRYPTION_KEYS", ENCRYPTION_KEYS=base64.b64encode(KEY_A).decode())


def test_duplicate_encryption_key_id_names_it() -> None:
    a = base64.b64encode(KEY_A).decode()
    b = base64.b64encode(KEY_B).decode()
    bad("ENCRYPTION_KEYS", ENCRYPTION_KEYS=f"k1:{a},k1:{b}")


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


def test_unknown_log_level_names_it() -> None:
    bad("LOG_LEVEL", LOG_LEVEL="LOUD")


@pytest.mark.parametrize("raw", ["70000", "0", "http"])
def test_malformed_api_port_names_it(raw: str) -> None:
    bad("API_PORT", API_PORT=raw)


# --- secrets ------------------------------------------------------------------------------------


def test_repr_hides_postgres_password_and_encryption_keys() -> None:
    s = Settings.from_env(env(REDIS_HOST=None, REDIS_URL="redis://:redis-pass-77q@cache.internal:6379/0"))
    for text in (repr(s), str(s)):
        assert PG_PASSWORD not in text
        assert "redis-pass-77q" not in text
        assert base64.b64encode(KEY_A).decode() not in text
        assert repr(KEY_A) not in text
        assert KEY_A.hex() not in text
