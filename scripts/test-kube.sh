#!/usr/bin/env bash
# deploy/kubernetes.yaml run by a real engine, and the least privilege nsbox needs in a
# container, both with podman (Debian's packages; no Docker, no registry: the image is
# scripts/build-image.sh's, in nsbox's own container store, scripts/containers.sh).
#
#   scripts/test-kube.sh
#
# 1. `podman kube play` of the manifest (tests/deploy/manifest.py kube says what is changed
#    for podman 4.3, and why: the Secret, one replica, restartPolicy, the host port). The
#    Deployment's init container copies the tree onto the emptyDir, nsbox reads the
#    ConfigMap and the Secret with the securityContext as written. Then: /v1/health as the
#    startup probe would poll it, `nsbox check` inside the container (isolation: complete),
#    the spec's examples (tests/deploy/spec_examples.py), a session, files and the limits
#    (tests/deploy/sessions_limits.py), the liveness port, and a stop within
#    terminationGracePeriodSeconds with exit status 0. podman 4.3 runs no startup or
#    readiness probe, and turns the liveness probe into a healthcheck that needs systemd
#    and a `nc` in the image: the test polls the probes' endpoints itself.
# 2. The least privilege, under runc and under crun (podman run on the same volume):
#      --cap-drop=ALL --cap-add=SETUID,SETGID
#      --security-opt seccomp=deploy/seccomp-nsbox.json
#      --security-opt unmask=/proc/*        (Kubernetes: procMount: Unmasked)
#      --volume /sys/fs/cgroup:/sys/fs/cgroup:rw
#    must give what (1) gives: isolation complete, the examples, the session and limits.
#    And each privilege must be needed: `nsbox check` in a container with one of them
#    taken away must fail, at the step that needs it (docs/operating.md, "Least privilege",
#    has the kernel check and errno of each).
#    crun refuses a cgroup v1 host whose cgroup v2 hierarchy has a controller bound ("cgroups
#    in hybrid mode not supported"); Debian 12's hybrid layout leaves hugetlb there. The test
#    then mounts those controllers as v1 hierarchies of their own (which moves them off
#    the v2 hierarchy) and unmounts them at the end.
#
# About a minute and a half once the image is built (95 s here). Environment:
# NSBOX_STATIC_BIN, NSBOX_ROOTFS (passed to scripts/build-image.sh), NSBOX_KUBE_KEEP=1 keeps
# the work directory. Needs root.
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1

log() { printf 'test-kube [%3ds]: %s\n' "$SECONDS" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
[ "$(id -u)" = 0 ] || die "needs root"
command -v curl >/dev/null || die "needs curl (apt-get install curl)"
# podman, runc and buildah come with scripts/build-image.sh; crun, and catatonit for the
# pod's infra container (podman builds its pause image locally from it), from here.
# shellcheck source=scripts/containers.sh
. scripts/containers.sh
install_missing crun catatonit

venv=$(scripts/venv.sh tests/deploy/requirements.txt deploy-venv "${NSBOX_DEPLOY_PYTHON:-python3}" | tail -n 1)
image=$(scripts/build-image.sh | tail -n 1)
log "$(podman --version), $(runc --version | head -n 1), $(crun --version | head -n 1), image $image"

# One run at a time: the pod, its volumes and the secret have the manifest's names.
exec 9>"$NSBOX_CONTAINERS_ROOT/.test-kube.lock"
timeout 900 flock 9 || die "waited 15 minutes for another scripts/test-kube.sh"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
work=$(mktemp -d /var/tmp/nsbox-kube.XXXXXX)
port=$(free_port)
"$venv/bin/python" tests/deploy/manifest.py kube "$work/kube" "$port"
"$venv/bin/python" tests/deploy/manifest.py podman "$work/run"
manifest_image=$(cat "$work/kube/image")
pod=$(cat "$work/kube/pod")
ctr=$(cat "$work/kube/container")
grace=$(cat "$work/kube/grace")
secret=$(cat "$work/kube/secret-name")
config_path=$(cat "$work/kube/config-path")
key=$(cat "$work/kube/api-key")
# The volumes podman makes for the pod: one per volume name.
volumes=$("$venv/bin/python" -c 'import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "Deployment":
        print(" ".join(v["name"] if "emptyDir" in v else (v.get("configMap") or {}).get("name") or v["secret"]["secretName"]
                       for v in d["spec"]["template"]["spec"]["volumes"]))' "$work/kube/play.yaml")

mounted_controllers=()
containers=()
remove_pod() {
	ctr_podman pod rm -f -t 0 "$pod" >/dev/null 2>&1 || true
	local v
	for v in $volumes; do ctr_podman volume rm -f "$v" >/dev/null 2>&1 || true; done
	ctr_podman secret rm "$secret" >/dev/null 2>&1 || true
}
cleanup() {
	local rc=$? c
	for c in "${containers[@]}"; do ctr_podman rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
	remove_pod
	ctr_podman untag "$image" "$manifest_image" >/dev/null 2>&1 || true
	for c in "${mounted_controllers[@]}"; do
		umount "/sys/fs/cgroup/$c" 2>/dev/null && rmdir "/sys/fs/cgroup/$c" 2>/dev/null || true
	done
	if [ "$rc" != 0 ] || [ "${NSBOX_KUBE_KEEP:-0}" = 1 ]; then
		log "work directory kept: $work"
	else
		rm -rf --one-file-system -- "$work"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# wait_healthy URL CONTAINER: the startup probe, GET /v1/health every 2 s up to 150 times
# (polled faster here); fails when the container stops.
wait_healthy() {
	local t=$SECONDS h= st
	while ((SECONDS - t < 300)); do
		st=$(ctr_podman inspect --format '{{.State.Status}}' "$2" 2>/dev/null || echo gone)
		[ "$st" = running ] || break
		h=$(curl -s --max-time 2 "$1/v1/health" || true)
		[ "$h" = OK ] && return 0
		sleep 0.5
	done
	log "$2: never healthy (container $st); its log:"
	ctr_podman logs "$2" 2>&1 | cut -c1-400 | sort | uniq -c | sort -rn | head -n 10 >&2 || true
	return 1
}

# serve_checks URL CONTAINER: everything a running nsbox must pass.
serve_checks() {
	local out rc=0
	out=$(ctr_podman exec "$2" /usr/local/bin/nsbox check --config "$config_path" 2>&1) || rc=1
	printf '%s\n' "$out" | sed 's/^/    /' >&2
	grep -qx 'isolation: complete' <<<"$out" || { log "$2: nsbox check does not report complete isolation"; rc=1; }
	"$venv/bin/python" tests/deploy/spec_examples.py "$1" "$key" --expect-warm --expect-complete >&2 || rc=1
	"$venv/bin/python" tests/deploy/sessions_limits.py "$1" "$key" >&2 || rc=1
	# The liveness probe: the TCP port.
	local hostport=${1#http://}
	(exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}") 2>/dev/null || {
		log "$2: the liveness port does not accept connections"
		rc=1
	}
	return "$rc"
}

# stop_clean CONTAINER: SIGTERM, SIGKILL after the grace period; nsbox must exit 0.
stop_clean() {
	local t=$SECONDS code
	# (podman 4.3 logs that it has no systemd to remove the liveness healthcheck's timer.)
	ctr_podman stop -t "$grace" "$1" 2>&1 >/dev/null | grep -v 'unable to get systemd connection to remove healthchecks' >&2 || true
	code=$(ctr_podman inspect --format '{{.State.ExitCode}}' "$1")
	log "$1: stopped in $((SECONDS - t)) s, exit status $code"
	[ "$code" = 0 ]
}

results=()
failed=0

# 1. podman kube play.
remove_pod
ctr_podman tag "$image" "$manifest_image"
ctr_podman secret create "$secret" "$work/kube/secret.yaml" >/dev/null
t=$SECONDS
# podman 4.3 logs an error for each healthcheck timer it cannot make without systemd.
if ! (cd "$work" && podman "${NSBOX_CONTAINERS_OPTS[@]}" kube play kube/play.yaml >"$work/kube-play.log" 2>&1); then
	cat "$work/kube-play.log" >&2
	die "podman kube play failed"
fi
log "kube play: pod $pod up (its init container's copy done) in $((SECONDS - t)) s"
url=http://127.0.0.1:$port
if wait_healthy "$url" "$ctr"; then
	log "kube play: healthy after $((SECONDS - t)) s; $(ctr_podman inspect --format 'privileged {{.HostConfig.Privileged}}, pid namespace {{.HostConfig.PidMode}}' "$ctr")"
	if serve_checks "$url" "$ctr" && stop_clean "$ctr"; then
		results+=("kube play deploy/kubernetes.yaml: passed ($((SECONDS - t)) s)")
	else
		results+=("kube play deploy/kubernetes.yaml: FAILED")
		failed=1
	fi
else
	results+=("kube play deploy/kubernetes.yaml: FAILED (never healthy)")
	failed=1
fi
# The tree the init container copied, for part 2: the pod's emptyDir volume (kept until the
# pod goes).
state_volume=$(ctr_podman inspect --format '{{range .Mounts}}{{if eq .Destination "/var/lib/nsbox"}}{{.Name}}{{end}}{{end}}' "$ctr")
[ -n "$state_volume" ] || die "no state volume on $ctr"

# 2. The least privilege.
least=(
	--cap-drop=ALL --cap-add=SETUID,SETGID
	--security-opt=seccomp="$PWD/deploy/seccomp-nsbox.json"
	--security-opt=unmask=/proc/*
	--volume=/sys/fs/cgroup:/sys/fs/cgroup:rw
)
volume_args=(
	--volume="$state_volume:/var/lib/nsbox"
	--volume="$work/run/config:$(dirname "$config_path"):ro"
	--volume="$work/run/keys:/etc/nsbox/keys:ro"
)
cp "$work/kube/api-key" "$work/run/api-key"
for f in "$work"/run/keys/*; do printf '%s\n' "$key" >"$f"; done

# crun on a hybrid host: move the controllers of the v2 hierarchy to v1 hierarchies.
if [ -f /sys/fs/cgroup/unified/cgroup.controllers ]; then
	for c in $(cat /sys/fs/cgroup/unified/cgroup.controllers); do
		mkdir -p "/sys/fs/cgroup/$c"
		mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" || die "cannot mount the $c controller as cgroup v1 for crun"
		mounted_controllers+=("$c")
		log "mounted the $c controller as cgroup v1 (crun refuses a v2 hierarchy with controllers on a v1 host)"
	done
fi

for runtime in runc crun; do
	name=nsbox-least-$runtime-$$
	containers+=("$name")
	p=$(free_port)
	t=$SECONDS
	log "[$runtime] podman run ${least[*]}"
	ctr_podman --runtime "$runtime" run -d --name "$name" --init --publish "127.0.0.1:$p:8080" \
		"${volume_args[@]}" "${least[@]}" --memory=6g \
		--entrypoint '["/usr/local/bin/nsbox"]' "$image" serve --config "$config_path" >/dev/null ||
		die "[$runtime] podman run failed"
	if wait_healthy "http://127.0.0.1:$p" "$name" && serve_checks "http://127.0.0.1:$p" "$name" && stop_clean "$name"; then
		results+=("least privilege under $runtime: passed ($((SECONDS - t)) s)")
	else
		results+=("least privilege under $runtime: FAILED")
		failed=1
	fi
	ctr_podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
done

# Each privilege needed: take one away, `nsbox check` must fail at the step that needs it.
profile_without() {
	python3 - "$1" "$work/seccomp-without-$1.json" <<'PY'
import json, sys
p = json.load(open("deploy/seccomp-nsbox.json"))
allow = p["syscalls"][0]
assert allow["action"] == "SCMP_ACT_ALLOW" and sys.argv[1] in allow["names"], sys.argv[1]
allow["names"].remove(sys.argv[1])
if sys.argv[1] == "clone":
    # As the runtimes' default profiles: clone without namespace flags only (fork, threads).
    p["syscalls"].append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]})
json.dump(p, open(sys.argv[2], "w"))
PY
	echo "$work/seccomp-without-$1.json"
}
# without NAME EXPECTED-TEXT PODMAN-ARGS...: the least privilege with PODMAN-ARGS replacing
# the matching setting.
without() {
	local what=$1 expect=$2 out rc=0 a args=()
	shift 2
	for a in "${least[@]}"; do
		case $what:$a in
		cap-*:--cap-add=*) ;;
		seccomp-*:--security-opt=seccomp=*) ;;
		proc-masked:--security-opt=unmask=*) ;;
		cgroup-read-only:--volume=/sys/fs/cgroup*) ;;
		*) args+=("$a") ;;
		esac
	done
	out=$(ctr_podman run --rm --init --network none "${volume_args[@]}" "${args[@]}" "$@" \
		--entrypoint '["/usr/local/bin/nsbox"]' "$image" check --config "$config_path" 2>&1) || rc=$?
	if [ "$rc" != 0 ] && grep -qF -- "$expect" <<<"$out"; then
		results+=("without $what: refused as expected ($(grep -F -m1 -- "$expect" <<<"$out" | sed 's/  */ /g' | cut -c1-150))")
	else
		results+=("without $what: NOT REFUSED as expected (exit $rc, wanted '$expect')")
		printf '%s\n' "$out" | tail -n 15 >&2
		failed=1
	fi
}
without cap-setuid "single-id" --cap-add=SETGID
without cap-setgid "single-id" --cap-add=SETUID
without seccomp-clone-namespaces "creating a user namespace: EPERM" --security-opt=seccomp="$(profile_without clone)"
without seccomp-unshare "step \`enter cgroup namespace\` failed (errno 1)" --security-opt=seccomp="$(profile_without unshare)"
without seccomp-mount "step \`make mounts private\` failed (errno 1)" --security-opt=seccomp="$(profile_without mount)"
without seccomp-umount2 "step \`detach the old root\` failed (errno 1)" --security-opt=seccomp="$(profile_without umount2)"
without seccomp-pivot_root "step \`pivot_root\` failed (errno 1)" --security-opt=seccomp="$(profile_without pivot_root)"
without seccomp-sethostname "step \`set hostname\` failed (errno 1)" --security-opt=seccomp="$(profile_without sethostname)"
without proc-masked "step \`mount /proc\` failed (errno 1)"
without cgroup-read-only "Read-only file system"

remove_pod
for r in "${results[@]}"; do log "$r"; done
[ "$failed" = 0 ] || die "the kube and least-privilege test failed"
log "passed in $SECONDS s"
