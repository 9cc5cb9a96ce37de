//! Admission control: a bounded number of concurrent runs behind a bounded queue; past both, clients are told to retry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ServiceError;

pub struct Admission {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    /// Runs (running or queued) per `x-relaxai-userid`, so one user cannot hold every slot.
    per_user: Mutex<HashMap<String, usize>>,
    max_per_user: usize,
}

/// Held for the whole run; dropping it frees the slot (and the user's share).
pub struct Permit<'a> {
    _permit: OwnedSemaphorePermit,
    _user: Option<UserShare<'a>>,
}

struct UserShare<'a> {
    admission: &'a Admission,
    user: String,
}

impl Drop for UserShare<'_> {
    fn drop(&mut self) {
        let mut map = self.admission.per_user.lock().unwrap();
        if let Some(n) = map.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.user);
            }
        }
    }
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    pub fn new(max_running: usize, max_waiting: usize, max_per_user: usize) -> Admission {
        Admission {
            slots: Arc::new(Semaphore::new(max_running.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting,
            per_user: Mutex::new(HashMap::new()),
            max_per_user: max_per_user.max(1),
        }
    }

    fn take_user_share(&self, user: &str) -> Result<UserShare<'_>, ServiceError> {
        let mut map = self.per_user.lock().unwrap();
        let n = map.entry(user.to_string()).or_insert(0);
        if *n >= self.max_per_user {
            return Err(ServiceError::Overloaded(format!(
                "this user already has {} runs in progress or queued; retry shortly",
                self.max_per_user
            )));
        }
        *n += 1;
        Ok(UserShare {
            admission: self,
            user: user.to_string(),
        })
    }

    pub fn running(&self, max_running: usize) -> usize {
        max_running.saturating_sub(self.slots.available_permits())
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Waits for a slot, or refuses at once when the queue (or the user's share) is full.
    pub async fn admit(&self, user: Option<&str>) -> Result<Permit<'_>, ServiceError> {
        let share = user.map(|u| self.take_user_share(u)).transpose()?;
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(Permit {
                _permit: permit,
                _user: share,
            });
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ServiceError::Overloaded(
                "too many runs in progress and queued; retry shortly".into(),
            ));
        }
        // Leaves the queue even if the client disconnects while waiting.
        let _waiting = Waiting(&self.waiting);
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ServiceError::Unavailable("the server is shutting down".into()))?;
        Ok(Permit {
            _permit: permit,
            _user: share,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_with_429() {
        let a = Arc::new(Admission::new(1, 1, 8));
        let first = a.admit(None).await.unwrap();
        let queued = {
            let a = a.clone();
            tokio::spawn(async move { a.admit(None).await.map(|_| ()) })
        };
        while a.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let refused = a.admit(None).await.err().unwrap();
        assert!(matches!(refused, ServiceError::Overloaded(_)));
        drop(first);
        queued.await.unwrap().unwrap();
        assert_eq!(a.waiting(), 0);
    }

    #[tokio::test]
    async fn one_user_cannot_take_every_slot() {
        let a = Admission::new(4, 16, 2);
        let p1 = a.admit(Some("alice")).await.unwrap();
        let _p2 = a.admit(Some("alice")).await.unwrap();
        let refused = a.admit(Some("alice")).await.err().unwrap();
        assert!(matches!(refused, ServiceError::Overloaded(_)));
        // Others still get the remaining slots.
        let _b = a.admit(Some("bob")).await.unwrap();
        let _anon = a.admit(None).await.unwrap();
        drop(p1);
        let _p3 = a.admit(Some("alice")).await.unwrap();
    }
}
