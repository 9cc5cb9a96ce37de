#!/usr/bin/env python3
"""A session, files and the limits through a running nsbox that wants an API key (standard
library only): what a container's privileges decide beyond the spec's examples.

  sessions_limits.py URL KEY

- a session: a file PUT into it, two calls sharing state, the output file listed and read
  back, DELETE, then 404 (the session's processes and the server's handles on them);
- a one-shot run past its timeout is killed and answered within a generous bound (the
  server must be able to kill processes running on the runs' host ids: CAP_KILL, or the
  cgroup);
- a run that allocates twice memory_mib does not succeed (cgroup memory limit, or rlimits);
- a thread bomb is stopped (pids limit), and the server still answers afterwards.
Exits 1 on any failure, listing each.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request

FAILED: list[str] = []


def call(url: str, key: str, method: str, body: bytes | None = None,
         ctype: str = "application/json", timeout: float = 120) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {key}"}
    if body is not None:
        headers["Content-Type"] = ctype
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def run(base: str, key: str, code: str, **extra) -> tuple[int, dict]:
    status, raw = call(base + "/v1/tools/code", key, "POST",
                       json.dumps({"code": code, "lang": "python", **extra}).encode())
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, {"raw": raw[:300].decode(errors="replace")}


def need(cond: bool, what: str) -> None:
    print(f"  {'ok  ' if cond else 'FAIL'} {what}")
    if not cond:
        FAILED.append(what)


def main() -> int:
    base, key = sys.argv[1].rstrip("/"), sys.argv[2]

    status, raw = call(base + "/v1/sessions", key, "POST", b"{}")
    need(status in (200, 201), f"POST /v1/sessions: HTTP {status} {raw[:200]!r}")
    if status in (200, 201):
        sid = json.loads(raw)["id"]
        s = f"{base}/v1/sessions/{sid}"
        status, raw = call(s + "/files/data/in.csv", key, "PUT", b"x\n1\n2\n39\n", "text/csv")
        need(status in (200, 201), f"PUT a session file: HTTP {status} {raw[:200]!r}")
        status, r = run(base, key, "import csv\nrows = [int(r['x']) for r in csv.DictReader(open('data/in.csv'))]",
                        session_id=sid)
        need(status == 200 and r.get("exit_code") == 0, f"session call 1: HTTP {status} {r}")
        status, r = run(base, key, "print(sum(rows))\nopen('out.txt', 'w').write('forty-two')", session_id=sid)
        need(status == 200 and r.get("stdout") == "42\n", f"session call 2 sees call 1's state: {r.get('stdout')!r}")
        status, raw = call(s + "/files", key, "GET")
        paths = [f["path"] for f in json.loads(raw).get("files", [])] if status == 200 else []
        need("out.txt" in paths and "data/in.csv" in paths, f"the session's files listed: HTTP {status} {paths}")
        status, raw = call(s + "/files/out.txt", key, "GET")
        need((status, raw) == (200, b"forty-two"), f"GET a session file: HTTP {status} {raw[:100]!r}")
        status, _ = call(s, key, "DELETE")
        need(status == 204, f"DELETE the session: HTTP {status}")
        status, _ = call(s, key, "GET")
        need(status == 404, f"the deleted session is gone: HTTP {status}")

    t = time.monotonic()
    status, r = run(base, key, "import time\ntime.sleep(300)", timeout=2)
    took = time.monotonic() - t
    need(status == 200 and r.get("exit_code") != 0 and took < 30,
         f"a run past its timeout is killed ({took:.1f} s, exit_code {r.get('exit_code')})")

    status, r = run(base, key, "b = bytearray(4 << 30)\nb[::4096] = b'x' * len(b[::4096])\nprint('allocated')",
                    timeout=30)
    need(status == 200 and r.get("exit_code") != 0 and "allocated" not in (r.get("stdout") or ""),
         f"4 GiB in one run is refused (exit_code {r.get('exit_code')}, stderr {(r.get('stderr') or '')[-120:]!r})")

    # Threads count against the pids limit as processes do (os.fork itself is refused by the
    # scanner before it runs).
    status, r = run(base, key, "import threading, time\nn = 0\ntry:\n    while n < 100000:\n"
                    "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n        n += 1\n"
                    "except RuntimeError as e:\n    print('stopped at', n)\n", timeout=20)
    out = r.get("stdout") or ""
    need(status == 200 and out.startswith("stopped at"),
         f"a thread bomb is stopped by the pids limit: {out.strip()!r} {r.get('stderr', '')[-120:]!r}")

    status, r = run(base, key, "print(6 * 7)")
    need(status == 200 and r.get("stdout") == "42\n", f"the server still runs code afterwards: {r.get('stdout')!r}")
    for f in FAILED:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
