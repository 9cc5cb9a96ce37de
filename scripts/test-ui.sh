#!/usr/bin/env bash
# Runs tests/ui: the web playground and status page in a real browser (Debian's chromium,
# driven by Playwright for Python through executable_path: Playwright downloads no browser)
# against real `nsbox serve` processes, one per kind of scenario (keyless, with keys,
# page off). Screenshots of the main states go to target/ui-screenshots (or
# $NSBOX_UI_SCREENSHOTS). Needs root (nsbox creates namespaces and cgroups).
#
#   NSBOX_ROOTFS=$(scripts/build-rootfs.sh | tail -n 1) scripts/test-ui.sh [PYTEST ARGS...]
#
# Environment:
#   NSBOX_ROOTFS     the root filesystem (required)
#   NSBOX_BIN        the nsbox binary (default target/debug/nsbox; build it first)
#   NSBOX_CHROMIUM   the browser (default chromium on the PATH)
#   NSBOX_CACHE_DIR  where the virtualenv is kept (default /var/cache/nsbox), as
#                    ui-venv-<hash of tests/ui/requirements.txt and the interpreter>
# Exits with pytest's status.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
	echo "scripts/test-ui.sh: $*" >&2
	exit 1
}
[[ $(id -u) == 0 ]] || die "must run as root: nsbox serve creates namespaces and cgroups"
[[ -n ${NSBOX_ROOTFS:-} ]] ||
	die "NSBOX_ROOTFS is not set; build one with NSBOX_ROOTFS=\$(scripts/build-rootfs.sh | tail -n 1)"
bin=${NSBOX_BIN:-target/debug/nsbox}
[[ -x $bin ]] || die "no nsbox binary at $bin (run cargo build, or set NSBOX_BIN)"
NSBOX_BIN=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
export NSBOX_BIN
command -v "${NSBOX_CHROMIUM:-chromium}" >/dev/null ||
	die "no chromium: apt-get install chromium (scripts/test.sh does), or set NSBOX_CHROMIUM"
venv=$(scripts/venv.sh tests/ui/requirements.txt ui-venv | tail -n 1) ||
	die "could not build the virtualenv of tests/ui/requirements.txt"
export NSBOX_UI_SCREENSHOTS=${NSBOX_UI_SCREENSHOTS:-$PWD/target/ui-screenshots}
cd tests/ui
exec timeout "${NSBOX_UI_TIMEOUT:-900}" "$venv/bin/python" -m pytest -p no:cacheprovider -q "$@"
