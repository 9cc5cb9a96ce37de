#!/usr/bin/env python3
"""Packages on demand (issue 24): a run that imports a cached set against the same run with
the package in the tree, and the time of a first install.

    python3 scripts/bench/packages.py TREE_URL CACHE_URL [RUNS]

TREE_URL is an `nsbox serve` whose tree has tabulate; CACHE_URL one whose tree lacks it and
whose [packages] index has it (scripts/bench-packages.sh starts both). Each server gets the
same request, `libraries: ["tabulate"]`, RUNS times (default 200), taking turns, after
warm-up runs; it prints the p50 and p90 of each and the difference of the p50s. Before
that, CACHE_URL's first requests for tabulate, termcolor and termcolor==2.4.0 (installs,
the last one pinned) are timed.
"""

import json
import statistics
import sys
import time
import urllib.request

CODE = "import tabulate\nprint(tabulate.tabulate([[1, 2]], headers=['a', 'b']))"


def post(url, libraries, code=CODE):
    body = json.dumps({"code": code, "lang": "python", "libraries": libraries}).encode()
    req = urllib.request.Request(url + "/v1/tools/code", body, {"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as resp:
        answer = json.load(resp)
    took = time.perf_counter() - start
    if answer.get("exit_code") != 0:
        sys.exit(f"run failed on {url}: {answer}")
    return took


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    tree, cache = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    # Unpinned: one pass of pip; pinned: resolved, then installed with --require-hashes.
    for spec in ("tabulate", "termcolor", "termcolor==2.4.0"):
        took = post(cache, [spec], f"import {spec.split('==')[0]}")
        print(f"first install of {spec}: {took * 1000:.0f} ms (request wall time, install and run)")
    for _ in range(10):
        post(tree, ["tabulate"])
        post(cache, ["tabulate"])
    times = {tree: [], cache: []}
    for _ in range(runs):
        for url in (tree, cache):
            times[url].append(post(url, ["tabulate"]))
    for label, url in (("in the tree", tree), ("from the cache", cache)):
        t = times[url]
        print(f"{label:15} p50 {statistics.median(t) * 1000:7.2f} ms  p90 {pct(t, 0.9) * 1000:7.2f} ms  ({len(t)} runs)")
    diff = (statistics.median(times[cache]) - statistics.median(times[tree])) * 1000
    print(f"cached minus tree, p50: {diff:+.2f} ms (issue 24's target: at most +5 ms)")


main()
