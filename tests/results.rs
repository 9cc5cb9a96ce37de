//! Notebook results (issue 23, docs/results.md) through the real server over the real sandbox: the last expression's value, display(), rich MIME bundles, chart summaries and the error as data, on the warm and the cold path and in a session.
//!
//! The answers are read here as JSON; `tests/sdk/` builds notebooks from them and checks
//! them with the real nbformat, pandas, plotly and altair.

mod common;

use common::{text, Server};
use serde_json::{json, Value};

fn ask(server: &Server, code: &str) -> Value {
    server.run_with(json!({"lang": "python", "code": code, "results": true, "timeout": 60}))
}

fn results(v: &Value) -> &Vec<Value> {
    v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {}", common::shorten(&v.to_string(), 600)))
}

fn plain(v: &Value) -> Vec<String> {
    results(v)
        .iter()
        .map(|r| r["data"]["text/plain"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The cases every path must give the same answer to.
fn common_cases(server: &Server, label: &str) {
    // A DataFrame as the last expression: HTML, a bounded markdown table, the text.
    let v = ask(
        server,
        "import pandas as pd\ndf = pd.DataFrame({'a': range(30), 'b': [i * 0.5 for i in range(30)]})\ndf",
    );
    let r = &results(&v)[0];
    assert_eq!(r["output_type"], "execute_result", "[{label}] {r}");
    assert!(r["execution_count"].is_null(), "[{label}] {r}");
    assert!(r["metadata"].is_object());
    let html = r["data"]["text/html"].as_str().unwrap();
    assert!(
        html.contains("<table") && html.contains("14.5"),
        "[{label}]"
    );
    let md = r["data"]["text/markdown"].as_str().unwrap();
    assert!(md.starts_with("|  | a | b |"), "[{label}] {md}");
    assert!(md.contains("30 rows × 2 columns"), "[{label}] {md}");
    assert!(
        md.contains("| 29 | 29 | 14.5 |"),
        "[{label}] the tail rows: {md}"
    );
    assert_eq!(
        md.lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| ..."))
            .count(),
        21,
        "[{label}] the header and 20 rows: {md}"
    );
    assert_eq!(v["stdout"], "", "the value is a result, not stdout");
    assert!(v["error"].is_null());

    // display() of several objects, in order, builtin and IPython's.
    let v = ask(
        server,
        "display(1, 'two')\nfrom IPython.display import display, HTML, Markdown, JSON\nprint('between')\ndisplay(HTML('<b>x</b>'), Markdown('# t'), JSON({'k': [1, 2]}))\n3",
    );
    let outs = results(&v);
    assert_eq!(
        outs.iter()
            .map(|r| r["output_type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [
            "display_data",
            "display_data",
            "display_data",
            "display_data",
            "display_data",
            "execute_result"
        ],
        "[{label}] {v}"
    );
    assert_eq!(plain(&v)[..2], ["1", "'two'"]);
    assert_eq!(outs[2]["data"]["text/html"], "<b>x</b>");
    assert_eq!(outs[3]["data"]["text/markdown"], "# t");
    assert_eq!(outs[4]["data"]["application/json"], json!({"k": [1, 2]}));
    assert_eq!(plain(&v)[5], "3");
    assert_eq!(v["stdout"], "between\n");

    // What shows nothing: a statement ending in `;`, None, an assignment.
    for code in ["x = 1\nx + 1;", "None", "y = 2", "x = 1\nx  ;  # said"] {
        let v = ask(server, code);
        assert!(results(&v).is_empty(), "[{label}] {code:?}: {v}");
    }

    // A repr that raises says so, and the run goes on.
    let v = ask(
        server,
        "class Bad:\n    def _repr_html_(self):\n        raise ValueError('no html')\nBad()\nprint('went on')",
    );
    assert_eq!(v["stdout"], "went on\n", "[{label}] {v}");
    // The value is not the last statement there; as the last one:
    let v = ask(
        server,
        "class Bad:\n    def _repr_html_(self):\n        raise ValueError('no html')\nBad()",
    );
    assert!(
        plain(&v)[0].contains("raised ValueError: no html"),
        "[{label}] {v}"
    );

    // A huge repr keeps its text, cut, and says it was truncated.
    let v = ask(
        server,
        "class Big:\n    def _repr_html_(self):\n        return '<p>' * (3 << 20)\n    def __repr__(self):\n        return 'big'\nBig()",
    );
    let r = &results(&v)[0];
    assert_eq!(
        r["metadata"]["truncated"],
        true,
        "[{label}] {}",
        common::shorten(&r.to_string(), 300)
    );
    assert_eq!(r["data"]["text/plain"], "big");
    assert!(r["data"].get("text/html").is_none());

    // Errors as data, stderr as the spec has it.
    let code = "x = 1\ny = x / 0\n";
    let v = ask(server, code);
    let plain_run = server.run(code);
    assert_eq!(
        v["stderr"], plain_run["stderr"],
        "[{label}] stderr is unchanged"
    );
    assert_eq!(v["error"]["ename"], "ZeroDivisionError", "[{label}] {v}");
    assert_eq!(v["error"]["evalue"], "division by zero");
    assert_eq!(v["error"]["lineno"], 2);
    let tb: Vec<&str> = v["error"]["traceback"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(
        tb.join("\n") + "\n",
        text(&v, "stderr"),
        "[{label}] the user's frames only"
    );
    let v = ask(server, "a = 1\ndef f(:\n    pass");
    assert_eq!(v["error"]["ename"], "SyntaxError", "[{label}] {v}");
    assert_eq!(v["error"]["lineno"], 2);
    assert!(!text(&v, "stderr").contains("harness") && !text(&v, "stderr").contains("ast.py"));

    // Not asked: exactly the spec's fields.
    let v = server.run("1 + 1");
    assert!(
        v.get("results").is_none() && v.get("error").is_none(),
        "{v}"
    );
    assert_eq!(v["stdout"], "");
}

#[test]
fn the_last_expression_display_and_errors_warm_and_cold() {
    for mode in ["warm", "cold"] {
        let server = Server::start(&["--mode", mode]);
        common_cases(&server, mode);
    }
}

fn chart(v: &Value, i: usize) -> &Value {
    &results(v)[i]["data"]["application/vnd.nsbox.chart+json"]["axes"][0]
}

#[test]
fn figures_are_results_in_order_with_a_summary_of_their_data() {
    let server = Server::start(&[]);
    let v = ask(
        &server,
        r#"
import matplotlib.pyplot as plt
display('before')
plt.plot([1, 2, 3], [4, 5, 6], label='up'); plt.title('line'); plt.xlabel('x'); plt.ylabel('y')
plt.show()
plt.figure(); plt.bar(['a', 'b', 'c'], [3, 1, 2], label='bars')
plt.figure(); plt.scatter([1, 2], [3, 4], label='dots')
plt.figure(); plt.hist([1, 2, 2, 3, 3, 3], bins=3, label='h')
plt.figure(); plt.pie([1, 3], labels=['x', 'y'])
plt.figure(); plt.boxplot([[1, 2, 3, 4, 100]])
plt.figure(); plt.yscale('log'); plt.plot(range(1000), [i + 1 for i in range(1000)]);
"#,
    );
    assert_eq!(
        v["plots"].as_array().unwrap().len(),
        7,
        "the spec's plots stay"
    );
    assert_eq!(plain(&v)[0], "'before'");
    for (i, r) in results(&v).iter().enumerate().skip(1) {
        let png = r["data"]["image/png"]
            .as_str()
            .unwrap_or_else(|| panic!("result {i}: {}", common::shorten(&r.to_string(), 400)));
        assert_eq!(
            png,
            v["plots"][i - 1]["content_base64"],
            "result {i} is plot {i}"
        );
    }
    let line = chart(&v, 1);
    assert_eq!(line["type"], "line");
    assert_eq!(
        (&line["title"], &line["x_label"], &line["y_label"]),
        (&json!("line"), &json!("x"), &json!("y"))
    );
    assert_eq!(line["series"][0]["label"], "up");
    assert_eq!(line["series"][0]["points"], json!([[1, 4], [2, 5], [3, 6]]));
    let bar = chart(&v, 2);
    assert_eq!(bar["type"], "bar");
    assert_eq!(
        bar["series"][0]["points"],
        json!([["a", 3], ["b", 1], ["c", 2]])
    );
    let scatter = chart(&v, 3);
    assert_eq!(
        (&scatter["type"], &scatter["series"][0]["points"]),
        (&json!("scatter"), &json!([[1, 3], [2, 4]]))
    );
    let hist = chart(&v, 4);
    assert_eq!(hist["type"], "histogram");
    assert_eq!(hist["series"][0]["counts"], json!([1, 2, 3]));
    assert_eq!(hist["series"][0]["label"], "h");
    let pie = chart(&v, 5);
    assert_eq!(pie["type"], "pie");
    assert_eq!(
        pie["series"],
        json!([{"label": "x", "value": 0.25}, {"label": "y", "value": 0.75}])
    );
    let bx = chart(&v, 6);
    assert_eq!(bx["type"], "box");
    assert_eq!(
        (&bx["series"][0]["med"], &bx["series"][0]["outliers"]),
        (&json!(3), &json!(1))
    );
    let many = chart(&v, 7);
    assert_eq!(
        (&many["type"], &many["y_scale"]),
        (&json!("line"), &json!("log"))
    );
    let agg = &many["series"][0]["aggregate"];
    assert_eq!(
        (&agg["count"], &agg["x_max"], &agg["y_min"], &agg["y_max"]),
        (&json!(1000), &json!(999), &json!(1), &json!(1000)),
        "too many points are summarised: {many}"
    );
}

#[test]
fn plotly_altair_pil_and_ipython_objects_give_their_own_types() {
    let server = Server::start(&[]);
    let v = ask(
        &server,
        "import plotly.express as px\nfig = px.bar(x=['a', 'b'], y=[1, 2])\nfig",
    );
    let data = &results(&v)[0]["data"];
    assert!(
        data["application/vnd.plotly.v1+json"]["data"].is_array(),
        "{v}"
    );
    assert!(data["text/html"].as_str().unwrap().contains("plotly"));
    let v = ask(
        &server,
        "import altair as alt, pandas as pd\nalt.Chart(pd.DataFrame({'x': [1, 2]})).mark_point().encode(x='x')",
    );
    let data = results(&v)[0]["data"].as_object().unwrap();
    let spec = data
        .iter()
        .find(|(k, _)| k.starts_with("application/vnd.vegalite.v"))
        .unwrap_or_else(|| panic!("no Vega-Lite type in {:?}", data.keys()));
    assert_eq!(spec.1["mark"]["type"], "point");
    let v = ask(
        &server,
        "from PIL import Image\nImage.new('RGB', (4, 4), 'red')",
    );
    let png = results(&v)[0]["data"]["image/png"].as_str().unwrap();
    assert!(png.starts_with("iVBORw0KGgo"), "a PNG: {png}");
    let v = ask(
        &server,
        "from IPython.display import SVG, Latex\ndisplay(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\"/>'))\nLatex('$x^2$')",
    );
    assert!(results(&v)[0]["data"]["image/svg+xml"]
        .as_str()
        .unwrap()
        .contains("<svg"));
    assert_eq!(results(&v)[1]["data"]["text/latex"], "$x^2$");
}

#[test]
fn a_session_returns_results_by_default_and_keeps_the_last_one_in_underscore() {
    let server = Server::start(&[]);
    let created: Value = server
        .client()
        .post(format!("{}/v1/sessions", server.base))
        .json(&json!({}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let sid = created["id"].as_str().unwrap();
    let call = |code: &str, extra: Value| {
        let mut body = json!({"lang": "python", "code": code, "session_id": sid});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        server.run_with(body)
    };
    let v = call("6 * 7", json!({}));
    assert_eq!(plain(&v), ["42"], "{v}");
    let v = call("_ + 1", json!({}));
    assert_eq!(plain(&v), ["43"], "{v}");
    // A call may say no.
    let v = call("_", json!({"results": false}));
    assert!(v.get("results").is_none(), "{v}");
    // Without results, display() prints, as Python outside a notebook would.
    let v = call("display('shown')", json!({"results": false}));
    assert_eq!(v["stdout"], "shown\n", "{v}");
    // A session made without results answers as a spec run (and its calls may still ask).
    let created: Value = server
        .client()
        .post(format!("{}/v1/sessions", server.base))
        .json(&json!({"results": false}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let quiet = created["id"].as_str().unwrap();
    let v = server.run_with(json!({"lang": "python", "code": "1", "session_id": quiet}));
    assert!(
        v.get("results").is_none() && v.get("error").is_none(),
        "{v}"
    );
    let v = server
        .run_with(json!({"lang": "python", "code": "2", "session_id": quiet, "results": true}));
    assert_eq!(plain(&v), ["2"]);
    let bad = server
        .client()
        .post(format!("{}/v1/tools/code", server.base))
        .json(&json!({"lang": "python", "code": "1", "results": "yes"}))
        .send()
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    assert!(bad.text().unwrap().contains("`results`"));
}

#[test]
fn the_bounds_are_the_operators() {
    let server = Server::start(&["--result-markdown-rows", "4", "--result-max-kib", "64"]);
    let v = ask(
        &server,
        "import pandas as pd\npd.DataFrame({'a': range(100)})",
    );
    let md = results(&v)[0]["data"]["text/markdown"].as_str().unwrap();
    let rows: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| ..."))
        .collect();
    assert_eq!(rows.len(), 5, "a header and 4 rows: {md}");
    let v = ask(
        &server,
        "class H:\n    def _repr_html_(self):\n        return 'x' * (100 << 10)\nH()",
    );
    assert_eq!(results(&v)[0]["metadata"]["truncated"], true, "{v}");
}
