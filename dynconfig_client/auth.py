"""Tokens: a fixed string, or a callable (sync or async) returning a fresh one each time it is asked."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

TokenSource = str | Callable[[], str] | Callable[[], Awaitable[str]]


async def resolve_token(source: TokenSource) -> str:
    """The current token of ``source`` (calling it when it is a callable)."""
    if isinstance(source, str):
        return source
    token = source()
    if inspect.isawaitable(token):
        token = await token
    if not isinstance(token, str) or not token:
        raise TypeError("the token callable must return a non-empty string")
    return token
