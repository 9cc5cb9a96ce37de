#!/usr/bin/env bash
# Where a warm (or cold) run's time goes, phase by phase, from kernel timestamps:
#
#   scripts/bench/profile.sh [WORKLOAD [N]]      WORKLOAD: basic, pandas, scipy, plot (default basic)
#
# Starts its own nsbox (PROFILE_MODE=warm|cold, default warm), sends N sequential requests of
# the spec example (default 15, 100 ms apart, like wrk -c1), records them with
# `perf trace -a` (syscalls plus sched_process_fork; no ptrace, so runs keep their speed) and
# prints the median duration of each phase of a run (see timeline.py): of a run served by a
# ready sandbox (the pool) and of the builds of ready sandboxes, or, without a pool, of a
# run whose sandbox is built at its request. Needs root and perf (Debian's linux-perf).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
w=${1:-basic}
n=${2:-15}
mode=${PROFILE_MODE:-warm}
[ -f "tests/fixtures/spec/$w.py" ] || { echo "no example $w" >&2; exit 2; }
command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf; } >&2
rootfs=${NSBOX_ROOTFS:-$(bash scripts/build-rootfs.sh | tail -n 1)}
[ -x target/release/nsbox ] || cargo build --release --locked >&2
work=$(mktemp -d /tmp/nsbox-profile.XXXXXX)
python3 scripts/bench/bench.py bodies "$work/bodies"

RUST_LOG=info target/release/nsbox serve --listen 127.0.0.1:0 --rootfs "$rootfs" --mode "$mode" >"$work/server.log" 2>&1 &
server=$!
perf_pid=
trap 'kill $server 2>/dev/null || true; [ -n "$perf_pid" ] && kill $perf_pid 2>/dev/null || true; wait 2>/dev/null || true' EXIT
url=
for _ in $(seq 300); do
	url=$(grep -o 'listening on http://[0-9.:]*' "$work/server.log" | head -1 | sed 's|.*http://|http://|') || true
	[ -n "$url" ] && break
	sleep 0.1
done
[ -n "$url" ] || { cat "$work/server.log" >&2; exit 1; }
for _ in $(seq 1200); do
	curl -fsS -o /dev/null --max-time 2 "$url/v1/health" 2>/dev/null && break
	sleep 0.1
done
post() { curl -fsS -o /dev/null --max-time 60 -H 'Content-Type: application/json' --data-binary "@$work/bodies/$w.json" "$url/v1/tools/code"; }
for _ in 1 2 3; do post; done

# The server's tree now: spawner (its exe child), templates (python whose parent is not python).
known=$(python3 - "$server" <<'EOF'
import sys
sys.path.insert(0, "scripts/bench")
import bench
import os
pids = bench.tree(int(sys.argv[1]))
tids = [int(t) for p in pids for t in os.listdir(f"/proc/{p}/task") if os.path.isdir(f"/proc/{p}/task")]
print(",".join(map(str, sorted(set(pids + tids)))))
EOF
)
spawner=$(pgrep -P "$server" -x exe | head -1)
zygotes=$(for p in ${known//,/ }; do
	c=$(cat /proc/$p/comm 2>/dev/null) || continue
	pp=$(awk '{print $4}' /proc/$p/stat 2>/dev/null) || continue
	if [[ $c == python* && $(cat /proc/$pp/comm 2>/dev/null) != python* ]]; then echo "$p"; fi
done | paste -sd,)

perf trace -a -e 'clone,write,writev,exit_group,seccomp,mkdir,recvfrom,sendto,sendmsg,prlimit64,sched:sched_process_fork' \
	-o "$work/trace.txt" -- sleep $((n / 2 + 20)) >/dev/null 2>&1 &
perf_pid=$!
sleep 2
t0=$(date +%s.%N)
for _ in $(seq "$n"); do
	post
	sleep 0.1
done
t1=$(date +%s.%N)
kill -INT $perf_pid 2>/dev/null || true
wait $perf_pid 2>/dev/null || true
perf_pid=
echo "nsbox $mode, $w x$n sequential: $(python3 -c "print(round(($t1 - $t0) / $n * 1000 - 100, 1))") ms per request at the client (curl, its own start included); load average $(cut -d' ' -f1-3 /proc/loadavg)"
python3 scripts/bench/timeline.py "$work/trace.txt" "$server" "$spawner" "$zygotes" "$known"
echo "trace and server log: $work"
