"""Streamed output (SSE): `POST /v1/tools/code` with `Accept: text/event-stream`, read with a real
SSE client (httpx-sse). Events come as the run writes; output files come as `file` events before
the last, which is exactly one `result` whose data is the non-streamed answer; calls in a session
stream too; bad input is an ordinary HTTP error; a slow reader does not stall the run; a client
that hangs up cancels it.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse

SPEC = Path(__file__).resolve().parents[1] / "fixtures" / "spec"
STREAM = {"Accept": "text/event-stream"}


def events_of(base_url: str, code: str, **extra) -> list[tuple[str, dict, float]]:
    """(event, data, seconds since the request) for every event of one streamed run."""
    started = time.monotonic()
    out = []
    with httpx.Client(timeout=120) as client:
        with connect_sse(
            client, "POST", base_url + "/v1/tools/code", json={"code": code, "lang": "python", **extra}, headers=STREAM
        ) as source:
            assert source.response.status_code == 200
            assert source.response.headers["content-type"].startswith("text/event-stream")
            for sse in source.iter_sse():
                out.append((sse.event, json.loads(sse.data), time.monotonic() - started))
    return out


def test_output_streams_as_it_is_written_and_ends_with_the_result(base_url: str) -> None:
    # A 4 s sleep for a > 1 s gap: the first event may reach a busy client late.
    code = "import time\nprint(1, flush=True)\ntime.sleep(4)\nprint(2)\n"
    events = events_of(base_url, code)
    kinds = [e for e, _, _ in events]
    assert kinds == ["stdout", "stdout", "result"], events
    assert events[0][1] == {"text": "1\n"}
    assert events[1][1] == {"text": "2\n"}
    # The first line arrived before the run slept, the second after it.
    assert events[1][2] - events[0][2] > 1.0, events
    result = events[-1][1]
    assert result["stdout"] == "1\n2\n"
    assert (result["success"], result["exit_code"]) == (True, 0)


def test_the_result_event_is_the_plain_answer(base_url: str) -> None:
    code = "import sys\nprint('out')\nprint('ünïcödé ✓', file=sys.stderr)\nraise SystemExit(3)\n"
    events = events_of(base_url, code)
    assert [e for e, _, _ in events].count("result") == 1
    assert events[-1][0] == "result"
    streamed = events[-1][1]
    plain = httpx.post(base_url + "/v1/tools/code", json={"code": code, "lang": "python"}, timeout=60).json()
    for response in (streamed, plain):
        response.pop("execution_time")
    assert streamed == plain
    stdout = "".join(d["text"] for e, d, _ in events if e == "stdout")
    stderr = "".join(d["text"] for e, d, _ in events if e == "stderr")
    assert (stdout, stderr) == (plain["stdout"], plain["stderr"])


def test_each_figure_is_a_plot_event(base_url: str) -> None:
    events = events_of(base_url, (SPEC / "plot.py").read_text())
    plots = [d for e, d, _ in events if e == "plot"]
    result = events[-1][1]
    assert len(plots) == 1
    assert plots == result["plots"]
    assert plots[0]["filename"] == "plot_1.png"


def test_output_files_are_file_events_before_the_result(base_url: str) -> None:
    code = (
        "print(open('in.txt').read(), flush=True)\n"
        "open('b.csv', 'w').write('x,y\\n1,2\\n')\n"
        "open('c.bin', 'wb').write(bytes(range(4)))\n"
    )
    events = events_of(base_url, code, files=[{"path": "in.txt", "content": "input"}])
    kinds = [e for e, _, _ in events]
    assert kinds == ["stdout", "file", "file", "result"], events
    result = events[-1][1]
    files = [d for e, d, _ in events if e == "file"]
    assert files == result["files"], "each file event is the answer's file object"
    by_path = {f["path"]: f for f in files}
    assert set(by_path) == {"b.csv", "c.bin"}, "the unchanged input file is not returned"
    assert by_path["b.csv"]["mime_type"] == "text/csv"
    assert base64.b64decode(by_path["c.bin"]["content_base64"]) == bytes(range(4))
    # Without `files` nothing is collected and no file event comes.
    events = events_of(base_url, "open('d.txt', 'w').write('d')")
    assert [e for e, _, _ in events] == ["result"]
    assert "files" not in events[-1][1]


def test_a_session_call_streams(base_url: str) -> None:
    created = httpx.post(base_url + "/v1/sessions", json={"ttl_seconds": 120}, timeout=60)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    try:
        first = httpx.post(
            base_url + "/v1/tools/code", json={"code": "x = 41", "lang": "python", "session_id": sid}, timeout=60
        )
        assert first.json()["session"] == {"id": sid, "state": "active"}, first.text
        code = "import time\nprint(x, flush=True)\ntime.sleep(4)\nprint(x + 1)\nopen('s.txt', 'w').write('s')\n"
        events = events_of(base_url, code, session_id=sid)
        kinds = [e for e, _, _ in events]
        result = events[-1][1]
        assert result["stdout"] == "41\n42\n", result
        assert result["session"] == {"id": sid, "state": "active"}
        # A session returns notebook results: the last line's value (write's count) too.
        assert kinds == ["stdout", "stdout", "display", "file", "result"], events
        assert events[0][1] == {"text": "41\n"}
        assert events[1][2] - events[0][2] > 1.0, events
        assert events[2][1]["data"]["text/plain"] == "1" and events[2][1] == result["results"][0]
        assert events[3][1] == result["files"][0] and result["files"][0]["path"] == "s.txt"
    finally:
        httpx.delete(f"{base_url}/v1/sessions/{sid}", timeout=30)


def test_refusals_and_limits_end_with_their_result(base_url: str) -> None:
    events = events_of(base_url, "import os\nos.system('ls -la')")
    assert [e for e, _, _ in events] == ["result"]
    assert events[0][1]["violations"] == ["Operating system interface", "os.system line execution"]
    events = events_of(base_url, "import time\nprint('start', flush=True)\ntime.sleep(100)", timeout=3)
    assert [e for e, _, _ in events] == ["stdout", "result"]
    assert events[-1][1]["stderr"] == "Execution failed: Execution timeout exceeded"


def test_bad_input_is_an_ordinary_error_not_a_stream(base_url: str) -> None:
    r = httpx.post(base_url + "/v1/tools/code", json={"code": "", "lang": "python"}, headers=STREAM)
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/json")
    assert "empty" in r.json()["error"]["message"]


def test_a_slow_reader_does_not_stall_the_run(base_url: str) -> None:
    # 4 MiB of output, well past the 1 MiB cap, written while the client reads nothing.
    code = (
        "import sys, time\n"
        "t = time.monotonic()\n"
        "for _ in range(4096):\n"
        "    sys.stdout.write('x' * 1023 + '\\n')\n"
        "sys.stdout.flush()\n"
        "print(f'wrote in {time.monotonic() - t:.3f}', file=sys.stderr)\n"
    )
    with httpx.Client(timeout=120) as client:
        with connect_sse(
            client, "POST", base_url + "/v1/tools/code", json={"code": code, "lang": "python"}, headers=STREAM
        ) as source:
            time.sleep(5)
            events = [(sse.event, json.loads(sse.data)) for sse in source.iter_sse()]
    result = events[-1][1]
    wrote = float(re.search(r"wrote in ([0-9.]+)", result["stderr"]).group(1))
    assert wrote < 4.0, f"the run waited for the reader: {wrote} s"
    # The cap counts the text as it is sent in JSON, where each newline is two bytes: the
    # stream stops at the first character that would pass it.
    sent = sum(len(json.dumps(d["text"], ensure_ascii=False)) - 2 for e, d in events if e == "stdout")
    assert (1 << 20) - 2 <= sent <= 1 << 20, f"the cap as sent streams: {sent}"
    assert "[nsbox: stdout truncated at 1 MiB" in result["stdout"]


def metric(base_url: str, series: str) -> float:
    text = httpx.get(base_url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return 0.0


def test_a_client_that_hangs_up_cancels_the_run(base_url: str) -> None:
    cancelled = 'nsbox_runs_total{verdict="cancelled"}'
    before = metric(base_url, cancelled)
    code = "import time\nprint('started', flush=True)\ntime.sleep(60)\n"
    with httpx.Client(timeout=30) as client:
        with connect_sse(
            client, "POST", base_url + "/v1/tools/code", json={"code": code, "lang": "python"}, headers=STREAM
        ) as source:
            first = next(source.iter_sse())
            assert (first.event, json.loads(first.data)) == ("stdout", {"text": "started\n"})
    deadline = time.monotonic() + 10
    while metric(base_url, cancelled) <= before:
        assert time.monotonic() < deadline, "the run was not cancelled within 10 s of the hang-up"
        time.sleep(0.1)
