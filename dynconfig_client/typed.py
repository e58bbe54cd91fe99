"""Typed getters with defaults, shared by ``LiveConfig`` and ``SyncLiveConfig``.

Conversions: ``get_bool`` takes booleans, 0/1 and the strings true/false, 1/0, yes/no, on/off (any case);
``get_int`` integers, integral floats and integer strings; ``get_float`` numbers and numeric strings;
``get_str`` strings, and numbers/booleans as their JSON text; ``get_json`` objects and arrays as they are,
strings parsed as JSON, other scalars as they are. A missing key gives the default; a value that does not
convert gives the default and logs one warning per key and version.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any, TypeVar, overload

from .disk_cache import Entry

log = logging.getLogger(__name__)

_D = TypeVar("_D")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def to_bool(value: Any) -> bool:
    """``value`` as a bool (see the module docstring); ValueError when it is not one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError("not a boolean")


def to_int(value: Any) -> int:
    """``value`` as an int; ValueError when it is not one."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    raise ValueError("not an integer")


def to_float(value: Any) -> float:
    """``value`` as a finite float; ValueError when it is not one."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        number = float(value.strip())
    else:
        raise ValueError("not a number")
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def to_str(value: Any) -> str:
    """``value`` as a str; ValueError for objects, arrays and null."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    raise ValueError("not a scalar")


def to_json(value: Any) -> Any:
    """``value`` as structured JSON: strings are parsed, anything else is returned as it is."""
    return json.loads(value) if isinstance(value, str) else value


class TypedGetters:
    """Mixin: typed getters over ``_entry(key)``."""

    def __init__(self) -> None:
        self._warned: set[tuple[str, int, str]] = set()

    def _entry(self, key: str) -> Entry | None:
        raise NotImplementedError

    def _typed(self, key: str, default: Any, convert: Callable[[Any], Any], kind: str) -> Any:
        entry = self._entry(key)
        if entry is None:
            return default
        try:
            return convert(entry.value)
        except (ValueError, TypeError):
            mark = (key, entry.version, kind)
            if mark not in self._warned:
                self._warned.add(mark)
                log.warning("config key %s (version %d) is not a valid %s; using the default", key, entry.version, kind)
            return default

    @overload
    def get_bool(self, key: str) -> bool | None: ...
    @overload
    def get_bool(self, key: str, default: _D) -> bool | _D: ...
    def get_bool(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` as a bool, or ``default``."""
        return self._typed(key, default, to_bool, "bool")

    @overload
    def get_int(self, key: str) -> int | None: ...
    @overload
    def get_int(self, key: str, default: _D) -> int | _D: ...
    def get_int(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` as an int, or ``default``."""
        return self._typed(key, default, to_int, "int")

    @overload
    def get_float(self, key: str) -> float | None: ...
    @overload
    def get_float(self, key: str, default: _D) -> float | _D: ...
    def get_float(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` as a float, or ``default``."""
        return self._typed(key, default, to_float, "float")

    @overload
    def get_str(self, key: str) -> str | None: ...
    @overload
    def get_str(self, key: str, default: _D) -> str | _D: ...
    def get_str(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` as a str, or ``default``."""
        return self._typed(key, default, to_str, "str")

    def get_json(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` as structured JSON (strings are parsed), or ``default``."""
        return self._typed(key, default, to_json, "json")
