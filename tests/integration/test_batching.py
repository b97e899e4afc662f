"""`?batch=1` clients get coalesced `batch` frames; everyone else gets plain frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.server import ChatClient, connect, run_server


async def _next_batch(client: ChatClient, timeout: float = 5.0) -> list[dict[str, Any]]:
    batch = await client.expect("batch", timeout=timeout)
    messages: list[dict[str, Any]] = batch["data"]["messages"]
    assert isinstance(batch["timestamp"], int)
    return messages


async def test_idle_chat_flushes_at_once_and_plain_clients_see_no_batches(
    tmp_path: Path,
) -> None:
    # An interval far longer than the test's patience: only the idle path can deliver.
    async with (
        run_server(tmp_path, batch_interval_ms=60_000) as server,
        connect(server, "alice") as alice,
        connect(server, "bob", chats=["c"], query="batch=1") as bob,
    ):
        await alice.join("c")
        await bob.join("c")  # the join reply itself is a plain frame
        await alice.say("c", "hello", "t1")
        frames = await _next_batch(bob, timeout=3)
        assert [f["type"] for f in frames] == ["message", "chat_update"]
        assert frames[0]["data"]["messageId"] == "t1"
        assert frames[0]["data"]["message"]["content"] == "hello"
        assert all(m["type"] != "batch" for m in alice.seen)


async def test_busy_chat_is_coalesced(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path, batch_interval_ms=400, typing_throttle=0.0) as server,
        connect(server, "alice") as alice,
        connect(server, "carol", chats=["c"]) as carol,
        connect(server, "bob", chats=["c"], query="batch=1") as bob,
    ):
        await alice.join("c")
        await carol.join("c")
        await bob.join("c")
        await alice.say("c", "opening", "t0")
        first = await _next_batch(bob)  # idle chat: flushed at once
        assert [f["type"] for f in first] == ["message", "chat_update"]
        # Within the next interval: three messages, typing flapping, two receipts.
        ids = []
        for n in range(1, 4):
            echo = await alice.say("c", f"m{n}", f"t{n}")
            ids.append(echo["data"]["message"]["id"])
        await carol.send("typing", {"chatId": "c", "isTyping": True})
        await carol.send("typing", {"chatId": "c", "isTyping": False})
        await carol.send("read_receipt", {"chatId": "c", "messageIds": ids[:1]})
        await carol.expect("read_receipt", confirmed=True)
        await carol.send("read_receipt", {"chatId": "c", "messageIds": ids[1:]})
        await carol.expect("read_receipt", confirmed=True)
        frames = await _next_batch(bob)
        kinds = [f["type"] for f in frames]
        messages = [f["data"]["message"]["content"] for f in frames if f["type"] == "message"]
        assert messages == ["m1", "m2", "m3"]  # never dropped, in order
        assert kinds.count("chat_update") == 1  # only the latest summary
        summary = next(f for f in frames if f["type"] == "chat_update")
        assert summary["data"]["updates"]["messageCount"] == 4
        typing = [f["data"] for f in frames if f["type"] == "typing"]
        assert typing == [{"chatId": "c", "userId": "carol", "agentId": None, "isTyping": False}]
        receipts = [f["data"] for f in frames if f["type"] == "read_receipt"]
        assert receipts == [{"chatId": "c", "messageIds": ids, "userId": "carol"}]


async def test_batch_member_does_not_get_its_own_typing(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path, batch_interval_ms=300) as server,
        connect(server, "alice", query="batch=1") as alice,
        connect(server, "bob", chats=["c"], query="batch=1") as bob,
    ):
        await alice.join("c")
        await bob.join("c")
        await alice.send("typing", {"chatId": "c", "isTyping": True})
        frames = await _next_batch(bob)
        assert [f["data"]["userId"] for f in frames] == ["alice"]
        await alice.expect_nothing("batch", within=0.8)
