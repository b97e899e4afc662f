"""Fixtures of the storage conformance suite: every test runs once per backend.

A backend's support module is `tests/support/backends/<name>.py`. If it is missing or fails
to import, that backend's tests FAIL (CI must not pass with a backend untested), unless the
name is listed in `GURUKUL_SKIP_BACKENDS` (comma-separated, for a developer machine without
that database server).
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING

import pytest

from tests.support.backends import (
    BACKEND_NAMES,
    SKIP_ENV,
    BackendSupport,
    import_backend,
    skipped_backends,
)

if TYPE_CHECKING:
    import pathlib
    from collections.abc import AsyncIterator

    from gurukul_fast.storage import Storage


@pytest.fixture(params=BACKEND_NAMES)
def backend_name(request: pytest.FixtureRequest) -> str:
    """The backend under test; skipped only when `GURUKUL_SKIP_BACKENDS` lists it."""
    name: str = request.param
    if name in skipped_backends():
        pytest.skip(f"{name} listed in {SKIP_ENV}")
    return name


@pytest.fixture
def backend(backend_name: str) -> BackendSupport:
    """The backend's support module (`fresh_storage`, `fresh_storage_url`)."""
    try:
        return import_backend(backend_name)
    except ImportError as exc:
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == (
            f"tests.support.backends.{backend_name}"
        )
        if missing:
            reason = f"tests/support/backends/{backend_name}.py does not exist"
        else:
            reason = f"tests/support/backends/{backend_name}.py failed to import:\n" + "".join(
                traceback.format_exception(exc)
            )
    # Fail outside the except block so the report shows this message, not a chained traceback.
    pytest.fail(
        f"storage backend {backend_name!r} cannot be tested: {reason}\n"
        f"(set {SKIP_ENV}={backend_name} to skip it on a machine without it)",
        pytrace=False,
    )


@pytest.fixture
async def storage(backend: BackendSupport, tmp_path: pathlib.Path) -> AsyncIterator[Storage]:
    """An opened, empty storage of the backend under test, closed after the test."""
    async with backend.fresh_storage(tmp_path) as opened:
        yield opened
