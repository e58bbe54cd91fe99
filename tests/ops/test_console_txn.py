"""The web console's transactions (issue: step 12), end to end in a real headless browser.

Staged changes applied as one ``POST /txn``, and a JSON file imported as one; the stack, the browser
and "another client" are test_console's fixtures (imported below, not copied). Screenshots go to
``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import test_console
from playwright.async_api import FilePayload, Page, expect
from support import ADMIN
from test_console import SignIn, Token, open_key, screenshot, show_namespace

from dynconfig_client import Client
from dynconfig_client.errors import NotFound

# test_console's stack, browser, signed-in page and other client, as fixtures of this module too.
origin = test_console.origin
browser = test_console.browser
other = test_console.other
sign_in = test_console.sign_in


def txn_posts(page: Page) -> list[str]:
    """The URLs of the page's ``POST /txn`` requests, as they happen."""
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and r.url.endswith("/txn") else None)
    return posts


def staged_row(page: Page, key: str) -> Any:
    return page.locator(f'#staged-list li[data-key="{key}"]')


async def stage_edit(page: Page, key: str, draft: str) -> None:
    await open_key(page, key)
    await page.get_by_role("button", name="Edit", exact=True).click()
    await page.fill("#draft", draft)
    await page.get_by_role("button", name="Stage change").click()
    await expect(staged_row(page, key)).to_have_count(1)
    await expect(page.locator("#key-staged")).to_contain_text("Staged, not written yet: put ")


async def post_txn(origin: str, jwt: str, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /txn`` as another client would send it."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{origin}/txn", json=body, headers={"Authorization": f"Bearer {jwt}"}) as response:
            assert response.status == 200, await response.text()
            answer: dict[str, Any] = await response.json()
            return answer


def json_file(name: str, document: Any) -> FilePayload:
    return {"name": name, "mimeType": "application/json", "buffer": json.dumps(document).encode()}


async def test_staged_changes_are_applied_as_one_transaction(
    sign_in: SignIn, origin: str, token: Token, other: Client, unique_prefix: str
) -> None:
    a, b, c, d, e = (f"{unique_prefix}.{name}" for name in ("a", "b", "c", "d", "e"))
    await other.put(a, 1)
    await other.put(b, {"x": 1})
    await other.put(d, "kept")
    page, _ = await sign_in(token(ADMIN))
    posts = txn_posts(page)
    await show_namespace(page, unique_prefix)

    await stage_edit(page, a, "2")
    await stage_edit(page, b, '{"x": 2}')
    await page.get_by_role("button", name="New key").click()
    await page.fill("#create-key", c)
    await page.fill("#create-value", '"fresh"')
    await page.get_by_role("button", name="Stage new key").click()
    await open_key(page, d)
    await page.get_by_role("button", name="Stage delete").click()
    await expect(page.locator("#key-staged")).to_contain_text("Staged, not written yet: delete, if still version 1")
    rows = page.locator("#staged-list li")
    await expect(rows).to_have_count(4)
    await page.get_by_role("button", name=f"Remove {d} from the staged changes").click()
    await expect(rows).to_have_count(3)
    await expect(page.locator("#staged-title")).to_have_text("Staged changes (3)")
    await expect(staged_row(page, a)).to_contain_text("if still version 1")
    await expect(staged_row(page, c)).to_contain_text("if it does not exist")
    await expect(staged_row(page, b).locator(".op-value")).to_have_text('{"x":2}')
    await screenshot(page, "console-staged.png")
    assert (await other.get(a)).value == 1 and not posts  # staged is not written

    await page.get_by_role("button", name="Apply all").click()
    message = page.locator("#message")
    await expect(message).to_contain_text("Applied 3 changes in one transaction (revision ")
    await expect(page.locator("#staged")).to_be_hidden()
    items = [await other.get(key) for key in (a, b, c)]
    assert [(item.value, item.version) for item in items] == [(2, 2), ({"x": 2}, 2), ("fresh", 1)]
    revision = items[0].revision
    assert isinstance(revision, int) and {item.revision for item in items} == {revision}  # one revision
    await expect(message).to_contain_text(
        f"(revision {revision}): {a} is version 2, {b} is version 2, {c} is version 1"
    )
    assert (await other.get(d)).version == 1  # removed from the staged changes: untouched
    assert len(posts) == 1
    await expect(page.locator("#key-list")).to_contain_text(c)
    await screenshot(page, "console-staged-applied.png")

    # Another client's transaction reaches the page as one `txn` frame: the open key and the list follow it.
    await open_key(page, a)
    ops = [{"op": "put", "key": a, "value": 3}, {"op": "put", "key": e, "value": 0}]
    await post_txn(origin, token(ADMIN), {"ops": ops})
    await expect(page.locator("#key-version")).to_have_text("3")
    await expect(page.locator("#key-value")).to_have_text("3")
    await expect(page.locator("#key-list")).to_contain_text(e)


async def test_a_change_by_another_client_fails_the_whole_transaction_and_keeps_the_staged_changes(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    a, b = f"{unique_prefix}.a", f"{unique_prefix}.b"
    await other.put(a, 1)
    await other.put(b, 1)
    page, _ = await sign_in(token(ADMIN))
    await show_namespace(page, unique_prefix)
    await stage_edit(page, a, "10")
    await stage_edit(page, b, "20")

    await other.patch(b, 99)  # between load and apply
    await expect(staged_row(page, b)).to_contain_text("Changed on the server since you staged it")  # seen live
    await page.get_by_role("button", name="Apply all").click()
    message = page.locator("#message")
    await expect(message).to_contain_text(f"Nothing was written: the check that {b} is at version 1 (check 2 of 2)")
    await expect(message).to_contain_text("failed. 412 ")
    await expect(message).to_contain_text(". It is at version 2 now.")
    await expect(message).to_contain_text("Your 2 staged changes are kept")
    await expect(page.locator("#staged-list li")).to_have_count(2)
    await expect(staged_row(page, b)).to_have_class(re.compile(r"\bfailed\b"))
    await expect(staged_row(page, a)).not_to_have_class(re.compile(r"\bfailed\b"))
    first, second = await other.get(a), await other.get(b)
    assert ((first.value, first.version), (second.value, second.version)) == ((1, 1), (99, 2))  # nothing written
    await screenshot(page, "console-staged-conflict.png")

    # The operator drops the stale change; the rest still goes through.
    await page.get_by_role("button", name=f"Remove {b} from the staged changes").click()
    await page.get_by_role("button", name="Apply all").click()
    await expect(message).to_contain_text("Applied 1 change in one transaction (revision ")
    written = await other.get(a)
    await expect(message).to_contain_text(f"(revision {written.revision}): {a} is version 2.")
    assert (written.value, (await other.get(b)).value) == (10, 99)


async def test_import_a_json_file_as_one_transaction_and_export_it_back(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    existing = f"{unique_prefix}.existing"
    await other.put(existing, "old")
    document = {f"{unique_prefix}.one": 1, f"{unique_prefix}.two": {"nested": [1, 2]}, existing: "new"}
    page, _ = await sign_in(token(ADMIN))
    posts = txn_posts(page)
    await show_namespace(page, unique_prefix)
    message = page.locator("#message")

    # More than one transaction holds: refused whole, before any write.
    too_many = {f"{unique_prefix}.k{n:03d}": n for n in range(129)}
    await page.set_input_files("#import-file", files=[json_file("big.json", too_many)])
    await expect(message).to_contain_text("big.json holds 129 keys, and one transaction takes at most 128.")
    await expect(message).to_contain_text("Nothing was imported")
    await expect(page.locator("#import-preview")).to_be_hidden()

    await page.set_input_files("#import-file", files=[json_file("backup.json", document)])
    summary = page.locator("#import-summary")
    await expect(summary).to_have_text("backup.json: 3 keys in one transaction: 2 new, 1 replaced.")
    await expect(page.locator(f'#import-keys li[data-key="{existing}"]')).to_contain_text("if still version 1")
    await screenshot(page, "console-import.png")
    await page.get_by_role("button", name="Import 3 keys").click()
    await expect(message).to_contain_text("Imported 3 keys from backup.json in one transaction (revision ")
    items = [await other.get(key) for key in document]
    assert {item.key: item.value for item in items} == document
    assert len({item.revision for item in items}) == 1, [item.revision for item in items]  # GET /keys/{k}
    assert (await other.get(existing)).version == 2
    await expect(message).to_contain_text(f"(revision {items[0].revision}): 2 new, 1 replaced.")
    assert len(posts) == 1

    # Export is import's pair: the same object back.
    async with page.expect_download() as started:
        await page.get_by_role("button", name="Export", exact=True).click()
    download = await started.value
    assert download.suggested_filename == f"{unique_prefix}.json"
    assert json.loads(await asyncio.to_thread(Path(await download.path()).read_text)) == document
    await expect(message).to_contain_text(f"Exported 3 keys of {unique_prefix} to {unique_prefix}.json.")


async def test_a_non_admin_import_that_hits_a_forbidden_key_writes_nothing(
    sign_in: SignIn, token: Token, other: Client, unique_prefix: str
) -> None:
    await other.put_namespace(unique_prefix, {"read": ["bob"], "write": ["bob"]})
    locked = f"{unique_prefix}.locked"
    await other.put(locked, "theirs", acls={"read": ["bob"], "write": [ADMIN]})
    one, two = f"{unique_prefix}.one", f"{unique_prefix}.two"
    page, _ = await sign_in(token("bob"))
    await show_namespace(page, unique_prefix)
    await page.set_input_files("#import-file", files=[json_file("mine.json", {one: 1, locked: "mine", two: 2})])
    await expect(page.locator("#import-summary")).to_have_text(
        "mine.json: 3 keys in one transaction: 2 new, 1 replaced."
    )
    await page.get_by_role("button", name="Import 3 keys").click()
    message = page.locator("#message")
    await expect(message).to_contain_text("Nothing was imported: ")
    await expect(message).to_contain_text(f"put {locked} (change 2 of 3) failed. 403 Forbidden")
    await expect(page.locator(f'#import-keys li[data-key="{locked}"]')).to_have_class(re.compile(r"\bfailed\b"))
    await expect(page.locator("#import-preview")).to_be_visible()  # kept, to fix and retry
    for key in (one, two):
        with pytest.raises(NotFound):
            await other.get(key)
    kept = await other.get(locked)
    assert (kept.value, kept.version) == ("theirs", 1)
    await screenshot(page, "console-import-forbidden.png")
