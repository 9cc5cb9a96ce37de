#!/usr/bin/env bash
# Checks the deployment files without a cluster:
#   - deploy/kubernetes.yaml with kubernetes-validate --strict (pinned in
#     tests/deploy/requirements.txt) against the Kubernetes API schemas of 1.30 (the oldest
#     with the fields the manifest uses: appArmorProfile, the preStop sleep action) and 1.37;
#   - tests/deploy/manifest.py check: ports, probes, config and key paths, the volume
#     layout, stop timing and memory limit, against nsbox's own reading of the ConfigMap;
#   - deploy/haproxy.cfg with `haproxy -c` (HAProxy from Debian's package, installed if
#     missing; scripts/test-scale-out.sh then runs it for real).
# A few seconds once the virtualenv is cached (scripts/venv.sh).
#
#   scripts/test-manifests.sh     (NSBOX_BIN, default target/debug/nsbox; NSBOX_ROOTFS)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1

log() { printf 'test-manifests: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
# The Kubernetes versions the manifest is checked against.
kubernetes_versions=(1.30.0 1.37.0)

bin=${NSBOX_BIN:-target/debug/nsbox}
[ -x "$bin" ] || die "no nsbox binary at $bin (run cargo build, or set NSBOX_BIN)"
rootfs=${NSBOX_ROOTFS:-}
[ -n "$rootfs" ] || rootfs=$(scripts/build-rootfs.sh | tail -n 1)
venv=$(scripts/venv.sh tests/deploy/requirements.txt deploy-venv "${NSBOX_DEPLOY_PYTHON:-python3}" | tail -n 1)

for v in "${kubernetes_versions[@]}"; do
	"$venv/bin/kubernetes-validate" --strict --quiet -k "$v" deploy/kubernetes.yaml ||
		die "deploy/kubernetes.yaml does not validate against Kubernetes $v"
	log "deploy/kubernetes.yaml: valid (strict) for Kubernetes $v"
done
"$venv/bin/python" tests/deploy/manifest.py check "$bin" "$rootfs"

if ! command -v haproxy >/dev/null; then
	log "installing haproxy"
	apt-get update -qq >&2 || die "apt-get update failed"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >&2 ||
		die "apt-get install haproxy failed"
fi
haproxy -c -q -f deploy/haproxy.cfg || die "deploy/haproxy.cfg does not pass haproxy -c"
log "deploy/haproxy.cfg: valid for $(haproxy -v | head -n 1 | cut -d' ' -f1-3)"
