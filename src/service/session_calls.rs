//! The run service's sessions: creating one from a warm template, finding and ending it, and the file requests its harness answers.

use std::time::Instant;

use super::files::{self, FileContent, FileInput, FileLimits};
use super::metrics::SessionEnd;
use super::runner;
use super::sessions::SessionInfo;
use super::{RunService, ServiceError, SessionState};
use crate::sandbox::warm::{template_for, Template};
use crate::sandbox::{FileCaps, Limits, RunOutcome, RunRequest, SessionOp, Termination};

impl RunService {
    /// A session after one of its calls: ended (and said on stderr) if the call ended it.
    pub(super) fn session_after_call(&self, id: String, outcome: &mut RunOutcome) -> SessionState {
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
        network: Option<Vec<String>>,
    ) -> Result<SessionInfo, ServiceError> {
        let packages = super::request::libraries(&self.settings, &self.catalog, &libraries)?;
        // A session takes its egress at creation, for all its calls.
        let egress =
            super::request::egress(&self.settings, owner.as_deref(), network.as_deref(), false)?;
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
        // Installed (or found in the cache) once, here: every call of the session sees it.
        let site = self.site_for(&packages, request_id.as_deref()).await?;
        let limits = Limits {
            cpu_seconds: session_cpu_seconds(
                self.settings.sessions.max_lifetime.as_secs(),
                self.settings.limits.cpus,
            ),
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
            egress_port: None,
            site,
            egress_ca: None,
        };
        let started = Instant::now();
        let door = egress.map(|policy| crate::egress::Door {
            policy,
            request_id: request.request_id.clone(),
            metrics: self.metrics.egress(),
        });
        let opened = match door {
            Some(door) => self.runner.open_session_with_door(request, door),
            None => self.runner.open_session(request),
        };
        let (conn, outcome) = opened.await.map_err(|e| {
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

/// A session's CPU time limit. CPU time adds up over a session's calls: each call is held
/// to its timeout and the cgroup's CPU quota, and RLIMIT_CPU only to the session's
/// lifetime.
pub fn session_cpu_seconds(max_lifetime_secs: u64, cpus: f64) -> u64 {
    max_lifetime_secs
        .max(1)
        .saturating_mul(cpus.ceil().max(1.0) as u64)
}
