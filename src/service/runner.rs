//! What runs a [`RunRequest`]: the sandbox's spawner in the server, a fake in tests of the layers above.

use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::time::Duration;

use super::events::{EventSender, Overflow};
use crate::sandbox::fdpass;
use crate::sandbox::protocol::{decode_len, encode, ProtocolError};
use crate::sandbox::session::SandboxHandle;
use crate::sandbox::spawner::{PoolStatus, Spawner};
use crate::sandbox::warm::Template;
use crate::sandbox::{Report, RunOutcome, RunRequest, SessionOp};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("handing the run to the spawner: {0}")]
    Handoff(#[source] nix::errno::Errno),
    #[error("creating the run socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("sending the run: {0}")]
    Send(#[source] ProtocolError),
    #[error("the run's supervisor exited without a result: {0}")]
    SupervisorLost(#[source] ProtocolError),
    #[error("this runner has no sessions")]
    NoSessions,
    #[error("{0}")]
    Overflow(#[source] Overflow),
}

/// A future a runner returns: boxed, so the service can hold any runner as a trait object.
pub type RunFuture<'a> = Pin<Box<dyn Future<Output = Result<RunOutcome, RunnerError>> + Send + 'a>>;

/// A run or a session call: its outcome, or `None` when the session ended meanwhile.
pub type CallFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<RunOutcome>, RunnerError>> + Send + 'a>>;

/// A session's start: the connection to its supervisor and the outcome of its set-up.
pub type SessionFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(SessionConn, RunOutcome), RunnerError>> + Send + 'a>>;

/// Where a run's output goes as it happens, for callers that stream it.
pub type Events = EventSender;

/// Runs requests in sandboxes. Dropping a run's future kills the run.
pub trait Runner: Send + Sync {
    /// Runs one request; with `events`, its output is also sent there as it comes (the
    /// request's `stream` is then set).
    fn run(&self, request: RunRequest, events: Option<Events>) -> RunFuture<'_>;
    /// Runs one request with an egress door: its supervisor hands over the listener it made
    /// on the run's loopback, and `door` serves it until the run is over; refusals are
    /// added to the outcome's stderr. A runner without doors runs the request as it is.
    fn run_with_door(
        &self,
        request: RunRequest,
        events: Option<Events>,
        door: crate::egress::Door,
    ) -> RunFuture<'_> {
        drop(door);
        self.run(request, events)
    }
    /// Whether runs can start warm (or the warm path is off): what readiness means.
    fn is_ready(&self) -> bool;
    /// Templates whose zygote is warm.
    fn ready_templates(&self) -> Vec<Template>;
    /// Zygotes replaced and spawners restarted so far, for the metrics.
    fn restarts(&self) -> (u64, u64);
    /// The ready sandboxes (none without a spawner).
    fn pool(&self) -> PoolStatus {
        PoolStatus::default()
    }
    /// Starts a session (the request's `session` is set): a sandbox whose interpreter
    /// stays for [`SessionConn::op`]s until the connection is dropped.
    fn open_session(&self, request: RunRequest) -> SessionFuture<'_> {
        drop(request);
        Box::pin(async { Err(RunnerError::NoSessions) })
    }
    /// Starts a session with an egress door, served for the session's life; each call's
    /// refusals are added to that call's stderr. A runner without doors starts it as it is.
    fn open_session_with_door(
        &self,
        request: RunRequest,
        door: crate::egress::Door,
    ) -> SessionFuture<'_> {
        drop(door);
        self.open_session(request)
    }
}

/// The server's end of a session's supervisor. Dropping it ends the session: the sandbox
/// is killed through its init's pidfd, whatever the supervisor is doing, and the
/// supervisor, finding our end closed, removes its cgroup.
#[derive(Debug)]
pub struct SessionConn {
    stream: tokio::net::UnixStream,
    sandbox: Option<SandboxHandle>,
    /// The session's egress door, served until the session ends.
    door: Option<crate::egress::Serving>,
}

impl Drop for SessionConn {
    fn drop(&mut self) {
        if let Some(sandbox) = &self.sandbox {
            sandbox.kill();
        }
    }
}

impl SessionConn {
    /// One call or file request; with `events`, the output is also sent there as it comes.
    pub async fn op(
        &mut self,
        op: SessionOp,
        events: Option<Events>,
    ) -> Result<RunOutcome, RunnerError> {
        let frame = encode(&op).map_err(RunnerError::Send)?;
        self.stream
            .write_all(&frame)
            .await
            .map_err(|e| RunnerError::Send(ProtocolError::Write(e)))?;
        let mut outcome = read_reports(&mut self.stream, events.as_ref()).await?;
        if let Some(door) = &self.door {
            outcome.stderr.push_str(&door.take_refusal_lines());
        }
        Ok(outcome)
    }

    /// Whether the supervisor went away (or said something unasked) while the session was
    /// idle: its end is then readable.
    pub fn is_lost(&self) -> bool {
        let mut byte = [0u8; 1];
        !matches!(
            self.stream.try_read(&mut byte),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }
}

/// How long a run waits for a spawner being replaced.
const HANDOFF_PATIENCE: Duration = Duration::from_secs(5);

/// The real runner: each run gets a socket of its own, handed to the spawner, which forks
/// a supervisor that reads the request from it and answers with the outcome.
impl Runner for Spawner {
    fn run(&self, mut request: RunRequest, events: Option<Events>) -> RunFuture<'_> {
        request.stream = events.is_some();
        Box::pin(async move {
            let mut ours = supervise(self, &request).await?;
            read_reports(&mut ours, events.as_ref()).await
        })
    }

    fn run_with_door(
        &self,
        mut request: RunRequest,
        events: Option<Events>,
        door: crate::egress::Door,
    ) -> RunFuture<'_> {
        request.stream = events.is_some();
        request.egress_port = Some(crate::egress::PROXY_PORT);
        request.egress_ca = door.policy.ca.as_deref().map(str::to_string);
        Box::pin(async move {
            let mut ours = supervise(self, &request).await?;
            let serving = open_door(&ours, door).await?;
            let mut outcome = read_reports(&mut ours, events.as_ref()).await?;
            if let Some(serving) = serving {
                outcome.stderr.push_str(&serving.take_refusal_lines());
            }
            Ok(outcome)
        })
    }

    fn open_session(&self, request: RunRequest) -> SessionFuture<'_> {
        open_session(self, request, None)
    }

    fn open_session_with_door(
        &self,
        request: RunRequest,
        door: crate::egress::Door,
    ) -> SessionFuture<'_> {
        open_session(self, request, Some(door))
    }

    fn is_ready(&self) -> bool {
        Spawner::is_ready(self)
    }

    fn ready_templates(&self) -> Vec<Template> {
        Spawner::ready_templates(self)
    }

    fn restarts(&self) -> (u64, u64) {
        Spawner::restarts(self)
    }

    fn pool(&self) -> PoolStatus {
        Spawner::pool(self)
    }
}

/// A session's sandbox: its supervisor, its egress door's listener when it has one (sent
/// before anything else), the handle of its init, and the report that its interpreter is
/// ready.
fn open_session(
    spawner: &Spawner,
    mut request: RunRequest,
    door: Option<crate::egress::Door>,
) -> SessionFuture<'_> {
    request.session = true;
    if let Some(door) = &door {
        request.egress_port = Some(crate::egress::PROXY_PORT);
        request.egress_ca = door.policy.ca.as_deref().map(str::to_string);
    }
    Box::pin(async move {
        let mut stream = supervise(spawner, &request).await?;
        let door = match door {
            Some(door) => open_door(&stream, door).await?,
            None => None,
        };
        let sandbox = receive_handle(&stream).await?;
        let outcome = read_reports(&mut stream, None).await?;
        Ok((
            SessionConn {
                stream,
                sandbox,
                door,
            },
            outcome,
        ))
    })
}

/// A supervisor of its own for `request`: its socket, with the request sent.
async fn supervise(
    spawner: &Spawner,
    request: &RunRequest,
) -> Result<tokio::net::UnixStream, RunnerError> {
    let (mut ours, theirs) = tokio::net::UnixStream::pair().map_err(RunnerError::Socket)?;
    let theirs: OwnedFd = theirs.into_std().map_err(RunnerError::Socket)?.into();
    hand_off(spawner, &theirs, spawner.pool_key(request)).await?;
    drop(theirs);
    let frame = encode(request).map_err(RunnerError::Send)?;
    ours.write_all(&frame)
        .await
        .map_err(|e| RunnerError::Send(ProtocolError::Write(e)))?;
    Ok(ours)
}

/// Reads a supervisor's reports until the outcome. Every event is read as it comes and
/// queued (the caps bound them), so a slow reader downstream never stalls the supervisor
/// and with it the run.
async fn read_reports(
    stream: &mut tokio::net::UnixStream,
    events: Option<&Events>,
) -> Result<RunOutcome, RunnerError> {
    loop {
        match read_frame(stream)
            .await
            .map_err(RunnerError::SupervisorLost)?
        {
            Report::Event { event } => {
                if let Some(events) = events {
                    // A reader past the queue's bounds: dropping the stream (our caller's
                    // future ends with this error) stops the run.
                    events.send(event).map_err(RunnerError::Overflow)?;
                }
            }
            Report::Done { outcome } => return Ok(*outcome),
        }
    }
}

/// The session's sandbox handle, which its supervisor sends ahead of the ready report.
async fn receive_handle(
    stream: &tokio::net::UnixStream,
) -> Result<Option<SandboxHandle>, RunnerError> {
    let lost = |e: std::io::Error| RunnerError::SupervisorLost(ProtocolError::Read(e));
    loop {
        stream.readable().await.map_err(lost)?;
        match stream.try_io(tokio::io::Interest::READABLE, || {
            SandboxHandle::receive(stream.as_raw_fd()).map_err(std::io::Error::from)
        }) {
            Ok(handle) => return Ok(handle),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(lost(e)),
        }
    }
}

/// Serves the listener a supervisor sends for a run or session with a door; `None` when
/// its set-up failed before the listener existed (its report says why).
async fn open_door(
    stream: &tokio::net::UnixStream,
    door: crate::egress::Door,
) -> Result<Option<crate::egress::Serving>, RunnerError> {
    match receive_fd(stream).await? {
        Some(fd) => door
            .open(std::net::TcpListener::from(fd))
            .map(Some)
            .map_err(|e| RunnerError::SupervisorLost(ProtocolError::Read(e))),
        None => Ok(None),
    }
}

/// The one descriptor a supervisor sends ahead of its reports (a door's listener); `None`
/// when its set-up failed before there was one.
async fn receive_fd(stream: &tokio::net::UnixStream) -> Result<Option<OwnedFd>, RunnerError> {
    let lost = |e: std::io::Error| RunnerError::SupervisorLost(ProtocolError::Read(e));
    loop {
        stream.readable().await.map_err(lost)?;
        match stream.try_io(tokio::io::Interest::READABLE, || {
            let mut byte = [0u8; 1];
            let got =
                fdpass::recv::<1>(stream.as_raw_fd(), &mut byte).map_err(std::io::Error::from)?;
            if got.len == 0 {
                return Err(std::io::Error::from(nix::errno::Errno::ECONNRESET));
            }
            Ok(got.fds.into_iter().next())
        }) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(lost(e)),
        }
    }
}

/// While a dead spawner is being replaced (about a second), the run waits for the new one
/// rather than failing.
async fn hand_off(spawner: &Spawner, theirs: &OwnedFd, key: u8) -> Result<(), RunnerError> {
    let deadline = tokio::time::Instant::now() + HANDOFF_PATIENCE;
    loop {
        match spawner.hand_off(theirs, key) {
            Ok(()) => return Ok(()),
            Err(errno) if tokio::time::Instant::now() >= deadline => {
                return Err(RunnerError::Handoff(errno))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn read_frame(stream: &mut tokio::net::UnixStream) -> Result<Report, ProtocolError> {
    let mut header = [0u8; 4];
    stream
        .read_exact(&mut header)
        .await
        .map_err(ProtocolError::Read)?;
    let mut body = vec![0u8; decode_len(header)?];
    stream
        .read_exact(&mut body)
        .await
        .map_err(ProtocolError::Read)?;
    serde_json::from_slice(&body).map_err(ProtocolError::Decode)
}
