"""The browser tests' fixtures: nsbox servers (one per kind of scenario, shared by its
tests), Debian's chromium driven by Playwright, and screenshots of the main states."""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
from typing import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

# The SDK suite's server helper: one way to start and stop a test server (its readiness
# bound allows for warm templates that take a minute on a busy host).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "sdk"))
from nsbox_server import nsbox  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
# expect() has a timeout of its own (5 s), apart from the page's default (set below for
# actions and waits): both get the 30 s a run on a slow, busy host may need.
expect.set_options(timeout=30_000)
SCREENSHOTS = pathlib.Path(os.environ.get("NSBOX_UI_SCREENSHOTS", REPO / "target" / "ui-screenshots"))
KEY = "ui-test-key"
OPERATOR_KEY = "ui-test-operator"


@pytest.fixture(scope="session")
def keyless() -> Iterator[str]:
    """The default server: no keys (loopback), the scanner enforcing."""
    with nsbox() as url:
        yield url


@pytest.fixture(scope="session")
def keyed() -> Iterator[str]:
    """A server with a plain key and an operator key, and runs stopped after 2 seconds."""
    with nsbox("--api-key", KEY, "--operator-key", OPERATOR_KEY, "--default-timeout", "2") as url:
        yield url


@pytest.fixture(scope="session")
def no_ui() -> Iterator[str]:
    with nsbox("--no-ui") as url:
        yield url


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    executable = os.environ.get("NSBOX_CHROMIUM") or shutil.which("chromium")
    assert executable, "no chromium: install Debian's chromium (scripts/test.sh does) or set NSBOX_CHROMIUM"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (its own storage) at 1280x800, failing the test on any
    error a script of the page raises."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    p = context.new_page()
    problems: list[str] = []
    p.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    p.set_default_timeout(30_000)
    yield p
    context.close()
    assert not problems, problems


def shoot(page: Page, name: str) -> pathlib.Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    # The viewport grown to the page rather than full_page=True, whose resizing leaves the
    # result frames (out of process: their origin is opaque) blank in the picture.
    size = page.viewport_size
    height = page.evaluate("document.documentElement.scrollHeight")
    if size and height > size["height"]:
        page.set_viewport_size({"width": size["width"], "height": height})
        page.wait_for_timeout(500)
    page.screenshot(path=str(path))
    if size:
        page.set_viewport_size(size)
    return path
