"""Notebook results (issue 23, docs/results.md) read by the tools a notebook user has: a notebook
built from each case's code, `results` and `error` passes the real `nbformat.validate` and renders
with nbconvert; a DataFrame's HTML reads back with pandas; Plotly's and Altair's JSON load with
their own libraries; the official SDK reads the fields through `model_extra`; the SSE stream
carries each result as a `display` event before the `result`.
"""

from __future__ import annotations

import io
import json

import altair
import httpx
import nbconvert
import nbformat
import pandas
import plotly.io
import pytest
import relaxai
from httpx_sse import connect_sse

CASES = {
    "dataframe": "import pandas as pd\ndf = pd.DataFrame({'a': range(30), 'b': [i * 0.5 for i in range(30)]})\ndf",
    "display": "from IPython.display import display, HTML, Markdown, JSON\ndisplay(1, HTML('<b>x</b>'), Markdown('# t'), JSON({'k': [1]}))",
    "figure": "import matplotlib.pyplot as plt\nplt.plot([1, 2], [3, 4])\nplt.hist([1, 2, 2])\nplt.show()",
    "plotly": "import plotly.express as px\npx.bar(x=['a', 'b'], y=[1, 2])",
    "altair": "import altair as alt, pandas as pd\nalt.Chart(pd.DataFrame({'x': [1, 2]})).mark_bar().encode(x='x')",
    "pil": "from PIL import Image\nImage.new('RGB', (3, 3), 'blue')",
    "semicolon": "1 + 1;",
    "none": "None",
    "raising repr": "class B:\n    def _repr_html_(self):\n        raise ValueError('no')\nB()",
    "huge": "class H:\n    def _repr_html_(self):\n        return 'x' * (3 << 20)\nH()",
    "zero division": "x = 1\nx / 0",
    "syntax error": "def f(:\n    pass",
}


def ask(base_url: str, code: str) -> dict:
    r = httpx.post(
        base_url + "/v1/tools/code", json={"code": code, "lang": "python", "results": True}, timeout=120
    )
    assert r.status_code == 200, r.text
    return r.json()


def notebook_of(code: str, answer: dict) -> nbformat.NotebookNode:
    """One code cell with the answer's results and error as its outputs, as a client would
    build it."""
    outputs = [nbformat.from_dict(r) for r in answer["results"]]
    if answer["stderr"]:
        outputs.insert(0, nbformat.v4.new_output("stream", name="stderr", text=answer["stderr"]))
    if answer["error"] is not None:
        error = {k: v for k, v in answer["error"].items() if k != "lineno"}
        outputs.append(nbformat.v4.new_output("error", **error))
    cell = nbformat.v4.new_code_cell(source=code, outputs=outputs)
    return nbformat.v4.new_notebook(cells=[cell])


@pytest.mark.parametrize("case", list(CASES))
def test_a_notebook_built_from_the_results_is_valid_and_renders(base_url: str, case: str) -> None:
    code = CASES[case]
    answer = ask(base_url, code)
    nb = notebook_of(code, answer)
    nbformat.validate(nb)
    html, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    assert "<html" in html


def test_a_dataframe_reads_back_from_its_html_and_its_markdown_has_the_rows(base_url: str) -> None:
    answer = ask(base_url, CASES["dataframe"])
    data = answer["results"][0]["data"]
    got = pandas.read_html(io.StringIO(data["text/html"]), index_col=0)[0]
    want = pandas.DataFrame({"a": range(30), "b": [i * 0.5 for i in range(30)]})
    assert got["a"].tolist() == want["a"].tolist()
    assert got["b"].tolist() == want["b"].tolist()
    markdown = data["text/markdown"]
    assert markdown.splitlines()[0] == "|  | a | b |"
    assert "30 rows × 2 columns" in markdown


def test_plotly_and_altair_load_with_their_own_libraries(base_url: str) -> None:
    data = ask(base_url, CASES["plotly"])["results"][0]["data"]
    figure = plotly.io.from_json(json.dumps(data["application/vnd.plotly.v1+json"]))
    assert figure.data[0].type == "bar"
    data = ask(base_url, CASES["altair"])["results"][0]["data"]
    (mime,) = [k for k in data if k.startswith("application/vnd.vegalite.")]
    chart = altair.Chart.from_dict(data[mime])
    assert chart.to_dict()["mark"]["type"] == "bar"


def test_the_sdk_reads_results_through_model_extra(client: relaxai.Relaxai) -> None:
    r = client.tools.execute_code(code="6 * 7", lang="python", timeout=30, extra_body={"results": True})
    assert r.stdout == ""
    assert r.model_extra["results"][0]["data"]["text/plain"] == "42"
    assert r.model_extra["error"] is None
    plain = client.tools.execute_code(code="6 * 7", lang="python", timeout=30)
    assert "results" not in (plain.model_extra or {})


def test_results_stream_as_display_events_before_the_result(base_url: str) -> None:
    code = "import time\ndisplay('a')\ntime.sleep(1)\ndisplay('b')\n'c'"
    events = []
    with httpx.Client(timeout=120) as http:
        with connect_sse(
            http,
            "POST",
            base_url + "/v1/tools/code",
            json={"code": code, "lang": "python", "results": True},
            headers={"Accept": "text/event-stream"},
        ) as source:
            for sse in source.iter_sse():
                events.append((sse.event, json.loads(sse.data)))
    kinds = [e for e, _ in events]
    assert kinds == ["display", "display", "display", "result"], kinds
    displayed = [d for e, d in events if e == "display"]
    assert displayed == events[-1][1]["results"]
    assert [d["data"]["text/plain"] for d in displayed] == ["'a'", "'b'", "'c'"]
