"""Nothing acknowledged is lost: kill -9 during a send storm, then restart on the same data.

Also: SIGTERM drains (clients get 1001, the process exits 0 within the drain timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
from pathlib import Path

import orjson
import pytest
import websockets

from tests.support.process import server_process
from tests.support.server import UNIT, frame, token

DURABLE_BACKENDS = ["sqlite", "postgresql"]


async def _storm(
    url: str, chat: str, acked: dict[str, int], stop: asyncio.Event, progress: asyncio.Event
) -> None:
    """Send messages as fast as acks come back; record every acknowledged message id."""
    with contextlib.suppress(websockets.ConnectionClosed, OSError):
        async with websockets.connect(url) as ws:
            n = 0
            while not stop.is_set():
                n += 1
                temp = f"{chat}-{n}"
                await ws.send(
                    frame(
                        "message",
                        {"chatId": chat, "content": temp, "messageId": temp},
                        messageId=temp,
                    )
                )
                while True:
                    reply = orjson.loads(await ws.recv())
                    if reply["type"] == "message" and reply["data"]["messageId"] == temp:
                        acked[reply["data"]["message"]["id"]] = reply["data"]["message"]["seq"]
                        progress.set()
                        break


@pytest.mark.parametrize("backend", DURABLE_BACKENDS)
async def test_acknowledged_messages_survive_kill_9(tmp_path: Path, backend: str) -> None:
    module = importlib.import_module(f"tests.support.backends.{backend}")
    chats = [f"storm-{n}" for n in range(4)]
    acked: dict[str, dict[str, int]] = {chat: {} for chat in chats}
    async with module.fresh_storage_url(tmp_path) as storage_url:
        env = {"MESSAGE_RATE_LIMIT": "1000000"}
        async with server_process(storage_url, tmp_path / "data", **env) as server:
            stop, progress = asyncio.Event(), asyncio.Event()
            storms = [
                asyncio.create_task(
                    _storm(server.url(token(f"user-{chat}")), chat, acked[chat], stop, progress)
                )
                for chat in chats
            ]
            async with asyncio.timeout(20 * UNIT):
                while sum(len(a) for a in acked.values()) < 200:
                    progress.clear()
                    await progress.wait()
            server.kill()  # mid-storm: sends are in flight
            await server.wait(10)
            stop.set()
            await asyncio.gather(*storms)
        async with (
            server_process(storage_url, tmp_path / "data") as restarted,
        ):
            for chat in chats:
                async with websockets.connect(restarted.url(token(f"user-{chat}"))) as ws:
                    await ws.send(
                        frame("chat_update", {"action": "join", "chatId": chat, "since": 0})
                    )
                    while True:
                        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10 * UNIT))
                        if reply["type"] == "chat_update" and reply["data"].get("action"):
                            break
                    stored = {m["id"]: m["seq"] for m in reply["data"]["messages"]}
                    assert acked[chat], "the storm acknowledged nothing"
                    missing = set(acked[chat]) - set(stored)
                    assert not missing, f"{len(missing)} acknowledged messages lost in {chat}"
                    for message_id, seq in acked[chat].items():
                        assert stored[message_id] == seq
                    assert sorted(stored.values()) == list(range(1, len(stored) + 1))


async def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    storage_url = f"sqlite:///{tmp_path / 'drain.db'}"
    async with server_process(storage_url, tmp_path / "data", DRAIN_TIMEOUT="3") as server:
        async with websockets.connect(server.url(token("alice"))) as ws:
            await ws.send(frame("message", {"chatId": "c", "content": "hi", "messageId": "t"}))
            await asyncio.wait_for(ws.recv(), 5 * UNIT)
            server.process.send_signal(signal.SIGTERM)
            closed = await _until_closed(ws)
            assert closed.rcvd is not None
            assert closed.rcvd.code == 1001
        assert await server.wait(10) == 0


async def _until_closed(ws: websockets.ClientConnection) -> websockets.ConnectionClosed:
    """Read until the server closes the connection; return how it closed."""
    while True:
        try:
            await asyncio.wait_for(ws.recv(), 5 * UNIT)
        except websockets.ConnectionClosed as closed:
            return closed
