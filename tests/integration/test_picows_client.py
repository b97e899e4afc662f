"""The main SPEC flows driven by a second, independent client library: picows.

The `websockets` library drives most integration tests; this file repeats the core flows
(join, message echo, agent reply with typing, ping/pong, read receipts) with a picows
client, so a quirk shared by one client library and the server cannot hide a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from gurukul_fast.server import GurukulServer
from tests.support.server import UNIT, FrameReader, frame, run_server, ws_url

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z\Z")


class Collector(WSListener):
    """Puts every TEXT frame the server sends, decoded, on an asyncio.Queue."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.close_code: int | None = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.TEXT:
            self.frames.put_nowait(orjson.loads(frame.get_payload_as_bytes()))
        elif frame.msg_type is WSMsgType.CLOSE:
            self.close_code = int(frame.get_close_code())
            transport.send_close(frame.get_close_code())
            transport.disconnect()


class PicowsClient(FrameReader):
    """Send protocol frames, wait for the ones we expect (others are kept in `seen`)."""

    def __init__(self, transport: WSTransport, listener: Collector) -> None:
        super().__init__()
        self.transport = transport
        self.listener = listener

    def send(self, kind: str, data: dict[str, Any], **extra: Any) -> None:
        self.transport.send(WSMsgType.TEXT, frame(kind, data, **extra))

    async def _receive(self, timeout_s: float) -> dict[str, Any]:
        return await asyncio.wait_for(self.listener.frames.get(), timeout_s)

    async def collect_until(self, done: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Every frame up to and including the first one for which `done(frame)` holds."""
        frames: list[dict[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + timeout * UNIT
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"condition not met; saw {frames[-8:]}")
            message = await self.recv(left / UNIT)
            frames.append(message)
            if done(message):
                return frames


@contextlib.asynccontextmanager
async def picows_client(server: GurukulServer, user: str) -> AsyncIterator[PicowsClient]:
    transport, listener = await ws_connect(
        Collector, ws_url(server, user), websocket_handshake_timeout=5 * UNIT
    )
    assert isinstance(listener, Collector)
    try:
        yield PicowsClient(transport, listener)
    finally:
        if not transport.is_disconnected:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
        await asyncio.wait_for(transport.wait_disconnected(), 5 * UNIT)


async def join(client: PicowsClient, chat_id: str) -> dict[str, Any]:
    client.send("chat_update", {"action": "join", "chatId": chat_id})
    return await client.expect("chat_update", chatId=chat_id, action="joined")


# ---------------------------------------------------------------- flows


async def test_join_sends_chat_update_joined(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server, picows_client(server, "user-456") as client:
        joined = await join(client, "chat-123")
        data = joined["data"]
        assert data["chatId"] == "chat-123"
        assert data["action"] == "joined"
        assert data["messages"] == []
        assert data["hasMore"] is False
        updates = data["updates"]
        assert updates["messageCount"] == 0
        assert updates["lastMessage"] is None
        assert isinstance(updates["title"], str)
        assert updates["title"]
        assert isinstance(joined["timestamp"], int)
        assert server.service.rooms.is_member("chat-123", next(iter(server.service.clients)))


async def test_message_is_echoed_with_the_temp_message_id(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server, picows_client(server, "user-456") as client:
        await join(client, "chat-123")
        client.send(
            "message",
            {"chatId": "chat-123", "content": "Hello, how are you?", "messageId": "temp-1"},
            messageId="temp-1",
        )
        echo = await client.expect("message", messageId="temp-1")
        assert echo["data"]["chatId"] == "chat-123"
        message = echo["data"]["message"]
        assert message["id"].startswith("msg-")
        assert message["chatId"] == "chat-123"
        assert message["userId"] == "user-456"
        assert message["role"] == "user"
        assert message["content"] == "Hello, how are you?"
        assert message["seq"] == 1
        assert ISO_UTC.match(message["timestamp"])
        summary = await client.expect("chat_update", chatId="chat-123")
        assert summary["data"]["updates"]["messageCount"] == 1
        assert summary["data"]["updates"]["lastMessage"] == "Hello, how are you?"
        stored = await server.service.storage.latest_messages("chat-123", 10)
        assert [m.id for m in stored] == [message["id"]]


async def test_message_reaches_other_members(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path) as server,
        picows_client(server, "alice") as alice,
        picows_client(server, "bob") as bob,
    ):
        await join(alice, "shared")
        # Bob may use the chat once he is a member (as after an accepted invite).
        await server.service.storage.add_member("shared", "bob")
        await join(bob, "shared")
        alice.send("message", {"chatId": "shared", "content": "hi bob", "messageId": "t-a"})
        seen_by_bob = await bob.expect("message", messageId="t-a")
        assert seen_by_bob["data"]["message"]["userId"] == "alice"
        assert seen_by_bob["data"]["message"]["content"] == "hi bob"


async def test_agent_reply_with_typing_around_it(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server, picows_client(server, "user-456") as client:
        await join(client, "chat-123")
        client.send(
            "message",
            {
                "chatId": "chat-123",
                "content": "I feel anxious about my exams",
                "agentId": "therapist",
                "messageId": "temp-2",
            },
            messageId="temp-2",
        )

        def is_typing_off(message: dict[str, Any]) -> bool:
            data = message["data"]
            return (
                message["type"] == "typing"
                and data["userId"] == "assistant"
                and data["isTyping"] is False
            )

        frames = await client.collect_until(is_typing_off)
        kinds = [
            (f["type"], f["data"].get("isTyping"), f["data"].get("message", {}).get("role"))
            for f in frames
        ]
        echo_at = kinds.index(("message", None, "user"))
        typing_on_at = kinds.index(("typing", True, None))
        reply_at = kinds.index(("message", None, "assistant"))
        typing_off_at = len(frames) - 1
        assert echo_at < reply_at
        assert typing_on_at < reply_at < typing_off_at

        typing_on = frames[typing_on_at]["data"]
        assert typing_on == {
            "chatId": "chat-123",
            "userId": "assistant",
            "agentId": "therapist",
            "isTyping": True,
        }
        assert frames[typing_off_at]["data"]["agentId"] == "therapist"

        reply = frames[reply_at]["data"]
        assert reply["chatId"] == "chat-123"
        assert reply["messageId"] == "temp-2"
        message = reply["message"]
        assert message["userId"] == "assistant"
        assert message["role"] == "assistant"
        assert message["agentId"] == "therapist"
        assert message["content"].strip()
        assert message["id"].startswith("msg-")
        assert message["seq"] == frames[echo_at]["data"]["message"]["seq"] + 1
        metadata = message["metadata"]
        assert 0.0 <= metadata["confidence"] <= 1.0
        assert metadata["messageIndex"] == 1
        assert metadata["totalMessages"] == 1

        summary = await client.expect("chat_update", chatId="chat-123")
        assert summary["data"]["updates"]["messageCount"] >= 1
        stored = await server.service.storage.latest_messages("chat-123", 10)
        assert [m.role for m in stored] == ["user", "assistant"]


async def test_ping_gets_pong_with_the_same_timestamp(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server, picows_client(server, "user-456") as client:
        client.send("ping", {"timestamp": 1703123456789})
        pong = await client.expect("pong")
        assert pong["data"] == {"timestamp": 1703123456789}
        assert isinstance(pong["timestamp"], int)
        client.send("ping", {"timestamp": 1.25})
        assert (await client.expect("pong"))["data"] == {"timestamp": 1.25}


async def test_read_receipt_is_confirmed(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path) as server,
        picows_client(server, "alice") as alice,
        picows_client(server, "bob") as bob,
    ):
        await join(alice, "chat-r")
        alice.send("message", {"chatId": "chat-r", "content": "one", "messageId": "t1"})
        first = (await alice.expect("message", messageId="t1"))["data"]["message"]["id"]
        alice.send("message", {"chatId": "chat-r", "content": "two", "messageId": "t2"})
        second = (await alice.expect("message", messageId="t2"))["data"]["message"]["id"]
        await server.service.storage.add_member("chat-r", "bob")
        await join(bob, "chat-r")

        bob.send(
            "read_receipt",
            {
                "chatId": "chat-r",
                "messageIds": [first, second, "msg-not-in-this-chat"],
                "userId": "alice",  # spoofed: the server uses the token's user
            },
        )
        confirmation = await bob.expect("read_receipt", chatId="chat-r")
        assert confirmation["data"] == {
            "chatId": "chat-r",
            "messageIds": [first, second],
            "userId": "bob",
            "confirmed": True,
        }
        relayed = await alice.expect("read_receipt", chatId="chat-r")
        assert relayed["data"]["userId"] == "bob"
        assert relayed["data"]["messageIds"] == [first, second]
        assert "confirmed" not in relayed["data"]
        assert await server.service.storage.read_message_ids("chat-r", "bob") == {first, second}


async def test_leave_stops_delivery(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path) as server,
        picows_client(server, "alice") as alice,
        picows_client(server, "bob") as bob,
    ):
        await join(alice, "chat-l")
        await server.service.storage.add_member("chat-l", "bob")
        await join(bob, "chat-l")
        bob.send("chat_update", {"action": "leave", "chatId": "chat-l"})
        await bob.expect("chat_update", chatId="chat-l", action="left")
        alice.send("message", {"chatId": "chat-l", "content": "anyone?", "messageId": "t9"})
        await alice.expect("message", messageId="t9")
        # Bob proves he is still served, and that the message never reached him.
        bob.send("ping", {"timestamp": 9})
        await bob.expect("pong")
        assert not [f for f in bob.seen if f["type"] == "message"]
