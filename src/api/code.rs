//! `POST /v1/tools/code`: reads the spec's request JSON into a run request, hands it to the run service, and answers with the spec's response object.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;

use super::auth;
use super::error::ApiError;
use super::AppState;
use crate::sandbox::RunEvent;
use crate::service::files::{FileContent, FileInput};
use crate::service::{self, CodeRequest, CodeResponse, RunResult, ServiceError};

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
    let libraries = libraries(&obj)?;
    let files =
        match obj.get("files") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| parse_file(i, v))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => return Err(ApiError::invalid(
                "`files` must be an array of {\"path\", \"content\" or \"content_base64\"} objects",
            )),
        };
    let results = results(&obj)?;
    let session_id = match obj.get("session_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::invalid("`session_id` must be a string")),
    };
    Ok(CodeRequest {
        code: code.clone(),
        timeout_s,
        libraries,
        files,
        session_id,
        results,
        ..CodeRequest::default()
    })
}

/// A request's `results`: true or false, or nothing (a session's default; off for a run).
pub fn results(obj: &serde_json::Map<String, Value>) -> Result<Option<bool>, ApiError> {
    match obj.get("results") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid("`results` must be true or false")),
    }
}

/// A request's `libraries`: an array of strings, or nothing.
pub fn libraries(obj: &serde_json::Map<String, Value>) -> Result<Vec<String>, ApiError> {
    match obj.get("libraries") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => Ok(items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()),
        Some(_) => Err(ApiError::invalid("`libraries` must be an array of strings")),
    }
}

/// A request's id, as its log lines carry it: the `x-request-id` the router kept or made.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

/// The body axum read, or the client error for why it could not: 413 past the limit.
pub fn read_body(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "request body exceeds {} bytes",
                state.max_body_bytes
            ))
        } else {
            ApiError::invalid(format!("could not read the request body: {rejection}"))
        }
    })
}

/// One input file: `path` and exactly one of `content` (UTF-8 text) or `content_base64`.
/// Unlike the request's own fields, unknown ones are refused: a misspelt `contents` would
/// otherwise write an empty file.
fn parse_file(i: usize, v: &Value) -> Result<FileInput, ApiError> {
    let Value::Object(o) = v else {
        return Err(ApiError::invalid(format!("`files[{i}]` must be an object")));
    };
    if let Some(unknown) = o
        .keys()
        .find(|k| !["path", "content", "content_base64"].contains(&k.as_str()))
    {
        return Err(ApiError::invalid(format!(
            "`files[{i}]` has an unknown field `{unknown}`; a file has `path` and `content` or `content_base64`"
        )));
    }
    let Some(Value::String(path)) = o.get("path") else {
        return Err(ApiError::invalid(format!(
            "`files[{i}].path` is required and must be a string"
        )));
    };
    let content = match (o.get("content"), o.get("content_base64")) {
        (Some(Value::String(text)), None) => FileContent::Text(text.clone()),
        (None, Some(Value::String(b64))) => FileContent::Base64(b64.clone()),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(format!(
                "`files[{i}]` ({path:?}) has both `content` and `content_base64`; send one"
            )))
        }
        (None, None) => {
            return Err(ApiError::invalid(format!(
                "`files[{i}]` ({path:?}) needs `content` (text) or `content_base64`"
            )))
        }
        _ => {
            return Err(ApiError::invalid(format!(
                "`files[{i}]` ({path:?}): `content` and `content_base64` must be strings"
            )))
        }
    };
    Ok(FileInput {
        path: path.clone(),
        content,
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

pub fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
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
) -> Result<Response, ApiError> {
    let request_id = request_id(&headers);
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
) -> Result<Response, ApiError> {
    check_content_type(headers)?;
    let body = read_body(state, body)?;
    let request = CodeRequest {
        user: auth::user(headers),
        caller_patience_s: read_timeout(headers),
        request_id: Some(request_id.to_string()),
        owner: auth::owner(headers, &state.keys),
        ..parse(&body)?
    };
    if wants_event_stream(headers) {
        return stream(state, request);
    }
    let result = state.service.execute(request).await?;
    Ok(Json(CodeResponse::from(result)).into_response())
}

/// Whether the client asked for the output as it happens (`Accept: text/event-stream`).
fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// Aborts the run's task when the response stream is dropped (the client went away),
/// which drops the run's future and so kills the run, as for a plain request.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The streamed answer: `stdout`, `stderr` and `plot` events as the run produces them,
/// a `file` event per output file once it is over (when files were asked for, or in a
/// session), then exactly one `result` (the same JSON as the plain answer) or, if the run
/// could not finish, one `error` (the API's error object). Bad input, and an unknown or
/// busy session, were refused before, as ordinary HTTP errors. A client that falls behind the event queue's bounds gets the
/// `error` at once, and its run is stopped.
fn stream(state: &AppState, request: CodeRequest) -> Result<Response, ApiError> {
    let request = state.service.validate(request)?;
    // An unknown, ended or busy session is an HTTP status too, not an `error` event.
    let request = state.service.prepare(request)?;
    let (events_tx, events_rx) = state.service.event_queue();
    let (result_tx, result_rx) = tokio::sync::oneshot::channel();
    let service = state.service.clone();
    let run = tokio::spawn(
        async move {
            let result = service.execute_prepared(request, Some(events_tx)).await;
            let _ = result_tx.send(result);
        }
        .instrument(tracing::Span::current()),
    );
    let guard = AbortOnDrop(run);
    // The run's sender is gone once the run is over, so every event comes before the end;
    // an overflow ends the stream there, without waiting for the result.
    let overflowed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = overflowed.clone();
    let events = futures_util::stream::unfold(events_rx, move |mut rx| {
        let seen = seen.clone();
        async move {
            match rx.recv().await? {
                Ok(event) => Some((run_event(event), rx)),
                Err(overflow) => {
                    seen.store(true, std::sync::atomic::Ordering::SeqCst);
                    let e = ServiceError::Unavailable(overflow.to_string());
                    Some((error_event(e.into()), rx))
                }
            }
        }
    });
    let end = futures_util::stream::once(async move {
        if overflowed.load(std::sync::atomic::Ordering::SeqCst) {
            return Vec::new();
        }
        match result_rx.await {
            Ok(result) => final_events(result),
            Err(_) => vec![error_event(ApiError::internal())],
        }
    })
    .flat_map(futures_util::stream::iter);
    let body = events.chain(end).map(move |event| {
        let _running = &guard;
        Ok::<_, std::convert::Infallible>(event)
    });
    Ok(Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn json_event(name: &str, data: impl Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event("error"))
}

fn run_event(event: RunEvent) -> Event {
    match event {
        RunEvent::Stdout { text } => json_event("stdout", serde_json::json!({ "text": text })),
        RunEvent::Stderr { text } => json_event("stderr", serde_json::json!({ "text": text })),
        RunEvent::Plot { plot } => json_event("plot", plot),
        RunEvent::Display { output } => {
            json_event("display", crate::service::response::NotebookResult(output))
        }
    }
}

/// The end of a stream: one `file` event per output file (the same object as in the
/// answer's `files`), when files were asked for, then the `result`; or one `error`.
fn final_events(result: Result<RunResult, ServiceError>) -> Vec<Event> {
    match result {
        Ok(result) => {
            let response = CodeResponse::from(result);
            let mut events: Vec<Event> = response
                .files
                .iter()
                .flatten()
                .map(|file| json_event("file", file))
                .collect();
            events.push(json_event("result", response));
            events
        }
        Err(e) => vec![error_event(e.into())],
    }
}

fn error_event(e: ApiError) -> Event {
    json_event(
        "error",
        serde_json::json!({"error": {"type": e.kind, "message": e.message}}),
    )
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
