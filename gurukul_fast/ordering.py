"""Per-chat seq order for message events when several nodes write to one chat.

Why: node A commits seq 5 and node B commits seq 6 a moment later, but B's broadcast may
reach a third node before A's. Every node must deliver a chat's messages in stored seq
order, so message events pass through `ChatOrder.admit`: the next expected seq goes out at
once (with any held successors); a later one is held until the gap fills, or until the
caller's short timer gives up waiting and fills it from storage (`fill`). A seq that was
already delivered is dropped. Events without a seq (typing, receipts, summaries) pass.

Pure and synchronous: the caller owns the timer and the storage read.
"""

from __future__ import annotations

from gurukul_fast.rooms import RoomEvent

__all__ = ["ChatOrder"]


class _ChatState:
    __slots__ = ("delivered", "held")

    def __init__(self, delivered: int) -> None:
        self.delivered = delivered  # highest seq delivered locally
        self.held: dict[int, RoomEvent] = {}


class ChatOrder:
    """The delivery position of every chat with local members."""

    def __init__(self) -> None:
        self._chats: dict[str, _ChatState] = {}

    def track(self, chat_id: str, last_seq: int) -> None:
        """Start tracking a chat whose messages up to `last_seq` are already known here."""
        if chat_id not in self._chats:
            self._chats[chat_id] = _ChatState(last_seq)

    def forget(self, chat_id: str) -> None:
        """No local member left: stop tracking (held events go with it)."""
        self._chats.pop(chat_id, None)

    def admit(self, event: RoomEvent) -> tuple[list[RoomEvent], bool]:
        """Return (events to deliver now, in order; True if a gap is now waiting)."""
        seq = event.message_seq
        state = self._chats.get(event.chat_id)
        if seq == 0 or state is None:
            return [event], False
        if seq <= state.delivered:
            return [], bool(state.held)
        if seq != state.delivered + 1:
            state.held[seq] = event
            return [], True
        ready = [event]
        state.delivered = seq
        ready.extend(self._release(state))
        return ready, bool(state.held)

    def position(self, chat_id: str) -> int:
        """The highest seq of `chat_id` delivered here (0 if untracked)."""
        state = self._chats.get(chat_id)
        return state.delivered if state is not None else 0

    def waiting_after(self, chat_id: str) -> int | None:
        """If `chat_id` has held events, the seq after which messages are missing."""
        state = self._chats.get(chat_id)
        if state is None or not state.held:
            return None
        return state.delivered

    def fill(self, chat_id: str, missing: list[RoomEvent]) -> list[RoomEvent]:
        """Deliver `missing` (read from storage, oldest first) and whatever they unblock.

        Held events beyond a gap that storage could not fill are released too: waiting
        any longer would stall the chat, and clients recover missing seqs by history.
        """
        state = self._chats.get(chat_id)
        if state is None:
            return []
        ready: list[RoomEvent] = []
        for event in missing:
            if event.message_seq > state.delivered:
                state.held.setdefault(event.message_seq, event)
        while state.held:
            lowest = min(state.held)
            state.delivered = lowest - 1
            released = list(self._release(state))
            ready.extend(released)
        return ready

    @staticmethod
    def _release(state: _ChatState) -> list[RoomEvent]:
        released = []
        while (following := state.held.pop(state.delivered + 1, None)) is not None:
            released.append(following)
            state.delivered += 1
        return released
