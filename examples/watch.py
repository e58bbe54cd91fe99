"""The example consumer of the seed's "Testing" section: subscribe, print every update.

    ./dev/up                                   # in another terminal
    .venv/bin/python examples/watch.py 'app.*' # prints events as they happen
    curl -X PATCH http://localhost:8080/keys/app.feature-toggle.enabled \\
         -H "Authorization: Bearer $(./dev/token --username admin-user)" -d '{"value": "false"}'

It keeps a dict of current values, reconnects with exponential backoff and resumes with
``since_version`` from the last revision it applied, so it never misses or double-applies a change.
The token comes from $DYNCONFIG_TOKEN or, for the local run, from ./dev/token. It needs aiohttp, which
lives in the repository's .venv (made by ./dev/up): started by a ``python`` without it, it runs itself
again with ``.venv/bin/python``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

VENV_PYTHON = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"

try:
    import aiohttp
except ModuleNotFoundError:
    if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != VENV_PYTHON.parent.parent.resolve():
        os.execv(VENV_PYTHON, [str(VENV_PYTHON), __file__, *sys.argv[1:]])
    sys.exit(
        "examples/watch.py needs aiohttp: run ./dev/up once (it makes .venv), then .venv/bin/python examples/watch.py"
    )


def dev_token() -> str:
    token = os.environ.get("DYNCONFIG_TOKEN")
    if token:
        return token
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(
        [sys.executable, "-m", "devtools.token", "--username", "admin-user"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


async def watch(url: str, patterns: list[str]) -> None:
    config: dict[str, Any] = {}
    revision: int | None = None
    delay = 0.5
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.ws_connect(url, heartbeat=30) as ws:
                    subscribe: dict[str, Any] = {"subscribe": patterns, "token": dev_token()}
                    if revision is None:
                        subscribe["snapshot"] = True
                    else:
                        subscribe["since_version"] = revision
                    await ws.send_json(subscribe)
                    delay = 0.5
                    async for msg in ws:
                        event = json.loads(msg.data)
                        kind = event.get("event")
                        if kind in ("update", "delete", "expired"):
                            if kind == "update":
                                config[event["key"]] = event["value"]
                            else:
                                config.pop(event["key"], None)
                            revision = event["revision"]
                        elif kind == "reset":
                            config.clear()
                        print(json.dumps(event), flush=True)
                    print(f"# closed ({ws.close_code}); reconnecting", file=sys.stderr)
            except aiohttp.ClientError as exc:
                print(f"# {exc.__class__.__name__}: {exc}; retrying in {delay:.1f}s", file=sys.stderr)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 30.0)


def main() -> None:
    if any(arg.startswith("-") for arg in sys.argv[1:]):
        sys.exit("usage: .venv/bin/python examples/watch.py [PATTERN ...]   (e.g. 'app.*'; default '*')")
    patterns = sys.argv[1:] or ["*"]
    url = os.environ.get("DYNCONFIG_WATCH_URL", "ws://localhost:8080/watch")
    try:
        asyncio.run(watch(url, patterns))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
