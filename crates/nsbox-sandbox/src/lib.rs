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
mod capture;
pub mod cgroup;
pub mod child;
pub mod config;
mod door;
pub mod failure;
pub mod fdpass;
pub mod hugepages;
pub mod logging;
pub mod namespaces;
pub mod pid1;
mod pool;
pub mod protocol;
pub mod rootfs;
pub mod run;
pub mod run_init;
pub mod sandbox;
pub mod seccomp;
pub mod session;
pub mod spawner;
pub mod supervisor;
mod sys;
pub mod template;
pub mod warm;
pub mod warm_library;

pub use config::{SpawnerConfig, WarmConfig};
pub use run::{
    Cut, FileCaps, InputFile, JsonText, Limits, NotebookError, NotebookOutput, OutputFile,
    OutputType, Plot, Report, ResultCaps, RunEvent, RunOutcome, RunRequest, SessionOp, SkipReason,
    SkippedFile, Termination, CHART_MIME, WORKDIR,
};
pub use sandbox::HARNESS;
pub use warm_library::WarmLibrary;
