#!/usr/bin/env python3
"""Where the CPU of a loaded nsbox server goes, per run: by process role and by activity.

Usage: cpu_roles.py SCRIPT SERVER_PID PS_FILE REQUESTS SAMPLE_HZ

SCRIPT is `perf script -F comm,pid,tid,event,trace,ip,sym` of a `perf record -a -g -e
cpu-clock -e sched:sched_process_fork` taken while the server ran REQUESTS requests; PS_FILE
holds `ps -eo pid=,ppid=,comm=` snapshots (before and after the recording) for the processes
that were not forked during it. Samples are read in time order and each is given to the
process it hit as the fork events describe it at that moment, so pids reused during a busy
recording are not mixed up.

A warm run is three copies of a zygote's image, told apart by how many Python processes
stand between them and a non-Python ancestor: the zygote, the run's init (copy 1, cloned by
the zygote) and the run's Python process (copy 2, forked by that init). In the nested shape
the run's init shares the zygote's memory until it execs the run init program (a process
that is not Python, whose parent is a zygote), and Python, its fork, is the one copy. Other processes of
the server's tree are the server, its spawner, and supervisors (with the template inits).
Kernel threads (netns and cgroup clean-up, RCU) are counted beside them: they work for the
runs. Prints CPU milliseconds per request for each.
"""

import collections
import re
import sys

# First match wins: a sample whose stack holds one of these functions is that activity.
ACTIVITIES = [
    ("network namespace: create", ["setup_net"]),
    ("network namespace: destroy", ["cleanup_net"]),
    ("fork: copy page tables", ["dup_mmap"]),
    ("other namespaces", ["create_new_namespaces", "free_nsproxy", "put_ipc_ns", "free_ipc"]),
    ("page faults", ["handle_mm_fault"]),
    ("exit: unmap", ["exit_mmap"]),
    ("cgroups", ["cgroup_mkdir", "cgroup_rmdir", "css_killed_work_fn", "css_free_rwork_fn",
                 "cgroup_file_write", "__cgroup1_procs_write", "cgroup_procs_write",
                 "mem_cgroup_css_offline"]),
    ("mounts", ["__x64_sys_mount", "__x64_sys_pivot_root", "__x64_sys_umount"]),
    ("exit: other", ["do_exit"]),
    ("python interpreter", ["_PyEval_EvalFrameDefault"]),
]
KERNEL_ENTRIES = ("entry_SYSCALL", "asm_", "do_syscall", "ret_from_fork", "worker_thread",
                  "smpboot_thread_fn", "kthread")
KERNEL_THREADS = ("kworker", "ksoftirqd", "rcu", "kcompactd", "khugepaged")
HEADER = re.compile(r"^(.*?)\s+(\d+)/(\d+)\s+([\w:-]+):\s*(.*)$")
FORK = re.compile(r" pid=(\d+) child_comm=(.*) child_pid=(\d+)")


def kernel_entry(stack):
    """How a sample counted as "kernel: other" entered the kernel: its system call, else
    the outermost kernel entry on its stack (an interrupt, a new task's first return)."""
    for f in stack:
        if f.startswith(("__x64_sys_", "__ia32_sys_")):
            return f.split("_sys_", 1)[1]
    # A handler the kernel inlined into its dispatch: the function do_syscall_64 called.
    if "do_syscall_64" in stack:
        i = stack.index("do_syscall_64")
        callees = [f for f in stack[:i] if f != "x64_sys_call"]
        if callees:
            return callees[-1]
    entries = [f for f in stack if f.startswith(KERNEL_ENTRIES)]
    return entries[-1] if entries else "?"


def activity(stack):
    frames = set(stack)
    for name, functions in ACTIVITIES:
        if any(f in frames for f in functions):
            return name
    if any(f.startswith(KERNEL_ENTRIES) for f in stack):
        return "kernel: other"
    return "user: other"


class Tree:
    def __init__(self, server, ps_file):
        self.server = server
        self.parent = {}
        self.comm = {}
        with open(ps_file) as f:
            for line in f:
                fields = line.split(None, 2)
                if len(fields) == 3:
                    pid = int(fields[0])
                    self.parent.setdefault(pid, int(fields[1]))
                    self.comm.setdefault(pid, fields[2].strip())

    def forked(self, parent, child, comm):
        self.parent[child] = parent
        self.comm[child] = comm

    def in_server(self, pid):
        for _ in range(40):
            if pid == self.server:
                return True
            if pid not in self.parent:
                return False
            pid = self.parent[pid]
        return False

    def role(self, pid, comm):
        if pid == self.server:
            return "server"
        if not self.in_server(pid):
            return "kernel threads" if comm.startswith(KERNEL_THREADS) else None
        if not comm.startswith("python"):
            if self.comm.get(self.parent.get(pid), "").startswith("python"):
                # The nested shape's run init: cloned by a zygote, then exec'd (named by
                # its descriptor until it names itself nsbox-run-init).
                return "run init (copy 1)"
            return "spawner" if self.parent.get(pid) == self.server else "supervisors, template inits"
        depth = 0
        while self.comm.get(self.parent.get(pid), "").startswith("python") and depth < 10:
            pid = self.parent[pid]
            depth += 1
        return {0: "zygotes", 1: "run init (copy 1)", 2: "run python (copy 2)"}.get(
            depth, "run's own children")


def main():
    script, server, ps_file, requests, hz = sys.argv[1:6]
    requests, hz = int(requests), float(hz)
    tree = Tree(int(server), ps_file)
    by_role = collections.Counter()
    by_activity = collections.Counter()
    role_activity = collections.defaultdict(collections.Counter)
    kernel_other = collections.Counter()
    others = 0
    sample = None

    def account(pid, comm, stack):
        nonlocal others
        role = tree.role(pid, comm)
        if role is None:
            others += 1
            return
        what = activity(stack)
        by_role[role] += 1
        by_activity[what] += 1
        role_activity[role][what] += 1
        if what == "kernel: other":
            kernel_other[kernel_entry(stack)] += 1

    with open(script, errors="replace") as f:
        for line in f:
            if line.startswith((" ", "\t")):
                if sample is not None:
                    parts = line.split()
                    if len(parts) >= 2:
                        sample[2].append(parts[1])
                continue
            if sample is not None:
                account(*sample)
                sample = None
            m = HEADER.match(line.rstrip("\n"))
            if not m:
                continue
            comm, pid, _tid, event, rest = m.groups()
            comm, pid = comm.strip(), int(pid)
            if event.startswith("sched:sched_process_fork"):
                fork = FORK.search(rest)
                if fork:
                    tree.forked(int(fork.group(1)), int(fork.group(3)), fork.group(2))
                continue
            tree.comm[pid] = comm
            sample = (pid, comm, [])
    if sample is not None:
        account(*sample)

    ms = lambda n: n / hz * 1000 / max(requests, 1)  # noqa: E731
    total = sum(by_role.values())
    print(f"CPU per request: {ms(total):.2f} ms over {requests} requests "
          f"({others} samples of other processes left out)")
    print("by process, and within each what its time went to:")
    for role, n in by_role.most_common():
        top = ", ".join(f"{a} {c * 100 / n:.0f}%" for a, c in role_activity[role].most_common(4))
        print(f"  {ms(n):6.2f} ms  {role}: {top}")
    print("by activity:")
    for what, n in by_activity.most_common():
        print(f"  {ms(n):6.2f} ms  {what}")
    print('"kernel: other" by system call (or entry):')
    for entry, n in kernel_other.most_common(10):
        print(f"  {ms(n):6.2f} ms  {entry}")


if __name__ == "__main__":
    main()
