"""Throwaway PostgreSQL and Redis servers for tests and ``./dev/up``.

Each server is a foreground child process we own by pid: it is stopped by signalling that pid,
never by name, and it is asked to die with us (``PR_SET_PDEATHSIG``) so a crashed test run leaves
nothing behind. Servers bind 127.0.0.1 only, on a free or given port that survives restarts.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import psycopg2
import redis

logger = logging.getLogger(__name__)

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 30.0


class ServerError(RuntimeError):
    """A dev server could not be started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int) -> bool:
    """True while a process ``pid`` exists (ours or not)."""
    if pid <= 0:
        return False  # 0 and negatives name process groups
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is just not ours
    return True


def die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when we die (None elsewhere)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)

    return preexec


def _postgres_bindir() -> Path:
    found = shutil.which("postgres")
    if found:
        return Path(found).parent
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        candidate = Path(out.stdout.strip())
        if (candidate / "postgres").exists():
            return candidate
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if versions:
        return Path(versions[-1]).parent
    raise ServerError("PostgreSQL server binaries not found (install postgresql or put postgres on PATH)")


class _ChildServer:
    """Shared lifecycle of a foreground server process: start, stop, kill, restart."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self._port = port if port is not None else free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def port(self) -> int:
        """The TCP port, the same across restarts."""
        return self._port

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        return self._proc.pid if self.running and self._proc else None

    @property
    def running(self) -> bool:
        """True while the process we started is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers; a no-op when it already runs."""
        if self.running:
            return
        if port_in_use(self._port):
            raise ServerError(self._port_taken())
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._prepare()
        with open(self.log_path, "ab") as log:
            self._proc = self._spawn(self._command(), log)
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if not self.running:
                code = self._proc.returncode
                self._proc = None
                raise ServerError(f"{self.name} exited with {code} at start-up:\n{self._log_tail()}")
            if self._ready():
                break
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(f"{self.name} did not answer within {_START_TIMEOUT:.0f}s:\n{self._log_tail()}")
            time.sleep(0.05)
        self._after_start()
        logger.info("%s running on 127.0.0.1:%d (pid %d)", self.name, self._port, self._proc.pid)

    def stop(self) -> None:
        """Shut down cleanly and wait; harmless when already stopped."""
        self._signal_and_wait(self.stop_signal, _STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL the server and its children at once (a crash, for recovery tests)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            # The server runs in its own session, so its group holds exactly its own workers.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._proc = None

    def restart(self) -> None:
        """Stop (if running) and start again on the same port and data."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s (pid %d) ignored %s; killing it", self.name, proc.pid, sig.name)
                self.kill()
                return
        self._proc = None

    def _spawn(self, cmd: Sequence[str], log: IO[bytes], **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(self.stop_signal),
            **kwargs,
        )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _port_taken(self) -> str:
        """Why :meth:`start` cannot use the port (subclasses may say who has it)."""
        return f"{self.name}: port 127.0.0.1:{self._port} is already in use"

    def _prepare(self) -> None:
        """Create the data directory (subclasses)."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _after_start(self) -> None:
        """Post-start set-up (subclasses)."""


class PostgresServer(_ChildServer):
    """A private PostgreSQL cluster in ``data_dir``; superuser and database are both ``dynconfig``."""

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back sessions, checkpoint, exit
    user = "dynconfig"
    database = "dynconfig"

    def __init__(self, data_dir: Path, port: int | None = None, *, durable: bool = False) -> None:
        super().__init__(data_dir, port)
        self._bindir = _postgres_bindir()
        #: fsync on, as in production (the benchmark); tests and the dev run trade it for speed.
        self.durable = durable
        # initdb and postgres refuse to run as root: run them as the postgres system user.
        self._run_as = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """``postgresql://dynconfig@127.0.0.1:{port}/dynconfig``."""
        return f"postgresql://{self.user}@127.0.0.1:{self._port}/{self.database}"

    def _port_taken(self) -> str:
        # A postgres still running on our data (its postmaster.pid names a live process on our port) is
        # worth naming: it is ours to stop.
        message = super()._port_taken()
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return message
        if port != self._port or not pid_alive(pid):
            return message
        earlier = f"the postgres of an earlier run (pid {pid}, data in {self.data_dir})"
        return f"{message} by {earlier}; stop it with `kill {pid}`"

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as:
            entry = pwd.getpwnam(self._run_as)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        os.chmod(self.data_dir, 0o700)
        if (self.data_dir / "PG_VERSION").exists():
            return
        cmd = [
            str(self._bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "-U",
            self.user,
            "-E",
            "UTF8",
            "--no-sync",
        ]
        with open(self.log_path, "ab") as log:
            proc = self._spawn(cmd, log, **self._user_kwargs())
            if proc.wait() != 0:
                raise ServerError(f"initdb failed with {proc.returncode}:\n{self._log_tail()}")

    def _command(self) -> list[str]:
        return [
            str(self._bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self._port),
            # TCP on 127.0.0.1 only; no Unix socket, so nothing collides with a system cluster.
            # fsync=off survives a killed server (the OS still has the writes), unlike
            # synchronous_commit=off, which could lose commits a crash test expects to find.
            "-h",
            "127.0.0.1",
            "-k",
            "",
            *(() if self.durable else ("-c", "fsync=off", "-c", "full_page_writes=off")),
            "-c",
            "max_connections=200",
        ]

    def _spawn(self, cmd: Sequence[str], log: IO[bytes], **kwargs: Any) -> subprocess.Popen[bytes]:
        return super()._spawn(cmd, log, **{**self._user_kwargs(), **kwargs})

    def _user_kwargs(self) -> dict[str, Any]:
        if not self._run_as:
            return {}
        return {"user": self._run_as, "group": self._run_as, "extra_groups": [], "env": _child_env(self._run_as)}

    def _connect(self, dbname: str) -> Any:
        return psycopg2.connect(host="127.0.0.1", port=self._port, user=self.user, dbname=dbname, connect_timeout=2)

    def _ready(self) -> bool:
        try:
            self._connect("postgres").close()
        except psycopg2.OperationalError:
            return False
        return True

    def _after_start(self) -> None:
        conn = self._connect("postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            conn.close()


class RedisServer(_ChildServer):
    """A private, non-persistent Redis on 127.0.0.1."""

    name = "redis"
    stop_signal = signal.SIGTERM

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:{port}/0``."""
        return f"redis://127.0.0.1:{self._port}/0"

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        return [
            binary,
            "--port",
            str(self._port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "no",
        ]

    def _ready(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self._port, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


def _child_env(user: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    entry = pwd.getpwnam(user)
    env.update(HOME=entry.pw_dir, USER=user, LOGNAME=user, LC_ALL="C.UTF-8")
    return env


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until ``url``/health answers 200; raise :class:`ServerError` if ``proc`` exits or time runs out."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServerError(f"{url}: process exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ServerError(f"{url} not healthy within {timeout:.0f} s")
        time.sleep(0.1)
