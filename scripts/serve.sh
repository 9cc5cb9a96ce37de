#!/usr/bin/env bash
# Builds what is missing (root filesystem, release binary) and serves the API on
# 127.0.0.1:8080 with the default configuration. Extra arguments go to `nsbox serve`
# (e.g. --config deploy/nsbox.toml, --listen, --api-key; see `nsbox serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
rootfs=$(scripts/build-rootfs.sh | tail -n 1)
cargo build --release --locked >&2
# Point nsbox at the tree just built, unless the operator's own configuration names one.
named=${NSBOX_ROOTFS:-}${NSBOX_CONFIG:-}
for arg in "$@"; do
	case $arg in --rootfs | --rootfs=* | --config | --config=*) named=yes ;; esac
done
if [[ -z $named ]]; then
	export NSBOX_ROOTFS=$rootfs
fi
exec target/release/nsbox serve "$@"
