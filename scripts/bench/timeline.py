#!/usr/bin/env python3
"""Per-run phase timeline of one nsbox server, from `perf trace -a` output.

Usage: timeline.py TRACE SERVER_PID SPAWNER_PID ZYGOTE_PIDS KNOWN_PIDS
(ZYGOTE_PIDS empty for a cold-mode server; KNOWN_PIDS includes the server's thread ids)

TRACE holds syscalls (clone, write, exit_group, seccomp, mkdir, recvfrom, sendto) and
sched:sched_process_fork events. Only processes descended from KNOWN_PIDS (the server's tree
when tracing started: comma-separated) count, so other nsbox servers on the machine do not mix
in. Each run is one supervisor (a child of the spawner); its phases are cut at:

  A  the server reads the HTTP request (last tokio recvfrom before the supervisor fork)
  B  the spawner forks the supervisor
  Z  the template (zygote) forks for the run
  C0/C1  start and end of the supervisor's slowest write after its cgroup mkdirs: the write of
     the run's pid to cgroup.procs (cgroup v1 attach)
  E  the run's Python process has installed seccomp (the last step before Python code)
  F  the run's Python process first writes to stdout (the user code's print)
  G  the run's Python process calls exit_group
  H  the supervisor sends the outcome to the server

A run served by a ready sandbox (the pool: its supervisor was forked, and its sandbox built,
before the request) is cut at other points, found by the supervisor's name after the claim
(nsbox-claimed):

  A  the server reads the HTTP request
  C  the ready supervisor is claimed (renames itself nsbox-claimed)
  R  it has read the request
  K  it sends the claim and the code to the waiting harness
  W  the harness's first system call after the claim (setting the run's CPU limit)
  F  the run's Python process first writes to stdout
  X  the harness writes its exit frame (output complete)
  H  the supervisor sends the outcome to the server
  Z  the server writes the HTTP response
"""

import re
import statistics
import sys


def parse(path):
    ev = []
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r"\s*([\d.]+) \(\s*([\d.]*)\s*(?:ms)?\s*\): (.+?)/(\d+) (.*)", line)
            if m:
                ev.append((float(m.group(1)), float(m.group(2) or 0), m.group(3), int(m.group(4)), m.group(5)))
    ev.sort(key=lambda e: e[0])
    return ev


FORK = re.compile(r"sched_process_fork\(.*parent_pid: (\d+).*child_pid: (\d+)")


def main():
    path, server, spawner = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    zygotes = {int(x) for x in sys.argv[4].split(",") if x}
    known = {int(x) for x in sys.argv[5].split(",") if x}
    ev = parse(path)
    parent = {}
    for e in ev:
        m = FORK.search(e[4])
        if m:
            parent[int(m.group(2))] = int(m.group(1))

    def ours(pid):
        for _ in range(32):
            if pid in known:
                return True
            pid = parent.get(pid)
            if pid is None:
                return False
        return False

    ev = [e for e in ev if ours(e[3])]
    by_pid = {}
    for e in ev:
        by_pid.setdefault(e[3], []).append(e)

    def descendants(root):
        out, todo = set(), [root]
        while todo:
            p = todo.pop()
            out.add(p)
            todo.extend(c for c, pp in parent.items() if pp == p and c not in out)
        return out

    server_threads = {e[3] for e in ev if e[2].startswith("tokio") and ours(e[3])}
    reads = [e[0] for e in ev if e[3] in server_threads and e[4].startswith("recvfrom(")
             and re.search(r"= [1-9]", e[4])]
    zforks = [(e[0], int(FORK.search(e[4]).group(2))) for e in ev
              if e[3] in zygotes and FORK.search(e[4])]
    runs = []
    for e in ev:
        m = FORK.search(e[4])
        if not (m and int(m.group(1)) == spawner):
            continue
        sup = int(m.group(2))
        r = {"B": e[0]}
        writes = []
        for t, d, comm, pid, rest in by_pid.get(sup, []):
            if "continued" in rest:
                continue
            if rest.startswith("mkdir"):
                r.setdefault("M", t)
            w = re.match(r"write\(fd: \d+, buf: \S+, count: (\d+)\)", rest)
            if w and "M" in r and "H" not in r:
                writes.append((t, d))
            if rest.startswith("sendto("):
                r["H"] = t
        if not writes or "H" not in r:
            continue
        c = max(writes, key=lambda w: w[1])
        r["C0"], r["C1"] = c[0], c[0] + c[1]
        before = [t for t in reads if t < r["B"]]
        if before:
            r["A"] = before[-1]
        zf = [(t, child) for t, child in zforks if r["B"] < t < r["H"]]
        tree = None
        if zf:
            r["Z"] = zf[0][0]
            tree = descendants(zf[0][1])
        elif not zygotes:  # cold mode: the supervisor clones the sandbox itself
            tree = descendants(sup) - {sup}
        if tree:
            sec = [(t + d, pid) for t, d, comm, pid, rest in ev if pid in tree and rest.startswith("seccomp")]
            if sec:
                r["E"], py = sec[-1]
                for t, d, comm, pid, rest in by_pid.get(py, []):
                    if rest.startswith("write(fd: 1,") and "F" not in r:
                        r["F"] = t
                    if rest.startswith("exit_group"):
                        r["G"] = t
        runs.append(r)

    phases = [
        ("A", "B", "server: HTTP request read, scan, hand-off, spawner forks a supervisor"),
        ("B", "Z", "supervisor: pipes + memfd, hands the run to the template; template forks"),
        ("Z", "C0", "template's child: clone(new user/pid/net/mnt/ipc/uts ns), id maps; cgroup mkdir + limits"),
        ("C0", "C1", "cgroup attach: the write of the pid to cgroup.procs"),
        ("C1", "E", "release; run init: mounts, pivot_root, fork of the Python process, caps, seccomp"),
        ("E", "F", "Python after seccomp: harness setup, user code up to its first print"),
        ("F", "G", "rest of the user code and harness (plots) until exit_group"),
        ("G", "H", "exit of Python and init, reap, cgroup reads + rmdir, outcome to server"),
        ("A", "H", "total: request read to outcome sent"),
    ]
    if not zygotes:
        phases = [p for p in phases if "Z" not in p[:2]]
        phases.insert(1, ("B", "C0", "supervisor: pipes + memfd, clone(new namespaces), id maps; cgroup mkdir + limits"))
    keys = tuple(k for k in ("A", "B", "Z", "C0", "C1", "E", "F", "G", "H") if zygotes or k != "Z")
    pooled = pooled_runs(ev, by_pid, server_threads, reads)
    if not pooled:
        ok = [r for r in runs if all(k in r for k in keys)]
        print(f"{len(ok)} of {len(runs)} runs with every phase found")
        report(phases, ok)
        return
    # With the pool, the supervisors the spawner forks build ready sandboxes: their phases
    # up to seccomp are a build's; after it the sandbox waits for a request. Builds overlap
    # (one per sandbox missing), and a build is paired with the template's fork by time, so
    # their medians are what to read, not their extremes.
    keys = ("B", "Z", "C0", "C1", "E") if zygotes else ("B", "C0", "C1", "E")
    built = [r for r in runs if all(k in r for k in keys)]
    print(f"{len(built)} ready sandboxes built during the recording (each phase found)")
    report([p for p in phases if p[0] != "A" and p[1] in keys], built)
    keys = ("A", "C", "R", "K", "W", "F", "X", "H", "Z")
    ok = [r for r in pooled if all(k in r for k in keys)]
    print(f"{len(ok)} of {len(pooled)} runs served by a ready sandbox with every phase found")
    report(POOLED_PHASES, ok)


POOLED_PHASES = [
    ("A", "C", "server: HTTP request read, scan, admission; spawner passes it to a ready supervisor"),
    ("C", "R", "ready supervisor: wakes, reads the request"),
    ("R", "K", "supervisor: code stored (memfd), claim and code sent to the waiting harness"),
    ("K", "W", "harness wakes"),
    ("W", "F", "harness: CPU limit, code read and compiled, user code up to its first print"),
    ("F", "X", "rest of the user code, figures, exit frame (output complete)"),
    ("X", "H", "supervisor: output read, verdict, outcome to the server"),
    ("H", "Z", "server: outcome read, HTTP response written"),
    ("A", "Z", "total: request read to response written"),
]


def report(phases, runs):
    for a, b, name in phases:
        xs = [r[b] - r[a] for r in runs]
        if xs:
            print(f"  {statistics.median(xs):7.2f} ms median  (min {min(xs):7.2f}, max {max(xs):7.2f})  {name}")


def pooled_runs(ev, by_pid, server_threads, reads):
    """The phases of each run a ready sandbox served (module docstring); `reads` are the
    times the server read from a socket."""
    claimed = sorted({e[3] for e in ev if e[2] == "nsbox-claimed"})
    pythons = [e for e in ev if e[2].startswith("python")]
    served = [e for e in ev if e[3] in server_threads]
    runs = []
    for sup in claimed:
        mine = by_pid[sup]
        c = next(e[0] for e in mine if e[2] == "nsbox-claimed")
        r = {"C": c}
        for t, d, comm, pid, rest in mine:
            if t < c or "continued" in rest:
                continue
            if rest.startswith("recvfrom(") and "R" not in r and re.search(r"= \d{2,}", rest):
                r["R"] = t + d
            if rest.startswith("sendmsg(") and "K" not in r:
                r["K"] = t
            if rest.startswith("sendto(") and "K" in r and "H" not in r:
                r["H"] = t
        if "K" in r:
            # The harness that was waiting: the first Python to set its CPU limit after K.
            woke = next((e for e in pythons if e[0] >= r["K"] and e[4].startswith("prlimit64(")), None)
            if woke:
                r["W"], py = woke[0], woke[3]
                for t, d, comm, pid, rest in by_pid.get(py, []):
                    if t < r["W"]:
                        continue
                    if rest.startswith("write(fd: 1") and "F" not in r:
                        r["F"] = t
                    if rest.startswith("write(fd: 4"):
                        r["X"] = t
        before = [t for t in reads if t < c]
        if before:
            r["A"] = before[-1]
        if "H" in r:
            out = next((e for e in served if e[0] > r["H"] and re.match(r"(writev|sendto|write)\(fd: (?!2\b)", e[4])), None)
            if out:
                r["Z"] = out[0]
        runs.append(r)
    return runs


if __name__ == "__main__":
    main()
