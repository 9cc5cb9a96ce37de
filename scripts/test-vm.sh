#!/usr/bin/env bash
# Proves nsbox's cgroup v2 and rootless paths on a real kernel: boots Debian's kernel
# under QEMU (software emulation, TCG) with a pure cgroup v2 hierarchy (cgroup_no_v1=all),
# runs vm/driver.py there against the nsbox binary (as root, cold and warm; as a user with
# subordinate ids and a delegated cgroup; as a user with neither), and asserts the summary.
#
#   scripts/test-vm.sh            build nsbox (debug) and run every VM check
#   NSBOX_BIN=path                test this binary instead of building one
#   NSBOX_ROOTFS=path             the Python root filesystem (default: scripts/build-rootfs.sh)
#   NSBOX_VM_TIMEOUT=seconds      bound on the whole VM run (default 600)
#   NSBOX_VM_BOOT_TIMEOUT=seconds bound on reaching the in-VM driver (default 180)
#   NSBOX_VM_ROOTLESS=0           skip the rootless scenarios
#   NSBOX_VM_WARM=0               skip the warm-path scenario (about 95 s: warming under TCG)
#   NSBOX_VM_KEEP=1               keep the job directory (console log, server logs, summary)
#   NSBOX_VM_SCENARIOS='"a","b"'  run only these scenarios of vm/driver.py (debugging)
#
# How the VM gets its userland: the host's own root filesystem is shared read-only over 9p
# and becomes the guest's root under a tmpfs overlay. The nsbox binary is dynamically linked
# against the host's glibc, and the driver needs python3; the host has both, so the guest
# runs exactly what was built and tested here, with nothing to copy or keep in step. The
# Python root filesystem is a second read-only 9p share; a per-run job directory (the binary,
# vm/*, config.json in; summary.jsonl and logs out) is the third, read-write. The VM has no
# network device. Results come back as JSON lines in the job directory's summary.jsonl.
#
# Boot artefacts (the kernel, uncompressed for a direct PVH boot, and an initramfs of busybox-static plus the virtio/9p/overlay
# modules) are cached in ${NSBOX_CACHE_DIR:-/var/cache/nsbox}/vm/<hash of their inputs>.
# Needs root (apt-get, and qemu's 9p server must read the whole host tree).
set -euo pipefail
umask 022

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${NSBOX_CACHE_DIR:-/var/cache/nsbox}/vm
vm_timeout=${NSBOX_VM_TIMEOUT:-600}
# Modules the initramfs loads, dependencies first (resolved again from the .ko files).
vm_modules=(virtio_pci 9pnet_virtio 9p overlay)

log() { printf 'test-vm [%3ds]: %s\n' "$SECONDS" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

[ "$(id -u)" = 0 ] || die "needs root (apt-get, and qemu's 9p export of the host root)"

apt_updated=
apt_refresh() {
	[ -n "$apt_updated" ] && return
	apt-get update -qq >&2 || die "apt-get update failed"
	apt_updated=1
}
apt_install() {
	apt_refresh
	log "installing $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
		die "apt-get install $* failed"
}

# Host tools; the guest runs the same userland, so they are the guest's tools as well.
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
[ -x /usr/bin/python3 ] || missing+=(python3)
command -v gzip >/dev/null || missing+=(gzip)
# busybox must be the static build (/bin/busybox from busybox-static): the initramfs has no libc.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

# --- boot artefacts --------------------------------------------------------------------
candidate_field() { apt-cache show --no-all-versions "$1" 2>/dev/null | sed -n "s/^$2: //p" | head -n 1 || true; }
kernel_image() { candidate_field linux-image-amd64 Depends | grep -o 'linux-image-[0-9][^ ,]*' | head -n 1 || true; }
kernel_pkg=$(kernel_image)
if [ -z "$kernel_pkg" ]; then
	apt_refresh
	kernel_pkg=$(kernel_image)
fi
[ -n "$kernel_pkg" ] || die "apt knows no linux-image-amd64 (check the host's apt sources)"
kernel_ver=$(candidate_field "$kernel_pkg" Version)
busybox_ver=$(dpkg-query -W -f='${Version}' busybox-static)
# newuidmap/newgidmap for the rootless scenarios, from the uidmap package of the host's own
# apt sources (the guest runs the host's userland, which need not have them installed).
uidmap_ver=$(candidate_field uidmap Version)
[ -n "$uidmap_ver" ] || die "apt knows no uidmap package (check the host's apt sources)"
key=$(
	{
		echo "$kernel_pkg $kernel_ver busybox-static $busybox_ver modules ${vm_modules[*]} uidmap $uidmap_ver"
		cat "$repo/vm/init.sh"
		sed -n '/^# --- boot artefacts/,/^# --- end of boot artefacts/p' "$0"
	} | sha256sum | cut -c1-16
)
boot=$cache/$key

build_boot() {
	local tmp
	rm -rf "$cache"/.build.* # what an interrupted build left
	tmp=$(mktemp -d "$cache/.build.XXXXXX")
	log "building boot artefacts $key ($kernel_pkg $kernel_ver)"
	# apt-get download writes into the current directory, as root (not sandboxed as _apt).
	if ! (cd "$tmp" && apt-get download -qq "$kernel_pkg" >&2 2>/dev/null); then
		apt_refresh
		(cd "$tmp" && apt-get download -qq "$kernel_pkg" >&2) || die "apt-get download $kernel_pkg failed"
	fi
	(cd "$tmp" && apt-get download -qq uidmap >&2) || die "apt-get download uidmap failed"
	mkdir "$tmp/uidmap"
	dpkg-deb --fsys-tarfile "$tmp"/uidmap_*.deb | tar -x -C "$tmp/uidmap" --strip-components=3 \
		./usr/bin/newuidmap ./usr/bin/newgidmap
	dpkg-deb --fsys-tarfile "$tmp"/"$kernel_pkg"_*.deb |
		tar -x -C "$tmp" --wildcards './boot/vmlinuz-*' './lib/modules/*/kernel/drivers/virtio/*' \
			'./lib/modules/*/kernel/net/9p/*' './lib/modules/*/kernel/fs/*'
	local moddir
	moddir=$(echo "$tmp"/lib/modules/*)
	# Resolve dependencies from each module's own depends= field, deepest first.
	declare -A seen=()
	local order=()
	add_module() {
		local name=$1 ko dep
		[ -n "${seen[$name]:-}" ] && return
		seen[$name]=1
		ko=$(find "$moddir/kernel" \( -name "$name.ko" -o -name "${name//_/-}.ko" \) | head -n 1)
		[ -n "$ko" ] || die "module $name not found in $kernel_pkg"
		for dep in $(tr '\0' '\n' <"$ko" | sed -n 's/^depends=//p' | tr ',' ' '); do
			add_module "$dep"
		done
		order+=("$name")
		cp "$ko" "$tmp/initramfs/modules/$name.ko"
	}
	mkdir -p "$tmp/initramfs/"{bin,modules,proc,sys,dev}
	for m in "${vm_modules[@]}"; do add_module "$m"; done
	printf '%s\n' "${order[@]}" >"$tmp/initramfs/modules.list"
	cp /bin/busybox "$tmp/initramfs/bin/busybox"
	install -m 0755 "$repo/vm/init.sh" "$tmp/initramfs/init"
	(cd "$tmp/initramfs" && find . | /bin/busybox cpio -o -H newc 2>/dev/null) | gzip -1 >"$tmp/initrd.gz"
	# QEMU boots an uncompressed ELF vmlinux through its PVH entry point (CONFIG_PVH): under
	# TCG that skips about 6 s of firmware and in-guest decompression. Debian compresses
	# with xz; anything else keeps the bzImage.
	/usr/bin/python3 - "$tmp"/boot/vmlinuz-* "$tmp/kernel" <<'PY' || cp "$tmp"/boot/vmlinuz-* "$tmp/kernel"
import lzma, sys
data = open(sys.argv[1], "rb").read()
start = data.find(b"\xfd7zXZ\x00")
elf = lzma.LZMADecompressor().decompress(data[start:]) if start >= 0 else b""
if not elf.startswith(b"\x7fELF"):
    sys.exit(1)
open(sys.argv[2], "wb").write(elf)
PY
	mkdir -p "$boot.tmp"
	mv "$tmp/kernel" "$tmp/initrd.gz" "$tmp/uidmap" "$boot.tmp/"
	printf '%s\n' "${order[@]}" >"$boot.tmp/modules.list"
	echo "$kernel_pkg $kernel_ver" >"$boot.tmp/kernel.version"
	rm -rf "$boot"
	mv "$boot.tmp" "$boot"
	rm -rf "$tmp"
	# Older artefacts take 70 MB each and rebuild in seconds: keep only this one.
	find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$key" ! -name '.*' -exec rm -rf {} +
}
# --- end of boot artefacts

mkdir -p "$cache"
if [ ! -f "$boot/initrd.gz" ]; then
	build_boot
else
	log "boot artefacts: $boot (cached)"
fi

# --- inputs: nsbox binary and root filesystem ---------------------------------------------
if [ -n "${NSBOX_BIN:-}" ]; then
	bin=$NSBOX_BIN
else
	log "building nsbox"
	(cd "$repo" && cargo build --locked >&2) || die "cargo build failed"
	bin=${CARGO_TARGET_DIR:-$repo/target}/debug/nsbox
fi
[ -x "$bin" ] || die "no nsbox binary at $bin"
if [ -z "${NSBOX_ROOTFS:-}" ]; then
	[ -x "$repo/scripts/build-rootfs.sh" ] || [ -f "$repo/scripts/build-rootfs.sh" ] ||
		die "set NSBOX_ROOTFS (this checkout has no scripts/build-rootfs.sh)"
	NSBOX_ROOTFS=$(bash "$repo/scripts/build-rootfs.sh" | tail -n 1)
fi
[ -x "$NSBOX_ROOTFS/usr/bin/python3" ] || [ -L "$NSBOX_ROOTFS/usr/bin/python3" ] ||
	die "$NSBOX_ROOTFS has no usr/bin/python3"

job=$(mktemp -d /tmp/nsbox-vm.XXXXXX)
chmod 0755 "$job" # the rootless scenarios run nsbox as an unprivileged guest user
cleanup() {
	if [ "${NSBOX_VM_KEEP:-0}" = 1 ]; then log "job directory kept: $job"; else rm -rf "$job"; fi
}
trap cleanup EXIT
# Debug info is most of a debug build; the VM does not need it, and 9p under TCG is slow.
strip -o "$job/nsbox" "$bin" 2>/dev/null || cp "$bin" "$job/nsbox"
# The warm path's library, beside the binary as serve expects it (NSBOX_VM_WARM=0: cold only).
lib=$(dirname "$bin")/libnsbox_sandbox.so
warm=false
if [ "${NSBOX_VM_WARM:-1}" != 0 ] && [ -f "$lib" ]; then
	strip -o "$job/libnsbox_sandbox.so" "$lib" 2>/dev/null || cp "$lib" "$job/libnsbox_sandbox.so"
	warm=true
else
	log "warm scenario skipped (NSBOX_VM_WARM=0, or no $lib)"
fi
mkdir "$job/vm" "$job/uidmap"
cp "$repo/vm/guest.sh" "$repo/vm/driver.py" "$job/vm/"
cp "$boot"/uidmap/newuidmap "$boot"/uidmap/newgidmap "$job/uidmap/" # guest.sh installs them setuid
cat >"$job/config.json" <<EOF
{"rootfs": "/nsbox-vm/rootfs", "rootless": $([ "${NSBOX_VM_ROOTLESS:-1}" = 0 ] && echo false || echo true), "warm": $warm,
 "scenarios": [${NSBOX_VM_SCENARIOS:-}]}
EOF

# --- boot ----------------------------------------------------------------------------------
log "booting $(cat "$boot/kernel.version") under TCG (bound: ${vm_timeout}s); rootfs $NSBOX_ROOTFS"
share() { echo "local,path=$1,mount_tag=$2,security_model=none,multidevs=remap${3:+,$3}"; }
vm_start=$SECONDS
boot_timeout=${NSBOX_VM_BOOT_TIMEOUT:-180}
timeout --kill-after=10 "$vm_timeout" qemu-system-x86_64 \
	-accel tcg -cpu max -m 2048 -smp 2 -nographic -no-reboot -nic none \
	-kernel "$boot/kernel" -initrd "$boot/initrd.gz" \
	-append "console=ttyS0 panic=-1 cgroup_no_v1=all" \
	-virtfs "$(share / hostroot readonly=on)" \
	-virtfs "$(share "$NSBOX_ROOTFS" nsboxroot readonly=on)" \
	-virtfs "$(share "$job" job)" \
	</dev/null >"$job/console.log" 2>&1 &
qemu_pid=$!
trap 'kill "$qemu_pid" 2>/dev/null || true; cleanup' EXIT
# A VM that never reaches guest.sh fails after boot_timeout, not after the whole bound.
booted='' boot_failed=''
while kill -0 "$qemu_pid" 2>/dev/null; do
	if [ -z "$booted" ] && grep -q '^nsbox-vm: ' "$job/console.log" 2>/dev/null; then
		booted=1
		log "VM booted in $((SECONDS - vm_start))s; running the checks"
	elif [ -z "$booted" ] && [ $((SECONDS - vm_start)) -ge "$boot_timeout" ]; then
		log "the VM did not reach guest.sh within ${boot_timeout}s: stopping it"
		kill "$qemu_pid"
		boot_failed=1
		break
	fi
	sleep 1
done
qemu_status=0
wait "$qemu_pid" || qemu_status=$?
[ -z "$boot_failed" ] || qemu_status=124
log "VM ran $((SECONDS - vm_start))s (qemu exit status $qemu_status)"

# --- verdict -------------------------------------------------------------------------------
verdict=0
/usr/bin/python3 - "$job/summary.jsonl" <<'EOF' || verdict=$?
import json, sys
try:
    lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
except FileNotFoundError:
    print("test-vm: no summary: the VM did not get as far as the driver")
    sys.exit(2)
failed = xfail = 0
for l in lines:
    if l["ok"]:
        word = "PASS "
    elif l.get("expected_failure"):
        word, xfail = "XFAIL", xfail + 1
    else:
        word, failed = "FAIL ", failed + 1
    detail = json.dumps(l["detail"])
    if l["ok"] and len(detail) > 160:
        detail = detail[:160] + "..."
    print(f"{word} {l['mode']:<20} {l['check']:<40} {detail}")
finished = any(l["check"] == "driver-finished" for l in lines)
print(f"test-vm: {len(lines)} checks, {failed} failed, {xfail} expected failures"
      + ("" if finished else ", driver did NOT finish"))
sys.exit(1 if failed or not finished else 0)
EOF
if [ "$verdict" != 0 ] || [ "$qemu_status" != 0 ]; then
	if [ -n "$boot_failed" ]; then
		log "the VM did not boot within ${boot_timeout}s"
	elif [ "$qemu_status" = 124 ] || [ "$qemu_status" = 137 ]; then
		log "the VM hit the ${vm_timeout}s bound"
	fi
	echo "----- VM console log ($job/console.log) -----" >&2
	tail -n 200 "$job/console.log" >&2
	for f in "$job"/server-*.log; do
		[ -f "$f" ] || continue
		echo "----- $(basename "$f") (last 30 lines) -----" >&2
		tail -n 30 "$f" >&2
	done
	NSBOX_VM_KEEP=1
	log "FAILED"
	exit 1
fi
log "all VM checks passed in ${SECONDS}s"
