//! The run service: the one path from a request to run code to its result, under every front end.
//!
//! HTTP (`api`), `nsbox run`, and later SSE, MCP and sessions are adapters: each turns its
//! input into a [`CodeRequest`], calls [`RunService::execute`], and turns the [`RunResult`]
//! or [`ServiceError`] back into its own shape. Validation, scanning, the choice of warm
//! template, limits, admission, outcome classification and metrics exist here once:
//! the request's checks in `request`, the classification in `outcome`, sessions in
//! `session_calls` (over the books of `sessions`), and the path of one run here.

pub mod admission;
pub mod catalog;
pub mod events;
pub mod files;
mod installs;
pub mod metrics;
mod outcome;
mod request;
pub mod response;
pub mod runner;
mod session_calls;
pub mod session_ids;
pub mod sessions;
pub mod throttle;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ScannerMode;
use crate::sandbox::warm::{template_for, Template};
use crate::sandbox::{Limits, ResultCaps, RunOutcome, RunRequest, SessionOp};
use crate::scanner::{self, Analysis};
use admission::{Admission, KeyWeights, Shares};
use catalog::Catalog;
use files::FileLimits;
pub use installs::Packages;
use metrics::{Metrics, SessionEnd, Verdict};
pub use outcome::{classify, Ending, Limit, RunFacts, RunResult, SessionState};
pub use request::{
    check_code, is_usable_id, millis, validate, CodeRequest, Validated, MAX_CODE_CHARS,
    MAX_ID_BYTES,
};
pub use response::CodeResponse;
use runner::Runner;
pub use session_calls::session_cpu_seconds;
use sessions::{SessionSettings, Sessions};
use throttle::LogThrottle;

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
    /// The session id names another node: the request reached the wrong one.
    #[error("{0}")]
    Misdirected(String),
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
    /// The operator's egress policy (docs/egress.md); `None`: runs have no door.
    pub egress: Option<crate::egress::Policies>,
    /// Packages on demand (`[packages]`): its rules and the cache; `None`: `libraries`
    /// names only what the tree has.
    pub packages: Option<installs::Packages>,
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
    /// Installs under way, by the key of their libraries: a second request for the same
    /// set waits for the first install instead of starting its own.
    installs: installs::InFlight,
}

/// A validated request with its session taken (when it names one): ready to run.
pub struct Prepared {
    request: Validated,
    session: Option<(Arc<sessions::Session>, sessions::Held)>,
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
            installs: installs::InFlight::default(),
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

    /// The ready sandboxes (the pool), for the status.
    pub fn pool(&self) -> crate::sandbox::spawner::PoolStatus {
        self.runner.pool()
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
        let scan_started = Instant::now();
        let (analysis, code) = self.scan_off_thread(request.code).await?;
        let scan_time = scan_started.elapsed();
        let violations = scanner::violation_names(&analysis.violations);
        for v in &analysis.violations {
            tracing::debug!(rule = %v.rule_id, line = v.line, name = %v.name, "scanner violation");
        }
        if self.settings.scanner == ScannerMode::Enforce && !violations.is_empty() {
            let session_id = session.as_ref().map(|(s, _)| s.id.clone());
            return Ok(self.refuse(
                violations,
                analysis.violations,
                scan_time,
                request.collect_files,
                results,
                session_id,
            ));
        }

        if let Some((s, _)) = &session {
            installs::check_session_has(&s.libraries, &request.packages)?;
        }
        let queued = Instant::now();
        ticket
            .run_slot()
            .await
            .inspect_err(|_| self.metrics.rejected())?;
        let queue_time = queued.elapsed();
        self.metrics.queued_for(queue_time);
        // A set the tree lacks is looked up in the cache, or installed into it by a run of
        // the installer in this request's slot: installs are runs, and no more of them run
        // at once than `max_running` allows.
        let site = match &session {
            Some(_) => None,
            None => {
                self.site_for(&request.packages, request.request_id.as_deref())
                    .await?
            }
        };
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
            // Set by the runner when the run has a door.
            egress_port: None,
            site,
            egress_ca: None,
        };
        let door = request.egress.clone().map(|policy| crate::egress::Door {
            policy,
            request_id: run_request.request_id.clone(),
            metrics: self.metrics.egress(),
        });
        let session_id = session.as_ref().map(|(s, _)| s.id.clone());
        let mut outcome = self
            .in_sandbox(run_request, door, session, events, &request.owner)
            .await?;
        let files = request
            .collect_files
            .then(|| files::check_outputs(std::mem::take(&mut outcome.files), &mut outcome.stderr));
        let skipped_files = match request.collect_files {
            true => files::check_skipped(std::mem::take(&mut outcome.skipped_files)),
            false => Vec::new(),
        };
        let session = session_id.map(|id| self.session_after_call(id, &mut outcome));
        let (ending, stderr) = classify(&outcome, &limits).inspect_err(|e| match e {
            ServiceError::SetupFailed { step, errno } => {
                tracing::error!(step, errno, "sandbox set-up failed");
                self.metrics.count(Verdict::setup_failed);
            }
            _ => self.metrics.count(Verdict::cancelled),
        })?;
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
        tracing::info!(
            verdict = ?outcome.termination,
            limits_hit = ?metrics::limits_hit(&result),
            scan_ms = scan_time.as_millis() as u64,
            queue_ms = queue_time.as_millis() as u64,
            wall_ms = outcome.wall_ms,
            warm = outcome.warm,
            peak_memory = outcome.peak_memory_bytes,
            session = result.session.as_ref().map(|s| s.id.as_str()),
            "run finished"
        );
        Ok(result)
    }

    /// Scans the code off the async threads (a large file takes milliseconds to parse),
    /// at most one scan per CPU; gives the code back with its analysis.
    async fn scan_off_thread(&self, code: String) -> Result<(Analysis, String), ServiceError> {
        // The permit goes with the scan, not the request: a client that hangs up does not
        // stop a scan under way, and its scan still counts until it ends.
        let scanning = self
            .scans
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ServiceError::Internal)?;
        let mode = self.settings.scanner;
        let policy = self.policy.clone();
        tokio::task::spawn_blocking(move || {
            let analysis = scan(mode, &policy, &code);
            drop(scanning);
            (analysis, code)
        })
        .await
        .map_err(|_| ServiceError::Internal)
    }

    /// The answer to code the scanner refused (logged within the refusal log's rate).
    /// Nothing ran, so nothing changed; the answer still has the fields asked for.
    fn refuse(
        &self,
        violations: Vec<String>,
        violation_lines: Vec<scanner::Violation>,
        scan_time: Duration,
        collect_files: bool,
        results: bool,
        session_id: Option<String>,
    ) -> RunResult {
        match self.refusal_log.admit() {
            Some(0) => tracing::info!(?violations, "run refused by the scanner"),
            Some(suppressed) => tracing::info!(
                ?violations,
                suppressed,
                "run refused by the scanner ({suppressed} such lines left out before it)"
            ),
            None => self.metrics.log_line_suppressed(),
        }
        let mut result = outcome::refused(violations, violation_lines, scan_time);
        result.files = collect_files.then(Vec::new);
        result.results = results.then(Vec::new);
        result.session = session_id.map(|id| SessionState {
            id,
            state: "active",
            reason: None,
        });
        self.metrics.finished(&result);
        result
    }

    /// Runs `run_request` in a fresh sandbox, or as a call of `session`, until it ends or
    /// the shutdown grace is over. What kept it from ending by itself (the session ended,
    /// its client fell behind the stream, the sandbox failed, the shutdown) is counted,
    /// logged and turned into the client's error here.
    async fn in_sandbox(
        &self,
        run_request: RunRequest,
        door: Option<crate::egress::Door>,
        session: Option<(Arc<sessions::Session>, sessions::Held)>,
        events: Option<runner::Events>,
        owner: &Option<String>,
    ) -> Result<RunOutcome, ServiceError> {
        let mut cancelled = self.cancelled.clone();
        let mut caller_gone = CallerGone {
            metrics: &self.metrics,
            span: tracing::Span::current(),
            armed: true,
        };
        let session_id = session.as_ref().map(|(s, _)| s.id.clone());
        let in_sandbox: runner::CallFuture<'_> = match session {
            None => {
                let run = match door {
                    Some(door) => self.runner.run_with_door(run_request, events, door),
                    None => self.runner.run(run_request, events),
                };
                Box::pin(async move { run.await.map(Some) })
            }
            Some((session, held)) => Box::pin(async move {
                let op = SessionOp::Run {
                    request: Box::new(run_request),
                };
                held.call(&session, op, events).await
            }),
        };
        let finished = tokio::select! {
            outcome = in_sandbox => Some(outcome),
            _ = shutdown_grace_over(&mut cancelled) => None,
        };
        caller_gone.armed = false;
        match finished {
            Some(Ok(Some(outcome))) => Ok(outcome),
            Some(Ok(None)) => {
                // The session ended (closed, expired) while the code ran.
                self.metrics.count(Verdict::cancelled);
                let id = session_id.as_deref().unwrap_or_default();
                Err(self
                    .sessions
                    .find(id, owner)
                    .err()
                    .unwrap_or(ServiceError::NotFound("session ended".into())))
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
                Err(ServiceError::Unavailable(overflow.to_string()))
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
                Err(ServiceError::Unavailable(
                    "the sandbox is restarting; retry the request".into(),
                ))
            }
            None => {
                tracing::warn!("run cancelled: the shutdown grace is over");
                self.metrics.count(Verdict::cancelled);
                Err(ServiceError::Unavailable(
                    "the server is shutting down; retry the request".into(),
                ))
            }
        }
    }
}
