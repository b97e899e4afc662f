"""The database restarts under a running server: clients get 503, the server recovers by itself.

Issue 3, item 6, seen from the clients. A real gurukul-fast server (in this process) stores
into PostgreSQL or MongoDB while several WebSocket clients send continuously, each message
retried under its own temp id until it is acknowledged, as a client does. Then the database
goes away and comes back:

- PostgreSQL: the machine's shared cluster, `pg_ctlcluster … stop -m fast`, then `start`;
  it is always started again on the way out, even when the test fails.
- MongoDB: a mongoeco wire server of the test's own, with its SQLite engine (data in a file
  that survives SIGKILL), killed with SIGKILL and started again on the same port and file.

While it is down every send is answered `error` 503 carrying the sender's temp id, no
connection is closed, and `/ws/health` reports "degraded" with storage "unavailable". Once
it is back the same server process (never restarted) stores messages again on the same
connections, health says "healthy" again (its probe runs every
`STORAGE_PROBE_INTERVAL_S`), and every acknowledged message is in the database afterwards
with the seq it was acknowledged with, seqs 1…n without gaps per chat.

mongoeco's SQLite engine runs one transaction at a time and refuses other sessions' reads
while one is open (see `tests/support/mongoeco_server.py`), so every storage read the server
does here (joins, presence) happens before the first send, and the database is read back
only after the server has stopped. The server's storage probe is a `ping`, which the
engine answers even during a transaction.

The storage-level versions of these faults are in `test_postgres_faults.py` and
`test_mongodb_faults.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import orjson
import pytest

from gurukul_fast.server import STORAGE_PROBE_INTERVAL_S, GurukulServer
from gurukul_fast.storage import StorageOptions, load_storage
from tests.support.backends.postgresql import fresh_storage_url as fresh_postgres_url
from tests.support.mongoeco_server import MongoecoServer
from tests.support.server import UNIT, ChatClient, connect, http_get, make_config

BACKENDS = ["postgresql", "mongodb"]

# Who sends where: two chats with two senders each, so one commit often holds several chats
# and one chat gets messages from two connections at once.
SENDERS = {"alice": "room-a", "bob": "room-a", "carol": "room-b", "dave": "room-b"}
OWNERS = {"room-a": "alice", "room-b": "carol"}

# Acknowledged messages each sender needs before the outage and again after it. Small on
# MongoDB: mongoeco checks unique indexes by scanning, so collections stay at hundreds.
ACKS_PER_PHASE = {"postgresql": 40, "mongodb": 8}

# 503s each sender must have had (and re-sent after) before the database comes back.
ERRORS_PER_OUTAGE = 2
COMMAND_TIMEOUT_S = 2.0 * UNIT  # MongoDB's per-call budget (URL timeoutMS): a 503 within it
RETRY_AFTER_503_S = 0.05 * UNIT  # a client's pause before re-sending after a 503
ANSWER_TIMEOUT_S = 15 * UNIT  # one send's echo or error, outage included
PHASE_TIMEOUT_S = 30 * UNIT  # enough acks, or a 503 at every sender
START_TIMEOUT_S = 30 * UNIT  # the database accepts connections again
# The probe sleeps its interval, then pings (a ping of a dead server takes a timeout); one
# probe may still see the old state, so two rounds.
HEALTH_TIMEOUT_S = 2 * (STORAGE_PROBE_INTERVAL_S + 5.0) * UNIT


# ---------------------------------------------------------------- the databases


class RestartableDatabase(Protocol):
    """A database the test may take down and bring back; `url` is the server's STORAGE_URL."""

    url: str

    async def stop(self) -> None:
        """Take the database down; return once it refuses connections."""
        ...

    async def start(self) -> None:
        """Bring it back; return once it accepts connections."""
        ...


class LocalPostgres:
    """The machine's PostgreSQL cluster (shared: stopping it stops it for everyone)."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def stop(self) -> None:
        await _pg_ctl("stop", "-m", "fast")
        await _until(lambda: _negate(_postgres_ready()), START_TIMEOUT_S, "PostgreSQL to stop")

    async def start(self) -> None:
        if not await _postgres_ready():
            await _pg_ctl("start")
        await _until(_postgres_ready, START_TIMEOUT_S, "PostgreSQL to accept connections")


class MongoecoWire:
    """A mongoeco server of the test's own; `stop` is SIGKILL, `start` reuses port and file."""

    def __init__(self, server: MongoecoServer) -> None:
        self.server = server
        # minPoolSize=0: pymongo leaks a socket when closing the client cancels the task
        # keeping minPoolSize connections mid-connect (see tests/support/backends/mongodb.py).
        self.url = server.url(
            "gurukul", timeoutMS=str(int(COMMAND_TIMEOUT_S * 1000)), minPoolSize="0"
        )

    async def stop(self) -> None:
        await asyncio.to_thread(self.server.stop, "kill")

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)


def _cluster_version() -> str:
    versions = sorted(os.listdir("/etc/postgresql"))
    assert versions, "no PostgreSQL cluster under /etc/postgresql"
    return versions[-1]


async def _pg_ctl(*args: str) -> None:
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", _cluster_version(), "main", *args]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, f"{' '.join(command)}: {output.decode(errors='replace')}"


async def _postgres_ready() -> bool:
    process = await asyncio.create_subprocess_exec("pg_isready", "-q", "-h", "127.0.0.1")
    return await process.wait() == 0


async def _negate(check: Awaitable[bool]) -> bool:
    return not await check


@pytest.fixture(params=BACKENDS)
async def database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[RestartableDatabase]:
    """A fresh, empty database that is running again when the test ends, pass or fail."""
    if request.param == "postgresql":
        assert shutil.which("pg_ctlcluster"), "pg_ctlcluster is needed to stop PostgreSQL"
        assert shutil.which("pg_isready"), "pg_isready is needed to watch PostgreSQL"
        async with fresh_postgres_url(tmp_path) as url:
            postgres = LocalPostgres(url)
            try:
                yield postgres
            finally:
                # Before the database is dropped, and whatever the test did.
                await postgres.start()
    else:
        with MongoecoServer(data_file=tmp_path / "mongoeco.sqlite") as mongoeco:
            yield MongoecoWire(mongoeco)


# ---------------------------------------------------------------- server, clients, waits


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, storage_url: str) -> AsyncIterator[GurukulServer]:
    """A started server on `storage_url` (STORAGE_URL alone picks the backend)."""
    server = GurukulServer(make_config(tmp_path, storage_url, message_rate_limit=1_000_000))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _until(check: Callable[[], Awaitable[bool] | bool], timeout_s: float, what: str) -> None:
    """Poll `check` every 20 ms until it is true; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"waited {timeout_s:g} s for {what}"
        await asyncio.sleep(0.02)


async def health(server: GurukulServer) -> dict[str, Any]:
    """GET /ws/health; the body as a dict (a degraded server still answers 200)."""
    status, _, body = await http_get(server.port, "/ws/health")
    assert status == 200, status
    answer: dict[str, Any] = orjson.loads(body)
    return answer


async def health_reaches(server: GurukulServer, status: str, storage: str) -> None:
    async def reached() -> bool:
        body = await health(server)
        return (body["status"], body["storage"]) == (status, storage)

    await _until(reached, HEALTH_TIMEOUT_S, f"/ws/health to say {status}, storage {storage}")


class Sender:
    """One client sending one message at a time, each re-sent under its temp id until acked.

    Records every acknowledgement (server id → seq, and in which phase it came) and every
    503 it was answered. Anything else addressed to it (another error code, an error for
    another temp id, a closed connection) ends `run` with an exception.
    """

    def __init__(self, client: ChatClient, user: str, chat_id: str, phase: list[str]) -> None:
        self.client = client
        self.user = user
        self.chat_id = chat_id
        self._phase = phase  # one shared, mutable cell: the test's current phase
        self.acked: dict[str, int] = {}
        self.acked_in: dict[str, int] = {}
        self.unavailable = 0

    def acks_in(self, phase: str) -> int:
        return self.acked_in.get(phase, 0)

    async def run(self, stop: asyncio.Event) -> None:
        for number in itertools.count(1):
            if stop.is_set():
                return
            temp_id = f"{self.user}-{number}"
            data = {"chatId": self.chat_id, "content": temp_id, "messageId": temp_id}
            while True:
                await self.client.send("message", data, messageId=temp_id)
                answer = await self._answer(temp_id)
                if answer["type"] == "message":
                    message = answer["data"]["message"]
                    assert message["content"] == temp_id
                    self.acked[message["id"]] = message["seq"]
                    phase = self._phase[0]
                    self.acked_in[phase] = self.acks_in(phase) + 1
                    break
                self.unavailable += 1
                await asyncio.sleep(RETRY_AFTER_503_S)

    async def _answer(self, temp_id: str) -> dict[str, Any]:
        """The echo of `temp_id` or an `error` 503 for it; other members' frames are skipped."""
        while True:
            frame = await self.client.recv(ANSWER_TIMEOUT_S / UNIT)
            data = frame["data"]
            if frame["type"] == "error":
                assert (data["code"], data.get("messageId")) == (503, temp_id), frame
                return frame
            if (
                frame["type"] == "message"
                and data["messageId"] == temp_id
                and data["message"]["userId"] == self.user
            ):
                return frame


@contextlib.asynccontextmanager
async def joined_senders(server: GurukulServer, phase: list[str]) -> AsyncIterator[list[Sender]]:
    """Every sender connected and in its chat (all storage reads happen here)."""
    async with contextlib.AsyncExitStack() as stack:
        senders = []
        for user, chat_id in SENDERS.items():
            client = await stack.enter_async_context(connect(server, user, chats=[chat_id]))
            if OWNERS[chat_id] == user:
                await client.join(chat_id)  # creates it, owned by this user
            senders.append(Sender(client, user, chat_id, phase))
        for sender in senders:
            if OWNERS[sender.chat_id] != sender.user:
                await sender.client.join(sender.chat_id)  # a member through the token
        yield senders


class Traffic:
    """The senders' tasks while they run; `finish` stops them after their current message."""

    def __init__(self, senders: list[Sender]) -> None:
        self.senders = senders
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(sender.run(self._stop)) for sender in senders]

    def every(self, check: Callable[[Sender], bool]) -> Callable[[], bool]:
        """A poll: `check` holds for every sender. Re-raises at once if a sender failed."""

        def poll() -> bool:
            for task in self._tasks:
                if task.done():
                    task.result()  # raises the sender's failure
                    raise AssertionError("a sender stopped before it was told to")
            return all(check(sender) for sender in self.senders)

        return poll

    async def finish(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def traffic(senders: list[Sender]) -> AsyncIterator[Traffic]:
    """Every sender sending; cancelled on the way out if the test did not `finish` it."""
    running = Traffic(senders)
    try:
        yield running
    finally:
        await running.cancel()


async def read_back(storage_url: str, chat_id: str) -> tuple[dict[str, int], int, int]:
    """(server id → seq, message_count, last_seq) of `chat_id`, read by a new connection."""
    storage = load_storage(storage_url, StorageOptions(pool_min_size=0))
    await storage.open()
    try:
        stored = await storage.messages_after(chat_id, 0, 100_000)
        chat = await storage.get_chat(chat_id)
    finally:
        await storage.close()
    assert chat is not None
    return {m.id: m.seq for m in stored}, chat.message_count, chat.last_seq


# ---------------------------------------------------------------- tests


async def test_clients_get_503_while_the_database_restarts_and_nothing_acked_is_lost(
    tmp_path: Path, database: RestartableDatabase, request: pytest.FixtureRequest
) -> None:
    backend = request.node.callspec.params["database"]
    wanted = ACKS_PER_PHASE[backend]
    phase = ["before"]
    async with (
        serve(tmp_path, database.url) as server,
        joined_senders(server, phase) as senders,
    ):
        async with traffic(senders) as sending:
            await _until(
                sending.every(lambda s: s.acks_in("before") >= wanted),
                PHASE_TIMEOUT_S,
                f"{wanted} acknowledged messages per sender before the outage",
            )
            assert (await health(server))["status"] == "healthy"

            # "outage" runs from the stop command until the start command returns: acks
            # in it are commits that beat the shutdown or came as the database came back.
            phase[0] = "outage"
            await database.stop()
            await _until(
                sending.every(lambda s: s.unavailable >= ERRORS_PER_OUTAGE),
                PHASE_TIMEOUT_S,
                f"{ERRORS_PER_OUTAGE} errors 503 at every sender while the database is down",
            )
            body = await health(server)
            assert (body["status"], body["storage"]) == ("degraded", "unavailable")

            await database.start()
            phase[0] = "after"
            await _until(
                sending.every(lambda s: s.acks_in("after") >= wanted),
                PHASE_TIMEOUT_S,
                f"{wanted} acknowledged messages per sender after the restart",
            )
            await health_reaches(server, "healthy", "ok")
            await sending.finish()

        # Each sender used one connection throughout (a closed one would have failed it),
        # and all of them are still open.
        assert all(sender.client.ws.close_code is None for sender in senders)

    for chat_id in OWNERS:
        acked = {
            message_id: seq
            for sender in senders
            if sender.chat_id == chat_id
            for message_id, seq in sender.acked.items()
        }
        stored, message_count, last_seq = await read_back(database.url, chat_id)
        missing = acked.keys() - stored.keys()
        assert not missing, f"{len(missing)} acknowledged messages of {chat_id} were lost"
        assert {message_id: stored[message_id] for message_id in acked} == acked
        assert sorted(stored.values()) == list(range(1, len(stored) + 1))
        # Every send was retried until acknowledged, so nothing unacknowledged was stored.
        assert stored == acked
        assert message_count == last_seq == len(stored)


async def test_health_follows_the_database_without_traffic(
    tmp_path: Path, database: RestartableDatabase
) -> None:
    async with serve(tmp_path, database.url) as server, connect(server, "alice") as alice:
        await alice.join("quiet")
        await alice.say("quiet", "before", "t-1")
        assert (await health(server))["status"] == "healthy"

        await database.stop()
        # Nothing is sent: only the server's own probe can notice.
        await health_reaches(server, "degraded", "unavailable")
        await database.start()
        await health_reaches(server, "healthy", "ok")

        echo = await alice.say("quiet", "after", "t-2")
        assert echo["data"]["message"]["seq"] == 2
        assert alice.ws.close_code is None
