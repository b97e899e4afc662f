"""Bare picows broadcast server: the floor of gurukul-fast's stack, with no features.

picows + uvloop + msgspec, the same libraries gurukul-fast uses, doing only what the load
generator needs: JWT in the query (checked before the upgrade), join → `chat_update`
"joined", message → one encode, the same bytes sent to every member, ping → pong. No
storage, no rate limits, no metrics, no batching. A gurukul-fast figure divided by this
one is the cost of the product's features.

    python -m bench.baselines.picows_server PORT [--ping-interval SECONDS (0: no pings)]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import jwt
import msgspec
import uvloop
from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)


class _Data(msgspec.Struct, rename="camel", gc=False):
    chat_id: str = ""
    content: str = ""
    agent_id: str | None = None
    message_id: str | None = None
    action: str = ""
    timestamp: int | float | None = None


class _Frame(msgspec.Struct, gc=False):
    type: str
    data: _Data
    timestamp: int | float = 0
    messageId: str | None = None


class _Message(msgspec.Struct, rename="camel", gc=False):
    id: str
    chat_id: str
    user_id: str
    agent_id: str | None
    content: str
    role: str
    timestamp: str
    seq: int
    metadata: dict[str, Any]


class _MessageData(msgspec.Struct, rename="camel", gc=False):
    chat_id: str
    message: _Message
    message_id: str | None


class _Event(msgspec.Struct, gc=False):
    type: str
    data: Any
    timestamp: int


_decode = msgspec.json.Decoder(_Frame).decode
_encode = msgspec.json.Encoder().encode


class _Room:
    __slots__ = ("members", "seq")

    def __init__(self) -> None:
        self.members: dict[int, WSTransport] = {}
        self.seq = 0


class Broadcaster:
    """The whole server state: rooms of transports."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.rooms: dict[str, _Room] = {}

    def join(self, chat_id: str, conn: Connection) -> None:
        room = self.rooms.get(chat_id)
        if room is None:
            room = self.rooms[chat_id] = _Room()
        room.members[id(conn)] = conn.transport
        conn.joined.add(chat_id)

    def leave_all(self, conn: Connection) -> None:
        for chat_id in conn.joined:
            room = self.rooms.get(chat_id)
            if room is not None:
                room.members.pop(id(conn), None)
                if not room.members:
                    del self.rooms[chat_id]


class Connection(WSListener):
    def __init__(self, server: Broadcaster, user_id: str) -> None:
        super().__init__()
        self.server = server
        self.user_id = user_id
        self.joined: set[str] = set()
        self.transport: WSTransport

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.server.leave_all(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.TEXT:
            if frame.msg_type is WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            return
        try:
            incoming = _decode(frame.get_payload_as_bytes())
        except (msgspec.ValidationError, msgspec.DecodeError):
            return
        data = incoming.data
        now_ms = int(time.time() * 1000)
        if incoming.type == "message":
            self.server.join(data.chat_id, self)
            room = self.server.rooms[data.chat_id]
            room.seq += 1
            temp_id = data.message_id or incoming.messageId
            message = _Message(
                f"msg-{now_ms}-{room.seq}",
                data.chat_id,
                self.user_id,
                data.agent_id,
                data.content,
                "user",
                datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(timespec="milliseconds"),
                room.seq,
                {},
            )
            payload = _encode(
                _Event("message", _MessageData(data.chat_id, message, temp_id), now_ms)
            )
            for member in room.members.values():
                member.send(WSMsgType.TEXT, payload)
        elif incoming.type == "chat_update" and data.action == "join":
            self.server.join(data.chat_id, self)
            updates = {"title": "Chat", "messageCount": 0, "lastMessage": None}
            reply: dict[str, Any] = {
                "chatId": data.chat_id,
                "action": "joined",
                "updates": updates,
                "messages": [],
                "hasMore": False,
            }
            transport.send(WSMsgType.TEXT, _encode(_Event("chat_update", reply, now_ms)))
        elif incoming.type == "ping":
            pong = _Event("pong", {"timestamp": data.timestamp}, now_ms)
            transport.send(WSMsgType.TEXT, _encode(pong))


def _refuse() -> WSUpgradeResponseWithListener:
    response = WSUpgradeResponse.create_error_response(401, b"Authentication failed")
    return WSUpgradeResponseWithListener(response, None)


async def serve(port: int, secret: str, ping_interval_s: float) -> None:
    server_state = Broadcaster(secret)

    def route(request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener:
        _, _, query = request.path.partition(b"?")
        token = parse_qs(query.decode("latin-1")).get("token", [""])[0]
        try:
            claims = jwt.decode(token, secret, algorithms=["HS256"])
        except jwt.PyJWTError:
            return _refuse()
        return Connection(server_state, str(claims["sub"]))

    server = await ws_create_server(
        route,
        "127.0.0.1",
        port,
        enable_auto_ping=ping_interval_s > 0,  # 0: off, to measure what pings cost
        auto_ping_idle_timeout=max(ping_interval_s, 1.0),
        auto_ping_reply_timeout=max(ping_interval_s, 1.0),
        # The same initial buffer as gurukul-fast, so idle memory compares like for like.
        read_buffer_init_size=2048,
    )
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--ping-interval", type=float, default=30.0)
    args = parser.parse_args()
    secret = os.environ["JWT_SECRET"]
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.port, secret, args.ping_interval))


if __name__ == "__main__":
    main()
