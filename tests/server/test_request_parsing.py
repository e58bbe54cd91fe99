"""Parsing what a request carries, whoever sends it: If-Match before authorization and its RFC 9110
syntax (SPEC §4, §5), malformed tokens, bodies and headers answered in the JSON error shape (SPEC §2,
§4, §6), and control characters in the path escaped in the log (no log forging).

Everything runs against real servers: the in-process api_server/notifier apps on 127.0.0.1, or a real
``python -m api_server`` process where the process's own HTTP stack matters. Bytes that aiohttp's
client refuses to send (non-ASCII header bytes, oversized headers, percent-encoded control characters
in the path) go through a raw asyncio socket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import time
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from support import ADMIN, assert_error

TIMEOUT = 10.0
Client = TestClient[Any, Any]
Token = Callable[..., str]


# --- helpers ------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def forged_token(alg: Any) -> str:
    """A JWT whose header carries ``alg`` (any JSON value); the signature is junk."""
    now = int(time.time())
    header = b64json({"alg": alg, "kid": "test-rsa-1", "typ": "JWT"})
    payload = b64json({"username": ADMIN, "sub": ADMIN, "iat": now, "exp": now + 3600})
    return f"{header}.{payload}.{b64url(b'x' * 64)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(
    client: Client, token: Token, method: str, key: str, *, user: str = ADMIN, body: Any = None, if_match: str = ""
) -> tuple[int, Any]:
    """One API call on ``/keys/{key}``; the status and the decoded body (None for 204)."""
    headers = bearer(token(user))
    if if_match:
        headers["If-Match"] = if_match
    async with client.request(method, f"/keys/{key}", headers=headers, json=body) as resp:
        return resp.status, (await resp.json() if resp.status != 204 else None)


async def put(client: Client, token: Token, key: str, value: Any, **extra: Any) -> dict[str, Any]:
    status, body = await call(client, token, "PUT", key, body={"value": value, **extra})
    assert status in (200, 201), body
    return body  # type: ignore[no-any-return]


async def raw_http(port: int, request: bytes, timeout: float = TIMEOUT) -> tuple[int, dict[str, str], bytes]:
    """Send hand-made HTTP/1.1 bytes to 127.0.0.1:``port``; the status, headers (lower-case) and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
        else:
            body = await asyncio.wait_for(reader.read(), timeout)
        return int(status_line.split()[1]), headers, body
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


def get_request(target: bytes, *extra_headers: bytes) -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close", *extra_headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def json_error_of(status: int, headers: dict[str, str], body: bytes) -> Any:
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body[:300])
    return json.loads(body)


# --- A. If-Match comes after authorization (SPEC §5) ---------------------------------------------


async def test_if_match_on_a_key_the_caller_may_not_touch_is_403(
    client: Client, token: Token, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.guarded"
    await put(client, token, key, 1, acls={"read": ["owner-only"], "write": ["owner-only"]})
    await put(client, token, key, 2)  # version 2: a 412 would tell the stranger "Key is at version 2"
    stranger = f"{unique_prefix}-stranger"
    for method, body in (("PUT", {"value": "x"}), ("PATCH", {"value": "x"}), ("DELETE", None)):
        for tag in ('"0"', '"2"', "*"):
            status, answer = await call(client, token, method, key, user=stranger, body=body, if_match=tag)
            assert_error(status, answer, 403, "Forbidden")
            assert "version" not in answer["message"].lower(), (method, tag, answer)


async def test_if_match_on_a_key_the_caller_may_not_create_is_403(
    client: Client, token: Token, unique_prefix: str
) -> None:
    never = f"{unique_prefix}.phantom"
    deleted = f"{unique_prefix}.deleted"
    await put(client, token, deleted, 1, acls={"read": ["owner-only"], "write": ["owner-only"]})
    assert (await call(client, token, "DELETE", deleted))[0] == 204
    stranger = f"{unique_prefix}-stranger"
    for key in (never, deleted):
        for tag in ('"0"', '"1"', "*"):
            status, answer = await call(client, token, "PUT", key, user=stranger, body={"value": 1}, if_match=tag)
            assert_error(status, answer, 403, "Forbidden")
            assert "exist" not in answer["message"].lower(), (key, tag, answer)


# --- A. If-Match syntax (SPEC §4, RFC 9110) ------------------------------------------------------


async def test_if_match_lists_star_and_bare_versions(client: Client, token: Token, unique_prefix: str) -> None:
    """Already honoured by the unfixed code; kept so a stricter parser does not break them."""
    key = f"{unique_prefix}.listed"
    await put(client, token, key, 1)
    await put(client, token, key, 2)  # version 2
    status, body = await call(client, token, "PUT", key, body={"value": 3}, if_match='"1", "2"')
    assert (status, body["version"]) == (200, 3), body
    status, body = await call(client, token, "PATCH", key, body={"value": 4}, if_match='"9","3" , "8"')
    assert (status, body["version"]) == (200, 4), body
    status, body = await call(client, token, "PUT", key, body={"value": 5}, if_match="*")
    assert (status, body["version"]) == (200, 5), body
    status, body = await call(client, token, "PUT", key, body={"value": 6}, if_match="5")
    assert (status, body["version"]) == (200, 6), body
    status, body = await call(client, token, "PUT", key, body={"value": 7}, if_match='"1", "2"')
    assert_error(status, body, 412, "Precondition Failed")
    status, body = await call(client, token, "PUT", f"{unique_prefix}.absent", body={"value": 1}, if_match="*")
    assert_error(status, body, 412, "Precondition Failed")
    status, body = await call(client, token, "GET", f"{unique_prefix}.absent")
    assert status == 404, body


async def test_weak_etag_never_matches(client: Client, token: Token, unique_prefix: str) -> None:
    key = f"{unique_prefix}.weak"
    await put(client, token, key, 1)  # version 1
    for method, body in (("PUT", {"value": 2}), ("PATCH", {"value": 2}), ("DELETE", None)):
        for tag in ('W/"1"', 'W/"1", W/"2"'):
            status, answer = await call(client, token, method, key, body=body, if_match=tag)
            assert_error(status, answer, 412, "Precondition Failed")
    status, answer = await call(client, token, "GET", key)
    assert (status, answer["version"]) == (200, 1), answer
    status, answer = await call(client, token, "PUT", key, body={"value": 2}, if_match='W/"1", "1"')
    assert (status, answer["version"]) == (200, 2), answer  # a strong tag in the list still matches


@pytest.mark.parametrize("header", ["abc", '"2', "W/2", '*, "2"', '"2" "3"'])
async def test_malformed_if_match_is_400(client: Client, token: Token, unique_prefix: str, header: str) -> None:
    key = f"{unique_prefix}.malformed"
    await put(client, token, key, 1)
    await put(client, token, key, 2)  # version 2: a lenient parser would read most of these as "2"
    statuses: dict[str, tuple[int, Any]] = {}
    for method, body in (("PUT", {"value": 3}), ("PATCH", {"value": 3}), ("DELETE", None)):
        statuses[method] = await call(client, token, method, key, body=body, if_match=header)
    for method, (status, answer) in statuses.items():
        assert status == 400, f"{method} with If-Match {header!r}: {status} {answer}"
        assert_error(status, answer, 400, "Bad Request")
    status, answer = await call(client, token, "GET", key)
    assert (status, answer["version"]) == (200, 2), answer


# --- B. malformed tokens, bodies and headers -----------------------------------------------------


@pytest.mark.parametrize("alg", [["RS256"], {"a": 1}], ids=["list", "object"])
async def test_jwt_header_with_non_string_alg_is_401(client: Client, unique_prefix: str, alg: Any) -> None:
    async with client.get(f"/keys?namespace={unique_prefix}", headers=bearer(forged_token(alg))) as resp:
        assert_error(resp.status, await resp.json(), 401, "Unauthorized")


async def test_non_ascii_bearer_token_is_401(client: Client, unique_prefix: str) -> None:
    assert client.port is not None
    answers: dict[bytes, tuple[int, str | None, bytes]] = {}
    for raw_token in (b"\xff\xfe\xfd", b"\xe9t\xe9", b"abc\x80def.ghi.jkl", b"eyJ\xc3\xa9.eyJ.sig"):
        request = get_request(f"/keys?namespace={unique_prefix}".encode(), b"Authorization: Bearer " + raw_token)
        status, headers, body = await raw_http(client.port, request)
        answers[raw_token] = (status, headers.get("content-type"), body[:200])
    for raw_token, (status, content_type, body) in answers.items():
        assert status == 401, f"Bearer {raw_token!r}: {status} {body!r}"
        assert (content_type or "").startswith("application/json"), (raw_token, content_type)
        assert_error(status, json.loads(body), 401, "Unauthorized")


async def test_put_with_a_body_that_is_not_gzip_is_400(client: Client, token: Token, unique_prefix: str) -> None:
    key = f"{unique_prefix}.gzip"
    headers = {**bearer(token()), "Content-Type": "application/json", "Content-Encoding": "gzip"}
    headers["Connection"] = "close"  # the server may drop a connection whose body it could not decode
    async with client.put(f"/keys/{key}", data=b'{"value": "not gzip at all"}', headers=headers) as resp:
        assert resp.content_type == "application/json", await resp.text()
        assert_error(resp.status, await resp.json(), 400, "Bad Request")
    status, body = await call(client, token, "GET", key)
    assert status == 404, body


async def test_oversized_header_is_a_json_4xx_that_does_not_echo_the_token(
    spawn: Callable[..., Any], unique_prefix: str
) -> None:
    api = spawn("api_server")
    marker = uuid4().hex
    secret = f"eyJ{marker}" + "Q" * 9000  # one header line well over aiohttp's 8,190 bytes
    request = get_request(f"/keys?namespace={unique_prefix}".encode(), f"Authorization: Bearer {secret}".encode())
    status, headers, body = await raw_http(api.port, request)
    assert status in (400, 431), (status, headers, body[:300])
    answer = json_error_of(status, headers, body)
    assert_error(status, answer, (400, 431))
    text = body.decode("utf-8", "replace")
    for fragment in ("eyJ", marker, marker[:8], "QQQQQQQQ"):
        assert fragment not in text, f"answer echoes the token ({fragment!r}): {text[:300]}"
    async with aiohttp.ClientSession() as session, session.get(f"{api.url}/health") as resp:
        assert resp.status == 200  # the process is still serving
    assert marker not in api.log(), "the token was logged"  # the error was logged before the answer was sent


@pytest.mark.parametrize("alg", [["RS256"], {"a": 1}], ids=["list", "object"])
@pytest.mark.parametrize("via", ["query", "message"])
async def test_watch_with_malformed_alg_token_gets_error_then_4401(
    notifier_server: TestServer, alg: Any, via: str
) -> None:
    token = forged_token(alg)
    params = {"access_token": token} if via == "query" else {}
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(notifier_server.make_url("/watch"), params=params, heartbeat=None)
        try:
            if via == "message":
                await ws.send_str(json.dumps({"token": token}))
            messages: list[Any] = []
            deadline = time.monotonic() + TIMEOUT
            while True:
                msg = await asyncio.wait_for(ws.receive(), max(0.01, deadline - time.monotonic()))
                if msg.type != WSMsgType.TEXT:
                    break
                messages.append(json.loads(msg.data))
            assert msg.type == WSMsgType.CLOSE, f"expected close 4401, got {msg.type!r} {msg.data!r} {msg.extra!r}"
            assert msg.data == 4401, f"close code {msg.data} ({msg.extra!r})"
            assert messages and messages[0].get("event") == "error", messages
            assert messages[0].get("error") == "Unauthorized", messages
        finally:
            await ws.close()


# --- C. log forging (control characters in the access log) ---------------------------------------


async def test_control_characters_in_the_path_are_escaped_in_the_log(
    spawn: Callable[..., Any], token: Token, unique_prefix: str
) -> None:
    api = spawn("api_server", LOG_LEVEL="INFO")
    forged = "2026-12-02 14:00:00,000 ERROR api_server: FORGED"
    tail = f"2026-12-02%2014:00:00,000%20ERROR%20api_server:%20FORGED-{unique_prefix}".encode()
    good = f"Authorization: Bearer {token()}".encode()
    requests = [
        get_request(b"/nothing%0A" + tail),  # no token: 401
        get_request(b"/nothing%0A" + tail, good),  # a valid token: 404
        get_request(b"/nothing%0D" + tail),
        get_request(b"/nothing%0D%0A" + tail, good),
        get_request(b"/nothing%1B%5B2K%1B%5B1G" + tail + b"%7F%00%09", good),
    ]
    for request in requests:
        status, _headers, body = await raw_http(api.port, request)
        assert 400 <= status < 500, (request[:80], status, body[:300])
    api.popen.send_signal(signal.SIGTERM)
    await asyncio.to_thread(api.popen.wait, TIMEOUT)  # every line flushed
    log = api.log_path.read_bytes().decode("utf-8", "replace")  # bytes: read_text() would turn \r into \n

    for line in re.split("[\r\n]", log):
        assert not line.startswith(forged), f"forged log line: {line!r}"
    control = sorted({f"\\x{ord(c):02x}" for c in log if (ord(c) < 0x20 and c != "\n") or ord(c) == 0x7F})
    assert not control, f"raw control characters in the log: {control}\n{log[-3000:]!r}"
    marked = [line for line in log.split("\n") if f"FORGED-{unique_prefix}" in line]
    assert len(marked) >= len(requests), f"requests missing from the access log:\n{log[-3000:]}"
    assert all("/nothing" in line for line in marked), marked


# --- D. every caller-supplied string that reaches Postgres ----------------------------------------


@pytest.mark.parametrize("entry", ["bob\u0000", "bob\u001b", "bob\u007f", "\ud800bob"])
async def test_acl_entry_with_control_character_or_surrogate_is_400(
    client: Client, token: Token, unique_prefix: str, entry: str
) -> None:
    key = f"{unique_prefix}.acl"
    acls = {"read": [entry], "write": []}
    status, answer = await call(client, token, "PUT", key, body={"value": 1, "acls": acls})
    assert_error(status, answer, 400)
    assert answer["fields"]["acls"], answer
    async with client.put(f"/namespaces/{unique_prefix}", headers=bearer(token(ADMIN)), json={"acls": acls}) as resp:
        assert_error(resp.status, await resp.json(), 400)
    status, _ = await call(client, token, "GET", key)
    assert status == 404


async def test_value_with_a_lone_surrogate_is_400(client: Client, token: Token, unique_prefix: str) -> None:
    key = f"{unique_prefix}.surrogate"
    status, answer = await call(client, token, "PUT", key, body={"value": "a\ud800b"})
    assert_error(status, answer, 400)
    status, _ = await call(client, token, "GET", key)
    assert status == 404


@pytest.mark.parametrize(
    "query",
    ["actor=a%00b", "key=a%00b", "actor=a%1Bb", "actor=" + "a" * 300, "cursor=" + b64url(str(2**70).encode())],
)
async def test_audit_filters_are_bounded_printable_text_and_cursors_bigints(
    client: Client, token: Token, query: str
) -> None:
    async with client.get(f"/audit?{query}", headers=bearer(token(ADMIN))) as resp:
        assert_error(resp.status, await resp.json(), 400)


async def test_history_cursor_out_of_range_is_400(client: Client, token: Token, unique_prefix: str) -> None:
    key = f"{unique_prefix}.history"
    await put(client, token, key, 1)
    cursor = b64url(str(-(2**70)).encode())
    async with client.get(f"/keys/{key}/history?cursor={cursor}", headers=bearer(token(ADMIN))) as resp:
        assert_error(resp.status, await resp.json(), 400)


async def test_requests_the_http_parser_refuses_get_the_json_error_shape(spawn: Callable[..., Any]) -> None:
    """A made-up method or a broken request line never reaches our middlewares; the answer is JSON all the same."""
    api = spawn("api_server")
    for request in (b"FROBNICATE /keys HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /keys HTTP/9\r\nHost: x\r\n\r\n"):
        status, headers, body = await raw_http(api.port, request)
        assert_error(status, json_error_of(status, headers, body), 400)
