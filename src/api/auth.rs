//! Bearer-key authentication: keys from configuration, compared in constant time, never logged.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

/// The configured keys. Empty means every request is accepted (loopback-only servers).
#[derive(Clone, Default)]
pub struct Keys(Vec<Vec<u8>>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} configured)", self.0.len())
    }
}

impl Keys {
    pub fn new(keys: &[String]) -> Keys {
        Keys(
            keys.iter()
                .filter(|k| !k.is_empty())
                .map(|k| k.as_bytes().to_vec())
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `presented` is one of the keys. Every key is compared in full, so the time
    /// taken says nothing about which key, or how much of one, matched.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        self.0.iter().fold(0u8, |found, key| {
            found | key.as_slice().ct_eq(presented).unwrap_u8()
        }) == 1
    }
}

/// Who a request is, for what it owns (sessions): a fingerprint of its API key (never the
/// key itself), or `None` when no keys are configured and every client is the same.
pub fn owner(headers: &axum::http::HeaderMap, keys: &Keys) -> Option<String> {
    use sha2::Digest;
    if keys.is_empty() {
        return None;
    }
    let key = bearer(headers)?;
    let digest = sha2::Sha256::digest(key.as_bytes());
    Some(digest.iter().take(16).map(|b| format!("{b:02x}")).collect())
}

/// The key of `Authorization: Bearer <key>`.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// Rejects requests without a valid `Authorization: Bearer <key>` when keys are configured.
pub async fn require_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.keys.is_empty() {
        return Ok(next.run(request).await);
    }
    match bearer(request.headers()) {
        Some(key) if state.keys.accepts(key.as_bytes()) => Ok(next.run(request).await),
        Some(_) => Err(ApiError::unauthorized("invalid API key")),
        None => Err(ApiError::unauthorized(
            "missing API key: send the header `Authorization: Bearer <key>`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_keys_are_accepted() {
        let keys = Keys::new(&["alpha".into(), "beta-key".into()]);
        assert!(keys.accepts(b"alpha"));
        assert!(keys.accepts(b"beta-key"));
        assert!(!keys.accepts(b"alph"));
        assert!(!keys.accepts(b"alphaa"));
        assert!(!keys.accepts(b""));
        assert!(Keys::new(&[]).is_empty());
        assert!(Keys::new(&["".into()]).is_empty());
    }

    #[test]
    fn keys_never_show_in_debug_output() {
        let keys = Keys::new(&["s3cret".into()]);
        assert!(!format!("{keys:?}").contains("s3cret"));
    }
}
