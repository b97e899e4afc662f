"""NATS-specific broker behaviour against the machine's nats-server."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from gurukul_fast.broker import BrokerUnavailable
from gurukul_fast.broker.nats_broker import NatsBroker
from gurukul_fast.rooms import RoomEvent
from tests.support.server import UNIT
from tests.support.services import NATS_URL


async def test_chat_ids_with_dots_and_wildcards_stay_one_subject_each() -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    a = NatsBroker(NATS_URL, prefix=prefix)
    b = NatsBroker(NATS_URL, prefix=prefix)
    got: list[RoomEvent] = []
    await a.start(lambda e: None)
    await b.start(got.append)
    try:
        b.subscribe("a.b")
        b.subscribe("x*")
        assert await b.settle()
        for chat in ("a", "a.b.c", "a%2Eb", "x", "xy", "a.b", "x*"):
            a.publish(RoomEvent(chat, b"{}", chat))
        assert await a.settle()
        assert await a.settle()  # a PING/PONG after the publishes: NATS has routed them all
        assert await b.settle()  # … and one on b's connection: b has read them all
        await asyncio.sleep(0.05 * UNIT)  # nats-py hands them to per-subscription tasks
        assert sorted(e.chat_id for e in got) == ["a.b", "x*"]
    finally:
        await a.close()
        await b.close()


async def test_start_fails_loudly_when_nats_is_unreachable() -> None:
    broker = NatsBroker("nats://127.0.0.1:1", timeout_s=1.0)
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1"):
        await broker.start(lambda e: None)
