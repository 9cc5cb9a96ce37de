//! `nsbox serve`: checks the host, starts the spawner, then serves the API until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::api::auth::Keys;
use crate::api::{router, AppState};
use crate::config::Config;
use crate::connections;
use crate::host::{LocalService, StartError};
use crate::service::RunService;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to listen on {0} without API keys: configure api_keys (--api-key), or listen on loopback"
    )]
    OpenWithoutKeys(SocketAddr),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Start(#[from] StartError),
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

pub fn serve(config: &Config) -> Result<(), ServeError> {
    let keys = Keys::with_options(&config.all_api_keys()?);
    if keys.is_empty() && !config.listen.ip().is_loopback() {
        return Err(ServeError::OpenWithoutKeys(config.listen));
    }
    let (cancel, cancelled) = tokio::sync::watch::channel(false);
    let local = LocalService::start(config, config.mode, cancelled, keys.weights())?;
    let service = local.service().clone();
    let warm = local.isolation().warm;
    let state = AppState {
        service: service.clone(),
        isolation: Arc::new(local.isolation().clone()),
        keys: keys.clone(),
        // REST: room for 50,000 four-byte characters, JSON escaping and the other fields,
        // and for the input files (in base64) the configuration allows.
        bodies: crate::api::body::Bodies::new(
            service.settings().files.body_bytes(),
            (config.mcp_max_body_mib << 20) as usize,
            std::time::Duration::from_secs_f64(config.body_timeout),
            config.max_large_bodies,
        ),
        ui: if config.ui {
            crate::api::ui::Ui::new(&config.rootfs)
        } else {
            crate::api::ui::Ui::off()
        },
    };
    let limits = connections::Limits {
        header_timeout: std::time::Duration::from_secs_f64(config.header_timeout),
        idle_timeout: std::time::Duration::from_secs_f64(config.idle_timeout),
        max_connections: config.max_connections,
        max_per_peer: config.max_connections_per_peer,
    }
    .fitted_to_descriptors();
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
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(ServeError::Serve)?;
        if let Some(egress) = &service.settings().egress {
            // The port is known now (`listen` may have asked for any); the door never
            // reaches it.
            egress.add_own_listener(addr);
        }
        if let Some(packages) = &service.settings().packages {
            packages.rules.policy.add_own_listener(addr);
        }
        tracing::info!(
            rootfs = %config.rootfs.display(),
            cgroup = ?state.isolation.cgroup,
            warm,
            max_running = config.max_running,
            node = %config.node_tag(),
            "nsbox listening on http://{addr}"
        );
        // Runs in flight get `shutdown_grace` to finish after SIGTERM; then they are
        // cancelled (their clients get a 503 to retry elsewhere), every connection still
        // open is closed whatever its client is doing, and the server exits.
        let grace = std::time::Duration::from_secs_f64(config.shutdown_grace);
        tokio::spawn(notify_when_ready(service.clone()));
        let sessions_service = service.clone();
        let spawner = local.spawner().clone();
        let shutdown = async move {
            shutdown_signal().await;
            crate::systemd::notify("STOPPING=1");
            // Runs in flight keep their spawner; a spawner lost now is not replaced.
            spawner.begin_shutdown();
            // Sessions live in this process's memory: they end with it, cleanly.
            sessions_service.end_sessions();
        };
        let force = async move {
            tokio::time::sleep(grace).await;
            tracing::warn!(
                ?grace,
                "shutdown grace over: cancelling the runs still in flight"
            );
            let _ = cancel.send(true);
            tokio::time::sleep(connections::LAST_WORDS).await;
        };
        connections::serve(listener, router(state.clone()), limits, shutdown, force).await;
        Ok(())
    });
    drop(state);
    drop(service);
    // The tasks' clones of the service go with the runtime, before `local` stops the
    // spawner and cleans the host.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    drop(local);
    tracing::info!("nsbox stopped");
    result
}

/// Tells systemd the server is ready once `/v1/health` would say so (the warm templates are
/// up), so a `Type=notify` unit's start and restart wait for it.
async fn notify_when_ready(service: Arc<RunService>) {
    while !service.is_ready() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tracing::info!("ready: the warm interpreters are up");
    crate::systemd::notify("READY=1\nSTATUS=serving");
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
