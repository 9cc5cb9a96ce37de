//! Sessions: sandboxes whose interpreter keeps its state between calls, owned by the API key that made them, under idle, lifetime, count and memory limits.
//!
//! The registry only keeps books: each session's sandbox lives in its own supervisor,
//! reached through a [`SessionConn`]; dropping that connection ends the sandbox at once.
//! Calls go through the run service like any run (validation, scanning, admission,
//! classification); this module decides who may reach a session and when it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{watch, OwnedMutexGuard};

use super::metrics::{Metrics, SessionEnd};
use super::runner::{Events, RunnerError, SessionConn};
use super::session_ids::{self, NodeTag};
use super::ServiceError;
use crate::sandbox::warm::Template;
use crate::sandbox::{RunOutcome, SessionOp};

/// How long an ended session's id still answers its owner with the reason it ended.
const REMEMBER_ENDED: Duration = Duration::from_secs(3600);
/// Ended sessions remembered at most (the oldest are forgotten first).
const MAX_REMEMBERED: usize = 10_000;
/// How often expiry and lost sandboxes are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// The limits on sessions, from the configuration.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub idle_ttl: Duration,
    pub max_idle_ttl: Duration,
    pub max_lifetime: Duration,
    pub max_sessions: usize,
    pub max_per_owner: usize,
    pub memory_budget_bytes: u64,
    /// This node's name in the ids of its sessions.
    pub node: NodeTag,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            idle_ttl: Duration::from_secs(600),
            max_idle_ttl: Duration::from_secs(3600),
            max_lifetime: Duration::from_secs(14_400),
            max_sessions: 32,
            max_per_owner: 8,
            memory_budget_bytes: 4 << 30,
            node: NodeTag::of_this_host(),
        }
    }
}

/// One session's books; its sandbox is behind `conn`.
pub struct Session {
    pub id: String,
    /// Who may reach it: the creating API key's fingerprint, `None` without keys.
    owner: Option<String>,
    pub template: Option<Template>,
    pub libraries: Vec<String>,
    /// Whether its calls return notebook results unless they say otherwise.
    pub results: bool,
    created_at: SystemTime,
    created: Instant,
    ttl: Duration,
    /// Memory reserved against the budget: the session's memory limit.
    reserved_bytes: u64,
    usage: Mutex<Usage>,
    /// `None` once the session has ended; locked for the length of a call.
    conn: Arc<tokio::sync::Mutex<Option<SessionConn>>>,
    /// Turns true when the session ends, so a call in flight lets go of the sandbox.
    ending: watch::Sender<bool>,
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    last_used: Instant,
    last_used_at: SystemTime,
    calls: u64,
    memory_bytes: Option<u64>,
}

/// A session as clients see it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionInfo {
    pub id: String,
    pub state: &'static str,
    pub template: Option<&'static str>,
    pub libraries: Vec<String>,
    pub created_at: String,
    pub last_used_at: String,
    pub expires_at: String,
    pub ttl_seconds: u64,
    pub calls: u64,
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: u64,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Session {
    fn usage(&self) -> Usage {
        *self.usage.lock().expect("usage lock")
    }

    pub fn info(&self, max_lifetime: Duration) -> SessionInfo {
        let usage = self.usage();
        let expires_at = (usage.last_used_at + self.ttl).min(self.created_at + max_lifetime);
        SessionInfo {
            id: self.id.clone(),
            state: "active",
            template: self.template.map(Template::name),
            libraries: self.libraries.clone(),
            created_at: rfc3339(self.created_at),
            last_used_at: rfc3339(usage.last_used_at),
            expires_at: rfc3339(expires_at),
            ttl_seconds: self.ttl.as_secs(),
            calls: usage.calls,
            memory_bytes: usage.memory_bytes,
            memory_limit_bytes: self.reserved_bytes,
        }
    }

    fn touch(&self, memory_bytes: Option<u64>, counted: bool) {
        let mut usage = self.usage.lock().expect("usage lock");
        usage.last_used = Instant::now();
        usage.last_used_at = SystemTime::now();
        if counted {
            usage.calls += 1;
        }
        if memory_bytes.is_some() {
            usage.memory_bytes = memory_bytes;
        }
    }

    /// Takes the session for one call or file request: 409 while another holds it.
    pub fn acquire(&self) -> Result<Held, ServiceError> {
        let guard = self.conn.clone().try_lock_owned().map_err(|_| {
            ServiceError::Conflict(
                "session busy: another call or file request is running in it; send one at a time"
                    .into(),
            )
        })?;
        if guard.is_none() {
            return Err(ServiceError::NotFound("session ended".into()));
        }
        self.touch(None, false);
        Ok(Held(guard))
    }
}

/// A session taken for one call.
pub struct Held(OwnedMutexGuard<Option<SessionConn>>);

/// A session call's result: the outcome, or `None` when the session was ended (closed,
/// expired, shut down) while the call ran.
pub type CallResult = Result<Option<RunOutcome>, RunnerError>;

impl Held {
    /// Runs `op` in the session. The call runs in a task of its own, so a caller that goes
    /// away mid-call leaves the session consistent (the call finishes, its answer is
    /// dropped); ending the session meanwhile stops it at once.
    pub async fn call(
        self,
        session: &Arc<Session>,
        op: SessionOp,
        events: Option<Events>,
    ) -> CallResult {
        let mut ending = session.ending.subscribe();
        let session = session.clone();
        // File requests keep a session alive but are not calls.
        let counted = matches!(op, SessionOp::Run { .. });
        let mut guard = self.0;
        let task = tokio::spawn(async move {
            let conn = guard.as_mut().expect("checked when taken");
            let result = tokio::select! {
                r = conn.op(op, events) => r.map(Some),
                _ = ending.wait_for(|e| *e) => Ok(None),
            };
            match &result {
                Ok(Some(outcome)) if outcome.session_ended.is_none() => {
                    session.touch(outcome.memory_bytes, counted);
                }
                // The sandbox is gone or going: let go of it now.
                _ => drop(guard.take()),
            }
            result
        });
        task.await.unwrap_or(Ok(None))
    }
}

/// An ended session, remembered for its owner.
struct Ended {
    owner: Option<String>,
    reason: String,
    at: Instant,
}

#[derive(Default)]
struct Books {
    live: HashMap<String, Arc<Session>>,
    ended: HashMap<String, Ended>,
    /// Sessions being created: (owner, reserved bytes).
    pending: Vec<(u64, Option<String>, u64)>,
    next_pending: u64,
}

impl Books {
    fn owned_by(&self, owner: &Option<String>) -> usize {
        self.live.values().filter(|s| &s.owner == owner).count()
            + self.pending.iter().filter(|p| &p.1 == owner).count()
    }

    fn reserved(&self) -> u64 {
        self.live.values().map(|s| s.reserved_bytes).sum::<u64>()
            + self.pending.iter().map(|p| p.2).sum::<u64>()
    }

    fn count(&self) -> usize {
        self.live.len() + self.pending.len()
    }

    /// Gives back reservation `id` (gone already: nothing).
    fn unreserve(&mut self, id: u64) {
        self.pending.retain(|p| p.0 != id);
    }
}

/// Every session of this server.
pub struct Sessions {
    settings: SessionSettings,
    /// When this server started, for the answer to an id it does not know.
    started_at: SystemTime,
    books: Mutex<Books>,
    sweeper: std::sync::Once,
}

/// Room held for a session being created; given back if it is dropped unused.
pub struct Reservation<'a> {
    sessions: &'a Sessions,
    id: u64,
    pub owner: Option<String>,
    pub bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut books = self.sessions.books.lock().expect("books lock");
        books.unreserve(self.id);
    }
}

impl Sessions {
    pub fn new(settings: SessionSettings) -> Sessions {
        Sessions {
            settings,
            started_at: SystemTime::now(),
            books: Mutex::new(Books::default()),
            sweeper: std::sync::Once::new(),
        }
    }

    pub fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    /// The TTL a session gets: its own within the cap, or the default.
    pub fn ttl(&self, asked: Option<u64>) -> Result<Duration, ServiceError> {
        match asked {
            None => Ok(self.settings.idle_ttl),
            Some(0) => Err(ServiceError::Invalid(
                "`ttl_seconds` must be at least 1".into(),
            )),
            Some(s) if Duration::from_secs(s) > self.settings.max_idle_ttl => {
                Err(ServiceError::Invalid(format!(
                    "`ttl_seconds` must be at most {}, got {s}",
                    self.settings.max_idle_ttl.as_secs()
                )))
            }
            Some(s) => Ok(Duration::from_secs(s)),
        }
    }

    /// Holds room for one more session of `owner` reserving `bytes`, or says which
    /// limit refuses it.
    pub fn reserve(
        &self,
        owner: Option<String>,
        bytes: u64,
    ) -> Result<Reservation<'_>, ServiceError> {
        let mut books = self.books.lock().expect("books lock");
        let s = &self.settings;
        if books.count() >= s.max_sessions {
            return Err(ServiceError::Overloaded(format!(
                "session limit reached: {} sessions are open on this server (max_sessions); close one or retry later",
                s.max_sessions
            )));
        }
        if books.owned_by(&owner) >= s.max_per_owner {
            return Err(ServiceError::Overloaded(format!(
                "per-key session limit reached: this API key has {} sessions open (max_sessions_per_key); close one first",
                s.max_per_owner
            )));
        }
        if books.reserved() + bytes > s.memory_budget_bytes {
            return Err(ServiceError::Overloaded(format!(
                "session memory budget reached: open sessions reserve {} MiB of {} MiB (session_memory_budget_mib), and a session reserves {} MiB",
                books.reserved() >> 20,
                s.memory_budget_bytes >> 20,
                bytes >> 20
            )));
        }
        books.next_pending += 1;
        let id = books.next_pending;
        books.pending.push((id, owner.clone(), bytes));
        Ok(Reservation {
            sessions: self,
            id,
            owner,
            bytes,
        })
    }

    /// Books a session whose sandbox is up, in place of its reservation.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        self: &Arc<Self>,
        reservation: Reservation<'_>,
        conn: SessionConn,
        template: Option<Template>,
        libraries: Vec<String>,
        results: bool,
        ttl: Duration,
        memory_bytes: Option<u64>,
        metrics: &Arc<Metrics>,
    ) -> Arc<Session> {
        let now = Instant::now();
        let (ending, _) = watch::channel(false);
        let session = Arc::new(Session {
            id: session_ids::new_id(&self.settings.node),
            owner: reservation.owner.clone(),
            template,
            libraries,
            results,
            created_at: SystemTime::now(),
            created: now,
            ttl,
            reserved_bytes: reservation.bytes,
            usage: Mutex::new(Usage {
                last_used: now,
                last_used_at: SystemTime::now(),
                calls: 0,
                memory_bytes,
            }),
            conn: Arc::new(tokio::sync::Mutex::new(Some(conn))),
            ending,
        });
        {
            let mut books = self.books.lock().expect("books lock");
            // In one hold of the lock with the session going live: between two, it would
            // count twice against the limits, and a create at that moment could be refused
            // for a session that does not exist (seen in CI: the eighth of eight concurrent
            // creates was told its key had 8 open).
            books.unreserve(reservation.id);
            books.live.insert(session.id.clone(), session.clone());
        }
        // Its entry is gone already; dropping it takes nothing more.
        drop(reservation);
        metrics.session_created();
        self.start_sweeper(metrics.clone());
        session
    }

    /// The session `id` if `owner` may reach it. Another owner's session answers exactly
    /// as an id that never existed. An id naming another node is refused as misdirected:
    /// its session, if any, is on that node, and a plain "not found" would hide that the
    /// request went to the wrong place (or that its node is gone).
    pub fn find(&self, id: &str, owner: &Option<String>) -> Result<Arc<Session>, ServiceError> {
        let here = self.settings.node.as_str();
        if let Some(node) = session_ids::node_of(id).filter(|n| *n != here) {
            return Err(ServiceError::Misdirected(format!(
                "session belongs to node {node}, and this is node {here}: a session lives on \
                 the node named in its id, and this request reached another one (node {node} \
                 is gone, or the load balancer does not route by the session id)"
            )));
        }
        let books = self.books.lock().expect("books lock");
        if let Some(s) = books.live.get(id).filter(|s| &s.owner == owner) {
            return Ok(s.clone());
        }
        if let Some(e) = books.ended.get(id).filter(|e| &e.owner == owner) {
            return Err(ServiceError::NotFound(format!(
                "session ended: {}",
                e.reason
            )));
        }
        Err(ServiceError::NotFound(format!(
            "session not found on node {here}, up since {} (a session ends when its node \
             restarts)",
            rfc3339(self.started_at)
        )))
    }

    /// Ends a session: its sandbox goes at once (its connection is dropped, or the call
    /// holding it lets go), and its id answers its owner with `reason` for a while.
    pub fn end(&self, id: &str, why: SessionEnd, reason: &str, metrics: &Metrics) {
        let session = {
            let mut books = self.books.lock().expect("books lock");
            let Some(session) = books.live.remove(id) else {
                return;
            };
            if books.ended.len() >= MAX_REMEMBERED {
                if let Some(oldest) = books
                    .ended
                    .iter()
                    .min_by_key(|(_, e)| e.at)
                    .map(|(k, _)| k.clone())
                {
                    books.ended.remove(&oldest);
                }
            }
            books.ended.insert(
                id.to_string(),
                Ended {
                    owner: session.owner.clone(),
                    reason: reason.to_string(),
                    at: Instant::now(),
                },
            );
            session
        };
        let _ = session.ending.send(true);
        if let Ok(mut conn) = session.conn.try_lock() {
            conn.take();
        }
        metrics.session_ended(why);
        tracing::info!(session = %id, %reason, "session ended");
    }

    /// Ends every session (shutdown).
    pub fn end_all(&self, metrics: &Metrics) {
        let ids: Vec<String> = self
            .books
            .lock()
            .expect("books lock")
            .live
            .keys()
            .cloned()
            .collect();
        for id in ids {
            self.end(&id, SessionEnd::shutdown, "the server shut down", metrics);
        }
    }

    /// Sessions `owner` has open (or being made).
    pub fn owned_by(&self, owner: &Option<String>) -> usize {
        self.books.lock().expect("books lock").owned_by(owner)
    }

    /// Sessions open, and the memory they hold (as last measured).
    pub fn stats(&self) -> (usize, u64) {
        let books = self.books.lock().expect("books lock");
        let memory = books
            .live
            .values()
            .filter_map(|s| s.usage().memory_bytes)
            .sum();
        (books.live.len(), memory)
    }

    /// Ends sessions past their idle TTL or lifetime, and those whose sandbox went away
    /// while idle; forgets ended ones after a while.
    fn sweep(&self, metrics: &Metrics) {
        let now = Instant::now();
        let mut to_end = Vec::new();
        {
            let mut books = self.books.lock().expect("books lock");
            books
                .ended
                .retain(|_, e| now.duration_since(e.at) < REMEMBER_ENDED);
            for s in books.live.values() {
                let usage = s.usage();
                if now >= s.created + self.settings.max_lifetime {
                    to_end.push((
                        s.id.clone(),
                        SessionEnd::expired,
                        format!(
                            "it reached the maximum lifetime of {} s",
                            self.settings.max_lifetime.as_secs()
                        ),
                    ));
                    continue;
                }
                // A session in a call is in use, whatever its TTL.
                let Ok(conn) = s.conn.try_lock() else {
                    continue;
                };
                if now >= usage.last_used + s.ttl {
                    to_end.push((
                        s.id.clone(),
                        SessionEnd::expired,
                        format!("it was idle for {} s (its TTL)", s.ttl.as_secs()),
                    ));
                } else if conn.as_ref().is_some_and(SessionConn::is_lost) {
                    to_end.push((
                        s.id.clone(),
                        SessionEnd::lost,
                        "its sandbox stopped unexpectedly".into(),
                    ));
                }
            }
        }
        for (id, why, reason) in to_end {
            self.end(&id, why, &reason, metrics);
        }
    }

    fn start_sweeper(self: &Arc<Self>, metrics: Arc<Metrics>) {
        let weak: Weak<Sessions> = Arc::downgrade(self);
        self.sweeper.call_once(|| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                loop {
                    tick.tick().await;
                    let Some(sessions) = weak.upgrade() else {
                        return;
                    };
                    sessions.sweep(&metrics);
                }
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(max: usize, per_owner: usize, budget: u64) -> Sessions {
        Sessions::new(SessionSettings {
            max_sessions: max,
            max_per_owner: per_owner,
            memory_budget_bytes: budget,
            ..SessionSettings::default()
        })
    }

    #[test]
    fn reservations_count_against_every_limit_and_are_given_back() {
        let s = sessions(3, 2, 300);
        let alice = Some("alice".to_string());
        let a1 = s.reserve(alice.clone(), 100).unwrap();
        let _a2 = s.reserve(alice.clone(), 100).unwrap();
        let e = s.reserve(alice.clone(), 100).err().unwrap();
        assert!(e.to_string().contains("max_sessions_per_key"), "{e}");
        let e = s.reserve(Some("bob".into()), 101).err().unwrap();
        assert!(e.to_string().contains("session_memory_budget_mib"), "{e}");
        let _b = s.reserve(Some("bob".into()), 100).unwrap();
        let e = s.reserve(Some("carol".into()), 0).err().unwrap();
        assert!(e.to_string().contains("max_sessions"), "{e}");
        drop(a1);
        s.reserve(alice, 100).unwrap();
    }

    #[test]
    fn ttls_are_within_the_cap() {
        let s = sessions(1, 1, 1);
        assert_eq!(s.ttl(None).unwrap(), Duration::from_secs(600));
        assert_eq!(s.ttl(Some(5)).unwrap(), Duration::from_secs(5));
        assert!(s.ttl(Some(0)).is_err());
        assert!(s.ttl(Some(3601)).is_err());
    }

    #[test]
    fn unknown_and_foreign_ids_answer_alike() {
        let s = sessions(1, 1, 1);
        let not_found = |e: ServiceError| match e {
            ServiceError::NotFound(m) => m.starts_with("session not found on node "),
            _ => false,
        };
        let e = s.find("sess_nope", &None).err().unwrap();
        assert!(not_found(e.clone()), "{e:?}");
        let id = session_ids::new_id(&s.settings.node);
        s.books.lock().unwrap().ended.insert(
            id.clone(),
            Ended {
                owner: Some("alice".into()),
                reason: "closed".into(),
                at: Instant::now(),
            },
        );
        assert_eq!(
            s.find(&id, &Some("bob".into())).err().unwrap(),
            s.find("sess_nope", &Some("bob".into())).err().unwrap()
        );
        assert_eq!(
            s.find(&id, &Some("alice".into())).err().unwrap(),
            ServiceError::NotFound("session ended: closed".into())
        );
    }

    #[test]
    fn ids_of_another_node_are_misdirected_and_say_which() {
        let s = Sessions::new(SessionSettings {
            node: NodeTag::new("here").unwrap(),
            ..SessionSettings::default()
        });
        let theirs = session_ids::new_id(&NodeTag::new("there").unwrap());
        let e = s.find(&theirs, &None).err().unwrap();
        let ServiceError::Misdirected(m) = &e else {
            panic!("{e:?}");
        };
        assert!(
            m.starts_with("session belongs to node there, and this is node here"),
            "{m}"
        );
        // Its own ids, and ids of no node, are looked up: not found, naming this node.
        let ours = session_ids::new_id(&NodeTag::new("here").unwrap());
        for id in [ours.as_str(), "sess_0123456789abcdef0123456789abcdef"] {
            let e = s.find(id, &None).err().unwrap();
            let ServiceError::NotFound(m) = &e else {
                panic!("{id}: {e:?}");
            };
            assert!(
                m.starts_with("session not found on node here, up since "),
                "{m}"
            );
        }
    }
}
