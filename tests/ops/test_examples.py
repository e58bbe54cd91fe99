"""The examples and the README's snippets run as the README says: the Python example with the plain
``python`` a new user types, the JavaScript watch under this machine's Node.js (20: no global
``WebSocket``) and in a browser, the ``Client`` snippet against a real api_server; and the README names
every setting the processes, the dev run and the command line read."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import ADMIN, CHROMIUM_LAUNCH, LineReader, eventually

from devtools.services import free_port

REPO = Path(__file__).resolve().parents[2]
# The interpreter .venv was made from: what `python` is for someone who has not activated .venv.
PLAIN_PYTHON = getattr(sys, "_base_executable", sys.executable)


def _plain_env(**extra: str) -> dict[str, str]:
    unset = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if k not in unset and not k.startswith("PYTEST")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO)))
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def _plain_python_lacks_aiohttp() -> None:
    found = subprocess.run([PLAIN_PYTHON, "-c", "import aiohttp"], capture_output=True, env=_plain_env())
    if found.returncode == 0:
        pytest.skip(f"{PLAIN_PYTHON} has aiohttp itself: nothing to show")


@pytest.mark.usefixtures("_plain_python_lacks_aiohttp")
def test_watch_example_runs_under_plain_python_by_using_the_venv() -> None:
    env = _plain_env(DYNCONFIG_TOKEN="not-used", DYNCONFIG_WATCH_URL=f"ws://127.0.0.1:{free_port()}/watch")
    proc = subprocess.Popen(
        [PLAIN_PYTHON, "examples/watch.py", "app.*"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # nobody listens there: it reports the failure and retries
        assert line.startswith("# Client") and "retrying in" in line, line + proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.usefixtures("_plain_python_lacks_aiohttp")
def test_watch_example_without_a_venv_says_how_to_get_one(tmp_path: Path) -> None:
    (tmp_path / "examples").mkdir()
    shutil.copy(REPO / "examples" / "watch.py", tmp_path / "examples" / "watch.py")
    result = subprocess.run(
        [PLAIN_PYTHON, "examples/watch.py"], cwd=tmp_path, env=_plain_env(), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "./dev/up" in result.stderr and ".venv/bin/python examples/watch.py" in result.stderr


# --- the README's snippets, run as shown -------------------------------------------------------------

README = REPO / "README.md"
#: The origin the README's snippets talk to (the dev run's front door), replaced by the test's.
README_ORIGIN = "localhost:8080"


def readme_block(language: str, marker: str) -> str:
    """The one fenced ``language`` block of the README that contains ``marker``."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```$", README.read_text(), flags=re.S | re.M)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, f"expected one {language} block with {marker!r} in README.md, found {len(found)}"
    return found[0]


def http_put(url: str, token: str, body: Any) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT")
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return int(resp.status)


@pytest.fixture
def front_door(spawn: Callable[..., Any]) -> Any:
    """The local run's shape: a real api_server and notifier behind the dev front door (one origin)."""
    api, notifier = spawn("api_server"), spawn("notifier")
    return spawn("devtools.frontdoor", API_PORT=str(api.port), NOTIFIER_PORT=str(notifier.port))


@pytest.fixture(scope="module")
def node_env() -> dict[str, str]:
    """The environment for this machine's ``node``: with npm's ``ws`` on ``NODE_PATH`` when it has no
    global ``WebSocket`` (Node.js 20), installed once where the benchmark's generators keep it (never
    committed); without it on Node.js 22 and later, so the built-in one is what runs."""
    if shutil.which("node") is None:
        pytest.skip("no node on this machine")
    probe = subprocess.run(["node", "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 3)"], check=False)
    env = {k: v for k, v in os.environ.items() if k != "NODE_PATH"}
    if probe.returncode == 0:
        return env
    from bench.measure import GEN, ensure_generators

    ensure_generators()
    return {**env, "NODE_PATH": str(GEN / "node_modules")}


def test_readme_javascript_watch_runs_on_this_node(
    front_door: Any, node_env: dict[str, str], token: Callable[..., str], unique_prefix: str, tmp_path: Path
) -> None:
    snippet = readme_block("javascript", "/watch")
    script = tmp_path / "watch.js"
    script.write_text(snippet.replace(README_ORIGIN, f"127.0.0.1:{front_door.port}"))
    admin = token(ADMIN)
    node = subprocess.Popen(
        ["node", str(script)],
        cwd=tmp_path,
        env={**node_env, "DYNCONFIG_TOKEN": admin},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = LineReader(node.stdout)
    try:
        lines.wait_for("subscribed")
        key = f"app.{unique_prefix}.feature-toggle.enabled"
        assert http_put(f"{front_door.url}/keys/{key}", admin, {"value": "false"}) == 201
        lines.wait_for(key)
    finally:
        node.kill()
        node.wait()
        assert node.stdout is not None
        node.stdout.close()


async def test_readme_javascript_watch_runs_in_a_browser(
    front_door: Any, token: Callable[..., str], unique_prefix: str
) -> None:
    from playwright.async_api import ConsoleMessage, Dialog, async_playwright

    snippet = readme_block("javascript", "/watch").replace(README_ORIGIN, f"127.0.0.1:{front_door.port}")
    admin = token(ADMIN)
    logged: list[Any] = []  # what the page's console.log('Update:', update) printed, as JSON
    errors: list[str] = []

    async def on_console(message: ConsoleMessage) -> None:
        if len(message.args) == 2:
            logged.append(await message.args[1].json_value())

    async def on_dialog(dialog: Dialog) -> None:  # the snippet's prompt() for the token
        await dialog.accept(admin)

    async def seen(what: Callable[[Any], bool]) -> None:
        await eventually(
            lambda: any(isinstance(item, dict) and what(item) for item in logged),
            15,
            lambda: f"the page to log it; it logged only {logged}; its errors: {errors}",
        )

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(**CHROMIUM_LAUNCH)
        try:
            page = await browser.new_page()
            page.on("console", on_console)
            page.on("dialog", on_dialog)
            page.on("pageerror", lambda error: errors.append(str(error)))
            # A page of the same (loopback) origin: Chromium keeps other pages off local addresses.
            await page.goto(f"{front_door.url}/health")
            await page.add_script_tag(content=snippet)
            await seen(lambda item: item.get("event") == "subscribed")
            key = f"app.{unique_prefix}.feature-toggle.enabled"
            assert await asyncio.to_thread(http_put, f"{front_door.url}/keys/{key}", admin, {"value": "true"}) == 201
            await seen(lambda item: item.get("key") == key and item.get("value") == "true")
        finally:
            await browser.close()


# --- the README names every setting ------------------------------------------------------------------

#: Where settings are read: every first-party package a user runs (the processes, the dev run, the client).
READERS_OF_SETTINGS = (
    "shared",
    "api_server",
    "notifier",
    "expiry_worker",
    "dynconfig_admin",
    "devtools",
    "dynconfig_client",
    "examples",
)
_ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]{2,}")
# Calls that read one variable, named by their first string argument: ``env.get("X")``,
# ``os.getenv("X")``, and any helper handed the environment, ``_int(env, "X", 30)``, ``_port(environ, "X")``.
_ENV_READERS = {"get", "getenv"}
_ENVIRONMENTS = {"env", "environ"}


def _name_of(node: ast.expr) -> str | None:
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None


def variables_read(path: Path) -> set[str]:
    """The environment variables a module reads by name (``env.get("X")``, ``environ["X"]``, and the
    settings helpers), found in its syntax tree."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        name: str | None = None
        if isinstance(node, ast.Call):
            texts = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            handed = any(_name_of(a) in _ENVIRONMENTS for a in node.args)
            name = texts[0] if texts and (_name_of(node.func) in _ENV_READERS or handed) else None
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            name = node.slice.value if _name_of(node.value) in _ENVIRONMENTS else None
        if isinstance(name, str) and _ENV_NAME.fullmatch(name):
            found.add(name)
    return found


def readme_table(heading: str) -> dict[str, list[str]]:
    """The first table under ``heading``: each row's cells by every backticked variable of its first cell."""
    text = README.read_text()
    assert heading in text, f"README.md has no {heading!r}"
    rows: dict[str, list[str]] = {}
    for line in text[text.index(heading) :].splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]):
                rows[name] = cells
    return rows


def test_readme_documents_every_variable_the_code_reads() -> None:
    from devtools.up import DEV_SERVERS, PROCESSES

    read = {
        name: str(path.relative_to(REPO))
        for package in READERS_OF_SETTINGS
        for path in sorted((REPO / package).rglob("*.py"))
        for name in variables_read(path)
    }
    read.update({variable: "devtools/up.py" for _, variable, _ in [*PROCESSES, *DEV_SERVERS]})
    assert {"POSTGRES_URL", "FRONTDOOR_PORT", "DEV_PG_PORT", "DYNCONFIG_URL"} <= read.keys()  # the scan works
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", README.read_text()))
    missing = {name: path for name, path in read.items() if name not in documented}
    assert not missing, f"README.md does not name these variables (read in): {missing}"


def test_readme_gives_the_ports_the_dev_run_uses() -> None:
    from devtools.up import DEV_SERVERS, PROCESSES

    table = readme_table("### The local run")
    for _, variable, default in [*PROCESSES, *DEV_SERVERS]:
        assert variable in table, f"the local run's table has no row for {variable}"
        assert table[variable][-1].startswith(str(default)), f"{variable}: README says {table[variable][-1]!r}"


def test_readme_says_where_dynconfig_is_before_using_it() -> None:
    chunks = re.split(r"\n\s*\n", README.read_text())  # paragraphs, and code blocks without blank lines
    uses = [i for i, chunk in enumerate(chunks) if re.search(r"`dynconfig`|^\s*dynconfig ", chunk, flags=re.M)]
    told = [i for i, chunk in enumerate(chunks) if ".venv/bin/dynconfig" in chunk or ".venv/bin/activate" in chunk]
    assert uses and told and told[0] <= uses[0], f"`dynconfig` first appears in:\n{chunks[uses[0]]}"


def test_readme_client_snippet_runs_and_closes_its_client(
    spawn: Callable[..., Any], token: Callable[..., str], unique_prefix: str, tmp_path: Path
) -> None:
    api = spawn("api_server")
    snippet = readme_block("python", "async with Client(")
    # As shown, but against this test's server and with this test's own keys.
    script = tmp_path / "client_example.py"
    script.write_text(snippet.replace(f"http://{README_ORIGIN}", api.url).replace('"app', f'"{unique_prefix}.app'))
    env = {**os.environ, "DYNCONFIG_TOKEN": token(ADMIN), "PYTHONWARNINGS": "error"}  # an unclosed session warns
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("hello 1 "), lines
    assert f"{unique_prefix}.app.greeting" in lines and lines[-1] == "gone: Key does not exist", lines
