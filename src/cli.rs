//! The command line: `nsbox serve` and its options, each also settable from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::api::{RunMode, ScannerMode};
use crate::sandbox::Limits;
use crate::server::{self, ServeOptions, WarmOptions};

#[derive(Debug, Parser)]
#[command(
    name = "nsbox",
    version,
    about = "Self-hosted code-execution API: untrusted Python in fresh Linux namespaces"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the code-execution API.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "NSBOX_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The root filesystem built by scripts/build-rootfs.sh.
    #[arg(long, env = "NSBOX_ROOTFS")]
    pub rootfs: PathBuf,
    /// Runs executing at once; further requests queue.
    #[arg(long, env = "NSBOX_MAX_RUNNING", default_value_t = 8)]
    pub max_running: usize,
    /// Runs (running or queued) one `x-relaxai-userid` may have at once [default: half of
    /// --max-running, at least 1].
    #[arg(long, env = "NSBOX_MAX_RUNNING_PER_USER")]
    pub max_running_per_user: Option<usize>,
    /// API keys accepted as `Authorization: Bearer <key>` (repeat the flag, or separate with
    /// commas in the variable). Without any, every request is accepted and nsbox only
    /// listens on loopback.
    #[arg(
        long = "api-key",
        env = "NSBOX_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// Requests waiting for a slot; past this, 429 with Retry-After.
    #[arg(long, env = "NSBOX_MAX_QUEUE", default_value_t = 64)]
    pub max_queue: usize,
    /// Timeout when a request gives none, seconds.
    #[arg(long, env = "NSBOX_DEFAULT_TIMEOUT", default_value_t = 30.0)]
    pub default_timeout: f64,
    /// Largest timeout a request may ask for, seconds.
    #[arg(long, env = "NSBOX_MAX_TIMEOUT", default_value_t = 300.0)]
    pub max_timeout: f64,
    /// Memory per run, MiB.
    #[arg(long, env = "NSBOX_MEMORY_MIB", default_value_t = 512)]
    pub memory_mib: u64,
    /// Processes and threads per run.
    #[arg(long, env = "NSBOX_MAX_PROCESSES", default_value_t = 64)]
    pub max_processes: u64,
    /// CPU time per run, seconds.
    #[arg(long, env = "NSBOX_CPU_SECONDS", default_value_t = 60)]
    pub cpu_seconds: u64,
    /// CPU bandwidth per run, in CPUs.
    #[arg(long, env = "NSBOX_CPUS", default_value_t = 1.0)]
    pub cpus: f64,
    /// Size of each run's private /tmp, MiB.
    #[arg(long, env = "NSBOX_TMP_MIB", default_value_t = 64)]
    pub tmp_mib: u64,
    /// Captured stdout and stderr per run, KiB each.
    #[arg(long, env = "NSBOX_OUTPUT_KIB", default_value_t = 1024)]
    pub output_kib: usize,
    /// First host uid/gid of the range mapped into runs (65536 ids).
    #[arg(long, env = "NSBOX_UID_BASE", default_value_t = 1_000_000_000)]
    pub uid_base: u32,
    /// Do not use cgroups even where available (limits are rlimits only).
    #[arg(long, env = "NSBOX_NO_CGROUPS")]
    pub no_cgroups: bool,
    /// `warm` forks runs from warm interpreters (zygotes) for millisecond starts; `cold`
    /// starts a fresh interpreter per run. Both give every run the same isolation.
    #[arg(long, env = "NSBOX_MODE", value_enum, default_value_t = RunMode::Warm)]
    pub mode: RunMode,
    /// nsbox built as a shared library, loaded into zygotes [default: libnsbox.so beside
    /// the nsbox binary].
    #[arg(long, env = "NSBOX_WARM_LIBRARY")]
    pub warm_library: Option<PathBuf>,
    /// Runs a zygote forks before it is replaced by a fresh one.
    #[arg(long, env = "NSBOX_MAX_FORKS", default_value_t = 500)]
    pub max_forks: u32,
    /// Seconds runs in flight may take to finish after SIGTERM; then they are cancelled
    /// (keep it under the service manager's stop timeout).
    #[arg(long, env = "NSBOX_SHUTDOWN_GRACE", default_value_t = 15.0)]
    pub shutdown_grace: f64,
    /// Pre-execution scanner: `enforce` rejects flagged code, `report` runs it and lists the
    /// violations, `off` skips scanning (the kernel isolation holds either way).
    #[arg(long, env = "NSBOX_SCANNER", value_enum, default_value_t = ScannerMode::Enforce)]
    pub scanner: ScannerMode,
}

impl ServeArgs {
    pub fn options(&self) -> ServeOptions {
        let limits = Limits {
            timeout_ms: (self.default_timeout * 1000.0) as u64,
            memory_bytes: self.memory_mib << 20,
            max_processes: self.max_processes,
            cpu_seconds: self.cpu_seconds,
            cpus: self.cpus,
            tmp_bytes: self.tmp_mib << 20,
            file_size_bytes: self.tmp_mib << 20,
            output_bytes: self.output_kib << 10,
            ..Limits::default()
        };
        ServeOptions {
            listen: self.listen,
            rootfs: self.rootfs.clone(),
            limits,
            default_timeout_s: self.default_timeout,
            max_timeout_s: self.max_timeout,
            max_running: self.max_running,
            max_queue: self.max_queue,
            max_running_per_user: self
                .max_running_per_user
                .unwrap_or(self.max_running.div_ceil(2))
                .max(1),
            api_keys: self.api_keys.clone(),
            uid_base: self.uid_base,
            cgroups: !self.no_cgroups,
            scanner: self.scanner,
            shutdown_grace: std::time::Duration::from_secs_f64(self.shutdown_grace.max(0.0)),
            warm: (self.mode == RunMode::Warm).then(|| WarmOptions {
                library: self.warm_library.clone(),
                max_forks: self.max_forks,
            }),
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Serve(args) => match server::serve(args.options()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("nsbox: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
