#!/usr/bin/env bash
# Several nsbox nodes behind HAProxy (Debian's package), with deploy/haproxy.cfg's own
# settings: three servers on 127.0.0.1 ports, health checks on /v1/health, 30 sessions routed
# to their nodes by their ids, a bounded load of the spec's examples; one node SIGKILLed and
# brought back, another restarted with SIGTERM (about a minute on an idle 2-core machine).
# tests/scale_out/driver.py does the work and states what is checked; this script installs
# what is missing, checks the shipped configurations, and stops everything on the way out.
#
#   scripts/test-scale-out.sh
#
# Environment:
#   NSBOX_ROOTFS           the root filesystem (default: scripts/build-rootfs.sh)
#   NSBOX_BIN              the nsbox binary (default target/debug/nsbox; build it first)
#   NSBOX_SCALE_OUT_ARGS   extra driver arguments, e.g. "--workers 8 --max-seconds 120"
#   NSBOX_SCALE_OUT_KEEP=1 keep the work directory (logs, HAProxy configs, summary.json)
# Prints the figures (failed requests, time until HAProxy marks a dead node down) as JSON on
# stdout. Needs root (nsbox creates namespaces and cgroups).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'test-scale-out [%3ds]: %s\n' "$SECONDS" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
[ "$(id -u)" = 0 ] || die "needs root: nsbox serve creates namespaces and cgroups"

missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
command -v python3 >/dev/null || missing+=(python3)
# nginx with njs, for deploy/nginx.conf's session routing (Debian's packages; installing
# does not start it here: nothing starts services in a container).
command -v nginx >/dev/null || missing+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_http_js_module.so ] || missing+=(libnginx-mod-http-js)
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]}"
	apt-get update -qq >&2 || die "apt-get update failed"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
		die "apt-get install ${missing[*]} failed"
fi
log "$(haproxy -v | head -n 1)"

rootfs=${NSBOX_ROOTFS:-}
[ -n "$rootfs" ] || rootfs=$(scripts/build-rootfs.sh | tail -n 1)
bin=${NSBOX_BIN:-target/debug/nsbox}
[ -x "$bin" ] || die "no nsbox binary at $bin (run cargo build, or set NSBOX_BIN)"
bin=$(realpath "$bin")

# The shipped load balancer configurations are valid as they stand (placeholders included).
haproxy -c -q -f deploy/haproxy.cfg || die "deploy/haproxy.cfg does not pass haproxy -c"
log "$(nginx -v 2>&1)"

# Field 22 of /proc/PID/stat, the start time (the command name, field 2, may hold spaces).
started_at() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }

work=$(mktemp -d /tmp/nsbox-scale-out.XXXXXX)
driver=
cleanup() {
	local rc=$?
	if [ -n "$driver" ]; then kill -TERM "$driver" 2>/dev/null || true; fi
	# Whatever the driver started (nsbox nodes, HAProxy), should it have died without stopping them.
	# Each line is "pid start-time": a pid is signalled only while it is still that process.
	if [ -f "$work/pids" ]; then
		local sig pid started
		for sig in TERM KILL; do
			while read -r pid started; do
				if [ "$(started_at "$pid")" = "$started" ]; then kill -"$sig" "$pid" 2>/dev/null || true; fi
			done <"$work/pids"
			[ "$sig" = KILL ] || sleep 2
		done
	fi
	if [ "$rc" != 0 ] || [ "${NSBOX_SCALE_OUT_KEEP:-0}" = 1 ]; then
		log "logs, HAProxy configurations and summary.json kept in $work"
	else
		rm -rf -- "$work"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# deploy/nginx.conf's session routing, against fake nodes (a second or two).
mkdir "$work/nginx"
PYTHONDONTWRITEBYTECODE=1 timeout --kill-after=10 120 python3 tests/scale_out/nginx_routing.py --work "$work/nginx" \
	--pids "$work/pids" || die "deploy/nginx.conf does not route sessions as it says; see the FAIL lines above"

log "three nodes of $bin over $rootfs; work directory $work"
status=0
# shellcheck disable=SC2086 # NSBOX_SCALE_OUT_ARGS is a list of arguments
PYTHONDONTWRITEBYTECODE=1 timeout --kill-after=10 600 python3 tests/scale_out/driver.py --bin "$bin" --rootfs "$rootfs" --work "$work" \
	${NSBOX_SCALE_OUT_ARGS:-} &
driver=$!
wait "$driver" || status=$?
driver=
[ "$status" = 0 ] || die "the scale-out test failed (status $status); see the FAIL lines above"
log "passed"
