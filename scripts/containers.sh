# shellcheck shell=bash
# Sourced by scripts/build-image.sh, scripts/test-image.sh and scripts/test-kube.sh: podman and buildah on nsbox's
# own container store, so the image neither depends on nor disturbs the host's default
# store (/var/lib/containers), and the storage driver is the one we chose, whatever the
# host's /etc/containers/storage.conf says.
#
# overlay is what Kubernetes nodes use (containerd's overlayfs snapshotter), so a container's
# own root filesystem is overlayfs here too, and the tests meet the same limit a cluster
# does: a tree on it cannot take the warm path's two extra overlays, so the tree is copied
# onto a volume first. (`vfs` would make the container's root a plain directory, at the
# cost of a full copy of the image per container.)
NSBOX_CONTAINERS_ROOT=${NSBOX_CACHE_DIR:-/var/cache/nsbox}/containers
NSBOX_CONTAINERS_OPTS=(
	--root "$NSBOX_CONTAINERS_ROOT/storage"
	--runroot /run/nsbox-containers
	--storage-driver overlay
)
ctr_buildah() { buildah "${NSBOX_CONTAINERS_OPTS[@]}" "$@"; }
# install_missing TOOL...: the tools not on the PATH, from Debian's packages of the same
# names (the caller's `log` and `die` report it).
install_missing() {
	local tool missing=()
	for tool in "$@"; do
		command -v "$tool" >/dev/null || missing+=("$tool")
	done
	[ ${#missing[@]} -gt 0 ] || return 0
	log "installing ${missing[*]}"
	apt-get update -qq >&2 || die "apt-get update failed"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
		die "apt-get install ${missing[*]} failed"
}
ctr_podman() { podman "${NSBOX_CONTAINERS_OPTS[@]}" "$@"; }
# podman's settings, in a containers.conf of our own (CONTAINERS_CONF: the only one read),
# for every container it makes, a pod's infra container included:
# - runc, not crun: our hosts are cgroup v1 with a cgroup2 mount beside it that has a
#   controller (hugetlb), which crun refuses ("cgroups in hybrid mode not supported"). runc
#   is also what Kubernetes nodes run by default (containerd's default runtime).
# - podman as root raises RLIMIT_NOFILE and RLIMIT_NPROC to its own defaults, which needs
#   CAP_SYS_RESOURCE; our CI machines run without it, and runc then fails ("error setting
#   rlimit type 7", RLIMIT_NOFILE; type 6, RLIMIT_NPROC). So: the caller's own hard limit
#   for open files, and 32768 processes (more than max_running x max_processes; higher
#   values were refused here too).
mkdir -p "$NSBOX_CONTAINERS_ROOT"
cat >"$NSBOX_CONTAINERS_ROOT/containers.conf.new" <<CONF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF
mv "$NSBOX_CONTAINERS_ROOT/containers.conf.new" "$NSBOX_CONTAINERS_ROOT/containers.conf"
export CONTAINERS_CONF=$NSBOX_CONTAINERS_ROOT/containers.conf
