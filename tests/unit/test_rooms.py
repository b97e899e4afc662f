"""Unit tests of the room table: membership, fan-out framed once, exclusions, the lossy
flag, and members that asked for batches (`?batch=1`)."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field

import orjson
import pytest

from gurukul_fast.flusher import BatchFlusher
from gurukul_fast.framing import text_frame
from gurukul_fast.rooms import RoomEvent, RoomTable
from tests.support.server import UNIT


@dataclass
class RecordingPeer:
    """A peer that records what it was handed (the room layer's only view of a socket)."""

    conn_id: int
    user_id: str = "u"
    batch: bool = False
    received: list[tuple[bytes, bool]] = field(default_factory=list)
    got_frame: asyncio.Event | None = None

    def deliver(self, frame: bytes, *, lossy: bool = False) -> None:
        self.received.append((frame, lossy))
        if self.got_frame is not None:
            self.got_frame.set()


def unframe(frame: bytes) -> bytes:
    """The payload of one complete, unmasked, final TEXT frame (asserting it is one)."""
    assert frame[0] == 0x81, "FIN + TEXT"
    length = frame[1]
    assert length & 0x80 == 0, "server frames are not masked"
    offset = 2
    if length == 126:
        (length,) = struct.unpack("!H", frame[2:4])
        offset = 4
    elif length == 127:
        (length,) = struct.unpack("!Q", frame[2:10])
        offset = 10
    payload = frame[offset:]
    assert len(payload) == length
    return payload


def event(chat_id: str = "c", payload: bytes = b'{"type":"message"}', **kw: object) -> RoomEvent:
    return RoomEvent(chat_id=chat_id, payload=payload, kind="message", **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- framing


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_lengths(size: int) -> None:
    payload = b"x" * size
    assert unframe(text_frame(payload)) == payload


# ---------------------------------------------------------------- membership


def test_join_is_idempotent() -> None:
    rooms = RoomTable()
    peer = RecordingPeer(1)
    assert rooms.join("c", peer) is True
    assert rooms.join("c", peer) is False
    assert rooms.members("c") == [peer]
    assert rooms.is_member("c", 1)
    assert not rooms.is_member("c", 2)
    assert not rooms.is_member("other", 1)
    assert rooms.active_chats == 1


def test_leave_removes_and_drops_empty_rooms() -> None:
    rooms = RoomTable()
    a, b = RecordingPeer(1), RecordingPeer(2)
    rooms.join("c", a)
    rooms.join("c", b)
    assert rooms.leave("c", a) is True
    assert rooms.leave("c", a) is False
    assert rooms.members("c") == [b]
    assert rooms.active_chats == 1
    assert rooms.leave("c", b) is True
    assert rooms.members("c") == []
    assert rooms.active_chats == 0
    assert rooms.leave("never", a) is False


def test_one_peer_in_many_rooms() -> None:
    rooms = RoomTable()
    a, b = RecordingPeer(1), RecordingPeer(2)
    for chat in ("c1", "c2", "c3"):
        rooms.join(chat, a)
    rooms.join("c2", b)
    assert rooms.active_chats == 3
    for chat in ("c1", "c2", "c3"):
        rooms.leave(chat, a)
    assert rooms.active_chats == 1
    assert rooms.members("c2") == [b]


def test_members_is_a_copy() -> None:
    rooms = RoomTable()
    peer = RecordingPeer(1)
    rooms.join("c", peer)
    members = rooms.members("c")
    members.clear()
    assert rooms.members("c") == [peer]


# ---------------------------------------------------------------- publish


def test_publish_reaches_every_member_with_the_same_frame() -> None:
    rooms = RoomTable()
    peers = [RecordingPeer(i) for i in range(1, 5)]
    for peer in peers:
        rooms.join("c", peer)
    outsider = RecordingPeer(99)
    rooms.join("other", outsider)
    payload = b'{"type":"message","data":{}}'
    assert rooms.publish(event("c", payload)) == 4
    first = peers[0].received[0][0]
    assert unframe(first) == payload
    for peer in peers:
        assert len(peer.received) == 1
        assert peer.received[0][0] is first  # framed once, shared
        assert peer.received[0][1] is False
    assert outsider.received == []


def test_publish_excludes_one_connection() -> None:
    rooms = RoomTable()
    sender, other = RecordingPeer(1, "alice"), RecordingPeer(2, "bob")
    rooms.join("c", sender)
    rooms.join("c", other)
    assert rooms.publish(event(exclude_conn=1)) == 1
    assert sender.received == []
    assert len(other.received) == 1


def test_exclude_conn_spares_the_users_other_tabs() -> None:
    rooms = RoomTable()
    tab1, tab2 = RecordingPeer(1, "alice"), RecordingPeer(2, "alice")
    rooms.join("c", tab1)
    rooms.join("c", tab2)
    rooms.publish(event(exclude_conn=1))
    assert tab1.received == []
    assert len(tab2.received) == 1


def test_exclude_user_spares_every_connection_of_that_user() -> None:
    rooms = RoomTable()
    tab1, tab2, bob = RecordingPeer(1, "alice"), RecordingPeer(2, "alice"), RecordingPeer(3, "bob")
    for peer in (tab1, tab2, bob):
        rooms.join("c", peer)
    assert rooms.publish(event(exclude_user="alice")) == 1
    assert tab1.received == []
    assert tab2.received == []
    assert len(bob.received) == 1


def test_publish_passes_the_lossy_flag() -> None:
    rooms = RoomTable()
    peer = RecordingPeer(1)
    rooms.join("c", peer)
    rooms.publish(event(lossy=True))
    assert peer.received[0][1] is True


def test_publish_to_an_unknown_or_emptied_room_delivers_nothing() -> None:
    rooms = RoomTable()
    assert rooms.publish(event("nobody-here")) == 0
    peer = RecordingPeer(1)
    rooms.join("c", peer)
    rooms.leave("c", peer)
    assert rooms.publish(event("c")) == 0
    assert peer.received == []


def test_a_member_leaving_during_publish_does_not_break_fan_out() -> None:
    rooms = RoomTable()

    @dataclass
    class SlowPeer(RecordingPeer):
        def deliver(self, frame: bytes, *, lossy: bool = False) -> None:
            # A slow consumer is closed on delivery and leaves the room mid-loop.
            rooms.leave("c", self)

    slow = SlowPeer(1)
    fast = [RecordingPeer(i) for i in range(2, 5)]
    rooms.join("c", slow)
    for peer in fast:
        rooms.join("c", peer)
    assert rooms.publish(event()) == 4
    assert all(len(peer.received) == 1 for peer in fast)
    assert not rooms.is_member("c", 1)
    assert len(rooms.members("c")) == 3


def test_batch_peer_without_a_flusher_is_served_immediately() -> None:
    rooms = RoomTable()
    peer = RecordingPeer(1, batch=True)
    rooms.join("c", peer)
    rooms.publish(event(payload=b"{}"))
    assert unframe(peer.received[0][0]) == b"{}"


# ---------------------------------------------------------------- batch members


async def test_batch_members_get_one_batch_frame_per_turn() -> None:
    flusher = BatchFlusher(0.05, asyncio.get_running_loop())
    rooms = RoomTable(flusher)
    got = asyncio.Event()
    batched = RecordingPeer(1, "alice", batch=True, got_frame=got)
    immediate = RecordingPeer(2, "bob")
    rooms.join("c", batched)
    rooms.join("c", immediate)
    assert rooms.is_member("c", 1)
    assert rooms.members("c") == [immediate, batched]

    first, second = b'{"type":"message","n":1}', b'{"type":"message","n":2}'
    assert rooms.publish(event(payload=first)) == 2
    assert rooms.publish(event(payload=second)) == 2
    assert [unframe(f) for f, _ in immediate.received] == [first, second]
    assert batched.received == []  # not yet: batches leave at the end of the turn

    await asyncio.wait_for(got.wait(), 5 * UNIT)
    (frame, _), *rest = batched.received
    assert rest == []
    batch = orjson.loads(unframe(frame))
    assert batch["type"] == "batch"
    assert batch["data"]["messages"] == [orjson.loads(first), orjson.loads(second)]


async def test_batches_coalesce_by_key_and_respect_exclusions() -> None:
    flusher = BatchFlusher(0.05, asyncio.get_running_loop())
    rooms = RoomTable(flusher)
    alice_got, bob_got = asyncio.Event(), asyncio.Event()
    alice = RecordingPeer(1, "alice", batch=True, got_frame=alice_got)
    bob = RecordingPeer(2, "bob", batch=True, got_frame=bob_got)
    rooms.join("c", alice)
    rooms.join("c", bob)

    typing_on = b'{"type":"typing","on":true}'
    typing_off = b'{"type":"typing","on":false}'
    message = b'{"type":"message"}'
    rooms.publish(event(payload=typing_on, exclude_conn=1, coalesce_key="typing:alice"))
    rooms.publish(event(payload=typing_off, exclude_conn=1, coalesce_key="typing:alice"))
    rooms.publish(event(payload=message))

    await asyncio.wait_for(alice_got.wait(), 5 * UNIT)
    await asyncio.wait_for(bob_got.wait(), 5 * UNIT)
    alice_batch = orjson.loads(unframe(alice.received[0][0]))["data"]["messages"]
    bob_batch = orjson.loads(unframe(bob.received[0][0]))["data"]["messages"]
    assert alice_batch == [orjson.loads(message)]  # her own typing is not echoed
    assert bob_batch == [orjson.loads(typing_off), orjson.loads(message)]  # latest state only
