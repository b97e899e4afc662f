"""Unit tests of the wire protocol: every client frame decodes to its struct, every bad
frame comes back as one of the three DecodeFailures, server frames encode in camelCase."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pytest

from gurukul_fast import protocol as p
from gurukul_fast.protocol import DecodeFailure, decode_client_frame, encode

TS = 1703123456789


def wire(kind: Any, data: Any, **extra: Any) -> bytes:
    return orjson.dumps({"type": kind, "data": data, "timestamp": TS, **extra})


def failure(payload: bytes | str) -> DecodeFailure:
    decoded = decode_client_frame(payload)
    assert isinstance(decoded, DecodeFailure), decoded
    assert decoded.code == 400
    return decoded


# ---------------------------------------------------------------- every client frame type


def test_message_frame_spec_example() -> None:
    decoded = decode_client_frame(
        wire(
            "message",
            {
                "chatId": "chat-123",
                "content": "Hello, how are you?",
                "agentId": "therapist",
                "messageId": "temp-1234567890",
            },
            messageId="temp-1234567890",
        )
    )
    assert isinstance(decoded, p.MessageFrame)
    assert decoded.data.chat_id == "chat-123"
    assert decoded.data.content == "Hello, how are you?"
    assert decoded.data.agent_id == "therapist"
    assert decoded.data.message_id == "temp-1234567890"
    assert decoded.message_id == "temp-1234567890"
    assert decoded.timestamp == TS


def test_message_frame_optional_fields_default_to_none() -> None:
    decoded = decode_client_frame(wire("message", {"chatId": "c1", "content": "hi"}))
    assert isinstance(decoded, p.MessageFrame)
    assert decoded.data.agent_id is None
    assert decoded.data.message_id is None
    assert decoded.message_id is None


def test_typing_frame_keeps_client_user_id_only_as_data() -> None:
    decoded = decode_client_frame(
        wire(
            "typing",
            {"chatId": "chat-123", "userId": "user-456", "agentId": "therapist", "isTyping": True},
        )
    )
    assert isinstance(decoded, p.TypingFrame)
    assert decoded.data.chat_id == "chat-123"
    assert decoded.data.is_typing is True
    assert decoded.data.agent_id == "therapist"
    assert decoded.data.user_id == "user-456"


def test_read_receipt_frame() -> None:
    decoded = decode_client_frame(
        wire(
            "read_receipt",
            {"chatId": "chat-123", "messageIds": ["msg-123", "msg-124"], "userId": "user-456"},
        )
    )
    assert isinstance(decoded, p.ReadReceiptFrame)
    assert decoded.data.chat_id == "chat-123"
    assert decoded.data.message_ids == ["msg-123", "msg-124"]


@pytest.mark.parametrize("action", ["join", "leave"])
def test_chat_update_join_and_leave(action: str) -> None:
    decoded = decode_client_frame(wire("chat_update", {"action": action, "chatId": "chat-123"}))
    assert isinstance(decoded, p.ChatUpdateFrame)
    assert decoded.data.action == action
    assert decoded.data.chat_id == "chat-123"
    assert decoded.data.last_message_id is None
    assert decoded.data.since is None


def test_chat_update_join_with_recovery_and_creation_fields() -> None:
    decoded = decode_client_frame(
        wire(
            "chat_update",
            {
                "action": "join",
                "chatId": "c",
                "lastMessageId": "msg-1",
                "since": 7,
                "title": "T",
                "agentId": "career",
            },
        )
    )
    assert isinstance(decoded, p.ChatUpdateFrame)
    assert decoded.data.last_message_id == "msg-1"
    assert decoded.data.since == 7
    assert decoded.data.title == "T"
    assert decoded.data.agent_id == "career"


@pytest.mark.parametrize("stamp", [TS, 1703123456789.5, None])
def test_ping_frame_keeps_its_timestamp(stamp: int | float | None) -> None:
    data = {} if stamp is None else {"timestamp": stamp}
    decoded = decode_client_frame(wire("ping", data))
    assert isinstance(decoded, p.PingFrame)
    assert decoded.data.timestamp == stamp


def test_auth_history_cancel_extension_frames() -> None:
    auth = decode_client_frame(wire("auth", {"token": "abc"}))
    assert isinstance(auth, p.AuthFrame)
    assert auth.data.token == "abc"

    history = decode_client_frame(wire("history", {"chatId": "c", "before": 10, "limit": 5}))
    assert isinstance(history, p.HistoryFrame)
    assert (history.data.chat_id, history.data.before, history.data.limit) == ("c", 10, 5)

    cancel = decode_client_frame(wire("cancel", {"chatId": "c", "messageId": "temp-1"}))
    assert isinstance(cancel, p.CancelFrame)
    assert (cancel.data.chat_id, cancel.data.message_id) == ("c", "temp-1")


def test_str_payload_decodes_like_bytes() -> None:
    decoded = decode_client_frame(wire("ping", {"timestamp": 1}).decode())
    assert isinstance(decoded, p.PingFrame)


def test_unknown_fields_are_ignored() -> None:
    decoded = decode_client_frame(
        wire("message", {"chatId": "c", "content": "x", "colour": "blue"}, extra={"a": 1})
    )
    assert isinstance(decoded, p.MessageFrame)


def test_float_timestamp_is_accepted() -> None:
    decoded = decode_client_frame(b'{"type": "ping", "data": {}, "timestamp": 1.5}')
    assert isinstance(decoded, p.PingFrame)
    assert decoded.timestamp == 1.5


# ---------------------------------------------------------------- "Invalid JSON"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{",
        b"not json",
        b'{"type": "ping", "data": {}, "timestamp": 1',
        b'{"type": "ping",}',
        b"\xff\xfe\xfd",
        b'{"type": "ping", "data": {}, "timestamp": 1} trailing',
        b'{"type":"message","data":{"chatId":"c","content":"\\ud800"},"timestamp":1}',
    ],
)
def test_invalid_json(payload: bytes) -> None:
    assert failure(payload).message == "Invalid JSON"


# ---------------------------------------------------------------- "Invalid message format"


@pytest.mark.parametrize(
    "payload",
    [
        b"[]",
        b"null",
        b"42",
        b'"message"',
        b"{}",
        b'{"type": "message"}',
        b'{"data": {}, "timestamp": 1}',
        b'{"type": "ping", "timestamp": 1}',
        b'{"type": "ping", "data": {}}',
    ],
)
def test_missing_envelope_fields(payload: bytes) -> None:
    assert failure(payload).message == "Invalid message format"


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("message", {}),
        ("message", {"chatId": "c"}),
        ("message", {"content": "x"}),
        ("message", {"chatId": 5, "content": "x"}),
        ("message", {"chatId": "c", "content": ["x"]}),
        ("message", {"chatId": "c", "content": None}),
        ("message", {"chatId": "c", "content": "x", "agentId": 3}),
        ("typing", {"chatId": "c"}),
        ("typing", {"chatId": "c", "isTyping": "yes"}),
        ("read_receipt", {"chatId": "c"}),
        ("read_receipt", {"chatId": "c", "messageIds": "msg-1"}),
        ("read_receipt", {"chatId": "c", "messageIds": [1, 2]}),
        ("chat_update", {"chatId": "c"}),
        ("chat_update", {"action": "explode", "chatId": "c"}),
        ("chat_update", {"action": "join"}),
        ("chat_update", {"action": "join", "chatId": "c", "since": "yesterday"}),
        ("ping", {"timestamp": "now"}),
        ("auth", {}),
        ("history", {"chatId": "c", "before": "x"}),
        ("cancel", {}),
        ("ping", []),
        ("ping", None),
        ("message", "hello"),
    ],
)
def test_wrong_data_shape(kind: str, data: Any) -> None:
    assert failure(wire(kind, data)).message == "Invalid message format"


@pytest.mark.parametrize("stamp", ["now", True, None, [1], {"ms": 1}])
def test_wrong_timestamp_type(stamp: Any) -> None:
    payload = orjson.dumps({"type": "ping", "data": {}, "timestamp": stamp})
    assert failure(payload).message == "Invalid message format"


def test_wrong_top_level_message_id_type() -> None:
    payload = wire("message", {"chatId": "c", "content": "x"}, messageId=12)
    assert failure(payload).message == "Invalid message format"


# ---------------------------------------------------------------- "Unknown message type"


@pytest.mark.parametrize("kind", ["nope", "batch", "pong", "error", "MESSAGE", 7, [1], True])
def test_unknown_type(kind: Any) -> None:
    assert failure(wire(kind, {})).message == "Unknown message type"


def test_unknown_type_is_reported_before_data_shape() -> None:
    assert failure(wire("launch", {"anything": [1, 2]})).message == "Unknown message type"


# ---------------------------------------------------------------- failures never raise


def test_deeply_nested_json_is_a_decode_failure_not_an_exception() -> None:
    # ~1 KiB of brackets: far below MAX_FRAME_BYTES, so any client can send it.
    for payload in (
        b"[" * 5000,
        b"[" * 5000 + b"]" * 5000,
        b'{"type":"ping","data":' + b"[" * 5000 + b"]" * 5000 + b',"timestamp":1}',
        # Deep nesting in fields the typed decoder skips.
        b'{"type":"ping","data":{"x":' + b"[" * 5000 + b"]" * 5000 + b'},"timestamp":1}',
        b'{"type":"ping","data":{},"timestamp":1,"z":' + b"[" * 5000 + b"]" * 5000 + b"}",
    ):
        result = decode_client_frame(payload)
        assert isinstance(result, DecodeFailure)
        assert result.message in ("Invalid JSON", "Invalid message format")


# ---------------------------------------------------------------- server frames


def test_encode_error_omits_unset_optionals_and_uses_camel_case() -> None:
    body = orjson.loads(encode(p.ErrorEvent(p.ErrorData("Rate limit exceeded", 429), TS)))
    assert body == {
        "type": "error",
        "data": {"message": "Rate limit exceeded", "code": 429},
        "timestamp": TS,
    }
    full = orjson.loads(
        encode(p.ErrorEvent(p.ErrorData("x", 429, message_id="t-1", retry_after=0.5), TS))
    )
    assert full["data"]["messageId"] == "t-1"
    assert full["data"]["retryAfter"] == 0.5


def test_encode_message_event_spec_shape() -> None:
    message = p.WireMessage(
        id="msg-1",
        chat_id="chat-123",
        user_id="assistant",
        agent_id="therapist",
        content="Hi",
        role="assistant",
        timestamp="2024-01-15T10:30:00.000Z",
        seq=2,
        metadata={"confidence": 0.95, "messageIndex": 1, "totalMessages": 1},
    )
    body = orjson.loads(
        encode(p.MessageEvent(p.MessageEventData("chat-123", message, "temp-1"), TS))
    )
    assert body["type"] == "message"
    assert body["data"]["chatId"] == "chat-123"
    assert body["data"]["messageId"] == "temp-1"
    assert body["data"]["message"] == {
        "id": "msg-1",
        "chatId": "chat-123",
        "userId": "assistant",
        "agentId": "therapist",
        "content": "Hi",
        "role": "assistant",
        "timestamp": "2024-01-15T10:30:00.000Z",
        "seq": 2,
        "metadata": {"confidence": 0.95, "messageIndex": 1, "totalMessages": 1},
    }


def test_encode_read_receipt_confirmation_only_on_sender_copy() -> None:
    confirmed = orjson.loads(
        encode(p.ReadReceiptEvent(p.ReadReceiptEventData("c", ["m"], "u", confirmed=True), TS))
    )
    assert confirmed["data"] == {
        "chatId": "c",
        "messageIds": ["m"],
        "userId": "u",
        "confirmed": True,
    }
    relay = orjson.loads(encode(p.ReadReceiptEvent(p.ReadReceiptEventData("c", ["m"], "u"), TS)))
    assert "confirmed" not in relay["data"]


def test_encode_typing_and_pong() -> None:
    typing = orjson.loads(
        encode(p.TypingEvent(p.TypingEventData("c", "assistant", "therapist", True), TS))
    )
    assert typing == {
        "type": "typing",
        "data": {"chatId": "c", "userId": "assistant", "agentId": "therapist", "isTyping": True},
        "timestamp": TS,
    }
    pong = orjson.loads(encode(p.PongEvent(p.PongData(TS), TS + 1)))
    assert pong == {"type": "pong", "data": {"timestamp": TS}, "timestamp": TS + 1}


def test_encode_chat_update_leave_reply_has_no_updates() -> None:
    body = orjson.loads(encode(p.ChatUpdateEvent(p.ChatUpdateEventData("c", action="left"), TS)))
    assert body["data"] == {"chatId": "c", "action": "left"}


def test_server_frames_round_trip_through_msgspec() -> None:
    raw = encode(p.PongEvent(p.PongData(1.5), TS))
    assert msgspec.json.decode(raw, type=p.PongEvent).data.timestamp == 1.5
