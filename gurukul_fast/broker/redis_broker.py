"""Redis pub/sub broker (redis-py asyncio): one channel per chat, `<prefix>:chat:<chat_id>`.

Theory of operation: two raw connections per node. The *subscriber* connection belongs to
one reader task that parses pushes (`message`, `subscribe`/`unsubscribe` confirmations,
`pong`) and sends a PING when idle to notice a dead peer. The *publisher* connection
belongs to the writer task (see `network.py`): each turn it sends everything queued as one
pipeline of PUBLISH commands and reads the replies, so one node's events reach every
subscriber in publish order, across chats too (Redis runs one connection's commands in
order and writes pushes to a subscriber in order).

Why classic channels and not Redis 7 sharded pub/sub (SSUBSCRIBE/SPUBLISH): on one Redis
server (the deployment this targets, and what managed services and Sentinel set-ups give
you) both route per channel and cost the same; sharding only pays off on a Redis Cluster,
where classic PUBLISH is broadcast over the cluster bus. A cluster needs one subscriber
connection per shard and slot-aware batching, which is a different backend (a future
`redis+cluster://`), not a flag on this one.

Outages: any error on either connection marks the broker unhealthy, closes both and
reconnects with exponential backoff (`reconnect_min_s` doubling to `reconnect_max_s`, with
jitter). On reconnect it resubscribes the whole wanted set (chunked SUBSCRIBEs), waits for
the confirmations, becomes healthy, sends the queued events, and calls `GapHandler` with
every subscribed chat. What `publish` does meanwhile is described in `network.py`.

URL: any redis-py URL (`redis://[user:pass@]host:port/db`, `rediss://…`, `unix://…`) plus
our own `prefix` query parameter (default `gurukul`), removed before redis-py sees it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio.connection import Connection, parse_url
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from gurukul_fast.broker.base import BrokerUnavailable, DeliverRemote, GapHandler
from gurukul_fast.broker.network import MAX_CHANNELS_PER_COMMAND, NetworkBroker

__all__ = ["RedisBroker", "split_prefix"]

logger = logging.getLogger(__name__)


def split_prefix(url: str, default: str = "gurukul") -> tuple[str, str]:
    """Remove our `prefix` query parameter from a Redis URL: (url for redis-py, prefix)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = default
    kept = []
    for key, value in query:
        if key == "prefix":
            prefix = value
        else:
            kept.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), prefix


def connection_for(url: str, *, name: str, timeout_s: float | None) -> Connection:
    """A raw redis-py connection (not pooled, no retries: we reconnect ourselves)."""
    options: dict[str, Any] = dict(parse_url(url))
    connection_class = options.pop("connection_class", Connection)
    options.update(
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s or 5.0,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
        client_name=name,
        protocol=2,  # pushes arrive as RESP2 arrays: ["message", channel, data]
        health_check_interval=0,
    )
    return cast(Connection, connection_class(**options))


_REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


class RedisBroker(NetworkBroker):
    """`BROKER_URL=redis://host:6379/0`. See the module docstring."""

    _connection_errors = _REDIS_ERRORS

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        node_id: str | None = None,
        prefix: str | None = None,
        max_pending: int = 10_000,
        subscribe_delay_s: float = 0.002,
        timeout_s: float = 3.0,
        ping_interval_s: float = 1.0,
        reconnect_min_s: float = 0.05,
        reconnect_max_s: float = 2.0,
    ) -> None:
        super().__init__(
            node_id=node_id, max_pending=max_pending, subscribe_delay_s=subscribe_delay_s
        )
        self._url, url_prefix = split_prefix(url)
        self.prefix = prefix if prefix is not None else url_prefix
        self._channel_head = f"{self.prefix}:chat:"
        self._channel_head_bytes = self._channel_head.encode()
        self._timeout_s = timeout_s  # connect, write, and PONG/confirmation wait, seconds
        self._ping_interval_s = ping_interval_s  # idle time before a PING, seconds
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._sub: Connection | None = None
        self._pub: Connection | None = None
        self._confirmed: set[bytes] = set()  # channels the server confirmed
        self._lost = asyncio.Event()
        self._last_read = 0.0  # monotonic time of the last push on the subscriber

    @property
    def url(self) -> str:
        """The Redis URL without credentials, for logs and health output."""
        parts = urlsplit(self._url)
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))

    def channel(self, chat_id: str) -> bytes:
        """The Redis channel of a chat."""
        return (self._channel_head + chat_id).encode()

    # ------------------------------------------------------------------ lifecycle

    async def start(self, deliver: DeliverRemote, on_gap: GapHandler | None = None) -> None:
        try:
            sub, pub = await self._connect()
        except _REDIS_ERRORS as exc:
            raise BrokerUnavailable(f"cannot reach Redis at {self.url}: {exc}") from None
        self._begin(deliver, on_gap)
        assert self._loop is not None
        self._tasks.append(self._loop.create_task(self._run(sub, pub), name="broker-redis"))
        # Wait for the first resubscribe so `healthy` is True when start() returns.
        deadline = time.monotonic() + self._timeout_s
        while True:
            self._progress.clear()
            if self._healthy or not await self._wait_progress(deadline):
                break

    async def _connect(self) -> tuple[Connection, Connection]:
        short = self.node_id[:12]
        # The subscriber reads without a timeout (see `_read`); writes to it are tiny.
        sub = connection_for(self._url, name=f"gurukul-sub-{short}", timeout_s=None)
        pub = connection_for(self._url, name=f"gurukul-pub-{short}", timeout_s=self._timeout_s)
        try:
            await cast(Any, sub).connect()
            await cast(Any, pub).connect()
        except BaseException:
            await _disconnect(sub)
            await _disconnect(pub)
            raise
        return sub, pub

    async def _close_connection(self) -> None:
        for connection in (self._sub, self._pub):
            if connection is not None:
                await _disconnect(connection)
        self._sub = self._pub = None

    async def _run(self, sub: Connection | None, pub: Connection | None) -> None:
        """Own the connections: (re)connect, resubscribe, read, and start over on errors."""
        backoff = self._reconnect_min_s
        recovered = False
        while True:
            try:
                if sub is None or pub is None:
                    sub, pub = await self._connect()
                self._sub, self._pub = sub, pub
                self._lost.clear()
                await self._resubscribe(sub)
                self._set_healthy(True)
                if recovered:
                    self._stats.reconnects += 1
                    self._gap(self._wanted)
                backoff = self._reconnect_min_s
                await self._read_until_lost(sub)
            except _REDIS_ERRORS as exc:
                self._set_healthy(False, exc)
            recovered = True
            self._sub = self._pub = None
            for connection in (sub, pub):
                if connection is not None:
                    await _disconnect(connection)
            sub = pub = None
            self._confirmed.clear()
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self._reconnect_max_s)

    async def _read_until_lost(self, sub: Connection) -> None:
        """Read pushes until the connection fails, goes silent, or the writer failed."""
        self._last_read = time.monotonic()
        tasks = (
            asyncio.ensure_future(self._read(sub)),
            asyncio.ensure_future(self._watch(sub)),
            asyncio.ensure_future(self._lost.wait()),
        )
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks[:2]:
            if not task.cancelled() and task.exception() is not None:
                raise cast(BaseException, task.exception())
        raise ConnectionError("publisher connection failed")

    def _connection_lost(self, exc: BaseException) -> None:
        self._set_healthy(False, exc)
        self._lost.set()  # wakes `_run`, which reconnects both connections

    # ------------------------------------------------------------------ subscriber side

    async def _resubscribe(self, sub: Connection) -> None:
        """Subscribe the whole wanted set on a fresh connection and wait for the replies."""
        async with self._sync_lock:
            wanted = sorted(self._wanted)
            self._applied = set(wanted)
            self._confirmed.clear()
            for start in range(0, len(wanted), MAX_CHANNELS_PER_COMMAND):
                chunk = wanted[start : start + MAX_CHANNELS_PER_COMMAND]
                await sub.send_command("SUBSCRIBE", *(self.channel(c) for c in chunk))
                self._stats.subscribe_commands += 1
        expected = {self.channel(c) for c in wanted}
        while not expected <= self._confirmed:
            # A timeout here drops the connection, so cancelling a read is harmless.
            response = await asyncio.wait_for(sub.read_response(), self._timeout_s)
            self._on_push(response)

    async def _read(self, sub: Connection) -> None:
        """The reader: dispatch every push. No read timeout (a timeout context per push
        costs more than parsing it); `_watch` notices a silent peer instead."""
        while True:
            response = await sub.read_response()
            self._last_read = time.monotonic()
            self._on_push(response)

    async def _watch(self, sub: Connection) -> None:
        """PING the subscriber connection when idle; no answer in time → reconnect."""
        while True:
            await asyncio.sleep(self._ping_interval_s)
            now = time.monotonic()
            if now - self._last_read < self._ping_interval_s:
                continue
            sent_at = now
            await sub.send_command("PING", check_health=False)
            while self._last_read < sent_at:
                if time.monotonic() - sent_at > self._timeout_s:
                    raise TimeoutError("Redis did not answer PING")
                await asyncio.sleep(min(0.05, self._ping_interval_s))

    def _on_push(self, response: object) -> None:
        if not isinstance(response, list) or len(response) < 3:
            return  # b"PONG" with no subscriptions, or ["pong", b""]
        kind = response[0]
        if kind == b"message":
            assert self._inbound is not None
            self._inbound.handle(response[2])
        elif kind == b"subscribe":
            self._confirmed.add(response[1])
            self._progress.set()
        elif kind == b"unsubscribe":
            self._confirmed.discard(response[1])
            self._progress.set()

    async def _apply(self, add: Sequence[str], remove: Sequence[str]) -> None:
        sub = self._sub
        if sub is None:
            raise ConnectionError("not connected")
        for start in range(0, len(add), MAX_CHANNELS_PER_COMMAND):
            chunk = add[start : start + MAX_CHANNELS_PER_COMMAND]
            await sub.send_command("SUBSCRIBE", *(self.channel(c) for c in chunk))
            self._stats.subscribe_commands += 1
        for start in range(0, len(remove), MAX_CHANNELS_PER_COMMAND):
            chunk = remove[start : start + MAX_CHANNELS_PER_COMMAND]
            await sub.send_command("UNSUBSCRIBE", *(self.channel(c) for c in chunk))
            self._stats.unsubscribe_commands += 1

    def _server_caught_up(self) -> bool:
        return self._confirmed == {self.channel(c) for c in self._wanted}

    # ------------------------------------------------------------------ publisher side

    async def _send(self, batch: list[tuple[str, bytes]]) -> None:
        pub = self._pub
        if pub is None:
            raise ConnectionError("not connected")
        await pub.send_packed_command(
            [_pack_publish(self._channel_head_bytes, chat_id, data) for chat_id, data in batch],
            check_health=False,
        )
        for _ in batch:
            await pub.read_response()


def _pack_publish(head: bytes, chat_id: str, data: bytes) -> bytes:
    """`PUBLISH <head><chat_id> <data>` in RESP, without redis-py's generic packer."""
    channel = head + chat_id.encode()
    return b"".join(
        (
            b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n" % len(channel),
            channel,
            b"\r\n$%d\r\n" % len(data),
            data,
            b"\r\n",
        )
    )


async def _disconnect(connection: Connection) -> None:
    try:
        await connection.disconnect(nowait=True)
    except Exception:
        logger.debug("closing a Redis connection failed", exc_info=True)
