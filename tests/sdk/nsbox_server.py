"""Starts and stops extra `nsbox serve` processes for tests that need other settings than the
server scripts/test-sdk.sh started (API keys, tiny queues, short time limits)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from typing import Iterator


# The log of each server running now, by its base URL: a test that fails can show what
# its server said (tests/ui/conftest.py does).
LOGS: dict[str, str] = {}


def log_tail(url: str, lines: int = 40) -> str:
    path = LOGS.get(url)
    if path is None:
        return ""
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, proc: subprocess.Popen | None = None, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"nsbox exited with status {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(url + "/v1/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nsbox at {url} was not healthy within {seconds} s")


@contextlib.contextmanager
def nsbox(*args: str, ready_within: float = 120.0) -> Iterator[str]:
    """Runs `$NSBOX_BIN serve` on a free loopback port with `$NSBOX_ROOTFS` and the given
    extra arguments; yields its base URL and stops it with SIGTERM afterwards. Also the
    browser tests' servers (tests/ui/conftest.py)."""
    binary = os.environ.get("NSBOX_BIN")
    rootfs = os.environ.get("NSBOX_ROOTFS")
    if not binary or not rootfs:
        raise RuntimeError("NSBOX_BIN and NSBOX_ROOTFS must be set (run scripts/test-sdk.sh)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.NamedTemporaryFile("w+", prefix="nsbox-sdk-", suffix=".log") as log:
        proc = subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{port}", "--rootfs", rootfs, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            try:
                wait_for_health(url, proc, ready_within)
            except RuntimeError as e:
                log.seek(0)
                raise RuntimeError(f"{e}; nsbox {' '.join(args)} said:\n{log.read()[-4000:]}") from None
            LOGS[url] = log.name
            yield url
        finally:
            LOGS.pop(url, None)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

