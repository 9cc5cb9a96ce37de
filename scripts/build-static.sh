#!/usr/bin/env bash
# Builds nsbox as a single statically linked x86_64 executable that carries the warm path
# with it: copy the one file to a host (with a root filesystem) and `nsbox serve` runs warm.
#
#   scripts/build-static.sh     build (or reuse) it; prints its path,
#                               target/static/nsbox, as the last line of stdout
#
# Release profile, glibc, `--target x86_64-unknown-linux-gnu`. Two cargo steps share one
# target directory, so the dependencies compile once:
#   1. libnsbox_sandbox.so, the cdylib that zygotes load. It stays dynamically linked against glibc:
#      it is loaded into the root filesystem's python3 (bookworm, glibc 2.36), which has
#      its own libc, and rustc cannot build a cdylib with crt-static on this target anyway.
#   2. the binary, with `--cfg nsbox_embedded_warm_library` (main() then include_bytes! the
#      copy of step 1 named by NSBOX_EMBEDDED_WARM_LIBRARY) and
#      `-C target-feature=+crt-static`. Both go through `cargo rustc` to the binary's own
#      rustc, which is where linking happens, so the library crate and the dependencies
#      are the very units of step 1 and do not compile again. (In RUSTFLAGS the flags would
#      reach every crate: the dependencies would compile a second time and each step would
#      invalidate the other's.)
# The result has no program interpreter and needs no shared library (tests/static_binary.rs
# checks its ELF headers, then serves from it). Environment: CARGO_TARGET_DIR (default
# target/).
set -euo pipefail
cd "$(dirname "$0")/.."

triple=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-target}
release=$target_dir/$triple/release
out=$target_dir/static

log() { printf 'build-static: %s\n' "$*" >&2; }

# A fresh machine has the host target already; a toolchain without it gets it from rustup.
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$triple"; then
    log "installing the $triple target"
    rustup target add "$triple" >&2
fi
# glibc's static archives (libc.a, rcrt1.o for static-pie) come with libc6-dev, which any
# Rust build on Debian already needs; install it if a machine somehow lacks it.
if [ ! -f "$(cc -print-file-name=libc.a)" ]; then
    log "installing libc6-dev for glibc's static libraries"
    apt-get install -y --no-install-recommends libc6-dev >&2
fi

log "1/2 libnsbox_sandbox.so (the warm path's shared library)"
cargo build --locked --release --target "$triple" -p nsbox-sandbox --lib >&2
mkdir -p "$out/embedded"
# The copy step 2 embeds, updated only when the library changed (cargo rebuilds the binary
# when the included file's time changes).
if ! cmp -s "$release/libnsbox_sandbox.so" "$out/embedded/libnsbox_sandbox.so"; then
    cp "$release/libnsbox_sandbox.so" "$out/embedded/libnsbox_sandbox.so"
fi

log "2/2 nsbox, static, with libnsbox_sandbox.so inside"
NSBOX_EMBEDDED_WARM_LIBRARY=$(realpath "$out/embedded/libnsbox_sandbox.so") \
    cargo rustc --locked --release --target "$triple" --bin nsbox -- \
    -C target-feature=+crt-static --cfg nsbox_embedded_warm_library >&2
# The binary alone in its directory: a libnsbox_sandbox.so beside it would take precedence over
# the copy inside.
cp "$release/nsbox" "$out/nsbox"
"$out/nsbox" --help >/dev/null
log "$(du -h "$out/nsbox" | cut -f1) (libnsbox_sandbox.so inside: $(du -h "$out/embedded/libnsbox_sandbox.so" | cut -f1))"
realpath "$out/nsbox"
