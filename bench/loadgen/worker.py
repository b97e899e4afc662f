"""One load-generator process: many picows client connections on one uvloop.

The orchestrator (`bench.loadgen.session`) forks one worker per generator core and drives
it with commands over a pipe; each command returns one picklable reply. Receiving is a
synchronous picows callback, like the server's data path, so the generator stays cheap
per frame: one msgspec decode, a few integer checks, one list append.

Every `message` the generator sends carries its send time in the content
(`"<monotonic ns> <sender id> <n>"`); the servers store content verbatim, so a receiver
gets the latency from the frame itself. CLOCK_MONOTONIC is system-wide on Linux, so this
holds across worker processes too.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import msgspec
import uvloop
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.common import mint, pin_to

__all__ = ["Plan", "worker_main"]

CONNECT_CONCURRENCY = 64  # in-flight handshakes; more only overflows the listen backlog
POLL_S = 0.01


@dataclass(frozen=True, slots=True)
class Plan:
    """One client connection: who it is, which chat it joins, what it does."""

    gid: int  # unique over all workers; the sender id in message content
    user: str
    chat: str | None  # None: connect only (idle)
    owner: bool  # joins first, so the chat exists before the others join
    sender: bool  # sends messages in fanout/bigroom
    source_ip: str  # 127.0.0.x, to get past one IP's ephemeral ports
    batch: bool = False  # connect with ?batch=1 (gurukul-fast's batching flusher)
    url: str | None = None  # the node to connect to (cluster); None: the worker's server


# What the generator reads of a server frame; every other field is skipped by the decoder.
# Field names are the wire's camelCase, so no renaming is needed.


class _InMeta(msgspec.Struct, gc=False):
    messageIndex: int = 1
    totalMessages: int = 1


class _InMessage(msgspec.Struct, gc=False):
    content: str = ""
    seq: int = 0
    role: str = ""
    metadata: _InMeta | None = None


class _InData(msgspec.Struct, gc=False):
    chatId: str | None = None
    message: _InMessage | None = None
    messageId: str | None = None
    action: str | None = None
    timestamp: int | float | None = None


class _InFrame(msgspec.Struct, gc=False):
    type: str
    data: _InData


class _BatchData(msgspec.Struct, gc=False):
    messages: list[_InFrame]


class _BatchFrame(msgspec.Struct, gc=False):
    data: _BatchData


_decode = msgspec.json.Decoder(_InFrame).decode
_decode_batch = msgspec.json.Decoder(_BatchFrame).decode
# gurukul-fast encodes with msgspec: `type` comes first, without spaces.
_BATCH_PREFIX = b'{"type":"batch"'


class Client(WSListener):
    """One connection's listener and its delivery bookkeeping."""

    def __init__(self, worker: Worker, plan: Plan) -> None:
        super().__init__()
        self.worker = worker
        self.plan = plan
        self.transport: WSTransport | None = None
        self.joined = worker.loop.create_future()
        self.closed = False
        self.close_code = 0
        self.last_seq = 0  # highest seq seen in the chat
        self.unique = 0  # messages received once, in seq order (cumulative)
        self.reordered = 0  # seq at or below one already seen: duplicate or late
        self.gaps = 0  # seq jumped: something before it is missing
        self.fifo_errors = 0  # a sender's messages arrived out of send order
        self.last_n: dict[int, int] = {}
        self.sent = 0
        self.outstanding_ns = 0  # closed-loop modes: send time of the request in flight

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        if not self.joined.done():
            self.joined.set_exception(ConnectionError("closed before joining"))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT:
            self.worker.on_payload(self, frame.get_payload_as_bytes())
        elif kind is WSMsgType.CLOSE:
            code = frame.get_close_code()
            # picows hands codes outside its enum (our 4008) through as plain ints.
            self.close_code = code.value if isinstance(code, WSCloseCode) else int(code)
            transport.send_close(code)
            transport.disconnect()

    def send(self, payload: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.send(WSMsgType.TEXT, payload)


class Worker:
    """Owns the clients of one process and runs the commands sent by the orchestrator."""

    def __init__(self, url: str, plans: list[Plan]) -> None:
        self.url = url
        self.plans = plans
        self.loop = asyncio.get_running_loop()
        self.clients: list[Client] = []
        self.on_payload: Callable[[Client, bytes], None] = self._on_setup_frame
        self.window = (0, 0)  # monotonic ns: deliveries of messages sent in it are measured
        self.latencies_us: list[int] = []
        self.measured = 0  # deliveries / round trips / replies in the window
        self.errors = 0  # `error` frames
        self.other_frames = 0  # frames the scenario does not count (chat_update, typing…)
        self.connect_failures = 0
        self.running = False
        self.sent_by_chat: dict[str, int] = {}
        self.agent_id = "therapist"

    # ------------------------------------------------------------------ commands

    async def serve(self, conn: Connection) -> None:
        while True:
            command, args = await self._recv(conn)
            if command == "exit":
                await self._close_all()
                conn.send(None)
                return
            handler = getattr(self, f"cmd_{command}")
            try:
                conn.send(await handler(*args))
            except Exception as exc:  # report, don't hang the orchestrator
                conn.send({"error": f"{type(exc).__name__}: {exc}"})

    async def _recv(self, conn: Connection) -> tuple[str, tuple[Any, ...]]:
        ready: asyncio.Future[None] = self.loop.create_future()
        fd = conn.fileno()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        self.loop.add_reader(fd, readable)
        try:
            await ready
        finally:
            self.loop.remove_reader(fd)
            # uvloop made the pipe non-blocking; a large reply must not fail with EAGAIN.
            os.set_blocking(fd, True)
        message: tuple[str, tuple[Any, ...]] = conn.recv()
        return message

    async def cmd_connect(self, owners: bool) -> dict[str, Any]:
        """Connect (and join) the owners' or the other plans; return how many made it."""
        plans = [p for p in self.plans if p.owner == owners]
        started = time.monotonic()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        results = await asyncio.gather(*(self._connect(plan, gate) for plan in plans))
        ok = sum(results)
        return {"connected": ok, "failed": len(plans) - ok, "seconds": time.monotonic() - started}

    async def _connect(self, plan: Plan, gate: asyncio.Semaphore) -> bool:
        token = mint(plan.user, [plan.chat] if plan.chat else None)
        async with gate:
            try:
                _, listener = await ws_connect(
                    lambda: Client(self, plan),
                    f"{plan.url or self.url}?token={token}{'&batch=1' if plan.batch else ''}",
                    local_addr=(plan.source_ip, 0),
                    websocket_handshake_timeout=60,
                    read_buffer_init_size=1024,
                    max_frame_size=16 * 1024 * 1024,
                )
            except (TimeoutError, OSError, RuntimeError, EOFError) as exc:
                self.connect_failures += 1
                if self.connect_failures <= 3:
                    print(f"loadgen: connect failed: {type(exc).__name__}: {exc}", flush=True)
                return False
            if not isinstance(listener, Client):
                # picows returns no listener when the socket died during the handshake.
                self.connect_failures += 1
                return False
            client = listener
            self.clients.append(client)
            if plan.chat is None:
                client.joined.set_result(None)
                return True
            client.send(_join_frame(plan.chat))
            try:
                await asyncio.wait_for(client.joined, 60)
            except (TimeoutError, ConnectionError):
                return False
            return True

    def _on_setup_frame(self, client: Client, payload: bytes) -> None:
        try:
            frame = _decode(payload)
        except msgspec.ValidationError:
            self.errors += 1
            return
        if frame.type == "chat_update" and frame.data.action == "joined":
            if not client.joined.done():
                client.joined.set_result(None)
        elif frame.type == "error":
            self.errors += 1

    async def cmd_fanout(
        self, rate_per_s: float, warmup_s: float, measure_s: float
    ) -> dict[str, Any]:
        """Send `rate_per_s` messages/s from this worker's senders, round robin.

        Deliveries of messages sent in the measure window (after the warm-up) are timed.
        Returns the messages sent per chat so the orchestrator can tell every member what
        to expect; the deliveries are checked by `cmd_drain`.
        """
        senders = _interleave_chats([c for c in self.clients if c.plan.sender and not c.closed])
        self._reset(self._on_fanout_frame)
        cpu = _cpu()
        started = time.monotonic_ns()
        window_start = started + int(warmup_s * 1e9)
        window_end = window_start + int(measure_s * 1e9)
        self.window = (window_start, window_end)
        sent = 0
        skipped = 0
        count = len(senders)
        sent_by_chat = self.sent_by_chat
        index = 0
        if count and rate_per_s > 0:
            # Open loop: a send schedule, not a closed loop, so a slow server shows as latency.
            while (now := time.monotonic_ns()) < window_end:
                due = int((now - started) * rate_per_s / 1e9) - sent
                for _ in range(due):
                    client = senders[index % count]
                    index += 1
                    sent += 1
                    if client.closed:
                        skipped += 1
                        continue
                    client.sent += 1
                    chat = client.plan.chat
                    assert chat is not None
                    client.send(_message_frame(chat, client.plan.gid, client.sent))
                    sent_by_chat[chat] = sent_by_chat.get(chat, 0) + 1
                await asyncio.sleep(0.001)
        return {
            "sent": sent - skipped,
            "skipped": skipped,
            "sent_by_chat": dict(sent_by_chat),
            "send_seconds": (time.monotonic_ns() - started) / 1e9,
            "cpu": _cpu() - cpu,
        }

    async def cmd_drain(self, expected_by_chat: dict[str, int], timeout_s: float) -> dict[str, Any]:
        """Wait until every member has every message of its chat (or the timeout); report."""
        cpu = _cpu()
        members = [c for c in self.clients if c.plan.chat is not None]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(
                c.closed or c.unique >= expected_by_chat.get(c.plan.chat or "", 0) for c in members
            ):
                break
            await asyncio.sleep(POLL_S)
        loss = sum(max(0, expected_by_chat.get(c.plan.chat or "", 0) - c.unique) for c in members)
        return self._report(loss=loss, cpu=_cpu() - cpu)

    def _on_fanout_frame(self, client: Client, payload: bytes) -> None:
        if payload.startswith(_BATCH_PREFIX):
            for inner in _decode_batch(payload).data.messages:
                self._on_fanout_event(client, inner)
            return
        try:
            frame = _decode(payload)
        except msgspec.ValidationError:
            self.errors += 1  # only `error` frames have a string data.message
            return
        self._on_fanout_event(client, frame)

    def _on_fanout_event(self, client: Client, frame: _InFrame) -> None:
        message = frame.data.message
        if frame.type != "message" or message is None:
            if frame.type == "error":
                self.errors += 1
            else:
                self.other_frames += 1
            return
        now = time.monotonic_ns()
        seq = message.seq
        if seq > client.last_seq:
            if seq != client.last_seq + 1:
                client.gaps += 1
            client.last_seq = seq
            client.unique += 1
        else:
            client.reordered += 1
            return
        sent_ns, sender, n = message.content.split(" ")
        gid = int(sender)
        number = int(n)
        if number <= client.last_n.get(gid, 0):
            client.fifo_errors += 1
        client.last_n[gid] = number
        sent = int(sent_ns)
        start, end = self.window
        if start <= sent < end:
            self.measured += 1
            self.latencies_us.append((now - sent) // 1000)

    # ------------------------------------------------------------------ pingpong

    async def cmd_pingpong(self, warmup_s: float, measure_s: float) -> dict[str, Any]:
        """Closed loop: every client keeps one `ping` in flight; count round trips."""
        self._reset(self._on_pong_frame)
        cpu = _cpu()
        now = time.monotonic_ns()
        self.window = (now + int(warmup_s * 1e9), now + int((warmup_s + measure_s) * 1e9))
        self.running = True
        for client in self.clients:
            self._ping(client)
        await asyncio.sleep(warmup_s + measure_s)
        self.running = False
        await asyncio.sleep(0.2)  # let the last round trips land
        return self._report(loss=0, cpu=_cpu() - cpu)

    def _ping(self, client: Client) -> None:
        client.outstanding_ns = time.monotonic_ns()
        client.send(_ping_frame(client.outstanding_ns))

    def _on_pong_frame(self, client: Client, payload: bytes) -> None:
        try:
            frame = _decode(payload)
        except msgspec.ValidationError:
            self.errors += 1
            return
        if frame.type != "pong":
            self.other_frames += 1
            return
        now = time.monotonic_ns()
        if frame.data.timestamp != client.outstanding_ns:
            client.reordered += 1
        start, end = self.window
        if start <= now < end:
            self.measured += 1
            self.latencies_us.append((now - client.outstanding_ns) // 1000)
        if self.running:
            self._ping(client)

    # ------------------------------------------------------------------ agent

    async def cmd_agent(self, agent_id: str, warmup_s: float, measure_s: float) -> dict[str, Any]:
        """Closed loop per chat: send a message to the agent, wait for its reply, repeat."""
        self._reset(self._on_agent_frame)
        self.agent_id = agent_id
        cpu = _cpu()
        now = time.monotonic_ns()
        self.window = (now + int(warmup_s * 1e9), now + int((warmup_s + measure_s) * 1e9))
        self.running = True
        for client in self.clients:
            self._ask(client)
        await asyncio.sleep(warmup_s + measure_s)
        self.running = False
        deadline = time.monotonic() + 5.0
        # Polling, not an Event: replies are counted in a sync callback per frame.
        while time.monotonic() < deadline and any(  # noqa: ASYNC110
            c.outstanding_ns and not c.closed for c in self.clients
        ):
            await asyncio.sleep(POLL_S)
        loss = sum(1 for c in self.clients if c.outstanding_ns)  # replies that never came
        return self._report(loss=loss, cpu=_cpu() - cpu)

    def _ask(self, client: Client) -> None:
        client.sent += 1
        client.outstanding_ns = time.monotonic_ns()
        chat = client.plan.chat
        assert chat is not None
        client.send(_message_frame(chat, client.plan.gid, client.sent, agent_id=self.agent_id))

    def _on_agent_frame(self, client: Client, payload: bytes) -> None:
        try:
            frame = _decode(payload)
        except msgspec.ValidationError:
            self.errors += 1
            return
        message = frame.data.message
        if frame.type != "message" or message is None:
            self.other_frames += 1
            return
        if message.seq != client.last_seq + 1:
            client.gaps += 1
        client.last_seq = max(client.last_seq, message.seq)
        client.unique += 1
        if message.role != "assistant":
            return
        meta = message.metadata
        if meta is not None and meta.messageIndex < meta.totalMessages:
            return  # a long reply comes in parts; the last one completes the round trip
        if frame.data.messageId != f"m{client.plan.gid}-{client.sent}":
            client.fifo_errors += 1
        now = time.monotonic_ns()
        start, end = self.window
        if start <= now < end:
            self.measured += 1
            self.latencies_us.append((now - client.outstanding_ns) // 1000)
        client.outstanding_ns = 0
        if self.running:
            self._ask(client)

    # ------------------------------------------------------------------ idle

    async def cmd_hold(self, seconds: float) -> dict[str, Any]:
        """Keep every connection idle for `seconds` (the server's pings keep running)."""
        await asyncio.sleep(seconds)
        return {"open": sum(1 for c in self.clients if not c.closed), "total": len(self.clients)}

    # ------------------------------------------------------------------ helpers

    def _reset(self, on_payload: Callable[[Client, bytes], None]) -> None:
        self.on_payload = on_payload
        self.latencies_us = []
        self.measured = 0
        self.errors = 0
        self.other_frames = 0

    def _report(self, *, loss: int, cpu: float) -> dict[str, Any]:
        clients = self.clients
        return {
            "measured": self.measured,
            "latencies_us": self.latencies_us,
            "loss": loss,
            "gaps": sum(c.gaps for c in clients),
            "reordered": sum(c.reordered for c in clients),
            "fifo_errors": sum(c.fifo_errors for c in clients),
            "errors": self.errors,
            "other_frames": self.other_frames,
            "closed": sum(1 for c in clients if c.closed),
            "close_codes": sorted({c.close_code for c in clients if c.close_code}),
            "cpu": cpu,
        }

    async def _close_all(self) -> None:
        for client in self.clients:
            if client.transport is not None and not client.closed:
                client.closed = True
                client.transport.send_close()
                client.transport.disconnect()
        await asyncio.sleep(0.05)


def _interleave_chats(senders: list[Client]) -> list[Client]:
    """Order senders so consecutive sends go to different chats.

    Round robin over this order spreads each chat's messages evenly in time, instead of
    a burst of one message per member every period.
    """
    by_chat: dict[str, list[Client]] = {}
    for client in senders:
        by_chat.setdefault(client.plan.chat or "", []).append(client)
    groups = list(by_chat.values())
    depth = max((len(group) for group in groups), default=0)
    return [group[i] for i in range(depth) for group in groups if i < len(group)]


def _join_frame(chat: str) -> bytes:
    return b'{"type":"chat_update","data":{"action":"join","chatId":"%s"},"timestamp":%d}' % (
        chat.encode(),
        time.time_ns() // 1_000_000,
    )


def _message_frame(chat: str, gid: int, n: int, agent_id: str | None = None) -> bytes:
    agent = f',"agentId":"{agent_id}"' if agent_id else ""
    return (
        f'{{"type":"message","data":{{"chatId":"{chat}","content":"{time.monotonic_ns()} {gid} {n}"'
        f',"messageId":"m{gid}-{n}"{agent}}},"timestamp":{time.time_ns() // 1_000_000}}}'
    ).encode()


def _ping_frame(stamp_ns: int) -> bytes:
    return b'{"type":"ping","data":{"timestamp":%d},"timestamp":%d}' % (
        stamp_ns,
        time.time_ns() // 1_000_000,
    )


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def worker_main(conn: Connection, url: str, plans: list[Plan], cpus: set[int]) -> None:
    """Entry point of a forked worker process."""
    pin_to(0, cpus)

    async def run() -> None:
        await Worker(url, plans).serve(conn)

    uvloop.run(run())
