"""The room table: which local connections receive which chat, and the one publish seam.

Every event for a chat goes out through `RoomTable.publish(chat_id, frame)`. Today that
fans out to the local members; a cross-process broker slots in behind the same call
without the session logic noticing. The frame is encoded once by the caller and the same
bytes object is handed to every member. No asyncio here: fan-out is a synchronous loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

__all__ = ["Peer", "RoomTable"]


class Peer(Protocol):
    """A connection as the room layer sees it."""

    @property
    def conn_id(self) -> int: ...

    @property
    def user_id(self) -> str: ...

    def deliver(self, frame: bytes, *, lossy: bool = False) -> None:
        """Queue `frame` for the client. `lossy` frames (typing) may be dropped under
        pressure; the others are delivered or the connection is closed (slow consumer)."""
        ...


class RoomTable:
    """chat id → the local peers that joined it."""

    __slots__ = ("_rooms",)

    def __init__(self) -> None:
        self._rooms: dict[str, dict[int, Peer]] = {}

    def join(self, chat_id: str, peer: Peer) -> bool:
        """Add `peer` to the chat; return False if it was already there."""
        room = self._rooms.get(chat_id)
        if room is None:
            room = self._rooms[chat_id] = {}
        if peer.conn_id in room:
            return False
        room[peer.conn_id] = peer
        return True

    def leave(self, chat_id: str, peer: Peer) -> bool:
        """Remove `peer` from the chat; return False if it was not there. Empty rooms go."""
        room = self._rooms.get(chat_id)
        if room is None or room.pop(peer.conn_id, None) is None:
            return False
        if not room:
            del self._rooms[chat_id]
        return True

    def leave_all(self, chat_ids: Iterable[str], peer: Peer) -> None:
        """Remove `peer` from every chat in `chat_ids` (on disconnect)."""
        for chat_id in chat_ids:
            self.leave(chat_id, peer)

    def publish(
        self,
        chat_id: str,
        frame: bytes,
        *,
        exclude: int | None = None,
        exclude_user: str | None = None,
        lossy: bool = False,
    ) -> int:
        """Send `frame` to every member of the chat but connection `exclude` and the
        connections of `exclude_user`.

        Returns the number of deliveries. Costs one `deliver` call per member.
        """
        room = self._rooms.get(chat_id)
        if not room:
            return 0
        delivered = 0
        # Copy: a delivery may close a slow consumer, which leaves the room mid-loop.
        for conn_id, peer in tuple(room.items()):
            if conn_id != exclude and (exclude_user is None or peer.user_id != exclude_user):
                peer.deliver(frame, lossy=lossy)
                delivered += 1
        return delivered

    def members(self, chat_id: str) -> list[Peer]:
        room = self._rooms.get(chat_id)
        return list(room.values()) if room else []

    def is_member(self, chat_id: str, conn_id: int) -> bool:
        room = self._rooms.get(chat_id)
        return room is not None and conn_id in room

    @property
    def active_chats(self) -> int:
        """Chats with at least one local member (SPEC's `activeChats`)."""
        return len(self._rooms)
