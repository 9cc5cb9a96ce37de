//! `nsbox run`: one file in the server's own sandbox, for local use and debugging. Output
//! goes to this terminal, plots to files, and the code's exit status becomes nsbox's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine;

use crate::config::{Config, RunMode, ScannerMode};
use crate::host::{LocalService, StartError};
use crate::sandbox::CHART_MIME;
use crate::service::files::{FileContent, FileInput};
use crate::service::response::FileResponse;
use crate::service::{CodeRequest, CodeResponse, Ending, Limit, RunResult, ServiceError};

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
    Service(ServiceError),
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("writing {path}: {source}")]
    WriteFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    WritePlot {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the results to {path}: {source}")]
    WriteResults {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl RunError {
    pub fn exit_status(&self) -> u8 {
        match self {
            RunError::Read { .. }
            | RunError::Input(_)
            | RunError::Service(ServiceError::Invalid(_) | ServiceError::TooLarge(_)) => {
                status::USAGE
            }
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
    /// Input files: `PATH`, or `NAME=PATH` to choose the name in the working directory.
    pub files: Vec<String>,
    /// Where output files go; `None` does not collect them.
    pub out_dir: Option<PathBuf>,
    /// Where the results go as JSON (their plain text is printed anyway).
    pub results_file: Option<PathBuf>,
}

/// A sandbox of one's own: the run service as the server has it, over a cold spawner,
/// with a runtime to wait on it.
pub struct Sandbox {
    local: LocalService,
    runtime: tokio::runtime::Runtime,
}

impl Sandbox {
    pub fn start(config: &Config) -> Result<Sandbox, RunError> {
        // Nothing cancels a local run but the user's ^C.
        let never = tokio::sync::watch::channel(false).1;
        let local = LocalService::start(config, RunMode::Cold, never, Default::default())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RunError::Runtime)?;
        Ok(Sandbox { local, runtime })
    }

    pub fn run(&self, request: CodeRequest) -> Result<RunResult, RunError> {
        self.runtime
            .block_on(self.local.service().execute(request))
            .map_err(RunError::Service)
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

/// The `--file` arguments as input files: `NAME=PATH` or `PATH` (named by its last
/// component). The service checks the names like any request's.
fn input_files(args: &[String]) -> Result<Vec<FileInput>, RunError> {
    args.iter()
        .map(|arg| {
            let (name, path) = match arg.split_once('=') {
                Some((name, path)) => (name.to_string(), PathBuf::from(path)),
                None => {
                    let path = PathBuf::from(arg);
                    let name = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .ok_or_else(|| {
                            RunError::Input(format!(
                                "--file {arg}: no file name; use --file NAME={arg}"
                            ))
                        })?
                        .to_string();
                    (name, path)
                }
            };
            let bytes = std::fs::read(&path).map_err(|source| RunError::Read {
                path: path.clone(),
                source,
            })?;
            Ok(FileInput {
                path: name,
                content: FileContent::Bytes(bytes),
            })
        })
        .collect()
}

/// Writes the run's output files under `dir`, never through a link that is already there.
fn write_outputs(dir: &Path, files: &[FileResponse]) -> Result<(), RunError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut err = std::io::stderr();
    for file in files {
        // The service checked the path: relative, no `..`, no empty component.
        let path = dir.join(&file.path);
        let Some(content) = &file.content_base64 else {
            let _ = writeln!(err, "nsbox: {} not written: past a file cap", file.path);
            continue;
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(content)
            .expect("the supervisor encodes files as base64");
        let write = || -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?
                .write_all(&bytes)
        };
        write().map_err(|source| RunError::WriteFile {
            path: path.clone(),
            source,
        })?;
        let _ = writeln!(err, "nsbox: file written to {}", path.display());
    }
    Ok(())
}

/// Runs the file and returns the exit status `nsbox run` should end with.
pub fn main(config: &Config, opts: &RunOptions) -> Result<u8, RunError> {
    let code = read_code(&opts.file)?;
    let files = input_files(&opts.files)?;
    let request = CodeRequest {
        code,
        timeout_s: opts.timeout_s,
        // Output files are collected only when there is somewhere to put them.
        files: (opts.out_dir.is_some() || !files.is_empty()).then_some(files),
        // As a REPL: the last expression's value is shown.
        results: Some(true),
        ..CodeRequest::default()
    };
    let sandbox = Sandbox::start(config)?;
    let result = sandbox.run(request)?;
    drop(sandbox);
    let status = exit_status(result.ending);
    let response: CodeResponse = result.into();
    print_response(&response, opts)?;
    if let (Some(dir), Some(files)) = (&opts.out_dir, &response.files) {
        write_outputs(dir, files)?;
        // What the API names in `skipped_files`, a terminal reads here.
        let mut err = std::io::stderr();
        for skipped in &response.skipped_files {
            let reason = serde_json::to_value(skipped.reason).unwrap_or_default();
            let _ = writeln!(
                err,
                "nsbox: {} not written: {}",
                skipped.path,
                reason.as_str().unwrap_or("not a regular file")
            );
        }
    }
    if let Some(path) = &opts.results_file {
        let written = serde_json::json!({"results": &response.results, "error": &response.error});
        std::fs::write(path, written.to_string()).map_err(|source| RunError::WriteResults {
            path: path.clone(),
            source,
        })?;
    }
    Ok(status)
}

/// The code's own status, or what ended it.
pub fn exit_status(ending: Ending) -> u8 {
    match ending {
        Ending::Exited { code } => (code & 0xff) as u8,
        Ending::Refused => status::REFUSED,
        Ending::Limit(Limit::Timeout) => status::TIMEOUT,
        Ending::Limit(Limit::Memory) => status::SIGNAL_BASE + libc::SIGKILL as u8,
        Ending::Limit(Limit::Cpu) => status::SIGNAL_BASE + libc::SIGXCPU as u8,
        Ending::Signaled { signal } => status::SIGNAL_BASE.saturating_add(signal as u8),
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
    // Each result's plain text, as a REPL prints a value; figures are written as files below.
    for result in response.results.iter().flatten() {
        let data = &result.0.data;
        if data.contains_key(CHART_MIME) {
            continue;
        }
        if let Some(text) = data
            .get("text/plain")
            .and_then(|t| serde_json::from_str::<String>(t.as_str()).ok())
        {
            let _ = writeln!(std::io::stdout(), "{text}");
        }
    }
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
    let result = sandbox
        .run(CodeRequest {
            code: PROBE_CODE.into(),
            timeout_s: Some(30.0_f64.min(config.max_timeout)),
            ..CodeRequest::default()
        })
        .map_err(|e| e.to_string())?;
    drop(sandbox);
    let elapsed = started.elapsed();
    if result.ending != (Ending::Exited { code: 0 }) {
        return Err(format!(
            "the probe run ended with {:?}: {}",
            result.ending,
            result.stderr.trim()
        ));
    }
    let fields: Vec<&str> = result.stdout.split_whitespace().collect();
    match fields.as_slice() {
        [uid, gid, "2", caps, "1"] if caps.trim_start_matches('0').is_empty() => Ok(format!(
            "Python ran as uid {uid} gid {gid}, seccomp filter on, no capabilities, \
             no_new_privs ({} ms including set-up)",
            elapsed.as_millis()
        )),
        _ => Err(format!(
            "the probe run saw an unexpected sandbox: {}",
            result.stdout.trim()
        )),
    }
}
