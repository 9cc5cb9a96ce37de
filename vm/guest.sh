#!/bin/bash
# PID 1 of the nsbox test VM once the initramfs has switched to the shared host root.
#
# Mounts what a booted system would have (a pure cgroup v2 hierarchy at /sys/fs/cgroup,
# tmpfs on /tmp and /run), runs the test driver, and powers off. bash stays PID 1 and
# reaps whatever is orphaned to it while the driver runs.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
job=/nsbox-vm/job

poweroff_now() {
	sync
	echo o >/proc/sysrq-trigger
	sleep 60
}
trap poweroff_now EXIT

mount -t tmpfs -o mode=1777 tmp /tmp
mount -t tmpfs -o mode=0755 run /run
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup || echo "nsbox-vm: mounting cgroup2 failed"
busybox ip link set lo up
# The job share is uncached (results must reach the host even if the VM is cut off), so
# the binary is copied once into tmpfs rather than paged in over 9p at every exec.
mkdir -p /run/nsbox-vm
install -m 0755 "$job/nsbox" /run/nsbox-vm/nsbox
[ ! -f "$job/libnsbox_sandbox.so" ] || install -m 0644 "$job/libnsbox_sandbox.so" /run/nsbox-vm/libnsbox_sandbox.so
# The empty overlay layer beside the root filesystem, as an install as root leaves it: a
# rootless server cannot create it in a directory it does not own.
# It is a tmpfs of its own: the guest's / is an overlay, and a layer from it would stack
# a warm run's overlay (of its template's, of the tree) past the kernel's depth limit of 2.
mkdir -p /nsbox-vm/nsbox-empty-layer
mount -t tmpfs -o mode=0755,size=4k,nr_inodes=1 empty /nsbox-vm/nsbox-empty-layer

# The rootless scenarios' users (the guest's /etc is the throwaway tmpfs overlay): one
# with 65536 subordinate ids, as `adduser` gives on Debian, and one without any. The
# setuid helpers come from the uidmap package test-vm.sh fetched, installed as dpkg would.
install -o root -g root -m 4755 "$job/uidmap/newuidmap" /usr/bin/newuidmap
install -o root -g root -m 4755 "$job/uidmap/newgidmap" /usr/bin/newgidmap
cat >>/etc/passwd <<'EOF'
nsbox-deleg:x:1500:1500:nsbox VM test, subordinate ids and a delegated cgroup:/tmp:/bin/sh
nsbox-plain:x:1501:1501:nsbox VM test, nothing:/tmp:/bin/sh
EOF
printf 'nsbox-deleg:x:1500:\nnsbox-plain:x:1501:\n' >>/etc/group
echo 'nsbox-deleg:200000:65536' >>/etc/subuid
echo 'nsbox-deleg:200000:65536' >>/etc/subgid

echo "nsbox-vm: $(uname -r), cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
/usr/bin/python3 "$job/vm/driver.py" "$job" &
driver=$!
# wait returns early when any child (also an orphan reparented here) changes state;
# loop until the driver itself is gone.
while kill -0 "$driver" 2>/dev/null; do
	wait "$driver"
	status=$?
done
echo "nsbox-vm: driver exited with status ${status:-?}"
