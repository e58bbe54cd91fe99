"""``python tests/ops/release_check.py DIST``: is what ``python -m build`` wrote to DIST a release?

One wheel and one sdist of the project's version (setup.cfg's, resolved as setuptools resolves it,
``attr:`` included), the wheel holding every package setup.cfg ships and the web console's static
files, both holding the LICENSE, and the wheel's console scripts those of setup.cfg. .ci/run runs it
on the artifacts it builds; tests/ops/test_release.py runs it on a build of its own and on broken copies.
"""

from __future__ import annotations

import configparser
import email.parser
import sys
import tarfile
import zipfile
from pathlib import Path

from setuptools import find_packages
from setuptools.config.setupcfg import read_configuration

ROOT = Path(__file__).resolve().parents[2]
CONSOLE_STATIC = Path("api_server") / "console" / "static"


def project_version(root: Path = ROOT) -> str:
    """The version setuptools builds: setup.cfg's ``version``, ``attr:``/``file:`` resolved."""
    return str(read_configuration(root / "setup.cfg")["metadata"]["version"])


def expected_files(root: Path = ROOT) -> set[str]:
    """What the wheel must hold: each shipped package's ``__init__.py`` and the console's static files."""
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    include = cfg["options.packages.find"]["include"].split()
    packages = find_packages(where=str(root), include=include)
    files = {f"{package.replace('.', '/')}/__init__.py" for package in packages}
    files |= {str(p.relative_to(root)) for p in (root / CONSOLE_STATIC).iterdir() if p.is_file()}
    return files


def console_scripts(root: Path = ROOT) -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    return {line.split("=")[0].strip() for line in cfg["options.entry_points"]["console_scripts"].splitlines() if line}


def dist_problems(dist: Path, root: Path = ROOT) -> list[str]:
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        return [f"{dist}: expected one wheel and one sdist, found {[p.name for p in (*wheels, *sdists)]}"]
    problems = []
    version = project_version(root)
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
        info = next((n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA")), None)
        if info is None:
            return [f"{wheels[0].name}: no METADATA"]
        metadata = email.parser.Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
        entry_points = wheel.read(f"{info}/entry_points.txt").decode() if f"{info}/entry_points.txt" in names else ""
    if metadata["Name"] != "dynconfig" or metadata["Version"] != version:
        problems.append(f"wheel metadata says {metadata['Name']} {metadata['Version']}, the project is {version}")
    problems += [f"wheel lacks {name}" for name in sorted(expected_files(root) - names)]
    if not any(n.startswith(f"{info}/") and n.rsplit("/", 1)[-1] == "LICENSE" for n in names):
        problems.append("wheel lacks the LICENSE")
    scripts = {line.split("=")[0].strip() for line in entry_points.splitlines() if "=" in line}
    if scripts != console_scripts(root):
        problems.append(f"wheel console scripts {sorted(scripts)}, setup.cfg's {sorted(console_scripts(root))}")
    with tarfile.open(sdists[0]) as sdist:
        members = {m.name.split("/", 1)[-1]: m for m in sdist.getmembers()}
        pkg_info = sdist.extractfile(members["PKG-INFO"]) if "PKG-INFO" in members else None
        sdist_version = email.parser.Parser().parsestr(pkg_info.read().decode())["Version"] if pkg_info else None
    if sdist_version != version:
        problems.append(f"sdist PKG-INFO says version {sdist_version}, the project is {version}")
    problems += [f"sdist lacks {name}" for name in ("LICENSE", "setup.cfg", "pyproject.toml") if name not in members]
    if not wheels[0].name.startswith(f"dynconfig-{version}-") or sdists[0].name != f"dynconfig-{version}.tar.gz":
        problems.append(f"file names {wheels[0].name}, {sdists[0].name} do not carry version {version}")
    return problems


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/ops/release_check.py DIST")
    problems = dist_problems(Path(sys.argv[1]))
    for problem in problems:
        print(f"release: {problem}", file=sys.stderr)
    if problems:
        raise SystemExit(1)
    print(f"release: {', '.join(sorted(p.name for p in Path(sys.argv[1]).iterdir()))}: ok")


if __name__ == "__main__":
    main()
