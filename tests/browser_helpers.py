"""Real-browser tests: Debian's Chromium driven by Playwright (no browser download needed).

`.ci/run` installs the `chromium` package; where it is missing the tests skip with a message
saying how to get it. Each test saves a screenshot after its main action under
`test-artifacts/screenshots/` (git-ignored) so a reviewer can look at the pages.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        message = "browser tests need Chromium: apt-get install -y chromium (CI installs it in .ci/run)"
        if os.environ.get("TTS_REQUIRE_BROWSER"):  # set by .ci/run: CI must not skip them silently
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]' (playwright)")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


class PageErrors:
    """Console errors and uncaught exceptions of one page (a page must have none)."""

    def __init__(self, page) -> None:
        self.messages: list[str] = []
        page.on(
            "console", lambda m: self.messages.append(f"console: {m.text}") if m.type == "error" else None
        )
        page.on("pageerror", lambda e: self.messages.append(f"pageerror: {e}"))


@contextmanager
def open_page(browser, expect_errors: bool = False) -> Iterator[tuple[object, PageErrors]]:
    """A fresh page; after the block, fail on any console error unless `expect_errors`."""
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors = PageErrors(page)
    try:
        yield page, errors
        if not expect_errors:
            assert errors.messages == [], errors.messages
    finally:
        context.close()


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@contextmanager
def serving(server) -> Iterator[str]:
    """Serve `server` in a thread; yields its base URL; shuts it down afterwards."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
