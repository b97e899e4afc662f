"""Every network broker, against the machine's real Redis and NATS: two nodes in one process.

One suite, parametrised over the backends (as the storage conformance suite is). Each test
uses its own channel prefix, so tests never see each other's traffic. Nothing is skipped:
if Redis or NATS is down, `start()` raises BrokerUnavailable and the test errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from gurukul_fast.broker import Broker, load_broker
from gurukul_fast.rooms import RoomEvent
from tests.support.server import UNIT
from tests.support.services import NATS_URL, REDIS_URL, nats_stopped, redis_stopped

BACKENDS: dict[str, tuple[str, Callable[[], contextlib.AbstractContextManager[None]]]] = {
    "redis": (REDIS_URL, redis_stopped),
    "nats": (NATS_URL, nats_stopped),
}


class Node:
    """A broker plus what it handed to the chat layer."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.got: list[RoomEvent] = []
        self.gaps: list[frozenset[str]] = []

    async def start(self) -> Node:
        await self.broker.start(self.got.append, self.gaps.append)
        return self

    def kinds(self, chat_id: str | None = None) -> list[str]:
        return [e.kind for e in self.got if chat_id is None or e.chat_id == chat_id]


class Cluster:
    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.url, self.stopped = BACKENDS[backend]
        self.prefix = f"t{uuid.uuid4().hex[:12]}"
        self.nodes: list[Node] = []

    async def node(self) -> Node:
        node = Node(load_broker(f"{self.url}?prefix={self.prefix}"))
        self.nodes.append(node)
        return await node.start()


@pytest.fixture(params=sorted(BACKENDS))
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    made = Cluster(request.param)
    yield made
    for node in made.nodes:
        await node.broker.close()


async def eventually(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s * UNIT
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def event(chat_id: str, kind: str, **fields: object) -> RoomEvent:
    return RoomEvent(chat_id, f'{{"type":"{kind}"}}'.encode(), kind, **fields)  # type: ignore[arg-type]


async def test_events_cross_nodes_and_connection_ids_do_not(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    for node in (a, b):
        node.broker.subscribe("chat-1")
    assert await a.broker.settle()
    assert await b.broker.settle()
    sent = event("chat-1", "message", exclude_conn=7, exclude_user="alice", coalesce_key="k")
    a.broker.publish(sent)
    await eventually(lambda: len(b.got) == 1)
    received = b.got[0]
    assert received.exclude_conn == 0  # connection ids are node-local
    assert (received.chat_id, received.payload, received.kind) == (
        "chat-1",
        sent.payload,
        "message",
    )
    assert (received.exclude_user, received.coalesce_key) == ("alice", "k")
    await eventually(lambda: a.broker.stats.own_dropped == 1)  # came back to a, dropped
    assert a.got == []


async def test_a_node_receives_only_the_chats_it_subscribed(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    b.broker.subscribe("mine")
    b.broker.subscribe("sentinel")
    assert await b.broker.settle()
    for chat in ("other-1", "mine", "other-2"):
        a.broker.publish(event(chat, f"to-{chat}"))
    a.broker.publish(event("sentinel", "end"))
    await eventually(lambda: "end" in b.kinds())
    await asyncio.sleep(0.1 * UNIT)
    assert b.kinds() == ["to-mine", "end"] or sorted(b.kinds()) == ["end", "to-mine"]

    b.broker.unsubscribe("mine")
    assert await b.broker.settle()
    a.broker.publish(event("mine", "after-leave"))
    a.broker.publish(event("sentinel", "end-2"))
    await eventually(lambda: "end-2" in b.kinds())
    await asyncio.sleep(0.1 * UNIT)
    assert "after-leave" not in b.kinds()


async def test_two_nodes_hear_each_other_and_never_themselves(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    for node in (a, b):
        node.broker.subscribe("room")
    assert await a.broker.settle()
    assert await b.broker.settle()
    for i in range(50):
        a.broker.publish(event("room", f"a{i}"))
        b.broker.publish(event("room", f"b{i}"))
    await eventually(lambda: len(a.got) == 50 and len(b.got) == 50)
    assert a.kinds() == [f"b{i}" for i in range(50)]
    assert b.kinds() == [f"a{i}" for i in range(50)]


async def test_1000_events_arrive_once_each_in_publish_order(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    chats = ["c0", "c1", "c2"]
    for chat in chats:
        b.broker.subscribe(chat)
    assert await b.broker.settle()
    for i in range(1000):
        a.broker.publish(event(chats[i % 3], f"e{i}"))
        if i % 97 == 0:
            await asyncio.sleep(0)  # let the writer run mid-stream, as real traffic does
    await eventually(lambda: len(b.got) >= 1000, 10.0)
    await asyncio.sleep(0.05 * UNIT)
    assert len(b.got) == 1000
    for n, chat in enumerate(chats):
        assert b.kinds(chat) == [f"e{i}" for i in range(n, 1000, 3)]
    if cluster.backend == "redis":  # one connection, one server: order holds across chats
        assert b.kinds() == [f"e{i}" for i in range(1000)]
    assert b.broker.stats.duplicates == 0


async def test_subscribes_of_one_turn_are_one_command(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    before = b.broker.stats.subscribe_commands
    chats = [f"room-{i}" for i in range(200)]
    for chat in chats:
        b.broker.subscribe(chat)
    assert await b.broker.settle()
    assert b.broker.stats.subscribe_commands - before == 1
    assert b.broker.subscriptions == frozenset(chats)
    for chat in chats:
        a.broker.publish(event(chat, chat))
    await eventually(lambda: len(b.got) == 200)
    assert sorted(b.kinds()) == sorted(chats)

    before = b.broker.stats.unsubscribe_commands
    for chat in chats:
        b.broker.unsubscribe(chat)
    assert await b.broker.settle()
    assert b.broker.stats.unsubscribe_commands - before == 1


async def test_restart_of_the_service_degrades_then_recovers_by_itself(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    b.broker.subscribe("c1")
    b.broker.subscribe("c2")
    assert await b.broker.settle()
    with cluster.stopped():
        await eventually(lambda: not a.broker.healthy and not b.broker.healthy, 10.0)
        a.broker.publish(event("c1", "typing", lossy=True))  # stale soon: discarded
        a.broker.publish(event("c1", "while-down"))  # waits in the outbox
        assert a.broker.stats.discarded == 1
        b.broker.subscribe("c3")  # applied after the reconnect
        assert not await b.broker.settle(0.05)
    await eventually(lambda: a.broker.healthy and b.broker.healthy, 20.0)
    # b resubscribed everything and told the chat layer to resync what it may have missed.
    await eventually(lambda: any(gap >= {"c1", "c2"} for gap in b.gaps), 5.0)
    assert await b.broker.settle()
    assert await a.broker.settle()
    assert b.broker.subscriptions == {"c1", "c2", "c3"}
    assert b.broker.stats.reconnects >= 1
    for chat in ("c1", "c2", "c3"):
        a.broker.publish(event(chat, f"after-{chat}"))
    await eventually(lambda: {"after-c1", "after-c2", "after-c3"} <= set(b.kinds()), 5.0)
    assert "typing" not in b.kinds()
    # Sent once the publisher was back; b gets it if it had resubscribed by then (else
    # the gap resync covers it). Never twice.
    assert b.kinds().count("while-down") <= 1
    assert a.broker.stats.published >= 4
