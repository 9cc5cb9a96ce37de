//! Bearer-key authentication: keys from configuration, compared in constant time, never logged.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use super::error::ApiError;
use super::AppState;
use crate::config::KeyEntry;
use crate::service::admission::KeyWeights;

/// The configured keys, each kept as its SHA-256 digest (never the key), with its weight
/// and whether it is an operator key. Empty means every request is accepted
/// (loopback-only servers).
#[derive(Clone, Default)]
pub struct Keys(Vec<Key>);

#[derive(Clone)]
struct Key {
    digest: [u8; 32],
    weight: u32,
    operator: bool,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} configured)", self.0.len())
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key).into()
}

impl Keys {
    /// Plain keys: weight 1, no operator.
    pub fn new(keys: &[String]) -> Keys {
        let entries: Vec<KeyEntry> = keys
            .iter()
            .map(|k| KeyEntry {
                key: k.clone(),
                weight: 1,
                operator: false,
                egress_allow: None,
            })
            .collect();
        Keys::with_options(&entries)
    }

    /// Keys with their weights and operator flags, as the configuration gives them.
    pub fn with_options(keys: &[KeyEntry]) -> Keys {
        Keys(
            keys.iter()
                .filter(|k| !k.key.is_empty())
                .map(|k| Key {
                    digest: digest(k.key.as_bytes()),
                    weight: k.weight.max(1),
                    operator: k.operator,
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key `presented` is, if it is one. Digests of equal length are compared, every
    /// one in full, so the time taken says nothing about which key, how much of one, or
    /// how long a key is.
    fn find(&self, presented: &[u8]) -> Option<&Key> {
        let presented = digest(presented);
        let mut found = Choice::from(0);
        let mut index = 0u32;
        for (i, key) in self.0.iter().enumerate() {
            let same = key.digest[..].ct_eq(&presented[..]);
            index.conditional_assign(&(i as u32), same);
            found |= same;
        }
        bool::from(found).then(|| &self.0[index as usize])
    }

    /// Whether `presented` is one of the keys.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        self.find(presented).is_some()
    }

    /// Each key's weight in admission, by the owner its requests carry.
    pub fn weights(&self) -> KeyWeights {
        KeyWeights::new(
            self.0
                .iter()
                .map(|k| (crate::service::owner_of_digest(&k.digest), k.weight)),
        )
    }
}

/// Who a request is, for what it owns (sessions, its share of the run slots): a
/// fingerprint of its API key (never the key itself), or `None` when no keys are
/// configured and every client is the same.
pub fn owner(headers: &axum::http::HeaderMap, keys: &Keys) -> Option<String> {
    if keys.is_empty() {
        return None;
    }
    Some(crate::service::key_owner(bearer(headers)?.as_bytes()))
}

/// The request's `x-relaxai-userid`, as sent: the run service refuses one that is not
/// usable in log lines (bytes that are not text included), rather than dropping it.
pub fn user(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get("x-relaxai-userid")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Whether a request may see the whole server (every key's runs and sessions, the
/// metrics): on a keyless server every request, otherwise an operator key's.
pub fn is_operator(headers: &axum::http::HeaderMap, keys: &Keys) -> bool {
    keys.is_empty()
        || bearer(headers)
            .and_then(|k| keys.find(k.as_bytes()))
            .is_some_and(|k| k.operator)
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
    fn a_keys_owner_is_the_same_from_its_digest() {
        let keys = Keys::new(&["s3cret".into()]);
        let weights = keys.weights();
        let owner = crate::service::key_owner(b"s3cret");
        assert_eq!(weights, KeyWeights::new([(owner, 1)]));
    }

    #[test]
    fn operators_are_the_keys_that_say_so() {
        let keys = Keys::with_options(&[
            KeyEntry {
                key: "ops".into(),
                weight: 1,
                operator: true,
                egress_allow: None,
            },
            KeyEntry {
                key: "user".into(),
                weight: 2,
                operator: false,
                egress_allow: None,
            },
        ]);
        let with = |key: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
            h
        };
        assert!(is_operator(&with("ops"), &keys));
        assert!(!is_operator(&with("user"), &keys));
        assert!(!is_operator(&with("guess"), &keys));
        assert!(is_operator(&with("any"), &Keys::default()));
    }

    #[test]
    fn keys_never_show_in_debug_output() {
        let keys = Keys::new(&["s3cret".into()]);
        assert!(!format!("{keys:?}").contains("s3cret"));
    }
}
