"""The API server's domain operations, one module per resource (keys, namespaces, audit), below the
HTTP handlers: they take what the process provides (:class:`Store`) and who asks (:class:`Caller`),
decide access, read and write Postgres, and raise ``shared.errors``; they never see a request."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiopg

from api_server.cache import ValueCache
from api_server.committer import Committer
from api_server.state_reader import StateReader
from shared.security.acl import Principal
from shared.security.crypto import Keyring
from shared.security.nsacls import NamespaceAcls
from shared.validation import encode_value


@dataclass(frozen=True)
class Caller:
    """Who is asking, and the request id their audit rows carry."""

    principal: Principal
    request_id: str

    @property
    def username(self) -> str:
        return self.principal.username


@dataclass(frozen=True)
class Store:
    """What the key operations need from the process."""

    pool: aiopg.Pool
    keyring: Keyring
    cache: ValueCache
    committer: Committer
    namespaces: NamespaceAcls
    reader: StateReader

    def seal(self, key: str, value: Any) -> bytes:
        """Encode (413 past 1 MiB) and encrypt a value for ``key``."""
        return self.keyring.encrypt(encode_value(value), aad=key)

    def open(self, key: str, blob: bytes) -> Any:
        """Decrypt and decode a stored value of ``key``."""
        return json.loads(self.keyring.decrypt(blob, aad=key))
