"""Find and construct a storage backend from its URL.

Backends register a class under the entry-point group `gurukul_fast.storage`, keyed by URL
scheme (`sqlite`, `memory`, `postgresql`, `mongodb`). The class is called as
`Backend(url, options)` and must satisfy `gurukul_fast.storage.base.Storage`.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import cast

import msgspec

from gurukul_fast.storage.base import Storage

__all__ = ["ENTRY_POINT_GROUP", "StorageOptions", "UnknownStorageScheme", "load_storage"]

ENTRY_POINT_GROUP = "gurukul_fast.storage"

# Scheme aliases people type; each maps to a registered scheme.
_ALIASES = {"postgres": "postgresql", "mongodb+srv": "mongodb"}


class StorageOptions(msgspec.Struct, frozen=True):
    """Settings every backend may use; each has a default so a backend can ignore it."""

    pool_min_size: int = 2  # connections kept open (network backends)
    pool_max_size: int = 10  # connections at most (network backends)
    command_timeout_s: float = 5.0  # one database call, seconds, before StorageUnavailable


class UnknownStorageScheme(ValueError):
    """No installed backend handles the URL's scheme."""


def url_scheme(url: str) -> str:
    """Return the registered scheme for `url` (`postgres://…` → `postgresql`)."""
    scheme = url.split(":", 1)[0].lower()
    base = scheme.split("+", 1)[0] if scheme != "mongodb+srv" else scheme
    return _ALIASES.get(base, base)


def load_storage(url: str, options: StorageOptions | None = None) -> Storage:
    """Construct (but do not open) the backend registered for `url`'s scheme."""
    scheme = url_scheme(url)
    found = entry_points(group=ENTRY_POINT_GROUP, name=scheme)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        raise UnknownStorageScheme(
            f"no storage backend for scheme {scheme!r} (installed: {', '.join(known) or 'none'})"
        )
    backend_class = next(iter(found)).load()
    return cast(Storage, backend_class(url, options or StorageOptions()))
