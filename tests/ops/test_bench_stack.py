"""bench/stack.py: what every benchmark runs DynConfig on must come up as a deployment would (migrated
first: processes never migrate). The benchmarks themselves run on demand, never in the suite; this
keeps their common ground from rotting between runs (it had: every benchmark stopped at a process
refusing an unmigrated database once dynconfig-migrate became the one migration step)."""

from __future__ import annotations

import json
import urllib.request
from contextlib import ExitStack

from bench.stack import start_process, stores
from devtools.services import free_port
from shared.migrations import MIGRATIONS


def test_the_bench_stack_serves_a_healthy_api_server() -> None:
    with stores() as local, ExitStack() as running:
        port = free_port()
        start_process(running, "api_server", local.env(API_PORT=str(port)), port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
            health = json.loads(answer.read())
    assert health["status"] == "healthy", health
    assert health["checks"]["schema"] == max(m.version for m in MIGRATIONS)
