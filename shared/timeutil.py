"""Time in one place: UTC everywhere, RFC 3339 with a ``Z`` on the wire (SPEC §3)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

# RFC 3339 §5.6 ``date-time``, as JSON Schema's ``format: date-time`` reads it: ASCII digits, ``T`` and ``Z``
# in either case, seconds up to 60 (a leap second), an offset or ``Z`` required.
_RFC3339 = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9]|60)(?:\.([0-9]+))?"
    r"([Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def rfc3339(moment: datetime | None) -> str | None:
    """``2025-09-21T20:03:00.123Z`` (milliseconds), or None."""
    if moment is None:
        return None
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (``Z`` or an offset); raise ValueError otherwise.

    A leap second (``:60``) reads as the last microsecond before it; a moment a ``datetime`` cannot hold
    in UTC (year 0, year 1 with a positive offset, year 9999 with a negative one) as the nearest one it can."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError("not an RFC 3339 timestamp (YYYY-MM-DDTHH:MM:SS[.frac] and Z or an offset)")
    date, hour, minute, second, fraction, offset = match.groups()
    micro = f"{fraction or ''}000000"[:6]
    if second == "60":
        second, micro = "59", "999999"
    offset = "+00:00" if offset in ("Z", "z") else offset
    if date.startswith("0000-"):  # 1 BC, a leap year like 2000: check the day, then take the earliest moment
        datetime.fromisoformat(f"2000{date[4:]}")
        return datetime.min.replace(tzinfo=UTC)
    moment = datetime.fromisoformat(f"{date}T{hour}:{minute}:{second}.{micro}{offset}")  # ValueError: no such day
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)
