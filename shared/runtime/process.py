"""Running a DynConfig process: its ``main()`` and the HTTP server it listens with (its logs:
:mod:`shared.runtime.logs`).

The caller is not trusted: requests that aiohttp's parser rejects before any middleware runs (a
header over 8,190 bytes, a broken request line) get the JSON error shape of SPEC §4 from
:class:`_JsonErrorProtocol`, never aiohttp's plain-text answer, which quotes the offending line (the
start of a token).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import logging.handlers
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from collections.abc import Set as AbstractSet
from http import HTTPStatus
from typing import Any, NoReturn

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from shared.db import StartupError
from shared.runtime.logs import AccessLogger, flush_logs, setup_logging
from shared.runtime.supervisor import cancel_and_wait
from shared.runtime.web import SERVER_HEADER
from shared.settings import Settings, SettingsError, exit_on_bad_settings
from shared.version import version_line

log = logging.getLogger(__name__)

#: SIGTERM to exit, never longer (SPEC §1: 10 s; the Kubernetes grace periods in deploy/ allow for it).
SHUTDOWN_TIMEOUT_SECONDS = 9.0
#: Of that, how long the requests in flight get to answer before they are cancelled.
REQUEST_DRAIN_SECONDS = 5.0
#: After the listener closes, how long requests that already arrived get to be read (step 2 of _drain).
_READ_PENDING_SECONDS = 0.1


# --- the HTTP server ------------------------------------------------------------------------------


class _JsonErrorProtocol(RequestHandler):
    """aiohttp's connection handler, but the requests its parser refuses get the JSON error shape
    and are logged by class only (the parser's message quotes the request, e.g. a token)."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        log.warning(
            "refused a malformed HTTP request from %s: %d %s",
            request.remote,
            status,
            exc.__class__.__name__ if exc else "-",
        )
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        if isinstance(exc, LineTooLong):
            text = "The request line or a header is longer than the server accepts (8190 bytes)"
        elif status >= 500:
            text = "Unexpected server error"
        else:
            text = "Malformed HTTP request"
        body = json.dumps({"error": HTTPStatus(status).phrase, "message": text}, separators=(",", ":"))
        response = web.Response(
            status=status, text=body, content_type="application/json", headers={"Server": SERVER_HEADER}
        )
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # aiohttp logs a refused request's exception, whose text quotes the request: log the class.
        exc = kw.get("exc_info")
        name = exc.__class__.__name__ if isinstance(exc, BaseException) else "error"
        log.warning("%s (%s)", args[0] if args else "HTTP connection error", name)


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorProtocol(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # same state, our connection handler
        return server


def run(
    app: web.Application,
    *,
    process: str,
    host: str,
    port: int,
    ssl_context: Any = None,
    access_log: bool = True,
    reuse_port: bool = False,
) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, then drain (:func:`_drain`) and exit 0; a failed start-up is
    one line and exit 1."""
    try:
        asyncio.run(_serve(app, process, host, port, ssl_context, access_log, reuse_port))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        pass
    except StartupError as exc:
        flush_logs()
        print(f"{process}: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as exc:
        flush_logs()
        print(f"{process}: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(1) from None


async def _serve(
    app: web.Application, process: str, host: str, port: int, ssl_context: Any, access_log: bool, reuse_port: bool
) -> None:
    # SIGTERM only sets an event: the drain below runs in this task, while every request handler and
    # background task still runs. (aiohttp's own handle_signals raises GracefulExit out of the loop,
    # and asyncio.run then cancels every task at once: in-flight requests lost their answers and
    # watch sockets ended with 1006 before the runner's clean-up could close them.)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    runner = _Runner(
        app,
        handle_signals=False,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
        shutdown_timeout=REQUEST_DRAIN_SECONDS,
    )
    starting = asyncio.create_task(_start(runner, host, port, ssl_context, reuse_port))
    signalled = asyncio.create_task(stopping.wait())
    drained = False
    try:
        await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # stopped while starting (e.g. still waiting for Postgres)
            log.info("%s: stopped while starting", process)
            await cancel_and_wait(starting)
            return
        starting.result()  # a failed start-up raises here; the clean-up below closes what it opened
        await signalled
        log.info("%s: stopping: draining in-flight requests", process)
        drained = True  # whatever happens in the drain, it is not started twice
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_SECONDS):
                await _drain(runner)
        except TimeoutError:
            log.error("%s: the drain took over %.0f s; exiting with work cut short", process, SHUTDOWN_TIMEOUT_SECONDS)
    finally:
        signalled.cancel()
        if not drained:
            await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _start(runner: web.AppRunner, host: str, port: int, ssl_context: Any, reuse_port: bool) -> None:
    await runner.setup()  # the app's cleanup contexts up to their ``yield``: pools, loops, migrations check
    await web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port or None).start()


async def _drain(runner: web.AppRunner) -> None:
    """Stop as aiohttp's ``AppRunner.cleanup`` does, with one step first, while everything still runs:

    1. close the listening sockets (a connection not yet accepted is refused: its client retries);
    2. wait a moment, so that requests already received on open connections are read and handled
       rather than cut off with their connection;
    3. ``runner.cleanup()``: close idle keep-alive connections; run ``on_shutdown`` (watch sockets get
       1001, so their handlers end); wait up to ``REQUEST_DRAIN_SECONDS`` for every handler in flight
       to answer, then cancel the rest; then the cleanup contexts in reverse order (the committer
       finishes the batch it is writing and refuses what is still queued, the audit buffer is
       flushed, pools close).
    """
    for site in list(runner.sites):
        await site.stop()
    await asyncio.sleep(_READ_PENDING_SECONDS)
    await runner.cleanup()


def process_arguments(program: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """A process takes no arguments but ``--version`` and ``--help``: it is configured by its
    environment alone (SPEC §1)."""
    parser = argparse.ArgumentParser(prog=program, description="Configured by environment variables (README).")
    parser.add_argument("--version", action="version", version=version_line(program))
    return parser.parse_args(argv)


def main_for(
    process: str, create_app: Callable[[Settings], web.Application], port_of: Callable[[Settings], int]
) -> None:
    """The ``main()`` of a process: read the environment (one line and exit 2 if bad), then serve."""
    process_arguments(process)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        exit_on_bad_settings(process, exc)
    setup_logging(settings.log_level)
    run(
        create_app(settings),
        process=process,
        host=settings.host,
        port=port_of(settings),
        ssl_context=settings.ssl_context(),
        reuse_port=settings.reuse_port,
    )


def run_command(
    name: str,
    command: Callable[[Settings], Coroutine[Any, Any, int]],
    *,
    unreachable_status: int,
    uses: AbstractSet[str],
) -> NoReturn:
    """The ``main()`` of a one-off command (``dynconfig-reencrypt``, ``dynconfig-audit``): read the
    environment, only the settings it ``uses`` of ``OPTIONAL_PARTS`` (one line and exit 2 if bad),
    then exit with what ``command`` returns. A Postgres that cannot be reached, or a schema this
    release does not work with, is one line and ``unreachable_status``; Ctrl-C and a closed stdout
    (``| head``) end it quietly with 0."""
    try:
        settings = Settings.from_env(uses=uses)
    except SettingsError as exc:
        exit_on_bad_settings(name, exc)
    setup_logging(settings.log_level)
    try:
        sys.exit(asyncio.run(command(settings)))
    except StartupError as exc:
        flush_logs()
        print(f"{name}: {exc}", file=sys.stderr)
        sys.exit(unreachable_status)
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(0)
