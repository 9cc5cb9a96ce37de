#!/usr/bin/env bash
# Streamed output (SSE): how soon a client sees the first line of a run that prints, sleeps
# and prints again (`print(1, flush=True); time.sleep(S); print(2)`), against the plain
# request, which answers only when the run is over (the baseline). Sequential requests on a
# warm server; prints p50/p99 of the time to the first `stdout` event, of the stream's end,
# and of the plain answer, and throughput (runs/s) of each.
#
#   sudo scripts/bench-sse.sh          (as root; builds what is missing; about a minute)
#
# Environment: BENCH_SSE_N (runs of each kind, default 20), BENCH_SSE_SLEEP (seconds the
# code sleeps, default 0.5), NSBOX_BIN (default target/release/nsbox, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_SSE_N:-20}
SLEEP=${BENCH_SSE_SLEEP:-0.5}
say() { printf '[bench-sse %s] %s\n' "$(date +%T)" "$*" >&2; }
[ "$(id -u)" = 0 ] || { say "run as root: nsbox creates namespaces and cgroups"; exit 1; }

rootfs=$(scripts/build-rootfs.sh | tail -n 1)
bin=${NSBOX_BIN:-target/release/nsbox}
if [ -z "${NSBOX_BIN:-}" ]; then
    cargo build --locked --release >&2
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp -t nsbox-bench-sse.XXXXXX)
"$bin" serve --listen "127.0.0.1:$port" --rootfs "$rootfs" >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 300); do
    [ "$(curl -fsS --max-time 2 "http://127.0.0.1:$port/v1/health" 2>/dev/null)" = OK ] && break
    sleep 0.2
done
say "nsbox warm on port $port; $N runs of each kind, the code sleeping ${SLEEP} s"
python3 - "$port" "$N" "$SLEEP" <<'PY'
import http.client, json, statistics, sys, time

port, n, sleep = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
body = json.dumps({"code": f"import time\nprint(1, flush=True)\ntime.sleep({sleep})\nprint(2)\n", "lang": "python"})

def streamed():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    t = time.monotonic()
    c.request("POST", "/v1/tools/code", body, {"Content-Type": "application/json", "Accept": "text/event-stream"})
    r = c.getresponse()
    first = None
    event = None
    for raw in r:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
            if event == "stdout" and first is None:
                first = time.monotonic() - t
        if line.startswith("data: ") and event == "result":
            assert json.loads(line[6:])["stdout"] == "1\n2\n"
            break
    end = time.monotonic() - t
    c.close()
    return first, end

def plain():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    t = time.monotonic()
    c.request("POST", "/v1/tools/code", body, {"Content-Type": "application/json"})
    assert json.loads(c.getresponse().read())["stdout"] == "1\n2\n"
    c.close()
    return time.monotonic() - t

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000

# Interleaved, so both kinds see the same machine.
firsts, ends, plains = [], [], []
for _ in range(n):
    f, e = streamed()
    firsts.append(f); ends.append(e)
    plains.append(plain())
print(f"{'measure':34} {'p50 ms':>8} {'p99 ms':>8} {'runs/s':>7}")
for name, xs, whole in (("SSE: first stdout event", firsts, False), ("SSE: result event (run over)", ends, True), ("plain answer (baseline)", plains, True)):
    rate = f"{1 / statistics.mean(xs):7.2f}" if whole else f"{'-':>7}"
    print(f"{name:34} {pct(xs, 50):8.1f} {pct(xs, 99):8.1f} {rate}")
print(f"first event at {statistics.median(firsts) / statistics.median(plains):.1%} of the plain answer's time (p50)")
PY
