"""Two nsbox servers side by side, the same requests sent to each in turn (one at a time,
one keep-alive connection each), client-side p50: an A/B of two builds, or of one build
with and without a setting, that the machine's noise hits equally.

    sudo NSBOX_ROOTFS=... python3 scripts/bench/pair.py N BIN_A [ARGS...] -- BIN_B [ARGS...]

e.g. `... pair.py 200 target/release/nsbox -- target/release/nsbox --no-huge-pages`.
Prints, for the spec's basic and pandas examples and for creating a session (deleted
after each, untimed), each side's p50 and p99 and A/B of the p50s. PAIR_MEASURES picks
others, comma-separated: any of the spec examples basic, pandas, scipy, plot, session, and
the library fixtures of tests/fixtures/libraries by name (sklearn_pipeline, an ml run)
(default "basic,pandas,session").
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKLOADS = ["basic", "pandas", "scipy", "plot"]
LIBRARIES = REPO / "tests/fixtures/libraries"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command):
    port = free_port()
    server = subprocess.Popen(
        [command[0], "serve", "--listen", f"127.0.0.1:{port}", "--rootfs", os.environ["NSBOX_ROOTFS"],
         "--max-forks", "100000", *command[1:]],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(900):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v1/health")
            if conn.getresponse().read() == b"OK":
                return server, http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        except OSError:
            pass
        time.sleep(0.2)
    server.kill()
    raise SystemExit(f"{' '.join(command)} never became healthy")


def post(conn, code):
    body = json.dumps({"code": code, "lang": "python", "timeout": 30})
    started = time.perf_counter()
    conn.request("POST", "/v1/tools/code", body, {"Content-Type": "application/json"})
    answer = json.loads(conn.getresponse().read())
    took = (time.perf_counter() - started) * 1000
    if answer.get("exit_code") != 0:
        raise SystemExit(f"a run failed: {answer}")
    return took


def create_session(conn):
    started = time.perf_counter()
    conn.request("POST", "/v1/sessions", "{}", {"Content-Type": "application/json"})
    answer = json.loads(conn.getresponse().read())
    took = (time.perf_counter() - started) * 1000
    if "id" not in answer:
        raise SystemExit(f"a session was not created: {answer}")
    conn.request("DELETE", f"/v1/sessions/{answer['id']}")
    conn.getresponse().read()
    return took


def main():
    n, rest = int(sys.argv[1]), sys.argv[2:]
    split = rest.index("--")
    servers = [start(rest[:split]), start(rest[split + 1:])]
    try:
        measures = []
        for name in os.environ.get("PAIR_MEASURES", "basic,pandas,session").split(","):
            if name == "session":
                measures.append(("session create", create_session))
                continue
            path = REPO / f"tests/fixtures/spec/{name}.py" if name in WORKLOADS else LIBRARIES / f"{name}.py"
            if not path.is_file():
                raise SystemExit(f"PAIR_MEASURES: {name!r} is none of {WORKLOADS}, session or {LIBRARIES}")
            code = path.read_text()
            measures.append((name, lambda conn, code=code: post(conn, code)))
        for name, measure in measures:
            times = [[], []]
            for _, conn in servers:  # warm-up
                for _ in range(3):
                    measure(conn)
            for _ in range(n):
                for side, (_, conn) in enumerate(servers):
                    times[side].append(measure(conn))
            a, b = (sorted(t)[len(t) // 2] for t in times)
            a99, b99 = (sorted(t)[min(len(t) - 1, len(t) * 99 // 100)] for t in times)
            print(f"{name}: A p50 {a:.1f} ms p99 {a99:.1f} ms, B p50 {b:.1f} ms p99 {b99:.1f} ms, "
                  f"A/B {a / b:.3f}")
    finally:
        for server, _ in servers:
            server.terminate()
            server.wait()


main()
