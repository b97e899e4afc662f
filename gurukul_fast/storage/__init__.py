"""Storage: the `Storage` protocol, backend loading, and the group committer."""

from __future__ import annotations

from gurukul_fast.storage.base import (
    ChatRecord,
    NewMessage,
    Storage,
    StorageError,
    StorageUnavailable,
    StoredMessage,
)
from gurukul_fast.storage.loader import StorageOptions, UnknownStorageScheme, load_storage

__all__ = [
    "ChatRecord",
    "NewMessage",
    "Storage",
    "StorageError",
    "StorageOptions",
    "StorageUnavailable",
    "StoredMessage",
    "UnknownStorageScheme",
    "load_storage",
]
