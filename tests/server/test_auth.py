"""SPEC §2: bearer JWTs verified against the JWKS, through the HTTP API."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm
from support import ADMIN, eventually

from shared.security.auth import VERIFIER

# --- helpers ------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def claims(username: Any = ADMIN, exp_in: int = 3600) -> dict[str, Any]:
    now = int(time.time())
    return {"username": username, "sub": "someone", "iat": now, "exp": now + exp_in}


def signed(key: Any, payload: str) -> str:
    """A JWT with ``payload`` as written (numbers JSON allows but Python's encoder would not make), signed
    by a published EC key of the test JWKS."""
    header = b64json({"alg": "ES256", "kid": key.kid, "typ": "JWT"})
    signing_input = f"{header}.{b64url(payload.encode())}".encode()
    signature = ECAlgorithm(ECAlgorithm.SHA256).sign(signing_input, key.private_key)
    return f"{signing_input.decode()}.{b64url(signature)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def probe(prefix: str) -> str:
    """A cheap authenticated route: the (empty) list of keys in the test's own namespace."""
    return f"/keys?namespace={prefix}"


async def assert_401(response: Any) -> dict[str, Any]:
    assert response.status == 401, await response.text()
    body = await response.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == "Unauthorized"
    assert isinstance(body["message"], str) and body["message"]
    return body


async def assert_ok(response: Any) -> dict[str, Any]:
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["keys"] == []
    return body


class DocumentServer:
    """A real HTTP JWKS endpoint serving an arbitrary document (for documents the shared JWKS can't express)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def app(self) -> web.Application:
        async def serve(_request: web.Request) -> web.Response:
            return web.json_response(self.document)

        app = web.Application()
        app.router.add_get("/jwks.json", serve)
        return app


# --- the Authorization header -------------------------------------------------------------------


async def test_missing_authorization_header_is_401(client, unique_prefix):
    await assert_401(await client.get(probe(unique_prefix)))


async def test_basic_scheme_is_401(client, unique_prefix):
    await assert_401(await client.get(probe(unique_prefix), headers={"Authorization": "Basic xxx"}))


async def test_bearer_without_token_is_401(client, unique_prefix):
    await assert_401(await client.get(probe(unique_prefix), headers={"Authorization": "Bearer"}))
    await assert_401(await client.get(probe(unique_prefix), headers={"Authorization": "Bearer   "}))


async def test_garbage_token_is_401(client, unique_prefix):
    for garbage in ("garbage", "a.b.c", "eyJhbGciOiJFUzI1NiJ9.e30.", "not a jwt at all"):
        await assert_401(await client.get(probe(unique_prefix), headers=bearer(garbage)))


async def test_unknown_route_without_token_is_401(client, unique_prefix):
    # SPEC §2: every request except /health, /metrics, /openapi.json needs a bearer token.
    await assert_401(await client.get(f"/no-such-route-{unique_prefix}"))
    await assert_401(await client.post("/keys", json={}))  # a known path, wrong method


# --- time claims ----------------------------------------------------------------------------------


async def test_token_expired_beyond_leeway_is_401(client, token, unique_prefix):
    await assert_401(await client.get(probe(unique_prefix), headers=bearer(token(exp_in=-31))))


async def test_token_expired_within_leeway_is_accepted(client, token, unique_prefix):
    await assert_ok(await client.get(probe(unique_prefix), headers=bearer(token(exp_in=-10))))


async def test_nbf_in_future_beyond_leeway_is_401(client, token, unique_prefix):
    await assert_401(await client.get(probe(unique_prefix), headers=bearer(token(nbf=int(time.time()) + 60))))


async def test_nbf_in_future_within_leeway_is_accepted(client, token, unique_prefix):
    await assert_ok(await client.get(probe(unique_prefix), headers=bearer(token(nbf=int(time.time()) + 10))))


async def test_iat_in_future_beyond_leeway_is_401(client, token, unique_prefix):
    await assert_401(await client.get(probe(unique_prefix), headers=bearer(token(iat=int(time.time()) + 120))))


async def test_token_without_exp_is_401(client, token, unique_prefix):
    await assert_401(await client.get(probe(unique_prefix), headers=bearer(token(exp_in=None))))


# SPEC §2: exp/nbf/iat must be numbers a date can hold. 10**400 is a valid JSON number (and PyJWT accepts
# it as a Python int); 1e400 parses to infinity. Either was a 500 (OverflowError) before.
@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("literal", ["1" + "0" * 400, "1e400", "-1e400", "1e300"])
async def test_time_claim_out_of_range_is_401(client, jwks, unique_prefix, claim, literal):
    base = claims()
    base.pop(claim, None)
    payload = json.dumps(base)[:-1] + f', "{claim}": {literal}}}'
    token = signed(jwks.ec_key, payload)
    await assert_401(await client.get(probe(unique_prefix), headers=bearer(token)))


async def test_exp_out_of_range_on_watch_is_an_error_then_4401(notifier_server, jwks):
    token = signed(jwks.ec_key, json.dumps({"username": ADMIN, "exp": int("1" + "0" * 400)}))
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(notifier_server.make_url("/watch"), headers=bearer(token)) as ws:
            first = await ws.receive_json(timeout=10)
            assert first["event"] == "error" and first["error"] == "Unauthorized", first
            closing = await ws.receive(timeout=10)
            assert closing.type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 4401


# --- keys and algorithms ------------------------------------------------------------------------


async def test_token_signed_by_unpublished_key_with_published_kid_is_401(client, jwks, token, unique_prefix):
    forger = jwks.new_key("ec", "test-key-1")  # same kid as the published key, different private key
    await assert_401(await client.get(probe(unique_prefix), headers=bearer(token(key=forger))))


async def test_unknown_kid_is_401(client, jwks, token, unique_prefix):
    stranger = jwks.new_key("ec")
    await assert_401(await client.get(probe(unique_prefix), headers=bearer(token(key=stranger))))


async def test_alg_none_is_401(client, unique_prefix):
    forged = f"{b64json({'alg': 'none', 'kid': 'test-key-1', 'typ': 'JWT'})}.{b64json(claims())}."
    await assert_401(await client.get(probe(unique_prefix), headers=bearer(forged)))


async def test_hs256_signed_with_rsa_public_pem_is_401(client, jwks, unique_prefix):
    pem = jwks.rsa_key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64json({'alg': 'HS256', 'kid': 'test-rsa-1', 'typ': 'JWT'})}.{b64json(claims())}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{b64url(signature)}"
    await assert_401(await client.get(probe(unique_prefix), headers=bearer(forged)))


async def test_rs384_token_against_rs256_jwk_is_401(client, jwks, token, unique_prefix):
    rs384 = dataclasses.replace(jwks.rsa_key, alg="RS384")  # same key and kid, other algorithm
    await assert_401(await client.get(probe(unique_prefix), headers=bearer(token(key=rs384))))


async def test_ec_and_rsa_tokens_are_accepted(client, token, unique_prefix):
    await assert_ok(await client.get(probe(unique_prefix), headers=bearer(token(key="ec"))))
    await assert_ok(await client.get(probe(unique_prefix), headers=bearer(token(key="rsa"))))


# --- username ---------------------------------------------------------------------------------


async def test_missing_username_is_401(client, token, unique_prefix):
    await assert_401(await client.get(probe(unique_prefix), headers=bearer(token(username=None, sub="someone"))))


async def test_empty_username_is_401(client, token, unique_prefix):
    await assert_401(await client.get(probe(unique_prefix), headers=bearer(token(username="", sub="someone"))))


async def test_non_string_username_is_401(client, token, unique_prefix):
    await assert_401(await client.get(probe(unique_prefix), headers=bearer(token(username=123, sub="someone"))))


# SPEC §2: a username is at most 256 characters of valid Unicode, with no control or format character
# (Cc, Cf) and no line/paragraph separator. A lone surrogate is a legal JSON escape ("\ud800") that
# Python decodes into a str nothing downstream can encode (redis-py, psycopg2).
@pytest.mark.parametrize(
    "username",
    [
        "eve\ud800",
        "\udfffeve",
        "eve\u200b",  # zero-width space (Cf)
        "eve\u202e",  # right-to-left override (Cf)
        "eve\ufeff",  # byte order mark (Cf)
        "eve\u2028",  # line separator
        "eve\u2029",  # paragraph separator
        "eve\u0085",  # next line (C1, Cc)
        "eve\x9f",
        "x" * 257,
        "   ",
    ],
)
async def test_username_that_is_not_clean_unicode_is_401(client, token, unique_prefix, username):
    await assert_401(await client.get(probe(unique_prefix), headers=bearer(token(username=username, sub="s"))))


@pytest.mark.parametrize("username", ["élodie", "王小明", "user@example.com", "svc:payments/eu-1", "x" * 256])
async def test_usernames_of_clean_unicode_are_accepted(client, token, unique_prefix, username):
    await assert_ok(await client.get(probe(unique_prefix), headers=bearer(token(username=username, sub="s"))))


# --- open routes --------------------------------------------------------------------------------


async def test_health_metrics_openapi_need_no_token(client):
    health = await client.get("/health")
    assert health.status == 200
    assert (await health.json())["status"] == "healthy"
    metrics = await client.get("/metrics")
    assert metrics.status == 200
    assert "dynconfig_http_request_duration_seconds" in await metrics.text()
    openapi = await client.get("/openapi.json")
    assert openapi.status == 200
    assert "paths" in await openapi.json()


# --- issuer and audience ------------------------------------------------------------------------


async def test_issuer_and_audience_enforced_when_set(make_client, settings, token, unique_prefix):
    client = await make_client(settings.replace(jwt_issuer="https://issuer", jwt_audience="dynconfig"))
    url = probe(unique_prefix)
    await assert_ok(await client.get(url, headers=bearer(token(iss="https://issuer", aud="dynconfig"))))
    await assert_401(await client.get(url, headers=bearer(token(iss="https://other", aud="dynconfig"))))
    await assert_401(await client.get(url, headers=bearer(token(aud="dynconfig"))))
    await assert_401(await client.get(url, headers=bearer(token(iss="https://issuer", aud="other"))))
    await assert_401(await client.get(url, headers=bearer(token(iss="https://issuer"))))


async def test_issuer_and_audience_not_enforced_when_unset(client, token, unique_prefix):
    await assert_ok(await client.get(probe(unique_prefix), headers=bearer(token(iss="https://any", aud="any"))))


# --- JWKS ---------------------------------------------------------------------------------------


async def test_key_added_after_start_is_picked_up_on_unknown_kid(client, jwks, token, unique_prefix):
    new = jwks.new_key("rsa")
    jwks.add_key(new)  # published after the app loaded the JWKS
    await assert_ok(await client.get(probe(unique_prefix), headers=bearer(token(key=new))))


async def test_unknown_kid_refresh_at_most_once_per_30s(client, jwks, token, unique_prefix):
    before = jwks.fetch_count
    for _ in range(2):
        await assert_401(await client.get(probe(unique_prefix), headers=bearer(token(key=jwks.new_key("ec")))))
    assert jwks.fetch_count - before <= 1


async def test_app_starts_when_jwks_fails_and_refuses_tokens_until_it_loads(make_client, jwks, token, unique_prefix):
    jwks.fail_with = 500
    client = await make_client()
    assert (await client.get("/openapi.json")).status == 200  # the app is up
    await assert_401(await client.get(probe(unique_prefix), headers=bearer(token())))
    jwks.fail_with = None

    # The app must load the JWKS on its own (retry / unknown-kid refresh); allow a few seconds.
    async def accepted() -> Any:
        response = await client.get(probe(unique_prefix), headers=bearer(token()))
        return response if response.status == 200 else None

    response = await eventually(accepted, 8, "a token accepted once the JWKS is back", interval=0.25)
    await assert_ok(response)


async def test_jwks_oct_and_enc_keys_are_ignored(aiohttp_server, make_client, settings, jwks, unique_prefix):
    secret = os.urandom(32)
    enc = jwks.new_key("rsa", "enc-1")
    document = {
        "keys": [
            {"kty": "oct", "kid": "hmac-1", "alg": "HS256", "use": "sig", "k": b64url(secret)},
            {**enc.public_jwk(), "use": "enc"},
            jwks.ec_key.public_jwk(),
        ]
    }
    server = await aiohttp_server(DocumentServer(document).app())
    client = await make_client(settings.replace(jwks_url=str(server.make_url("/jwks.json"))))
    url = probe(unique_prefix)

    signing_input = f"{b64json({'alg': 'HS256', 'kid': 'hmac-1', 'typ': 'JWT'})}.{b64json(claims())}"
    hs = f"{signing_input}.{b64url(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"
    await assert_401(await client.get(url, headers=bearer(hs)))
    await assert_401(await client.get(url, headers=bearer(jwks.token(key=enc))))
    await assert_ok(await client.get(url, headers=bearer(jwks.token(key="ec"))))


async def test_file_jwks_url_works(make_client, settings, jwks, token, tmp_path: Path, unique_prefix):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwks.ec_key.public_jwk()]}))
    client = await make_client(settings.replace(jwks_url=path.as_uri()))
    await assert_ok(await client.get(probe(unique_prefix), headers=bearer(token(key="ec"))))
    await assert_401(await client.get(probe(unique_prefix), headers=bearer(token(key="rsa"))))


# --- token cache --------------------------------------------------------------------------------


async def test_verified_token_is_cached(client, token, unique_prefix):
    verifier = client.app[VERIFIER]
    jwt_ = token(username=f"{unique_prefix}-user")
    await assert_ok(await client.get(probe(unique_prefix), headers=bearer(jwt_)))
    assert jwt_ in verifier._cache
    size = len(verifier._cache)
    await assert_ok(await client.get(probe(unique_prefix), headers=bearer(jwt_)))
    assert len(verifier._cache) == size
    assert jwt_ in verifier._cache


async def test_cached_token_dropped_when_its_kid_leaves_jwks(client, jwks, token, unique_prefix):
    verifier = client.app[VERIFIER]
    jwt_ = token(username=f"{unique_prefix}-user", key="rsa")
    await assert_ok(await client.get(probe(unique_prefix), headers=bearer(jwt_)))
    jwks.remove_key("test-rsa-1")
    await verifier.jwks.refresh()
    await assert_401(await client.get(probe(unique_prefix), headers=bearer(jwt_)))
    # Tokens of keys still published keep working.
    await assert_ok(await client.get(probe(unique_prefix), headers=bearer(token(key="ec"))))


# --- logging ------------------------------------------------------------------------------------


async def test_token_is_never_logged(client, jwks, token, unique_prefix, caplog):
    caplog.set_level(logging.DEBUG)
    good = token(username=f"{unique_prefix}-user")
    expired = token(exp_in=-120)
    forged = token(key=jwks.new_key("ec", "test-key-1"))
    unknown = token(key=jwks.new_key("ec"))
    await assert_ok(await client.get(probe(unique_prefix), headers=bearer(good)))
    for bad in (expired, forged, unknown, "garbage.token.here"):
        await assert_401(await client.get(probe(unique_prefix), headers=bearer(bad)))
    assert "garbage.token.here" not in caplog.text
    for secret in (good, expired, forged, unknown):
        assert secret not in caplog.text
        assert secret.rsplit(".", 1)[1] not in caplog.text  # nor its signature alone
