"""Values at rest: AES-256-GCM with a keyring (SPEC §8).

A stored blob is self-describing: ``len(key_id) | key_id | nonce(12) | ciphertext+tag``. The key name
is the associated data, so a blob copied onto another key fails to decrypt instead of leaking.
"""

from __future__ import annotations

import os

from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE = 12
#: Enough of the start of any blob to tell which key id sealed it (``Keyring.key_id_of``).
HEAD_BYTES = 1 + 255 + _NONCE


class DecryptionError(Exception):
    """A blob could not be decrypted (unknown key id, tampering, or the wrong key name)."""


class Keyring:
    """Encrypts with the first (active) key; decrypts with any key it holds."""

    def __init__(self, keys: tuple[tuple[str, bytes], ...]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self._ciphers = {key_id: AESGCM(secret) for key_id, secret in keys}
        self.active_id = keys[0][0]
        self._active_prefix = bytes([len(self.active_id)]) + self.active_id.encode()

    def __repr__(self) -> str:  # never show key material
        return f"Keyring(active={self.active_id!r}, ids={sorted(self._ciphers)!r})"

    def encrypt(self, plaintext: bytes, aad: str) -> bytes:
        """Encrypt with the active key, binding the blob to ``aad`` (the key name)."""
        nonce = os.urandom(_NONCE)
        sealed = self._ciphers[self.active_id].encrypt(nonce, plaintext, aad.encode())
        return self._active_prefix + nonce + sealed

    def decrypt(self, blob: bytes, aad: str) -> bytes:
        """Decrypt a blob made by any key of the ring."""
        key_id = self.key_id_of(blob)
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise DecryptionError(f"value encrypted with unknown key id {key_id!r}")
        start = 1 + blob[0]
        try:
            return cipher.decrypt(blob[start : start + _NONCE], blob[start + _NONCE :], aad.encode())
        except InvalidTag:
            raise DecryptionError("value failed authentication") from None

    def reseal(self, blob: bytes, aad: str) -> bytes:
        """``blob``'s plaintext sealed again with the active key (same ``aad``)."""
        return self.encrypt(self.decrypt(blob, aad=aad), aad=aad)

    def holds(self, key_id: str) -> bool:
        """True when the ring has a key named ``key_id``."""
        return key_id in self._ciphers

    @staticmethod
    def key_id_of(blob: bytes) -> str:
        """Which key id sealed ``blob``."""
        if len(blob) < 2 or len(blob) < 1 + blob[0] + _NONCE:
            raise DecryptionError("value blob is truncated")
        return bytes(blob[1 : 1 + blob[0]]).decode()

    def needs_rotation(self, blob: bytes) -> bool:
        """True when ``blob`` was sealed with a key other than the active one."""
        return self.key_id_of(blob) != self.active_id


KEYRING = web.AppKey("keyring", Keyring)
