"""The upgrade exactly as Firefox, Chromium and Safari send it, over a raw socket.

Browsers send more than a minimal client: Firefox says `Connection: keep-alive, Upgrade`,
all three offer `permessage-deflate`, and they add Origin, Sec-Fetch-*, caching and
language headers. Each must get 101, a correct `Sec-WebSocket-Accept`, no extension the
server does not implement (else the browser would compress its frames), and a connection
that then carries the chat protocol both ways and closes cleanly.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gurukul_fast.server import GurukulServer
from tests.support.server import UNIT, run_server, token

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Header order and values as each browser sends them (captured from current releases).
FIREFOX = """GET {path} HTTP/1.1
Host: {host}
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:136.0) Gecko/20100101 Firefox/136.0
Accept: */*
Accept-Language: en-US,en;q=0.5
Accept-Encoding: gzip, deflate, br, zstd
Sec-WebSocket-Version: 13
Origin: http://{host}
Sec-WebSocket-Extensions: permessage-deflate
Sec-WebSocket-Key: {key}
Connection: keep-alive, Upgrade
Sec-Fetch-Dest: empty
Sec-Fetch-Mode: websocket
Sec-Fetch-Site: same-origin
Pragma: no-cache
Cache-Control: no-cache
Upgrade: websocket
"""

CHROMIUM = """GET {path} HTTP/1.1
Host: {host}
Connection: Upgrade
Pragma: no-cache
Cache-Control: no-cache
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36
Upgrade: websocket
Origin: http://{host}
Sec-WebSocket-Version: 13
Accept-Encoding: gzip, deflate, br, zstd
Accept-Language: en-US,en;q=0.9
Sec-WebSocket-Key: {key}
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits
"""  # noqa: E501

SAFARI = """GET {path} HTTP/1.1
Host: {host}
Origin: http://{host}
Pragma: no-cache
Accept: */*
Sec-WebSocket-Key: {key}
Sec-WebSocket-Version: 13
Accept-Encoding: gzip, deflate
Sec-WebSocket-Extensions: permessage-deflate
Cache-Control: no-cache
Accept-Language: en-GB,en;q=0.9
User-Agent: Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.3 Safari/605.1.15
Upgrade: websocket
Connection: Upgrade
"""  # noqa: E501

BROWSERS = {"firefox": FIREFOX, "chromium": CHROMIUM, "safari": SAFARI}


class RawWebSocket:
    """Just enough of a client: masked frames out, unmasked frames in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        header = bytearray([0x80 | opcode])
        if len(payload) < 126:
            header.append(0x80 | len(payload))
        elif len(payload) < 1 << 16:
            header.append(0x80 | 126)
            header += struct.pack("!H", len(payload))
        else:
            header.append(0x80 | 127)
            header += struct.pack("!Q", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes(header) + mask + masked)
        await self.writer.drain()

    async def send_json(self, kind: str, data: dict[str, Any], **extra: Any) -> None:
        body = {"type": kind, "data": data, "timestamp": 1703123456789, **extra}
        await self.send_frame(0x1, orjson.dumps(body))

    async def recv_frame(self) -> tuple[int, bytes]:
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 5 * UNIT)
        assert first & 0x70 == 0, "RSV bits set: the server must not compress"
        assert second & 0x80 == 0, "a server frame must not be masked"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        payload = await asyncio.wait_for(self.reader.readexactly(length), 5 * UNIT)
        return first & 0x0F, payload

    async def expect(self, kind: str, **match: Any) -> dict[str, Any]:
        """The next text frame of `kind` whose data has `match` (pings are answered)."""
        while True:
            opcode, payload = await self.recv_frame()
            if opcode == 0x9:
                await self.send_frame(0xA, payload)
                continue
            assert opcode == 0x1, f"unexpected opcode {opcode}"
            message: dict[str, Any] = orjson.loads(payload)
            data = message["data"]
            if message["type"] == kind and all(data.get(k) == v for k, v in match.items()):
                return message


async def handshake(
    server: GurukulServer, template: str, path: str
) -> tuple[int, dict[str, str], RawWebSocket]:
    """Send `template`'s request and read the response head; return status, headers, socket."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    host = f"127.0.0.1:{server.port}"
    request = template.format(path=path, host=host, key=key).replace("\n", "\r\n") + "\r\n"
    writer.write(request.encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5 * UNIT)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    status = int(status_line.split(" ")[1])
    if status == 101:
        expected = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
        assert headers["sec-websocket-accept"] == expected
    return status, headers, RawWebSocket(reader, writer)


async def close(ws: RawWebSocket) -> None:
    ws.writer.close()
    await ws.writer.wait_closed()


@pytest.mark.parametrize("browser", sorted(BROWSERS))
async def test_browser_handshake_upgrades_and_chats(tmp_path: Path, browser: str) -> None:
    async with run_server(tmp_path) as server:
        path = f"/ws?token={token('alice')}"
        status, headers, ws = await handshake(server, BROWSERS[browser], path)
        try:
            assert status == 101
            assert headers["upgrade"].lower() == "websocket"
            assert headers["connection"].lower() == "upgrade"
            # Deflate is offered, not accepted: the browser then sends plain frames.
            assert "sec-websocket-extensions" not in headers

            await ws.send_json("chat_update", {"action": "join", "chatId": f"chat-{browser}"})
            joined = await ws.expect("chat_update", action="joined")
            assert joined["data"]["chatId"] == f"chat-{browser}"
            data = {
                "chatId": f"chat-{browser}",
                "content": "I feel anxious",
                "agentId": "therapist",
                "messageId": "temp-1",
            }
            await ws.send_json("message", data, messageId="temp-1")
            echo = await ws.expect("message", messageId="temp-1")
            assert echo["data"]["message"]["content"] == "I feel anxious"
            while True:
                reply = await ws.expect("message", messageId="temp-1")
                if reply["data"]["message"]["role"] == "assistant":
                    break
            assert reply["data"]["message"]["agentId"] == "therapist"

            await ws.send_json("ping", {"timestamp": 42})
            pong = await ws.expect("pong")
            assert pong["data"]["timestamp"] == 42

            # A clean close: ours is answered with the same code.
            await ws.send_frame(0x8, struct.pack("!H", 1000))
            while True:
                opcode, payload = await ws.recv_frame()
                if opcode == 0x8:
                    break
            assert struct.unpack("!H", payload[:2])[0] == 1000
        finally:
            await close(ws)


@pytest.mark.parametrize(
    "connection",
    ["keep-alive, Upgrade", "Upgrade, keep-alive", "upgrade", "keep-alive,Upgrade", "UPGRADE"],
)
async def test_connection_header_variants_upgrade(tmp_path: Path, connection: str) -> None:
    template = FIREFOX.replace("Connection: keep-alive, Upgrade", f"Connection: {connection}")
    async with run_server(tmp_path) as server:
        status, _, ws = await handshake(server, template, f"/ws?token={token('alice')}")
        try:
            assert status == 101
            await ws.send_json("ping", {"timestamp": 1})
            await ws.expect("pong")
        finally:
            await close(ws)


@pytest.mark.parametrize("browser", sorted(BROWSERS))
async def test_browser_handshake_without_valid_token_is_refused(
    tmp_path: Path, browser: str
) -> None:
    async with run_server(tmp_path) as server:
        for path in ("/ws", "/ws?token=not-a-jwt"):
            status, headers, ws = await handshake(server, BROWSERS[browser], path)
            await close(ws)
            assert status == 401
            assert headers["content-type"] == "application/json"


def _without(template: str, header: str) -> str:
    return "".join(line + "\n" for line in template.splitlines() if not line.startswith(header))


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda t: _without(t, "Connection:"), "no Connection header"),
        (
            lambda t: t.replace("Connection: keep-alive, Upgrade", "Connection: keep-alive"),
            "no Upgrade token",
        ),
        (lambda t: _without(t, "Upgrade:"), "no Upgrade header"),
        (lambda t: _without(t, "Sec-WebSocket-Key:"), "no key"),
    ],
)
async def test_broken_upgrades_are_refused(
    tmp_path: Path, mutate: Callable[[str], str], why: str
) -> None:
    async with run_server(tmp_path) as server:
        status, _, ws = await handshake(server, mutate(FIREFOX), f"/ws?token={token('alice')}")
        await close(ws)
        assert status == 400, why


async def test_page_load_with_browser_headers_is_served(tmp_path: Path) -> None:
    """The page request itself, as Chromium sends it (keep-alive): 200 and the HTML."""
    request = (
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n"
        "Upgrade-Insecure-Requests: 1\r\nAccept: text/html,application/xhtml+xml\r\n"
        "Sec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\n"
        "Accept-Encoding: gzip, deflate, br, zstd\r\n\r\n"
    )
    async with run_server(tmp_path) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request.encode())
        response = await asyncio.wait_for(reader.read(), 5 * UNIT)
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-type: text/html; charset=utf-8" in head.lower()
    assert body.startswith(b"<!doctype html>")
