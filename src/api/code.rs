//! `POST /v1/tools/code`: validates a request, runs it in a fresh sandbox and answers with the spec's response object.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::Serialize;
use serde_json::Value;

use tracing::Instrument;

use super::error::ApiError;
use super::metrics::{self, Verdict};
use super::{AppState, ScannerMode};
use crate::sandbox::warm::template_for;
use crate::sandbox::{Limits, Plot, RunOutcome, RunRequest, Termination};
use crate::scanner::{self, Analysis};

/// The spec's limit on `code`, in characters.
pub const MAX_CODE_CHARS: usize = 50_000;

/// The spec's response object, field for field.
#[derive(Debug, Serialize, PartialEq)]
pub struct CodeResponse {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    pub execution_time: f64,
    pub security_checked: bool,
    pub violations: Vec<String>,
    pub plots: Vec<Plot>,
}

/// A request that passed validation.
#[derive(Debug, PartialEq)]
pub struct Validated {
    pub code: String,
    pub timeout_ms: u64,
    pub libraries: Vec<String>,
}

/// Checks a request body against the contract. Unknown fields are ignored, so clients
/// (and the official SDK's `extra_body`) that send more than nsbox knows keep working.
pub fn validate(
    body: &[u8],
    default_timeout_s: f64,
    max_timeout_s: f64,
) -> Result<Validated, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("request body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::invalid("request body must be a JSON object"));
    };
    let code = match obj.get("code") {
        None | Some(Value::Null) => return Err(ApiError::invalid("`code` is required")),
        Some(Value::String(s)) => s,
        Some(_) => return Err(ApiError::invalid("`code` must be a string")),
    };
    check_code(code)?;
    match obj.get("lang") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "`lang` is required; only \"python\" is supported",
            ))
        }
        Some(Value::String(s)) if s == "python" => {}
        Some(Value::String(s)) => {
            return Err(ApiError::invalid(format!(
                "unsupported `lang` {s:?}; only \"python\" is supported"
            )))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "`lang` must be a string; only \"python\" is supported",
            ))
        }
    }
    let timeout_s = match obj.get("timeout") {
        None | Some(Value::Null) => default_timeout_s,
        Some(Value::Number(n)) => {
            let t = n.as_f64().unwrap_or(f64::NAN);
            if !(t > 0.0 && t <= max_timeout_s) {
                return Err(ApiError::invalid(format!(
                    "`timeout` must be more than 0 and at most {max_timeout_s} seconds, got {n}"
                )));
            }
            t
        }
        Some(_) => return Err(ApiError::invalid("`timeout` must be a number of seconds")),
    };
    let libraries = match obj.get("libraries") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(_) => return Err(ApiError::invalid("`libraries` must be an array of strings")),
    };
    Ok(Validated {
        code: code.clone(),
        timeout_ms: (timeout_s * 1000.0).ceil() as u64,
        libraries,
    })
}

/// The contract's rules for the code itself, shared by the API and `nsbox run`.
pub fn check_code(code: &str) -> Result<(), ApiError> {
    if code.trim().is_empty() {
        return Err(ApiError::invalid(
            "`code` must not be empty or whitespace only",
        ));
    }
    if code.contains('\0') {
        return Err(ApiError::invalid("`code` must not contain NUL bytes"));
    }
    let chars = code.chars().count();
    if chars > MAX_CODE_CHARS {
        return Err(ApiError::too_large(format!(
            "`code` is {chars} characters; the maximum is {MAX_CODE_CHARS}"
        )));
    }
    Ok(())
}

/// Scans `code` as `mode` says; with the scanner off only the imports are read (they pick
/// the warm template).
pub fn scan(mode: ScannerMode, policy: &scanner::Policy, code: &str) -> Analysis {
    match mode {
        ScannerMode::Off => Analysis {
            violations: Vec::new(),
            imported_modules: scanner::imported_modules(code),
        },
        ScannerMode::Enforce | ScannerMode::Report => scanner::analyze(code, policy),
    }
}

/// The spec's answer to code the scanner refused.
pub fn refused(violations: Vec<String>, scan_time: std::time::Duration) -> CodeResponse {
    CodeResponse {
        success: false,
        stdout: String::new(),
        stderr: "Security violations detected".into(),
        exit_code: -1,
        execution_time: seconds(scan_time),
        security_checked: true,
        violations,
        plots: Vec::new(),
    }
}

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

fn failure(outcome: &RunOutcome, message: &str) -> (bool, i32, String) {
    let mut stderr = outcome.stderr.clone();
    if !stderr.is_empty() && !stderr.ends_with('\n') {
        stderr.push('\n');
    }
    stderr.push_str("Execution failed: ");
    stderr.push_str(message);
    (false, -1, stderr)
}

/// Maps a run's outcome to the spec's fields: code that ran to its end is a success even
/// when it raised (exit code 1), as in the spec's error examples; a run a limit ended is not.
pub fn respond(
    outcome: &RunOutcome,
    limits: &Limits,
    started: Instant,
) -> Result<CodeResponse, ApiError> {
    let (success, exit_code, stderr) = match &outcome.termination {
        Termination::Exited { code } => (true, *code, outcome.stderr.clone()),
        Termination::TimedOut => failure(outcome, "Execution timeout exceeded"),
        Termination::OutOfMemory => failure(
            outcome,
            &format!("Memory limit exceeded ({} MiB)", limits.memory_bytes >> 20),
        ),
        Termination::Signaled { signal } if *signal == libc::SIGXCPU => failure(
            outcome,
            &format!("CPU time limit exceeded ({} s)", limits.cpu_seconds),
        ),
        Termination::Signaled { signal } => failure(
            outcome,
            &format!("process killed by {}", signal_name(*signal)),
        ),
        Termination::SetupFailed { step, errno } => {
            tracing::error!(step, errno, "sandbox set-up failed");
            return Err(ApiError::internal());
        }
        Termination::Cancelled => return Err(ApiError::unavailable("the run was cancelled")),
    };
    Ok(CodeResponse {
        success,
        stdout: outcome.stdout.clone(),
        stderr,
        exit_code,
        execution_time: seconds(started.elapsed()),
        security_checked: true,
        violations: Vec::new(),
        plots: outcome.plots.clone(),
    })
}

/// The official SDK has no `timeout` parameter: its `timeout=` is the HTTP read timeout,
/// sent as `x-stainless-read-timeout`. A run without its own `timeout` is kept a second
/// under it, so the answer arrives before the client gives up and retries the code.
fn read_timeout_budget(headers: &HeaderMap) -> Option<f64> {
    let secs: f64 = headers
        .get("x-stainless-read-timeout")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (secs.is_finite() && secs > 0.0).then(|| (secs - 1.0).max(secs / 2.0))
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        // Some tool runners send none; the body must still be JSON. Form and text types
        // stay refused (even `curl -d` without `-H`): they are what a web page may post
        // cross-origin without a CORS preflight, and a keyless nsbox on loopback must not
        // run code a browser tab sent it.
        return Ok(());
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::unsupported_media(format!(
            "Content-Type must be application/json, got {essence:?}"
        )))
    }
}

/// The handler: every log line of the request carries its id (`x-request-id`, the client's
/// or a fresh UUID), and once known the user and the code's SHA-256 — never the code itself,
/// which is logged only when `RUST_LOG` enables the `nsbox::code` target at debug level.
pub async fn execute(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CodeResponse>, ApiError> {
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let span = tracing::info_span!(
        "run",
        request_id = %request_id,
        user = tracing::field::Empty,
        code_sha256 = tracing::field::Empty,
    );
    let arrived = Instant::now();
    let result = handle(state.clone(), headers, body).instrument(span).await;
    state.metrics.request_took(arrived.elapsed());
    result
}

/// Notices a client that left mid-run: axum then drops the handler, which kills the run, and
/// this is the only place that can still say so in the log and the metrics.
struct ClientGone<'a> {
    metrics: &'a metrics::Metrics,
    span: tracing::Span,
    armed: bool,
}

impl Drop for ClientGone<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _entered = self.span.enter();
            tracing::info!("run cancelled: the client went away");
            self.metrics.count(Verdict::cancelled);
        }
    }
}

fn code_sha256(code: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(code.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn handle(
    state: AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CodeResponse>, ApiError> {
    check_content_type(&headers)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "request body exceeds {} bytes",
                state.config.max_body_bytes
            ))
        } else {
            ApiError::invalid(format!("could not read the request body: {rejection}"))
        }
    })?;
    let default_timeout_s = read_timeout_budget(&headers)
        .map_or(state.config.default_timeout_s, |budget| {
            budget.min(state.config.default_timeout_s)
        });
    let request = validate(&body, default_timeout_s, state.config.max_timeout_s)?;
    state.catalog.check(&request.libraries)?;
    let user = headers
        .get("x-relaxai-userid")
        .and_then(|v| v.to_str().ok())
        .filter(|u| !u.is_empty())
        .map(str::to_string);
    let span = tracing::Span::current();
    span.record("code_sha256", code_sha256(&request.code).as_str());
    if let Some(user) = &user {
        span.record("user", user.as_str());
    }
    tracing::debug!(target: "nsbox::code", code = %request.code, "code received");
    let limits = Limits {
        timeout_ms: request.timeout_ms,
        ..state.config.limits.clone()
    };

    // The scan runs off the async threads: a large file takes milliseconds to parse.
    let scan_started = Instant::now();
    let (analysis, code) = {
        let scanner = state.config.scanner;
        let policy = state.scanner_policy.clone();
        tokio::task::spawn_blocking(move || (scan(scanner, &policy, &request.code), request.code))
            .await
            .map_err(|_| ApiError::internal())?
    };
    let scan_time = scan_started.elapsed();
    let violations = scanner::violation_names(&analysis.violations);
    for v in &analysis.violations {
        tracing::debug!(rule = %v.rule_id, line = v.line, name = %v.name, "scanner violation");
    }
    if state.config.scanner == ScannerMode::Enforce && !violations.is_empty() {
        tracing::info!(?violations, "run refused by the scanner");
        state.metrics.refused();
        return Ok(Json(refused(violations, scan_time)));
    }

    let queued = Instant::now();
    let _permit = state
        .admission
        .admit(user.as_deref())
        .await
        .inspect_err(|_| state.metrics.rejected())?;
    let queue_time = queued.elapsed();
    state.metrics.queued_for(queue_time);
    // The spec's execution_time covers checks and execution, not time spent queued.
    let started = Instant::now()
        .checked_sub(scan_time)
        .unwrap_or_else(Instant::now);
    let mut cancelled = state.cancelled.clone();
    let run_request = RunRequest {
        template: state
            .config
            .warm
            .then(|| template_for(&analysis.imported_modules, &request.libraries)),
        code,
        limits: limits.clone(),
    };
    let run = state.spawner.run(&run_request);
    // Dropping the run (on cancellation) kills it: its supervisor sees the socket close.
    let mut client_gone = ClientGone {
        metrics: &state.metrics,
        span: tracing::Span::current(),
        armed: true,
    };
    let finished = tokio::select! {
        outcome = run => Some(outcome),
        _ = cancelled.wait_for(|c| *c) => None,
    };
    client_gone.armed = false;
    let outcome = match finished {
        Some(Ok(outcome)) => outcome,
        Some(Err(e)) => {
            tracing::error!(error = %e, "run failed");
            state.metrics.count(Verdict::setup_failed);
            return Err(ApiError::unavailable(
                "the sandbox is restarting; retry the request",
            ));
        }
        None => {
            tracing::warn!("run cancelled: the shutdown grace is over");
            state.metrics.count(Verdict::cancelled);
            return Err(ApiError::unavailable(
                "the server is shutting down; retry the request",
            ));
        }
    };
    let limits_hit = metrics::limits_hit(&outcome);
    state.metrics.finished(&outcome, &limits_hit);
    tracing::info!(
        verdict = ?outcome.termination,
        ?limits_hit,
        scan_ms = scan_time.as_millis() as u64,
        queue_ms = queue_time.as_millis() as u64,
        wall_ms = outcome.wall_ms,
        warm = outcome.warm,
        peak_memory = outcome.peak_memory_bytes,
        "run finished"
    );
    let mut response = respond(&outcome, &limits, started)?;
    // In report mode the code ran; the response still lists what the scanner saw.
    response.violations = violations;
    Ok(Json(response))
}

fn seconds(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(body: &str) -> Result<Validated, ApiError> {
        validate(body.as_bytes(), 30.0, 300.0)
    }

    #[test]
    fn the_spec_request_is_valid_with_default_timeout() {
        let ok = v(r#"{"code": "print(2**2)", "lang": "python"}"#).unwrap();
        assert_eq!(ok.code, "print(2**2)");
        assert_eq!(ok.timeout_ms, 30_000);
        assert_eq!(
            v(r#"{"code": "x", "lang": "python", "timeout": 5}"#)
                .unwrap()
                .timeout_ms,
            5000
        );
        assert_eq!(
            v(r#"{"code": "x", "lang": "python", "timeout": 0.25}"#)
                .unwrap()
                .timeout_ms,
            250
        );
    }

    #[test]
    fn the_sdk_read_timeout_caps_the_default_run_timeout() {
        let mut h = HeaderMap::new();
        assert_eq!(read_timeout_budget(&h), None);
        h.insert("x-stainless-read-timeout", "30".parse().unwrap());
        assert_eq!(read_timeout_budget(&h), Some(29.0));
        h.insert("x-stainless-read-timeout", "1".parse().unwrap());
        assert_eq!(read_timeout_budget(&h), Some(0.5));
        h.insert("x-stainless-read-timeout", "nonsense".parse().unwrap());
        assert_eq!(read_timeout_budget(&h), None);
    }

    #[test]
    fn unknown_fields_and_libraries_are_accepted() {
        assert!(
            v(r#"{"code": "x", "lang": "python", "libraries": ["numpy"], "extra": {"a": 1}}"#)
                .is_ok()
        );
    }

    #[test]
    fn bad_input_gets_a_clear_client_error() {
        let cases = [
            ("not json", "not valid JSON"),
            ("[1]", "JSON object"),
            (r#"{"lang": "python"}"#, "`code` is required"),
            (r#"{"code": 5, "lang": "python"}"#, "must be a string"),
            (r#"{"code": "  \n\t", "lang": "python"}"#, "empty"),
            (r#"{"code": "", "lang": "python"}"#, "empty"),
            (r#"{"code": "a\u0000b", "lang": "python"}"#, "NUL"),
            (r#"{"code": "x"}"#, "`lang` is required"),
            (
                r#"{"code": "x", "lang": "javascript"}"#,
                "unsupported `lang`",
            ),
            (r#"{"code": "x", "lang": 1}"#, "`lang` must be a string"),
            (
                r#"{"code": "x", "lang": "python", "timeout": "5"}"#,
                "must be a number",
            ),
            (
                r#"{"code": "x", "lang": "python", "timeout": 0}"#,
                "more than 0",
            ),
            (
                r#"{"code": "x", "lang": "python", "timeout": -3}"#,
                "more than 0",
            ),
            (
                r#"{"code": "x", "lang": "python", "timeout": 301}"#,
                "at most 300",
            ),
            (
                r#"{"code": "x", "lang": "python", "timeout": 1e308}"#,
                "at most 300",
            ),
            (
                r#"{"code": "x", "lang": "python", "libraries": "numpy"}"#,
                "array of strings",
            ),
        ];
        for (body, needle) in cases {
            let err = v(body).unwrap_err();
            assert!(err.status.is_client_error(), "{body}");
            assert!(err.message.contains(needle), "{body}: {}", err.message);
        }
    }

    #[test]
    fn code_over_50000_characters_is_too_large_but_50000_multibyte_characters_are_fine() {
        let at_limit =
            serde_json::json!({"code": "é".repeat(MAX_CODE_CHARS), "lang": "python"}).to_string();
        assert!(v(&at_limit).is_ok());
        let over = serde_json::json!({"code": "a".repeat(MAX_CODE_CHARS + 1), "lang": "python"})
            .to_string();
        assert_eq!(v(&over).unwrap_err().status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    fn outcome(termination: Termination, stderr: &str) -> RunOutcome {
        RunOutcome {
            termination,
            stdout: String::new(),
            stderr: stderr.into(),
            plots: vec![],
            notes: vec![],
            cut_short: vec![],
            wall_ms: 1,
            peak_memory_bytes: None,
            warm: false,
        }
    }

    #[test]
    fn timeouts_and_limits_map_to_the_spec_failure_shape() {
        let limits = Limits::default();
        let r = respond(&outcome(Termination::TimedOut, ""), &limits, Instant::now()).unwrap();
        assert_eq!((r.success, r.exit_code), (false, -1));
        assert_eq!(r.stderr, "Execution failed: Execution timeout exceeded");
        let r = respond(
            &outcome(Termination::OutOfMemory, "partial"),
            &limits,
            Instant::now(),
        )
        .unwrap();
        assert_eq!(
            r.stderr,
            "partial\nExecution failed: Memory limit exceeded (512 MiB)"
        );
        let r = respond(
            &outcome(Termination::Exited { code: 1 }, "Traceback"),
            &limits,
            Instant::now(),
        )
        .unwrap();
        assert_eq!((r.success, r.exit_code), (true, 1));
        let r = respond(
            &outcome(Termination::Signaled { signal: 11 }, ""),
            &limits,
            Instant::now(),
        )
        .unwrap();
        assert!(r.stderr.contains("SIGSEGV"));
    }

    #[test]
    fn setup_failures_do_not_leak_details() {
        let err = respond(
            &outcome(
                Termination::SetupFailed {
                    step: "mount /proc".into(),
                    errno: 13,
                },
                "",
            ),
            &Limits::default(),
            Instant::now(),
        )
        .unwrap_err();
        assert_eq!(err.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!err.message.contains("/proc"));
    }
}
