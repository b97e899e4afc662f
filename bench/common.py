"""What every benchmark shares: server subprocesses, CPU pinning, /proc readings, tokens.

The servers always run as separate processes, so their CPU time and memory can be read
from /proc/<pid> without counting the load generator. On a machine with more than one
core the server gets core 0 and the generator the others: the two never steal each
other's time slices, and the server's CPU µs per delivery stays comparable between runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import jwt

__all__ = [
    "SECRET",
    "SERVER_KINDS",
    "ServerProcess",
    "cpu_seconds",
    "fd_limit",
    "free_port",
    "generator_cpus",
    "mint",
    "pin_to",
    "raise_fd_limit",
    "rss_bytes",
    "server_cpus",
    "start_server",
]

SECRET = "bench-secret-with-enough-bytes-for-hs256-0123456789abcdef"
SERVER_KINDS = ("gurukul", "websockets", "picows")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_READY_TIMEOUT_S = 30.0
BENCH_NICE = -10  # applied when allowed (root); otherwise the default priority stays
ROOT = Path(__file__).resolve().parent.parent


def mint(user: str, chats: list[str] | None = None, ttl_s: float = 6 * 3600) -> str:
    """An HS256 token with the bench secret; `chats` grants access to rooms others created."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + int(ttl_s)}
    if chats:
        claims["chats"] = chats
    return jwt.encode(claims, SECRET, algorithm="HS256")


# ---------------------------------------------------------------- cores and /proc


def server_cpus() -> set[int]:
    """The core(s) the server under test is pinned to: core 0 when there are two or more."""
    cpus = sorted(os.sched_getaffinity(0))
    return {cpus[0]} if len(cpus) > 1 else set(cpus)


def generator_cpus() -> set[int]:
    """Every core but the server's, or all of them on a one-core machine."""
    cpus = sorted(os.sched_getaffinity(0))
    return set(cpus[1:]) if len(cpus) > 1 else set(cpus)


def pin_to(pid: int, cpus: set[int]) -> None:
    """Pin `pid` (0: this process) and raise its priority; best effort, both of them.

    The machines are shared: the priority keeps other tenants' work from preempting the
    processes under test for tens of milliseconds, which shows up as p99 latency.
    """
    with contextlib.suppress(OSError):
        os.sched_setaffinity(pid, cpus)
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, BENCH_NICE)


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads) in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        stat = handle.read()
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` (VmRSS in /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (inherited by every child) to `wanted` if allowed; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:  # root may raise the hard limit up to fs.nr_open
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (OSError, ValueError):
            wanted = hard
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return wanted
    return soft


def fd_limit() -> int:
    """The open-file limit (soft) this process and its children have now."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------- server processes


@dataclass
class ServerProcess:
    """A server under test running in its own process (pinned to the server core)."""

    kind: str
    storage: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    cleanup: list[str] = field(default_factory=list)  # postgres databases to drop

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def label(self) -> str:
        return f"gurukul-fast ({self.storage})" if self.kind == "gurukul" else self.kind

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        log = self.workdir / "server.log"
        if not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM (gurukul drains), then SIGKILL if it takes too long; drop temp data."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for database in self.cleanup:
            asyncio.run(_postgres_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        shutil.rmtree(self.workdir, ignore_errors=True)


def _postgres_admin_url() -> str:
    return os.environ.get("GURUKUL_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


async def _postgres_admin(statement: str) -> None:
    import asyncpg  # only the postgresql storage option needs it

    connection = await asyncpg.connect(_postgres_admin_url(), timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _storage_url(storage: str, workdir: Path, cleanup: list[str]) -> str:
    if storage == "memory":
        return "memory:"
    if storage == "sqlite":
        return f"sqlite:///{workdir}/bench.db"
    if storage == "postgresql":
        name = f"gf_bench_{secrets.token_hex(5)}"
        asyncio.run(_postgres_admin(f'CREATE DATABASE "{name}"'))
        cleanup.append(name)
        base = _postgres_admin_url().rsplit("/", 1)[0]
        return f"{base}/{name}"
    raise ValueError(f"unknown storage {storage!r} (memory, sqlite, postgresql)")


def start_server(
    kind: str,
    *,
    storage: str = "memory",
    ping_interval_s: float = 30.0,
    extra_env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start one server under test and wait until it accepts TCP connections.

    `kind` is "gurukul" (the real `gurukul-fast serve`), "websockets" or "picows" (the
    baselines, which ignore `storage`). Limits that would throttle a benchmark are raised.
    """
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"gf-bench-{kind}-"))
    env = dict(os.environ, JWT_SECRET=SECRET, PYTHONPATH=str(ROOT))
    cleanup: list[str] = []
    if kind == "gurukul":
        env.update(
            WS_HOST="127.0.0.1",
            WS_PORT=str(port),
            STORAGE_URL=_storage_url(storage, workdir, cleanup),
            DATA_DIR=str(workdir),
            MAX_CONNECTIONS="1000000",
            # The product's per-user limits are for abuse, not for a load generator.
            MESSAGE_RATE_LIMIT="100000000",
            CONTROL_RATE_LIMIT="100000000",
            TYPING_RATE_LIMIT="100000000",
            RECEIPT_RATE_LIMIT="100000000",
            MAX_CONCURRENT_AGENT_REPLIES="1024",
            METRICS_LOG_INTERVAL="0",
            PING_INTERVAL=str(ping_interval_s),
            # picows refuses (resets) every connection whose ping reply timeout exceeds
            # the ping interval, and the server does not check the pair at start-up.
            PING_TIMEOUT=str(min(20.0, ping_interval_s)),
            LOG_LEVEL="WARNING",
        )
        command = [sys.executable, "-m", "gurukul_fast.cli", "serve"]
    elif kind in ("websockets", "picows"):
        module = f"bench.baselines.{kind}_server"
        command = [sys.executable, "-m", module, str(port), "--ping-interval", str(ping_interval_s)]
    else:
        raise ValueError(f"unknown server kind {kind!r}")
    env.update(extra_env or {})
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - owned by the child process
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    log.close()
    pin_to(process.pid, server_cpus())
    server = ServerProcess(kind, storage, port, process, workdir, cleanup)
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not server.alive():
            tail = server.log_tail()
            server.stop()
            raise RuntimeError(f"{server.label} exited at start-up:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            time.sleep(0.2)  # listening; let it finish start-up work
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{server.label} did not listen on port {port} within {_READY_TIMEOUT_S}s")
