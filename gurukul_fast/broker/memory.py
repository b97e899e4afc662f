"""The one-process broker (`BROKER_URL=memory:`, the default): nothing to share.

Every member of every chat is local, so `publish` does nothing (the room table already
delivered the event) and subscriptions are only bookkept, which keeps the memory broker a
faithful stand-in for the others in unit tests of the chat layer.
"""

from __future__ import annotations

from gurukul_fast.broker.base import BrokerStats, DeliverRemote, GapHandler, new_node_id
from gurukul_fast.rooms import RoomEvent

__all__ = ["MemoryBroker"]


class MemoryBroker:
    """Satisfies `Broker` for a single process."""

    def __init__(self, url: str = "memory:", *, node_id: str | None = None) -> None:
        self.url = url
        self.node_id = node_id or new_node_id()
        self._wanted: set[str] = set()
        self._stats = BrokerStats()
        self._started = False

    async def start(self, deliver: DeliverRemote, on_gap: GapHandler | None = None) -> None:
        self._started = True

    async def close(self) -> None:
        self._started = False

    def subscribe(self, chat_id: str) -> None:
        self._wanted.add(chat_id)

    def unsubscribe(self, chat_id: str) -> None:
        self._wanted.discard(chat_id)

    def publish(self, event: RoomEvent) -> None:
        pass  # every member is local: the room table delivered it

    @property
    def healthy(self) -> bool:
        return True

    @property
    def stats(self) -> BrokerStats:
        return self._stats

    @property
    def subscriptions(self) -> frozenset[str]:
        return frozenset(self._wanted)

    async def settle(self, timeout_s: float = 5.0) -> bool:
        return True
