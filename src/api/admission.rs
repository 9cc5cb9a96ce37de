//! Admission control: a bounded number of concurrent runs behind a bounded queue; past both, clients are told to retry.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

pub struct Admission {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// Held for the whole run; dropping it frees the slot.
pub struct Permit {
    _permit: OwnedSemaphorePermit,
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    pub fn new(max_running: usize, max_waiting: usize) -> Admission {
        Admission {
            slots: Arc::new(Semaphore::new(max_running.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    pub fn running(&self, max_running: usize) -> usize {
        max_running.saturating_sub(self.slots.available_permits())
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Waits for a slot, or refuses at once when the queue is full.
    pub async fn admit(&self) -> Result<Permit, ApiError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(Permit { _permit: permit });
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::overloaded(
                "too many runs in progress and queued; retry shortly",
            ));
        }
        // Leaves the queue even if the client disconnects while waiting.
        let _waiting = Waiting(&self.waiting);
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::unavailable("the server is shutting down"))?;
        Ok(Permit { _permit: permit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_with_429() {
        let a = Arc::new(Admission::new(1, 1));
        let first = a.admit().await.unwrap();
        let queued = {
            let a = a.clone();
            tokio::spawn(async move { a.admit().await.map(|_| ()) })
        };
        while a.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let refused = a.admit().await.err().unwrap();
        assert_eq!(refused.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        drop(first);
        queued.await.unwrap().unwrap();
        assert_eq!(a.waiting(), 0);
    }
}
