"""The web console at /ui/ (issue: step 8), end to end in a real headless browser.

Debian's Chromium is driven by Playwright for Python (``executable_path``; Playwright's own browser
download does not work here). The stack is real: an api_server and a notifier with the test Postgres
and Redis, behind the dev front door, so the page reaches the API and ``/watch`` on one origin as it
does behind the Kubernetes Ingress. "Another client" is the Python client library on the API.
Screenshots go to ``test-artifacts/`` (git-ignored).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, Page, async_playwright, expect
from support import ADMIN, CHROMIUM_LAUNCH
from yarl import URL

from dynconfig_client import Client

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
WAIT_MS = 10_000
expect.set_options(timeout=WAIT_MS)  # assertions wait as long as actions do (a busy CI machine)
Token = Callable[..., str]


# --- the stack and the browser --------------------------------------------------------------------


@pytest.fixture
async def origin(aiohttp_server: Any, make_notifier: Callable[..., Any], settings: Any) -> str:
    """The front door's URL: /ui/ and the API from api_server, /watch from the notifier; an expiry
    worker turns due TTLs into ``expired`` events."""
    from api_server.main import create_app
    from devtools.frontdoor import create_app as front_door
    from expiry_worker.main import create_app as expiry_worker

    api = await aiohttp_server(create_app(settings))
    notifier = await make_notifier()
    await aiohttp_server(expiry_worker(settings))
    door = await aiohttp_server(front_door(_base(api), _base(notifier)))
    return _base(door)


def _base(server: Any) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, closed on the way out (every console test module's browser)."""
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(**CHROMIUM_LAUNCH)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def other(origin: str, token: Token) -> AsyncIterator[Client]:
    """Another client, writing through the same API as the console."""
    async with Client(origin, token(ADMIN)) as client:
        yield client


SignIn = Callable[..., Any]


@pytest.fixture
async def sign_in(browser: Browser, origin: str) -> AsyncIterator[SignIn]:
    """``await sign_in(jwt, viewport=None) -> (page, requested URLs)``: a fresh page signed in and live.

    Its browser context is closed at teardown, before the servers stop (an open WebSocket would
    otherwise hold their shutdown)."""
    contexts: list[Any] = []

    async def open_page(jwt: str, *, viewport: dict[str, int] | None = None) -> tuple[Page, list[str]]:
        context = await browser.new_context(viewport=viewport or {"width": 1280, "height": 900})
        contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        await page.goto(origin + "/ui/")
        await page.fill("#token", jwt)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.locator("#live")).to_have_text("Live")
        return page, requested

    yield open_page
    for context in contexts:
        await context.close()


async def show_namespace(page: Page, namespace: str) -> None:
    await page.fill("#namespace", namespace)
    await page.get_by_role("button", name="Show", exact=True).click()


async def open_key(page: Page, key: str) -> None:
    await page.locator("#key-list").get_by_role("button", name=key, exact=True).click()
    await expect(page.locator("#key-name")).to_have_text(key)


def shown_json(text: str) -> Any:
    return json.loads(text)


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / name), full_page=True)


# --- the journeys ---------------------------------------------------------------------------------


async def test_sign_in_create_a_key_and_see_it_change_live(
    sign_in: SignIn, origin: str, token: Token, other: Client, unique_prefix: str
) -> None:
    page, _ = await sign_in(token(ADMIN))
    await expect(page.locator("#who")).to_have_text("admin-user (admin)")
    await show_namespace(page, unique_prefix)

    key = f"{unique_prefix}.feature.enabled"
    await page.get_by_role("button", name="New key").click()
    await page.fill("#create-key", key)
    await page.fill("#create-value", '{"enabled": true, "rollout": 10}')
    await page.fill("#create-ttl", "3600")
    await page.fill("#create-read", "*")
    await page.fill("#create-write", "admin-user")
    await page.get_by_role("button", name="Create", exact=True).click()
    await expect(page.locator("#message")).to_contain_text(f"Created {key} (version 1)")
    await expect(page.locator("#key-version")).to_have_text("1")
    await expect(page.locator("#key-acls")).to_have_text("read: * · write: admin-user")
    await expect(page.locator("#key-ttl")).to_contain_text("3600 s, expires in 59 min")
    assert shown_json(await page.locator("#key-value").inner_text()) == {"enabled": True, "rollout": 10}
    assert (await other.get(key)).value == {"enabled": True, "rollout": 10}

    # Another client changes it: the open key and the list follow without a reload.
    await other.patch(key, {"enabled": True, "rollout": 50})
    await expect(page.locator("#key-version")).to_have_text("2")
    assert shown_json(await page.locator("#key-value").inner_text()) == {"enabled": True, "rollout": 50}
    second = f"{unique_prefix}.limits.rps"
    await other.put(second, 100)
    await expect(page.locator("#key-list")).to_contain_text(second)
    await expect(page.locator("#total")).to_contain_text(f"2 keys in {unique_prefix}")
    await screenshot(page, "console.png")


async def test_an_if_match_conflict_keeps_the_draft_and_lets_the_user_choose(
    sign_in: SignIn, origin: str, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.timeout"
    await other.put(key, {"ms": 100})
    page, _ = await sign_in(token(ADMIN))
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    await page.get_by_role("button", name="Edit", exact=True).click()
    await page.fill("#draft", '{"ms": 250}')

    # A live update while the user edits: shown, the draft untouched.
    await other.patch(key, {"ms": 999})
    banner = page.locator("#remote-change")
    await expect(banner).to_contain_text("now version 2. Your draft is untouched")
    assert shown_json(await page.input_value("#draft")) == {"ms": 250}
    await page.get_by_role("button", name="Show their value").click()
    assert shown_json(await page.locator("#remote-value").inner_text()) == {"ms": 999}
    await page.get_by_role("button", name="Keep editing my draft").click()

    # Saving the draft made from version 1 is refused (412), and nothing is lost either way.
    await page.get_by_role("button", name="Save", exact=True).click()
    conflict = page.locator("#conflict")
    await expect(conflict).to_contain_text("is at version 2 on the server; your draft was made from version 1")
    await expect(conflict).to_contain_text("Nothing was saved")
    assert shown_json(await page.locator("#conflict-value").inner_text()) == {"ms": 999}
    assert shown_json(await page.input_value("#draft")) == {"ms": 250}
    assert (await other.get(key)).value == {"ms": 999}
    await screenshot(page, "console-conflict.png")

    await page.get_by_role("button", name="Save my draft over it").click()
    await expect(page.locator("#message")).to_contain_text("as version 3")
    assert (await other.get(key)).value == {"ms": 250}
    await expect(page.locator("#key-version")).to_have_text("3")


async def test_a_change_during_a_conflict_is_shown_before_an_overwrite_replaces_it(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.retries"
    await other.put(key, 1)
    page, _ = await sign_in(token(ADMIN))
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    await page.get_by_role("button", name="Edit", exact=True).click()
    await page.fill("#draft", "5")
    await other.patch(key, 2)
    await expect(page.locator("#remote-change")).to_contain_text("now version 2")
    await page.get_by_role("button", name="Save", exact=True).click()
    await expect(page.locator("#conflict")).to_contain_text("is at version 2 on the server")
    # Another change lands while the conflict is on screen: the box follows it...
    await other.patch(key, 3)
    await expect(page.locator("#conflict")).to_contain_text("is at version 3 on the server")
    await expect(page.locator("#conflict-value")).to_have_text("3")
    # ...so "overwrite" replaces what the user saw, version 3, and nothing unseen.
    await page.get_by_role("button", name="Save my draft over it").click()
    await expect(page.locator("#message")).to_contain_text("as version 4")
    assert [v.value async for v in other.history(key)] == [5, 3, 2, 1]


async def test_roll_back_to_an_earlier_version_from_the_history(
    sign_in: SignIn, origin: str, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.pool.size"
    for value in (8, 16, 64):
        await other.put(key, value)
    page, _ = await sign_in(token(ADMIN))
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    await page.get_by_role("button", name="History").click()
    rows = page.locator("#history-rows tr")
    await expect(rows).to_have_count(3)
    await page.get_by_role("button", name="Roll back to v1").click()
    await page.get_by_role("button", name="Roll back now").click()  # it asks first (step 13)
    await expect(page.locator("#message")).to_contain_text("back to the value of version 1 (now version 4)")
    await expect(page.locator("#key-value")).to_have_text("8")
    await expect(rows).to_have_count(4)
    item = await other.get(key)
    assert (item.value, item.version) == (8, 4)


async def test_an_edit_without_write_permission_is_refused_with_the_servers_message(
    sign_in: SignIn, origin: str, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.readonly"
    await other.put(key, "v1", acls={"read": ["bob"], "write": ["bob"]})
    page, _ = await sign_in(token("bob"))
    await expect(page.locator("#who")).to_have_text("bob")
    await expect(page.get_by_role("button", name="Audit", exact=True)).to_be_hidden()
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    await expect(page.locator("#key-acls")).to_have_text("its own ACL (only admins see its entries)")
    await page.get_by_role("button", name="Edit", exact=True).click()
    await page.fill("#draft", '"mine"')
    # An admin takes bob's write away while he edits (since step 13 a reader is not offered Edit at all).
    await other.patch(key, acls={"read": ["bob"], "write": [ADMIN]})
    await expect(page.locator("#remote-change")).to_contain_text("now version 2")
    await page.get_by_role("button", name="Save", exact=True).click()
    message = page.locator("#message")
    await expect(message).to_contain_text("403 Forbidden: ")
    await expect(message).to_contain_text(key)
    assert (await other.get(key)).value == "v1"
    await screenshot(page, "console-forbidden.png")


async def test_deleted_and_expired_keys_disappear_live(
    sign_in: SignIn, origin: str, token: Token, other: Client, unique_prefix: str
) -> None:
    doomed, short = f"{unique_prefix}.doomed", f"{unique_prefix}.short"
    await other.put(doomed, 1)
    await other.put(short, 2)
    page, _ = await sign_in(token(ADMIN))
    await show_namespace(page, unique_prefix)
    await open_key(page, doomed)
    await expect(page.locator("#key-list li")).to_have_count(2)
    await other.delete(doomed)
    await expect(page.locator("#key-gone")).to_have_text("Deleted on the server (version 2).")
    await expect(page.get_by_role("button", name="Edit", exact=True)).to_be_disabled()
    await expect(page.locator("#key-list li")).to_have_count(1)
    # The TTL starts only now, so a busy machine's slow sign-in cannot outlast it (it did at 2 s).
    await other.put(short, 2, ttl=5)
    await open_key(page, short)
    await expect(page.locator("#key-ttl")).to_contain_text("5 s, expires in")
    # The expiry worker's `expired` event: gone from the list and marked on the open key, no reload.
    await expect(page.locator("#key-gone")).to_have_text("Expired on the server (version 3).")
    await expect(page.locator("#key-list li")).to_have_count(0)
    await expect(page.locator("#total")).to_contain_text(f"0 keys in {unique_prefix}")


async def test_pages_of_keys_and_the_search_of_a_page(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    keys = [f"{unique_prefix}.k{n:03d}" for n in range(60)]
    for key in keys:
        await other.put(key, 0)
    page, _ = await sign_in(token(ADMIN))
    await show_namespace(page, unique_prefix)
    items = page.locator("#key-list li")
    await expect(items).to_have_count(50)
    await expect(page.locator("#total")).to_have_text(f"60 keys in {unique_prefix} · page 1")
    await page.get_by_role("button", name="Next").click()
    await expect(items).to_have_count(10)
    await expect(items.first).to_have_text(keys[50])
    await expect(page.get_by_role("button", name="Next")).to_be_disabled()
    await page.get_by_role("button", name="Previous").click()
    await expect(items).to_have_count(50)
    await page.fill("#filter", "k02")
    await expect(items).to_have_count(10)  # k020 … k029
    await expect(page.locator("#total")).to_contain_text("10 match “k02”")


async def test_admins_search_the_audit_log_and_verify_the_chain(
    sign_in: SignIn, origin: str, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.audited"
    await other.put(key, 1)
    await other.patch(key, 2)
    page, _ = await sign_in(token(ADMIN))
    await page.get_by_role("button", name="Audit", exact=True).click()
    await page.fill("#audit-key", key)
    await page.get_by_role("button", name="Search").click()
    rows = page.locator("#audit-rows tr")
    await expect(rows.first).to_contain_text(key)
    cells = [[td.strip() for td in row] for row in await rows.evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )]  # fmt: skip
    assert {row[3] for row in cells} == {key}, cells  # the filter holds
    assert [row[2] for row in cells if row[2] != "read"][:2] == ["patch", "create"], cells  # newest first
    await page.get_by_role("button", name="Verify the chain").click()
    await expect(page.locator("#verify-result")).to_contain_text("audit chain intact")


async def test_admins_edit_a_keys_acl_and_a_namespace_acl(
    sign_in: SignIn, origin: str, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.svc.url"
    await other.put(key, "http://svc")
    page, _ = await sign_in(token(ADMIN))
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    await expect(page.locator("#key-acls")).to_have_text("none of its own")  # "Governed by" names what applies
    await page.get_by_role("button", name="Edit ACL").click()
    await page.fill("#acl-read", "bob, service:*")
    await page.fill("#acl-write", "admin-user")
    await page.get_by_role("button", name="Save ACL").click()
    await expect(page.locator("#key-acls")).to_have_text("read: bob, service:* · write: admin-user")
    written = await other.get(key)
    assert written.version == 2  # an ACL change is a change of the key

    await page.get_by_role("button", name="Namespaces", exact=True).click()
    await page.fill("#ns-name", unique_prefix)
    await page.get_by_role("button", name="Load").click()
    await expect(page.locator("#ns-status")).to_have_text(f"{unique_prefix} has no ACL of its own.")
    await page.fill("#ns-read", "carol")
    await page.fill("#ns-write", "carol")
    await page.get_by_role("button", name="Save", exact=True).click()
    await expect(page.locator("#ns-status")).to_have_text(f"Saved the ACL of {unique_prefix}.")
    namespace = await other.get_namespace(unique_prefix)
    assert (namespace.acls["read"], namespace.acls["write"]) == (["carol"], ["carol"])


async def test_enter_in_the_namespace_name_loads_its_acl_and_never_replaces_it_unseen(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    await other.put_namespace(unique_prefix, {"read": ["carol"], "write": ["carol"]})
    page, _ = await sign_in(token(ADMIN))
    await page.get_by_role("button", name="Namespaces", exact=True).click()
    await page.fill("#ns-name", unique_prefix)
    await page.press("#ns-name", "Enter")
    await expect(page.locator("#ns-status")).to_have_text(f"{unique_prefix} has an ACL.")
    await expect(page.locator("#ns-read")).to_have_value("carol")
    namespace = await other.get_namespace(unique_prefix)
    assert (namespace.acls["read"], namespace.acls["write"]) == (["carol"], ["carol"])


async def test_an_expired_token_signs_the_console_out_with_the_servers_reason(
    sign_in: SignIn, token: Token, monkeypatch: pytest.MonkeyPatch
) -> None:
    import notifier.watch

    monkeypatch.setattr(notifier.watch, "LEEWAY_SECONDS", 0)  # the notifier runs in this process
    page, _ = await sign_in(token(ADMIN, exp_in=4))
    message = page.locator("#message")
    await expect(message).to_contain_text("Signed out: unauthorized: token expired", timeout=15_000)
    await expect(page.locator("#signin")).to_be_visible()
    await expect(page.locator("#live")).to_have_text("Offline")


async def test_phone_sized_keyboard_only_same_origin_and_the_token_kept_in_memory(
    sign_in: SignIn, origin: str, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.mobile"
    await other.put(key, {"a": 1})
    jwt = token(ADMIN)
    page, requested = await sign_in(jwt, viewport={"width": 390, "height": 844})
    await show_namespace(page, unique_prefix)
    # Keyboard: Tab reaches the key, Enter opens it.
    await page.locator("#filter").focus()
    for _ in range(10):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.textContent") == key:
            break
    await page.keyboard.press("Enter")
    await expect(page.locator("#key-name")).to_have_text(key)
    # Nothing wider than the screen.
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await screenshot(page, "console-phone.png")
    # Every request went to this origin (no CDN), and the token is nowhere but in memory.
    assert requested and all(url.startswith(origin + "/") for url in requested), requested
    stored = await page.evaluate("JSON.stringify([localStorage.length, sessionStorage.length, document.cookie])")
    assert stored == '[0,0,""]'
    assert jwt not in page.url
    await page.reload()
    await expect(page.locator("#signin")).to_be_visible()


# --- the server side, without a browser -----------------------------------------------------------


async def test_console_files_are_served_without_a_token_under_a_strict_policy(client: TestClient[Any, Any]) -> None:
    redirect = await client.get("/ui", allow_redirects=False)
    assert (redirect.status, redirect.headers["Location"]) == (308, "/ui/")
    for path, kind in (("/ui/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")):
        response = await client.get(path)
        assert response.status == 200, path
        assert response.headers["Content-Type"].startswith(kind)
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "connect-src 'self'" in policy
        assert response.headers["X-Frame-Options"] == "DENY"
    page = await (await client.get("/ui/")).text()
    assert "http://" not in page and "https://" not in page  # no external asset
    missing = await client.get(URL("/ui/..%2F..%2Fsetup.cfg", encoded=True))  # only its own files
    assert missing.status == 404 and (await missing.json())["error"] == "Not Found"
    assert (await client.get("/ui/nope.js")).status == 404


async def test_audit_verify_is_for_admins(client: TestClient[Any, Any], token: Token) -> None:
    denied = await client.get("/audit/verify", headers={"Authorization": f"Bearer {token('bob')}"})
    assert denied.status == 403 and (await denied.json())["error"] == "Forbidden"
    report = await (await client.get("/audit/verify", headers={"Authorization": f"Bearer {token()}"})).json()
    assert report["ok"] is True and report["summary"].startswith("audit chain intact")


async def test_get_shows_the_acl_to_admins_who_ask_for_it(
    client: TestClient[Any, Any], token: Token, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.k"
    admin = {"Authorization": f"Bearer {token()}"}
    acls = {"read": ["bob"], "write": ["admin-user"]}
    assert (await client.put(f"/keys/{key}", json={"value": 1, "acls": acls}, headers=admin)).status == 201
    assert (await (await client.get(f"/keys/{key}?include=acls", headers=admin)).json())["acls"] == acls
    assert "acls" not in await (await client.get(f"/keys/{key}", headers=admin)).json()  # the SPEC §4 answer
    bob = {"Authorization": f"Bearer {token('bob')}"}
    as_bob = await (await client.get(f"/keys/{key}?include=acls", headers=bob)).json()
    assert "acls" not in as_bob and as_bob["value"] == 1
