//! The HTTP API: routes, shared state and the JSON error shape.

pub mod admission;
pub mod auth;
pub mod code;
pub mod error;
pub mod libraries;
pub mod metrics;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::sandbox::spawner::Spawner;
use crate::sandbox::Limits;
use admission::Admission;
use error::ApiError;

/// What the pre-execution scanner does with flagged code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScannerMode {
    Enforce,
    Report,
    Off,
}

/// Where runs start: forked from a warm zygote, or in a fresh interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    Warm,
    Cold,
}

/// Settings the API needs on every request.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub limits: Limits,
    pub default_timeout_s: f64,
    pub max_timeout_s: f64,
    pub max_body_bytes: usize,
    pub max_running: usize,
    pub scanner: ScannerMode,
    pub warm: bool,
}

/// What this host's sandbox actually enforces, reported by `/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Isolation {
    pub namespaces: Vec<&'static str>,
    pub cgroup: Option<String>,
    pub seccomp: bool,
    pub rlimits: bool,
    pub warm: bool,
    /// How host ids map into the runs' user namespaces (host root, subordinate ids, or
    /// a single id when rootless without newuidmap).
    pub id_mapping: crate::sandbox::namespaces::IdMappingReport,
    pub warnings: Vec<String>,
}

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ApiConfig>,
    pub spawner: Arc<Spawner>,
    pub admission: Arc<Admission>,
    pub isolation: Arc<Isolation>,
    pub scanner_policy: Arc<crate::scanner::Policy>,
    pub keys: auth::Keys,
    pub catalog: Arc<libraries::Catalog>,
    pub metrics: Arc<metrics::Metrics>,
    /// Turns true when the shutdown grace is over: runs still in flight are cancelled.
    pub cancelled: tokio::sync::watch::Receiver<bool>,
}

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/api/openapi.yaml"));

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    let keyed = Router::new()
        .route(
            "/v1/tools/code",
            post(code::execute).fallback(method_not_allowed),
        )
        .route(
            "/v1/tools/code/libraries",
            get(list_libraries).fallback(method_not_allowed),
        )
        .route("/v1/status", get(status).fallback(method_not_allowed))
        // Behind the key like the rest: Prometheus sends it as a bearer token.
        .route(
            "/metrics",
            get(metrics::metrics).fallback(method_not_allowed),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    Router::new()
        .merge(keyed)
        // Open to probes and load balancers, and to the SDK's health() with any key.
        .route("/v1/health", get(health).fallback(method_not_allowed))
        .route("/openapi.yaml", get(openapi).fallback(method_not_allowed))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        // Every response carries the request's id (the client's `x-request-id`, or a new
        // UUID), the same id the request's log lines carry.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(axum::middleware::from_fn(drop_unusable_request_id))
        .with_state(state)
}

/// A client's `x-request-id` is kept only if it is a short token; anything else (huge,
/// spaces, control bytes) is replaced by a fresh UUID so it cannot bloat or forge log lines.
async fn drop_unusable_request_id(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let usable = |v: &axum::http::HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:/".contains(c))
    };
    if let Some(v) = request.headers().get("x-request-id") {
        if !usable(v) {
            request.headers_mut().remove("x-request-id");
        }
    }
    next.run(request).await
}

async fn openapi() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/yaml")],
        OPENAPI,
    )
}

async fn list_libraries(State(state): State<AppState>) -> Json<libraries::Catalog> {
    Json((*state.catalog).clone())
}

/// The official SDK's `client.health()` reads this as a string. Not ready (503) until the
/// warm templates are, so a load balancer sends no traffic to a cold server.
async fn health(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.spawner.is_ready() {
        Ok("OK")
    } else {
        Err(ApiError::unavailable(
            "warming up: the warm interpreters are not ready yet",
        ))
    }
}

#[derive(Serialize)]
struct Status {
    isolation: Isolation,
    ready: bool,
    warm_templates: Vec<crate::sandbox::warm::Template>,
    running: usize,
    queued: usize,
    max_running: usize,
}

async fn status(State(state): State<AppState>) -> Json<Status> {
    Json(Status {
        isolation: (*state.isolation).clone(),
        ready: state.spawner.is_ready(),
        warm_templates: state.spawner.ready_templates(),
        running: state.admission.running(state.config.max_running),
        queued: state.admission.waiting(),
        max_running: state.config.max_running,
    })
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
