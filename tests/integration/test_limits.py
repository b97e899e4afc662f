"""DESIGN §5, one test (or a few) per row, over real sockets against a real server.

Every limit is a Config field, so each test starts a server with small limits and checks
what a client sees: HTTP statuses on the upgrade, `error` frames with their codes, close
codes, and that the server keeps serving everybody else. Raw sockets stand in for the
clients a library would not let us write (never finishing a handshake, never answering a
ping, never reading).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from gurukul_fast.server import GurukulServer
from gurukul_fast.storage import NewMessage, StorageOptions, StorageUnavailable, StoredMessage
from gurukul_fast.storage.memory import MemoryStorage
from tests.support.server import (
    SECRET,
    UNIT,
    ChatClient,
    connect,
    frame,
    http_get,
    make_config,
    run_server,
    token,
)

# ---------------------------------------------------------------- helpers


def url_with(server: GurukulServer, query: str) -> str:
    return f"ws://127.0.0.1:{server.port}{server.config.ws_path}?{query}"


def short_lived_token(user: str, ttl_s: float) -> str:
    """A token that expires `ttl_s` seconds from now (float `exp`, no rounding)."""
    return jwt.encode({"sub": user, "exp": time.time() + ttl_s}, SECRET, algorithm="HS256")


@contextlib.asynccontextmanager
async def connect_token(server: GurukulServer, jwt_token: str) -> AsyncIterator[ChatClient]:
    async with websockets.connect(url_with(server, f"token={jwt_token}")) as connection:
        yield ChatClient(connection)


async def refused_upgrade(url: str) -> tuple[int, dict[str, Any], bytes]:
    """Try to upgrade; return (status, JSON body, raw body) of the refusal."""
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with websockets.connect(url, open_timeout=5 * UNIT):
            pass
    response = caught.value.response
    body = bytes(response.body or b"")
    assert len(body) < 200, "a refusal body is short"
    return response.status_code, orjson.loads(body), body


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until server-side state satisfies `predicate` (it changes between our awaits)."""
    deadline = time.monotonic() + timeout * UNIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01 * UNIT)


async def frames_until_closed(client: ChatClient, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Read every frame until the server closes the connection."""
    frames: list[dict[str, Any]] = []
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            frames.append(await client.recv(timeout))
    return frames


async def eventually_async(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """`eventually` for a check that has to await (e.g. a storage read)."""
    deadline = time.monotonic() + timeout * UNIT
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01 * UNIT)


def bob_id(server: GurukulServer) -> int:
    (conn_id,) = [i for i, c in server.service.clients.items() if c.user_id == "bob"]
    return conn_id


def close_code(connection: ClientConnection) -> int | None:
    return connection.close_code


async def assert_alive(client: ChatClient, stamp: int = 424242) -> None:
    """The connection is open and served: a ping gets its pong."""
    await client.send("ping", {"timestamp": stamp})
    pong = await client.expect("pong", timestamp=stamp)
    assert pong["data"]["timestamp"] == stamp


class RawWebSocket:
    """A hand-written WebSocket client over a plain socket, for misbehaving on purpose."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, *, rcvbuf: int | None = None, limit: int = 2**16) -> Any:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so the advertised TCP window stays small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
        return cls(reader, writer)

    async def handshake(self, path: str, *, connection: str = "Upgrade") -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: {connection}\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.writer.write(request.encode())
        await self.writer.drain()
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5 * UNIT)

    def send_frame(self, payload: bytes, opcode: int = 0x1) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)

    async def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame; IncompleteReadError at EOF."""

        async def read() -> tuple[int, bytes]:
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, await self.reader.readexactly(length)

        return await asyncio.wait_for(read(), timeout * UNIT)

    async def read_until_eof(self, timeout: float = 5.0) -> list[tuple[int, bytes]]:
        frames: list[tuple[int, bytes]] = []
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionResetError):
            while True:
                frames.append(await self.read_frame(timeout))
        return frames

    def close(self) -> None:
        self.writer.close()


def close_frame_code(payload: bytes) -> int:
    return int(struct.unpack("!H", payload[:2])[0])


class FlakyStorage:
    """Fault injection around a real backend: `append_messages` fails while `down` is set."""

    def __init__(self, inner: MemoryStorage) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def url(self) -> str:
        return self.inner.url

    async def append_messages(self, batch: Sequence[NewMessage]) -> list[StoredMessage]:
        if self.down:
            raise StorageUnavailable("injected outage")
        return await self.inner.append_messages(batch)

    async def ping(self) -> bool:
        return not self.down and await self.inner.ping()


@contextlib.asynccontextmanager
async def serve_with(
    tmp_path: Path, storage: Any, **overrides: Any
) -> AsyncIterator[GurukulServer]:
    server = GurukulServer(make_config(tmp_path, "memory:", **overrides), storage=storage)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# ---------------------------------------------------------------- no/invalid/expired token


async def test_upgrade_without_token_is_401(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server:
        status, body, _ = await refused_upgrade(url_with(server, ""))
        assert status == 401
        assert body == {"error": "Authentication failed", "code": 401}
        assert server.service.clients == {}


@pytest.mark.parametrize(
    "bad_token",
    [
        "not-a-jwt",
        token("u1").rsplit(".", 1)[0] + ".c2lnbmF0dXJl",  # wrong signature
        jwt.encode({"sub": "u1", "exp": int(time.time()) + 600}, "another-secret" * 4),
        jwt.encode({"sub": "assistant", "exp": int(time.time()) + 600}, SECRET),
        jwt.encode({"sub": "u1"}, SECRET),  # no exp
    ],
    ids=["garbage", "bad-signature", "other-secret", "assistant", "no-exp"],
)
async def test_upgrade_with_invalid_token_is_401(tmp_path: Path, bad_token: str) -> None:
    async with run_server(tmp_path) as server:
        status, body, _ = await refused_upgrade(url_with(server, f"token={bad_token}"))
        assert status == 401
        assert body == {"error": "Authentication failed", "code": 401}


async def test_upgrade_with_expired_token_is_401_token_expired(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server:
        expired = token("u1", ttl_s=60, now=time.time() - 3600)
        status, body, _ = await refused_upgrade(url_with(server, f"token={expired}"))
        assert status == 401
        assert body == {"error": "Token expired", "code": 401}


async def test_token_expiring_mid_connection_gets_401_then_close_1008(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server:
        async with connect_token(server, short_lived_token("u1", 1.0)) as client:
            await assert_alive(client)
            error = await client.expect("error", timeout=5.0)
            assert error["data"]["code"] == 401
            assert error["data"]["message"] == "Token expired"
            await frames_until_closed(client)
            assert close_code(client.ws) == 1008
        await eventually(lambda: server.service.clients == {})


async def test_auth_frame_refreshes_the_token(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server:
        first = short_lived_token("u1", 1.0)
        expires_at = jwt.decode(first, options={"verify_signature": False})["exp"]
        async with connect_token(server, first) as client:
            fresh = token("u1", ttl_s=3600)
            await client.send("auth", {"token": fresh})
            ack = await client.expect("auth")
            fresh_exp = jwt.decode(fresh, options={"verify_signature": False})["exp"]
            assert ack["data"]["expiresAt"] == fresh_exp * 1000
            # Live past the first token's expiry: no error, no close.
            await client.expect_nothing("error", within=expires_at - time.time() + 0.5)
            await assert_alive(client)


async def test_auth_frame_for_another_user_is_refused_and_old_token_expires(
    tmp_path: Path,
) -> None:
    async with (
        run_server(tmp_path) as server,
        connect_token(server, short_lived_token("u1", 1.5)) as client,
    ):
        await client.send("auth", {"token": token("mallory", ttl_s=3600)})
        error = await client.expect("error")
        assert error["data"]["code"] == 401
        await client.send("auth", {"token": "garbage"})
        error = await client.expect("error")
        assert error["data"] == {"message": "Authentication failed", "code": 401}
        await assert_alive(client)
        expired = await client.expect("error", timeout=5.0)
        assert expired["data"]["message"] == "Token expired"
        await frames_until_closed(client)
        assert close_code(client.ws) == 1008


# ---------------------------------------------------------------- bad frames


BAD_FRAMES: list[tuple[str, str | bytes, str]] = [
    ("not-json", "this is not json", "Invalid JSON"),
    ("truncated", '{"type": "ping", "data": {', "Invalid JSON"),
    ("binary-garbage", b"\xff\xfe\x00\x01", "Invalid JSON"),
    ("array", "[1, 2, 3]", "Invalid message format"),
    ("no-type", '{"data": {}, "timestamp": 1}', "Invalid message format"),
    ("no-data", '{"type": "ping", "timestamp": 1}', "Invalid message format"),
    ("no-timestamp", '{"type": "ping", "data": {}}', "Invalid message format"),
    ("missing-chat-id", frame("message", {"content": "hi"}).decode(), "Invalid message format"),
    (
        "content-not-string",
        frame("message", {"chatId": "c", "content": 5}).decode(),
        "Invalid message format",
    ),
    (
        "is-typing-not-bool",
        frame("typing", {"chatId": "c", "isTyping": "yes"}).decode(),
        "Invalid message format",
    ),
    (
        "message-ids-not-list",
        frame("read_receipt", {"chatId": "c", "messageIds": "m"}).decode(),
        "Invalid message format",
    ),
    (
        "bad-action",
        frame("chat_update", {"action": "explode", "chatId": "c"}).decode(),
        "Invalid message format",
    ),
    (
        "timestamp-string",
        '{"type": "ping", "data": {}, "timestamp": "now"}',
        "Invalid message format",
    ),
    ("unknown-type", frame("launch_missiles", {}).decode(), "Unknown message type"),
    ("server-only-type", frame("pong", {"timestamp": 1}).decode(), "Unknown message type"),
]


async def test_bad_frames_get_400_and_the_connection_stays(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path) as server,
        connect(server, "alice") as alice,
        connect(server, "bob") as bob,
    ):
        await bob.join("shared")
        for name, payload, expected in BAD_FRAMES:
            await alice.send_raw(payload)
            error = await alice.expect("error")
            assert error["data"]["code"] == 400, name
            assert error["data"]["message"] == expected, name
            await assert_alive(alice)
        # Bob never saw any of it and is served as usual.
        await bob.expect_nothing("error", within=0.1)
        echo = await bob.say("shared", "still here", "temp-bob-1")
        assert echo["data"]["message"]["content"] == "still here"
        assert len(server.service.clients) == 2


async def test_unknown_type_is_400_unknown_message_type(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server, connect(server, "alice") as alice:
        await alice.send("subscribe", {"chatId": "c"})
        error = await alice.expect("error")
        assert error["data"]["code"] == 400
        assert error["data"]["message"] == "Unknown message type"
        await assert_alive(alice)


async def test_deeply_nested_json_is_a_bad_frame_not_a_disconnect(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server, connect(server, "alice") as alice:
        await alice.send_raw("[" * 5000)  # 5 KB, well under MAX_FRAME_BYTES
        error = await alice.expect("error")
        assert error["data"]["code"] == 400
        await assert_alive(alice)


async def test_fragmented_frame_is_reassembled(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server, connect(server, "alice") as alice:
        whole = frame("ping", {"timestamp": 77}).decode()
        await alice.ws.send([whole[:10], whole[10:20], whole[20:]])
        pong = await alice.expect("pong")
        assert pong["data"]["timestamp"] == 77


# ---------------------------------------------------------------- content limits


async def test_empty_content_is_400_and_nothing_is_stored(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server, connect(server, "alice") as alice:
        await alice.join("c1")
        for content in ["", "   ", "\x00\x01\x02", "\n\t "]:
            await alice.send(
                "message", {"chatId": "c1", "content": content, "messageId": "temp-empty"}
            )
            error = await alice.expect("error")
            assert error["data"]["code"] == 400
            assert error["data"]["messageId"] == "temp-empty"
        await alice.expect_nothing("message", within=0.2)
        assert await server.service.storage.latest_messages("c1", 10) == []
        chat = await server.service.storage.get_chat("c1")
        assert chat is not None
        assert chat.message_count == 0


async def test_content_over_max_length_is_413_and_nothing_is_stored(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path, max_message_length=50) as server,
        connect(server, "alice") as alice,
    ):
        await alice.join("c1")
        await alice.send("message", {"chatId": "c1", "content": "x" * 51, "messageId": "temp-long"})
        error = await alice.expect("error")
        assert error["data"]["code"] == 413
        assert error["data"]["messageId"] == "temp-long"
        await alice.expect_nothing("message", within=0.2)
        assert await server.service.storage.latest_messages("c1", 10) == []
        # Exactly at the limit is fine, and is stored as sent.
        echo = await alice.say("c1", "y" * 50, "temp-ok")
        assert echo["data"]["message"]["content"] == "y" * 50
        stored = await server.service.storage.latest_messages("c1", 10)
        assert [m.content for m in stored] == ["y" * 50]


async def test_stored_content_is_cleaned(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server, connect(server, "alice") as alice:
        echo = await alice.say("c1", "Cafe\u0301\x1b[31m red\x00\n\tok", "temp-clean")
        assert echo["data"]["message"]["content"] == "Caf\u00e9[31m red\n\tok"
        (stored,) = await server.service.storage.latest_messages("c1", 10)
        assert stored.content == "Caf\u00e9[31m red\n\tok"


# ---------------------------------------------------------------- frame size


async def test_frame_over_max_frame_bytes_closes_1009(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path, max_frame_bytes=1024) as server,
        connect(server, "alice") as alice,
        connect(server, "bob") as bob,
    ):
        await alice.send_raw(frame("message", {"chatId": "c", "content": "x" * 2000}).decode())
        await frames_until_closed(alice)
        assert close_code(alice.ws) == 1009
        await assert_alive(bob)
        await eventually(lambda: len(server.service.clients) == 1)


async def test_frame_over_max_frame_bytes_is_not_processed(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path, max_frame_bytes=1024) as server,
        connect(server, "alice") as alice,
    ):
        await alice.send_raw(frame("message", {"chatId": "c", "content": "x" * 2000}).decode())
        await frames_until_closed(alice)
        assert close_code(alice.ws) == 1009
        await eventually(lambda: server.service.clients == {})
        # Handling is synchronous: a frame that reached the service was counted already.
        _, _, body = await http_get(server.port, "/metrics")
        assert 'gurukul_frames_in_total{type="message"} 0.0' in body.decode()


async def test_fragmented_message_over_max_frame_bytes_closes_1009(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path, max_frame_bytes=1024) as server,
        connect(server, "alice") as alice,
    ):
        # Every fragment is small; the reassembled message is not.
        await alice.ws.send(["x" * 600, "x" * 600])
        await frames_until_closed(alice)
        assert close_code(alice.ws) == 1009


# ---------------------------------------------------------------- rate limits


async def test_message_rate_limit_429_with_retry_after(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path, message_rate_limit=5) as server,
        connect(server, "alice") as alice,
    ):
        for i in range(5):
            await alice.say("c1", f"message {i}", f"temp-{i}")
        await alice.send(
            "message",
            {"chatId": "c1", "content": "one too many", "messageId": "temp-5"},
            messageId="temp-5",
        )
        error = await alice.expect("error")
        assert error["data"]["code"] == 429
        assert error["data"]["messageId"] == "temp-5"
        assert error["data"]["retryAfter"] > 0
        await assert_alive(alice)
        stored = await server.service.storage.latest_messages("c1", 10)
        assert [m.content for m in stored] == [f"message {i}" for i in range(5)]


async def test_rate_limit_is_per_user_across_connections(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path, message_rate_limit=3) as server,
        connect(server, "alice") as tab1,
        connect(server, "alice") as tab2,
        connect(server, "bob") as bob,
    ):
        await tab1.say("c1", "a", "t1")
        await tab2.say("c2", "b", "t2")
        await tab1.say("c1", "c", "t3")
        await tab2.send("message", {"chatId": "c2", "content": "d", "messageId": "t4"})
        error = await tab2.expect("error")
        assert error["data"]["code"] == 429
        # Another user has their own budget.
        await bob.say("c3", "hello", "b1")


async def test_persistent_abuse_closes_1008(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path, message_rate_limit=2, abuse_close_after=3) as server,
        connect(server, "alice") as alice,
        connect(server, "bob") as bob,
    ):
        for i in range(10):
            with contextlib.suppress(websockets.ConnectionClosed):
                await alice.send("message", {"chatId": "c1", "content": f"spam {i}"})
        frames = await frames_until_closed(alice)
        assert close_code(alice.ws) == 1008
        limited = [f for f in frames if f["type"] == "error" and f["data"]["code"] == 429]
        assert len(limited) >= 3
        assert all(f["data"]["retryAfter"] > 0 for f in limited[:3])
        await assert_alive(bob)
        await eventually(lambda: server.service.clients.keys() == {bob_id(server)})

        async def two_stored() -> bool:
            return len(await server.service.storage.latest_messages("c1", 20)) == 2

        # The two messages within the budget were accepted before the close: stored once.
        await eventually_async(two_stored)


async def test_typing_has_its_own_budget(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path, typing_rate_limit=3, message_rate_limit=100) as server,
        connect(server, "alice") as alice,
    ):
        await alice.join("c1")
        for i in range(3):
            await alice.send("typing", {"chatId": "c1", "isTyping": i % 2 == 0})
        await alice.send("typing", {"chatId": "c1", "isTyping": True})
        error = await alice.expect("error")
        assert error["data"]["code"] == 429
        assert error["data"]["retryAfter"] > 0
        # Messages are unaffected by the typing budget.
        await alice.say("c1", "typing budget spent, messages still fine", "temp-1")


# ---------------------------------------------------------------- connection caps


async def test_over_max_connections_is_503(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path, max_connections=3) as server,
        connect(server, "a"),
        connect(server, "b"),
    ):
        async with connect(server, "c"):
            status, body, _ = await refused_upgrade(url_with(server, f"token={token('d')}"))
            assert status == 503
            assert body["code"] == 503
            assert body["error"]
        await eventually(lambda: len(server.service.clients) == 2)
        async with connect(server, "d") as d:
            await assert_alive(d)


async def test_over_per_user_cap_is_503(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path, max_connections_per_user=2) as server,
        connect(server, "alice"),
    ):
        async with connect(server, "alice"):
            status, body, _ = await refused_upgrade(url_with(server, f"token={token('alice')}"))
            assert status == 503
            assert body["code"] == 503
            async with connect(server, "bob") as bob:
                await assert_alive(bob)
        await eventually(lambda: server.service.users.connection_count("alice") == 1)
        async with connect(server, "alice") as again:
            await assert_alive(again)


# ---------------------------------------------------------------- timeouts and dead peers


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /ws?token=x HTTP/1.1\r\nHost: 127.0.0.1\r\n"],
    ids=["nothing", "half-a-request"],
)
async def test_no_handshake_within_connection_timeout_is_dropped(
    tmp_path: Path, sent: bytes
) -> None:
    async with run_server(tmp_path, connection_timeout=0.5) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(sent)
            await writer.drain()
            # EOF: the server hung up on us (a server that waits forever fails the timeout).
            assert await asyncio.wait_for(reader.read(), 5 * UNIT) == b""
        finally:
            writer.close()
        async with connect(server, "alice") as alice:
            await assert_alive(alice)


async def test_dead_peer_that_never_answers_pings_is_dropped(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path, ping_interval=0.3, ping_timeout=0.3) as server,
        connect(server, "healthy") as healthy,
    ):
        raw = await RawWebSocket.open(server.port)
        try:
            head = await raw.handshake(f"/ws?token={token('dead')}")
            assert head.startswith(b"HTTP/1.1 101")
            await eventually(lambda: len(server.service.clients) == 2)
            frames = await raw.read_until_eof()
        finally:
            raw.close()
        opcodes = [opcode for opcode, _ in frames]
        assert 0x9 in opcodes, "the server pinged the silent peer"
        await eventually(lambda: server.service.users.connection_count("dead") == 0)
        # A peer that answers pings (the websockets library does) stays.
        await assert_alive(healthy)
        assert server.service.users.connection_count("healthy") == 1


# ---------------------------------------------------------------- slow consumer


async def open_slow_reader(server: GurukulServer, user: str, chat_id: str) -> RawWebSocket:
    """A member of `chat_id` with a small receive window that never reads again."""
    raw: RawWebSocket = await RawWebSocket.open(server.port, rcvbuf=4096, limit=1024)
    head = await raw.handshake(f"/ws?token={token(user, chats=[chat_id])}")
    assert head.startswith(b"HTTP/1.1 101")
    raw.send_frame(frame("chat_update", {"action": "join", "chatId": chat_id}))
    await raw.writer.drain()
    await eventually(lambda: server.service.rooms.active_chats == 1)
    return raw


async def test_slow_consumer_is_closed_4008_and_released(tmp_path: Path) -> None:
    async with (
        run_server(
            tmp_path,
            write_buffer_cap_bytes=65536,
            max_message_length=60_000,
            message_rate_limit=100_000,
        ) as server,
        connect(server, "writer") as writer,
    ):
        await writer.join("room")
        raw = await open_slow_reader(server, "slow", "room")
        try:
            (slow,) = [c for c in server.service.clients.values() if c.user_id == "slow"]
            # Each message reaches the slow member as ~120 KB (the message and the summary
            # quoting it); 100 of them are more than the kernel buffers and the cap hold.
            sent = 0
            while slow.is_open and sent < 100:
                await writer.say("room", f"{sent:04d}" + "x" * 59_000, f"temp-{sent}")
                sent += 1
            assert not slow.is_open, "the server kept queueing for a client that never reads"
            # The writer is not held back by the slow member.
            await writer.say("room", "after", "temp-after")
            # The client wakes up: it finds what was already sent, then a 4008 close.
            frames = await raw.read_until_eof(timeout=5.0)
        finally:
            raw.close()
        delivered = [
            orjson.loads(payload)
            for opcode, payload in frames
            if opcode == 0x1 and orjson.loads(payload)["type"] == "message"
        ]
        # Everything up to the write that crossed the cap, and nothing after the close.
        assert sent < 100
        assert len(delivered) <= sent
        assert "temp-after" not in {m["data"]["messageId"] for m in delivered}
        closes = [payload for opcode, payload in frames if opcode == 0x8]
        assert closes, "a close frame ends the stream"
        assert close_frame_code(closes[0]) == 4008
        assert closes[0][2:] == b"slow consumer"
        await eventually(lambda: server.service.users.connection_count("slow") == 0)
        assert server.service.rooms.members("room") == [
            c for c in server.service.clients.values() if c.user_id == "writer"
        ]
        await assert_alive(writer)


async def test_slow_consumer_burst_in_one_loop_turn_is_capped(tmp_path: Path) -> None:
    # The memory backend answers without yielding: all the replies come in one loop turn.
    storage = MemoryStorage("memory:", StorageOptions())
    async with serve_with(tmp_path, storage, write_buffer_cap_bytes=65536) as server:
        storage = server.service.storage
        await storage.create_chat("big", "slow", "Big chat", None, 1)
        await storage.append_messages(
            [
                NewMessage(
                    id=f"msg-{i}",
                    chat_id="big",
                    user_id="slow",
                    agent_id=None,
                    content=f"{i:04d}" + "x" * 3996,
                    role="user",
                    created_at_ms=1_700_000_000_000 + i,
                )
                for i in range(50)
            ]
        )
        raw = await RawWebSocket.open(server.port, rcvbuf=4096, limit=1024)
        try:
            head = await raw.handshake(f"/ws?token={token('slow')}")
            assert head.startswith(b"HTTP/1.1 101")
            await eventually(lambda: len(server.service.clients) == 1)
            (conn,) = server.service.clients.values()
            # 60 joins in one burst: ~12 MB of history replies (~200 KB each), produced in
            # one loop turn, for a client whose cap is 64 KB.
            requests = 60
            for _ in range(requests):
                raw.send_frame(frame("chat_update", {"action": "join", "chatId": "big"}))
            await raw.writer.drain()
            await eventually(lambda: not conn.is_open)
            frames = await raw.read_until_eof(timeout=5.0)
        finally:
            raw.close()
        replies = [payload for opcode, payload in frames if opcode == 0x1]
        assert len(replies) < requests, "the server queued every reply past the cap"
        closes = [payload for opcode, payload in frames if opcode == 0x8]
        assert closes
        assert close_frame_code(closes[0]) == 4008


# ---------------------------------------------------------------- storage down


async def test_storage_down_gives_503_and_service_resumes(tmp_path: Path) -> None:
    storage = FlakyStorage(MemoryStorage("memory:", StorageOptions()))
    async with serve_with(tmp_path, storage) as server, connect(server, "alice") as alice:
        await alice.join("c1")
        await alice.say("c1", "before the outage", "temp-1")
        storage.down = True
        await alice.send("message", {"chatId": "c1", "content": "during", "messageId": "temp-2"})
        error = await alice.expect("error")
        assert error["data"]["code"] == 503
        assert error["data"]["messageId"] == "temp-2"
        assert "injected" not in orjson.dumps(error).decode()
        await assert_alive(alice)
        status, _, body = await http_get(server.port, "/ws/health")
        assert orjson.loads(body)["storage"] == "unavailable"
        storage.down = False
        # The client retries the same temp id: stored once, now.
        echo = await alice.say("c1", "during", "temp-2")
        assert echo["data"]["message"]["content"] == "during"
        await alice.say("c1", "after", "temp-3")
        stored = await storage.inner.latest_messages("c1", 10)
        assert [m.content for m in stored] == ["before the outage", "during", "after"]
        status, _, body = await http_get(server.port, "/ws/health")
        assert status == 200
        assert orjson.loads(body)["storage"] == "ok"


class GatedStorage(FlakyStorage):
    """Fault injection: `get_chat` (the access check) waits until `gate` is set."""

    def __init__(self, inner: MemoryStorage) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.waiting = 0

    async def get_chat(self, chat_id: str) -> Any:
        self.waiting += 1
        await self.gate.wait()
        return await self.inner.get_chat(chat_id)


async def test_client_gone_during_a_slow_access_check_leaves_no_room_behind(
    tmp_path: Path,
) -> None:
    storage = GatedStorage(MemoryStorage("memory:", StorageOptions()))
    async with serve_with(tmp_path, storage) as server:
        async with connect(server, "alice") as alice:
            await alice.send("chat_update", {"action": "join", "chatId": "c1"})
            await alice.send("message", {"chatId": "c2", "content": "bye", "messageId": "t"})
            await eventually(lambda: storage.waiting == 2)
        await eventually(lambda: server.service.clients == {})
        storage.gate.set()
    # stop() drained the join and the message that were in flight.
    assert server.service.rooms.members("c1") == []
    assert server.service.rooms.members("c2") == []
    assert server.service.rooms.active_chats == 0


# ---------------------------------------------------------------- the upgrade itself


@pytest.mark.parametrize(
    "query",
    [
        "token=%zz%",
        "token=%ff%fe%00",
        "token",
        "&&&=&=",
        "token=a&token=b",
        "token=" + "A" * 4000,
        "batch=%ff&token=..",
    ],
)
async def test_malformed_query_string_gets_a_clean_401(tmp_path: Path, query: str) -> None:
    async with run_server(tmp_path) as server:
        status, body, raw = await refused_upgrade(url_with(server, query))
        assert status == 401
        assert body == {"error": "Authentication failed", "code": 401}
        for leak in (b"Traceback", b"Error", b"Exception", b"line "):
            assert leak not in raw


async def test_firefox_connection_header_is_accepted(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server:
        raw = await RawWebSocket.open(server.port)
        try:
            head = await raw.handshake(
                f"/ws?token={token('fox')}", connection="keep-alive, Upgrade"
            )
            assert head.startswith(b"HTTP/1.1 101")
            raw.send_frame(frame("ping", {"timestamp": 5}))
            opcode, payload = await raw.read_frame()
            assert opcode == 0x1
            assert orjson.loads(payload) == {
                "type": "pong",
                "data": {"timestamp": 5},
                "timestamp": orjson.loads(payload)["timestamp"],
            }
        finally:
            raw.close()


async def test_health_endpoint(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server, connect(server, "alice") as alice:
        await alice.join("c1")
        status, headers, body = await http_get(server.port, "/ws/health")
        assert status == 200
        assert headers["content-type"].startswith("application/json")
        health = orjson.loads(body)
        assert health["status"] == "healthy"
        assert health["connections"] == 1
        assert health["activeChats"] == 1
        assert isinstance(health["uptime"], int | float)
        assert health["uptime"] >= 0
        assert health["storage"] == "ok"


async def test_metrics_endpoint(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server, connect(server, "alice") as alice:
        await assert_alive(alice)
        status, headers, body = await http_get(server.port, "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain")
        text = body.decode()
        assert "# TYPE gurukul_connections gauge" in text
        assert "gurukul_connections 1.0" in text


async def test_unknown_path_is_a_clean_404(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server:
        status, _, body = await http_get(server.port, "/etc/passwd?x=%zz")
        assert status == 404
        assert orjson.loads(body) == {"error": "Not found", "code": 404}


async def test_upgrade_without_a_valid_key_is_a_clean_400(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server:
        status, headers, body = await http_get(server.port, f"/ws?token={token('alice')}")
        assert status == 400
        assert headers["content-type"] == "application/json"
        assert orjson.loads(body) == {"error": "Invalid WebSocket upgrade request", "code": 400}


async def test_ping_interval_shorter_than_ping_timeout_still_accepts(tmp_path: Path) -> None:
    # picows refuses a reply timeout longer than the interval; the server must adapt.
    async with (
        run_server(tmp_path, ping_interval=0.5, ping_timeout=20.0) as server,
        connect(server, "alice") as alice,
    ):
        await assert_alive(alice)
