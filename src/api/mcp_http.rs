//! `/mcp`: the MCP server over streamable HTTP, mounted in the API with the same keys, Host and Origin rules; its own body limit; and a screen of each body before the transport parses it, so a body it cannot read is a JSON-RPC error and a small body cannot take much memory.
//!
//! The transport parses JSON-RPC through untagged enums that buffer every value of the
//! message, about 200 bytes per value whatever its size: a 4 MiB array of zeros took
//! 400 MB. The screen reads the body once without building anything and refuses one with
//! more than `MAX_VALUES` values, so what the transport builds stays a small multiple of
//! the body (strings are kept once, as they are).

use std::cell::Cell;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::json;

use super::body::BodyError;
use super::{auth, AppState};
use crate::mcp::McpServer;

/// The most JSON values (strings, numbers, arrays, objects...) one message may hold. A
/// tool call with 32 files has about 150.
pub const MAX_VALUES: usize = 10_000;

/// JSON-RPC's codes for a body that is not JSON, and one that is no valid request.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;

/// The MCP endpoint. Stateless (each POST is complete, answered with JSON), so any node
/// behind a load balancer can take any call. The transport's own Host and Origin checks
/// are off: `origin::same_origin` applies the one rule to every route.
pub fn service(state: &AppState) -> axum::Router {
    // A session made over MCP belongs to the same key as over the REST API.
    let keys = state.keys.clone();
    let server = McpServer::new(state.service.clone()).with_owner(move |h| auth::owner(h, &keys));
    let mut config = StreamableHttpServerConfig::default();
    config.legacy_session_mode = false;
    config.json_response = true;
    config.max_request_body_bytes = state.bodies.mcp_max_bytes;
    let config = config.disable_allowed_hosts().disable_allowed_origins();
    let transport = StreamableHttpService::new(
        move || Ok(server.clone()),
        LocalSessionManager::default().into(),
        config,
    );
    axum::Router::new()
        .fallback_service(transport)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            screen_body,
        ))
        // Before the screen: a keyless server wants a JSON type first.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::origin::json_bodies,
        ))
        .with_state(state.clone())
}

/// A JSON-RPC error response without an id (the request's could not be read).
fn rpc_error(status: StatusCode, code: i64, message: String) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

fn says_json(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("application/json"))
}

/// Reads a POST's body under the MCP limit and deadline, screens it, and hands it to the
/// transport; a body the transport still cannot read as a message is answered as
/// JSON-RPC's invalid request.
async fn screen_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // Other methods carry no body; other types are the transport's to refuse (415).
    if request.method() != Method::POST || !says_json(&request) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let limit = state.bodies.mcp_max_bytes;
    let read = match state.bodies.read(&parts.headers, body, limit).await {
        Ok(read) => read,
        Err(e) => {
            let status = match e {
                BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                BodyError::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
                BodyError::Broken(_) => StatusCode::BAD_REQUEST,
            };
            let hint = match e {
                BodyError::TooLarge(_) => {
                    "; send large files to a session over the REST API \
                     (PUT /v1/sessions/{id}/files/{path})"
                }
                _ => "",
            };
            return rpc_error(
                status,
                INVALID_REQUEST,
                format!("Invalid Request: {e}{hint}"),
            );
        }
    };
    if let Err((code, message)) = screen(&read) {
        return rpc_error(StatusCode::BAD_REQUEST, code, message);
    }
    let bytes = read.bytes.clone();
    // The large-body permit covers reading and screening; what the transport builds
    // from here is bounded by the screen.
    drop(read);
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if response.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        // The type was JSON, so the transport could not read the body as a message.
        return rpc_error(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "Invalid Request: the body is JSON but not a JSON-RPC message".into(),
        );
    }
    response
}

/// Checks that `body` is one JSON value of at most `MAX_VALUES` values, building nothing;
/// or the JSON-RPC error code and message that say why not.
fn screen(body: &[u8]) -> Result<(), (i64, String)> {
    let left = Cell::new(MAX_VALUES);
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = Counter(&left).deserialize(&mut de).and_then(|()| de.end());
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.is_data() => Err((
            INVALID_REQUEST,
            format!("Invalid Request: more than {MAX_VALUES} JSON values in one message"),
        )),
        Err(e) => Err((
            PARSE_ERROR,
            format!("Parse error: the body is not valid JSON: {e}"),
        )),
    }
}

/// Walks one JSON value, counting down `left` for each value in it.
struct Counter<'a>(&'a Cell<usize>);

impl Counter<'_> {
    fn tick<E: de::Error>(&self) -> Result<(), E> {
        match self.0.get() {
            0 => Err(E::custom("too many values")),
            n => {
                self.0.set(n - 1);
                Ok(())
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Counter<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counter<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.tick()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.tick()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.tick()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.tick()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.tick()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.tick()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.tick::<A::Error>()?;
        while seq.next_element_seed(Counter(self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.tick::<A::Error>()?;
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Counter(self.0))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_screen_counts_values_and_reads_syntax() {
        assert!(screen(br#"{"jsonrpc": "2.0", "id": 1, "method": "ping"}"#).is_ok());
        let many = format!("[{}]", vec!["0"; MAX_VALUES].join(","));
        assert_eq!(screen(many.as_bytes()).unwrap_err().0, INVALID_REQUEST);
        let fits = format!("[{}]", vec!["0"; MAX_VALUES - 1].join(","));
        assert!(screen(fits.as_bytes()).is_ok());
        assert_eq!(screen(b"{not json").unwrap_err().0, PARSE_ERROR);
        assert_eq!(screen(b"{} {}").unwrap_err().0, PARSE_ERROR);
    }
}
