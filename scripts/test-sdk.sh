#!/usr/bin/env bash
# Runs tests/sdk against a freshly started nsbox: the official Python SDK (relaxai) on the
# spec's examples, schemathesis with api/openapi.yaml, the official MCP SDK and the MCP
# Inspector's CLI (npm, tests/mcp-inspector) against `nsbox mcp` and `/mcp`, and an SSE client. Needs root (nsbox creates
# namespaces and cgroups) and a root filesystem.
#
#   NSBOX_ROOTFS=$(scripts/build-rootfs.sh | tail -n 1) scripts/test-sdk.sh [PYTEST ARGS...]
#
# Environment:
#   NSBOX_ROOTFS       the root filesystem (required)
#   NSBOX_BIN          the nsbox binary (default target/debug/nsbox; build it first)
#   NSBOX_CACHE_DIR    where the virtualenv is kept (default /var/cache/nsbox), as
#                      sdk-venv-<hash of tests/sdk/requirements.txt and the interpreter>
#   NSBOX_SDK_PYTHON   the interpreter for the virtualenv (default python3, 3.11)
#   NSBOX_SDK_ENABLE   pending features whose tests must pass (see tests/sdk/conftest.py)
#   NSBOX_SDK_TIMEOUT  seconds pytest may take in all (default 900)
# Exits with pytest's status.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

die() {
	echo "scripts/test-sdk.sh: $*" >&2
	exit 1
}
log() { printf 'test-sdk [%3ds]: %s\n' "$SECONDS" "$*" >&2; }

[[ $(id -u) == 0 ]] || die "must run as root: nsbox serve creates namespaces and cgroups"
[[ -n ${NSBOX_ROOTFS:-} ]] ||
	die "NSBOX_ROOTFS is not set; build one with NSBOX_ROOTFS=\$(scripts/build-rootfs.sh | tail -n 1)"
[[ -x $NSBOX_ROOTFS/usr/bin/python3 ]] ||
	die "NSBOX_ROOTFS=$NSBOX_ROOTFS is no root filesystem (no usr/bin/python3 in it)"
NSBOX_ROOTFS=$(cd "$NSBOX_ROOTFS" && pwd)
bin=${NSBOX_BIN:-target/debug/nsbox}
[[ -x $bin ]] || die "no nsbox binary at $bin (run cargo build, or set NSBOX_BIN)"
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

# --- The virtualenv, cached by what goes into it -------------------------------------------
command -v curl >/dev/null || die "needs curl (apt-get install curl)"
cache=${NSBOX_CACHE_DIR:-/var/cache/nsbox}
venv=$(scripts/venv.sh tests/sdk/requirements.txt sdk-venv "${NSBOX_SDK_PYTHON:-python3}" | tail -n 1) ||
	die "could not build the virtualenv of tests/sdk/requirements.txt"

# --- The MCP Inspector (npm), cached by its lock file ----------------------------------------
command -v npm >/dev/null || die "needs npm for the MCP Inspector check (apt-get install npm)"
inspector_key=$(cat tests/mcp-inspector/package-lock.json tests/mcp-inspector/.npmrc | sha256sum | cut -c1-16)
inspector=$cache/mcp-inspector-$inspector_key
exec 8>"$cache/.mcp-inspector.lock"
timeout 900 flock 8 || die "waited 15 minutes for another install of $inspector"
if [[ ! -f $inspector/.nsbox-ready ]]; then
	log "installing the MCP Inspector into $inspector"
	rm -rf --one-file-system -- "$inspector"
	mkdir -p "$inspector"
	cp tests/mcp-inspector/package.json tests/mcp-inspector/package-lock.json tests/mcp-inspector/.npmrc "$inspector/"
	(cd "$inspector" && timeout 900 npm ci --no-audit --no-fund --loglevel=error >&2) ||
		die "npm ci of tests/mcp-inspector failed"
	touch "$inspector/.nsbox-ready"
else
	log "reusing $inspector"
fi
exec 8>&-

# --- The server ----------------------------------------------------------------------------
port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
server_log=$(mktemp -t nsbox-sdk-serve.XXXXXX)
server_pid=
stop_server() {
	if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
		kill -TERM "$server_pid"
		local i
		for ((i = 0; i < 100; i++)); do
			kill -0 "$server_pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$server_pid" 2>/dev/null; then
			log "nsbox did not stop within 10 s of SIGTERM; killing it"
			kill -KILL "$server_pid" 2>/dev/null || true
		fi
		wait "$server_pid" 2>/dev/null || true
	fi
	server_pid=
}
show_server_log() {
	echo "--- last lines of the nsbox log ($server_log) ---" >&2
	tail -n 40 "$server_log" >&2 || true
}
trap 'stop_server; rm -f "$server_log"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

log "starting $bin on $url"
"$bin" serve --listen "127.0.0.1:$port" --rootfs "$NSBOX_ROOTFS" </dev/null >"$server_log" 2>&1 &
server_pid=$!
healthy=
# Warm templates can take a minute on a slow, busy host.
for ((i = 0; i < 1200; i++)); do
	if ! kill -0 "$server_pid" 2>/dev/null; then
		show_server_log
		die "nsbox exited before it was healthy"
	fi
	if [[ $(curl -fsS --max-time 2 "$url/v1/health" 2>/dev/null) == OK ]]; then
		healthy=1
		break
	fi
	sleep 0.1
done
[[ -n $healthy ]] || {
	show_server_log
	die "nsbox was not healthy within 120 s"
}

# --- The tests -----------------------------------------------------------------------------
log "running tests/sdk"
status=0
env NSBOX_URL="$url" NSBOX_BIN="$bin" NSBOX_ROOTFS="$NSBOX_ROOTFS" PYTHONDONTWRITEBYTECODE=1 \
	NSBOX_MCP_INSPECTOR="$inspector/node_modules/.bin/mcp-inspector" \
	timeout --kill-after=10 "${NSBOX_SDK_TIMEOUT:-900}" \
	"$venv/bin/python" -m pytest -p no:cacheprovider -ra "$repo/tests/sdk" "$@" || status=$?
((status != 124)) || log "pytest ran out of its ${NSBOX_SDK_TIMEOUT:-900} s"
((status == 0)) || show_server_log
log "stopping nsbox"
stop_server
log "done (pytest exit status $status)"
exit "$status"
