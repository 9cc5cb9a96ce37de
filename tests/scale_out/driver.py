#!/usr/bin/env python3
"""Several nsbox nodes behind HAProxy (scripts/test-scale-out.sh runs this; standard library only).

Two phases, each with its own HAProxy built from deploy/haproxy.cfg (the global, defaults and
frontend sections verbatim; addresses, the listening port, a stats socket and a capture of
x-request-id for the log are the only changes):

1. Retries. A backend of a port that refuses connections, a fake node that reads each request
   and then hangs up or answers 503, and a real nsbox. Requests that met a refused connection
   must be retried on another node (and succeed or meet the fake); requests that reached the
   fake must come back as 502/503 and never reach another node: code is not idempotent.
2. Sessions and failover. Three nsbox nodes, each with its node tag (nsbox1..3, the server
   names of deploy/haproxy.cfg). 30 sessions are created through HAProxy and must be spread
   over the nodes, each id naming the node that made it; every kind of request of each (calls,
   file PUT/list/GET, GET of the session, MCP run_python and list_files) must reach its node
   (HAProxy's log) and find its state (a variable set by a call, a file put). An id naming an
   unknown node is answered 421 by whichever node gets it. Then, under a bounded load of the
   spec's examples: node 1 is SIGKILLed: its sessions' requests get HAProxy's 503
   `session_node_down` naming it, the other sessions keep their state; it comes back (nothing of
   the old one may be left) and its old ids answer its own 404 naming it. Node 2 is restarted
   with SIGTERM (a rolling restart): a call in flight in one of its sessions is answered
   `session ended: the server shut down`, its log ends every session with that reason, and
   after the restart its old ids answer 404 naming it. Node 3's sessions keep their state
   through both. Every load answer must be a correct result or a clear 502/503, no request may
   have run on two nodes, and the figures (failed requests, time until HAProxy marks the dead
   node down) are printed and written to WORK/summary.json.

Every process it starts is written to WORK/pids (scripts/test-scale-out.sh's trap stops them
too, should this script die).
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)  # check_response and the spec's examples, as the benchmark checks them

T0 = time.monotonic()
FAILURES: list[str] = []


LOG_LOCK = threading.Lock()


def log(msg: str) -> None:
    # One write per line under a lock: the session checks log from several threads.
    with LOG_LOCK:
        sys.stderr.write(f"scale-out [{time.monotonic() - T0:6.1f}s]: {msg}\n")
        sys.stderr.flush()


def check(cond: bool, what: str) -> None:
    if not cond:
        FAILURES.append(what)
        log(f"FAIL: {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Work:
    def __init__(self, path: Path):
        self.path = path
        self.pids = path / "pids"

    def started(self, pid: int) -> None:
        """Records PID with its start time, so that the trap never signals a later process
        that happens to get the same pid."""
        with open(self.pids, "a") as f:
            f.write(f"{pid} {start_time(pid)}\n")


# --- processes -------------------------------------------------------------------------------


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = collections.defaultdict(list)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids[ppid].append(int(d))
    return kids


def descendants(pid: int) -> set[int]:
    kids = children_map()
    out, todo = set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            if k not in out:
                out.add(k)
                todo.append(k)
    return out


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: tells a process from a later one that got the same pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2 :].split()[19]
    except OSError:
        return None


def describe(pid: int) -> str:
    """What a process is: its name, state, parent and command line."""
    try:
        status = dict(l.split(":\t", 1) for l in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in l)
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
        return f"{pid} {status.get('Name')} state={status.get('State')} ppid={status.get('PPid')} [{cmd.strip()}]"
    except OSError:
        return f"{pid} (gone)"


def server_cgroups(pid: int) -> list[Path]:
    """The cgroup directories nsbox made for server PID (srv-PID under nsbox/ of its own
    cgroup, in every hierarchy it uses)."""
    found = []
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            roots = [Path("/sys/fs/cgroup")] if not controllers else []
            roots += [Path("/sys/fs/cgroup") / c for c in controllers.split(",") if c]
            roots += [Path("/sys/fs/cgroup/unified")] if not controllers else []
            for root in roots:
                d = root / path.lstrip("/") / "nsbox" / f"srv-{pid}"
                if d.is_dir() and d not in found:
                    found.append(d)
    return found


class Node:
    def __init__(self, index: int, args, work: Work):
        self.index = index
        self.name = f"nsbox{index}"
        self.port = free_port()
        self.args = args
        self.work = work
        self.proc: subprocess.Popen | None = None
        self.incarnation = 0
        self.logs: list[Path] = []

    def start(self) -> None:
        self.incarnation += 1
        path = self.work.path / f"{self.name}.{self.incarnation}.log"
        self.logs.append(path)
        out = open(path, "w")
        # The node tag is the server's name in deploy/haproxy.cfg, which routes sessions by
        # it. It goes in the environment (NSBOX_NODE): a binary that predates it starts
        # anyway, and the session checks then show what is missing. Ten sessions per node
        # fit the per-key count and the memory budget (a reservation of memory_mib each).
        self.proc = subprocess.Popen(
            [self.args.bin, "serve", "--listen", f"127.0.0.1:{self.port}", "--rootfs", self.args.rootfs,
             "--log-format", "json", "--max-running", str(self.args.max_running),
             "--max-sessions-per-key", "16", "--session-memory-budget-mib", "8192"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "NSBOX_NODE": self.name},
        )
        out.close()
        self.work.started(self.proc.pid)
        log(f"{self.name} started: pid {self.proc.pid}, 127.0.0.1:{self.port}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/health", timeout=2) as r:
                return r.status == 200 and r.read() == b"OK"
        except (OSError, urllib.error.URLError):
            return False

    def wait_healthy(self, timeout: float) -> float:
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode} before it was healthy; see {self.logs[-1]}")
            if self.healthy():
                return time.monotonic() - t
            time.sleep(0.1)
        raise SystemExit(f"{self.name} was not healthy within {timeout:.0f} s; see {self.logs[-1]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- HAProxy ---------------------------------------------------------------------------------

LOG_RE = re.compile(
    r"\[(?P<date>[^\]]+)\] (?P<frontend>\S+) (?P<backend>[^/\s]+)/(?P<server>\S+) "
    r"(?P<timers>\S+) (?P<status>-?\d+) \S+ \S+ \S+ (?P<term>\S{4}) "
    r"\d+/\d+/\d+/\d+/(?P<retries>\+?\d+) \d+/\d+ \{(?P<rid>[^}|]*)\}"
)


class HAProxy:
    def __init__(self, work: Work, name: str, port: int, addresses: dict[str, int] | None = None,
                 backend: str | None = None):
        """deploy/haproxy.cfg with the frontend on 127.0.0.1:PORT, a stats socket and the
        request id in the log; either its placeholder addresses 192.0.2.1N:8080 replaced by
        ADDRESSES (server name -> loopback port), or its backends replaced by BACKEND."""
        self.work = work
        self.sock = work.path / f"{name}.sock"
        self.cfg = work.path / f"{name}.cfg"
        self.logfile = work.path / f"{name}.log"
        self.port = port
        text = (REPO / "deploy" / "haproxy.cfg").read_text()
        # One thread: HAProxy drops a log line written to stdout while another thread holds
        # the fd's lock (haproxy/haproxy#1861, "works as designed"), and the checks read
        # every request's line.
        text = text.replace("\nglobal\n", f"\nglobal\n\tstats socket {self.sock} mode 600 level admin\n"
                            "\t# test only: no log line lost to another thread\n\tnbthread 1\n", 1)
        assert "\tbind :80\n" in text, "deploy/haproxy.cfg: the frontend no longer binds :80"
        text = text.replace(
            "\tbind :80\n",
            f"\tbind 127.0.0.1:{port}\n\t# test only: the request id in the log\n"
            "\thttp-request capture req.hdr(x-request-id) len 40\n",
        )
        if backend is not None:
            head, sep, _ = text.partition("\nbackend nsbox\n")
            assert sep, "deploy/haproxy.cfg has no `backend nsbox`"
            head = "\n".join(l for l in head.splitlines() if "use_backend node_" not in l)
            text = head + sep + backend
        else:
            for server, port_ in addresses.items():
                placeholder = f"192.0.2.1{server[-1]}:8080"
                assert placeholder in text, f"deploy/haproxy.cfg: no {placeholder} for {server}"
                text = text.replace(placeholder, f"127.0.0.1:{port_}")
            assert not re.search(r"192\.0\.2\.\d+:8080", text), "deploy/haproxy.cfg: more hosts than the test has nodes"
        self.cfg.write_text(text)
        subprocess.run(["haproxy", "-c", "-q", "-f", str(self.cfg)], check=True)
        self.proc = None

    def start(self) -> None:
        out = open(self.logfile, "w")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.cfg)], stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.work.started(self.proc.pid)
        for _ in range(100):
            if self.sock.exists():
                try:
                    self.stat()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise SystemExit(f"haproxy did not start; see {self.logfile}")

    def command(self, cmd: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(self.sock))
            s.sendall(cmd.encode() + b"\n")
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        return b"".join(chunks).decode()

    def stat(self) -> dict[str, str]:
        """Server name -> status (UP, DOWN, MAINT, "DOWN 1/2", ...) of backend nsbox."""
        lines = self.command("show stat").splitlines()
        cols = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(cols, line.split(",")))
            if row.get("pxname") == "nsbox" and row.get("svname") not in ("BACKEND", None):
                out[row["svname"]] = row["status"]
        return out

    def wait_status(self, server: str, want: str, timeout: float) -> float | None:
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            if self.stat().get(server) == want:
                return time.monotonic() - t
            time.sleep(0.02)
        return None

    def log_entries(self, want=(), within: float = 10.0) -> dict[str, dict]:
        """Request id -> its log line's fields. HAProxy writes a line once it is done with
        the request, which can be a moment after the client has its answer: the read waits
        (up to WITHIN seconds) for every id of WANT to be there, rather than for a fixed time."""
        deadline = time.monotonic() + within
        while True:
            out = {}
            for line in self.logfile.read_text(errors="replace").splitlines():
                m = LOG_RE.search(line)
                if m and m["rid"]:
                    out[m["rid"]] = m.groupdict()
            if all(rid in out for rid in want):
                return out
            if time.monotonic() >= deadline:
                log(f"{self.cfg.stem}: {sum(rid not in out for rid in want)} request ids not in its log; "
                    f"DroppedLogs {self.dropped_logs()}")
                return out
            time.sleep(0.05)

    def dropped_logs(self) -> str | None:
        """HAProxy's own count of log lines it could not write."""
        try:
            info = self.command("show info")
        except OSError:
            return None
        return next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("DroppedLogs:")), None)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


# --- the client ------------------------------------------------------------------------------


# How long the processes of a SIGKILLed node may take to be gone before the test fails.
GONE_WITHIN_S = 120

def post(url: str, rid: str, code: str, timeout: float = 90) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(
        url + "/v1/tools/code",
        data=json.dumps({"code": code, "lang": "python", "timeout": 30}).encode(),
        headers={"Content-Type": "application/json", "x-request-id": rid},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
    except (OSError, urllib.error.URLError) as e:
        return 0, {}, repr(e).encode()


def judge(workload: str, status: int, headers: dict, body: bytes) -> str:
    """'ok', 'retryable' (a clear 502/503 in the JSON error shape), or a description of what is wrong."""
    if status == 200:
        try:
            problems = bench.check_response(workload, json.loads(body))
        except ValueError:
            problems = ["not JSON"]
        return "ok" if not problems else f"200 but wrong: {'; '.join(problems)}"
    if status in (502, 503):
        try:
            err = json.loads(body)["error"]
            assert isinstance(err["type"], str) and isinstance(err["message"], str)
        except (ValueError, KeyError, TypeError, AssertionError):
            return f"{status} without the JSON error shape: {body[:200]!r}"
        if status == 502 and {k.lower(): v for k, v in headers.items()}.get("x-should-retry") != "false":
            return "502 without x-should-retry: false"
        return "retryable"
    return f"HTTP {status}: {body[:200]!r}"


# --- a node that reads requests and then fails ----------------------------------------------


class HangUpNode:
    """Answers GET /v1/health with OK; reads each POST fully, records its x-request-id, then
    alternately closes the connection without a word or answers nsbox's 503."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received: list[tuple[str, str]] = []  # (request id, what it did)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                b = conn.recv(65536)
                if not b:
                    return
                data += b
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
            need = int(headers.get("content-length", "0"))
            while len(body) < need:
                b = conn.recv(65536)
                if not b:
                    break
                body += b
            if lines[0].startswith("GET /v1/health"):
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nOK")
                return
            rid = headers.get("x-request-id", "?")
            what = "hang-up" if len(self.received) % 2 == 0 else "503"
            self.received.append((rid, what))
            if what == "503":
                msg = b'{"error":{"message":"nsbox is shutting down","type":"service_unavailable"}}'
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                             b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(msg), msg))
            else:
                conn.shutdown(socket.SHUT_RDWR)


def retry_phase(args, work: Work, real: Node) -> dict:
    log("phase 1: retries only for connections that failed")
    fake = HangUpNode()
    refused = free_port()  # bound and closed again: nothing listens there
    backend = (
        "\t# test only: the retry policy of the defaults above, against known failures\n"
        "\tbalance roundrobin\n"
        f"\tserver hangup 127.0.0.1:{fake.port}\n"
        f"\tserver refused 127.0.0.1:{refused}\n"
        f"\tserver {real.name} 127.0.0.1:{real.port}\n"
    )
    lb = HAProxy(work, "haproxy-retries", free_port(), backend=backend)
    lb.start()
    url = f"http://127.0.0.1:{lb.port}"
    code = bench.code("basic")
    results = {}
    for i in range(args.retry_requests):
        rid = f"retry-{i:03d}"
        status, headers, body = post(url, rid, code)
        results[rid] = (status, judge("basic", status, headers, body))
    entries = lb.log_entries(want=results)
    lb.stop()
    fake_ids = dict(fake.received)
    redispatched = redispatched_ok = 0
    for rid, (status, verdict) in results.items():
        e = entries.get(rid)
        check(e is not None, f"{rid}: not in HAProxy's log")
        check(verdict in ("ok", "retryable"), f"{rid}: {verdict}")
        if rid in fake_ids:
            # Reached a node: must not have been replayed on the real one.
            want = 502 if fake_ids[rid] == "hang-up" else 503
            check(status == want, f"{rid} reached the failing node ({fake_ids[rid]}) but the client got {status}")
            check(e is None or e["server"] == "hangup",
                  f"{rid} reached the failing node, yet HAProxy logged it on {e and e['server']}")
        else:
            check(status == 200, f"{rid} never reached the failing node, yet got {status}")
        if e and e["retries"].lstrip("+") != "0":
            # The first try met the refused port; the retry went to another server.
            redispatched += 1
            redispatched_ok += status == 200
    counts = collections.Counter(r for r, _ in fake.received)
    check(all(n == 1 for n in counts.values()), f"the failing node got a request twice: {counts}")
    check(sum(1 for _, w in fake.received if w == "hang-up") >= 1, "no request met the hang-up (the test proved nothing)")
    check(redispatched >= 1, "no request was retried after a refused connection (the test proved nothing)")
    fake.sock.close()
    summary = {
        "requests": len(results),
        "reached_failing_node": len(fake.received),
        "of_which_hang_ups_502": sum(1 for _, w in fake.received if w == "hang-up"),
        "of_which_503": sum(1 for _, w in fake.received if w == "503"),
        "retried_after_refused_connection": redispatched,
        "of_which_ok": redispatched_ok,
        "statuses": dict(collections.Counter(s for s, _ in results.values())),
    }
    log(f"phase 1: {summary}")
    return summary


# --- failover --------------------------------------------------------------------------------


class Load:
    def __init__(self, url: str, workers: int, max_requests: int):
        self.url = url
        self.workers = workers
        self.max_requests = max_requests
        self.lock = threading.Lock()
        self.n = 0
        self.stop = threading.Event()
        self.records: list[dict] = []
        self.threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(workers)]

    def worker(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                if self.n >= self.max_requests:
                    return
                n = self.n
                self.n += 1
            w = bench.WORKLOADS[n % len(bench.WORKLOADS)]
            rid = f"load-{n:05d}"
            t = time.monotonic()
            status, headers, body = post(self.url, rid, bench.code(w))
            rec = {"id": rid, "workload": w, "sent": t - T0, "answered": time.monotonic() - T0,
                   "status": status, "verdict": judge(w, status, headers, body)}
            with self.lock:
                self.records.append(rec)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)


def run_finished_ids(node: Node) -> collections.Counter:
    ids: collections.Counter = collections.Counter()
    for path in node.logs:
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            fields = rec.get("fields", {})
            if fields.get("message") != "run finished":
                continue
            rid = rec.get("span", {}).get("request_id") or next(
                (s.get("request_id") for s in rec.get("spans", []) if s.get("request_id")), None)
            if rid:
                ids[rid] += 1
    return ids


# --- sessions --------------------------------------------------------------------------------

SESSION_ID = re.compile(r"sess_([a-z0-9-]{1,32})_[0-9a-f]{32}")


def request(url: str, method: str, path: str, rid: str, body: bytes | dict | None = None,
            headers: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    """One request; the answer's status and JSON body ({"raw": text} if it is not JSON)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    h = {"x-request-id": rid, **(headers or {})}
    if data is not None:
        h.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url + path, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (OSError, urllib.error.URLError) as e:
        return 0, {"raw": repr(e)}
    try:
        return status, json.loads(raw) if raw else {}
    except ValueError:
        return status, {"raw": raw.decode(errors="replace")[:300]}


def mcp_call(url: str, rid: str, tool: str, arguments: dict) -> tuple[int, dict]:
    """A tools/call on /mcp (stateless streamable HTTP: no initialize needed)."""
    return request(url, "POST", "/mcp", rid,
                   {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": tool, "arguments": arguments}},
                   headers={"Accept": "application/json, text/event-stream"})


def mcp_text(v: dict) -> str:
    return "\n".join(c.get("text", "") for c in v.get("result", {}).get("content", []) if isinstance(c, dict))


def error_of(v: dict) -> tuple[str, str]:
    e = v.get("error") if isinstance(v.get("error"), dict) else {}
    return str(e.get("type")), str(e.get("message"))


class Session:
    def __init__(self, index: int, sid: str, node: str | None):
        self.index = index
        self.id = sid
        self.node = node  # the node its id names
        self.token = f"token-{index:02d}-{os.urandom(4).hex()}"
        self.file = f"notes/n{index:02d}.txt"
        self.content = f"file of session {index}\n"
        # request id -> the node the request had to reach
        self.sent: dict[str, str | None] = {}

    def rid(self, what: str) -> str:
        r = f"sess{self.index:02d}-{what}"
        self.sent[r] = self.node
        return r


def create_sessions(url: str, count: int) -> list[Session]:
    out = []
    for i in range(count):
        status, v = request(url, "POST", "/v1/sessions", f"create-{i:02d}", {})
        check(status == 201, f"creating session {i} through HAProxy: {status} {v}")
        sid = str(v.get("id", ""))
        m = SESSION_ID.fullmatch(sid)
        check(m is not None, f"session {i}: id {sid!r} does not name a node (sess_<node>_<32 hex>)")
        out.append(Session(i, sid, m and m[1]))
    return [s for s in out if s.id]


def exercise(url: str, s: Session, round_: str) -> None:
    """Every kind of request for session S, through HAProxy, with its state checked: a variable
    set by one call is read by the next (REST and MCP), a file put is listed and read back
    (REST and MCP). Only the session's own node has that state."""
    sid = s.id
    if round_ == "first":
        st, v = request(url, "POST", "/v1/tools/code", s.rid(f"{round_}-set"),
                        {"code": f"token = {s.token!r}", "lang": "python", "session_id": sid})
        check(st == 200 and v.get("success") is True, f"{sid} set: {st} {v}")
        st, v = request(url, "PUT", f"/v1/sessions/{sid}/files/{s.file}", s.rid(f"{round_}-put"),
                        s.content.encode(), headers={"Content-Type": "application/octet-stream"})
        check(st == 201, f"{sid} PUT {s.file}: {st} {v}")
    st, v = request(url, "POST", "/v1/tools/code", s.rid(f"{round_}-get"),
                    {"code": "print(token)", "lang": "python", "session_id": sid})
    check(st == 200 and v.get("stdout") == s.token + "\n", f"{sid} ({round_}) print(token): {st} {v}")
    st, v = request(url, "GET", f"/v1/sessions/{sid}", s.rid(f"{round_}-show"))
    check(st == 200 and v.get("id") == sid and v.get("state") == "active", f"{sid} ({round_}) GET: {st} {v}")
    st, v = request(url, "GET", f"/v1/sessions/{sid}/files", s.rid(f"{round_}-list"))
    paths = [f.get("path") for f in v.get("files", [])] if st == 200 else []
    check(s.file in paths, f"{sid} ({round_}) file list: {st} {v}")
    st, v = request(url, "GET", f"/v1/sessions/{sid}/files/{s.file}", s.rid(f"{round_}-read"))
    check(st == 200 and v.get("raw", json.dumps(v)) == s.content, f"{sid} ({round_}) GET {s.file}: {st} {v}")
    st, v = mcp_call(url, s.rid(f"{round_}-mcp-run"), "run_python", {"code": "print(token)", "session_id": sid})
    check(st == 200 and v.get("result", {}).get("isError") is False and s.token in mcp_text(v),
          f"{sid} ({round_}) MCP run_python: {st} {v}")
    st, v = mcp_call(url, s.rid(f"{round_}-mcp-list"), "list_files", {"session_id": sid})
    check(st == 200 and s.file in mcp_text(v), f"{sid} ({round_}) MCP list_files: {st} {v}")


def exercise_all(url: str, sessions: list[Session], round_: str) -> None:
    threads = []
    for chunk in range(6):
        part = sessions[chunk::6]
        t = threading.Thread(target=lambda p=part: [exercise(url, s, round_) for s in p])
        t.start()
        threads.append(t)
    for t in threads:
        t.join(300)


def routed_as_named(lb: HAProxy, sessions: list[Session], prefix: str) -> int:
    """Each request of the sessions whose id starts with PREFIX reached the node its session
    id names, through that node's backend, per HAProxy's log. Returns how many were checked."""
    sent = {rid: node for s in sessions for rid, node in s.sent.items()
            if rid.startswith(f"sess{s.index:02d}-{prefix}")}
    entries = lb.log_entries(want=sent)
    n = 0
    for s in sessions:
        for rid, node in s.sent.items():
            if rid not in sent:
                continue
            n += 1
            e = entries.get(rid)
            check(e is not None and e["server"] == node and e["backend"] == f"node_{node}",
                  f"{rid} ({s.id}): HAProxy sent it to {e and e['backend']}/{e and e['server']}, not node_{node}/{node}")
    return n


def dead_node_answers(url: str, s: Session, what: str, node: str) -> None:
    """A request for a session of NODE, which is down: HAProxy's 503 naming the node."""
    for label, (st, v) in {
        "call": request(url, "POST", "/v1/tools/code", s.rid(f"{what}-call"),
                        {"code": "print(token)", "lang": "python", "session_id": s.id}),
        "file list": request(url, "GET", f"/v1/sessions/{s.id}/files", s.rid(f"{what}-list")),
        "MCP call": mcp_call(url, s.rid(f"{what}-mcp"), "run_python", {"code": "print(1)", "session_id": s.id}),
    }.items():
        kind, message = error_of(v)
        check(st == 503 and kind == "session_node_down" and f"node {node}" in message,
              f"{s.id} ({what}, {label}) while {node} is down: {st} {v}")


def gone_after_restart(url: str, s: Session, what: str, node: str) -> None:
    """A session of a node that has restarted: the node says it does not know it, naming
    itself and since when (not another node's plain 404)."""
    st, v = request(url, "POST", "/v1/tools/code", s.rid(f"{what}-call"),
                    {"code": "print(token)", "lang": "python", "session_id": s.id})
    kind, message = error_of(v)
    check(st == 404 and message.startswith(f"session not found on node {node}, up since"),
          f"{s.id} ({what}) after {node} restarted: {st} {v}")


def sessions_ended_in_log(path: Path) -> collections.Counter:
    """Reasons of the `session ended` lines of one node's log."""
    reasons: collections.Counter = collections.Counter()
    for line in path.read_text(errors="replace").splitlines():
        try:
            fields = json.loads(line).get("fields", {})
        except ValueError:
            continue
        if fields.get("message") == "session ended":
            reasons[fields.get("reason")] += 1
    return reasons


def failover_phase(args, work: Work, nodes: list[Node]) -> dict:
    log("phase 2: failover under load")
    lb = HAProxy(work, "haproxy", free_port(), addresses={n.name: n.port for n in nodes})
    lb.start()
    for n in nodes:
        check(lb.wait_status(n.name, "UP", 10) is not None, f"{n.name} never UP in HAProxy")
    url = f"http://127.0.0.1:{lb.port}"
    victim, rolled, spared = nodes
    figures: dict = {}
    deadline = time.monotonic() + args.max_seconds

    # --- sessions, created through HAProxy, each reached on its node by every request ---
    t = time.monotonic()
    sessions = create_sessions(url, args.sessions)
    spread = collections.Counter(s.node for s in sessions)
    figures["sessions_per_node"] = dict(sorted(spread.items(), key=lambda kv: str(kv[0])))
    log(f"{len(sessions)} sessions created through HAProxy: {figures['sessions_per_node']}")
    check(all(spread.get(n.name, 0) >= args.sessions // 6 for n in nodes),
          f"{args.sessions} sessions not spread over the three nodes: {dict(spread)}")
    entries = lb.log_entries(want=[f"create-{i:02d}" for i in range(len(sessions))])
    for i, s in enumerate(sessions):
        e = entries.get(f"create-{i:02d}")
        check(e is not None and e["server"] == s.node,
              f"session {s.id} was made on {e and e['server']} per HAProxy, but its id names {s.node}")
    exercise_all(url, sessions, "first")
    figures["session_requests_routed"] = routed_as_named(lb, sessions, "first")
    figures["sessions_exercised_s"] = round(time.monotonic() - t, 1)
    log(f"every session's calls, file requests and MCP calls reached its node: "
        f"{figures['session_requests_routed']} requests in {figures['sessions_exercised_s']} s")
    # An id naming a node HAProxy does not know is balanced, and the node that gets it says
    # whose session it is.
    st, v = request(url, "POST", "/v1/tools/code", "unknown-node",
                    {"code": "print(1)", "lang": "python", "session_id": "sess_nsbox9_" + "0" * 32})
    kind, message = error_of(v)
    check(st == 421 and kind == "misdirected_request" and message.startswith("session belongs to node nsbox9"),
          f"a session id of an unknown node through HAProxy: {st} {v}")
    # A body longer than HAProxy's buffer, with `session_id` last: HAProxy does not see the
    # id, so the header names the session (docs/operating.md).
    s = sessions[0]
    st, v = request(url, "POST", "/v1/tools/code", s.rid("first-large-body"),
                    {"code": "#" + "x" * 40_000 + "\nprint(token)", "lang": "python", "session_id": s.id},
                    headers={"x-nsbox-session": s.id})
    check(st == 200 and v.get("stdout") == s.token + "\n", f"{s.id}: a 40 kB call with x-nsbox-session: {st} {v}")

    load = Load(url, args.workers, args.max_requests)
    load.start()
    victims = [s for s in sessions if s.node == victim.name]
    others = [s for s in sessions if s.node != victim.name]

    time.sleep(args.warmup_seconds)
    # --- SIGKILL node 1 ---
    old_pid = victim.proc.pid
    # A process that exits between the two reads (a run ending under the load) has no
    # start time: kept with None it would count as alive for good, as "(gone)".
    old_procs = {p: t for p in descendants(old_pid) if (t := start_time(p)) is not None}
    old_what = {p: describe(p) for p in old_procs}
    old_cgroups = server_cgroups(old_pid)
    check(bool(old_procs), f"{victim.name} had no child processes before the kill (spawner, templates)")
    check(bool(old_cgroups), f"{victim.name} had no srv-{old_pid} cgroup before the kill")
    gone = {}

    def watch_old_processes() -> None:
        # Everything under the old server goes with it (parent-death signals). Exiting
        # processes of a few hundred MiB can take a while to be torn down on a loaded
        # host: the bound is generous, and the figure says how long it really took.
        while time.monotonic() - t_kill < GONE_WITHIN_S and any(start_time(p) == s for p, s in old_procs.items()):
            time.sleep(0.01)
        gone["s"] = time.monotonic() - t_kill

    t_kill = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    watcher = threading.Thread(target=watch_old_processes)
    watcher.start()
    victim.proc.wait()
    log(f"SIGKILL {victim.name} (pid {old_pid}; {len(old_procs)} processes under it, cgroups {[str(c) for c in old_cgroups]})")
    # Its sessions at once, before HAProxy has marked it down (refused connections).
    if victims:
        dead_node_answers(url, victims[0], "killed", victim.name)
    # From the kill (the session requests above met the refused port too, and count
    # towards `observe layer4`), so the figure is comparable with or without them.
    down = lb.wait_status(victim.name, "DOWN", 20)
    down = None if down is None else time.monotonic() - t_kill
    check(down is not None, f"HAProxy did not mark {victim.name} DOWN within 20 s of SIGKILL")
    figures["sigkill_to_marked_down_s"] = None if down is None else round(down, 3)
    log(f"HAProxy marked {victim.name} DOWN {down if down is None else f'{down:.3f}'} s after SIGKILL")
    # Only its sessions ended: each answers HAProxy's 503 naming the node; the others keep
    # their state.
    for s in victims:
        dead_node_answers(url, s, "down", victim.name)
    exercise_all(url, others, "after-kill")
    routed_as_named(lb, others, "after-kill")
    log(f"{len(victims)} sessions of {victim.name} answered session_node_down; the other {len(others)} kept their state")
    watcher.join()
    alive = [p for p, s in old_procs.items() if start_time(p) == s]
    figures["old_processes_gone_after_s"] = round(gone["s"], 3)
    check(not alive, f"processes of the killed {victim.name} still alive {GONE_WITHIN_S} s later: "
                     f"{[describe(p) + ' was ' + old_what[p] for p in alive]}")
    figures["cgroups_left_until_restart"] = [str(c) for c in old_cgroups if c.exists()]

    # --- it comes back ---
    victim.start()
    took = victim.wait_healthy(180)
    up = lb.wait_status(victim.name, "UP", 30)
    check(up is not None, f"HAProxy did not take {victim.name} back within 30 s of /v1/health OK")
    figures["restart_to_healthy_s"] = round(took, 1)
    figures["healthy_to_marked_up_s"] = None if up is None else round(up, 2)
    left = [str(c) for c in old_cgroups if c.exists()]
    check(not left, f"the restarted {victim.name} left the old server's cgroups behind: {left}")
    alive = [p for p, s in old_procs.items() if start_time(p) == s]
    check(not alive, f"processes of the killed {victim.name} alive after its restart: {alive}")
    log(f"{victim.name} back: healthy after {took:.1f} s, UP {up if up is None else f'{up:.1f}'} s later; old cgroups left: {left}, old processes alive: {alive}")
    for s in victims:
        gone_after_restart(url, s, "killed-restarted", victim.name)

    # --- rolling restart of node 2 with SIGTERM ---
    # A call in flight in one of its sessions is answered with the reason the session ended.
    rolled_sessions = [s for s in sessions if s.node == rolled.name]
    in_flight: dict = {}
    if rolled_sessions:
        s = rolled_sessions[0]

        def slow_call() -> None:
            in_flight["answer"] = request(url, "POST", "/v1/tools/code", s.rid("term-in-flight"),
                                          {"code": "import time\ntime.sleep(20)", "lang": "python",
                                           "timeout": 30, "session_id": s.id})

        caller = threading.Thread(target=slow_call)
        caller.start()
        time.sleep(2)
    t_term = time.monotonic()
    rolled.proc.send_signal(signal.SIGTERM)
    if rolled_sessions:
        caller.join(60)
        st, v = in_flight.get("answer", (0, {}))
        check(st == 404 and error_of(v)[1] == "session ended: the server shut down",
              f"a call in flight in {rolled_sessions[0].id} at SIGTERM: {st} {v}")
    down2 = lb.wait_status(rolled.name, "DOWN", 20)
    figures["sigterm_to_marked_down_s"] = None if down2 is None else round(down2, 3)
    try:
        rc = rolled.proc.wait(40)
    except subprocess.TimeoutExpired:
        rc = None
    figures["sigterm_exit_s"] = round(time.monotonic() - t_term, 2)
    check(rc == 0, f"{rolled.name} exit status after SIGTERM: {rc}")
    log(f"SIGTERM {rolled.name}: exited {rc} after {figures['sigterm_exit_s']} s, marked DOWN after {down2 if down2 is None else f'{down2:.2f}'} s")
    # Every session of the node was ended cleanly, with the documented reason.
    reasons = sessions_ended_in_log(rolled.logs[-1])
    figures["sigterm_sessions_ended"] = dict(reasons)
    check(reasons == collections.Counter({"the server shut down": len(rolled_sessions)}),
          f"{rolled.name} at SIGTERM ended {dict(reasons)}, not its {len(rolled_sessions)} sessions "
          f"with 'the server shut down'")
    for s in rolled_sessions[1:3]:
        dead_node_answers(url, s, "restarting", rolled.name)
    rolled.start()
    took2 = rolled.wait_healthy(180)
    up2 = lb.wait_status(rolled.name, "UP", 30)
    check(up2 is not None, f"HAProxy did not take {rolled.name} back")
    figures["rolled_restart_to_healthy_s"] = round(took2, 1)
    for s in rolled_sessions:
        gone_after_restart(url, s, "term-restarted", rolled.name)
    # The node that was neither killed nor restarted kept every session, with its state.
    kept = [s for s in sessions if s.node == spared.name]
    exercise_all(url, kept, "end")
    routed_as_named(lb, kept, "end")
    for s in kept:
        st, v = request(url, "DELETE", f"/v1/sessions/{s.id}", s.rid("end-close"))
        check(st == 204, f"closing {s.id}: {st} {v}")
    figures["session_requests"] = sum(len(s.sent) for s in sessions)
    log(f"{spared.name}'s {len(kept)} sessions kept their state through both; closed")

    # A little traffic over all three again, then stop.
    time.sleep(min(args.tail_seconds, max(0.0, deadline - time.monotonic())))
    load.finish()
    time.sleep(0.5)
    lb.stop()
    figures["load_seconds"] = round(time.monotonic() - t_kill + args.warmup_seconds, 1)
    check(time.monotonic() <= deadline + 5, f"the failover phase took longer than {args.max_seconds} s")

    # --- what the clients got ---
    recs = load.records
    verdicts = collections.Counter(r["verdict"] for r in recs)
    bad = [r for r in recs if r["verdict"] not in ("ok", "retryable")]
    for r in bad[:10]:
        check(False, f"{r['id']} ({r['workload']}): {r['verdict']}")
    check(not bad, f"{len(bad)} answers neither correct nor a clear 502/503")
    failed = [r for r in recs if r["verdict"] == "retryable"]
    # Every request that reached HAProxy and was answered has a line (a refused connection
    # to HAProxy itself would have none; the load's clients never meet one).
    entries = lb.log_entries(want=[r["id"] for r in recs if r["status"]])
    # --- no request ran twice, and none that failed ran anywhere but where HAProxy sent it ---
    finished = {n.name: run_finished_ids(n) for n in nodes}
    total = collections.Counter()
    for c in finished.values():
        total.update(c)
    twice = [rid for rid, k in total.items() if k > 1]
    check(not twice, f"requests that ran more than once: {twice[:10]}")
    for r in recs:
        e = entries.get(r["id"])
        ran_on = [name for name, c in finished.items() if r["id"] in c]
        if r["status"] == 200:
            check(e is not None and ran_on == [e["server"]],
                  f"{r['id']}: answered 200 by {e and e['server']} per HAProxy, ran on {ran_on} per the nodes' logs")
        elif e is not None and e["server"] not in ("<NOSRV>",):
            check(ran_on in ([], [e["server"]]), f"{r['id']} failed on {e['server']} but ran on {ran_on}")
    redispatched = [rid for rid, e in entries.items() if rid.startswith("load-") and e["retries"].startswith("+")]
    retried = [rid for rid, e in entries.items() if rid.startswith("load-") and e["retries"].lstrip("+") != "0"]
    by_status = collections.Counter(r["status"] for r in failed)
    failed_kill = [r for r in failed if t_kill - T0 - 1 <= r["answered"] <= t_term - T0]
    summary = {
        "requests": len(recs),
        "ok": verdicts.get("ok", 0),
        "failed_retryable": len(failed),
        "failed_by_status": dict(by_status),
        "failed_around_sigkill": len(failed_kill),
        "failed_around_sigterm": len(failed) - len(failed_kill),
        "retried_after_connection_failure": len(retried),
        "of_which_redispatched": len(redispatched),
        "ran_twice": len(twice),
        "workers": args.workers,
        **figures,
    }
    return summary


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--rootfs", required=True)
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--max-running", type=int, default=4)
    p.add_argument("--max-requests", type=int, default=3000)
    p.add_argument("--max-seconds", type=float, default=300)
    p.add_argument("--warmup-seconds", type=float, default=5)
    p.add_argument("--tail-seconds", type=float, default=3)
    p.add_argument("--retry-requests", type=int, default=12)
    p.add_argument("--sessions", type=int, default=30)
    args = p.parse_args()
    work = Work(args.work)
    nodes = [Node(i, args, work) for i in (1, 2, 3)]
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            log(f"{n.name} healthy after {n.wait_healthy(240):.1f} s more")
        summary = {"retries": retry_phase(args, work, nodes[2])}
        summary["failover"] = failover_phase(args, work, nodes)
    finally:
        for n in nodes:
            n.stop()
    summary["failures"] = FAILURES
    (args.work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
