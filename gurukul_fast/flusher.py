"""The batching flusher (SPEC "Message Batching") for clients that connect with `?batch=1`.

Theory of operation: events for a chat's batch members are queued per chat and leave as one
`{"type":"batch","data":{"messages":[…]}}` frame, encoded once per chat and shared by all of
its batch members, at most every `BATCH_INTERVAL_MS`. Inside a batch, typing keeps only the
latest state per user, `chat_update` only the latest summary, and read receipts are merged
per reader; messages are never dropped or merged. A chat that has been quiet for a full
interval flushes at the end of the current loop turn instead of waiting, so light traffic
gets no added latency while heavy traffic is coalesced.

Members excluded from some event (the typist, the reader) get a batch of their own built
from the same entries minus theirs; everyone else shares one frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import msgspec

from gurukul_fast import protocol as p
from gurukul_fast.framing import text_frame
from gurukul_fast.rooms import Peer, RoomEvent
from gurukul_fast.wire import now_ms

__all__ = ["BatchFlusher", "encode_batch"]


def encode_batch(payloads: list[bytes], timestamp_ms: int) -> bytes:
    """Join already-encoded frames into one batch frame without decoding them."""
    return b"".join(
        (
            b'{"type":"batch","data":{"messages":[',
            b",".join(payloads),
            b']},"timestamp":',
            str(timestamp_ms).encode(),
            b"}",
        )
    )


class _PendingChat:
    __slots__ = ("entries", "members", "receipts", "timer")

    def __init__(self, members: Mapping[int, Peer]) -> None:
        self.entries: list[RoomEvent] = []
        self.members = members  # live view of the chat's batch members
        self.receipts: dict[str, list[str]] = {}  # reader → merged message ids
        self.timer: asyncio.Handle | None = None


class BatchFlusher:
    """Queues room events per chat and flushes them as shared batch frames."""

    def __init__(self, interval_s: float, loop: asyncio.AbstractEventLoop) -> None:
        self._interval = interval_s
        self._loop = loop
        self._pending: dict[str, _PendingChat] = {}
        self._last_flush: dict[str, float] = {}

    def queue(self, event: RoomEvent, members: Mapping[int, Peer]) -> None:
        """Add `event` to its chat's next batch for `members` (the chat's batch members)."""
        chat_id = event.chat_id
        pending = self._pending.get(chat_id)
        if pending is None:
            pending = self._pending[chat_id] = _PendingChat(members)
            now = self._loop.time()
            due = self._last_flush.get(chat_id, -self._interval) + self._interval
            if due <= now:
                # Quiet chat: flush once this loop turn is done (same-turn events join in).
                pending.timer = self._loop.call_soon(self._flush, chat_id)
            else:
                pending.timer = self._loop.call_at(due, self._flush, chat_id)
        if event.receipt is not None:
            reader, ids = event.receipt
            merged = pending.receipts.get(reader)
            if merged is not None:
                merged.extend(i for i in ids if i not in merged)
                return
            pending.receipts[reader] = list(ids)
        elif event.coalesce_key is not None:
            key = event.coalesce_key
            pending.entries = [e for e in pending.entries if e.coalesce_key != key]
        pending.entries.append(event)

    def forget(self, chat_id: str) -> None:
        """The chat has no local members left: drop its queue and its timer."""
        pending = self._pending.pop(chat_id, None)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()
        self._last_flush.pop(chat_id, None)

    def flush_all(self) -> None:
        """Send every queued batch now (shutdown)."""
        for chat_id in tuple(self._pending):
            self._flush(chat_id)

    def _flush(self, chat_id: str) -> None:
        pending = self._pending.pop(chat_id, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        self._last_flush[chat_id] = self._loop.time()
        entries = [self._merged(entry, pending) for entry in pending.entries]
        if not entries or not pending.members:
            return
        timestamp = now_ms()
        excluded_conns = {e.exclude_conn for e in entries if e.exclude_conn}
        excluded_users = {e.exclude_user for e in entries if e.exclude_user is not None}
        shared: bytes | None = None
        for peer in tuple(pending.members.values()):
            if peer.conn_id in excluded_conns or peer.user_id in excluded_users:
                own = [e.payload for e in entries if not e.excludes(peer)]
                if own:
                    peer.deliver(text_frame(encode_batch(own, timestamp)))
                continue
            if shared is None:
                shared = text_frame(encode_batch([e.payload for e in entries], timestamp))
            peer.deliver(shared)

    @staticmethod
    def _merged(entry: RoomEvent, pending: _PendingChat) -> RoomEvent:
        """A receipt entry carries every id its reader marked during the interval."""
        if entry.receipt is None:
            return entry
        reader, ids = entry.receipt
        merged = pending.receipts.get(reader, list(ids))
        if len(merged) == len(ids):
            return entry
        payload = p.encode(
            p.ReadReceiptEvent(p.ReadReceiptEventData(entry.chat_id, merged, reader), now_ms())
        )
        return msgspec.structs.replace(entry, payload=payload)
