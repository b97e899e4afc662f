"""The broker contract: how one node shares its chats' events with the other nodes.

Theory of operation: every event a node publishes locally (`RoomTable.publish`) is also
handed to `Broker.publish`, which encodes it once and sends it, fire-and-forget, on the
chat's own channel (`gurukul:chat:<chat_id>` on Redis, `gurukul.chat.<chat_id>` on NATS).
A node subscribes only to the chats that have local members, so it receives only the
traffic it can deliver: one shared channel for every room made every node decode every
event of the cluster. Events from the node itself come back on its own subscriptions and
are dropped on receipt (it already delivered them locally); the others are handed to
`DeliverRemote` on the loop thread, which publishes them into the local room table.

Guarantees: per-node publish order is kept (per chat; on Redis across chats too); an event
is delivered at most once per node (a retried batch is de-duplicated by the sender's
sequence number). Delivery is not guaranteed across an outage: messages are durable in
storage, so after a reconnect the broker calls `GapHandler` with the chats whose remote
events may have been missed, and the chat layer re-reads them from storage (clients that
reconnect recover with `lastMessageId` anyway).

Backends are chosen by `BROKER_URL` scheme: `memory:` (one process, the default),
`redis://` / `rediss://` / `unix://` (Redis pub/sub, redis-py asyncio), `nats://` /
`tls://` (NATS core, nats-py). Third-party backends register a class under the entry-point
group `gurukul_fast.brokers`; it is called as `Backend(url)`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import Protocol, cast, runtime_checkable

from gurukul_fast.rooms import RoomEvent

__all__ = [
    "ENTRY_POINT_GROUP",
    "Broker",
    "BrokerError",
    "BrokerStats",
    "BrokerUnavailable",
    "DeliverRemote",
    "GapHandler",
    "UnknownBrokerScheme",
    "broker_scheme",
    "load_broker",
    "new_node_id",
]

ENTRY_POINT_GROUP = "gurukul_fast.brokers"

DeliverRemote = Callable[[RoomEvent], None]
"""Called on the loop thread for each event from ANOTHER node (`exclude_conn` is 0)."""

GapHandler = Callable[[frozenset[str]], None]
"""Called on the loop thread with chats whose remote events may have been missed (after a
reconnect, or when another node had to discard events for them). Re-read those chats'
messages from storage past the last seq delivered locally."""


class BrokerError(Exception):
    """Base class of the errors a broker raises on purpose."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached at start-up (later outages are handled inside)."""


class UnknownBrokerScheme(BrokerError, ValueError):
    """No broker backend handles the URL's scheme."""


@dataclass(slots=True)
class BrokerStats:
    """Counters for metrics and tests; every field only grows."""

    published: int = 0  # events handed to the server
    received: int = 0  # remote events handed to DeliverRemote
    own_dropped: int = 0  # our own events coming back, dropped
    duplicates: int = 0  # remote events seen before (a retried batch), dropped
    discarded: int = 0  # events not sent: lossy while down, or the outbox was full
    malformed: int = 0  # undecodable payloads on our channels, dropped
    subscribe_commands: int = 0  # SUBSCRIBE/SUB round trips (batched)
    unsubscribe_commands: int = 0
    reconnects: int = 0  # outages recovered from


def new_node_id() -> str:
    """A process-unique node id (uuid4 hex): how a node recognises its own events."""
    return uuid.uuid4().hex


@runtime_checkable
class Broker(Protocol):
    """Shares chat events between nodes. All methods are called on the loop thread.

    Call order: `await start(deliver)` once, then any number of `subscribe`/`unsubscribe`/
    `publish`, then `await close()`.
    """

    node_id: str  # unique per process (uuid4 hex)

    async def start(self, deliver: DeliverRemote, on_gap: GapHandler | None = None) -> None:
        """Connect and start receiving. Raises `BrokerUnavailable` if unreachable now;
        later outages are retried inside (with `healthy` False meanwhile)."""
        ...

    async def close(self) -> None:
        """Send what is queued (briefly), unsubscribe, disconnect. Safe to call twice."""
        ...

    def subscribe(self, chat_id: str) -> None:
        """Receive the chat's remote events. Call when it gets its first local member.

        Synchronous and idempotent (a set, not a reference count); the calls of one loop
        turn / few milliseconds are sent as one SUBSCRIBE.
        """
        ...

    def unsubscribe(self, chat_id: str) -> None:
        """Stop receiving the chat. Call when its last local member leaves."""
        ...

    def publish(self, event: RoomEvent) -> None:
        """Send `event` to the other nodes. Synchronous, fire-and-forget, never blocks
        local delivery; encoded once; per-node publish order is preserved."""
        ...

    @property
    def healthy(self) -> bool:
        """False while disconnected (`/ws/health` reports "degraded")."""
        ...

    @property
    def stats(self) -> BrokerStats: ...

    @property
    def subscriptions(self) -> frozenset[str]:
        """The chats this node currently wants (applied or about to be)."""
        ...

    async def settle(self, timeout_s: float = 5.0) -> bool:
        """Wait until every subscribe/unsubscribe so far is in effect on the server and
        every queued publish was sent; False on timeout (e.g. while down).

        Call after `subscribe` and before reading a chat's history on join, so no remote
        message falls between the history read and the subscription.
        """
        ...


# Built in: scheme → "module:Class". Entry points may add schemes, not replace these.
_BUILTIN = {
    "memory": "gurukul_fast.broker.memory:MemoryBroker",
    "redis": "gurukul_fast.broker.redis_broker:RedisBroker",
    "rediss": "gurukul_fast.broker.redis_broker:RedisBroker",
    "unix": "gurukul_fast.broker.redis_broker:RedisBroker",
    "nats": "gurukul_fast.broker.nats_broker:NatsBroker",
    "tls": "gurukul_fast.broker.nats_broker:NatsBroker",
}


def broker_scheme(url: str) -> str:
    """The scheme of a broker URL, lower case (`redis://h:6379/0` → `redis`)."""
    return url.split(":", 1)[0].lower()


def load_broker(url: str) -> Broker:
    """Construct (but do not start) the broker for `url`'s scheme.

    Raises `UnknownBrokerScheme` naming the installed schemes.
    """
    scheme = broker_scheme(url)
    target = _BUILTIN.get(scheme)
    if target is not None:
        module_name, _, class_name = target.partition(":")
        backend_class = getattr(import_module(module_name), class_name)
    else:
        found = entry_points(group=ENTRY_POINT_GROUP, name=scheme)
        if not found:
            known = sorted({*_BUILTIN, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
            raise UnknownBrokerScheme(
                f"no broker for scheme {scheme!r} (known: {', '.join(known)})"
            )
        backend_class = next(iter(found)).load()
    return cast(Broker, backend_class(url))
