"""Micro-benchmarks of the per-frame hot path: what one message costs before the kernel.

decode + validate a client `message` frame, encode one broadcast and frame it, fan it out
to 100 members of a room, coalesce a batch for 100 `?batch=1` members, and the rate-limit
check every frame pays. Compare runs between commits with `pytest-benchmark compare`
(results are saved under bench/results/micro).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gurukul_fast import protocol as p
from gurukul_fast.auth import Principal
from gurukul_fast.config import Config
from gurukul_fast.flusher import BatchFlusher
from gurukul_fast.framing import text_frame
from gurukul_fast.rooms import RoomEvent, RoomTable
from gurukul_fast.session import ConnectionState, RateKind, RateLimits, TokenBucket

MESSAGE_FRAME = (
    b'{"type":"message","data":{"chatId":"chat-123","content":"Hello, how are you?",'
    b'"agentId":"therapist","messageId":"temp-1234567890"},"timestamp":1703123456789,'
    b'"messageId":"temp-1234567890"}'
)
ROOM_SIZE = 100


def _broadcast_event() -> p.MessageEvent:
    message = p.WireMessage(
        id="msg-1703123456789-0a1b2c3d4e",
        chat_id="chat-123",
        user_id="user-456",
        agent_id="therapist",
        content="Hello, how are you?",
        role="user",
        timestamp="2024-01-15T10:30:00.000Z",
        seq=42,
        metadata={},
    )
    return p.MessageEvent(p.MessageEventData("chat-123", message, "temp-1234567890"), 1)


class _Peer:
    """A member that only counts what it is given: measures the room loop, not a socket."""

    __slots__ = ("batch", "conn_id", "received", "user_id")

    def __init__(self, conn_id: int, batch: bool = False) -> None:
        self.conn_id = conn_id
        self.user_id = f"user-{conn_id}"
        self.batch = batch
        self.received = 0

    def deliver(self, frame: bytes, *, lossy: bool = False) -> None:
        self.received += 1


def test_decode_message_frame(benchmark: Any) -> None:
    frame = benchmark(p.decode_client_frame, MESSAGE_FRAME)
    assert isinstance(frame, p.MessageFrame)


def test_decode_invalid_frame(benchmark: Any) -> None:
    """The slow path a bad frame takes (classified into the SPEC's three errors)."""
    bad = MESSAGE_FRAME.replace(b'"content":"Hello, how are you?"', b'"content":42')
    failure = benchmark(p.decode_client_frame, bad)
    assert isinstance(failure, p.DecodeFailure)


def test_encode_broadcast(benchmark: Any) -> None:
    event = _broadcast_event()
    payload = benchmark(p.encode, event)
    assert payload.startswith(b'{"type":"message"')


def test_build_and_encode_broadcast(benchmark: Any) -> None:
    """Struct construction included: what the server does once per stored message."""
    payload = benchmark(lambda: p.encode(_broadcast_event()))
    assert b'"seq":42' in payload


def test_text_frame(benchmark: Any) -> None:
    payload = p.encode(_broadcast_event())
    frame = benchmark(text_frame, payload)
    assert frame.endswith(payload)


def test_room_publish_100_members(benchmark: Any) -> None:
    rooms = RoomTable()
    peers = [_Peer(i) for i in range(ROOM_SIZE)]
    for peer in peers:
        rooms.join("chat-123", peer)
    event = RoomEvent("chat-123", p.encode(_broadcast_event()), "message")
    delivered = benchmark(rooms.publish, event)
    assert delivered == ROOM_SIZE


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop that never runs: the flusher only schedules handles on it."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_batch_coalesce_and_flush_100_members(
    benchmark: Any, loop: asyncio.AbstractEventLoop
) -> None:
    """One batch interval of a busy chat: 5 messages, each followed by its chat summary
    (coalesced to the latest), queued and flushed as one frame shared by 100 members."""
    flusher = BatchFlusher(0.1, loop)
    rooms = RoomTable(flusher)
    peers = [_Peer(i, batch=True) for i in range(ROOM_SIZE)]
    for peer in peers:
        rooms.join("chat-123", peer)
    message = p.encode(_broadcast_event())
    summary = b'{"type":"chat_update","data":{"chatId":"chat-123"},"timestamp":1}'
    events = [
        event
        for _ in range(5)
        for event in (
            RoomEvent("chat-123", message, "message"),
            RoomEvent("chat-123", summary, "chat_update", coalesce_key="chat_update"),
        )
    ]

    def interval() -> None:
        for event in events:
            rooms.publish(event)
        flusher.flush_all()

    benchmark(interval)
    assert peers[0].received > 0


def test_token_bucket_take(benchmark: Any) -> None:
    bucket = TokenBucket(10**9, time.monotonic())
    assert benchmark(lambda: bucket.take(time.monotonic())) == 0.0


@pytest.fixture
def state() -> ConnectionState:
    config = Config(message_rate_limit=10**9)
    now = time.monotonic()
    principal = Principal("user-456", frozenset(), time.time() + 3600)
    return ConnectionState(1, principal, RateLimits(config, now))


def test_connection_check_rate(benchmark: Any, state: ConnectionState) -> None:
    wait = benchmark(lambda: state.check_rate(RateKind.MESSAGE, time.monotonic(), 50))
    assert wait == 0.0
