"""A process's logs: one line per record on stderr, control characters escaped (so a request path
such as ``/x%0A2026-12-02 ERROR …`` cannot forge a line of its own), written by a thread of their
own; and the access log, which never writes a query string (it may carry a token)."""

from __future__ import annotations

import atexit
import copy
import logging
import logging.handlers
import queue
import sys
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from shared.runtime.web import REQUEST_ID
from shared.text import escape_control, escape_control_keep_newlines


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
