"""Per-backend test support: how the conformance suite gets a fresh, empty database.

Each module here is named after a backend (`memory`, `sqlite`, `postgresql`, `mongodb`) and
exposes two async context managers (see `BackendSupport`):

- `fresh_storage(tmp_path)` yields an opened, empty `Storage` and closes it on exit;
- `fresh_storage_url(tmp_path)` yields the URL of a fresh, empty database (to start a
  whole server on it) and cleans the database up on exit.

An optional module constant `PERSISTENT` (default True) says whether a new instance opened on
the same URL sees the data of an earlier one; the in-process `memory` backend sets it False.

Add a backend by adding its module; `tests/conformance/conftest.py` picks it up by name.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Protocol, cast

if TYPE_CHECKING:
    import contextlib
    import pathlib

    from gurukul_fast.storage import Storage

__all__ = [
    "BACKEND_NAMES",
    "SKIP_ENV",
    "BackendSupport",
    "import_backend",
    "is_persistent",
    "skipped_backends",
]

# Every backend the conformance suite must run against; CI runs them all.
BACKEND_NAMES = ("memory", "sqlite", "postgresql", "mongodb")

# Comma-separated backend names to skip on a developer machine without those servers.
# CI never sets it: there a missing backend fails.
SKIP_ENV = "GURUKUL_SKIP_BACKENDS"


class BackendSupport(Protocol):
    """What a module in this package provides."""

    def fresh_storage(
        self, tmp_path: pathlib.Path
    ) -> contextlib.AbstractAsyncContextManager[Storage]: ...

    def fresh_storage_url(
        self, tmp_path: pathlib.Path
    ) -> contextlib.AbstractAsyncContextManager[str]: ...


def skipped_backends() -> set[str]:
    """Return the backend names listed in `GURUKUL_SKIP_BACKENDS`."""
    return {name.strip() for name in os.environ.get(SKIP_ENV, "").split(",") if name.strip()}


def import_backend(name: str) -> BackendSupport:
    """Import `tests.support.backends.<name>`; raise ImportError if it is missing or broken."""
    return cast("BackendSupport", importlib.import_module(f"{__name__}.{name}"))


def is_persistent(backend: BackendSupport) -> bool:
    """Return True if data outlives the storage instance (see `PERSISTENT` above)."""
    return bool(getattr(backend, "PERSISTENT", True))
