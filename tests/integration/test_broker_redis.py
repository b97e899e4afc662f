"""Redis-specific broker behaviour, checked on the server itself (CLIENT LIST, PUBSUB)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gurukul_fast.broker.redis_broker import RedisBroker
from gurukul_fast.rooms import RoomEvent
from tests.support.server import UNIT
from tests.support.services import REDIS_URL


@pytest.fixture
async def admin() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def pair() -> AsyncIterator[tuple[RedisBroker, RedisBroker, list[RoomEvent]]]:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    a = RedisBroker(REDIS_URL, prefix=prefix)
    b = RedisBroker(REDIS_URL, prefix=prefix)
    got: list[RoomEvent] = []
    await a.start(lambda e: None)
    await b.start(got.append)
    yield a, b, got
    await a.close()
    await b.close()


async def client_entry(admin: Redis, name: str) -> dict[str, str]:
    for entry in await admin.client_list():
        if entry.get("name") == name:
            return {k: str(v) for k, v in entry.items()}
    raise AssertionError(f"no Redis client named {name}")


async def eventually(predicate: object, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s * UNIT
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def test_one_subscriber_connection_holds_exactly_the_local_chats(
    pair: tuple[RedisBroker, RedisBroker, list[RoomEvent]], admin: Redis
) -> None:
    _, b, _ = pair
    chats = [f"room-{i}" for i in range(200)]
    for chat in chats:
        b.subscribe(chat)
    assert await b.settle()
    entry = await client_entry(admin, f"gurukul-sub-{b.node_id[:12]}")
    assert entry["sub"] == "200"
    assert entry["cmd"] == "subscribe"  # its last command: one SUBSCRIBE for all 200
    assert b.stats.subscribe_commands == 1
    counts = dict(await admin.pubsub_numsub(b.channel("room-0"), b.channel("room-199")))
    assert set(counts.values()) == {1}
    for chat in chats[:150]:
        b.unsubscribe(chat)
    assert await b.settle()
    entry = await client_entry(admin, f"gurukul-sub-{b.node_id[:12]}")
    assert entry["sub"] == "50"
    assert b.stats.unsubscribe_commands == 1


async def test_a_killed_publisher_connection_loses_and_duplicates_nothing(
    pair: tuple[RedisBroker, RedisBroker, list[RoomEvent]], admin: Redis
) -> None:
    a, b, got = pair
    b.subscribe("stream")
    assert await b.settle()
    pub_name = f"gurukul-pub-{a.node_id[:12]}"
    total = 3000
    for i in range(total):
        a.publish(RoomEvent("stream", b"{}", f"e{i}"))
        if i % 100 == 99:
            await asyncio.sleep(0.001)
        if i == 1000:
            entry = await client_entry(admin, pub_name)
            await admin.execute_command("CLIENT", "KILL", "ID", entry["id"])
    await eventually(lambda: len(got) >= total, 20.0)
    await asyncio.sleep(0.1 * UNIT)
    assert [e.kind for e in got] == [f"e{i}" for i in range(total)]
    assert a.stats.reconnects >= 1


async def test_start_fails_loudly_when_redis_is_unreachable() -> None:
    from gurukul_fast.broker import BrokerUnavailable

    broker = RedisBroker("redis://127.0.0.1:1/0")
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1"):
        await broker.start(lambda e: None)
