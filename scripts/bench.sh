#!/usr/bin/env bash
# The warm-path benchmark (issue 7): nsbox warm vs nsbox cold vs a bubblewrap cold sandbox,
# for the spec's four examples, plus the memory of all nsbox processes. One command:
#
#   sudo scripts/bench.sh            (as root; about 3 to 4 minutes on a 2-core machine)
#
# It builds what is missing (root filesystem, release binary), installs wrk and bubblewrap
# from Debian's packages when missing, starts nsbox warm and cold on free loopback ports,
# checks every example's full response on each server before loading it, and prints one
# table. Settings (environment):
#   BENCH_WARM_SECONDS  wrk duration per warm measurement          (default 5)
#   BENCH_COLD_SECONDS  wrk duration per cold measurement          (default 6)
#   BENCH_COLD_C8_WORKLOADS  cold path at concurrency 8 for these  (default "basic pandas";
#                            "" skips it)
#   BENCH_COLD_C8_SECONDS    wrk duration for those                (default 10)
#   BENCH_BWRAP_N       bwrap runs for basic                       (default 20)
#   BENCH_BWRAP_N_HEAVY bwrap runs for pandas, scipy, plot         (default 8)
#   BENCH_MEM_SECONDS   pandas c8 load while sampling memory       (default 4)
#   BENCH_WORKLOADS     subset, e.g. "basic pandas"                (default all four)
#   BENCH_AGENT_WORKLOADS  the agent pattern for these             (default "basic pandas";
#                          "" skips it): BENCH_AGENT_N requests one at a time with
#                          BENCH_AGENT_PAUSE_MS between them, then as many back to back
#   BENCH_AGENT_N       (default 40)   BENCH_AGENT_PAUSE_MS (default 200)
#   BENCH_COLD          0 skips the cold server                    (default 1)
#   BENCH_RESULTS_N     notebook results (issue 23): pairs of the same work with and
#                       without `"results": true`, interleaved on the warm server, this many
#                       of each (default 150, as scripts/bench-results.sh; 0 skips):
#                       scripts/bench/results.py
#   BENCH_NSBOX         a directory with a build's nsbox and libnsbox_sandbox.so to measure
#                       instead of building target/release (default: build)
#   BENCH_BASELINE      a directory with another build's nsbox and libnsbox_sandbox.so:
#                       a second warm server ("base") from it is measured beside this
#                       build's, interleaved (seq, agent, c8), so a change is compared
#                       with its baseline on the same machine at the same moment. The cgroup
#                       attach lock is the kernel's, shared by both servers: a change to how it
#                       is kept (AttachKeeper) helps the baseline too, so compare such a change
#                       with two runs, one build alone in each.
#   BENCH_BASELINE_ARGS extra `nsbox serve` arguments for the baseline server only, e.g.
#                       "--pool-size 0" with BENCH_BASELINE=target/release: one build with
#                       and without a setting, measured the same way
# The servers log each run's phases (RUST_LOG=info,nsbox::phases=debug: the supervisor's
# start, cgroup, attach, run, verdict, reply and teardown times) and the table gives their p50.
# wrk's raw output, the server logs and results.jsonl stay in the printed work directory.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

WARM_S=${BENCH_WARM_SECONDS:-5}
COLD_S=${BENCH_COLD_SECONDS:-6}
COLD_C8_WORKLOADS=${BENCH_COLD_C8_WORKLOADS-basic pandas}
COLD_C8_S=${BENCH_COLD_C8_SECONDS:-10}
BWRAP_N=${BENCH_BWRAP_N:-20}
BWRAP_N_HEAVY=${BENCH_BWRAP_N_HEAVY:-8}
MEM_S=${BENCH_MEM_SECONDS:-4}
WORKLOADS=${BENCH_WORKLOADS:-basic pandas scipy plot}
AGENT_WORKLOADS=${BENCH_AGENT_WORKLOADS-basic pandas}
AGENT_N=${BENCH_AGENT_N:-40}
AGENT_PAUSE_MS=${BENCH_AGENT_PAUSE_MS:-200}
COLD=${BENCH_COLD:-1}
BASELINE=${BENCH_BASELINE:-}
read -r -a BASELINE_ARGS <<<"${BENCH_BASELINE_ARGS:-}"

say() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: nsbox creates namespaces and cgroups"

work=$(mktemp -d /tmp/nsbox-bench.XXXXXX)
results=$work/results.jsonl
: >"$results"
bench_py=(python3 "$repo/scripts/bench/bench.py")

exec 8>&2
server_pids=()
child=
# bg_wait CMD...: runs CMD as a background job and waits for it, so that a signal to this script
# is handled at once (bash defers traps until a foreground command ends) and the trap can
# stop CMD too.
bg_wait() {
	local rc=0
	"$@" &
	child=$!
	wait "$child" || rc=$?
	child=
	return "$rc"
}
cleanup() {
	local rc=$?
	[ -n "$child" ] && kill -TERM "$child" 2>/dev/null || true
	for pid in "${server_pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${server_pids[@]}"; do
		for _ in $(seq 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
	done
	[ -n "${sampler_pid:-}" ] && kill "$sampler_pid" 2>/dev/null || true
	# fd 8 is the script's own stderr: a trap can fire inside a redirected command.
	[ "$rc" = 0 ] || say "exit $rc; logs and raw results in $work" 2>&8
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== nsbox benchmark $(date -u +%FT%TZ)"
echo "kernel $(uname -r), nproc $(nproc), load average $(cut -d' ' -f1-3 /proc/loadavg)"
# CPU calibration: machines of this kind differ up to threefold in speed, so figures from
# two machines compare only beside the time of the same fixed work on each.
calibrate() {
	python3 -c 'import time
t = time.perf_counter()
n = 0
for i in range(10_000_000):
    n += i
print(f"{time.perf_counter() - t:.2f} s")'
}
echo "cpu calibration: a 10,000,000-step pure-Python loop (host python3) took $(calibrate)"
# The agent pattern's calibration: how slowly this host wakes a process after a pause.
echo "wake-up calibration: a round trip between two processes: $(python3 scripts/bench/bench.py wake "$AGENT_PAUSE_MS")"
echo "settings: warm ${WARM_S}s, cold ${COLD_S}s (cold server: ${COLD}), cold c8 ${COLD_C8_S}s for '${COLD_C8_WORKLOADS}', bwrap n=${BWRAP_N}/${BWRAP_N_HEAVY}, memory load ${MEM_S}s, agent n=${AGENT_N} pause ${AGENT_PAUSE_MS} ms for '${AGENT_WORKLOADS}'"
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)')"

# ---- tools, root filesystem, binary
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
	say "installing ${missing[*]} from Debian's packages"
	apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
rootfs=${NSBOX_ROOTFS:-$(bash scripts/build-rootfs.sh | tail -n 1)}
[ -x "$rootfs/usr/bin/python3" ] || die "no python3 in root filesystem $rootfs"
say "root filesystem $rootfs"
if [ -n "${BENCH_NSBOX:-}" ]; then
	# A build made earlier (a directory with nsbox and libnsbox_sandbox.so side by side).
	nsbox=$BENCH_NSBOX/nsbox
	[ -x "$nsbox" ] && [ -f "$BENCH_NSBOX/libnsbox_sandbox.so" ] || die "BENCH_NSBOX=$BENCH_NSBOX: no nsbox and libnsbox_sandbox.so there"
	say "nsbox from $BENCH_NSBOX (not built)"
else
	say "cargo build --release --locked"
	cargo build --release --locked >"$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; die "build"; }
	nsbox=$repo/target/release/nsbox
	[ -f "$repo/target/release/libnsbox_sandbox.so" ] || die "target/release/libnsbox_sandbox.so is missing (the warm path loads it)"
fi
echo "wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'), $(bwrap --version), rootfs $(basename "$rootfs")"

"${bench_py[@]}" bodies "$work/bodies"

# ---- servers
# start_server NAME ARGS...: starts nsbox on 127.0.0.1:0, waits for /v1/health, sets $url
# and $server_pid. Both servers run for the whole benchmark (an idle one costs no CPU).
start_server() {
	local name=$1
	shift
	local log=$work/server-$name.log
	RUST_LOG=info,nsbox::phases=debug "${server_bin:-$nsbox}" serve --listen 127.0.0.1:0 --rootfs "$rootfs" \
		--max-running 8 --max-queue 256 "$@" >"$log" 2>&1 &
	server_pid=$!
	server_pids+=("$server_pid")
	local addr="" i
	for i in $(seq 300); do
		kill -0 "$server_pid" 2>/dev/null || { tail -20 "$log" >&2; die "nsbox $name exited at start"; }
		addr=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's|.*http://||') || true
		[ -n "$addr" ] && break
		sleep 0.1
	done
	[ -n "$addr" ] || die "nsbox $name never printed its address"
	url=http://$addr
	for i in $(seq 1200); do
		curl -fsS -o /dev/null --max-time 2 "$url/v1/health" 2>/dev/null && break
		kill -0 "$server_pid" 2>/dev/null || { tail -20 "$log" >&2; die "nsbox $name died before ready"; }
		sleep 0.1
	done
	curl -fsS -o /dev/null --max-time 2 "$url/v1/health" || die "nsbox $name not ready after 120 s"
	say "nsbox $name ready at $url (pid $server_pid): $(curl -fsS --max-time 2 "$url/v1/status" | head -c 300)"
}

# url=URL load MODE CONC WORKLOAD SECONDS: one wrk measurement, recorded in results.jsonl.
load() {
	local mode=$1 conc=$2 w=$3 secs=$4 log=$work/server-$1.log threads conns
	case $conc in
	seq) threads=1 conns=1 ;;
	c8 | c8mem) threads=2 conns=8 ;;
	esac
	local out=$work/wrk-$mode-$conc-$w.txt start end
	start=$(stat -c %s "$log")
	BENCH_BODY=$work/bodies/$w.json BENCH_EXPECT=$(cat "$work/bodies/$w.expect") \
		BENCH_LABEL="$mode $conc $w" \
		bg_wait timeout $((secs + 90)) wrk -t"$threads" -c"$conns" -d"${secs}s" --timeout 60s --latency \
		-s "$repo/scripts/bench/post.lua" "$url/v1/tools/code" >"$out" 2>&1 ||
		{ cat "$out" >&2; die "wrk $mode $conc $w"; }
	sleep 0.3 # the last runs' log lines
	end=$(stat -c %s "$log")
	"${bench_py[@]}" record "$mode" "$conc" "$w" "$out" "$log" "$start" "$end" >>"$results" ||
		die "$mode $conc $w: measurement rejected (see $out)"
	say "$("${bench_py[@]}" summary "$results")"
}

# warm_up URL N: N sequential requests of every workload, so no measurement pays a first-run cost.
warm_up() {
	local w
	for w in $WORKLOADS; do
		for _ in $(seq "$2"); do
			curl -fsS -o /dev/null --max-time 60 -H 'Content-Type: application/json' \
				--data-binary "@$work/bodies/$w.json" "$1/v1/tools/code" || die "warm-up $w"
		done
	done
}

# mem_record WHAT: turns the JSON on stdin into a memory record.
mem_record() {
	python3 -c 'import json,sys; r=json.load(sys.stdin); r.update(kind="mem", what=sys.argv[1]); r.update(json.loads(sys.argv[2])); print(json.dumps(r))' "$1" "${2:-{\}}" >>"$results"
}

# ---- every server up and checked before anything is measured
start_server warm
warm_pid=$server_pid warm_url=$url
modes=warm
say "checking every example's full response (warm)"
"${bench_py[@]}" check "$warm_url" >&2 || die "nsbox warm gives wrong answers; not benchmarking it"
warm_up "$warm_url" 3
sleep 1
# Idle memory before any other server starts: PSS divides a page among every process on the
# machine that maps it, so a second server's zygotes, mapping the same libraries, would take
# half of each file page off this one's figure.
"${bench_py[@]}" pss "$warm_pid" | mem_record idle-warm
say "idle warm memory (the only server running): $(tail -1 "$results")"
if [ -n "$BASELINE" ]; then
	[ -x "$BASELINE/nsbox" ] && [ -f "$BASELINE/libnsbox_sandbox.so" ] || die "BENCH_BASELINE=$BASELINE: no nsbox and libnsbox_sandbox.so there"
	server_bin=$BASELINE/nsbox start_server base "${BASELINE_ARGS[@]}"
	base_url=$url
	modes="warm base"
fi
if [ "$COLD" = 1 ]; then
	start_server cold --mode cold
	cold_pid=$server_pid cold_url=$url
	modes="$modes cold"
else
	COLD_C8_WORKLOADS=
fi
for mode in $modes; do
	case $mode in warm) continue ;; base) url=$base_url ;; cold) url=$cold_url ;; esac
	say "checking every example's full response ($mode)"
	"${bench_py[@]}" check "$url" >&2 || die "nsbox $mode gives wrong answers; not benchmarking it"
done
[ -n "$BASELINE" ] && warm_up "$base_url" 3
[ "$COLD" = 1 ] && warm_up "$cold_url" 1
sleep 1
[ "$COLD" = 1 ] && "${bench_py[@]}" pss "$cold_pid" | mem_record idle-cold

# ---- sequential latency, interleaved per workload so that warm, cold and bubblewrap see the
# same machine (it is shared and noisy: the ratios of one run are what count)
for w in $WORKLOADS; do
	url=$warm_url load warm seq "$w" "$WARM_S"
	[ -n "$BASELINE" ] && url=$base_url load base seq "$w" "$WARM_S"
	[ "$COLD" = 1 ] && url=$cold_url load cold seq "$w" "$COLD_S"
	n=$BWRAP_N_HEAVY
	[ "$w" = basic ] && n=$BWRAP_N
	bg_wait timeout 600 "${bench_py[@]}" bwrap "$rootfs" "$w" "$n" >>"$results" || die "bwrap baseline $w"
	say "$(tail -1 "$results")"
	if [[ " $AGENT_WORKLOADS " == *" $w "* ]]; then
		bg_wait timeout 600 "${bench_py[@]}" agent "$warm_url" "$w" "$AGENT_N" "$AGENT_PAUSE_MS" "$work/server-warm.log" warm >>"$results" ||
			die "agent pattern $w"
		say "agent: $(tail -1 "$results" | head -c 400)"
		if [ -n "$BASELINE" ]; then
			bg_wait timeout 600 "${bench_py[@]}" agent "$base_url" "$w" "$AGENT_N" "$AGENT_PAUSE_MS" "$work/server-base.log" base >>"$results" ||
				die "agent pattern $w (base)"
			say "agent (base): $(tail -1 "$results" | head -c 400)"
		fi
	fi
done

# ---- concurrency 8
for w in $WORKLOADS; do
	url=$warm_url load warm c8 "$w" "$WARM_S"
	[ -n "$BASELINE" ] && url=$base_url load base c8 "$w" "$WARM_S"
done
# A cold scipy or plot run costs 1 to 2 s of CPU: 8 at once on 2 cores take longer than a
# short wrk window, so by default only basic and pandas are loaded cold at concurrency 8.
for w in $COLD_C8_WORKLOADS; do
	url=$cold_url load cold c8 "$w" "$COLD_C8_S"
done

# ---- notebook results: what asking for them costs, pairs interleaved one at a time on the
# warm server (and basic on the baseline's, when there is one)
RESULTS_N=${BENCH_RESULTS_N:-150}
if [ "$RESULTS_N" -gt 0 ]; then
	say "notebook results: $RESULTS_N of each pair"
	bg_wait timeout 900 python3 "$repo/scripts/bench/results.py" "$warm_url" "${base_url:-}" "$RESULTS_N" \
		"$repo/tests/fixtures/spec/plot.py" >"$work/results-pairs.md" || die "notebook results pairs"
fi

# ---- memory under load (its own pass: sampling costs CPU that the measurements above must not pay)
if [[ " $WORKLOADS " == *" pandas "* ]]; then
	say "memory under pandas c8 load (sampling every 100 ms)"
	rm -f "$work/stop"
	"${bench_py[@]}" sample "$warm_pid" "$work/mem-load.json" "$work/stop" $((MEM_S + 30)) &
	sampler_pid=$!
	sleep 0.3
	url=$warm_url load warm c8mem pandas "$MEM_S"
	touch "$work/stop"
	wait "$sampler_pid" || true
	sampler_pid=
	mem_record load-warm-pandas-c8 <"$work/mem-load.json"
	say "peak under load: $(tail -1 "$results")"

	say "memory with 8 pandas runs held open at once"
	rm -f "$work/stop"
	sleep 1
	"${bench_py[@]}" sample "$warm_pid" "$work/mem-hold.json" "$work/stop" 60 &
	sampler_pid=$!
	bg_wait timeout 90 "${bench_py[@]}" hold "$warm_url" pandas 8 3 || die "held pandas runs failed"
	touch "$work/stop"
	wait "$sampler_pid" || true
	sampler_pid=
	mem_record hold-warm-pandas-8 '{"runs": 8}' <"$work/mem-hold.json"
	say "peak with 8 held runs: $(tail -1 "$results")"
fi

echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); cpu calibration again: $(calibrate)"
[ -n "$BASELINE" ] && echo "base: $BASELINE/nsbox ${BASELINE_ARGS[*]}"
echo
"${bench_py[@]}" report "$results"
if [ -s "$work/results-pairs.md" ]; then
	echo
	echo "notebook results (sequential, one keep-alive connection, client side):"
	cat "$work/results-pairs.md"
fi
echo
echo "raw results, wrk output and server logs: $work"
