"""The kernel's cgroup attach wait after an idle moment (issue 25): a process moves itself
into a scratch cgroup and back, after a pause before each move, and prints the p50 and the
worst of the moves in. With `favordynmods` on the host's cgroup2 they take well under a
millisecond; without it, one RCU grace period (15 ms measured here).

    sudo python3 scripts/bench/attach.py [MOVES] [PAUSE_MS]

It uses the v1 memory hierarchy when there is one, else the unified one, and removes its
scratch cgroup at the end.
"""

import os
import sys
import time

moves = int(sys.argv[1]) if len(sys.argv) > 1 else 20
pause = (float(sys.argv[2]) if len(sys.argv) > 2 else 100.0) / 1000
root = "/sys/fs/cgroup/memory" if os.path.isdir("/sys/fs/cgroup/memory") else "/sys/fs/cgroup"



def own_cgroup():
    """This process's cgroup in that hierarchy, where each move returns to."""
    for line in open("/proc/self/cgroup"):
        _, controllers, path = line.rstrip("\n").split(":", 2)
        if ("memory" in controllers.split(",")) == root.endswith("/memory"):
            return root + path
    return root


own = own_cgroup()
scratch = os.path.join(root, f"nsbox-attach-bench-{os.getpid()}")
os.mkdir(scratch)
took = []
try:
    for _ in range(moves):
        time.sleep(pause)
        started = time.perf_counter()
        with open(os.path.join(scratch, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        took.append((time.perf_counter() - started) * 1000)
        with open(os.path.join(own, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
finally:
    os.rmdir(scratch)
took.sort()
mounts = [l for l in open("/proc/self/mountinfo") if " - cgroup2 " in l]
favored = any("favordynmods" in l.split(" - ")[1] for l in mounts)
print(f"{moves} moves after {pause * 1000:.0f} ms idle each: p50 {took[len(took) // 2]:.3f} ms, "
      f"max {took[-1]:.3f} ms (favordynmods {'on' if favored else 'off'})")
