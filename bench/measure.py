"""What the benchmarks measure with: the CPU of process trees and py-spy profiles over a scenario
(:class:`Meter`), memory, and the Node.js generators of ``gen/`` (started, read, installed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

GEN = Path(__file__).resolve().parent / "gen"
TICKS = os.sysconf("SC_CLK_TCK")
PYTHON_PROCESSES = ("api_server", "notifier")
PY_SPY = shutil.which("py-spy", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


# --- processes and their CPU ----------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of ``pid`` and every process below it, in seconds."""
    tree, total, todo = _children(), 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
        except (OSError, IndexError, ValueError):
            continue
        todo.extend(tree.get(current, []))
    return total


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Meter:
    """CPU use of named process trees (and of the generators) over one scenario, as % of one core;
    with ``profile_dir``, also a py-spy profile of every Python server process over each DynConfig scenario
    (collapsed stacks, ``<scenario>.<process>.txt``)."""

    def __init__(self, pids: dict[str, list[int]], profile_dir: Path | None = None) -> None:
        self.pids = pids
        self.profile_dir = profile_dir

    @contextmanager
    def measure(self, result: dict[str, Any], profile_as: str | None = None) -> Iterator[None]:
        before = {name: sum(map(cpu_seconds, pids)) for name, pids in self.pids.items()}
        generators = _own_children_cpu()
        started = time.monotonic()
        with self._profiled(profile_as):
            yield
        wall = time.monotonic() - started
        cpu = {
            name: round(100 * (sum(map(cpu_seconds, pids)) - before[name]) / wall) for name, pids in self.pids.items()
        }
        cpu["generator"] = round(100 * (_own_children_cpu() - generators) / wall)
        result["cpu_percent"] = cpu

    @contextmanager
    def _profiled(self, scenario: str | None) -> Iterator[None]:
        if self.profile_dir is None or scenario is None:
            yield
            return
        if PY_SPY is None:
            raise SystemExit("bench: --profile needs py-spy (pip install py-spy)")
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        spies = [
            subprocess.Popen(
                [
                    PY_SPY,
                    "record",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--rate",
                    "100",
                    "--pid",
                    str(pid),
                    "--output",
                    str(self.profile_dir / f"{scenario}.{name}{f'.{i}' if i else ''}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pids in self.pids.items()
            if name in PYTHON_PROCESSES
            for i, pid in enumerate(pids)
        ]
        try:
            yield
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            for spy in spies:
                spy.wait(60)


def _own_children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


def node(script: str, config: dict[str, Any]) -> subprocess.Popen[str]:
    """A generator; its configuration (with a token) goes in the environment, not on the command line."""
    env = {**os.environ, "BENCH_CONFIG": json.dumps(config)}
    return subprocess.Popen(["node", str(GEN / script)], stdout=subprocess.PIPE, text=True, cwd=GEN, env=env)


def node_result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"generator failed ({proc.returncode}): {out[-500:]}")
    return json.loads(out.strip().splitlines()[-1])


def ensure_generators() -> None:
    if not (GEN / "node_modules" / "ws").exists():
        print("bench: installing the Node.js generators (npm ci)", file=sys.stderr)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=GEN, check=True)
