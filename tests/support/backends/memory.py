"""Test support for the in-process `memory:` backend: every instance starts empty."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from gurukul_fast.storage import StorageOptions
from gurukul_fast.storage.memory import MemoryStorage

if TYPE_CHECKING:
    import pathlib
    from collections.abc import AsyncIterator

__all__ = ["PERSISTENT", "fresh_storage", "fresh_storage_url"]

# A new MemoryStorage on the same URL is a new, empty database.
PERSISTENT = False


@contextlib.asynccontextmanager
async def fresh_storage(tmp_path: pathlib.Path) -> AsyncIterator[MemoryStorage]:
    """Yield an opened, empty memory storage; close it on exit."""
    storage = MemoryStorage("memory:", StorageOptions())
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()


@contextlib.asynccontextmanager
async def fresh_storage_url(tmp_path: pathlib.Path) -> AsyncIterator[str]:
    """Yield `memory:`; each server (each MemoryStorage) opened on it starts empty."""
    yield "memory:"
