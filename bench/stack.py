"""What every benchmark runs DynConfig on: a private folder with its own Postgres and Redis (started
from the installed binaries, Postgres migrated as ``dynconfig-migrate`` leaves it: processes never
migrate), dev keys, and the environment DynConfig's processes get. One home for it, so a benchmark
never measures a stack set up differently from the others."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.devkeys import DevKeys, ensure_dev_keys
from devtools.services import PostgresServer, RedisServer, wait_healthy
from dynconfig_admin.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Stores:
    """A benchmark's private folder, its Postgres (migrated) and Redis, and its dev keys."""

    base: Path
    pg: PostgresServer
    redis: RedisServer
    keys: DevKeys = field(repr=False)

    def env(self, *, log_level: str = "WARNING", **extra: str) -> dict[str, str]:
        """The environment of a DynConfig process on these stores (loopback only, no rate limit to
        speak of), plus ``extra``."""
        return {
            **os.environ,
            "POSTGRES_URL": self.pg.url,
            "REDIS_URL": self.redis.url,
            "JWKS_URL": self.keys.jwks_url,
            "ENCRYPTION_KEYS": self.keys.encryption_keys,
            "RATE_LIMIT": "100000000",
            "HOST": "127.0.0.1",
            "LOG_LEVEL": log_level,
            **extra,
        }


def private_folder() -> Path:
    """A new temporary folder the postgres user may use (initdb refuses root)."""
    base = Path(tempfile.mkdtemp(prefix="dynconfig-bench-"))
    os.chmod(base, 0o755)
    if os.geteuid() == 0:
        import pwd

        entry = pwd.getpwnam("postgres")
        os.chown(base, entry.pw_uid, entry.pw_gid)
    return base


def start_stores(base: Path, stack: ExitStack, *, durable: bool = False) -> Stores:
    """Start Postgres (``durable``: fsync on, as in production) and Redis in ``base``, stopped when
    ``stack`` closes; migrate the database; make the dev keys."""
    pg = PostgresServer(base / "postgres", durable=durable)
    redis = RedisServer(base / "redis")
    pg.start()
    stack.callback(pg.stop)
    redis.start()
    stack.callback(redis.stop)
    migrate(pg.url)
    return Stores(base, pg, redis, ensure_dev_keys(base / "keys"))


@contextmanager
def stores(*, durable: bool = False) -> Iterator[Stores]:
    """:func:`start_stores` in a :func:`private_folder`, all removed afterwards."""
    base = private_folder()
    try:
        with ExitStack() as stack:
            yield start_stores(base, stack, durable=durable)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it has not drained within 15 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_process(
    stack: ExitStack, module: str, env: Mapping[str, str], port: int, *, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """``python -m module`` from the repository with ``env``, healthy on ``port``, stopped (:func:`stop`)
    when ``stack`` closes; its stderr to ``log`` when given."""
    stderr = None
    if log is not None:
        stderr = stack.enter_context(open(log, "ab"))
    proc = subprocess.Popen([sys.executable, "-m", module], env=dict(env), cwd=ROOT, stderr=stderr)
    stack.callback(stop, proc)
    wait_healthy(f"http://127.0.0.1:{port}", proc)
    return proc
