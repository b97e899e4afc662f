"""Wire frames: msgspec structs for every SPEC frame, one decoder, one encoder.

Client frames are a tagged union on `type`, decoded in one call straight into typed
structs. A frame that fails to decode is classified on a slow path (it is rare) into the
three SPEC/DESIGN errors: "Invalid JSON", "Invalid message format", "Unknown message type".
Server frames are built as structs and encoded once; a broadcast's bytes are shared by
every member of the room.

Field names on the wire are camelCase (`chatId`); in Python they are snake_case.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "AuthFrame",
    "CancelFrame",
    "ChatUpdateFrame",
    "ClientFrame",
    "DecodeFailure",
    "HistoryFrame",
    "MessageFrame",
    "PingFrame",
    "ReadReceiptFrame",
    "TypingFrame",
    "WireMessage",
    "decode_client_frame",
    "encode",
]


class _Data(msgspec.Struct, rename="camel", gc=False):
    """Base of client `data` objects: camelCase on the wire, unknown fields ignored."""


class MessageData(_Data):
    chat_id: str
    content: str
    agent_id: str | None = None
    message_id: str | None = None


class TypingData(_Data):
    chat_id: str
    is_typing: bool
    user_id: str | None = None  # ignored: the authenticated id is used
    agent_id: str | None = None


class ReadReceiptData(_Data):
    chat_id: str
    message_ids: list[str]
    user_id: str | None = None  # ignored: the authenticated id is used


class ChatUpdateData(_Data):
    action: Literal["join", "leave"]
    chat_id: str
    last_message_id: str | None = None  # recovery: send what came after this message
    since: int | None = None  # recovery: send what came after this seq
    title: str | None = None  # only used when the join creates the chat
    agent_id: str | None = None  # only used when the join creates the chat


class PingData(_Data):
    timestamp: int | float | None = None


class AuthData(_Data):
    token: str


class HistoryData(_Data):
    chat_id: str
    before: int | None = None  # seq; messages older than this
    limit: int | None = None


class CancelData(_Data):
    chat_id: str
    message_id: str | None = None


_Timestamp = int | float


class MessageFrame(msgspec.Struct, tag="message", tag_field="type", rename="camel", gc=False):
    data: MessageData
    timestamp: _Timestamp
    message_id: str | None = None


class TypingFrame(msgspec.Struct, tag="typing", tag_field="type", rename="camel", gc=False):
    data: TypingData
    timestamp: _Timestamp


class ReadReceiptFrame(
    msgspec.Struct, tag="read_receipt", tag_field="type", rename="camel", gc=False
):
    data: ReadReceiptData
    timestamp: _Timestamp


class ChatUpdateFrame(
    msgspec.Struct, tag="chat_update", tag_field="type", rename="camel", gc=False
):
    data: ChatUpdateData
    timestamp: _Timestamp


class PingFrame(msgspec.Struct, tag="ping", tag_field="type", rename="camel", gc=False):
    data: PingData
    timestamp: _Timestamp


class AuthFrame(msgspec.Struct, tag="auth", tag_field="type", rename="camel", gc=False):
    """Extension: refresh the connection's token in-band before it expires."""

    data: AuthData
    timestamp: _Timestamp


class HistoryFrame(msgspec.Struct, tag="history", tag_field="type", rename="camel", gc=False):
    """Extension: page backwards through a chat's messages."""

    data: HistoryData
    timestamp: _Timestamp


class CancelFrame(msgspec.Struct, tag="cancel", tag_field="type", rename="camel", gc=False):
    """Extension: stop the agent reply a message triggered."""

    data: CancelData
    timestamp: _Timestamp


ClientFrame = (
    MessageFrame
    | TypingFrame
    | ReadReceiptFrame
    | ChatUpdateFrame
    | PingFrame
    | AuthFrame
    | HistoryFrame
    | CancelFrame
)

CLIENT_TYPES = frozenset(
    ("message", "typing", "read_receipt", "chat_update", "ping", "auth", "history", "cancel")
)

_decoder: msgspec.json.Decoder[ClientFrame] = msgspec.json.Decoder(ClientFrame)
_encoder = msgspec.json.Encoder()


class DecodeFailure(msgspec.Struct, frozen=True):
    """Why a frame was rejected: the error text and code to send, and a detail for humans."""

    message: str
    code: int
    detail: str | None = None


def decode_client_frame(payload: bytes | str) -> ClientFrame | DecodeFailure:
    """Decode one client frame. Never raises; a bad frame comes back as a DecodeFailure."""
    try:
        return _decoder.decode(payload)
    except msgspec.ValidationError as exc:
        return _classify(payload, str(exc))
    except (msgspec.DecodeError, RecursionError):  # pathological nesting is just bad JSON
        return DecodeFailure("Invalid JSON", 400)


def _classify(payload: bytes | str, detail: str) -> DecodeFailure:
    """Slow path: tell a wrong `type` from a wrong shape, with msgspec's path as detail."""
    try:
        envelope = msgspec.json.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        return DecodeFailure("Invalid JSON", 400)
    if not isinstance(envelope, dict):
        return DecodeFailure("Invalid message format", 400, "expected a JSON object")
    kind = envelope.get("type")
    if not kind or "data" not in envelope or not envelope.get("timestamp"):
        return DecodeFailure("Invalid message format", 400, "type, data and timestamp are required")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        return DecodeFailure("Unknown message type", 400)
    return DecodeFailure("Invalid message format", 400, detail)


def encode(frame: msgspec.Struct) -> bytes:
    """Encode a server frame; call once per broadcast and share the bytes."""
    return _encoder.encode(frame)


# ---------------------------------------------------------------- server → client


class _Out(msgspec.Struct, rename="camel", gc=False):
    """Base of server data objects."""


class WireMessage(_Out):
    """SPEC's `message` object."""

    id: str
    chat_id: str
    user_id: str
    agent_id: str | None
    content: str
    role: str
    timestamp: str  # ISO-8601 UTC
    seq: int
    metadata: dict[str, Any]


class MessageEventData(_Out):
    chat_id: str
    message: WireMessage
    message_id: str | None  # the client's temp id this message answers


class TypingEventData(_Out):
    chat_id: str
    user_id: str
    agent_id: str | None
    is_typing: bool


class ReadReceiptEventData(_Out, omit_defaults=True):
    chat_id: str
    message_ids: list[str]
    user_id: str
    confirmed: bool | None = None  # only on the sender's confirmation


class ChatSummary(_Out):
    title: str
    message_count: int
    last_message: str | None
    agent_id: str | None = None
    updated_at: str | None = None


class ChatUpdateEventData(_Out, omit_defaults=True):
    chat_id: str
    updates: ChatSummary | None = None  # absent only on the reply to a leave
    action: str | None = None  # "joined" / "left" on replies to the joiner
    messages: list[WireMessage] | None = None
    has_more: bool | None = None
    recovered: bool | None = None


class PongData(_Out):
    timestamp: int | float | None


class ErrorData(_Out, omit_defaults=True):
    message: str
    code: int
    message_id: str | None = None
    retry_after: float | None = None  # seconds
    chat_id: str | None = None
    detail: str | None = None


class HistoryEventData(_Out):
    chat_id: str
    messages: list[WireMessage]
    has_more: bool


class AuthEventData(_Out):
    expires_at: int  # ms since the epoch


class MessageEvent(_Out, tag="message", tag_field="type"):
    data: MessageEventData
    timestamp: int


class TypingEvent(_Out, tag="typing", tag_field="type"):
    data: TypingEventData
    timestamp: int


class ReadReceiptEvent(_Out, tag="read_receipt", tag_field="type"):
    data: ReadReceiptEventData
    timestamp: int


class ChatUpdateEvent(_Out, tag="chat_update", tag_field="type"):
    data: ChatUpdateEventData
    timestamp: int


class PongEvent(_Out, tag="pong", tag_field="type"):
    data: PongData
    timestamp: int


class ErrorEvent(_Out, tag="error", tag_field="type"):
    data: ErrorData
    timestamp: int


class HistoryEvent(_Out, tag="history", tag_field="type"):
    data: HistoryEventData
    timestamp: int


class AuthEvent(_Out, tag="auth", tag_field="type"):
    data: AuthEventData
    timestamp: int


# ---------------------------------------------------------------- streaming extension


class AgentStreamData(_Out, omit_defaults=True):
    """Extension (`?stream=1`): a piece of an agent reply while it is generated.

    `delta` continues the text at character `offset` of the reply; `done` ends the stream
    with `status` "completed", "cancelled" or "failed". The stored `message` (same
    `messageId`) is authoritative: it replaces whatever partial text a client assembled.
    """

    chat_id: str
    message_id: str | None  # the client's temp id of the triggering message
    reply_to: str  # the server id of the triggering message
    agent_id: str
    offset: int  # characters of the reply sent before this delta
    delta: str
    done: bool
    status: str | None = None  # only when done


class AgentStreamEvent(_Out, tag="agent_stream", tag_field="type"):
    data: AgentStreamData
    timestamp: int
