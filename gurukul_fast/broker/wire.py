"""What crosses the broker: one msgpack array per event, and the receiving side's filter.

An envelope is the `RoomEvent` minus `exclude_conn` (connection ids are node-local, so a
receiving node resets it to 0; `exclude_user` stays), plus the origin node id and the
origin's publish sequence number. Encoding is a msgpack array in a fixed field order
(`array_like`): no field names on the wire, one `Encoder`/`Decoder` built once.

`Inbound` is the receiving half every network backend shares: decode, drop our own
events, drop duplicates (a batch re-sent after a connection error), drop chats we no
longer want, and hand the rest to `DeliverRemote`. Duplicates are recognised per
(chat, origin) by the origin's sequence number: an origin's events for one chat arrive in
publish order on every backend, while across chats only Redis keeps that order.
"""

from __future__ import annotations

import logging

import msgspec

from gurukul_fast.broker.base import BrokerStats, DeliverRemote, GapHandler
from gurukul_fast.rooms import RoomEvent

__all__ = ["FLAG_GAP", "Envelope", "Inbound", "decode_envelope", "encode_event", "encode_gap"]

logger = logging.getLogger(__name__)

FLAG_GAP = 1  # not an event: "the origin discarded events for this chat; resync it"


class Envelope(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One event on the wire (see the module docstring). Append new fields at the end,
    with defaults, so nodes of two versions can share a broker during a rolling update."""

    origin: str
    seq: int
    chat_id: str
    payload: bytes
    kind: str
    exclude_user: str | None = None
    lossy: bool = False
    coalesce_key: str | None = None
    receipt: tuple[str, tuple[str, ...]] | None = None
    flags: int = 0
    message_seq: int = 0


# RoomEvent fields the envelope carries under the same name; `exclude_conn` is dropped on
# purpose. tests/unit/test_broker_wire.py fails when RoomEvent gains a field not listed.
CARRIED_FIELDS = (
    "chat_id",
    "payload",
    "kind",
    "exclude_user",
    "lossy",
    "coalesce_key",
    "receipt",
    "message_seq",
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)


def encode_event(origin: str, seq: int, event: RoomEvent) -> bytes:
    """The wire bytes of `event` published by node `origin` as its `seq`-th event."""
    return _encoder.encode(
        Envelope(
            origin,
            seq,
            event.chat_id,
            event.payload,
            event.kind,
            event.exclude_user,
            event.lossy,
            event.coalesce_key,
            event.receipt,
            message_seq=event.message_seq,
        )
    )


def encode_gap(origin: str, seq: int, chat_id: str) -> bytes:
    """A notice that `origin` discarded events of `chat_id` (its outbox overflowed)."""
    return _encoder.encode(Envelope(origin, seq, chat_id, b"", "", flags=FLAG_GAP))


def decode_envelope(data: bytes) -> Envelope:
    """Raises `msgspec.DecodeError` (or ValidationError) for bytes that are not ours."""
    return _decoder.decode(data)


class Inbound:
    """Filters received envelopes and delivers remote events. One per broker."""

    __slots__ = ("_deliver", "_last_seq", "_node_id", "_on_gap", "_stats", "_wanted")

    def __init__(
        self,
        node_id: str,
        wanted: set[str],
        stats: BrokerStats,
        deliver: DeliverRemote,
        on_gap: GapHandler | None,
    ) -> None:
        self._node_id = node_id
        self._wanted = wanted  # the broker's live set of subscribed chats
        self._stats = stats
        self._deliver = deliver
        self._on_gap = on_gap
        # chat → origin → last sequence number delivered (pruned by `forget`)
        self._last_seq: dict[str, dict[str, int]] = {}

    def handle(self, data: bytes) -> None:
        """Act on one payload received on a chat channel. Never raises."""
        try:
            envelope = _decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self._stats.malformed += 1
            logger.warning("dropped an undecodable broker payload (%d bytes)", len(data))
            return
        if envelope.origin == self._node_id:
            self._stats.own_dropped += 1
            return
        chat_id = envelope.chat_id
        if chat_id not in self._wanted:
            return  # in flight while we unsubscribed: no local member to deliver to
        origins = self._last_seq.get(chat_id)
        if origins is None:
            origins = self._last_seq[chat_id] = {}
        if envelope.seq <= origins.get(envelope.origin, 0):
            self._stats.duplicates += 1
            return
        origins[envelope.origin] = envelope.seq
        if envelope.flags & FLAG_GAP:
            self.gap(frozenset((chat_id,)))
            return
        event = RoomEvent(
            chat_id,
            envelope.payload,
            envelope.kind,
            0,  # exclude_conn: connection ids are node-local
            envelope.exclude_user,
            envelope.lossy,
            envelope.coalesce_key,
            envelope.receipt,
            envelope.message_seq,
        )
        self._stats.received += 1
        try:
            self._deliver(event)
        except Exception:
            logger.exception("delivering a remote event failed")

    def gap(self, chats: frozenset[str]) -> None:
        """Tell the chat layer that remote events of `chats` may have been missed."""
        if not chats or self._on_gap is None:
            return
        try:
            self._on_gap(chats)
        except Exception:
            logger.exception("the broker gap handler failed")

    def forget(self, chat_id: str) -> None:
        """Drop the de-duplication state of a chat we unsubscribed from."""
        self._last_seq.pop(chat_id, None)
