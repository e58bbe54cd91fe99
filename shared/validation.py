"""Where keys, namespaces, ACL entries and request bodies are validated (SPEC §3–5)."""

from __future__ import annotations

import json
import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from .errors import BadRequest, PayloadTooLarge
from .text import CONTROL_CHARACTERS

MAX_KEY_LENGTH = 256
MAX_VALUE_BYTES = 1_048_576
MAX_ACL_ENTRIES = 1000
RESERVED_SUFFIXES = ("history", "rollback")

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_EMPTY_SEGMENT = re.compile(r"\.\.|//|[./]$|[./][./]")
# A username (no space, control character, lone surrogate or '*'), optionally ending in '*'; or '*'.
_ACL_ENTRY = re.compile(r"(\*|[^\s*\x00-\x1f\x7f\ud800-\udfff]{1,256}\*?)")


def key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid key name, or None when it is."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        return f"a key is 1 to {MAX_KEY_LENGTH} characters"
    if not _KEY.match(key):
        return "a key starts with a letter or digit and uses only A-Z a-z 0-9 . _ - : /"
    if _EMPTY_SEGMENT.search(key):
        return "a key has no empty segment ('..', '//', or a trailing '.' or '/')"
    last = key.rsplit("/", 1)[-1] if "/" in key else None
    if last in RESERVED_SUFFIXES:
        return f"a key may not end in /{last}"
    return None


def validate_key(key: str) -> str:
    """Return ``key`` or raise 400 naming the rule it breaks."""
    problem = key_problem(key)
    if problem:
        raise BadRequest(f"Invalid key: {problem}", fields={"key": [problem]})
    return key


def validate_namespace(namespace: str) -> str:
    """A namespace follows the key rules (it is a key prefix)."""
    if not 1 <= len(namespace) <= MAX_KEY_LENGTH or not _KEY.match(namespace) or _EMPTY_SEGMENT.search(namespace):
        problem = "a namespace is 1 to 256 characters of A-Z a-z 0-9 . _ - : / with no empty segment"
        raise BadRequest(f"Invalid namespace: {problem}", fields={"namespace": [problem]})
    return namespace


def namespaces_of(key: str) -> list[str]:
    """Every namespace of ``key``, nearest first: ``a.b/c`` → ``['a.b', 'a']``."""
    return [key[:i] for i in range(len(key) - 1, 0, -1) if key[i] in "./"]


def encode_value(value: Any) -> bytes:
    """Compact JSON of a value; 413 past 1 MiB (SPEC §3)."""
    try:
        encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except UnicodeEncodeError:
        raise BadRequest("Value contains a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text") from None
    except (ValueError, RecursionError):
        raise BadRequest("Value is not representable as JSON (NaN, Infinity or nested too deeply)") from None
    if len(encoded) > MAX_VALUE_BYTES:
        raise PayloadTooLarge(f"Value is {len(encoded)} bytes of JSON; the limit is {MAX_VALUE_BYTES}")
    return encoded


class _AclEntry(fields.String):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not _ACL_ENTRY.fullmatch(text):
            raise ValidationError("an ACL entry is a username, '*', or a prefix ending in '*' (no spaces)")
        return text


class AclSchema(Schema):
    """``{"read": [...], "write": [...]}``; a missing list means nobody (besides admins)."""

    class Meta:
        unknown = RAISE

    read = fields.List(_AclEntry(), load_default=list, validate=validate.Length(max=MAX_ACL_ENTRIES))
    write = fields.List(_AclEntry(), load_default=list, validate=validate.Length(max=MAX_ACL_ENTRIES))


_TTL = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=1, max=10 * 365 * 86400))


class PutKeySchema(Schema):
    """Body of ``PUT /keys/{key}``. Absent ``ttl``/``acls`` keep the stored ones; ``null`` clears them."""

    class Meta:
        unknown = RAISE

    value = fields.Raw(required=True, allow_none=True)
    ttl = _TTL
    acls = fields.Nested(AclSchema, allow_none=True)


class PatchKeySchema(PutKeySchema):
    """Body of ``PATCH /keys/{key}``: the value, plus metadata for admins only."""

    value = fields.Raw(allow_none=True)

    @validates_schema
    def _not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("PATCH needs at least a value")


class RollbackSchema(Schema):
    """Body of ``POST /keys/{key}/rollback``: the version whose value to write again."""

    class Meta:
        unknown = RAISE

    version = fields.Integer(strict=True, required=True, validate=validate.Range(min=1, max=2**62))


class NamespaceSchema(Schema):
    """Body of ``PUT /namespaces/{ns}``."""

    class Meta:
        unknown = RAISE

    acls = fields.Nested(AclSchema, required=True)


def load(schema: Schema, body: Any) -> dict[str, Any]:
    """Validate a decoded JSON body; 400 with per-field messages on failure."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")
    try:
        return schema.load(body)  # type: ignore[no-any-return]
    except ValidationError as exc:
        messages = exc.normalized_messages()
        summary = "; ".join(f"{name}: {_first(msg)}" for name, msg in sorted(messages.items()))
        raise BadRequest(f"Invalid request body: {summary}", fields=messages) from None


def _first(message: Any) -> str:
    if isinstance(message, list) and message:
        return _first(message[0])
    if isinstance(message, dict) and message:
        key, inner = next(iter(message.items()))
        return f"{key}: {_first(inner)}"
    return str(message)


def text_filter(raw: str | None, name: str) -> str | None:
    """A free-text query parameter compared against stored names (``actor``, ``key``): at most 256
    characters of printable text, else 400 (it goes to Postgres as is)."""
    if raw is None:
        return None
    if len(raw) > MAX_KEY_LENGTH or CONTROL_CHARACTERS.search(raw) or _SURROGATE.search(raw):
        problem = "at most 256 characters, without control characters"
        raise BadRequest(f"Invalid {name}: {problem}", fields={name: [problem]})
    return raw


def parse_limit(raw: str | None, *, default: int = 100, maximum: int = 1000) -> int:
    """A ``limit`` query parameter: 1..maximum, else 400."""
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= maximum:
        raise BadRequest(f"limit must be a whole number from 1 to {maximum}", fields={"limit": ["out of range"]})
    return limit
