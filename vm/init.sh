#!/bin/busybox sh
# /init of the nsbox test VM's initramfs (busybox-static plus a few kernel modules).
#
# Loads the virtio and 9p drivers, mounts the host's root filesystem (shared read-only
# over 9p as "hostroot") under a tmpfs overlay so the guest can write, mounts the job
# directory ("job", read-write: inputs and results) and the Python root filesystem
# ("nsboxroot", read-only), then switches to that root and hands over to the job's
# guest.sh. Any failure powers the VM off at once, so the host never waits for a timeout.
/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
	echo "nsbox-vm init: FAILED: $*"
	echo o >/proc/sysrq-trigger
	sleep 60
}

while read -r m; do
	insmod "/modules/$m.ko" || fail "insmod $m"
done </modules.list

p9=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /lower /rw /newroot
# The shared host root is read-only and nothing else changes it while the VM runs, so the
# guest may cache it freely (cache=loose): this is what makes Python imports bearable.
mount -t 9p -o "$p9,ro,cache=loose" hostroot /lower || fail "mount hostroot"
mount -t tmpfs -o mode=0755 rw /rw || fail "mount tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
	fail "mount overlay"
mkdir -p /newroot/nsbox-vm/job /newroot/nsbox-vm/rootfs
mount -t 9p -o "$p9" job /newroot/nsbox-vm/job || fail "mount job"
mount -t 9p -o "$p9,ro,cache=loose" nsboxroot /newroot/nsbox-vm/rootfs || fail "mount nsboxroot"

for d in proc sys dev; do
	mount --move "/$d" "/newroot/$d" || fail "move /$d"
done
# switch_root only returns if it could not exec.
# shellcheck disable=SC2093
exec switch_root /newroot /bin/bash /nsbox-vm/job/vm/guest.sh
fail "switch_root"
