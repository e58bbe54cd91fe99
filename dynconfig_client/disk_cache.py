"""Last-known-good: the live view saved to disk, sealed with AES-256-GCM under a key the application owns.

File layout: ``b"DCLKG1" | nonce (12 bytes) | AES-GCM ciphertext+tag`` of the JSON document
``{"revision": R, "patterns": [...], "entries": {key: [value, version, revision]}}``. Writes are atomic
(temporary file in the same directory, fsync, rename, fsync of the directory) with mode 0600, so a crash
leaves either the old file or the new one. A file that is missing, corrupt, or sealed with another key
is logged and ignored: the view then starts empty, it never fails because of its cache.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

MAGIC = b"DCLKG1"
NONCE_BYTES = 12
_AAD = b"dynconfig-client last-known-good v1"


class Entry(NamedTuple):
    """One key of the view: its value, its version, and the revision of the change that set it."""

    value: Any
    version: int
    revision: int


@dataclass
class CacheState:
    """What the cache holds: the view at ``revision`` for ``patterns``."""

    revision: int
    patterns: list[str]
    entries: dict[str, Entry] = field(default_factory=dict)


class DiskCache:
    """The encrypted cache file at ``path``; ``key`` is 32 random bytes the application keeps secret."""

    def __init__(self, path: str | os.PathLike[str], key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != 32:
            raise ValueError("cache_key must be 32 bytes (AES-256)")
        self.path = Path(path)
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return f"DiskCache({str(self.path)!r})"  # never the key

    def load(self) -> CacheState | None:
        """The saved state, or None (logged) when there is none or it cannot be read."""
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the config cache %s: %s", self.path, exc.__class__.__name__)
            return None
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + NONCE_BYTES + 16:
            log.warning("ignoring the config cache %s: not a DynConfig cache file", self.path)
            return None
        nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
        try:
            plain = self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES :], _AAD)
        except InvalidTag:
            log.warning("ignoring the config cache %s: wrong cache key or corrupt file", self.path)
            return None
        try:
            return _decode(json.loads(plain))
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("ignoring the config cache %s: unexpected content", self.path)
            return None

    def save(self, state: CacheState) -> None:
        """Replace the file atomically with ``state`` (blocking: call it from a thread)."""
        document = {
            "revision": state.revision,
            "patterns": state.patterns,
            "entries": {key: list(entry) for key, entry in state.entries.items()},
        }
        plain = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        nonce = os.urandom(NONCE_BYTES)
        blob = MAGIC + nonce + self._aead.encrypt(nonce, plain, _AAD)
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)  # mode 0600
        done = False
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(blob)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.path)
            done = True
        finally:
            if not done:
                Path(tmp).unlink(missing_ok=True)
        _fsync_directory(directory)


def _decode(document: dict[str, Any]) -> CacheState:
    revision = document["revision"]
    patterns = document["patterns"]
    if not isinstance(revision, int) or not isinstance(patterns, list):
        raise TypeError("bad cache document")
    entries = {}
    for key, (value, version, rev) in document["entries"].items():
        entries[str(key)] = Entry(value, int(version), int(rev))
    return CacheState(revision, [str(p) for p in patterns], entries)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
