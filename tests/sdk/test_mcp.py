"""nsbox as an MCP server, driven by the official Python `mcp` SDK: `nsbox mcp` over stdio and
`/mcp` over streamable HTTP on `nsbox serve`. The same checks run over both transports: the
tool list and its description, the spec's basic and plot examples (the plot as an image), a
scanner refusal, a timeout, and a bad argument getting an MCP error without ending the session.
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


def text_of(result) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


async def the_tools_work(session: ClientSession) -> None:
    tools = (await session.list_tools()).tools
    assert [t.name for t in tools] == ["run_python"]
    description = tools[0].description
    # What the model must know to write code that works here, read from the tree.
    for needle in ("Python 3.", "numpy", "pandas", "No network", "timeout", "MiB of memory"):
        assert needle in description, (needle, description)
    assert tools[0].input_schema["required"] == ["code"]

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


def run(connect: Callable[[], contextlib.AbstractAsyncContextManager[ClientSession]]) -> None:
    async def main() -> None:
        async with connect() as session:
            await the_tools_work(session)

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
    assert [t["name"] for t in tools] == ["run_python"]
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
