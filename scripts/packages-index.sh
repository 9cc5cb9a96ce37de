#!/usr/bin/env bash
# Prepares what tests/packages.rs and scripts/bench-packages.sh serve as a local package
# index (issue 24): a virtualenv with pypiserver (scripts/venv.sh, tests/packages/
# requirements.txt) and two small pure-Python wheels fetched from PyPI at setup time, once
# (cached; later calls need no network). Prints two lines: the virtualenv, the wheel dir.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(scripts/venv.sh tests/packages/requirements.txt packages-venv | tail -n1)
cache=${NSBOX_CACHE_DIR:-/var/cache/nsbox}
wheels=$cache/packages-wheels
if [ ! -f "$wheels/.nsbox-ready" ]; then
	mkdir -p "$wheels"
	# Pinned by version and hash: the tests' wheels are always these bytes.
	cat >"$wheels/requirements.txt" <<'REQ'
tabulate==0.9.0 --hash=sha256:024ca478df22e9340661486f85298cff5f6dcdba14f3813e8830015b9ed1948f
termcolor==2.4.0 --hash=sha256:9297c0df9c99445c2412e832e882a7884038a25617c60cea2ad69488d4040d63
REQ
	timeout 300 "$venv/bin/python" -m pip download --quiet --disable-pip-version-check \
		--no-deps --only-binary=:all: --require-hashes -r "$wheels/requirements.txt" -d "$wheels" >&2
	touch "$wheels/.nsbox-ready"
fi
echo "$venv"
echo "$wheels"
