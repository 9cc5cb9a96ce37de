//! `/v1/sessions`: creating, inspecting and closing sessions, and the files of their working directory. Calls in a session go through `POST /v1/tools/code` with `session_id`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use super::error::ApiError;
use super::fields::{self, Flag, Number, Strings, Unknown};
use super::{auth, body, code, AppState};
use crate::service;
use crate::service::files::{mime_type, FileContent};

/// `POST /v1/sessions`'s body as sent: its two fields, and the first unknown one.
#[derive(Default)]
struct RawCreate {
    libraries: Strings,
    ttl_seconds: Number,
    results: Flag,
    network: Option<code::RawNetwork>,
    unknown: Unknown,
}

impl<'de> Deserialize<'de> for RawCreate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawCreate, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawCreate;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a session object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawCreate, A::Error> {
                let mut raw = RawCreate::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match &*key {
                        "libraries" => raw.libraries = map.next_value()?,
                        "ttl_seconds" => raw.ttl_seconds = map.next_value()?,
                        "results" => raw.results = map.next_value()?,
                        "network" => raw.network = map.next_value()?,
                        other => {
                            raw.unknown.note(other);
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(raw)
            }
        }
        d.deserialize_map(V)
    }
}

/// What `POST /v1/sessions` may say: `libraries`, `ttl_seconds`, `results` (whether its
/// calls return notebook results unless they say) and `network` (its egress, within the
/// operator's), all optional; an empty body is `{}`.
type CreateRequest = (Vec<String>, Option<u64>, Option<bool>, Option<Vec<String>>);

fn parse_create(body: &[u8]) -> Result<CreateRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((Vec::new(), None, None, None));
    }
    let raw: fields::Body<RawCreate> = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("request body is not valid JSON: {e}")))?;
    let fields::Body::Object(raw) = raw else {
        return Err(ApiError::invalid("request body must be a JSON object"));
    };
    if let Some(unknown) = raw.unknown.0 {
        return Err(ApiError::invalid(format!(
            "unknown field `{unknown}`; a session takes `libraries`, `ttl_seconds`, `results` and `network`"
        )));
    }
    let libraries = code::libraries(raw.libraries)?;
    let whole = || ApiError::invalid("`ttl_seconds` must be a whole number of seconds");
    let ttl = match raw.ttl_seconds {
        Number::Null => None,
        Number::Whole(n) => Some(n),
        Number::Num(_) | Number::Other => return Err(whole()),
    };
    Ok((
        libraries,
        ttl,
        code::results(raw.results)?,
        code::network(raw.network)?,
    ))
}

/// `POST /v1/sessions`: 201 with the session object.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: Body,
) -> Result<Response, ApiError> {
    let id = code::request_id(&headers);
    async {
        code::check_content_type(&headers)?;
        let body = code::read_body(&state, &headers, raw).await?;
        let (libraries, ttl, results, network) = body::parse_with(body, parse_create).await?;
        let owner = auth::owner(&headers, &state.keys);
        let info = state
            .service
            .create_session(owner, libraries, ttl, Some(id.clone()), results, network)
            .await?;
        Ok((StatusCode::CREATED, Json(info)).into_response())
    }
    .instrument(service::request_span(&id))
    .await
}

/// `GET /v1/sessions/{id}`.
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let owner = auth::owner(&headers, &state.keys);
    Ok(Json(state.service.session_info(&id, &owner)?).into_response())
}

/// `DELETE /v1/sessions/{id}`: 204; the sandbox goes at once.
pub async fn close(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let owner = auth::owner(&headers, &state.keys);
    state.service.close_session(&id, &owner)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/sessions/{id}/files`: the working directory's regular files.
pub async fn list_files(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let owner = auth::owner(&headers, &state.keys);
    let rid = code::request_id(&headers);
    let files = state
        .service
        .list_session_files(&id, &owner, Some(rid.clone()))
        .instrument(service::request_span(&rid))
        .await?;
    Ok(Json(json!({ "files": files })).into_response())
}

/// `GET /v1/sessions/{id}/files/{path}`: the file's bytes.
pub async fn read_file(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let owner = auth::owner(&headers, &state.keys);
    let rid = code::request_id(&headers);
    let bytes = state
        .service
        .read_session_file(&id, &owner, &path, Some(rid.clone()))
        .instrument(service::request_span(&rid))
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, mime_type(&path)),
            // Never rendered as a page of this origin, whatever the code named it.
            (header::CONTENT_DISPOSITION, "attachment".to_string()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
        ],
        bytes,
    )
        .into_response())
}

/// `PUT /v1/sessions/{id}/files/{path}`: the raw body becomes the file.
pub async fn write_file(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, path)): Path<(String, String)>,
    raw: Body,
) -> Result<Response, ApiError> {
    let owner = auth::owner(&headers, &state.keys);
    let rid = code::request_id(&headers);
    let content = FileContent::Bytes(code::read_body(&state, &headers, raw).await?.to_vec());
    let written = state
        .service
        .write_session_file(&id, &owner, &path, content, false, Some(rid.clone()))
        .instrument(service::request_span(&rid))
        .await?;
    Ok((StatusCode::CREATED, Json(written)).into_response())
}
