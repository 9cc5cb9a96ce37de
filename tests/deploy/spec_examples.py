#!/usr/bin/env python3
"""The spec's examples through a running nsbox that wants an API key (standard library only).

  spec_examples.py URL KEY [--expect-warm] [--expect-complete]

Checks: /v1/health is OK; a request without the key gets 401; /v1/status (with the key)
reports the isolation in force (printed); each of the spec's four examples, twice, gives
exactly the spec's response (scripts/bench/bench.py's strict check). --expect-warm: the
server runs warm (templates ready, no fallback to cold); --expect-complete: no isolation
warnings (cgroups in force). Exits 1 on any difference.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def request(url: str, key: str | None, body: dict | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def main() -> int:
    url, key = sys.argv[1].rstrip("/"), sys.argv[2]
    expect_warm = "--expect-warm" in sys.argv
    expect_complete = "--expect-complete" in sys.argv
    failed = []
    status, body = request(url + "/v1/health", None)
    if (status, body) != (200, b"OK"):
        failed.append(f"/v1/health: {status} {body[:100]!r}")
    status, _ = request(url + "/v1/tools/code", None, {"code": "print(1)", "lang": "python"})
    if status != 401:
        failed.append(f"no key: HTTP {status}, want 401")
    status, body = request(url + "/v1/status", key)
    st = json.loads(body) if status == 200 else {}
    iso = st.get("isolation", {})
    print(f"  isolation: cgroup {iso.get('cgroup')!r}, warm {iso.get('warm')}, ids {iso.get('id_mapping', {}).get('mode')}, "
          f"namespaces {','.join(iso.get('namespaces', []))}, warnings {iso.get('warnings')}, templates {st.get('warm_templates')}")
    if expect_warm and not (iso.get("warm") and st.get("warm_templates")):
        failed.append("not warm")
    if expect_complete and iso.get("warnings"):
        failed.append(f"isolation warnings: {iso.get('warnings')}")
    for w in bench.WORKLOADS:
        for attempt in (1, 2):
            t = time.perf_counter()
            status, raw = request(url + "/v1/tools/code", key, {"code": bench.code(w), "lang": "python", "timeout": 30})
            ms = (time.perf_counter() - t) * 1000
            problems = [f"HTTP {status}: {raw[:300]!r}"] if status != 200 else bench.check_response(w, json.loads(raw))
            if problems:
                failed.append(f"{w} #{attempt}: {'; '.join(problems)}")
                print(f"  {w} #{attempt}: FAILED: {'; '.join(problems)}")
            else:
                print(f"  {w} #{attempt}: ok ({ms:.0f} ms)")
    for f in failed:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
