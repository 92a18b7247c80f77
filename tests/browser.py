"""The headless chromium of ``bench.chromium`` for the tests that need a real browser (the
page, the embed kit): skipped where chromium is not installed (``.ci/run`` installs it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import chromium as _browser
from bench.chromium import page

__all__ = ["chromium", "page"]


@contextlib.contextmanager
def chromium(url: str, profile: Path) -> Iterator[str]:
    """A headless chromium showing ``url``; yields its DevTools address."""
    if _browser.installed() is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    with _browser.chromium(url, profile) as ws_url:
        yield ws_url
