"""Unit tests of the reply lifecycle's pure parts: cleaning and splitting replies, and the
coalescing of partial text for `?stream=1` clients (a fake host, a real loop)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gurukul_fast.agents import TherapistAgent
from gurukul_fast.replies import _Job, _Streamer, clean_reply, split_reply
from gurukul_fast.storage import StoredMessage


def test_clean_reply_strips_controls_and_normalises() -> None:
    assert clean_reply("  Cafe\u0301\x00 ok\x1b\n\n") == "Café ok"
    assert clean_reply("line one\n\tline two") == "line one\n\tline two"


def test_short_reply_is_one_part() -> None:
    assert split_reply("short", 100) == ["short"]


def test_split_prefers_paragraphs_then_sentences() -> None:
    text = "First paragraph here.\n\nSecond one is here. It has two sentences."
    assert split_reply(text, 30) == [
        "First paragraph here.",
        "Second one is here.",
        "It has two sentences.",
    ]


def test_a_word_longer_than_the_limit_is_cut() -> None:
    assert split_reply("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]


@given(st.text(min_size=1, max_size=600), st.integers(min_value=5, max_value=120))
def test_split_parts_fit_and_keep_every_non_space_character(text: str, limit: int) -> None:
    parts = split_reply(text, limit)
    assert parts
    assert all(len(part) <= limit for part in parts)
    # Only whitespace at the cuts is dropped.
    assert "".join("".join(parts).split()) == "".join(text.split())


class _Host:
    def __init__(self) -> None:
        self.frames: list[dict[str, object]] = []

    def publish_stream(self, chat_id: str, payload: bytes) -> int:
        self.frames.append(msgspec.json.decode(payload))
        return 1


def _job() -> _Job:
    trigger = StoredMessage(
        id="msg-1",
        chat_id="c1",
        user_id="u",
        agent_id="therapist",
        content="hi",
        role="user",
        created_at_ms=0,
        seq=1,
        metadata={},
    )
    return _Job(None, TherapistAgent(), trigger, "temp-1")  # type: ignore[arg-type]


async def test_streamer_sends_the_first_text_at_once_then_coalesces() -> None:
    host = _Host()
    streamer = _Streamer(host, 0.04, _job())  # type: ignore[arg-type]
    for n in range(50):
        streamer.push(f"t{n} ")
        await asyncio.sleep(0.002)  # 50 tokens over ~100 ms
    streamer.finish("completed")
    deltas = [f["data"] for f in host.frames]
    assert deltas[0]["delta"] == "t0 "  # leading edge: no wait for the first token
    assert deltas[-1]["done"] is True
    assert deltas[-1]["status"] == "completed"
    text_frames = deltas[:-1]
    assert 2 <= len(text_frames) <= 8  # one per 40 ms window, not one per token
    assert "".join(str(d["delta"]) for d in text_frames) == "".join(f"t{n} " for n in range(50))
    offset = 0
    for delta in text_frames:
        assert delta["offset"] == offset
        offset += len(str(delta["delta"]))
    assert all(d["messageId"] == "temp-1" and d["replyTo"] == "msg-1" for d in deltas)


async def test_streamer_drops_pending_text_when_the_reply_failed() -> None:
    host = _Host()
    streamer = _Streamer(host, 10.0, _job())  # type: ignore[arg-type]
    streamer.push("first ")
    streamer.push("never sent")
    streamer.finish("failed")
    assert [(f["data"]["delta"], f["data"]["done"]) for f in host.frames] == [  # type: ignore[index]
        ("first ", False),
        ("", True),
    ]


@pytest.mark.parametrize("status", ["completed", "cancelled"])
async def test_streamer_flushes_pending_text_before_the_end(status: str) -> None:
    host = _Host()
    streamer = _Streamer(host, 10.0, _job())  # type: ignore[arg-type]
    streamer.push("first ")
    streamer.push("second")
    streamer.finish(status)
    assert [f["data"]["delta"] for f in host.frames] == ["first ", "second", ""]  # type: ignore[index]
