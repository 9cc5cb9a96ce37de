//! Accepting and serving HTTP connections: the header and idle timeouts, a client that stops reading, the caps on open connections (with a reserve that still answers `/v1/health`), and closing every connection once the shutdown grace is over.
//!
//! hyper's own header timeout also runs while a keep-alive connection waits for its next
//! request, so it cannot tell a silent client from one that trickles a head; and it has
//! no idle timeout. So each connection has a watchdog that knows which phase it is in:
//!
//! - no request on it and no byte of the next one: `idle_timeout` since it opened or the
//!   last response went out;
//! - the first byte of a head arrived: `header_timeout` from that byte;
//! - a request is being handled: no limit here (the run has its own timeout, the body its
//!   deadline in `api::body`), but a response the client does not read (writes blocked)
//!   for `idle_timeout` ends the connection.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::api::error::ApiError;

/// Connections served past `max_connections` (when no idle connection could make room),
/// for `/v1/health` only: a probe or a load balancer still learns the server is alive
/// while clients hold every ordinary slot with requests. When the reserve is full too, a
/// new connection takes the place of its oldest one that is not being answered: a probe
/// sends its request at once and is answered before 16 newer connections arrive.
pub const RESERVE: usize = 16;

/// How long a reserve connection may take to send its one request.
const RESERVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Descriptors kept for everything but client connections: the listener, each run's
/// socket, the spawner's, logs, files read at start.
const OTHER_DESCRIPTORS: u64 = 256;

/// After the shutdown grace the runs are cancelled; their clients get a 503 within this,
/// then every connection still open is dropped.
pub const LAST_WORDS: Duration = Duration::from_secs(2);

/// The limits on connections, from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_per_peer: Option<usize>,
}

impl Limits {
    /// `max_connections` lowered, with a warning, to what the process's descriptor limit
    /// allows once the soft limit has been raised as far as the hard one lets it: a full
    /// table would make `accept` fail for every client, `/v1/health` included.
    pub fn fitted_to_descriptors(mut self) -> Limits {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let want = (self.max_connections + RESERVE) as u64 + OTHER_DESCRIPTORS;
        let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
            return self;
        };
        let mut soft = soft;
        if soft < want {
            let raised = want.min(hard);
            if setrlimit(Resource::RLIMIT_NOFILE, raised, hard).is_ok() {
                soft = raised;
            }
        }
        if soft < want {
            let fits = soft
                .saturating_sub(RESERVE as u64 + OTHER_DESCRIPTORS)
                .max(1) as usize;
            tracing::warn!(
                max_connections = self.max_connections,
                descriptor_limit = soft,
                "max_connections lowered to {fits} to fit the descriptor limit (RLIMIT_NOFILE)"
            );
            self.max_connections = fits;
        }
        self
    }
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets the
/// requests in flight finish and closes idle connections, until `force` resolves (started
/// only after `shutdown`), when every connection still open is dropped, whatever its
/// client is doing. Returns once no connection task is left.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    force: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let places = Arc::new(Places::default());
    let peers = Arc::new(Peers::default());
    // `true` once draining: connections finish their request and close.
    let (drain_tx, drain) = watch::channel(false);
    // `true` once the grace is over: connections close now.
    let (close_tx, close) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors, or the peer gave up before accept: wait a
                        // little rather than spin on the same error.
                        tracing::warn!("accept error: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(peer_slot) = peers.enter(peer.ip(), limits.max_per_peer) else {
                    tracing::debug!(%peer, "connection refused: too many from this address");
                    continue;
                };
                let activity = Arc::new(Activity::new());
                let (app, limits, drain, close) = (app.clone(), limits.clone(), drain.clone(), close.clone());
                let (slots, places) = (slots.clone(), places.clone());
                tasks.spawn(async move {
                    let (mode, kick) = places.take(&slots, &activity).await;
                    let conn = Connection {
                        activity,
                        app,
                        limits,
                        peer,
                        mode,
                        kick,
                        _peer_slot: peer_slot,
                    };
                    conn.serve(stream, drain, close).await
                });
            }
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    tokio::pin!(force);
    loop {
        tokio::select! {
            joined = tasks.join_next() => if joined.is_none() { return },
            () = &mut force => break,
        }
    }
    tracing::warn!(
        open = tasks.len(),
        "closing the connections still open after the shutdown grace"
    );
    let _ = close_tx.send(true);
    // Each task ends at its next poll; a bound anyway, so nothing here can hold the exit.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}

/// Connections open per peer address.
#[derive(Default)]
struct Peers(Mutex<HashMap<IpAddr, usize>>);

/// One connection counted for its peer until dropped.
struct PeerSlot {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Peers {
    fn enter(self: &Arc<Peers>, ip: IpAddr, cap: Option<usize>) -> Option<PeerSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if cap.is_some_and(|cap| *count >= cap) {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The connections of the pool and of the reserve, oldest first: each one's activity,
/// and what closes it.
#[derive(Default)]
struct Places {
    pool: Mutex<VecDeque<(Arc<Activity>, Arc<Notify>)>>,
    reserve: Mutex<VecDeque<(Arc<Activity>, Arc<Notify>)>>,
}

/// How long a new connection waits for the slot of an idle one it closed.
const TAKE_OVER: Duration = Duration::from_secs(1);

impl Places {
    /// A place for a new connection, and what closes it. A free slot of the pool; or, the
    /// pool being full, the slot of its oldest idle connection (no request on it, not a
    /// byte of the next one): clients that open connections and send nothing cannot keep
    /// others out. Else a place in the reserve, taking that of its oldest connection not
    /// being answered if the reserve is full.
    async fn take(&self, slots: &Arc<Semaphore>, activity: &Arc<Activity>) -> (Mode, Arc<Notify>) {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if Self::close_oldest(&self.pool, Activity::is_idle) => {
                tokio::time::timeout(TAKE_OVER, slots.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(_) => None,
        };
        match permit {
            Some(permit) => (Mode::Full(permit), Self::enter(&self.pool, activity)),
            None => {
                if Self::count(&self.reserve) >= RESERVE {
                    Self::close_oldest(&self.reserve, Activity::is_waiting);
                }
                (Mode::Reserve, Self::enter(&self.reserve, activity))
            }
        }
    }

    fn lock(
        held: &Mutex<VecDeque<(Arc<Activity>, Arc<Notify>)>>,
    ) -> std::sync::MutexGuard<'_, VecDeque<(Arc<Activity>, Arc<Notify>)>> {
        let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
        // A connection that has ended holds only our clone of its activity's Arc.
        held.retain(|(a, _)| Arc::strong_count(a) > 1);
        held
    }

    fn count(held: &Mutex<VecDeque<(Arc<Activity>, Arc<Notify>)>>) -> usize {
        Self::lock(held).len()
    }

    /// Closes the oldest connection of `held` that `closable` says may go; whether there
    /// was one.
    fn close_oldest(
        held: &Mutex<VecDeque<(Arc<Activity>, Arc<Notify>)>>,
        closable: fn(&Activity) -> bool,
    ) -> bool {
        let mut held = Self::lock(held);
        let oldest = held.iter().position(|(a, _)| closable(a));
        match oldest.and_then(|i| held.remove(i)) {
            Some((_, kick)) => {
                kick.notify_one();
                true
            }
            None => false,
        }
    }

    fn enter(
        held: &Mutex<VecDeque<(Arc<Activity>, Arc<Notify>)>>,
        activity: &Arc<Activity>,
    ) -> Arc<Notify> {
        let kick = Arc::new(Notify::new());
        Self::lock(held).push_back((activity.clone(), kick.clone()));
        kick
    }
}

enum Mode {
    /// An ordinary slot: every route, keep-alive.
    Full(#[allow(dead_code)] OwnedSemaphorePermit),
    /// Past `max_connections`: one request, `/v1/health` answered, anything else 503.
    Reserve,
}

struct Connection {
    activity: Arc<Activity>,
    app: Router,
    limits: Limits,
    peer: SocketAddr,
    mode: Mode,
    /// Closes the connection: a newer one took its place.
    kick: Arc<Notify>,
    _peer_slot: PeerSlot,
}

impl Connection {
    async fn serve(
        self,
        stream: TcpStream,
        mut drain: watch::Receiver<bool>,
        mut close: watch::Receiver<bool>,
    ) {
        let reserve = matches!(self.mode, Mode::Reserve);
        let (header_timeout, idle_timeout) = if reserve {
            (RESERVE_TIMEOUT, RESERVE_TIMEOUT)
        } else {
            (self.limits.header_timeout, self.limits.idle_timeout)
        };
        let activity = self.activity.clone();
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let service = PerRequest {
            app: self.app.clone(),
            activity: activity.clone(),
            reserve,
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        // The watchdog times the head; hyper's own timer would also cut idle keep-alive
        // connections at the header timeout.
        builder.header_read_timeout(None).keep_alive(!reserve);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let watchdog = activity.watchdog(header_timeout, idle_timeout);
        tokio::pin!(watchdog);
        let mut draining = false;
        if *drain.borrow() {
            conn.as_mut().graceful_shutdown();
            draining = true;
        }
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %self.peer, "connection ended: {e}");
                    }
                    return;
                }
                why = &mut watchdog => {
                    tracing::debug!(peer = %self.peer, "connection closed: {why}");
                    return;
                }
                Ok(()) = drain.changed(), if !draining => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                Ok(()) = close.changed() => return,
                () = self.kick.notified() => {
                    tracing::debug!(peer = %self.peer, "connection closed for a newer one");
                    return;
                }
            }
        }
    }
}

/// What a connection is doing, for its watchdog.
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

struct Phase {
    /// Requests being handled, their responses not yet fully written.
    in_flight: usize,
    /// When the connection opened or its last response went out.
    since: Instant,
    /// When the first byte of the next head arrived.
    head_started: Option<Instant>,
    /// Since when a write has been waiting for the client to read.
    write_blocked: Option<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            phase: Mutex::new(Phase {
                in_flight: 0,
                since: Instant::now(),
                head_started: None,
                write_blocked: None,
            }),
            changed: Notify::new(),
        }
    }

    /// Nothing on it: no request being handled, not a byte of the next one.
    fn is_idle(&self) -> bool {
        let p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        p.in_flight == 0 && p.head_started.is_none()
    }

    /// No request is being handled on it.
    fn is_waiting(&self) -> bool {
        self.phase
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .in_flight
            == 0
    }

    fn update(&self, f: impl FnOnce(&mut Phase) -> bool) {
        let changed = f(&mut self.phase.lock().unwrap_or_else(|e| e.into_inner()));
        if changed {
            self.changed.notify_one();
        }
    }

    /// Resolves, with the reason, when the connection has overstayed its phase's limit.
    async fn watchdog(&self, header_timeout: Duration, idle_timeout: Duration) -> &'static str {
        loop {
            let deadline = {
                let p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
                let waiting = (p.in_flight == 0).then(|| match p.head_started {
                    Some(t) => (t + header_timeout, "the request head took too long"),
                    None => (p.since + idle_timeout, "idle"),
                });
                let blocked = p
                    .write_blocked
                    .map(|t| (t + idle_timeout, "the client stopped reading the response"));
                match (waiting, blocked) {
                    (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
                    (a, b) => a.or(b),
                }
            };
            match deadline {
                Some((at, why)) if at <= Instant::now() => return why,
                Some((at, _)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// Counts a request in flight until its response has been written (or abandoned).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> InFlight {
        activity.update(|p| {
            p.in_flight += 1;
            p.head_started = None;
            true
        });
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.update(|p| {
            p.in_flight -= 1;
            p.since = Instant::now();
            true
        });
    }
}

/// The connection's socket, telling its `Activity` when a head starts and when writes
/// block.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.update(|p| {
                let starts = p.in_flight == 0 && p.head_started.is_none();
                if starts {
                    p.head_started = Some(Instant::now());
                }
                starts
            });
        }
        result
    }
}

impl Watched {
    fn written<T>(&self, result: &Poll<T>) {
        let pending = result.is_pending();
        self.activity.update(|p| match (pending, p.write_blocked) {
            (true, None) => {
                p.write_blocked = Some(Instant::now());
                true
            }
            (false, Some(_)) => {
                p.write_blocked = None;
                true
            }
            _ => false,
        });
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.written(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.written(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router as hyper calls it, once per request: the request counted in flight until
/// its response body is done; on a reserve connection, only `/v1/health`.
#[derive(Clone)]
struct PerRequest {
    app: Router,
    activity: Arc<Activity>,
    reserve: bool,
}

impl hyper::service::Service<Request<Incoming>> for PerRequest {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::begin(&self.activity);
        let app = self.app.clone();
        let reserve = self.reserve;
        Box::pin(async move {
            let mut response = if reserve && request.uri().path() != "/v1/health" {
                ApiError::unavailable("too many connections: every slot is taken; retry shortly")
                    .into_response()
            } else {
                match app.oneshot(request.map(Body::new)).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                }
            };
            if reserve {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|body| {
                Body::new(Counted {
                    inner: body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// A response body that keeps its request counted in flight until hyper drops it.
struct Counted {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for Counted {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
