"""PostgreSQL backend under faults, against the real local server.

What the conformance suite cannot show for every backend: a server restart in the middle of
traffic, killed and stuck connections, several servers migrating and appending to the same
chats at once, and an unreachable server at start-up. The restart test restarts the shared
local cluster (`pg_ctlcluster … restart -m fast`) and always leaves it running.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import shutil
import socket
import time
from typing import TYPE_CHECKING

import asyncpg
import pytest

from gurukul_fast.storage import (
    NewMessage,
    StorageError,
    StorageOptions,
    StorageUnavailable,
    StoredMessage,
)
from gurukul_fast_postgres import SCHEMA_VERSION, PostgresStorage
from tests.support.backends.postgresql import fresh_storage_url

if TYPE_CHECKING:
    import pathlib
    from collections.abc import AsyncIterator

# One time unit for every wait in this file; raise GURUKUL_TEST_TIME_SCALE on slow machines.
UNIT_S = 1.0 * float(os.environ.get("GURUKUL_TEST_TIME_SCALE", "1"))

_serial = itertools.count(1)


def message(chat_id: str, user_id: str = "u1", client_id: str | None = None) -> NewMessage:
    serial = next(_serial)
    return NewMessage(
        id=f"msg-{serial}",
        chat_id=chat_id,
        user_id=user_id,
        agent_id=None,
        content=f"hello {serial}",
        role="user",
        created_at_ms=1_700_000_000_000 + serial,
        client_message_id=client_id,
    )


async def open_storage(url: str, options: StorageOptions | None = None) -> PostgresStorage:
    storage = PostgresStorage(url, options or StorageOptions())
    await storage.open()
    return storage


async def all_messages(storage: PostgresStorage, chat_id: str) -> list[StoredMessage]:
    return await storage.messages_after(chat_id, 0, 1_000_000)


def assert_gapless(messages: list[StoredMessage]) -> None:
    assert [m.seq for m in messages] == list(range(1, len(messages) + 1))


# server control


def _cluster_version() -> str:
    versions = sorted(os.listdir("/etc/postgresql"))
    assert versions, "no PostgreSQL cluster under /etc/postgresql"
    return versions[-1]


async def _run(*command: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, f"{' '.join(command)} failed: {output.decode(errors='replace')}"


async def _server_ready() -> bool:
    process = await asyncio.create_subprocess_exec("pg_isready", "-q", "-h", "127.0.0.1")
    return await process.wait() == 0


async def _wait_until_ready(timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await _server_ready():
        assert time.monotonic() < deadline, "PostgreSQL did not come back"
        await asyncio.sleep(0.1 * UNIT_S)


async def _pg_ctl(action: str, *extra: str) -> None:
    await _run(
        "pg_ctlcluster", "--skip-systemctl-redirect", _cluster_version(), "main", action, *extra
    )


@pytest.fixture
async def restartable_server() -> AsyncIterator[None]:
    """Skip nothing: fail if the tools are missing; always leave PostgreSQL running."""
    assert shutil.which("pg_ctlcluster"), "pg_ctlcluster is needed to restart PostgreSQL"
    assert shutil.which("pg_isready"), "pg_isready is needed to watch PostgreSQL restart"
    try:
        yield
    finally:
        if not await _server_ready():
            await _pg_ctl("start")
            await _wait_until_ready(30 * UNIT_S)


# (a) restart


async def test_restart_mid_traffic_loses_no_acknowledged_message_and_recovers(
    tmp_path: pathlib.Path, restartable_server: None
) -> None:
    async with fresh_storage_url(tmp_path) as url:
        storage = await open_storage(url, StorageOptions(command_timeout_s=2 * UNIT_S))
        try:
            await storage.create_chat("c1", "u1", "restart", None, 1)
            acknowledged: list[StoredMessage] = []
            outage_errors: list[StorageUnavailable] = []
            stop = asyncio.Event()

            async def write() -> None:
                while not stop.is_set():
                    try:
                        acknowledged.extend(await storage.append_messages([message("c1")]))
                    except StorageUnavailable as exc:  # anything else fails the test
                        outage_errors.append(exc)
                        await asyncio.sleep(0.01 * UNIT_S)

            async def read() -> None:
                while not stop.is_set():
                    try:
                        await storage.latest_messages("c1", 10)
                        await storage.get_chat("c1")
                    except StorageUnavailable as exc:
                        outage_errors.append(exc)
                        await asyncio.sleep(0.01 * UNIT_S)

            workers = [asyncio.create_task(write()) for _ in range(3)]
            workers.append(asyncio.create_task(read()))
            try:
                await asyncio.sleep(0.3 * UNIT_S)
                before_restart = len(acknowledged)
                await _pg_ctl("restart", "-m", "fast")
                await _wait_until_ready(30 * UNIT_S)
            finally:
                stop.set()
                await asyncio.gather(*workers)

            assert before_restart > 0
            assert outage_errors, "the restart was not observed by any call"
            # The same instance works again at once: broken connections were not reused.
            for _ in range(20):
                acknowledged.extend(await storage.append_messages([message("c1")]))
            assert await storage.ping()

            stored = await all_messages(storage, "c1")
            assert_gapless(stored)
            assert {m.id for m in acknowledged} <= {m.id for m in stored}
            chat = await storage.get_chat("c1")
            assert chat is not None
            assert chat.last_seq == chat.message_count == len(stored)
        finally:
            await storage.close()


async def test_killed_connections_are_replaced(tmp_path: pathlib.Path) -> None:
    async with fresh_storage_url(tmp_path) as url:
        storage = await open_storage(url, StorageOptions(pool_min_size=3, pool_max_size=3))
        try:
            await storage.create_chat("c1", "u1", "kill", None, 1)
            await asyncio.gather(*(storage.get_chat("c1") for _ in range(6)))
            database = url.rsplit("/", 1)[1]
            admin = await asyncpg.connect(url)
            try:
                killed = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = $1 AND pid <> pg_backend_pid()",
                    database,
                )
            finally:
                await admin.close()
            assert killed == 3
            await asyncio.sleep(0.1 * UNIT_S)  # let the client read the servers' goodbyes
            results = await asyncio.gather(
                *(storage.append_messages([message("c1")]) for _ in range(10))
            )
            assert sorted(r[0].seq for r in results) == list(range(1, 11))
        finally:
            await storage.close()


async def test_stuck_statement_times_out_and_changes_nothing(tmp_path: pathlib.Path) -> None:
    timeout_s = 0.5 * UNIT_S
    async with fresh_storage_url(tmp_path) as url:
        storage = await open_storage(url, StorageOptions(command_timeout_s=timeout_s))
        blocker = await asyncpg.connect(url)
        try:
            await storage.create_chat("c1", "u1", "stuck", None, 1)
            locking = blocker.transaction()
            await locking.start()
            await blocker.execute("SELECT 1 FROM chats WHERE id = 'c1' FOR UPDATE")
            started = time.monotonic()
            with pytest.raises(StorageUnavailable):
                await storage.append_messages([message("c1")])
            assert time.monotonic() - started < 4 * timeout_s
            await locking.rollback()

            stored = await storage.append_messages([message("c1")])
            assert stored[0].seq == 1  # the timed-out batch was cancelled, not committed
            assert len(await all_messages(storage, "c1")) == 1
        finally:
            await blocker.close()
            await storage.close()


async def test_failed_batch_stores_nothing(tmp_path: pathlib.Path) -> None:
    async with fresh_storage_url(tmp_path) as url:
        storage = await open_storage(url)
        try:
            for chat_id in ("c1", "c2"):
                await storage.create_chat(chat_id, "u1", chat_id, None, 1)
            poisoned = NewMessage(
                id="msg-nul", chat_id="c2", user_id="u1", agent_id=None,
                content="PostgreSQL text cannot hold \x00", role="user", created_at_ms=5,
            )  # fmt: skip
            with pytest.raises(StorageUnavailable):
                await storage.append_messages([message("c1"), message("c2", "u2"), poisoned])
            with pytest.raises(StorageError, match="unknown chat"):
                await storage.append_messages([message("c1"), message("nope")])
            for chat_id in ("c1", "c2"):
                assert await all_messages(storage, chat_id) == []
                chat = await storage.get_chat(chat_id)
                assert chat is not None
                assert (chat.last_seq, chat.message_count, chat.last_message) == (0, 0, None)
        finally:
            await storage.close()


async def test_calls_after_close_raise_storage_unavailable(tmp_path: pathlib.Path) -> None:
    async with fresh_storage_url(tmp_path) as url:
        storage = await open_storage(url)
        await storage.close()
        with pytest.raises(StorageUnavailable):
            await storage.get_chat("c1")
        with pytest.raises(StorageUnavailable):
            await storage.append_messages([message("c1")])
        assert not await storage.ping()
        await storage.open()  # a closed instance can be opened again
        try:
            assert await storage.get_chat("c1") is None
        finally:
            await storage.close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(f"postgresql://postgres@127.0.0.1:{_closed_port()}/x", id="refused"),
        pytest.param("postgres://postgres@192.0.2.1:5432/x", id="blackhole"),
        pytest.param("postgresql://postgres@127.0.0.1:5432/gf_no_such_db", id="no-database"),
    ],
)
async def test_open_unreachable_fails_fast_with_one_clear_line(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    timeout_s = 1.0 * UNIT_S
    storage = PostgresStorage(url, StorageOptions(command_timeout_s=timeout_s))
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as caught:
        await storage.open()
    assert time.monotonic() - started < 3 * timeout_s
    reason = str(caught.value)
    assert reason.startswith("cannot connect to postgres")
    assert "\n" not in reason
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    await asyncio.sleep(0.05 * UNIT_S)  # give stray callbacks a chance to log
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not await storage.ping()


# (b) several servers at once


async def test_concurrent_migrate_from_several_instances(tmp_path: pathlib.Path) -> None:
    async with fresh_storage_url(tmp_path) as url:
        storages = [
            PostgresStorage(url, StorageOptions(pool_min_size=1, pool_max_size=2)) for _ in range(6)
        ]
        try:
            await asyncio.gather(*(s.open() for s in storages))  # open() migrates
            versions = await asyncio.gather(*(s.migrate() for s in storages))
            assert versions == [SCHEMA_VERSION] * len(storages)
            admin = await asyncpg.connect(url)
            try:
                applied = await admin.fetch("SELECT version FROM schema_migrations ORDER BY 1")
            finally:
                await admin.close()
            assert [row[0] for row in applied] == list(range(1, SCHEMA_VERSION + 1))
        finally:
            await asyncio.gather(*(s.close() for s in storages))


async def test_concurrent_appenders_keep_seq_gapless_and_keys_unique(
    tmp_path: pathlib.Path,
) -> None:
    chats = [f"c{i}" for i in range(4)]
    rounds, batch_size = 25, 12
    async with fresh_storage_url(tmp_path) as url:
        servers = [
            await open_storage(url, StorageOptions(pool_min_size=1, pool_max_size=4))
            for _ in range(3)
        ]
        try:
            for chat_id in chats:
                await servers[0].create_chat(chat_id, "u1", chat_id, None, 1)
            returned: list[tuple[NewMessage, StoredMessage]] = []

            async def append_rounds(server: PostgresStorage, seed: int) -> None:
                rng = random.Random(seed)
                for _ in range(rounds):
                    batch = []
                    for _ in range(batch_size):
                        # Few keys and users, so servers often send the same key at once.
                        key = f"k{rng.randrange(40)}" if rng.random() < 0.6 else None
                        batch.append(message(rng.choice(chats), f"u{rng.randrange(2)}", key))
                    # Batches name chats in every order: locking must still not deadlock.
                    stored = await server.append_messages(batch)
                    returned.extend(zip(batch, stored, strict=True))

            await asyncio.gather(
                *(append_rounds(server, seed) for seed, server in enumerate(servers * 2))
            )

            by_key: dict[tuple[str, str, str], set[str]] = {}
            for sent, record in returned:
                assert (record.chat_id, record.user_id) == (sent.chat_id, sent.user_id)
                assert record.client_message_id == sent.client_message_id
                if sent.client_message_id is None:
                    assert not record.duplicate
                else:
                    key = (sent.chat_id, sent.user_id, sent.client_message_id)
                    by_key.setdefault(key, set()).add(record.id)
                    assert record.duplicate == (record.id != sent.id)
            assert all(len(ids) == 1 for ids in by_key.values()), "a key was stored twice"

            total = 0
            for chat_id in chats:
                stored = await all_messages(servers[0], chat_id)
                assert_gapless(stored)
                keys = [(m.user_id, m.client_message_id) for m in stored if m.client_message_id]
                assert len(keys) == len(set(keys))
                total += len(stored)
            assert total == sum(1 for sent, record in returned if not record.duplicate)
            assert any(record.duplicate for _, record in returned)
        finally:
            await asyncio.gather(*(s.close() for s in servers))
