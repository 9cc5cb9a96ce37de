"""The downloads the egress benchmark times (scripts/bench-egress.sh), as JSON on one line:
seconds per try of each method. In a run through the door (HTTP_PROXY set): urllib in
absolute form, http.client through a CONNECT tunnel, requests, and requests.get of a small
file over HTTPS (an upstream of the benchmark's CA, trusted through `[egress] ca_file`).
Directly on the host: urllib and requests. The same file serves both, run by the same
interpreter (the tree's python3: its http.client reads a large body in growing chunks,
which a host's python3 may not)."""
import http.client
import json
import os
import time
import urllib.request

HOST = os.environ.get("NSBOX_BENCH_HOST", "upstream.test")
PORT = int(os.environ.get("NSBOX_BENCH_PORT", "18777"))
TLS_PORT = int(os.environ.get("NSBOX_BENCH_TLS_PORT", "18778"))
TRIES = int(os.environ.get("NSBOX_BENCH_TRIES", "5"))
SIZE = 52428800


def absolute():
    return len(urllib.request.urlopen(f"http://{HOST}:{PORT}/big.bin").read())


def connect():
    c = http.client.HTTPConnection("127.0.0.1", 3128)
    c.set_tunnel(HOST, PORT)
    c.request("GET", "/big.bin")
    return len(c.getresponse().read())


def with_requests():
    import requests

    return len(requests.get(f"http://{HOST}:{PORT}/big.bin").content)


def requests_https_small():
    import requests

    r = requests.get(f"https://secure.test:{TLS_PORT}/small.csv", timeout=30)
    r.raise_for_status()
    return SIZE


def timed(f):
    t = time.perf_counter()
    n = f()
    took = time.perf_counter() - t
    assert n == SIZE, n
    return took


door = bool(os.environ.get("HTTP_PROXY"))
methods = [("absolute", absolute), ("requests", with_requests)]
if door:
    methods += [("connect", connect)]
    if TLS_PORT:  # 0: no HTTPS upstream (a build without `ca_file`, compared by hand)
        methods += [("requests_https_small", requests_https_small)]
out = {}
for _ in range(TRIES):
    # Interleaved, so a noisy moment hits every method alike.
    for name, f in methods:
        out.setdefault(name, []).append(timed(f))
print(json.dumps(out))
