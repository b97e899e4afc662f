"""Fuzzing the frame decoder: whatever a client sends, `decode_client_frame` answers with a
typed frame or a DecodeFailure, and a real server connection fed the same frames stays open
and keeps serving everybody.

The service-level test shares one server and one connection across examples (that is the
point: a frame must not damage the connection for the frames after it).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gurukul_fast.protocol import CLIENT_TYPES, DecodeFailure, decode_client_frame
from tests.support.server import ChatClient, connect, run_server

TS = 1703123456789
FAILURE_MESSAGES = {"Invalid JSON", "Invalid message format", "Unknown message type"}

# msgspec, unlike orjson, encodes integers past 64 bits: clients can send those too.
dumps = msgspec.json.encode

# ---------------------------------------------------------------- strategies

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
chat_ids = st.sampled_from(["chat-1", "chat-2", "c.3:x@y", "", "bad id", "x" * 200]) | st.text(
    max_size=12
)
type_names = st.sampled_from(sorted(CLIENT_TYPES)) | st.text(max_size=12)

VALID_DATA: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "message": st.fixed_dictionaries(
        {"chatId": chat_ids, "content": st.text(max_size=40)},
        optional={
            "agentId": st.sampled_from(["therapist", "dietician", "nobody"]),
            "messageId": st.text(max_size=20),
        },
    ),
    "typing": st.fixed_dictionaries(
        {"chatId": chat_ids, "isTyping": st.booleans()},
        optional={"userId": st.text(max_size=10), "agentId": st.text(max_size=10)},
    ),
    "read_receipt": st.fixed_dictionaries(
        {"chatId": chat_ids, "messageIds": st.lists(st.text(max_size=12), max_size=5)},
        optional={"userId": st.text(max_size=10)},
    ),
    "chat_update": st.fixed_dictionaries(
        {"action": st.sampled_from(["join", "leave"]), "chatId": chat_ids},
        optional={
            "lastMessageId": st.text(max_size=12),
            "since": st.integers(-5, 2**40),
            "title": st.text(max_size=20),
        },
    ),
    "ping": st.fixed_dictionaries(
        {}, optional={"timestamp": st.integers(0, 2**53) | st.floats(0, 1e15)}
    ),
    "auth": st.fixed_dictionaries({"token": st.text(max_size=40)}),
    "history": st.fixed_dictionaries(
        {"chatId": chat_ids},
        optional={"before": st.integers(-5, 1000), "limit": st.integers(-5, 1000)},
    ),
    "cancel": st.fixed_dictionaries({"chatId": chat_ids}, optional={"messageId": st.text()}),
}


@st.composite
def near_valid_frames(draw: st.DrawFn) -> dict[str, Any]:
    """A valid frame of a random type, then up to three mutations of its fields."""
    kind = draw(st.sampled_from(sorted(VALID_DATA)))
    envelope: dict[str, Any] = {"type": kind, "data": draw(VALID_DATA[kind]), "timestamp": TS}
    for _ in range(draw(st.integers(0, 3))):
        data = envelope.get("data")
        inside_data = isinstance(data, dict) and draw(st.booleans())
        target: dict[str, Any] = data if inside_data else envelope  # type: ignore[assignment]
        operation = draw(st.sampled_from(["drop", "replace", "add", "retype"]))
        keys = sorted(target)
        if operation == "drop" and keys:
            del target[draw(st.sampled_from(keys))]
        elif operation == "replace" and keys:
            target[draw(st.sampled_from(keys))] = draw(json_values)
        elif operation == "retype":
            envelope["type"] = draw(type_names)
        else:
            target[draw(st.text(max_size=10))] = draw(json_values)
    return envelope


def check_decoded(payload: bytes | str, envelope: Any = None) -> None:
    result = decode_client_frame(payload)  # the property: this line never raises
    if isinstance(result, DecodeFailure):
        assert result.code == 400
        assert result.message in FAILURE_MESSAGES
        return
    # A decoded frame is the struct of the type the client named.
    assert isinstance(envelope, dict)
    assert type(result).__struct_config__.tag == envelope["type"]


# ---------------------------------------------------------------- decoder properties


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=512))
def test_random_bytes_never_raise(payload: bytes) -> None:
    result = decode_client_frame(payload)
    assert isinstance(result, DecodeFailure) or type(result).__struct_config__.tag in CLIENT_TYPES


@settings(max_examples=200, deadline=None)
@given(payload=st.text(max_size=256))
def test_random_text_never_raises(payload: str) -> None:
    result = decode_client_frame(payload)
    assert isinstance(result, DecodeFailure) or type(result).__struct_config__.tag in CLIENT_TYPES


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_random_json_values_never_raise(value: Any) -> None:
    payload = dumps(value)
    check_decoded(payload, value)
    if not isinstance(value, dict):
        failure = decode_client_frame(payload)
        assert isinstance(failure, DecodeFailure)
        assert failure.message == "Invalid message format"


@settings(max_examples=200, deadline=None)
@given(envelope=near_valid_frames())
def test_near_valid_frames_never_raise(envelope: dict[str, Any]) -> None:
    check_decoded(dumps(envelope), envelope)


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(sorted(VALID_DATA)), data=st.data())
def test_valid_frames_decode_to_their_type(kind: str, data: st.DataObject) -> None:
    envelope = {"type": kind, "data": data.draw(VALID_DATA[kind]), "timestamp": TS}
    result = decode_client_frame(dumps(envelope))
    assert not isinstance(result, DecodeFailure), result
    assert type(result).__struct_config__.tag == kind


@settings(max_examples=200, deadline=None)
@given(kind=st.text(max_size=12).filter(lambda k: k not in CLIENT_TYPES), data=json_values)
def test_unknown_types_are_reported_as_such(kind: str, data: Any) -> None:
    failure = decode_client_frame(dumps({"type": kind, "data": data, "timestamp": TS}))
    assert isinstance(failure, DecodeFailure)
    expected = "Unknown message type" if kind else "Invalid message format"
    assert failure.message == expected


@settings(max_examples=200, deadline=None)
@given(
    depth=st.integers(min_value=1, max_value=4000),
    opener=st.sampled_from(["[", '{"a":', '{"type":"ping","data":[']),
)
def test_deep_nesting_never_raises(depth: int, opener: str) -> None:
    check_decoded(opener * depth)


# ---------------------------------------------------------------- through a real server


class FuzzTarget:
    """One server, a connection we fuzz and a bystander, shared by every example."""

    def __init__(self, server: Any, victim: ChatClient, bystander: ChatClient) -> None:
        self.server = server
        self.victim = victim
        self.bystander = bystander
        self.stamps = itertools.count(1)


@pytest_asyncio.fixture
async def fuzz_target(tmp_path: Path) -> AsyncIterator[FuzzTarget]:
    limits = {
        "message_rate_limit": 1_000_000,
        "typing_rate_limit": 1_000_000,
        "receipt_rate_limit": 1_000_000,
        "control_rate_limit": 1_000_000,
    }
    async with (
        run_server(tmp_path, **limits) as server,
        connect(server, "fuzzer") as victim,
        connect(server, "bystander") as bystander,
    ):
        target = FuzzTarget(server, victim, bystander)
        yield target
        internal = [f for f in victim.seen if f["type"] == "error" and f["data"]["code"] >= 500]
        assert not [f for f in internal if f["data"]["code"] == 500], internal


async def still_served(target: FuzzTarget) -> None:
    for client in (target.victim, target.bystander):
        stamp = next(target.stamps)
        await client.send("ping", {"timestamp": stamp})
        await client.expect("pong", timestamp=stamp)
    assert len(target.server.service.clients) == 2


frames_for_service = (
    near_valid_frames().map(dumps)
    | json_values.map(dumps)
    | st.binary(max_size=256)
    | st.text(max_size=256)
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(payloads=st.lists(frames_for_service, min_size=1, max_size=3))
async def test_random_frames_never_close_the_connection(
    fuzz_target: FuzzTarget, payloads: list[bytes | str]
) -> None:
    for payload in payloads:
        await fuzz_target.victim.send_raw(payload)
    await still_served(fuzz_target)
