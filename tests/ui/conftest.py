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
import nsbox_server  # noqa: E402
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


# The report of a test's call, kept on its item so the page fixture's teardown knows
# whether the test failed.
CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.when == "call":
        item.stash[CALL_REPORT] = report
    return report


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context (its own storage) at 1280x800, failing the test on any
    error a script of the page raises. When the test fails, what the page showed, what it
    asked the server and was told, and the servers' logs are kept (failed-<test>.png and
    the test's output), since a failure seen only on CI cannot be looked at afterwards."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    p = context.new_page()
    problems: list[str] = []
    traffic: list[str] = []
    p.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    p.on("console", lambda m: traffic.append(f"console {m.type}: {m.text}"))
    p.on("requestfailed", lambda r: traffic.append(f"{r.method} {r.url} failed: {r.failure}"))
    p.on("response", lambda r: traffic.append(f"{r.request.method} {r.url} -> {r.status}"))
    p.set_default_timeout(30_000)
    yield p
    report = request.node.stash.get(CALL_REPORT, None)
    if report is not None and report.failed and not p.is_closed():
        path = SCREENSHOTS / f"failed-{request.node.name}.png"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        p.screenshot(path=str(path))
        print(f"screenshot: {path}")
        print("session info: " + p.locator("#session-info").inner_text())
        print("what the page asked and was told:\n  " + "\n  ".join(traffic))
        for url in list(nsbox_server.LOGS):
            print(f"the end of the log of the server at {url}:\n{nsbox_server.log_tail(url)}")
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
