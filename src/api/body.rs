//! Reading request bodies: the size limit, a deadline for the whole body, and a bound on how many large bodies are read and parsed at once, so memory follows the size of what clients send.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// A body past this size waits for a permit (`max_large_bodies`) before more of it is
/// read, and is parsed off the async workers.
pub const LARGE: usize = 1 << 20;

/// How request bodies are read, shared by every route.
#[derive(Clone, Debug)]
pub struct Bodies {
    /// Largest body on the REST routes, bytes.
    pub max_bytes: usize,
    /// Largest body on `/mcp`, bytes.
    pub mcp_max_bytes: usize,
    /// The whole body must arrive within this, from when the handler starts reading it.
    pub timeout: Duration,
    large: Arc<Semaphore>,
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("the request body did not arrive within {0:?}")]
    TimedOut(Duration),
    #[error("could not read the request body: {0}")]
    Broken(String),
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> ApiError {
        match e {
            BodyError::TooLarge(_) => ApiError::too_large(e.to_string()),
            BodyError::TimedOut(_) => ApiError::new(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                e.to_string(),
            ),
            BodyError::Broken(_) => ApiError::invalid(e.to_string()),
        }
    }
}

/// A body read in full. A large one holds its permit until dropped, so it is dropped
/// once parsed: what the request becomes is no longer the body's concern.
pub struct Read {
    pub bytes: Bytes,
    _permit: Option<OwnedSemaphorePermit>,
}

impl std::ops::Deref for Read {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Read {
    pub fn is_large(&self) -> bool {
        self.bytes.len() > LARGE
    }
}

impl Bodies {
    pub fn new(
        max_bytes: usize,
        mcp_max_bytes: usize,
        timeout: Duration,
        max_large: usize,
    ) -> Bodies {
        Bodies {
            max_bytes,
            mcp_max_bytes,
            timeout,
            large: Arc::new(Semaphore::new(max_large.max(1))),
        }
    }

    /// Reads `body` in full, up to `limit` bytes, within the deadline. Past `LARGE`
    /// bytes (or announced as more by `Content-Length`), it waits for a large-body
    /// permit before reading on; the wait counts against the deadline.
    pub async fn read(
        &self,
        headers: &HeaderMap,
        body: Body,
        limit: usize,
    ) -> Result<Read, BodyError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        tokio::time::timeout_at(deadline, self.read_all(headers, body, limit))
            .await
            .map_err(|_| BodyError::TimedOut(self.timeout))?
    }

    async fn read_all(
        &self,
        headers: &HeaderMap,
        body: Body,
        limit: usize,
    ) -> Result<Read, BodyError> {
        let announced = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if announced.is_some_and(|n| n > limit) {
            return Err(BodyError::TooLarge(limit));
        }
        let mut permit = None;
        let mut buf = Vec::new();
        if let Some(n) = announced {
            if n > LARGE {
                permit = Some(self.permit().await);
            }
            buf.reserve_exact(n);
        }
        let mut frames = body.into_data_stream();
        while let Some(frame) = frames.next().await {
            let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
            if frame.len() > limit.saturating_sub(buf.len()) {
                return Err(BodyError::TooLarge(limit));
            }
            if permit.is_none() && buf.len() + frame.len() > LARGE {
                permit = Some(self.permit().await);
            }
            buf.extend_from_slice(&frame);
        }
        Ok(Read {
            bytes: Bytes::from(buf),
            _permit: permit,
        })
    }

    async fn permit(&self) -> OwnedSemaphorePermit {
        self.large
            .clone()
            .acquire_owned()
            .await
            .expect("the large-body semaphore is never closed")
    }
}

/// Runs `parse` on the body, off the async workers when the body is large (a 45 MiB
/// request takes tens of milliseconds to parse, which would stall every connection on
/// that worker), and drops the body (and its permit) once parsed.
pub async fn parse_with<T: Send + 'static>(
    body: Read,
    parse: fn(&[u8]) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    if !body.is_large() {
        return parse(&body);
    }
    tokio::task::spawn_blocking(move || parse(&body))
        .await
        .map_err(|_| ApiError::internal())?
}
