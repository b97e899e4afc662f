"""The Redis cluster store against the machine's Redis: two or three "nodes" per test.

Every test has its own key prefix. Timers are shortened (heartbeat 0.2 s, node TTL 1 s,
presence grace 0.3 s) and scaled by UNIT. A crashed node is a real process killed with
SIGKILL. The restart test stops and starts the machine's redis-server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gurukul_fast.cluster import ClusterStoreUnavailable, load_cluster_store
from gurukul_fast.cluster.redis_store import RedisClusterStore
from tests.support.server import UNIT
from tests.support.services import REDIS_URL, redis_stopped

HEARTBEAT_S = 0.2 * UNIT
NODE_TTL_S = 1.0 * UNIT
GRACE_S = 0.3 * UNIT

Events = list[tuple[str, str, bool]]  # (node, user, online)


class Nodes:
    def __init__(self) -> None:
        self.prefix = f"t{uuid.uuid4().hex[:12]}"
        self.events: Events = []
        self.stores: list[RedisClusterStore] = []

    async def node(self, name: str) -> RedisClusterStore:
        store = RedisClusterStore(
            REDIS_URL,
            prefix=self.prefix,
            presence_grace_s=GRACE_S,
            heartbeat_interval_s=HEARTBEAT_S,
            node_ttl_s=NODE_TTL_S,
        )
        await store.start(lambda user, online: self.events.append((name, user, online)))
        self.stores.append(store)
        return store


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    made = Nodes()
    yield made
    for store in made.stores:
        await store.close()


async def eventually(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s * UNIT
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def eventually_async(check: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s * UNIT
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------- connection cap


async def test_the_per_user_cap_holds_across_nodes(nodes: Nodes) -> None:
    a, b = await nodes.node("a"), await nodes.node("b")
    assert await a.try_acquire("u1", "1", 3)
    assert await a.try_acquire("u1", "2", 3)
    assert await b.try_acquire("u1", "1", 3)  # conn ids are per node: no clash
    assert not await b.try_acquire("u1", "2", 3)
    assert not await a.try_acquire("u1", "3", 3)
    assert await a.try_acquire("u1", "1", 3)  # already counted: still True, counted once
    assert await b.try_acquire("u2", "9", 3)  # other users are not affected
    await a.release("u1", "2")
    await a.release("u1", "2")  # twice: no-op
    await a.release("u1", "nope")
    assert await b.try_acquire("u1", "2", 3)
    assert not await a.try_acquire("u1", "4", 3)


async def test_a_crashed_node_stops_counting_and_its_users_go_offline(nodes: Nodes) -> None:
    script = f"""
import asyncio
from gurukul_fast.cluster.redis_store import RedisClusterStore
async def main():
    store = RedisClusterStore({REDIS_URL!r}, prefix={nodes.prefix!r},
        heartbeat_interval_s={HEARTBEAT_S}, node_ttl_s={NODE_TTL_S})
    await store.start()
    assert await store.try_acquire("u1", "1", 3)
    assert await store.try_acquire("u1", "2", 3)
    assert await store.connection_opened("u1")
    print("ready", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20 * UNIT)
        assert line.strip() == b"ready"
        b = await nodes.node("b")
        assert await b.try_acquire("u1", "1", 3)
        assert not await b.try_acquire("u1", "2", 3)
        assert not await b.connection_opened("u1")  # online already, on the other node
        await b.connection_closed("u1")
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()
        # Within the node TTL (plus a heartbeat), the dead node's connections stop counting
        await eventually_async(lambda: b.try_acquire("u1", "2", 3), 3 * NODE_TTL_S + 1)
        # … and u1, present nowhere any more, is reported offline once, by b's sweep.
        await eventually(lambda: ("b", "u1", False) in nodes.events, 3 * NODE_TTL_S + 1)
        await asyncio.sleep(3 * HEARTBEAT_S)
        assert nodes.events.count(("b", "u1", False)) == 1
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# ---------------------------------------------------------------------- rate limits


async def test_the_rate_limit_holds_across_nodes(nodes: Nodes) -> None:
    a, b = await nodes.node("a"), await nodes.node("b")
    allowed = 0
    waits = []
    for i in range(80):
        store = a if i % 2 else b
        wait = await store.check_rate("u1", "message", 60)
        if wait == 0.0:
            allowed += 1
        else:
            waits.append(wait)
    # 60 per minute for the user, cluster-wide (a token may refill during the test).
    assert 60 <= allowed <= 61
    assert waits
    assert all(0.0 < w <= 1.0 for w in waits)
    assert await a.check_rate("u2", "message", 60) == 0.0  # per user
    assert await a.check_rate("u1", "typing", 60) == 0.0  # per kind


async def test_most_rate_checks_are_answered_without_io(nodes: Nodes) -> None:
    a = await nodes.node("a")
    assert a.check_rate_cached("u1", "typing", 600) is None  # no lease yet: ask Redis
    assert await a.check_rate("u1", "typing", 600) == 0.0  # leases 25 tokens
    cached = [a.check_rate_cached("u1", "typing", 600) for _ in range(24)]
    assert cached == [0.0] * 24
    assert a.check_rate_cached("u1", "typing", 600) is None


# ---------------------------------------------------------------------- presence


async def test_presence_has_a_grace_period_across_nodes(nodes: Nodes) -> None:
    a, b = await nodes.node("a"), await nodes.node("b")
    assert await a.connection_opened("u1")  # first connection anywhere: online
    assert not await a.connection_opened("u1")
    assert not await b.connection_opened("u1")
    await a.connection_closed("u1")
    await a.connection_closed("u1")
    await b.connection_closed("u1")
    # Reconnect within the grace period, to the other node: nobody went offline.
    await asyncio.sleep(GRACE_S / 3)
    assert not await b.connection_opened("u1")
    await asyncio.sleep(GRACE_S * 2)
    assert nodes.events == []
    # The last connection goes: offline once, after the grace period.
    await b.connection_closed("u1")
    await asyncio.sleep(GRACE_S / 2)
    assert nodes.events == []
    await eventually(lambda: nodes.events == [("b", "u1", False)], 2.0)
    await asyncio.sleep(GRACE_S)
    assert nodes.events == [("b", "u1", False)]
    assert await a.connection_opened("u1")  # and back online


async def test_close_withdraws_the_node(nodes: Nodes) -> None:
    a, b = await nodes.node("a"), await nodes.node("b")
    assert await a.try_acquire("u1", "1", 1)
    assert await a.connection_opened("u1")
    await a.close()
    nodes.stores.remove(a)
    assert nodes.events == [("a", "u1", False)]
    assert await b.try_acquire("u1", "1", 1)
    assert await b.connection_opened("u1")


async def test_start_fails_loudly_when_redis_is_unreachable() -> None:
    store = load_cluster_store("redis://127.0.0.1:1/0")
    with pytest.raises(ClusterStoreUnavailable):
        await store.start()


# ---------------------------------------------------------------------- Redis restart


async def test_redis_restart_degrades_to_local_then_rewrites_state(nodes: Nodes) -> None:
    a, b = await nodes.node("a"), await nodes.node("b")
    assert await a.try_acquire("u1", "1", 3)
    assert await a.try_acquire("u1", "2", 3)
    assert await a.connection_opened("u1")
    with redis_stopped():
        # The first call notices the outage and answers from local state, without raising.
        assert await b.try_acquire("u1", "1", 3)
        assert await a.check_rate("u9", "message", 60) == 0.0
        await eventually(lambda: not a.healthy and not b.healthy, 5.0)
        # Node-local answers while down: never blocks, never raises.
        assert await a.try_acquire("u1", "3", 3)
        assert not await a.try_acquire("u1", "4", 3)  # the local count still caps
        assert await a.check_rate("u1", "message", 60) == 0.0
        await a.release("u1", "3")
    # Redis came back empty; each node rewrites its own state at the next heartbeat.
    await eventually(lambda: a.healthy and b.healthy, 10.0)
    await asyncio.sleep(3 * HEARTBEAT_S)
    # a holds 2 ("1", "2"), b holds 1 ("1", counted while down): 3 cluster-wide.
    assert not await b.try_acquire("u1", "2", 3)
    assert not await a.try_acquire("u1", "5", 3)
    await b.release("u1", "1")
    assert await a.try_acquire("u1", "5", 3)
    assert not await b.connection_opened("u1")  # a's presence survived too
