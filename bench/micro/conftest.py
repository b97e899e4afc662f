"""Collect `bench_*.py` here: micro-benchmarks never match the test suite's `test_*.py`.

They run only when asked for, e.g. by the bench env:
`pytest bench/micro --benchmark-only --benchmark-autosave`.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Module | None:
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
