"""The examples run as the README says, with the plain ``python`` a new user types."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.services import free_port

REPO = Path(__file__).resolve().parent.parent
# The interpreter .venv was made from: what `python` is for someone who has not activated .venv.
PLAIN_PYTHON = getattr(sys, "_base_executable", sys.executable)


def _plain_env(**extra: str) -> dict[str, str]:
    unset = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if k not in unset and not k.startswith("PYTEST")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO)))
    env.update(extra)
    return env


@pytest.fixture(scope="module", autouse=True)
def _plain_python_lacks_aiohttp() -> None:
    found = subprocess.run([PLAIN_PYTHON, "-c", "import aiohttp"], capture_output=True, env=_plain_env())
    if found.returncode == 0:
        pytest.skip(f"{PLAIN_PYTHON} has aiohttp itself: nothing to show")


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


def test_watch_example_without_a_venv_says_how_to_get_one(tmp_path: Path) -> None:
    (tmp_path / "examples").mkdir()
    shutil.copy(REPO / "examples" / "watch.py", tmp_path / "examples" / "watch.py")
    result = subprocess.run(
        [PLAIN_PYTHON, "examples/watch.py"], cwd=tmp_path, env=_plain_env(), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "./dev/up" in result.stderr and ".venv/bin/python examples/watch.py" in result.stderr
