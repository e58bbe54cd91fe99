"""The web console, round two (issue: step 13): the token's renewal, namespaces and the audit log, in a
real headless browser. The stack and browser are test_console_ops_keys's (one per module)."""

from __future__ import annotations

import json
import re

import pytest
import test_console_ops_keys as shared
from playwright.async_api import Page, expect
from support import ADMIN
from test_console import open_key, screenshot, show_namespace
from test_console_ops_keys import PHONE, SENT, SignIn, Token, raw

from dynconfig_client import Client
from dynconfig_client.errors import NotFound

pytestmark = pytest.mark.asyncio(loop_scope="module")
origin = shared.origin
browser = shared.browser
other = shared.other
sign_in = shared.sign_in


async def test_d2_the_token_is_renewed_before_it_expires_without_losing_the_page(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.renewed"
    await other.put(key, {"n": 1})
    page = await sign_in(token(ADMIN, exp_in=100))
    prompt = page.locator("#signin")
    await expect(prompt).to_be_visible()  # within two minutes of `exp`: asked ahead of time
    await expect(prompt).to_contain_text("Your token expires in 1 min")
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    await page.get_by_role("button", name="Edit", exact=True).click()
    await page.fill("#draft", '{"n": 2}')
    await screenshot(page, "console-ops-renew.png")
    fresh = token(ADMIN)
    await page.fill("#token", fresh)
    await page.press("#token", "Enter")
    await expect(prompt).to_be_hidden()
    await expect(page.locator("#message")).to_contain_text("Token renewed")
    assert json.loads(await page.input_value("#draft")) == {"n": 2}
    frames = SENT[id(page)]
    assert any(json.loads(frame) == {"token": fresh} for frame in frames), frames  # on the open socket
    await expect(page.locator("#live")).to_have_text("Live")
    await page.get_by_role("button", name="Save", exact=True).click()
    await expect(page.locator("#message")).to_contain_text(f"Saved {key} as version 2.")


async def test_d2_after_expiry_a_fresh_token_goes_on_with_the_draft(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import notifier.watch

    monkeypatch.setattr(notifier.watch, "LEEWAY_SECONDS", 0)  # the notifier runs in this process
    key = f"{unique_prefix}.expiring"
    await other.put(key, "before")
    page = await sign_in(token(ADMIN, exp_in=4))
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    await page.get_by_role("button", name="Edit", exact=True).click()
    await page.fill("#draft", '"my draft"')
    await expect(page.locator("#message")).to_contain_text("Signed out: unauthorized: token expired", timeout=15_000)
    await expect(page.locator("#live")).to_have_text("Offline")
    await expect(page.locator("#app")).to_be_visible()  # the page is kept...
    assert await page.input_value("#draft") == '"my draft"'  # ...and the draft
    await other.put(key, "meanwhile")  # missed while offline: replayed after the renewal
    await page.fill("#token", token(ADMIN))
    await page.get_by_role("button", name="Use this token").click()
    await expect(page.locator("#live")).to_have_text("Live")
    await expect(page.locator("#remote-change")).to_contain_text("now version 2")
    assert await page.input_value("#draft") == '"my draft"'


async def test_d9_existing_namespace_acls_are_listed(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    listed = f"{unique_prefix}a"
    await other.put_namespace(listed, {"read": ["carol"], "write": ["dave"]})
    page = await sign_in(token(ADMIN))
    await page.get_by_role("button", name="Namespaces", exact=True).click()
    row = page.locator(f'#ns-rows tr[data-namespace="{listed}"]')
    await expect(row).to_contain_text("carol")
    await expect(row).to_contain_text("dave")
    await expect(row).to_contain_text(ADMIN)
    # One click from the list loads a namespace into the form.
    await page.get_by_role("button", name=f"Edit the ACL of {listed}").click()
    await expect(page.locator("#ns-name")).to_have_value(listed)
    await expect(page.locator("#ns-read")).to_have_value("carol")
    await screenshot(page, "console-ops-namespaces.png")


async def test_d9_save_needs_no_load_first(sign_in: SignIn, token: Token, other: Client, unique_prefix: str) -> None:
    fresh = f"{unique_prefix}b"
    page = await sign_in(token(ADMIN))
    await page.get_by_role("button", name="Namespaces", exact=True).click()
    await page.fill("#ns-name", fresh)
    await page.fill("#ns-read", "erin")
    await page.fill("#ns-write", "erin")
    await page.get_by_role("button", name="Save", exact=True).click()
    await expect(page.locator("#ns-status")).to_have_text(f"Saved the ACL of {fresh}.")
    assert (await other.get_namespace(fresh)).acls["read"] == ["erin"]


async def test_d9_removing_an_acl_asks_first(sign_in: SignIn, token: Token, other: Client, unique_prefix: str) -> None:
    await other.put_namespace(unique_prefix, {"read": ["carol"], "write": ["dave"]})
    page = await sign_in(token(ADMIN))
    await page.get_by_role("button", name="Namespaces", exact=True).click()
    await page.fill("#ns-name", unique_prefix)
    await page.press("#ns-name", "Enter")
    await expect(page.locator("#ns-status")).to_have_text(f"{unique_prefix} has an ACL.")
    await page.get_by_role("button", name="Remove the ACL").click()
    box = page.locator("#ns-delete-box")
    await expect(box).to_contain_text(f"Really remove the ACL of {unique_prefix}?")
    assert (await other.get_namespace(unique_prefix)).acls["write"] == ["dave"]
    await box.get_by_role("button", name="Cancel").click()
    await expect(box).to_be_hidden()
    await page.get_by_role("button", name="Remove the ACL").click()
    await box.get_by_role("button", name="Really remove").click()
    await expect(page.locator("#ns-status")).to_have_text(f"Removed the ACL of {unique_prefix}.")
    with pytest.raises(NotFound):
        await other.get_namespace(unique_prefix)


async def audit_page(sign_in: SignIn, origin: str, token: Token, other: Client, key: str) -> Page:
    """A key written twice and read once by someone refused, and an admin's page on the Audit view."""
    await other.put(key, 1, acls={"read": [ADMIN], "write": [ADMIN]})
    await other.patch(key, 2)
    status, _ = await raw(origin, token("mallory"), "GET", f"/keys/{key}")
    assert status == 403
    page: Page = await sign_in(token(ADMIN))
    await page.get_by_role("button", name="Audit", exact=True).click()
    await page.fill("#audit-key", key)
    return page


async def test_d10_the_audit_log_filters_by_action_and_outcome(
    sign_in: SignIn, origin: str, token: Token, other: Client, unique_prefix: str
) -> None:
    page = await audit_page(sign_in, origin, token, other, f"{unique_prefix}.audited")
    await page.select_option("#audit-outcome", "denied")
    await page.get_by_role("button", name="Search").click()
    rows = page.locator("#audit-rows tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first.locator("td").nth(1)).to_have_text("mallory")
    await expect(rows.first.locator("td").nth(5)).to_have_text("denied")
    await page.select_option("#audit-outcome", "")
    await page.select_option("#audit-action", "patch")
    await page.get_by_role("button", name="Search").click()
    await expect(rows).to_have_count(1)
    await expect(rows.first.locator("td").nth(2)).to_have_text("patch")


async def test_d10_the_audit_log_shows_request_ids_and_utc_times(
    sign_in: SignIn, origin: str, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.audited"
    page = await audit_page(sign_in, origin, token, other, key)
    await page.get_by_role("button", name="Search").click()
    rows = page.locator("#audit-rows tr")
    await expect(rows.first).to_contain_text(key)
    await expect(page.locator("thead th").filter(has_text="Request id")).to_be_visible()
    ids = await page.locator("#audit-rows td.request-id").all_inner_texts()
    assert ids and all(re.fullmatch(r"\S{6,}", text.strip()) for text in ids), ids
    await expect(rows.first.locator("td").first).to_have_text(re.compile(r" UTC$"))
    await screenshot(page, "console-ops-audit.png")
    phone = await sign_in(token(ADMIN), viewport=PHONE)
    await phone.get_by_role("button", name="Audit", exact=True).click()
    await phone.fill("#audit-key", key)
    await phone.get_by_role("button", name="Search").click()
    await expect(phone.locator("#audit-rows tr").first).to_be_visible()
    assert await phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await screenshot(phone, "console-ops-phone-audit.png")


async def test_d10_an_empty_audit_result_says_so(sign_in: SignIn, token: Token, unique_prefix: str) -> None:
    page = await sign_in(token(ADMIN))
    await page.get_by_role("button", name="Audit", exact=True).click()
    await page.fill("#audit-key", f"{unique_prefix}.never")
    await page.get_by_role("button", name="Search").click()
    await expect(page.locator("#audit-empty")).to_have_text("No records match.")
    await expect(page.locator("#audit-rows tr")).to_have_count(0)


async def test_f_who_can_read_as_a_reader_sees_it(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.open"
    await other.put(key, 1, acls={"read": ["*"], "write": [ADMIN]})
    page = await sign_in(token(ADMIN))
    await show_namespace(page, unique_prefix)
    await open_key(page, key)
    await expect(page.locator("#key-readers")).to_have_text("anyone signed in, and admins")
    await expect(page.locator("#key-governed")).to_have_text("its own ACL: read: * · write: admin-user")
