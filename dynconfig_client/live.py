"""``LiveConfig``: the current values of the keys matching some patterns, in memory, kept up to date.

    async with LiveConfig("http://localhost:8080", token, ["app.*"]) as live:
        await live.ready()
        live.on_key("app.feature-toggle.enabled", lambda change: print(change.new))
        if live.get_bool("app.feature-toggle.enabled", False):
            ...

Reads are dict lookups (no I/O). One ``EventStream`` (with ``snapshot: true`` on the first connect)
carries both the initial state and every change; reconnects resume after the last applied revision.

Rules:
- **Ready** means "serving values that are either fresh from the server or last-known-good from disk":
  :meth:`ready` returns once the first snapshot (or resume) from the server has been applied — ``source``
  is then ``"server"``. With an on-disk cache the server still comes first, for ``prefer_server_for``
  seconds from :meth:`start` (2 by default): a program that reads right after ``ready()`` gets the
  server's values whenever the server answers in time. Only when it does not (or ``ready``'s own
  ``timeout`` runs out first) does ``ready()`` return with the cache's values (``source == "cache"``),
  and the view catches up in the background — as Apollo's client reads its local file only after the
  config service failed to answer. Staleness: ``connected``, ``seconds_since_last_event``.
- **Callbacks** report changes to a view you could already read: the initial snapshot fills the view
  silently; from then on every applied change fires the callbacks once, in revision order, with the
  state already updated. A callback may be sync or async (awaited before the next change is applied);
  one that raises is logged and the stream goes on.
- **Transactions** (``POST /txn``) are applied whole, in one step: no read, from this loop or (with
  ``SyncLiveConfig``) another thread, ever sees some of a transaction's changes without the others
  (read several keys in one go with :meth:`snapshot`; two ``get`` calls from another thread may fall
  on either side of a change, as for any two changes). Only then do the callbacks run: the per-key
  ones (``on_change``, ``on_key``, ``on_pattern``) once per changed key, in the transaction's order,
  every one of them seeing the whole transaction applied, all with its revision; then ``on_txn``
  callbacks once, with a :class:`TxnChange` holding all of them, for code that wants one call for
  a change of several keys.
- **Reset** (the server no longer has the changes since our revision): the ``reset`` event and the
  snapshot that follows are collected aside, then swapped in at once when the snapshot is complete —
  at the stream's end-of-replay barrier (``synced``), or at the first event with a revision above the
  reset's, whichever comes first. Keys that disappeared are reported as ``delete`` changes (``new`` is
  None, ``version`` None, ``revision`` the reset's); keys whose version differs as ``update``.
- An event with a revision at or below the last applied one is never applied.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import aiohttp
from yarl import URL

from .auth import TokenSource
from .client import watch_url
from .disk_cache import CacheState, DiskCache, Entry
from .errors import ApiError
from .stream import EventStream
from .typed import TypedGetters
from .view import Change, TxnChange, View, pattern_matches

log = logging.getLogger(__name__)

Callback = Callable[[Change], Any]
"""A change callback: ``callback(change)``, plain or ``async``."""

TxnCallback = Callable[[TxnChange], Any]
"""A transaction callback: ``callback(txn_change)``, plain or ``async``."""


def to_watch_url(url: str) -> str:
    """``ws(s)://…`` as given; ``http(s)://…/watch`` with its scheme changed; any other base URL + /watch."""
    parsed = URL(url)
    if parsed.scheme in ("ws", "wss"):
        return url
    if parsed.scheme in ("http", "https") and parsed.path.rstrip("/").endswith("/watch"):
        return str(parsed.with_scheme("ws" if parsed.scheme == "http" else "wss"))
    return watch_url(url)


class LiveConfig(TypedGetters):
    """A live, in-memory view of the keys matching ``patterns`` (see the module docstring).

    ``url`` is the service's base URL (``/watch`` is appended) or the watch URL itself. With
    ``cache_path`` (and a 32-byte ``cache_key``) the view is saved, encrypted, at most once every
    ``cache_interval`` seconds and on close, and loaded at start; :meth:`ready` then waits up to
    ``prefer_server_for`` seconds for the server before it serves the cache.
    """

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
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        super().__init__()
        if cache_path is not None and cache_key is None:
            raise ValueError("cache_path needs a cache_key (32 bytes): the cache is always encrypted")
        if prefer_server_for < 0:
            raise ValueError("prefer_server_for is a number of seconds, >= 0")
        self.watch_url = to_watch_url(url)
        self.patterns = list(patterns)
        self._cache = DiskCache(cache_path, cache_key) if cache_path is not None and cache_key is not None else None
        self._cache_interval = cache_interval
        self._prefer_server_for = prefer_server_for
        self._fallback: asyncio.TimerHandle | None = None  # serves the cache if the server is late
        self._token = token
        self._stream_options: dict[str, Any] = {
            "backoff_initial": backoff_initial,
            "backoff_max": backoff_max,
            "heartbeat": heartbeat,
            "session": session,
        }
        self._stream: EventStream | None = None
        self._view = View(self._changed)
        self._callbacks: list[tuple[str | None, Callback]] = []
        self._txn_callbacks: list[TxnCallback] = []
        self._ready_event = asyncio.Event()
        self._is_ready = False
        self._failure: Exception | None = None
        self._unsaved = False
        self._dirty = asyncio.Event()
        self._applied = asyncio.Event()  # set whenever the view changes (wait_for_revision)
        self._task: asyncio.Task[None] | None = None
        self._saver: asyncio.Task[None] | None = None
        self._saving: asyncio.Future[None] | None = None
        self.source: str | None = None
        """Where the view's values come from: ``"cache"`` (last-known-good from disk, loaded at start),
        ``"server"`` (synced with the server once), or None (nothing yet)."""

    # --- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> LiveConfig:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Load the disk cache (if any), then connect and follow the stream in a background task."""
        if self._task is not None:
            raise RuntimeError("LiveConfig already started")
        state = await asyncio.to_thread(self._cache.load) if self._cache is not None else None
        if state is not None and sorted(state.patterns) != sorted(self.patterns):
            log.info("ignoring the config cache: it was saved for other patterns")
            state = None
        if state is not None:
            self._view.load(state.entries, state.revision)
            self.source = "cache"  # readable now; ready() waits for the server first
            self._fallback = asyncio.get_running_loop().call_later(self._prefer_server_for, self._serve_cache)
        else:
            self._view.expect_snapshot()  # the first snapshot is collected, then swapped in at once
        self._stream = EventStream(
            self.watch_url,
            self._token,
            self.patterns,
            since_version=self._view.revision,
            snapshot=self._view.revision is None,
            markers=True,
            **self._stream_options,
        )
        self._task = asyncio.create_task(self._run(), name="dynconfig-live")
        if self._cache is not None:
            self._saver = asyncio.create_task(self._save_loop(), name="dynconfig-live-cache")

    async def close(self) -> None:
        """Stop following the stream and save the cache one last time."""
        if self._fallback is not None:
            self._fallback.cancel()
        for task in (self._task, self._saver):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        if self._saving is not None:
            await asyncio.wait([self._saving])
        if self._stream is not None:
            await self._stream.close()
        if self._unsaved:
            await self._save()

    async def ready(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 (the agreed API)
        """Wait until the view serves values (see the module docstring); True. With a cache loaded, that
        is the server's values if it answers within ``prefer_server_for`` seconds of start (and within
        ``timeout``), else the cache's. Without one, raises TimeoutError after ``timeout`` seconds. Raises
        the server's refusal (``BadRequest`` for refused patterns, or the status a wrong watch URL got)."""
        if self._task is None:
            raise RuntimeError("call start() first")
        if not self._ready_event.is_set():
            try:
                await asyncio.wait_for(self._ready_event.wait(), timeout)
            except TimeoutError:
                if self.source != "cache":
                    raise
                self._serve_cache()  # the caller will not wait longer: last-known-good it is
        if not self._is_ready and self._failure is not None:
            raise self._failure
        return True

    async def wait_for_revision(self, revision: int, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until the view has applied ``revision`` or a later one — e.g. the ``revision`` of a
        ``WriteResult`` for a key this view watches, to read your own write. (Revisions of keys the
        view does not watch are never sent to it.) Raises TimeoutError after ``timeout`` seconds."""

        async def reached() -> None:
            while self._view.revision is None or self._view.revision < revision:
                self._applied.clear()
                if self._view.revision is not None and self._view.revision >= revision:
                    return
                await self._applied.wait()

        await asyncio.wait_for(reached(), timeout)

    # --- reads -------------------------------------------------------------------------------------

    def _entry(self, key: str) -> Entry | None:
        return self._view.entries.get(key)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when the view does not have it."""
        entry = self._view.entries.get(key)
        return default if entry is None else entry.value

    def __getitem__(self, key: str) -> Any:
        entry = self._view.entries.get(key)
        if entry is None:
            raise KeyError(key)
        return entry.value

    def __contains__(self, key: object) -> bool:
        return key in self._view.entries

    def __len__(self) -> int:
        return len(self._view.entries)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._view.entries))

    def version(self, key: str) -> int | None:
        """The version of ``key`` in the view, or None."""
        entry = self._view.entries.get(key)
        return None if entry is None else entry.version

    def snapshot(self, keys: Iterable[str] | None = None) -> dict[str, Any]:
        """A copy of the view, ``{key: value}``, or of the ``keys`` of it that it holds: one consistent
        state, never part of a transaction (the values themselves are shared: do not mutate them)."""
        with self._view.lock:
            entries = self._view.entries
            if keys is None:
                return {key: entry.value for key, entry in entries.items()}
            return {key: entry.value for key in keys if (entry := entries.get(key)) is not None}

    @property
    def is_ready(self) -> bool:
        """True once :meth:`ready` would return at once."""
        return self._is_ready

    @property
    def connected(self) -> bool:
        """True while the stream is connected and subscribed."""
        return self._stream is not None and self._stream.connected

    @property
    def revision(self) -> int | None:
        """The last revision applied to the view (None before the first snapshot)."""
        return self._view.revision

    @property
    def seconds_since_last_event(self) -> float | None:
        """Seconds since anything (event, ping or pong) was last heard from the server; None if never."""
        last = None if self._stream is None else self._stream.last_message_at
        return None if last is None else time.monotonic() - last

    # --- callbacks ---------------------------------------------------------------------------------

    def on_change(self, callback: Callback) -> Callable[[], None]:
        """Call ``callback(change)`` for every change; returns a function that unregisters it."""
        return self._register(None, callback)

    def on_key(self, key: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback(change)`` for changes of ``key``."""
        return self._register(key, callback)

    def on_pattern(self, pattern: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback(change)`` for keys matching ``pattern`` (exact key, or prefix ending in ``*``)."""
        return self._register(pattern, callback)

    def on_txn(self, callback: TxnCallback) -> Callable[[], None]:
        """Call ``callback(txn_change)`` once per transaction that changed the view, after the per-key
        callbacks of its changes (see the module docstring); returns a function that unregisters it."""
        return self._add("_txn_callbacks", callback)

    def _register(self, pattern: str | None, callback: Callback) -> Callable[[], None]:
        return self._add("_callbacks", (pattern, callback))

    def _add(self, registry: str, item: Any) -> Callable[[], None]:
        """Add ``item`` to the list ``registry`` names, copied on write (safe while dispatching); a
        function that removes it."""
        setattr(self, registry, [*getattr(self, registry), item])

        def unregister() -> None:
            setattr(self, registry, [c for c in getattr(self, registry) if c is not item])

        return unregister

    async def _dispatch(self, change: Change | TxnChange) -> None:
        if isinstance(change, TxnChange):  # applied whole already: each change, then the transaction
            for one in change.changes:
                await self._dispatch(one)
            for txn_callback in self._txn_callbacks:
                await _run_callback(txn_callback, change, f"the transaction at revision {change.revision}")
            return
        for pattern, callback in self._callbacks:
            if pattern is None or pattern_matches(pattern, change.key):
                await _run_callback(callback, change, f"key {change.key}")

    # --- applying the stream -----------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._stream is not None
        while True:
            try:
                async for event in self._stream:
                    # Changes are reported once the view had values to read (the cache counts).
                    for change in self._view.apply(event, report=self.source is not None):
                        await self._dispatch(change)
                    if self._view.synced and self.source != "server":
                        self._mark_ready("server")
                return
            except ApiError as exc:  # refused patterns, a wrong URL or token: final, said by ready()
                log.error("the server refused the watch: %s", exc)
                self._failure = exc
                self._ready_event.set()
                return
            except Exception as exc:  # a bug must not leave the view silently stale: log, go on
                log.exception("LiveConfig failed to apply an event")
                self._failure = exc
                await asyncio.sleep(1.0)

    def _mark_ready(self, source: str) -> None:
        self.source = source
        self._is_ready = True
        self._ready_event.set()
        if self._fallback is not None:
            self._fallback.cancel()

    def _serve_cache(self) -> None:
        """The server did not answer in time: ready with the cache's values (unless ready already)."""
        if self._is_ready:
            return
        entries, revision = len(self._view.entries), self._view.revision
        log.info("no answer from the server yet: serving %d cached key(s) at revision %s meanwhile", entries, revision)
        self._mark_ready("cache")

    # --- the disk cache ----------------------------------------------------------------------------

    def _changed(self) -> None:
        self._unsaved = True
        self._dirty.set()
        self._applied.set()

    async def _save_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._save()
            await asyncio.sleep(self._cache_interval)

    async def _save(self) -> None:
        view = self._view
        if self._cache is None or view.revision is None:
            return
        with view.lock:
            state = CacheState(view.revision, self.patterns, dict(view.entries))
        self._unsaved = False
        saving = self._saving = asyncio.ensure_future(asyncio.to_thread(self._cache.save, state))
        saving.add_done_callback(self._saved)
        try:
            await asyncio.shield(saving)  # close() waits for a write in progress instead of abandoning it
        except Exception:
            pass  # logged by _saved; the next change tries again

    def _saved(self, saving: asyncio.Future[None]) -> None:
        error = None if saving.cancelled() else saving.exception()
        if error is not None:
            self._unsaved = True
            path = self._cache.path if self._cache is not None else None
            log.warning("cannot write the config cache %s: %s", path, error.__class__.__name__)


async def _run_callback(callback: Callable[[Any], Any], argument: Any, what: str) -> None:
    """Call a plain or async callback; one that raises is logged (naming ``what`` it was called for)."""
    try:
        result = callback(argument)
        if inspect.isawaitable(result):
            await result
    except Exception:
        name = getattr(callback, "__qualname__", repr(callback))
        log.exception("config callback %s failed for %s", name, what)
