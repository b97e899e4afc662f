"""What running several nodes adds to the chat service (README "Running several nodes").

One `NodeLink` per server when `BROKER_URL` names a network broker:

- fan-out: every local event is also published to the broker; a node subscribes to a chat
  while it has local members (`chat_joined` / `chat_left`);
- order: message events of a chat, local or remote, pass `admit`, which delivers them in
  stored seq order; a seq missing for `GAP_WAIT_S` is read from storage, and so is
  everything a broker outage made us miss (`resync`);
- limits and presence: the per-user connection cap, the rate limits and online status are
  counted cluster-wide in the cluster store.

The chat service stays the owner of rooms and clients: this module gets a `deliver`
callback for events that are ready for the local rooms.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from gurukul_fast import protocol as p
from gurukul_fast.broker import Broker
from gurukul_fast.cluster import ClusterStore, ClusterStoreUnavailable
from gurukul_fast.ordering import ChatOrder
from gurukul_fast.rooms import RoomEvent
from gurukul_fast.storage import Storage, StorageUnavailable, StoredMessage
from gurukul_fast.wire import now_ms, to_wire

__all__ = ["BROKER_SETTLE_S", "GAP_WAIT_S", "NodeLink"]

logger = logging.getLogger(__name__)

BROKER_SETTLE_S = 2.0  # a join waits at most this long for its subscription to be confirmed
GAP_WAIT_S = 0.15  # a missing message seq is waited for this long, then read from storage

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class NodeLink:
    """The broker, the per-chat order and the cluster store of one node."""

    def __init__(
        self,
        broker: Broker,
        cluster: ClusterStore | None,
        storage: Storage,
        *,
        deliver: Callable[[RoomEvent], None],
        has_members: Callable[[str], bool],
        spawn: Spawn,
        loop: asyncio.AbstractEventLoop,
        max_recovery: int,
    ) -> None:
        self.broker = broker
        self.cluster = cluster
        self._storage = storage
        self._deliver = deliver
        self._has_members = has_members
        self._spawn = spawn
        self._loop = loop
        self._max_recovery = max_recovery
        self._order = ChatOrder()
        self._gap_timers: dict[str, asyncio.TimerHandle] = {}

    @property
    def healthy(self) -> bool:
        """Broker and cluster store reachable (`/ws/health`)."""
        return self.broker.healthy and (self.cluster is None or self.cluster.healthy)

    # ------------------------------------------------------------------ fan-out and order

    def publish(self, event: RoomEvent) -> None:
        """Send a local event to the other nodes with members of its chat."""
        self.broker.publish(event)

    def chat_joined(self, chat_id: str, last_seq: int) -> None:
        """The chat got its first local member: receive it, from after `last_seq`."""
        self.broker.subscribe(chat_id)
        self._order.track(chat_id, last_seq)

    def chat_left(self, chat_id: str) -> None:
        """The chat's last local member left: stop receiving it."""
        self.broker.unsubscribe(chat_id)
        self._order.forget(chat_id)
        timer = self._gap_timers.pop(chat_id, None)
        if timer is not None:
            timer.cancel()

    async def settle(self) -> None:
        """Wait until the broker confirmed our subscriptions (before reading history)."""
        await self.broker.settle(BROKER_SETTLE_S)

    def admit(self, event: RoomEvent) -> list[RoomEvent]:
        """The events ready for the local rooms, in seq order, now that `event` arrived."""
        if not event.message_seq:
            return [event]
        ready, waiting = self._order.admit(event)
        if waiting and event.chat_id not in self._gap_timers:
            self._gap_timers[event.chat_id] = self._loop.call_later(
                GAP_WAIT_S, self._fill_gap_soon, event.chat_id
            )
        return ready

    def resync(self, chat_ids: frozenset[str]) -> None:
        """Broker callback: events of these chats were lost; catch up from storage."""
        for chat_id in chat_ids:
            if self._has_members(chat_id):
                self._spawn(self._resync(chat_id))

    def _fill_gap_soon(self, chat_id: str) -> None:
        self._gap_timers.pop(chat_id, None)
        self._spawn(self._fill_gap(chat_id))

    async def _fill_gap(self, chat_id: str) -> None:
        after = self._order.waiting_after(chat_id)
        if after is None:
            return
        try:
            rows = await self._storage.messages_after(chat_id, after, self._max_recovery)
        except StorageUnavailable:
            rows = []  # release what is held; clients recover the rest by history
        for ready in self._order.fill(chat_id, [_message_event(row) for row in rows]):
            self._deliver(ready)

    async def _resync(self, chat_id: str) -> None:
        rows = await self._storage.messages_after(
            chat_id, self._order.position(chat_id), self._max_recovery
        )
        for row in rows:
            for ready in self.admit(_message_event(row)):
                self._deliver(ready)

    # ------------------------------------------------------------------ limits and presence

    async def open_connection(self, user_id: str, conn_key: str, cap: int) -> tuple[bool, bool]:
        """Count a new connection: (within the user's cluster-wide cap, user came online)."""
        if self.cluster is None:
            return True, False
        try:
            if not await self.cluster.try_acquire(user_id, conn_key, cap):
                return False, False
            return True, await self.cluster.connection_opened(user_id)
        except ClusterStoreUnavailable:
            logger.debug("cluster store unavailable: node-local limits only")
            return True, False

    async def close_connection(self, user_id: str, conn_key: str) -> None:
        if self.cluster is None:
            return
        try:
            await self.cluster.release(user_id, conn_key)
            await self.cluster.connection_closed(user_id)
        except ClusterStoreUnavailable:
            logger.debug("cluster store unavailable: presence update deferred")

    def check_rate(self, user_id: str, kind: str, limit: int) -> float:
        """The cluster-wide budget from leased tokens: 0.0 or seconds to wait.

        Without a lease on this node yet, the node-local bucket (which already allowed the
        frame) decides, and a lease is fetched in the background for the next frames.
        """
        if self.cluster is None:
            return 0.0
        wait = self.cluster.check_rate_cached(user_id, kind, limit)
        if wait is None:
            self._spawn(self._lease(user_id, kind, limit))
            return 0.0
        return wait

    async def check_rate_now(self, user_id: str, kind: str, limit: int) -> float:
        """As `check_rate`, but asks the store when no lease is here (messages use this)."""
        if self.cluster is None:
            return 0.0
        wait = self.cluster.check_rate_cached(user_id, kind, limit)
        if wait is not None:
            return wait
        try:
            return await self.cluster.check_rate(user_id, kind, limit)
        except ClusterStoreUnavailable:
            return 0.0  # the node-local bucket already allowed it

    async def _lease(self, user_id: str, kind: str, limit: int) -> None:
        assert self.cluster is not None
        try:
            await self.cluster.check_rate(user_id, kind, limit)
        except ClusterStoreUnavailable:
            return


def _message_event(stored: StoredMessage) -> RoomEvent:
    """The `message` event of a message read back from storage."""
    temp_id = stored.client_message_id if stored.role == "user" else None
    payload = p.encode(
        p.MessageEvent(p.MessageEventData(stored.chat_id, to_wire(stored), temp_id), now_ms())
    )
    return RoomEvent(stored.chat_id, payload, "message", message_seq=stored.seq)
