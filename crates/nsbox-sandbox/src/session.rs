//! A session: one sandbox whose interpreter stays between calls. Its supervisor relays each call (code, or a file request) from the server to the harness and reports it as a run's outcome.
//!
//! ```text
//! server --SessionOp frames--> supervisor --fd 3 (SOCK_SEQPACKET): op + bundle, stdout,
//!                                            stderr and plots pipes--> harness (session loop)
//!        <--Report frames----             <--{"exit_code": n} or {"error": ...}---
//! ```
//! The sandbox is built exactly as a run's (warm or cold, same steps, cgroup, limits); only
//! fd 3 is a socket instead of the code, which is how the harness knows it is a session.
//! A call's timeout interrupts the code (SIGINT to the run's process group, as Ctrl-C); an
//! interpreter that does not come back within [`INTERRUPT_GRACE`] is killed, and with it
//! the session. The server's end closing ends the session at once.
//!
//! Everything the harness sends is the code's to forge (they share one process), so the
//! supervisor trusts none of it beyond the call it answers: each call carries a fresh random
//! token that its answer must echo, sends to the harness wait no longer than the call's
//! deadline, frames are decoded under the call's caps, and the server holds a pidfd of the
//! sandbox's init ([`SandboxHandle`]) so that ending a session kills the sandbox whatever
//! its supervisor is doing.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};

use super::capture::{decode_frames, frames_cap, text, Capture, FrameCaps, Streamed};
use super::cgroup::RunCgroup;
use super::child::{reported_failure, reported_python_status, RECORD_LEN};
use super::config::SpawnerConfig;
use super::door;
use super::failure::{Failure, Step};
use super::fdpass;
use super::protocol::{read_frame, write_frame, ProtocolError};
use super::run::{FileCaps, Limits, Report, RunOutcome, RunRequest, SessionOp, Termination};
use super::sandbox::{
    pipe, release, start_with_socket, Bundle, Outputs, Phases, Ready, Sandbox, WarmControls,
};
use super::seccomp::SeccompProgram;
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("writing to the server: {0}")]
    Reply(#[source] ProtocolError),
}

/// How long an interrupted call's interpreter has to come back before the session ends.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(1);

/// How long a new session's interpreter has to say it is ready (a cold start included).
const READY_PATIENCE: Duration = Duration::from_secs(30);

/// How long a file request may take; past it the session is broken and ended.
const FILE_OP_PATIENCE: Duration = Duration::from_secs(10);

/// After the harness answered, how long its output pipes may stay open (held by a process
/// the code left running) before the call's output is taken as complete.
const OUTPUT_GRACE: Duration = Duration::from_millis(50);

/// Largest answer the harness sends on the control socket.
const REPLY_MAX: usize = 4096;

/// The one byte that carries the init's pidfd to the server, ahead of the ready report.
const HANDLE_MESSAGE: &[u8] = b"k";

/// The server's hold on a session's sandbox: a pidfd of its init, which stays valid (and
/// names that process only) until dropped. Killing the init ends every process of the
/// sandbox's PID namespace, whatever the session's supervisor is doing meanwhile.
#[derive(Debug)]
pub struct SandboxHandle(OwnedFd);

impl SandboxHandle {
    /// Reads the handle a session's supervisor sends ahead of its ready report from `sock`
    /// (non-blocking: EAGAIN until it has arrived); `None` when the set-up failed.
    pub fn receive(sock: RawFd) -> Result<Option<SandboxHandle>, Errno> {
        let mut byte = [0u8; 1];
        let got = fdpass::recv::<1>(sock, &mut byte)?;
        if got.len == 0 {
            return Err(Errno::ECONNRESET);
        }
        Ok(got.fds.into_iter().next().map(SandboxHandle))
    }

    /// Kills the sandbox's init (and with it its PID namespace); a no-op once it is gone.
    pub fn kill(&self) {
        let _ = sys::pidfd_kill(&self.0);
    }
}

/// The session's sandbox, as its supervisor holds it.
struct Live {
    sandbox: Sandbox,
    cgroup: Option<Box<dyn RunCgroup>>,
    /// The supervisor's end of the harness's fd 3.
    control: OwnedFd,
    /// Init's report pipe: set-up failures, then Python's status when it ends.
    reports: Capture,
    warm: bool,
    /// The session's limits, which its file requests are held to as its calls are.
    limits: Limits,
    /// The egress proxy's URL when the session has a door: every call's bundle carries it.
    proxy: Option<String>,
    /// And the certificates its calls trust beside the tree's.
    ca: Option<String>,
}

impl Live {
    /// Kills the session's processes and removes its cgroup.
    fn end(self) {
        self.sandbox.kill();
        self.sandbox.wait();
        if let Some(cg) = self.cgroup {
            if let Err(e) = cg.remove() {
                tracing::error!(error = %e, "removing a session's cgroup");
            }
        }
    }

    fn memory(&self) -> Option<u64> {
        self.cgroup.as_ref().and_then(|cg| cg.memory_current())
    }
}

/// Serves one session on `stream`, from its start (the request already read) until the
/// server closes it or the session ends.
pub fn serve(
    stream: UnixStream,
    request: RunRequest,
    config: &SpawnerConfig,
    seccomp: &SeccompProgram,
    warm: &WarmControls,
) -> Result<(), SessionError> {
    let began = Instant::now();
    let opened = open(&request, config, seccomp, warm);
    serve_opened(stream, request, began, opened)
}

/// Serves one session in a ready sandbox from the pool (the request already read).
pub(crate) fn serve_ready(
    stream: UnixStream,
    request: RunRequest,
    ready: Ready,
) -> Result<(), SessionError> {
    let began = Instant::now();
    let opened = claim(&request, ready);
    serve_opened(stream, request, began, opened)
}

fn serve_opened(
    mut stream: UnixStream,
    request: RunRequest,
    began: Instant,
    opened: Result<Live, (Failure, String)>,
) -> Result<(), SessionError> {
    // A session with a door gets its listener once its interpreter is ready and before
    // any call (no code of the caller's has run yet), and keeps it for its life.
    let opened = match opened {
        Ok(live) => match door::open_door(&request, &live.sandbox, &stream) {
            Ok(()) => Ok(live),
            Err(failure) => {
                tracing::error!(step = %failure.step, errno = %failure.errno, "egress door");
                live.end();
                Err((failure, String::new()))
            }
        },
        Err(failed) => {
            door::no_door(&request, &stream);
            Err(failed)
        }
    };
    let (live, ready) = match opened {
        Ok(live) => {
            let outcome = outcome(
                Termination::Exited { code: 0 },
                live.warm,
                began,
                live.memory(),
            );
            (Some(live), outcome)
        }
        Err((failure, stderr)) => {
            let mut outcome = outcome(
                Termination::SetupFailed {
                    step: failure.step.name().to_string(),
                    errno: failure.errno as i32,
                },
                false,
                began,
                None,
            );
            outcome.stderr = stderr;
            (None, outcome)
        }
    };
    // The server's way to end the sandbox whatever this process is doing: a pidfd of the
    // init, sent ahead of the ready report (none when the set-up failed).
    let handle = live.as_ref().and_then(|l| l.sandbox.pidfd().ok());
    let handed = fdpass::send(
        stream.as_raw_fd(),
        HANDLE_MESSAGE,
        &handle.iter().map(|fd| fd.as_raw_fd()).collect::<Vec<_>>(),
    );
    drop(handle);
    if let Err(errno) = handed {
        if let Some(live) = live {
            live.end();
        }
        return Err(SessionError::Reply(ProtocolError::Write(errno.into())));
    }
    write_frame(
        &mut stream,
        &Report::Done {
            outcome: Box::new(ready),
        },
    )
    .map_err(SessionError::Reply)?;
    let Some(mut live) = live else { return Ok(()) };
    tracing::debug!(ms = began.elapsed().as_millis() as u64, "session ready");
    loop {
        let op = match next_op(&stream, &mut live) {
            Next::Op(op) => *op,
            Next::Closed => {
                tracing::debug!("session closed by the server");
                live.end();
                return Ok(());
            }
            Next::Lost(reason) => {
                tracing::info!(%reason, "session lost while idle");
                live.end();
                return Ok(());
            }
        };
        let request_id = match &op {
            SessionOp::Run { request } => request.request_id.clone(),
            SessionOp::ListFiles { request_id }
            | SessionOp::ReadFile { request_id, .. }
            | SessionOp::WriteFile { request_id, .. } => request_id.clone(),
        };
        let request_id = request_id.as_deref().map(tracing::field::display);
        let span = tracing::info_span!("run", request_id).entered();
        let mut outcome = call(&mut live, &op, &stream);
        outcome.memory_bytes = live.memory();
        let ended = outcome.session_ended.clone();
        let written = write_frame(
            &mut stream,
            &Report::Done {
                outcome: Box::new(outcome),
            },
        );
        drop(span);
        if let Some(reason) = ended {
            tracing::info!(%reason, "session ended by a call");
            live.end();
            return Ok(());
        }
        if let Err(e) = written {
            live.end();
            return match e {
                ProtocolError::Write(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                e => Err(SessionError::Reply(e)),
            };
        }
    }
}

fn outcome(
    termination: Termination,
    warm: bool,
    began: Instant,
    memory_bytes: Option<u64>,
) -> RunOutcome {
    RunOutcome {
        termination,
        stdout: String::new(),
        stderr: String::new(),
        plots: Vec::new(),
        cut_short: Vec::new(),
        wall_ms: began.elapsed().as_millis() as u64,
        peak_memory_bytes: None,
        warm,
        files: Vec::new(),
        skipped_files: Vec::new(),
        memory_bytes,
        session_ended: None,
        results: Vec::new(),
        error: None,
    }
}

/// Builds the session's sandbox as a run's, with a socket on fd 3, and waits for the
/// harness to say it is ready. On failure, returns what failed and what Python said.
fn open(
    request: &RunRequest,
    config: &SpawnerConfig,
    seccomp: &SeccompProgram,
    warm: &WarmControls,
) -> Result<Live, (Failure, String)> {
    let (sandbox, reads, control) =
        start_with_socket(request, config, seccomp, warm).map_err(|f| (f, String::new()))?;
    // A session's set-up is not a run's: its phases are not logged.
    let mut phases = Phases::new();
    let cgroup = release(
        &sandbox,
        reads.release,
        config,
        &request.limits,
        &mut phases,
    )
    .map_err(|f| (f, String::new()))?;
    begin(
        request,
        sandbox,
        cgroup,
        control,
        reads.outputs,
        br#"{"mode":"session"}"#,
    )
}

/// Makes a ready sandbox (the pool's) this session's: the session's own limits applied,
/// then the harness told, as [`open`] tells a sandbox it built.
fn claim(request: &RunRequest, ready: Ready) -> Result<Live, (Failure, String)> {
    let message = ready.claim_message("session", &request.limits);
    let Ready {
        sandbox,
        outputs,
        cgroup,
        control,
        limits: _,
    } = ready;
    begin(request, sandbox, cgroup, control, outputs, &message)
}

/// The session's sandbox, built here or claimed from the pool, as one `Live`: tells the
/// harness it serves a session and waits for it to say it is ready (it says it is waiting
/// first, which a sandbox from the pool already said).
fn begin(
    request: &RunRequest,
    sandbox: Sandbox,
    cgroup: Option<Box<dyn RunCgroup>>,
    control: OwnedFd,
    outputs: Outputs,
    message: &[u8],
) -> Result<Live, (Failure, String)> {
    let mut live = Live {
        warm: matches!(sandbox, Sandbox::Warm { .. }),
        sandbox,
        cgroup,
        control,
        reports: Capture::new(outputs.report, RECORD_LEN * 4),
        limits: request.limits.clone(),
        proxy: door::proxy_url(request),
        ca: door::extra_ca(request),
    };
    // Until the harness is ready its stderr says why it is not; after, it is /dev/null.
    let mut err = Capture::new(outputs.stderr, 64 * 1024);
    drop(outputs.stdout);
    drop(outputs.plots);
    let deadline = Instant::now() + READY_PATIENCE;
    let failed = |live: Live, err: &Capture, step: Step| {
        let stderr = text(err, "stderr");
        let reported = failure_record(&live.reports);
        live.end();
        Err((
            reported.unwrap_or(Failure {
                step,
                errno: Errno::EIO,
            }),
            stderr,
        ))
    };
    if fdpass::send(live.control.as_raw_fd(), message, &[]).is_err() {
        return failed(live, &err, Step::StartPython);
    }
    loop {
        let now = Instant::now();
        if now >= deadline {
            return failed(live, &err, Step::StartPython);
        }
        let mut fds = vec![PollFd::new(live.control.as_fd(), PollFlags::POLLIN)];
        if let Some(fd) = &err.fd {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, timeout_until(deadline));
        let ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        drop(fds);
        err.drain();
        live.reports.drain();
        if ready {
            match reply(&live.control) {
                Some(r) if r.get("ready").is_some() => return Ok(live),
                Some(r) if r.get("waiting").is_some() => continue,
                _ => return failed(live, &err, Step::StartPython),
            }
        }
    }
}

/// A set-up failure init or Python reported, if any.
fn failure_record(reports: &Capture) -> Option<Failure> {
    reported_failure(&reports.data).map(|(step, errno)| Failure {
        step: Step::from_code(step).unwrap_or(Step::StartPython),
        errno: Errno::from_raw(errno),
    })
}

fn timeout_until(deadline: Instant) -> PollTimeout {
    let ms = deadline
        .saturating_duration_since(Instant::now())
        .as_millis()
        .clamp(1, 60_000) as u16;
    PollTimeout::from(ms)
}

/// One message of the harness on the control socket; `None` when it is gone or garbled.
fn reply(control: &OwnedFd) -> Option<serde_json::Value> {
    let mut buf = vec![0u8; REPLY_MAX];
    let got = fdpass::recv::<1>(control.as_raw_fd(), &mut buf).ok()?;
    if got.len == 0 {
        return None;
    }
    serde_json::from_slice(&buf[..got.len]).ok()
}

/// What the harness said during a call.
enum Answer {
    /// The answer to this call.
    Ours(serde_json::Value),
    /// Something else: an answer to another call, or a message the code forged; dropped.
    Stray,
    /// The harness is gone.
    Gone,
}

/// Reads one message of the harness and keeps it only if it answers the call `token`.
fn answer_to(control: &OwnedFd, token: &str) -> Answer {
    let mut buf = vec![0u8; REPLY_MAX];
    match fdpass::recv::<1>(control.as_raw_fd(), &mut buf) {
        Ok(got) if got.len == 0 => Answer::Gone,
        Ok(got) => match serde_json::from_slice::<serde_json::Value>(&buf[..got.len]) {
            Ok(v) if v.get("call").and_then(|c| c.as_str()) == Some(token) => Answer::Ours(v),
            _ => Answer::Stray,
        },
        Err(Errno::EAGAIN | Errno::EINTR) => Answer::Stray,
        Err(_) => Answer::Gone,
    }
}

/// A fresh call token: 128 bits from the kernel's random source, in hex. The code learns a
/// call's token only once that call has reached the harness, so nothing it sends earlier
/// can pass for a later call's answer.
fn call_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Hands the harness a call, waiting for room on its socket until `deadline` at most: code
/// that keeps fd 3 and never reads it would otherwise block this process for good. Gives
/// up at once when the server closes the session.
fn send_call(
    control: &OwnedFd,
    server: &UnixStream,
    head: &[u8],
    fds: &[RawFd],
    deadline: Instant,
) -> Result<(), &'static str> {
    loop {
        match fdpass::try_send(control.as_raw_fd(), head, fds) {
            Ok(()) => return Ok(()),
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(_) => return Err("the interpreter exited"),
        }
        if Instant::now() >= deadline {
            return Err("the interpreter did not take the call in time");
        }
        let mut fds = [
            PollFd::new(control.as_fd(), PollFlags::POLLOUT),
            PollFd::new(server.as_fd(), PollFlags::POLLIN),
        ];
        let _ = poll(&mut fds, timeout_until(deadline));
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return Err("closed");
        }
    }
}

enum Next {
    Op(Box<SessionOp>),
    /// The server closed its end: DELETE, expiry, shutdown.
    Closed,
    /// The interpreter went away between calls.
    Lost(String),
}

/// Waits, idle, for the server's next request, watching the interpreter meanwhile.
fn next_op(stream: &UnixStream, live: &mut Live) -> Next {
    loop {
        let mut fds = [
            PollFd::new(stream.as_fd(), PollFlags::POLLIN),
            PollFd::new(live.control.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Next::Lost(format!("waiting for a call: {e}")),
        }
        let server = fds[0].revents().is_some_and(|r| !r.is_empty());
        let harness = fds[1].revents().is_some_and(|r| !r.is_empty());
        if harness {
            // The harness says nothing between calls: readable means it is gone.
            return Next::Lost("the interpreter exited".into());
        }
        if server {
            return match read_frame::<SessionOp>(&mut &*stream) {
                Ok(op) => Next::Op(Box::new(op)),
                Err(_) => Next::Closed,
            };
        }
    }
}

/// What the harness is asked for one op.
struct Message<'a> {
    name: &'static str,
    bundle: Bundle<'a>,
    /// How long the op may take.
    patience: Duration,
    /// The file caps the op's frames are sized for (the plots pipe's byte cap).
    files: Option<FileCaps>,
    /// What the op's frames may carry.
    frames: FrameCaps,
    /// The limits the op's output is captured under.
    limits: &'a Limits,
}

fn message<'a>(op: &'a SessionOp, session: &'a Limits) -> Message<'a> {
    let empty = Bundle {
        code: "",
        files: &[],
        collect_files: None,
        max_plots: 0,
        path: None,
        caps: None,
        results: None,
        proxy: None,
        ca: None,
    };
    let no_frames = FrameCaps {
        max_plots: 0,
        plot_bytes: 0,
        files: None,
        results: None,
    };
    let file_op = |name, bundle, files, frames| Message {
        name,
        bundle,
        patience: FILE_OP_PATIENCE,
        files,
        frames,
        limits: session,
    };
    match op {
        SessionOp::Run { request } => Message {
            name: "run",
            bundle: Bundle::of(request),
            patience: Duration::from_millis(request.limits.timeout_ms),
            files: request.collect_files,
            frames: FrameCaps::of(&request.limits, request.collect_files, request.results),
            limits: &request.limits,
        },
        SessionOp::ListFiles { .. } => file_op("list", empty, None, FrameCaps::listing()),
        SessionOp::ReadFile { path, caps, .. } => file_op(
            "read",
            Bundle {
                path: Some(path),
                caps: Some(*caps),
                ..empty
            },
            Some(*caps),
            FrameCaps {
                files: Some(*caps),
                ..no_frames
            },
        ),
        // The harness names the written file with its size, as a listing does.
        SessionOp::WriteFile { file, .. } => file_op(
            "put",
            Bundle {
                files: std::slice::from_ref(file),
                ..empty
            },
            None,
            FrameCaps::listing(),
        ),
    }
}

/// One call: hands the harness its bundle and fresh pipes, collects the output until it
/// answers, interrupting it at the timeout and ending the session if it does not come back.
fn call(live: &mut Live, op: &SessionOp, server: &UnixStream) -> RunOutcome {
    let began = Instant::now();
    let session_limits = live.limits.clone();
    let Message {
        name,
        bundle,
        patience,
        files: caps,
        frames: frame_caps,
        limits,
    } = message(op, &session_limits);
    let bundle = Bundle {
        proxy: live.proxy.clone(),
        ca: live.ca.clone(),
        ..bundle
    };
    let stream = matches!(op, SessionOp::Run { request } if request.stream);
    // The deadline starts before the call is handed over: handing it over is part of it.
    let deadline = began + patience;
    let broken = |live: &Live, reason: &str| {
        let mut o = outcome(
            Termination::SetupFailed {
                step: Step::StoreCode.name().into(),
                errno: Errno::EIO as i32,
            },
            live.warm,
            began,
            None,
        );
        o.session_ended = Some(reason.to_string());
        o
    };
    let (Ok(code), Ok(out), Ok(err), Ok(figs), Ok(token)) =
        (bundle.store(), pipe(), pipe(), pipe(), call_token())
    else {
        return broken(live, "the call could not be prepared");
    };
    let head = serde_json::json!({ "op": name, "call": token }).to_string();
    let fds = [
        code.as_raw_fd(),
        out.write.as_raw_fd(),
        err.write.as_raw_fd(),
        figs.write.as_raw_fd(),
    ];
    if let Err(reason) = send_call(&live.control, server, head.as_bytes(), &fds, deadline) {
        live.sandbox.kill();
        return broken(live, reason);
    }
    drop((code, out.write, err.write, figs.write));

    let mut out = Capture::new(out.read, limits.output_bytes);
    let mut err = Capture::new(err.read, limits.output_bytes);
    let mut figs = Capture::new(figs.read, frames_cap(limits, caps, frame_caps.results));
    let mut interrupted: Option<Instant> = None;
    let mut answer: Option<Option<serde_json::Value>> = None;
    let mut answered_at = began;
    let mut ended: Option<String> = None;
    let mut streamed = stream.then(|| Streamed::new(frame_caps));
    loop {
        let now = Instant::now();
        if answer.is_some() {
            let open = [&out.fd, &err.fd, &figs.fd].iter().any(|f| f.is_some());
            if !open || now >= answered_at + OUTPUT_GRACE {
                break;
            }
        } else if let Some(at) = interrupted {
            if now >= at + INTERRUPT_GRACE {
                live.sandbox.kill();
                ended = Some(format!(
                    "the code did not stop within {} s of the interrupt at its timeout",
                    INTERRUPT_GRACE.as_secs()
                ));
                break;
            }
        } else if now >= deadline {
            if name != "run" {
                live.sandbox.kill();
                ended = Some("a file request did not finish".into());
                break;
            }
            // Init ignores SIGINT (a namespace's init without a handler); Python and
            // whatever the code started get it, as from a terminal's Ctrl-C.
            let _ = killpg(live.sandbox.pid(), Signal::SIGINT);
            interrupted = Some(now);
            continue;
        }
        let wake = match (answer.is_some(), interrupted) {
            (true, _) => answered_at + OUTPUT_GRACE,
            (false, Some(at)) => at + INTERRUPT_GRACE,
            (false, None) => deadline,
        };
        let mut fds: Vec<PollFd> = [&out.fd, &err.fd, &figs.fd]
            .into_iter()
            .flatten()
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        let fixed = fds.len();
        fds.push(PollFd::new(server.as_fd(), PollFlags::POLLIN));
        if answer.is_none() {
            fds.push(PollFd::new(live.control.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout_until(wake)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break,
        }
        let server_gone = fds[fixed].revents().is_some_and(|r| !r.is_empty());
        let harness = answer.is_none() && fds[fixed + 1].revents().is_some_and(|r| !r.is_empty());
        drop(fds);
        for capture in [&mut out, &mut err, &mut figs] {
            capture.drain();
        }
        if let Some(s) = &mut streamed {
            for event in s.events(&out, &err, &figs, false) {
                let _ = write_frame(&mut &*server, &Report::Event { event });
            }
        }
        if server_gone {
            // The server sends nothing during a call: readable means it closed the session.
            live.sandbox.kill();
            ended = Some("closed".into());
            break;
        }
        if harness {
            match answer_to(&live.control, &token) {
                Answer::Ours(got) => {
                    answered_at = Instant::now();
                    answer = Some(Some(got));
                }
                Answer::Stray => {}
                Answer::Gone => {
                    answered_at = Instant::now();
                    ended = Some("the interpreter exited".into());
                    answer = Some(None);
                }
            }
        }
    }
    if let Some(s) = &mut streamed {
        for event in s.events(&out, &err, &figs, true) {
            let _ = write_frame(&mut &*server, &Report::Event { event });
        }
    }
    let answer = answer.flatten();
    let termination = match (&answer, interrupted, &ended) {
        (Some(a), None, None) => match a.get("error").and_then(|e| e.as_str()) {
            Some(error) => {
                err.data.extend_from_slice(error.as_bytes());
                Termination::Exited { code: 1 }
            }
            None => Termination::Exited {
                code: a.get("exit_code").and_then(|c| c.as_i64()).unwrap_or(1) as i32,
            },
        },
        (_, Some(_), _) => Termination::TimedOut,
        _ => ending_of_lost(live),
    };
    if ended.as_deref() == Some("the interpreter exited") {
        ended = Some(lost_reason(&termination));
    }
    let frames = decode_frames(&figs.data, figs.dropped > 0, frame_caps);
    RunOutcome {
        termination,
        stdout: text(&out, "stdout"),
        stderr: text(&err, "stderr"),
        plots: frames.plots,
        cut_short: Vec::new(),
        wall_ms: began.elapsed().as_millis() as u64,
        peak_memory_bytes: live.cgroup.as_ref().and_then(|cg| cg.peak_memory()),
        warm: live.warm,
        files: frames.files,
        skipped_files: frames.skipped,
        memory_bytes: None,
        session_ended: ended,
        results: frames.results,
        error: frames.error,
    }
}

/// How a call ended whose interpreter went away: out of memory, or Python's own status.
fn ending_of_lost(live: &mut Live) -> Termination {
    if live.cgroup.as_ref().is_some_and(|cg| cg.oom_killed()) {
        return Termination::OutOfMemory;
    }
    // Init reports Python's status as it reaps it; give it a moment.
    let until = Instant::now() + Duration::from_millis(500);
    while reported_python_status(&live.reports.data).is_none()
        && Instant::now() < until
        && live.reports.fd.is_some()
    {
        let mut fds = [PollFd::new(
            live.reports.fd.as_ref().expect("checked open").as_fd(),
            PollFlags::POLLIN,
        )];
        let _ = poll(&mut fds, timeout_until(until));
        live.reports.drain();
    }
    match reported_python_status(&live.reports.data) {
        Some(status) if status & 0x7f == 0 => Termination::Exited {
            code: (status >> 8) & 0xff,
        },
        Some(status) => Termination::Signaled {
            signal: status & 0x7f,
        },
        None => Termination::Signaled {
            signal: Signal::SIGKILL as i32,
        },
    }
}

/// Why the session ended, in words, when its interpreter went away during a call.
fn lost_reason(termination: &Termination) -> String {
    match termination {
        Termination::OutOfMemory => "the memory limit was reached".into(),
        Termination::Exited { code } => format!("the interpreter exited with status {code}"),
        Termination::Signaled { signal } => format!(
            "the interpreter was killed by {}",
            Signal::try_from(*signal)
                .map_or_else(|_| format!("signal {signal}"), |s| s.to_string())
        ),
        _ => "the interpreter exited".into(),
    }
}
