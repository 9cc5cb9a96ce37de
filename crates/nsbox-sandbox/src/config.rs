//! What the spawner is configured with once, when it starts: the root filesystem, id mapping, cgroup parent, warm path and the limits templates bake in.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::cgroup::{AttachMode, CgroupParent};
use super::namespaces::IdMapping;
use super::run::Limits;
use super::warm_library::WarmLibrary;

/// Configuration the spawner needs for every run; sent once when it starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnerConfig {
    /// The read-only root filesystem, as a host path.
    pub rootfs: PathBuf,
    /// How host ids map into every sandbox's user namespace (decided once at start): with
    /// host root, 65536 ids from `--uid-base`, so `nobody` (65534) inside is
    /// `uid_base + 65534` on the host.
    pub ids: IdMapping,
    /// Where per-run cgroups are created, or `None` for rlimits only.
    pub cgroup: Option<CgroupParent>,
    /// How runs' moves into their cgroups avoid the attach lock's wait.
    pub attach: AttachMode,
    /// Warm templates, or `None` for cold runs only.
    pub warm: Option<WarmConfig>,
    /// Limits whose values templates bake into their environment.
    pub limits: Limits,
    /// Whether the harness turns blocked operations into clear Python exceptions (on
    /// unless the scanner is off, so the red-team suite probes the kernel alone).
    pub guard_rails: bool,
    /// The host directory of cached package sets (one directory per set), which templates
    /// see read-only so warm runs can mount theirs; `None`: packages on demand are off.
    #[serde(default)]
    pub packages: Option<PathBuf>,
}

/// Settings of the warm path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarmConfig {
    /// nsbox built as a shared library (loaded into each zygote): a file, or the copy a
    /// static build carries.
    pub library: WarmLibrary,
    /// Runs a zygote forks before it is replaced.
    pub max_forks: u32,
    /// Whether a zygote puts its warm memory in huge pages before its first run.
    pub huge_pages: bool,
    /// Whether a zygote starts each run in the nested shape (one copy of it per run, the
    /// run init exec'd as PID 1) rather than cloning the run's init (two copies).
    #[serde(default = "nested_by_default")]
    pub nested_runs: bool,
    /// Ready sandboxes kept per warm template (the pool); 0 builds each run's at its
    /// request.
    #[serde(default)]
    pub pool_size: usize,
    /// The CPU time ready sandboxes are built with: the most a request they serve may have
    /// (a session's, which spans its life). A claimed sandbox lowers it to its request's.
    #[serde(default)]
    pub pool_cpu_seconds: u64,
    /// After this long without a request the pool keeps one ready sandbox per template.
    #[serde(default)]
    pub pool_idle_ms: u64,
    /// The templates kept warm; a run whose template is not among them is forked from the
    /// next larger one kept.
    pub templates: Vec<super::run::Template>,
}

fn nested_by_default() -> bool {
    true
}
