"""Where keys, namespaces, ACL entries and request bodies are validated (SPEC §3–5)."""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from marshmallow import INCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from shared.errors import BadRequest, PayloadTooLarge

MAX_KEY_LENGTH = 256
MAX_VALUE_BYTES = 1_048_576
MAX_ACL_ENTRIES = 1000
MAX_TXN_OPS = 128  # ops in one POST /txn (SPEC §4); compares too
DEFAULT_LIMIT = 100  # a page of a listing, unless ``limit`` says otherwise
MAX_LIMIT = 1000
MAX_TTL_SECONDS = 10 * 365 * 86400
MAX_VERSION = 2**62  # versions, revisions and ids are Postgres bigints
RESERVED_SUFFIXES = ("history", "rollback")

# The patterns below are written once, in the dialect Python and JSON Schema (ECMA-262) share, and
# published as they are in /openapi.json: what the document allows is what the server accepts.
# Python reads them with ``fullmatch`` (its ``$`` would also match before a final newline).

#: A namespace, and a key without the reserved-suffix rule: segments of ``A-Z a-z 0-9 _ : -`` joined
#: by single ``.`` or ``/``, starting with a letter or digit (no empty segment, SPEC §3).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_:-]*(?:[./][A-Za-z0-9_:-]+)*$"
#: A key may not end in ``/history`` or ``/rollback`` (the sub-resources of SPEC §4).
RESERVED_SUFFIX_PATTERN = "/(?:" + "|".join(RESERVED_SUFFIXES) + ")$"
#: An ACL entry: ``*``, or up to 256 characters without ``*``, spaces or control characters, optionally
#: ending in ``*`` (a prefix). Spaces are spelled out: Python's and ECMA's ``\s`` differ.
ACL_ENTRY_PATTERN = r"^(?:\*|[^*\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]{1,256}\*?)$"
#: A free-text filter (``actor``, ``key`` of ``GET /audit``): printable, at most 256 characters.
TEXT_FILTER_PATTERN = r"^[^\x00-\x1f\x7f]{0,256}$"
#: A whole number in a query string (``limit``, ``since_version``): ASCII digits only, at most 18 of them
#: (so it fits a Postgres bigint).
DIGITS_PATTERN = r"^[0-9]{1,18}$"
LARGEST_WHOLE_NUMBER = 10**18 - 1

_NAME = re.compile(NAME_PATTERN)
_KEY_CHARACTERS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")  # only to say which rule a bad name breaks
_RESERVED_SUFFIX = re.compile(RESERVED_SUFFIX_PATTERN)
_ACL_ENTRY = re.compile(ACL_ENTRY_PATTERN)
_TEXT_FILTER = re.compile(TEXT_FILTER_PATTERN)
_DIGITS = re.compile(DIGITS_PATTERN)
# What aiohttp makes of bytes that are not UTF-8, and what a JSON "\ud800" escape decodes to: not text,
# so no JSON Schema string either; refused on top of the patterns.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid key name, or None when it is."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        return f"a key is 1 to {MAX_KEY_LENGTH} characters"
    if not _NAME.fullmatch(key):
        if not _KEY_CHARACTERS.fullmatch(key):
            return "a key starts with a letter or digit and uses only A-Z a-z 0-9 . _ - : /"
        return "a key has no empty segment ('..', '//', or a trailing '.' or '/')"
    found = _RESERVED_SUFFIX.search(key)
    if found:
        return f"a key may not end in {found.group()}"
    return None


def validate_key(key: str) -> str:
    """Return ``key`` or raise 400 naming the rule it breaks."""
    problem = key_problem(key)
    if problem:
        raise BadRequest(f"Invalid key: {problem}", fields={"key": [problem]})
    return key


def validate_namespace(namespace: str) -> str:
    """A namespace follows the key rules (it is a key prefix)."""
    if not 1 <= len(namespace) <= MAX_KEY_LENGTH or not _NAME.fullmatch(namespace):
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
        if not _ACL_ENTRY.fullmatch(text) or _SURROGATE.search(text):
            raise ValidationError("an ACL entry is a username, '*', or a prefix ending in '*' (no spaces)")
        return text


class AclSchema(Schema):
    """``{"read": [...], "write": [...]}``; a missing list means nobody (besides admins)."""

    class Meta:
        unknown = RAISE

    read = fields.List(_AclEntry(), load_default=list, validate=validate.Length(max=MAX_ACL_ENTRIES))
    write = fields.List(_AclEntry(), load_default=list, validate=validate.Length(max=MAX_ACL_ENTRIES))


class WholeNumber(fields.Integer):
    """An integer as JSON counts them: ``3`` and ``3.0`` alike (JSON has one number type, and JSON
    Schema's ``integer`` admits both); never ``3.5``, a string or a boolean."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return super()._deserialize(value, attr, data, **kwargs)  # type: ignore[no-any-return]


class JsonBoolean(fields.Boolean):
    """``true`` or ``false``, and nothing marshmallow would take for them (``1``, ``"yes"``)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


_TTL = WholeNumber(allow_none=True, validate=validate.Range(min=1, max=MAX_TTL_SECONDS))


class BodySchema(Schema):
    """A request body: a JSON object. ``example`` and ``hint`` tell a caller who sent anything else
    (a bare ``"on"`` for a value, say) what the body looks like."""

    example: ClassVar[str] = "{}"
    hint: ClassVar[str] = ""

    class Meta:
        unknown = RAISE


class PutKeySchema(BodySchema):
    """Body of ``PUT /keys/{key}``. Absent ``ttl``/``acls`` keep the stored ones; ``null`` clears them."""

    example = '{"value": "on"}'
    hint = 'the value, any JSON, goes in its "value" field ("ttl" and "acls" may go beside it)'

    value = fields.Raw(required=True, allow_none=True)
    ttl = _TTL
    acls = fields.Nested(AclSchema, allow_none=True)


class PatchKeySchema(PutKeySchema):
    """Body of ``PATCH /keys/{key}``: the value, plus metadata for admins only."""

    hint = 'the new value, any JSON, goes in its "value" field'

    value = fields.Raw(allow_none=True)

    @validates_schema
    def _not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("PATCH needs at least a value")


class RollbackSchema(BodySchema):
    """Body of ``POST /keys/{key}/rollback``: the version whose value to write again."""

    example = '{"version": 3}'
    hint = "the version whose value to write again"

    version = WholeNumber(required=True, validate=validate.Range(min=1, max=MAX_VERSION))


class CompareSchema(BodySchema):
    """A compare of ``POST /txn``: the key is live at ``version``, or is (not) live (``exists``)."""

    example = '{"key": "app.flag", "version": 3}'

    key = fields.String(required=True)
    version = WholeNumber(validate=validate.Range(min=1, max=MAX_VERSION))
    exists = JsonBoolean()

    @validates_schema
    def _one_test(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("version" in data) == ("exists" in data):
            raise ValidationError('a compare tests "version" or "exists", one of them')


#: The ops of ``POST /txn``; each is checked as its own call's body (PutKeySchema, PatchKeySchema).
TXN_OPS = ("put", "patch", "delete")


class TxnOpSchema(BodySchema):
    """An op of ``POST /txn``: what it is and its key; the rest is the body of its own call."""

    class Meta:
        unknown = INCLUDE

    example = '{"op": "put", "key": "app.flag", "value": true}'

    op = fields.String(required=True, validate=validate.OneOf(TXN_OPS))
    key = fields.String(required=True)


class TxnSchema(BodySchema):
    """Body of ``POST /txn``: compares, then 1–128 ops (each element is checked on its own, so an
    error can name its index)."""

    example = '{"ops": [{"op": "put", "key": "app.flag", "value": true}]}'
    hint = 'the writes go in "ops", a list of {"op": "put"|"patch"|"delete", "key", ...}'

    compare = fields.List(fields.Raw(), load_default=list, validate=validate.Length(max=MAX_TXN_OPS))
    ops = fields.List(fields.Raw(), required=True, validate=validate.Length(min=1, max=MAX_TXN_OPS))


class NamespaceSchema(BodySchema):
    """Body of ``PUT /namespaces/{ns}``."""

    example = '{"acls": {"read": ["*"], "write": ["admin-user"]}}'

    acls = fields.Nested(AclSchema, required=True)


def load(schema: BodySchema, body: Any) -> dict[str, Any]:
    """Validate a decoded JSON body; 400 with per-field messages on failure."""
    if not isinstance(body, dict):
        hint = f": {schema.hint}" if schema.hint else ""
        raise BadRequest(f"The request body must be a JSON object like {schema.example}, not {_json_kind(body)}{hint}")
    try:
        return schema.load(body)  # type: ignore[no-any-return]
    except ValidationError as exc:
        messages = exc.normalized_messages()
        summary = "; ".join(f"{name}: {_first(msg)}" for name, msg in sorted(messages.items()))
        raise BadRequest(f"Invalid request body: {summary}", fields=messages) from None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    kinds = ((bool, "boolean"), (str, "string"), ((int, float), "number"), (list, "array"))
    return next(f"a JSON {name}" for kind, name in kinds if isinstance(value, kind))


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
    if not _TEXT_FILTER.fullmatch(raw) or _SURROGATE.search(raw):
        problem = "at most 256 characters, without control characters"
        raise BadRequest(f"Invalid {name}: {problem}", fields={name: [problem]})
    return raw


def parse_since_version(raw: str, *, bigint: bool = True) -> int:
    """A ``since_version`` query parameter, the poll's (``GET /keys``) and the watch's: a revision, as
    ASCII digits; else :class:`BadRequest` (a 400, or on ``/watch`` an error event and close 4400).

    The poll hands it to Postgres, so it takes at most 18 digits (``DIGITS_PATTERN``, as the OpenAPI
    says); the watch compares it in Python (``bigint=False``), where any number beyond the head gives
    ``reset`` and a snapshot, as a JSON ``since_version`` in a subscribe message does."""
    if not (_DIGITS.fullmatch(raw) if bigint else raw.isascii() and raw.isdigit()):
        raise BadRequest("since_version must be a whole number >= 0", fields={"since_version": ["not a whole number"]})
    return int(raw)


def parse_limit(raw: str | None, *, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    """A ``limit`` query parameter: 1..maximum, else 400."""
    if raw is None:
        return default
    limit = int(raw) if _DIGITS.fullmatch(raw) else 0
    if not 1 <= limit <= maximum:
        raise BadRequest(f"limit must be a whole number from 1 to {maximum}", fields={"limit": ["out of range"]})
    return limit
