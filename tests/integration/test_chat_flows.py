"""Every SPEC flow over real sockets, with the `websockets` client library.

Runs against the storage backend named by GURUKUL_TEST_STORAGE (memory by default); CI
runs this file once per backend.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from tests.support.server import UNIT, ChatClient, backend_under_test, connect, run_server


async def test_join_replies_with_summary_and_history(tmp_path: Path) -> None:
    async with run_server(tmp_path, history_page_size=3) as server:
        async with connect(server, "alice") as alice:
            joined = await alice.join("chat-1")
            data = joined["data"]
            assert data["messages"] == []
            assert data["hasMore"] is False
            assert data["updates"]["messageCount"] == 0
            assert data["updates"]["title"]
            for n in range(5):
                await alice.say("chat-1", f"hello {n}", f"temp-{n}")
        async with connect(server, "alice") as again:
            data = (await again.join("chat-1"))["data"]
            assert [m["content"] for m in data["messages"]] == ["hello 2", "hello 3", "hello 4"]
            assert [m["seq"] for m in data["messages"]] == [3, 4, 5]
            assert data["hasMore"] is True
            assert data["updates"]["messageCount"] == 5
            assert data["updates"]["lastMessage"] == "hello 4"


async def test_message_reaches_every_member_with_the_temp_id(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path) as server,
        connect(server, "alice") as alice,
        connect(server, "bob", chats=["room"]) as bob,
    ):
        await alice.join("room")
        await bob.join("room")
        echo = await alice.say("room", "Hello, how are you?", "temp-1703123456789-ab12")
        message = echo["data"]["message"]
        assert echo["data"]["messageId"] == "temp-1703123456789-ab12"
        assert message["id"].startswith("msg-")
        assert message["userId"] == "alice"
        assert message["role"] == "user"
        assert message["chatId"] == "room"
        assert message["seq"] == 1
        assert message["timestamp"].endswith("Z")
        received = await bob.expect("message", chatId="room")
        assert received["data"]["message"] == message
        update = await bob.expect("chat_update", chatId="room")
        assert update["data"]["updates"]["messageCount"] == 1
        assert update["data"]["updates"]["lastMessage"] == "Hello, how are you?"


async def test_stranger_is_denied_and_nothing_is_stored(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server:
        async with connect(server, "owner") as owner:
            await owner.join("private")
            async with connect(server, "mallory") as mallory:
                await mallory.send("chat_update", {"action": "join", "chatId": "private"})
                error = await mallory.expect("error")
                assert error["data"] == {"message": "Access denied to chat", "code": 403}
                await mallory.send(
                    "message", {"chatId": "private", "content": "hi", "messageId": "t1"}
                )
                error = await mallory.expect("error")
                assert error["data"]["code"] == 403
                assert error["data"]["messageId"] == "t1"
                await owner.expect_nothing("message")
        stored = await server.service.storage.latest_messages("private", 10)
        assert stored == []


async def test_token_chats_claim_grants_access(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server:
        async with connect(server, "owner") as owner:
            await owner.join("shared")
        async with connect(server, "guest", chats=["shared"]) as guest:
            joined = await guest.join("shared")
            assert joined["data"]["chatId"] == "shared"
        assert "guest" in await server.service.storage.list_members("shared")


async def test_sending_auto_joins_and_leave_stops_delivery(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path) as server,
        connect(server, "alice") as alice,
        connect(server, "bob", chats=["c"]) as bob,
    ):
        await alice.say("c", "first", "t1")  # no join: sending joins
        await bob.say("c", "from bob", "t2")  # bob auto-joins too
        got = await alice.expect("message", messageId="t2")
        assert got["data"]["message"]["content"] == "from bob"
        await alice.send("chat_update", {"action": "leave", "chatId": "c"})
        left = await alice.expect("chat_update", chatId="c", action="left")
        assert left["data"]["chatId"] == "c"
        await bob.say("c", "after leave", "t3")
        await alice.expect_nothing("message")


async def test_recovery_after_last_message_id(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server:
        async with connect(server, "alice") as alice:
            first = await alice.say("c", "one", "t1")
            last_seen = first["data"]["message"]["id"]
            for n in range(2, 5):
                await alice.say("c", f"msg {n}", f"t{n}")
        async with connect(server, "alice") as alice:
            data = (await alice.join("c", lastMessageId=last_seen))["data"]
            assert data["recovered"] is True
            assert [m["content"] for m in data["messages"]] == ["msg 2", "msg 3", "msg 4"]
            data = (await alice.join("c", since=3))["data"]
            assert [m["seq"] for m in data["messages"]] == [4]
            data = (await alice.join("c", lastMessageId="msg-unknown"))["data"]
            assert data["recovered"] is False
            assert len(data["messages"]) == 4  # the latest page instead


async def test_resend_with_same_temp_id_is_stored_once(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server:
        async with connect(server, "alice") as alice, connect(server, "bob", chats=["c"]) as bob:
            await alice.join("c")
            await bob.join("c")
            first = await alice.say("c", "hello", "temp-dup", agent_id="therapist")
            await bob.expect("message", messageId="temp-dup")
            reply = await bob.expect("message", messageId="temp-dup")
            assert reply["data"]["message"]["userId"] == "assistant"
        # The client reconnects and re-sends its queue without re-joining.
        async with connect(server, "alice") as alice:
            again = await alice.say("c", "hello", "temp-dup", agent_id="therapist")
            assert again["data"]["message"]["id"] == first["data"]["message"]["id"]
            await alice.expect_nothing("typing", within=0.5)
        stored = await server.service.storage.latest_messages("c", 10)
        assert [m.role for m in stored] == ["user", "assistant"]


async def test_identity_comes_from_the_token(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path) as server,
        connect(server, "alice") as alice,
        connect(server, "bob", chats=["c"]) as bob,
    ):
        await alice.join("c")
        await bob.join("c")
        await alice.send("typing", {"chatId": "c", "userId": "bob", "isTyping": True})
        typing = await bob.expect("typing", chatId="c")
        assert typing["data"]["userId"] == "alice"
        await alice.send("read_receipt", {"chatId": "c", "messageIds": [], "userId": "bob"})
        receipt = await alice.expect("read_receipt")
        assert receipt["data"]["userId"] == "alice"


async def test_typing_is_relayed_not_echoed_throttled_and_expires(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path, typing_timeout=0.5 * UNIT, typing_throttle=10.0) as server,
        connect(server, "alice") as alice,
        connect(server, "bob", chats=["c"]) as bob,
    ):
        await alice.join("c")
        await bob.join("c")
        await alice.send("typing", {"chatId": "c", "isTyping": True, "agentId": "therapist"})
        on = await bob.expect("typing")
        assert on["data"] == {
            "chatId": "c",
            "userId": "alice",
            "agentId": "therapist",
            "isTyping": True,
        }
        await alice.send("typing", {"chatId": "c", "isTyping": True})  # throttled repeat
        off = await bob.expect("typing", timeout=3)  # the server-side expiry
        assert off["data"]["isTyping"] is False
        assert off["data"]["userId"] == "alice"
        await alice.expect_nothing("typing")  # never echoed to the typist


async def test_read_receipts_confirm_relay_and_ignore_foreign_ids(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path) as server,
        connect(server, "alice") as alice,
        connect(server, "bob", chats=["c"]) as bob,
    ):
        await alice.join("c")
        await bob.join("c")
        sent = await alice.say("c", "read me", "t1")
        message_id = sent["data"]["message"]["id"]
        await bob.send("read_receipt", {"chatId": "c", "messageIds": [message_id, "msg-nope"]})
        confirmation = await bob.expect("read_receipt")
        assert confirmation["data"] == {
            "chatId": "c",
            "messageIds": [message_id],
            "userId": "bob",
            "confirmed": True,
        }
        relayed = await alice.expect("read_receipt")
        assert relayed["data"] == {"chatId": "c", "messageIds": [message_id], "userId": "bob"}
        assert await server.service.storage.read_message_ids("c", "bob") == {message_id}


async def test_ping_pong(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server, connect(server, "alice") as alice:
        await alice.send("ping", {"timestamp": 1703123456789})
        pong = await alice.expect("pong")
        assert pong["data"] == {"timestamp": 1703123456789}
        assert isinstance(pong["timestamp"], int)


async def test_agent_reply_lifecycle(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server, connect(server, "alice") as alice:
        await alice.join("therapy")
        await alice.send(
            "message",
            {
                "chatId": "therapy",
                "content": "I am sad about my job",
                "agentId": "therapist",
                "messageId": "temp-9",
            },
            messageId="temp-9",
        )
        kinds = []
        reply = None
        while reply is None:
            frame = await alice.recv()
            kinds.append(
                (
                    frame["type"],
                    frame["data"].get("userId") or frame["data"].get("message", {}).get("userId"),
                )
            )
            if frame["type"] == "message" and frame["data"]["message"]["role"] == "assistant":
                reply = frame
        assert kinds == [
            ("message", "alice"),
            ("chat_update", None),
            ("typing", "assistant"),
            ("message", "assistant"),
        ]
        message = reply["data"]["message"]
        assert reply["data"]["messageId"] == "temp-9"
        assert message["agentId"] == "therapist"
        assert "your job" in message["content"].lower()
        assert set(message["metadata"]) >= {"confidence", "messageIndex", "totalMessages"}
        off = await alice.expect("typing")
        assert off["data"]["isTyping"] is False
        update = await alice.expect("chat_update")
        assert update["data"]["updates"]["messageCount"] == 2


async def test_unknown_agent_is_404_and_message_still_stored(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server, connect(server, "alice") as alice:
        await alice.say("c", "hello?", "t1", agent_id="astrologer")
        error = await alice.expect("error")
        assert error["data"]["code"] == 404
        assert error["data"]["messageId"] == "t1"
        stored = await server.service.storage.latest_messages("c", 10)
        assert [m.content for m in stored] == ["hello?"]


async def test_history_extension_pages_backwards(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server, connect(server, "alice") as alice:
        for n in range(1, 6):
            await alice.say("c", f"m{n}", f"t{n}")
        await alice.send("history", {"chatId": "c", "before": 4, "limit": 2})
        page = await alice.expect("history")
        assert [m["seq"] for m in page["data"]["messages"]] == [2, 3]
        assert page["data"]["hasMore"] is True


async def test_cancel_without_a_reply_in_progress_is_404(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server, connect(server, "alice") as alice:
        await alice.join("c")
        await alice.send("cancel", {"chatId": "c"})
        error = await alice.expect("error")
        assert error["data"]["code"] == 404


@pytest.mark.parametrize("clients_per_chat", [10])
async def test_200_clients_in_20_chats_get_every_message_once_in_order(
    tmp_path: Path, clients_per_chat: int
) -> None:
    chats = [f"load-{n}" for n in range(20)]
    # The MongoDB wire emulator checks uniqueness by scanning: keep it to hundreds of rows.
    per_client = 1 if backend_under_test() == "mongodb" else 3
    async with (
        run_server(tmp_path, message_rate_limit=10_000) as server,
        contextlib.AsyncExitStack() as stack,
    ):
        members: dict[str, list[ChatClient]] = {}
        for chat in chats:
            members[chat] = []
            for n in range(clients_per_chat):
                client = await stack.enter_async_context(
                    connect(server, f"{chat}-u{n}", chats=[chat])
                )
                await client.join(chat)
                members[chat].append(client)

        async def talk(chat: str, index: int, client: ChatClient) -> None:
            for k in range(per_client):
                await client.send(
                    "message",
                    {"chatId": chat, "content": f"{index}:{k}", "messageId": f"{index}-{k}"},
                )

        await asyncio.gather(
            *(talk(chat, i, c) for chat in chats for i, c in enumerate(members[chat]))
        )
        expected = clients_per_chat * per_client

        async def collect(client: ChatClient) -> list[tuple[int, str]]:
            got: list[tuple[int, str]] = []
            while len(got) < expected:
                frame = await client.expect("message", timeout=20)
                message = frame["data"]["message"]
                got.append((message["seq"], message["id"]))
            return got

        results = await asyncio.gather(*(collect(c) for chat in chats for c in members[chat]))
        by_chat: dict[str, list[list[tuple[int, str]]]] = {}
        owners = [chat for chat in chats for _ in members[chat]]
        for owner_chat, got in zip(owners, results, strict=True):
            by_chat.setdefault(owner_chat, []).append(got)
        for chat, views in by_chat.items():
            first = views[0]
            assert [seq for seq, _ in first] == list(range(1, expected + 1)), chat
            assert len({mid for _, mid in first}) == expected  # exactly once
            for view in views[1:]:
                assert view == first  # same order everywhere


async def test_burst_to_a_new_chat_is_stored_in_send_order(tmp_path: Path) -> None:
    """No join first: the access check of the first message is in flight while the rest
    arrive; they must still be stored in the order they were sent."""
    async with run_server(tmp_path) as server, connect(server, "alice") as alice:
        for n in range(20):
            await alice.send(
                "message", {"chatId": "fresh", "content": f"m{n}", "messageId": f"t{n}"}
            )
        seqs = {}
        while len(seqs) < 20:
            echo = await alice.expect("message", chatId="fresh")
            seqs[echo["data"]["messageId"]] = echo["data"]["message"]["seq"]
        assert [seqs[f"t{n}"] for n in range(20)] == list(range(1, 21))
