"""The web console, round two (issue: step 13): the keys view, in a real headless browser.

One stack (api_server, notifier, front door) and one Chromium serve the whole module, so each test
costs a fresh browser context and a sign-in, not a stack. ``CONSOLE_STATIC=/dir`` serves the console's
files from another directory (how these tests were shown to fail on the console before this step:
the files of ``git show HEAD:api_server/console/static/...`` copied to /dir).
Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, ViewportSize, expect
from support import ADMIN, eventually
from test_console import chromium, open_key, screenshot, show_namespace

from dynconfig_client import Client

pytestmark = pytest.mark.asyncio(loop_scope="module")
WAIT_MS = 10_000
PHONE: ViewportSize = {"width": 390, "height": 844}
Token = Callable[..., str]


# --- one stack and one browser for the module -------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def origin(pg_server: Any, redis_server: Any, jwks: Any) -> AsyncIterator[str]:
    """The front door's URL over an api_server and a notifier that live as long as the module."""
    from conftest import default_settings

    import api_server.console
    from api_server.main import create_app
    from devtools.frontdoor import create_app as front_door
    from notifier.hub import HUB
    from notifier.main import create_app as notifier_app
    from notifier.relay import RELAY

    settings = default_settings(pg_server, redis_server, jwks)
    with pytest.MonkeyPatch.context() as patch:
        if os.environ.get("CONSOLE_STATIC"):
            patch.setattr(api_server.console, "STATIC", Path(os.environ["CONSOLE_STATIC"]))
        api = TestServer(create_app(settings))
        await api.start_server()
    notifier = TestServer(notifier_app(settings))
    await notifier.start_server()
    await eventually(lambda: notifier.app[HUB].redis_ok and notifier.app[RELAY].is_leader, 15, "notifier ready")
    door = TestServer(front_door(_base(api), _base(notifier)))
    await door.start_server()
    try:
        yield _base(door)
    finally:
        for server in (door, notifier, api):
            await server.close()


def _base(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def other(origin: str, jwks: Any) -> AsyncIterator[Client]:
    """Another client, writing through the same API as the console."""
    async with Client(origin, jwks.token(ADMIN)) as client:
        yield client


SignIn = Callable[..., Any]
#: What each page sent on its /watch sockets, by ``id(page)``.
SENT: dict[int, list[str]] = {}


@pytest_asyncio.fixture(loop_scope="module")
async def sign_in(browser: Browser, origin: str) -> AsyncIterator[SignIn]:
    """``await sign_in(jwt, viewport=None, color_scheme="light") -> page``: a fresh page signed in and live, in
    its own browser context (closed at teardown, before the module's servers stop)."""
    contexts: list[Any] = []
    errors: list[str] = []  # uncaught exceptions in any page: the test fails at teardown

    async def open_page(jwt: str, *, viewport: ViewportSize | None = None, color_scheme: Any = "light") -> Page:
        context = await browser.new_context(
            viewport=viewport or {"width": 1280, "height": 900}, color_scheme=color_scheme, accept_downloads=True
        )
        contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda error: errors.append(str(error)))
        frames = SENT.setdefault(id(page), [])
        page.on("websocket", lambda ws: ws.on("framesent", lambda payload: frames.append(str(payload))))
        await page.goto(origin + "/ui/")
        await page.fill("#token", jwt)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.locator("#live")).to_have_text("Live", timeout=WAIT_MS)
        return page

    yield open_page
    for context in contexts:
        await context.close()
    assert not errors, errors


async def raw(origin: str, jwt: str, method: str, path: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, origin + path, json=body, headers={"Authorization": f"Bearer {jwt}"}) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None)


def requests_of(page: Page, method: str) -> list[str]:
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if r.method == method else None)
    return seen


async def new_key(page: Page, key: str, value: str, *, ttl: str = "", read: str = "", write: str = "") -> None:
    await page.get_by_role("button", name="New key").click()
    await page.fill("#create-key", key)
    await page.fill("#create-value", value)
    if ttl:
        await page.fill("#create-ttl", ttl)
    if read or write:
        await page.fill("#create-read", read)
        await page.fill("#create-write", write)
    await page.get_by_role("button", name="Create", exact=True).click()
    await expect(page.locator("#message")).to_contain_text(f"Created {key} (version 1)")


# --- defects ----------------------------------------------------------------------------------------


async def test_d1_the_new_key_form_starts_empty(sign_in: SignIn, origin: str, token: Token, unique_prefix: str) -> None:
    page = await sign_in(token(ADMIN))
    await show_namespace(page, unique_prefix)
    first, second = f"{unique_prefix}.first", f"{unique_prefix}.second"
    await new_key(page, first, "1", ttl="600", read="admin-user", write="admin-user")
    await page.get_by_role("button", name="New key").click()
    for field in ("#create-ttl", "#create-read", "#create-write"):
        await expect(page.locator(field)).to_have_value("")
    await page.fill("#create-key", second)
    await page.fill("#create-value", "2")
    await page.get_by_role("button", name="Create", exact=True).click()
    await expect(page.locator("#message")).to_contain_text(f"Created {second} (version 1)")
    status, body = await raw(origin, token(ADMIN), "GET", f"/keys/{second}?include=acls")
    assert status == 200 and body["ttl"] is None and body["acls"] is None, body


async def test_d3_search_finds_keys_beyond_the_page_on_the_server(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    await other.commit_txn({"ops": [{"op": "put", "key": f"{unique_prefix}.k{n:03d}", "value": n} for n in range(60)]})
    await other.put(f"{unique_prefix}x.k055", 0)  # another namespace: not found within this one
    page = await sign_in(token(ADMIN))
    await show_namespace(page, unique_prefix)
    items = page.locator("#key-list li")
    await expect(items).to_have_count(50)
    await page.fill("#filter", "K05")  # on page 2 for 50..59 (k050 … k059), either case
    await expect(items).to_have_count(10)
    await expect(items.first).to_have_text(f"{unique_prefix}.k050")
    await expect(items.last).to_have_text(f"{unique_prefix}.k059")
    await expect(page.locator("#total")).to_contain_text("10 match “K05”")
    await page.fill("#filter", "")
    await expect(items).to_have_count(50)


async def test_d4_on_a_phone_a_key_opens_in_view_and_tables_stay_readable(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.phone.setting"
    for n in range(3):
        await other.put(key, {"step": n, "note": "a value long enough to wrap on a phone screen " * 2})
    page = await sign_in(token(ADMIN), viewport=PHONE)
    await show_namespace(page, unique_prefix)
    await page.locator("#key-list").get_by_role("button", name=key, exact=True).click()
    await expect(page.locator("#key-name")).to_have_text(key)
    await expect(page.locator("#key-name")).to_be_in_viewport()
    await page.get_by_role("button", name="History").click()
    button = page.get_by_role("button", name="Roll back to v1")
    box = await button.bounding_box()
    assert box and box["width"] >= 80 and box["height"] <= 60, box
    widths = await page.locator("#history-rows td").evaluate_all(
        "cells => cells.map(c => c.getBoundingClientRect().width)"
    )
    shown = [width for width in widths if width]  # an empty action cell is not drawn
    assert shown and min(shown) > 120, widths  # a card per version, not one character a line
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await screenshot(page, "console-ops-phone-history.png")


async def test_d5_a_long_value_is_shortened_with_expand_and_download(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.big"
    big = {"blob": "x" * 200_000}
    await other.put(key, big)
    await other.put(key, {"small": 1})
    page = await sign_in(token(ADMIN))
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    await page.get_by_role("button", name="History").click()
    await expect(page.locator("#history-rows tr")).to_have_count(2)
    height = await page.locator("#history-pane").evaluate("e => e.getBoundingClientRect().height")
    assert height < 1500, height
    row = page.locator("#history-rows tr").nth(1)
    await expect(row).to_contain_text("200,0")  # its size is named
    async with page.expect_download() as started:
        await row.get_by_role("button", name="Download v1").click()
    download = await started.value
    assert json.loads(await asyncio.to_thread(Path(await download.path()).read_text)) == big
    await row.get_by_role("button", name="Show all of v1").click()
    full = row.locator("pre")
    await expect(full).to_contain_text("x" * 1000)
    assert await full.evaluate("e => e.getBoundingClientRect().height") < 700  # scrolls inside
    await row.get_by_role("button", name="Show less of v1").click()
    assert await page.locator("#history-pane").evaluate("e => e.getBoundingClientRect().height") < 1500


async def test_d6_a_reader_is_offered_only_reading_and_the_acl_wording_is_clear(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.readonly"
    await other.put(key, "v1", acls={"read": ["bob"], "write": [ADMIN]})
    page = await sign_in(token("bob"))
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    for name in ("Edit", "Delete", "Stage delete"):
        await expect(page.get_by_role("button", name=name, exact=True)).to_be_hidden()
    await expect(page.get_by_role("button", name="History", exact=True)).to_be_visible()
    await expect(page.locator("#key-access")).to_have_text("You may read this key, not change it.")
    await expect(page.locator("#key-acls")).not_to_contain_text("visible to admins")
    await expect(page.locator("#key-acls")).to_contain_text("its own ACL (only admins see its entries)")


async def test_d7_roll_back_asks_first_and_shows_the_diff(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.pool"
    for value in ({"size": 8, "idle": 1}, {"size": 16, "idle": 1}, {"size": 64, "idle": 1}):
        await other.put(key, value)
    page = await sign_in(token(ADMIN))
    posts = requests_of(page, "POST")
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    await page.get_by_role("button", name="History").click()
    await page.get_by_role("button", name="Roll back to v1").click()
    confirm = page.locator("#rollback-confirm")
    await expect(confirm).to_contain_text("Roll back to version 1? Version 3 (current) → version 1:")
    await expect(confirm.locator(".diff .del")).to_have_text(['-   "size": 64,'])
    await expect(confirm.locator(".diff .add")).to_have_text(['+   "size": 8,'])
    assert not posts and (await other.get(key)).version == 3
    await screenshot(page, "console-ops-rollback-confirm.png")
    await confirm.get_by_role("button", name="Cancel").click()
    await expect(confirm).to_be_hidden()
    await page.get_by_role("button", name="Roll back to v1").click()
    await confirm.get_by_role("button", name="Roll back now").click()
    await expect(page.locator("#message")).to_contain_text("back to the value of version 1 (now version 4)")
    assert (await other.get(key)).value == {"size": 8, "idle": 1}


async def test_d8_the_governing_acl_and_who_can_read_are_named(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    await other.put_namespace(unique_prefix, {"read": ["carol", "service:*"], "write": ["carol"]})
    key = f"{unique_prefix}.svc.url"
    await other.put(key, "http://svc")
    page = await sign_in(token(ADMIN))
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    governed = f"the namespace {unique_prefix}: read: carol, service:* · write: carol"
    await expect(page.locator("#key-governed")).to_have_text(governed)
    await expect(page.locator("#key-readers")).to_have_text("carol, anyone matching service:*, and admins")
    carol = await sign_in(token("carol"))
    await show_namespace(carol, unique_prefix)
    await open_key(carol, key)
    await expect(carol.locator("#key-governed")).to_have_text(governed)
    await expect(carol.locator("#key-readers")).to_have_text("carol, anyone matching service:*, and admins")


async def test_d11_a_400_says_its_text_once(sign_in: SignIn, token: Token, unique_prefix: str) -> None:
    page = await sign_in(token(ADMIN))
    await show_namespace(page, unique_prefix)
    await page.get_by_role("button", name="New key").click()
    await page.fill("#create-key", f"{unique_prefix}.bad key")
    await page.fill("#create-value", "1")
    await page.get_by_role("button", name="Create", exact=True).click()
    message = page.locator("#message")
    await expect(message).to_contain_text("400 Bad Request: Invalid key: ")
    text = await message.inner_text()
    problem = text.split("Invalid key: ", 1)[1].split("\n")[0].strip(" .")
    assert problem and text.count(problem) == 1, text


async def test_d11_times_name_their_zone(sign_in: SignIn, token: Token, other: Client, unique_prefix: str) -> None:
    key = f"{unique_prefix}.timed"
    await other.put(key, 1)
    page = await sign_in(token(ADMIN))
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    utc = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
    await expect(page.locator("#key-modified")).to_have_text(utc)
    await page.get_by_role("button", name="History").click()
    await expect(page.locator('#history-rows td[data-label="At"]')).to_have_text(utc)


async def test_d11_really_delete_has_a_cancel(sign_in: SignIn, token: Token, other: Client, unique_prefix: str) -> None:
    key = f"{unique_prefix}.kept"
    await other.put(key, 1)
    page = await sign_in(token(ADMIN))
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    await page.get_by_role("button", name="Delete", exact=True).click()
    await expect(page.get_by_role("button", name="Really delete")).to_be_visible()
    await page.get_by_role("button", name="Cancel delete").click()
    await expect(page.get_by_role("button", name="Really delete")).to_be_hidden()
    assert (await other.get(key)).version == 1


async def test_d11_esc_cancels_and_ctrl_s_saves(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.keys"
    await other.put(key, {"a": 1})
    page = await sign_in(token(ADMIN))
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    await page.get_by_role("button", name="Edit", exact=True).click()
    await page.press("#draft", "Escape")
    await expect(page.locator("#editor")).to_be_hidden()
    await page.get_by_role("button", name="Edit", exact=True).click()
    await page.fill("#draft", '{"a": 2}')
    await page.press("#draft", "Control+s")
    await expect(page.locator("#message")).to_contain_text(f"Saved {key} as version 2.")
    assert (await other.get(key)).value == {"a": 2}


async def test_d11_the_token_is_masked_and_enter_signs_in(browser: Browser, origin: str, token: Token) -> None:
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(origin + "/ui/")
        # Masked while pasted, and Enter signs in.
        assert await page.locator("#token").evaluate("e => e.type") == "password"
        await page.fill("#token", token("bob"))
        await page.press("#token", "Enter")
        await expect(page.locator("#who")).to_have_text("bob")
    finally:
        await context.close()


# --- features ---------------------------------------------------------------------------------------


async def test_f_diff_between_any_two_versions(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.diffed"
    for value in ({"a": 1, "b": 1}, {"a": 2, "b": 1}, {"a": 3, "b": 2}):
        await other.put(key, value)
    page = await sign_in(token(ADMIN))
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    await page.get_by_role("button", name="History").click()
    await page.select_option("#diff-from", "1")
    await page.select_option("#diff-to", "3")
    await page.get_by_role("button", name="Compare").click()
    diff = page.locator("#diff-view")
    await expect(diff.locator(".del")).to_have_text(['-   "a": 1,', '-   "b": 1'])
    await expect(diff.locator(".add")).to_have_text(['+   "a": 3,', '+   "b": 2'])
    await expect(page.locator("#diff-title")).to_have_text("Version 1 → version 3")
    await screenshot(page, "console-ops-desktop-key.png")


async def test_f_copy_the_value(sign_in: SignIn, token: Token, other: Client, unique_prefix: str) -> None:
    key = f"{unique_prefix}.copied"
    await other.put(key, {"copy": "me"})
    page = await sign_in(token(ADMIN))
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    await page.get_by_role("button", name="Copy value").click()
    await expect(page.locator("#message")).to_contain_text(f"Copied the value of {key}")
    assert json.loads(await page.evaluate("navigator.clipboard.readText()")) == {"copy": "me"}


async def test_f_the_json_editor_checks_as_you_type(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.typed"
    await other.put(key, 1)
    page = await sign_in(token(ADMIN))
    writes = requests_of(page, "PATCH")
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    await page.get_by_role("button", name="Edit", exact=True).click()
    await page.locator("#draft").fill("")
    await page.locator("#draft").type('{"a": ')
    await expect(page.locator("#draft-check")).to_contain_text("Not valid JSON")
    await expect(page.locator("#draft")).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_role("button", name="Save", exact=True)).to_be_disabled()
    await page.press("#draft", "Control+s")
    await page.locator("#draft").type("1}")
    await expect(page.locator("#draft-check")).to_have_text("Valid JSON")
    assert not writes
    await page.press("#draft", "Escape")
    await page.get_by_role("button", name="New key").click()
    await expect(page.get_by_role("button", name="Create", exact=True)).to_be_disabled()  # no value yet
    await page.fill("#create-value", "{oops")
    await expect(page.locator("#create-check")).to_contain_text("Not valid JSON")


async def test_f_folders_and_sortable_columns(sign_in: SignIn, token: Token, other: Client, unique_prefix: str) -> None:
    ns = unique_prefix
    await other.put(f"{ns}.db.url", "x")
    await other.put(f"{ns}.db.pool", 1)
    await other.put(f"{ns}.db.pool", 2)
    await other.put(f"{ns}.db.pool", 3)
    await other.put(f"{ns}.web.port", 80, ttl=3600)
    await other.put(f"{ns}.top", True)
    page = await sign_in(token(ADMIN))
    await show_namespace(page, ns)
    folders = page.locator("#folders")
    await expect(folders.get_by_role("button")).to_have_text([f"{ns}.db", f"{ns}.web"])
    # The columns: version, last change (UTC), TTL.
    await expect(page.locator(f'#key-list li[data-key="{ns}.db.pool"]')).to_have_attribute(
        "data-meta", re.compile(r"^v3 · \d{4}-\d\d-\d\d \d\d:\d\d UTC$")
    )
    await expect(page.locator(f'#key-list li[data-key="{ns}.web.port"]')).to_have_attribute(
        "data-meta", re.compile(r"TTL 3600 s$")
    )
    await page.get_by_role("button", name="Sort by version").click()
    await expect(page.locator("#key-list li").first).to_have_attribute("data-key", f"{ns}.db.pool")
    await page.get_by_role("button", name="Sort by TTL").click()
    await expect(page.locator("#key-list li").first).to_have_attribute("data-key", f"{ns}.web.port")
    await folders.get_by_role("button", name=f"{ns}.db").click()
    await expect(page.locator("#namespace")).to_have_value(f"{ns}.db")
    await expect(page.locator("#key-list li")).to_have_count(2)
    await page.locator("#crumbs").get_by_role("button", name=ns, exact=True).click()
    await expect(page.locator("#key-list li")).to_have_count(4)
    await screenshot(page, "console-ops-desktop.png")


async def test_f_deep_links_survive_a_reload_and_the_token_does_not(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.linked.key"
    await other.put(key, 42)
    jwt = token(ADMIN)
    page = await sign_in(jwt)
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    await expect(page).to_have_url(re.compile(re.escape(f"#key={key}")))
    await page.reload()
    await expect(page.locator("#signin")).to_be_visible()
    assert jwt not in page.url
    await page.fill("#token", jwt)
    await page.press("#token", "Enter")
    await expect(page.locator("#key-name")).to_have_text(key)
    await expect(page.locator("#key-value")).to_have_text("42")
    await page.get_by_role("button", name="Audit", exact=True).click()
    await expect(page).to_have_url(re.compile("#view=audit$"))
    await page.reload()
    await page.fill("#token", jwt)
    await page.press("#token", "Enter")
    await expect(page.locator("#view-audit")).to_be_visible()


async def test_f_dark_theme_follows_the_system(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.dark"
    await other.put(key, {"theme": "dark"})
    page = await sign_in(token(ADMIN), color_scheme="dark")
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    for selector, dark in (("body", True), ("#key", True), ("#key-value", True), ("#key-name", False)):
        style = "backgroundColor" if dark else "color"
        colour = await page.locator(selector).evaluate(f"e => getComputedStyle(e).{style}")
        channels = [int(n) for n in re.findall(r"\d+", colour)[:3]]
        assert (sum(channels) < 200) == dark and not colour.startswith("rgba(0, 0, 0, 0"), (selector, colour)
    await screenshot(page, "console-ops-dark.png")
    phone = await sign_in(token(ADMIN), viewport=PHONE)
    await show_namespace(phone, unique_prefix)
    await screenshot(phone, "console-ops-phone.png")


async def test_f_sorting_covers_the_whole_namespace_and_a_search_ending_in_a_star_is_a_prefix(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    """The columns sort the namespace on the server (GET /keys?sort=), not the 50 keys on screen: the key
    with the most versions, the newest and the one expiring first all sort past page 1 by name."""
    ns = unique_prefix
    await other.commit_txn({"ops": [{"op": "put", "key": f"{ns}.k{n:03d}", "value": n} for n in range(60)]})
    late = f"{ns}.k059"
    for n in range(3):
        await other.put(late, n, ttl=600)
    page = await sign_in(token(ADMIN))
    await show_namespace(page, ns)
    items = page.locator("#key-list li")
    await expect(items).to_have_count(50)
    await expect(items.first).to_have_attribute("data-key", f"{ns}.k000")
    for sort in ("Sort by version", "Sort by last change", "Sort by TTL"):
        await page.get_by_role("button", name=sort).click()
        await expect(items.first).to_have_attribute("data-key", late)
        await expect(items).to_have_count(50)
    await page.get_by_role("button", name="Sort by name").click()
    await expect(items.first).to_have_attribute("data-key", f"{ns}.k000")
    await page.fill("#filter", f"{ns}.k05*")
    await expect(items).to_have_count(10)
    await expect(page.locator("#total")).to_contain_text(f"10 match “{ns}.k05*”")
    await page.fill("#filter", "k05*")  # a prefix is a prefix of the whole key
    await expect(items).to_have_count(0)
