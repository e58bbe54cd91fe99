"""Who watches which keys: the hub's index of watch patterns, and what the hub needs of a subscriber."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from shared.security.acl import Principal


class Subscriber(Protocol):
    """What the hub needs of a watch connection."""

    principal: Principal
    #: A transaction's changes as single events (``"txn": "split"``), not one ``txn`` frame.
    split_txn: bool

    def deliver(self, revision: int, frame: bytes) -> bool:
        """Take one live event, or a transaction's (already encoded: its frame, or its single events'
        frames one after the other) without blocking; True when the hub must call :meth:`flush` after
        this pass (it queued the first frame since the last flush)."""
        ...

    def flush(self) -> None: ...

    def resync(self, revision: int) -> None: ...


class Patterns:
    """An index of watch patterns: exact keys and prefixes (``app.*`` → prefix ``app.``; ``*`` → ``""``)."""

    def __init__(self) -> None:
        self.exact: dict[str, set[Subscriber]] = {}
        self.prefix: dict[str, set[Subscriber]] = {}
        #: Bumped whenever who watches what, or as whom, changes (delivery lists built before are stale).
        self.generation = 0

    @staticmethod
    def _slot(pattern: str) -> tuple[bool, str]:
        return (True, pattern[:-1]) if pattern.endswith("*") else (False, pattern)

    def changed(self) -> None:
        """Who watches what, or as whom, changed."""
        self.generation += 1

    def add(self, subscriber: Subscriber, patterns: Iterable[str]) -> None:
        self.changed()
        for pattern in patterns:
            is_prefix, text = self._slot(pattern)
            (self.prefix if is_prefix else self.exact).setdefault(text, set()).add(subscriber)

    def remove(self, subscriber: Subscriber, patterns: Iterable[str]) -> None:
        self.changed()
        for pattern in patterns:
            is_prefix, text = self._slot(pattern)
            index = self.prefix if is_prefix else self.exact
            members = index.get(text)
            if members is not None:
                members.discard(subscriber)
                if not members:
                    del index[text]

    def everyone(self) -> set[Subscriber]:
        """Every subscriber with at least one pattern."""
        found: set[Subscriber] = set()
        for index in (self.exact, self.prefix):
            for members in index.values():
                found |= members
        return found

    def matching(self, key: str) -> set[Subscriber]:
        """Everyone with a pattern that matches ``key``."""
        found: set[Subscriber] = set(self.exact.get(key, ()))
        prefix = self.prefix
        if prefix:
            for end in range(len(key) + 1):
                members = prefix.get(key[:end])
                if members:
                    found |= members
        return found
