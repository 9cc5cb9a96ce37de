#!/usr/bin/env bash
# Builds (or reuses) the virtualenv of tests/deploy/requirements.txt and prints its path as
# the last line of stdout: ${NSBOX_CACHE_DIR:-/var/cache/nsbox}/deploy-venv-<hash of the
# requirements and the interpreter>. Used by scripts/test-manifests.sh and
# scripts/test-image.sh. NSBOX_DEPLOY_PYTHON: the interpreter (default python3, 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'deploy-venv: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
python=${NSBOX_DEPLOY_PYTHON:-python3}
command -v "$python" >/dev/null || die "no $python on PATH"
requirements=tests/deploy/requirements.txt
key=$(
	{
		cat "$requirements"
		"$python" -c 'import sys; print(sys.executable, sys.version)'
	} | sha256sum | cut -c1-16
)
cache=${NSBOX_CACHE_DIR:-/var/cache/nsbox}
venv=$cache/deploy-venv-$key
mkdir -p "$cache"
# One builder at a time; the marker is written last, so a half-built venv is rebuilt.
exec 8>"$cache/.deploy-venv.lock"
timeout 600 flock 8 || die "waited 10 minutes for another build of $venv"
if [ ! -f "$venv/.nsbox-ready" ]; then
	log "building $venv with $("$python" --version)"
	rm -rf --one-file-system -- "$venv"
	"$python" -m venv "$venv" ||
		die "could not create a virtualenv with $python (on Debian: apt-get install python3-venv)"
	timeout 600 "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
		-r "$requirements" >&2 || die "pip could not install $requirements"
	touch "$venv/.nsbox-ready"
fi
echo "$venv"
