"""The ``cursor`` of each paged listing: how a position is written, read back, and published.

A cursor only says where the next page starts, and the caller may read whatever it points past (the
listing checks access row by row), so it needs no secrecy, only a shape: each kind has a pattern that
/openapi.json publishes, and every string matching it is a position this server reads. Anything else
is 400. Clients still treat cursors as opaque and pass back the ``next`` they were given.

Cursors of the release before (base64url of a JSON position) are still read, so that a client paging
through a rolling upgrade is not cut off; drop :func:`_previous_release` in the release after.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.errors import BadRequest
from shared.sql.keys import Position
from shared.validation import MAX_KEY_LENGTH

_AFTER_KEY = rf"[A-Za-z0-9._:/-]{{0,{MAX_KEY_LENGTH}}}"  # key characters: any such string sorts somewhere
#: The orders of ``GET /keys?sort=`` besides by name; ``-`` in front: descending.
SORTS = ("lastModified", "version", "expiresAt")
SORT_PATTERN = rf"^(?:name|-?(?:{'|'.join(SORTS)}))$"
#: ``GET /keys``: ``<total>~<last key of the previous page>`` (the total is counted on the first page);
#: in another order than by name, ``<total>~<sort>~<its value in the last key>~<last key>`` (a version,
#: or microseconds since 1970 UTC, or ``inf`` for a key without a ttl).
LIST_PATTERN = rf"^[0-9]{{1,18}}~(?:-?(?:{'|'.join(SORTS)})~(?:[0-9]{{1,18}}|inf)~)?{_AFTER_KEY}$"
#: ``GET /keys/{key}/history``: the version the next page starts below.
HISTORY_PATTERN = r"^[0-9]{1,18}$"
#: ``GET /audit``: ``<microseconds since 1970 (UTC)>~<id>`` of the last record of the previous page.
AUDIT_PATTERN = r"^[0-9]{1,17}~[0-9]{1,18}$"

_LIST = re.compile(LIST_PATTERN)
_PREVIOUS_AFTER_KEY = re.compile(_AFTER_KEY)
_HISTORY = re.compile(HISTORY_PATTERN)
_AUDIT = re.compile(AUDIT_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def list_cursor(after: Position, total: int) -> str:
    """The cursor of the listing page after ``after``."""
    if after.sort == "name":
        return f"{total}~{after.key}"
    sort = ("-" if after.descending else "") + after.sort
    value = after.value or ""
    if after.sort != "version":
        value = "inf" if value == "infinity" else str((datetime.fromisoformat(value) - _EPOCH) // _MICROSECOND)
    return f"{total}~{sort}~{value}~{after.key}"


def parse_sort(raw: str | None) -> Position:
    """``sort``: ``name`` (the default) or one of SORTS, ``-`` in front for descending; 400 else."""
    if raw is None or raw == "name":
        return Position()
    if not re.fullmatch(SORT_PATTERN, raw):
        choices = ", ".join(f"{name}, -{name}" for name in SORTS)
        raise BadRequest(f"sort is name, {choices}", fields={"sort": ["unknown"]})
    return Position(sort=raw.lstrip("-"), descending=raw.startswith("-"))


def read_list_cursor(raw: str | None, order: Position) -> tuple[Position, int | None]:
    """(where the page starts, in the cursor's order; total counted on the first page); ``(order,
    None)`` without a cursor. A cursor keeps the order of its first page, whatever ``sort`` says now."""
    if raw is None:
        return order, None
    if _LIST.fullmatch(raw):
        total, *sorted_by, last_key = raw.split("~")
        if not sorted_by:
            after = Position(last_key)
        else:
            sort, value = sorted_by
            name = sort.lstrip("-")
            if name != "version":
                value = "infinity" if value == "inf" else (_EPOCH + int(value) * _MICROSECOND).isoformat()
            after = Position(last_key, name, sort.startswith("-"), value)
        return after, int(total)
    old = _previous_release(raw)
    if isinstance(old, list) and len(old) == 2 and isinstance(old[0], str) and _bigint(old[1]):
        if _PREVIOUS_AFTER_KEY.fullmatch(old[0]):
            return Position(old[0]), old[1]
    raise _invalid()


def history_cursor(before: int) -> str:
    """The cursor of the history page of the versions below ``before``."""
    return str(before)


def read_history_cursor(raw: str | None) -> int | None:
    """The version a history page starts below, or None without a cursor."""
    if raw is None:
        return None
    if _HISTORY.fullmatch(raw):
        return int(raw)
    old = _previous_release(raw)
    if _bigint(old):
        return int(old)
    raise _invalid()


def audit_cursor(at: datetime, record_id: int) -> str:
    """The cursor of the audit page of the records older than (``at``, ``record_id``)."""
    return f"{(at - _EPOCH) // _MICROSECOND}~{record_id}"


def read_audit_cursor(raw: str | None) -> tuple[datetime, int] | None:
    """The (at, id) an audit page starts before, or None without a cursor."""
    if raw is None:
        return None
    if _AUDIT.fullmatch(raw):
        micros, record_id = raw.split("~")
        return _EPOCH + int(micros) * _MICROSECOND, int(record_id)
    old = _previous_release(raw)
    if isinstance(old, list) and len(old) == 2 and isinstance(old[0], str) and _bigint(old[1]):
        try:
            return datetime.fromisoformat(old[0]), old[1]
        except ValueError:
            pass
    raise _invalid()


def _previous_release(raw: str) -> Any:
    """The JSON position inside a cursor of the release before, or None."""
    try:
        return json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None


def _bigint(value: Any) -> bool:
    return type(value) is int and 0 <= value < 2**62


def _invalid() -> BadRequest:
    return BadRequest("Invalid cursor", fields={"cursor": ["not a cursor this server issued"]})
