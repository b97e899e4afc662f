"""Fresh MongoDB databases for tests, on one mongoeco wire server per test session.

The server (`tests/support/mongoeco_server.py`, in-memory engine) starts on first use and
stops when the test process exits. Each call gets its own database `gf_test_<random>`,
dropped afterwards, so tests never see each other's documents. If mongoeco cannot be set up
this raises `MongoecoUnavailable` with the reason: a backend suite that silently skips is
not a pass.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import secrets
from typing import TYPE_CHECKING

from pymongo import AsyncMongoClient

from gurukul_fast.storage import Storage, StorageOptions, load_storage
from tests.support.mongoeco_server import MongoecoServer

if TYPE_CHECKING:
    import pathlib
    from collections.abc import AsyncIterator

__all__ = ["fresh_storage", "fresh_storage_url", "shared_server"]

CLEANUP_TIMEOUT_MS = 30_000
# Options every test URL carries (URL options win over the storage's defaults):
# - timeoutMS: mongoeco checks unique indexes by scanning, so one insert of 500 messages
#   takes ~10 s there; the tests get a longer per-call budget than the server's 5 s default.
# - minPoolSize=0: pymongo 4.x leaks a socket when a task creating a connection is cancelled
#   mid-connect (pool_shared._async_create_connection closes it only on OSError/timeout),
#   which `close()` does to the background task keeping minPoolSize connections; the leak's
#   ResourceWarning would fail whichever test happens to run at the next garbage collection.
TEST_URL_OPTIONS = {"timeoutMS": "60000", "minPoolSize": "0"}

_server: MongoecoServer | None = None


def shared_server() -> MongoecoServer:
    """Return the session's mongoeco server, starting it on first use (blocks ~1 s)."""
    global _server
    if _server is None or not _server.running:
        server = MongoecoServer()
        server.start()
        atexit.register(server.close)
        _server = server
    return _server


@contextlib.asynccontextmanager
async def fresh_storage_url(tmp_path: pathlib.Path) -> AsyncIterator[str]:
    """Yield the URL of an empty database on the shared server; drop it on exit."""
    del tmp_path  # the database lives in the server, not in the test's directory
    server = await asyncio.to_thread(shared_server)
    name = f"gf_test_{secrets.token_hex(6)}"
    try:
        yield server.url(name, **TEST_URL_OPTIONS)
    finally:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            server.url(), timeoutMS=CLEANUP_TIMEOUT_MS
        )
        try:
            await client.drop_database(name)
        finally:
            await client.close()


@contextlib.asynccontextmanager
async def fresh_storage(tmp_path: pathlib.Path) -> AsyncIterator[Storage]:
    """Yield an opened (migrated) MongoStorage on a fresh database; close and drop it."""
    async with fresh_storage_url(tmp_path) as url:
        storage = load_storage(url, StorageOptions())
        await storage.open()
        try:
            yield storage
        finally:
            await storage.close()
