#!/usr/bin/env bash
# Runs the whole test suite, building what is missing first (the root filesystem is cached
# outside the checkout, keyed by its recipe): the Rust unit and integration tests over the
# real sandbox (tests/edge.rs with a headless chromium), the official-SDK and OpenAPI
# conformance suite, the web playground in chromium (tests/ui), and the cgroup v2 checks in
# a VM; the deployment checks (manifests, the OCI image under podman, several nodes behind
# HAProxy, the manifest under `podman kube play` and the least privilege under runc and
# crun). Needs root: the sandbox tests create namespaces and cgroups, and fail loudly
# without it. For quick local runs (CI runs everything): NSBOX_SKIP_VM=1 leaves the VM out,
# NSBOX_SKIP_IMAGE=1 the image test, NSBOX_SKIP_KUBE=1 the kube play and least-privilege
# test, NSBOX_SKIP_SCALE_OUT=1 the HAProxy test.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: the sandbox tests need root" >&2
    exit 1
fi
NSBOX_ROOTFS=$(scripts/build-rootfs.sh | tail -n 1)
export NSBOX_ROOTFS
echo "root filesystem: $NSBOX_ROOTFS" >&2
# The binary and libnsbox_sandbox.so (the warm path's shared library) beside it.
cargo build --locked
# The single static binary (release, libnsbox_sandbox.so inside), which tests/static_binary.rs
# checks and serves from.
NSBOX_STATIC_BIN=$(scripts/build-static.sh | tail -n 1)
export NSBOX_STATIC_BIN
# tests/edge.rs and tests/ui drive a real browser (Debian's chromium, headless);
# tests/egress.rs makes its HTTPS upstream's certificate with openssl.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    echo "scripts/test.sh: installing ${missing[*]} from Debian's packages" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
# tests/packages.rs serves a local package index: pypiserver in a virtualenv and two
# wheels, fetched from PyPI here, before the tests (they need no outside network).
scripts/packages-index.sh >/dev/null
cargo test --locked "$@"
NSBOX_BIN=target/debug/nsbox scripts/test-sdk.sh
# The web playground in a real browser (chromium, installed above), screenshots in
# target/ui-screenshots.
NSBOX_BIN=target/debug/nsbox scripts/test-ui.sh
NSBOX_BIN=target/debug/nsbox scripts/test-manifests.sh
if [ "${NSBOX_SKIP_IMAGE:-0}" != 1 ]; then
    scripts/test-image.sh
fi
if [ "${NSBOX_SKIP_KUBE:-0}" != 1 ]; then
    scripts/test-kube.sh
fi
if [ "${NSBOX_SKIP_SCALE_OUT:-0}" != 1 ]; then
    NSBOX_BIN=target/debug/nsbox scripts/test-scale-out.sh
fi
if [ "${NSBOX_SKIP_VM:-0}" != 1 ]; then
    NSBOX_BIN=target/debug/nsbox scripts/test-vm.sh
fi
