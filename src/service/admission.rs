//! Admission control: who may have how many requests in flight, and who gets the next free
//! run slot. Shares go per API key first (by weight), then per user within a key.
//!
//! A request enters ([`Admission::enter`]) before its code is scanned, taking a place in its
//! key's and its user's share of the requests in flight (scanning, queued or running); past
//! either share it is refused at once, without scanning. It then asks for a run slot
//! ([`Ticket::run_slot`]): free ones are taken at once; otherwise it waits in the queue, and
//! each slot that frees goes to the waiting key with the fewest runs for its weight, then to
//! that key's user with the fewest runs, then first come first served. No slot stays idle
//! while anyone waits, and a key that floods the server delays another key's request by one
//! run at most, never refuses it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::ServiceError;

/// The configured keys' weights, by owner (the key's fingerprint). Empty on a keyless
/// server, where every request belongs to one anonymous owner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyWeights {
    by_owner: HashMap<String, u32>,
}

impl KeyWeights {
    pub fn new(weights: impl IntoIterator<Item = (String, u32)>) -> KeyWeights {
        KeyWeights {
            by_owner: weights.into_iter().map(|(o, w)| (o, w.max(1))).collect(),
        }
    }

    /// A key's weight: 1 for a key without one, or for the anonymous owner.
    fn of(&self, owner: &Option<String>) -> u64 {
        owner
            .as_ref()
            .and_then(|o| self.by_owner.get(o))
            .map_or(1, |&w| u64::from(w))
    }

    fn total(&self) -> u64 {
        self.by_owner
            .values()
            .map(|&w| u64::from(w))
            .sum::<u64>()
            .max(1)
    }
}

/// The limits admission enforces.
#[derive(Debug, Clone, PartialEq)]
pub struct Shares {
    pub max_running: usize,
    pub max_queue: usize,
    /// Requests in flight one user of a key may have; `None` = half of its key's share.
    pub max_per_user: Option<usize>,
    pub weights: KeyWeights,
}

impl Shares {
    /// Requests in flight (scanning, queued or running) a key may have: its weight's part
    /// of every slot and queue place, at least 1.
    pub fn per_key(&self, owner: &Option<String>) -> usize {
        let places = (self.max_running + self.max_queue) as u64;
        let share = (places * self.weights.of(owner)).div_ceil(self.weights.total());
        (share as usize).max(1)
    }

    /// Requests in flight one user of `owner` may have.
    pub fn per_user(&self, owner: &Option<String>) -> usize {
        self.max_per_user
            .unwrap_or_else(|| self.per_key(owner).div_ceil(2))
            .max(1)
    }
}

pub struct Admission {
    shares: Shares,
    books: Mutex<Books>,
}

/// Who holds what. A user of `None` is its key's anonymous user (no `x-relaxai-userid`).
#[derive(Default)]
struct Books {
    running: usize,
    queued: usize,
    next_seq: u64,
    keys: HashMap<Option<String>, KeyBook>,
}

#[derive(Default)]
struct KeyBook {
    in_flight: usize,
    running: usize,
    queued: usize,
    users: HashMap<Option<String>, UserBook>,
}

#[derive(Default)]
struct UserBook {
    in_flight: usize,
    running: usize,
    /// Waiting for a slot, oldest first: (arrival, wake-up).
    waiting: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// A waiting request that could take a free slot.
struct Candidate<'b> {
    owner: &'b Option<String>,
    user: &'b Option<String>,
    weight: u64,
    key_running: usize,
    user_running: usize,
    seq: u64,
}

impl Candidate<'_> {
    /// Whether this one goes first: fewer runs for its key's weight (compared without
    /// division), then fewer runs for its user, then older.
    fn before(&self, other: &Candidate<'_>) -> bool {
        let mine = self.key_running as u64 * other.weight;
        let theirs = other.key_running as u64 * self.weight;
        (mine, self.user_running, self.seq) < (theirs, other.user_running, other.seq)
    }
}

impl Books {
    /// Gives free slots to waiting requests, best [`Candidate`] first.
    fn dispatch(&mut self, shares: &Shares) {
        while self.running < shares.max_running && self.queued > 0 {
            let mut best: Option<Candidate<'_>> = None;
            for (owner, key) in &self.keys {
                for (user, book) in &key.users {
                    let Some((seq, _)) = book.waiting.front() else {
                        continue;
                    };
                    let candidate = Candidate {
                        owner,
                        user,
                        weight: shares.weights.of(owner),
                        key_running: key.running,
                        user_running: book.running,
                        seq: *seq,
                    };
                    if best.as_ref().is_none_or(|b| candidate.before(b)) {
                        best = Some(candidate);
                    }
                }
            }
            let Some(best) = best else {
                return;
            };
            let (owner, user) = (best.owner.clone(), best.user.clone());
            let key = self.keys.get_mut(&owner).expect("chosen above");
            let book = key.users.get_mut(&user).expect("chosen above");
            let (_, wake) = book.waiting.pop_front().expect("chosen above");
            book.running += 1;
            key.running += 1;
            key.queued -= 1;
            self.running += 1;
            self.queued -= 1;
            // A waiter whose future is gone cannot receive; its guard sees it was given
            // the slot and gives it back.
            let _ = wake.send(());
        }
    }
}

/// One request's place in flight, from before its scan to the end of its run. Dropping it
/// gives back its place and, if it had one, its run slot.
pub struct Ticket<'a> {
    admission: &'a Admission,
    owner: Option<String>,
    user: Option<String>,
    running: bool,
}

/// A ticket's place in the queue while it waits; dropped (the client went away) it leaves
/// the queue, or, if a slot was given to it meanwhile, marks the ticket as holding it.
struct Queued<'t, 'a> {
    ticket: &'t mut Ticket<'a>,
    seq: u64,
    done: bool,
}

impl Drop for Queued<'_, '_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let t = &mut *self.ticket;
        let mut books = t.admission.books.lock().unwrap();
        let books = &mut *books;
        let key = books
            .keys
            .get_mut(&t.owner)
            .expect("a ticket's key is booked");
        let book = key
            .users
            .get_mut(&t.user)
            .expect("a ticket's user is booked");
        if let Some(i) = book.waiting.iter().position(|(s, _)| *s == self.seq) {
            book.waiting.remove(i);
            key.queued -= 1;
            books.queued -= 1;
        } else {
            t.running = true;
        }
    }
}

impl Ticket<'_> {
    /// Waits for a run slot, or refuses at once when the queue is full.
    pub async fn run_slot(&mut self) -> Result<(), ServiceError> {
        let admission = self.admission;
        let (seq, woken) = {
            let mut books = admission.books.lock().unwrap();
            let books = &mut *books;
            if books.running < admission.shares.max_running && books.queued == 0 {
                books.running += 1;
                let key = books.keys.get_mut(&self.owner).expect("booked");
                key.running += 1;
                key.users.get_mut(&self.user).expect("booked").running += 1;
                self.running = true;
                return Ok(());
            }
            if books.queued >= admission.shares.max_queue {
                return Err(ServiceError::Overloaded(
                    "too many runs in progress and queued; retry shortly".into(),
                ));
            }
            let seq = books.next_seq;
            books.next_seq += 1;
            books.queued += 1;
            let key = books.keys.get_mut(&self.owner).expect("booked");
            key.queued += 1;
            let (wake, woken) = oneshot::channel();
            let book = key.users.get_mut(&self.user).expect("booked");
            book.waiting.push_back((seq, wake));
            (seq, woken)
        };
        // Declared after `woken`, so dropped before it: the queue never holds a dead waiter.
        let mut queued = Queued {
            ticket: self,
            seq,
            done: false,
        };
        match woken.await {
            Ok(()) => {
                queued.done = true;
                queued.ticket.running = true;
                Ok(())
            }
            Err(_) => Err(ServiceError::Unavailable(
                "the server is shutting down".into(),
            )),
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let admission = self.admission;
        let mut books = admission.books.lock().unwrap();
        let books = &mut *books;
        let key = books.keys.get_mut(&self.owner).expect("booked");
        let book = key.users.get_mut(&self.user).expect("booked");
        book.in_flight -= 1;
        key.in_flight -= 1;
        if self.running {
            book.running -= 1;
            key.running -= 1;
            books.running -= 1;
        }
        if book.in_flight == 0 {
            key.users.remove(&self.user);
        }
        if key.in_flight == 0 {
            books.keys.remove(&self.owner);
        }
        books.dispatch(&admission.shares);
    }
}

impl Admission {
    pub fn new(shares: Shares) -> Admission {
        Admission {
            shares: Shares {
                max_running: shares.max_running.max(1),
                ..shares
            },
            books: Mutex::new(Books::default()),
        }
    }

    pub fn shares(&self) -> &Shares {
        &self.shares
    }

    /// Takes a place in `owner`'s and `user`'s shares of the requests in flight, or refuses
    /// (429) when either is full.
    pub fn enter(
        &self,
        owner: Option<&str>,
        user: Option<&str>,
    ) -> Result<Ticket<'_>, ServiceError> {
        let (owner, user) = (owner.map(str::to_string), user.map(str::to_string));
        let per_key = self.shares.per_key(&owner);
        let per_user = self.shares.per_user(&owner);
        let mut books = self.books.lock().unwrap();
        let key = books.keys.entry(owner.clone()).or_default();
        key.users.entry(user.clone()).or_default();
        let user_in_flight = key.users[&user].in_flight;
        let refusal = if key.in_flight >= per_key {
            // Without keys the one anonymous owner's share is every slot and queue place.
            Some(match owner {
                Some(_) => format!(
                    "this API key already has {per_key} runs in progress or queued (its share \
                     of the server); retry shortly"
                ),
                None => "too many runs in progress and queued; retry shortly".to_string(),
            })
        } else if user_in_flight >= per_user {
            Some(format!(
                "this user already has {per_user} runs in progress or queued; retry shortly"
            ))
        } else {
            None
        };
        if let Some(message) = refusal {
            // Books made just now for this request go again.
            if user_in_flight == 0 {
                key.users.remove(&user);
            }
            if key.in_flight == 0 {
                books.keys.remove(&owner);
            }
            return Err(ServiceError::Overloaded(message));
        }
        key.in_flight += 1;
        key.users.get_mut(&user).expect("made above").in_flight += 1;
        Ok(Ticket {
            admission: self,
            owner,
            user,
            running: false,
        })
    }

    /// Runs executing now.
    pub fn running(&self) -> usize {
        self.books.lock().unwrap().running
    }

    /// Requests waiting for a run slot.
    pub fn waiting(&self) -> usize {
        self.books.lock().unwrap().queued
    }

    /// `owner`'s runs executing now and requests waiting for a slot.
    pub fn load_of(&self, owner: &Option<String>) -> (usize, usize) {
        let books = self.books.lock().unwrap();
        books
            .keys
            .get(owner)
            .map_or((0, 0), |k| (k.running, k.queued))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn admission(max_running: usize, max_queue: usize, weights: &[(&str, u32)]) -> Admission {
        Admission::new(Shares {
            max_running,
            max_queue,
            max_per_user: None,
            weights: KeyWeights::new(weights.iter().map(|(o, w)| (o.to_string(), *w))),
        })
    }

    /// Waits until `n` requests are queued.
    async fn until_queued(a: &Admission, n: usize) {
        while a.waiting() != n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_with_429() {
        // Each key's share is one place; a third owner within its share finds the queue full.
        let a = Arc::new(admission(1, 1, &[("a", 1), ("b", 1)]));
        let mut first = a.enter(Some("a"), None).unwrap();
        first.run_slot().await.unwrap();
        let queued = {
            let a = a.clone();
            tokio::spawn(async move {
                let mut t = a.enter(Some("b"), None).unwrap();
                t.run_slot().await
            })
        };
        until_queued(&a, 1).await;
        let mut third = a.enter(Some("c"), None).unwrap();
        let refused = third.run_slot().await.err().unwrap();
        assert!(matches!(refused, ServiceError::Overloaded(m) if m.contains("queued")));
        drop(first);
        queued.await.unwrap().unwrap();
        assert_eq!((a.waiting(), a.running()), (0, 0));
    }

    #[tokio::test]
    async fn one_user_cannot_take_every_place() {
        let a = Admission::new(Shares {
            max_running: 4,
            max_queue: 16,
            max_per_user: Some(2),
            weights: KeyWeights::default(),
        });
        let p1 = a.enter(None, Some("alice")).unwrap();
        let _p2 = a.enter(None, Some("alice")).unwrap();
        let refused = a.enter(None, Some("alice")).err().unwrap();
        assert!(matches!(refused, ServiceError::Overloaded(m) if m.contains("this user")));
        // Others still get in, the anonymous user as one more user.
        let _b = a.enter(None, Some("bob")).unwrap();
        let _anon = a.enter(None, None).unwrap();
        let _anon2 = a.enter(None, None).unwrap();
        assert!(a.enter(None, None).is_err(), "no user is one user");
        drop(p1);
        let _p3 = a.enter(None, Some("alice")).unwrap();
    }

    #[tokio::test]
    async fn a_key_has_its_weights_share_of_the_places() {
        // 4 slots + 4 queue places; weights 3:1 give 6 and 2.
        let a = admission(4, 4, &[("a", 3), ("b", 1)]);
        assert_eq!(a.shares().per_key(&Some("a".into())), 6);
        assert_eq!(a.shares().per_key(&Some("b".into())), 2);
        // Rotating user ids does not get past the key's share.
        let held: Vec<_> = (0..6)
            .map(|i| a.enter(Some("a"), Some(&format!("user-{i}"))).unwrap())
            .collect();
        let refused = a.enter(Some("a"), Some("user-new")).err().unwrap();
        assert!(matches!(refused, ServiceError::Overloaded(m) if m.contains("API key")));
        let _b = a.enter(Some("b"), None).unwrap();
        drop(held);
        assert_eq!(a.load_of(&Some("a".into())), (0, 0));
        // A keyless server's one anonymous owner has every place.
        let keyless = admission(1, 0, &[]);
        assert_eq!(admission(4, 4, &[]).shares().per_key(&None), 8);
        let _only = keyless.enter(None, Some("u1")).unwrap();
        let refused = keyless.enter(None, Some("u2")).err().unwrap();
        assert!(matches!(refused, ServiceError::Overloaded(m) if !m.contains("API key")));
    }

    /// Issue 28: key A floods (every slot, then its share of the queue); key B's request
    /// is queued, not refused, and takes the next free slot ahead of A's queued ones.
    #[tokio::test]
    async fn a_flooding_key_leaves_the_next_slot_to_another() {
        let a = Arc::new(admission(2, 4, &[("a", 1), ("b", 1)]));
        let mut running = Vec::new();
        for _ in 0..2 {
            let mut t = a.enter(Some("a"), None).unwrap();
            t.run_slot().await.unwrap();
            running.push(t);
        }
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let spawn = |owner: &'static str, user: &'static str| {
            let (a, order_tx) = (a.clone(), order_tx.clone());
            tokio::spawn(async move {
                let mut t = a.enter(Some(owner), Some(user)).unwrap();
                t.run_slot().await.unwrap();
                order_tx.send(owner).unwrap();
                // Holds the slot until the test is over.
                std::future::pending::<()>().await;
                drop(t);
            })
        };
        let _a3 = spawn("a", "x");
        until_queued(&a, 1).await;
        // A's share (3 of 6 places) is full: the next is refused before any scan.
        assert!(a.enter(Some("a"), Some("y")).is_err());
        let _b = spawn("b", "z");
        until_queued(&a, 2).await;
        drop(running.pop());
        assert_eq!(order.recv().await, Some("b"), "B before A's older request");
        drop(running.pop());
        assert_eq!(order.recv().await, Some("a"));
        assert_eq!((a.running(), a.waiting()), (2, 0));
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_leaves_no_trace() {
        let a = Arc::new(admission(1, 2, &[]));
        let mut first = a.enter(None, None).unwrap();
        first.run_slot().await.unwrap();
        let gone = {
            let a = a.clone();
            tokio::spawn(async move {
                let mut t = a.enter(None, Some("u")).unwrap();
                t.run_slot().await
            })
        };
        until_queued(&a, 1).await;
        gone.abort();
        let _ = gone.await;
        assert_eq!(a.waiting(), 0);
        drop(first);
        assert_eq!(a.running(), 0);
        assert!(a.books.lock().unwrap().keys.is_empty());
    }
}
