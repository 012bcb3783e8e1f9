"""Browser tests: Playwright driving Debian's Chromium against the live server.

The fixtures (``browser``, ``page``, ``browser_login``, ``artifacts_dir``) live in tests/conftest.py,
so every browser test in the suite shares one Chromium.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
