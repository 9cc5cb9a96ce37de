//! How a run ended, classified once for every front end: the ending, the limit or signal named on stderr, and the result the front ends map.

use std::time::Duration;

use super::ServiceError;
use crate::sandbox::{
    Cut, Limits, NotebookError, NotebookOutput, OutputFile, Plot, RunOutcome, SkippedFile,
    Termination,
};

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
    pub violation_lines: Vec<crate::scanner::Violation>,
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

impl RunResult {
    /// A result that ended so, with this output and nothing else (no run facts, files or
    /// results): the scanner's refusal, and front ends' tests.
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
pub(super) fn refused(
    violations: Vec<String>,
    violation_lines: Vec<crate::scanner::Violation>,
    scan_time: Duration,
) -> RunResult {
    RunResult {
        violations,
        violation_lines,
        execution_time: scan_time,
        scan_time,
        ..RunResult::ended(Ending::Refused, "", "Security violations detected")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::Termination;

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
}
