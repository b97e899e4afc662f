"""`python -m bench.storage [--quick] [--backends …]`: group commit vs one transaction per message.

What it measures: durable messages stored per second by each storage backend, written the
way the server writes them (the `GroupCommitter`: every message that arrives while a commit
is in flight goes into the next one) and the spec's naive way (every message its own
`Storage.append_messages([message])` call, so its own transaction), with the same number of
concurrent senders, in the same run. A sender is a task that stores one message, waits for
its acknowledgement, and sends the next, spread over several chats. Commit latency is the
time from a message's `append` call to its acknowledgement, per message (p50, p99).

Why both in one run: the 2-core machines are shared and noisy, so rates from different runs
do not compare; the ratio group/naive from one run does.

Each run gets a fresh, empty database (so runs never accumulate data): a new SQLite file
(WAL, `synchronous=FULL`: one fsync per commit), a new PostgreSQL database on the local
server (`GURUKUL_TEST_PG_URL`, as the tests), a new database on a mongoeco wire server of
this process with its SQLite engine (data in a file). mongoeco is a MongoDB emulator in
Python that checks unique indexes by scanning, so its runs store a fixed few hundred
messages instead of running for a fixed time, and its figures describe the emulator, not
MongoDB. Afterwards every run's acknowledged messages are counted back from the database.

Results: a table on stdout, `bench/results/storage-<UTC timestamp>.json` (every run) and
`bench/results/storage-latest.md` (the table, machine, versions and the exact command).
Time: the full run takes about 2 minutes, `--quick` about 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import uvloop

from gurukul_fast.config import Config
from gurukul_fast.storage import NewMessage, Storage, StorageOptions, StorageUnavailable
from gurukul_fast.storage.committer import GroupCommitter
from gurukul_fast.storage.sqlite import SqliteStorage

__all__ = ["BACKENDS", "PROFILES", "Profile", "main"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BACKENDS = ("sqlite", "postgresql", "mongodb")
MODES = ("group", "naive")
MONGO_TIMEOUT_MS = 120_000  # one call on mongoeco; its scans make big batches slow
# The server's own group-commit settings and storage options, so the figures are its.
_DEFAULTS = Config()
COMMIT_WINDOW_S = _DEFAULTS.commit_window_ms / 1000
COMMIT_MAX_BATCH = _DEFAULTS.commit_max_batch
STORAGE_OPTIONS = StorageOptions(
    pool_max_size=_DEFAULTS.storage_pool_size, pool_min_size=min(2, _DEFAULTS.storage_pool_size)
)


@dataclass(frozen=True)
class Profile:
    """The size of one kind of run (see PROFILES)."""

    senders: int  # concurrent tasks, each with one message in flight
    chats: int  # sender i writes to chat i % chats
    warmup_s: float  # timed backends: not counted
    measure_s: float  # timed backends: the window counted
    repeats: int  # group and naive alternate this many times; the best of each is reported
    mongo_messages: int  # mongoeco: messages per run (fixed count, no time window)
    mongo_senders: int  # mongoeco: concurrent senders (fewer, so a run has several commits)

    def senders_for(self, backend: str) -> int:
        return self.mongo_senders if backend == "mongodb" else self.senders


PROFILES = {
    "full": Profile(
        senders=64,
        chats=16,
        warmup_s=1.0,
        measure_s=6.0,
        repeats=2,
        mongo_messages=300,
        mongo_senders=16,
    ),
    "quick": Profile(
        senders=64,
        chats=16,
        warmup_s=0.5,
        measure_s=2.0,
        repeats=1,
        mongo_messages=120,
        mongo_senders=16,
    ),
}


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- fresh databases


class FreshDatabases:
    """Makes one empty, opened storage per run for a backend; cleans everything up."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.backend = backend
        self.workdir = workdir
        self._serial = 0
        self._mongoeco: Any = None  # tests.support.mongoeco_server.MongoecoServer

    def describe(self) -> str:
        if self.backend == "sqlite":
            return "SQLite file, WAL, synchronous=FULL"
        if self.backend == "postgresql":
            return "local PostgreSQL server, a new database per run"
        return (
            "mongoeco wire server (SQLite engine, data in a file), a new database per run, "
            "a fixed message count per run"
        )

    def close(self) -> None:
        if self._mongoeco is not None:
            self._mongoeco.close()
            self._mongoeco = None

    @contextlib.asynccontextmanager
    async def fresh(self) -> AsyncIterator[Storage]:
        self._serial += 1
        if self.backend == "sqlite":
            path = self.workdir / f"run-{self._serial}.db"
            sqlite = SqliteStorage(f"sqlite:///{path}", STORAGE_OPTIONS)
            await sqlite.open()
            try:
                yield sqlite
            finally:
                await sqlite.close()
        elif self.backend == "postgresql":
            # The tests' helper: CREATE DATABASE gf_test_<random>, DROP … WITH (FORCE) after.
            from tests.support.backends.postgresql import fresh_storage_url

            async with fresh_storage_url(self.workdir) as url, _opened(url) as postgres:
                yield postgres
        elif self.backend == "mongodb":
            server = await asyncio.to_thread(self._mongo_server)
            url = server.url(
                f"gf_bench_{self._serial}", timeoutMS=str(MONGO_TIMEOUT_MS), minPoolSize="0"
            )
            try:
                async with _opened(url) as mongo:
                    yield mongo
            finally:
                await _drop_mongo_database(server.url(), f"gf_bench_{self._serial}")
        else:
            raise ValueError(f"unknown backend {self.backend!r} ({', '.join(BACKENDS)})")

    def _mongo_server(self) -> Any:
        from tests.support.mongoeco_server import MongoecoServer

        if self._mongoeco is None:
            self._mongoeco = MongoecoServer(data_file=self.workdir / "mongoeco.sqlite")
            self._mongoeco.start()
        return self._mongoeco


@contextlib.asynccontextmanager
async def _opened(url: str) -> AsyncIterator[Storage]:
    from gurukul_fast.storage import load_storage

    storage = load_storage(url, STORAGE_OPTIONS)
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()


async def _drop_mongo_database(url: str, name: str) -> None:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, timeoutMS=MONGO_TIMEOUT_MS)
    try:
        await client.drop_database(name)
    finally:
        await client.close()


# ---------------------------------------------------------------- one run


def _percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


async def run_once(
    storage: Storage, mode: str, profile: Profile, *, senders: int, fixed_count: int | None
) -> dict[str, Any]:
    """Store messages from `senders` concurrent senders; return the figures.

    Timed (`fixed_count` None): senders run for warmup + measure seconds; messages
    acknowledged inside the measure window count. Counted: senders store `fixed_count`
    messages in all; the window is the whole run.
    """
    chats = [f"chat-{n}" for n in range(profile.chats)]
    for chat_id in chats:
        await storage.create_chat(chat_id, "bench", chat_id, None, 1)
    batches: list[int] = []
    committer: GroupCommitter | None = None
    append: Callable[[NewMessage], Awaitable[object]]
    if mode == "group":
        committer = GroupCommitter(
            storage,
            max_batch=COMMIT_MAX_BATCH,
            window_s=COMMIT_WINDOW_S,
            observer=lambda size, _seconds, ok: batches.append(size) if ok else None,
        )
        committer.start()
        append = committer.append
    else:

        async def append(message: NewMessage) -> object:
            return await storage.append_messages([message])

    done: list[tuple[float, float]] = []  # (call, acknowledgement), perf_counter seconds
    errors: list[str] = []
    stop = asyncio.Event()
    tickets = iter(range(fixed_count)) if fixed_count is not None else None

    async def sender(number: int) -> None:
        chat_id = chats[number % len(chats)]
        serial = 0
        while not stop.is_set():
            if tickets is not None and next(tickets, None) is None:
                return
            serial += 1
            now_ms = int(time.time() * 1000)
            message = NewMessage(
                id=f"msg-{number}-{serial}",
                chat_id=chat_id,
                user_id=f"user-{number}",
                agent_id=None,
                content=f"message {serial} from sender {number}",
                role="user",
                created_at_ms=now_ms,
                client_message_id=f"temp-{number}-{serial}",
            )
            called = time.perf_counter()
            try:
                await append(message)
            except StorageUnavailable as exc:
                errors.append(str(exc))
                continue
            done.append((called, time.perf_counter()))

    started = time.perf_counter()
    tasks = [asyncio.create_task(sender(n)) for n in range(senders)]
    if fixed_count is None:
        await asyncio.sleep(profile.warmup_s + profile.measure_s)
        stop.set()
    await asyncio.gather(*tasks)
    ended = time.perf_counter()
    if committer is not None:
        await committer.stop()

    if fixed_count is None:
        window_start = started + profile.warmup_s
        window_end = window_start + profile.measure_s
    else:
        window_start, window_end = started, ended
    counted = [(c, a) for c, a in done if window_start <= a <= window_end]
    latencies = sorted((a - c) * 1000 for c, a in counted)
    stored = 0
    for chat_id in chats:
        chat = await storage.get_chat(chat_id)
        stored += chat.message_count if chat is not None else 0
    return {
        "mode": mode,
        "acknowledged": len(done),
        "stored": stored,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "window_s": round(window_end - window_start, 3),
        "messages_per_s": len(counted) / (window_end - window_start),
        "latency_ms": {
            "p50": _percentile(latencies, 0.50),
            "p99": _percentile(latencies, 0.99),
            "max": latencies[-1] if latencies else None,
        },
        "commits": len(batches) if mode == "group" else len(done),
        "messages_per_commit": (sum(batches) / len(batches)) if batches else 1.0,
    }


async def run_backend(backend: str, profile: Profile, workdir: Path) -> dict[str, Any]:
    """Alternate group and naive runs `profile.repeats` times on fresh databases."""
    databases = FreshDatabases(backend, workdir)
    fixed = profile.mongo_messages if backend == "mongodb" else None
    senders = profile.senders_for(backend)
    runs: list[dict[str, Any]] = []
    try:
        for repeat in range(profile.repeats):
            for mode in MODES:
                async with databases.fresh() as storage:
                    result = await run_once(
                        storage, mode, profile, senders=senders, fixed_count=fixed
                    )
                result["repeat"] = repeat + 1
                runs.append(result)
                _log(
                    f"  {backend:<10} {mode:<5} #{repeat + 1}: "
                    f"{result['messages_per_s']:>9,.0f} msg/s, p50 "
                    f"{_fmt_ms(result['latency_ms']['p50'])} p99 "
                    f"{_fmt_ms(result['latency_ms']['p99'])} ms, "
                    f"{result['messages_per_commit']:.1f} msg/commit, "
                    f"{result['errors']} errors"
                )
    finally:
        databases.close()
    best = {
        mode: max((r for r in runs if r["mode"] == mode), key=lambda r: r["messages_per_s"])
        for mode in MODES
    }
    return {
        "backend": backend,
        "setup": databases.describe(),
        "fixed_messages": fixed,
        "senders": senders,
        "runs": runs,
        "best": best,
        "ratio_group_over_naive": best["group"]["messages_per_s"]
        / max(best["naive"]["messages_per_s"], 1e-9),
        "all_stored": all(r["stored"] == r["acknowledged"] for r in runs),
    }


# ---------------------------------------------------------------- report


def _fmt_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| backend | senders | group msg/s | naive msg/s | group/naive | group p50 / p99 ms "
        "| naive p50 / p99 ms | msgs per group commit | errors | all acked stored |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        group, naive = result["best"]["group"], result["best"]["naive"]
        errors = sum(r["errors"] for r in result["runs"])
        label = result["backend"]
        if result["fixed_messages"]:
            label += f" ({result['fixed_messages']} msgs/run)"
        rows.append(
            f"| {label} | {result['senders']} "
            f"| {group['messages_per_s']:,.0f} | {naive['messages_per_s']:,.0f} "
            f"| {result['ratio_group_over_naive']:.1f}× "
            f"| {_fmt_ms(group['latency_ms']['p50'])} / {_fmt_ms(group['latency_ms']['p99'])} "
            f"| {_fmt_ms(naive['latency_ms']['p50'])} / {_fmt_ms(naive['latency_ms']['p99'])} "
            f"| {group['messages_per_commit']:.1f} | {errors} "
            f"| {'yes' if result['all_stored'] else 'NO'} |"
        )
    return "\n".join(rows)


def machine(command: str) -> dict[str, Any]:
    def lscpu(field_name: str) -> str:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
            for line in text.splitlines():
                if line.startswith(field_name + ":"):
                    return line.split(":", 1)[1].strip()
        return "?"

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    def run(*args: str) -> str:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            return subprocess.run(
                list(args), capture_output=True, text=True, cwd=ROOT, check=True
            ).stdout.strip()
        return "?"

    from tests.support.mongoeco_server import MONGOECO_VERSION

    return {
        "command": command,
        "cpu_model": lscpu("Model name"),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "filesystem": run("findmnt", "-n", "-o", "FSTYPE", "--target", tempfile.gettempdir()),
        "python": platform.python_version(),
        "versions": {name: version(name) for name in ("asyncpg", "pymongo", "msgspec", "uvloop")},
        "mongoeco": MONGOECO_VERSION,
        "git_commit": run("git", "rev-parse", "--short", "HEAD"),
        "git_dirty": bool(run("git", "status", "--porcelain", "--untracked-files=no")),
        "loadavg_start": os.getloadavg(),
    }


def render(
    results: list[dict[str, Any]], profile: Profile, info: dict[str, Any], stamp: str
) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    mongo = next((r for r in results if r["backend"] == "mongodb"), None)
    lines = [
        f"# gurukul-fast storage benchmark — {stamp} ({info['profile']})",
        "",
        f"Command: `{info['command']}` (git {info['git_commit']}"
        f"{', uncommitted changes' if info['git_dirty'] else ''}; {info['seconds']:.0f} s)",
        "",
        f"Machine: {info['cpu_model']}, {info['cores']} cores, Linux {info['kernel']}, "
        f"temp files on {info['filesystem']}; load average {info['loadavg_start'][0]:.2f} at "
        "start (the machine is shared, and the database server runs on it too).",
        "",
        f"Versions: Python {info['python']}, {versions}; PostgreSQL "
        f"{info.get('postgresql_server', '(not run)')}; mongoeco {info['mongoeco']}.",
        "",
        f"Load: concurrent senders (the table says how many) over {profile.chats} chats, each "
        "sending its next message once the previous one is acknowledged. **group**: through the "
        f"server's `GroupCommitter` (window {COMMIT_WINDOW_S * 1000:g} ms, at most "
        f"{COMMIT_MAX_BATCH} per commit); **naive**: one `append_messages([message])` call, "
        "so one transaction, per message (the spec's flow). Latency: from a message's append "
        "call to its acknowledgement. Timed backends: "
        f"{profile.warmup_s:g} s warm-up, {profile.measure_s:g} s counted; best of "
        f"{profile.repeats} alternating run(s) per mode, each on a fresh database. With "
        "this closed loop a group commit carries about one message per sender, so its rate "
        "grows with the number of senders (`--senders N`); the naive rate stays bounded by "
        "one commit per message.",
        "",
        table(results),
        "",
    ]
    if mongo is not None:
        lines += [
            f"mongodb is mongoeco {info['mongoeco']}, a MongoDB wire-protocol emulator written "
            "in Python (SQLite engine, data in a file), not a MongoDB server: each run stores "
            f"only {mongo['fixed_messages']} messages on a fresh database (it checks unique "
            "indexes by scanning, so its cost per message grows with the collection), and "
            "its figures say how the backend's two write paths compare there, not how fast "
            "MongoDB is. The backend runs one batch at a time (naive calls queue for it), in a "
            "transaction (mongoeco reports transaction support).",
            "",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (~30 s)")
    parser.add_argument(
        "--senders", type=int, help="concurrent senders on sqlite and postgresql (default 64)"
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated subset of {','.join(BACKENDS)}",
    )
    args = parser.parse_args(argv)
    backends = [name for name in args.backends.split(",") if name]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    profile_name = "quick" if args.quick else "full"
    profile = PROFILES[profile_name]
    if args.senders:
        profile = replace(profile, senders=args.senders)
    command = shlex.join(["python", "-m", "bench.storage", *(argv or sys.argv[1:])])
    info = machine(command)
    info["profile"] = profile_name

    started = time.monotonic()
    results = uvloop.run(run_all(backends, profile, info))
    info["seconds"] = time.monotonic() - started
    info["loadavg_end"] = os.getloadavg()

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"machine": info, "profile": asdict(profile), "results": results}
    (RESULTS / f"storage-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render(results, profile, info, stamp)
    (RESULTS / "storage-latest.md").write_text(markdown)
    print(table(results))
    print(f"\nwritten: bench/results/storage-{stamp}.json, bench/results/storage-latest.md")
    return 0


async def postgres_settings() -> str:
    """The local PostgreSQL's version and the settings that decide what a commit costs."""
    import asyncpg

    from tests.support.backends.postgresql import ADMIN_URL_ENV, DEFAULT_ADMIN_URL

    connection = await asyncpg.connect(os.environ.get(ADMIN_URL_ENV, DEFAULT_ADMIN_URL))
    try:
        row = await connection.fetchrow(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit'),"
            " current_setting('fsync')"
        )
    finally:
        await connection.close()
    assert row is not None
    return f"{row[0]}, synchronous_commit={row[1]}, fsync={row[2]}"


async def run_all(
    backends: list[str], profile: Profile, info: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every backend in turn, each in its own scratch directory (removed afterwards)."""
    if "postgresql" in backends:
        info["postgresql_server"] = await postgres_settings()
    results = []
    with tempfile.TemporaryDirectory(prefix="gf-bench-storage-") as workdir:
        for backend in backends:
            _log(f"{backend}:")
            directory = Path(workdir) / backend
            directory.mkdir()
            results.append(await run_backend(backend, profile, directory))
    return results


if __name__ == "__main__":
    sys.exit(main())
