"""Fresh PostgreSQL databases for tests: one new database per test, dropped afterwards.

The admin URL comes from `GURUKUL_TEST_PG_URL` (default: the local server's `postgres`
database as user `postgres`). Each test gets a database `gf_test_<random>` on that server,
so tests never see each other's rows and can run in parallel. If the server cannot be
reached this raises a clear error: a backend suite that silently skips is not a pass.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from gurukul_fast.storage import Storage, StorageOptions, load_storage

if TYPE_CHECKING:
    import pathlib
    from collections.abc import AsyncIterator

__all__ = ["fresh_storage", "fresh_storage_url"]

ADMIN_URL_ENV = "GURUKUL_TEST_PG_URL"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CONNECT_TIMEOUT_S = 5.0


def _admin_url() -> str:
    """Return the URL of the database used to create and drop test databases."""
    return os.environ.get(ADMIN_URL_ENV, DEFAULT_ADMIN_URL)


@contextlib.asynccontextmanager
async def fresh_storage_url(tmp_path: pathlib.Path) -> AsyncIterator[str]:
    """Create an empty database, yield its URL, then drop it (even if still connected)."""
    del tmp_path  # the database lives on the server, not in the test's directory
    name = f"gf_test_{secrets.token_hex(6)}"
    await _admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(_admin_url(), name)
    finally:
        await _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def fresh_storage(tmp_path: pathlib.Path) -> AsyncIterator[Storage]:
    """Yield an opened (migrated) PostgreSQL storage on a fresh database; close and drop it."""
    async with fresh_storage_url(tmp_path) as url:
        storage = load_storage(url, StorageOptions())
        await storage.open()
        try:
            yield storage
        finally:
            await storage.close()


async def _admin_execute(statement: str) -> None:
    url = _admin_url()
    try:
        connection = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise RuntimeError(
            f"PostgreSQL for tests is not reachable at {_masked(url)} ({exc}); start it "
            f"(.ci/run does) or point {ADMIN_URL_ENV} at a server where we may create databases"
        ) from None
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def _masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
