"""Start a real server on port 0 and talk to it with real clients.

`run_server()` starts `GurukulServer` in the test's loop. The storage comes from
`GURUKUL_TEST_STORAGE` (memory | sqlite | postgresql | mongodb; default memory), so the
whole integration suite runs unchanged against every backend. Every timeout is a multiple
of `UNIT` seconds, scaled by `GURUKUL_TEST_TIME_UNIT` on slow machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from ssl import SSLContext
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from gurukul_fast.auth import mint_token
from gurukul_fast.config import Config, load_config
from gurukul_fast.server import GurukulServer

UNIT = float(os.environ.get("GURUKUL_TEST_TIME_UNIT", "1.0"))
SECRET = "test-secret-with-enough-bytes-for-hs256-0123456789"


def backend_under_test() -> str:
    return os.environ.get("GURUKUL_TEST_STORAGE", "memory")


@contextlib.asynccontextmanager
async def storage_url_for_test(tmp_path: Path) -> AsyncIterator[str]:
    """A URL of a fresh database of the backend under test."""
    module = importlib.import_module(f"tests.support.backends.{backend_under_test()}")
    async with module.fresh_storage_url(tmp_path) as url:
        yield url


def make_config(tmp_path: Path, storage_url: str, **overrides: Any) -> Config:
    settings: dict[str, Any] = {
        "ws_host": "127.0.0.1",
        "ws_port": 0,
        "jwt_secret": SECRET,
        "storage_url": storage_url,
        "data_dir": str(tmp_path / "data"),
        "metrics_log_interval": 0,
        "drain_timeout": 5 * UNIT,
    }
    settings.update(overrides)
    return load_config(settings, env={})


@contextlib.asynccontextmanager
async def run_server(tmp_path: Path, **overrides: Any) -> AsyncIterator[GurukulServer]:
    """A started server on a fresh database; stopped (drained) on exit."""
    async with storage_url_for_test(tmp_path) as url:
        server = GurukulServer(
            make_config(tmp_path, overrides.pop("storage_url", url), **overrides)
        )
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


def token(user: str, **kwargs: Any) -> str:
    return mint_token(SECRET, user, **kwargs)


def ws_url(
    server: GurukulServer, user: str | None = None, *, query: str = "", **token_kwargs: Any
) -> str:
    params = []
    if user is not None:
        params.append(f"token={token(user, **token_kwargs)}")
    if query:
        params.append(query)
    return f"ws://127.0.0.1:{server.port}{server.config.ws_path}?{'&'.join(params)}"


async def http_get(
    port: int, path: str, *, ssl: SSLContext | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One plain GET on the server's port: (status, lower-cased headers, body)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ssl, server_hostname="127.0.0.1" if ssl else None
    )
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5 * UNIT)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, body


def frame(kind: str, data: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"type": kind, "data": data, "timestamp": 1703123456789, **extra})


class FrameReader:
    """Waiting for frames, whatever the client library: subclasses implement `_receive`."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def _receive(self, timeout_s: float) -> dict[str, Any]:
        raise NotImplementedError

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        message = await self._receive(timeout * UNIT)
        self.seen.append(message)
        return message

    async def expect(self, kind: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        """Return the next frame of `kind` whose data has `match`; others are skipped."""
        deadline = asyncio.get_running_loop().time() + timeout * UNIT
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"no {kind} frame matching {match}; saw {self.seen[-5:]}")
            message = await self.recv(left / UNIT)
            if message["type"] == kind and all(
                message["data"].get(k) == v for k, v in match.items()
            ):
                return message

    async def expect_nothing(self, kind: str | None = None, within: float = 0.3) -> None:
        """Assert no frame (of `kind`) arrives within `within` seconds."""
        deadline = asyncio.get_running_loop().time() + within * UNIT
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            try:
                message = await self.recv(left / UNIT)
            except TimeoutError:
                return
            if kind is None or message["type"] == kind:
                raise AssertionError(f"unexpected frame: {message}")


class ChatClient(FrameReader):
    """A `websockets` client that speaks the protocol: send frames, wait for frame types."""

    def __init__(self, connection: ClientConnection) -> None:
        super().__init__()
        self.ws = connection

    async def _receive(self, timeout_s: float) -> dict[str, Any]:
        message: dict[str, Any] = orjson.loads(await asyncio.wait_for(self.ws.recv(), timeout_s))
        return message

    async def send(self, kind: str, data: dict[str, Any], **extra: Any) -> None:
        await self.ws.send(frame(kind, data, **extra).decode())

    async def send_raw(self, payload: str | bytes) -> None:
        await self.ws.send(payload)

    async def join(self, chat_id: str, **extra: Any) -> dict[str, Any]:
        await self.send("chat_update", {"action": "join", "chatId": chat_id, **extra})
        return await self.expect("chat_update", chatId=chat_id, action="joined")

    async def say(
        self, chat_id: str, content: str, temp_id: str, agent_id: str | None = None
    ) -> dict[str, Any]:
        """Send a message and return the server's echo of it (matched by temp id)."""
        data: dict[str, Any] = {"chatId": chat_id, "content": content, "messageId": temp_id}
        if agent_id is not None:
            data["agentId"] = agent_id
        await self.send("message", data, messageId=temp_id)
        while True:
            message = await self.expect("message", chatId=chat_id, messageId=temp_id)
            if message["data"]["message"]["role"] == "user":
                return message


@contextlib.asynccontextmanager
async def connect(
    server: GurukulServer, user: str, *, query: str = "", **token_kwargs: Any
) -> AsyncIterator[ChatClient]:
    async with websockets.connect(
        ws_url(server, user, query=query, **token_kwargs), max_size=2**24
    ) as connection:
        yield ChatClient(connection)
