"""Agent replies from an OpenAI-compatible provider, over real sockets and real HTTP.

The server under test talks to `tests.support.llm_server` (aiohttp, SSE) exactly as it
would to vLLM, llama.cpp or Ollama; the WebSocket clients are `websockets` clients.
Covers: a streamed reply end to end (and what clients that did not opt in see), provider
500/429/timeout/garbage/mid-stream cut, cancel mid-stream, a duplicate temp id, per-chat
queueing, the global limit, other chats' latency while two chats generate, and shutdown
during generation.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from gurukul_fast.storage import StorageOptions, load_storage
from tests.support.llm_server import FakeLLM, Script, run_llm, words
from tests.support.server import UNIT, ChatClient, connect, run_server

MODEL = "test-model"
API_KEY = "sk-test-key"


def therapist_on(llm: FakeLLM, **extra: Any) -> dict[str, Any]:
    """An `[[agents]]` table putting the therapist on the fake LLM."""
    return {
        "id": "therapist",
        "provider": "openai",
        "base_url": llm.base_url,
        "model": MODEL,
        "api_key": API_KEY,
        "temperature": 0.2,
        "max_tokens": 256,
        **extra,
    }


def llm_settings(llm: FakeLLM, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "agents": [therapist_on(llm)],
        "agent_retry_backoff": 0.01,
        "agent_idle_timeout": 2.0 * UNIT,
        "agent_connect_timeout": 2.0 * UNIT,
    }
    settings.update(overrides)
    return settings


async def ask(client: ChatClient, chat_id: str, content: str, temp_id: str) -> None:
    await client.send(
        "message",
        {"chatId": chat_id, "content": content, "agentId": "therapist", "messageId": temp_id},
        messageId=temp_id,
    )


async def reply_parts(
    client: ChatClient, temp_id: str, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """The assistant messages answering `temp_id`, all parts, in order."""
    parts: list[dict[str, Any]] = []
    while True:
        frame = await client.expect("message", timeout, messageId=temp_id)
        message = frame["data"]["message"]
        if message["role"] != "assistant":
            continue
        parts.append(message)
        if message["metadata"]["messageIndex"] == message["metadata"]["totalMessages"]:
            return parts


async def reply_to(client: ChatClient, temp_id: str, timeout: float = 5.0) -> dict[str, Any]:
    parts = await reply_parts(client, temp_id, timeout)
    assert len(parts) == 1
    return parts[0]


def frames_of(client: ChatClient, kind: str) -> list[dict[str, Any]]:
    return [frame["data"] for frame in client.seen if frame["type"] == kind]


def agent_typing(client: ChatClient) -> list[bool]:
    return [d["isTyping"] for d in frames_of(client, "typing") if d["userId"] == "assistant"]


# ---------------------------------------------------------------- streamed reply


async def test_streamed_reply_end_to_end(tmp_path: Path) -> None:
    text = "I hear that you are feeling tired. What has been keeping you up at night lately?"
    async with run_llm() as llm:
        llm.enqueue(Script(chunks=words(text), delay=0.01))
        async with (
            run_server(tmp_path, **llm_settings(llm, agent_stream_interval_ms=30)) as server,
            connect(server, "alice", query="stream=1") as alice,
            connect(server, "bob", chats=["c1"]) as bob,
        ):
            await alice.join("c1")
            await bob.join("c1")
            await alice.say("c1", "I cannot sleep", "temp-1", agent_id="therapist")
            reply = await reply_to(alice, "temp-1")
            assert reply["content"] == text
            assert reply["userId"] == "assistant"
            assert reply["agentId"] == "therapist"
            assert reply["metadata"]["messageIndex"] == 1
            assert reply["metadata"]["totalMessages"] == 1
            assert 0 < reply["metadata"]["confidence"] <= 1
            done = await alice.expect("agent_stream", done=True)
            assert done["data"]["status"] == "completed"
            assert done["data"]["messageId"] == "temp-1"

            # The opted-in client saw coalesced partial text that adds up to the reply.
            deltas = [d for d in frames_of(alice, "agent_stream") if not d["done"]]
            assert 1 < len(deltas) < len(words(text)), "coalesced, not one frame per token"
            assert "".join(d["delta"] for d in deltas) == text
            offsets = [d["offset"] for d in deltas]
            assert offsets == sorted(offsets)
            assert offsets[0] == 0
            assert all(d["replyTo"] and d["agentId"] == "therapist" for d in deltas)
            # Partial text never arrives after the stored message.
            kinds = [f["type"] for f in alice.seen]
            final_at = max(
                i
                for i, f in enumerate(alice.seen)
                if f["type"] == "message" and f["data"]["message"]["role"] == "assistant"
            )
            assert "agent_stream" not in [
                k
                for i, k in enumerate(kinds)
                if i > final_at and not alice.seen[i]["data"].get("done")
            ]

            # Bob did not opt in: exactly the SPEC frames, the same reply.
            assert (await reply_to(bob, "temp-1")) == reply
            await bob.expect("typing", isTyping=False, userId="assistant")
            assert frames_of(bob, "agent_stream") == []
            assert agent_typing(bob) == [True, False]

        # What the provider was asked: model, settings, key, system prompt and message.
        assert len(llm.requests) == 1
        sent = llm.requests[0]
        assert sent["model"] == MODEL
        assert sent["stream"] is True
        assert sent["temperature"] == 0.2
        assert sent["max_tokens"] == 256
        assert sent["messages"][0]["role"] == "system"
        assert "therapist" in sent["messages"][0]["content"]
        assert sent["messages"][-1] == {"role": "user", "content": "I cannot sleep"}
        assert llm.headers[0]["Authorization"] == f"Bearer {API_KEY}"


async def test_history_is_sent_as_context(tmp_path: Path) -> None:
    async with run_llm() as llm:
        llm.enqueue(Script(chunks=["First answer."]), Script(chunks=["Second answer."]))
        async with (
            run_server(tmp_path, **llm_settings(llm)) as server,
            connect(server, "alice") as alice,
        ):
            await alice.say("c1", "plain message, no agent", "t0")
            await alice.say("c1", "first question", "t1", agent_id="therapist")
            await reply_to(alice, "t1")
            await alice.say("c1", "second question", "t2", agent_id="therapist")
            await reply_to(alice, "t2")
        assert llm.requests[1]["messages"][1:] == [
            {"role": "user", "content": "plain message, no agent"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "First answer."},
            {"role": "user", "content": "second question"},
        ]


async def test_long_reply_is_split_into_parts(tmp_path: Path) -> None:
    paragraphs = [f"Paragraph {n}: " + "word " * 20 for n in range(4)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    async with run_llm() as llm:
        llm.enqueue(Script(chunks=words(text)))
        async with (
            run_server(tmp_path, **llm_settings(llm, agent_reply_part_chars=250)) as server,
            connect(server, "alice") as alice,
        ):
            await alice.say("c1", "tell me a lot", "t1", agent_id="therapist")
            parts = await reply_parts(alice, "t1")
            assert len(parts) > 1
            assert [p["metadata"]["messageIndex"] for p in parts] == list(range(1, len(parts) + 1))
            assert {p["metadata"]["totalMessages"] for p in parts} == {len(parts)}
            assert all(len(p["content"]) <= 250 for p in parts)
            assert "\n\n".join(p["content"] for p in parts) == text
            seqs = [p["seq"] for p in parts]
            assert seqs == list(range(seqs[0], seqs[0] + len(parts)))


async def test_non_streamed_answer_is_accepted(tmp_path: Path) -> None:
    async with run_llm() as llm:
        llm.enqueue(Script(chunks=["All in one body."], non_streamed=True))
        async with (
            run_server(tmp_path, **llm_settings(llm)) as server,
            connect(server, "alice") as alice,
        ):
            await alice.say("c1", "hi", "t1", agent_id="therapist")
            assert (await reply_to(alice, "t1"))["content"] == "All in one body."


# ---------------------------------------------------------------- provider failures


async def expect_failure(client: ChatClient, temp_id: str, code: int) -> dict[str, Any]:
    error = await client.expect("error", messageId=temp_id)
    assert error["data"]["code"] == code
    await client.expect("typing", isTyping=False, userId="assistant")
    return error


async def assert_only_user_message_stored(server: Any, chat_id: str) -> None:
    stored = await server.service.storage.latest_messages(chat_id, 10)
    assert [m.role for m in stored] == ["user"]


async def test_provider_500_is_retried_then_503(tmp_path: Path) -> None:
    async with run_llm() as llm:
        llm.enqueue(*[Script(status=500) for _ in range(3)])
        async with (
            run_server(tmp_path, **llm_settings(llm, agent_retries=2)) as server,
            connect(server, "alice") as alice,
        ):
            echo = await alice.say("c1", "hello?", "t1", agent_id="therapist")
            error = await expect_failure(alice, "t1", 503)
            assert error["data"]["message"] == "Agent unavailable"
            assert error["data"]["chatId"] == "c1"
            assert len(llm.requests) == 3  # the first try and two retries
            await assert_only_user_message_stored(server, "c1")
            assert echo["data"]["message"]["content"] == "hello?"
            assert agent_typing(alice) == [True, False]


async def test_provider_429_is_retried_with_retry_after_and_recovers(tmp_path: Path) -> None:
    async with run_llm() as llm:
        llm.enqueue(
            Script(status=429, headers={"Retry-After": "0.2"}),
            Script(chunks=["Back again."]),
        )
        async with (
            run_server(tmp_path, **llm_settings(llm)) as server,
            connect(server, "alice") as alice,
        ):
            started = time.monotonic()
            await alice.say("c1", "hello?", "t1", agent_id="therapist")
            reply = await reply_to(alice, "t1")
            assert reply["content"] == "Back again."
            assert time.monotonic() - started >= 0.2  # Retry-After was honoured
            assert len(llm.requests) == 2
            assert frames_of(alice, "error") == []


async def test_provider_4xx_is_not_retried(tmp_path: Path) -> None:
    async with run_llm() as llm:
        llm.enqueue(Script(status=401))
        async with (
            run_server(tmp_path, **llm_settings(llm)) as server,
            connect(server, "alice") as alice,
        ):
            await alice.say("c1", "hello?", "t1", agent_id="therapist")
            await expect_failure(alice, "t1", 503)
            assert len(llm.requests) == 1


async def test_provider_timeout_before_first_byte_is_504(tmp_path: Path) -> None:
    async with run_llm() as llm:
        llm.enqueue(Script(first_delay=30))
        settings = llm_settings(llm, agent_idle_timeout=0.3 * UNIT)
        async with run_server(tmp_path, **settings) as server, connect(server, "alice") as alice:
            await alice.say("c1", "hello?", "t1", agent_id="therapist")
            error = await expect_failure(alice, "t1", 504)
            assert error["data"]["message"] == "Agent timed out"
            await assert_only_user_message_stored(server, "c1")
            assert len(llm.requests) == 1  # a stuck model is not asked again


async def test_stream_stalling_mid_reply_is_504(tmp_path: Path) -> None:
    async with run_llm() as llm:
        llm.enqueue(Script(chunks=["one ", "two ", "three"], delay=5))
        settings = llm_settings(llm, agent_idle_timeout=0.3 * UNIT)
        async with run_server(tmp_path, **settings) as server, connect(server, "alice") as alice:
            await alice.say("c1", "hello?", "t1", agent_id="therapist")
            await expect_failure(alice, "t1", 504)
            await assert_only_user_message_stored(server, "c1")


async def test_whole_reply_over_agent_timeout_is_504(tmp_path: Path) -> None:
    async with run_llm() as llm:
        llm.enqueue(Script(chunks=["slow "] * 50, delay=0.1))
        settings = llm_settings(llm, agent_timeout=0.5 * UNIT)
        async with run_server(tmp_path, **settings) as server, connect(server, "alice") as alice:
            await alice.say("c1", "hello?", "t1", agent_id="therapist")
            await expect_failure(alice, "t1", 504)
            await asyncio.wait_for(llm.aborted_event.wait(), 5 * UNIT)


@pytest.mark.parametrize(
    "script",
    [
        Script(chunks=["Partial ", "text"], garbage=True),
        Script(chunks=["Partial ", "text ", "more"], disconnect_after=2),
        Script(chunks=["Partial ", "text"], finish_reason=None, done=False),
        Script(status=200, chunks=[], finish_reason="stop"),
    ],
    ids=["garbage", "mid-stream-disconnect", "ends-early", "empty-reply"],
)
async def test_broken_stream_is_503_and_nothing_is_stored(tmp_path: Path, script: Script) -> None:
    async with run_llm() as llm:
        llm.enqueue(script)
        async with (
            run_server(tmp_path, **llm_settings(llm)) as server,
            connect(server, "alice", query="stream=1") as alice,
        ):
            await alice.say("c1", "hello?", "t1", agent_id="therapist")
            await expect_failure(alice, "t1", 503)
            # The stream's end comes between the error and typing off.
            ends = [d for d in frames_of(alice, "agent_stream") if d["done"]]
            assert [d["status"] for d in ends] == ["failed"]
            await assert_only_user_message_stored(server, "c1")
            assert len(llm.requests) == 1  # text had flowed (or the answer was 200): no retry


async def test_unreachable_provider_is_503(tmp_path: Path) -> None:
    async with run_llm() as llm:
        base_url = llm.base_url
    settings = {
        "agents": [{"id": "therapist", "provider": "openai", "base_url": base_url, "model": "m"}],
        "agent_retry_backoff": 0.01,
    }
    async with run_server(tmp_path, **settings) as server, connect(server, "alice") as alice:
        await alice.say("c1", "anyone there?", "t1", agent_id="therapist")
        await expect_failure(alice, "t1", 503)
        await assert_only_user_message_stored(server, "c1")


# ---------------------------------------------------------------- cancel, duplicates, queue


async def test_cancel_mid_stream_stops_upstream_and_keeps_partial_text(tmp_path: Path) -> None:
    async with run_llm() as llm:
        llm.enqueue(Script(chunks=[f"word{n} " for n in range(200)], delay=0.02))
        async with (
            run_server(tmp_path, **llm_settings(llm)) as server,
            connect(server, "alice", query="stream=1") as alice,
            connect(server, "bob", chats=["c1"]) as bob,
        ):
            await alice.join("c1")
            await bob.join("c1")
            await alice.say("c1", "talk for a long time", "t1", agent_id="therapist")
            await alice.expect("agent_stream")  # text is flowing
            await asyncio.sleep(0.1)
            await alice.send("cancel", {"chatId": "c1", "messageId": "t1"})
            reply = await reply_to(alice, "t1")
            assert reply["metadata"]["cancelled"] is True
            assert reply["metadata"]["cancelReason"] == "user"
            assert reply["content"].startswith("word0 word1")
            assert len(reply["content"].split()) < 200
            done = await alice.expect("agent_stream", done=True)
            assert done["data"]["status"] == "cancelled"
            await alice.expect("typing", isTyping=False, userId="assistant")
            # What the streaming client saw is what was stored.
            streamed = "".join(d["delta"] for d in frames_of(alice, "agent_stream"))
            assert streamed.strip() == reply["content"]
            # The upstream request was closed, not left generating.
            await asyncio.wait_for(llm.aborted_event.wait(), 5 * UNIT)
            assert llm.completed == 0
            assert (await reply_to(bob, "t1"))["metadata"]["cancelled"] is True
            await bob.expect("typing", isTyping=False, userId="assistant")
            assert agent_typing(bob) == [True, False]
            stored = await server.service.storage.latest_messages("c1", 10)
            assert [m.role for m in stored] == ["user", "assistant"]
            assert stored[-1].metadata["cancelled"] is True
            # Nothing is left to cancel.
            await alice.send("cancel", {"chatId": "c1"})
            assert (await alice.expect("error"))["data"]["code"] == 404


async def test_cancel_before_any_text_stores_nothing(tmp_path: Path) -> None:
    async with run_llm() as llm:
        llm.enqueue(Script(first_delay=30))
        async with (
            run_server(tmp_path, **llm_settings(llm, agent_idle_timeout=60)) as server,
            connect(server, "alice") as alice,
        ):
            await alice.say("c1", "hello", "t1", agent_id="therapist")
            await alice.expect("typing", isTyping=True, userId="assistant")
            await asyncio.wait_for(llm.received.wait(), 5 * UNIT)  # the model is thinking
            await alice.send("cancel", {"chatId": "c1"})
            await alice.expect("typing", isTyping=False, userId="assistant")
            await asyncio.wait_for(llm.aborted_event.wait(), 5 * UNIT)
            await alice.expect_nothing("message", within=0.3)
            await assert_only_user_message_stored(server, "c1")


async def test_duplicate_temp_id_never_starts_a_second_generation(tmp_path: Path) -> None:
    async with run_llm() as llm:
        llm.default = lambda _body: Script(chunks=["Only once."], delay=0.05)
        async with (
            run_server(tmp_path, **llm_settings(llm)) as server,
            connect(server, "alice") as alice,
            connect(server, "alice") as again,  # the same user, reconnected elsewhere
        ):
            # Sent twice at once, then once more while the reply is generating.
            await ask(alice, "c1", "are you there?", "temp-dup")
            await ask(alice, "c1", "are you there?", "temp-dup")
            await alice.expect("typing", isTyping=True, userId="assistant")
            await ask(again, "c1", "are you there?", "temp-dup")
            reply = await reply_to(alice, "temp-dup")
            assert reply["content"] == "Only once."
            await alice.expect_nothing("message", within=0.3)
            # And once more after the reply was stored.
            await ask(alice, "c1", "are you there?", "temp-dup")
            echo = await alice.expect("message", messageId="temp-dup")
            assert echo["data"]["message"]["role"] == "user"
            await alice.expect_nothing("message", within=0.3)
            stored = await server.service.storage.latest_messages("c1", 10)
            assert [m.role for m in stored] == ["user", "assistant"]
        assert len(llm.requests) == 1


async def test_one_reply_at_a_time_per_chat_later_messages_queue(tmp_path: Path) -> None:
    async with run_llm() as llm:
        llm.default = lambda body: Script(
            chunks=words(f"Answer to {body['messages'][-1]['content']}"), delay=0.02
        )
        async with (
            run_server(tmp_path, **llm_settings(llm)) as server,
            connect(server, "alice") as alice,
        ):
            await alice.join("c1")  # the chat exists: messages are stored in send order
            for n in range(3):
                await ask(alice, "c1", f"question {n}", f"t{n}")
            replies = [await reply_to(alice, f"t{n}") for n in range(3)]
            assert [r["content"] for r in replies] == [f"Answer to question {n}" for n in range(3)]
            seqs = [r["seq"] for r in replies]
            assert seqs == sorted(seqs)
            assert llm.max_active == 1  # never two generations in one chat
            # Typing on and off once per reply, never left on.
            await alice.expect("typing", isTyping=False, userId="assistant")
            assert agent_typing(alice) == [True, False] * 3
            # The queued question saw the answers stored before its turn.
            last = llm.requests[2]["messages"]
            assert {"role": "assistant", "content": "Answer to question 0"} in last


async def test_per_chat_queue_is_bounded(tmp_path: Path) -> None:
    async with run_llm() as llm:
        llm.default = lambda _body: Script(chunks=["slow"], first_delay=0.5)
        settings = llm_settings(llm, agent_queue_per_chat=1)
        async with run_server(tmp_path, **settings) as server, connect(server, "alice") as alice:
            await alice.join("c1")  # the chat exists: messages are stored in send order
            for n in range(3):
                await ask(alice, "c1", f"q{n}", f"t{n}")
            error = await alice.expect("error", messageId="t2")
            assert error["data"]["code"] == 429
            await reply_to(alice, "t0")
            await reply_to(alice, "t1")


async def test_global_concurrency_limit(tmp_path: Path) -> None:
    async with run_llm() as llm:
        llm.default = lambda _body: Script(chunks=["a ", "b ", "c"], delay=0.05)
        settings = llm_settings(llm, max_concurrent_agent_replies=2)
        async with (
            run_server(tmp_path, **settings) as server,
            connect(server, "u1") as u1,
            connect(server, "u2") as u2,
            connect(server, "u3") as u3,
            connect(server, "u4") as u4,
        ):
            users = [u1, u2, u3, u4]
            for n, user in enumerate(users):
                await ask(user, f"chat-{n}", "hi", f"t{n}")
            for n, user in enumerate(users):
                assert (await reply_to(user, f"t{n}"))["content"] == "a b c"
        assert llm.max_active == 2


async def test_builtin_agents_still_answer_next_to_an_llm_agent(tmp_path: Path) -> None:
    async with (
        run_llm() as llm,
        run_server(tmp_path, **llm_settings(llm)) as server,
        connect(server, "alice", query="stream=1") as alice,
    ):
        await alice.say("c1", "What should I eat for breakfast?", "t1", agent_id="dietician")
        reply = await alice.expect("message", messageId="t1")
        while reply["data"]["message"]["role"] != "assistant":
            reply = await alice.expect("message", messageId="t1")
        assert reply["data"]["message"]["agentId"] == "dietician"
        assert len(llm.requests) == 0


# ---------------------------------------------------------------- other chats keep flowing


async def plain_round_trips(client: ChatClient, chat_id: str, count: int) -> list[float]:
    """Send `count` plain messages one after another; return each echo's latency (s)."""
    latencies = []
    for n in range(count):
        started = time.perf_counter()
        await client.say(chat_id, f"plain {n}", f"{chat_id}-{n}-{time.monotonic_ns()}")
        latencies.append(time.perf_counter() - started)
    return latencies


async def test_two_chats_generate_while_a_third_chats_messages_flow(tmp_path: Path) -> None:
    stream_s = 1.5
    chunks = [f"token{n} " for n in range(150)]
    async with run_llm() as llm:
        llm.default = lambda _body: Script(chunks=chunks, delay=stream_s / len(chunks))
        async with (
            run_server(tmp_path, **llm_settings(llm)) as server,
            connect(server, "gen1", query="stream=1") as gen1,
            connect(server, "gen2", query="stream=1") as gen2,
            connect(server, "talker") as talker,
            connect(server, "listener", chats=["plain"]) as listener,
        ):
            await talker.join("plain")
            await listener.join("plain")
            baseline = await plain_round_trips(talker, "plain", 30)

            await ask(gen1, "g1", "long answer please", "g1-t")
            await ask(gen2, "g2", "long answer please", "g2-t")
            await gen1.expect("agent_stream")
            await gen2.expect("agent_stream")
            during = await plain_round_trips(talker, "plain", 30)
            # Every plain message arrived while both replies were still generating.
            assert llm.active == 2
            assert llm.completed == 0

            reply1 = await reply_to(gen1, "g1-t", timeout=10)
            reply2 = await reply_to(gen2, "g2-t", timeout=10)
            assert reply1["content"] == reply2["content"] == "".join(chunks).strip()
            # The listener got every plain message, in seq order, and no agent frames.
            contents = []
            while len(contents) < 60:
                frame = await listener.expect("message", chatId="plain")
                contents.append(frame["data"]["message"]["content"])
            assert contents == [f"plain {n}" for n in range(30)] * 2
            assert all(f["type"] != "agent_stream" for f in listener.seen)

    def ms(values: list[float], q: float) -> float:
        return 1000 * statistics.quantiles(values, n=100)[int(q) - 1]

    print(
        f"\nplain-chat echo latency idle: p50 {ms(baseline, 50):.2f} ms p95 {ms(baseline, 95):.2f}"
        f" ms; with two chats streaming: p50 {ms(during, 50):.2f} ms p95 {ms(during, 95):.2f} ms"
    )


# ---------------------------------------------------------------- shutdown


async def stored_after_restart(tmp_path: Path, url: str, chat_id: str) -> list[Any]:
    storage = load_storage(url, StorageOptions())
    await storage.open()
    try:
        return await storage.latest_messages(chat_id, 10)
    finally:
        await storage.close()


async def test_shutdown_waits_for_a_reply_that_finishes_within_the_drain_timeout(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'drain.db'}"
    async with run_llm() as llm:
        llm.enqueue(Script(chunks=words("this one finishes in time"), delay=0.1))
        settings = llm_settings(llm, storage_url=url, drain_timeout=5 * UNIT)
        async with (
            run_server(tmp_path, **settings) as server,
            connect(server, "alice", query="stream=1") as alice,
        ):
            await ask(alice, "c1", "hello", "t1")
            await alice.expect("agent_stream")
            await server.stop()
    stored = await stored_after_restart(tmp_path, url, "c1")
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[-1].content == "this one finishes in time"
    assert "cancelled" not in stored[-1].metadata


async def test_shutdown_during_generation_stores_partial_text_as_cancelled(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'drain.db'}"
    async with run_llm() as llm:
        llm.enqueue(Script(chunks=[f"w{n} " for n in range(500)], delay=0.02))
        settings = llm_settings(llm, storage_url=url, drain_timeout=0.3 * UNIT)
        async with run_server(tmp_path, **settings) as server:
            async with connect(server, "alice", query="stream=1") as alice:
                await ask(alice, "c1", "hello", "t1")
                await alice.expect("agent_stream")
                started = time.monotonic()
                await server.stop()
                assert time.monotonic() - started < 3 * UNIT
                assert server.service.replies.in_progress == 0
            await asyncio.wait_for(llm.aborted_event.wait(), 5 * UNIT)
    stored = await stored_after_restart(tmp_path, url, "c1")
    assert [m.role for m in stored] == ["user", "assistant"]
    reply = stored[-1]
    assert reply.metadata["cancelled"] is True
    assert reply.metadata["cancelReason"] == "shutdown"
    assert reply.content.startswith("w0 w1")
    # A client reconnecting to the restarted server sees the partial reply in the history.
    async with run_server(tmp_path, storage_url=url) as server, connect(server, "alice") as alice:
        joined = await alice.join("c1")
        assert joined["data"]["messages"][-1]["metadata"]["cancelled"] is True
