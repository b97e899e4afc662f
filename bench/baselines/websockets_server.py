"""A chat server written the way a typical Python implementation is: `websockets` + asyncio.

The protocol subset the load generator uses: JWT in the query (checked on connect, close
1008 if bad), join → `chat_update` "joined", message → a `message` frame of the SPEC's
shape (the client's temp `messageId` echoed, a per-chat `seq`) broadcast with
`websockets.broadcast` to every member, ping → pong. Standard-library `json`, the default
asyncio loop, no storage: this is the reference for "a plain Python server".

    python -m bench.baselines.websockets_server PORT [--ping-interval SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import jwt
from websockets.asyncio.server import ServerConnection, broadcast, serve

rooms: dict[str, set[ServerConnection]] = {}
seqs: dict[str, int] = {}


def _now_ms() -> int:
    return int(time.time() * 1000)


async def handler(ws: ServerConnection, secret: str) -> None:
    query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
    try:
        user_id = jwt.decode(query.get("token", [""])[0], secret, algorithms=["HS256"])["sub"]
    except jwt.PyJWTError:
        await ws.close(1008, "Authentication failed")
        return
    joined: set[str] = set()
    try:
        async for raw in ws:
            try:
                frame = json.loads(raw)
                kind, data = frame["type"], frame["data"]
            except (ValueError, KeyError, TypeError):
                continue
            if kind == "message":
                chat_id = data["chatId"]
                rooms.setdefault(chat_id, set()).add(ws)
                joined.add(chat_id)
                seq = seqs[chat_id] = seqs.get(chat_id, 0) + 1
                now = _now_ms()
                message = {
                    "id": f"msg-{now}-{seq}",
                    "chatId": chat_id,
                    "userId": user_id,
                    "agentId": data.get("agentId"),
                    "content": data["content"],
                    "role": "user",
                    "timestamp": datetime.fromtimestamp(now / 1000, UTC).isoformat(),
                    "seq": seq,
                    "metadata": {},
                }
                temp_id = data.get("messageId") or frame.get("messageId")
                event = {
                    "type": "message",
                    "data": {"chatId": chat_id, "message": message, "messageId": temp_id},
                    "timestamp": now,
                }
                broadcast(rooms[chat_id], json.dumps(event))
            elif kind == "chat_update" and data.get("action") == "join":
                chat_id = data["chatId"]
                rooms.setdefault(chat_id, set()).add(ws)
                joined.add(chat_id)
                updates = {"title": "Chat", "messageCount": seqs.get(chat_id, 0)}
                reply = {
                    "type": "chat_update",
                    "data": {"chatId": chat_id, "action": "joined", "updates": updates},
                    "timestamp": _now_ms(),
                }
                await ws.send(json.dumps(reply))
            elif kind == "ping":
                pong = {
                    "type": "pong",
                    "data": {"timestamp": data.get("timestamp")},
                    "timestamp": _now_ms(),
                }
                await ws.send(json.dumps(pong))
    finally:
        for chat_id in joined:
            members = rooms.get(chat_id)
            if members is not None:
                members.discard(ws)
                if not members:
                    del rooms[chat_id]


async def main_async(port: int, secret: str, ping_interval_s: float) -> None:
    async def bound(ws: ServerConnection) -> None:
        await handler(ws, secret)

    async with serve(
        bound, "127.0.0.1", port, ping_interval=ping_interval_s, ping_timeout=ping_interval_s
    ) as server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--ping-interval", type=float, default=30.0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args.port, os.environ["JWT_SECRET"], args.ping_interval))


if __name__ == "__main__":
    main()
