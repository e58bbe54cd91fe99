"""The ``dynconfig`` command line, run as a real subprocess against real api_server and notifier processes.

Every run is a client-only installation: importing any other first-party package (``devtools``,
``shared``, the servers) fails in the CLI's process, as it would for a user who installed only the client.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from support import LineReader

from devtools.devkeys import ensure_dev_keys
from devtools.services import free_port

REPO = Path(__file__).resolve().parents[2]
Token = Callable[..., str]
Run = Callable[..., subprocess.CompletedProcess[str]]

# What a user who installs only the client does not have: every other first-party package.
NOT_THE_CLIENT = (frozenset(p.parent.name for p in REPO.glob("*/__init__.py")) - {"dynconfig_client"}) | {"tests"}

# ``python -c CLIENT_ONLY MODULE ARGS...`` runs ``python -m MODULE ARGS...`` with those packages
# unimportable (even though the repository is on sys.path and the editable install maps them).
CLIENT_ONLY = f"""
import importlib.abc, runpy, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {sorted(NOT_THE_CLIENT)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (only the client is installed)", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
"""


def cli_env(url: str, token: str | None, **extra: str) -> dict[str, str]:
    """The caller's environment without any DYNCONFIG_* setting of its own, plus URL and token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DYNCONFIG_", "PYTEST"))}
    env["DYNCONFIG_TEST_KEY_HEX"] = os.environ.get("DYNCONFIG_TEST_KEY_HEX", "")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["DYNCONFIG_URL"] = url
    if token is not None:
        env["DYNCONFIG_TOKEN"] = token
    env.update(extra)
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-c", CLIENT_ONLY, "dynconfig_client", *args]


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=30)


@pytest.fixture
def api_proc(spawn: Callable[..., Any]) -> Any:
    """A real api_server process."""
    return spawn("api_server")


@pytest.fixture
def admin_token(token: Token) -> str:
    return token()


@pytest.fixture
def cli(api_proc: Any, admin_token: str) -> Run:
    """``cli("get", "k")``: run dynconfig as the admin against the api_server process."""
    env = cli_env(api_proc.url, admin_token)
    return lambda *args, **extra: run_cli(*args, env={**env, **extra})


def http_get(url: str, token: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    return result.stdout


# --- the round trip --------------------------------------------------------------------------------


def test_round_trip_put_get_watch_rm(
    cli: Run, spawn: Callable[..., Any], api_proc: Any, admin_token: str, unique_prefix: str
) -> None:
    notifier = spawn("notifier")
    key = f"{unique_prefix}.feature.enabled"
    put = json.loads(ok(cli("put", key, '{"on": true}')))
    assert (put["key"], put["version"], put["created"], put["expiresAt"]) == (key, 1, True, None)
    assert ok(cli("get", key)) == '{"on": true}\n'

    watch_env = cli_env(api_proc.url, admin_token, DYNCONFIG_WATCH_URL=f"ws://127.0.0.1:{notifier.port}/watch")
    watcher = subprocess.Popen(
        cli_command("watch", f"{unique_prefix}.*", "--snapshot"),
        env=watch_env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = LineReader(watcher.stdout)
        snapshot = lines.next_json()  # the current value first: the subscription is in place
        assert (snapshot["event"], snapshot["key"], snapshot["version"]) == ("update", key, 1)
        assert snapshot["value"] == {"on": True}

        ok(cli("put", key, "false"))
        live = lines.next_json()
        assert (live["event"], live["key"], live["version"], live["value"]) == ("update", key, 2, False)
        assert live["revision"] > snapshot["revision"]

        assert ok(cli("rm", key)) == ""
        deleted = lines.next_json()
        assert (deleted["event"], deleted["key"], deleted["version"]) == ("delete", key, 3)
        assert deleted["revision"] > live["revision"]
    finally:
        watcher.send_signal(signal.SIGTERM)
        _, stderr = watcher.communicate(timeout=15)
    assert watcher.returncode == 0, stderr
    assert admin_token not in stderr

    gone = cli("get", key)
    assert (gone.returncode, gone.stdout, gone.stderr) == (1, "", "dynconfig: 404 Not Found: Key does not exist\n")


# --- values and options ----------------------------------------------------------------------------


def test_value_is_json_unless_string(cli: Run, api_proc: Any, admin_token: str, unique_prefix: str) -> None:
    ok(cli("put", f"{unique_prefix}.bool", "true"))
    ok(cli("put", f"{unique_prefix}.str", "true", "--string"))
    ok(cli("put", f"{unique_prefix}.text", "hello world", "--string"))
    assert ok(cli("get", f"{unique_prefix}.bool")) == "true\n"
    assert ok(cli("get", f"{unique_prefix}.str")) == '"true"\n'
    assert http_get(f"{api_proc.url}/keys/{unique_prefix}.text", admin_token)[1]["value"] == "hello world"

    record = json.loads(ok(cli("get", f"{unique_prefix}.bool", "--json")))
    assert {k: record[k] for k in ("key", "value", "version", "ttl", "expiresAt")} == {
        "key": f"{unique_prefix}.bool",
        "value": True,
        "version": 1,
        "ttl": None,
        "expiresAt": None,
    }
    assert record["lastModified"].endswith("Z")


def test_value_that_is_not_json_is_a_usage_error(cli: Run, unique_prefix: str) -> None:
    result = cli("put", f"{unique_prefix}.k", "not json")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.count("\n") == 1 and "--string" in result.stderr
    assert cli("get", f"{unique_prefix}.k").returncode == 1  # nothing was written


def test_put_ttl_acls_and_if_match(cli: Run, api_proc: Any, token: Token, unique_prefix: str) -> None:
    key = f"{unique_prefix}.guarded"
    ok(cli("put", key, "1", "--ttl", "60", "--acl-read", "*", "--acl-write", "svc:*, ops"))
    record = json.loads(ok(cli("get", key, "--json")))
    assert (record["value"], record["ttl"]) == (1, 60)

    bob = cli_env(api_proc.url, token(f"{unique_prefix}-bob"))
    assert ok(run_cli("get", key, env=bob)) == "1\n"  # read: *
    denied = run_cli("patch", key, "2", env=bob)  # write: svc:*, ops
    assert denied.returncode == 1 and denied.stderr.count("\n") == 1, denied.stderr
    assert denied.stderr.startswith(f"dynconfig: 403 Forbidden: You may not write key '{key}': "), denied.stderr
    svc = cli_env(api_proc.url, token("svc:billing"))
    assert json.loads(ok(run_cli("patch", key, "2", "--if-match", "1", env=svc)))["version"] == 2

    stale = cli("patch", key, "3", "--if-match", "1")
    assert (stale.returncode, stale.stderr) == (1, "dynconfig: 412 Precondition Failed: Key is at version 2, not 1\n")
    assert cli("rm", key, "--if-match", '"1"').returncode == 1
    ok(cli("rm", key, "--if-match", '"2"'))


def test_ls_lists_every_key_and_history_prints_versions(cli: Run, unique_prefix: str) -> None:
    keys = [f"{unique_prefix}.b", f"{unique_prefix}.a", f"{unique_prefix}/c/d"]
    for key in keys:
        ok(cli("put", key, "0"))
    ok(cli("patch", keys[0], '"second"'))
    assert ok(cli("ls", unique_prefix)).splitlines() == sorted(keys)

    history = [json.loads(line) for line in ok(cli("history", keys[0])).splitlines()]
    assert [(h["version"], h["event"], h["value"], h["actor"]) for h in history] == [
        (2, "update", "second", "admin-user"),
        (1, "update", 0, "admin-user"),
    ]


def test_rollback_restores_an_earlier_value_as_a_new_version(cli: Run, unique_prefix: str) -> None:
    key = f"{unique_prefix}.limit"
    for value in ("10", "20", "30"):
        ok(cli("put", key, value))
    written = json.loads(ok(cli("rollback", key, "1", "--if-match", "3")))
    assert (written["key"], written["version"], written["created"]) == (key, 4, False)
    assert ok(cli("get", key)) == "10\n"
    assert [json.loads(line)["value"] for line in ok(cli("history", key)).splitlines()] == [10, 30, 20, 10]

    stale = cli("rollback", key, "2", "--if-match", "3")  # the key is at version 4 now
    assert (stale.returncode, stale.stdout) == (1, "")
    assert stale.stderr.startswith("dynconfig: 412 Precondition Failed: "), stale.stderr
    missing = cli("rollback", key, "99")
    assert (missing.returncode, missing.stderr.split(":")[1].strip()) == (1, "404 Not Found"), missing.stderr
    assert cli("rollback", key, "one").returncode == 2  # N must be a number: a usage error
    assert ok(cli("get", key)) == "10\n"


# --- errors --------------------------------------------------------------------------------------


def test_get_missing_key_prints_server_message_and_exits_1(
    cli: Run, api_proc: Any, admin_token: str, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.missing"
    status, body = http_get(f"{api_proc.url}/keys/{key}", admin_token)
    assert status == 404
    result = cli("get", key)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"dynconfig: 404 {body['error']}: {body['message']}\n"


def test_bad_token_prints_unauthorized_without_the_token(api_proc: Any, token: Token, unique_prefix: str) -> None:
    expired = token(exp_in=-120)
    result = run_cli("ls", env=cli_env(api_proc.url, expired))
    assert result.returncode == 1
    assert result.stderr.startswith("dynconfig: 401 Unauthorized: ") and result.stderr.count("\n") == 1
    assert expired not in result.stderr + result.stdout


def test_unreachable_server_exits_1_with_one_line(token: Token) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli("get", "app.x", env=cli_env(url, token()))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(f"dynconfig: cannot reach {url}: ") and result.stderr.count("\n") == 1


# --- watch: where /watch is, and what a refused handshake means ----------------------------------------


def watch_process(url: str, token: str, *args: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli_command("watch", *args),
        env=cli_env(url, token, **extra),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.communicate(timeout=15)


def test_watch_at_the_apis_own_port_says_so_in_one_line_and_stops(api_proc: Any, admin_token: str) -> None:
    try:
        result = subprocess.run(
            cli_command("watch", "app.*"),
            env=cli_env(api_proc.url, admin_token),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,  # a busy machine; it used to retry for ever
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"still retrying after 60 s; it said: {exc.stderr!r}")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    url = f"ws://127.0.0.1:{api_proc.port}/watch"
    assert result.stderr.startswith(f"dynconfig: 404 Not Found: the server at {url} answered 404"), result.stderr
    assert "DYNCONFIG_URL" in result.stderr and "front door" in result.stderr and "API's own port" in result.stderr


def test_watch_retries_a_5xx_handshake_saying_so_until_the_notifier_is_up(
    spawn: Callable[..., Any], api_proc: Any, admin_token: str, unique_prefix: str
) -> None:
    notifier_port = free_port()  # the front door's notifier is not there yet: it answers 502
    door = spawn("devtools.frontdoor", API_PORT=str(api_proc.port), NOTIFIER_PORT=str(notifier_port))
    key = f"{unique_prefix}.k"
    ok(run_cli("put", key, "1", env=cli_env(door.url, admin_token)))
    watcher = watch_process(door.url, admin_token, f"{unique_prefix}.*", "--snapshot")
    try:
        complaint = LineReader(watcher.stderr).next_line(timeout=30)
        url = f"ws://127.0.0.1:{door.port}/watch"
        assert complaint.startswith(f"dynconfig: the server at {url} answered 502 Bad Gateway"), complaint
        assert "retrying in" in complaint, complaint
        spawn("notifier", port=notifier_port)
        event = LineReader(watcher.stdout).next_json(timeout=60)  # backoff tops out at 30 s
        assert (event["event"], event["key"], event["value"]) == ("update", key, 1)
    finally:
        stop(watcher)


def test_watch_waits_out_a_429_handshake_saying_so(spawn: Callable[..., Any], token: Token, unique_prefix: str) -> None:
    import asyncio

    import aiohttp

    notifier = spawn("notifier", RATE_LIMIT="2")
    user_token = token(f"{unique_prefix}-user")
    url = f"ws://127.0.0.1:{notifier.port}/watch"

    async def use_up_the_limit() -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.ws_connect(url, headers={"Authorization": f"Bearer {user_token}"}):
                    pass

    asyncio.run(use_up_the_limit())
    watcher = watch_process(notifier.url, user_token, "app.*", DYNCONFIG_WATCH_URL=url)
    try:
        complaint = LineReader(watcher.stderr).next_line(timeout=30)
        assert complaint.startswith(f"dynconfig: the server at {url} answered 429 Too Many Requests"), complaint
        assert "retrying in" in complaint and watcher.poll() is None, complaint
    finally:
        stop(watcher)


def test_missing_token_is_a_usage_error() -> None:
    result = run_cli("ls", env=cli_env("http://127.0.0.1:9", None))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("dynconfig: no token") and result.stderr.count("\n") == 1


def test_options_are_accepted_after_the_command(cli: Run, api_proc: Any, admin_token: str, unique_prefix: str) -> None:
    env = cli_env("http://127.0.0.1:9", None)
    result = run_cli("put", f"{unique_prefix}.k", "7", "--url", api_proc.url, "--token", admin_token, env=env)
    assert json.loads(ok(result))["version"] == 1
    assert ok(run_cli("--url", api_proc.url, "--token", admin_token, "get", f"{unique_prefix}.k", env=env)) == "7\n"


# --- start-up ------------------------------------------------------------------------------------

# What only a request needs; --help and usage errors must answer without loading any of it.
HEAVY = ("aiohttp", "yarl", "multidict", "cryptography", "dynconfig_client.client", "dynconfig_client.live")


def imported_by(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the CLI under ``-X importtime``: its result and every module it imported."""
    command = [sys.executable, "-X", "importtime", "-c", CLIENT_ONLY, "dynconfig_client", *args]
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=30)
    modules = {
        line.rpartition("|")[2].strip() for line in result.stderr.splitlines() if line.startswith("import time:")
    }
    return result, modules


@pytest.mark.parametrize(
    "args",
    [("--help",), ("get", "--help"), ("ls",), ("put", "app.k", "not json")],
    ids=["help", "get-help", "no-token", "bad-value"],
)
def test_help_and_usage_errors_do_not_load_the_http_stack(args: tuple[str, ...]) -> None:
    env = cli_env("http://127.0.0.1:9", None if args == ("ls",) else "some-token")
    result, modules = imported_by(*args, env=env)
    assert result.returncode == (0 if "--help" in args else 2), result.stderr[-2000:]
    assert "dynconfig_client.cli" in modules
    loaded = sorted({m.partition(".")[0] for m in modules if m.partition(".")[0] in HEAVY} | (modules & set(HEAVY)))
    assert loaded == [], f"dynconfig {' '.join(args)} imported {loaded}"


def test_requests_go_out_without_aiohttp(cli: Run, api_proc: Any, admin_token: str, unique_prefix: str) -> None:
    key = f"{unique_prefix}.k"
    ok(cli("put", key, "1"))
    env = cli_env(api_proc.url, admin_token)
    for args in (("get", key), ("history", key), ("ls", unique_prefix), ("rollback", key, "1")):
        result, modules = imported_by(*args, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "dynconfig_client.transport" in modules and "http.client" in modules
        assert not {"aiohttp", "yarl", "multidict"} & modules, f"dynconfig {args[0]} imported aiohttp"
    assert ok(cli("get", key)) == "1\n"


def test_the_package_exports_everything_lazily() -> None:
    import dynconfig_client

    code = (
        "import sys, dynconfig_client\n"
        "assert 'aiohttp' not in sys.modules, 'import dynconfig_client loaded aiohttp'\n"
        "from dynconfig_client import Client, LiveConfig, NotFound, SyncLiveConfig\n"
        "assert 'aiohttp' in sys.modules and Client.__module__ == 'dynconfig_client.client'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
    for name in dynconfig_client.__all__:
        assert getattr(dynconfig_client, name) is not None, name
    assert set(dynconfig_client.__all__) <= set(dir(dynconfig_client))
    with pytest.raises(AttributeError):
        dynconfig_client.NoSuchThing  # noqa: B018


# --- only the client -----------------------------------------------------------------------------


def test_the_client_package_imports_no_other_first_party_package() -> None:
    """Imports inside functions count too: a lazy import is exactly what a few runs of the CLI can miss."""
    assert {"devtools", "shared", "api_server"} <= NOT_THE_CLIENT
    offenders = []
    for path in sorted((REPO / "dynconfig_client").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{path.relative_to(REPO)}:{node.lineno} imports {name}"
                for name in names
                if name.partition(".")[0] in NOT_THE_CLIENT
            ]
    assert offenders == []


def test_the_cli_works_with_only_the_client_installed(cli: Run, unique_prefix: str) -> None:
    env = cli_env("", None)
    # The harness really hides the dev tooling: ./dev/token's module cannot be imported under it.
    hidden = subprocess.run(
        [sys.executable, "-c", CLIENT_ONLY, "devtools.token", "--username", "admin-user"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert hidden.returncode == 1
    assert "ModuleNotFoundError: No module named 'devtools' (only the client is installed)" in hidden.stderr

    usage = ok(run_cli("--help", env=env))
    for command in ("get", "put", "patch", "rollback", "rm", "ls", "watch", "history"):
        assert command in usage
    assert json.loads(ok(cli("put", f"{unique_prefix}.k", "[1, 2]")))["created"] is True
    assert ok(cli("get", f"{unique_prefix}.k")) == "[1, 2]\n"


def test_a_dev_token_from_dev_token_works_with_the_cli(spawn: Callable[..., Any], tmp_path: Path) -> None:
    keys = ensure_dev_keys(tmp_path / "dev" / "keys")
    dev_token = [sys.executable, "-m", "devtools.token", "--username", "alice", "--dir", str(tmp_path / "dev")]
    minted = ok(subprocess.run(dev_token, cwd=REPO, capture_output=True, text=True, timeout=30)).strip()  # ./dev/token
    assert jwt.get_unverified_header(minted)["kid"] == keys.kid

    api = spawn("api_server", JWKS_URL=keys.jwks_url)  # verifies tokens with the dev JWKS only
    ok(run_cli("ls", "nothing-here", env=cli_env(api.url, minted)))
