//! One run from start to cleanup: clone the sandbox, set its cgroup and id maps, collect its output under the timeout, and kill and remove everything it started.
//!
//! A supervisor is a single-threaded process forked by the spawner for exactly one run; it
//! talks to the server over its own unix socket and exits when the run is reported.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{lseek, pipe2, Pid, Whence};

use super::capture::{
    decode_frames, harness_exit, human_bytes, text, Capture, FrameCaps, Streamed,
};
use super::cgroup::RunCgroup;
use super::child::{self, ChildPlan, Entry, RECORD_LEN};
use super::config::SpawnerConfig;
use super::failure::{io_step, step, Failure, Step};
use super::fdpass;
use super::namespaces::RUN_NAMESPACES;
use super::protocol::{read_frame, write_frame, ProtocolError};
use super::run::{
    Cut, FileCaps, InputFile, Limits, Report, ResultCaps, RunOutcome, RunRequest, Template,
    Termination,
};
use super::seccomp::SeccompProgram;
use super::warm::{self, RunEnds};
use crate::sys;

/// The Python program that wraps user code inside the sandbox.
pub const HARNESS: &str = include_str!("harness.py");

/// How long to wait for the pipes to close after the run was killed; only a process that
/// escaped the PID namespace could hold them longer, and none can.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Where the harness finds matplotlib's writable config and cache inside the run.
const MPLCONFIGDIR: &str = "/tmp/.config/matplotlib";

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("reading the run request: {0}")]
    Request(#[source] super::protocol::ProtocolError),
    #[error("writing the run outcome: {0}")]
    Reply(#[source] super::protocol::ProtocolError),
}

/// Serves one run on `stream` and returns when its outcome has been written.
pub fn serve(
    mut stream: UnixStream,
    config: &SpawnerConfig,
    seccomp: &SeccompProgram,
    warm: &WarmControls,
) -> Result<(), SupervisorError> {
    // The server's end was non-blocking; ours is a separate file description.
    let _ = stream.set_nonblocking(false);
    let request: RunRequest = read_frame(&mut stream).map_err(SupervisorError::Request)?;
    if request.session {
        let request_id = request.request_id.as_deref().map(tracing::field::display);
        let _span = tracing::info_span!("session", request_id).entered();
        return super::session::serve(stream, request, config, seccomp, warm);
    }
    // The server's request span, as far as the supervisor knows it: its lines carry the
    // request's id like the server's own.
    let request_id = request.request_id.as_deref().map(tracing::field::display);
    let _span = tracing::info_span!("run", request_id).entered();
    let mut phases = Phases::new();
    let (outcome, rest) = execute(&request, config, seccomp, warm, &stream, &mut phases);
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

/// How long each phase of one run took, in microseconds, for one debug line on the
/// `nsbox::phases` target (the benchmark reads it; nothing decides on it).
#[derive(Debug)]
pub(crate) struct Phases {
    began: Instant,
    lap_at: Instant,
    /// Pipes, the code's memfd and the warm hand-off (the zygote's clone of the run's
    /// init into its namespaces), or the cold clone.
    start_us: u64,
    /// Creating the run's cgroup and setting its limits.
    cgroup_us: u64,
    /// Moving the run's init into its cgroup (cgroup.procs).
    attach_us: u64,
    /// From the release to the run's output complete (its pipes closed, or its verdict
    /// recorded): the interpreter's own set-up, the code, the interpreter's exit.
    run_us: u64,
    /// After the reply: waiting for the run's init to be gone, removing its cgroup.
    teardown_us: u64,
    /// Reading the cgroup's counters, classifying the run and assembling its outcome.
    verdict_us: u64,
    /// Writing the outcome to the server.
    reply_us: u64,
    /// From the request read to the outcome written (teardown comes after).
    total_us: u64,
}

impl Phases {
    pub(crate) fn new() -> Phases {
        let now = Instant::now();
        Phases {
            began: now,
            lap_at: now,
            start_us: 0,
            cgroup_us: 0,
            attach_us: 0,
            run_us: 0,
            teardown_us: 0,
            verdict_us: 0,
            reply_us: 0,
            total_us: 0,
        }
    }

    /// Microseconds since the previous lap (or the start).
    fn lap(&mut self) -> u64 {
        let now = Instant::now();
        let us = now.duration_since(self.lap_at).as_micros() as u64;
        self.lap_at = now;
        us
    }

    fn log(&self, warm: bool) {
        tracing::debug!(
            target: "nsbox::phases",
            warm,
            start_us = self.start_us,
            cgroup_us = self.cgroup_us,
            attach_us = self.attach_us,
            run_us = self.run_us,
            teardown_us = self.teardown_us,
            verdict_us = self.verdict_us,
            reply_us = self.reply_us,
            total_us = self.total_us,
            "run phases"
        );
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

fn cstrings(items: &[&str]) -> Vec<CString> {
    items
        .iter()
        .map(|s| CString::new(*s).expect("no NUL in fixed strings"))
        .collect()
}

/// The zygotes' control sockets (inherited from the spawner), for templates that are warm.
#[derive(Debug, Default, Clone)]
pub struct WarmControls(pub Vec<(Template, RawFd)>);

impl WarmControls {
    /// The zygote a run of `template` is forked from: that template's, or else the
    /// smallest warm one that has everything it has (each template is the one before it
    /// plus more), when the operator keeps fewer templates or one is being replaced.
    fn get(&self, template: Template) -> Option<RawFd> {
        Template::ALL
            .iter()
            .skip_while(|t| **t != template)
            .find_map(|wanted| self.0.iter().find(|(t, _)| t == wanted))
            .map(|(_, fd)| *fd)
    }
}

/// The fixed, minimal environment of a run: nothing of the server's reaches it.
pub fn run_env(limits: &Limits, guard_rails: bool) -> Vec<CString> {
    let max_plots = format!("NSBOX_MAX_PLOTS={}", limits.max_plots);
    let mpl = format!("MPLCONFIGDIR={MPLCONFIGDIR}");
    // Thread pools sized to the run's CPU quota (one thread with the default 1 CPU): the
    // cgroup gives each run that share anyway, and more threads only multiply memory,
    // contention and pids. The libraries would otherwise size them from the host's cores,
    // which the sandbox still sees.
    let threads = threads_per_run(limits);
    let pools: Vec<String> = [
        "OPENBLAS_NUM_THREADS",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "LOKY_MAX_CPU_COUNT",
    ]
    .iter()
    .map(|var| format!("{var}={threads}"))
    .collect();
    let mut env = cstrings(&[
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "HOME=/tmp",
        "TMPDIR=/tmp",
        "LANG=C.UTF-8",
        "LC_ALL=C.UTF-8",
        "MPLBACKEND=module://nsbox_backend",
        &mpl,
        &max_plots,
        // joblib (scikit-learn's n_jobs) runs every job in the run's own thread: its
        // process pools need /dev/shm semaphores the sandbox does not have (joblib would
        // warn about it in every run) and each worker would re-import the stack under the
        // run's memory limit. Parallel work stays in BLAS and OpenMP, sized below.
        "JOBLIB_MULTIPROCESSING=0",
    ]);
    env.extend(pools.iter().flat_map(|s| cstrings(&[s])));
    if guard_rails {
        env.extend(cstrings(&["NSBOX_GUARD_RAILS=1"]));
    }
    env
}

/// Threads a run's libraries may start per pool: the CPU quota rounded down, at least one,
/// and at most an eighth of the process limit (BLAS, OpenMP and joblib each have a pool).
pub fn threads_per_run(limits: &Limits) -> u64 {
    let cpus = limits.cpus.floor().max(1.0) as u64;
    cpus.min((limits.max_processes / 8).max(1))
}

pub(crate) struct Pipes {
    pub read: OwnedFd,
    pub write: OwnedFd,
}

pub(crate) fn pipe() -> Result<Pipes, Errno> {
    let (read, write) = pipe2(OFlag::O_CLOEXEC)?;
    Ok(Pipes { read, write })
}

/// The supervisor's read ends of the pipes a run writes to.
pub(crate) struct Outputs {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub plots: OwnedFd,
    pub report: OwnedFd,
}

/// The supervisor's ends of a run's pipes.
pub(crate) struct Reads {
    pub outputs: Outputs,
    pub release: OwnedFd,
}

/// What the harness reads from fd 3 for one run (or one session call): the code, the input
/// files, and whether to collect output files.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Bundle<'a> {
    pub code: &'a str,
    pub files: &'a [InputFile],
    pub collect_files: Option<FileCaps>,
    pub max_plots: usize,
    /// For a session's file requests: the file, and the caps it is read under.
    pub path: Option<&'a str>,
    pub caps: Option<FileCaps>,
    /// Notebook results, when asked for, and their caps.
    pub results: Option<ResultCaps>,
    /// The egress proxy's URL, which the harness puts in the proxy variables; `None`: no
    /// door, no variables.
    pub proxy: Option<String>,
}

impl<'a> Bundle<'a> {
    pub fn of(request: &'a RunRequest) -> Bundle<'a> {
        Bundle {
            code: &request.code,
            files: &request.files,
            collect_files: request.collect_files,
            max_plots: request.limits.max_plots,
            path: None,
            caps: None,
            results: request.results,
            proxy: proxy_url(request),
        }
    }

    /// The bundle in a sealed-size memfd the harness reads from the start.
    pub fn store(&self) -> Result<OwnedFd, Failure> {
        let bytes = serde_json::to_vec(self).map_err(|_| Failure {
            step: Step::StoreCode,
            errno: Errno::EINVAL,
        })?;
        let code = step(
            Step::StoreCode,
            memfd_create(c"nsbox-code", MemFdCreateFlag::MFD_CLOEXEC),
        )?;
        let store = |code: &OwnedFd| -> std::io::Result<()> {
            std::fs::File::from(code.try_clone()?).write_all(&bytes)
        };
        io_step(Step::StoreCode, store(&code))?;
        step(Step::StoreCode, lseek(code.as_raw_fd(), 0, Whence::SeekSet))?;
        Ok(code)
    }
}

/// The URL of a run's egress proxy (on its own loopback), when it has a door.
pub(crate) fn proxy_url(request: &RunRequest) -> Option<String> {
    request
        .egress_port
        .map(|port| format!("http://127.0.0.1:{port}"))
}

/// Hands the server the listener of the run's egress door, made in the run's network
/// namespace before the run is released: one message of one byte, with the listener
/// attached, before any report. A run without a door sends nothing.
pub(crate) fn open_door(
    request: &RunRequest,
    sandbox: &Sandbox,
    client: &UnixStream,
) -> Result<(), Failure> {
    let Some(port) = request.egress_port else {
        return Ok(());
    };
    let listener = step(
        Step::EgressListener,
        sandbox
            .pidfd()
            .and_then(|pidfd| door_listener(&pidfd, port)),
    );
    let sent = match &listener {
        Ok(fd) => fdpass::send(client.as_raw_fd(), &[1], &[fd.as_raw_fd()]),
        Err(_) => fdpass::send(client.as_raw_fd(), &[0], &[]),
    };
    listener?;
    step(Step::EgressListener, sent)
}

/// The door's listener, made in the run's network namespace by a helper process: it
/// enters the run's user and network namespaces (`setns` moves a whole process only
/// when it is single-threaded, and there is no way back without privileges in our own
/// user namespace), binds and listens, sends the socket back and exits. The socket keeps
/// the namespace it was made in: the run's processes connect to it, only its holder
/// accepts. The helper runs none of the run's code and holds none of the run's pipes (they
/// are close-on-exec, but it never execs: it only exits).
fn door_listener(pidfd: &OwnedFd, port: u16) -> Result<OwnedFd, Errno> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let Some(helper) = sys::fork()? else {
        let made = sys::enter_user_and_net_of(pidfd).and_then(|()| sys::listen_on_loopback(port));
        let sent = match &made {
            Ok(fd) => fdpass::send(theirs.as_raw_fd(), &[0; 4], &[fd.as_raw_fd()]),
            Err(errno) => fdpass::send(theirs.as_raw_fd(), &(*errno as i32).to_ne_bytes(), &[]),
        };
        sys::exit_now(i32::from(sent.is_err()))
    };
    drop(theirs);
    let mut word = [0u8; 4];
    let got = fdpass::recv::<1>(ours.as_raw_fd(), &mut word);
    let _ = waitpid(helper, None);
    let got = got?;
    match got.fds.into_iter().next() {
        Some(fd) => Ok(fd),
        None if got.len == 4 => Err(Errno::from_raw(i32::from_ne_bytes(word))),
        None => Err(Errno::EIO),
    }
}

/// Tells the server a run with a door that set-up failed before the door existed (the
/// message it waits for before the reports, with nothing attached).
pub(crate) fn no_door(request: &RunRequest, client: &UnixStream) {
    if request.egress_port.is_some() {
        let _ = fdpass::send(client.as_raw_fd(), &[0], &[]);
    }
}

/// The cap on a run's plots pipe: the plots' bytes, the files' when they are collected
/// (with room for their headers), and the results' and the error's when asked for.
pub(crate) fn frames_cap(
    limits: &Limits,
    files: Option<FileCaps>,
    results: Option<ResultCaps>,
) -> usize {
    let files = files.map_or(0, |caps| {
        caps.max_total_bytes as usize + caps.max_count.saturating_add(1) * 4096
    });
    let results = results.map_or(0, |caps| {
        caps.max_total_bytes
            .saturating_add(caps.max_count.saturating_mul(5))
            .saturating_add(super::capture::ERROR_FRAME_MAX)
    });
    limits
        .plot_bytes
        .saturating_add(files)
        .saturating_add(results)
}

/// Fresh pipes, and `code` (what the harness reads on fd 3): our ends, and the ends the
/// run gets.
pub(crate) fn prepare(code: OwnedFd) -> Result<(Reads, RunEnds), Failure> {
    let stdout = step(Step::CreatePipes, pipe())?;
    let stderr = step(Step::CreatePipes, pipe())?;
    let plots = step(Step::CreatePipes, pipe())?;
    let report = step(Step::CreatePipes, pipe())?;
    let release = step(Step::CreatePipes, pipe())?;
    Ok((
        Reads {
            outputs: Outputs {
                stdout: stdout.read,
                stderr: stderr.read,
                plots: plots.read,
                report: report.read,
            },
            release: release.write,
        },
        RunEnds {
            stdout: stdout.write,
            stderr: stderr.write,
            plots: plots.write,
            report: report.write,
            code,
            release: release.read,
        },
    ))
}

/// The run's init, as the supervisor sees it.
pub(crate) enum Sandbox {
    /// Cloned by this supervisor: a child we can wait for.
    Cold(Pid),
    /// Cloned by a zygote: watched through a pidfd.
    Warm { pid: Pid, pidfd: OwnedFd },
}

impl Sandbox {
    pub fn pid(&self) -> Pid {
        match self {
            Sandbox::Cold(pid) | Sandbox::Warm { pid, .. } => *pid,
        }
    }

    /// A pidfd of the run's init, for a holder outside this process.
    pub fn pidfd(&self) -> Result<OwnedFd, Errno> {
        match self {
            Sandbox::Cold(pid) => sys::pidfd_open(*pid),
            Sandbox::Warm { pidfd, .. } => pidfd
                .try_clone()
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }

    /// Kills the run's init; the kernel then kills every process of its PID namespace.
    pub fn kill(&self) {
        let _ = kill(self.pid(), Signal::SIGKILL);
    }

    /// Kills the run's init unless it is already gone: a cold init is our child (its pid
    /// stays ours until we reap it); a warm one's pid is freed once its parent reaps it, so
    /// it is signalled only while its pidfd says it is still running.
    fn kill_if_running(&self) {
        match self {
            Sandbox::Cold(_) => self.kill(),
            Sandbox::Warm { pidfd, .. } => {
                let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                if matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0)) {
                    self.kill();
                }
            }
        }
    }

    /// Waits until the run's init is gone (and with it the whole PID namespace).
    pub fn wait(&self) {
        match self {
            Sandbox::Cold(pid) => {
                let _ = waitpid(*pid, None);
            }
            Sandbox::Warm { pidfd, .. } => {
                let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                if !matches!(poll(&mut fds, PollTimeout::from(5000u16)), Ok(1)) {
                    self.kill();
                    let _ = poll(&mut fds, PollTimeout::from(5000u16));
                }
            }
        }
    }
}

/// Clones the run's init from this supervisor and starts a fresh interpreter in it.
fn start_cold(
    config: &SpawnerConfig,
    seccomp: &SeccompProgram,
    limits: &Limits,
    ends: RunEnds,
    reads: &Reads,
) -> Result<Sandbox, Failure> {
    let plan = ChildPlan {
        rootfs: Some(config.rootfs.clone()),
        limits: limits.clone(),
        memory_rlimit: config.cgroup.is_none(),
        maps_root: config.ids.maps_root(),
        seccomp: seccomp.clone(),
        entry: Entry::Exec {
            argv: cstrings(&["/usr/bin/python3", "-I", "-B", "-c", HARNESS]),
            envp: run_env(limits, config.guard_rails),
        },
        die_with_parent: true,
        release_read: ends.release,
        release_write: Some(reads.release.as_raw_fd()),
        report_write: ends.report,
        stdout_write: ends.stdout,
        stderr_write: ends.stderr,
        plots_write: ends.plots,
        code: ends.code,
    };
    let Some(pid) = step(Step::CreateNamespaces, sys::clone_fork(RUN_NAMESPACES))? else {
        child::init_main(plan);
        // A cold plan execs or exits inside; nothing may run the supervisor's code.
        sys::exit_now(127)
    };
    // Only the child keeps the write ends, so EOF means every run process is gone.
    drop(plan);
    if let Err(e) = config.ids.write(pid) {
        tracing::error!(error = %e, "writing a run's id maps");
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(Failure {
            step: Step::WriteIdMaps,
            errno: e.errno(),
        });
    }
    super::cgroup::prefer_as_oom_victim(pid);
    Ok(Sandbox::Cold(pid))
}

/// Ends a run that could not be released: its init is killed and waited for, its cgroup
/// removed. Returns the failure, for the outcome.
fn abort(sandbox: &Sandbox, cgroup: Option<Box<dyn RunCgroup>>, failure: Failure) -> Failure {
    sandbox.kill();
    sandbox.wait();
    if let Some(cg) = cgroup {
        let _ = cg.remove();
    }
    failure
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
            no_door(request, client);
            return (setup_failed(failure, began), None);
        }
    };
    if let Err(failure) = open_door(request, &sandbox, client) {
        tracing::error!(step = %failure.step, errno = %failure.errno, "egress door");
        return (setup_failed(abort(&sandbox, None, failure), began), None);
    }
    phases.start_us = phases.lap();
    let cgroup = match release(&sandbox, reads.release, config, limits, phases) {
        Ok(cgroup) => cgroup,
        Err(failure) => return (setup_failed(failure, began), None),
    };
    let mut watched = watch(
        &sandbox,
        reads.outputs,
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

/// Starts the run's init from a warm template when one is ready, else cold; either way
/// the init waits for [`release`]. `code` makes what the harness reads on fd 3 (asked
/// again if a warm start fails).
pub(crate) fn start(
    request: &RunRequest,
    config: &SpawnerConfig,
    seccomp: &SeccompProgram,
    warm: &WarmControls,
    code: &dyn Fn() -> Result<OwnedFd, Failure>,
) -> Result<(Sandbox, Reads), Failure> {
    let limits = &request.limits;
    if let Some(control) = request.template.and_then(|t| warm.get(t)) {
        let (reads, ends) = prepare(code()?)?;
        match warm::start(
            control,
            &ends,
            limits,
            config.cgroup.is_none(),
            config.ids.maps_root(),
        ) {
            Ok((pid, pidfd)) => {
                drop(ends);
                return Ok((Sandbox::Warm { pid, pidfd }, reads));
            }
            // A retiring or dead zygote: this run goes cold, with fresh pipes.
            Err(e) => tracing::warn!(error = %e, "warm start failed; running cold"),
        }
    }
    let (reads, ends) = prepare(code()?)?;
    let sandbox = start_cold(config, seccomp, limits, ends, &reads)?;
    Ok((sandbox, reads))
}

/// Puts the run's init into its cgroup and releases it; a run that cannot be released is
/// ended here.
pub(crate) fn release(
    sandbox: &Sandbox,
    release: OwnedFd,
    config: &SpawnerConfig,
    limits: &Limits,
    phases: &mut Phases,
) -> Result<Option<Box<dyn RunCgroup>>, Failure> {
    let run_name = format!("run-{}", std::process::id());
    let cgroup = match &config.cgroup {
        Some(parent) => match parent.create_run(&run_name, limits).and_then(|cg| {
            phases.cgroup_us = phases.lap();
            cg.add(sandbox.pid()).map(|()| cg)
        }) {
            Ok(cg) => {
                phases.attach_us = phases.lap();
                Some(cg)
            }
            Err(e) => {
                tracing::error!(error = %e, "run cgroup");
                let failure = Failure {
                    step: Step::RunCgroup,
                    errno: Errno::EIO,
                };
                return Err(abort(sandbox, None, failure));
            }
        },
        None => None,
    };
    if let Err(failure) = step(Step::ReleaseSandbox, nix::unistd::write(&release, &[1])) {
        return Err(abort(sandbox, cgroup, failure));
    }
    Ok(cgroup)
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

    fn env_of(limits: &Limits) -> Vec<String> {
        run_env(limits, false)
            .into_iter()
            .map(|c| c.into_string().unwrap())
            .collect()
    }

    #[test]
    fn thread_pools_follow_the_cpu_quota_within_the_process_limit() {
        let one = env_of(&Limits::default());
        for var in [
            "OPENBLAS_NUM_THREADS=1",
            "OMP_NUM_THREADS=1",
            "MKL_NUM_THREADS=1",
            "LOKY_MAX_CPU_COUNT=1",
            "JOBLIB_MULTIPROCESSING=0",
        ] {
            assert!(one.iter().any(|e| e == var), "{var} missing: {one:?}");
        }
        let half = Limits {
            cpus: 0.5,
            ..Limits::default()
        };
        assert_eq!(threads_per_run(&half), 1);
        let four = Limits {
            cpus: 4.0,
            ..Limits::default()
        };
        assert!(env_of(&four).iter().any(|e| e == "OMP_NUM_THREADS=4"));
        let few_pids = Limits {
            cpus: 8.0,
            max_processes: 16,
            ..Limits::default()
        };
        assert_eq!(threads_per_run(&few_pids), 2);
    }

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
