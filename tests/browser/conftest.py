"""Browser end-to-end tests: Debian's headless Chromium driven over DevTools (`cdp.py`).

They fail, never skip, when Chromium is missing: `.ci/services` installs it in CI. To leave
them out on a machine without it, deselect them: `pytest -m "not browser"`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.browser.cdp import Browser, launch_browser


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives a real headless Chromium")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.browser)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A fresh headless Chromium (new profile) for one test."""
    async with launch_browser() as running:
        yield running
