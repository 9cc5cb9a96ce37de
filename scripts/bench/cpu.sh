#!/usr/bin/env bash
# Where the CPU of runs at concurrency 8 goes, per request, by process and by activity:
#
#   scripts/bench/cpu.sh [WORKLOAD [SECONDS]]     WORKLOAD: basic, pandas, scipy, plot (default basic)
#
# Throughput at concurrency 8 is bound by CPU, so this is its phase log: the same load as
# bench.sh's c8 (wrk -t2 -c8) recorded with `perf record -a -g` (cpu-clock, which works in
# VMs without a PMU, plus fork events), each sample given to the process it hit (server,
# spawner, supervisors, zygotes, each run's init and Python process, kernel threads) and to
# what it did (fork, page faults, exit, namespaces, cgroups, mounts; see cpu_roles.py).
#
# Settings (environment):
#   CPU_NSBOX     a directory with a build's nsbox and libnsbox_sandbox.so (default: target/release,
#                 built when missing)
#   CPU_BASELINE  another such directory: measured too, alternating with CPU_NSBOX, so a change is
#                 compared with its baseline on the same machine at the same moment
#   CPU_ROUNDS    recordings per build (default 2)
#   CPU_ARGS      extra `nsbox serve` arguments for every server
#   CPU_BASELINE_ARGS  extra `nsbox serve` arguments for the baseline's servers only, e.g.
#                 "--warm-templates base,ml" with CPU_BASELINE=target/release: one build with
#                 and without a setting
# Needs root and perf (Debian's linux-perf, installed when missing). Each recording's files
# stay in the printed work directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
w=${1:-basic}
secs=${2:-8}
rounds=${CPU_ROUNDS:-2}
hz=2000
[ -f "tests/fixtures/spec/$w.py" ] || { echo "no example $w" >&2; exit 2; }
command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf; } >&2
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; } >&2
rootfs=${NSBOX_ROOTFS:-$(bash scripts/build-rootfs.sh | tail -n 1)}
if [ -z "${CPU_NSBOX:-}" ]; then
	[ -x target/release/nsbox ] || cargo build --release --locked >&2
	CPU_NSBOX=target/release
fi
work=$(mktemp -d /tmp/nsbox-cpu.XXXXXX)
python3 scripts/bench/bench.py bodies "$work/bodies"
read -r -a extra <<<"${CPU_ARGS:-}"
read -r -a base_extra <<<"${CPU_BASELINE_ARGS:-}"

server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null || true' EXIT

# record LABEL DIR N [ARGS...]: one server of that build, warmed, then one recorded c8 load.
record() {
	local label=$1 dir=$2 round=$3 out=$work/$1-$3 port
	shift 3
	mkdir -p "$out"
	port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	"$dir/nsbox" serve --listen "127.0.0.1:$port" --rootfs "$rootfs" "${extra[@]}" "$@" >"$out/server.log" 2>&1 &
	server=$!
	local url=http://127.0.0.1:$port
	for _ in $(seq 1200); do
		curl -fsS -o /dev/null --max-time 2 "$url/v1/health" 2>/dev/null && break
		sleep 0.1
	done
	# Warm: the ready sandboxes built, the first runs' one-time costs paid.
	sleep 3
	BENCH_BODY="$work/bodies/$w.json" wrk -t2 -c8 -d3s -s scripts/bench/post.lua "$url/v1/tools/code" >/dev/null 2>&1
	sleep 1
	# The process list is read once perf records (its workload starts after the events are
	# set up): a process forked between a list read before and perf's start would have
	# neither a line there nor a fork event (a zygote's successor warming up, and its runs).
	BENCH_BODY="$work/bodies/$w.json" perf record -F "$hz" -a -g -e cpu-clock -e sched:sched_process_fork \
		-o "$out/perf.data" -- sh -c 'ps -eo pid=,ppid=,comm= >"$1"; shift; exec "$@"' sh "$out/ps.txt" \
		wrk -t2 -c8 -d"${secs}s" -s scripts/bench/post.lua "$url/v1/tools/code" \
		>"$out/wrk.txt" 2>"$out/perf.err"
	ps -eo pid=,ppid=,comm= >>"$out/ps.txt"
	kill "$server"
	wait "$server" 2>/dev/null || true
	local pid=$server
	server=
	local result requests
	result=$(grep '^BENCHRESULT ' "$out/wrk.txt" | cut -d' ' -f2-)
	requests=$(python3 -c 'import json, sys; r = json.loads(sys.argv[1]); assert r["bad"] == 0, r; print(r["requests"])' "$result")
	perf script -i "$out/perf.data" -F comm,pid,tid,event,trace,ip,sym >"$out/script.txt" 2>/dev/null
	echo "== $label, round $round: $(python3 -c 'import json, sys; r = json.loads(sys.argv[1]); print("%.1f runs/s, p50 %.1f ms" % (r["rps"], r["p50_ms"]))' "$result"); load average $(cut -d' ' -f1-3 /proc/loadavg)"
	python3 scripts/bench/cpu_roles.py "$out/script.txt" "$pid" "$out/ps.txt" "$requests" "$hz"
}

echo "$w at concurrency 8 for ${secs}s per recording, $rounds round(s); $(nproc) CPUs"
for r in $(seq "$rounds"); do
	[ -n "${CPU_BASELINE:-}" ] && record base "$CPU_BASELINE" "$r" "${base_extra[@]}"
	record nsbox "$CPU_NSBOX" "$r"
done
echo "recordings: $work"
