"""Run `gurukul-fast serve` as a real subprocess (for kill -9, SIGTERM and restarts)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from tests.support.server import SECRET, UNIT

_LISTENING = re.compile(rb"listening on wss?://[^:]+:(\d+)")


class ServerProcess:
    """A started server subprocess; `port` is the port it bound."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self._stderr_task: asyncio.Task[None] | None = None

    def url(self, token: str, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}?token={token}"

    def kill(self) -> None:
        """kill -9: no drain, no flush, nothing."""
        self.process.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int:
        return await asyncio.wait_for(self.process.wait(), timeout * UNIT)


async def start_server_process(
    storage_url: str, data_dir: Path, *, port: int = 0, **env: str
) -> ServerProcess:
    """Start `python -m gurukul_fast.cli serve` and wait for its "listening" line."""
    environment = {
        **os.environ,
        "WS_HOST": "127.0.0.1",
        "WS_PORT": str(port),
        "JWT_SECRET": SECRET,
        "STORAGE_URL": storage_url,
        "DATA_DIR": str(data_dir),
        "METRICS_LOG_INTERVAL": "0",
        **env,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gurukul_fast.cli",
        "serve",
        env=environment,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    seen = b""
    try:
        async with asyncio.timeout(30 * UNIT):
            while True:
                line = await process.stderr.readline()
                if not line:
                    raise AssertionError(f"server exited before listening:\n{seen.decode()}")
                seen += line
                match = _LISTENING.search(line)
                if match:
                    break
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    server = ServerProcess(process, int(match.group(1)))
    server._stderr_task = asyncio.get_running_loop().create_task(_drain(process.stderr))
    return server


async def _drain(stream: asyncio.StreamReader) -> None:
    """Keep reading the server's log so a full pipe never blocks it."""
    while await stream.readline():
        pass


@contextlib.asynccontextmanager
async def server_process(
    storage_url: str, data_dir: Path, *, port: int = 0, **env: str
) -> AsyncIterator[ServerProcess]:
    server = await start_server_process(storage_url, data_dir, port=port, **env)
    try:
        yield server
    finally:
        if server.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                server.kill()
            await server.process.wait()
        if server._stderr_task is not None:
            server._stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server._stderr_task
