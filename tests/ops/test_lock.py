"""The lock files: every dependency pinned and hash-checked, in agreement with setup.cfg and with each
other, and installable from this machine's package index exactly as the image installs them.

- ``requirements.lock``: ``install_requires``, what the image runs (deploy/Dockerfile);
- ``requirements-build.lock``: pyproject.toml's build requirements, what the image builds with;
- ``requirements-test.lock``: both, plus the ``[test]`` extra: what ./dev/test and CI install.

``bash dev/lock`` writes all three. Each check returns the problems it found; the ``*_catches_*``
tests feed it a broken copy.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_deploy import DOCKERFILE, DOCKERIGNORE, dockerfile_stages, in_context

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements.lock"
BUILD_LOCK = ROOT / "requirements-build.lock"
TEST_LOCK = ROOT / "requirements-test.lock"
#: What never belongs in the image: installers, build front- and back-ends, test tools.
DEV_TOOLS = frozenset({"pip", "setuptools", "wheel", "build", "pip-tools", "packaging", "pytest", "ruff", "mypy"})


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: tuple[str, ...]


_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)(?P<rest>.*)$")


def parse_lock(text: str) -> tuple[dict[str, Pin], list[str]]:
    """The pins of a pip-compile lock (``name==version \\`` then ``--hash=sha256:…`` lines), and
    every line that is not one: an unpinned or ranged requirement, an option, an editable or URL."""
    pins: dict[str, Pin] = {}
    problems: list[str] = []
    logical = re.sub(r"\\\n", " ", text)  # join continuation lines
    for raw in logical.splitlines():
        line = raw.split("#", 1)[0].strip()  # "# via …" annotations; a hash holds no "#"
        if not line:
            continue
        match = _ENTRY.match(line)
        if match is None:
            problems.append(f"not a pinned requirement: {line[:80]}")
            continue
        hashes = tuple(re.findall(r"--hash=sha256:([0-9a-f]{64})\b", match["rest"]))
        leftover = re.sub(r"--hash=sha256:[0-9a-f]{64}", "", match["rest"]).strip()
        if leftover:
            problems.append(f"{match['name']}: unexpected {leftover[:60]!r}")
        if not hashes:
            problems.append(f"{match['name']}=={match['version']} has no sha256 hash")
        name = canonicalize_name(match["name"])
        if name in pins:
            problems.append(f"{name} is pinned twice")
        pins[name] = Pin(match["version"], hashes)
    return pins, problems


def setup_cfg_requirements(*extras: str) -> list[Requirement]:
    """setup.cfg's ``install_requires`` and the named extras, as parsed requirements."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in extras:
        lines += cfg["options.extras_require"][extra].splitlines()
    return [Requirement(line) for line in lines if line.strip()]


def build_requirements() -> list[Requirement]:
    build_system = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    return [Requirement(r) for r in build_system["requires"]]


def lock_problems(text: str, requirements: list[Requirement]) -> list[str]:
    """Every requirement that applies here is pinned at a version in its range, and every line of the
    lock is a pin with hashes."""
    pins, problems = parse_lock(text)
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate():  # this interpreter's environment
            continue
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req} is not in the lock")
        elif not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{req.name}=={pin.version} is outside setup.cfg's range {req.specifier}")
    return problems


def agreement_problems(locks: dict[str, str]) -> list[str]:
    """A package in two locks has one version (CI tests what the image runs)."""
    seen: dict[str, tuple[str, str]] = {}
    problems = []
    for lock_name, text in locks.items():
        for name, pin in parse_lock(text)[0].items():
            if name in seen and seen[name][1] != pin.version:
                problems.append(f"{name}: {seen[name][0]} pins {seen[name][1]}, {lock_name} pins {pin.version}")
            seen.setdefault(name, (lock_name, pin.version))
    return problems


def test_runtime_lock_pins_install_requires() -> None:
    assert lock_problems(RUNTIME_LOCK.read_text(), setup_cfg_requirements()) == []


def test_build_lock_pins_the_build_requirements() -> None:
    assert lock_problems(BUILD_LOCK.read_text(), build_requirements()) == []


def test_test_lock_pins_install_requires_the_test_extra_and_the_build_requirements() -> None:
    text = TEST_LOCK.read_text()
    assert lock_problems(text, setup_cfg_requirements("test") + build_requirements()) == []
    # Everything the image installs is in what CI installs (which is what CI tested).
    test_pins = parse_lock(text)[0]
    for lock in (RUNTIME_LOCK, BUILD_LOCK):
        assert set(parse_lock(lock.read_text())[0]) <= set(test_pins), f"{lock.name} holds what CI never installs"


def test_the_locks_agree_with_each_other() -> None:
    assert agreement_problems({p.name: p.read_text() for p in (TEST_LOCK, RUNTIME_LOCK, BUILD_LOCK)}) == []


def test_the_runtime_lock_holds_no_dev_tool() -> None:
    assert set(parse_lock(RUNTIME_LOCK.read_text())[0]) & DEV_TOOLS == set()


def test_lock_check_catches_a_version_outside_the_range_an_unpinned_line_and_a_missing_hash() -> None:
    text = RUNTIME_LOCK.read_text()
    broken = re.sub(r"^aiohttp==\S+", "aiohttp==4.0.0", text, flags=re.M)  # setup.cfg: <4
    broken = re.sub(r"^redis==\S+ \\\n(\s+--hash=\S+ \\?\n)+", "redis>=5\n", broken, flags=re.M)
    broken = re.sub(r"^(marshmallow==\S+) \\\n(\s+--hash=\S+ \\?\n)+", r"\1\n", broken, flags=re.M)
    broken += "--extra-index-url https://example.invalid/simple\n"
    problems = "\n".join(lock_problems(broken, setup_cfg_requirements()))
    assert "aiohttp==4.0.0 is outside setup.cfg's range <4,>=3.9" in problems
    assert "not a pinned requirement: redis>=5" in problems
    assert "redis<9,>=5 is not in the lock" in problems
    assert re.search(r"marshmallow==\S+ has no sha256 hash", problems)
    assert "not a pinned requirement: --extra-index-url" in problems


def test_agreement_check_catches_two_versions_of_one_package() -> None:
    test_text = TEST_LOCK.read_text()
    runtime = re.sub(r"^yarl==\S+", "yarl==0.0.1", RUNTIME_LOCK.read_text(), flags=re.M)
    problems = agreement_problems({"requirements-test.lock": test_text, "requirements.lock": runtime})
    assert len(problems) == 1 and problems[0].startswith("yarl: requirements-test.lock pins")


# --- the image's build stage, run here --------------------------------------------------------------


def build_stage_script(dockerfile: str, venv: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """The build stage's COPY sources and RUN commands, ``/opt/dynconfig`` mapped to ``venv``."""
    stages = dict(dockerfile_stages(dockerfile))
    copies: list[tuple[str, str]] = []
    runs: list[str] = []
    for instruction, args in stages["build"]:
        if instruction == "COPY":
            *sources, dest = args.split()
            copies += [(src, dest) for src in sources]
        elif instruction == "RUN":
            runs.append(args.replace("/opt/dynconfig", str(venv)))
    return copies, runs


def installed(python: Path) -> dict[str, str]:
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m\nfor d in m.distributions(): print(d.name, d.version)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {canonicalize_name(name): version for name, version in (line.split() for line in out.splitlines())}


def test_the_image_build_stage_installs_the_lock_and_leaves_no_dev_tool(tmp_path: Path) -> None:
    """deploy/Dockerfile's build stage, run here (no container engine in CI): its COPYs (through the
    build context's filter) into a scratch directory, then its RUN lines in order, with the image's
    /opt/dynconfig in a scratch directory too. Every hash in the locks must match what this machine's
    package index serves, the processes must import, and no installer may be left."""
    context, venv = tmp_path / "src", tmp_path / "opt-dynconfig"
    context.mkdir()
    copies, runs = build_stage_script(DOCKERFILE.read_text(), venv)
    ignore = DOCKERIGNORE.read_text()
    for src, dest in copies:
        assert in_context(src, ignore), f"COPY {src}: not in the build context"
        target = context / dest.removeprefix("./")
        if (ROOT / src).is_dir():
            shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(ROOT / src, target)
    python_dir = str(Path(sys.executable).parent)
    for command in runs:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=context,
            capture_output=True,
            text=True,
            check=False,
            env={"PATH": f"{python_dir}:/usr/bin:/bin", "HOME": str(Path.home()), "PYTHONDONTWRITEBYTECODE": "1"},
        )
        assert result.returncode == 0, f"RUN {command[:100]}…\n{result.stdout[-1500:]}\n{result.stderr[-3000:]}"
    python = venv / "bin" / "python"
    dists = installed(python)
    assert set(dists) & DEV_TOOLS == set(), "dev tools left in the image's environment"
    runtime = {name: pin.version for name, pin in parse_lock(RUNTIME_LOCK.read_text())[0].items()}
    assert {n: v for n, v in dists.items() if n != "dynconfig"} == runtime
    assert not (venv / "bin" / "pip").exists()
    check = subprocess.run(
        [
            str(python),
            "-c",
            "import api_server.main, notifier.main, expiry_worker.main, dynconfig_client, importlib.resources as r;"
            "print(sorted(p.name for p in r.files('api_server').joinpath('console/static').iterdir()))",
        ],
        cwd=tmp_path,  # not the repository: the installed package must be what is imported
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    static = sorted(p.name for p in (ROOT / "api_server" / "console" / "static").iterdir())
    assert check.stdout.strip() == str(static)


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, BUILD_LOCK, TEST_LOCK], ids=lambda p: p.name)
def test_lock_files_name_their_regeneration_command(lock: Path) -> None:
    assert "#    bash dev/lock\n" in lock.read_text()
