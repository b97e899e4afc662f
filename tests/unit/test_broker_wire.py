"""The broker's pure parts: the wire envelope, the receive filter, URLs, the memory broker."""

from __future__ import annotations

import msgspec
import pytest

from gurukul_fast.broker import BrokerStats, UnknownBrokerScheme, load_broker
from gurukul_fast.broker.memory import MemoryBroker
from gurukul_fast.broker.nats_broker import NatsBroker, escape_token
from gurukul_fast.broker.redis_broker import RedisBroker, split_prefix
from gurukul_fast.broker.wire import (
    CARRIED_FIELDS,
    Envelope,
    Inbound,
    decode_envelope,
    encode_event,
    encode_gap,
)
from gurukul_fast.rooms import RoomEvent

EVENT = RoomEvent(
    "chat-1",
    b'{"type":"read_receipt"}',
    "read_receipt",
    exclude_conn=42,
    exclude_user="alice",
    lossy=True,
    coalesce_key="typing:alice",
    receipt=("alice", ("msg-1", "msg-2")),
)


def test_every_room_event_field_crosses_the_wire_but_exclude_conn() -> None:
    fields = set(RoomEvent.__struct_fields__)
    assert fields - set(CARRIED_FIELDS) == {"exclude_conn"}, (
        "RoomEvent gained a field: add it to broker.wire.Envelope and CARRIED_FIELDS"
    )
    assert set(CARRIED_FIELDS) <= set(Envelope.__struct_fields__)


def test_envelope_round_trip_keeps_every_field_and_resets_exclude_conn() -> None:
    delivered: list[RoomEvent] = []
    inbound = Inbound("node-b", {"chat-1"}, BrokerStats(), delivered.append, None)
    inbound.handle(encode_event("node-a", 1, EVENT))
    assert delivered == [msgspec.structs.replace(EVENT, exclude_conn=0)]


def test_the_envelope_is_a_compact_array() -> None:
    data = encode_event("a" * 32, 7, RoomEvent("c", b"{}", "message"))
    assert msgspec.msgpack.decode(data)[:5] == ["a" * 32, 7, "c", b"{}", "message"]
    assert len(data) < 60  # no field names on the wire


def test_own_events_are_dropped() -> None:
    stats = BrokerStats()
    delivered: list[RoomEvent] = []
    inbound = Inbound("me", {"chat-1"}, stats, delivered.append, None)
    inbound.handle(encode_event("me", 1, EVENT))
    assert delivered == []
    assert stats.own_dropped == 1


def test_duplicates_are_dropped_per_chat_and_origin() -> None:
    stats = BrokerStats()
    delivered: list[RoomEvent] = []
    inbound = Inbound("me", {"c1", "c2"}, stats, delivered.append, None)
    for origin, seq, chat in [
        ("a", 1, "c1"),
        ("a", 2, "c2"),
        ("a", 1, "c1"),  # re-sent batch
        ("b", 1, "c1"),  # another origin's own numbering
        ("a", 3, "c1"),
        ("a", 2, "c2"),  # re-sent
    ]:
        inbound.handle(encode_event(origin, seq, RoomEvent(chat, b"{}", f"{origin}{seq}")))
    assert [e.kind for e in delivered] == ["a1", "a2", "b1", "a3"]
    assert stats.duplicates == 2
    assert stats.received == 4


def test_events_of_chats_no_longer_wanted_are_dropped() -> None:
    wanted = {"c1"}
    delivered: list[RoomEvent] = []
    inbound = Inbound("me", wanted, BrokerStats(), delivered.append, None)
    inbound.handle(encode_event("a", 1, RoomEvent("c2", b"{}", "message")))
    assert delivered == []


def test_gap_notices_reach_the_gap_handler_not_the_rooms() -> None:
    gaps: list[frozenset[str]] = []
    delivered: list[RoomEvent] = []
    inbound = Inbound("me", {"c1"}, BrokerStats(), delivered.append, gaps.append)
    inbound.handle(encode_gap("a", 5, "c1"))
    assert gaps == [frozenset({"c1"})]
    assert delivered == []


def test_garbage_is_counted_and_never_raises() -> None:
    stats = BrokerStats()
    inbound = Inbound("me", {"c1"}, stats, lambda e: None, None)
    inbound.handle(b"\xc1not msgpack")
    inbound.handle(msgspec.msgpack.encode(["x"]))
    assert stats.malformed == 2
    decoded = decode_envelope(encode_event("a", 1, EVENT))
    assert decoded.origin == "a"


def test_a_failing_deliver_does_not_stop_the_receiver() -> None:
    def boom(event: RoomEvent) -> None:
        raise RuntimeError("boom")

    stats = BrokerStats()
    inbound = Inbound("me", {"chat-1"}, stats, boom, None)
    inbound.handle(encode_event("a", 1, EVENT))
    inbound.handle(encode_event("a", 2, EVENT))
    assert stats.received == 2


@pytest.mark.parametrize(
    ("chat_id", "token"),
    [
        ("chat-1", "chat-1"),
        ("a.b", "a%2Eb"),
        ("a%2Eb", "a%252Eb"),  # the escape character itself is escaped: one-to-one
        ("x*>y z", "x%2A%3Ey%20z"),
        ("user@host:1", "user@host:1"),
        ("é", "%C3%A9"),
    ],
)
def test_chat_ids_become_one_nats_subject_token(chat_id: str, token: str) -> None:
    assert escape_token(chat_id) == token


def test_urls_carry_our_prefix_and_nothing_else_reaches_the_driver() -> None:
    assert split_prefix("redis://h:6379/2?prefix=t1&protocol=2") == (
        "redis://h:6379/2?protocol=2",
        "t1",
    )
    assert split_prefix("redis://h:6379/0") == ("redis://h:6379/0", "gurukul")
    broker = RedisBroker("redis://u:secret@h:6379/0?prefix=p")
    assert broker.channel("c-1") == b"p:chat:c-1"
    assert "secret" not in broker.url
    nats = NatsBroker("nats://h1:4222,h2:4222?prefix=q")
    assert nats.subject("a.b") == "q.chat.a%2Eb"
    assert nats.url == "nats://h1:4222,nats://h2:4222"


def test_load_broker_by_scheme() -> None:
    assert isinstance(load_broker("memory:"), MemoryBroker)
    assert isinstance(load_broker("redis://127.0.0.1:6379/0"), RedisBroker)
    assert isinstance(load_broker("rediss://127.0.0.1:6380/0"), RedisBroker)
    assert isinstance(load_broker("nats://127.0.0.1:4222"), NatsBroker)
    with pytest.raises(UnknownBrokerScheme, match="kafka"):
        load_broker("kafka://x")


def test_node_ids_are_unique_per_broker() -> None:
    assert len({load_broker("memory:").node_id for _ in range(100)}) == 100


async def test_the_memory_broker_only_keeps_books() -> None:
    broker = MemoryBroker()
    await broker.start(lambda e: None)
    broker.subscribe("c1")
    broker.subscribe("c1")
    broker.subscribe("c2")
    broker.unsubscribe("c2")
    broker.publish(EVENT)
    assert broker.subscriptions == frozenset({"c1"})
    assert broker.healthy
    assert await broker.settle()
    await broker.close()
