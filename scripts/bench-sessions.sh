#!/usr/bin/env bash
# Sessions (issue 14): how long creating a session takes, and a call in a session that
# already holds a 100,000-row DataFrame (`df.groupby('k').sum()`), against the baseline of
# the same analysis as a plain stateless run, which must build the DataFrame every time.
# Sequential requests on one keep-alive connection to a warm server; prints a markdown table
# of p50/p99, client side (request sent to answer read) and server side (the response's
# `execution_time`, and the run's `wall_ms` from the server log where it logs one).
#
#   sudo scripts/bench-sessions.sh        (as root; builds what is missing; about a minute)
#
# Environment: BENCH_SESSIONS_N (measurements of each kind, default 100), NSBOX_BIN (default
# target/release/nsbox, built if missing), NSBOX_ROOTFS (default: scripts/build-rootfs.sh's).
# Targets from the issue: session create p50 under 15 ms, a call p50 under 10 ms.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_SESSIONS_N:-100}
say() { printf '[bench-sessions %s] %s\n' "$(date +%T)" "$*" >&2; }
[ "$(id -u)" = 0 ] || { say "run as root: nsbox creates namespaces and cgroups"; exit 1; }

rootfs=${NSBOX_ROOTFS:-$(scripts/build-rootfs.sh | tail -n 1)}
bin=${NSBOX_BIN:-target/release/nsbox}
if [ -z "${NSBOX_BIN:-}" ]; then
	say "cargo build --locked --release"
	cargo build --locked --release >&2
fi
[ -x "$bin" ] || { say "no nsbox binary at $bin"; exit 1; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp -t nsbox-bench-sessions.XXXXXX)
# Sessions enough for the measurement's creates (each is deleted before the next).
RUST_LOG=info "$bin" serve --listen "127.0.0.1:$port" --rootfs "$rootfs" >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
ready=
for _ in $(seq 600); do
	kill -0 "$pid" 2>/dev/null || { tail -20 "$log" >&2; say "nsbox exited at start"; exit 1; }
	if [ "$(curl -fsS --max-time 2 "http://127.0.0.1:$port/v1/health" 2>/dev/null)" = OK ]; then
		ready=1
		break
	fi
	sleep 0.2
done
[ -n "$ready" ] || { tail -20 "$log" >&2; say "nsbox not ready after 120 s"; exit 1; }
say "nsbox warm on port $port (pid $pid); $N measurements of each kind"
echo "== nsbox sessions benchmark $(date -u +%FT%TZ)"
echo "kernel $(uname -r), nproc $(nproc), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src crates 2>/dev/null || echo ' (src modified)'), binary $bin"
echo
python3 - "$port" "$N" "$log" <<'PY'
import http.client, json, re, sys, time

port, n, log_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

def request(method, path, body=None, rid=None):
    """One request on the keep-alive connection: (status, parsed body or raw, seconds)."""
    headers = {"Content-Type": "application/json"}
    if rid:
        headers["x-request-id"] = rid
    data = None if body is None else json.dumps(body)
    t = time.perf_counter()
    conn.request(method, path, data, headers)
    resp = conn.getresponse()
    raw = resp.read()
    took = time.perf_counter() - t
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw
    return resp.status, parsed, took

def must(cond, what, answer):
    if not cond:
        sys.exit(f"bench-sessions: {what}: {str(answer)[:600]}")

def create(rid=None):
    status, body, took = request("POST", "/v1/sessions", {}, rid)
    must(status == 201 and str(body.get("id", "")).startswith("sess_"), "create", (status, body))
    return body["id"], took

def delete(sid):
    status, body, took = request("DELETE", f"/v1/sessions/{sid}")
    must(status == 204, "delete", (status, body))
    return took

ROWS = 100_000
BUILD = (
    "import numpy as np\nimport pandas as pd\n"
    "rng = np.random.default_rng(0)\n"
    f"df = pd.DataFrame({{'k': rng.integers(0, 100, {ROWS}), 'v': rng.random({ROWS}), 'w': rng.random({ROWS})}})\n"
)
GROUPBY = "r = df.groupby('k').sum()\nprint(len(r), round(float(r['v'].sum()), 6))\n"

def run(code, rid, sid=None):
    body = {"code": code, "lang": "python", "timeout": 60}
    if sid:
        body["session_id"] = sid
    status, r, took = request("POST", "/v1/tools/code", body, rid)
    must(status == 200 and r.get("success") and r.get("exit_code") == 0, rid, (status, r))
    if sid:
        must(r.get("session", {}).get("state") == "active", rid, r)
    return r, took

# Warm-up: the first creates and calls pay for page faults no later one does.
for i in range(3):
    sid, _ = create()
    run(BUILD, f"bench-warmup-{i}", sid)
    run(GROUPBY, f"bench-warmup-g{i}", sid)
    delete(sid)
    run(BUILD + GROUPBY, f"bench-warmup-p{i}")

creates, deletes = [], []
for i in range(n):
    sid, took = create(f"bench-create-{i}")
    creates.append(took)
    deletes.append(delete(sid))

sid, _ = create()
r, _ = run(BUILD, "bench-setup-0", sid)
expected = None
calls, call_server, plains, plain_server = [], [], [], []
# Interleaved, so both kinds see the same machine.
for i in range(n):
    r, took = run(GROUPBY, f"bench-call-{i}", sid)
    calls.append(took)
    call_server.append(r["execution_time"])
    expected = expected or r["stdout"]
    must(r["stdout"] == expected and r["stdout"].startswith("100 "), "call output", r)
    r, took = run(BUILD + GROUPBY, f"bench-plain-{i}")
    plains.append(took)
    plain_server.append(r["execution_time"])
    must(r["stdout"] == expected, "plain output (same data, same answer)", r)
status, state, _ = request("GET", f"/v1/sessions/{sid}")
must(status == 200, "session state", state)
delete(sid)

# The server's own times, by request id, where its log has them: a run's wall_ms, a
# session's creation time (`session created ... ms=N`).
walls, created_ms = {}, {}
with open(log_path, errors="replace") as f:
    for line in f:
        m = re.search(r"(bench-(?:call|plain|create)-\d+)", line)
        if not m:
            continue
        w = re.search(r"wall_ms[=\":]+\s*(\d+)", line)
        if w:
            walls[m.group(1)] = int(w.group(1)) / 1000
        c = re.search(r"\bms[=\":]+\s*(\d+)", line)
        if "session created" in line and c:
            created_ms[m.group(1)] = int(c.group(1)) / 1000
call_walls = [walls[k] for k in walls if k.startswith("bench-call-")]
plain_walls = [walls[k] for k in walls if k.startswith("bench-plain-")]
create_server = list(created_ms.values())

def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000

def ms(v):
    return "-" if v is None else f"{v:.1f}"

rows = [
    ("session create (POST /v1/sessions)", creates, create_server, None, "p50 < 15 ms"),
    ("session delete (DELETE /v1/sessions/{id})", deletes, None, None, ""),
    (f"call in a session holding a {ROWS:,}-row DataFrame: groupby().sum()", calls, call_server, call_walls, "p50 < 10 ms"),
    (f"baseline: plain run building the DataFrame, then groupby().sum()", plains, plain_server, plain_walls, ""),
]
print(f"{n} measurements of each, sequential, one keep-alive connection; ms.")
print("server = the response's execution_time (for a create: `session created ... ms=` in the")
print("server log); wall = the run's wall_ms in the server log.")
print()
print("| measure | client p50 | client p99 | server p50 | server p99 | wall p50 | target |")
print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
for name, client, server, wall, target in rows:
    verdict = ""
    if target:
        limit = float(target.split("<")[1].split()[0])
        verdict = f"{target}: client {'met' if pct(client, 50) < limit else 'MISSED'}"
        if server:
            verdict += f", server {'met' if pct(server, 50) < limit else 'MISSED'}"
    print(f"| {name} | {ms(pct(client, 50))} | {ms(pct(client, 99))} | {ms(pct(server or [], 50))} "
          f"| {ms(pct(server or [], 99))} | {ms(pct(wall or [], 50))} | {verdict} |")
print()
speedup = pct(plains, 50) / pct(calls, 50)
print(f"a session call is {speedup:.1f}x faster than rebuilding the DataFrame (client p50); "
      f"session memory after the calls: {state.get('memory_bytes', 0) / 2**20:.1f} MiB "
      f"of {state.get('memory_limit_bytes', 0) / 2**20:.0f} MiB, {state.get('calls')} calls")
PY
