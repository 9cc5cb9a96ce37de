#!/usr/bin/env bash
# Runs the whole test suite, building what is missing first (the root filesystem is cached
# outside the checkout, keyed by its recipe). Needs root: the sandbox tests create
# namespaces and cgroups, and fail loudly without it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: the sandbox tests need root" >&2
    exit 1
fi
NSBOX_ROOTFS=$(scripts/build-rootfs.sh | tail -n 1)
export NSBOX_ROOTFS
echo "root filesystem: $NSBOX_ROOTFS" >&2
cargo test --locked "$@"
