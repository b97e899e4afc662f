"""The cluster store contract: per-user limits and presence that hold across nodes.

Three jobs, each keyed by user:

- *Connection cap.* `try_acquire(user, conn_key, limit)` before an upgrade, `release` when
  the connection closes. Counts are kept per node, so a node that dies stops counting
  once its heartbeat lapses (`node_ttl_s`, default 15 s), with nothing to clean up first.
- *Rate limits.* `check_rate(user, kind, limit_per_minute)` → 0.0 or the seconds to wait,
  one token bucket per (user, kind) shared by every node.
- *Presence.* `connection_opened(user)` → True when the user just came online cluster-wide
  (write `users.is_online = true`); `connection_closed(user)` starts the grace period
  (`presence_grace_s`, default 5 s) and the user is reported offline through the
  `PresenceHandler` given to `start()` only if no connection appeared anywhere in the
  meantime — a reconnect within the grace period, to any node, does not flap.

`memory:` (one process) and `redis://` stores; `load_cluster_store(url)` picks one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = [
    "ClusterStore",
    "ClusterStoreUnavailable",
    "PresenceHandler",
    "load_cluster_store",
]

PresenceHandler = Callable[[str, bool], None]
"""(user_id, online) for the transitions the store finds by itself: offline after the
grace period (also for the users of a node that died), and back online for the users of a
node that was wrongly declared dead. Called on the loop thread."""


class ClusterStoreUnavailable(Exception):
    """The store cannot be reached at start-up (later outages degrade to node-local)."""


@runtime_checkable
class ClusterStore(Protocol):
    """Cluster-wide limits and presence. Methods are called on the loop thread.

    While the backing service is down the store answers from node-local state (each node
    enforces the limits on its own, presence is per node) and `healthy` is False; it
    resynchronises by itself when the service is back.
    """

    node_id: str

    async def start(self, on_presence: PresenceHandler | None = None) -> None:
        """Connect, register this node, start the heartbeat. Raises
        `ClusterStoreUnavailable` if the service is unreachable now."""
        ...

    async def close(self) -> None:
        """Withdraw this node's connections and presence (clean shutdown), disconnect."""
        ...

    async def try_acquire(self, user_id: str, conn_key: str, limit: int) -> bool:
        """Count one connection of `user_id` unless the user has `limit` live ones
        cluster-wide; True if counted. `conn_key` is unique on this node (the conn id);
        acquiring a key twice counts it once. One round trip."""
        ...

    async def release(self, user_id: str, conn_key: str) -> None:
        """Stop counting a connection counted by `try_acquire` (unknown keys: no-op)."""
        ...

    async def check_rate(self, user_id: str, kind: str, limit_per_minute: int) -> float:
        """Spend one token of the user's `kind` bucket: 0.0 if allowed, else the seconds
        until one is available. Usually answered from a local lease, without I/O."""
        ...

    def check_rate_cached(self, user_id: str, kind: str, limit_per_minute: int) -> float | None:
        """The synchronous fast path of `check_rate`: 0.0 or the wait if it can answer
        without I/O, None if the caller must `await check_rate(...)`."""
        ...

    async def connection_opened(self, user_id: str) -> bool:
        """A connection of `user_id` opened here; True if the user just came online
        cluster-wide (the caller records it). No I/O unless it is the user's first
        connection on this node."""
        ...

    async def connection_closed(self, user_id: str) -> None:
        """A connection of `user_id` closed here. If it was the user's last one on this
        node, the offline report (via `PresenceHandler`) follows after the grace period
        unless a connection of the user exists anywhere by then."""
        ...

    @property
    def healthy(self) -> bool:
        """False while the backing service is unreachable (limits are node-local then)."""
        ...


def load_cluster_store(url: str, *, node_id: str | None = None) -> ClusterStore:
    """The store for `url`: `memory:` (one process) or `redis://…` (`rediss://`, `unix://`).

    A NATS broker has no store of its own here: give it a Redis URL, or `memory:` for
    node-local limits and presence.
    """
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        from gurukul_fast.cluster.memory import MemoryClusterStore

        return MemoryClusterStore(node_id=node_id)
    if scheme in ("redis", "rediss", "unix"):
        from gurukul_fast.cluster.redis_store import RedisClusterStore

        return RedisClusterStore(url, node_id=node_id)
    raise ValueError(f"no cluster store for scheme {scheme!r} (memory:, redis://)")
