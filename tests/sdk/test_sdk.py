"""nsbox driven by the official Python SDK (`relaxai`), with the examples of the spec
(shared/spec/code-execution-api.txt) and the spec's OpenAI tool-calling flow.

Facts about relaxai 0.10.0 these tests rely on (read from its source):
- `tools.execute_code(code=, lang=, libraries=)` posts exactly `{"code", "lang"}` (plus
  `libraries` when given) to `/v1/tools/code`. Its `timeout=` argument is the HTTP client's
  read timeout (also sent as the `x-stainless-read-timeout` header), NOT a body field: the
  spec's `timeout=30` never reaches the sandbox, so the sandbox timeout has to be sent with
  `extra_body={"timeout": ...}`.
- On an HTTP timeout, 408, 409, 429 or 5xx it retries twice by default; the clients here use
  `max_retries=0` unless a test is about retrying.
- `client.health()` GETs `/v1/health` and returns the body as text whatever its type.
- It sends `Authorization: Bearer <api_key>`, `Content-Type: application/json`,
  `Accept: application/json` and `x-stainless-*` headers.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import threading
import time
from pathlib import Path

import httpx
import pytest
import relaxai
import requests

from nsbox_server import nsbox

SPEC_KEYS = {
    "success",
    "stdout",
    "stderr",
    "exit_code",
    "execution_time",
    "security_checked",
    "violations",
    "plots",
}

def spec_example(name: str) -> str:
    """The spec's examples, shared with the Rust tests, the scanner corpus and the benchmark."""
    return (Path(__file__).resolve().parents[1] / "fixtures" / "spec" / f"{name}.py").read_text()


PANDAS_CODE = spec_example("pandas")

PLOT_CODE = spec_example("plot")

SCIPY_CODE = spec_example("scipy")

TIMEOUT_STDERR = "Execution failed: Execution timeout exceeded"


def assert_clean_success(r: relaxai.types.ToolResponse) -> None:
    assert r.stderr == ""
    assert (r.success, r.exit_code) == (True, 0)
    assert r.security_checked is True
    assert r.violations == []
    assert r.plots == []
    assert 0 <= r.execution_time < 30


def running_runs(base_url: str) -> int:
    return httpx.get(base_url + "/v1/status", timeout=5).json()["running"]


# --- The spec's examples ---------------------------------------------------------------------


def test_health_returns_ok(client: relaxai.Relaxai) -> None:
    assert client.health() == "OK"


def test_basic_example(client: relaxai.Relaxai) -> None:
    r = client.tools.execute_code(code="print(2**2)", lang="python", timeout=30)
    assert isinstance(r, relaxai.types.ToolResponse)
    assert r.stdout == "4\n"
    assert_clean_success(r)


def test_raw_response_has_exactly_the_spec_fields(client: relaxai.Relaxai) -> None:
    raw = client.tools.with_raw_response.execute_code(code="print(2**2)", lang="python", timeout=30)
    assert raw.status_code == 200
    assert raw.headers["content-type"].split(";")[0].strip() == "application/json"
    body = raw.http_response.json()
    assert set(body) == SPEC_KEYS
    assert type(body["success"]) is bool
    assert type(body["stdout"]) is str and type(body["stderr"]) is str
    assert type(body["exit_code"]) is int
    assert type(body["execution_time"]) in (int, float)
    assert body["security_checked"] is True
    assert body["violations"] == [] and body["plots"] == []
    # What the SDK put on the wire: the two fields, no `timeout`.
    assert json.loads(raw.http_request.content) == {"code": "print(2**2)", "lang": "python"}
    assert raw.http_request.headers["x-stainless-read-timeout"] == "30"
    assert raw.http_request.headers["authorization"] == "Bearer test"


def test_pandas_example(client: relaxai.Relaxai) -> None:
    r = client.tools.execute_code(code=PANDAS_CODE, lang="python", timeout=30)
    assert r.stdout == "Average age: 29.5\nAverage score: 86.25\n\nTop scorer: David\n"
    assert_clean_success(r)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    length, chunk = struct.unpack(">I4s", data[8:16])
    assert (length, chunk) == (13, b"IHDR"), "a PNG starts with its IHDR chunk"
    width, height = struct.unpack(">II", data[16:24])
    assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82", "a PNG ends with IEND"
    return width, height


def test_plot_example(client: relaxai.Relaxai) -> None:
    r = client.tools.execute_code(code=PLOT_CODE, lang="python", timeout=30)
    assert (r.success, r.exit_code, r.stderr) == (True, 0, "")
    assert r.stdout == "Plot generated successfully!\n"
    assert r.security_checked is True and r.violations == []
    assert r.plots is not None and len(r.plots) == 1
    plot = r.plots[0]
    assert (plot.format, plot.filename) == ("png", "plot_1.png")
    png = base64.b64decode(plot.content_base64, validate=True)
    # figsize=(10, 6) at matplotlib's default 100 dpi.
    assert png_size(png) == (1000, 600)


def test_scipy_example(client: relaxai.Relaxai) -> None:
    r = client.tools.execute_code(code=SCIPY_CODE, lang="python", timeout=30)
    assert_clean_success(r)
    values = dict(line.split(": ") for line in r.stdout.splitlines())
    assert list(values) == ["Mean", "Std Dev", "Median", "T-statistic", "P-value"]
    assert all(re.fullmatch(r"-?\d+\.\d+", v) for v in values.values()), r.stdout
    assert abs(float(values["Mean"]) - 100) < 3
    assert abs(float(values["Std Dev"]) - 15) < 2
    assert abs(float(values["Median"]) - 100) < 3
    assert 0 <= float(values["P-value"]) <= 1


def test_runtime_error_example(client: relaxai.Relaxai) -> None:
    r = client.tools.execute_code(code="result = 10 / 0", lang="python", timeout=30)
    assert (r.success, r.exit_code, r.stdout) == (True, 1, "")
    assert r.stderr == (
        "Traceback (most recent call last):\n"
        '  File "<string>", line 1, in <module>\n'
        "ZeroDivisionError: division by zero\n"
    )
    assert r.violations == [] and r.plots == [] and r.security_checked is True


def test_syntax_error_example(client: relaxai.Relaxai) -> None:
    r = client.tools.execute_code(code="print('Hello world'", lang="python", timeout=30)
    assert (r.success, r.exit_code, r.stdout) == (True, 1, "")
    # The spec shows Python 3.8's wording ("unexpected EOF while parsing"); newer Pythons
    # word the message differently, the shape is the same.
    assert r.stderr.startswith('  File "<string>", line 1\n    print(\'Hello world\'\n'), r.stderr
    assert r.stderr.endswith("\n")
    assert r.stderr.splitlines()[-1].startswith("SyntaxError: ")
    assert r.violations == [] and r.plots == [] and r.security_checked is True


def test_timeout_example_through_extra_body(client: relaxai.Relaxai) -> None:
    started = time.monotonic()
    r = client.tools.execute_code(
        code="import time\ntime.sleep(100)",
        lang="python",
        timeout=30,
        extra_body={"timeout": 2},
    )
    elapsed = time.monotonic() - started
    assert (r.success, r.exit_code, r.stdout, r.stderr) == (False, -1, "", TIMEOUT_STDERR)
    assert 2 <= r.execution_time < 5, r.execution_time
    assert elapsed < 10
    assert r.violations == [] and r.plots == [] and r.security_checked is True


def test_security_violation_example(client: relaxai.Relaxai) -> None:
    r = client.tools.execute_code(code="import os\nos.system('ls -la')", lang="python", timeout=30)
    assert (r.success, r.exit_code) == (False, -1)
    assert (r.stdout, r.stderr) == ("", "Security violations detected")
    assert r.violations == ["Operating system interface", "os.system line execution"]
    assert r.plots == [] and r.security_checked is True


# --- The SDK's own timeout and retries -------------------------------------------------------


def test_sdk_timeout_is_the_http_timeout_and_a_dropped_request_stops_its_run(
    client: relaxai.Relaxai, base_url: str
) -> None:
    """The SDK's `timeout=2` is its HTTP read timeout. With a longer run limit asked for in
    the body, the SDK gives up after 2 s. The run must not outlive the request that asked
    for it, or every SDK retry would leave one more run executing."""
    started = time.monotonic()
    with pytest.raises(relaxai.APITimeoutError):
        client.tools.execute_code(
            code="import time\ntime.sleep(20)", lang="python", timeout=2, extra_body={"timeout": 20}
        )
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while running_runs(base_url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running_runs(base_url) == 0, "the run went on after its client disconnected"


def test_sdk_timeout_argument_yields_the_spec_timeout_response(client: relaxai.Relaxai) -> None:
    """The spec's SDK calls pass `timeout=` expecting the run to be limited by it. nsbox can
    honour that by keeping a run's default limit below `x-stainless-read-timeout`, so the
    SDK gets the spec's timeout response instead of a client-side timeout (and, with the
    default `max_retries=2`, three runs)."""
    r = client.tools.execute_code(code="import time\ntime.sleep(100)", lang="python", timeout=3)
    assert (r.success, r.exit_code, r.stdout, r.stderr) == (False, -1, "", TIMEOUT_STDERR)
    assert r.execution_time < 3


def test_sdk_retries_a_429_after_its_retry_after() -> None:
    """With every slot busy and no queue, nsbox answers 429 with Retry-After; the SDK
    without retries raises RateLimitError, and with retries waits and gets the result."""
    with nsbox("--max-running", "1", "--max-queue", "0") as url:
        busy = threading.Thread(
            target=requests.post,
            args=(url + "/v1/tools/code",),
            kwargs={"json": {"code": "import time\ntime.sleep(3)", "lang": "python"}, "timeout": 20},
        )
        busy.start()
        try:
            deadline = time.monotonic() + 5
            while running_runs(url) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert running_runs(url) == 1

            no_retry = relaxai.Relaxai(api_key="test", base_url=url, max_retries=0)
            with pytest.raises(relaxai.RateLimitError) as e:
                no_retry.tools.execute_code(code="print('second')", lang="python", timeout=30)
            assert e.value.status_code == 429
            assert e.value.response.headers["retry-after"] == "1"
            assert e.value.body["error"]["type"] == "rate_limit_error"

            retrying = relaxai.Relaxai(api_key="test", base_url=url, max_retries=8)
            r = retrying.tools.execute_code(code="print('second')", lang="python", timeout=30)
            assert r.stdout == "second\n" and r.success
        finally:
            busy.join(timeout=20)


def test_execution_time_leaves_out_the_wait_in_the_queue() -> None:
    """The spec: "The total execution time in seconds, including security checks and code
    execution". A request that waited for a free slot must not report the wait as
    execution time."""
    with nsbox("--max-running", "1") as url:
        results: list[tuple[float, dict]] = []

        def run() -> None:
            started = time.monotonic()
            r = requests.post(
                url + "/v1/tools/code",
                json={"code": "import time\ntime.sleep(3)", "lang": "python"},
                timeout=30,
            )
            results.append((time.monotonic() - started, r.json()))

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert len(results) == 2
        # Queued, the second answers after both sleeps; its execution time still counts
        # only its own (the margin is for a start and teardown on a busy host, and stays
        # well under the 3 s a counted wait would add).
        assert max(wall for wall, _ in results) >= 5.8, "the second request did not queue"
        for _, body in results:
            assert body["success"] and 3.0 <= body["execution_time"] < 4.5, body


# --- Errors as the SDK raises them ------------------------------------------------------------


def test_unsupported_lang_is_a_bad_request(client: relaxai.Relaxai) -> None:
    with pytest.raises(relaxai.BadRequestError) as e:
        client.tools.execute_code(code="console.log(1)", lang="javascript", timeout=30)
    assert e.value.status_code == 400
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert "python" in e.value.body["error"]["message"]


@pytest.mark.parametrize("code", ["", "   ", " \n\t \r\n "])
def test_empty_or_whitespace_only_code_is_a_bad_request(client: relaxai.Relaxai, code: str) -> None:
    with pytest.raises(relaxai.BadRequestError) as e:
        client.tools.execute_code(code=code, lang="python", timeout=30)
    assert e.value.status_code == 400
    assert e.value.body["error"]["type"] == "invalid_request_error"


def test_nul_in_code_is_a_bad_request(client: relaxai.Relaxai) -> None:
    with pytest.raises(relaxai.BadRequestError):
        client.tools.execute_code(code="print(1)\x00", lang="python", timeout=30)


def test_code_length_limit_is_50000_characters(client: relaxai.Relaxai) -> None:
    # Multi-byte characters: the limit counts characters, not bytes.
    at_limit = "#" + "é" * 49_994 + "\npass"
    assert len(at_limit) == 50_000
    r = client.tools.execute_code(code=at_limit, lang="python", timeout=30)
    assert (r.success, r.exit_code, r.stderr) == (True, 0, "")
    with pytest.raises(relaxai.APIStatusError) as e:
        client.tools.execute_code(code=at_limit + " ", lang="python", timeout=30)
    assert e.value.status_code == 413
    assert e.value.body["error"]["type"] == "request_too_large"


# --- Request fields and headers the SDK can send -----------------------------------------------


def test_extra_body_with_an_unknown_field_is_ignored(client: relaxai.Relaxai) -> None:
    r = client.tools.execute_code(
        code="print('extra')",
        lang="python",
        timeout=30,
        extra_body={"nsbox_test_unknown_field": {"nested": [1, 2]}, "another": None},
    )
    assert r.stdout == "extra\n"
    assert_clean_success(r)


def test_userid_header_of_the_spec_is_accepted(client: relaxai.Relaxai) -> None:
    r = client.tools.execute_code(
        code="print(2**2)", lang="python", timeout=30, extra_headers={"x-relaxai-userid": "user-123"}
    )
    assert r.stdout == "4\n"


def test_libraries_of_the_root_filesystem_are_accepted(client: relaxai.Relaxai) -> None:
    r = client.tools.execute_code(
        code="import numpy, pandas\nprint('ok')",
        lang="python",
        libraries=["numpy", "pandas", "scipy", "matplotlib", "seaborn"],
        timeout=30,
    )
    assert r.stdout == "ok\n"
    assert_clean_success(r)


def test_a_library_missing_from_the_root_filesystem_is_a_bad_request(client: relaxai.Relaxai) -> None:
    with pytest.raises(relaxai.BadRequestError) as e:
        client.tools.execute_code(
            code="print(1)", lang="python", libraries=["numpy", "nsbox-no-such-library"], timeout=30
        )
    assert "nsbox-no-such-library" in e.value.body["error"]["message"]


def test_base_url_and_key_from_the_environment(base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`RELAXAI_BASE_URL` points an unchanged program at nsbox."""
    monkeypatch.setenv("RELAXAI_BASE_URL", base_url)
    monkeypatch.setenv("RELAXAI_API_KEY", "test")
    with relaxai.Relaxai(max_retries=0) as c:
        assert c.tools.execute_code(code="print(2**2)", lang="python").stdout == "4\n"


def test_async_client(base_url: str) -> None:
    import asyncio

    async def run() -> relaxai.types.ToolResponse:
        async with relaxai.AsyncRelaxai(api_key="test", base_url=base_url, max_retries=0) as c:
            return await c.tools.execute_code(code="print(2**2)", lang="python", timeout=30)

    r = asyncio.run(run())
    assert r.stdout == "4\n"
    assert_clean_success(r)


# --- Bearer keys -----------------------------------------------------------------------------


def test_bearer_keys() -> None:
    with nsbox("--api-key", "nsbox-test-key-1") as url:
        good = relaxai.Relaxai(api_key="nsbox-test-key-1", base_url=url, max_retries=0)
        assert good.tools.execute_code(code="print(2**2)", lang="python", timeout=30).stdout == "4\n"
        assert good.health() == "OK"

        bad = relaxai.Relaxai(api_key="wrong-key", base_url=url, max_retries=0)
        with pytest.raises(relaxai.AuthenticationError) as e:
            bad.tools.execute_code(code="print(2**2)", lang="python", timeout=30)
        assert e.value.status_code == 401
        assert set(e.value.body["error"]) >= {"type", "message"}

        # Without any Authorization header.
        r = requests.post(url + "/v1/tools/code", json={"code": "print(1)", "lang": "python"}, timeout=30)
        assert r.status_code == 401
        assert set(r.json()["error"]) >= {"type", "message"}


# --- The spec's OpenAI tool-calling flow --------------------------------------------------------


def test_openai_tool_call_flow(base_url: str) -> None:
    """The spec's flow after the LLM answered with a tool call: the function's JSON arguments
    are posted as they are with `requests`, with the spec's headers."""
    RELAX_API_KEY = "test"
    # tool_call.function.arguments of a canned tool call
    arguments = r'{"code": "import math\nprint(math.factorial(5))", "lang": "python"}'
    function_args = json.loads(arguments)

    execution_response = requests.post(
        f"{base_url}/v1/tools/code",
        headers={
            "Authorization": f"Bearer {RELAX_API_KEY}",
            "Content-Type": "application/json",
        },
        json=function_args,
        timeout=60,
    )

    assert execution_response.status_code == 200
    result = execution_response.json()
    assert result["stdout"] == "120\n"
    assert (result["success"], result["exit_code"], result["stderr"]) == (True, 0, "")
