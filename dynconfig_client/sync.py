"""``SyncLiveConfig``: ``LiveConfig`` for programs without an event loop (Flask, Django, scripts).

    with SyncLiveConfig("http://localhost:8080", token, ["app.*"]) as live:   # waits until ready
        if live.get_bool("app.feature-toggle.enabled", False):
            ...

The same ``LiveConfig`` runs on a private event loop in a daemon thread ("dynconfig-live"). Reads
(``get``, the typed getters, ``snapshot``, ``connected``, ``revision``…) are safe from any thread and
never block on I/O. Callbacks run **on the background thread**, one at a time in revision order: keep
them short and hand work to your own threads if needed (an ``async def`` callback runs on that loop).
A token callable is also called on the background thread.

A transaction is applied in one step, as ``LiveConfig`` does: read the keys one transaction writes
together with ``snapshot(keys)`` (one consistent state) rather than with several ``get`` calls, between
which the background thread may apply the next change.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from .auth import TokenSource
from .disk_cache import Entry
from .live import Callback, LiveConfig, TxnCallback
from .typed import TypedGetters

_T = TypeVar("_T")


class SyncLiveConfig(TypedGetters):
    """A blocking facade over :class:`LiveConfig`; takes the same arguments but ``session`` (see the module
    docstring)."""

    def __init__(
        self,
        url: str,
        token: TokenSource,
        patterns: list[str],
        *,
        cache_path: str | os.PathLike[str] | None = None,
        cache_key: bytes | None = None,
        cache_interval: float = 1.0,
        prefer_server_for: float = 2.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        heartbeat: float = 15.0,
    ) -> None:
        super().__init__()
        self.live = LiveConfig(
            url,
            token,
            patterns,
            cache_path=cache_path,
            cache_key=cache_key,
            cache_interval=cache_interval,
            prefer_server_for=prefer_server_for,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            heartbeat=heartbeat,
        )
        """The :class:`LiveConfig` running on the background loop (call its coroutines only there)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SyncLiveConfig:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, timeout: float | None = 30.0, *, wait: bool = True) -> None:
        """Start the background thread and the view; with ``wait``, block until it is ready.

        If it is not ready within ``timeout`` seconds, everything is stopped again and TimeoutError raised
        (likewise the server's BadRequest for refused patterns)."""
        if self._thread is not None:
            raise RuntimeError("SyncLiveConfig already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run_loop, args=(loop,), name="dynconfig-live", daemon=True)
        self._thread.start()
        started = False
        try:
            self._call(self.live.start())
            if wait:
                self._call(self.live.ready(timeout))
            started = True
        finally:
            if not started:
                self.close()

    def ready(self, timeout: float | None = None) -> bool:
        """Block until the view serves values (the server's, or after ``prefer_server_for`` seconds the
        disk cache's, as ``LiveConfig.ready``); True, or TimeoutError after ``timeout`` seconds."""
        return self._call(self.live.ready(timeout))

    def close(self, timeout: float = 10.0) -> None:
        """Stop the view (saving its cache), stop the loop and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if thread.is_alive():
                future = asyncio.run_coroutine_threadsafe(self.live.close(), loop)
                try:
                    future.result(timeout)
                except concurrent.futures.TimeoutError:
                    future.cancel()
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        finally:
            self._loop = None

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.gather(*asyncio.all_tasks(loop), return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None or threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("not from a callback, and only after start()")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # --- reads (any thread) ------------------------------------------------------------------------

    def _entry(self, key: str) -> Entry | None:
        return self.live._entry(key)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default``."""
        return self.live.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.live[key]

    def __contains__(self, key: object) -> bool:
        return key in self.live

    def __len__(self) -> int:
        return len(self.live)

    def __iter__(self) -> Iterator[str]:
        return iter(self.live)

    def version(self, key: str) -> int | None:
        """The version of ``key`` in the view, or None."""
        return self.live.version(key)

    def snapshot(self, keys: Iterable[str] | None = None) -> dict[str, Any]:
        """A copy of the view, ``{key: value}`` (or of its ``keys``): one consistent state, never part of a
        transaction."""
        return self.live.snapshot(keys)

    @property
    def is_ready(self) -> bool:
        """True once the view serves values."""
        return self.live.is_ready

    @property
    def source(self) -> str | None:
        """``"cache"``, ``"server"`` or None (see ``LiveConfig``)."""
        return self.live.source

    @property
    def connected(self) -> bool:
        """True while the stream is connected and subscribed."""
        return self.live.connected

    @property
    def revision(self) -> int | None:
        """The last revision applied to the view."""
        return self.live.revision

    @property
    def seconds_since_last_event(self) -> float | None:
        """Seconds since anything was last heard from the server."""
        return self.live.seconds_since_last_event

    def wait_for_revision(self, revision: int, timeout: float | None = None) -> None:
        """Block until the view has applied ``revision`` or a later one (see ``LiveConfig``)."""
        self._call(self.live.wait_for_revision(revision, timeout))

    # --- callbacks (run on the background thread) --------------------------------------------------

    def on_change(self, callback: Callback) -> Callable[[], None]:
        """Call ``callback(change)`` (on the background thread) for every change; returns an unregister."""
        return self.live.on_change(callback)

    def on_key(self, key: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback(change)`` (on the background thread) for changes of ``key``."""
        return self.live.on_key(key, callback)

    def on_pattern(self, pattern: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback(change)`` (on the background thread) for keys matching ``pattern``."""
        return self.live.on_pattern(pattern, callback)

    def on_txn(self, callback: TxnCallback) -> Callable[[], None]:
        """Call ``callback(txn_change)`` (on the background thread) once per transaction that changed the
        view, after its per-key callbacks."""
        return self.live.on_txn(callback)
