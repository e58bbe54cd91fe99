"""The one encoder of change events (SPEC §6), used by relay, backfill, poll, snapshot and history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .timeutil import rfc3339

EVENT_KINDS = ("update", "delete", "expired")


def change_event(
    *,
    event: str,
    key: str,
    version: int,
    at: datetime,
    revision: int | None = None,
    value: Any = None,
) -> dict[str, Any]:
    """``{"event", "key", "version", "revision", "value" (update only), "lastModified"}``."""
    body: dict[str, Any] = {"event": event, "key": key, "version": version}
    if revision is not None:
        body["revision"] = revision
    if event == "update":
        body["value"] = value
    body["lastModified"] = rfc3339(at)
    return body
