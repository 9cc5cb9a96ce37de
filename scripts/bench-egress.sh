#!/usr/bin/env bash
# The egress door's benchmark (issue 24), as root:
#
#   sudo NSBOX_ROOTFS=... [ROUNDS=5] [BENCH_BASELINE=dir] [PAIR_N=100] scripts/bench-egress.sh
#
# - Throughput: a 50 MB download from a local upstream on 127.0.0.2, directly on the host
#   and from inside a run through the door (urllib in absolute form, http.client through a
#   CONNECT tunnel, requests), alternated for ROUNDS rounds, 5 tries each, medians and the
#   ratio direct time / door time (issue 24 wants at least 0.8). The direct download runs
#   the tree's own python3 (chroot into NSBOX_ROOTFS, the host's network), so both sides
#   run the same client code in the same interpreter.
# - requests.get of a small file over HTTPS through the door, from an upstream signed by a
#   CA made here and trusted through `[egress] ca_file`.
# - With BENCH_BASELINE (a directory with another build's nsbox and libnsbox_sandbox.so, as
#   for scripts/bench.sh): runs without a policy, this build beside the baseline, p50 and p99
#   (scripts/bench/pair.py, PAIR_N requests per side and example).
# Needs target/release built, openssl and python3 on the host.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
ROOTFS=${NSBOX_ROOTFS:?set NSBOX_ROOTFS to the root filesystem}
PORT_UP=${PORT_UP:-18777}
PORT_TLS=${PORT_TLS:-18778}
PORT_API=${PORT_API:-18780}
BASELINE=${BENCH_BASELINE:-}
[ "$(id -u)" = 0 ] || { echo "run as root: the direct download chroots into the tree" >&2; exit 1; }
dir=$(mktemp -d)
trap 'kill "${up_pid:-}" "${tls_pid:-}" "${api_pid:-}" 2>/dev/null || true; rm -rf "$dir"' EXIT
mkdir "$dir/www" "$dir/tls"
head -c 52428800 /dev/urandom >"$dir/www/big.bin"
printf 'a,b\n1,2\n' >"$dir/tls/small.csv"
python3 -m http.server "$PORT_UP" --bind 127.0.0.2 --directory "$dir/www" >/dev/null 2>&1 &
up_pid=$!
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
(
	cd "$dir"
	openssl req -x509 -days 2 -subj "/CN=nsbox bench CA" "${ec[@]}" -keyout ca.key -out ca.pem 2>/dev/null
	openssl req -new -subj "/CN=secure.test" "${ec[@]}" -keyout key.pem -out leaf.csr 2>/dev/null
	printf 'subjectAltName=DNS:secure.test\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >leaf.ext
	openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile leaf.ext -out cert.pem 2>/dev/null
)
(cd "$dir/tls" && exec openssl s_server -quiet -WWW -accept "127.0.0.2:$PORT_TLS" -cert ../cert.pem -key ../key.pem >/dev/null 2>&1) &
tls_pid=$!
cat >"$dir/nsbox.toml" <<TOML
[egress]
allow = ["upstream.test:$PORT_UP", "secure.test:$PORT_TLS"]
allow_ips = ["127.0.0.2"]
max_download_mib = 4096
max_connections = 1000
ca_file = "$dir/ca.pem"
[egress.hosts]
"upstream.test" = "127.0.0.2"
"secure.test" = "127.0.0.2"
TOML
target/release/nsbox serve --listen "127.0.0.1:$PORT_API" --rootfs "$ROOTFS" \
	--config "$dir/nsbox.toml" --scanner off >"$dir/nsbox.log" 2>&1 &
api_pid=$!
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT_API/v1/health" >/dev/null && break; sleep 1; done
python3 scripts/bench/egress.py "$PORT_API" "$ROOTFS" "$PORT_UP" "$PORT_TLS" "$ROUNDS"
kill "$api_pid" 2>/dev/null || true
if [ -n "$BASELINE" ]; then
	[ -x "$BASELINE/nsbox" ] && [ -f "$BASELINE/libnsbox_sandbox.so" ] || { echo "BENCH_BASELINE=$BASELINE: no nsbox and libnsbox_sandbox.so there" >&2; exit 1; }
	echo "runs without a policy: A = baseline ($BASELINE), B = this build"
	python3 scripts/bench/pair.py "${PAIR_N:-100}" "$BASELINE/nsbox" --scanner off -- target/release/nsbox --scanner off
fi
