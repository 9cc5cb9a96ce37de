#!/usr/bin/env bash
# The egress door's throughput (issue 24): a 50 MB download from a local upstream on
# 127.0.0.2, directly on the host and from inside a run through the door (absolute-form
# and CONNECT), 5 downloads each, medians, alternated for ROUNDS rounds. As root:
#
#   sudo scripts/bench-egress.sh        (ROUNDS=3; needs target/release built and NSBOX_ROOTFS)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
ROOTFS=${NSBOX_ROOTFS:?set NSBOX_ROOTFS to the root filesystem}
PORT_UP=${PORT_UP:-18777}
PORT_API=${PORT_API:-18780}
dir=$(mktemp -d)
trap 'kill "${up_pid:-}" "${api_pid:-}" 2>/dev/null || true; rm -rf "$dir"' EXIT
head -c 52428800 /dev/urandom >"$dir/big.bin"
python3 -m http.server "$PORT_UP" --bind 127.0.0.2 --directory "$dir" >/dev/null 2>&1 &
up_pid=$!
cat >"$dir/nsbox.toml" <<TOML
[egress]
allow = ["upstream.test:$PORT_UP"]
allow_ips = ["127.0.0.2"]
max_download_mib = 4096
max_connections = 1000
[egress.hosts]
"upstream.test" = "127.0.0.2"
TOML
target/release/nsbox serve --listen "127.0.0.1:$PORT_API" --rootfs "$ROOTFS" \
    --config "$dir/nsbox.toml" --scanner off >"$dir/nsbox.log" 2>&1 &
api_pid=$!
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT_API/v1/health" >/dev/null && break; sleep 1; done
for round in $(seq 1 "$ROUNDS"); do
    direct=$(NSBOX_BENCH_HOST=127.0.0.2 NSBOX_BENCH_PORT=$PORT_UP python3 scripts/bench/egress_download.py)
    door=$(python3 - "$PORT_API" "$PORT_UP" <<'PY'
import json, sys, urllib.request
api, up = sys.argv[1], sys.argv[2]
code = open("scripts/bench/egress_download.py").read().replace("18777", up)
req = urllib.request.Request(f"http://127.0.0.1:{api}/v1/tools/code",
                             data=json.dumps({"code": code, "lang": "python", "timeout": 200}).encode(),
                             headers={"Content-Type": "application/json"})
r = json.load(urllib.request.urlopen(req, timeout=300))
print(r["stdout"].strip().replace("\n", " | ") or r["stderr"][-400:])
PY
)
    echo "round $round: $direct | $door"
done
