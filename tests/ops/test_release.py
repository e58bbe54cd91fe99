"""``python -m build`` makes a release: a wheel and an sdist of the project's version that hold every
package, the console's static files and the LICENSE (tests/ops/release_check.py; .ci/run runs the same
check on the artifacts CI builds)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from release_check import ROOT, dist_problems, project_version


def _sources(into: Path) -> Path:
    """The repository's files as git sees them (committed or not, ignored ones left out), copied:
    building in place would write build/ and *.egg-info beside the tests that run meanwhile."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build --no-isolation``: the sdist, then the wheel built from it, with the locked
    setuptools and wheel of this environment (as .ci/run does)."""
    source = _sources(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out


def test_build_makes_a_wheel_and_an_sdist_of_the_project(dist: Path) -> None:
    assert dist_problems(dist) == []
    assert (dist / f"dynconfig-{project_version()}.tar.gz").exists()


def test_release_check_catches_a_wheel_without_the_console_or_a_package(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    broken = tmp_path / "dist"
    broken.mkdir()
    shutil.copy(next(dist.glob("*.tar.gz")), broken)
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(broken / wheel.name, "w") as dst:
        for item in src.infolist():
            if "console/static/" in item.filename or item.filename.startswith("notifier/"):
                continue
            dst.writestr(item, src.read(item))
    problems = "\n".join(dist_problems(broken))
    assert "wheel lacks api_server/console/static/index.html" in problems
    assert "wheel lacks notifier/__init__.py" in problems


def test_release_check_catches_a_version_that_is_not_the_projects(dist: Path, tmp_path: Path) -> None:
    broken = tmp_path / "dist"
    broken.mkdir()
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(broken / wheel.name, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("METADATA"):
                data = data.replace(f"Version: {project_version()}\n".encode(), b"Version: 0.0.0\n")
            dst.writestr(item, data)
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as src, tarfile.open(broken / sdist.name, "w:gz") as dst:
        for member in src.getmembers():
            if not member.name.endswith("/LICENSE"):
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    problems = "\n".join(dist_problems(broken))
    assert f"wheel metadata says dynconfig 0.0.0, the project is {project_version()}" in problems
    assert "sdist lacks LICENSE" in problems


def test_release_check_runs_as_ci_runs_it(dist: Path, tmp_path: Path) -> None:
    script = str(ROOT / "tests" / "ops" / "release_check.py")
    ok = subprocess.run([sys.executable, script, str(dist)], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    empty = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True)
    assert empty.returncode == 1 and "expected one wheel and one sdist" in empty.stderr
