#!/usr/bin/env python3
"""deploy/kubernetes.yaml, read as a cluster would (PyYAML, from tests/deploy/requirements.txt).

  manifest.py check NSBOX_BIN ROOTFS
      The manifest agrees with itself and with nsbox's own reading of its configuration:
      ports, probes, the config and key paths, the volume layout the image and the init
      container use, the stop timing and the memory limit. nsbox parses the ConfigMap's
      nsbox.toml (`nsbox check --config ... --json --no-run`), so unknown keys or impossible
      values fail here, and the listening port compared is the one nsbox would use.
  manifest.py podman OUTDIR
      What scripts/test-image.sh runs: the ConfigMap's nsbox.toml and a fresh key (in place of
      the Secret's placeholder) written under OUTDIR, and OUTDIR/init.args, OUTDIR/main.args
      (one `podman run` argument per line; the image name is the line IMAGE) translating the
      init container and the nsbox container, their volumes and securityContext.
  manifest.py kube OUTDIR
      What scripts/test-kube.sh gives `podman kube play`: OUTDIR/play.yaml, the manifest with
      only what podman 4.3 (Debian 12's) cannot take changed: the Secret is left out and
      written as OUTDIR/secret.yaml for `podman secret create` (podman 4.3 ignores
      stringData and does not decode data), one replica (podman makes one named volume per
      emptyDir name, shared by every replica), restartPolicy OnFailure (podman 4.3 applies
      Always to init containers too and restarts the finished copy forever), and the http
      port published on 127.0.0.1 at a given host port (podman publishes every
      containerPort on the host, by default on all addresses). Also OUTDIR/api-key, the
      image's name, the pod's and the nsbox container's names and the grace period.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

MANIFEST = Path(os.environ.get("NSBOX_K8S_MANIFEST") or Path(__file__).resolve().parents[2] / "deploy" / "kubernetes.yaml")
PROBLEMS: list[str] = []


def need(cond: bool, what: str) -> None:
    if not cond:
        PROBLEMS.append(what)


def load() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return {d["kind"]: d for d in docs}


def parts(docs):
    dep = docs["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (main,) = [c for c in pod["containers"] if c["name"] == "nsbox"]
    (init,) = pod.get("initContainers", [])
    return dep, pod, main, init


def memory_bytes(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9}
    for u, m in units.items():
        if q.endswith(u):
            return int(float(q[: -len(u)]) * m)
    return int(q)


def mount_of(container: dict, volume: str) -> dict:
    (m,) = [m for m in container.get("volumeMounts", []) if m["name"] == volume]
    return m


def nsbox_config(bin_: str, rootfs: str, toml: str, keys_file: str) -> dict:
    """nsbox's own reading of the ConfigMap's file: the paths that exist only in the pod are
    pointed at local stand-ins through the environment (which beats the file)."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(toml)
        f.flush()
        env = dict(os.environ, NSBOX_ROOTFS=rootfs, NSBOX_API_KEYS_FILE=keys_file)
        r = subprocess.run([bin_, "check", "--config", f.name, "--json", "--no-run"], env=env,
                           capture_output=True, text=True)
    need(r.returncode in (0, 1), f"nsbox check refused the ConfigMap's nsbox.toml: {r.stderr.strip()}")
    try:
        return json.loads(r.stdout)["config"]
    except (ValueError, KeyError):
        PROBLEMS.append(f"nsbox check printed no configuration: {r.stdout[:300]!r} {r.stderr[:300]!r}")
        return {}


def report() -> None:
    if PROBLEMS:
        for p in PROBLEMS:
            print(f"{MANIFEST}: {p}", file=sys.stderr)
        sys.exit(1)


def cmd_check(bin_: str, rootfs: str) -> None:
    docs = load()
    for kind in ("Secret", "ConfigMap", "Deployment", "Service"):
        need(kind in docs, f"no {kind}")
    dep, pod, main, init = parts(docs)
    toml = docs["ConfigMap"]["data"]["nsbox.toml"]
    with tempfile.NamedTemporaryFile("w") as keys:
        keys.write("a-key\n")
        keys.flush()
        raw = __import__("tomllib").loads(toml)
        cfg = nsbox_config(bin_, rootfs, toml, keys.name)
    if not cfg:
        report()

    # The port nsbox listens on is the container's port "http", which every probe and the
    # Service use.
    port = int(cfg["listen"].rsplit(":", 1)[1])
    need(not cfg["listen"].startswith("127."), f"listen = {cfg['listen']}: a pod must listen beyond loopback")
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    need(ports.get("http") == port, f"containerPort http {ports.get('http')} != nsbox's listen port {port}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = main.get(probe)
        need(p is not None, f"no {probe}")
        if not p:
            continue
        handler = p.get("httpGet") or p.get("tcpSocket")
        need("exec" not in p, f"{probe} uses exec (see docs/operating.md, Kubernetes)")
        need(handler is not None and ports.get(handler["port"], handler["port"]) == port,
             f"{probe} port {handler and handler['port']} is not nsbox's port {port}")
        if probe != "livenessProbe":
            need(p.get("httpGet", {}).get("path") == "/v1/health", f"{probe} is not GET /v1/health")
    svc_ports = docs["Service"]["spec"]["ports"]
    need(all(ports.get(p["targetPort"], p["targetPort"]) == port for p in svc_ports),
         f"Service targetPort {svc_ports} is not nsbox's port {port}")
    need(docs["Service"]["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"],
         "the Service does not select the Deployment's pods")

    # The command reads the mounted ConfigMap; its keys file is inside the mounted Secret.
    cmd = main["command"]
    need(cmd[:2] == ["/usr/local/bin/nsbox", "serve"], f"command {cmd}: nsbox must be PID 1, no wrapper")
    config_path = cmd[cmd.index("--config") + 1]
    cm = mount_of(main, "config")
    cm_file = cm["mountPath"] if cm.get("subPath") else f"{cm['mountPath'].rstrip('/')}/nsbox.toml"
    need(cm_file == config_path and cm.get("subPath") in (None, "nsbox.toml"),
         f"the ConfigMap's nsbox.toml is mounted at {cm_file}, nsbox reads {config_path}")
    keys_mount = mount_of(main, "keys")["mountPath"]
    need(raw.get("api_keys_file", "").startswith(keys_mount.rstrip("/") + "/"),
         f"api_keys_file {raw.get('api_keys_file')} is not in the Secret's mount {keys_mount}")
    key_name = raw.get("api_keys_file", "").rsplit("/", 1)[-1]
    need(key_name in docs["Secret"]["stringData"], f"the Secret has no {key_name}")

    # The tree: the init container copies the image's /opt/nsbox (tree and empty layer) onto
    # the state volume, where nsbox's rootfs points; the volume is an emptyDir (not overlayfs).
    state = mount_of(main, "state")["mountPath"].rstrip("/")
    need(mount_of(init, "state")["mountPath"].rstrip("/") == state, "init and nsbox mount the state volume apart")
    need(raw.get("rootfs") == f"{state}/rootfs", f"rootfs {raw.get('rootfs')} is not {state}/rootfs")
    need(init["command"][-4:] == ["-a", "-T", "/opt/nsbox", state],
         f"the init container does not copy /opt/nsbox onto {state}: {init['command']}")
    need(init["image"] == main["image"], "the init container and nsbox use different images")
    (vol,) = [v for v in pod["volumes"] if v["name"] == "state"]
    need("emptyDir" in vol and vol["emptyDir"].get("medium") != "Memory", "the state volume is not an emptyDir on disk")

    # Stopping: the grace period covers the preStop pause, nsbox's shutdown_grace, the 2 s
    # it gives cancelled runs' answers before closing every connection, the 1 s it waits
    # for them to close and the runtime's own 5 s shutdown.
    pre_stop = main.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    need(grace > cfg["shutdown_grace"] + 8 + pre_stop,
         f"terminationGracePeriodSeconds {grace} <= shutdown_grace {cfg['shutdown_grace']} + 8 + preStop {pre_stop}")

    # Memory: every run of the pod is in the container's cgroup.
    limit = memory_bytes(main["resources"]["limits"]["memory"])
    want = cfg["max_running"] * cfg["memory_mib"] * 2**20 + 2**30
    need(limit >= want, f"memory limit {limit} below max_running x memory_mib + 1 GiB = {want}")
    need(pod.get("hostUsers", True) is True, "hostUsers: false cannot map nsbox's id range (see the manifest)")
    need(pod.get("automountServiceAccountToken") is False, "the pod mounts a service account token")

    report()
    print(f"{MANIFEST.name}: consistent (port {port}, probes on /v1/health, rootfs {raw['rootfs']}, "
          f"grace {grace} s > {cfg['shutdown_grace']} + 8 + {pre_stop}, memory {limit >> 20} MiB >= {want >> 20} MiB)")


def podman_security(pod: dict, sc: dict) -> list[str]:
    """A container securityContext as podman flags; anything the test cannot translate is an error."""
    args = []
    known = {"privileged", "allowPrivilegeEscalation", "capabilities", "seccompProfile", "appArmorProfile",
             "procMount", "runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem"}
    unknown = set(sc) - known
    if unknown:
        sys.exit(f"manifest.py: cannot translate securityContext fields {sorted(unknown)} to podman")
    if sc.get("privileged"):
        args.append("--privileged")
    caps = sc.get("capabilities", {})
    args += [f"--cap-drop={c}" for c in caps.get("drop", [])]
    args += [f"--cap-add={c}" for c in caps.get("add", [])]
    for field, opt in (("seccompProfile", "seccomp"), ("appArmorProfile", "apparmor")):
        kind = sc.get(field, {}).get("type", "RuntimeDefault")
        if kind == "Unconfined":
            args.append(f"--security-opt={opt}=unconfined")
        elif kind != "RuntimeDefault":
            sys.exit(f"manifest.py: {field} {kind} is not translated")
    if sc.get("procMount") == "Unmasked":
        args.append("--security-opt=unmask=ALL")
    if sc.get("allowPrivilegeEscalation") is False:
        args.append("--security-opt=no-new-privileges")
    if "runAsUser" in sc:
        args.append(f"--user={sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}")
    if sc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if pod.get("hostUsers", True) is False:
        args.append("--userns=auto")
    return args


def cmd_podman(out: Path) -> None:
    docs = load()
    dep, pod, main, init = parts(docs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "state").mkdir(exist_ok=True)
    (out / "keys").mkdir(exist_ok=True)
    # The ConfigMap as a directory of its keys (mounted whole, or one file with subPath).
    (out / "config").mkdir(exist_ok=True)
    for name, text in docs["ConfigMap"]["data"].items():
        (out / "config" / name).write_text(text)
    key = secrets.token_hex(32)
    for name in docs["Secret"]["stringData"]:
        f = out / "keys" / name
        f.write_text(key + "\n")
        f.chmod(0o400)
    (out / "api-key").write_text(key)
    vols = {v["name"]: v for v in pod["volumes"]}

    def volume_args(c: dict) -> list[str]:
        args = []
        for m in c.get("volumeMounts", []):
            v = vols[m["name"]]
            ro = ":ro" if m.get("readOnly") else ""
            if "emptyDir" in v:
                src = out / "state" if m["name"] == "state" else out / m["name"]
            elif "configMap" in v:
                src = out / "config" / m.get("subPath", "")
            elif "secret" in v:
                src = out / "keys"
            else:
                sys.exit(f"manifest.py: volume {m['name']} is not translated")
            args.append(f"--volume={src}:{m['mountPath']}{ro}")
        return args

    def run_args(c: dict) -> list[str]:
        args = volume_args(c) + podman_security(pod, c.get("securityContext", {}))
        limits = c.get("resources", {}).get("limits", {})
        if "memory" in limits:
            args.append(f"--memory={memory_bytes(limits['memory'])}")
        cmd = c.get("command", [])
        args.append(f"--entrypoint={json.dumps(cmd[:1])}")
        return args + ["IMAGE"] + cmd[1:] + c.get("args", [])

    (out / "init.args").write_text("\n".join(run_args(init)) + "\n")
    (out / "main.args").write_text("\n".join(run_args(main)) + "\n")
    port = {p["name"]: p["containerPort"] for p in main["ports"]}["http"]
    (out / "port").write_text(f"{port}\n")
    # A Kubernetes pod shares net, ipc and uts; pid with shareProcessNamespace.
    share = "pid,net,ipc,uts" if pod.get("shareProcessNamespace") else "net,ipc,uts"
    (out / "share").write_text(f"{share}\n")
    (out / "grace").write_text(f"{pod.get('terminationGracePeriodSeconds', 30)}\n")


def cmd_kube(out: Path, host_port: int) -> None:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    out.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    (out / "api-key").write_text(key)
    played = []
    for d in docs:
        if d["kind"] == "Secret":
            # podman 4.3 writes a secret volume's `data` values as they are (no base64).
            data = {name: key + "\n" for name in d["stringData"]}
            (out / "secret.yaml").write_text(yaml.safe_dump(
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": d["metadata"]["name"]}, "data": data}))
            (out / "secret-name").write_text(d["metadata"]["name"] + "\n")
            continue
        if d["kind"] == "Deployment":
            d["spec"]["replicas"] = 1
            pod = d["spec"]["template"]["spec"]
            pod["restartPolicy"] = "OnFailure"
            (main,) = [c for c in pod["containers"] if c["name"] == "nsbox"]
            for p in main["ports"]:
                if p["name"] == "http":
                    p["hostPort"], p["hostIP"] = host_port, "127.0.0.1"
            (out / "image").write_text(main["image"] + "\n")
            (out / "pod").write_text(f"{d['metadata']['name']}-pod-0\n")
            (out / "container").write_text(f"{d['metadata']['name']}-pod-0-{main['name']}\n")
            (out / "grace").write_text(f"{pod.get('terminationGracePeriodSeconds', 30)}\n")
            (out / "config-path").write_text(main["command"][main["command"].index("--config") + 1] + "\n")
        played.append(d)
    (out / "play.yaml").write_text(yaml.safe_dump_all(played, sort_keys=False))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "check":
        cmd_check(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "podman":
        cmd_podman(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "kube":
        cmd_kube(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(__doc__)
