"""NATS core broker (nats-py): one subject per chat, `<prefix>.chat.<escaped chat id>`.

Theory of operation: one NATS connection per node. Each subscribed chat is one NATS
subscription; nats-py queues the SUB lines of one loop turn and its flusher writes them in
one go, so the batching of `network.py` becomes one write per batch. The writer task
publishes each turn's events in order into nats-py's buffer (one write per flush); NATS
delivers one publisher's messages in order, and nats-py hands each subscription's messages
to its callback in order: per-chat order holds, order across chats is not promised.

Outages are nats-py's job: it reconnects forever (`reconnect_wait_s` apart), resends every
SUB, then calls us; we become healthy, send the queued events and call `GapHandler` with
every subscribed chat. A dead peer is noticed by nats-py's PINGs (`ping_interval_s` ×
`max_outstanding_pings`). JetStream is not used: chat history lives in storage, and
at-most-once fan-out plus resync from storage is the same contract as Redis pub/sub.

Chat ids are escaped into one subject token: bytes outside `[A-Za-z0-9_:@-]` become
`%XX` (`.` splits tokens; `*` and `>` are wildcards), so the mapping is one-to-one.

URL: `nats://host:4222` (or `tls://…`, several servers comma-separated) plus our own
`prefix` query parameter (default `gurukul`, a valid subject prefix).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError

from gurukul_fast.broker.base import BrokerUnavailable, DeliverRemote, GapHandler
from gurukul_fast.broker.network import NetworkBroker

__all__ = ["NatsBroker", "escape_token"]

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_:@-]")


def escape_token(chat_id: str) -> str:
    """A chat id as one NATS subject token (see the module docstring)."""
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), chat_id)


def _split_url(url: str) -> tuple[list[str], str]:
    """(server URLs for nats-py, prefix) from our URL."""
    parts = urlsplit(url)
    prefix = "gurukul"
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "prefix":
            prefix = value
    base = urlunsplit(parts._replace(query=""))
    scheme = parts.scheme
    servers = []
    for host in base.split("://", 1)[1].split(","):
        servers.append(f"{scheme}://{host.strip().rstrip('/')}")
    return servers, prefix


_NATS_ERRORS: tuple[type[BaseException], ...] = (NatsError, OSError, TimeoutError)


class NatsBroker(NetworkBroker):
    """`BROKER_URL=nats://host:4222`. See the module docstring."""

    _connection_errors = _NATS_ERRORS

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        node_id: str | None = None,
        prefix: str | None = None,
        max_pending: int = 10_000,
        subscribe_delay_s: float = 0.002,
        timeout_s: float = 3.0,
        ping_interval_s: float = 2.0,
        max_outstanding_pings: int = 2,
        reconnect_wait_s: float = 0.25,
    ) -> None:
        super().__init__(
            node_id=node_id, max_pending=max_pending, subscribe_delay_s=subscribe_delay_s
        )
        self._servers, url_prefix = _split_url(url)
        self.prefix = prefix if prefix is not None else url_prefix
        self._subject_head = f"{self.prefix}.chat."
        self._timeout_s = timeout_s
        self._ping_interval_s = ping_interval_s
        self._max_outstanding_pings = max_outstanding_pings
        self._reconnect_wait_s = reconnect_wait_s
        self._nc: NatsClient | None = None
        self._subs: dict[str, Subscription] = {}
        self._recovering: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return ",".join(s.rsplit("@", 1)[-1] for s in self._servers)

    def subject(self, chat_id: str) -> str:
        """The NATS subject of a chat."""
        return self._subject_head + escape_token(chat_id)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, deliver: DeliverRemote, on_gap: GapHandler | None = None) -> None:
        try:
            self._nc = await asyncio.wait_for(
                nats.connect(
                    servers=self._servers,
                    name=f"gurukul-{self.node_id[:12]}",
                    connect_timeout=max(1, round(self._timeout_s)),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=self._reconnect_wait_s,
                    ping_interval=self._ping_interval_s,
                    max_outstanding_pings=self._max_outstanding_pings,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    error_cb=self._on_error,
                    closed_cb=self._on_closed,
                ),
                self._timeout_s,
            )
        except _NATS_ERRORS as exc:
            # nats-py retries the first connect forever with max_reconnect_attempts=-1;
            # wait_for bounds it, so a TimeoutError here means "refused or no answer".
            reason = (
                f"no connection within {self._timeout_s:g} s"
                if isinstance(exc, TimeoutError)
                else repr(exc)
            )
            raise BrokerUnavailable(f"cannot reach NATS at {self.url}: {reason}") from None
        self._begin(deliver, on_gap)
        self._set_healthy(True)

    async def _close_connection(self) -> None:
        if self._recovering is not None:
            self._recovering.cancel()
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except Exception:
                logger.debug("closing the NATS connection failed", exc_info=True)
        self._subs.clear()

    async def _on_disconnected(self) -> None:
        self._set_healthy(False, "disconnected from NATS")

    async def _on_reconnected(self) -> None:
        # nats-py has resent every SUB and done a PING/PONG: the subscriptions are live.
        self._stats.reconnects += 1
        self._set_healthy(True)
        self._gap(self._wanted)

    async def _on_error(self, exc: Exception) -> None:
        logger.debug("NATS error: %r", exc)

    async def _on_closed(self) -> None:
        if not self._closing:
            self._set_healthy(False, "NATS connection closed")

    def _connection_lost(self, exc: BaseException) -> None:
        """A publish or SUB failed: unhealthy until nats-py is connected again."""
        self._set_healthy(False, exc)
        if self._recovering is None or self._recovering.done():
            self._recovering = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """After an error that did not (yet) drop the connection: wait until it is usable."""
        while not self._closing:
            await asyncio.sleep(self._reconnect_wait_s)
            nc = self._nc
            if nc is not None and nc.is_connected and not self._healthy:
                try:
                    await nc.flush(timeout=max(1, round(self._timeout_s)))
                except _NATS_ERRORS:
                    continue
                self._set_healthy(True)
                self._gap(self._wanted)
                return
            if self._healthy:
                return

    # ------------------------------------------------------------------ subscriptions

    async def _on_message(self, msg: Msg) -> None:
        assert self._inbound is not None
        self._inbound.handle(msg.data)

    async def _apply(self, add: Sequence[str], remove: Sequence[str]) -> None:
        nc = self._nc
        if nc is None:
            raise ConnectionError("not connected")
        for chat_id in remove:
            subscription = self._subs.pop(chat_id, None)
            if subscription is not None:
                await subscription.unsubscribe()
        for chat_id in add:
            self._subs[chat_id] = await nc.subscribe(self.subject(chat_id), cb=self._on_message)
        # nats-py queued the SUB/UNSUB lines; its flusher writes them together.
        if add:
            self._stats.subscribe_commands += 1
        if remove:
            self._stats.unsubscribe_commands += 1

    async def _round_trip(self, deadline: float) -> bool:
        nc = self._nc
        if nc is None:
            return False
        try:  # a PING/PONG: the server has processed every SUB and PUB before it
            await nc.flush(timeout=max(1, round(deadline - time.monotonic())))
        except _NATS_ERRORS:
            return False
        return True

    # ------------------------------------------------------------------ publishing

    async def _send(self, batch: list[tuple[str, bytes]]) -> None:
        nc = self._nc
        if nc is None or not nc.is_connected:
            raise ConnectionError("not connected")
        head = self._subject_head
        for chat_id, data in batch:
            try:
                await nc.publish(head + escape_token(chat_id), data)
            except MaxPayloadError:
                self._stats.discarded += 1
                logger.error("event over the NATS max_payload for a chat, discarded")
