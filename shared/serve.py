"""Running a DynConfig process: its ``main()``, its logs, and the HTTP server it listens with.

Two things here exist because the caller is not trusted:
- every log line goes through :class:`SafeFormatter`, which escapes control characters, so a request
  path such as ``/x%0A2026-12-02 ERROR …`` cannot forge a line of its own;
- requests that aiohttp's parser rejects before any middleware runs (a header over 8,190 bytes, a
  broken request line) get the JSON error shape of SPEC §4 from :class:`_JsonErrorProtocol`, never
  aiohttp's plain-text answer, which quotes the offending line (the start of a token).
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import json
import logging
import logging.handlers
import queue
import sys
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any, NoReturn

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .db import StartupError
from .settings import Settings, SettingsError, exit_on_bad_settings
from .text import escape_control, escape_control_keep_newlines
from .web import REQUEST_ID

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_SECONDS = 8.0


# --- logs -----------------------------------------------------------------------------------------


class SafeFormatter(logging.Formatter):
    """One record, one line: control characters in the message are escaped; a traceback keeps its
    own line breaks but every line of it is indented, so none can pass for a record of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_control(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _indent(escape_control_keep_newlines(super().formatException(ei)))

    def formatStack(self, stack_info: str) -> str:
        return _indent(escape_control_keep_newlines(super().formatStack(stack_info)))


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


class _OffLoopHandler(logging.handlers.QueueHandler):
    """Hands records to a thread that formats and writes them: the event loop pays for the message's
    ``%`` only, never for the time stamp, the escaping or a write to a slow stderr pipe."""

    def __init__(self, formatter: SafeFormatter) -> None:
        super().__init__(queue.SimpleQueue())
        self._formatter = formatter

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.msg, record.args = record.getMessage(), None  # bind the arguments as they are now
        if record.exc_info:  # a traceback must be read before its frames move on
            record.exc_text = self._formatter.formatException(record.exc_info)
            record.exc_info = None
        return record


_listener: logging.handlers.QueueListener | None = None


def setup_logging(level: str, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    """Plain one-line logs on stderr, control characters escaped, written by a thread of their own
    (flushed at exit)."""
    global _listener
    if _listener is not None:
        _listener.stop()
    formatter = SafeFormatter(fmt)
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(formatter)
    handler = _OffLoopHandler(formatter)
    _listener = logging.handlers.QueueListener(handler.queue, writer)
    _listener.start()
    logging.basicConfig(level=level, handlers=[handler], force=True)


@atexit.register
def flush_logs() -> None:
    """Write out every queued record (at exit, and before a last line printed to stderr directly)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path (never the query string: it may carry a token), status."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %.1fms rid=%s",
            request.method,
            request.path,
            response.status,
            time * 1000,
            request.get(REQUEST_ID, "-"),
        )


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
        response = web.Response(status=status, text=body, content_type="application/json")
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
    shutdown_timeout: float = SHUTDOWN_TIMEOUT_SECONDS,
) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, then drain and exit 0; a failed start-up is one line and exit 1."""

    async def serve() -> None:
        runner = _Runner(
            app,
            handle_signals=True,
            access_log_class=AccessLogger,
            access_log=logging.getLogger("aiohttp.access") if access_log else None,
            shutdown_timeout=shutdown_timeout,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port or None).start()
            await asyncio.Event().wait()  # until a signal raises GracefulExit
        finally:
            await runner.cleanup()

    try:
        asyncio.run(serve())
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    except StartupError as exc:
        flush_logs()
        print(f"{process}: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as exc:
        flush_logs()
        print(f"{process}: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(1) from None


def main_for(
    process: str, create_app: Callable[[Settings], web.Application], port_of: Callable[[Settings], int]
) -> None:
    """The ``main()`` of a process: read the environment (one line and exit 2 if bad), then serve."""
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
    name: str, command: Callable[[Settings], Coroutine[Any, Any, int]], *, unreachable_status: int
) -> NoReturn:
    """The ``main()`` of a one-off command (``api_server.reencrypt``, ``api_server.audit``): read the
    environment (one line and exit 2 if bad), then exit with what ``command`` returns. A Postgres that
    cannot be reached is one line and ``unreachable_status``; Ctrl-C and a closed stdout (``| head``)
    end it quietly with 0."""
    try:
        settings = Settings.from_env()
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
