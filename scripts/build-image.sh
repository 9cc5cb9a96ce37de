#!/usr/bin/env bash
# Builds the nsbox OCI image without a Docker daemon (buildah, from scratch) and prints its
# name; stderr says its size. Needs root.
#
#   scripts/build-image.sh      build (or reuse) it; the last line of stdout is the image's
#                               name, localhost/nsbox:<hash of its inputs>
#
# What the image holds (the layout deploy/kubernetes.yaml expects), and nothing else:
#   /usr/local/bin/nsbox          the static binary (scripts/build-static.sh), which carries
#                                 the warm path's libnsbox_sandbox.so inside itself
#   /opt/nsbox/rootfs/            the Python root filesystem (scripts/build-rootfs.sh)
#   /opt/nsbox/nsbox-empty-layer/ the empty overlay layer nsbox wants beside the tree
#   /etc/nsbox/nsbox.toml         deploy/nsbox.toml, the example configuration (loopback,
#                                 no keys: mount a real one over it, as the manifest does)
#   /var/lib/nsbox/, /tmp/        empty; /var/lib/nsbox is where the manifest's volume goes
# Entrypoint /usr/local/bin/nsbox, command `serve --config /etc/nsbox/nsbox.toml`, port 8080.
# The tree is meant to be copied out of the image onto a volume that is not overlayfs
# (deploy/kubernetes.yaml's init container does `cp -a -T /opt/nsbox /var/lib/nsbox` with the
# tree's own cp and dynamic loader: the image has no shell and no libc of its own).
#
# The image is kept in a private container store, so it neither depends on nor disturbs the
# host's default one (podman and buildah both take these flags):
#   --root ${NSBOX_CACHE_DIR:-/var/cache/nsbox}/containers/storage
#   --runroot /run/nsbox-containers   --storage-driver overlay
# Its tag is the hash of its inputs (the binary, the tree's name, which is the hash of its
# recipe, deploy/nsbox.toml and this script), so an unchanged input set returns at once.
# To publish it: podman --root ... push localhost/nsbox:<tag> <your registry>/nsbox:<tag>
# (or `podman save --format oci-archive`).
#
# Environment: NSBOX_STATIC_BIN (default: scripts/build-static.sh), NSBOX_ROOTFS (default:
# scripts/build-rootfs.sh), NSBOX_CACHE_DIR.
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."

log() { printf 'build-image [%3ds]: %s\n' "$SECONDS" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
[ "$(id -u)" = 0 ] || die "needs root (buildah's private store, and reading the root filesystem)"

# The tools, from Debian's packages.
# shellcheck source=scripts/containers.sh
. scripts/containers.sh
install_missing buildah podman runc

bin=${NSBOX_STATIC_BIN:-}
[ -n "$bin" ] || bin=$(scripts/build-static.sh | tail -n 1)
[ -x "$bin" ] || die "no static nsbox at $bin"
rootfs=${NSBOX_ROOTFS:-}
[ -n "$rootfs" ] || rootfs=$(scripts/build-rootfs.sh | tail -n 1)
rootfs=$(cd "$rootfs" && pwd -P)
[ -x "$rootfs/usr/bin/python3" ] || die "$rootfs is no root filesystem (no usr/bin/python3)"
config=deploy/nsbox.toml

# The tree's directory name is the hash of its recipe (scripts/build-rootfs.sh), so it
# stands for the tree's content.
tag=$(
	{
		sha256sum "$bin" | cut -d' ' -f1
		basename "$rootfs"
		sha256sum "$config" scripts/build-image.sh | cut -d' ' -f1
	} | sha256sum | cut -c1-16
)
image=localhost/nsbox:$tag

size_of() {
	local bytes
	bytes=$(ctr_podman image inspect --format '{{.Size}}' "$1")
	printf '%s (%s bytes, uncompressed)' "$(numfmt --to=iec-i --suffix=B "$bytes")" "$bytes"
}

# One builder at a time.
mkdir -p "$NSBOX_CONTAINERS_ROOT"
exec 8>"$NSBOX_CONTAINERS_ROOT/.build-image.lock"
timeout 900 flock 8 || die "waited 15 minutes for another build"
if ctr_podman image exists "$image"; then
	log "reusing $image: $(size_of "$image")"
	echo "$image"
	exit 0
fi

log "building $image from scratch: $bin, $rootfs, $config"
ctr=
cleanup() {
	if [ -n "$ctr" ]; then
		ctr_buildah umount "$ctr" >/dev/null 2>&1 || true
		ctr_buildah rm "$ctr" >/dev/null 2>&1 || true
	fi
}
trap cleanup EXIT
ctr=$(ctr_buildah from scratch)
mnt=$(ctr_buildah mount "$ctr")
install -d -m 0755 "$mnt/usr/local/bin" "$mnt/opt/nsbox" "$mnt/opt/nsbox/nsbox-empty-layer" \
	"$mnt/etc/nsbox" "$mnt/var/lib/nsbox"
install -d -m 1777 "$mnt/tmp"
install -m 0755 "$bin" "$mnt/usr/local/bin/nsbox"
install -m 0644 "$config" "$mnt/etc/nsbox/nsbox.toml"
# Owners, modes, hard links and extended attributes kept; the tree must stay readable by others.
cp -a "$rootfs" "$mnt/opt/nsbox/rootfs"
chmod 0755 "$mnt/opt/nsbox/rootfs"
ctr_buildah umount "$ctr" >/dev/null
ctr_buildah config \
	--entrypoint '["/usr/local/bin/nsbox"]' \
	--cmd 'serve --config /etc/nsbox/nsbox.toml' \
	--port 8080/tcp \
	--workingdir / \
	--stop-signal SIGTERM \
	--label org.opencontainers.image.title=nsbox \
	--label org.opencontainers.image.description="nsbox: the code execution API (static binary, root filesystem $(basename "$rootfs"))" \
	--label org.opencontainers.image.version="$tag" \
	--created-by scripts/build-image.sh \
	"$ctr"
ctr_buildah commit --quiet --format oci --rm "$ctr" "$image" >/dev/null
ctr=
# Earlier builds of this image are superseded.
for old in $(ctr_podman images --format '{{.Repository}}:{{.Tag}}'); do
	case $old in
	"$image") ;;
	localhost/nsbox:*) ctr_podman rmi "$old" >/dev/null 2>&1 || true ;;
	esac
done
log "built $image: $(size_of "$image")"
echo "$image"
