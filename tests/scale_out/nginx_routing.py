#!/usr/bin/env python3
"""deploy/nginx.conf's session routing, with njs (scripts/test-scale-out.sh runs this; standard
library only).

nginx runs deploy/nginx.conf and deploy/nsbox-session.js as shipped, but for the addresses
(three fake nodes on loopback ports), the listening port and the pid and log paths. Each fake
node answers every request with its name and the length and hash of the body it received, so
each check says which node got the request and that its body arrived whole:

- without a session: balanced over the three;
- a session in the path (GET, and a PUT of 1 MiB), in `session_id` of POST /v1/tools/code, in
  the arguments of an MCP tools/call, in the x-nsbox-session header of a 2 MB body: its node;
- a body past client_body_buffer_size with `session_id` only in the body, an id naming an
  unknown node, a body that is no JSON object: balanced, body intact (nsbox answers those);
- a session of a node that is down: 502 `session_node_down` naming the node, with
  x-should-retry: false.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

# The scale-out driver's failure list and helpers (its main() does not run on import).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from driver import FAILURES, check, free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HEX = "0123456789abcdef" * 2


def log(msg: str) -> None:
    sys.stderr.write(f"nginx-routing: {msg}\n")
    sys.stderr.flush()


class FakeNode:
    """Answers `<name> <body length> <sha1 of the body>`."""

    def __init__(self, name: str):
        node = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                text = f"{node.name} {len(body)} {hashlib.sha1(body).hexdigest()}".encode()
                self.send_response(200)
                self.send_header("content-length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            do_GET = do_POST = do_PUT = do_DELETE = answer

            def log_message(self, *args) -> None:
                pass

        self.name = name
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send(url: str, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict, str]:
    req = urllib.request.Request(url + path, data=body, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--pids", type=Path, help="where to record the nginx master's pid")
    args = p.parse_args()
    work = args.work
    (work / "logs").mkdir(parents=True, exist_ok=True)
    nodes = {n: FakeNode(n) for n in ("nsbox1", "nsbox2", "nsbox3")}
    port = free_port()
    text = (REPO / "deploy" / "nginx.conf").read_text()
    for i, node in enumerate(nodes.values(), 1):
        placeholder = f"192.0.2.1{i}:8080"
        assert placeholder in text, f"deploy/nginx.conf: no {placeholder}"
        text = text.replace(placeholder, f"127.0.0.1:{node.port}")
    for old, new in [("listen 80;", f"listen 127.0.0.1:{port};"),
                     ("/run/nginx-nsbox.pid", str(work / "nginx.pid")),
                     ("/var/log/nginx/nsbox-error.log", str(work / "logs" / "error.log")),
                     ("/var/log/nginx/nsbox-access.log", str(work / "logs" / "access.log"))]:
        assert old in text, f"deploy/nginx.conf: no {old!r}"
        text = text.replace(old, new)
    (work / "nginx.conf").write_text(text)
    (work / "nsbox-session.js").write_text((REPO / "deploy" / "nsbox-session.js").read_text())
    conf = ["-p", f"{work}/", "-c", str(work / "nginx.conf")]
    subprocess.run(["nginx", "-q", "-t", *conf], check=True)
    nginx = subprocess.Popen(["nginx", "-g", "daemon off;", *conf], stdin=subprocess.DEVNULL)
    if args.pids:
        # "pid start-time", as scripts/test-scale-out.sh's trap reads it, should this die.
        stat = Path(f"/proc/{nginx.pid}/stat").read_text()
        with open(args.pids, "a") as f:
            f.write(f"{nginx.pid} {stat[stat.rindex(')') + 2:].split()[19]}\n")
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        run_checks(url, nodes)
    finally:
        nginx.terminate()
        nginx.wait(10)
        for n in nodes.values():
            n.stop()
    log(f"{'passed' if not FAILURES else f'{len(FAILURES)} failures'}")
    return 1 if FAILURES else 0


def run_checks(url: str, nodes: dict[str, FakeNode]) -> None:
    def expect(what: str, answer: tuple[int, dict, str], body: bytes, node: str | None) -> str | None:
        """The request reached NODE (any node if None) with BODY whole; returns the node."""
        status, _, text = answer
        m = re.fullmatch(r"(nsbox\d) (\d+) ([0-9a-f]{40})", text)
        check(status == 200 and m is not None, f"{what}: {status} {text[:200]!r}")
        if not m:
            return None
        check(node is None or m[1] == node, f"{what}: reached {m[1]}, not {node}")
        check((int(m[2]), m[3]) == (len(body), hashlib.sha1(body).hexdigest()),
              f"{what}: the node got {m[2]} bytes, not the {len(body)} sent")
        return m[1]

    plain = json.dumps({"code": "print(1)", "lang": "python"}).encode()
    seen = {expect("a run without a session", send(url, "POST", "/v1/tools/code", plain), plain, None)
            for _ in range(6)}
    check(seen == set(nodes), f"runs without a session were not spread over the nodes: {seen}")

    for node in nodes:
        sid = f"sess_{node}_{HEX}"
        expect(f"GET /v1/sessions/{sid}", send(url, "GET", f"/v1/sessions/{sid}"), b"", node)
        big = bytes(range(256)) * 4096  # 1 MiB
        expect(f"PUT a 1 MiB file to {sid}",
               send(url, "PUT", f"/v1/sessions/{sid}/files/a/b.bin", big,
                    {"Content-Type": "application/octet-stream"}), big, node)
        call = json.dumps({"code": "print(x)", "lang": "python", "session_id": sid}).encode()
        expect(f"a call in {sid}", send(url, "POST", "/v1/tools/code", call), call, node)
        mcp = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": "run_python", "arguments": {"code": "1", "session_id": sid}}}).encode()
        expect(f"an MCP tools/call in {sid}",
               send(url, "POST", "/mcp", mcp, {"Accept": "application/json, text/event-stream"}), mcp, node)
        large = json.dumps({"code": "#" + "x" * 2_000_000, "lang": "python", "session_id": sid}).encode()
        expect(f"a 2 MB call in {sid} with x-nsbox-session",
               send(url, "POST", "/v1/tools/code", large, {"x-nsbox-session": sid}), large, node)

    # Balanced (nsbox itself answers these): body intact.
    large = json.dumps({"code": "#" + "x" * 2_000_000, "lang": "python",
                        "session_id": f"sess_nsbox2_{HEX}"}).encode()
    expect("a 2 MB call with session_id in the body only", send(url, "POST", "/v1/tools/code", large), large, None)
    unknown = json.dumps({"code": "1", "lang": "python", "session_id": f"sess_nsbox9_{HEX}"}).encode()
    expect("a session of an unknown node", send(url, "POST", "/v1/tools/code", unknown), unknown, None)
    for junk in (b"not json", b"[1]", b'{"session_id": 5}', b'{"method": "tools/call", "params": null}'):
        expect(f"body {junk!r}", send(url, "POST", "/v1/tools/code", junk), junk, None)
        expect(f"/mcp body {junk!r}", send(url, "POST", "/mcp", junk), junk, None)

    # A node that is down: its sessions get the 502 naming it; others are unaffected.
    nodes["nsbox2"].stop()
    sid = f"sess_nsbox2_{HEX}"
    call = json.dumps({"code": "1", "lang": "python", "session_id": sid}).encode()
    for what, answer in [("a call", send(url, "POST", "/v1/tools/code", call)),
                         ("GET", send(url, "GET", f"/v1/sessions/{sid}/files"))]:
        status, headers, text = answer
        try:
            err = json.loads(text)["error"]
        except (ValueError, KeyError):
            err = {}
        check(status == 502 and err.get("type") == "session_node_down" and "node nsbox2" in err.get("message", "")
              and {k.lower(): v for k, v in headers.items()}.get("x-should-retry") == "false",
              f"{what} for a session of the stopped nsbox2: {status} {text[:300]!r}")
    sid3 = f"sess_nsbox3_{HEX}"
    expect("a session of nsbox3 meanwhile", send(url, "GET", f"/v1/sessions/{sid3}"), b"", "nsbox3")


if __name__ == "__main__":
    sys.exit(main())
