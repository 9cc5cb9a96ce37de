//! The HTTP API, a front end over the run service: routes, shared state and the JSON error shape.

pub mod auth;
pub mod body;
pub mod code;
pub mod error;
pub mod fields;
pub mod mcp_http;
pub mod origin;
pub mod sessions;
pub mod ui;

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Serialize;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::host::Isolation;
use crate::service::RunService;
use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<RunService>,
    pub isolation: Arc<Isolation>,
    pub keys: auth::Keys,
    /// How request bodies are read: their limits and deadline.
    pub bodies: body::Bodies,
    /// The web page at `/`, or none (`ui = false`).
    pub ui: ui::Ui,
}

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/api/openapi.yaml"));

pub fn router(state: AppState) -> Router {
    // On the methods that take a body only, so another method is still 405.
    let json = axum::middleware::from_fn_with_state(state.clone(), origin::json_bodies);
    let keyed = Router::new()
        .route(
            "/v1/tools/code",
            post(code::execute)
                .route_layer(json.clone())
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/tools/code/libraries",
            get(list_libraries).fallback(method_not_allowed),
        )
        .route(
            "/v1/sessions",
            post(sessions::create)
                .route_layer(json.clone())
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/sessions/{id}",
            get(sessions::show)
                .delete(sessions::close)
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/sessions/{id}/files",
            get(sessions::list_files).fallback(method_not_allowed),
        )
        .route(
            "/v1/sessions/{id}/files/{*path}",
            get(sessions::read_file)
                .merge(put(sessions::write_file).route_layer(json))
                .fallback(method_not_allowed),
        )
        .route("/v1/status", get(status).fallback(method_not_allowed))
        // Behind the key like the rest: Prometheus sends it as a bearer token.
        .route("/metrics", get(metrics).fallback(method_not_allowed))
        // MCP over streamable HTTP: the same keys, admission and limits as the REST API.
        .nest_service("/mcp", mcp_http::service(&state))
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
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            origin::same_origin,
        ))
        // The page's files: open (the page asks for a key itself and calls the API with
        // it), under the Host rule only (see `origin::loopback_host`).
        .merge(ui::routes(&state))
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
    if let Some(v) = request.headers().get("x-request-id") {
        if !crate::service::is_usable_id(v.as_bytes()) {
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

/// The tree's libraries and, with `[packages]`, those that come from the package cache
/// (`cached`: name → versions cached; installed on demand, not part of the tree).
async fn list_libraries(State(state): State<AppState>) -> Json<serde_json::Value> {
    let mut value =
        serde_json::to_value(state.service.catalog()).unwrap_or(serde_json::Value::Null);
    if let (Some(object), Some(cached)) = (value.as_object_mut(), state.service.cached_packages()) {
        object.insert(
            "cached".into(),
            serde_json::to_value(cached).unwrap_or_default(),
        );
    }
    Json(value)
}

/// The whole server's metrics: for an operator key only when keys are configured, as they
/// tell every key's load.
async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<([(axum::http::HeaderName, &'static str); 1], String), ApiError> {
    if !auth::is_operator(&headers, &state.keys) {
        return Err(ApiError::forbidden(
            "`/metrics` shows every key's runs: it needs an operator key (operator_keys)",
        ));
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.service.metrics_text(),
    ))
}

/// The official SDK's `client.health()` reads this as a string. Not ready (503) until the
/// warm templates are, so a load balancer sends no traffic to a cold server.
async fn health(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.service.is_ready() {
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
    /// `server` (the counts are the whole server's) or `key` (the caller's key's own).
    scope: &'static str,
    running: usize,
    queued: usize,
    max_running: usize,
    /// Requests the caller's key may have in flight (scanning, queued or running).
    #[serde(skip_serializing_if = "Option::is_none")]
    key_share: Option<usize>,
    sessions: SessionCounts,
    /// The ready sandboxes; only in the server's scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<crate::sandbox::spawner::PoolStatus>,
}

#[derive(Serialize)]
struct SessionCounts {
    active: usize,
    /// Only in the server's scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended: Option<u64>,
}

/// The server's state. An operator key (or any request to a keyless server) sees the
/// whole server; any other key sees its own runs, queue and sessions, so one tenant learns
/// nothing of another's load.
async fn status(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Json<Status> {
    let service = &state.service;
    let operator = auth::is_operator(&headers, &state.keys);
    let (scope, running, queued, key_share, sessions) = if operator {
        let (active, created, ended) = service.session_counts();
        let sessions = SessionCounts {
            active,
            created: Some(created),
            ended: Some(ended),
        };
        (
            "server",
            service.running(),
            service.queued(),
            None,
            sessions,
        )
    } else {
        let owner = auth::owner(&headers, &state.keys);
        let (running, queued) = service.load_of(&owner);
        let sessions = SessionCounts {
            active: service.sessions_of(&owner),
            created: None,
            ended: None,
        };
        let share = Some(service.share_of(&owner));
        ("key", running, queued, share, sessions)
    };
    Json(Status {
        isolation: (*state.isolation).clone(),
        ready: service.is_ready(),
        warm_templates: service.ready_templates(),
        scope,
        running,
        queued,
        max_running: service.settings().max_running,
        key_share,
        sessions,
        pool: operator.then(|| service.pool()),
    })
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
