"""Files in and out of runs, and sessions (issue 14, docs/files-and-sessions.md), driven by the
official SDK as an agent would: `files` and `session_id` go in `extra_body`, and the
response's `files` and `session` come back as pydantic extra fields of `ToolResponse`
(relaxai 0.10.0 builds its models with `extra="allow"`, so `resp.files` and
`resp.model_extra["files"]` are the same list of plain dicts). The SDK has no session
methods: sessions are created, listed and deleted with plain httpx.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Iterator

import httpx
import pytest
import relaxai

from test_sdk import SPEC_KEYS

SALES_CSV = (
    "region,month,amount,units\n"
    "north,2026-01,100.5,3\n"
    "south,2026-01,,4\n"
    "north,2026-02,200,5\n"
    "east,2026-02,50.25,\n"
    "south,2026-03,300,6\n"
    "east,2026-03,not-a-number,2\n"
    "north,2026-03,120,1\n"
)
# The rows with an amount and units: north 100.5+200+120 (units 3+5+1), south 300 (6).
SUMMARY_CSV = "region,total,units\nnorth,420.5,9\nsouth,300.0,6\n"

LOAD = "import pandas as pd\ndf = pd.read_csv('data/sales.csv')\nprint(df.shape)\n"
CLEAN = (
    "df['amount'] = pd.to_numeric(df['amount'], errors='coerce')\n"
    "df = df.dropna()\n"
    "df['units'] = df['units'].astype(int)\n"
    "print(len(df), df['amount'].sum(), df['units'].dtype)\n"
)
PLOT = (
    "import matplotlib.pyplot as plt\n"
    "df.groupby('region')['amount'].sum().plot(kind='bar')\n"
    "plt.show()\n"
    "print('plotted')\n"
)
EXPORT = (
    "from pathlib import Path\n"
    "Path('out').mkdir(exist_ok=True)\n"
    "summary = df.groupby('region').agg(total=('amount', 'sum'), units=('units', 'sum'))\n"
    "summary.to_csv('out/summary.csv')\n"
    "print(len(summary))\n"
)


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60, headers={"Authorization": "Bearer test"}) as c:
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def files_of(r: relaxai.types.ToolResponse) -> list[dict[str, Any]]:
    """The response's `files`, read both ways the SDK offers, which must agree."""
    assert r.model_extra is not None and "files" in r.model_extra, f"no files in {r}"
    files = r.files  # type: ignore[attr-defined]
    assert files == r.model_extra["files"]
    assert isinstance(files, list)
    return files


def in_session(
    client: relaxai.Relaxai, sid: str, code: str, **extra: Any
) -> relaxai.types.ToolResponse:
    """One clean step of the analysis in session `sid`."""
    r = client.tools.execute_code(
        code=code, lang="python", timeout=60, extra_body={"session_id": sid, "timeout": 30, **extra}
    )
    assert (r.success, r.exit_code, r.stderr) == (True, 0, ""), r
    assert r.session == {"id": sid, "state": "active"}, r  # type: ignore[attr-defined]
    return r


def test_five_step_analysis_with_the_sdk(client: relaxai.Relaxai, http: httpx.Client) -> None:
    created = http.post("/v1/sessions", json={})
    assert created.status_code == 201, created.text
    session = created.json()
    sid = session["id"]
    assert re.fullmatch(r"sess_[a-z0-9-]{1,32}_[0-9a-f]{32}", sid), sid
    assert session["state"] == "active" and session["calls"] == 0
    try:
        # 1 and 2. The CSV goes in with the first call, which loads it into `df`.
        r = in_session(
            client,
            sid,
            LOAD,
            files=[{"path": "data/sales.csv", "content_base64": b64(SALES_CSV.encode())}],
        )
        assert r.stdout == "(7, 4)\n"
        assert files_of(r) == [], "an unchanged input file is not returned"

        # 3. Clean it with the first call's DataFrame.
        r = in_session(client, sid, CLEAN)
        assert r.stdout == "4 720.5 int64\n"
        assert files_of(r) == []

        # 4. Plot: a PNG in this call's plots.
        r = in_session(client, sid, PLOT)
        assert r.stdout == "plotted\n"
        assert r.plots is not None and len(r.plots) == 1
        assert r.plots[0].format == "png"
        assert base64.b64decode(r.plots[0].content_base64)[:8] == b"\x89PNG\r\n\x1a\n"

        # 5. Export: out/summary.csv comes back in `files`.
        r = in_session(client, sid, EXPORT)
        assert r.stdout == "2\n"
        assert r.plots == []
        (summary,) = files_of(r)
        assert summary["path"] == "out/summary.csv"
        assert summary["mime_type"].startswith("text/csv")
        assert summary["size"] == len(SUMMARY_CSV)
        assert base64.b64decode(summary["content_base64"]).decode() == SUMMARY_CSV

        # Listed, and downloaded byte for byte.
        listing = http.get(f"/v1/sessions/{sid}/files")
        assert listing.status_code == 200, listing.text
        listed = {f["path"]: f for f in listing.json()["files"]}
        assert sorted(listed) == ["data/sales.csv", "out/summary.csv"]
        assert listed["out/summary.csv"]["size"] == len(SUMMARY_CSV)
        download = http.get(f"/v1/sessions/{sid}/files/out/summary.csv")
        assert download.status_code == 200
        assert download.headers["content-type"].startswith("text/csv")
        assert download.content == SUMMARY_CSV.encode()

        state = http.get(f"/v1/sessions/{sid}").json()
        assert state["state"] == "active", state
    finally:
        deleted = http.delete(f"/v1/sessions/{sid}")
    assert deleted.status_code == 204, deleted.text

    # The SDK sees the ended session as a 404.
    with pytest.raises(relaxai.NotFoundError) as e:
        client.tools.execute_code(
            code="print(df.shape)", lang="python", timeout=30, extra_body={"session_id": sid}
        )
    assert e.value.status_code == 404
    message = e.value.body["error"]["message"]
    assert message.startswith("session ended") or "not found" in message, message
    # `calls` counts the calls, not the file requests (checked last, so the rest is checked
    # whatever it says).
    assert state["calls"] == 4, state


def test_files_on_a_plain_run_with_the_sdk(client: relaxai.Relaxai) -> None:
    r = client.tools.execute_code(
        code=(
            "from pathlib import Path\n"
            "text = Path('in.txt').read_text()\n"
            "Path('out').mkdir()\n"
            "Path('out/upper.txt').write_text(text.upper())\n"
            "print(Path.cwd(), len(Path('raw.bin').read_bytes()))\n"
        ),
        lang="python",
        timeout=30,
        extra_body={
            "files": [
                {"path": "in.txt", "content": "héllo\n"},
                {"path": "raw.bin", "content_base64": b64(bytes(range(256)))},
            ]
        },
    )
    assert (r.success, r.exit_code, r.stderr) == (True, 0, ""), r
    assert r.stdout == "/tmp/work 256\n"
    (upper,) = files_of(r)
    assert upper["path"] == "out/upper.txt"
    assert base64.b64decode(upper["content_base64"]).decode() == "HÉLLO\n"
    assert upper["mime_type"].startswith("text/plain")
    assert "session" not in (r.model_extra or {})


def test_without_files_the_sdk_gets_exactly_the_spec_fields(client: relaxai.Relaxai) -> None:
    raw = client.tools.with_raw_response.execute_code(
        code="open('x.txt', 'w').write('x')\nprint('wrote')", lang="python", timeout=30
    )
    body = raw.http_response.json()
    assert set(body) == SPEC_KEYS
    r = raw.parse()
    assert r.stdout == "wrote\n"
    assert not r.model_extra, r.model_extra


def test_a_bad_input_path_is_a_bad_request_for_the_sdk(client: relaxai.Relaxai) -> None:
    with pytest.raises(relaxai.BadRequestError) as e:
        client.tools.execute_code(
            code="print(1)",
            lang="python",
            timeout=30,
            extra_body={"files": [{"path": "../escape.txt", "content": "x"}]},
        )
    assert "../escape.txt" in e.value.body["error"]["message"]


def test_state_survives_a_timeout_with_the_sdk(client: relaxai.Relaxai, http: httpx.Client) -> None:
    sid = http.post("/v1/sessions", json={}).json()["id"]
    try:
        in_session(client, sid, "import pandas as pd\ndf = pd.DataFrame({'a': range(100000)})")
        r = client.tools.execute_code(
            code="import time\ntime.sleep(100)",
            lang="python",
            timeout=30,
            extra_body={"session_id": sid, "timeout": 1},
        )
        assert (r.success, r.exit_code) == (False, -1)
        assert r.stderr.endswith("Execution failed: Execution timeout exceeded"), r.stderr
        assert r.session == {"id": sid, "state": "active"}  # type: ignore[attr-defined]
        r = in_session(client, sid, "print(int(df['a'].sum()))")
        assert r.stdout == "4999950000\n"
    finally:
        assert http.delete(f"/v1/sessions/{sid}").status_code == 204
