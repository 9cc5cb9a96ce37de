//! The host side of the sandbox: what this machine offers (probed by `nsbox check`) and what
//! `serve` and `run` prepare on it before the first run (the empty overlay layer, cgroups,
//! the warm library), refusing incomplete isolation unless the configuration allows it, and
//! the run service started over it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, RunMode, ScannerMode};
use crate::sandbox::cgroup::{self, AttachMode, CgroupParent};
use crate::sandbox::namespaces::IdMapping;
use crate::sandbox::spawner::{Spawner, SpawnerError};
use crate::sandbox::{seccomp, Limits, SpawnerConfig, WarmConfig, WarmLibrary};
use crate::service::admission::KeyWeights;
use crate::service::catalog::{Catalog, CatalogError};
use crate::service::files::FileLimits;
use crate::service::sessions::SessionSettings;
use crate::service::{millis, RunService, Settings};

/// The namespaces every run gets; reported as-is by `/v1/status` and `nsbox check`.
pub const NAMESPACES: [&str; 7] = ["user", "mount", "pid", "network", "ipc", "uts", "cgroup"];

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("root filesystem {0} has no /usr/bin/python3; build it with scripts/build-rootfs.sh and set `rootfs`")]
    Rootfs(PathBuf),
    #[error("reading the root filesystem's library catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("preparing {path}, the empty overlay layer beside the root filesystem: {reason}")]
    EmptyLayer { path: PathBuf, reason: String },
    #[error(
        "refusing to start with incomplete isolation: {0}. Fix it (run `nsbox check`), or \
         accept the weaker isolation this host allows with --allow-incomplete-isolation \
         (allow_incomplete_isolation = true)"
    )]
    IncompleteIsolation(String),
    #[error("preparing the package cache: {0}")]
    Packages(#[from] crate::packages::store::StoreError),
    #[error("[packages]: {0}")]
    PackagesConfig(#[from] crate::packages::PackagesError),
}

/// What this host's sandbox actually enforces, reported by `/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Isolation {
    pub namespaces: Vec<&'static str>,
    pub cgroup: Option<String>,
    /// How runs join their cgroups without the attach lock's wait (`favordynmods`, or the
    /// `keeper` fallback); none without cgroups.
    pub cgroup_attach: Option<AttachMode>,
    pub seccomp: bool,
    pub rlimits: bool,
    pub warm: bool,
    /// How host ids map into the runs' user namespaces (host root, subordinate ids, or
    /// a single id when rootless without newuidmap).
    pub id_mapping: crate::sandbox::namespaces::IdMappingReport,
    pub warnings: Vec<String>,
}

/// Everything the sandbox needs from the host, ready for `Spawner::start`.
pub struct Prepared {
    pub spawner: SpawnerConfig,
    pub isolation: Isolation,
    pub catalog: Catalog,
    /// This process's parent cgroup, removed by `Prepared::release` when it stops.
    pub cgroup_parent: Option<CgroupParent>,
    /// `[packages]` with its cache opened, when packages on demand are on.
    pub packages: Option<crate::service::Packages>,
}

impl Prepared {
    /// What the run service takes from the configuration and this host.
    pub fn settings(&self, config: &Config) -> Settings {
        Settings {
            limits: self.spawner.limits.clone(),
            default_timeout_s: config.default_timeout,
            max_timeout_s: config.max_timeout,
            scanner: config.scanner,
            warm: self.isolation.warm,
            max_running: config.max_running,
            max_queue: config.max_queue,
            results: crate::sandbox::ResultCaps {
                max_bytes: config.result_max_kib << 10,
                max_total_bytes: config.results_max_mib << 20,
                markdown_rows: config.result_markdown_rows,
                ..crate::sandbox::ResultCaps::default()
            },
            stream_backlog_events: config.stream_backlog_events,
            max_running_per_user: config.max_running_per_user,
            key_weights: KeyWeights::default(),
            mcp_attach_bytes: config.mcp_attach_kib << 10,
            mcp_text_chars: config.mcp_text_chars,
            // Checked by `Config::validate` before anything starts.
            egress: crate::egress::Policies::from_config(config).ok().flatten(),
            packages: self.packages.clone(),
            files: FileLimits {
                max_count: config.files_max_count,
                max_file_bytes: config.file_max_mib << 20,
                max_total_bytes: config.files_max_mib << 20,
            },
            sessions: SessionSettings {
                idle_ttl: Duration::from_secs(config.session_idle_ttl),
                max_idle_ttl: Duration::from_secs(config.session_max_idle_ttl),
                max_lifetime: Duration::from_secs(config.session_max_lifetime),
                max_sessions: config.max_sessions,
                max_per_owner: config.max_sessions_per_key,
                memory_budget_bytes: config.session_memory_budget_mib << 20,
                node: config.node_tag(),
            },
        }
    }

    /// Removes what `prepare` created on the host (once every run is over).
    pub fn release(&self) {
        if let Some(parent) = &self.cgroup_parent {
            parent.remove();
        }
    }
}

/// Why the sandbox could not be started on this host.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Host(#[from] HostError),
    #[error("starting the sandbox: {0}")]
    Spawner(#[from] SpawnerError),
}

/// The run service over a spawner on this host, prepared as the configuration says: what
/// `serve`, `run` and `mcp` each start from. Dropping it stops the spawner (and every run),
/// then removes what `prepare` made on the host, in that order.
pub struct LocalService {
    prepared: Prepared,
    service: Option<Arc<RunService>>,
    spawner: Option<Arc<Spawner>>,
}

impl LocalService {
    /// Prepares the host and starts the spawner. Call it before any async runtime exists:
    /// the spawner must not inherit the runtime's threads. `cancelled` turning true ends
    /// the runs still in flight (the server's shutdown grace). `key_weights` are the API
    /// keys' weights in admission (none for a front end without keys).
    pub fn start(
        config: &Config,
        mode: RunMode,
        cancelled: tokio::sync::watch::Receiver<bool>,
        key_weights: KeyWeights,
    ) -> Result<LocalService, StartError> {
        let prepared = prepare(config, mode)?;
        let spawner = Arc::new(Spawner::start(prepared.spawner.clone())?);
        let service = RunService::new(
            Settings {
                key_weights,
                ..prepared.settings(config)
            },
            spawner.clone(),
            prepared.catalog.clone(),
            cancelled,
        );
        Ok(LocalService {
            prepared,
            service: Some(Arc::new(service)),
            spawner: Some(spawner),
        })
    }

    pub fn service(&self) -> &Arc<RunService> {
        self.service.as_ref().expect("the service lives until drop")
    }

    pub fn isolation(&self) -> &Isolation {
        &self.prepared.isolation
    }

    /// The spawner, to tell it the shutdown began ([`Spawner::begin_shutdown`]).
    pub fn spawner(&self) -> &Arc<Spawner> {
        self.spawner.as_ref().expect("the spawner lives until drop")
    }
}

impl Drop for LocalService {
    fn drop(&mut self) {
        // The spawner lives in the service; the front end dropped its clones first.
        drop(self.service.take());
        drop(self.spawner.take());
        self.prepared.release();
    }
}

/// The limits the configuration gives every run, before a request's own timeout.
pub fn limits(config: &Config) -> Limits {
    Limits {
        timeout_ms: millis(config.default_timeout),
        memory_bytes: config.memory_mib << 20,
        max_processes: config.max_processes,
        cpu_seconds: config.cpu_seconds,
        cpus: config.cpus,
        tmp_bytes: config.tmp_mib << 20,
        file_size_bytes: config.tmp_mib << 20,
        output_bytes: config.output_kib << 10,
        ..Limits::default()
    }
}

/// Checks the root filesystem and sets up the host for runs. `mode` may differ from the
/// configuration's (`nsbox run` is always cold: warming pays off only across runs).
pub fn prepare(config: &Config, mode: RunMode) -> Result<Prepared, HostError> {
    let (rootfs, catalog) = open_rootfs(&config.rootfs)?;
    prepare_empty_layer(&rootfs)?;
    let mut warnings = Vec::new();
    // Decided once: every run and template of this process maps ids this way.
    let (ids, ids_warning) = IdMapping::decide(config.uid_base);
    tracing::info!(mapping = ?ids, "user namespace ids: {}", ids.report().description);
    match ids_warning {
        // Runs with the server's own host uid are weaker isolation, like rlimits only.
        Some(w) if !ids.maps_root() && !config.allow_incomplete_isolation => {
            return Err(HostError::IncompleteIsolation(w))
        }
        Some(w) if !ids.maps_root() => warnings.push(format!("INCOMPLETE ISOLATION: {w}")),
        Some(w) => warnings.push(w),
        None => {}
    }
    let (cgroup_parent, cgroup_description) = match cgroups(config) {
        Ok((parent, description)) => (Some(parent), Some(description)),
        Err(missing) if config.allow_incomplete_isolation => {
            warnings.push(format!(
                "INCOMPLETE ISOLATION: {missing}; memory, process and CPU limits are rlimits only"
            ));
            (None, None)
        }
        Err(missing) => return Err(HostError::IncompleteIsolation(missing)),
    };
    let attach = cgroup_parent.as_ref().map(|_| {
        let decision = cgroup::favor_dynmods(config.favordynmods, true);
        match decision.mode {
            AttachMode::FavorDynMods => tracing::info!("cgroup attach: {}", decision.detail),
            AttachMode::Keeper => tracing::warn!("cgroup attach: {}", decision.detail),
        }
        decision.mode
    });
    let warm = match (mode, on_overlayfs(&rootfs)) {
        (RunMode::Warm, Some(on)) => {
            // Warm runs stack an overlay on the template's overlay; on an overlayfs that is
            // one level more than the kernel allows, and every warm run would fail.
            warnings.push(format!(
                "warm path unavailable: {} is on overlayfs, and warm runs would stack overlays \
                 deeper than the kernel allows; every run starts a fresh interpreter \
                 (move the root filesystem to a plain filesystem)",
                on.display()
            ));
            None
        }
        (RunMode::Warm, None) => warm_config(config, &mut warnings),
        (RunMode::Cold, _) => None,
    };
    for w in &warnings {
        tracing::warn!("WARNING: {w}");
    }
    let packages = match &config.packages {
        Some(table) => {
            // Checked by `Config::validate` before anything starts.
            let rules =
                crate::packages::Rules::from_config(table, config.egress.as_ref(), config.listen)?;
            let store = crate::packages::store::Store::open(&rules.cache_dir, &catalog.python)?;
            Some(crate::service::Packages {
                rules,
                store: Arc::new(store),
            })
        }
        None => None,
    };
    Ok(Prepared {
        packages: packages.clone(),
        spawner: SpawnerConfig {
            rootfs: rootfs.clone(),
            ids: ids.clone(),
            cgroup: cgroup_parent.clone(),
            attach: attach.unwrap_or(AttachMode::Keeper),
            warm: warm.clone(),
            limits: limits(config),
            guard_rails: config.scanner != ScannerMode::Off,
            packages: packages.as_ref().map(|p| p.store.sites()),
        },
        isolation: Isolation {
            namespaces: NAMESPACES.to_vec(),
            cgroup: cgroup_description,
            cgroup_attach: attach,
            seccomp: true,
            rlimits: true,
            warm: warm.is_some(),
            id_mapping: ids.report(),
            warnings,
        },
        catalog,
        cgroup_parent,
    })
}

/// The root filesystem at its real path, with its library catalog. The overlay's lower
/// layers are given relative to the real directory, so a symlinked path would put the empty
/// layer beside the link instead.
fn open_rootfs(path: &Path) -> Result<(PathBuf, Catalog), HostError> {
    let rootfs = path
        .canonicalize()
        .map_err(|_| HostError::Rootfs(path.to_path_buf()))?;
    if !rootfs.join("usr/bin/python3").exists() {
        return Err(HostError::Rootfs(path.to_path_buf()));
    }
    let catalog = Catalog::load(&rootfs)?;
    Ok((rootfs, catalog))
}

/// This process's cgroup parent and its description, or why there is none.
fn cgroups(config: &Config) -> Result<(CgroupParent, String), String> {
    if !config.cgroups {
        return Err("cgroups are disabled by the configuration (`cgroups = false`)".into());
    }
    let layout = cgroup::detect().map_err(|e| format!("no cgroup access ({e})"))?;
    let parent = CgroupParent::prepare(&layout, std::process::id())
        .map_err(|e| format!("no cgroup access ({e})"))?;
    Ok((parent, layout.describe()))
}

/// Resolves the warm path's shared library, or says loudly why runs will be cold.
fn warm_config(config: &Config, warnings: &mut Vec<String>) -> Option<WarmConfig> {
    match WarmLibrary::resolve(config.warm_library.as_deref()) {
        Ok(library) => Some(WarmConfig {
            library,
            max_forks: config.max_forks,
            huge_pages: config.huge_pages,
            nested_runs: config.nested_runs,
            pool_size: config.pool_size,
            pool_idle_ms: config.pool_idle.saturating_mul(1000),
            // A ready sandbox may become a session's.
            pool_cpu_seconds: crate::service::session_cpu_seconds(
                config.session_max_lifetime,
                config.cpus,
            ),
            templates: config.warm_templates.clone(),
        }),
        Err(e) => {
            warnings.push(format!(
                "warm path unavailable: {e}; every run starts a fresh interpreter"
            ));
            None
        }
    }
}

/// The root filesystem or its empty layer's directory, if either is on an overlayfs.
fn on_overlayfs(rootfs: &Path) -> Option<PathBuf> {
    let overlay = |p: &Path| {
        nix::sys::statfs::statfs(p)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC)
    };
    [rootfs.to_path_buf(), empty_layer_path(rootfs)]
        .into_iter()
        .find(|p| overlay(p))
}

fn empty_layer_path(rootfs: &Path) -> PathBuf {
    rootfs
        .parent()
        .unwrap_or(Path::new("/"))
        .join(crate::sandbox::rootfs::EMPTY_LAYER)
}

/// Creates the empty directory every sandbox's overlay stacks under the root filesystem.
/// Anything in it would appear in every run's `/`, so it must be empty.
fn prepare_empty_layer(rootfs: &Path) -> Result<(), HostError> {
    let path = empty_layer_path(rootfs);
    let fail = |reason: String| HostError::EmptyLayer {
        path: path.clone(),
        reason,
    };
    std::fs::create_dir_all(&path).map_err(|e| fail(e.to_string()))?;
    let mut entries = std::fs::read_dir(&path).map_err(|e| fail(e.to_string()))?;
    if entries.next().is_some() {
        return Err(fail("it is not empty".into()));
    }
    Ok(())
}

/// One line of `nsbox check`.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub feature: &'static str,
    pub ok: bool,
    /// Whether the configured isolation needs it (a missing optional feature only warns).
    pub required: bool,
    /// A feature that makes runs faster, not safer: without it isolation is still complete.
    pub speed: bool,
    pub detail: String,
}

fn probe(feature: &'static str, required: bool, result: Result<String, String>) -> Probe {
    let (ok, detail) = match result {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Probe {
        feature,
        ok,
        required,
        speed: false,
        detail,
    }
}

/// A probe of a speed feature: never required, and its absence leaves isolation complete.
fn speed_probe(feature: &'static str, result: Result<String, String>) -> Probe {
    Probe {
        speed: true,
        ..probe(feature, false, result)
    }
}

/// Probes the kernel features the sandbox is built from, without starting a run.
pub fn probe_features(config: &Config) -> Vec<Probe> {
    vec![
        probe("user namespaces", true, probe_namespaces()),
        probe(
            "user ids",
            !config.allow_incomplete_isolation,
            probe_ids(config),
        ),
        probe("overlayfs", true, probe_filesystem("overlay")),
        probe("seccomp", true, probe_seccomp()),
        probe(
            "cgroups",
            !config.allow_incomplete_isolation,
            probe_cgroups(config),
        ),
        speed_probe("cgroup attach", probe_attach(config)),
        speed_probe(
            "huge pages",
            if config.huge_pages {
                crate::sandbox::hugepages::probe()
            } else {
                Err("off (huge_pages = false)".into())
            },
        ),
        speed_probe(
            "nested runs",
            match (config.mode, config.nested_runs) {
                (RunMode::Cold, _) => Ok("off (mode = cold)".into()),
                (_, false) => Err("off (nested_runs = false): each warm run's PID 1 is a \
                                   second fork of its zygote"
                    .into()),
                (_, true) => crate::sandbox::run_init::probe(),
            },
        ),
        speed_probe(
            "ready sandboxes",
            match (config.mode, config.pool_size) {
                (RunMode::Cold, _) => Ok("off (mode = cold)".into()),
                (_, 0) => Ok("off (pool_size = 0)".into()),
                (_, n) => Ok(format!(
                    "{n} per warm template ({}), one each after {} s idle",
                    config
                        .warm_templates
                        .iter()
                        .map(|t| t.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                    config.pool_idle
                )),
            },
        ),
        probe("root filesystem", true, probe_rootfs(&config.rootfs)),
        speed_probe(
            "warm path",
            match config.mode {
                RunMode::Cold => Ok("off (mode = cold)".into()),
                RunMode::Warm => {
                    let mut w = Vec::new();
                    match warm_config(config, &mut w) {
                        Some(c) => Ok(match c.library {
                            WarmLibrary::Path(p) => p.display().to_string(),
                            WarmLibrary::Embedded => "built into this binary".into(),
                        }),
                        None => Err(w.join("; ")),
                    }
                }
            },
        ),
    ]
}

/// Creates every namespace a run gets, in a throwaway child. Called while the process is
/// still single-threaded (before any spawner or runtime starts), as `clone_fork` requires.
fn probe_namespaces() -> Result<String, String> {
    let names = NAMESPACES[..6].join(", ");
    crate::sandbox::namespaces::probe()
        .map(|()| names)
        .map_err(|e| {
            format!(
                "{e} (check user.max_user_namespaces and, on Debian or \
             Ubuntu, kernel.unprivileged_userns_clone or AppArmor's user namespace restriction)"
            )
        })
}

/// How ids will be mapped (proved on a throwaway namespace); a single id is incomplete.
fn probe_ids(config: &Config) -> Result<String, String> {
    let (ids, warning) = IdMapping::decide(config.uid_base);
    let report = ids.report();
    match warning {
        Some(w) if !ids.maps_root() => Err(w),
        Some(w) => Ok(format!("{}: {} ({w})", report.mode, report.description)),
        None => Ok(format!("{}: {}", report.mode, report.description)),
    }
}

fn probe_filesystem(name: &str) -> Result<String, String> {
    let known = std::fs::read_to_string("/proc/filesystems").map_err(|e| e.to_string())?;
    if known.split_whitespace().any(|f| f == name) {
        Ok("supported".into())
    } else {
        Err(format!(
            "not in /proc/filesystems (load it: modprobe {name})"
        ))
    }
}

fn probe_seccomp() -> Result<String, String> {
    let actions = std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
        .map_err(|e| format!("the kernel has no seccomp filter support ({e})"))?;
    let program = seccomp::builtin().map_err(|e| e.to_string())?;
    for needed in ["kill_process", "errno", "allow"] {
        if !actions.split_whitespace().any(|a| a == needed) {
            return Err(format!("the kernel lacks the seccomp action {needed}"));
        }
    }
    Ok(format!(
        "filter compiles to {} BPF instructions; kernel actions: {}",
        program.len(),
        actions.trim()
    ))
}

fn probe_cgroups(config: &Config) -> Result<String, String> {
    let (parent, description) = cgroups(config)?;
    let detail = format!(
        "{description}, runs under {}",
        parent.runs_under().display()
    );
    parent.remove();
    Ok(detail)
}

/// What `serve` would do about the cgroup attach lock, without changing the host.
fn probe_attach(config: &Config) -> Result<String, String> {
    if !config.cgroups {
        return Err("no cgroups (cgroups = false)".into());
    }
    let decision = cgroup::favor_dynmods(config.favordynmods, false);
    match decision.mode {
        AttachMode::FavorDynMods => Ok(format!("favordynmods: {}", decision.detail)),
        AttachMode::Keeper => Err(format!("keeper: {}", decision.detail)),
    }
}

fn probe_rootfs(path: &Path) -> Result<String, String> {
    let (rootfs, catalog) = open_rootfs(path).map_err(|e| e.to_string())?;
    Ok(format!(
        "{}: Python {}, {} libraries",
        rootfs.display(),
        catalog.python,
        catalog.libraries.len()
    ))
}
