"""Test support for the embedded SQLite backend: a new database file under `tmp_path`."""

from __future__ import annotations

import contextlib
import itertools
from typing import TYPE_CHECKING

from gurukul_fast.storage import StorageOptions
from gurukul_fast.storage.sqlite import SqliteStorage

if TYPE_CHECKING:
    import pathlib
    from collections.abc import AsyncIterator

__all__ = ["PERSISTENT", "fresh_storage", "fresh_storage_url"]

PERSISTENT = True

# Several databases may be made in one tmp_path (e.g. a storage and a server URL).
_counter = itertools.count(1)


def _fresh_url(tmp_path: pathlib.Path) -> str:
    # An absolute path: sqlite:////abs/path.db. The directory is created by the backend.
    path = tmp_path.resolve() / "sqlite" / f"gurukul-{next(_counter)}.db"
    return f"sqlite:///{path}"


@contextlib.asynccontextmanager
async def fresh_storage(tmp_path: pathlib.Path) -> AsyncIterator[SqliteStorage]:
    """Yield an opened SQLite storage on a new file; close it on exit (pytest removes it)."""
    storage = SqliteStorage(_fresh_url(tmp_path), StorageOptions())
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()


@contextlib.asynccontextmanager
async def fresh_storage_url(tmp_path: pathlib.Path) -> AsyncIterator[str]:
    """Yield the URL of a database file that does not exist yet (created on open)."""
    yield _fresh_url(tmp_path)
