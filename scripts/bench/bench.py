#!/usr/bin/env python3
"""Helpers for scripts/bench.sh (standard library only).

Subcommands:
  bodies DIR                 writes DIR/<workload>.json request bodies and DIR/<workload>.expect
  check URL                  runs every spec example once through a server and checks the
                             whole response strictly; exits 1 on any difference
  bwrap ROOTFS WORKLOAD N    the baseline: N sequential cold bubblewrap sandboxes running the
                             example with the root filesystem's python3; prints a JSON result
  pss PID                    total PSS of the process tree under PID, with a breakdown
  image PID                  each warm template's image (its zygote's address space): what
                             a run's fork copies and tears down (mappings, 4 KiB and huge
                             anonymous pages) and what it holds idle (anonymous, file pages);
                             for a zygote grown from another, what the two share (as root)
  sample PID OUT STOPFILE MAX_S   samples the tree's PSS every 100 ms until STOPFILE exists
  hold URL WORKLOAD N SECS   N concurrent runs of the example followed by time.sleep(SECS)
  wake PAUSE_MS              the host's wake-up calibration: the p50 round trip of one byte
                             between two processes back to back and after PAUSE_MS idle
  agent URL WORKLOAD N PAUSE_MS LOG [MODE]
                             N sequential requests with PAUSE_MS between them, then N
                             back-to-back, from one keep-alive client; with the server's
                             phases of each part read from LOG; prints a JSON result
  record ...                 turns a wrk result line into a results.jsonl record
  report RESULTS             prints the table
"""

import base64
import concurrent.futures
import http.client
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = ["basic", "pandas", "scipy", "plot"]

PANDAS_STDOUT = "Average age: 29.5\nAverage score: 86.25\n\nTop scorer: David\n"
PLOT_STDOUT = "Plot generated successfully!\n"

# Substrings every response under load must contain (serde_json's compact output); the
# full check is `check`, done once per server before any load.
EXPECT = {
    "basic": ['"success":true', '"exit_code":0', '"stdout":"4\\n"', '"plots":[]'],
    "pandas": ['"success":true', '"exit_code":0', '"stdout":' + json.dumps(PANDAS_STDOUT), '"plots":[]'],
    "scipy": ['"success":true', '"exit_code":0', '"stderr":""', "T-statistic: ", "P-value: ", '"plots":[]'],
    "plot": ['"success":true', '"exit_code":0', '"stdout":' + json.dumps(PLOT_STDOUT),
             '"filename":"plot_1.png"', '"format":"png"'],
}

# The targets (issue 7).
TARGET_P50_MS = {"basic": 5, "pandas": 20, "scipy": 30, "plot": 120}
TARGET_RATIO = {"basic": 3, "pandas": 20, "scipy": 20, "plot": 5}
TARGET_C8_RPS = {"basic": 200, "pandas": 80}
TARGET_IDLE_MIB = 300
TARGET_PER_RUN_MIB = 30


def code(workload):
    with open(os.path.join(HERE, "..", "..", "tests", "fixtures", "spec", workload + ".py")) as f:
        # The files end with a newline; the spec's code does not.
        return f.read().rstrip("\n")


# ---------------------------------------------------------------- bodies / check


def cmd_bodies(out):
    os.makedirs(out, exist_ok=True)
    for w in WORKLOADS:
        with open(os.path.join(out, w + ".json"), "w") as f:
            json.dump({"code": code(w), "lang": "python", "timeout": 30}, f)
        with open(os.path.join(out, w + ".expect"), "w") as f:
            f.write("\t".join(EXPECT[w]))


def post(url, body, timeout=120):
    req = urllib.request.Request(
        url + "/v1/tools/code",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def png_size(data):
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


def check_response(w, r):
    """Returns a list of problems (empty when the response is right)."""
    p = []

    def eq(field, want):
        if r.get(field) != want:
            p.append(f"{field}: want {want!r}, got {r.get(field)!r}")

    eq("success", True)
    eq("exit_code", 0)
    eq("stderr", "")
    eq("security_checked", True)
    eq("violations", [])
    if w == "basic":
        eq("stdout", "4\n")
        eq("plots", [])
    elif w == "pandas":
        eq("stdout", PANDAS_STDOUT)
        eq("plots", [])
    elif w == "scipy":
        eq("plots", [])
        lines = (r.get("stdout") or "").splitlines()
        labels = [l.split(":")[0] for l in lines]
        if labels != ["Mean", "Std Dev", "Median", "T-statistic", "P-value"]:
            p.append(f"scipy labels {labels!r}")
        else:
            vals = [float(l.split(": ")[1]) for l in lines]
            if not (90 < vals[0] < 110 and 12 < vals[1] < 18 and 0 <= vals[4] <= 1):
                p.append(f"scipy values out of range: {vals}")
    elif w == "plot":
        eq("stdout", PLOT_STDOUT)
        plots = r.get("plots") or []
        if len(plots) != 1:
            p.append(f"want 1 plot, got {len(plots)}")
        else:
            pl = plots[0]
            if pl.get("format") != "png" or pl.get("filename") != "plot_1.png":
                p.append(f"plot metadata {pl.get('format')!r} {pl.get('filename')!r}")
            try:
                size = png_size(base64.b64decode(pl.get("content_base64", "")))
                if size != (1000, 600):
                    p.append(f"plot size {size}, want (1000, 600)")
            except Exception as e:  # noqa: BLE001
                p.append(f"plot not decodable: {e}")
    return p


def cmd_check(url):
    failed = False
    for w in WORKLOADS:
        for attempt in range(2):
            t0 = time.perf_counter()
            status, raw = post(url, {"code": code(w), "lang": "python", "timeout": 30})
            ms = (time.perf_counter() - t0) * 1000
            problems = [f"HTTP {status}"] if status != 200 else check_response(w, json.loads(raw))
            if problems:
                failed = True
                print(f"  check {w} #{attempt + 1}: FAILED: {'; '.join(problems)}\n    {raw[:500]!r}")
            else:
                print(f"  check {w} #{attempt + 1}: ok ({ms:.0f} ms)")
    sys.exit(1 if failed else 0)


# ---------------------------------------------------------------- bubblewrap baseline

# The baseline does the same work as an nsbox run: the font cache is copied into the run's
# /tmp (as nsbox's harness does, so matplotlib does not rebuild it), and open figures are
# rendered to PNG at compress_level 1 after the code (as nsbox returns them).
BWRAP_PROLOGUE = """\
import os as _o, sys as _s
_d = _o.environ["MPLCONFIGDIR"]; _o.makedirs(_d, exist_ok=True)
for _n in _o.listdir("/usr/local/share/nsbox/mplconfig"):
    with open("/usr/local/share/nsbox/mplconfig/" + _n, "rb") as _a, open(_d + "/" + _n, "wb") as _b:
        _b.write(_a.read())
del _o, _d, _n, _a, _b
"""
BWRAP_EPILOGUE = """
_s.stdout.flush()
_p = _s.modules.get("matplotlib.pyplot")
if _p is not None:
    import io as _io
    for _num in sorted(_p.get_fignums()):
        _buf = _io.BytesIO()
        _p.figure(_num).savefig(_buf, format="png", pil_kwargs={"compress_level": 1})
        _s.stderr.write("NSBOX_BENCH_PNG %d\\n" % len(_buf.getvalue()))
"""


def bwrap_argv(rootfs, source):
    wrapped = BWRAP_PROLOGUE + "exec(compile(" + repr(source) + ', "<string>", "exec"))\n' + BWRAP_EPILOGUE
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": "/tmp/.config/matplotlib",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    argv = ["bwrap", "--ro-bind", rootfs, "/", "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", "/tmp", "--unshare-all", "--die-with-parent", "--new-session",
            "--clearenv"]
    for k, v in env.items():
        argv += ["--setenv", k, v]
    return argv + ["/usr/bin/python3", "-I", "-B", "-c", wrapped]


def bwrap_ok(w, proc):
    if proc.returncode != 0:
        return f"exit {proc.returncode}: {proc.stderr[-400:]!r}"
    out = proc.stdout
    if w == "basic" and out != "4\n":
        return f"stdout {out!r}"
    if w == "pandas" and out != PANDAS_STDOUT:
        return f"stdout {out!r}"
    if w == "scipy" and [l.split(":")[0] for l in out.splitlines()] != [
            "Mean", "Std Dev", "Median", "T-statistic", "P-value"]:
        return f"stdout {out!r}"
    if w == "plot":
        if out != PLOT_STDOUT:
            return f"stdout {out!r}"
        if proc.stderr.count("NSBOX_BENCH_PNG ") != 1:
            return f"want one PNG rendered, stderr {proc.stderr[-400:]!r}"
    return None


def percentile(xs, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * q / 100
    f = int(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


def cmd_bwrap(rootfs, w, n):
    argv = bwrap_argv(rootfs, code(w))
    times = []
    for i in range(n + 1):  # the first run warms the page cache and is not counted
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        dt = time.perf_counter() - t0
        problem = bwrap_ok(w, proc)
        if problem:
            print(f"bwrap {w} run {i}: WRONG: {problem}", file=sys.stderr)
            sys.exit(1)
        if i:
            times.append(dt)
    print(json.dumps({
        "kind": "bwrap", "workload": w, "requests": n,
        "p50_ms": percentile(times, 50) * 1000, "p99_ms": percentile(times, 99) * 1000,
        "min_ms": min(times) * 1000, "rps": n / sum(times),
    }))


# ---------------------------------------------------------------- memory


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        ppid = int(s[s.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(root):
    kids = children_map()
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def mem_kib(pid):
    """(Pss, Private, Rss) of a process in KiB, from smaps_rollup."""
    out = {"Pss:": 0, "Private_Clean:": 0, "Private_Dirty:": 0, "Rss:": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in out:
                    out[parts[0]] = int(parts[1])
    except OSError:
        pass
    return out["Pss:"], out["Private_Clean:"] + out["Private_Dirty:"], out["Rss:"]


def comm_of(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def cmdline_of(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def ppid_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        return int(s[s.rindex(")") + 2:].split()[1])
    except OSError:
        return 0


def role(pid, root):
    """A short name for a process of the nsbox tree, for the breakdown."""
    if pid == root:
        return "server"
    comm = comm_of(pid)
    if comm.startswith("python"):
        # A python whose parent is a python of the same template is a run forked from that
        # template's zygote (the ml zygote is a fork of the scientific one).
        parent = ppid_of(pid)
        same = comm_of(parent).startswith("python") and cmdline_of(parent) == cmdline_of(pid)
        return "run(python)" if same else "template(python)"
    if comm == "exe":
        return "nsbox helper(exe)"
    return comm


def tree_pss(root, breakdown=False):
    """Sums over the tree: (pss, uss, rss) in KiB, process count, per-role breakdown."""
    pids = tree(root)
    total = [0, 0, 0]
    roles = {}
    for p in pids:
        m = mem_kib(p)
        total = [a + b for a, b in zip(total, m)]
        if breakdown:
            r = role(p, root)
            n, k = roles.get(r, (0, 0))
            roles[r] = (n + 1, k + m[0])
    return total, len(pids), roles


def cmd_pss(root):
    (pss, uss, rss), n, roles = tree_pss(int(root), breakdown=True)
    print(json.dumps({"pss_mib": pss / 1024, "uss_mib": uss / 1024, "rss_mib": rss / 1024, "processes": n,
                      "roles": {r: {"n": a, "mib": round(b / 1024, 1)} for r, (a, b) in roles.items()}}))


def smaps_vmas(pid):
    """The mappings of a process from /proc/PID/smaps: (path or "", {field: KiB})."""
    vmas = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+$", parts[0]):
                vmas.append((parts[5] if len(parts) > 5 else "", {}))
            elif len(parts) >= 3 and parts[2] == "kB":
                vmas[-1][1][parts[0].rstrip(":")] = int(parts[1])
    return vmas


def cmd_image(root):
    """Per zygote: a fork copies every mapping and the page table entries of the anonymous
    memory (one per 4 KiB page, one per 2 MiB page mapped whole; file pages are faulted in
    again by the run, not copied), and exit tears the same down. "file MiB" is what the
    zygote maps of its libraries' files (page cache its runs share). A zygote forked from
    another after that one's warm-up (the grown ml one) gets a line of what they share."""
    root = int(root)
    print(f"{'template':10s} {'mappings':>8s} {'of files':>8s} {'files':>5s} {'anon MiB':>8s} "
          f"{'in 2M pages':>11s} {'in 4K pages':>11s} {'file MiB':>8s} {'PSS MiB':>7s}")
    grown = []
    for pid in sorted(tree(root)):
        # A ready sandbox's Python (a fork of a zygote) has the run's init as its parent.
        if role(pid, root) != "template(python)" or comm_of(ppid_of(pid)) == "nsbox-run-init":
            continue
        argv = cmdline_of(pid).split(b"\0")
        # python3 -I -B -c CODE, then the template's name.
        template = argv[5].decode() if len(argv) > 5 else "?"
        vmas = smaps_vmas(pid)
        files = [path for path, _ in vmas if path.startswith("/")]
        total = {k: sum(v.get(k, 0) for _, v in vmas) / 1024 for k in ("Anonymous", "AnonHugePages", "Rss", "Pss")}
        print(f"{template:10s} {len(vmas):8d} {len(files):8d} {len(set(files)):5d} {total['Anonymous']:8.1f} "
              f"{total['AnonHugePages']:11.1f} {total['Anonymous'] - total['AnonHugePages']:11.1f} "
              f"{total['Rss'] - total['Anonymous']:8.1f} {total['Pss']:7.1f}")
        if role(ppid_of(pid), root) == "template(python)":
            grown.append((template, pid))
    for template, pid in grown:
        shared, copied, refcounts, own = (kib / 1024 for kib in shared_with_parent(pid, ppid_of(pid)))
        print(f"{template} (grown from its parent zygote): shares {shared:.1f} MiB of anonymous memory "
              f"with it; {copied:.1f} MiB copied by its own warm-up's writes ({refcounts:.1f} MiB "
              f"differing only by small counts, as reference counts do); {own:.1f} MiB its own")


def pfns(pid, start, end):
    """The physical page of each 4 KiB page in [start, end) of a process, or None where none
    is present (/proc/PID/pagemap; the frame numbers read as 0 without CAP_SYS_ADMIN)."""
    n = (end - start) // 4096
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(start // 4096 * 8)
        entries = struct.unpack(f"{n}Q", f.read(8 * n))
    return [e & ((1 << 55) - 1) if e >> 63 else None for e in entries]


def shared_with_parent(pid, parent):
    """A grown zygote's writable private memory against its parent's, page by page, in KiB:
    (the same physical page, a copy, a copy whose differences are all small changes of a
    word as reference counts make, a page where the parent has none)."""
    shared = copied = refcounts = own = 0
    with open(f"/proc/{pid}/mem", "rb") as child_mem, open(f"/proc/{parent}/mem", "rb") as parent_mem:
        for line in open(f"/proc/{pid}/maps"):
            fields = line.split()
            if not fields[1].startswith("rw") or len(fields) > 5 and fields[5].startswith("[v"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            for i, (mine, theirs) in enumerate(zip(pfns(pid, start, end), pfns(parent, start, end))):
                if mine is None:
                    continue
                if theirs is None:
                    own += 4
                elif mine == theirs:
                    shared += 4
                else:
                    copied += 4
                    addr = start + i * 4096
                    child_mem.seek(addr)
                    parent_mem.seek(addr)
                    a = struct.unpack("512q", child_mem.read(4096))
                    b = struct.unpack("512q", parent_mem.read(4096))
                    refcounts += 4 * all(abs(x - y) < 1024 for x, y in zip(a, b))
    return shared, copied, refcounts, own


def cmd_sample(root, out, stopfile, max_s):
    root, max_s = int(root), float(max_s)
    before, _, _ = tree_pss(root)
    peak, peak_n, peak_uss, samples = 0, 0, 0, []
    end = time.monotonic() + max_s
    while time.monotonic() < end and not os.path.exists(stopfile):
        (pss, uss, _), n, _ = tree_pss(root)
        samples.append(pss)
        if pss > peak:
            peak, peak_n, peak_uss = pss, n, uss
        time.sleep(0.1)
    with open(out, "w") as f:
        json.dump({"before_mib": before[0] / 1024, "before_uss_mib": before[1] / 1024,
                   "peak_mib": peak / 1024, "peak_uss_mib": peak_uss / 1024,
                   "processes_at_peak": peak_n, "samples": len(samples),
                   "median_mib": (statistics.median(samples) / 1024) if samples else 0}, f)


def cmd_hold(url, w, n, secs):
    n, secs = int(n), float(secs)
    body = {"code": code(w) + f"\nimport time\ntime.sleep({secs})", "lang": "python", "timeout": 30}

    def one(_):
        status, raw = post(url, body)
        r = json.loads(raw)
        return status == 200 and r.get("exit_code") == 0

    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        oks = list(ex.map(one, range(n)))
    if not all(oks):
        print(f"hold: {oks.count(False)} of {n} runs failed", file=sys.stderr)
        sys.exit(1)


# ---------------------------------------------------------------- server-side phases

# The supervisor's `nsbox::phases` debug line (one per run), in microseconds; the order is
# the order of a run (teardown comes after the reply once the supervisor replies first).
PHASES = ["start_us", "cgroup_us", "attach_us", "run_us", "verdict_us", "reply_us", "teardown_us", "total_us"]
PHASE_LINE = re.compile(r"run phases\b(.*)")
PHASE_FIELD = re.compile(r"(\w+_us)[=:]\s*(\d+)")


def log_chunk(log, start, end):
    with open(log, "rb") as f:
        f.seek(int(start))
        return f.read(int(end) - int(start)).decode(errors="replace")


def phases_p50(chunk):
    """p50 of each phase over the runs logged in chunk, in ms (None without phase lines)."""
    runs = []
    for line in chunk.splitlines():
        m = PHASE_LINE.search(line)
        if m:
            runs.append({k: int(v) for k, v in PHASE_FIELD.findall(m.group(1))})
    if not runs:
        return None
    out = {"runs": len(runs)}
    for k in PHASES:
        xs = [r[k] for r in runs if k in r]
        if xs:
            out[k] = percentile(xs, 50) / 1000
    return out


def cmd_wake(pause_ms):
    """A request crosses about ten processes and threads (client, server, spawner,
    supervisor, the run's Python and back), each woken by the one before. After a pause a
    woken CPU may come back slowly (a VM's idle halt, deep C-states): that is the host's,
    and what the agent pattern pays on top of back-to-back requests. Prints the p50 of a
    one-byte round trip over a socket pair, back to back and after `pause_ms` idle."""
    pause = float(pause_ms) / 1000
    a, b = socket.socketpair()
    child = os.fork()
    if child == 0:
        a.close()
        while b.recv(1):
            b.send(b"x")
        os._exit(0)
    b.close()

    def rtt_us(sleep, n):
        times = []
        for _ in range(n):
            if sleep:
                time.sleep(sleep)
            start = time.perf_counter()
            a.send(b"x")
            a.recv(1)
            times.append((time.perf_counter() - start) * 1e6)
        return statistics.median(times)

    # Warmed up first: the first round trips pay for the pair's first placement on the CPUs.
    rtt_us(0, 3000)
    busy, idle = rtt_us(0, 400), rtt_us(pause, 20)
    a.close()
    os.waitpid(child, 0)
    print(f"{busy:.0f} us back to back, {idle:.0f} us after {pause_ms} ms idle")


def cmd_agent(url, w, n, pause_ms, log, mode="warm"):
    """An agent's pattern: one request, wait for it, think for PAUSE_MS, the next. Then the
    same client back to back, so the two differ only in the pause."""
    n, pause = int(n), float(pause_ms) / 1000
    body = json.dumps({"code": code(w), "lang": "python", "timeout": 30}).encode()
    expect = EXPECT[w]
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    rec = {"kind": "agent", "mode": mode, "workload": w, "requests": n, "pause_ms": float(pause_ms)}

    def one():
        t0 = time.perf_counter()
        conn.request("POST", "/v1/tools/code", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        raw = r.read().decode()
        dt = (time.perf_counter() - t0) * 1000
        if r.status != 200 or not all(e in raw for e in expect):
            print(f"agent {w}: wrong response {r.status} {raw[:300]!r}", file=sys.stderr)
            sys.exit(1)
        return dt

    one()  # the connection, and a first run not counted
    time.sleep(pause)
    for part, gap in (("agent", pause), ("b2b", 0.0)):
        start = os.path.getsize(log)
        times = []
        for _ in range(n):
            times.append(one())
            if gap:
                time.sleep(gap)
        time.sleep(0.3)  # the last run's log lines
        rec[part] = {"p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
                     "phases": phases_p50(log_chunk(log, start, os.path.getsize(log)))}
        time.sleep(pause)
    print(json.dumps(rec))


# ---------------------------------------------------------------- records and report


def cmd_record(mode, conc, w, wrk_out, log, start, end):
    line = None
    with open(wrk_out) as f:
        for l in f:
            if l.startswith("BENCHRESULT "):
                line = l[len("BENCHRESULT "):]
    if line is None:
        print(f"wrk printed no result ({wrk_out})", file=sys.stderr)
        sys.exit(1)
    rec = json.loads(line)
    rec.update({"kind": "wrk", "mode": mode, "conc": conc, "workload": w})
    chunk = log_chunk(log, start, end)
    rec["phases"] = phases_p50(chunk)
    walls = [int(m) for m in re.findall(r"wall_ms=(\d+)", chunk)]
    warm = re.findall(r"run finished.*?\bwarm=(true|false)", chunk)
    rec["server_runs"] = len(walls)
    rec["server_wall_p50_ms"] = percentile(walls, 50) if walls else None
    rec["server_wall_p99_ms"] = percentile(walls, 99) if walls else None
    rec["server_warm_runs"] = warm.count("true")
    print(json.dumps(rec))
    if rec["requests"] == 0:
        # Kept (and shown as a stall): a window in which nothing finishes is a finding, not
        # a broken benchmark; wrong answers below still fail the run.
        print(f"WARNING {mode} {conc} {w}: no request completed in {rec['seconds']:.1f} s",
              file=sys.stderr)
        for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms"):
            rec[k] = None
        rec["stalled"] = True
    if rec["bad"] or rec["socket_errors"] or rec["status_errors"]:
        print(f"{mode} {conc} {w}: {rec['bad']} wrong responses, {rec['socket_errors']} socket "
              f"errors, {rec['status_errors']} HTTP errors of {rec['requests']}; first: "
              f"{rec['first_bad']}", file=sys.stderr)
        sys.exit(1)


def cmd_summary(path):
    with open(path) as f:
        r = json.loads(f.readlines()[-1])
    if r.get("stalled"):
        print(f"{r['mode']} {r['conc']} {r['workload']}: STALLED, no run finished in {r['seconds']:.1f} s")
        return
    print(f"{r['mode']} {r['conc']} {r['workload']}: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms,"
          f" {r['rps']:.1f} runs/s, {r['requests']} runs; server wall_ms p50 {r['server_wall_p50_ms']}")


def cmd_report(path):
    recs = [json.loads(l) for l in open(path) if l.strip()]
    wrk = {(r["mode"], r["conc"], r["workload"]): r for r in recs if r["kind"] == "wrk"}
    bw = {r["workload"]: r for r in recs if r["kind"] == "bwrap"}
    mem = {r["what"]: r for r in recs if r["kind"] == "mem"}

    def f(v, d=1):
        return "-" if v is None else f"{v:.{d}f}"

    def get(mode, conc, w, k):
        r = wrk.get((mode, conc, w))
        return None if r is None else r.get(k)

    rows = []
    hdr = ["workload", "warm p50", "warm p99", "warm rps", "c8 p50", "c8 p99", "c8 rps",
           "cold p50", "cold c8 rps", "bwrap p50", "bwrap/warm", "cold/warm",
           "target p50", "target ratio", "verdict"]
    for w in WORKLOADS:
        wp50 = get("warm", "seq", w, "p50_ms")
        cp50 = get("cold", "seq", w, "p50_ms")
        bp50 = bw.get(w, {}).get("p50_ms")
        rb = bp50 / wp50 if (bp50 and wp50) else None
        rc = cp50 / wp50 if (cp50 and wp50) else None
        verdict = []
        if wp50 is not None:
            verdict.append("p50 ok" if wp50 <= TARGET_P50_MS[w] else "p50 MISS")
        if rb is not None:
            verdict.append("ratio ok" if rb >= TARGET_RATIO[w] else "ratio MISS")
        rows.append([
            w, f(wp50), f(get("warm", "seq", w, "p99_ms")), f(get("warm", "seq", w, "rps")),
            f(get("warm", "c8", w, "p50_ms")), f(get("warm", "c8", w, "p99_ms")),
            f(get("warm", "c8", w, "rps")), f(cp50), f(get("cold", "c8", w, "rps")), f(bp50),
            (f(rb) + "x") if rb else "-", (f(rc) + "x") if rc else "-",
            f"{TARGET_P50_MS[w]} ms", f">= {TARGET_RATIO[w]}x", ", ".join(verdict)])
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
    line = "  ".join("{:>%d}" % wd for wd in widths)
    print("Latency in ms, throughput in runs/s. warm/cold = nsbox --mode warm/cold via wrk;")
    print("seq = wrk -t1 -c1, c8 = wrk -t2 -c8; bwrap = bubblewrap cold sandbox + rootfs python3.")
    print(line.format(*hdr))
    print(line.format(*["-" * wd for wd in widths]))
    for r in rows:
        print(line.format(*r))
    print()
    for (m, c, w), r in sorted(wrk.items()):
        if r.get("stalled"):
            print(f"  STALL: nsbox {m} {c} {w}: no run finished in its {r['seconds']:.0f} s window (rps 0 above).")
    print("Throughput at concurrency 8 (nsbox warm):")
    for w, t in TARGET_C8_RPS.items():
        v = get("warm", "c8", w, "rps")
        print(f"  {w:7s} {f(v):>8s} runs/s   target >= {t} runs/s   "
              f"{'ok' if v is not None and v >= t else 'MISS'}")
    print()
    print("Memory of all nsbox processes (the process tree under the server's pid), summed from smaps_rollup.")
    print("PSS shares each page among all processes that map it, on the whole machine: other nsbox servers")
    print("using the same root filesystem lower it (the idle figure is taken before any other server starts);")
    print("USS (private pages) is the part no one else shares.")
    print("Per-run increments are PSS deltas against a snapshot taken just before that load.")
    idle = mem.get("idle-warm")
    if idle:
        print(f"  warm, idle after warm-up:  PSS {idle['pss_mib']:6.1f} MiB  (USS {idle['uss_mib']:6.1f}, RSS {idle['rss_mib']:6.1f})"
              f" in {idle['processes']} processes   target <= {TARGET_IDLE_MIB} MiB   {'ok' if idle['pss_mib'] <= TARGET_IDLE_MIB else 'MISS'}")
        print("      PSS by role: " + ", ".join(f"{k} x{v['n']} {v['mib']} MiB" for k, v in sorted(idle["roles"].items())))
    load = mem.get("load-warm-pandas-c8")
    if load:
        print(f"  warm, pandas at c8 (wrk):  PSS before {load['before_mib']:6.1f}, peak {load['peak_mib']:6.1f} MiB"
              f" with {load['processes_at_peak']} processes at the peak;"
              f" {load['samples']} samples at 100 ms")
    hold = mem.get("hold-warm-pandas-8")
    if hold:
        per = (hold["peak_mib"] - hold["before_mib"]) / hold["runs"]
        print(f"  warm, {hold['runs']} pandas runs held open at once: PSS {hold['before_mib']:.1f} -> {hold['peak_mib']:.1f} MiB"
              f" = {per:.1f} MiB per extra concurrent run   target <= {TARGET_PER_RUN_MIB} MiB"
              f"   {'ok' if per <= TARGET_PER_RUN_MIB else 'MISS'}")
    cold = mem.get("idle-cold")
    if cold:
        print(f"  cold, idle:                PSS {cold['pss_mib']:6.1f} MiB in {cold['processes']} processes")
    fell = sum(r["server_runs"] - r["server_warm_runs"] for (m, c, w), r in wrk.items() if m == "warm")
    if fell:
        print(f"  NOTE: {fell} run(s) on the warm server ran cold (no warm template at that moment, e.g. while a"
              " template was being replaced after --max-forks); they are in the warm numbers above.")
    print()
    print("Server-side wall_ms (nsbox log) vs client latency, p50 in ms:")
    for (mode, conc, w), r in sorted(wrk.items()):
        if r.get("server_wall_p50_ms") is not None and r.get("p50_ms") is not None:
            print(f"  {mode:4s} {conc:3s} {w:7s} client {r['p50_ms']:8.1f}  server wall {r['server_wall_p50_ms']:8.1f}"
                  f"  runs {r['requests']:5d} (warm {r['server_warm_runs']})")
    agents = [r for r in recs if r["kind"] == "agent"]
    if any(m == "base" for (m, c, w) in wrk):
        print()
        print("This build (warm) against BENCH_BASELINE's build (base), measured interleaved in this run:")
        ag = {(r.get("mode", "warm"), r["workload"]): r for r in agents}
        hdr = ["workload", "seq p50 warm", "base", "warm/base", "bwrap/warm", "bwrap/base",
               "agent p50 warm", "base", "c8 rps warm", "base"]
        body = []
        for w in WORKLOADS:
            a, b = get("warm", "seq", w, "p50_ms"), get("base", "seq", w, "p50_ms")
            bp = bw.get(w, {}).get("p50_ms")
            aw, ab = ag.get(("warm", w)), ag.get(("base", w))
            body.append([w, f(a), f(b), f(a / b, 2) if a and b else "-",
                         (f(bp / a) + "x") if bp and a else "-", (f(bp / b) + "x") if bp and b else "-",
                         f(aw["agent"]["p50_ms"]) if aw else "-", f(ab["agent"]["p50_ms"]) if ab else "-",
                         f(get("warm", "c8", w, "rps")), f(get("base", "c8", w, "rps"))])
        widths = [max(len(str(x)) for x in col) for col in zip(hdr, *body)]
        line = "  ".join("{:>%d}" % wd for wd in widths)
        print("  " + line.format(*hdr))
        for b in body:
            print("  " + line.format(*b))
    if agents:
        print()
        print("Agent pattern (nsbox warm; base = BENCH_BASELINE's build; one keep-alive Python client): one at a time with a pause")
        print("between them, against the same client back to back; target: agent p50 within 20% of back to back.")
        for r in agents:
            a, b = r["agent"], r["b2b"]
            ratio = a["p50_ms"] / b["p50_ms"] if b["p50_ms"] else None
            print(f"  {r.get('mode', 'warm'):4s} {r['workload']:7s} agent ({r['pause_ms']:.0f} ms pause) p50 {a['p50_ms']:7.1f} p99 {a['p99_ms']:7.1f}"
                  f"   back to back p50 {b['p50_ms']:7.1f} p99 {b['p99_ms']:7.1f}   agent/b2b {f(ratio, 2)}"
                  f"   {'ok' if ratio is not None and ratio <= 1.2 else 'MISS'}   (n={r['requests']})")
    rows = []
    for (m, c, w), r in sorted(wrk.items(), key=lambda kv: (kv[0][0], kv[0][1], WORKLOADS.index(kv[0][2]))):
        if r.get("phases") and c in ("seq", "c8"):
            rows.append((f"{m} {c} {w}", r["phases"], r.get("p50_ms")))
    for r in agents:
        for part in ("agent", "b2b"):
            if r[part].get("phases"):
                rows.append((f"{r.get('mode', 'warm')} {part} {r['workload']}", r[part]["phases"], r[part]["p50_ms"]))
    if rows:
        print()
        print("Server-side phases of a run, p50 in ms over the runs of each measurement (the supervisor's")
        print("nsbox::phases log line): start = pipes + warm hand-off (the zygote clones the run's init) or cold clone;")
        print("cgroup = create + limits; attach = init into the cgroup; run = release to output complete;")
        print("verdict = classify + assemble; reply = outcome written; teardown = init gone + cgroup read and")
        print("removed (after the reply once the supervisor replies first, then not in total); total = request")
        print("read to reply written; outside = client p50 - total p50 (HTTP, scanner, queue, hand-off to")
        print("the spawner, client).")
        hdr = ["measurement", "runs"] + [k[:-3] for k in PHASES] + ["client", "outside"]
        body = []
        for label, ph, client in rows:
            tot = ph.get("total_us")
            body.append([label, str(ph["runs"])] + [f(ph.get(k), 2) for k in PHASES]
                        + [f(client), f(client - tot) if (client is not None and tot is not None) else "-"])
        widths = [max(len(str(x)) for x in col) for col in zip(hdr, *body)]
        line = "  ".join(["{:<%d}" % widths[0]] + ["{:>%d}" % wd for wd in widths[1:]])
        print("  " + line.format(*hdr))
        for b in body:
            print("  " + line.format(*b))
    print()
    print("bwrap baseline detail:")
    for w in WORKLOADS:
        if w in bw:
            r = bw[w]
            print(f"  {w:7s} n={r['requests']:3d}  p50 {r['p50_ms']:8.1f}  p99 {r['p99_ms']:8.1f}"
                  f"  min {r['min_ms']:8.1f}  {r['rps']:6.2f} runs/s")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "bodies": cmd_bodies, "check": cmd_check, "bwrap": lambda r, w, n: cmd_bwrap(r, w, int(n)),
        "pss": cmd_pss, "image": cmd_image, "sample": cmd_sample, "hold": cmd_hold, "record": cmd_record, "summary": cmd_summary,
        "agent": cmd_agent, "wake": cmd_wake,
        "report": cmd_report,
    }[cmd](*args)


if __name__ == "__main__":
    main()
