//! The run service: the one path from a request to run code to its result, under every front end.
//!
//! HTTP (`api`), `nsbox run`, and later SSE, MCP and sessions are adapters: each turns its
//! input into a [`CodeRequest`], calls [`RunService::execute`], and turns the [`RunResult`]
//! or [`ServiceError`] back into its own shape. Validation, scanning, the choice of warm
//! template, limits, admission, outcome classification and metrics exist here once.

pub mod admission;
pub mod catalog;
pub mod events;
pub mod files;
pub mod metrics;
pub mod response;
pub mod runner;
pub mod sessions;
pub mod throttle;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ScannerMode;
use crate::sandbox::warm::{template_for, Template};
use crate::sandbox::{
    Cut, FileCaps, InputFile, Limits, NotebookError, NotebookOutput, OutputFile, Plot, ResultCaps,
    RunOutcome, RunRequest, SessionOp, SkippedFile, Termination,
};
use crate::scanner::{self, Analysis};
use admission::{Admission, KeyWeights, Shares};
use catalog::Catalog;
use files::{FileContent, FileInput, FileLimits};
use metrics::{Metrics, SessionEnd, Verdict};
pub use response::CodeResponse;
use runner::Runner;
use sessions::{SessionInfo, SessionSettings, Sessions};
use throttle::LogThrottle;

/// The spec's limit on `code`, in characters.
pub const MAX_CODE_CHARS: usize = 50_000;

/// Seconds (as requests and configuration give them) to the milliseconds a run is limited
/// to, rounded up so a run never gets less than it asked for.
pub fn millis(seconds: f64) -> u64 {
    (seconds * 1000.0).ceil() as u64
}

/// The span a front end opens for one request to run code: the service records the user
/// and the code's SHA-256 in it, so every log line of the request carries them.
pub fn request_span(request_id: &str) -> tracing::Span {
    tracing::info_span!(
        "run",
        request_id = %request_id,
        user = tracing::field::Empty,
        code_sha256 = tracing::field::Empty,
    )
}

/// Whether a client's id (`x-request-id`, `x-relaxai-userid`) may go into log lines as
/// it is: 1 to 128 letters, digits and `-_.:/`, so it cannot bloat or forge a line.
pub fn is_usable_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:/".contains(c))
}

/// The longest usable client id, bytes.
pub const MAX_ID_BYTES: usize = 128;

/// The owner of what an API key does (its sessions, its share of the run slots): a
/// fingerprint of the key, never the key itself.
pub fn key_owner(key: &[u8]) -> String {
    use sha2::Digest;
    owner_of_digest(&sha2::Sha256::digest(key).into())
}

/// [`key_owner`] from the key's SHA-256 digest, for callers that keep only the digest.
pub fn owner_of_digest(digest: &[u8; 32]) -> String {
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Log lines per second about requests the scanner refused; past it they are counted.
const REFUSAL_LINES_PER_SECOND: u32 = 10;

/// Why a request got no result. Messages are for the client: no host paths, no internals.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceError {
    /// The request breaks the contract (empty code, NUL, bad timeout, unknown library).
    #[error("{0}")]
    Invalid(String),
    /// The code is longer than the contract allows.
    #[error("{0}")]
    TooLarge(String),
    /// The queue or the caller's share of the run slots is full: retry shortly.
    #[error("{0}")]
    Overloaded(String),
    /// The sandbox is restarting, the server is shutting down, or the run was cancelled.
    #[error("{0}")]
    Unavailable(String),
    /// The sandbox could not be set up; the step is for the operator's log, not the client.
    #[error("the sandbox could not be set up: step `{step}` failed (errno {errno})")]
    SetupFailed { step: String, errno: i32 },
    /// Something inside nsbox failed (a worker thread panicked).
    #[error("internal error")]
    Internal,
    /// No such session for this caller (or it ended: the message says why), or no such
    /// file in it.
    #[error("{0}")]
    NotFound(String),
    /// The session is busy with another call.
    #[error("{0}")]
    Conflict(String),
}

/// One request to run code, as every front end gives it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CodeRequest {
    pub code: String,
    /// Seconds; `None` takes the configured default.
    pub timeout_s: Option<f64>,
    /// Libraries the caller expects (checked against the root filesystem; they also pick
    /// the warm template).
    pub libraries: Vec<String>,
    /// Who asked (`x-relaxai-userid`): logged, and limited to a share of its key's
    /// share of the run slots. Must be [usable](is_usable_id) as it goes into log lines.
    pub user: Option<String>,
    /// How long the caller waits for an answer, seconds, when it says so (the official
    /// SDK's read timeout). A request without its own timeout is kept under it, so the
    /// answer arrives before the caller gives up and sends the code again.
    pub caller_patience_s: Option<f64>,
    /// The front end's id of the request (the one in its [`request_span`]), handed to the
    /// sandbox so its log lines carry it too.
    pub request_id: Option<String>,
    /// Files written into the working directory first; `Some` (even empty) also asks for
    /// the files the code creates or changes.
    pub files: Option<Vec<FileInput>>,
    /// Runs the code in this session instead of a fresh sandbox.
    pub session_id: Option<String>,
    /// Who is asking, for sessions and admission: the API key's fingerprint
    /// ([`key_owner`]), `None` without keys.
    pub owner: Option<String>,
    /// Whether to return notebook results (docs/results.md); `None`: off for a run, the
    /// session's default for a session call.
    pub results: Option<bool>,
}

/// A limit that ended a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Timeout,
    Memory,
    /// CPU time (RLIMIT_CPU, whose SIGXCPU ends the run).
    Cpu,
}

/// How a run ended, classified once for every front end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The code ran to its end and exited with this status (0, 1 for an exception, …).
    Exited { code: i32 },
    /// The scanner refused the code; nothing ran.
    Refused,
    /// A limit ended the run.
    Limit(Limit),
    /// A signal no limit explains (SIGSEGV, SIGABRT, …) ended the run.
    Signaled { signal: i32 },
}

impl Ending {
    /// The spec's `success`: code that ran to its end succeeded, even when it raised.
    pub fn success(self) -> bool {
        matches!(self, Ending::Exited { .. })
    }

    /// The spec's `exit_code`: the code's own status, -1 for anything else.
    pub fn exit_code(self) -> i32 {
        match self {
            Ending::Exited { code } => code,
            _ => -1,
        }
    }
}

/// What the sandbox reported about a run that started.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFacts {
    /// Limits that cut the run short without ending it.
    pub cut_short: Vec<Cut>,
    pub wall_ms: u64,
    pub peak_memory_bytes: Option<u64>,
    /// Whether the run was forked from a warm template.
    pub warm: bool,
}

/// The result of a request to run code.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    pub ending: Ending,
    pub stdout: String,
    /// The code's stderr; when a limit or a signal ended the run, it ends with a line
    /// `Execution failed: …` naming it (the spec's timeout example).
    pub stderr: String,
    pub plots: Vec<Plot>,
    /// What the scanner flagged (in report mode the code ran anyway).
    pub violations: Vec<String>,
    /// The same, rule by rule with the line each fired at, in source order.
    pub violation_lines: Vec<scanner::Violation>,
    /// The spec's `execution_time`: the scan and the run, not time spent queued.
    pub execution_time: Duration,
    pub scan_time: Duration,
    pub queue_time: Duration,
    /// `None` when nothing ran (refused by the scanner).
    pub run: Option<RunFacts>,
    /// Files created or changed in the working directory, when the request asked for them
    /// (or ran in a session).
    pub files: Option<Vec<OutputFile>>,
    /// Files created or changed that are not returned (links, FIFOs...), and why.
    pub skipped_files: Vec<SkippedFile>,
    /// The session the code ran in, and whether it is still there.
    pub session: Option<SessionState>,
    /// Notebook results, when asked for: what the code's last expression, display() and
    /// figures produced, in order.
    pub results: Option<Vec<NotebookOutput>>,
    /// The exception the code raised, when results were asked for.
    pub error: Option<NotebookError>,
}

/// A session call's session, as its answer tells it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SessionState {
    pub id: String,
    /// `active`, or `ended` (then `reason` says why).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[cfg(test)]
impl RunResult {
    /// A result that ended so, with this output and nothing else, for tests of the front
    /// ends' mappings.
    pub(crate) fn ended(ending: Ending, stdout: &str, stderr: &str) -> RunResult {
        RunResult {
            ending,
            stdout: stdout.into(),
            stderr: stderr.into(),
            plots: Vec::new(),
            violations: Vec::new(),
            violation_lines: Vec::new(),
            execution_time: Duration::ZERO,
            scan_time: Duration::ZERO,
            queue_time: Duration::ZERO,
            run: None,
            files: None,
            skipped_files: Vec::new(),
            session: None,
            results: None,
            error: None,
        }
    }
}

/// What the service needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Every run's limits; a request's timeout replaces `timeout_ms`.
    pub limits: Limits,
    pub default_timeout_s: f64,
    pub max_timeout_s: f64,
    pub scanner: ScannerMode,
    /// Whether runs are forked from warm templates.
    pub warm: bool,
    pub max_running: usize,
    pub max_queue: usize,
    /// Events a streamed run may have waiting (see [`events::Bounds`]).
    pub stream_backlog_events: usize,
    /// Requests in flight one user of a key may have; `None` = half of the key's share.
    pub max_running_per_user: Option<usize>,
    /// The API keys' weights for their shares of the run slots and the queue.
    pub key_weights: KeyWeights,
    /// Caps on files, each way.
    pub files: FileLimits,
    /// Caps on notebook results.
    pub results: ResultCaps,
    pub sessions: SessionSettings,
    /// Output file content an MCP tool result attaches, in all (a model's context is
    /// smaller than what a run may return).
    pub mcp_attach_bytes: u64,
    /// Characters of text one MCP tool result gives a model.
    pub mcp_text_chars: usize,
}

/// The run service, shared by every front end of one process.
pub struct RunService {
    settings: Settings,
    runner: Arc<dyn Runner>,
    catalog: Catalog,
    policy: Arc<scanner::Policy>,
    admission: Admission,
    /// Scans at once: a scan is CPU work on the blocking pool, so more than one per CPU
    /// only waits, and a flood of code to scan must not take every blocking thread.
    scans: Arc<tokio::sync::Semaphore>,
    refusal_log: LogThrottle,
    metrics: Arc<Metrics>,
    sessions: Arc<Sessions>,
    /// Turns true when the shutdown grace is over: runs still in flight are cancelled.
    cancelled: tokio::sync::watch::Receiver<bool>,
}

/// A request that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub code: String,
    pub timeout_ms: u64,
    pub libraries: Vec<String>,
    pub user: Option<String>,
    pub request_id: Option<String>,
    pub files: Vec<InputFile>,
    /// Whether the files the code creates or changes come back.
    pub collect_files: bool,
    /// Notebook results asked for (or not); `None` leaves it to the session, or off.
    pub results: Option<bool>,
    pub session_id: Option<String>,
    pub owner: Option<String>,
}

/// A validated request with its session taken (when it names one): ready to run.
pub struct Prepared {
    request: Validated,
    session: Option<(Arc<sessions::Session>, sessions::Held)>,
}

/// The contract's rules for the code itself.
pub fn check_code(code: &str) -> Result<(), ServiceError> {
    if code.trim().is_empty() {
        return Err(ServiceError::Invalid(
            "`code` must not be empty or whitespace only".into(),
        ));
    }
    if code.contains('\0') {
        return Err(ServiceError::Invalid(
            "`code` must not contain NUL bytes".into(),
        ));
    }
    let chars = code.chars().count();
    if chars > MAX_CODE_CHARS {
        return Err(ServiceError::TooLarge(format!(
            "`code` is {chars} characters; the maximum is {MAX_CODE_CHARS}"
        )));
    }
    Ok(())
}

/// Checks a request against the contract and the root filesystem's libraries.
pub fn validate(
    settings: &Settings,
    catalog: &Catalog,
    request: CodeRequest,
) -> Result<Validated, ServiceError> {
    check_code(&request.code)?;
    let max = settings.max_timeout_s;
    let timeout_s = match request.timeout_s {
        Some(t) if t > 0.0 && t <= max => t,
        Some(t) => {
            return Err(ServiceError::Invalid(format!(
                "`timeout` must be more than 0 and at most {max} seconds, got {t}"
            )))
        }
        None => request
            .caller_patience_s
            .and_then(within_patience)
            .map_or(settings.default_timeout_s, |budget| {
                budget.min(settings.default_timeout_s)
            }),
    };
    catalog.check(&request.libraries)?;
    let user = request.user.filter(|u| !u.is_empty());
    if let Some(user) = &user {
        if !is_usable_id(user.as_bytes()) {
            return Err(ServiceError::Invalid(format!(
                "`x-relaxai-userid` must be 1 to {MAX_ID_BYTES} letters, digits and `-_.:/`"
            )));
        }
    }
    let files = files::check_inputs(request.files.as_deref().unwrap_or(&[]), &settings.files)?;
    if let Some(id) = &request.session_id {
        if id.is_empty() {
            return Err(ServiceError::Invalid(
                "`session_id` must not be empty".into(),
            ));
        }
    }
    Ok(Validated {
        code: request.code,
        timeout_ms: millis(timeout_s),
        libraries: request.libraries,
        user,
        request_id: request.request_id,
        files,
        collect_files: request.files.is_some() || request.session_id.is_some(),
        results: request.results,
        session_id: request.session_id,
        owner: request.owner,
    })
}

/// The time a caller that waits `patience_s` seconds leaves a run: a second less, or half
/// of a very short wait.
fn within_patience(patience_s: f64) -> Option<f64> {
    (patience_s.is_finite() && patience_s > 0.0).then(|| (patience_s - 1.0).max(patience_s / 2.0))
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

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// Classifies what the sandbox reported: how the run ended, and its stderr with the limit
/// or signal that ended it named on a last line. Set-up failures and cancellations are
/// errors, not results.
pub fn classify(outcome: &RunOutcome, limits: &Limits) -> Result<(Ending, String), ServiceError> {
    let (ending, failure) = match &outcome.termination {
        Termination::Exited { code } => (Ending::Exited { code: *code }, None),
        Termination::TimedOut => (
            Ending::Limit(Limit::Timeout),
            Some("Execution timeout exceeded".to_string()),
        ),
        Termination::OutOfMemory => (
            Ending::Limit(Limit::Memory),
            Some(format!(
                "Memory limit exceeded ({} MiB)",
                limits.memory_bytes >> 20
            )),
        ),
        Termination::Signaled { signal } if *signal == libc::SIGXCPU => (
            Ending::Limit(Limit::Cpu),
            Some(format!(
                "CPU time limit exceeded ({} s)",
                limits.cpu_seconds
            )),
        ),
        Termination::Signaled { signal } => (
            Ending::Signaled { signal: *signal },
            Some(format!("process killed by {}", signal_name(*signal))),
        ),
        Termination::SetupFailed { step, errno } => {
            return Err(ServiceError::SetupFailed {
                step: step.clone(),
                errno: *errno,
            })
        }
        Termination::Cancelled => {
            return Err(ServiceError::Unavailable("the run was cancelled".into()))
        }
    };
    let mut stderr = outcome.stderr.clone();
    if let Some(message) = failure {
        if !stderr.is_empty() && !stderr.ends_with('\n') {
            stderr.push('\n');
        }
        stderr.push_str("Execution failed: ");
        stderr.push_str(&message);
    }
    Ok((ending, stderr))
}

/// The result of code the scanner refused: the spec's security-violation example.
fn refused(analysis: &Analysis, scan_time: Duration) -> RunResult {
    RunResult {
        ending: Ending::Refused,
        stdout: String::new(),
        stderr: "Security violations detected".into(),
        plots: Vec::new(),
        violations: scanner::violation_names(&analysis.violations),
        violation_lines: analysis.violations.clone(),
        execution_time: scan_time,
        scan_time,
        queue_time: Duration::ZERO,
        run: None,
        files: None,
        skipped_files: Vec::new(),
        session: None,
        results: None,
        error: None,
    }
}

/// Counts and logs a run that a client hang-up ended: the front end then drops the
/// request's future, which kills the run, and this is the only place that can still say so.
struct CallerGone<'a> {
    metrics: &'a Metrics,
    span: tracing::Span,
    armed: bool,
}

impl Drop for CallerGone<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _entered = self.span.enter();
            tracing::info!("run cancelled: the client went away");
            self.metrics.count(Verdict::cancelled);
        }
    }
}

/// Resolves once the shutdown grace is over; never when nothing can cancel runs (the
/// sender is gone: `nsbox run`, tests).
async fn shutdown_grace_over(cancelled: &mut tokio::sync::watch::Receiver<bool>) {
    if cancelled.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn code_sha256(code: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(code.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl RunService {
    pub fn new(
        settings: Settings,
        runner: Arc<dyn Runner>,
        catalog: Catalog,
        cancelled: tokio::sync::watch::Receiver<bool>,
    ) -> RunService {
        RunService {
            sessions: Arc::new(Sessions::new(settings.sessions.clone())),
            admission: Admission::new(Shares {
                max_running: settings.max_running,
                max_queue: settings.max_queue,
                max_per_user: settings.max_running_per_user,
                weights: settings.key_weights.clone(),
            }),
            scans: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, usize::from),
            )),
            refusal_log: LogThrottle::new(REFUSAL_LINES_PER_SECOND),
            settings,
            runner,
            catalog,
            policy: Arc::new(scanner::Policy::builtin()),
            metrics: Arc::new(Metrics::new()),
            cancelled,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Whether runs start warm (or the warm path is off): what readiness means.
    pub fn is_ready(&self) -> bool {
        self.runner.is_ready()
    }

    pub fn ready_templates(&self) -> Vec<Template> {
        self.runner.ready_templates()
    }

    /// Runs executing now.
    pub fn running(&self) -> usize {
        self.admission.running()
    }

    /// Requests waiting for a run slot.
    pub fn queued(&self) -> usize {
        self.admission.waiting()
    }

    /// `owner`'s runs executing now and requests waiting for a slot.
    pub fn load_of(&self, owner: &Option<String>) -> (usize, usize) {
        self.admission.load_of(owner)
    }

    /// Requests in flight (scanning, queued or running) `owner` may have.
    pub fn share_of(&self, owner: &Option<String>) -> usize {
        self.admission.shares().per_key(owner)
    }

    /// `owner`'s open sessions.
    pub fn sessions_of(&self, owner: &Option<String>) -> usize {
        self.sessions.owned_by(owner)
    }

    /// The metrics in the OpenMetrics text format.
    pub fn metrics_text(&self) -> String {
        self.metrics.encode(
            (self.queued(), self.running()),
            self.runner.restarts(),
            self.sessions.stats(),
        )
    }

    /// Counts the time a front end took to answer a request to run code.
    pub fn request_took(&self, d: Duration) {
        self.metrics.request_took(d);
    }

    /// Checks a request against the contract and the root filesystem's libraries.
    pub fn validate(&self, request: CodeRequest) -> Result<Validated, ServiceError> {
        validate(&self.settings, &self.catalog, request)
    }

    /// Validates, scans and runs one request. Every log line carries the caller's span
    /// (the front end's request id) and, once known, the user and the code's SHA-256 —
    /// never the code itself, which is logged only when `RUST_LOG` enables the
    /// `nsbox::code` target at debug level. Dropping the future kills the run.
    pub async fn execute(&self, request: CodeRequest) -> Result<RunResult, ServiceError> {
        let request = self.validate(request)?;
        self.execute_valid(request, None).await
    }

    /// A queue for a streamed run's events, bounded for this server's limits: its sender
    /// goes to [`RunService::execute_valid`], its receiver to the front end.
    pub fn event_queue(&self) -> (events::EventSender, events::EventReceiver) {
        events::channel(events::Bounds::for_limits(
            &self.settings.limits,
            &self.settings.results,
            self.settings.stream_backlog_events,
        ))
    }

    /// Runs a request that passed [`RunService::validate`]; with `events`, the output is
    /// also sent there as it comes (everything before the result).
    pub async fn execute_valid(
        &self,
        request: Validated,
        events: Option<runner::Events>,
    ) -> Result<RunResult, ServiceError> {
        let prepared = self.prepare(request)?;
        self.execute_prepared(prepared, events).await
    }

    /// Takes the session of a validated request, if it names one: an unknown, ended or
    /// busy session is refused here (404, 409), before anything starts. Front ends that
    /// must answer bad input before they start streaming validate, prepare, then call
    /// [`RunService::execute_prepared`]; the session stays theirs until then (dropping the
    /// `Prepared` lets go of it).
    pub fn prepare(&self, request: Validated) -> Result<Prepared, ServiceError> {
        // A call in a session takes its session first: 404 and 409 come before any work.
        let session = match &request.session_id {
            Some(id) => {
                let session = self.sessions.find(id, &request.owner)?;
                let held = session.acquire()?;
                Some((session, held))
            }
            None => None,
        };
        Ok(Prepared { request, session })
    }

    /// Runs a request that [`RunService::prepare`] made ready; with `events`, as
    /// [`RunService::execute_valid`].
    pub async fn execute_prepared(
        &self,
        prepared: Prepared,
        events: Option<runner::Events>,
    ) -> Result<RunResult, ServiceError> {
        let Prepared { request, session } = prepared;
        let span = tracing::Span::current();
        span.record("code_sha256", code_sha256(&request.code).as_str());
        if let Some(user) = &request.user {
            span.record("user", user.as_str());
        }
        tracing::debug!(target: "nsbox::code", code = %request.code, "code received");
        self.run(request, session, events).await
    }

    async fn run(
        &self,
        request: Validated,
        session: Option<(Arc<sessions::Session>, sessions::Held)>,
        events: Option<runner::Events>,
    ) -> Result<RunResult, ServiceError> {
        // A call says; else its session does (on unless it was made without); a run is off.
        let results = request
            .results
            .unwrap_or_else(|| session.as_ref().is_some_and(|(s, _)| s.results));
        let limits = Limits {
            timeout_ms: request.timeout_ms,
            ..self.settings.limits.clone()
        };
        // The caller's key and user take a place in their shares before any work, so a
        // flood of requests (of code the scanner refuses, too) is turned away for nothing.
        let mut ticket = self
            .admission
            .enter(request.owner.as_deref(), request.user.as_deref())
            .inspect_err(|_| self.metrics.rejected())?;
        // The scan runs off the async threads: a large file takes milliseconds to parse.
        let scan_started = Instant::now();
        let (analysis, code) = {
            // The permit goes with the scan, not the request: a client that hangs up does
            // not stop a scan under way, and its scan still counts until it ends.
            let scanning = self
                .scans
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ServiceError::Internal)?;
            let mode = self.settings.scanner;
            let policy = self.policy.clone();
            let code = request.code;
            tokio::task::spawn_blocking(move || {
                let analysis = scan(mode, &policy, &code);
                drop(scanning);
                (analysis, code)
            })
            .await
            .map_err(|_| ServiceError::Internal)?
        };
        let scan_time = scan_started.elapsed();
        let violations = scanner::violation_names(&analysis.violations);
        for v in &analysis.violations {
            tracing::debug!(rule = %v.rule_id, line = v.line, name = %v.name, "scanner violation");
        }
        if self.settings.scanner == ScannerMode::Enforce && !violations.is_empty() {
            match self.refusal_log.admit() {
                Some(0) => tracing::info!(?violations, "run refused by the scanner"),
                Some(suppressed) => tracing::info!(
                    ?violations,
                    suppressed,
                    "run refused by the scanner ({suppressed} such lines left out before it)"
                ),
                None => self.metrics.log_line_suppressed(),
            }
            let mut result = refused(&analysis, scan_time);
            // Nothing ran, so nothing changed; the answer still has the fields asked for.
            result.files = request.collect_files.then(Vec::new);
            result.results = results.then(Vec::new);
            if let Some((session, _)) = &session {
                result.session = Some(SessionState {
                    id: session.id.clone(),
                    state: "active",
                    reason: None,
                });
            }
            self.metrics.finished(&result);
            return Ok(result);
        }

        let queued = Instant::now();
        ticket
            .run_slot()
            .await
            .inspect_err(|_| self.metrics.rejected())?;
        let queue_time = queued.elapsed();
        self.metrics.queued_for(queue_time);
        let started = Instant::now();
        let run_request = RunRequest {
            // A session's interpreter was forked when the session was made.
            template: (self.settings.warm && session.is_none())
                .then(|| template_for(&analysis.imported_modules, &request.libraries)),
            code,
            limits: limits.clone(),
            request_id: request.request_id,
            // The spawner's runner sets it from `events` itself; a session's call is sent
            // as is.
            stream: events.is_some(),
            files: request.files,
            collect_files: request.collect_files.then(|| self.settings.files.caps()),
            session: false,
            results: results.then_some(self.settings.results),
        };
        let mut cancelled = self.cancelled.clone();
        let mut caller_gone = CallerGone {
            metrics: &self.metrics,
            span: tracing::Span::current(),
            armed: true,
        };
        let session_id = session.as_ref().map(|(s, _)| s.id.clone());
        let in_sandbox: runner::CallFuture<'_> = match session {
            None => {
                let run = self.runner.run(run_request, events);
                Box::pin(async move { run.await.map(Some) })
            }
            Some((session, held)) => Box::pin(async move {
                let op = SessionOp::Run {
                    request: run_request,
                };
                held.call(&session, op, events).await
            }),
        };
        let finished = tokio::select! {
            outcome = in_sandbox => Some(outcome),
            _ = shutdown_grace_over(&mut cancelled) => None,
        };
        caller_gone.armed = false;
        let mut outcome = match finished {
            Some(Ok(Some(outcome))) => outcome,
            Some(Ok(None)) => {
                // The session ended (closed, expired) while the code ran.
                self.metrics.count(Verdict::cancelled);
                let id = session_id.as_deref().unwrap_or_default();
                return Err(self
                    .sessions
                    .find(id, &request.owner)
                    .err()
                    .unwrap_or(ServiceError::NotFound("session ended".into())));
            }
            Some(Err(runner::RunnerError::Overflow(overflow))) => {
                // The client is not reading; the run was stopped when the runner let go.
                tracing::warn!(%overflow, "streamed run ended: its client fell behind");
                self.metrics.stream_overflowed();
                self.metrics.count(Verdict::cancelled);
                if let Some(id) = &session_id {
                    let reason = "its client did not read the streamed output";
                    self.sessions
                        .end(id, SessionEnd::lost, reason, &self.metrics);
                }
                return Err(ServiceError::Unavailable(overflow.to_string()));
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "run failed");
                self.metrics.count(Verdict::setup_failed);
                if let Some(id) = &session_id {
                    let reason = "its sandbox stopped unexpectedly";
                    self.sessions
                        .end(id, SessionEnd::lost, reason, &self.metrics);
                    return Err(ServiceError::Unavailable(format!(
                        "the session has ended: {reason}"
                    )));
                }
                return Err(ServiceError::Unavailable(
                    "the sandbox is restarting; retry the request".into(),
                ));
            }
            None => {
                tracing::warn!("run cancelled: the shutdown grace is over");
                self.metrics.count(Verdict::cancelled);
                return Err(ServiceError::Unavailable(
                    "the server is shutting down; retry the request".into(),
                ));
            }
        };
        let files = request
            .collect_files
            .then(|| files::check_outputs(std::mem::take(&mut outcome.files), &mut outcome.stderr));
        let skipped_files = match request.collect_files {
            true => files::check_skipped(std::mem::take(&mut outcome.skipped_files)),
            false => Vec::new(),
        };
        let session = session_id.map(|id| self.session_after_call(id, &mut outcome));
        let (ending, stderr) = match classify(&outcome, &limits) {
            Ok(classified) => classified,
            Err(e) => {
                match &e {
                    ServiceError::SetupFailed { step, errno } => {
                        tracing::error!(step, errno, "sandbox set-up failed");
                        self.metrics.count(Verdict::setup_failed);
                    }
                    _ => self.metrics.count(Verdict::cancelled),
                }
                return Err(e);
            }
        };
        let result = RunResult {
            ending,
            stdout: outcome.stdout,
            stderr,
            plots: outcome.plots,
            violations,
            violation_lines: analysis.violations,
            // The spec's execution_time covers checks and execution, not time spent queued.
            execution_time: scan_time + started.elapsed(),
            scan_time,
            queue_time,
            run: Some(RunFacts {
                cut_short: outcome.cut_short,
                wall_ms: outcome.wall_ms,
                peak_memory_bytes: outcome.peak_memory_bytes,
                warm: outcome.warm,
            }),
            files,
            skipped_files,
            session,
            results: results.then_some(outcome.results),
            error: outcome.error.filter(|_| results),
        };
        self.metrics.finished(&result);
        let run = result.run.as_ref().expect("set above");
        tracing::info!(
            verdict = ?outcome.termination,
            limits_hit = ?metrics::limits_hit(&result),
            scan_ms = scan_time.as_millis() as u64,
            queue_ms = queue_time.as_millis() as u64,
            wall_ms = run.wall_ms,
            warm = run.warm,
            peak_memory = run.peak_memory_bytes,
            session = result.session.as_ref().map(|s| s.id.as_str()),
            "run finished"
        );
        Ok(result)
    }

    /// A session after one of its calls: ended (and said on stderr) if the call ended it.
    fn session_after_call(&self, id: String, outcome: &mut RunOutcome) -> SessionState {
        let Some(reason) = outcome.session_ended.clone() else {
            return SessionState {
                id,
                state: "active",
                reason: None,
            };
        };
        let why = match outcome.termination {
            Termination::TimedOut | Termination::OutOfMemory => SessionEnd::limit,
            _ => SessionEnd::lost,
        };
        self.sessions.end(&id, why, &reason, &self.metrics);
        if !outcome.stderr.is_empty() && !outcome.stderr.ends_with('\n') {
            outcome.stderr.push('\n');
        }
        outcome
            .stderr
            .push_str(&format!("nsbox: the session has ended: {reason}\n"));
        SessionState {
            id,
            state: "ended",
            reason: Some(reason),
        }
    }

    /// Starts a session for `owner`: a sandbox forked from the warm template its
    /// `libraries` pick (the scientific one at least: sessions are for analysis), whose
    /// interpreter stays until the session ends.
    pub async fn create_session(
        &self,
        owner: Option<String>,
        libraries: Vec<String>,
        ttl_seconds: Option<u64>,
        request_id: Option<String>,
        results: Option<bool>,
    ) -> Result<SessionInfo, ServiceError> {
        self.catalog.check(&libraries)?;
        let ttl = self.sessions.ttl(ttl_seconds)?;
        let reservation = self
            .sessions
            .reserve(owner, self.settings.limits.memory_bytes)?;
        let template = self
            .settings
            .warm
            .then(|| match template_for(&[], &libraries) {
                Template::Base => Template::Scientific,
                t => t,
            });
        let lifetime = self.settings.sessions.max_lifetime.as_secs().max(1);
        let limits = Limits {
            // CPU time adds up over a session's calls: each call is held to its timeout and
            // the cgroup's CPU quota, and RLIMIT_CPU only to the session's lifetime.
            cpu_seconds: lifetime.saturating_mul(self.settings.limits.cpus.ceil().max(1.0) as u64),
            ..self.settings.limits.clone()
        };
        let request = RunRequest {
            code: String::new(),
            limits,
            template,
            request_id,
            stream: false,
            files: Vec::new(),
            collect_files: None,
            session: true,
            results: None,
        };
        let started = Instant::now();
        let (conn, outcome) = self.runner.open_session(request).await.map_err(|e| {
            tracing::error!(error = %e, "starting a session");
            match e {
                runner::RunnerError::NoSessions => {
                    ServiceError::Unavailable("sessions are not available here".into())
                }
                _ => {
                    ServiceError::Unavailable("the sandbox is restarting; retry the request".into())
                }
            }
        })?;
        match outcome.termination {
            Termination::Exited { code: 0 } => {}
            Termination::SetupFailed { step, errno } => {
                tracing::error!(step, errno, stderr = %outcome.stderr, "session set-up failed");
                return Err(ServiceError::SetupFailed { step, errno });
            }
            other => {
                tracing::error!(termination = ?other, "session set-up ended unexpectedly");
                return Err(ServiceError::Internal);
            }
        }
        let session = self.sessions.insert(
            reservation,
            conn,
            template,
            libraries,
            // Sessions are for notebook work: results are on unless asked off.
            results.unwrap_or(true),
            ttl,
            outcome.memory_bytes,
            &self.metrics,
        );
        tracing::info!(
            session = %session.id,
            template = template.map(Template::name),
            warm = outcome.warm,
            ms = started.elapsed().as_millis() as u64,
            "session created"
        );
        Ok(session.info(self.settings.sessions.max_lifetime))
    }

    /// The session `id` as its owner sees it.
    pub fn session_info(
        &self,
        id: &str,
        owner: &Option<String>,
    ) -> Result<SessionInfo, ServiceError> {
        let session = self.sessions.find(id, owner)?;
        Ok(session.info(self.settings.sessions.max_lifetime))
    }

    /// Ends the session `id` at its owner's request; a call in flight is stopped.
    pub fn close_session(&self, id: &str, owner: &Option<String>) -> Result<(), ServiceError> {
        let session = self.sessions.find(id, owner)?;
        self.sessions.end(
            &session.id,
            SessionEnd::closed,
            "closed by its client",
            &self.metrics,
        );
        Ok(())
    }

    /// Ends every session (the server is stopping).
    pub fn end_sessions(&self) {
        self.sessions.end_all(&self.metrics);
    }

    /// Sessions open now, created and ended so far.
    pub fn session_counts(&self) -> (usize, u64, u64) {
        let (active, _) = self.sessions.stats();
        let (created, ended) = self.metrics.session_totals();
        (active, created, ended)
    }

    /// One file request in a session, answered by its harness.
    async fn session_op(
        &self,
        id: &str,
        owner: &Option<String>,
        op: SessionOp,
    ) -> Result<RunOutcome, ServiceError> {
        let session = self.sessions.find(id, owner)?;
        let held = session.acquire()?;
        match held.call(&session, op, None).await {
            Ok(Some(mut outcome)) => {
                if outcome.session_ended.is_some() {
                    self.session_after_call(session.id.clone(), &mut outcome);
                    return Err(self
                        .sessions
                        .find(id, owner)
                        .err()
                        .unwrap_or(ServiceError::Internal));
                }
                Ok(outcome)
            }
            Ok(None) => Err(self
                .sessions
                .find(id, owner)
                .err()
                .unwrap_or(ServiceError::Internal)),
            Err(e) => {
                tracing::error!(error = %e, "session file request failed");
                let reason = "its sandbox stopped unexpectedly";
                self.sessions
                    .end(id, SessionEnd::lost, reason, &self.metrics);
                Err(ServiceError::Unavailable(format!(
                    "the session has ended: {reason}"
                )))
            }
        }
    }

    /// The regular files of a session's working directory.
    pub async fn list_session_files(
        &self,
        id: &str,
        owner: &Option<String>,
        request_id: Option<String>,
    ) -> Result<Vec<files::FileInfo>, ServiceError> {
        let outcome = self
            .session_op(id, owner, SessionOp::ListFiles { request_id })
            .await?;
        Ok(outcome
            .files
            .into_iter()
            .filter(|f| files::path_problem(&f.path).is_none())
            .map(|f| files::FileInfo::new(f.path, f.size))
            .collect())
    }

    /// One file of a session's working directory, under the per-file cap.
    pub async fn read_session_file(
        &self,
        id: &str,
        owner: &Option<String>,
        path: &str,
        request_id: Option<String>,
    ) -> Result<Vec<u8>, ServiceError> {
        if let Some(problem) = files::path_problem(path) {
            return Err(ServiceError::Invalid(format!(
                "file path {path:?} {problem}"
            )));
        }
        let max = self.settings.files.max_file_bytes;
        let caps = FileCaps {
            max_count: 1,
            max_file_bytes: max,
            max_total_bytes: max,
        };
        let op = SessionOp::ReadFile {
            path: path.to_string(),
            caps,
            request_id,
        };
        let outcome = self.session_op(id, owner, op).await?;
        if let Termination::Exited { code: 0 } = outcome.termination {
            let content = outcome
                .files
                .into_iter()
                .find(|f| f.path == path)
                .and_then(|f| f.content_base64)
                .ok_or(ServiceError::Internal)?;
            use base64::Engine;
            return base64::engine::general_purpose::STANDARD
                .decode(content)
                .map_err(|_| ServiceError::Internal);
        }
        match outcome.stderr.trim() {
            "too_large" => Err(ServiceError::TooLarge(format!(
                "file {path:?} is larger than {max} bytes (file_max_mib)"
            ))),
            _ => Err(ServiceError::NotFound(format!(
                "no regular file {path:?} in the session's working directory"
            ))),
        }
    }

    /// Writes one file into a session's working directory, checked as a request's input
    /// files are.
    /// With `append`, the content goes at the end of the file (made if missing): a client
    /// whose messages are bounded (MCP) sends a large file in pieces. The answer's size is
    /// the file's after the write.
    pub async fn write_session_file(
        &self,
        id: &str,
        owner: &Option<String>,
        path: &str,
        content: FileContent,
        append: bool,
        request_id: Option<String>,
    ) -> Result<files::FileInfo, ServiceError> {
        let file = FileInput {
            path: path.to_string(),
            content,
        };
        let limits = FileLimits {
            max_count: 1,
            max_file_bytes: self.settings.files.max_file_bytes,
            max_total_bytes: self.settings.files.max_file_bytes,
        };
        let mut file = files::check_inputs(&[file], &limits)?.remove(0);
        file.append = append;
        let sent = files::decoded_len(&file.content_base64);
        let outcome = self
            .session_op(id, owner, SessionOp::WriteFile { file, request_id })
            .await?;
        // The harness names the file with its size once written; without that, the size of
        // what was sent (a replaced file's).
        let size = outcome
            .files
            .iter()
            .find(|f| f.path == path)
            .map_or(sent, |f| f.size);
        match outcome.termination {
            Termination::Exited { code: 0 } => Ok(files::FileInfo::new(path.to_string(), size)),
            _ => Err(ServiceError::Invalid(format!(
                "file {path:?} could not be written: {}",
                outcome.stderr.trim()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(termination: Termination, stderr: &str) -> RunOutcome {
        RunOutcome {
            termination,
            stdout: String::new(),
            stderr: stderr.into(),
            plots: vec![],
            cut_short: vec![],
            wall_ms: 1,
            peak_memory_bytes: None,
            warm: false,
            files: vec![],
            skipped_files: vec![],
            memory_bytes: None,
            session_ended: None,
            results: vec![],
            error: None,
        }
    }

    #[test]
    fn limits_and_signals_are_classified_and_named_in_stderr() {
        let limits = Limits::default();
        let c = |t, e| classify(&outcome(t, e), &limits).unwrap();
        let (ending, stderr) = c(Termination::TimedOut, "");
        assert_eq!(ending, Ending::Limit(Limit::Timeout));
        assert_eq!((ending.success(), ending.exit_code()), (false, -1));
        assert_eq!(stderr, "Execution failed: Execution timeout exceeded");
        let (ending, stderr) = c(Termination::OutOfMemory, "partial");
        assert_eq!(ending, Ending::Limit(Limit::Memory));
        assert_eq!(
            stderr,
            "partial\nExecution failed: Memory limit exceeded (512 MiB)"
        );
        let (ending, stderr) = c(
            Termination::Signaled {
                signal: libc::SIGXCPU,
            },
            "",
        );
        assert_eq!(ending, Ending::Limit(Limit::Cpu));
        assert_eq!(stderr, "Execution failed: CPU time limit exceeded (60 s)");
        let (ending, stderr) = c(Termination::Exited { code: 1 }, "Traceback");
        assert_eq!((ending.success(), ending.exit_code()), (true, 1));
        assert_eq!(stderr, "Traceback");
        let (ending, stderr) = c(Termination::Signaled { signal: 11 }, "");
        assert_eq!(ending, Ending::Signaled { signal: 11 });
        assert!(stderr.contains("SIGSEGV"));
    }

    #[test]
    fn setup_failures_and_cancellations_are_errors() {
        let limits = Limits::default();
        let err = classify(
            &outcome(
                Termination::SetupFailed {
                    step: "mount /proc".into(),
                    errno: 13,
                },
                "",
            ),
            &limits,
        )
        .unwrap_err();
        assert!(matches!(err, ServiceError::SetupFailed { errno: 13, .. }));
        assert!(matches!(
            classify(&outcome(Termination::Cancelled, ""), &limits),
            Err(ServiceError::Unavailable(_))
        ));
    }

    #[test]
    fn seconds_become_milliseconds_rounded_up() {
        assert_eq!(millis(30.0), 30_000);
        assert_eq!(millis(0.25), 250);
        assert_eq!(millis(0.0001), 1);
    }

    #[test]
    fn the_callers_patience_leaves_a_second_for_the_answer() {
        assert_eq!(within_patience(30.0), Some(29.0));
        assert_eq!(within_patience(1.0), Some(0.5));
        assert_eq!(within_patience(f64::NAN), None);
        assert_eq!(within_patience(-3.0), None);
    }

    fn settings() -> Settings {
        Settings {
            limits: Limits::default(),
            default_timeout_s: 30.0,
            max_timeout_s: 300.0,
            scanner: ScannerMode::Enforce,
            warm: false,
            max_running: 1,
            max_queue: 1,
            results: ResultCaps::default(),
            stream_backlog_events: events::DEFAULT_MAX_EVENTS,
            max_running_per_user: Some(1),
            key_weights: KeyWeights::default(),
            files: FileLimits {
                max_count: 2,
                max_file_bytes: 10,
                max_total_bytes: 10,
            },
            sessions: SessionSettings::default(),
            mcp_attach_bytes: 256 << 10,
            mcp_text_chars: 20_000,
        }
    }

    fn v(timeout_s: Option<f64>, patience: Option<f64>) -> Result<Validated, ServiceError> {
        validate(
            &settings(),
            &Catalog::default(),
            CodeRequest {
                code: "x".into(),
                timeout_s,
                caller_patience_s: patience,
                ..CodeRequest::default()
            },
        )
    }

    #[test]
    fn timeouts_are_checked_once_and_kept_under_the_callers_patience() {
        assert_eq!(v(None, None).unwrap().timeout_ms, 30_000);
        assert_eq!(v(Some(5.0), None).unwrap().timeout_ms, 5_000);
        assert_eq!(v(Some(0.25), None).unwrap().timeout_ms, 250);
        assert_eq!(v(None, Some(10.0)).unwrap().timeout_ms, 9_000);
        // An explicit timeout is the caller's own choice.
        assert_eq!(v(Some(20.0), Some(10.0)).unwrap().timeout_ms, 20_000);
        // Patience longer than the default leaves the default.
        assert_eq!(v(None, Some(600.0)).unwrap().timeout_ms, 30_000);
        for bad in [0.0, -3.0, 301.0, 1e308, f64::INFINITY, f64::NAN] {
            let err = v(Some(bad), None).unwrap_err();
            assert!(
                matches!(&err, ServiceError::Invalid(m) if m.contains("more than 0 and at most 300")),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn unknown_libraries_are_refused() {
        let err = validate(
            &settings(),
            &Catalog::default(),
            CodeRequest {
                code: "x".into(),
                libraries: vec!["tensorflow".into()],
                ..CodeRequest::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, ServiceError::Invalid(m) if m.contains("tensorflow")));
    }

    #[test]
    fn code_rules() {
        assert!(
            matches!(check_code(" \n\t"), Err(ServiceError::Invalid(m)) if m.contains("empty"))
        );
        assert!(matches!(check_code("a\0b"), Err(ServiceError::Invalid(m)) if m.contains("NUL")));
        assert!(check_code(&"é".repeat(MAX_CODE_CHARS)).is_ok());
        assert!(matches!(
            check_code(&"a".repeat(MAX_CODE_CHARS + 1)),
            Err(ServiceError::TooLarge(_))
        ));
    }
}
