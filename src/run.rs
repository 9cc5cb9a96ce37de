//! `nsbox run`: one file in the server's own sandbox, for local use and debugging. Output
//! goes to this terminal, plots to files, and the code's exit status becomes nsbox's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine;

use crate::api::code::{self, CodeResponse};
use crate::api::{RunMode, ScannerMode};
use crate::config::Config;
use crate::host::{self, HostError, Prepared};
use crate::sandbox::spawner::{Spawner, SpawnerError};
use crate::sandbox::{Limits, RunOutcome, RunRequest, Termination};

/// Exit statuses of `nsbox run` that are not the code's own, following `timeout(1)` and
/// the shell's 128+signal convention so scripts can tell them apart.
pub mod status {
    /// The configuration or the input was refused before anything ran.
    pub const USAGE: u8 = 2;
    /// The wall-clock limit ended the run (as `timeout(1)`).
    pub const TIMEOUT: u8 = 124;
    /// The sandbox could not be set up.
    pub const SANDBOX: u8 = 125;
    /// The scanner refused the code.
    pub const REFUSED: u8 = 126;
    /// Killed by signal N: 128 + N (the memory limit is SIGKILL, 137).
    pub const SIGNAL_BASE: u8 = 128;
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Host(#[from] HostError),
    #[error("starting the sandbox: {0}")]
    Spawner(#[from] SpawnerError),
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("the sandbox could not be set up: step `{step}` failed (errno {errno})")]
    SetupFailed { step: String, errno: i32 },
    #[error("writing {path}: {source}")]
    WritePlot {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl RunError {
    pub fn exit_status(&self) -> u8 {
        match self {
            RunError::Read { .. } | RunError::Input(_) => status::USAGE,
            _ => status::SANDBOX,
        }
    }
}

/// What `nsbox run` was asked to do.
pub struct RunOptions {
    /// A file, or `-` for standard input.
    pub file: PathBuf,
    pub plots_dir: PathBuf,
    pub timeout_s: Option<f64>,
    /// Print the API's JSON response instead of the output.
    pub json: bool,
}

/// A sandbox of one's own: the host prepared as the server would, and a spawner.
pub struct Sandbox {
    prepared: Prepared,
    spawner: Option<Spawner>,
    runtime: tokio::runtime::Runtime,
}

impl Sandbox {
    pub fn start(config: &Config) -> Result<Sandbox, RunError> {
        let prepared = host::prepare(config, RunMode::Cold)?;
        let spawner = Spawner::start(prepared.spawner.clone())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RunError::Runtime)?;
        Ok(Sandbox {
            prepared,
            spawner: Some(spawner),
            runtime,
        })
    }

    pub fn run(&self, code: String, limits: Limits) -> Result<RunOutcome, RunError> {
        let request = RunRequest {
            code,
            limits,
            template: None,
        };
        let spawner = self.spawner.as_ref().expect("the spawner lives until drop");
        let outcome = self.runtime.block_on(spawner.run(&request))?;
        if let Termination::SetupFailed { step, errno } = outcome.termination {
            return Err(RunError::SetupFailed { step, errno });
        }
        Ok(outcome)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // The spawner (and every run) must be gone before the cgroup parent is removed.
        drop(self.spawner.take());
        self.prepared.release();
    }
}

fn read_code(file: &Path) -> Result<String, RunError> {
    let read = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    };
    read.map_err(|source| RunError::Read {
        path: file.to_path_buf(),
        source,
    })
}

/// Runs the file and returns the exit status `nsbox run` should end with.
pub fn main(config: &Config, opts: &RunOptions) -> Result<u8, RunError> {
    let code = read_code(&opts.file)?;
    code::check_code(&code).map_err(|e| RunError::Input(e.message))?;
    let timeout_s = opts.timeout_s.unwrap_or(config.default_timeout);
    if !(timeout_s > 0.0 && timeout_s <= config.max_timeout) {
        return Err(RunError::Input(format!(
            "--timeout must be more than 0 and at most {} seconds (max_timeout)",
            config.max_timeout
        )));
    }
    let limits = Limits {
        timeout_ms: (timeout_s * 1000.0).ceil() as u64,
        ..host::limits(config)
    };

    let scan_started = Instant::now();
    let analysis = code::scan(config.scanner, &crate::scanner::Policy::builtin(), &code);
    let violations = crate::scanner::violation_names(&analysis.violations);
    if config.scanner == ScannerMode::Enforce && !violations.is_empty() {
        let response = code::refused(violations, scan_started.elapsed());
        print_response(&response, opts)?;
        return Ok(status::REFUSED);
    }

    let sandbox = Sandbox::start(config)?;
    let started = Instant::now();
    let outcome = sandbox.run(code, limits.clone())?;
    drop(sandbox);
    let mut response =
        code::respond(&outcome, &limits, started).map_err(|e| RunError::Input(e.message))?;
    response.violations = violations;
    print_response(&response, opts)?;
    Ok(exit_status(&outcome.termination))
}

/// The code's own status, or what ended it.
pub fn exit_status(termination: &Termination) -> u8 {
    match termination {
        Termination::Exited { code } => (*code & 0xff) as u8,
        Termination::TimedOut => status::TIMEOUT,
        Termination::OutOfMemory => status::SIGNAL_BASE + libc::SIGKILL as u8,
        Termination::Signaled { signal } => status::SIGNAL_BASE.saturating_add(*signal as u8),
        Termination::SetupFailed { .. } | Termination::Cancelled => status::SANDBOX,
    }
}

fn print_response(response: &CodeResponse, opts: &RunOptions) -> Result<(), RunError> {
    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(response).expect("a response serializes")
        );
        return Ok(());
    }
    // Broken pipes (`nsbox run x.py | head`) are not worth an error.
    let _ = std::io::stdout().write_all(response.stdout.as_bytes());
    let _ = std::io::stdout().flush();
    let mut err = std::io::stderr();
    let _ = err.write_all(response.stderr.as_bytes());
    // The API's stderr may end mid-line ("Security violations detected"); a terminal's
    // next line should not start there.
    if !response.stderr.is_empty() && !response.stderr.ends_with('\n') {
        let _ = err.write_all(b"\n");
    }
    if !response.violations.is_empty() {
        let _ = writeln!(
            err,
            "nsbox: scanner violations: {}",
            response.violations.join(", ")
        );
    }
    for plot in &response.plots {
        let path = opts.plots_dir.join(&plot.filename);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&plot.content_base64)
            .expect("the supervisor encodes plots as base64");
        std::fs::write(&path, bytes).map_err(|source| RunError::WritePlot {
            path: path.clone(),
            source,
        })?;
        let _ = writeln!(err, "nsbox: plot written to {}", path.display());
    }
    Ok(())
}

/// What `nsbox check` runs to see the sandbox as code sees it.
const PROBE_CODE: &str = "\
import os
status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)
print(os.getuid(), os.getgid(), status['Seccomp'].strip(), status['CapEff'].strip(), status['NoNewPrivs'].strip())
";

/// Runs a probe in a real sandbox and says what it saw: the end-to-end line of `nsbox check`.
pub fn probe(config: &Config) -> Result<String, String> {
    let config = Config {
        // Checks what can be had; whether it is enough is the other probes' verdict.
        allow_incomplete_isolation: true,
        scanner: ScannerMode::Off,
        ..config.clone()
    };
    let started = Instant::now();
    let sandbox = Sandbox::start(&config).map_err(|e| e.to_string())?;
    let outcome = sandbox
        .run(
            PROBE_CODE.into(),
            Limits {
                timeout_ms: 30_000,
                ..host::limits(&config)
            },
        )
        .map_err(|e| e.to_string())?;
    drop(sandbox);
    let elapsed = started.elapsed();
    if outcome.termination != (Termination::Exited { code: 0 }) {
        return Err(format!(
            "the probe run ended with {:?}: {}",
            outcome.termination,
            outcome.stderr.trim()
        ));
    }
    let fields: Vec<&str> = outcome.stdout.split_whitespace().collect();
    match fields.as_slice() {
        [uid, gid, "2", caps, "1"] if caps.trim_start_matches('0').is_empty() => Ok(format!(
            "Python ran as uid {uid} gid {gid}, seccomp filter on, no capabilities, \
             no_new_privs ({} ms including set-up)",
            elapsed.as_millis()
        )),
        _ => Err(format!(
            "the probe run saw an unexpected sandbox: {}",
            outcome.stdout.trim()
        )),
    }
}
