//! `POST /v1/tools/code`: reads the spec's request JSON into a run request, hands it to the run service, and answers with the spec's response object.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::auth;
use super::body;
use super::error::ApiError;
use super::fields::{self, Flag, Item, Number, Objects, Strings, Text, Unknown};
use super::AppState;
use crate::sandbox::RunEvent;
use crate::service::files::{FileContent, FileInput};
use crate::service::{self, CodeRequest, CodeResponse, RunResult, ServiceError};

/// The request body as nsbox reads it: the fields it knows, each only as far as it is
/// used; unknown fields are skipped without being built.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawRequest {
    code: Text,
    lang: Text,
    timeout: Number,
    libraries: Strings,
    files: Objects<RawFile>,
    session_id: Text,
    results: Flag,
    network: Option<RawNetwork>,
}

/// `network`: `{"allow": ["host[:port]", ...]}`, which narrows the operator's egress policy.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct RawNetwork {
    allow: Strings,
}

/// A request's `network.allow`: an array of strings, or nothing (the operator's policy).
pub(crate) fn network(raw: Option<RawNetwork>) -> Result<Option<Vec<String>>, ApiError> {
    match raw.map(|n| n.allow) {
        None | Some(Strings::Null) => Ok(None),
        Some(Strings::List(allow)) => Ok(Some(allow)),
        Some(Strings::Other) => Err(ApiError::invalid(
            "`network.allow` must be an array of host names",
        )),
    }
}

/// One input file as sent: its known fields, and the first unknown one.
#[derive(Default)]
struct RawFile {
    path: Option<Text>,
    content: Option<Text>,
    content_base64: Option<Text>,
    unknown: Unknown,
}

impl<'de> Deserialize<'de> for RawFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawFile, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawFile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a file object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawFile, A::Error> {
                let mut file = RawFile::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match &*key {
                        "path" => file.path = Some(map.next_value()?),
                        "content" => file.content = Some(map.next_value()?),
                        "content_base64" => file.content_base64 = Some(map.next_value()?),
                        other => {
                            file.unknown.note(other);
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(file)
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads the request body's JSON: the types of its fields, and `lang`. Unknown fields are
/// ignored, so clients (and the official SDK's `extra_body`) that send more than nsbox
/// knows keep working. The rules for the values are the run service's.
pub fn parse(body: &[u8]) -> Result<CodeRequest, ApiError> {
    let raw: fields::Body<RawRequest> = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("request body is not valid JSON: {e}")))?;
    let fields::Body::Object(raw) = raw else {
        return Err(ApiError::invalid("request body must be a JSON object"));
    };
    let code = match raw.code {
        Text::Null => return Err(ApiError::invalid("`code` is required")),
        Text::Str(s) => s,
        Text::Other => return Err(ApiError::invalid("`code` must be a string")),
    };
    match raw.lang {
        Text::Null => {
            return Err(ApiError::invalid(
                "`lang` is required; only \"python\" is supported",
            ))
        }
        Text::Str(s) if s == "python" => {}
        Text::Str(s) => {
            return Err(ApiError::invalid(format!(
                "unsupported `lang` {s:?}; only \"python\" is supported"
            )))
        }
        Text::Other => {
            return Err(ApiError::invalid(
                "`lang` must be a string; only \"python\" is supported",
            ))
        }
    }
    let timeout_s = match raw.timeout {
        Number::Null => None,
        Number::Whole(_) | Number::Num(_) => raw.timeout.as_f64(),
        Number::Other => return Err(ApiError::invalid("`timeout` must be a number of seconds")),
    };
    let libraries = libraries(raw.libraries)?;
    let files =
        match raw.files {
            Objects::Null => None,
            Objects::List(items) => Some(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| parse_file(i, v))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Objects::Other => return Err(ApiError::invalid(
                "`files` must be an array of {\"path\", \"content\" or \"content_base64\"} objects",
            )),
        };
    let results = results(raw.results)?;
    let network = network(raw.network)?;
    let session_id = match raw.session_id {
        Text::Null => None,
        Text::Str(s) => Some(s),
        Text::Other => return Err(ApiError::invalid("`session_id` must be a string")),
    };
    Ok(CodeRequest {
        code,
        timeout_s,
        libraries,
        files,
        session_id,
        results,
        network,
        ..CodeRequest::default()
    })
}

/// A request's `results`: true or false, or nothing (a session's default; off for a run).
pub fn results(flag: Flag) -> Result<Option<bool>, ApiError> {
    match flag {
        Flag::Null => Ok(None),
        Flag::Bool(b) => Ok(Some(b)),
        Flag::Other => Err(ApiError::invalid("`results` must be true or false")),
    }
}

/// A request's `libraries`: an array of strings, or nothing.
pub fn libraries(field: Strings) -> Result<Vec<String>, ApiError> {
    match field {
        Strings::Null => Ok(Vec::new()),
        Strings::List(names) => Ok(names),
        Strings::Other => Err(ApiError::invalid("`libraries` must be an array of strings")),
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

/// The request's body read in full, under the REST limit and the body deadline.
pub async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<body::Read, ApiError> {
    Ok(state
        .bodies
        .read(headers, body, state.bodies.max_bytes)
        .await?)
}

/// One input file: `path` and exactly one of `content` (UTF-8 text) or `content_base64`.
/// Unlike the request's own fields, unknown ones are refused: a misspelt `contents` would
/// otherwise write an empty file.
fn parse_file(i: usize, v: Item<RawFile>) -> Result<FileInput, ApiError> {
    let Item::Object(o) = v else {
        return Err(ApiError::invalid(format!("`files[{i}]` must be an object")));
    };
    if let Some(unknown) = o.unknown.0 {
        return Err(ApiError::invalid(format!(
            "`files[{i}]` has an unknown field `{unknown}`; a file has `path` and `content` or `content_base64`"
        )));
    }
    let Some(Text::Str(path)) = o.path else {
        return Err(ApiError::invalid(format!(
            "`files[{i}].path` is required and must be a string"
        )));
    };
    let content = match (o.content, o.content_base64) {
        (Some(Text::Str(text)), None) => FileContent::Text(text),
        (None, Some(Text::Str(b64))) => FileContent::Base64(b64),
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
    Ok(FileInput { path, content })
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
        // Some tool runners send none; the body must still be JSON. A server without keys
        // refuses a missing type before this (`origin::json_bodies`): a web page can post
        // without one. Form and text types stay refused everywhere (even `curl -d`
        // without `-H`).
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
    body: Body,
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
    body: Body,
    request_id: &str,
) -> Result<Response, ApiError> {
    check_content_type(headers)?;
    let body = read_body(state, headers, body).await?;
    let request = CodeRequest {
        user: auth::user(headers),
        caller_patience_s: read_timeout(headers),
        request_id: Some(request_id.to_string()),
        owner: auth::owner(headers, &state.keys),
        ..body::parse_with(body, parse).await?
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
