"""The room table: which local connections receive which chat, and the one publish seam.

Every event for a chat goes out through `RoomTable.publish(event)`. Today that fans out to
the local members; a cross-process broker slots in behind the same call without the session
logic noticing (a `RoomEvent` is plain data: bytes and ids). The payload is encoded once by
the caller and framed once here; every immediate member gets the same frame bytes, and the
members that asked for batches (`?batch=1`) get them through the `BatchFlusher`. No asyncio
here: fan-out is a synchronous loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import msgspec

from gurukul_fast.framing import text_frame

if TYPE_CHECKING:
    from gurukul_fast.flusher import BatchFlusher

__all__ = ["Peer", "RoomEvent", "RoomTable"]


class Peer(Protocol):
    """A connection as the room layer sees it."""

    @property
    def conn_id(self) -> int: ...

    @property
    def user_id(self) -> str: ...

    @property
    def batch(self) -> bool:
        """True if the client connected with `?batch=1`."""
        ...

    def deliver(self, frame: bytes, *, lossy: bool = False) -> None:
        """Queue one complete WebSocket frame for the client. `lossy` frames (typing) may be
        dropped under pressure; the others are delivered or the connection is closed."""
        ...


class RoomEvent(msgspec.Struct, frozen=True, gc=False):
    """One event for every member of a chat (minus the exclusions)."""

    chat_id: str
    payload: bytes  # the JSON frame, encoded once
    kind: str  # the frame's type
    exclude_conn: int = 0  # 0: nobody; else this connection does not get it
    exclude_user: str | None = None  # this user's connections do not get it
    lossy: bool = False  # may be shed under back-pressure (typing)
    # Batches keep only the latest event per coalesce key (typing per user, chat_update).
    coalesce_key: str | None = None
    # Read receipts in one batch are merged per reader: (reader, message ids).
    receipt: tuple[str, tuple[str, ...]] | None = None
    # For `message` events: the message's per-chat seq, so nodes deliver in seq order.
    message_seq: int = 0

    def excludes(self, peer: Peer) -> bool:
        return peer.conn_id == self.exclude_conn or peer.user_id == self.exclude_user


class _Room:
    __slots__ = ("batched", "immediate")

    def __init__(self) -> None:
        self.immediate: dict[int, Peer] = {}
        self.batched: dict[int, Peer] = {}

    def __bool__(self) -> bool:
        return bool(self.immediate) or bool(self.batched)


class RoomTable:
    """chat id → the local peers that joined it."""

    __slots__ = ("_flusher", "_rooms")

    def __init__(self, flusher: BatchFlusher | None = None) -> None:
        self._rooms: dict[str, _Room] = {}
        self._flusher = flusher

    def join(self, chat_id: str, peer: Peer) -> bool:
        """Add `peer` to the chat; return False if it was already there."""
        room = self._rooms.get(chat_id)
        if room is None:
            room = self._rooms[chat_id] = _Room()
        members = room.batched if peer.batch and self._flusher is not None else room.immediate
        if peer.conn_id in members:
            return False
        members[peer.conn_id] = peer
        return True

    def leave(self, chat_id: str, peer: Peer) -> bool:
        """Remove `peer` from the chat; return False if it was not there. Empty rooms go."""
        room = self._rooms.get(chat_id)
        if room is None:
            return False
        removed = room.immediate.pop(peer.conn_id, None) or room.batched.pop(peer.conn_id, None)
        if removed is None:
            return False
        if not room:
            del self._rooms[chat_id]
            if self._flusher is not None:
                self._flusher.forget(chat_id)
        return True

    def publish(self, event: RoomEvent) -> int:
        """Deliver `event` to every member of its chat but the excluded ones.

        Returns the number of members it went (or will go, batched) to. Frames the payload
        once; costs one `deliver` call per immediate member.
        """
        room = self._rooms.get(event.chat_id)
        if room is None:
            return 0
        delivered = 0
        if room.immediate:
            frame = text_frame(event.payload)
            lossy = event.lossy
            has_exclusions = event.exclude_conn != 0 or event.exclude_user is not None
            # Copy: a delivery may close a slow consumer, which leaves the room mid-loop.
            for peer in tuple(room.immediate.values()):
                if has_exclusions and event.excludes(peer):
                    continue
                peer.deliver(frame, lossy=lossy)
                delivered += 1
        if room.batched and self._flusher is not None:
            self._flusher.queue(event, room.batched)
            delivered += len(room.batched)
        return delivered

    def publish_together(self, events: tuple[RoomEvent, ...]) -> int:
        """Deliver several events of one chat, none with exclusions, in order.

        Immediate members get them as one concatenated frame run in one `deliver` call
        (a message and its summary cost one delivery, not two); batch members get each
        event queued. Returns the number of members reached.
        """
        room = self._rooms.get(events[0].chat_id)
        if room is None:
            return 0
        if room.immediate:
            frames = b"".join([text_frame(event.payload) for event in events])
            for peer in tuple(room.immediate.values()):
                peer.deliver(frames)
        if room.batched and self._flusher is not None:
            for event in events:
                self._flusher.queue(event, room.batched)
        return len(room.immediate) + len(room.batched)

    def members(self, chat_id: str) -> list[Peer]:
        room = self._rooms.get(chat_id)
        if room is None:
            return []
        return [*room.immediate.values(), *room.batched.values()]

    def is_member(self, chat_id: str, conn_id: int) -> bool:
        room = self._rooms.get(chat_id)
        return room is not None and (conn_id in room.immediate or conn_id in room.batched)

    @property
    def active_chats(self) -> int:
        """Chats with at least one local member (SPEC's `activeChats`)."""
        return len(self._rooms)
