"""The policy every network broker shares (network.py), driven without sockets.

`RecordingBroker` is a NetworkBroker whose "server" is two lists: it records the
subscription changes and the published batches, and fails on demand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gurukul_fast.broker.network import NetworkBroker
from gurukul_fast.broker.wire import FLAG_GAP, decode_envelope
from gurukul_fast.rooms import RoomEvent


class RecordingBroker(NetworkBroker):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.changes: list[tuple[list[str], list[str]]] = []
        self.batches: list[list[tuple[str, bytes]]] = []
        self.fail_sends = 0

    async def start(self) -> None:
        self._begin(lambda e: None, None)
        self._set_healthy(True)

    async def _apply(self, add: Sequence[str], remove: Sequence[str]) -> None:
        self.changes.append((list(add), list(remove)))

    async def _send(self, batch: list[tuple[str, bytes]]) -> None:
        if self.fail_sends:
            self.fail_sends -= 1
            raise ConnectionError("lost")
        self.batches.append(batch)

    async def _close_connection(self) -> None:
        pass

    def sent(self) -> list[tuple[str, int, str]]:
        """(chat, seq, kind) of everything sent, in order."""
        out = []
        for batch in self.batches:
            for _, data in batch:
                envelope = decode_envelope(data)
                kind = "GAP" if envelope.flags & FLAG_GAP else envelope.kind
                out.append((envelope.chat_id, envelope.seq, kind))
        return out


def event(chat: str, kind: str = "message", lossy: bool = False) -> RoomEvent:
    return RoomEvent(chat, b"{}", kind, lossy=lossy)


async def test_subscribe_calls_of_one_window_become_one_change() -> None:
    broker = RecordingBroker(subscribe_delay_s=0.005)
    await broker.start()
    for i in range(300):
        broker.subscribe(f"c{i}")
    broker.subscribe("c1")  # idempotent
    broker.unsubscribe("c299")  # cancelled within the window: never sent
    assert await broker.settle(1.0)
    assert len(broker.changes) == 1
    added, removed = broker.changes[0]
    assert len(added) == 299
    assert "c299" not in added
    assert removed == []
    for i in range(10):
        broker.unsubscribe(f"c{i}")
    assert await broker.settle(1.0)
    assert broker.changes[1] == ([], sorted(f"c{i}" for i in range(10)))
    await broker.close()


async def test_publishes_go_out_in_order_in_batches() -> None:
    broker = RecordingBroker()
    await broker.start()
    for i in range(2500):
        broker.publish(event(f"c{i % 3}", f"k{i}"))
    assert await broker.settle(1.0)
    assert [kind for _, _, kind in broker.sent()] == [f"k{i}" for i in range(2500)]
    assert [seq for _, seq, _ in broker.sent()] == list(range(1, 2501))
    assert len(broker.batches) <= 3  # one turn's events are one pipeline (≤ 1000 each)
    await broker.close()


async def test_a_failed_batch_is_resent_first_after_the_reconnect() -> None:
    broker = RecordingBroker()
    await broker.start()
    broker.fail_sends = 1
    for i in range(5):
        broker.publish(event("c", f"k{i}"))
    await asyncio.sleep(0.01)
    assert not broker.healthy
    broker.publish(event("c", "k5"))
    broker._set_healthy(True)  # what the subclass does once reconnected
    assert await broker.settle(1.0)
    assert [kind for _, _, kind in broker.sent()] == [f"k{i}" for i in range(6)]
    await broker.close()


async def test_while_down_lossy_events_are_discarded_and_the_others_wait() -> None:
    broker = RecordingBroker()
    await broker.start()
    broker._set_healthy(False, "test")
    broker.publish(event("c", "typing", lossy=True))
    broker.publish(event("c", "message"))
    assert broker.stats.discarded == 1
    assert broker.pending == 1
    assert not await broker.settle(0.05)
    broker._set_healthy(True)
    assert await broker.settle(1.0)
    assert [kind for _, _, kind in broker.sent()] == ["message"]
    await broker.close()


async def test_past_the_bound_events_are_discarded_and_their_chats_get_a_gap_notice() -> None:
    broker = RecordingBroker(max_pending=3)
    await broker.start()
    broker._set_healthy(False, "test")
    for i in range(5):
        broker.publish(event("c1" if i < 4 else "c2", f"k{i}"))
    assert broker.stats.discarded == 2
    broker._set_healthy(True)
    assert await broker.settle(1.0)
    assert broker.sent() == [
        ("c1", 1, "k0"),
        ("c1", 2, "k1"),
        ("c1", 3, "k2"),
        ("c1", 4, "GAP"),
        ("c2", 5, "GAP"),
    ]
    await broker.close()


async def test_close_sends_what_is_queued_then_refuses_more() -> None:
    broker = RecordingBroker()
    await broker.start()
    for i in range(10):
        broker.publish(event("c", f"k{i}"))
    await broker.close()
    assert len(broker.sent()) == 10
    broker.publish(event("c", "late"))
    assert broker.pending == 0
