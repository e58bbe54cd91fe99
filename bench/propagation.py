"""Propagation latency: commit → WebSocket receive, for one update at a time.

    python -m bench.propagation [--watchers 100] [--updates 300] [--interval 0.02]

Starts its own Postgres and Redis (devtools.services) and real ``api_server`` and ``notifier``
processes on free loopback ports, connects N watchers to one key, then PATCHes that key U times,
one at a time, ``--interval`` apart. For every (update, watcher) it records

- ``commit→recv``: receive time minus the event's ``lastModified`` (stamped in the write transaction,
  just before commit; same machine, same clock, millisecond resolution), and
- ``send→recv``: receive time minus the moment the client sent the PATCH,

and prints p50/p90/p99/max of each. Everything it starts is stopped by pid when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from contextlib import ExitStack
from datetime import datetime

import aiohttp

from devtools.devkeys import mint_token
from devtools.services import free_port

from .stack import start_process, stores


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "n": len(ordered),
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p99": pick(0.99),
        "max": ordered[-1] * 1000,
        "mean": statistics.fmean(ordered) * 1000,
    }


async def _run(api: str, watch_url: str, token: str, watchers: int, updates: int, interval: float) -> dict[str, object]:
    key = f"bench.latency.k{os.getpid()}"
    auth = {"Authorization": f"Bearer {token}"}
    commit_to_recv: list[float] = []
    send_to_recv: list[float] = []
    sent_at: dict[int, float] = {}
    received = 0
    done = asyncio.Event()
    # No connector limit: every watcher holds its connection for the whole run.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async with session.put(f"{api}/keys/{key}", json={"value": 0}, headers=auth) as resp:
            assert resp.status in (200, 201), await resp.text()

        async def open_watcher() -> aiohttp.ClientWebSocketResponse:
            ws = await session.ws_connect(watch_url, headers=auth, heartbeat=None)
            await ws.send_json({"subscribe": [key]})
            assert (await ws.receive_json())["event"] == "subscribed"
            return ws

        sockets: list[aiohttp.ClientWebSocketResponse] = []
        started = time.monotonic()
        while len(sockets) < watchers:
            batch = min(200, watchers - len(sockets))
            sockets += await asyncio.gather(*(open_watcher() for _ in range(batch)))
        connect_seconds = time.monotonic() - started

        async def reader(ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal received
            async for msg in ws:
                now = time.time()
                event = json.loads(msg.data)
                if event.get("event") != "update" or event["value"] == 0:
                    continue
                modified = datetime.fromisoformat(event["lastModified"].replace("Z", "+00:00")).timestamp()
                commit_to_recv.append(now - modified)
                send_to_recv.append(now - sent_at[event["value"]])
                received += 1
                if received == watchers * updates:
                    done.set()

        readers = [asyncio.create_task(reader(ws)) for ws in sockets]
        for i in range(1, updates + 1):
            sent_at[i] = time.time()
            async with session.patch(f"{api}/keys/{key}", json={"value": i}, headers=auth) as resp:
                assert resp.status == 200, await resp.text()
            await asyncio.sleep(interval)
        try:
            await asyncio.wait_for(done.wait(), timeout=30)
        except TimeoutError:
            print(f"warning: only {received} of {watchers * updates} deliveries arrived", file=sys.stderr)
        for ws in sockets:
            await ws.close()
        for task in readers:
            task.cancel()
    return {
        "watchers": watchers,
        "updates": updates,
        "delivered": received,
        "connect_seconds": round(connect_seconds, 1),
        "commit_to_recv_ms": _percentiles(commit_to_recv),
        "send_to_recv_ms": _percentiles(send_to_recv),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between updates")
    args = parser.parse_args()
    with stores() as local, ExitStack() as running:
        keys = local.keys
        ports = {"api_server": free_port(), "notifier": free_port()}
        env = local.env(API_PORT=str(ports["api_server"]), NOTIFIER_PORT=str(ports["notifier"]))
        for module, port in ports.items():
            start_process(running, module, env, port)
        token = mint_token(keys.signing_key_path, keys.kid, "admin-user", ttl_seconds=3600)
        result = asyncio.run(
            _run(
                f"http://127.0.0.1:{ports['api_server']}",
                f"http://127.0.0.1:{ports['notifier']}/watch",
                token,
                args.watchers,
                args.updates,
                args.interval,
            )
        )
        print(json.dumps(result, indent=2))
        for name in ("commit_to_recv_ms", "send_to_recv_ms"):
            row = result[name]
            assert isinstance(row, dict)
            print(
                f"{name:18} n={row['n']:6d}  p50={row['p50']:7.1f}  p90={row['p90']:7.1f}  "
                f"p99={row['p99']:7.1f}  max={row['max']:7.1f}"
            )


if __name__ == "__main__":
    main()
