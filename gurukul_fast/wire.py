"""Small helpers shared by the modules that build server frames: ids, clocks, records."""

from __future__ import annotations

import functools
import secrets
import time

from gurukul_fast.protocol import WireMessage
from gurukul_fast.storage import StoredMessage

__all__ = ["ASSISTANT", "iso_utc", "new_message_id", "now_ms", "to_wire"]

ASSISTANT = "assistant"  # the user id of every agent reply (SPEC)


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch: the `timestamp` of every server frame."""
    return int(time.time() * 1000)


def iso_utc(ms: int) -> str:
    """ISO-8601 UTC with milliseconds and a Z, as the SPEC's examples show."""
    second, millis = divmod(ms, 1000)
    return f"{_second_prefix(second)}.{millis:03d}Z"


@functools.lru_cache(maxsize=8)
def _second_prefix(second: int) -> str:
    # Every message of a second shares this part; formatting it once per second is what
    # takes the date formatting off the per-message path.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def new_message_id(ms: int) -> str:
    """A server message id, `msg-<ms>-<random>`: sortable by time, unique without a lookup."""
    return f"msg-{ms}-{secrets.token_hex(5)}"


def to_wire(message: StoredMessage) -> WireMessage:
    """The SPEC `message` object for a stored message."""
    return WireMessage(
        id=message.id,
        chat_id=message.chat_id,
        user_id=message.user_id,
        agent_id=message.agent_id,
        content=message.content,
        role=message.role,
        timestamp=iso_utc(message.created_at_ms),
        seq=message.seq,
        metadata=message.metadata,
    )
