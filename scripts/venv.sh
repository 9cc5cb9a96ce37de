#!/usr/bin/env bash
# Builds (or reuses) the virtualenv of a pinned requirements file and prints its path as the
# last line of stdout: ${NSBOX_CACHE_DIR:-/var/cache/nsbox}/NAME-<hash of the requirements and
# the interpreter>. One builder at a time; the marker is written last, so a half-built
# virtualenv is rebuilt.
#
#   scripts/venv.sh REQUIREMENTS NAME [PYTHON]
#
# Used by scripts/test-sdk.sh (tests/sdk, sdk-venv) and by scripts/test-manifests.sh and
# scripts/test-image.sh (tests/deploy, deploy-venv). PYTHON defaults to python3 (3.11).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'venv: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
[ $# -ge 2 ] || die "usage: scripts/venv.sh REQUIREMENTS NAME [PYTHON]"
requirements=$1
name=$2
python=${3:-python3}
command -v "$python" >/dev/null || die "no $python on PATH"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
	die "$python is older than 3.9 (the pins in $requirements are for 3.11)"
key=$(
	{
		cat "$requirements"
		"$python" -c 'import sys; print(sys.executable, sys.version)'
	} | sha256sum | cut -c1-16
)
cache=${NSBOX_CACHE_DIR:-/var/cache/nsbox}
venv=$cache/$name-$key
mkdir -p "$cache"
exec 8>"$cache/.$name.lock"
timeout 900 flock 8 || die "waited 15 minutes for another build of $venv"
if [ ! -f "$venv/.nsbox-ready" ]; then
	log "building $venv with $("$python" --version)"
	rm -rf --one-file-system -- "$venv"
	"$python" -m venv "$venv" ||
		die "could not create a virtualenv with $python (on Debian: apt-get install python3-venv)"
	timeout 900 "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
		-r "$requirements" >&2 || die "pip could not install $requirements"
	touch "$venv/.nsbox-ready"
else
	log "reusing $venv"
fi
echo "$venv"
