"""``/openapi.json`` says exactly what the server accepts and answers (SPEC §3, §4).

Schemathesis reads the document from a real ``python -m api_server`` (its own database, real Redis and
JWKS) and sends what the document allows and what it forbids, with every check it has: a request the
document allows must not be refused, one it forbids must not be accepted, every status, header, content
type and body must be documented, and a method the document does not list must get 405 with ``Allow``.
The seed and the number of examples are fixed in ``schemathesis.toml``; as an admin and as a plain user,
zero failures.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from aiohttp.test_utils import TestClient
from support import drop_database, migrated_database

from api_server.handlers import cursors
from devtools.services import PostgresServer, RedisServer
from shared.settings import Settings

if TYPE_CHECKING:
    from tests.conftest import JwksServer

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "schemathesis.toml"
SEED = 20261127
METHODS = ("get", "put", "post", "patch", "delete", "head", "options", "trace")
RUN_TIMEOUT = 120
#: Schemathesis tests the operations of the document it reads, but not the reading of it.
NOT_TESTED = {"GET /openapi.json"}


def operations(url: str) -> set[str]:
    """Every operation the served document declares, named as schemathesis names them ("GET /keys")."""
    with urllib.request.urlopen(f"{url}/openapi.json", timeout=10) as resp:
        paths = json.load(resp)["paths"]
    return {f"{method.upper()} {path}" for path, item in paths.items() for method in item if method in METHODS}


def schemathesis(url: str, token: str, workdir: Path) -> subprocess.Popen[bytes]:
    """Start the schemathesis CLI against ``url`` (every check: the default); its output and reports go to
    ``workdir``."""
    workdir.mkdir()
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color",
        "run", f"{url}/openapi.json", "--workers", "1", "--header", f"Authorization: Bearer {token}",
        "--report", "json,ndjson", "--report-json-path", str(workdir / "report.json"),
        "--report-ndjson-path", str(workdir / "events.ndjson"),
    ]  # fmt: skip
    with open(workdir / "output.txt", "wb") as output:
        return subprocess.Popen(command, cwd=workdir, stdout=output, stderr=subprocess.STDOUT)


def answers(events: Path) -> dict[str, Counter[int]]:
    """The statuses the server answered, per operation, from schemathesis's event log."""
    seen: dict[str, Counter[int]] = defaultdict(Counter)
    with events.open() as lines:
        for line in lines:
            finished = json.loads(line).get("ScenarioFinished")
            if finished is None:
                continue
            recorder = finished["recorder"]
            for case_id, case in recorder.get("cases", {}).items():
                response = recorder.get("interactions", {}).get(case_id, {}).get("response")
                if response is not None:
                    seen[f"{case['value']['method']} {case['value']['path']}"][response["status_code"]] += 1
    return seen


def test_the_server_does_what_its_openapi_document_says(
    spawn: Callable[..., Any],
    pg_server: PostgresServer,
    redis_server: RedisServer,
    jwks: JwksServer,
    settings: Settings,
    tmp_path: Path,
) -> None:
    """As an admin and as a plain user, at once, each against its own api_server with its own database
    and Redis database: schemathesis writes, deletes and sets namespace ACLs on whatever names it draws."""
    admin = sorted(settings.admin_users)[0]
    runs: dict[str, subprocess.Popen[bytes]] = {}
    databases: list[str] = []
    declared: set[str] = set()
    try:
        # Redis databases 14 and 15 of the session's Redis: nothing else uses them.
        for redis_db, (role, username) in enumerate((("admin", admin), ("user", "conformance-user")), start=14):
            databases.append(migrated_database(pg_server))
            redis_url = f"{redis_server.url.rsplit('/', 1)[0]}/{redis_db}"
            redis.Redis.from_url(redis_url).flushdb()
            api = spawn("api_server", POSTGRES_URL=databases[-1], REDIS_URL=redis_url, RATE_LIMIT="1000000")
            declared = operations(api.url)
            runs[role] = schemathesis(api.url, jwks.token(username), tmp_path / role)
        for run in runs.values():
            run.wait(RUN_TIMEOUT)
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.wait()
        for url in databases:
            drop_database(pg_server, url)
    outputs = {role: (tmp_path / role / "output.txt").read_text(errors="replace") for role in runs}
    reports = {role: read_report(role, tmp_path / role, output) for role, output in outputs.items()}
    found = {role: failures(report) for role, report in reports.items()}
    assert found == {"admin": [], "user": []}, "\n".join(
        f"{role}: {len(lines)} failures\n  " + "\n  ".join(lines) + "\n" + outputs[role][-10000:]
        for role, lines in found.items()
        if lines
    )
    for role, report in reports.items():
        check_coverage(role, declared, report, tmp_path / role, outputs[role][-5000:])


def read_report(role: str, workdir: Path, output: str) -> dict[str, Any]:
    """Schemathesis's JSON report of a complete run with our seed."""
    assert (workdir / "report.json").exists(), f"{role}:\n{output[-5000:]}"
    report: dict[str, Any] = json.loads((workdir / "report.json").read_text())
    assert report["complete"] and report["seed"] == SEED, f"{role}:\n{output[-5000:]}"
    return report


def failures(report: dict[str, Any]) -> list[str]:
    """One line per kind of failure (and per error) schemathesis found."""
    lines = [f"{f['code']} {f['title']}: {f['count']} ({', '.join(f['operations'])})" for f in report["failures"]]
    return lines + [f"error: {error}" for error in report["errors"]] + (["exit code"] if report["exit_code"] else [])


def check_coverage(role: str, declared: set[str], report: dict[str, Any], workdir: Path, tail: str) -> None:
    """The run cannot pass by running nothing: every declared operation was tested with requests of
    its own (others were sent only undeclared methods, answered 405) and, as an admin, got past
    validation at least once."""
    assert len(declared) >= 18 and report["operations"]["tested"] == len(declared - NOT_TESTED), (role, tail)
    assert report["operations"]["errored"] == report["operations"]["skipped"] == 0, (role, tail)
    # A pattern schemathesis could not use would leave its parameter untested without a failure.
    for warning in ("unsupported_regex", "unresolvable_reference", "validation_mismatch"):
        assert not report["warnings"].get(warning, []), (role, warning, report["warnings"][warning])
    seen = {name: statuses for name, statuses in answers(workdir / "events.ndjson").items() if name in declared}
    assert set(seen) == declared - NOT_TESTED, (role, sorted(seen))
    for name, statuses in seen.items():
        assert statuses.total() >= 3, (role, name, statuses)
        if role == "admin":
            assert any(200 <= status < 400 for status in statuses), (role, name, statuses)


async def test_cursors_have_their_published_shape_and_the_previous_releases_still_work(
    client: TestClient[Any, Any], token: Callable[..., str], unique_prefix: str
) -> None:
    """Every ``next`` matches the pattern /openapi.json gives its ``cursor``, and a client paging through
    a rolling upgrade, with a cursor of the release before (base64url of JSON), gets the same next page."""
    admin = {"Authorization": f"Bearer {token()}"}
    key = f"{unique_prefix}.k"
    for name in (f"{key}1", f"{key}2", f"{key}3", key, key):  # key: 2 versions
        assert (await client.put(f"/keys/{name}", json={"value": 1}, headers=admin)).status in (200, 201)

    def previous(position: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")

    async def page(path: str, cursor: str | None = None) -> dict[str, Any]:
        query = f"&cursor={cursor}" if cursor is not None else ""
        async with client.get(f"{path}{query}", headers=admin) as resp:
            assert resp.status == 200, await resp.text()
            body: dict[str, Any] = await resp.json()
            return body

    listing = f"/keys?namespace={unique_prefix}&limit=2"
    first = await page(listing)
    assert re.fullmatch(cursors.LIST_PATTERN, first["next"]), first
    second = await page(listing, first["next"])
    assert second["keys"] == [f"{key}2", f"{key}3"]
    assert await page(listing, previous([first["keys"][-1], first["total"]])) == second

    history = f"/keys/{key}/history?limit=1"
    first = await page(history)
    assert re.fullmatch(cursors.HISTORY_PATTERN, first["next"]), first
    second = await page(history, first["next"])
    assert [v["version"] for v in second["versions"]] == [1]
    assert await page(history, previous(first["versions"][-1]["version"])) == second

    audit = f"/audit?key={key}&limit=1"
    first = await page(audit)
    assert re.fullmatch(cursors.AUDIT_PATTERN, first["next"]), first
    second = await page(audit, first["next"])
    at, record_id = cursors.read_audit_cursor(first["next"]) or (None, None)
    assert at is not None and await page(audit, previous([at.isoformat(), record_id])) == second
