//! The HTTP layer in process, without root: the router over the run service with a fake runner,
//! driven by `tower::ServiceExt::oneshot` (axum's testing example). Status codes, the error
//! shape, request ids, admission, and a property test that no input makes it answer 500.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{json, Value};
use tower::ServiceExt;

use nsbox::api::{auth::Keys, body::Bodies, router, ui::Ui, AppState};
use nsbox::config::{KeyEntry, ScannerMode};
use nsbox::host::Isolation;
use nsbox::sandbox::namespaces::IdMappingReport;
use nsbox::sandbox::warm::Template;
use nsbox::sandbox::{Limits, OutputFile, RunEvent, RunOutcome, RunRequest, Termination};
use nsbox::service::catalog::Catalog;
use nsbox::service::files::FileLimits;
use nsbox::service::runner::{Events, RunFuture, Runner};
use nsbox::service::session_ids::NodeTag;
use nsbox::service::sessions::SessionSettings;
use nsbox::service::{RunService, Settings};

/// Answers every run with `print(2**2)`'s outcome after `delay`, counting the runs.
struct FakeRunner {
    ready: bool,
    delay: Duration,
    runs: AtomicUsize,
}

impl Runner for FakeRunner {
    fn run(&self, request: RunRequest, events: Option<Events>) -> RunFuture<'_> {
        Box::pin(async move {
            self.runs.fetch_add(1, Ordering::SeqCst);
            if let Some(events) = events {
                let text = "streamed\n".to_string();
                events.send(RunEvent::Stdout { text }).unwrap();
            }
            tokio::time::sleep(self.delay).await;
            Ok(RunOutcome {
                termination: Termination::Exited { code: 0 },
                stdout: format!("{} bytes of code\n", request.code.len()),
                stderr: String::new(),
                plots: vec![],
                cut_short: vec![],
                wall_ms: 1,
                peak_memory_bytes: None,
                warm: false,
                // Input files come back as if the code had changed them all.
                files: match request.collect_files {
                    Some(_) => request
                        .files
                        .iter()
                        .map(|f| OutputFile {
                            path: f.path.clone(),
                            size: 0,
                            content_base64: Some(f.content_base64.clone()),
                            truncated: false,
                        })
                        .collect(),
                    None => vec![],
                },
                skipped_files: vec![],
                memory_bytes: None,
                session_ended: None,
                results: Vec::new(),
                error: None,
            })
        })
    }

    fn is_ready(&self) -> bool {
        self.ready
    }

    fn ready_templates(&self) -> Vec<Template> {
        Vec::new()
    }

    fn restarts(&self) -> (u64, u64) {
        (0, 0)
    }
}

struct App {
    router: Router,
    runner: Arc<FakeRunner>,
    service: Arc<RunService>,
    /// Kept so that nothing cancels the runs.
    _cancel: tokio::sync::watch::Sender<bool>,
}

struct Options {
    keys: Vec<String>,
    operator_keys: Vec<String>,
    ready: bool,
    delay: Duration,
    max_running: usize,
    max_queue: usize,
    body_timeout: Duration,
    /// The web page at `/`, with Plotly's script from this root filesystem.
    ui: Option<std::path::PathBuf>,
    scanner: ScannerMode,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            keys: Vec::new(),
            operator_keys: Vec::new(),
            ready: true,
            delay: Duration::ZERO,
            max_running: 4,
            max_queue: 4,
            body_timeout: Duration::from_secs(30),
            ui: None,
            scanner: ScannerMode::Enforce,
        }
    }
}

/// The node tag of the app's session ids.
const NODE: &str = "node-a";

/// What an id this node does not know answers.
const NOT_FOUND: &str = "session not found on node node-a, up since ";

fn app(o: Options) -> App {
    let entry = |key: &String, operator| KeyEntry {
        key: key.clone(),
        weight: 1,
        operator,
        egress_allow: None,
    };
    let keys = Keys::with_options(
        &o.keys
            .iter()
            .map(|k| entry(k, false))
            .chain(o.operator_keys.iter().map(|k| entry(k, true)))
            .collect::<Vec<_>>(),
    );
    let runner = Arc::new(FakeRunner {
        ready: o.ready,
        delay: o.delay,
        runs: AtomicUsize::new(0),
    });
    let (cancel, cancelled) = tokio::sync::watch::channel(false);
    let catalog: Catalog = serde_json::from_value(json!({
        "python": "3.11.2",
        "libraries": {"numpy": "2.4.6", "pandas": "3.1.0"},
    }))
    .unwrap();
    let service = RunService::new(
        Settings {
            limits: Limits::default(),
            default_timeout_s: 30.0,
            max_timeout_s: 300.0,
            scanner: o.scanner,
            warm: false,
            max_running: o.max_running,
            max_queue: o.max_queue,
            stream_backlog_events: nsbox::service::events::DEFAULT_MAX_EVENTS,
            results: Default::default(),
            max_running_per_user: Some(o.max_running),
            key_weights: keys.weights(),
            mcp_attach_bytes: 256 << 10,
            mcp_text_chars: 20_000,
            egress: None,
            packages: None,
            files: FileLimits {
                max_count: 4,
                max_file_bytes: 1 << 10,
                max_total_bytes: 2 << 10,
            },
            sessions: SessionSettings {
                node: NodeTag::new(NODE).unwrap(),
                ..SessionSettings::default()
            },
        },
        runner.clone(),
        catalog,
        cancelled,
    );
    let service = Arc::new(service);
    let state = AppState {
        service: service.clone(),
        isolation: Arc::new(Isolation {
            namespaces: vec!["user"],
            cgroup: None,
            cgroup_attach: None,
            seccomp: true,
            rlimits: true,
            warm: false,
            id_mapping: IdMappingReport {
                mode: "host-root",
                run_host_uid: 1_000_065_534,
                description: String::new(),
            },
            warnings: Vec::new(),
        }),
        keys,
        bodies: Bodies::new(1 << 20, 64 << 10, o.body_timeout, 2),
        ui: match &o.ui {
            Some(rootfs) => Ui::new(rootfs),
            None => Ui::off(),
        },
    };
    App {
        router: router(state),
        runner,
        service,
        _cancel: cancel,
    }
}

fn post(body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri("/v1/tools/code")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

fn spec_request() -> Request<Body> {
    post(json!({"code": "print(2**2)", "lang": "python"}).to_string())
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }

    /// Asserts the API's one error shape and returns its message.
    fn error(&self, status: StatusCode) -> String {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        let error = v["error"].as_object().expect("an `error` object");
        assert_eq!(error.len(), 2, "{v}");
        assert!(error["type"].is_string(), "{v}");
        error["message"].as_str().expect("a message").to_string()
    }
}

async fn send(router: &Router, request: Request<Body>) -> Answer {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn the_spec_request_gets_the_spec_response() {
    let app = app(Options::default());
    let a = send(&app.router, spec_request()).await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    let mut spec = [
        "success",
        "stdout",
        "stderr",
        "exit_code",
        "execution_time",
        "security_checked",
        "violations",
        "plots",
    ];
    spec.sort();
    assert_eq!(keys, spec, "exactly the spec's fields");
    assert_eq!(v["success"], true);
    assert_eq!(v["stdout"], "11 bytes of code\n");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(app.runner.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_event_stream_carries_the_output_then_one_result() {
    let app = app(Options::default());
    let mut request = spec_request();
    request
        .headers_mut()
        .insert(header::ACCEPT, "text/event-stream".parse().unwrap());
    let a = send(&app.router, request).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = String::from_utf8(a.body).unwrap();
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events, ["stdout", "result"], "{body}");
    assert!(body.contains(r#"data: {"text":"streamed\n"}"#), "{body}");
    // Bad input is refused before any stream starts.
    let mut bad = post(json!({"code": " ", "lang": "python"}).to_string());
    bad.headers_mut()
        .insert(header::ACCEPT, "text/event-stream".parse().unwrap());
    send(&app.router, bad).await.error(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_scanner_refuses_before_anything_runs() {
    let app = app(Options::default());
    let a = send(
        &app.router,
        post(json!({"code": "import os\nos.system('ls -la')", "lang": "python"}).to_string()),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["success"], false);
    assert_eq!(v["exit_code"], -1);
    assert_eq!(v["stderr"], "Security violations detected");
    assert_eq!(
        v["violations"],
        json!(["Operating system interface", "os.system line execution"])
    );
    assert_eq!(app.runner.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn bad_input_is_400_with_a_clear_message() {
    let app = app(Options::default());
    let cases = [
        ("not json".to_string(), "not valid JSON"),
        ("[1]".to_string(), "JSON object"),
        (json!({"lang": "python"}).to_string(), "`code` is required"),
        (json!({"code": "", "lang": "python"}).to_string(), "empty"),
        (
            json!({"code": "a\u{0}b", "lang": "python"}).to_string(),
            "NUL",
        ),
        (
            json!({"code": "x", "lang": "ruby"}).to_string(),
            "unsupported `lang`",
        ),
        (
            json!({"code": "x", "lang": "python", "timeout": 0}).to_string(),
            "more than 0",
        ),
        (
            json!({"code": "x", "lang": "python", "timeout": 1e300}).to_string(),
            "at most 300",
        ),
        (
            json!({"code": "x", "lang": "python", "libraries": ["tensorflow"]}).to_string(),
            "unknown libraries: tensorflow",
        ),
        (String::new(), "not valid JSON"),
    ];
    for (body, needle) in cases {
        let message = send(&app.router, post(body.clone()))
            .await
            .error(StatusCode::BAD_REQUEST);
        assert!(message.contains(needle), "{body}: {message}");
    }
    assert_eq!(app.runner.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn files_go_in_and_come_back_only_when_asked_for() {
    let app = app(Options::default());
    let a = send(
        &app.router,
        post(
            json!({"code": "x", "lang": "python", "files": [
                {"path": "data/a.csv", "content": "x,y\n"},
                {"path": "b.bin", "content_base64": "AAE="},
            ]})
            .to_string(),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    let files = v["files"].as_array().expect("`files` in the answer");
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["path"], "data/a.csv");
    assert_eq!(files[0]["mime_type"], "text/csv");
    assert_eq!(files[0]["content_base64"], "eCx5Cg==");
    assert_eq!(files[1]["mime_type"], "application/octet-stream");
    assert!(files[0].get("truncated").is_none(), "only said when true");
    assert!(v.get("session").is_none());
    let empty = send(
        &app.router,
        post(json!({"code": "x", "lang": "python", "files": []}).to_string()),
    )
    .await;
    assert_eq!(empty.json()["files"], json!([]));
}

#[tokio::test]
async fn bad_files_are_400_or_413_naming_the_file() {
    let app = app(Options::default());
    let file = |f: Value| json!({"code": "x", "lang": "python", "files": [f]}).to_string();
    let bad = [
        (
            file(json!({"path": "../etc/passwd", "content": ""})),
            "\"../etc/passwd\"",
        ),
        (file(json!({"path": "/abs", "content": ""})), "absolute"),
        (
            file(json!({"path": "a//b", "content": ""})),
            "empty component",
        ),
        (file(json!({"path": "a\u{0}b", "content": ""})), "NUL"),
        (file(json!({"path": "a"})), "needs `content`"),
        (
            file(json!({"path": "a", "content": "", "content_base64": ""})),
            "both",
        ),
        (
            file(json!({"path": "a", "contents": ""})),
            "unknown field `contents`",
        ),
        (file(json!({"path": "a", "content_base64": "!!"})), "base64"),
        (file(json!("a.csv")), "must be an object"),
        (
            json!({"code": "x", "lang": "python", "files": {"a": 1}}).to_string(),
            "array",
        ),
        (
            json!({"code": "x", "lang": "python", "files": [
                {"path": "a", "content": ""}, {"path": "a", "content": ""}]})
            .to_string(),
            "twice",
        ),
        (
            json!({"code": "x", "lang": "python", "session_id": 5}).to_string(),
            "`session_id` must be a string",
        ),
    ];
    for (body, needle) in bad {
        let message = send(&app.router, post(body.clone()))
            .await
            .error(StatusCode::BAD_REQUEST);
        assert!(message.contains(needle), "{body}: {message}");
    }
    let big = file(json!({"path": "big.txt", "content": "x".repeat(1025)}));
    let message = send(&app.router, post(big))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE);
    assert!(message.contains("big.txt"), "{message}");
    let many: Vec<Value> = (0..5)
        .map(|i| json!({"path": format!("f{i}"), "content": ""}))
        .collect();
    let body = json!({"code": "x", "lang": "python", "files": many}).to_string();
    let message = send(&app.router, post(body))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE);
    assert!(message.contains("5 files"), "{message}");
    assert_eq!(app.runner.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn sessions_need_a_runner_that_has_them_and_unknown_ones_are_404() {
    let app = app(Options::default());
    let session = |method: Method, uri: &str, body: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let a = send(&app.router, session(Method::POST, "/v1/sessions", "")).await;
    assert!(a
        .error(StatusCode::SERVICE_UNAVAILABLE)
        .contains("sessions"));
    let a = send(
        &app.router,
        session(Method::POST, "/v1/sessions", r#"{"ttl": 5}"#),
    )
    .await;
    assert!(a
        .error(StatusCode::BAD_REQUEST)
        .contains("unknown field `ttl`"));
    for (method, uri) in [
        (Method::GET, "/v1/sessions/sess_0"),
        (Method::DELETE, "/v1/sessions/sess_0"),
        (Method::GET, "/v1/sessions/sess_0/files"),
        (Method::GET, "/v1/sessions/sess_0/files/a/b.csv"),
        (Method::PUT, "/v1/sessions/sess_0/files/a.csv"),
    ] {
        let a = send(&app.router, session(method.clone(), uri, "")).await;
        let m = a.error(StatusCode::NOT_FOUND);
        assert!(m.starts_with(NOT_FOUND), "{method} {uri}: {m}");
    }
    let a = send(
        &app.router,
        post(json!({"code": "x", "lang": "python", "session_id": "sess_0"}).to_string()),
    )
    .await;
    let m = a.error(StatusCode::NOT_FOUND);
    assert!(m.starts_with(NOT_FOUND), "{m}");
    // Streamed, too: a status before the stream, not a 200 with an `error` event.
    let mut streamed =
        post(json!({"code": "x", "lang": "python", "session_id": "sess_0"}).to_string());
    streamed
        .headers_mut()
        .insert(header::ACCEPT, "text/event-stream".parse().unwrap());
    let a = send(&app.router, streamed).await;
    let m = a.error(StatusCode::NOT_FOUND);
    assert!(m.starts_with(NOT_FOUND), "{m}");
}

/// Issue 26: a session lives on the node its id names. Behind a load balancer that did not
/// route a request there (its node is gone, or the balancer does not read ids), another
/// node must say so, on every route that takes a session id, rather than answer as for an
/// id that never existed.
#[tokio::test]
async fn ids_of_another_node_are_misdirected_on_every_route() {
    let app = app(Options::default());
    let theirs = "sess_node-b_0123456789abcdef0123456789abcdef";
    let check = |what: &str, a: Answer| {
        let m = a.error(StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(a.json()["error"]["type"], "misdirected_request", "{what}");
        assert!(
            m.starts_with("session belongs to node node-b, and this is node node-a"),
            "{what}: {m}"
        );
    };
    for (method, uri) in [
        (Method::GET, format!("/v1/sessions/{theirs}")),
        (Method::DELETE, format!("/v1/sessions/{theirs}")),
        (Method::GET, format!("/v1/sessions/{theirs}/files")),
        (Method::GET, format!("/v1/sessions/{theirs}/files/a.csv")),
        (Method::PUT, format!("/v1/sessions/{theirs}/files/a.csv")),
    ] {
        let request = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap();
        check(&format!("{method} {uri}"), send(&app.router, request).await);
    }
    let call = json!({"code": "x", "lang": "python", "session_id": theirs}).to_string();
    check("a call", send(&app.router, post(call.clone())).await);
    let mut streamed = post(call);
    streamed
        .headers_mut()
        .insert(header::ACCEPT, "text/event-stream".parse().unwrap());
    check("a streamed call", send(&app.router, streamed).await);
    assert_eq!(app.runner.runs.load(Ordering::SeqCst), 0, "nothing ran");

    // Over MCP, a tool result the model can read, naming both nodes.
    for (tool, arguments) in [
        (
            "run_python",
            json!({"code": "print(1)", "session_id": theirs}),
        ),
        ("list_files", json!({"session_id": theirs})),
    ] {
        let body = json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        });
        let v = send(&app.router, mcp_post(body.to_string())).await.json();
        assert_eq!(v["result"]["isError"], true, "{tool}: {v}");
        let text = v["result"]["content"][0]["text"].as_str().unwrap();
        assert!(
            text.starts_with("session belongs to node node-b, and this is node node-a"),
            "{tool}: {text}"
        );
    }
}

#[tokio::test]
async fn keys_are_required_when_configured() {
    let app = app(Options {
        keys: vec!["s3cret".into()],
        ..Options::default()
    });
    let message = send(&app.router, spec_request())
        .await
        .error(StatusCode::UNAUTHORIZED);
    assert!(message.contains("missing API key"), "{message}");
    let mut wrong = spec_request();
    wrong
        .headers_mut()
        .insert(header::AUTHORIZATION, "Bearer guess".parse().unwrap());
    let message = send(&app.router, wrong)
        .await
        .error(StatusCode::UNAUTHORIZED);
    assert_eq!(message, "invalid API key");
    let mut right = spec_request();
    right
        .headers_mut()
        .insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
    assert_eq!(send(&app.router, right).await.status, StatusCode::OK);
    // Health stays open to probes and load balancers.
    let health = Request::get("/v1/health").body(Body::empty()).unwrap();
    assert_eq!(send(&app.router, health).await.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let app = app(Options::default());
    let a = send(
        &app.router,
        Request::get("/v2/nothing").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(a.error(StatusCode::NOT_FOUND), "no such endpoint");
    let a = send(
        &app.router,
        Request::get("/v1/tools/code").body(Body::empty()).unwrap(),
    )
    .await;
    a.error(StatusCode::METHOD_NOT_ALLOWED);
    let a = send(
        &app.router,
        Request::post("/v1/health").body(Body::empty()).unwrap(),
    )
    .await;
    a.error(StatusCode::METHOD_NOT_ALLOWED);
    // A keyless server's Content-Type rule is for the methods that take a body: another
    // method is still 405, whatever its type.
    for (method, uri) in [
        (Method::POST, "/v1/status"),
        (Method::POST, "/v1/tools/code/libraries"),
        (Method::PUT, "/v1/tools/code"),
        (Method::POST, "/v1/sessions/sess_0"),
    ] {
        let a = send(
            &app.router,
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        a.error(StatusCode::METHOD_NOT_ALLOWED);
    }
}

#[tokio::test]
async fn oversize_is_413_and_wrong_content_type_415() {
    let app = app(Options::default());
    let long = json!({"code": "a".repeat(50_001), "lang": "python"}).to_string();
    let message = send(&app.router, post(long))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE);
    assert!(message.contains("50000"), "{message}");
    let huge = json!({"code": "a", "lang": "python", "pad": "x".repeat(2 << 20)}).to_string();
    let message = send(&app.router, post(huge))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE);
    assert!(message.contains("exceeds"), "{message}");
    let mut form = spec_request();
    form.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    let message = send(&app.router, form)
        .await
        .error(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(message.contains("application/json"), "{message}");
    assert_eq!(app.runner.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_full_queue_is_429_with_retry_after() {
    let app = app(Options {
        delay: Duration::from_secs(30),
        max_running: 1,
        max_queue: 0,
        ..Options::default()
    });
    let holder = tokio::spawn(send_owned(app.router.clone(), spec_request()));
    while app.runner.runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let a = send(&app.router, spec_request()).await;
    let message = a.error(StatusCode::TOO_MANY_REQUESTS);
    assert!(message.contains("retry"), "{message}");
    assert!(a.headers.contains_key(header::RETRY_AFTER));
    holder.abort();
}

async fn send_owned(router: Router, request: Request<Body>) -> Answer {
    send(&router, request).await
}

fn with_key(key: &str, mut request: Request<Body>) -> Request<Body> {
    let value = format!("Bearer {key}").parse().unwrap();
    request.headers_mut().insert(header::AUTHORIZATION, value);
    request
}

/// Key A sends `requests` slow runs at once; returns when `running` of them run and every
/// other one is queued or answered, so another key's request comes after all of them.
async fn flood_from_key_a(
    app: &App,
    requests: usize,
    running: usize,
) -> Vec<tokio::task::JoinHandle<Answer>> {
    let flood: Vec<_> = (0..requests)
        .map(|_| {
            tokio::spawn(send_owned(
                app.router.clone(),
                with_key("key-a", spec_request()),
            ))
        })
        .collect();
    loop {
        let answered = flood.iter().filter(|t| t.is_finished()).count();
        if app.runner.runs.load(Ordering::SeqCst) == running
            && app.service.queued() + answered == requests - running
        {
            return flood;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Issue 28: key A sending more slow runs than the server has slots and queue leaves key
/// B's request room: B is served (after one of A's runs at worst), never told 429.
#[tokio::test]
async fn a_key_flooding_the_server_leaves_room_for_another_key() {
    let app = app(Options {
        keys: vec!["key-a".into(), "key-b".into()],
        delay: Duration::from_millis(300),
        max_running: 4,
        max_queue: 4,
        ..Options::default()
    });
    let flood = flood_from_key_a(&app, 8, 4).await;
    let b = send(&app.router, with_key("key-b", spec_request())).await;
    assert_eq!(
        b.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&b.body)
    );
    let mut refused = 0;
    for task in flood {
        let a = task.await.unwrap();
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
        } else {
            assert_eq!(a.status, StatusCode::OK);
        }
    }
    assert!(refused > 0, "A alone may not take every slot and the queue");
}

#[tokio::test]
async fn not_ready_is_503_on_health() {
    let app = app(Options {
        ready: false,
        ..Options::default()
    });
    let a = send(
        &app.router,
        Request::get("/v1/health").body(Body::empty()).unwrap(),
    )
    .await;
    let message = a.error(StatusCode::SERVICE_UNAVAILABLE);
    assert!(message.contains("warming up"), "{message}");
    assert!(a.headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn request_ids_are_kept_when_usable_and_made_otherwise() {
    let app = app(Options::default());
    let mut given = spec_request();
    given
        .headers_mut()
        .insert("x-request-id", "agent-42.step:7".parse().unwrap());
    let a = send(&app.router, given).await;
    assert_eq!(a.headers["x-request-id"], "agent-42.step:7");
    let a = send(&app.router, spec_request()).await;
    let made = a.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 36, "a UUID: {made}");
    let mut spoofed = spec_request();
    spoofed
        .headers_mut()
        .insert("x-request-id", "a b\tforged log line".parse().unwrap());
    let a = send(&app.router, spoofed).await;
    assert_ne!(a.headers["x-request-id"], "a b\tforged log line");
    // Errors carry an id too.
    let a = send(
        &app.router,
        Request::get("/nowhere").body(Body::empty()).unwrap(),
    )
    .await;
    assert!(a.headers.contains_key("x-request-id"));
}

/// Every route, with a request that would pass its Host and Origin rule.
fn every_route() -> Vec<(Method, &'static str)> {
    vec![
        (Method::POST, "/v1/tools/code"),
        (Method::GET, "/v1/tools/code/libraries"),
        (Method::POST, "/v1/sessions"),
        (Method::GET, "/v1/sessions/sess_0"),
        (Method::DELETE, "/v1/sessions/sess_0"),
        (Method::GET, "/v1/sessions/sess_0/files"),
        (Method::GET, "/v1/sessions/sess_0/files/a.csv"),
        (Method::PUT, "/v1/sessions/sess_0/files/a.csv"),
        (Method::GET, "/v1/status"),
        (Method::GET, "/metrics"),
        (Method::POST, "/mcp"),
        (Method::GET, "/mcp"),
        (Method::GET, "/v1/health"),
        (Method::GET, "/openapi.yaml"),
        (Method::GET, "/nowhere"),
    ]
}

fn to_route(method: &Method, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut r = Request::builder()
        .method(method.clone())
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let body = if *method == Method::POST && uri == "/mcp" {
        json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string()
    } else if *method == Method::POST && uri == "/v1/tools/code" {
        json!({"code": "print(1)", "lang": "python"}).to_string()
    } else {
        String::new()
    };
    r.body(Body::from(body)).unwrap()
}

/// DNS rebinding and cross-origin pages: a keyless server answers only loopback names and
/// its own origin, on every route; with keys, the key is the guard.
#[tokio::test]
async fn a_keyless_server_answers_only_its_own_host_and_origin_on_every_route() {
    let app = self::app(Options::default());
    for (method, uri) in every_route() {
        for headers in [
            vec![("host", "evil.example:8080")],
            vec![("host", "127.0.0.1.evil.example")],
            vec![
                ("host", "127.0.0.1:8080"),
                ("origin", "http://evil.example"),
            ],
            vec![
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:9999"),
            ],
            vec![("host", "localhost:8080"), ("origin", "null")],
        ] {
            let a = send(&app.router, to_route(&method, uri, &headers)).await;
            let message = a.error(StatusCode::FORBIDDEN);
            assert!(
                message.contains("Host") || message.contains("Origin"),
                "{method} {uri} {headers:?}: {message}"
            );
        }
        // The server's own pages (the playground) and plain clients pass.
        for headers in [
            vec![
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080"),
            ],
            vec![("host", "localhost:8080")],
            vec![("host", "[::1]:8080"), ("origin", "http://[::1]:8080")],
        ] {
            let a = send(&app.router, to_route(&method, uri, &headers)).await;
            assert_ne!(
                a.status,
                StatusCode::FORBIDDEN,
                "{method} {uri} {headers:?}"
            );
        }
    }
    assert_eq!(
        app.runner.runs.load(Ordering::SeqCst),
        3,
        "the three same-origin runs"
    );
    // With keys the key is the guard, not the Host or the Origin (an operator key: a plain
    // key's 403 on /metrics is about what the key may see, not where it comes from).
    let keyed = self::app(Options {
        operator_keys: vec!["s3cret".into()],
        ..Options::default()
    });
    for (method, uri) in every_route() {
        let headers = [
            ("host", "nsbox.example.com"),
            ("origin", "https://playground.example.com"),
            ("authorization", "Bearer s3cret"),
        ];
        let a = send(&keyed.router, to_route(&method, uri, &headers)).await;
        assert_ne!(a.status, StatusCode::FORBIDDEN, "{method} {uri}");
    }
}

/// What a page may post cross-origin without a preflight (no type, text, a form) is
/// refused by a keyless server before anything runs or a session is made.
#[tokio::test]
async fn a_keyless_server_wants_json_bodies() {
    let app = self::app(Options::default());
    let code = json!({"code": "print(1)", "lang": "python"}).to_string();
    for uri in ["/v1/tools/code", "/v1/sessions", "/mcp"] {
        for ct in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
        ] {
            let mut r =
                Request::post(uri).header(header::ACCEPT, "application/json, text/event-stream");
            if let Some(ct) = ct {
                r = r.header(header::CONTENT_TYPE, ct);
            }
            let a = send(&app.router, r.body(Body::from(code.clone())).unwrap()).await;
            let message = a.error(StatusCode::UNSUPPORTED_MEDIA_TYPE);
            assert!(
                message.contains("application/json"),
                "{uri} {ct:?}: {message}"
            );
        }
    }
    for ct in ["text/plain", "multipart/form-data; boundary=x"] {
        let r = Request::put("/v1/sessions/sess_0/files/a.txt")
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from("x"))
            .unwrap();
        send(&app.router, r)
            .await
            .error(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    assert_eq!(app.runner.runs.load(Ordering::SeqCst), 0);
    // With keys, a client that sends no type is still served.
    let keyed = self::app(Options {
        keys: vec!["k".into()],
        ..Options::default()
    });
    let r = Request::post("/v1/tools/code")
        .header(header::AUTHORIZATION, "Bearer k")
        .body(Body::from(code))
        .unwrap();
    assert_eq!(send(&keyed.router, r).await.status, StatusCode::OK);
}

fn mcp_post(body: impl Into<Body>) -> Request<Body> {
    Request::post("/mcp")
        .header(header::HOST, "127.0.0.1:8080")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .body(body.into())
        .unwrap()
}

/// A body `/mcp` cannot read is a JSON-RPC error (no id), as REST answers its own 400.
#[tokio::test]
async fn mcp_bodies_it_cannot_read_are_json_rpc_errors() {
    let app = app(Options::default());
    let many = format!("[{}]", vec!["0"; 20_000].join(","));
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "pad": "x".repeat(65 << 10)});
    for (body, status, code) in [
        ("{not json".to_string(), StatusCode::BAD_REQUEST, -32700),
        (
            r#"{"jsonrpc": "2.0"} trailing"#.to_string(),
            StatusCode::BAD_REQUEST,
            -32700,
        ),
        ("[1, 2]".to_string(), StatusCode::BAD_REQUEST, -32600),
        (
            r#"{"hello": "world"}"#.to_string(),
            StatusCode::BAD_REQUEST,
            -32600,
        ),
        (many, StatusCode::BAD_REQUEST, -32600),
        (big.to_string(), StatusCode::PAYLOAD_TOO_LARGE, -32600),
    ] {
        let a = send(&app.router, mcp_post(body.clone())).await;
        assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.body));
        let v = a.json();
        assert_eq!(v["jsonrpc"], "2.0", "{v}");
        assert_eq!(v["id"], Value::Null, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    // A message it can read is answered as before.
    let a = send(
        &app.router,
        mcp_post(json!({"jsonrpc": "2.0", "id": 7, "method": "ping"}).to_string()),
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.json()["id"], 7);
}

/// A body that stops arriving is answered 408 at the body deadline (a generous bound
/// here: the point is that the handler does not wait forever).
#[tokio::test]
async fn a_body_that_stops_arriving_is_408() {
    let app = app(Options {
        body_timeout: Duration::from_millis(300),
        ..Options::default()
    });
    for uri in ["/v1/tools/code", "/mcp"] {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(1);
        tx.send(Ok(axum::body::Bytes::from_static(b"{\"code\": \"")))
            .await
            .unwrap();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let request = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .body(Body::from_stream(stream))
            .unwrap();
        let a = tokio::time::timeout(Duration::from_secs(30), send(&app.router, request))
            .await
            .expect("the handler gave up on the body");
        assert_eq!(a.status, StatusCode::REQUEST_TIMEOUT, "{uri}");
        drop(tx);
    }
}

/// Any JSON value, nested a few levels, with strings that may hold NUL and control bytes.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Request bodies shaped like the contract's, with each field of any type or missing.
fn request_like() -> impl Strategy<Value = Value> {
    let field = |name: &'static str| {
        prop_oneof![
            Just(None),
            any_json().prop_map(move |v| Some((name, v))),
            ".{0,200}".prop_map(move |s| Some((name, Value::from(s)))),
        ]
    };
    (
        field("code"),
        prop_oneof![Just(Some(("lang", json!("python")))), field("lang")],
        field("timeout"),
        field("libraries"),
        field("session_id"),
    )
        .prop_map(|(a, b, c, d, e)| {
            Value::Object(
                [a, b, c, d, e]
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            )
        })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn never_500(body: Vec<u8>, content_type: Option<&str>) -> Result<(), TestCaseError> {
    let app = app(Options::default());
    let mut request = Request::post("/v1/tools/code");
    if let Some(ct) = content_type {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    let request = request.body(Body::from(body)).unwrap();
    let a = runtime().block_on(send(&app.router, request));
    prop_assert!(
        !a.status.is_server_error(),
        "{} for {}",
        a.status,
        String::from_utf8_lossy(&a.body)
    );
    // Every answer is JSON: the spec's response or the error shape.
    let v: Value =
        serde_json::from_slice(&a.body).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(
        v.get("error").is_some() || v.get("success").is_some(),
        "{v}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_get_a_500(body in prop::collection::vec(any::<u8>(), 0..512)) {
        never_500(body, Some("application/json"))?;
    }

    #[test]
    fn arbitrary_json_never_gets_a_500(v in any_json()) {
        never_500(v.to_string().into_bytes(), Some("application/json"))?;
    }

    #[test]
    fn contract_shaped_json_never_gets_a_500(v in request_like(), ct in prop_oneof![
        Just(None),
        Just(Some("application/json")),
        Just(Some("application/json; charset=utf-8")),
        Just(Some("text/plain")),
    ]) {
        never_500(v.to_string().into_bytes(), ct)?;
    }
}

/// Issue 28: MCP goes through the same admission as the REST API, with its key's share:
/// key B's tool call is served while key A floods, and A's own call is told its share is
/// full.
#[tokio::test]
async fn mcp_calls_take_their_keys_share() {
    let app = app(Options {
        keys: vec!["key-a".into(), "key-b".into()],
        delay: Duration::from_millis(300),
        max_running: 2,
        max_queue: 2,
        ..Options::default()
    });
    let flood = flood_from_key_a(&app, 4, 2).await;
    let a = send(&app.router, mcp_run_python("key-a", "print(1)")).await;
    let v = a.json();
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert!(v["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("API key"));
    let b = send(&app.router, mcp_run_python("key-b", "print(1)")).await;
    let v = b.json();
    assert_eq!(v["result"]["isError"], false, "{v}");
    for task in flood {
        task.await.unwrap();
    }
    // The user header counts over MCP too, and is checked like over REST.
    let mut bad_user = mcp_run_python("key-b", "print(1)");
    bad_user
        .headers_mut()
        .insert("x-relaxai-userid", "a\tb".parse().unwrap());
    let v = send(&app.router, bad_user).await.json();
    assert!(v.to_string().contains("x-relaxai-userid"), "{v}");
}

/// A `tools/call` of `run_python` over streamable HTTP (stateless: no session needed).
fn mcp_run_python(key: &str, code: &str) -> Request<Body> {
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "run_python", "arguments": {"code": code}},
    });
    let request = Request::builder()
        .method(Method::POST)
        .uri("/mcp")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::HOST, "localhost")
        .body(Body::from(body.to_string()))
        .unwrap();
    with_key(key, request)
}

/// Issue 28: `x-relaxai-userid` goes into every log line of its request, so it is held to
/// the rules of `x-request-id`; one that breaks them is refused, naming the header.
#[tokio::test]
async fn an_unusable_user_id_is_400_naming_the_header() {
    let app = app(Options::default());
    let with_user = |user: axum::http::HeaderValue| {
        let mut request = spec_request();
        request.headers_mut().insert("x-relaxai-userid", user);
        request
    };
    let bad = [
        axum::http::HeaderValue::from_str(&"u".repeat(400_000)).unwrap(),
        axum::http::HeaderValue::from_str(&"u".repeat(129)).unwrap(),
        "alice bob".parse().unwrap(),
        "forged\tline".parse().unwrap(),
        axum::http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
    ];
    for user in bad {
        let message = send(&app.router, with_user(user))
            .await
            .error(StatusCode::BAD_REQUEST);
        assert!(message.contains("x-relaxai-userid"), "{message}");
    }
    assert_eq!(app.runner.runs.load(Ordering::SeqCst), 0);
    for user in ["alice", &"u".repeat(128), "team-7.agent:3/step_2"] {
        let a = send(&app.router, with_user(user.parse().unwrap())).await;
        assert_eq!(a.status, StatusCode::OK, "{user}");
    }
}

/// Issue 28: code is scanned only once its request has a place in its key's share, so a
/// flood of code the scanner would refuse is turned away without scanning it.
#[tokio::test]
async fn code_is_scanned_only_within_the_callers_share() {
    let app = app(Options {
        delay: Duration::from_secs(30),
        max_running: 1,
        max_queue: 0,
        ..Options::default()
    });
    let holder = tokio::spawn(send_owned(app.router.clone(), spec_request()));
    while app.runner.runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused_code = json!({"code": "import os\nos.system('ls')", "lang": "python"});
    let a = send(&app.router, post(refused_code.to_string())).await;
    let message = a.error(StatusCode::TOO_MANY_REQUESTS);
    assert!(message.contains("retry"), "{message}");
    holder.abort();
}

/// Log lines about refused code are rate limited; what is left out is counted.
#[tokio::test]
async fn refusal_log_lines_past_the_rate_are_counted() {
    let app = app(Options::default());
    let refused_code = json!({"code": "import os\nos.system('ls')", "lang": "python"});
    for _ in 0..100 {
        let a = send(&app.router, post(refused_code.to_string())).await;
        assert_eq!(a.json()["stderr"], "Security violations detected");
    }
    let m = send(
        &app.router,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    let text = String::from_utf8(m.body).unwrap();
    assert!(
        text.contains("nsbox_runs_total{verdict=\"refused\"} 100"),
        "{text}"
    );
    let suppressed: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("nsbox_log_lines_suppressed_total "))
        .expect("the counter is exposed")
        .parse()
        .unwrap();
    // At most 10 lines a second are written: 100 refusals in under 9 seconds leave some out.
    assert!(suppressed >= 1.0, "{text}");
}

/// Issue 28: a key sees its own runs, queue and sessions in `/v1/status`; an operator key
/// sees the whole server and may read `/metrics`, which other keys may not.
#[tokio::test]
async fn a_key_sees_its_own_load_and_an_operator_key_the_servers() {
    let app = app(Options {
        keys: vec!["k1".into(), "k2".into()],
        operator_keys: vec!["ops".into()],
        delay: Duration::from_secs(30),
        ..Options::default()
    });
    let holder = tokio::spawn(send_owned(
        app.router.clone(),
        with_key("k1", spec_request()),
    ));
    while app.runner.runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = |key: &str| {
        let request = Request::get("/v1/status").body(Body::empty()).unwrap();
        send(&app.router, with_key(key, request))
    };
    let own = status("k1").await.json();
    assert_eq!(
        (own["scope"].as_str(), own["running"].as_u64()),
        (Some("key"), Some(1))
    );
    assert!(own["key_share"].as_u64().is_some(), "{own}");
    let other = status("k2").await.json();
    assert_eq!(other["running"], 0, "{other}");
    assert!(other["sessions"].get("created").is_none(), "{other}");
    let all = status("ops").await.json();
    assert_eq!(
        (all["scope"].as_str(), all["running"].as_u64()),
        (Some("server"), Some(1))
    );
    assert!(all["sessions"]["created"].is_u64(), "{all}");
    let metrics = |key: &str| {
        let request = Request::get("/metrics").body(Body::empty()).unwrap();
        send(&app.router, with_key(key, request))
    };
    let message = metrics("k1").await.error(StatusCode::FORBIDDEN);
    assert!(message.contains("operator"), "{message}");
    assert_eq!(metrics("ops").await.status, StatusCode::OK);
    holder.abort();
}

fn get_with(path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::builder().method(Method::GET).uri(path);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Body::empty()).unwrap()
}

/// A root filesystem with nothing but the plotly package's script in it.
fn rootfs_with_plotly() -> tempfile::TempDir {
    let rootfs = tempfile::tempdir().unwrap();
    let dir = rootfs
        .path()
        .join("usr/local/lib/python3.11/dist-packages/plotly/package_data");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("plotly.min.js"), "/* plotly */").unwrap();
    rootfs
}

#[tokio::test]
async fn the_page_and_its_result_frame_are_confined_by_their_headers() {
    let rootfs = rootfs_with_plotly();
    let app = app(Options {
        ui: Some(rootfs.path().to_path_buf()),
        ..Options::default()
    });
    let page = send(&app.router, get_with("/", &[("host", "127.0.0.1:8080")])).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&page.body).contains("/ui/app.js"));
    let csp = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self';",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} not in {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(page.headers[header::REFERRER_POLICY], "no-referrer");
    let frame = send(&app.router, get_with("/ui/frame.html", &[])).await;
    let csp = frame.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(csp.starts_with("sandbox allow-scripts;"), "{csp}");
    assert!(csp.contains("connect-src 'none'"), "{csp}");
    assert!(!csp.contains("allow-same-origin"), "{csp}");
    let plotly = send(&app.router, get_with("/ui/plotly.min.js", &[])).await;
    assert_eq!(plotly.status, StatusCode::OK);
    assert_eq!(plotly.body, b"/* plotly */");
}

/// The result frame's origin is opaque, so its scripts are fetched with `Origin: null`:
/// on a keyless server the page's files answer it (Host rule only), the API does not.
#[tokio::test]
async fn a_keyless_server_gives_its_page_files_to_the_sandboxed_frame_only() {
    let rootfs = rootfs_with_plotly();
    let app = app(Options {
        ui: Some(rootfs.path().to_path_buf()),
        ..Options::default()
    });
    let null = [("host", "127.0.0.1:8080"), ("origin", "null")];
    for path in ["/ui/frame.js", "/ui/plotly.min.js"] {
        let a = send(&app.router, get_with(path, &null)).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
    }
    send(&app.router, get_with("/v1/status", &null))
        .await
        .error(StatusCode::FORBIDDEN);
    let rebound = [("host", "evil.example:8080")];
    send(&app.router, get_with("/ui/app.js", &rebound))
        .await
        .error(StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn with_the_page_off_its_paths_are_404() {
    let app = app(Options::default());
    for path in ["/", "/ui/app.js", "/ui/frame.html", "/ui/plotly.min.js"] {
        send(&app.router, get_with(path, &[]))
            .await
            .error(StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn violations_come_with_their_lines_when_results_are_asked() {
    let app = app(Options::default());
    let code = "x = 1\nimport subprocess\nsubprocess.run(['ls'])\n";
    let with = send(
        &app.router,
        post(json!({"code": code, "lang": "python", "results": true}).to_string()),
    )
    .await
    .json();
    let lines: Vec<(u64, &str)> = with["violation_lines"]
        .as_array()
        .unwrap_or_else(|| panic!("no violation_lines: {with}"))
        .iter()
        .map(|v| (v["line"].as_u64().unwrap(), v["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        lines,
        [
            (2, "Subprocess management"),
            (3, "subprocess command execution")
        ],
        "{with}"
    );
    // The spec's answer stays the spec's.
    let without = send(
        &app.router,
        post(json!({"code": code, "lang": "python"}).to_string()),
    )
    .await
    .json();
    assert!(without.get("violation_lines").is_none(), "{without}");
    assert_eq!(without["violations"].as_array().unwrap().len(), 2);
}

/// In report mode the code runs anyway, and its answer still names the lines the scanner
/// flagged.
#[tokio::test]
async fn violations_of_code_that_ran_come_with_their_lines_too() {
    let app = app(Options {
        scanner: ScannerMode::Report,
        ..Options::default()
    });
    let code = "import subprocess\nprint(1)\n";
    let v = send(
        &app.router,
        post(json!({"code": code, "lang": "python", "results": true}).to_string()),
    )
    .await
    .json();
    assert_eq!(v["exit_code"], 0, "the code did not run: {v}");
    let lines: Vec<u64> = v["violation_lines"]
        .as_array()
        .unwrap_or_else(|| panic!("no violation_lines: {v}"))
        .iter()
        .map(|l| l["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [1], "{v}");
}
