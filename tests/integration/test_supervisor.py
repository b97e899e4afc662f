"""The multi-worker supervisor, with a tiny dummy worker (not the chat server).

The supervisor runs in a real subprocess (it forks and owns signals). Each dummy worker
binds the shared port with SO_REUSEPORT, answers every TCP connection with its pid, drops
an `up-<pid>` file when listening and a `drained-<pid>` file when it finished draining.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import picows
import pytest

from gurukul_fast.supervisor import reserve_port
from tests.support.server import UNIT

WORKER_SCRIPT = """
import asyncio, logging, os, signal, sys
from pathlib import Path
from gurukul_fast.supervisor import reserve_port, run_workers

state, workers, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
logging.basicConfig(level=logging.INFO, stream=sys.stderr)


def serve_one() -> int:
    if mode == "fatal":
        return 2
    if mode == "crash":
        (state / f"up-{os.getpid()}").write_text("")
        return 1

    async def main() -> int:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

        async def answer(reader, writer):
            writer.write(f"{os.getpid()}\\n".encode())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", port, reuse_port=True)
        (state / f"up-{os.getpid()}").write_text(os.environ["GURUKUL_WORKER"])
        await stop.wait()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.2)  # in-flight work
        (state / f"drained-{os.getpid()}").write_text("")
        return 0

    return asyncio.run(main())


listener = reserve_port("127.0.0.1", 0)
port = listener.getsockname()[1]
print(port, flush=True)
sys.exit(
    run_workers(workers, serve_one, drain_timeout_s=5.0, backoff_min_s=0.1, backoff_max_s=0.4)
)
"""


REPO = str(Path(__file__).resolve().parents[2])


class Supervisor:
    def __init__(self, process: asyncio.subprocess.Process, port: int, state: Path) -> None:
        self.process = process
        self.port = port
        self.state = state

    def started(self) -> list[int]:
        return sorted(int(p.name[3:]) for p in self.state.glob("up-*"))

    def drained(self) -> list[int]:
        return sorted(int(p.name[8:]) for p in self.state.glob("drained-*"))

    async def ask_pid(self) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        line = await asyncio.wait_for(reader.readline(), 5 * UNIT)
        writer.close()
        await writer.wait_closed()
        return int(line)


async def start_supervisor(tmp_path: Path, workers: int, mode: str = "serve") -> Supervisor:
    script = tmp_path / "supervised.py"
    script.write_text(WORKER_SCRIPT)
    state = tmp_path / "state"
    state.mkdir()
    log = (tmp_path / "supervisor.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(state),
        str(workers),
        mode,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        cwd=REPO,
    )
    log.close()
    assert process.stdout is not None
    port = int(await asyncio.wait_for(process.stdout.readline(), 20 * UNIT))
    return Supervisor(process, port, state)


async def eventually(predicate: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s * UNIT
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


async def test_workers_share_the_port_crashes_restart_and_sigterm_drains(
    tmp_path: Path,
) -> None:
    supervisor = await start_supervisor(tmp_path, 3)
    try:
        await eventually(lambda: len(supervisor.started()) == 3)
        workers = supervisor.started()
        # One port, three processes: the kernel spreads connections over them.
        seen = {await supervisor.ask_pid() for _ in range(60)}
        assert seen <= set(workers)
        assert len(seen) >= 2

        # kill -9 one worker: the supervisor starts a replacement.
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: len(supervisor.started()) == 4)
        replacement = (set(supervisor.started()) - set(workers)).pop()
        await eventually(lambda: not alive(victim))
        live = {replacement, *workers[1:]}
        seen = {await supervisor.ask_pid() for _ in range(60)}
        assert seen <= live

        # SIGTERM: every worker drains, then the supervisor exits 0.
        supervisor.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(supervisor.process.wait(), 15 * UNIT) == 0
        assert supervisor.drained() == sorted(live)
        assert not any(alive(pid) for pid in live)
    finally:
        if supervisor.process.returncode is None:
            supervisor.process.kill()
            await supervisor.process.wait()
    log = (tmp_path / "supervisor.log").read_text()
    assert f"pid {victim}) died with signal SIGKILL" in log


async def test_a_crash_loop_backs_off(tmp_path: Path) -> None:
    supervisor = await start_supervisor(tmp_path, 1, "crash")
    try:
        await asyncio.sleep(1.5)
        starts = len(supervisor.started())
        # backoff 0.1, 0.2, 0.4, 0.4, …: a handful of restarts, not a busy loop
        assert 3 <= starts <= 8
        supervisor.process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(supervisor.process.wait(), 10 * UNIT) == 0
    finally:
        if supervisor.process.returncode is None:
            supervisor.process.kill()
            await supervisor.process.wait()


async def test_a_fatal_exit_status_stops_everything(tmp_path: Path) -> None:
    supervisor = await start_supervisor(tmp_path, 2, "fatal")
    try:
        assert await asyncio.wait_for(supervisor.process.wait(), 10 * UNIT) == 2
    finally:
        if supervisor.process.returncode is None:
            supervisor.process.kill()
            await supervisor.process.wait()
    assert "not restarting" in (tmp_path / "supervisor.log").read_text()


async def test_picows_forwards_reuse_port_to_create_server() -> None:
    """What `serve --workers N` relies on: ws_create_server(..., reuse_port=True)."""
    holder = reserve_port("127.0.0.1", 0)
    port = holder.getsockname()[1]
    servers = []
    try:
        for _ in range(2):
            servers.append(
                await picows.ws_create_server(
                    lambda request: picows.WSListener(), "127.0.0.1", port, reuse_port=True
                )
            )
        with pytest.raises(OSError, match="address already in use"):
            await picows.ws_create_server(lambda request: picows.WSListener(), "127.0.0.1", port)
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
        holder.close()
