//! nsbox's sandbox: what one run is asked to do, what it reports back, and the processes that make it happen.
//!
//! Process tree for one run (all created from the single-threaded spawner, never from the
//! async server's threads):
//!
//! ```text
//! nsbox serve (tokio)  --socketpair-->  spawner  --fork-->  supervisor (one per run)
//!                                                              | clone(NEWUSER|NEWNS|NEWPID|NEWNET|NEWIPC|NEWUTS)
//!                                                              v
//!                                                          init (PID 1)  --fork-->  python3 (nobody, seccomp)
//! ```

pub mod caps;
pub mod cgroup;
pub mod child;
pub mod failure;
pub mod namespaces;
pub mod protocol;
pub mod rootfs;
pub mod seccomp;
pub mod spawner;
pub mod supervisor;
mod sys;
pub mod template;
pub mod warm;
pub mod warm_library;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use warm_library::WarmLibrary;

/// The Python program that wraps user code inside the sandbox.
pub const HARNESS: &str = include_str!("harness.py");

/// Per-run resource limits. Every field is enforced by the kernel (cgroup or rlimit).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// Wall-clock limit; the whole process tree is killed when it passes.
    pub timeout_ms: u64,
    /// Memory (cgroup memory limit, swap off for the run).
    pub memory_bytes: u64,
    /// Processes and threads (cgroup pids limit and RLIMIT_NPROC).
    pub max_processes: u64,
    /// CPU time (RLIMIT_CPU), seconds.
    pub cpu_seconds: u64,
    /// CPU bandwidth (cgroup CPU quota), in CPUs.
    pub cpus: f64,
    /// Largest file a run may write (RLIMIT_FSIZE).
    pub file_size_bytes: u64,
    /// Size of the private `/tmp` tmpfs.
    pub tmp_bytes: u64,
    /// Open files (RLIMIT_NOFILE).
    pub open_files: u64,
    /// Captured bytes of stdout and of stderr, each.
    pub output_bytes: usize,
    /// Number of plots returned.
    pub max_plots: usize,
    /// Total PNG bytes of the plots returned.
    pub plot_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 30_000,
            memory_bytes: 512 << 20,
            max_processes: 64,
            cpu_seconds: 60,
            cpus: 1.0,
            file_size_bytes: 64 << 20,
            tmp_bytes: 64 << 20,
            open_files: 256,
            output_bytes: 1 << 20,
            max_plots: 16,
            plot_bytes: 16 << 20,
        }
    }
}

/// Configuration the spawner needs for every run; sent once when it starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnerConfig {
    /// The read-only root filesystem, as a host path.
    pub rootfs: PathBuf,
    /// How host ids map into every sandbox's user namespace (decided once at start): with
    /// host root, 65536 ids from `--uid-base`, so `nobody` (65534) inside is
    /// `uid_base + 65534` on the host.
    pub ids: namespaces::IdMapping,
    /// Where per-run cgroups are created, or `None` for rlimits only.
    pub cgroup: Option<cgroup::CgroupParent>,
    /// The seccomp policy (seccompiler JSON).
    pub seccomp_policy: String,
    /// Warm templates, or `None` for cold runs only.
    pub warm: Option<WarmConfig>,
    /// Limits whose values templates bake into their environment.
    pub limits: Limits,
    /// Whether the harness turns blocked operations into clear Python exceptions (on
    /// unless the scanner is off, so the red-team suite probes the kernel alone).
    pub guard_rails: bool,
}

/// Settings of the warm path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarmConfig {
    /// nsbox built as a shared library (loaded into each zygote): a file, or the copy a
    /// static build carries.
    pub library: WarmLibrary,
    /// Runs a zygote forks before it is replaced.
    pub max_forks: u32,
}

/// One run, as sent from the server to a supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRequest {
    pub code: String,
    pub limits: Limits,
    /// The warm template to fork from, or `None` for a cold interpreter.
    pub template: Option<warm::Template>,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Termination {
    /// Python exited by itself with this status.
    Exited { code: i32 },
    /// Python was killed by a signal nsbox did not send (e.g. SIGSEGV, SIGXCPU).
    Signaled { signal: i32 },
    /// The wall-clock limit passed and the run was killed.
    TimedOut,
    /// The memory limit was hit and the kernel killed the run.
    OutOfMemory,
    /// The sandbox could not be set up; `step` names what failed.
    SetupFailed { step: String, errno: i32 },
    /// The client went away and the run was killed.
    Cancelled,
}

/// A figure returned by the run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plot {
    pub content_base64: String,
    pub format: String,
    pub filename: String,
}

/// A limit that cut a run short without ending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cut {
    /// The process limit refused a fork.
    Processes,
    /// stdout or stderr were truncated.
    Output,
    /// Plots were dropped.
    Plots,
}

/// What the supervisor reports when a run is over and everything it started is gone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOutcome {
    pub termination: Termination,
    pub stdout: String,
    pub stderr: String,
    pub plots: Vec<Plot>,
    /// What cut the run short without ending it (output caps, plot caps, pids); stderr
    /// says so in words.
    pub cut_short: Vec<Cut>,
    pub wall_ms: u64,
    /// Peak memory of the run's cgroup, when cgroups are in use.
    pub peak_memory_bytes: Option<u64>,
    /// Whether the run was forked from a warm template.
    pub warm: bool,
}
