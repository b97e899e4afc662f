"""Unit tests of the OpenAI-compatible wire format: SSE lines, completion chunks, and the
messages a request is built from (no sockets; the HTTP side is in the integration tests)."""

from __future__ import annotations

import pytest

from gurukul_fast.agents import AgentError, AgentRequest, AgentTurn
from gurukul_fast.agents.openai import (
    OpenAISettings,
    SSEDecoder,
    StreamChunk,
    build_messages,
    parse_chunk,
)


def settings(**overrides: object) -> OpenAISettings:
    values: dict[str, object] = {
        "agent_id": "therapist",
        "display_name": "Therapist",
        "base_url": "http://127.0.0.1:1/v1",
        "api_key": None,
        "model": "m",
        "system_prompt": "Be kind.",
        "temperature": 0.7,
        "max_tokens": 100,
        "context_messages": 10,
        "context_chars": 1000,
        "confidence": 0.9,
        "connect_timeout_s": 1.0,
        "idle_timeout_s": 1.0,
        "retries": 0,
        "retry_backoff_s": 0.0,
        "max_connections": 4,
    }
    values.update(overrides)
    return OpenAISettings(**values)  # type: ignore[arg-type]


def test_sse_decoder_yields_data_at_blank_lines() -> None:
    decoder = SSEDecoder()
    lines = [
        b": keep-alive\n",
        b"event: chunk\n",
        b'data: {"a":1}\n',
        b"\n",
        b"data:x\r\n",
        b"\r\n",
    ]
    events = [event for line in lines if (event := decoder.feed(line)) is not None]
    assert events == ['{"a":1}', "x"]


def test_sse_decoder_joins_multi_line_data_and_flushes_at_the_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\n") is None
    assert decoder.feed(b"data: two\n") is None
    assert decoder.flush() == "one\ntwo"
    assert decoder.flush() is None
    assert decoder.feed(b"\n") is None  # a blank line without data is no event


def test_parse_chunk_reads_deltas_and_finish_reason() -> None:
    chunk = (
        '{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}'
    )
    assert parse_chunk(chunk) == StreamChunk("Hi", None)
    assert parse_chunk('{"choices":[{"delta":{},"finish_reason":"stop"}]}') == StreamChunk(
        "", "stop"
    )
    assert parse_chunk('{"choices":[],"usage":{"total_tokens":3}}') == StreamChunk("", None)
    whole = '{"choices":[{"message":{"content":"All of it"},"finish_reason":"length"}]}'
    assert parse_chunk(whole) == StreamChunk("All of it", "length")


@pytest.mark.parametrize(
    "data", ["{not json", '{"error":{"message":"overloaded"}}', '"a string"', "[1, 2]"]
)
def test_parse_chunk_refuses_what_is_not_a_chunk(data: str) -> None:
    with pytest.raises(AgentError):
        parse_chunk(data)


def test_messages_are_prompt_history_and_the_new_message() -> None:
    request = AgentRequest(
        chat_id="c",
        user_id="u",
        agent_id="therapist",
        content="and now?",
        history=(AgentTurn("user", "hello"), AgentTurn("assistant", "hi there")),
    )
    assert build_messages(settings(), request) == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"},
        {"role": "user", "content": "and now?"},
    ]


def test_history_is_trimmed_to_count_and_characters_oldest_first() -> None:
    history = tuple(AgentTurn("user", f"message {n:02d}") for n in range(20))  # 10 chars each
    request = AgentRequest("c", "u", "therapist", "new", history)
    by_count = build_messages(settings(context_messages=3), request)
    assert [m["content"] for m in by_count[1:-1]] == ["message 17", "message 18", "message 19"]
    by_chars = build_messages(settings(context_chars=25), request)
    assert [m["content"] for m in by_chars[1:-1]] == ["message 18", "message 19"]
    none = build_messages(settings(context_messages=0), request)
    assert none == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "new"}]
