//! `POST /v1/tools/code`: reads the spec's request JSON into a run request, hands it to the run service, and answers with the spec's response object.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde_json::Value;
use tracing::Instrument;

use super::error::ApiError;
use super::AppState;
use crate::service::{self, CodeRequest, CodeResponse};

/// Reads the request body's JSON: the types of its fields, and `lang`. Unknown fields are
/// ignored, so clients (and the official SDK's `extra_body`) that send more than nsbox
/// knows keep working. The rules for the values are the run service's.
pub fn parse(body: &[u8]) -> Result<CodeRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("request body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::invalid("request body must be a JSON object"));
    };
    let code = match obj.get("code") {
        None | Some(Value::Null) => return Err(ApiError::invalid("`code` is required")),
        Some(Value::String(s)) => s,
        Some(_) => return Err(ApiError::invalid("`code` must be a string")),
    };
    match obj.get("lang") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "`lang` is required; only \"python\" is supported",
            ))
        }
        Some(Value::String(s)) if s == "python" => {}
        Some(Value::String(s)) => {
            return Err(ApiError::invalid(format!(
                "unsupported `lang` {s:?}; only \"python\" is supported"
            )))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "`lang` must be a string; only \"python\" is supported",
            ))
        }
    }
    let timeout_s = match obj.get("timeout") {
        None | Some(Value::Null) => None,
        // A number too large for f64 is out of range like any other.
        Some(Value::Number(n)) => Some(n.as_f64().unwrap_or(f64::INFINITY)),
        Some(_) => return Err(ApiError::invalid("`timeout` must be a number of seconds")),
    };
    let libraries = match obj.get("libraries") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(_) => return Err(ApiError::invalid("`libraries` must be an array of strings")),
    };
    Ok(CodeRequest {
        code: code.clone(),
        timeout_s,
        libraries,
        ..CodeRequest::default()
    })
}

/// The official SDK has no `timeout` parameter: its `timeout=` is the HTTP read timeout,
/// sent as `x-stainless-read-timeout`.
fn read_timeout(headers: &HeaderMap) -> Option<f64> {
    headers
        .get("x-stainless-read-timeout")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        // Some tool runners send none; the body must still be JSON. Form and text types
        // stay refused (even `curl -d` without `-H`): they are what a web page may post
        // cross-origin without a CORS preflight, and a keyless nsbox on loopback must not
        // run code a browser tab sent it.
        return Ok(());
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::unsupported_media(format!(
            "Content-Type must be application/json, got {essence:?}"
        )))
    }
}

/// The handler: every log line of the request carries its id (`x-request-id`, the client's
/// or a fresh UUID).
pub async fn execute(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CodeResponse>, ApiError> {
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let arrived = Instant::now();
    let result = handle(&state, &headers, body, &request_id)
        .instrument(service::request_span(&request_id))
        .await;
    state.service.request_took(arrived.elapsed());
    result
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    request_id: &str,
) -> Result<Json<CodeResponse>, ApiError> {
    check_content_type(headers)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "request body exceeds {} bytes",
                state.max_body_bytes
            ))
        } else {
            ApiError::invalid(format!("could not read the request body: {rejection}"))
        }
    })?;
    let request = CodeRequest {
        user: headers
            .get("x-relaxai-userid")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        caller_patience_s: read_timeout(headers),
        request_id: Some(request_id.to_string()),
        ..parse(&body)?
    };
    let result = state.service.execute(request).await?;
    Ok(Json(result.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_request_is_read() {
        let ok = parse(br#"{"code": "print(2**2)", "lang": "python"}"#).unwrap();
        assert_eq!(ok.code, "print(2**2)");
        assert_eq!(ok.timeout_s, None);
        assert_eq!(
            parse(br#"{"code": "x", "lang": "python", "timeout": 0.25}"#)
                .unwrap()
                .timeout_s,
            Some(0.25)
        );
    }

    #[test]
    fn the_sdk_read_timeout_is_read() {
        let mut h = HeaderMap::new();
        assert_eq!(read_timeout(&h), None);
        h.insert("x-stainless-read-timeout", "30".parse().unwrap());
        assert_eq!(read_timeout(&h), Some(30.0));
        h.insert("x-stainless-read-timeout", "nonsense".parse().unwrap());
        assert_eq!(read_timeout(&h), None);
    }

    #[test]
    fn unknown_fields_and_libraries_are_accepted() {
        let r =
            parse(br#"{"code": "x", "lang": "python", "libraries": ["numpy"], "extra": {"a": 1}}"#)
                .unwrap();
        assert_eq!(r.libraries, ["numpy"]);
    }

    #[test]
    fn bad_json_gets_a_clear_client_error() {
        let cases = [
            ("not json", "not valid JSON"),
            ("[1]", "JSON object"),
            (r#"{"lang": "python"}"#, "`code` is required"),
            (r#"{"code": 5, "lang": "python"}"#, "must be a string"),
            (r#"{"code": "x"}"#, "`lang` is required"),
            (
                r#"{"code": "x", "lang": "javascript"}"#,
                "unsupported `lang`",
            ),
            (r#"{"code": "x", "lang": 1}"#, "`lang` must be a string"),
            (
                r#"{"code": "x", "lang": "python", "timeout": "5"}"#,
                "must be a number",
            ),
            (
                r#"{"code": "x", "lang": "python", "libraries": "numpy"}"#,
                "array of strings",
            ),
        ];
        for (body, needle) in cases {
            let err = parse(body.as_bytes()).unwrap_err();
            assert!(err.status.is_client_error(), "{body}");
            assert!(err.message.contains(needle), "{body}: {}", err.message);
        }
    }
}
