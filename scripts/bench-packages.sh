#!/usr/bin/env bash
# Benchmark of packages on demand (issue 24): a cached `libraries` run against the same run
# with the package in the tree (target: at most 5 ms more at p50), and first-install time.
#
#   NSBOX_ROOTFS=<tree> scripts/bench-packages.sh [RUNS]
#
# Starts a local index (scripts/packages-index.sh: pypiserver and two wheels) and two
# release servers, warm: one over a copy of the tree with tabulate added to its
# dist-packages (hard links, with new directories and a new libraries.json; the tree itself
# is not written), one over the tree itself with [packages] pointing at the index and a
# fresh cache. Then scripts/bench/packages.py. Needs root, like the server. KEEP=1 keeps
# the servers' logs and the copies (the path is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-200}
tree=${NSBOX_ROOTFS:?set NSBOX_ROOTFS to the root filesystem}
cargo build --release --locked >&2
bin=${CARGO_TARGET_DIR:-target}/release/nsbox

{ read -r venv; read -r wheels; } < <(scripts/packages-index.sh)
work=$(mktemp -d /var/tmp/nsbox-bench-packages.XXXXXX)
chmod 0755 "$work"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf --one-file-system "$work"; fi
}
trap cleanup EXIT

# The tree with tabulate in it: a copy by hard links beside the tree's cache.
copy=$work/rootfs
cp -al "$tree" "$copy"
site=$copy/usr/local/lib/python3.11/dist-packages
python3 -m pip install --quiet --no-deps --no-compile --target "$work/tabulate" "$wheels"/tabulate-0.9.0-py3-none-any.whl
cp -r "$work/tabulate/tabulate" "$work/tabulate"/tabulate-0.9.0.dist-info "$site/"
python3 -m compileall -q "$site/tabulate"
# A new file, not the linked one: the tree's own list stays as it is.
python3 - "$copy/usr/local/share/nsbox/libraries.json" <<'EOF'
import json, os, sys
path = sys.argv[1]
data = json.load(open(path))
data["libraries"]["tabulate"] = "0.9.0"
os.unlink(path)
json.dump(data, open(path, "w"))
EOF

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
iport=$(port)
"$venv/bin/pypi-server" run --disable-fallback -i 127.0.0.1 -p "$iport" "$wheels" 2>/dev/null &
pids+=($!)
cat >"$work/cache.toml" <<EOF
[egress]
allow = []
allow_ips = ["127.0.0.1"]
[egress.hosts]
"index.test" = "127.0.0.1"
[packages]
index_url = "http://index.test:$iport/simple/"
cache_dir = "$work/cache"
EOF
tport=$(port)
cport=$(port)
"$bin" serve --rootfs "$copy" --listen "127.0.0.1:$tport" --scanner off --uid-base 1300000000 2>"$work/tree.log" &
pids+=($!)
"$bin" serve --rootfs "$tree" --config "$work/cache.toml" --listen "127.0.0.1:$cport" --scanner off --uid-base 1300100000 2>"$work/cache.log" &
pids+=($!)
for p in "$tport" "$cport"; do
	for _ in $(seq 300); do
		curl -fsS "http://127.0.0.1:$p/v1/health" >/dev/null 2>&1 && break
		sleep 0.1
	done
done
python3 scripts/bench/packages.py "http://127.0.0.1:$tport" "http://127.0.0.1:$cport" "$runs"
