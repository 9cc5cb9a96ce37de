//! The HTTP API, a front end over the run service: routes, shared state and the JSON error shape.

pub mod auth;
pub mod body;
pub mod code;
pub mod error;
pub mod fields;
pub mod mcp_http;
pub mod origin;
pub mod sessions;

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Serialize;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::host::Isolation;
use crate::service::catalog::Catalog;
use crate::service::RunService;
use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<RunService>,
    pub isolation: Arc<Isolation>,
    pub keys: auth::Keys,
    /// How request bodies are read: their limits and deadline.
    pub bodies: body::Bodies,
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

async fn list_libraries(State(state): State<AppState>) -> Json<Catalog> {
    Json(state.service.catalog().clone())
}

async fn metrics(
    State(state): State<AppState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.service.metrics_text(),
    )
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
    running: usize,
    queued: usize,
    max_running: usize,
    sessions: SessionCounts,
}

#[derive(Serialize)]
struct SessionCounts {
    active: usize,
    created: u64,
    ended: u64,
}

async fn status(State(state): State<AppState>) -> Json<Status> {
    Json(Status {
        isolation: (*state.isolation).clone(),
        ready: state.service.is_ready(),
        warm_templates: state.service.ready_templates(),
        running: state.service.running(),
        queued: state.service.queued(),
        max_running: state.service.settings().max_running,
        sessions: {
            let (active, created, ended) = state.service.session_counts();
            SessionCounts {
                active,
                created,
                ended,
            }
        },
    })
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
