//! What runs a [`RunRequest`]: the sandbox's spawner in the server, a fake in tests of the layers above.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::time::Duration;

use crate::sandbox::protocol::{decode_len, encode, ProtocolError};
use crate::sandbox::spawner::Spawner;
use crate::sandbox::warm::Template;
use crate::sandbox::{Report, RunEvent, RunOutcome, RunRequest};

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
}

/// A future a runner returns: boxed, so the service can hold any runner as a trait object.
pub type RunFuture<'a> = Pin<Box<dyn Future<Output = Result<RunOutcome, RunnerError>> + Send + 'a>>;

/// Where a run's output goes as it happens, for callers that stream it.
pub type Events = tokio::sync::mpsc::UnboundedSender<RunEvent>;

/// Runs requests in sandboxes. Dropping a run's future kills the run.
pub trait Runner: Send + Sync {
    /// Runs one request; with `events`, its output is also sent there as it comes (the
    /// request's `stream` is then set).
    fn run(&self, request: RunRequest, events: Option<Events>) -> RunFuture<'_>;
    /// Whether runs can start warm (or the warm path is off): what readiness means.
    fn is_ready(&self) -> bool;
    /// Templates whose zygote is warm.
    fn ready_templates(&self) -> Vec<Template>;
    /// Zygotes replaced and spawners restarted so far, for the metrics.
    fn restarts(&self) -> (u64, u64);
}

/// How long a run waits for a spawner being replaced.
const HANDOFF_PATIENCE: Duration = Duration::from_secs(5);

/// The real runner: each run gets a socket of its own, handed to the spawner, which forks
/// a supervisor that reads the request from it and answers with the outcome.
impl Runner for Spawner {
    fn run(&self, mut request: RunRequest, events: Option<Events>) -> RunFuture<'_> {
        request.stream = events.is_some();
        Box::pin(async move {
            let (mut ours, theirs) = tokio::net::UnixStream::pair().map_err(RunnerError::Socket)?;
            let theirs: OwnedFd = theirs.into_std().map_err(RunnerError::Socket)?.into();
            hand_off(self, &theirs).await?;
            drop(theirs);
            let frame = encode(&request).map_err(RunnerError::Send)?;
            ours.write_all(&frame)
                .await
                .map_err(|e| RunnerError::Send(ProtocolError::Write(e)))?;
            // Every event is read as it comes and queued (the caps bound them), so a slow
            // reader downstream never stalls the supervisor and with it the run.
            loop {
                match read_frame(&mut ours)
                    .await
                    .map_err(RunnerError::SupervisorLost)?
                {
                    Report::Event { event } => {
                        if let Some(events) = &events {
                            let _ = events.send(event);
                        }
                    }
                    Report::Done { outcome } => return Ok(outcome),
                }
            }
        })
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
}

/// While a dead spawner is being replaced (about a second), the run waits for the new one
/// rather than failing.
async fn hand_off(spawner: &Spawner, theirs: &OwnedFd) -> Result<(), RunnerError> {
    let deadline = tokio::time::Instant::now() + HANDOFF_PATIENCE;
    loop {
        match spawner.hand_off(theirs) {
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
