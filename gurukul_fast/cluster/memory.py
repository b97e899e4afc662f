"""The one-process cluster store (`memory:`), and the node-local parts every store shares.

`LocalPresence` counts a node's connections per user and runs the grace timers;
`LocalBuckets` holds token buckets per (user, kind). The memory store is just these two
plus a set of connection keys per user; the Redis store uses them as its node-local
state and as its fallback while Redis is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gurukul_fast.broker.base import new_node_id
from gurukul_fast.cluster.base import PresenceHandler
from gurukul_fast.session import TokenBucket

__all__ = ["LocalBuckets", "LocalPresence", "MemoryClusterStore"]

logger = logging.getLogger(__name__)

BUCKET_PERIOD_S = 60.0  # limits are per minute
PRUNE_INTERVAL_S = 60.0  # idle buckets (full again) are dropped this often


class LocalBuckets:
    """Token buckets per (user, kind), created on first use, dropped once idle a period."""

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        # (user, kind) → (bucket, limit it was made for, last use, monotonic seconds)
        self._buckets: dict[tuple[str, str], tuple[TokenBucket, int, float]] = {}

    def take(self, user_id: str, kind: str, limit_per_minute: int, now: float) -> float:
        key = (user_id, kind)
        entry = self._buckets.get(key)
        if entry is None or entry[1] != limit_per_minute:
            bucket = TokenBucket(limit_per_minute, now, BUCKET_PERIOD_S)
        else:
            bucket = entry[0]
        self._buckets[key] = (bucket, limit_per_minute, now)
        return bucket.take(now)

    def prune(self, now: float) -> None:
        """Forget buckets unused for a whole period: they would be full again anyway."""
        idle = [k for k, (_, _, used) in self._buckets.items() if now - used >= BUCKET_PERIOD_S]
        for key in idle:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class LocalPresence:
    """A node's connection count per user, and the grace timers of users who left it."""

    __slots__ = ("_counts", "_grace", "_grace_s", "_on_expire")

    def __init__(self, grace_s: float, on_expire: Callable[[str], None]) -> None:
        self._grace_s = grace_s
        self._on_expire = on_expire  # the grace period of a user ended with no connection
        self._counts: dict[str, int] = {}
        self._grace: dict[str, asyncio.TimerHandle] = {}

    def opened(self, user_id: str) -> tuple[bool, bool]:
        """Count a connection: (first on this node, it ended a grace period here)."""
        count = self._counts.get(user_id, 0)
        self._counts[user_id] = count + 1
        if count:
            return False, False
        timer = self._grace.pop(user_id, None)
        if timer is not None:
            timer.cancel()
        return True, timer is not None

    def closed(self, user_id: str) -> bool:
        """Uncount a connection; True if it was the user's last here (grace starts)."""
        count = self._counts.get(user_id, 0)
        if count > 1:
            self._counts[user_id] = count - 1
            return False
        if count == 0:
            return False
        del self._counts[user_id]
        loop = asyncio.get_running_loop()
        self._grace[user_id] = loop.call_later(self._grace_s, self._expire, user_id)
        return True

    def _expire(self, user_id: str) -> None:
        self._grace.pop(user_id, None)
        try:
            self._on_expire(user_id)
        except Exception:
            logger.exception("presence expiry failed")

    def present(self) -> list[str]:
        """Users this node holds present: connected here, or within their grace period."""
        return [*self._counts, *self._grace]

    def cancel_timers(self) -> list[str]:
        """Stop every grace timer (shutdown); returns the users that were in grace."""
        users = list(self._grace)
        for timer in self._grace.values():
            timer.cancel()
        self._grace.clear()
        return users

    def count(self, user_id: str) -> int:
        return self._counts.get(user_id, 0)


class MemoryClusterStore:
    """Satisfies `ClusterStore` for one process: everything is node-local."""

    def __init__(self, *, node_id: str | None = None, presence_grace_s: float = 5.0) -> None:
        self.node_id = node_id or new_node_id()
        self._conns: dict[str, set[str]] = {}
        self._buckets = LocalBuckets()
        self._presence = LocalPresence(presence_grace_s, self._grace_ended)
        self._on_presence: PresenceHandler | None = None
        self._pruner: asyncio.TimerHandle | None = None

    async def start(self, on_presence: PresenceHandler | None = None) -> None:
        self._on_presence = on_presence
        self._schedule_prune()

    async def close(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
        self._presence.cancel_timers()

    def _schedule_prune(self) -> None:
        loop = asyncio.get_running_loop()
        self._pruner = loop.call_later(PRUNE_INTERVAL_S, self._prune)

    def _prune(self) -> None:
        self._buckets.prune(time.monotonic())
        self._schedule_prune()

    async def try_acquire(self, user_id: str, conn_key: str, limit: int) -> bool:
        keys = self._conns.setdefault(user_id, set())
        if conn_key in keys:
            return True
        if len(keys) >= limit:
            if not keys:
                del self._conns[user_id]
            return False
        keys.add(conn_key)
        return True

    async def release(self, user_id: str, conn_key: str) -> None:
        keys = self._conns.get(user_id)
        if keys is None:
            return
        keys.discard(conn_key)
        if not keys:
            del self._conns[user_id]

    async def check_rate(self, user_id: str, kind: str, limit_per_minute: int) -> float:
        return self._buckets.take(user_id, kind, limit_per_minute, time.monotonic())

    def check_rate_cached(self, user_id: str, kind: str, limit_per_minute: int) -> float | None:
        return self._buckets.take(user_id, kind, limit_per_minute, time.monotonic())

    async def connection_opened(self, user_id: str) -> bool:
        first, resumed = self._presence.opened(user_id)
        return first and not resumed

    async def connection_closed(self, user_id: str) -> None:
        self._presence.closed(user_id)

    def _grace_ended(self, user_id: str) -> None:
        if self._on_presence is not None:
            self._on_presence(user_id, False)

    @property
    def healthy(self) -> bool:
        return True
