"""JWT verification against a JWKS fetched asynchronously (SPEC §2).

The algorithm comes from the JWK, never from the token header; only asymmetric keys are accepted.
Verified tokens are cached until they expire, so a hot read does not pay for RSA every time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import jwt
from aiohttp import web
from jwt.exceptions import PyJWKError, PyJWTError

from shared.errors import Unauthorized
from shared.security.acl import Principal
from shared.text import unprintable

log = logging.getLogger(__name__)

ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES256K", "ES384", "ES512", "EdDSA"}
)
LEEWAY_SECONDS = 30
UNKNOWN_KID_REFRESH_SECONDS = 30.0
MAX_USERNAME_LENGTH = 256
#: The claims that hold times, and the range a date can hold (0001-01-01 to 9999-12-31T23:59:59Z):
#: anything outside is refused before it reaches ``float()`` or a timer (10**400 overflowed to a 500).
TIME_CLAIMS = ("exp", "nbf", "iat")
EARLIEST_TIMESTAMP = -62_135_596_800
LATEST_TIMESTAMP = 253_402_300_799
_TOKEN_CACHE_SIZE = 10_000
MAX_TOKEN_LENGTH = 16 * 1024
# A JWT is three base64url parts; anything else is refused before any parsing (SPEC §2).
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class JwksError(Exception):
    """The JWKS could not be fetched or parsed."""


class JwksCache:
    """The signing keys at ``JWKS_URL``: fetched with aiohttp, refreshed periodically and on unknown kid."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self._session = session
        self._keys: dict[str, jwt.PyJWK] = {}
        self._last_kid_refresh = float("-inf")
        self._lock = asyncio.Lock()
        self.generation = 0  # bumped whenever a kid disappears, to drop cached verifications

    @property
    def loaded(self) -> bool:
        return bool(self._keys)

    async def refresh(self) -> None:
        """Fetch the JWKS now; keep the old keys if the fetch fails."""
        async with self._lock:
            document = await self._fetch()
            keys = parse_jwks(document)
            if set(self._keys) - set(keys):
                self.generation += 1
            self._keys = keys

    async def key_for(self, kid: str | None) -> jwt.PyJWK:
        """The key a token names; refresh (rate-limited) when the kid is unknown."""
        key = self._lookup(kid)
        if key is None and time.monotonic() - self._last_kid_refresh >= UNKNOWN_KID_REFRESH_SECONDS:
            # Only refreshes caused by unknown kids count here: anyone can send a token with a random
            # kid, and that must not make us hammer the JWKS endpoint.
            self._last_kid_refresh = time.monotonic()
            try:
                await self.refresh()
            except JwksError as exc:
                log.warning("JWKS refresh failed: %s", exc)
            key = self._lookup(kid)
        if key is None:
            raise Unauthorized("Invalid JWT: signing key not found" if kid else "Invalid JWT: no kid in header")
        return key

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            # A JWKS with a single key may sign tokens without a kid.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _fetch(self) -> Any:
        parts = urlsplit(self.url)
        try:
            if parts.scheme == "file":
                text = await asyncio.to_thread(Path(unquote(parts.path)).read_text)
                return json.loads(text)
            timeout = aiohttp.ClientTimeout(total=5)
            async with self._session.get(self.url, timeout=timeout) as response:
                if response.status != 200:
                    raise JwksError(f"JWKS endpoint answered HTTP {response.status}")
                return await response.json(content_type=None)
        except (TimeoutError, OSError, aiohttp.ClientError, ValueError) as exc:
            raise JwksError(f"cannot fetch JWKS from {self.url}: {exc.__class__.__name__}: {exc}") from None


def parse_jwks(document: Any) -> dict[str, jwt.PyJWK]:
    """Usable asymmetric signing keys by kid; symmetric and unusable keys are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("JWKS document has no 'keys' list")
    keys: dict[str, jwt.PyJWK] = {}
    for index, data in enumerate(document["keys"]):
        if not isinstance(data, dict) or data.get("use", "sig") != "sig" or data.get("kty") == "oct":
            continue
        try:
            key = jwt.PyJWK(data)
        except (PyJWKError, PyJWTError, ValueError, TypeError) as exc:
            log.warning("skipping JWKS key #%d: %s", index, exc)
            continue
        if key.algorithm_name not in ASYMMETRIC:
            continue
        keys[str(data.get("kid", f"#{index}"))] = key
    return keys


class TokenVerifier:
    """Turns a bearer token into a :class:`Principal` or raises 401."""

    def __init__(
        self,
        jwks: JwksCache,
        *,
        admins: frozenset[str],
        issuer: str | None = None,
        audience: str | None = None,
    ) -> None:
        self.jwks = jwks
        self.admins = admins
        self.issuer = issuer
        self.audience = audience
        self._cache: OrderedDict[str, tuple[Principal, float, int]] = OrderedDict()

    async def verify(self, token: str) -> tuple[Principal, float]:
        """Verify ``token``; return the caller and the token's ``exp`` (epoch seconds)."""
        now = time.time()
        hit = self._cache.get(token)
        if hit is not None:
            principal, exp, generation = hit
            if now <= exp + LEEWAY_SECONDS and generation == self.jwks.generation:
                self._cache.move_to_end(token)
                return principal, exp
            del self._cache[token]
        principal, exp = await self._verify_uncached(token)
        self._cache[token] = (principal, exp, self.jwks.generation)
        if len(self._cache) > _TOKEN_CACHE_SIZE:
            self._cache.popitem(last=False)
        return principal, exp

    async def _verify_uncached(self, token: str) -> tuple[Principal, float]:
        if len(token) > MAX_TOKEN_LENGTH or not _TOKEN_SHAPE.fullmatch(token):
            raise Unauthorized("Invalid JWT: malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except (PyJWTError, ValueError, TypeError):
            raise Unauthorized("Invalid JWT: malformed token") from None
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("Invalid JWT: malformed kid")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ASYMMETRIC:
            shown = repr(alg)[:40] if isinstance(alg, str) else "of the wrong type"
            raise Unauthorized(f"Invalid JWT: algorithm {shown} is not accepted")
        key = await self.jwks.key_for(kid)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[key.algorithm_name],
                leeway=LEEWAY_SECONDS,
                issuer=self.issuer,
                audience=self.audience,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Invalid JWT: token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("Invalid JWT: token is not yet valid") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthorized("Invalid JWT: algorithm does not match the signing key") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"Invalid JWT: missing '{exc.claim}' claim") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("Invalid JWT: wrong issuer") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("Invalid JWT: wrong audience") from None
        except PyJWTError:
            raise Unauthorized("Invalid JWT: signature verification failed") from None
        except (OverflowError, ValueError, TypeError):  # PyJWT's int() of a time claim such as 1e400
            raise Unauthorized("Invalid JWT: a time claim is not a number a date can hold") from None
        for name in TIME_CLAIMS:
            if name in claims and not _is_timestamp(claims[name]):
                raise Unauthorized(f"Invalid JWT: '{name}' must be a number a date can hold")
        username = claims.get("username")
        if not isinstance(username, str):
            raise Unauthorized("Invalid JWT: 'username' claim must be a non-empty string")
        problem = username_problem(username)
        if problem:
            raise Unauthorized(f"Invalid JWT: 'username' claim {problem}")
        return Principal(username=username, is_admin=username in self.admins), float(claims["exp"])


VERIFIER = web.AppKey("verifier", TokenVerifier)


def _is_timestamp(value: Any) -> bool:
    """A number of seconds since the epoch that a date can hold (years 1 to 9999; SPEC §2)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and EARLIEST_TIMESTAMP <= value <= LATEST_TIMESTAMP  # False for NaN too
    )


def username_problem(username: str) -> str | None:
    """Why a ``username`` claim is refused (SPEC §2), or None: it names the caller in ACLs, the audit
    log, the logs and the rate limiter's Redis keys, so it is a non-empty string of at most 256
    characters of valid Unicode with nothing unprintable (:func:`shared.text.unprintable`). Checked
    before anything else sees the name: one odd name must never reach a batch it could fail."""
    if not username.strip():
        return "must be a non-empty string"
    if len(username) > MAX_USERNAME_LENGTH:
        return f"must be at most {MAX_USERNAME_LENGTH} characters"
    char = unprintable(username)
    if char is not None:
        return f"must not contain control, format or surrogate characters (U+{ord(char):04X})"
    return None


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer …`` header, or 401."""
    if not authorization:
        raise Unauthorized("Missing Authorization: Bearer <jwt> header")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <jwt>'")
    return token.strip()
