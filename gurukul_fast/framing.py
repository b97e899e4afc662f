"""Server-to-client WebSocket TEXT frames built once per broadcast.

Why build frames ourselves: a broadcast goes to many members, and a member often gets
several frames in one loop turn (a message and the chat summary after it). Framing the
payload once (RFC 6455 §5.2: server frames are unmasked) lets every member's write be a
plain byte copy, and lets one connection's frames of a loop turn leave in one syscall.
"""

from __future__ import annotations

import struct

__all__ = ["text_frame"]

_FIN_TEXT = 0x81
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """Return `payload` as one complete, unmasked, final TEXT frame."""
    size = len(payload)
    if size < 126:
        return bytes((_FIN_TEXT, size)) + payload
    if size < 65536:
        return _HEADER_16.pack(_FIN_TEXT, 126, size) + payload
    return _HEADER_64.pack(_FIN_TEXT, 127, size) + payload
