//! The proxy behind one run's door: accepts on the listener the run's supervisor made on the run's loopback, serves CONNECT and absolute-form HTTP to what the policy allows, and accounts for every connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::{splice, tunnel, Policy, Refusal, Route};

/// How one connection through the door ended, as counted by
/// `nsbox_egress_connections_total`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Verdict {
    /// Reached its upstream and ended by itself.
    ok,
    /// The policy refused it (host, port, address, Host header, connection limit).
    refused,
    /// A byte or time limit cut it.
    limit,
    /// Allowed, but the upstream could not be resolved or reached.
    failed,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    /// From the run to its upstreams.
    up,
    /// From the upstreams to the run.
    down,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: Verdict,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: Direction,
}

/// The door's counters, registered with the server's other metrics.
#[derive(Debug, Default)]
pub struct EgressMetrics {
    connections: Family<VerdictLabel, Counter>,
    bytes: Family<DirectionLabel, Counter>,
}

impl EgressMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "egress_connections",
            "Connections runs opened through the egress door, by how they ended",
            self.connections.clone(),
        );
        registry.register(
            "egress_bytes",
            "Bytes through the egress door, by direction (up: from runs)",
            self.bytes.clone(),
        );
    }

    fn count(&self, verdict: Verdict) {
        self.connections
            .get_or_create(&VerdictLabel { verdict })
            .inc();
    }

    fn bytes(&self, direction: Direction, n: u64) {
        self.bytes
            .get_or_create(&DirectionLabel { direction })
            .inc_by(n);
    }
}

/// Distinct refusals a run's stderr lists (the same refusal again adds no line); the rest
/// are counted in one more line.
const MAX_REFUSAL_LINES: usize = 32;

/// One run's door, before its listener exists.
#[derive(Clone)]
pub struct Door {
    pub policy: Arc<Policy>,
    pub request_id: Option<String>,
    pub metrics: Arc<EgressMetrics>,
}

/// What the door of one run counts, shared by its connections.
struct RunState {
    door: Door,
    deadline: Instant,
    connections: AtomicU32,
    up: AtomicU64,
    down: AtomicU64,
    refusals: Mutex<Vec<String>>,
    /// Distinct refusals past [`MAX_REFUSAL_LINES`].
    unlisted: AtomicU32,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl RunState {
    fn refuse(&self, refusal: &Refusal) {
        let line = refusal.to_string();
        let mut lines = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        if lines.contains(&line) {
            return;
        }
        if lines.len() < MAX_REFUSAL_LINES {
            lines.push(line);
        } else {
            self.unlisted.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        let handle = tokio::spawn(f).abort_handle();
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }
}

/// A door being served; dropping it (the run is over) closes the listener and cuts every
/// connection through it.
pub struct Serving {
    state: Arc<RunState>,
}

impl Door {
    /// Serves `listener` (the run's, handed over by its supervisor) until the returned
    /// guard is dropped.
    pub fn open(self, listener: std::net::TcpListener) -> io::Result<Serving> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let state = Arc::new(RunState {
            deadline: Instant::now() + self.policy.limits.max_time,
            door: self,
            connections: AtomicU32::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            refusals: Mutex::new(Vec::new()),
            unlisted: AtomicU32::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        state.spawn(accept(listener, state.clone()));
        Ok(Serving { state })
    }
}

impl Serving {
    /// One `nsbox:` line per distinct refusal since the last call, for the stderr of the
    /// run (or of the session's call) they happened in.
    pub fn take_refusal_lines(&self) -> String {
        let lines = std::mem::take(
            &mut *self
                .state
                .refusals
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let mut out = String::new();
        for line in lines.iter() {
            out.push_str(&format!("nsbox: {line}\n"));
        }
        let unlisted = self.state.unlisted.swap(0, Ordering::Relaxed);
        if unlisted > 0 {
            out.push_str(&format!(
                "nsbox: egress: {unlisted} more kinds of refusal not listed\n"
            ));
        }
        out
    }
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("connections", &self.state.connections)
            .finish_non_exhaustive()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let tasks =
            std::mem::take(&mut *self.state.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            t.abort();
        }
    }
}

/// Bytes a tunnel copies at a time, each way, when it cannot splice.
const TUNNEL_BUFFER: usize = 64 * 1024;

const LIMIT_RESPONSE: &[u8] = b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 46\r\nConnection: close\r\n\r\nnsbox egress: this run's connection limit hit\n";

async fn accept(listener: TcpListener, state: Arc<RunState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, most likely: wait rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let limit = state.door.policy.limits.max_connections;
        if state.connections.fetch_add(1, Ordering::Relaxed) >= limit {
            // Answered without a task: a flood costs one write each.
            let _ = stream.try_write(LIMIT_RESPONSE);
            let refusal = Refusal {
                host: String::new(),
                port: 0,
                why: format!("the run's connection limit ({limit}) is reached"),
            };
            state.refuse(&refusal);
            state.door.metrics.count(Verdict::refused);
            continue;
        }
        // A relay passes on what it gets at once: with Nagle's algorithm on either side,
        // a small write (a TLS record) waited for the peer's delayed ACK, 40 ms or more
        // per request (requests.get of a small file over HTTPS: 64 ms, then 4 ms).
        let _ = stream.set_nodelay(true);
        let s = state.clone();
        let header_timeout = state.door.policy.limits.header_timeout;
        let conn_state = state.clone();
        state.spawn(async move {
            let head = Arc::new(Mutex::new(Vec::new()));
            let io = TokioIo::new(HeadTap {
                inner: stream,
                head: head.clone(),
                done: false,
            });
            let service =
                hyper::service::service_fn(move |req| handle(req, s.clone(), head.clone()));
            // One request per connection (each is one upstream connection, counted and
            // limited as such); a head that trickles in is dropped at its timeout.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(false)
                .serve_connection(io, service)
                .with_upgrades();
            if let Err(e) = conn.await {
                if let Some(why) = unserved(&e, header_timeout) {
                    let _ = refused(
                        &conn_state,
                        Refusal {
                            host: String::new(),
                            port: 0,
                            why,
                        },
                    );
                }
            }
        });
    }
}

/// Why hyper dropped a connection before a request reached the door, in the run's words;
/// `None` when the client just went away.
fn unserved(e: &hyper::Error, header_timeout: std::time::Duration) -> Option<String> {
    if e.is_timeout() {
        Some(format!(
            "a request head not complete within {} s (a slow client)",
            header_timeout.as_secs_f64()
        ))
    } else if e.is_parse() {
        Some(format!("a malformed request ({e})"))
    } else {
        None
    }
}

type Answer = Result<Response<Body>, std::convert::Infallible>;

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    r
}

fn refused(state: &RunState, refusal: Refusal) -> Response<Body> {
    tracing::info!(
        target: "nsbox::egress",
        request_id = state.door.request_id.as_deref(),
        host = %refusal.host,
        port = refusal.port,
        up = 0u64,
        down = 0u64,
        verdict = "refused",
        why = %refusal.why,
        "egress connection"
    );
    state.door.metrics.count(Verdict::refused);
    state.refuse(&refusal);
    text(StatusCode::FORBIDDEN, format!("nsbox {refusal}\n"))
}

/// The host and port a request targets, and whether its Host header agrees.
fn target(req: &Request<hyper::body::Incoming>) -> Result<(String, u16), String> {
    let uri = req.uri();
    let connect = req.method() == Method::CONNECT;
    if !connect && uri.scheme_str() != Some("http") {
        return Err(if uri.scheme_str() == Some("https") {
            "https:// is reached with CONNECT, not through an absolute-form request".into()
        } else {
            "the proxy takes CONNECT and absolute-form http:// requests only".into()
        });
    }
    let authority = uri.authority().ok_or("the request names no host")?;
    let host = authority.host().to_string();
    let port = match (authority.port_u16(), connect) {
        (Some(p), _) => p,
        (None, false) => 80,
        (None, true) => return Err("CONNECT needs a port".into()),
    };
    if authority.as_str().contains('@') {
        return Err("credentials in the target are not forwarded".into());
    }
    // A Host header that names another host than the target: a client (or a smuggling
    // attempt) that means one host and asks for another.
    let hosts: Vec<&HeaderValue> = req.headers().get_all(HOST).iter().collect();
    if hosts.len() > 1 {
        return Err("more than one Host header".into());
    }
    if let Some(h) = hosts.first() {
        let h = h.to_str().map_err(|_| "an unreadable Host header")?;
        let default = if connect { 443 } else { 80 };
        let (hh, hp) = split_host_header(h);
        let hp: u16 = match hp {
            Some(p) => p.parse().map_err(|_| "a Host header with a bad port")?,
            None => default,
        };
        let same_host = hh
            .trim_start_matches('[')
            .trim_end_matches(']')
            .eq_ignore_ascii_case(host.trim_start_matches('[').trim_end_matches(']'));
        let same_port = hp == port || (authority.port_u16().is_none() && hp == default);
        if !same_host || !same_port {
            return Err(format!("the Host header ({h}) does not match the target"));
        }
    }
    Ok((host, port))
}

/// A Host header's host and port: `name[:port]` or `[v6][:port]`.
fn split_host_header(h: &str) -> (&str, Option<&str>) {
    match h.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':')),
            None => (h, None),
        },
        None => match h.rsplit_once(':') {
            Some((a, p)) => (a, Some(p)),
            None => (h, None),
        },
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    state: Arc<RunState>,
    head: Arc<Mutex<Vec<u8>>>,
) -> Answer {
    let (host, port) = match target(&req) {
        Ok(t) => t,
        Err(why) => {
            let host = req
                .uri()
                .host()
                .map(str::to_string)
                .unwrap_or_else(|| "?".into());
            let port = req.uri().port_u16().unwrap_or(0);
            return Ok(refused(&state, Refusal { host, port, why }));
        }
    };
    if framing_conflict(&head.lock().unwrap_or_else(|e| e.into_inner())) {
        // RFC 9112 6.3: such a message "ought to be handled as an error"; it is how a
        // request is smuggled past a proxy that reads its length one way. hyper drops the
        // Content-Length and reads the body as chunked, which is safe here; refusing says
        // what happened.
        let why = "both Transfer-Encoding and Content-Length (a request smuggling form)".into();
        return Ok(refused(&state, Refusal { host, port, why }));
    }
    if Instant::now() >= state.deadline {
        let why = format!(
            "the run's egress time ({} s) is over",
            state.door.policy.limits.max_time.as_secs()
        );
        return Ok(refused(&state, Refusal { host, port, why }));
    }
    let route = match state.door.policy.route(&host, port) {
        Ok(r) => r,
        Err(refusal) => return Ok(refused(&state, refusal)),
    };
    let addrs = match route {
        Route::Fixed(addrs) => addrs,
        Route::Resolve(name, port) => {
            let looked = tokio::net::lookup_host((name.as_str(), port)).await;
            let answers: Vec<SocketAddr> = match looked {
                Ok(a) => a.collect(),
                Err(_) => return Ok(failed(&state, &host, port, "the name does not resolve")),
            };
            match state.door.policy.screen(answers) {
                Ok(a) => a,
                Err(why) => return Ok(refused(&state, Refusal { host, port, why })),
            }
        }
    };
    let timeout = state.door.policy.limits.connect_timeout;
    let mut upstream = None;
    for addr in &addrs {
        // The address resolved above, never the name again: what was checked is what is
        // reached.
        if let Ok(Ok(s)) = tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            let _ = s.set_nodelay(true);
            upstream = Some(s);
            break;
        }
    }
    let Some(upstream) = upstream else {
        return Ok(failed(&state, &host, port, "the upstream does not answer"));
    };
    let counted = Counted::new(upstream, state.clone(), host.clone(), port);
    if req.method() == Method::CONNECT {
        let tunnel_state = state.clone();
        state.spawn(async move {
            let Ok(upgraded) = hyper::upgrade::on(req).await else {
                return;
            };
            let mut client = TokioIo::new(upgraded);
            let mut counted = counted;
            let deadline = tunnel_state.deadline;
            let patience = tunnel_state.door.policy.limits.header_timeout;
            let first = first_flight(&mut client, patience).await;
            if let Some(why) = tunnel::mismatch(&first, &counted.host, counted.port) {
                counted.refused = true;
                tunnel_state.refuse(&Refusal {
                    host: counted.host.clone(),
                    port: counted.port,
                    why,
                });
                return;
            }
            if counted.write_all(&first).await.is_err() {
                return;
            }
            let _ =
                tokio::time::timeout_at(deadline, relay(client.into_inner(), &mut counted)).await;
            if Instant::now() >= deadline {
                counted.cut.store(true, Ordering::Relaxed);
            }
        });
        return Ok(Response::new(Body::empty()));
    }
    Ok(forward(req, counted, state).await)
}

/// What the client sends first through a tunnel, as far as the door looks: one TLS record
/// or HTTP head, within `patience` (a protocol whose server speaks first gets its tunnel
/// after that wait, with nothing looked into).
/// A tunnel's bytes each way until both sides are done (or one fails, or a cap is
/// reached): spliced in the kernel when the client's connection is the plain TCP stream it
/// normally is, copied otherwise.
async fn relay(client: hyper::upgrade::Upgraded, upstream: &mut Counted) {
    let parts = match client.downcast::<TokioIo<HeadTap>>() {
        Ok(parts) => parts,
        Err(client) => {
            let _ = tokio::io::copy_bidirectional_with_sizes(
                &mut TokioIo::new(client),
                upstream,
                TUNNEL_BUFFER,
                TUNNEL_BUFFER,
            )
            .await;
            return;
        }
    };
    // What hyper read past the CONNECT head and the first flight did not take.
    if !parts.read_buf.is_empty() && upstream.write_all(&parts.read_buf).await.is_err() {
        return;
    }
    let mut client = parts.io.into_inner().inner;
    let (Ok(up_pipe), Ok(down_pipe)) = (splice::Pipe::new(), splice::Pipe::new()) else {
        // Out of descriptors for the pipes: the tunnel still works, copied.
        let _ = tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            upstream,
            TUNNEL_BUFFER,
            TUNNEL_BUFFER,
        )
        .await;
        return;
    };
    let upstream = &*upstream;
    let up = splice::one_way(
        &client,
        &upstream.inner,
        &up_pipe,
        || upstream.upload_room(),
        |n| upstream.sent(n as u64),
    );
    let down = splice::one_way(
        &upstream.inner,
        &client,
        &down_pipe,
        || upstream.download_room(),
        |n| upstream.received(n as u64),
    );
    let _ = tokio::try_join!(up, down);
}

async fn first_flight<R: AsyncRead + Unpin>(
    client: &mut R,
    patience: std::time::Duration,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(4096);
    let read = async {
        let mut chunk = [0u8; 4096];
        while !tunnel::complete(&buf) {
            let want = chunk.len().min(tunnel::FIRST_FLIGHT_MAX - buf.len());
            match client.read(&mut chunk[..want]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(patience, read).await;
    buf
}

fn failed(state: &RunState, host: &str, port: u16, why: &str) -> Response<Body> {
    tracing::info!(
        target: "nsbox::egress",
        request_id = state.door.request_id.as_deref(),
        host, port, up = 0u64, down = 0u64, verdict = "failed", why, "egress connection"
    );
    state.door.metrics.count(Verdict::failed);
    text(
        StatusCode::BAD_GATEWAY,
        format!("nsbox egress to {host}:{port} failed: {why}\n"),
    )
}

/// Headers that belong to one hop, not to the request the upstream sees.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
}

/// An absolute-form request, sent in origin form over the connection already made.
async fn forward(
    req: Request<hyper::body::Incoming>,
    upstream: Counted,
    state: Arc<RunState>,
) -> Response<Body> {
    let (host, port) = (upstream.host.clone(), upstream.port);
    let Ok((mut sender, conn)) =
        hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await
    else {
        return failed(&state, &host, port, "the upstream connection failed");
    };
    let deadline = state.deadline;
    state.spawn(async move {
        let _ = tokio::time::timeout_at(deadline, conn).await;
    });
    let (mut parts, body) = req.into_parts();
    let authority = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .parse()
        .unwrap_or_else(|_| hyper::Uri::from_static("/"));
    strip_hop_by_hop(&mut parts.headers);
    if let Ok(v) = HeaderValue::from_str(&authority) {
        parts.headers.insert(HOST, v);
    }
    parts.version = hyper::Version::HTTP_11;
    let upstream_req = Request::from_parts(parts, Body::new(body));
    match sender.send_request(upstream_req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Err(_) => failed(&state, &host, port, "the upstream closed the connection"),
    }
}

/// An upstream connection that counts its bytes against the run's caps, and logs and
/// counts itself when it is dropped.
struct Counted {
    inner: TcpStream,
    state: Arc<RunState>,
    host: String,
    port: u16,
    up: AtomicU64,
    down: AtomicU64,
    cut: Arc<AtomicBool>,
    /// Refused after it was made (what went through the tunnel named another host).
    refused: bool,
}

impl Counted {
    fn new(inner: TcpStream, state: Arc<RunState>, host: String, port: u16) -> Counted {
        Counted {
            inner,
            state,
            host,
            port,
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            cut: Arc::new(AtomicBool::new(false)),
            refused: false,
        }
    }

    fn over(&self, why: &str) -> io::Error {
        self.cut.store(true, Ordering::Relaxed);
        self.state.refuse(&Refusal {
            host: self.host.clone(),
            port: self.port,
            why: why.to_string(),
        });
        io::Error::other(why.to_string())
    }

    /// Bytes the run may still receive; an error (and the connection cut) when none.
    fn download_room(&self) -> io::Result<usize> {
        let cap = self.state.door.policy.limits.max_download_bytes;
        match cap.saturating_sub(self.state.down.load(Ordering::Relaxed)) {
            0 => Err(self.over(&format!(
                "the run's download limit ({} MiB) is reached",
                cap >> 20
            ))),
            room => Ok(usize::try_from(room).unwrap_or(usize::MAX)),
        }
    }

    /// Bytes the run may still send; an error (and the connection cut) when none.
    fn upload_room(&self) -> io::Result<usize> {
        let cap = self.state.door.policy.limits.max_upload_bytes;
        match cap.saturating_sub(self.state.up.load(Ordering::Relaxed)) {
            0 => Err(self.over(&format!(
                "the run's upload limit ({} MiB) is reached",
                cap >> 20
            ))),
            room => Ok(usize::try_from(room).unwrap_or(usize::MAX)),
        }
    }

    fn received(&self, n: u64) {
        self.down.fetch_add(n, Ordering::Relaxed);
        self.state.down.fetch_add(n, Ordering::Relaxed);
    }

    fn sent(&self, n: u64) {
        self.up.fetch_add(n, Ordering::Relaxed);
        self.state.up.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let verdict = if self.refused {
            Verdict::refused
        } else if self.cut.load(Ordering::Relaxed) {
            Verdict::limit
        } else {
            Verdict::ok
        };
        tracing::info!(
            target: "nsbox::egress",
            request_id = self.state.door.request_id.as_deref(),
            host = %self.host,
            port = self.port,
            up = self.up.load(Ordering::Relaxed),
            down = self.down.load(Ordering::Relaxed),
            verdict = ?verdict,
            "egress connection"
        );
        let m = &self.state.door.metrics;
        m.count(verdict);
        m.bytes(Direction::up, self.up.load(Ordering::Relaxed));
        m.bytes(Direction::down, self.down.load(Ordering::Relaxed));
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.download_room() {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.received(n);
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        let room = match self.upload_room() {
            Ok(room) => room,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let take = buf.len().min(room);
        let polled = Pin::new(&mut self.inner).poll_write(cx, &buf[..take]);
        if let Poll::Ready(Ok(n)) = polled {
            self.sent(n as u64);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The most of a request head kept by [`HeadTap`]: hyper refuses longer heads anyway.
const HEAD_MAX: usize = 64 * 1024;

/// A client's connection that keeps the bytes of its (one) request head as they were sent:
/// hyper drops a `Content-Length` that comes with a `Transfer-Encoding` (RFC 9112 6.3), so
/// only the raw head shows the pair.
struct HeadTap {
    inner: TcpStream,
    head: Arc<Mutex<Vec<u8>>>,
    /// The head is whole (or past [`HEAD_MAX`]): nothing more is kept.
    done: bool,
}

impl AsyncRead for HeadTap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !self.done && !new.is_empty() {
            let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
            // From a little before the new bytes: the blank line may straddle two reads.
            let from = head.len().saturating_sub(3);
            let take = new.len().min(HEAD_MAX - head.len());
            head.extend_from_slice(&new[..take]);
            let done = head.len() >= HEAD_MAX || head[from..].windows(4).any(|w| w == b"\r\n\r\n");
            drop(head);
            self.done = done;
        }
        polled
    }
}

impl AsyncWrite for HeadTap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether a raw request head has both a `Transfer-Encoding` and a `Content-Length`.
fn framing_conflict(head: &[u8]) -> bool {
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(head.len());
    let names = head[..end]
        .split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| line.split(|&b| b == b':').next())
        .map(|name| name.trim_ascii());
    let (mut te, mut cl) = (false, false);
    for name in names {
        te |= name.eq_ignore_ascii_case(b"transfer-encoding");
        cl |= name.eq_ignore_ascii_case(b"content-length");
    }
    te && cl
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_with_both_framings_is_seen_whatever_their_order_and_case() {
        let both = b"POST http://a/ HTTP/1.1\r\nHost: a\r\ncontent-length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(framing_conflict(both));
        assert!(framing_conflict(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length : 4\r\n\r\n"
        ));
        assert!(!framing_conflict(
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nTransfer-Encoding: chunked\r\n"
        ));
        assert!(!framing_conflict(
            b"POST / HTTP/1.1\r\nX-Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
    }
}
