//! One run from start to cleanup: start its sandbox and release it into its cgroup (`sandbox`), collect its output under the timeout, classify and report it, and kill and remove everything it started.
//!
//! A supervisor is a single-threaded process forked by the spawner for exactly one run; it
//! talks to the server over its own unix socket and exits when the run is reported.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::capture::{
    decode_frames, frames_cap, harness_exit, human_bytes, text, Capture, FrameCaps, Streamed,
};
use super::cgroup::RunCgroup;
use super::child::{self, RECORD_LEN};
use super::config::SpawnerConfig;
use super::door;
use super::failure::{step, Failure, Step};
use super::fdpass;
use super::protocol::{write_frame, ProtocolError};
use super::run::{Cut, Limits, Report, RunOutcome, RunRequest, Termination};
use super::sandbox::{
    abort, release, start, Bundle, Outputs, Phases, Ready, Sandbox, WarmControls,
};
use super::seccomp::SeccompProgram;
use crate::sys;

/// How long to wait for the pipes to close after the run was killed; only a process that
/// escaped the PID namespace could hold them longer, and none can.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("writing the run outcome: {0}")]
    Reply(#[source] super::protocol::ProtocolError),
}

/// Serves one run (`request`, read from `stream`) and returns when its outcome has been
/// written.
pub fn serve(
    stream: UnixStream,
    request: RunRequest,
    config: &SpawnerConfig,
    seccomp: &SeccompProgram,
    warm: &WarmControls,
) -> Result<(), SupervisorError> {
    let mut phases = Phases::new();
    let (outcome, rest) = execute(&request, config, seccomp, warm, &stream, &mut phases);
    reply(stream, outcome, rest, phases)
}

/// Serves one run in a ready sandbox from the pool (the request already read): its
/// limits applied, its bundle handed over, and from there on exactly as [`serve`].
pub(crate) fn serve_ready(
    stream: UnixStream,
    request: RunRequest,
    ready: Ready,
) -> Result<(), SupervisorError> {
    let mut phases = Phases::new();
    let (outcome, rest) = execute_ready(&request, ready, &stream, &mut phases);
    reply(stream, outcome, rest, phases)
}

/// Writes the outcome, then tears down what is left of the run.
fn reply(
    mut stream: UnixStream,
    outcome: RunOutcome,
    rest: Option<Leftover>,
    mut phases: Phases,
) -> Result<(), SupervisorError> {
    let warm_run = outcome.warm;
    let written = write_frame(
        &mut stream,
        &Report::Done {
            outcome: Box::new(outcome),
        },
    );
    let _ = stream.flush();
    phases.reply_us = phases.lap();
    phases.total_us = phases.began.elapsed().as_micros() as u64;
    // The outcome is out; what is left of the run is waited for and removed now, before
    // this process exits (its pid names the run's cgroup, so no later run can take that
    // name until this one is gone).
    if let Some(rest) = rest {
        rest.finish();
    }
    phases.teardown_us = phases.lap();
    phases.log(warm_run);
    match written {
        // The server's end is gone (its client hung up, or the shutdown grace ended): the
        // run is over and cleaned up, and nobody is left to tell.
        Err(ProtocolError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            tracing::debug!("the outcome has no reader: the server's end is closed");
            Ok(())
        }
        written => written.map_err(SupervisorError::Reply),
    }
}

fn setup_failed(failure: Failure, start: Instant) -> RunOutcome {
    RunOutcome {
        termination: Termination::SetupFailed {
            step: failure.step.name().to_string(),
            errno: failure.errno as i32,
        },
        stdout: String::new(),
        stderr: String::new(),
        plots: Vec::new(),
        cut_short: Vec::new(),
        wall_ms: start.elapsed().as_millis() as u64,
        peak_memory_bytes: None,
        warm: false,
        files: Vec::new(),
        skipped_files: Vec::new(),
        memory_bytes: None,
        session_ended: None,
        results: Vec::new(),
        error: None,
    }
}

fn execute(
    request: &RunRequest,
    config: &SpawnerConfig,
    seccomp: &SeccompProgram,
    warm: &WarmControls,
    client: &UnixStream,
    phases: &mut Phases,
) -> (RunOutcome, Option<Leftover>) {
    let began = Instant::now();
    let limits = &request.limits;
    let primer = AttachPrimer::start(config);
    let code = || Bundle::of(request).store();
    let (sandbox, reads) = match start(request, config, seccomp, warm, &code) {
        Ok(started) => started,
        Err(failure) => {
            door::no_door(request, client);
            return (setup_failed(failure, began), None);
        }
    };
    if let Err(failure) = door::open_door(request, &sandbox, client) {
        tracing::error!(step = %failure.step, errno = %failure.errno, "egress door");
        return (setup_failed(abort(&sandbox, None, failure), began), None);
    }
    phases.start_us = phases.lap();
    let cgroup = match release(&sandbox, reads.release, config, limits, phases) {
        Ok(cgroup) => cgroup,
        Err(failure) => return (setup_failed(failure, began), None),
    };
    conclude(
        request,
        sandbox,
        reads.outputs,
        cgroup,
        primer,
        client,
        phases,
    )
}

/// A ready sandbox's run: the request's limits applied, then its bundle handed to the
/// waiting harness, which puts it on fd 3 as a run that had it from the start.
fn execute_ready(
    request: &RunRequest,
    ready: Ready,
    client: &UnixStream,
    phases: &mut Phases,
) -> (RunOutcome, Option<Leftover>) {
    let began = Instant::now();
    let message = ready.claim_message("run", &request.limits);
    let handed = Bundle::of(request).store().and_then(|code| {
        step(
            Step::StoreCode,
            fdpass::send(ready.control.as_raw_fd(), &message, &[code.as_raw_fd()]),
        )
    });
    if let Err(failure) = handed {
        ready.discard();
        return (setup_failed(failure, began), None);
    }
    let Ready {
        sandbox,
        outputs,
        cgroup,
        control,
        limits: _,
    } = ready;
    // The harness has what it needs; nothing more goes either way on fd 3.
    drop(control);
    phases.start_us = phases.lap();
    conclude(
        request,
        sandbox,
        outputs,
        cgroup,
        AttachPrimer(None),
        client,
        phases,
    )
}

/// From the release on, the same for every run: watch, classify, assemble.
fn conclude(
    request: &RunRequest,
    sandbox: Sandbox,
    outputs: Outputs,
    cgroup: Option<Box<dyn RunCgroup>>,
    primer: AttachPrimer,
    client: &UnixStream,
    phases: &mut Phases,
) -> (RunOutcome, Option<Leftover>) {
    let limits = &request.limits;
    let mut watched = watch(
        &sandbox,
        outputs,
        limits,
        FrameCaps::of(limits, request.collect_files, request.results),
        frames_cap(limits, request.collect_files, request.results),
        client,
        request.stream,
    );
    phases.run_us = phases.lap();
    // The output is complete and the verdict known: Python's status is recorded, so every
    // counter the verdict needs (OOM kills, the pids limit, the peak) has counted all it
    // will. The run's init is killed (it is leaving anyway; the kernel then kills whatever
    // else is in its PID namespace), so nothing of the run acts after the reply.
    sandbox.kill_if_running();
    if watched.killed {
        // A run the supervisor ended (deadline, client gone) is not the
        // hot path: it is answered once everything of it is gone, as before.
        sandbox.wait();
    }
    let counters = CgroupCounters::read(cgroup.as_deref());
    if !watched.cancelled {
        watched.finish_stream(client);
    }
    let termination = classify(&watched, counters.oom);
    let outcome = assemble(
        watched,
        termination,
        &counters,
        matches!(sandbox, Sandbox::Warm { .. }),
        limits,
    );
    phases.verdict_us = phases.lap();
    (
        outcome,
        Some(Leftover {
            sandbox,
            cgroup,
            _primer: primer,
        }),
    )
}

/// A helper process that takes the cgroup attach lock while the run starts, so the run's
/// own move into its cgroup does not wait for the lock (see [`super::cgroup::prime_attach`]).
/// Reaped when dropped.
struct AttachPrimer(Option<Pid>);

impl AttachPrimer {
    /// Forks the helper (before any of the run's pipes exist, so it holds none of them);
    /// none without cgroups, or with favordynmods (the lock is never slow to take).
    fn start(config: &SpawnerConfig) -> AttachPrimer {
        if config.cgroup.is_none() || config.attach == super::cgroup::AttachMode::FavorDynMods {
            return AttachPrimer(None);
        }
        match sys::fork() {
            Ok(None) => {
                let primed = super::cgroup::prime_attach();
                sys::exit_now(if primed.is_ok() { 0 } else { 1 })
            }
            Ok(Some(pid)) => AttachPrimer(Some(pid)),
            Err(e) => {
                tracing::debug!(error = %e, "forking the cgroup attach primer");
                AttachPrimer(None)
            }
        }
    }
}

impl Drop for AttachPrimer {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = waitpid(pid, None);
        }
    }
}

/// What is left of a run once its outcome is known, cleaned up after the reply.
struct Leftover {
    sandbox: Sandbox,
    cgroup: Option<Box<dyn RunCgroup>>,
    _primer: AttachPrimer,
}

impl Leftover {
    /// Waits until the run's init is gone (and with it every process of its PID namespace),
    /// then kills whatever is still in its cgroup and removes it.
    fn finish(self) {
        self.sandbox.wait();
        if let Some(cg) = self.cgroup {
            if let Err(e) = cg.remove() {
                tracing::error!(error = %e, "removing the run cgroup");
            }
        }
    }
}

/// What watching a run collected, once everything it started is gone.
struct Watched {
    out: Capture,
    err: Capture,
    figs: Capture,
    reports: Capture,
    timed_out: bool,
    cancelled: bool,
    /// Whether the supervisor killed the run (deadline, client gone).
    killed: bool,
    /// What was sent of a streamed run so far.
    streamed: Option<Streamed>,
    /// What the plots pipe's frames may carry.
    frame_caps: FrameCaps,
    wall_ms: u64,
}

impl Watched {
    /// Streams what was not sent yet, the run being over.
    fn finish_stream(&mut self, client: &UnixStream) {
        send_events(
            client,
            &mut self.streamed,
            [&self.out, &self.err, &self.figs],
            true,
        );
    }
}

/// Sends a streamed run's new output as events; false when the server's end is gone.
fn send_events(
    client: &UnixStream,
    streamed: &mut Option<Streamed>,
    c: [&Capture; 3],
    finished: bool,
) -> bool {
    let Some(s) = streamed else { return true };
    s.events(c[0], c[1], c[2], finished)
        .into_iter()
        .all(|event| write_frame(&mut &*client, &Report::Event { event }).is_ok())
}

/// Collects the run's output until its pipes close, killing it at the deadline or when the
/// client hangs up.
fn watch(
    sandbox: &Sandbox,
    outputs: Outputs,
    limits: &Limits,
    frame_caps: FrameCaps,
    frames_cap: usize,
    client: &UnixStream,
    stream: bool,
) -> Watched {
    let run_start = Instant::now();
    let deadline = run_start + Duration::from_millis(limits.timeout_ms);
    let mut out = Capture::new(outputs.stdout, limits.output_bytes);
    let mut err = Capture::new(outputs.stderr, limits.output_bytes);
    let mut figs = Capture::new(outputs.plots, frames_cap);
    let mut reports = Capture::new(outputs.report, RECORD_LEN * 4);
    let mut timed_out = false;
    let mut cancelled = false;
    let mut killed_at: Option<Instant> = None;
    // The server reads every event as it comes and keeps it (bounded by the caps, like
    // the captures), so these writes do not wait on a slow client.
    let mut streamed = stream.then(|| Streamed::new(frame_caps));
    let send = |streamed: &mut Option<Streamed>, c: [&Capture; 3], finished: bool| {
        send_events(client, streamed, c, finished)
    };

    loop {
        // Done once the output pipes are closed (every process that could write to them is
        // gone, or the harness closed them after its exit frame) and Python's status is
        // known: recorded by init (or init is gone itself), or announced by the harness.
        if out.fd.is_none()
            && err.fd.is_none()
            && figs.fd.is_none()
            && (reports.fd.is_none()
                || child::reported_python_status(&reports.data).is_some()
                || harness_exit(&figs.data).is_some())
        {
            break;
        }
        let open: Vec<&OwnedFd> = [&out.fd, &err.fd, &figs.fd, &reports.fd]
            .into_iter()
            .flatten()
            .collect();
        let now = Instant::now();
        if let Some(at) = killed_at {
            if now >= at + DRAIN_GRACE {
                break;
            }
        } else if now >= deadline {
            timed_out = true;
            sandbox.kill();
            killed_at = Some(now);
            continue;
        }
        let wait_until = killed_at.map(|at| at + DRAIN_GRACE).unwrap_or(deadline);
        let timeout_ms = wait_until
            .saturating_duration_since(now)
            .as_millis()
            .min(60_000) as u16;
        let mut fds: Vec<PollFd> = open
            .iter()
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        fds.push(PollFd::new(client.as_fd(), PollFlags::POLLIN));
        match poll(&mut fds, PollTimeout::from(timeout_ms.max(1))) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break,
        }
        let client_gone = fds.last().and_then(|f| f.revents()).is_some_and(|r| {
            r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
        });
        drop(fds);
        if client_gone && killed_at.is_none() {
            // The server sends nothing after the request: readable means it hung up.
            cancelled = true;
            sandbox.kill();
            killed_at = Some(Instant::now());
        }
        for capture in [&mut out, &mut err, &mut figs, &mut reports] {
            capture.drain();
        }
        if !send(&mut streamed, [&out, &err, &figs], false) && killed_at.is_none() {
            // The server's end is gone: nobody waits for this run any more.
            cancelled = true;
            sandbox.kill();
            killed_at = Some(Instant::now());
        }
    }
    Watched {
        out,
        err,
        figs,
        reports,
        timed_out,
        cancelled,
        killed: killed_at.is_some(),
        streamed,
        frame_caps,
        wall_ms: run_start.elapsed().as_millis() as u64,
    }
}

/// What the run's cgroup counted, read before it is removed.
struct CgroupCounters {
    oom: bool,
    pids_hit: bool,
    peak: Option<u64>,
}

impl CgroupCounters {
    fn read(cgroup: Option<&dyn RunCgroup>) -> CgroupCounters {
        match cgroup {
            Some(cg) => CgroupCounters {
                oom: cg.oom_killed(),
                pids_hit: cg.pids_limit_hit(),
                peak: cg.peak_memory(),
            },
            None => CgroupCounters {
                oom: false,
                pids_hit: false,
                peak: None,
            },
        }
    }
}

/// How the run ended, from what its init reported and what the supervisor saw.
fn classify(watched: &Watched, oom: bool) -> Termination {
    let reports = &watched.reports.data;
    if watched.cancelled {
        Termination::Cancelled
    } else if let Some((step, errno)) = child::reported_failure(reports) {
        Termination::SetupFailed {
            step: Step::from_code(step)
                .map(Step::name)
                .unwrap_or("unknown")
                .to_string(),
            errno,
        }
    } else if watched.timed_out {
        Termination::TimedOut
    } else {
        // What init saw (the kernel's word) first; else the code the harness announced as
        // it closed its output, when the reply did not wait for Python's teardown.
        let announced = harness_exit(&watched.figs.data).map(|code| (code & 0xff) << 8);
        match child::reported_python_status(reports).or(announced) {
            Some(status) if status & 0x7f == 0 => Termination::Exited {
                code: (status >> 8) & 0xff,
            },
            Some(_) | None if oom => Termination::OutOfMemory,
            Some(status) => Termination::Signaled {
                signal: status & 0x7f,
            },
            None => Termination::SetupFailed {
                step: Step::InitStatus.name().into(),
                errno: 0,
            },
        }
    }
}

/// Limits that left no mark in the output itself, in words for stderr.
fn limit_notes(pids_hit: bool, plots_dropped: bool, limits: &Limits) -> Vec<String> {
    let mut told = Vec::new();
    if pids_hit {
        told.push(format!("process limit ({}) reached", limits.max_processes));
    }
    if plots_dropped {
        told.push(format!(
            "plot size limit ({}) exceeded; later plots dropped",
            human_bytes(limits.plot_bytes as u64)
        ));
    }
    told
}

/// The outcome reported to the server.
fn assemble(
    watched: Watched,
    termination: Termination,
    counters: &CgroupCounters,
    warm_run: bool,
    limits: &Limits,
) -> RunOutcome {
    let stdout = text(&watched.out, "stdout");
    let mut stderr = text(&watched.err, "stderr");
    let frames = decode_frames(
        &watched.figs.data,
        watched.figs.dropped > 0,
        watched.frame_caps,
    );
    let plots_dropped = frames.dropped;
    for note in limit_notes(counters.pids_hit, plots_dropped, limits) {
        stderr.push_str(&format!("nsbox: {note}\n"));
    }
    let cut_short = [
        (counters.pids_hit, Cut::Processes),
        (
            watched.out.dropped > 0 || watched.err.dropped > 0,
            Cut::Output,
        ),
        (plots_dropped, Cut::Plots),
    ]
    .into_iter()
    .filter_map(|(hit, cut)| hit.then_some(cut))
    .collect();
    RunOutcome {
        warm: warm_run,
        termination,
        stdout,
        stderr,
        plots: frames.plots,
        cut_short,
        wall_ms: watched.wall_ms,
        peak_memory_bytes: counters.peak,
        files: frames.files,
        skipped_files: frames.skipped,
        memory_bytes: None,
        session_ended: None,
        results: frames.results,
        error: frames.error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_waits_for_pythons_status_not_for_other_records() {
        use child::Record;
        assert!(child::reported_python_status(&[]).is_none());
        let failed = Record::Failed { step: 3, errno: 1 }.encode();
        assert!(child::reported_python_status(&failed).is_none());
        assert_eq!(child::reported_failure(&failed), Some((3, 1)));
        let status = Record::PythonStatus(0).encode();
        assert_eq!(child::reported_python_status(&status), Some(0));
        let both: Vec<u8> = failed.iter().chain(status.iter()).copied().collect();
        assert_eq!(child::reported_python_status(&both), Some(0));
        // Half a record is not a status yet.
        assert!(child::reported_python_status(&status[..RECORD_LEN / 2]).is_none());
    }

    #[test]
    fn limits_without_a_mark_in_the_output_are_told_in_words() {
        let limits = Limits::default();
        assert!(limit_notes(false, false, &limits).is_empty());
        assert_eq!(
            limit_notes(true, true, &limits),
            [
                "process limit (64) reached",
                "plot size limit (16 MiB) exceeded; later plots dropped"
            ]
        );
    }
}
