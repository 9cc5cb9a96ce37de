"""nsbox as an MCP server, driven by the official Python `mcp` SDK: `nsbox mcp` over stdio and
`/mcp` over streamable HTTP on `nsbox serve`. The same checks run over both transports: the
tool list and its description, the spec's basic and plot examples (the plot as an image), a
scanner refusal, a timeout, and a bad argument getting an MCP error without ending the session;
then files and sessions: input files and output files of one call, a session that keeps its
variables, a CSV uploaded and read with pandas in it, a file written, listed and downloaded, and
the session closed. Over HTTP with API keys, a session belongs to the key that made it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from nsbox_server import nsbox

SPEC = Path(__file__).resolve().parents[1] / "fixtures" / "spec"


@contextlib.asynccontextmanager
async def over_stdio() -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=os.environ["NSBOX_BIN"],
        args=["mcp", "--rootfs", os.environ["NSBOX_ROOTFS"]],
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


def over_http(url: str, headers: dict[str, str] | None = None):
    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[ClientSession]:
        async with httpx2.AsyncClient(headers=headers or {}, timeout=60) as http:
            async with streamable_http_client(url, http_client=http) as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    await session.initialize()
                    yield session

    return connect


TOOLS = ["run_python", "create_session", "close_session", "list_files", "download_file", "upload_file"]


def text_of(result) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


def resources_of(result) -> dict[str, object]:
    """The embedded resources of a result, by the file path at the end of their URI."""
    return {
        c.resource.uri.split("/files/", 1)[1]: c.resource
        for c in result.content
        if c.type == "resource" and "/files/" in c.resource.uri
    }


async def the_tools_work(session: ClientSession) -> None:
    tools = (await session.list_tools()).tools
    assert [t.name for t in tools] == TOOLS
    description = tools[0].description
    # What the model must know to write code that works here, read from the tree.
    for needle in (
        "Python 3.",
        "numpy",
        "pandas",
        "No network",
        "timeout",
        "MiB of memory",
        "/tmp/work",
        "session",
        "one call at a time",
    ):
        assert needle.lower() in description.lower(), (needle, description)
    assert "nothing is kept between calls" not in description
    assert tools[0].input_schema["required"] == ["code"]
    assert set(tools[0].input_schema["properties"]) == {
        "code",
        "timeout",
        "libraries",
        "session_id",
        "files",
        "results",
    }
    for tool in tools[1:]:
        # Each session tool says the rules it must code for.
        assert "/tmp/work" in tool.description or "session" in tool.description, tool
    create = tools[1].description
    for needle in ("one call at a time", "ttl_seconds", "s without a call", "/tmp/work"):
        assert needle.lower() in create.lower(), (needle, create)

    basic = await session.call_tool("run_python", {"code": "print(2**2)", "timeout": 30})
    assert not basic.is_error, text_of(basic)
    assert "--- stdout ---\n4\n" in text_of(basic)
    assert "exit status 0" in text_of(basic)

    plot = await session.call_tool("run_python", {"code": (SPEC / "plot.py").read_text()})
    assert not plot.is_error, text_of(plot)
    assert "Plot generated successfully!" in text_of(plot)
    images = [c for c in plot.content if c.type == "image"]
    assert len(images) == 1
    assert images[0].mime_type == "image/png"
    assert base64.b64decode(images[0].data).startswith(b"\x89PNG\r\n\x1a\n")

    refused = await session.call_tool(
        "run_python", {"code": "import os\nos.system('ls -la')"}
    )
    assert refused.is_error
    assert "refused" in text_of(refused)
    assert "os.system line execution" in text_of(refused)

    timed_out = await session.call_tool(
        "run_python", {"code": "import time\ntime.sleep(100)", "timeout": 1}
    )
    assert timed_out.is_error
    assert "Execution timeout exceeded" in text_of(timed_out)

    raised = await session.call_tool("run_python", {"code": "result = 10 / 0"})
    assert raised.is_error
    assert "ZeroDivisionError: division by zero" in text_of(raised)
    assert "--- error ---\nZeroDivisionError: division by zero (line 1 of the code)" in text_of(raised)

    # Notebook results: the last line's value, a table as markdown, a chart's data as text.
    table = await session.call_tool(
        "run_python",
        {"code": "import pandas as pd\nimport matplotlib.pyplot as plt\nplt.bar(['x', 'y'], [3, 4])\npd.DataFrame({'a': [1, 2]})"},
    )
    assert not table.is_error, text_of(table)
    text = text_of(table)
    assert "--- result 1 (value of the last line) ---\n|  | a |" in text, text
    assert "2 rows × 1 columns" in text
    assert 'chart data: {"version": 1' in text and '"type": "bar"' in text, text
    assert [c.type for c in table.content].count("image") == 1, "the figure once, as its plot"
    quiet = await session.call_tool("run_python", {"code": "1 + 1", "results": False})
    assert "--- result" not in text_of(quiet)

    for bad, why in (
        ({"code": 5}, "must be a string"),
        ({}, "`code` is required"),
        ({"code": "x", "timeout": 0}, "more than 0"),
        ({"code": "x", "libraries": ["tensorflow"]}, "unknown libraries"),
    ):
        with pytest.raises(Exception) as caught:
            await session.call_tool("run_python", bad)
        assert why in str(caught.value), (bad, caught.value)
    # The session survives bad calls.
    again = await session.call_tool("run_python", {"code": "print('still here')"})
    assert "still here" in text_of(again)


async def files_and_sessions_work(mcp: ClientSession) -> None:
    # Files in and out of one call, without a session.
    once = await mcp.call_tool(
        "run_python",
        {
            "code": "print(open('in/hello.txt').read())\nopen('out.txt', 'w').write('written')",
            "files": [{"path": "in/hello.txt", "content": "hello from the host"}],
        },
    )
    assert not once.is_error, text_of(once)
    assert "hello from the host" in text_of(once)
    assert "out.txt (7 bytes, text/plain)" in text_of(once)
    out = resources_of(once)
    assert list(out) == ["out.txt"], once.content
    assert (out["out.txt"].text, out["out.txt"].mime_type) == ("written", "text/plain")

    created = await mcp.call_tool("create_session", {"ttl_seconds": 300})
    assert not created.is_error, text_of(created)
    info = json.loads(text_of(created))
    sid = info["id"]
    assert sid.startswith("sess_") and info["state"] == "active" and info["ttl_seconds"] == 300
    try:
        # State is kept between calls.
        first = await mcp.call_tool("run_python", {"code": "x = 41", "session_id": sid})
        assert not first.is_error, text_of(first)
        assert f"Session {sid}: active" in text_of(first)
        second = await mcp.call_tool("run_python", {"code": "print(x + 1)", "session_id": sid})
        assert not second.is_error, text_of(second)
        assert "--- stdout ---\n42\n" in text_of(second)

        # A CSV uploaded, read with pandas in the session, a CSV and a PNG written.
        csv = "region,amount\nnorth,10\nsouth,20\neast,12\n"
        up = await mcp.call_tool("upload_file", {"session_id": sid, "path": "data/sales.csv", "content": csv})
        assert not up.is_error, text_of(up)
        assert json.loads(text_of(up)) == {"path": "data/sales.csv", "size": len(csv), "mime_type": "text/csv"}
        # A file larger than one message goes in pieces.
        pieces = [b"a" * 1000, b"b" * 1000, b"c" * 500]
        for i, piece in enumerate(pieces):
            piece_args = {"session_id": sid, "path": "big.bin", "content_base64": base64.b64encode(piece).decode()}
            if i:
                piece_args["append"] = True
            up = await mcp.call_tool("upload_file", piece_args)
            assert not up.is_error, text_of(up)
        assert json.loads(text_of(up))["size"] == 2500, text_of(up)
        check = await mcp.call_tool(
            "run_python",
            {"session_id": sid, "code": "d = open('big.bin', 'rb').read()\nprint(len(d), d[:1], d[1000:1001], d[-1:])"},
        )
        assert "2500 b'a' b'b' b'c'" in text_of(check), text_of(check)
        png = base64.b64encode(b"\x89PNG\r\n\x1a\nnot really").decode()
        up = await mcp.call_tool("upload_file", {"session_id": sid, "path": "logo.png", "content_base64": png})
        assert not up.is_error, text_of(up)
        analysed = await mcp.call_tool(
            "run_python",
            {
                "session_id": sid,
                "code": (
                    "import pandas as pd\n"
                    "import matplotlib\n"
                    "matplotlib.use('Agg')\n"
                    "import matplotlib.pyplot as plt\n"
                    "df = pd.read_csv('data/sales.csv')\n"
                    "print('total', df['amount'].sum())\n"
                    "df.sort_values('amount').to_csv('summary.csv', index=False)\n"
                    "plt.bar(df['region'], df['amount'])\n"
                    "plt.savefig('chart.png')\n"
                    "plt.close('all')\n"
                ),
            },
        )
        assert not analysed.is_error, text_of(analysed)
        assert "total 42" in text_of(analysed)
        text = text_of(analysed)
        assert "summary.csv" in text and "chart.png" in text and "data/sales.csv" not in text, text
        out = resources_of(analysed)
        assert out["summary.csv"].text == "region,amount\nnorth,10\neast,12\nsouth,20\n"
        assert out["summary.csv"].uri == f"nsbox://sessions/{sid}/files/summary.csv"
        images = [c for c in analysed.content if c.type == "image"]
        assert len(images) == 1 and base64.b64decode(images[0].data).startswith(b"\x89PNG")

        listed = await mcp.call_tool("list_files", {"session_id": sid})
        assert not listed.is_error, text_of(listed)
        files = {f["path"]: f for f in json.loads(text_of(listed))["files"]}
        assert set(files) == {"data/sales.csv", "big.bin", "logo.png", "summary.csv", "chart.png"}, files
        assert files["data/sales.csv"] == {"path": "data/sales.csv", "size": len(csv), "mime_type": "text/csv"}

        got = await mcp.call_tool("download_file", {"session_id": sid, "path": "summary.csv"})
        assert not got.is_error, text_of(got)
        resource = resources_of(got)["summary.csv"]
        assert (resource.mime_type, resource.text) == ("text/csv", out["summary.csv"].text)
        got = await mcp.call_tool("download_file", {"session_id": sid, "path": "logo.png"})
        images = [c for c in got.content if c.type == "image"]
        assert [(i.mime_type, i.data) for i in images] == [("image/png", png)]
        missing = await mcp.call_tool("download_file", {"session_id": sid, "path": "nope.txt"})
        assert missing.is_error and "nope.txt" in text_of(missing)
        with pytest.raises(Exception) as caught:
            await mcp.call_tool("download_file", {"session_id": sid, "path": "../etc/passwd"})
        assert ".." in str(caught.value)
        with pytest.raises(Exception) as caught:
            await mcp.call_tool("upload_file", {"session_id": sid, "path": "a.txt"})
        assert "`content`" in str(caught.value)
    finally:
        closed = await mcp.call_tool("close_session", {"session_id": sid})
    assert not closed.is_error, text_of(closed)
    after = await mcp.call_tool("run_python", {"code": "print(x)", "session_id": sid})
    assert after.is_error
    assert "session ended" in text_of(after) and "create_session" in text_of(after)
    unknown = await mcp.call_tool("list_files", {"session_id": "sess_" + "0" * 32})
    assert unknown.is_error and "session not found" in text_of(unknown)


def run(connect: Callable[[], contextlib.AbstractAsyncContextManager[ClientSession]]) -> None:
    async def main() -> None:
        async with connect() as session:
            await the_tools_work(session)
            await files_and_sessions_work(session)

    asyncio.run(asyncio.wait_for(main(), timeout=300))


def test_stdio() -> None:
    run(over_stdio)


def test_streamable_http(base_url: str) -> None:
    run(over_http(base_url + "/mcp"))


def test_streamable_http_needs_the_api_key() -> None:
    with nsbox("--api-keys", "mcp-key", "--mode", "cold") as url:
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "1"},
            },
        }
        headers = {"Accept": "application/json, text/event-stream"}
        r = httpx2.post(url + "/mcp", json=init, headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["type"] == "authentication_error"
        run(over_http(url + "/mcp", {"Authorization": "Bearer mcp-key"}))


def test_a_session_belongs_to_the_key_that_made_it() -> None:
    """Over /mcp as over the REST API: another key's session is an id that never existed."""
    with nsbox("--api-keys", "key-a,key-b", "--mode", "cold") as url:

        async def main() -> None:
            async with over_http(url + "/mcp", {"Authorization": "Bearer key-a"})() as a:
                created = await a.call_tool("create_session", {})
                assert not created.is_error, text_of(created)
                sid = json.loads(text_of(created))["id"]
                ran = await a.call_tool("run_python", {"code": "secret = 7", "session_id": sid})
                assert not ran.is_error, text_of(ran)
                # The REST API sees it for the same key, not for another.
                rest = httpx2.get(f"{url}/v1/sessions/{sid}", headers={"Authorization": "Bearer key-a"})
                assert rest.status_code == 200 and rest.json()["calls"] == 1, rest.text
                rest = httpx2.get(f"{url}/v1/sessions/{sid}", headers={"Authorization": "Bearer key-b"})
                assert rest.status_code == 404, rest.text
                async with over_http(url + "/mcp", {"Authorization": "Bearer key-b"})() as b:
                    for tool, args in (
                        ("run_python", {"code": "print(secret)", "session_id": sid}),
                        ("list_files", {"session_id": sid}),
                        ("download_file", {"session_id": sid, "path": "x.txt"}),
                        ("upload_file", {"session_id": sid, "path": "x.txt", "content": "x"}),
                        ("close_session", {"session_id": sid}),
                    ):
                        r = await b.call_tool(tool, args)
                        assert r.is_error, (tool, r)
                        assert "session not found" in text_of(r), (tool, text_of(r))
                still = await a.call_tool("run_python", {"code": "print(secret)", "session_id": sid})
                assert "--- stdout ---\n7\n" in text_of(still), text_of(still)
                closed = await a.call_tool("close_session", {"session_id": sid})
                assert not closed.is_error, text_of(closed)

        asyncio.run(asyncio.wait_for(main(), timeout=300))


def test_the_mcp_inspector_lists_the_tool() -> None:
    """The MCP Inspector's CLI mode (npm, installed by scripts/test-sdk.sh) against `nsbox mcp`."""
    inspector = os.environ["NSBOX_MCP_INSPECTOR"]
    out = subprocess.run(
        [
            inspector,
            "--cli",
            os.environ["NSBOX_BIN"],
            "mcp",
            "--rootfs",
            os.environ["NSBOX_ROOTFS"],
            "--mode",
            "cold",
            "--method",
            "tools/list",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    tools = json.loads(out.stdout)["tools"]
    assert [t["name"] for t in tools] == TOOLS
    assert tools[0]["inputSchema"]["required"] == ["code"]


def test_a_keyless_server_refuses_browser_origins(base_url: str) -> None:
    r = httpx2.post(
        base_url + "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={
            "Accept": "application/json, text/event-stream",
            "Origin": "https://evil.example",
        },
    )
    assert r.status_code == 403, r.text
