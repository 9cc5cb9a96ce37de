#!/usr/bin/env bash
# Notebook results (issue 23): what `"results": true` costs. On one warm server, requests
# interleaved one at a time on one keep-alive connection, each pair doing the same work:
#   describe:  print(df.describe())            against df.describe() as the last line, with results
#   plot:      the spec's plot example         against the same with results (the figure's PNG
#                                              again in `results`, and its chart summary)
#   basic:     print(2 + 2) without results on this build, and on BENCH_BASELINE's build when
#              given (a second server, interleaved): runs that do not ask are unchanged.
# Prints a markdown table of client-side p50/p99 and throughput (sequential), and the
# differences the issue bounds: describe +3 ms p50 at most, plot +5 % at most.
#
#   sudo scripts/bench-results.sh        (as root; builds what is missing; about 2 minutes)
#
# Environment: BENCH_RESULTS_N (requests of each kind, default 150), NSBOX_BIN (default
# target/release/nsbox, built if missing), BENCH_BASELINE (a directory with another build's
# nsbox and libnsbox_sandbox.so), NSBOX_ROOTFS (default: scripts/build-rootfs.sh's).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[bench-results %s] %s\n' "$(date +%T)" "$*" >&2; }
[ "$(id -u)" = 0 ] || { say "run as root: nsbox creates namespaces and cgroups"; exit 1; }

rootfs=${NSBOX_ROOTFS:-$(scripts/build-rootfs.sh | tail -n 1)}
bin=${NSBOX_BIN:-target/release/nsbox}
if [ -z "${NSBOX_BIN:-}" ]; then
	say "cargo build --locked --release"
	cargo build --locked --release >&2
fi
[ -x "$bin" ] || { say "no nsbox binary at $bin"; exit 1; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pids=()
logs=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -f "${logs[@]}"' EXIT
# start PROGRAM: a server of PROGRAM, its URL in $started (not echoed: a command
# substitution's subshell would keep the pid from the trap that stops it).
start() {
	local program=$1 port log
	port=$(free_port)
	log=$(mktemp -t nsbox-bench-results.XXXXXX)
	"$program" serve --listen "127.0.0.1:$port" --rootfs "$rootfs" --max-forks 100000 >"$log" 2>&1 &
	pids+=($!)
	logs+=("$log")
	for _ in $(seq 600); do
		if [ "$(curl -fsS --max-time 2 "http://127.0.0.1:$port/v1/health" 2>/dev/null)" = OK ]; then
			started="http://127.0.0.1:$port"
			return
		fi
		sleep 0.2
	done
	tail -20 "$log" >&2
	say "nsbox at $program never became ready"
	exit 1
}
start "$bin"
url=$started
base_url=
if [ -n "${BENCH_BASELINE:-}" ]; then
	start "$BENCH_BASELINE/nsbox"
	base_url=$started
fi
say "measuring ${BENCH_RESULTS_N:-150} of each kind"
python3 scripts/bench/results.py "$url" "$base_url" "${BENCH_RESULTS_N:-150}" "$(pwd)/tests/fixtures/spec/plot.py"
