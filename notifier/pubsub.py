"""The Redis pub/sub message between the relay and the notifier hubs: a batch of relayed events.

Values stay encrypted on the wire (Redis never sees plaintext); each hub decrypts once per event.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from shared.changes.events import ChangeEvent, stored_audience
from shared.security.acl import Acl

CHANNEL = "dynconfig:events"


def encode_batch(events: Sequence[ChangeEvent]) -> bytes:
    """One pub/sub message for a batch of events in revision order."""
    return json.dumps([_encode(event) for event in events], separators=(",", ":")).encode()


def decode_batch(data: bytes | str) -> list[ChangeEvent]:
    """The events of a message made by :func:`encode_batch`."""
    return [_decode(item) for item in json.loads(data)]


def _encode(event: ChangeEvent) -> dict[str, Any]:
    readers = event.version_readers
    return {
        "r": event.revision,
        "k": event.key,
        "v": event.version,
        "e": event.event,
        "t": event.at.timestamp(),
        "x": base64.b64encode(event.value_enc).decode() if event.value_enc is not None else None,
        "ar": list(event.acl.read) if event.acl else None,
        "aw": list(event.acl.write) if event.acl else None,
        "c": event.creator,
        "vr": list(readers.entries) if readers else None,
        "vo": readers.owner if readers else None,
        "tx": event.txn,
    }


def _decode(item: dict[str, Any]) -> ChangeEvent:
    acl = Acl.from_columns(item["ar"], item["aw"])
    return ChangeEvent(
        revision=item["r"],
        key=item["k"],
        version=item["v"],
        event=item["e"],
        at=datetime.fromtimestamp(item["t"], UTC),
        value_enc=base64.b64decode(item["x"]) if item["x"] is not None else None,
        acl=acl,
        creator=item["c"],
        version_readers=stored_audience(item.get("vr"), item.get("vo")),
        txn=item.get("tx"),  # absent from the previous release's relay: it has no transactions
    )
