"""``dynconfig``: the command line of DynConfig.

    export DYNCONFIG_URL=http://localhost:8080
    export DYNCONFIG_TOKEN=$(./dev/token --username admin-user)   # a dev token for the local run
    dynconfig put app.feature.enabled true --ttl 3600 --acl-read '*' --acl-write admin-user
    dynconfig get app.feature.enabled            # true
    dynconfig watch 'app.*' --snapshot           # one JSON line per event until Ctrl-C
    dynconfig txn changes.json                   # a POST /txn body from a file (or - for stdin)

Exit status: 0 success, 1 the server refused or could not be reached (the reason on stderr), 2 usage.

The client never imports the dev tooling (``devtools``): minting dev tokens is ``./dev/token``'s job,
so an installation with only ``dynconfig_client`` has a complete command line.

Start-up: ``--help`` and usage errors must answer at once, so this module imports only the standard
library and ``errors`` at the top; the rest of the library and ``asyncio`` are imported by the code
that runs once a request is certain. Requests go through the standard library's HTTP
(:class:`~dynconfig_client.transport.StdlibTransport`): aiohttp takes ~0.2 s to import, and only
``watch`` needs it. A new command is a ``cmd_*`` coroutine plus its lines in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from .errors import DynConfigClientError

if TYPE_CHECKING:
    from datetime import datetime

    from .client import Client
    from .models import Acls, Unset

PROG = "dynconfig"
DEFAULT_URL = "http://localhost:8080"


class UsageError(Exception):
    """A mistake in the command line: one line on stderr, exit 2."""


Command = Callable[[argparse.Namespace, "Client"], Coroutine[Any, Any, None]]


def _print(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def _time(at: datetime | None) -> str | None:
    # The server's own format: RFC 3339, UTC, milliseconds, "Z".
    return None if at is None else at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _value(args: argparse.Namespace) -> Any:
    if args.string:
        return args.value
    try:
        return json.loads(args.value)
    except ValueError:
        raise UsageError(f"VALUE is not JSON: {args.value!r} (add --string to store it as a string)") from None


def _if_match(raw: str | None) -> int | str | None:
    return int(raw) if raw is not None and raw.isdigit() else raw


def _acls(args: argparse.Namespace) -> Acls | Unset:
    from .models import UNSET

    if args.acl_read is None and args.acl_write is None:
        return UNSET
    return {"read": _entries(args.acl_read), "write": _entries(args.acl_write)}


def _entries(raw: str | None) -> list[str]:
    return [entry.strip() for entry in (raw or "").split(",") if entry.strip()]


# --- commands ------------------------------------------------------------------------------------


async def cmd_get(args: argparse.Namespace, client: Client) -> None:
    item = await client.get(args.key)
    if not args.json:
        _print(item.value)
        return
    record = {
        "key": item.key,
        "value": item.value,
        "version": item.version,
        "revision": item.revision,
        "lastModified": _time(item.last_modified),
        "ttl": item.ttl,
        "expiresAt": _time(item.expires_at),
    }
    _print(record)


def _print_write(result: Any) -> None:
    _print(
        {
            "key": result.key,
            "version": result.version,
            "revision": result.revision,
            "lastModified": _time(result.last_modified),
            "expiresAt": _time(result.expires_at),
            "created": result.created,
        }
    )


async def cmd_put(args: argparse.Namespace, client: Client) -> None:
    from .models import UNSET

    ttl = UNSET if args.ttl is None else args.ttl
    result = await client.put(args.key, _value(args), ttl=ttl, acls=_acls(args), if_match=_if_match(args.if_match))
    _print_write(result)


async def cmd_patch(args: argparse.Namespace, client: Client) -> None:
    _print_write(await client.patch(args.key, _value(args), if_match=_if_match(args.if_match)))


async def cmd_rollback(args: argparse.Namespace, client: Client) -> None:
    _print_write(await client.rollback(args.key, args.version, if_match=_if_match(args.if_match)))


async def cmd_rm(args: argparse.Namespace, client: Client) -> None:
    await client.delete(args.key, if_match=_if_match(args.if_match))


async def cmd_ls(args: argparse.Namespace, client: Client) -> None:
    async for key in client.list(args.namespace, page_size=1000):
        print(key, flush=True)


async def cmd_history(args: argparse.Namespace, client: Client) -> None:
    async for v in client.history(args.key):
        _print({"version": v.version, "value": v.value, "event": v.event, "actor": v.actor, "at": _time(v.at)})


def _txn_body(source: str) -> dict[str, Any]:
    """The ``POST /txn`` body in the file ``source`` (``-``: standard input), sent as it is: the server
    judges its content (a typo'd field is its 400, never silently dropped here). A file that cannot be
    read, or holds no JSON object, is a usage error, found before any request."""
    name = "standard input" if source == "-" else source
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as file:
                text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"cannot read {name}: {reason}") from None
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{name} is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise UsageError(f'{name} must hold a JSON object, {{"compare": [...], "ops": [...]}}')
    return body


async def cmd_txn(args: argparse.Namespace, client: Client) -> None:
    result = await client.commit_txn(args.body)
    _print({"revision": result.revision, "results": [{"key": k, "version": v} for k, v in result.results]})


async def cmd_watch(args: argparse.Namespace, client: Client) -> None:
    import asyncio
    import signal

    from .client import watch_url
    from .stream import EventStream

    # Which setting chose the URL, for the message when the server there has no /watch.
    if args.watch_url:
        url, setting = args.watch_url, "--watch-url"
    elif os.environ.get("DYNCONFIG_WATCH_URL"):
        url, setting = os.environ["DYNCONFIG_WATCH_URL"], "DYNCONFIG_WATCH_URL"
    else:
        url, setting = watch_url(client.base_url), "DYNCONFIG_URL (or --url)"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def follow(stream: EventStream) -> None:
        async for event in stream:
            _print(event)

    async with EventStream(
        url, args.token, args.patterns, since_version=args.since, snapshot=args.snapshot, url_setting=setting
    ) as stream:
        printer = asyncio.ensure_future(follow(stream))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait({printer, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (printer, stopper):
                task.cancel()
            await asyncio.gather(printer, stopper, return_exceptions=True)
        if printer in done:
            printer.result()  # the stream gave up: raise its error


# --- the parser ----------------------------------------------------------------------------------


def _version() -> str:
    """The installed distribution's version (setup.cfg takes it from shared/version.py, which the
    client, installable on its own, does not import)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dynconfig")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (global options are accepted before or after the command)."""

    def connection_options(parser: argparse.ArgumentParser, top: bool) -> None:
        # On subcommands the defaults are suppressed so they do not override values given before the command.
        url_default = (os.environ.get("DYNCONFIG_URL") or DEFAULT_URL) if top else argparse.SUPPRESS
        token_default = os.environ.get("DYNCONFIG_TOKEN") if top else argparse.SUPPRESS
        parser.add_argument("--url", default=url_default, help=f"server URL (env DYNCONFIG_URL, default {DEFAULT_URL})")
        parser.add_argument("--token", default=token_default, help="bearer token (env DYNCONFIG_TOKEN)")

    parser = argparse.ArgumentParser(prog=PROG, description="Read, write and watch DynConfig keys.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    connection_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Command, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        connection_options(sub, top=False)
        sub.set_defaults(handler=handler)
        return sub

    def value_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("key", metavar="KEY")
        sub.add_argument("value", metavar="VALUE", help="a JSON value (true, 42, '\"text\"', '{\"a\": 1}')")
        sub.add_argument("--string", action="store_true", help="store VALUE as a string, literally")
        sub.add_argument("--if-match", metavar="V", help="only if the key is at version V (or ETag V)")

    get = command("get", cmd_get, "print a key's value as JSON")
    get.add_argument("key", metavar="KEY")
    get.add_argument("--json", action="store_true", help="print the whole record (value, version, ttl, ...)")

    put = command("put", cmd_put, "create or replace a key")
    value_options(put)
    put.add_argument("--ttl", type=int, metavar="N", help="expire N seconds after this write")
    put.add_argument("--acl-read", metavar="A,B", help="who may read (usernames, '*', 'prefix*')")
    put.add_argument("--acl-write", metavar="A,B", help="who may write")

    value_options(command("patch", cmd_patch, "change the value of an existing key"))

    rollback = command("rollback", cmd_rollback, "write the value of an earlier version again, as a new version")
    rollback.add_argument("key", metavar="KEY")
    rollback.add_argument("version", metavar="N", type=int, help="the version whose value to restore (see history)")
    rollback.add_argument("--if-match", metavar="V", help="only if the key is at version V (or ETag V)")

    rm = command("rm", cmd_rm, "delete a key")
    rm.add_argument("key", metavar="KEY")
    rm.add_argument("--if-match", metavar="V", help="only if the key is at version V (or ETag V)")

    ls = command("ls", cmd_ls, "list the keys you may read, one per line")
    ls.add_argument("namespace", metavar="NAMESPACE", nargs="?")

    watch = command("watch", cmd_watch, "print change events as JSON lines until interrupted")
    watch.add_argument("patterns", metavar="PATTERN", nargs="+", help="a key, or a prefix ending in '*'")
    watch.add_argument("--since", type=int, metavar="R", help="replay every change after revision R first")
    watch.add_argument("--snapshot", action="store_true", help="start with the current value of every match")
    watch.add_argument("--watch-url", help="WebSocket URL (env DYNCONFIG_WATCH_URL, default: --url as ws + /watch)")

    history = command("history", cmd_history, "print every version of a key, newest first, as JSON lines")
    history.add_argument("key", metavar="KEY")

    txn = command("txn", cmd_txn, "write several keys at once, all or nothing (a POST /txn body from FILE)")
    txn.add_argument(
        "file",
        metavar="FILE",
        help='a JSON file {"compare": [...], "ops": [...]}, or - to read it from standard input',
    )

    return parser


async def _run(args: argparse.Namespace) -> None:
    from .client import Client
    from .transport import DEFAULT_TIMEOUT_SECONDS, StdlibTransport

    # A command makes a request or a few, one at a time: the standard library's HTTP costs nothing to
    # import, where aiohttp costs ~0.2 s (the watch command imports it for its WebSocket).
    async with Client(args.url, args.token, transport=StdlibTransport(DEFAULT_TIMEOUT_SECONDS)) as client:
        await args.handler(args, client)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # The library's warnings (a watch reconnecting, say) as "dynconfig: ..." lines on stderr.
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s", stream=sys.stderr)
    try:
        if not args.token:
            raise UsageError("no token: pass --token or set DYNCONFIG_TOKEN (for the local run: ./dev/token)")
        if args.command in ("put", "patch"):
            _value(args)  # a bad VALUE is a usage error, found before any request
        if args.command == "txn":
            args.body = _txn_body(args.file)  # likewise a bad FILE
        import asyncio

        asyncio.run(_run(args))
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except DynConfigClientError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`dynconfig ls | head`): not an error; keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
