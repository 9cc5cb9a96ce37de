//! `nsbox serve`: checks the host, starts the spawner, then serves the API until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::api::admission::Admission;
use crate::api::auth::Keys;
use crate::api::libraries::Catalog;
use crate::api::{router, ApiConfig, AppState, Isolation};
use crate::sandbox::cgroup::{self, CgroupParent};
use crate::sandbox::namespaces::IdMapping;
use crate::sandbox::spawner::{Spawner, SpawnerError};
use crate::sandbox::{Limits, SpawnerConfig, WarmConfig};

/// The seccomp policy compiled into the binary.
pub const SECCOMP_POLICY: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/seccomp/default.json"));

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("root filesystem {0} has no /usr/bin/python3; build it with scripts/build-rootfs.sh")]
    Rootfs(PathBuf),
    #[error("preparing {path}, the empty overlay layer beside the root filesystem: {reason}")]
    EmptyLayer { path: PathBuf, reason: String },
    #[error(
        "refusing to listen on {0} without API keys: configure --api-key, or listen on loopback"
    )]
    OpenWithoutKeys(SocketAddr),
    #[error("{0}")]
    Catalog(#[from] crate::api::libraries::CatalogError),
    #[error("starting the sandbox: {0}")]
    Spawner(#[from] SpawnerError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("serving HTTP: {0}")]
    Serve(#[source] std::io::Error),
}

/// Everything `serve` needs, already validated.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub rootfs: PathBuf,
    pub limits: Limits,
    pub default_timeout_s: f64,
    pub max_timeout_s: f64,
    pub max_running: usize,
    pub max_queue: usize,
    pub max_running_per_user: usize,
    pub api_keys: Vec<String>,
    pub uid_base: u32,
    pub cgroups: bool,
    pub scanner: crate::api::ScannerMode,
    pub warm: Option<WarmOptions>,
    /// How long runs in flight may take to finish after SIGTERM before they are cancelled.
    pub shutdown_grace: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct WarmOptions {
    pub library: Option<PathBuf>,
    pub max_forks: u32,
}

/// Resolves the warm path's shared library, or says loudly why runs will be cold.
fn warm_config(opts: &Option<WarmOptions>, warnings: &mut Vec<String>) -> Option<WarmConfig> {
    let opts = opts.as_ref()?;
    let library = opts.library.clone().or_else(|| {
        let exe = std::env::current_exe().ok()?;
        Some(exe.parent()?.join("libnsbox.so"))
    })?;
    if !library.is_file() {
        warnings.push(format!(
            "warm path unavailable: {} not found (build it with `cargo build`); every run starts a fresh interpreter",
            library.display()
        ));
        return None;
    }
    Some(WarmConfig {
        library,
        max_forks: opts.max_forks,
    })
}

/// Creates the empty directory every sandbox's overlay stacks under the root filesystem.
/// Anything in it would appear in every run's `/`, so it must be empty.
fn prepare_empty_layer(rootfs: &std::path::Path) -> Result<(), ServeError> {
    let path = rootfs
        .parent()
        .unwrap_or(std::path::Path::new("/"))
        .join(crate::sandbox::rootfs::EMPTY_LAYER);
    let fail = |reason: String| ServeError::EmptyLayer {
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

/// Sets up the per-server cgroup, or says loudly why runs get rlimits only.
fn prepare_cgroups(
    enabled: bool,
    warnings: &mut Vec<String>,
) -> (Option<CgroupParent>, Option<String>) {
    if !enabled {
        warnings.push(
            "cgroups disabled by configuration: memory, process and CPU limits are rlimits only"
                .into(),
        );
        return (None, None);
    }
    let prepared = cgroup::detect().and_then(|layout| {
        let parent = CgroupParent::prepare(&layout, std::process::id())?;
        Ok((parent, layout.describe()))
    });
    match prepared {
        Ok((parent, description)) => (Some(parent), Some(description)),
        Err(e) => {
            warnings.push(format!(
                "no cgroup access ({e}): memory, process and CPU limits fall back to rlimits only"
            ));
            (None, None)
        }
    }
}

pub fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    if !opts.rootfs.join("usr/bin/python3").exists() {
        return Err(ServeError::Rootfs(opts.rootfs.clone()));
    }
    let keys = Keys::new(&opts.api_keys);
    if keys.is_empty() && !opts.listen.ip().is_loopback() {
        return Err(ServeError::OpenWithoutKeys(opts.listen));
    }
    let catalog = Catalog::load(&opts.rootfs)?;
    prepare_empty_layer(&opts.rootfs)?;
    let mut warnings = Vec::new();
    // Decided once: every run and template uses this mode until the server stops.
    let (ids, ids_warning) = IdMapping::choose(opts.uid_base);
    tracing::info!(mapping = ?ids, "user namespace id mapping: {}", ids.report().description);
    warnings.extend(ids_warning);
    let (cgroup_parent, cgroup_description) = prepare_cgroups(opts.cgroups, &mut warnings);
    let warm = warm_config(&opts.warm, &mut warnings);
    for w in &warnings {
        tracing::warn!("WARNING: {w}");
    }
    // The spawner starts before the async runtime exists, so it never inherits its threads.
    let spawner = Spawner::start(SpawnerConfig {
        rootfs: opts.rootfs.clone(),
        ids: ids.clone(),
        cgroup: cgroup_parent.clone(),
        seccomp_policy: SECCOMP_POLICY.to_string(),
        warm: warm.clone(),
        limits: opts.limits.clone(),
        guard_rails: opts.scanner != crate::api::ScannerMode::Off,
    })?;
    let isolation = Isolation {
        namespaces: vec!["user", "mount", "pid", "network", "ipc", "uts", "cgroup"],
        cgroup: cgroup_description,
        seccomp: true,
        rlimits: true,
        warm: warm.is_some(),
        id_mapping: ids.report(),
        warnings,
    };
    let (cancel, cancelled) = tokio::sync::watch::channel(false);
    let state = AppState {
        config: Arc::new(ApiConfig {
            limits: opts.limits.clone(),
            default_timeout_s: opts.default_timeout_s,
            max_timeout_s: opts.max_timeout_s,
            // Room for 50,000 four-byte characters, JSON escaping and the other fields.
            max_body_bytes: 1 << 20,
            max_running: opts.max_running,
            scanner: opts.scanner,
            warm: warm.is_some(),
        }),
        spawner: Arc::new(spawner),
        admission: Arc::new(Admission::new(
            opts.max_running,
            opts.max_queue,
            opts.max_running_per_user,
        )),
        isolation: Arc::new(isolation),
        scanner_policy: Arc::new(crate::scanner::Policy::builtin()),
        keys: keys.clone(),
        catalog: Arc::new(catalog),
        cancelled,
    };
    if keys.is_empty() {
        tracing::warn!(
            "no API keys configured: every request is accepted; listening on loopback only"
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: opts.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(ServeError::Serve)?;
        tracing::info!(
            rootfs = %opts.rootfs.display(),
            cgroup = ?state.isolation.cgroup,
            max_running = opts.max_running,
            "nsbox listening on http://{addr}"
        );
        // Runs in flight get `shutdown_grace` to finish after SIGTERM; then they are
        // cancelled (their clients get a 503 to retry elsewhere) and the server exits.
        let grace = opts.shutdown_grace;
        axum::serve(listener, router(state.clone()))
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    tracing::warn!(
                        ?grace,
                        "shutdown grace over: cancelling the runs still in flight"
                    );
                    let _ = cancel.send(true);
                });
            })
            .await
            .map_err(ServeError::Serve)
    });
    drop(state);
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    if let Some(parent) = cgroup_parent {
        parent.remove();
    }
    tracing::info!("nsbox stopped");
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down: finishing runs in flight");
}
