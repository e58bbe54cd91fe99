"""Caller-supplied text made safe to write where a control character would do harm (logs, audit rows).

One rule for the whole codebase: a control character (C0, DEL, C1), a Unicode line or paragraph
separator, or a lone surrogate (what aiohttp makes of bytes that are not UTF-8) is written as a
backslash escape, so one request can never start a new log line or break a Postgres text value.
"""

from __future__ import annotations

import re
import unicodedata

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_UNSAFE_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def unprintable(text: str) -> str | None:
    """The first character of ``text`` that a name shown to people and stored everywhere must not hold
    (SPEC §2, usernames), or None: a control (Cc: C0, DEL, C1) or format character (Cf: zero-width and
    bidi marks, BOM), a line or paragraph separator, or a lone surrogate — which Python keeps from a JSON
    ``\\ud800`` escape but no encoder downstream (redis-py, psycopg2) accepts."""
    for char in text:
        if unicodedata.category(char) in _UNPRINTABLE_CATEGORIES:
            return char
    return None


#: Cc, Cf, Zl (U+2028), Zp (U+2029) and Cs (surrogates).
_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_control(text: str) -> str:
    """``text`` with every unsafe character escaped: a newline becomes the four characters ``\\x0a``."""
    return _UNSAFE.sub(_escape, text)


def escape_control_keep_newlines(text: str) -> str:
    """Like :func:`escape_control` but keeps ``\\n`` (for multi-line text we produce, e.g. tracebacks)."""
    return _UNSAFE_BUT_NEWLINE.sub(_escape, text)
