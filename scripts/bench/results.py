"""The measurement behind scripts/bench-results.sh: pairs of requests that do the same work
with and without notebook results, interleaved one at a time, client-side latency."""

import http.client
import json
import sys
import time
import urllib.parse

url, base_url, n, plot_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
PLOT = open(plot_file).read()
FRAME = "import pandas as pd\ndf = pd.DataFrame({'a': range(100), 'b': [i * 0.5 for i in range(100)]})\n"

# (name, server, body, what the answer must hold)
KINDS = [
    ("describe, print", url, {"code": FRAME + "print(df.describe())"}, lambda v: "count" in v["stdout"]),
    ("describe, results", url, {"code": FRAME + "df.describe()", "results": True},
     lambda v: v["results"][0]["data"]["text/markdown"].startswith("|")),
    ("plot", url, {"code": PLOT}, lambda v: len(v["plots"]) == 1),
    ("plot, results", url, {"code": PLOT, "results": True},
     lambda v: "application/vnd.nsbox.chart+json" in v["results"][-1]["data"]),
    ("basic", url, {"code": "print(2 + 2)"}, lambda v: v["stdout"] == "4\n" and "results" not in v),
]
if base_url:
    KINDS.append(("basic, baseline build", base_url, {"code": "print(2 + 2)"}, lambda v: v["stdout"] == "4\n"))

conns = {}


def post(server, body):
    parsed = urllib.parse.urlparse(server)
    conn = conns.get(server)
    if conn is None:
        conn = conns[server] = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    payload = json.dumps({"lang": "python", "timeout": 30, **body})
    started = time.perf_counter()
    conn.request("POST", "/v1/tools/code", payload, {"Content-Type": "application/json"})
    raw = conn.getresponse().read()
    return time.perf_counter() - started, json.loads(raw)


times = {k[0]: [] for k in KINDS}
for name, server, body, ok in KINDS:  # warm-up, and each answer checked once
    _, v = post(server, body)
    assert ok(v), (name, v)
for _ in range(n):
    for name, server, body, _ in KINDS:
        took, _ = post(server, body)
        times[name].append(took * 1000)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * (len(xs) - 1)))]


print("| kind | p50 ms | p99 ms | runs/s (sequential) |")
print("|---|---|---|---|")
for name, *_ in KINDS:
    xs = times[name]
    print(f"| {name} | {pct(xs, 0.5):.1f} | {pct(xs, 0.99):.1f} | {1000 * len(xs) / sum(xs):.1f} |")
d = pct(times["describe, results"], 0.5) - pct(times["describe, print"], 0.5)
p = pct(times["plot, results"], 0.5) / pct(times["plot"], 0.5) - 1
print(f"\ndescribe with results: {d:+.1f} ms p50 (bound +3 ms); plot with results: {100 * p:+.1f} % p50 (bound +5 %)")
if base_url:
    b = pct(times["basic"], 0.5) / pct(times["basic, baseline build"], 0.5) - 1
    print(f"basic without results against the baseline build: {100 * b:+.1f} % p50")
