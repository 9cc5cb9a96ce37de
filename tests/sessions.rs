//! Files in and out of runs, and stateful sessions (issue 14, docs/files-and-sessions.md), through the real server over the real sandbox.
//!
//! Every test starts its own server on a uid range of its own (so the processes it counts
//! are its own) and takes [`exclusive`] first: several tests measure the host (processes,
//! cgroups, mounts, the server's memory), so they run one at a time. Run them with
//! `cargo test --test sessions -- --test-threads=1` as root.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{
    host_mounts, metric, mounts_added, processes_of_uid, rss_kib, run_cgroups,
    run_processes_of_uid, server_cgroup_dirs, shorten, text, tree_rss_kib, wait_until, Server,
    NOBODY,
};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Digest;

/// The spec's response fields: a request without `files` or `session_id` gets exactly these.
const SPEC_KEYS: [&str; 8] = [
    "success",
    "stdout",
    "stderr",
    "exit_code",
    "execution_time",
    "security_checked",
    "violations",
    "plots",
];
const TIMEOUT_STDERR: &str = "Execution failed: Execution timeout exceeded";
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
const MIB: usize = 1 << 20;
/// How long the kernel and the server may take to tear a sandbox down once it ended. Every
/// wait on it ends as soon as all is clean; the bound is for a slow, loaded host.
const TEARDOWN_GRACE: Duration = Duration::from_secs(10);

/// One test at a time (see the module comment).
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A uid range per test, apart from the ranges of the other test files.
fn uid_base(slot: u32) -> u32 {
    2_500_000_000 + slot * 1_000_000
}

/// `exclusive`, then a server on the uid range of `slot` with `extra` flags.
fn start(slot: u32, extra: &[&str]) -> (MutexGuard<'static, ()>, u32, Server) {
    let one = exclusive();
    let base = uid_base(slot);
    let server = Server::start_in_uid_range(base, extra, &[]);
    (one, base, server)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(
            v.as_str()
                .unwrap_or_else(|| panic!("not a base64 string: {v}")),
        )
        .unwrap_or_else(|e| panic!("bad base64 ({e}): {v}"))
}

/// The last lines of the server's log, for failure messages.
fn log_tail(server: &Server) -> String {
    let log = server.log.lock().unwrap();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A response with long fields cut and plots and file contents as sizes.
fn brief(v: &Value) -> String {
    let mut v = v.clone();
    for key in ["stdout", "stderr"] {
        if let Some(s) = v[key].as_str() {
            v[key] = json!(shorten(s, 800));
        }
    }
    if let Some(plots) = v["plots"].as_array() {
        v["plots"] = json!(format!("[{} plot(s)]", plots.len()));
    }
    if let Some(files) = v.get_mut("files").and_then(Value::as_array_mut) {
        if files.len() > 20 {
            let n = files.len();
            files.truncate(20);
            files.push(json!(format!("... {n} files in all")));
        }
        for f in files.iter_mut() {
            if let Some(c) = f.get("content_base64").and_then(Value::as_str) {
                let n = c.len();
                f["content_base64"] = json!(format!("<{n} base64 characters>"));
            }
        }
    }
    v.to_string()
}

// ---------------------------------------------------------------------------------------
// The HTTP API of sessions and files
// ---------------------------------------------------------------------------------------

/// An HTTP answer: status, content type, raw body.
struct Answer {
    status: u16,
    content_type: String,
    bytes: Vec<u8>,
    elapsed: Duration,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|e| {
            panic!(
                "HTTP {}: body is not JSON ({e}): {}",
                self.status,
                shorten(&String::from_utf8_lossy(&self.bytes), 500)
            )
        })
    }

    /// The error message of the API's error shape (`{"error": {"type", "message"}}`).
    fn message(&self) -> String {
        let v = self.json();
        v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("HTTP {}: no error message in {v}", self.status))
            .to_string()
    }

    fn describe(&self) -> String {
        format!(
            "HTTP {} ({}): {}",
            self.status,
            self.content_type,
            match serde_json::from_slice::<Value>(&self.bytes) {
                Ok(v) => brief(&v),
                Err(_) => shorten(&String::from_utf8_lossy(&self.bytes), 500),
            }
        )
    }
}

/// The API as one client sees it: a server and, optionally, the bearer key it sends.
#[derive(Clone, Copy)]
struct Api<'a> {
    server: &'a Server,
    key: Option<&'a str>,
}

impl<'a> Api<'a> {
    fn new(server: &'a Server) -> Api<'a> {
        Api { server, key: None }
    }

    fn with_key(server: &'a Server, key: &'a str) -> Api<'a> {
        Api {
            server,
            key: Some(key),
        }
    }

    fn send(&self, method: Method, path: &str, body: Option<Body>) -> Answer {
        self.try_send(method.clone(), path, body)
            .unwrap_or_else(|e| {
                panic!(
                    "{method} {path}: {e}\nserver log:\n{}",
                    log_tail(self.server)
                )
            })
    }

    fn try_send(&self, method: Method, path: &str, body: Option<Body>) -> Result<Answer, String> {
        let started = Instant::now();
        let mut req = self
            .server
            .client()
            .request(method, format!("{}{path}", self.server.base));
        if let Some(key) = self.key {
            req = req.bearer_auth(key);
        }
        req = match body {
            Some(Body::Json(v)) => req.json(&v),
            Some(Body::Raw(bytes)) => req
                .header("content-type", "application/octet-stream")
                .body(bytes),
            None => req,
        };
        let resp = req.send().map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = resp
            .bytes()
            .map_err(|e| format!("HTTP {status}: reading the body: {e}"))?
            .to_vec();
        Ok(Answer {
            status,
            content_type,
            bytes,
            elapsed: started.elapsed(),
        })
    }

    /// `POST /v1/sessions` with `body` (no body at all for `None`).
    fn create(&self, body: Option<Value>) -> Answer {
        self.send(Method::POST, "/v1/sessions", body.map(Body::Json))
    }

    /// Creates a session, checks the session object and returns its id.
    fn open(&self, body: Value) -> String {
        let a = self.create(Some(body));
        assert_eq!(
            a.status,
            201,
            "creating a session: {}\nserver log:\n{}",
            a.describe(),
            log_tail(self.server)
        );
        let s = a.json();
        check_session_object(&s).unwrap_or_else(|e| panic!("{e}: {s}"));
        assert_eq!(s["state"], "active", "{s}");
        assert_eq!(s["calls"], 0, "{s}");
        s["id"].as_str().unwrap().to_string()
    }

    /// `POST /v1/tools/code` with `session_id`.
    fn call(&self, sid: &str, code: &str, timeout: f64) -> Answer {
        self.send(
            Method::POST,
            "/v1/tools/code",
            Some(Body::Json(json!({
                "code": code, "lang": "python", "timeout": timeout, "session_id": sid,
            }))),
        )
    }

    /// A call in a session that must succeed: 200, exit 0, empty stderr, the session still
    /// active. Returns the response.
    fn step(&self, sid: &str, code: &str) -> Value {
        let a = self.call(sid, code, 30.0);
        assert_eq!(
            a.status,
            200,
            "call in {sid}: {}\ncode:\n{code}\nserver log:\n{}",
            a.describe(),
            log_tail(self.server)
        );
        let v = a.json();
        assert!(
            v["success"] == true && v["exit_code"] == 0 && v["stderr"] == "",
            "call in {sid} did not run cleanly: {}\ncode:\n{code}",
            brief(&v)
        );
        assert_eq!(
            v["session"],
            json!({"id": sid, "state": "active"}),
            "{}",
            brief(&v)
        );
        assert!(
            v["files"].is_array(),
            "a call in a session has `files`: {}",
            brief(&v)
        );
        v
    }

    /// A call in a session that asks for the output as a stream (`Accept:
    /// text/event-stream`): status and body as they come.
    fn call_streamed(&self, sid: &str, code: &str) -> Answer {
        let started = Instant::now();
        let resp = self
            .server
            .client()
            .post(format!("{}/v1/tools/code", self.server.base))
            .header("accept", "text/event-stream")
            .json(&json!({"code": code, "lang": "python", "timeout": 10, "session_id": sid}))
            .send()
            .unwrap_or_else(|e| panic!("streamed call: {e}"));
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = resp.bytes().map(|b| b.to_vec()).unwrap_or_default();
        Answer {
            status,
            content_type,
            bytes,
            elapsed: started.elapsed(),
        }
    }

    fn get_session(&self, sid: &str) -> Answer {
        self.send(Method::GET, &format!("/v1/sessions/{sid}"), None)
    }

    fn delete(&self, sid: &str) -> Answer {
        self.send(Method::DELETE, &format!("/v1/sessions/{sid}"), None)
    }

    fn list_files(&self, sid: &str) -> Answer {
        self.send(Method::GET, &format!("/v1/sessions/{sid}/files"), None)
    }

    fn get_file(&self, sid: &str, path: &str) -> Answer {
        self.send(
            Method::GET,
            &format!("/v1/sessions/{sid}/files/{path}"),
            None,
        )
    }

    fn put_file(&self, sid: &str, path: &str, bytes: &[u8]) -> Answer {
        self.send(
            Method::PUT,
            &format!("/v1/sessions/{sid}/files/{path}"),
            Some(Body::Raw(bytes.to_vec())),
        )
    }

    /// `POST /v1/tools/code` without a session, with the given body.
    fn post(&self, body: Value) -> Answer {
        self.send(Method::POST, "/v1/tools/code", Some(Body::Json(body)))
    }

    /// A plain run with files that must answer 200.
    fn run_with_files(&self, code: &str, files: Value) -> Value {
        let a = self.post(json!({"code": code, "lang": "python", "timeout": 30, "files": files}));
        assert_eq!(
            a.status,
            200,
            "{}\nserver log:\n{}",
            a.describe(),
            log_tail(self.server)
        );
        a.json()
    }
}

enum Body {
    Json(Value),
    Raw(Vec<u8>),
}

/// The session object of the contract: id `sess_<node>_` + 32 lowercase hex digits (the
/// node tag: 1 to 32 of a-z, 0-9 and -), a state, timestamps, counters.
fn check_session_object(s: &Value) -> Result<(), String> {
    let id = s["id"].as_str().ok_or("no string id")?;
    let (node, hex) = id
        .strip_prefix("sess_")
        .and_then(|rest| rest.rsplit_once('_'))
        .ok_or("id is not sess_<node>_<hex>")?;
    let node_ok = (1..=32).contains(&node.len())
        && node
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !node_ok || hex.len() != 32 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!("id {id:?} is not sess_<node>_ and 32 hex digits"));
    }
    for key in [
        "state",
        "template",
        "created_at",
        "last_used_at",
        "expires_at",
    ] {
        if !s[key].is_string() {
            return Err(format!("session object without a string {key}"));
        }
    }
    for key in ["ttl_seconds", "calls", "memory_bytes", "memory_limit_bytes"] {
        if !s[key].is_u64() {
            return Err(format!("session object without a number {key}"));
        }
    }
    if !s["libraries"].is_array() {
        return Err("session object without libraries".into());
    }
    Ok(())
}

fn is_session_gone(message: &str) -> bool {
    message.starts_with("session ended") || message.contains("not found")
}

/// Asserts a 404 whose message says the session ended (`session ended: <reason>`).
fn assert_ended_404(a: &Answer, what: &str) -> String {
    assert_eq!(a.status, 404, "{what}: {}", a.describe());
    let m = a.message();
    assert!(
        m.starts_with("session ended: ") && m.len() > "session ended: ".len(),
        "{what}: expected `session ended: <reason>`, got {m:?}"
    );
    m
}

/// The entry of `files` with this path.
fn file_entry<'v>(files: &'v Value, path: &str) -> Option<&'v Value> {
    files.as_array()?.iter().find(|f| f["path"] == path)
}

/// Paths of a `files` array, sorted.
fn paths(files: &Value) -> Vec<String> {
    let mut p: Vec<String> = files
        .as_array()
        .map(|a| a.iter().map(|f| text(f, "path").to_string()).collect())
        .unwrap_or_default();
    p.sort();
    p
}

/// Checks a returned file: size, mime type (prefix), not truncated, exactly these bytes.
fn assert_file(files: &Value, path: &str, content: &[u8], mime: &str) {
    let f = file_entry(files, path)
        .unwrap_or_else(|| panic!("{path} not among the returned files {:?}", paths(files)));
    assert_eq!(f["size"], content.len(), "size of {path}: {f}");
    assert!(
        text(f, "mime_type").starts_with(mime),
        "mime type of {path}: expected {mime}, got {}",
        f["mime_type"]
    );
    assert!(
        f.get("truncated").is_none() || f["truncated"] == false,
        "{path} is truncated: {f}"
    );
    assert_eq!(
        unb64(&f["content_base64"]),
        content,
        "content of {path} as returned"
    );
}

fn has_nsbox_line(stderr: &str) -> bool {
    stderr.lines().any(|l| l.starts_with("nsbox:"))
}

/// The processes of a server's runs and sessions: `nobody`, and anything of the uid base
/// that is not a warm template (`templates`).
fn sandbox_processes(base: u32, templates: &[i32]) -> Vec<i32> {
    let mut pids = run_processes_of_uid(base + NOBODY);
    pids.extend(
        run_processes_of_uid(base)
            .into_iter()
            .filter(|p| !templates.contains(p)),
    );
    pids
}

fn describe_pids(pids: &[i32]) -> String {
    pids.iter()
        .map(|&p| format!("{p} ({})", shorten(&common::cmdline(p), 80)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a server looks like with nothing running: its template processes, its cgroups.
struct Baseline {
    templates: Vec<i32>,
    cgroups: Vec<std::path::PathBuf>,
}

fn baseline(server: &Server, base: u32) -> Baseline {
    // The templates are up once the server is ready; an earlier run's processes may still
    // be exiting, so let the count settle first.
    let mut last = run_processes_of_uid(base);
    wait_until(Duration::from_secs(2), || {
        std::thread::sleep(Duration::from_millis(200));
        let now = run_processes_of_uid(base);
        let same = now == last;
        last = now;
        same && run_processes_of_uid(base + NOBODY).is_empty()
    });
    Baseline {
        templates: run_processes_of_uid(base),
        cgroups: run_cgroups(server.pid()),
    }
}

/// Waits up to `grace` for every session and run process and every cgroup made since
/// `before` to go; says what is left otherwise.
fn wait_clean(
    server: &Server,
    base: u32,
    before: &Baseline,
    grace: Duration,
) -> Result<(), String> {
    let left_cgroups = || -> Vec<std::path::PathBuf> {
        run_cgroups(server.pid())
            .into_iter()
            .filter(|c| !before.cgroups.contains(c))
            .collect()
    };
    let clean = wait_until(grace, || {
        sandbox_processes(base, &before.templates).is_empty() && left_cgroups().is_empty()
    });
    if clean {
        return Ok(());
    }
    let mut problems = Vec::new();
    let procs = sandbox_processes(base, &before.templates);
    if !procs.is_empty() {
        problems.push(format!("sandbox processes left: {}", describe_pids(&procs)));
    }
    let cgroups = left_cgroups();
    if !cgroups.is_empty() {
        problems.push(format!("cgroups left: {cgroups:?}"));
    }
    Err(format!(
        "{:.1} s later: {}",
        grace.as_secs_f64(),
        problems.join("; ")
    ))
}

/// `/metrics` as `api`'s client sees it (behind the API keys when there are some).
fn metrics(api: &Api) -> String {
    let a = api.send(Method::GET, "/metrics", None);
    assert_eq!(a.status, 200, "/metrics: {}", a.describe());
    String::from_utf8_lossy(&a.bytes).into_owned()
}

fn status(api: &Api) -> Value {
    let a = api.send(Method::GET, "/v1/status", None);
    assert_eq!(a.status, 200, "/v1/status: {}", a.describe());
    a.json()
}

// ---------------------------------------------------------------------------------------
// 1. The five-step analysis
// ---------------------------------------------------------------------------------------

const SALES_CSV: &str = "region,month,amount,units\n\
north,2026-01,100.5,3\n\
south,2026-01,,4\n\
north,2026-02,200,5\n\
east,2026-02,50.25,\n\
south,2026-03,300,6\n\
east,2026-03,not-a-number,2\n\
north,2026-03,120,1\n";

/// The rows with an amount and units: north 100.5+200+120 (units 3+5+1), south 300 (6).
const SUMMARY_CSV: &str = "region,total,units\nnorth,420.5,9\nsouth,300.0,6\n";

const STEP_LOAD: &str = "import pandas as pd\n\
df = pd.read_csv('data/sales.csv')\n\
print(df.shape)\n";

const STEP_CLEAN: &str = "df['amount'] = pd.to_numeric(df['amount'], errors='coerce')\n\
df = df.dropna()\n\
df['units'] = df['units'].astype(int)\n\
print(len(df), df['amount'].sum(), df['units'].dtype)\n";

const STEP_PLOT: &str = "import matplotlib.pyplot as plt\n\
df.groupby('region')['amount'].sum().plot(kind='bar')\n\
plt.title('amount by region')\n\
plt.show()\n\
print('plotted', sorted(df['region'].unique()))\n";

const STEP_EXPORT: &str = "from pathlib import Path\n\
Path('out').mkdir(exist_ok=True)\n\
summary = df.groupby('region').agg(total=('amount', 'sum'), units=('units', 'sum'))\n\
summary.to_csv('out/summary.csv')\n\
print(len(summary))\n";

/// The Done-when walk of the issue, with the scanner on as a real deployment runs it.
#[test]
fn five_step_analysis_over_http() {
    let (_one, _base, server) = start(1, &[]);
    let api = Api::new(&server);

    // 0. A session.
    let created = api.create(Some(json!({})));
    assert_eq!(created.status, 201, "{}", created.describe());
    let s = created.json();
    check_session_object(&s).unwrap_or_else(|e| panic!("{e}: {s}"));
    assert_eq!(s["state"], "active");
    assert_eq!(s["calls"], 0);
    assert_eq!(s["ttl_seconds"], 600, "the default idle TTL: {s}");
    assert_eq!(s["memory_limit_bytes"], 512 * MIB, "memory_mib: {s}");
    let sid = s["id"].as_str().unwrap().to_string();
    let sid = sid.as_str();

    // 1. Upload the CSV.
    let put = api.put_file(sid, "data/sales.csv", SALES_CSV.as_bytes());
    assert_eq!(put.status, 201, "{}", put.describe());
    let put = put.json();
    assert_eq!(put["path"], "data/sales.csv", "{put}");
    assert_eq!(put["size"], SALES_CSV.len(), "{put}");
    assert!(text(&put, "mime_type").starts_with("text/csv"), "{put}");

    // 2. Load it into `df`.
    let r = api.step(sid, STEP_LOAD);
    assert_eq!(r["stdout"], "(7, 4)\n", "{}", brief(&r));
    assert_eq!(
        r["files"],
        json!([]),
        "the uploaded file is not this call's output: {}",
        brief(&r)
    );
    assert_eq!(r["plots"], json!([]));
    assert_eq!(r["security_checked"], true);

    // 3. Clean it, with the first call's `df`.
    let r = api.step(sid, STEP_CLEAN);
    assert_eq!(r["stdout"], "4 720.5 int64\n", "{}", brief(&r));
    assert_eq!(r["files"], json!([]), "{}", brief(&r));

    // 4. Plot it: one PNG, in this call's `plots`.
    let r = api.step(sid, STEP_PLOT);
    assert_eq!(r["stdout"], "plotted ['north', 'south']\n", "{}", brief(&r));
    let plots = r["plots"].as_array().expect("plots");
    assert_eq!(plots.len(), 1, "{}", brief(&r));
    assert_eq!(plots[0]["format"], "png");
    let png = unb64(&plots[0]["content_base64"]);
    assert_eq!(&png[..8], PNG_MAGIC, "the plot is not a PNG");
    assert_eq!(r["files"], json!([]), "{}", brief(&r));

    // 5. Export the summary: it comes back in `files`.
    let r = api.step(sid, STEP_EXPORT);
    assert_eq!(r["stdout"], "2\n", "{}", brief(&r));
    assert_eq!(paths(&r["files"]), ["out/summary.csv"], "{}", brief(&r));
    assert_file(
        &r["files"],
        "out/summary.csv",
        SUMMARY_CSV.as_bytes(),
        "text/csv",
    );
    assert_eq!(
        r["plots"],
        json!([]),
        "the plot was returned by its own call only"
    );

    // The working directory as listed.
    let list = api.list_files(sid);
    assert_eq!(list.status, 200, "{}", list.describe());
    let list = list.json();
    let listed = &list["files"];
    assert_eq!(
        paths(listed),
        ["data/sales.csv", "out/summary.csv"],
        "{list}"
    );
    let summary = file_entry(listed, "out/summary.csv").unwrap();
    assert_eq!(summary["size"], SUMMARY_CSV.len(), "{list}");
    assert!(text(summary, "mime_type").starts_with("text/csv"), "{list}");
    assert!(
        summary.get("content_base64").is_none(),
        "the listing has no contents: {list}"
    );
    assert_eq!(
        file_entry(listed, "data/sales.csv").unwrap()["size"],
        SALES_CSV.len()
    );

    // Download it: exactly its bytes.
    let got = api.get_file(sid, "out/summary.csv");
    assert_eq!(got.status, 200, "{}", got.describe());
    assert!(
        got.content_type.starts_with("text/csv"),
        "{}",
        got.content_type
    );
    assert_eq!(String::from_utf8_lossy(&got.bytes), SUMMARY_CSV);
    let got = api.get_file(sid, "data/sales.csv");
    assert_eq!(got.bytes, SALES_CSV.as_bytes());
    let missing = api.get_file(sid, "out/nothing.csv");
    assert_eq!(missing.status, 404, "{}", missing.describe());

    // The session object counts the calls.
    let s = api.get_session(sid);
    assert_eq!(s.status, 200, "{}", s.describe());
    let s = s.json();
    check_session_object(&s).unwrap_or_else(|e| panic!("{e}: {s}"));
    assert_eq!(s["id"], sid, "{s}");
    // Checked last, so the rest of the walk is checked whatever the count says.
    let calls = s.clone();
    assert!(s["memory_bytes"].as_u64().unwrap() > 0, "{s}");
    assert!(
        s["memory_bytes"].as_u64() <= s["memory_limit_bytes"].as_u64(),
        "{s}"
    );

    // Delete it; it is gone for every kind of request.
    let d = api.delete(sid);
    assert_eq!(d.status, 204, "{}", d.describe());
    assert!(d.bytes.is_empty(), "a 204 has no body");
    let after = api.call(sid, "print(1)", 10.0);
    assert_eq!(after.status, 404, "{}", after.describe());
    let m = after.message();
    assert!(is_session_gone(&m), "{m:?}");
    for a in [
        api.get_session(sid),
        api.list_files(sid),
        api.get_file(sid, "out/summary.csv"),
        api.delete(sid),
    ] {
        assert_eq!(a.status, 404, "{}", a.describe());
        assert!(is_session_gone(&a.message()), "{}", a.describe());
    }
    // `calls` counts the calls (POST /v1/tools/code), not the file requests.
    assert_eq!(calls["calls"], 4, "four calls, five file requests: {calls}");
}

// ---------------------------------------------------------------------------------------
// 2. Files on a plain run
// ---------------------------------------------------------------------------------------

#[test]
fn files_in_and_out_of_a_plain_run() {
    let (_one, _base, server) = start(2, &["--scanner", "off"]);
    let api = Api::new(&server);
    let binary = [0u8, 1, 2, 0xff, 0xfe, b'\n'];
    let code = r#"
import os
print(os.getcwd())
print(open('in/a.txt', encoding='utf-8').read(), end='')
print(open('b64.bin', 'rb').read().hex())
print(os.stat('in/a.txt').st_uid == os.getuid(), os.access('in/a.txt', os.W_OK))
with open('in/changed.txt', 'a') as f:
    f.write('more\n')
os.makedirs('made/deep/er', exist_ok=True)
with open('made/deep/er/new.json', 'w') as f:
    f.write('{"k": 1}')
with open('top.csv', 'w') as f:
    f.write('a,b\n1,2\n')
"#;
    let r = api.run_with_files(
        code,
        json!([
            {"path": "in/a.txt", "content": "héllo wörld\n"},
            {"path": "b64.bin", "content_base64": b64(&binary)},
            {"path": "in/changed.txt", "content": "start\n"},
            {"path": "unchanged.txt", "content": "same\n"},
        ]),
    );
    assert!(
        r["success"] == true && r["exit_code"] == 0 && r["stderr"] == "",
        "{}",
        brief(&r)
    );
    assert_eq!(
        r["stdout"],
        "/tmp/work\nhéllo wörld\n000102fffe0a\nTrue True\n",
        "{}",
        brief(&r)
    );
    let files = &r["files"];
    assert_eq!(
        paths(files),
        ["in/changed.txt", "made/deep/er/new.json", "top.csv"],
        "created and changed files only; unchanged inputs stay out: {}",
        brief(&r)
    );
    assert_file(files, "in/changed.txt", b"start\nmore\n", "text/plain");
    assert_file(
        files,
        "made/deep/er/new.json",
        b"{\"k\": 1}",
        "application/json",
    );
    assert_file(files, "top.csv", b"a,b\n1,2\n", "text/csv");
    for key in SPEC_KEYS {
        assert!(r.get(key).is_some(), "{key} missing: {}", brief(&r));
    }
    assert!(
        r.get("session").is_none(),
        "no session on a plain run: {}",
        brief(&r)
    );

    // `"files": []` asks for the output files.
    let r = api.run_with_files(
        "open('x.txt', 'w').write('abc')\nopen('img.png', 'wb').write(b'\\x89PNG\\r\\n\\x1a\\nrest')",
        json!([]),
    );
    assert_eq!(r["success"], true, "{}", brief(&r));
    assert_eq!(paths(&r["files"]), ["img.png", "x.txt"], "{}", brief(&r));
    assert_file(&r["files"], "x.txt", b"abc", "text/plain");
    assert_file(
        &r["files"],
        "img.png",
        b"\x89PNG\r\n\x1a\nrest",
        "image/png",
    );

    // Nothing created: an empty list, still there.
    let r = api.run_with_files("print('nothing')", json!([]));
    assert_eq!(r["files"], json!([]), "{}", brief(&r));

    // No `files` field: exactly the spec's response, though the code wrote a file, and the
    // working directory is the same.
    let a = api.post(json!({
        "code": "import os\nopen('x.txt', 'w').write('abc')\nprint(os.getcwd())",
        "lang": "python",
    }));
    assert_eq!(a.status, 200, "{}", a.describe());
    let r = a.json();
    let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut spec = SPEC_KEYS.to_vec();
    spec.sort_unstable();
    assert_eq!(keys, spec, "{}", brief(&r));
    assert_eq!(r["stdout"], "/tmp/work\n");

    // Runs do not share their working directory.
    let r = api.run_with_files(
        "import os\nprint(sorted(os.listdir('.')))",
        json!([{"path": "mine.txt", "content": "m"}]),
    );
    assert_eq!(r["stdout"], "['mine.txt']\n", "{}", brief(&r));
}

#[test]
fn the_body_limit_grows_to_fit_the_files() {
    // Defaults: 16 MiB per file. A 16 MiB file as base64 is a body of over 21 MiB.
    let (_one, _base, server) = start(3, &["--scanner", "off"]);
    let api = Api::new(&server);
    let data: Vec<u8> = (0..16 * MIB).map(|i| (i % 251) as u8).collect();
    let r = api.run_with_files(
        "import hashlib\nd = open('big.bin', 'rb').read()\nprint(len(d), hashlib.sha256(d).hexdigest()[:16])",
        json!([{"path": "big.bin", "content_base64": b64(&data)}]),
    );
    let digest: String = sha2::Sha256::digest(&data)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        r["success"] == true && r["stdout"] == format!("{} {digest}\n", data.len()),
        "{}",
        brief(&r)
    );
    assert_eq!(r["files"], json!([]), "the unchanged input is not returned");
}

/// One refused input: its status, and the message names the path.
fn expect_refused(api: &Api, files: Value, status: u16, names: &[&str]) {
    let a = api.post(json!({"code": "print('ran')", "lang": "python", "files": files}));
    assert_eq!(
        a.status,
        status,
        "files {}: {}",
        shorten(&files.to_string(), 200),
        a.describe()
    );
    let v = a.json();
    let m = a.message();
    let kind = if status == 400 {
        "invalid_request_error"
    } else {
        "request_too_large"
    };
    assert_eq!(v["error"]["type"], kind, "{v}");
    if !names.is_empty() {
        assert!(
            names.iter().any(|n| m.contains(n)),
            "the message {m:?} names none of {names:?}"
        );
    }
}

#[test]
fn bad_input_files_are_refused() {
    let (_one, _base, server) = start(
        4,
        &[
            "--scanner",
            "off",
            "--file-max-mib",
            "1",
            "--files-max-mib",
            "2",
            "--files-max-count",
            "3",
        ],
    );
    let api = Api::new(&server);
    let one = |path: &str| json!([{"path": path, "content": "x"}]);
    for path in [
        "../escape.txt",
        "a/../../b.txt",
        "a/..",
        "/etc/passwd",
        "/abs.txt",
        "a//b.txt",
        "./a.txt",
        "a/./b.txt",
        "dir/",
        ".",
        "..",
    ] {
        expect_refused(&api, one(path), 400, &[path]);
    }
    // A NUL or another control character: the message names the path (escaped somehow).
    expect_refused(&api, one("nul\u{0}name.txt"), 400, &["nul"]);
    expect_refused(&api, one("ctl\u{1}name.txt"), 400, &["ctl"]);
    expect_refused(&api, one("new\nline.txt"), 400, &["new"]);
    expect_refused(&api, one(""), 400, &[]);
    // Components past 255 bytes, paths past 1024.
    let long = "l".repeat(256);
    expect_refused(&api, one(&long), 400, &["lll"]);
    let deep = vec!["d".repeat(200); 6].join("/");
    expect_refused(&api, one(&deep), 400, &["ddd"]);
    // Duplicates.
    expect_refused(
        &api,
        json!([
            {"path": "dup.txt", "content": "1"},
            {"path": "ok.txt", "content": "2"},
            {"path": "dup.txt", "content": "3"},
        ]),
        400,
        &["dup.txt"],
    );
    // Exactly one of content and content_base64, and base64 that decodes.
    expect_refused(
        &api,
        json!([{"path": "both.txt", "content": "a", "content_base64": "YQ=="}]),
        400,
        &["both.txt"],
    );
    expect_refused(
        &api,
        json!([{"path": "neither.txt"}]),
        400,
        &["neither.txt"],
    );
    expect_refused(
        &api,
        json!([{"path": "bad64.bin", "content_base64": "not base64!"}]),
        400,
        &["bad64.bin"],
    );

    // Sizes: a file just over --file-max-mib, a total over --files-max-mib, a count over
    // --files-max-count. A file of exactly the limit is fine.
    let over = "x".repeat(MIB + 1);
    expect_refused(
        &api,
        json!([{"path": "big.txt", "content": over}]),
        413,
        &["big.txt"],
    );
    let over_b64 = b64(&vec![7u8; MIB + 1]);
    expect_refused(
        &api,
        json!([{"path": "big64.bin", "content_base64": over_b64}]),
        413,
        &["big64.bin"],
    );
    let part = "y".repeat(MIB * 9 / 10);
    expect_refused(
        &api,
        json!([
            {"path": "p1.txt", "content": part},
            {"path": "p2.txt", "content": part},
            {"path": "p3.txt", "content": part},
        ]),
        413,
        &[
            "total",
            "files_max_mib",
            "files-max-mib",
            "2 MiB",
            "2097152",
            "in all",
            "add up",
        ],
    );
    expect_refused(
        &api,
        json!([
            {"path": "c1.txt", "content": "1"},
            {"path": "c2.txt", "content": "2"},
            {"path": "c3.txt", "content": "3"},
            {"path": "c4.txt", "content": "4"},
        ]),
        413,
        &[
            "files_max_count",
            "files-max-count",
            "count",
            "too many",
            "3 files",
            "4 files",
            "maximum is 3",
        ],
    );
    let exact = b64(&vec![7u8; MIB]);
    let r = api.run_with_files(
        "print(len(open('exact.bin', 'rb').read()))",
        json!([{"path": "exact.bin", "content_base64": exact}]),
    );
    assert_eq!(r["stdout"], format!("{MIB}\n"), "{}", brief(&r));

    // The server still runs code.
    let r = api.run_with_files("print('fine')", json!([]));
    assert_eq!(r["stdout"], "fine\n");
}

#[test]
fn output_files_past_the_caps_are_listed_truncated() {
    let (_one, _base, server) = start(
        5,
        &[
            "--scanner",
            "off",
            "--file-max-mib",
            "1",
            "--files-max-mib",
            "2",
            "--files-max-count",
            "3",
        ],
    );
    let api = Api::new(&server);
    let check_truncated = |r: &Value, path: &str, size: usize| {
        let f = file_entry(&r["files"], path)
            .unwrap_or_else(|| panic!("{path} is not listed: {}", brief(r)));
        assert_eq!(f["truncated"], true, "{f}");
        assert_eq!(f["size"], size, "{f}");
        assert!(
            f.get("content_base64").is_none_or(|c| c.is_null()),
            "a truncated file has no content: {}",
            brief(r)
        );
        assert!(
            has_nsbox_line(text(r, "stderr")),
            "no `nsbox: ...` line in stderr: {}",
            brief(r)
        );
    };

    // Per file.
    let r = api.run_with_files(
        "open('small.txt', 'w').write('ok')\nopen('big.bin', 'wb').write(b'z' * (3 << 19))",
        json!([]),
    );
    assert!(r["success"] == true && r["exit_code"] == 0, "{}", brief(&r));
    check_truncated(&r, "big.bin", 3 << 19);
    assert_file(&r["files"], "small.txt", b"ok", "text/plain");

    // Count: five files, three of them with their content.
    let r = api.run_with_files(
        "for i in range(5):\n    open('f%d.txt' % i, 'w').write(str(i))",
        json!([]),
    );
    let files = r["files"].as_array().expect("files");
    assert_eq!(
        files.len(),
        5,
        "files past the count cap are listed: {}",
        brief(&r)
    );
    let with_content = files
        .iter()
        .filter(|f| f.get("content_base64").is_some_and(|c| c.is_string()))
        .count();
    assert_eq!(with_content, 3, "{}", brief(&r));
    for f in files {
        let has = f.get("content_base64").is_some_and(|c| c.is_string());
        assert!(has || f["truncated"] == true, "{f}");
    }
    assert!(has_nsbox_line(text(&r, "stderr")), "{}", brief(&r));

    // Total: three files of 0.9 MiB, 2 MiB in all.
    let r = api.run_with_files(
        "for i in range(3):\n    open('t%d.bin' % i, 'wb').write(b'q' * 943718)",
        json!([]),
    );
    let files = r["files"].as_array().expect("files");
    assert_eq!(files.len(), 3, "{}", brief(&r));
    let returned: usize = files
        .iter()
        .filter_map(|f| f.get("content_base64").and_then(Value::as_str))
        .map(|c| unb64(&json!(c)).len())
        .sum();
    assert!(
        returned <= 2 * MIB,
        "{returned} bytes returned over a 2 MiB cap"
    );
    assert!(
        files.iter().any(|f| f["truncated"] == true),
        "{}",
        brief(&r)
    );
    assert!(has_nsbox_line(text(&r, "stderr")), "{}", brief(&r));
}

// ---------------------------------------------------------------------------------------
// 3. State, ownership
// ---------------------------------------------------------------------------------------

#[test]
fn state_is_kept_across_calls_and_not_shared_between_sessions() {
    let (_one, _base, server) = start(6, &["--scanner", "off", "--node", "test-6"]);
    let api = Api::new(&server);
    let a = api.open(json!({}));
    let b = api.open(json!({}));
    assert_ne!(a, b);
    // The configured node tag names the node in its ids (what a load balancer routes by).
    for id in [&a, &b] {
        assert!(id.starts_with("sess_test-6_"), "{id}");
    }

    api.step(&a, "x = 41");
    api.step(&a, "import json\nimport pandas as pd");
    api.step(&a, "def double(v):\n    return v * 2");
    api.step(
        &a,
        "df = pd.DataFrame({'v': [1, 2, 3]})\nopen('notes.txt', 'w').write('kept')",
    );
    let r = api.step(
        &a,
        "df['w'] = df['v'].map(double)\n\
         print(x + 1, json.dumps({'d': double(21)}), int(df['w'].sum()), open('notes.txt').read())",
    );
    assert_eq!(r["stdout"], "42 {\"d\": 42} 12 kept\n", "{}", brief(&r));
    // A name error in one call does not lose the state.
    let r = api.call(&a, "print(undefined_name)", 30.0).json();
    assert_eq!(r["exit_code"], 1, "{}", brief(&r));
    assert!(text(&r, "stderr").contains("NameError"), "{}", brief(&r));
    assert_eq!(r["session"]["state"], "active", "{}", brief(&r));
    let r = api.step(&a, "print(x, len(df))");
    assert_eq!(r["stdout"], "41 3\n");

    // The other session sees none of it.
    let r = api.step(
        &b,
        "import os\nprint('x' in globals(), 'df' in globals(), sorted(os.listdir('.')))",
    );
    assert_eq!(r["stdout"], "False False []\n", "{}", brief(&r));

    // Input files on a call in a session land in its working directory and stay there;
    // unchanged, they are not returned.
    let a_call = api.send(
        Method::POST,
        "/v1/tools/code",
        Some(Body::Json(json!({
            "code": "print(open('in/extra.csv').read(), end='')",
            "lang": "python",
            "session_id": a,
            "files": [{"path": "in/extra.csv", "content": "a\n1\n"}],
        }))),
    );
    assert_eq!(a_call.status, 200, "{}", a_call.describe());
    let r = a_call.json();
    assert_eq!(r["stdout"], "a\n1\n", "{}", brief(&r));
    assert_eq!(r["files"], json!([]), "{}", brief(&r));
    let r = api.step(&a, "import os\nprint(sorted(os.listdir('.')), x)");
    assert_eq!(r["stdout"], "['in', 'notes.txt'] 41\n", "{}", brief(&r));

    let s = api.get_session(&a).json();
    assert_eq!(s["calls"], 9, "{s}");
    for sid in [&a, &b] {
        assert_eq!(api.delete(sid).status, 204);
    }
}

#[test]
fn session_options_are_checked() {
    let (_one, _base, server) = start(19, &[]);
    let api = Api::new(&server);
    // Libraries of the root filesystem are accepted and kept; others are refused by name.
    let created = api.create(Some(json!({"libraries": ["numpy", "pandas"]})));
    assert_eq!(created.status, 201, "{}", created.describe());
    let s = created.json();
    assert_eq!(s["libraries"], json!(["numpy", "pandas"]), "{s}");
    assert_eq!(s["template"], "scientific", "{s}");
    let sid = s["id"].as_str().unwrap().to_string();
    let r = api.step(&sid, "import numpy, pandas\nprint(numpy.arange(4).sum())");
    assert_eq!(r["stdout"], "6\n");
    assert_eq!(api.delete(&sid).status, 204);
    let bad = api.create(Some(json!({"libraries": ["numpy", "left-pad"]})));
    assert_eq!(bad.status, 400, "{}", bad.describe());
    assert!(bad.message().contains("left-pad"), "{}", bad.describe());
    // A TTL past session_max_idle_ttl (3600) is refused or capped, never granted.
    let long = api.create(Some(json!({"ttl_seconds": 999_999})));
    match long.status {
        400 => assert!(
            long.message().contains("ttl_seconds"),
            "{}",
            long.describe()
        ),
        201 => {
            let s = long.json();
            assert!(s["ttl_seconds"].as_u64().unwrap() <= 3600, "{s}");
            assert_eq!(api.delete(s["id"].as_str().unwrap()).status, 204);
        }
        _ => panic!("ttl_seconds 999999: {}", long.describe()),
    }
    for bad in [
        json!({"ttl_seconds": -1}),
        json!({"ttl_seconds": "ten"}),
        json!([1]),
    ] {
        let a = api.create(Some(bad.clone()));
        assert!(
            a.status == 400 || a.status == 422,
            "{bad}: {}",
            a.describe()
        );
    }
    // An unknown session id is a 404; a malformed one a 404 or a 400.
    let a = api.call("sess_0123456789abcdef0123456789abcdef", "print(1)", 10.0);
    assert_eq!(a.status, 404, "{}", a.describe());
    assert!(a.message().contains("not found"), "{}", a.describe());
    for sid in ["nope", "sess_", "sess_zzzz", "../v1/status"] {
        let a = api.call(sid, "print(1)", 10.0);
        assert!(
            a.status == 404 || a.status == 400,
            "{sid}: {}",
            a.describe()
        );
    }
}

#[test]
fn another_key_cannot_see_a_session() {
    let (_one, _base, server) = start(
        7,
        &[
            "--scanner",
            "off",
            "--api-key",
            "key-one",
            "--api-key",
            "key-two",
        ],
    );
    let one = Api::with_key(&server, "key-one");
    let two = Api::with_key(&server, "key-two");
    let sid = one.open(json!({}));
    one.step(&sid, "secret = 'only for key one'");
    let put = one.put_file(&sid, "mine.txt", b"key one's file");
    assert_eq!(put.status, 201, "{}", put.describe());

    // An id of the right shape that never existed.
    let never = "sess_0123456789abcdef0123456789abcdef";
    type Probe<'p> = (&'p str, Box<dyn Fn(&Api, &str) -> Answer + 'p>);
    let probes: Vec<Probe> = vec![
        ("GET the session", Box::new(|api, id| api.get_session(id))),
        (
            "a call",
            Box::new(|api, id| api.call(id, "print(secret)", 10.0)),
        ),
        ("the file list", Box::new(|api, id| api.list_files(id))),
        ("a file", Box::new(|api, id| api.get_file(id, "mine.txt"))),
        (
            "an upload",
            Box::new(|api, id| api.put_file(id, "theirs.txt", b"planted")),
        ),
        ("DELETE", Box::new(|api, id| api.delete(id))),
    ];
    for (what, probe) in &probes {
        let theirs = probe(&two, &sid);
        let nothing = probe(&two, never);
        assert_eq!(
            theirs.status,
            404,
            "{what} with the other key: {}",
            theirs.describe()
        );
        assert_eq!(
            nothing.status,
            404,
            "{what} of a made-up id: {}",
            nothing.describe()
        );
        assert_eq!(
            theirs.json(),
            nothing.json(),
            "{what}: the other key's answer must be the same as for an id that never existed"
        );
        assert!(
            theirs.message().contains("not found"),
            "{what}: {}",
            theirs.describe()
        );
        assert_eq!(theirs.content_type, nothing.content_type, "{what}");
    }
    // Without a key at all: 401, not a hint.
    let anonymous = Api::new(&server).get_session(&sid);
    assert_eq!(anonymous.status, 401, "{}", anonymous.describe());

    // Nothing the other key did touched it.
    let r = one.step(&sid, "import os\nprint(secret, sorted(os.listdir('.')))");
    assert_eq!(
        r["stdout"],
        "only for key one ['mine.txt']\n",
        "{}",
        brief(&r)
    );
    assert_eq!(one.delete(&sid).status, 204);
}

// ---------------------------------------------------------------------------------------
// 4. Endings: TTL, timeouts, the interpreter's own end
// ---------------------------------------------------------------------------------------

#[test]
fn ttl_expiry_frees_the_sandbox() {
    let (_one, base, server) = start(8, &["--scanner", "off"]);
    let before = baseline(&server, base);
    let api = Api::new(&server);
    let created = api.create(Some(json!({"ttl_seconds": 2})));
    assert_eq!(created.status, 201, "{}", created.describe());
    let s = created.json();
    assert_eq!(s["ttl_seconds"], 2, "{s}");
    let sid = s["id"].as_str().unwrap().to_string();
    let r = api.step(&sid, "x = 1\nprint('alive')");
    assert_eq!(r["stdout"], "alive\n");
    let procs = sandbox_processes(base, &before.templates);
    assert!(
        !procs.is_empty(),
        "an open session has processes of the run uids"
    );
    let cgroups: Vec<_> = run_cgroups(server.pid())
        .into_iter()
        .filter(|c| !before.cgroups.contains(c))
        .collect();
    if !server_cgroup_dirs(server.pid()).is_empty() {
        assert!(!cgroups.is_empty(), "an open session has a cgroup");
    }
    let s = api.get_session(&sid).json();
    assert_eq!(s["state"], "active", "{s}");
    assert_eq!(s["calls"], 1, "{s}");

    // Idle for twice its TTL (the GET above must not count as use either way).
    std::thread::sleep(Duration::from_secs(4));
    let gone = api.get_session(&sid);
    assert_ended_404(&gone, "GET after the TTL");
    let call = api.call(&sid, "print(x)", 10.0);
    assert_ended_404(&call, "a call after the TTL");
    wait_clean(&server, base, &before, TEARDOWN_GRACE)
        .unwrap_or_else(|e| panic!("after the TTL: {e}"));
    let m = metrics(&api);
    assert_eq!(
        metric(&m, "nsbox_sessions_ended_total{reason=\"expired\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "nsbox_sessions_active"), Some(0.0), "{m}");
    assert_eq!(status(&api)["sessions"]["active"], 0);
}

#[test]
fn a_timeout_interrupts_the_code_and_keeps_the_session() {
    let (_one, _base, server) = start(9, &["--scanner", "off"]);
    let api = Api::new(&server);
    let sid = api.open(json!({}));
    api.step(&sid, "x = 41");
    let started = Instant::now();
    let a = api.call(&sid, "import time\ntime.sleep(100)", 1.0);
    let took = started.elapsed();
    assert_eq!(a.status, 200, "{}", a.describe());
    let r = a.json();
    assert!(
        r["success"] == false && r["exit_code"] == -1,
        "the spec's timeout response: {}",
        brief(&r)
    );
    assert!(
        text(&r, "stderr").ends_with(TIMEOUT_STDERR),
        "{}",
        brief(&r)
    );
    let t = r["execution_time"].as_f64().unwrap_or(-1.0);
    assert!((1.0..3.0).contains(&t), "execution_time {t}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    assert_eq!(
        r["session"],
        json!({"id": sid, "state": "active"}),
        "{}",
        brief(&r)
    );
    let r = api.step(&sid, "print(x + 1)");
    assert_eq!(r["stdout"], "42\n", "{}", brief(&r));
    // And again: the interrupt handler is still in place.
    let r = api.call(&sid, "while True:\n    pass", 1.0).json();
    assert_eq!(r["session"]["state"], "active", "{}", brief(&r));
    let r = api.step(&sid, "print(x + 2)");
    assert_eq!(r["stdout"], "43\n");
    assert_eq!(api.delete(&sid).status, 204);
}

/// A call that ends the session: the response says `ended` with a reason, later requests
/// get 404 `session ended: ...`, and its processes are gone.
fn assert_call_ends_the_session(
    api: &Api,
    base: u32,
    before: &Baseline,
    code: &str,
    timeout: f64,
) -> Value {
    let sid = api.open(json!({}));
    api.step(&sid, "x = 1");
    let started = Instant::now();
    let a = api.call(&sid, code, timeout);
    let took = started.elapsed();
    assert_eq!(a.status, 200, "{}", a.describe());
    let r = a.json();
    assert_eq!(r["session"]["id"], sid.as_str(), "{}", brief(&r));
    assert_eq!(r["session"]["state"], "ended", "{}", brief(&r));
    let reason = text(&r["session"], "reason");
    assert!(!reason.is_empty(), "no reason: {}", brief(&r));
    assert!(
        took < Duration::from_secs_f64(timeout + 5.0),
        "answered after {took:?}"
    );
    let later = api.call(&sid, "print(x)", 10.0);
    let m = assert_ended_404(&later, "a call after the session ended");
    eprintln!("ended by {code:?}: reason {reason:?}, later: {m:?}");
    assert_ended_404(&api.get_session(&sid), "GET after the session ended");
    wait_clean(api.server, base, before, TEARDOWN_GRACE)
        .unwrap_or_else(|e| panic!("after {code:?} ended its session: {e}"));
    r
}

#[test]
fn an_uninterruptible_run_ends_the_session() {
    let (_one, base, server) = start(10, &["--scanner", "off"]);
    let before = baseline(&server, base);
    let api = Api::new(&server);
    let code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass";
    let r = assert_call_ends_the_session(&api, base, &before, code, 1.0);
    assert!(
        r["success"] == false && r["exit_code"] == -1 && text(&r, "stderr").contains("timeout"),
        "the spec's timeout response: {}",
        brief(&r)
    );
    let r = api.call(&api.open(json!({})), "print('next')", 10.0).json();
    assert_eq!(r["stdout"], "next\n", "a new session works: {}", brief(&r));
}

#[test]
fn a_run_that_ends_the_interpreter_ends_the_session() {
    let (_one, base, server) = start(11, &["--scanner", "off", "--memory-mib", "256"]);
    let before = baseline(&server, base);
    let api = Api::new(&server);
    assert_call_ends_the_session(&api, base, &before, "import os\nos._exit(3)", 10.0);
    let r = assert_call_ends_the_session(
        &api,
        base,
        &before,
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
        10.0,
    );
    assert_eq!(r["success"], false, "{}", brief(&r));
    let r = assert_call_ends_the_session(
        &api,
        base,
        &before,
        "b = []\nwhile True:\n    b.append(bytearray(16 << 20))",
        20.0,
    );
    assert!(
        r["success"] == false && text(&r, "stderr").contains("Memory limit exceeded (256 MiB)"),
        "{}",
        brief(&r)
    );
}

/// `exit()` and `sys.exit(n)` end the call with that status, as in a notebook, and keep the
/// session and its state (docs/files-and-sessions.md).
#[test]
fn exit_ends_the_call_and_keeps_the_session() {
    let (_one, _base, server) = start(20, &["--scanner", "off"]);
    let api = Api::new(&server);
    let sid = api.open(json!({}));
    api.step(&sid, "x = 5");
    for (code, status, stdout) in [
        ("print('before')\nexit()\nprint('after')", 0, "before\n"),
        ("import sys\nprint('three')\nsys.exit(3)", 3, "three\n"),
        ("import sys\nsys.exit(0)", 0, ""),
        ("raise SystemExit(7)", 7, ""),
    ] {
        let a = api.call(&sid, code, 10.0);
        assert_eq!(a.status, 200, "{code:?}: {}", a.describe());
        let r = a.json();
        assert_eq!(r["exit_code"], status, "{code:?}: {}", brief(&r));
        assert_eq!(r["stdout"], stdout, "{code:?}: {}", brief(&r));
        assert_eq!(
            r["session"],
            json!({"id": sid, "state": "active"}),
            "{code:?}: {}",
            brief(&r)
        );
    }
    let r = api.step(&sid, "x += 1\nprint(x)");
    assert_eq!(
        r["stdout"],
        "6\n",
        "the state outlived the exits: {}",
        brief(&r)
    );
    assert_eq!(api.get_session(&sid).json()["calls"], 6);
    assert_eq!(api.delete(&sid).status, 204);
}

// ---------------------------------------------------------------------------------------
// 5. Limits: 429, 409
// ---------------------------------------------------------------------------------------

fn expect_429(a: &Answer, names: &[&str]) {
    assert_eq!(a.status, 429, "{}", a.describe());
    let v = a.json();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    let m = a.message().to_lowercase();
    assert!(
        names.iter().any(|n| m.contains(n)),
        "the 429's message {m:?} names none of {names:?}"
    );
}

#[test]
fn sessions_per_key_are_capped() {
    let (_one, _base, server) = start(
        12,
        &[
            "--max-sessions-per-key",
            "2",
            "--operator-key",
            "k1",
            "--api-key",
            "k2",
        ],
    );
    let k1 = Api::with_key(&server, "k1");
    let k2 = Api::with_key(&server, "k2");
    // The body is optional.
    let first = k1.create(None);
    assert_eq!(first.status, 201, "{}", first.describe());
    let first = first.json()["id"].as_str().unwrap().to_string();
    let _second = k1.open(json!({}));
    let third = k1.create(Some(json!({})));
    expect_429(
        &third,
        &[
            "max_sessions_per_key",
            "max-sessions-per-key",
            "per key",
            "per-key",
        ],
    );
    // Another key has its own allowance.
    let other = k2.open(json!({}));
    // Closing one frees a place.
    assert_eq!(k1.delete(&first).status, 204);
    k1.open(json!({}));
    assert_eq!(k2.delete(&other).status, 204);
    let m = metrics(&k1);
    assert_eq!(metric(&m, "nsbox_sessions_created_total"), Some(4.0), "{m}");
    assert_eq!(metric(&m, "nsbox_sessions_active"), Some(2.0), "{m}");
    // k1, an operator key, sees the server; k2 only its own sessions (none left).
    let st = status(&k1);
    assert_eq!(st["sessions"]["active"], 2, "{st}");
    assert_eq!(st["sessions"]["created"], 4, "{st}");
    assert_eq!(st["sessions"]["ended"], 2, "{st}");
    let st = status(&k2);
    assert_eq!(
        (st["scope"].as_str(), st["sessions"]["active"].as_u64()),
        (Some("key"), Some(0)),
        "{st}"
    );
    let other = k2.open(json!({}));
    assert_eq!(status(&k2)["sessions"]["active"], 1);
    assert_eq!(k2.delete(&other).status, 204);
}

#[test]
fn sessions_in_all_are_capped() {
    let (_one, _base, server) = start(
        13,
        &["--max-sessions", "2", "--api-key", "k1", "--api-key", "k2"],
    );
    let k1 = Api::with_key(&server, "k1");
    let k2 = Api::with_key(&server, "k2");
    let a = k1.open(json!({}));
    k2.open(json!({}));
    for api in [&k1, &k2] {
        expect_429(
            &api.create(Some(json!({}))),
            &["max_sessions", "max-sessions", "sessions in all", "total"],
        );
    }
    assert_eq!(k1.delete(&a).status, 204);
    k2.open(json!({}));
}

#[test]
fn the_memory_budget_is_capped() {
    // Each session reserves --memory-mib (256): one fits in 400 MiB, two do not.
    let (_one, _base, server) = start(
        14,
        &["--memory-mib", "256", "--session-memory-budget-mib", "400"],
    );
    let api = Api::new(&server);
    let a = api.open(json!({}));
    let s = api.get_session(&a).json();
    assert_eq!(s["memory_limit_bytes"], 256 * MIB, "{s}");
    expect_429(
        &api.create(Some(json!({}))),
        &[
            "session_memory_budget_mib",
            "session-memory-budget-mib",
            "memory budget",
        ],
    );
    assert_eq!(api.delete(&a).status, 204);
    let b = api.open(json!({}));
    let r = api.step(&b, "print('fits')");
    assert_eq!(r["stdout"], "fits\n");
}

#[test]
fn a_busy_session_answers_409_at_once() {
    let (_one, base, server) = start(15, &["--scanner", "off"]);
    let api = Api::new(&server);
    let sid = api.open(json!({}));
    api.step(&sid, "x = 1");
    std::thread::scope(|s| {
        let long =
            s.spawn(|| api.call(&sid, "import time\ntime.sleep(3)\nprint('slept', x)", 20.0));
        // The long call is running once the session's interpreter works on it.
        std::thread::sleep(Duration::from_millis(1000));
        let busy = api.call(&sid, "print('second')", 10.0);
        assert_eq!(busy.status, 409, "{}", busy.describe());
        assert!(
            busy.message().contains("session busy"),
            "{}",
            busy.describe()
        );
        assert!(
            busy.elapsed < Duration::from_millis(1000),
            "the 409 took {:?}: it must not wait",
            busy.elapsed
        );
        for (what, a) in [
            ("list files", api.list_files(&sid)),
            ("get a file", api.get_file(&sid, "x.txt")),
            ("put a file", api.put_file(&sid, "x.txt", b"x")),
            // A status, before any stream starts, not a 200 with an `error` event.
            ("a streamed call", api.call_streamed(&sid, "print('third')")),
        ] {
            assert_eq!(a.status, 409, "{what}: {}", a.describe());
            assert!(
                a.message().contains("session busy"),
                "{what}: {}",
                a.describe()
            );
        }
        let long = long.join().unwrap();
        assert_eq!(long.status, 200, "{}", long.describe());
        assert_eq!(long.json()["stdout"], "slept 1\n");
    });
    let r = api.step(&sid, "print('after', x)");
    assert_eq!(r["stdout"], "after 1\n");
    // A streamed call in a free session streams; in an unknown or ended one, 404.
    let a = api.call_streamed(&sid, "print('streamed')");
    assert_eq!(a.status, 200, "{}", a.describe());
    assert!(
        a.content_type.starts_with("text/event-stream"),
        "{}",
        a.describe()
    );
    assert_eq!(api.delete(&sid).status, 204);
    for id in [sid.as_str(), "sess_00000000000000000000000000000000"] {
        let a = api.call_streamed(id, "print('gone')");
        assert_eq!(a.status, 404, "{id}: {}", a.describe());
        assert!(
            a.content_type.starts_with("application/json"),
            "{}",
            a.describe()
        );
    }
    let _ = base;
}

// ---------------------------------------------------------------------------------------
// 6. Load, shutdown
// ---------------------------------------------------------------------------------------

#[test]
fn fifty_sessions_of_ten_calls_at_concurrency_eight_leave_nothing_behind() {
    const SESSIONS: usize = 50;
    const CALLS: usize = 10;
    const CONCURRENCY: usize = 8;
    let (_one, base, server) = start(16, &["--scanner", "off"]);
    let before = baseline(&server, base);
    let mounts_before = host_mounts();
    let pid = server.pid() as i32;
    let rss_before = rss_kib(pid);
    let tree_before = tree_rss_kib(pid);
    let api = Api::new(&server);

    let next = AtomicUsize::new(0);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let started = Instant::now();
    let latencies: Mutex<Vec<Duration>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..CONCURRENCY {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                if k >= SESSIONS {
                    break;
                }
                if let Err(e) = one_session(&api, k, CALLS, &latencies) {
                    failures.lock().unwrap().push(format!("session {k}: {e}"));
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let mut lat = latencies.into_inner().unwrap();
    lat.sort();
    let p = |q: f64| lat.get(((lat.len() as f64 - 1.0) * q) as usize).copied();
    eprintln!(
        "{SESSIONS} sessions x {CALLS} calls at concurrency {CONCURRENCY} in {:.1} s; call p50 {:?} p99 {:?}",
        elapsed.as_secs_f64(),
        p(0.5),
        p(0.99)
    );
    let mut problems = failures.into_inner().unwrap();

    if let Err(e) = wait_clean(&server, base, &before, TEARDOWN_GRACE) {
        problems.push(e);
    }
    let added = mounts_added(&mounts_before, &host_mounts());
    if !added.is_empty() {
        problems.push(format!("mounts added to the host: {added:?}"));
    }
    let m = metrics(&api);
    for (series, want) in [
        ("nsbox_sessions_active", 0.0),
        ("nsbox_sessions_created_total", SESSIONS as f64),
        (
            "nsbox_sessions_ended_total{reason=\"closed\"}",
            SESSIONS as f64,
        ),
        ("nsbox_sessions_memory_bytes", 0.0),
    ] {
        let got = metric(&m, series);
        if got != Some(want) {
            problems.push(format!("{series}: {got:?}, expected {want}"));
        }
    }
    let st = status(&api);
    if st["sessions"]["active"] != 0 {
        problems.push(format!("status after the load: {}", st["sessions"]));
    }
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = rss_kib(pid);
    let tree_after = tree_rss_kib(pid);
    eprintln!(
        "server VmRSS {rss_before} KiB before, {rss_after} KiB after; tree {tree_before} KiB before, {tree_after} KiB after"
    );
    if rss_after > rss_before + 50 * 1024 {
        problems.push(format!(
            "server VmRSS grew from {rss_before} KiB to {rss_after} KiB"
        ));
    }
    if tree_after > tree_before + 100 * 1024 {
        problems.push(format!(
            "the server's process tree grew from {tree_before} KiB to {tree_after} KiB"
        ));
    }
    let sid = api.open(json!({}));
    let r = api.call(&sid, "print('still serving')", 10.0);
    if r.status != 200 || r.json()["stdout"] != "still serving\n" {
        problems.push(format!("a session after the load: {}", r.describe()));
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\nserver log:\n{}",
        problems.len(),
        problems.join("\n"),
        log_tail(&server)
    );
}

/// One session of the load: a tag and a counter kept across `calls` calls, then closed.
fn one_session(
    api: &Api,
    k: usize,
    calls: usize,
    latencies: &Mutex<Vec<Duration>>,
) -> Result<(), String> {
    let created = api.try_send(Method::POST, "/v1/sessions", Some(Body::Json(json!({}))))?;
    if created.status != 201 {
        return Err(format!("create: {}", created.describe()));
    }
    let sid = created.json()["id"].as_str().unwrap_or("").to_string();
    for i in 1..=calls {
        let code = if i == 1 {
            format!("tag = 'S{k}'\nn = 1\nprint(tag, n)")
        } else {
            "n += 1\nprint(tag, n)".to_string()
        };
        let body = json!({"code": code, "lang": "python", "timeout": 30, "session_id": sid});
        let a = api.try_send(Method::POST, "/v1/tools/code", Some(Body::Json(body)))?;
        latencies.lock().unwrap().push(a.elapsed);
        if a.status != 200 {
            return Err(format!("call {i}: {}", a.describe()));
        }
        let v = a.json();
        let want = format!("S{k} {i}\n");
        if v["stdout"] != want.as_str() || v["session"]["state"] != "active" {
            return Err(format!("call {i}: expected {want:?}: {}", brief(&v)));
        }
    }
    let d = api.try_send(Method::DELETE, &format!("/v1/sessions/{sid}"), None)?;
    if d.status != 204 {
        return Err(format!("delete: {}", d.describe()));
    }
    Ok(())
}

#[test]
fn sigterm_closes_open_sessions_and_leaves_nothing() {
    let (_one, base, mut server) = start(17, &["--scanner", "off"]);
    let pid = server.pid();
    let srv = server_cgroup_dirs(pid);
    let api = Api::new(&server);
    for i in 0..3 {
        let sid = api.open(json!({}));
        api.step(&sid, &format!("x = {i}"));
    }
    assert!(
        !run_processes_of_uid(base + NOBODY).is_empty(),
        "three open sessions have processes"
    );
    let signalled = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = server
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the server still runs 15 s after SIGTERM with sessions open"));
    eprintln!(
        "server exited {exit} {:.2} s after SIGTERM",
        signalled.elapsed().as_secs_f64()
    );
    assert!(exit.success(), "server exit: {exit}\n{}", log_tail(&server));
    let gone = wait_until(TEARDOWN_GRACE, || {
        processes_of_uid(base + NOBODY).is_empty() && processes_of_uid(base).is_empty()
    });
    assert!(
        gone,
        "processes left after the server exited: {} / {}",
        describe_pids(&processes_of_uid(base + NOBODY)),
        describe_pids(&processes_of_uid(base))
    );
    for dir in &srv {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    let log = server.log.lock().unwrap().clone();
    assert!(!log.contains("panicked"), "{log}");
}

// ---------------------------------------------------------------------------------------
// 7. The session file endpoints
// ---------------------------------------------------------------------------------------

#[test]
fn session_file_endpoints_check_paths_and_sizes() {
    let (_one, _base, server) = start(18, &["--scanner", "off", "--file-max-mib", "1"]);
    let api = Api::new(&server);
    let sid = api.open(json!({}));
    // Percent-encoded traversal and odd paths never reach outside the working directory.
    for path in [
        "..%2Fescape.txt",
        "a/..%2F..%2Fb",
        "%2Fetc%2Fpasswd",
        "a//b",
        "dir/",
        "nul%00x",
    ] {
        let a = api.put_file(&sid, path, b"x");
        assert!(
            a.status == 400 || a.status == 404,
            "PUT {path}: {}",
            a.describe()
        );
        let a = api.get_file(&sid, path);
        assert!(
            a.status == 400 || a.status == 404,
            "GET {path}: {}",
            a.describe()
        );
    }
    let big = api.put_file(&sid, "big.bin", &vec![0u8; MIB + 1]);
    assert_eq!(big.status, 413, "{}", big.describe());
    let exact = api.put_file(&sid, "exact.bin", &vec![1u8; MIB]);
    assert_eq!(exact.status, 201, "{}", exact.describe());
    // An upload replaces the file and the code sees it at once.
    assert_eq!(api.put_file(&sid, "d/n.txt", b"one").status, 201);
    assert_eq!(api.put_file(&sid, "d/n.txt", b"two!").status, 201);
    let r = api.step(
        &sid,
        "import os\nprint(open('d/n.txt').read(), os.path.getsize('exact.bin'), sorted(os.listdir('.')))",
    );
    assert_eq!(
        r["stdout"],
        format!("two! {MIB} ['d', 'exact.bin']\n"),
        "{}",
        brief(&r)
    );
    let list = api.list_files(&sid).json();
    assert_eq!(paths(&list["files"]), ["d/n.txt", "exact.bin"], "{list}");
    let got = api.get_file(&sid, "exact.bin");
    assert_eq!(got.bytes.len(), MIB);
    assert!(
        got.content_type.starts_with("application/octet-stream"),
        "{}",
        got.content_type
    );
    // A directory is not a file.
    let dir = api.get_file(&sid, "d");
    assert!(dir.status == 404 || dir.status == 400, "{}", dir.describe());
    // Files written by a call are there too, and a changed input comes back from the call
    // that changed it.
    let r = api.step(
        &sid,
        "open('d/n.txt', 'a').write('+')\nopen('made.txt', 'w').write('m')",
    );
    assert_eq!(paths(&r["files"]), ["d/n.txt", "made.txt"], "{}", brief(&r));
    assert_file(&r["files"], "d/n.txt", b"two!+", "text/plain");
    assert_eq!(api.get_file(&sid, "made.txt").bytes, b"m");
    assert_eq!(api.delete(&sid).status, 204);
}

/// What the code plants in a session's working directory (a link to `/`, a link to a
/// directory, a FIFO) stops a file request at once: an upload is written beneath the
/// working directory with no link followed at any component, into regular files only, and
/// refused (400) otherwise without waiting on a FIFO; the session lives. What a call
/// skipped is said once, in `skipped_files`, never in stderr.
#[test]
fn planted_links_and_fifos_stop_uploads_at_once() {
    let (_one, _base, server) = start(21, &["--scanner", "off"]);
    let api = Api::new(&server);
    let sid = api.open(json!({}));
    let planted = api.step(
        &sid,
        "import os\nos.symlink('/', 'rootdir')\nos.symlink('/tmp', 'tmplink')\n\
         os.mkfifo('fifo')\nos.makedirs('real/sub')\nos.symlink('/etc', 'real/etc')\n\
         open('/tmp/elsewhere.txt', 'w').write('keep')\nos.link('/tmp/elsewhere.txt', 'hard.txt')\n\
         open('own.txt', 'w').write('mine')",
    );
    assert_eq!(
        paths(&planted["files"]),
        ["hard.txt", "own.txt"],
        "{}",
        brief(&planted)
    );
    assert_eq!(
        planted["skipped_files"],
        json!([
            {"path": "fifo", "reason": "not_regular_file"},
            {"path": "real/etc", "reason": "symlink"},
            {"path": "rootdir", "reason": "symlink"},
            {"path": "tmplink", "reason": "symlink"},
        ]),
        "{}",
        brief(&planted)
    );
    // A later call reports nothing it did not create or change (`step` checks stderr).
    let later = api.step(&sid, "print('again')");
    assert!(later.get("skipped_files").is_none(), "{}", brief(&later));

    for path in [
        "rootdir/tmp/outside.txt",
        "rootdir/tmp/work/own.txt",
        "tmplink/outside.txt",
        "real/etc/planted.txt",
        "rootdir",
        "fifo",
    ] {
        let a = api.put_file(&sid, path, b"x");
        assert_eq!(a.status, 400, "PUT {path}: {}", a.describe());
        assert!(
            a.elapsed < Duration::from_secs(5),
            "PUT {path} took {:?}",
            a.elapsed
        );
        let s = api.get_session(&sid);
        assert_eq!(s.status, 200, "after PUT {path}: {}", s.describe());
        assert_eq!(s.json()["state"], "active", "after PUT {path}");
    }
    // A call's input files are written the same way.
    let a = api.send(
        Method::POST,
        "/v1/tools/code",
        Some(Body::Json(json!({
            "code": "print('ran')", "lang": "python", "session_id": sid,
            "files": [{"path": "rootdir/tmp/planted.txt", "content": "x"}],
        }))),
    );
    assert_eq!(a.status, 200, "{}", a.describe());
    let v = a.json();
    assert!(
        v["exit_code"] == 1
            && text(&v, "stderr").contains("the input files could not be written")
            && v["session"]["state"] == "active",
        "{}",
        brief(&v)
    );
    // Nothing was written where the links point, and the planted entries are as they were.
    let r = api.step(
        &sid,
        "import os, stat\nprint(os.path.exists('/tmp/outside.txt'), os.path.exists('/tmp/planted.txt'), \
         open('own.txt').read(), stat.S_ISFIFO(os.lstat('fifo').st_mode), os.path.islink('rootdir'))",
    );
    assert_eq!(r["stdout"], "False False mine True True\n", "{}", brief(&r));
    // An upload onto a hard link replaces the file at its path, not the one elsewhere.
    let a = api.put_file(&sid, "hard.txt", b"new");
    assert_eq!(a.status, 201, "{}", a.describe());
    let r = api.step(
        &sid,
        "print(open('/tmp/elsewhere.txt').read(), open('hard.txt').read())",
    );
    assert_eq!(r["stdout"], "keep new\n", "{}", brief(&r));
    // Uploads into real directories, new ones included, still work.
    let a = api.put_file(&sid, "real/sub/new/deeper/f.txt", b"made");
    assert_eq!(a.status, 201, "{}", a.describe());
    assert_eq!(
        api.get_file(&sid, "real/sub/new/deeper/f.txt").bytes,
        b"made"
    );
    assert_eq!(api.delete(&sid).status, 204);
}
