"""The one-process cluster store (`memory:`): the same contract, node-local."""

from __future__ import annotations

import asyncio

from gurukul_fast.cluster import ClusterStore, load_cluster_store
from gurukul_fast.cluster.memory import LocalBuckets, MemoryClusterStore

GRACE_S = 0.05


async def test_cap_is_per_user_and_keys_count_once() -> None:
    store = MemoryClusterStore()
    await store.start()
    assert await store.try_acquire("u", "1", 2)
    assert await store.try_acquire("u", "1", 2)
    assert await store.try_acquire("u", "2", 2)
    assert not await store.try_acquire("u", "3", 2)
    assert await store.try_acquire("v", "3", 2)
    await store.release("u", "1")
    await store.release("u", "1")
    assert await store.try_acquire("u", "3", 2)
    await store.close()


async def test_presence_grace_period() -> None:
    events: list[tuple[str, bool]] = []
    store = MemoryClusterStore(presence_grace_s=GRACE_S)
    await store.start(lambda user, online: events.append((user, online)))
    assert await store.connection_opened("u")
    assert not await store.connection_opened("u")
    await store.connection_closed("u")
    await store.connection_closed("u")
    assert not await store.connection_opened("u")  # back within the grace period
    await asyncio.sleep(GRACE_S * 2)
    assert events == []
    await store.connection_closed("u")
    await asyncio.sleep(GRACE_S * 2)
    assert events == [("u", False)]
    assert await store.connection_opened("u")
    await store.close()


async def test_rate_limit_per_user_and_kind() -> None:
    store = MemoryClusterStore()
    await store.start()
    results = [await store.check_rate("u", "message", 10) for _ in range(11)]
    assert results[:10] == [0.0] * 10
    assert 0.0 < results[10] <= 6.0  # 10 a minute: one token every 6 s
    assert store.check_rate_cached("u", "typing", 10) == 0.0
    await store.close()


def test_idle_buckets_are_pruned() -> None:
    buckets = LocalBuckets()
    buckets.take("u", "message", 10, now=0.0)
    buckets.take("v", "message", 10, now=50.0)
    buckets.prune(now=61.0)
    assert len(buckets) == 1


def test_load_cluster_store() -> None:
    store = load_cluster_store("memory:")
    assert isinstance(store, ClusterStore)
    assert store.healthy
