#!/usr/bin/env python3
"""p50 latency of the library snippets (tests/fixtures/libraries/) and the idle memory of a
running nsbox, the numbers behind the warm-template choice in the README.

    python3 scripts/bench/libraries.py URL SERVER_PID [RUNS]

URL is a running `nsbox serve` (e.g. http://127.0.0.1:8091), SERVER_PID its pid (as root:
the PSS of its process tree is read from /proc). Each snippet runs RUNS times (default 20)
one after another, after one unmeasured run; it prints the p50 and p90 of the request's wall
time and of the response's execution_time, then the PSS of the server's process tree, split
by warm template, once the runs are over and the tree is idle again.
"""

import json
import os
import statistics
import sys
import time
import urllib.request

# The spec's pandas example as the reference: what the scientific template's own runs cost.
SNIPPETS = [
    "libraries/excel",
    "libraries/parquet",
    "libraries/sklearn_pipeline",
    "libraries/statsmodels_ols",
    "spec/pandas",
]
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures")


def post(url, code):
    body = json.dumps({"code": code, "lang": "python", "timeout": 60}).encode()
    req = urllib.request.Request(
        url + "/v1/tools/code", body, {"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as resp:
        answer = json.load(resp)
    return time.perf_counter() - start, answer


def children(pid):
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return found


def tree(pid):
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += children(p)
    return seen


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def memory(server_pid):
    """PSS of the whole tree, and of each zygote (argv: python3 -I -B -c PROGRAM TEMPLATE FORKS)."""
    total, zygotes = 0, {}
    for p in tree(server_pid):
        kib = pss_kib(p)
        total += kib
        argv = cmdline(p)
        if len(argv) > 3 and argv[0].endswith(b"python3"):
            name = argv[-3].decode()
            zygotes[name] = zygotes.get(name, 0) + kib
    return total, zygotes


def main():
    url, server_pid = sys.argv[1], int(sys.argv[2])
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    total, zygotes = memory(server_pid)
    print(f"idle PSS before: {total / 1024:.0f} MiB; zygotes: " +
          ", ".join(f"{k} {v / 1024:.0f} MiB" for k, v in sorted(zygotes.items())))
    for name in SNIPPETS:
        with open(os.path.join(FIXTURES, name + ".py")) as f:
            code = f.read()
        _, first = post(url, code)
        assert first["exit_code"] == 0 and first["stderr"] == "", (name, first)
        walls, execs = [], []
        for _ in range(runs):
            wall, answer = post(url, code)
            assert answer["exit_code"] == 0, (name, answer)
            walls.append(wall * 1000)
            execs.append(answer["execution_time"] * 1000)
        q = lambda xs: statistics.quantiles(xs, n=10)
        print(f"{name:28} wall p50 {statistics.median(walls):7.0f} ms  p90 {q(walls)[8]:7.0f} ms"
              f"   execution_time p50 {statistics.median(execs):7.0f} ms")
    time.sleep(2)
    total, zygotes = memory(server_pid)
    print(f"idle PSS after: {total / 1024:.0f} MiB; zygotes: " +
          ", ".join(f"{k} {v / 1024:.0f} MiB" for k, v in sorted(zygotes.items())))


if __name__ == "__main__":
    main()
