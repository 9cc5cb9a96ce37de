#!/usr/bin/env bash
# Runs the OCI image (scripts/build-image.sh) with podman the way deploy/kubernetes.yaml
# asks: tests/deploy/manifest.py translates the manifest's init container, nsbox container,
# volumes (emptyDir: a host directory on disk; the ConfigMap's nsbox.toml; the Secret, with a
# fresh key) and securityContext into `podman run` arguments. The init container copies the
# tree onto the volume with the image's own tools; nsbox then serves from it in its own
# network namespace (port published on 127.0.0.1 only). The test waits for /v1/health as the
# startup probe would, runs the spec's examples through it (tests/deploy/spec_examples.py:
# strict responses, 401 without the key, warm, isolation reported), checks the liveness
# port, and stops the container within the pod's terminationGracePeriodSeconds, expecting
# nsbox's clean exit (status 0).
#
#   scripts/test-image.sh
#
# Environment:
#   NSBOX_IMAGE_SCENARIOS  which security settings to run, space-separated (default
#                          all five below; docs/operating.md, "The
#                          image", says what each costs):
#     manifest          the manifest's own securityContext (privileged): complete isolation
#     cgroup-rw         not privileged: default capabilities, seccomp and AppArmor
#                       unconfined, /proc and /sys unmasked, the host's /sys/fs/cgroup
#                       bind-mounted read-write: complete isolation
#     no-cgroup         as cgroup-rw without the cgroup mount (read-only): rlimits only,
#                       with --allow-incomplete-isolation
#     userns-single-id  as no-cgroup, in a pod user namespace of 65536 ids (what
#                       hostUsers: false gives on Kubernetes): single-id runs
#     userns-range      as no-cgroup, in a pod user namespace of 131072 ids, uid_base 65536:
#                       runs get ids of their own again
#   NSBOX_STATIC_BIN, NSBOX_ROOTFS   passed to scripts/build-image.sh
#   NSBOX_IMAGE_KEEP=1     keep the work directory and the containers' logs
# Needs root (podman's private store, see scripts/containers.sh).
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1

log() { printf 'test-image [%3ds]: %s\n' "$SECONDS" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
[ "$(id -u)" = 0 ] || die "needs root"
command -v curl >/dev/null || die "needs curl (apt-get install curl)"
# A pod's infra container (its PID 1) is podman's pause image, built locally from catatonit.
if ! command -v catatonit >/dev/null; then
	log "installing catatonit"
	apt-get update -qq >&2 || die "apt-get update failed"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends catatonit >&2 ||
		die "apt-get install catatonit failed"
fi

venv=$(scripts/venv.sh tests/deploy/requirements.txt deploy-venv "${NSBOX_DEPLOY_PYTHON:-python3}" | tail -n 1)
image=$(scripts/build-image.sh | tail -n 1)
# shellcheck source=scripts/containers.sh
. scripts/containers.sh
log "$(podman --version), image $image"

# On disk, like an emptyDir (not tmpfs, not overlayfs).
work=$(mktemp -d /var/tmp/nsbox-image.XXXXXX)
"$venv/bin/python" tests/deploy/manifest.py podman "$work"
mapfile -t init_args <"$work/init.args"
mapfile -t main_args <"$work/main.args"
container_port=$(cat "$work/port")
grace=$(cat "$work/grace")
share=$(cat "$work/share")
key=$(cat "$work/api-key")

containers=()
pods=()
cleanup() {
	local rc=$?
	local c
	for c in "${containers[@]}"; do
		ctr_podman rm -f -t 0 "$c" >/dev/null 2>&1 || true
	done
	for c in "${pods[@]}"; do
		ctr_podman pod rm -f -t 0 "$c" >/dev/null 2>&1 || true
	done
	if [ "$rc" != 0 ] || [ "${NSBOX_IMAGE_KEEP:-0}" = 1 ]; then
		log "work directory kept: $work (the tree copy in state/ is large)"
	else
		rm -rf --one-file-system -- "$work"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# with_image: arguments on stdin, one a line, with the placeholder IMAGE replaced by the
# image's name.
with_image() {
	local a
	while IFS= read -r a; do
		if [ "$a" = IMAGE ]; then printf '%s\n' "$image"; else printf '%s\n' "$a"; fi
	done
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The init container, once: the copy of /opt/nsbox (tree and empty layer) onto the volume.
t=$SECONDS
mapfile -t args < <(printf '%s\n' "${init_args[@]}" | with_image)
name=nsbox-init-$$
containers+=("$name")
ctr_podman run --rm --name "$name" --network none "${args[@]}" >&2 || die "the init container failed"
if [ ! -x "$work/state/rootfs/usr/bin/python3" ] || [ ! -d "$work/state/nsbox-empty-layer" ]; then
	die "the init container did not copy the tree and the empty layer onto the volume"
fi
log "init container: copied $(du -sh "$work/state" | cut -f1) onto the volume in $((SECONDS - t)) s"

# The settings tried, each a scenario: the podman arguments of the nsbox container (one a
# line, IMAGE for the image) and of its pod. Every scenario runs in a pod; the namespaces it
# shares are the manifest's (net, ipc, uts; not pid, so nsbox is PID 1 of its container).
unconfined=(--security-opt=seccomp=unconfined --security-opt=apparmor=unconfined)
incomplete=(--env=NSBOX_ALLOW_INCOMPLETE_ISOLATION=true)
scenario_args() {
	local a
	for a in "${main_args[@]}"; do
		case $1:$a in
		manifest:*) printf '%s\n' "$a" ;;
		# Everything but the manifest's securityContext.
		*:--privileged | *:--security-opt=* | *:--cap-add=* | *:--cap-drop=*) ;;
		*:--volume=*:/etc/nsbox/keys:ro) printf '%s\n' "${a/\/keys:/\/keys-$1:}" ;;
		*) printf '%s\n' "$a" ;;
		esac
	done | with_image | {
		# The scenario's own settings go before the image's name.
		local extra=()
		case $1 in
		manifest) ;;
		cgroup-rw) extra=("${unconfined[@]}" --security-opt=unmask=ALL --volume=/sys/fs/cgroup:/sys/fs/cgroup:rw) ;;
		no-cgroup) extra=("${unconfined[@]}" --security-opt=unmask=/proc/* "${incomplete[@]}") ;;
		userns-single-id) extra=("${unconfined[@]}" --security-opt=unmask=/proc/* "${incomplete[@]}") ;;
		userns-range) extra=("${unconfined[@]}" --security-opt=unmask=/proc/* "${incomplete[@]}" --env=NSBOX_UID_BASE=65536) ;;
		*) die "unknown scenario $1" ;;
		esac
		while IFS= read -r a; do
			if [ "$a" = "$image" ] && [ ${#extra[@]} -gt 0 ]; then printf '%s\n' "${extra[@]}"; fi
			printf '%s\n' "$a"
		done
	}
}
# The pod: a user namespace of its own for the userns-* scenarios (what hostUsers: false
# gives a Kubernetes pod: 65536 ids; a podman pod may have more).
userns_base=2000000000
scenario_pod_args() {
	case $1 in
	userns-single-id) printf '%s\n' "--uidmap=0:$userns_base:65536" "--gidmap=0:$userns_base:65536" ;;
	userns-range) printf '%s\n' "--uidmap=0:$userns_base:131072" "--gidmap=0:$userns_base:131072" ;;
	esac
}
# The Secret as the scenario's root reads it (a pod user namespace sees host root's files as
# nobody's; Kubernetes maps volume ownership for such pods itself).
scenario_keys() {
	rm -rf -- "$work/keys-$1"
	cp -a "$work/keys" "$work/keys-$1"
	case $1 in userns-*) chown -R "$userns_base:$userns_base" "$work/keys-$1" ;; esac
}

# SIGKILL of the server, the only child of nsbox's PID 1 (nsbox is the container's
# entrypoint and nothing else), with a run in flight: PID 1 exits with the server's status,
# and the kernel takes the spawner, the warm templates and the run with it; no process is
# left in the container's cgroups.
kill_server() {
	local scenario=$1 name=$2 url=$3 pid1 server cgroup left status exit_code i
	pid1=$(ctr_podman inspect --format '{{.State.Pid}}' "$name")
	server=$(xargs <"/proc/$pid1/task/$pid1/children")
	[ -n "$server" ] && [ "${server// /}" = "$server" ] || {
		log "[$scenario] nsbox's PID 1 ($pid1) should have one child, the server: '$server'"
		return 1
	}
	cgroup=/sys/fs/cgroup/memory$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' "/proc/$pid1/cgroup")
	curl -s --max-time 90 -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
		-d '{"code": "import time\ntime.sleep(60)", "lang": "python", "timeout": 80}' \
		"$url/v1/tools/code" >/dev/null 2>&1 &
	local client=$! in_flight=
	for i in $(seq 100); do
		if curl -s --max-time 2 -H "Authorization: Bearer $key" "$url/v1/status" | grep -q '"running":1'; then
			in_flight=1
			break
		fi
		sleep 0.1
	done
	[ -n "$in_flight" ] || {
		log "[$scenario] the run never showed as running in /v1/status"
		return 1
	}
	log "[$scenario] SIGKILL to the server (host pid $server) with a run in flight"
	kill -KILL "$server"
	for i in $(seq 150); do
		status=$(ctr_podman inspect --format '{{.State.Status}}' "$name" 2>/dev/null || echo gone)
		[ "$status" = running ] || break
		sleep 0.1
	done
	kill "$client" 2>/dev/null || true
	wait "$client" 2>/dev/null || true
	exit_code=$(ctr_podman inspect --format '{{.State.ExitCode}}' "$name")
	left=$(find "$cgroup" -name cgroup.procs -exec cat {} + 2>/dev/null | wc -l)
	log "[$scenario] after the kill: container $status, exit status $exit_code, $left processes left in $cgroup"
	# podman says `stopped` until its cleanup process has run, then `exited`.
	[[ $status == exited || $status == stopped ]] && [ "$exit_code" = 137 ] && [ "$left" = 0 ]
}

results=()
run_scenario() {
	local scenario=$1 expect=() port url name pod t started health status rc pod_args args
	case $scenario in
	manifest | cgroup-rw) expect=(--expect-warm --expect-complete) ;;
	*) expect=(--expect-warm) ;;
	esac
	port=$(free_port)
	url=http://127.0.0.1:$port
	name=nsbox-test-$scenario-$$
	pod=nsbox-pod-$scenario-$$
	scenario_keys "$scenario"
	mapfile -t args < <(scenario_args "$scenario")
	mapfile -t pod_args < <(scenario_pod_args "$scenario")
	log "[$scenario] podman pod create --share $share ${pod_args[*]}; podman run ${args[*]}"
	pods+=("$pod")
	t=$SECONDS
	# Its own network namespace (podman's bridge), published on loopback only.
	ctr_podman pod create --name "$pod" --share "$share" --publish "127.0.0.1:$port:$container_port" \
		"${pod_args[@]}" >/dev/null || die "[$scenario] podman pod create failed"
	ctr_podman run -d --pod "$pod" --name "$name" "${args[@]}" >/dev/null ||
		die "[$scenario] podman run failed"
	# The startup probe: GET /v1/health every 2 s, up to 150 times (300 s).
	health=
	while ((SECONDS - t < 300)); do
		status=$(ctr_podman inspect --format '{{.State.Status}}' "$name" 2>/dev/null || echo gone)
		[ "$status" = running ] || break
		health=$(curl -s --max-time 2 "$url/v1/health" || true)
		[ "$health" = OK ] && break
		sleep 0.5
	done
	if [ "$health" != OK ]; then
		ctr_podman logs "$name" 2>&1 | sort | uniq -c | sort -rn | head -n 10 >&2 || true
		results+=("$scenario: FAILED (never healthy; container $status)")
		ctr_podman pod rm -f -t 0 "$pod" >/dev/null 2>&1 || true
		return 1
	fi
	started=$((SECONDS - t))
	log "[$scenario] healthy after $started s"
	rc=0
	"$venv/bin/python" tests/deploy/spec_examples.py "$url" "$key" "${expect[@]}" >&2 || rc=$?
	# The liveness probe: the TCP port.
	(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || {
		log "[$scenario] the liveness port does not accept connections"
		rc=1
	}
	local exit_code
	if [ "$scenario" = cgroup-rw ]; then
		kill_server "$scenario" "$name" "$url" || rc=1
	else
		# What Kubernetes does at the end: SIGTERM, then SIGKILL after the grace period.
		t=$SECONDS
		ctr_podman stop -t "$grace" "$name" >/dev/null
		exit_code=$(ctr_podman inspect --format '{{.State.ExitCode}}' "$name")
		log "[$scenario] stopped in $((SECONDS - t)) s, exit status $exit_code"
		[ "$exit_code" = 0 ] || rc=1
	fi
	ctr_podman logs "$name" >"$work/$scenario.log" 2>&1 || true
	if grep -q '"warm":false' "$work/$scenario.log"; then
		log "[$scenario] some runs were cold: $(grep -c '"warm":false' "$work/$scenario.log")"
		rc=1
	fi
	ctr_podman pod rm -f -t 0 "$pod" >/dev/null 2>&1 || true
	if [ "$rc" = 0 ]; then
		results+=("$scenario: passed (healthy after $started s)")
	else
		results+=("$scenario: FAILED")
		tail -n 20 "$work/$scenario.log" >&2
	fi
	return "$rc"
}

failed=0
for s in ${NSBOX_IMAGE_SCENARIOS:-manifest cgroup-rw no-cgroup userns-single-id userns-range}; do
	run_scenario "$s" || failed=1
done
log "image $image: $(ctr_podman image inspect --format '{{.Size}}' "$image" | numfmt --to=iec-i --suffix=B)"
for r in "${results[@]}"; do log "$r"; done
[ "$failed" = 0 ] || die "the image test failed"
log "passed"
