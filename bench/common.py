"""What every benchmark shares: server subprocesses, CPU pinning, /proc readings, tokens.

The servers always run as separate processes, so their CPU time and memory can be read
from /proc/<pid> without counting the load generator. On a machine with more than one
core the server gets core 0 and the generator the others: the two never steal each
other's time slices, and the server's CPU µs per delivery stays comparable between runs.

A `Cluster` is several gurukul-fast nodes (each its own process, all pinned to the server
core) sharing chats through Redis and one scratch PostgreSQL database; it answers the same
questions as one `ServerProcess` (`cpu_seconds` is the sum over its nodes).
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
from typing import Protocol

import jwt

__all__ = [
    "SECRET",
    "SERVER_KINDS",
    "Cluster",
    "Server",
    "ServerProcess",
    "cpu_seconds",
    "fd_limit",
    "free_port",
    "generator_cpus",
    "mint",
    "pin_to",
    "raise_fd_limit",
    "redis_cpu_reader",
    "rss_bytes",
    "server_cpus",
    "service_epochs",
    "start_cluster",
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


class Server(Protocol):
    """What a scenario needs of the thing under test: one process or a cluster of them."""

    @property
    def kind(self) -> str: ...

    @property
    def storage(self) -> str: ...

    @property
    def label(self) -> str: ...

    @property
    def url(self) -> str: ...

    def cpu_seconds(self) -> float: ...

    def log_tail(self, lines: int = 20) -> str: ...

    def stop(self) -> None: ...


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
            _drop_postgres_database(database)
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


def _create_postgres_database() -> tuple[str, str]:
    """A scratch database `gf_bench_*` on the admin server: (its URL, its name)."""
    name = f"gf_bench_{secrets.token_hex(5)}"
    asyncio.run(_postgres_admin(f'CREATE DATABASE "{name}"'))
    base = _postgres_admin_url().rsplit("/", 1)[0]
    return f"{base}/{name}", name


def _drop_postgres_database(name: str) -> None:
    asyncio.run(_postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _storage_url(storage: str, workdir: Path, cleanup: list[str]) -> str:
    if storage == "memory":
        return "memory:"
    if storage == "sqlite":
        return f"sqlite:///{workdir}/bench.db"
    if storage == "postgresql":
        url, name = _create_postgres_database()
        cleanup.append(name)
        return url
    raise ValueError(f"unknown storage {storage!r} (memory, sqlite, postgresql)")


def start_server(
    kind: str,
    *,
    storage: str = "memory",
    ping_interval_s: float = 30.0,
    extra_env: dict[str, str] | None = None,
    storage_url: str | None = None,
) -> ServerProcess:
    """Start one server under test and wait until it accepts TCP connections.

    `kind` is "gurukul" (the real `gurukul-fast serve`), "websockets" or "picows" (the
    baselines, which ignore `storage`). Limits that would throttle a benchmark are raised.
    `storage_url` (gurukul only) uses storage someone else owns instead of creating it:
    the nodes of a cluster share one database, which the cluster drops, not each node.
    """
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"gf-bench-{kind}-"))
    env = dict(os.environ, JWT_SECRET=SECRET, PYTHONPATH=str(ROOT))
    cleanup: list[str] = []
    if kind == "gurukul":
        env.update(
            WS_HOST="127.0.0.1",
            WS_PORT=str(port),
            STORAGE_URL=storage_url or _storage_url(storage, workdir, cleanup),
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


# ---------------------------------------------------------------- several nodes


def _redis_url() -> str:
    return os.environ.get("GURUKUL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass
class Cluster:
    """gurukul-fast nodes sharing chats through a broker and one storage database.

    With one node and no broker it is the plain single-process server (memory broker), so
    the single-node baseline runs through exactly the same code as the cluster.
    """

    nodes: list[ServerProcess]
    storage: str
    broker_url: str | None  # None: the default memory broker (one node only)
    database: str | None  # the scratch PostgreSQL database, dropped by stop()
    kind: str = "gurukul"

    @property
    def prefix(self) -> str | None:
        """The Redis key/channel prefix of this cluster (unique per run), if any."""
        if self.broker_url is None or "prefix=" not in self.broker_url:
            return None
        return self.broker_url.rsplit("prefix=", 1)[1]

    @property
    def label(self) -> str:
        count = len(self.nodes)
        nodes = f"{count} node{'s' if count > 1 else ''}"
        broker = "Redis broker" if self.broker_url else "no broker"
        return f"gurukul-fast, {nodes}, {broker} ({self.storage})"

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def pids(self) -> list[int]:
        return [node.pid for node in self.nodes]

    def cpu_seconds(self) -> float:
        """utime + stime summed over every node process."""
        return sum(node.cpu_seconds() for node in self.nodes)

    def node_cpu_seconds(self) -> list[float]:
        return [node.cpu_seconds() for node in self.nodes]

    def alive(self) -> bool:
        return all(node.alive() for node in self.nodes)

    def log_tail(self, lines: int = 20) -> str:
        tails = []
        for index, node in enumerate(self.nodes):
            tail = node.log_tail(lines)
            if tail:
                tails.append(f"[node {index + 1}]\n{tail}")
        return "\n".join(tails)

    def stop(self) -> None:
        """Stop every node, then drop the database and the run's Redis keys."""
        for node in self.nodes:
            node.stop()
        if self.database is not None:
            try:
                _drop_postgres_database(self.database)
            except Exception as exc:  # PostgreSQL restarting: say so, don't mask the result
                print(
                    f"bench: could not drop database {self.database}: {exc}; drop it by hand",
                    file=sys.stderr,
                )
            self.database = None
        prefix = self.prefix
        if prefix is not None:
            with contextlib.suppress(Exception):  # leftover keys are harmless, just untidy
                _delete_redis_keys(prefix)


def _delete_redis_keys(prefix: str) -> None:
    import redis  # a server dependency (BROKER_URL=redis://); only clusters need it here

    client = redis.Redis.from_url(_redis_url(), socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()


def start_cluster(
    nodes: int,
    *,
    storage: str = "postgresql",
    broker: bool = True,
    extra_env: dict[str, str] | None = None,
) -> Cluster:
    """Start `nodes` gurukul-fast processes on loopback ports sharing one storage database.

    With `broker`, every node gets BROKER_URL=redis://…?prefix=bench<random> (the cluster
    store follows it), so this run's channels and keys never meet anyone else's on a
    shared Redis. Nodes start one after the other: the first one creates the schema.
    Every node is pinned to the server core(s), like a single server.
    """
    if nodes > 1 and not broker:
        raise ValueError("several nodes need a broker")
    if storage not in ("postgresql", "memory"):
        raise ValueError(f"a cluster shares one database: {storage!r} cannot be shared")
    if storage == "memory" and nodes > 1:
        raise ValueError("memory storage is one process's; nodes must share PostgreSQL")
    database: str | None = None
    storage_url = "memory:"
    if storage == "postgresql":
        storage_url, database = _create_postgres_database()
    broker_url = f"{_redis_url()}?prefix=bench{secrets.token_hex(4)}" if broker else None
    env = dict(extra_env or {})
    if broker_url is not None:
        env["BROKER_URL"] = broker_url
    cluster = Cluster([], storage, broker_url, database)
    try:
        for _ in range(nodes):
            node = start_server("gurukul", storage=storage, extra_env=env, storage_url=storage_url)
            cluster.nodes.append(node)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def redis_cpu_reader() -> tuple[int, str] | None:
    """(pid, how it was found) of the Redis server the cluster uses, if it runs here.

    Redis reports its own pid (`INFO server`); it is only this machine's process when
    the URL is loopback and /proc/<pid> says `redis-server`. None otherwise.
    """
    import redis

    url = _redis_url()
    if "127.0.0.1" not in url and "localhost" not in url:
        return None
    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            info = client.info("server")
        finally:
            client.close()
        pid = int(info["process_id"])
        with open(f"/proc/{pid}/comm") as handle:
            name = handle.read().strip()
        cpu_seconds(pid)
    except Exception:
        return None
    if "redis" not in name:
        return None
    return pid, f"{name} {info.get('redis_version', '?')}"


def service_epochs() -> dict[str, str]:
    """When the shared PostgreSQL and Redis servers last started (their identities).

    Both services are shared with other sessions' fault tests, which restart them; a
    measurement whose epochs differ before and after saw a restart, and says so.
    """

    async def postgres_start() -> str:
        import asyncpg

        connection = await asyncpg.connect(_postgres_admin_url(), timeout=5)
        try:
            return str(await connection.fetchval("SELECT pg_postmaster_start_time()"))
        finally:
            await connection.close()

    epochs: dict[str, str] = {}
    try:
        epochs["postgresql"] = asyncio.run(postgres_start())
    except Exception as exc:
        epochs["postgresql"] = f"unreachable ({type(exc).__name__})"
    try:
        import redis

        client = redis.Redis.from_url(_redis_url(), socket_timeout=5)
        try:
            epochs["redis"] = str(client.info("server")["run_id"])
        finally:
            client.close()
    except Exception as exc:
        epochs["redis"] = f"unreachable ({type(exc).__name__})"
    return epochs
