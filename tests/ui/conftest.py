"""The browser tests' fixtures: nsbox servers (one per kind of scenario, shared by its
tests), Debian's chromium driven by Playwright, and screenshots of the main states."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from typing import Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

REPO = pathlib.Path(__file__).resolve().parents[2]
SCREENSHOTS = pathlib.Path(os.environ.get("NSBOX_UI_SCREENSHOTS", REPO / "target" / "ui-screenshots"))
KEY = "ui-test-key"
OPERATOR_KEY = "ui-test-operator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def nsbox(*args: str) -> Iterator[str]:
    """`$NSBOX_BIN serve` on a free loopback port over `$NSBOX_ROOTFS`, until the block ends."""
    binary, rootfs = os.environ.get("NSBOX_BIN"), os.environ.get("NSBOX_ROOTFS")
    if not binary or not rootfs:
        raise RuntimeError("NSBOX_BIN and NSBOX_ROOTFS must be set (scripts/test-ui.sh sets them)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.NamedTemporaryFile("w+", prefix="nsbox-ui-", suffix=".log") as log:
        proc = subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{port}", "--rootfs", rootfs, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"nsbox {' '.join(args)} did not become healthy:\n{log.read()[-4000:]}")
                try:
                    with urllib.request.urlopen(url + "/v1/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.2)
            yield url
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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
