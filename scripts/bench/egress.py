"""The egress benchmark's rounds (scripts/bench-egress.sh starts the servers): each round
times the 50 MB download directly on the host with the tree's own python3 (chroot into the
root filesystem, the host's network), then from a run through the door, and prints the
medians and the ratios door/direct (throughput: direct time / door time).

    python3 scripts/bench/egress.py API_PORT ROOTFS UP_PORT TLS_PORT ROUNDS
"""
import json
import os
import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path

SCRIPT = (Path(__file__).parent / "egress_download.py").read_text()


def direct(rootfs, up):
    env = dict(os.environ, NSBOX_BENCH_HOST="127.0.0.2", NSBOX_BENCH_PORT=str(up))
    for k in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        env.pop(k, None)
    out = subprocess.run(["chroot", rootfs, "/usr/bin/python3", "-"], input=SCRIPT, env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def door(api, up, tls):
    code = (f"import os\nos.environ['NSBOX_BENCH_PORT'] = '{up}'\n"
            f"os.environ['NSBOX_BENCH_TLS_PORT'] = '{tls}'\n" + SCRIPT)
    req = urllib.request.Request(f"http://127.0.0.1:{api}/v1/tools/code",
                                 data=json.dumps({"code": code, "lang": "python", "timeout": 250}).encode(),
                                 headers={"Content-Type": "application/json"})
    r = json.load(urllib.request.urlopen(req, timeout=300))
    if r.get("exit_code") != 0:
        raise SystemExit(f"the run through the door failed: {r.get('stderr', '')[-2000:]}")
    return json.loads(r["stdout"])


def ms(xs):
    return statistics.median(xs) * 1000


def main():
    api, rootfs, up, tls, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    ratios = {"absolute": [], "connect": [], "requests": []}
    small = []
    for n in range(1, rounds + 1):
        d = direct(rootfs, up)
        t = door(api, up, tls)
        base = {"absolute": ms(d["absolute"]), "connect": ms(d["absolute"]), "requests": ms(d["requests"])}
        parts = []
        for k in ratios:
            ratio = base[k] / ms(t[k])
            ratios[k].append(ratio)
            parts.append(f"{k} {ms(t[k]):.0f} ms (direct {base[k]:.0f} ms, ratio {ratio:.2f})")
        small += t.get("requests_https_small", [])
        print(f"round {n}: " + "; ".join(parts), flush=True)
    print("median ratio (direct time / door time, >= 0.8 wanted): " +
          ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in ratios.items()))
    small.sort()
    if small:
        print(f"requests.get of a small file over HTTPS through the door: p50 {ms(small):.1f} ms, "
              f"max {small[-1] * 1000:.1f} ms ({len(small)} tries)")


main()
