"""``./dev/up``: run the whole system locally until Ctrl-C.

Starts Postgres and Redis (unless ``POSTGRES_URL`` / ``REDIS_URL`` or ``REDIS_HOST`` point elsewhere),
creates dev keys, runs ``dynconfig-migrate``, then every process in :data:`PROCESSES`, each with the
same environment. Ctrl-C or SIGTERM stops the processes (SIGTERM, then SIGKILL after 10 s) and the
servers it started, by pid.
If any of them dies, everything is stopped and the exit status is non-zero.

One run per dev directory: a run holds :class:`RunLock` (``.dev/up.lock``) while it lives, so a second
``./dev/up`` says which one runs instead of failing on a port.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from devtools.devkeys import DevKeys, ensure_dev_keys
from devtools.services import PostgresServer, RedisServer, ServerError, die_with_parent, port_in_use
from devtools.token import default_dev_dir
from shared.version import version_line

logger = logging.getLogger(__name__)

#: (module run with ``python -m``, its port variable, default port). Adding a process is one line.
PROCESSES: list[tuple[str, str, int]] = [
    ("api_server", "API_PORT", 8090),
    ("notifier", "NOTIFIER_PORT", 8081),
    ("expiry_worker", "EXPIRY_PORT", 8082),
    ("devtools.frontdoor", "FRONTDOOR_PORT", 8080),  # one origin: /watch → notifier, the rest → API
]
#: The port variable of the process users talk to.
PUBLIC_PORT_VAR = "FRONTDOOR_PORT"
#: The servers a run starts itself unless pointed at others (POSTGRES_URL; REDIS_URL or REDIS_HOST):
#: (name, port variable, default port), as in PROCESSES. The README's "The local run" lists them all.
DEV_POSTGRES = ("postgres", "DEV_PG_PORT", 54329)
DEV_REDIS = ("redis", "DEV_REDIS_PORT", 63799)
DEV_SERVERS = (DEV_POSTGRES, DEV_REDIS)

HEALTH_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class _Stop(Exception):
    """Raised by the signal handler to leave the wait loops."""


class AlreadyRunning(Exception):
    """Another ``./dev/up`` holds the dev directory; the message says which and how to stop it."""

    def __init__(self, dev_dir: Path, pid: int | None, started: str | None) -> None:
        self.pid = pid
        parts = [f"pid {pid}" if pid else None, f"started {started}" if started else None, f"data in {dev_dir}"]
        about = ", ".join(filter(None, parts))
        how = f"Ctrl-C in its terminal or `kill {pid}`" if pid else "Ctrl-C in its terminal"
        super().__init__(f"another ./dev/up is running ({about}); stop it with {how}")


class RunLock:
    """``<dev_dir>/up.lock``: an exclusive ``flock`` held for as long as a run lives, with its pid and start
    time inside for the message a second run prints. The kernel drops the lock when the process dies,
    however it dies, so a crashed run never leaves a stale lock behind; the file itself stays."""

    def __init__(self, dev_dir: Path) -> None:
        self.dev_dir = dev_dir
        self.path = dev_dir / "up.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`AlreadyRunning` naming the run that has it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise AlreadyRunning(self.dev_dir, *holder) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "started": started}).encode())
        self._fd = fd

    def release(self) -> None:
        """Clear the file and drop the lock (harmless when not held)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.ftruncate(fd, 0)
            os.close(fd)

    @staticmethod
    def _holder(fd: int) -> tuple[int | None, str | None]:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            info = json.loads(os.pread(fd, 4096, 0))
            pid, started = info.get("pid"), info.get("started")
            return (pid if isinstance(pid, int) else None), (started if isinstance(started, str) else None)
        return None, None  # the holder has not written it yet


@dataclass
class _Child:
    name: str
    port: int
    proc: subprocess.Popen[bytes]


def build_env(
    environ: Mapping[str, str],
    keys: DevKeys,
    postgres_url: str | None,
    redis_url: str | None,
    processes: Sequence[tuple[str, str, int]] = PROCESSES,
) -> dict[str, str]:
    """The environment every child gets: the user's variables, then dev defaults where unset."""
    env = dict(environ)
    if postgres_url:
        env["POSTGRES_URL"] = postgres_url
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.setdefault("JWKS_URL", keys.jwks_url)
    env.setdefault("ENCRYPTION_KEYS", keys.encryption_keys)
    env.setdefault("LOG_LEVEL", "INFO")
    env.setdefault("HOST", "127.0.0.1")  # a dev run listens on loopback only
    env.setdefault("PYTHONUNBUFFERED", "1")
    for _, port_var, default in processes:
        env.setdefault(port_var, str(default))
    return env


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name) or str(default)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ServerError(f"{name} must be a TCP port number, got {raw!r}")
    return int(raw)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _say(message: str) -> None:
    print(f"dev/up: {message}", file=sys.stderr, flush=True)


def _migrate(env: Mapping[str, str]) -> bool:
    """Run ``dynconfig-migrate``, as a deployment does before its processes start (they never migrate)."""
    _say("bringing the database schema up to date (dynconfig-migrate)")
    command = [sys.executable, "-m", "dynconfig_admin.migrate"]
    done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        _say(f"dynconfig-migrate exited with status {done.returncode}; stopping")
    return done.returncode == 0


def _dead(children: Sequence[_Child]) -> _Child | None:
    return next((c for c in children if c.proc.poll() is not None), None)


def _stop_children(children: Sequence[_Child]) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in children:
        try:
            child.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _say(f"{child.name} (pid {child.proc.pid}) did not stop in {STOP_TIMEOUT:.0f}s; killing it")
            child.proc.kill()
            child.proc.wait()


def _banner(env: Mapping[str, str]) -> str:
    base = f"http://localhost:{env[PUBLIC_PORT_VAR]}"
    return "\n".join(
        [
            "",
            f"  DynConfig is up at {base}",
            "  Get a token:   ./dev/token --username admin-user",
            f'  Try it:        curl -H "Authorization: Bearer $(./dev/token --username admin-user)" {base}/keys',
            "  Stop:          Ctrl-C",
            "",
        ]
    )


def run(dev_dir: Path, environ: Mapping[str, str], processes: Sequence[tuple[str, str, int]] = PROCESSES) -> int:
    """Run everything until a signal (exit 0) or until something dies (exit 1)."""
    if not dev_dir.exists():
        dev_dir.mkdir(parents=True, mode=0o755)  # the postgres user must traverse it when we are root
    lock = RunLock(dev_dir)
    try:
        lock.acquire()
    except AlreadyRunning as exc:
        _say(str(exc))
        return 1
    servers: list[PostgresServer | RedisServer] = []
    children: list[_Child] = []
    try:
        pg_url = redis_url = None
        if not environ.get("POSTGRES_URL"):
            pg = PostgresServer(dev_dir / "postgres", _port(environ, *DEV_POSTGRES[1:]))
            servers.append(pg)
            first = not (pg.data_dir / "PG_VERSION").exists()
            _say(
                f"starting Postgres in {pg.data_dir}"
                + (" (first run: creating the database cluster, a few seconds)" if first else "")
            )
            pg.start()
            pg_url = pg.url
        if not environ.get("REDIS_URL") and not environ.get("REDIS_HOST"):
            rd = RedisServer(dev_dir / "redis", _port(environ, *DEV_REDIS[1:]))
            servers.append(rd)
            rd.start()
            redis_url = rd.url
        env = build_env(environ, ensure_dev_keys(dev_dir / "keys"), pg_url, redis_url, processes)
        if not _migrate(env):
            return 1
        _say(f"starting {', '.join(name for name, _, _ in processes)}; waiting for each to answer /health")
        for name, port_var, _ in processes:
            port = _port(env, port_var, 0)
            if port_in_use(port):
                _say(f"port {port} ({port_var}) is already in use; is another dev/up running?")
                return 1
            proc = subprocess.Popen(
                [sys.executable, "-m", name],
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
                preexec_fn=die_with_parent(signal.SIGTERM),  # and they die with us even if we are killed
            )
            children.append(_Child(name, port, proc))
        deadline = time.monotonic() + HEALTH_TIMEOUT
        waiting = list(children)
        while waiting:
            if (dead := _dead(children)) is not None:
                _say(f"{dead.name} exited with status {dead.proc.returncode} during start-up; stopping")
                return 1
            waiting = [c for c in waiting if not _healthy(c.port)]
            if waiting and time.monotonic() > deadline:
                names = ", ".join(f"{c.name} (:{c.port})" for c in waiting)
                _say(f"no healthy /health from {names} within {HEALTH_TIMEOUT:.0f}s; stopping")
                return 1
            if waiting:
                time.sleep(0.2)
        print(_banner(env), file=sys.stderr, flush=True)
        while True:
            if (dead := _dead(children)) is not None:
                _say(f"{dead.name} exited with status {dead.proc.returncode}; stopping everything")
                return 1
            if (down := next((s for s in servers if not s.running), None)) is not None:
                _say(f"{down.name} stopped unexpectedly (log: {down.log_path}); stopping everything")
                return 1
            time.sleep(0.2)
    except _Stop as stop:
        _say(f"{stop}: stopping")
        return 0
    except ServerError as exc:
        _say(str(exc))
        return 1
    finally:
        # A second Ctrl-C must not interrupt the clean-up half way.
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        _stop_children(children)
        for server in reversed(servers):
            server.stop()
        lock.release()
        _say("stopped")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m devtools.up``."""
    parser = argparse.ArgumentParser(prog="dev/up", description="Run the whole system locally until Ctrl-C.")
    parser.add_argument("--version", action="version", version=version_line("dev/up"))
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="dev/up: %(message)s")
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    sys.exit(run(default_dev_dir(), os.environ))


if __name__ == "__main__":
    main()
