"""What the Redis and NATS brokers share: batched subscriptions, the outbox, health.

Theory of operation:

- *Subscriptions.* `subscribe`/`unsubscribe` only edit the wanted set and arm one timer
  (`subscribe_delay_s`, default 2 ms). When it fires, one task diffs the wanted set
  against what the server has and sends the difference as one SUBSCRIBE and one
  UNSUBSCRIBE (chunked past `MAX_CHANNELS_PER_COMMAND`). A join storm of 500 chats costs
  one command; a chat left and re-joined within the window costs nothing.
- *Outbox.* `publish` encodes the event once and appends it to a bounded deque; one writer
  task sends everything queued as one pipeline per turn, in order, on one connection:
  that is what keeps per-node publish order. A batch that fails is put back at the front
  and re-sent after the reconnect; receivers drop what they already got (sequence numbers).
- *Outage policy.* `publish` never blocks and never raises. While the broker is down,
  lossy events (typing) are discarded at once and the others wait in the outbox, up to
  `max_pending` events (default 10,000), and are sent in order after the reconnect. Past
  the bound an event is discarded and its chat remembered; after the reconnect the node
  publishes a gap notice on each such chat, and every subscribed node resyncs it from
  storage (`GapHandler`). A node that was itself disconnected calls `GapHandler` for all
  of its chats once it has resubscribed: pub/sub keeps nothing for an absent subscriber.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence

from gurukul_fast.broker.base import (
    BrokerStats,
    DeliverRemote,
    GapHandler,
    new_node_id,
)
from gurukul_fast.broker.wire import Inbound, encode_event, encode_gap
from gurukul_fast.rooms import RoomEvent

__all__ = ["MAX_CHANNELS_PER_COMMAND", "NetworkBroker"]

logger = logging.getLogger(__name__)

MAX_CHANNELS_PER_COMMAND = 1000  # SUBSCRIBE arguments per command when resubscribing
MAX_PUBLISH_BATCH = 1000  # events per pipeline


class NetworkBroker:
    """Base class of the network brokers; subclasses own the connection.

    A subclass implements `_apply(add, remove)` (send the subscription changes),
    `_send(batch)` (publish `(chat_id, data)` pairs in order) and `_close_connection()`,
    and calls `_set_healthy(True/False)` as its connection comes and goes.
    """

    _connection_errors: tuple[type[BaseException], ...] = (OSError,)

    def __init__(
        self,
        *,
        node_id: str | None = None,
        max_pending: int = 10_000,
        subscribe_delay_s: float = 0.002,
        close_timeout_s: float = 1.0,
    ) -> None:
        self.node_id = node_id or new_node_id()
        self._max_pending = max_pending
        self._subscribe_delay_s = subscribe_delay_s
        self._close_timeout_s = close_timeout_s
        self._stats = BrokerStats()
        self._wanted: set[str] = set()  # chats with local members
        self._applied: set[str] = set()  # chats the server has for us (sent)
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._overflowed: set[str] = set()  # chats whose events we discarded
        self._in_flight = 0  # events of the batch being sent
        self._seq = 0
        self._healthy = False
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbound: Inbound | None = None
        self._sync_handle: asyncio.TimerHandle | None = None
        self._sync_lock = asyncio.Lock()
        self._sync_wake = asyncio.Event()
        self._write_wake = asyncio.Event()
        self._progress = asyncio.Event()  # set whenever something settles; for `settle`
        self._tasks: list[asyncio.Task[None]] = []
        self.down_since: float | None = None  # monotonic time of the current outage

    # ------------------------------------------------------------------ public API

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def stats(self) -> BrokerStats:
        return self._stats

    @property
    def subscriptions(self) -> frozenset[str]:
        return frozenset(self._wanted)

    @property
    def pending(self) -> int:
        """Events waiting to be sent (the outbox plus the batch in flight)."""
        return len(self._outbox) + self._in_flight

    def subscribe(self, chat_id: str) -> None:
        if chat_id in self._wanted:
            return
        self._wanted.add(chat_id)
        self._schedule_sync()

    def unsubscribe(self, chat_id: str) -> None:
        if chat_id not in self._wanted:
            return
        self._wanted.discard(chat_id)
        if self._inbound is not None:
            self._inbound.forget(chat_id)
        self._schedule_sync()

    def publish(self, event: RoomEvent) -> None:
        if self._closing:
            return
        if (not self._healthy and event.lossy) or len(self._outbox) >= self._max_pending:
            self._stats.discarded += 1
            if not event.lossy:
                self._overflowed.add(event.chat_id)
            return
        self._seq += 1
        self._outbox.append((event.chat_id, encode_event(self.node_id, self._seq, event)))
        self._write_wake.set()

    # ------------------------------------------------------------------ lifecycle

    def _begin(self, deliver: DeliverRemote, on_gap: GapHandler | None) -> None:
        """Subclasses call this from `start()` once connected."""
        self._loop = asyncio.get_running_loop()
        self._inbound = Inbound(self.node_id, self._wanted, self._stats, deliver, on_gap)
        self._tasks.append(self._loop.create_task(self._syncer(), name="broker-subscriptions"))
        self._tasks.append(self._loop.create_task(self._writer(), name="broker-writer"))

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._sync_handle is not None:
            self._sync_handle.cancel()
            self._sync_handle = None
        if self._healthy and self.pending:
            deadline = time.monotonic() + self._close_timeout_s
            while True:
                self._progress.clear()
                if not (self.pending and self._healthy) or not await self._wait_progress(deadline):
                    break
        if self.pending:
            logger.warning("broker closed with %d events unsent", self.pending)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._healthy = False
        await self._close_connection()

    # ------------------------------------------------------------------ health

    def _set_healthy(self, healthy: bool, reason: object = None) -> None:
        """Subclasses call this when the connection is lost (False) or back (True)."""
        if healthy == self._healthy:
            return
        self._healthy = healthy
        if healthy:
            if self.down_since is not None:
                logger.info(
                    "broker reconnected after %.1f s; %d events queued",
                    time.monotonic() - self.down_since,
                    self.pending,
                )
            self.down_since = None
            self._write_wake.set()
            self._sync_wake.set()
        else:
            self.down_since = time.monotonic()
            if not self._closing:
                logger.warning("broker connection lost (%s); local delivery goes on", reason)
        self._progress.set()

    def _gap(self, chats: Iterable[str]) -> None:
        if self._inbound is not None:
            self._inbound.gap(frozenset(chats))

    # ------------------------------------------------------------------ subscriptions

    def _schedule_sync(self) -> None:
        if self._sync_handle is None and self._loop is not None and not self._closing:
            self._sync_handle = self._loop.call_later(self._subscribe_delay_s, self._kick_sync)

    def _kick_sync(self) -> None:
        self._sync_handle = None
        self._sync_wake.set()

    async def _syncer(self) -> None:
        while True:
            await self._sync_wake.wait()
            self._sync_wake.clear()
            await self._sync_now()

    async def _sync_now(self) -> None:
        """Send the difference between the wanted and the applied chats, if connected."""
        async with self._sync_lock:
            if not self._healthy:
                return  # the reconnect resubscribes the whole wanted set
            add = sorted(self._wanted - self._applied)
            remove = sorted(self._applied - self._wanted)
            if not add and not remove:
                self._progress.set()
                return
            self._applied.difference_update(remove)
            self._applied.update(add)
            try:
                await self._apply(add, remove)
            except self._connection_errors as exc:
                self._connection_lost(exc)
            self._progress.set()

    async def _apply(self, add: Sequence[str], remove: Sequence[str]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ publishing

    async def _writer(self) -> None:
        while True:
            await self._write_wake.wait()
            self._write_wake.clear()
            while self._healthy and (self._outbox or self._overflowed):
                if not self._outbox:
                    self._queue_gap_notices()
                count = min(len(self._outbox), MAX_PUBLISH_BATCH)
                batch = [self._outbox.popleft() for _ in range(count)]
                self._in_flight = count
                try:
                    await self._send(batch)
                except self._connection_errors as exc:
                    # Re-sent after the reconnect; receivers drop the part that got through.
                    self._outbox.extendleft(reversed(batch))
                    self._connection_lost(exc)
                else:
                    self._stats.published += count
                finally:
                    self._in_flight = 0
                self._progress.set()

    def _queue_gap_notices(self) -> None:
        chats, self._overflowed = self._overflowed, set()
        for chat_id in sorted(chats):
            self._seq += 1
            self._outbox.append((chat_id, encode_gap(self.node_id, self._seq, chat_id)))
        logger.warning("broker discarded events of %d chats; sent resync notices", len(chats))

    async def _send(self, batch: list[tuple[str, bytes]]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ subclass hooks

    def _connection_lost(self, exc: BaseException) -> None:
        """A send failed: mark unhealthy and make the subclass reconnect."""
        self._set_healthy(False, exc)

    async def _close_connection(self) -> None:
        raise NotImplementedError

    async def _wait_progress(self, deadline: float) -> bool:
        """Wait for the next progress signal; False once `deadline` (monotonic) passed.

        Callers clear `_progress` *before* checking their condition, then call this.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            await asyncio.wait_for(self._progress.wait(), remaining)
        except TimeoutError:
            return False
        return True

    async def settle(self, timeout_s: float = 5.0) -> bool:
        """See `Broker.settle`."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._progress.clear()
            if self._settled_locally() and self._server_caught_up():
                break
            if not await self._wait_progress(deadline):
                return False
        return await self._round_trip(deadline)

    def _server_caught_up(self) -> bool:
        """Whether the server confirmed every subscription change (Redis overrides)."""
        return True

    async def _round_trip(self, deadline: float) -> bool:
        """A round trip after which the server has processed all we sent (NATS overrides)."""
        return True

    def _settled_locally(self) -> bool:
        """Connected, no subscription change waiting, nothing left to send."""
        return (
            self._healthy
            and self._sync_handle is None
            and not self._sync_wake.is_set()
            and not self._sync_lock.locked()
            and self._applied == self._wanted
            and not self.pending
            and not self._overflowed
        )
