"""Per-connection and per-user policy: rate limits, input checks, typing throttle. No I/O.

Everything here is synchronous and takes `now` (monotonic seconds) as an argument, so the
unit tests drive it without a clock or a loop.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from enum import Enum

from gurukul_fast.auth import Principal
from gurukul_fast.config import Config

__all__ = [
    "ConnectionState",
    "InputError",
    "RateKind",
    "RateLimits",
    "TokenBucket",
    "TypingThrottle",
    "UserRegistry",
    "check_chat_id",
    "clean_content",
]

# Chat ids travel in URLs, logs and keys of every backend: keep them boring.
_CHAT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]*\Z")
# C0/C1 control characters except \t and \n; DEL too. Stored text never carries them.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class InputError(Exception):
    """Client input was refused; `message` and `code` go into the `error` frame."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def check_chat_id(chat_id: str, max_length: int) -> str:
    """Return `chat_id` if it is acceptable, else raise InputError(400)."""
    if not chat_id or len(chat_id) > max_length or not _CHAT_ID.match(chat_id):
        raise InputError("Invalid chatId", 400)
    return chat_id


def clean_content(content: str, max_length: int) -> str:
    """Normalise message text (NFC, no control characters) and enforce the length limit.

    Raises InputError 400 for empty content and 413 for content over `max_length` characters.
    """
    if len(content) > max_length * 4:  # cheap reject before normalising a huge string
        raise InputError(f"Message too long (max {max_length} characters)", 413)
    text = unicodedata.normalize("NFC", _CONTROL.sub("", content))
    if not text.strip():
        raise InputError("Message content is empty", 400)
    if len(text) > max_length:
        raise InputError(f"Message too long (max {max_length} characters)", 413)
    return text


class RateKind(Enum):
    MESSAGE = "message"
    TYPING = "typing"
    RECEIPT = "read_receipt"
    CONTROL = "control"


class TokenBucket:
    """`capacity` events at once, refilled at `capacity` per `period_s` (60 s: per minute)."""

    __slots__ = ("_capacity", "_rate", "_tokens", "_updated")

    def __init__(self, capacity: int, now: float, period_s: float = 60.0) -> None:
        self._capacity = float(capacity)
        self._rate = capacity / period_s
        self._tokens = float(capacity)
        self._updated = now

    def take(self, now: float) -> float:
        """Spend one token: return 0.0 if allowed, else the seconds until one is available."""
        elapsed = now - self._updated
        if elapsed > 0:
            self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
            self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


class RateLimits:
    """One bucket per kind for one user, shared by all of the user's connections."""

    __slots__ = ("_buckets",)

    def __init__(self, config: Config, now: float) -> None:
        self._buckets = {
            RateKind.MESSAGE: TokenBucket(config.message_rate_limit, now),
            RateKind.TYPING: TokenBucket(config.typing_rate_limit, now),
            RateKind.RECEIPT: TokenBucket(config.receipt_rate_limit, now),
            RateKind.CONTROL: TokenBucket(config.control_rate_limit, now),
        }

    def take(self, kind: RateKind, now: float) -> float:
        """0.0 if the event is allowed, else seconds until it would be."""
        return self._buckets[kind].take(now)


@dataclass(slots=True)
class _UserEntry:
    limits: RateLimits
    connections: int = 0


class UserRegistry:
    """Users connected to this process: connection counts (for the per-user cap) and limits."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._users: dict[str, _UserEntry] = {}

    def connection_count(self, user_id: str) -> int:
        entry = self._users.get(user_id)
        return entry.connections if entry else 0

    def attach(self, user_id: str, now: float) -> RateLimits:
        """Count a new connection of `user_id`; return the user's shared rate limits."""
        entry = self._users.get(user_id)
        if entry is None:
            entry = self._users[user_id] = _UserEntry(RateLimits(self._config, now))
        entry.connections += 1
        return entry.limits

    def detach(self, user_id: str) -> bool:
        """Forget one connection; return True when it was the user's last one here."""
        entry = self._users.get(user_id)
        if entry is None:
            return True
        entry.connections -= 1
        if entry.connections <= 0:
            del self._users[user_id]
            return True
        return False

    def __len__(self) -> int:
        return len(self._users)


@dataclass(slots=True)
class ConnectionState:
    """What the server knows about one connection, apart from its socket."""

    conn_id: int
    principal: Principal
    limits: RateLimits
    batch: bool = False  # connected with ?batch=1
    stream: bool = False  # connected with ?stream=1: gets partial agent text (agent_stream)
    joined: set[str] = field(default_factory=set)  # chats this connection receives
    allowed: set[str] = field(default_factory=set)  # chats whose access check passed
    refused_in_a_row: int = 0  # consecutive 429s, for the abuse close

    @property
    def user_id(self) -> str:
        return self.principal.user_id

    def check_rate(self, kind: RateKind, now: float, abuse_limit: int) -> float:
        """0.0 if allowed; else seconds to wait. Raises AbuseError past `abuse_limit` in a row."""
        wait = self.limits.take(kind, now)
        if wait == 0.0:
            self.refused_in_a_row = 0
            return 0.0
        self.refused_in_a_row += 1
        if self.refused_in_a_row > abuse_limit:
            raise AbuseError
        return wait


class AbuseError(Exception):
    """The client kept sending past its rate limit; close the connection with 1008."""


class TypingThrottle:
    """Decides which typing updates are relayed, per (user, chat).

    A change of state is always relayed; a repeated `isTyping: true` only once per
    `interval_s`, so a client that sends one per keystroke costs the room one frame a second.
    """

    __slots__ = ("_interval", "_last")

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._last: dict[tuple[str, str], tuple[bool, float]] = {}

    def should_relay(self, user_id: str, chat_id: str, is_typing: bool, now: float) -> bool:
        key = (user_id, chat_id)
        previous = self._last.get(key)
        if previous is None and not is_typing:
            return False  # nothing to clear: never relayed, or already expired
        if previous is not None:
            was_typing, at = previous
            if was_typing == is_typing and (not is_typing or now - at < self._interval):
                return False
        if is_typing:
            self._last[key] = (True, now)
        else:
            self._last.pop(key, None)
        return True

    def is_typing(self, user_id: str, chat_id: str) -> bool:
        return (user_id, chat_id) in self._last

    def forget(self, user_id: str, chat_id: str) -> None:
        """Drop the state (the typing expired or the user left)."""
        self._last.pop((user_id, chat_id), None)
