#!/usr/bin/env bash
# Builds what is missing (root filesystem, release binary) and serves the API on
# 127.0.0.1:8080 (override with --listen or NSBOX_LISTEN). Extra arguments go to `nsbox serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
rootfs=$(scripts/build-rootfs.sh | tail -n 1)
cargo build --release --locked >&2
exec target/release/nsbox serve --rootfs "$rootfs" "$@"
