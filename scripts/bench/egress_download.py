"""The download the egress benchmark times (scripts/bench-egress.sh): on the host, or in a run through the door."""
import time, urllib.request, http.client, statistics, os, sys
URL_HOST = os.environ.get("NSBOX_BENCH_HOST", "upstream.test")
PORT = int(os.environ.get("NSBOX_BENCH_PORT", "18777"))
def absolute():
    t = time.perf_counter()
    n = len(urllib.request.urlopen(f"http://{URL_HOST}:{PORT}/big.bin").read())
    return n, time.perf_counter() - t
def tunnel():
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", 3128)
    c.set_tunnel(URL_HOST, PORT)
    c.request("GET", "/big.bin")
    n = len(c.getresponse().read())
    return n, time.perf_counter() - t
for name, f in [("absolute", absolute), ("connect", tunnel)] if os.environ.get("HTTP_PROXY") else [("direct", absolute)]:
    runs = [f() for _ in range(5)]
    assert all(n == 52428800 for n, _ in runs)
    med = statistics.median(s for _, s in runs)
    print(f"{name} median {med*1000:.0f} ms = {52428800/med/1e6:.0f} MB/s; runs " + " ".join(f"{s*1000:.0f}" for _, s in runs))
