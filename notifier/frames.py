"""WebSocket frames built once and written as-is to every subscriber's transport (RFC 6455 §5.2).

Server-to-client frames are unmasked; the watch endpoint disables compression, so these bytes are
exactly what aiohttp itself would write for ``send_str``.
"""

from __future__ import annotations

import json
from typing import Any


def text_frame(payload: str) -> bytes:
    """A final, unmasked text frame carrying ``payload``."""
    data = payload.encode()
    size = len(data)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + data


def json_frame(message: Any) -> bytes:
    """A text frame of compact JSON."""
    return text_frame(json.dumps(message, separators=(",", ":"), ensure_ascii=False))
