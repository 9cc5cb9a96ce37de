//! One run from start to cleanup: clone the sandbox, set its cgroup and id maps, collect its output under the timeout, and kill and remove everything it started.
//!
//! A supervisor is a single-threaded process forked by the spawner for exactly one run; it
//! talks to the server over its own unix socket and exits when the run is reported.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use base64::Engine;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{lseek, pipe2, read, Pid, Whence};

use super::cgroup::RunCgroup;
use super::child::{self, ChildPlan, Entry, Record, Step, RECORD_LEN};
use super::namespaces::RUN_NAMESPACES;
use super::protocol::{read_frame, write_frame};
use super::seccomp::SeccompProgram;
use super::warm::{self, RunEnds, Template};
use super::{Cut, Limits, Plot, RunOutcome, RunRequest, SpawnerConfig, Termination, HARNESS};
use crate::sys;

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
    let outcome = execute(&request, config, seccomp, warm, &stream);
    write_frame(&mut stream, &outcome).map_err(SupervisorError::Reply)?;
    let _ = stream.flush();
    Ok(())
}

fn setup_failed(step: &str, errno: Errno, start: Instant) -> RunOutcome {
    RunOutcome {
        termination: Termination::SetupFailed {
            step: step.to_string(),
            errno: errno as i32,
        },
        stdout: String::new(),
        stderr: String::new(),
        plots: Vec::new(),
        cut_short: Vec::new(),
        wall_ms: start.elapsed().as_millis() as u64,
        peak_memory_bytes: None,
        warm: false,
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
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
    fn get(&self, template: Template) -> Option<RawFd> {
        self.0
            .iter()
            .find(|(t, _)| *t == template)
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

struct Pipes {
    read: OwnedFd,
    write: OwnedFd,
}

fn pipe() -> Result<Pipes, Errno> {
    let (read, write) = pipe2(OFlag::O_CLOEXEC)?;
    Ok(Pipes { read, write })
}

/// Bytes read from one pipe, kept up to a cap; the rest is drained and counted.
struct Capture {
    fd: Option<OwnedFd>,
    data: Vec<u8>,
    cap: usize,
    dropped: usize,
}

impl Capture {
    fn new(fd: OwnedFd, cap: usize) -> Capture {
        // Non-blocking, so draining one pipe never waits on a run that writes to another.
        // Only our read end: the run's write ends stay blocking, as programs expect.
        let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
        Capture {
            fd: Some(fd),
            data: Vec::new(),
            cap,
            dropped: 0,
        }
    }

    /// Reads what is available; closes the pipe at EOF.
    fn pump(&mut self) {
        let Some(fd) = &self.fd else { return };
        let mut buf = [0u8; 65536];
        match read(fd.as_raw_fd(), &mut buf) {
            Ok(0) | Err(Errno::EBADF) => self.fd = None,
            Ok(n) => {
                let room = self.cap.saturating_sub(self.data.len());
                let keep = room.min(n);
                self.data.extend_from_slice(&buf[..keep]);
                self.dropped += n - keep;
            }
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
            Err(_) => self.fd = None,
        }
    }

    /// Reads until the pipe is empty or closed, at most 1 MiB at a time so that a flood on
    /// one pipe cannot starve the others.
    fn drain(&mut self) {
        let before = |c: &Capture| (c.fd.is_some(), c.data.len() + c.dropped);
        for _ in 0..16 {
            let was = before(self);
            self.pump();
            if before(self) == was {
                return;
            }
        }
    }
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

fn text(capture: &Capture, stream: &str, notes: &mut Vec<String>) -> String {
    let mut s = String::from_utf8_lossy(&capture.data).into_owned();
    if capture.dropped > 0 {
        let note = format!(
            "[nsbox: {stream} truncated at {} ({} more bytes dropped)]",
            human_bytes(capture.cap as u64),
            capture.dropped
        );
        if !s.ends_with('\n') && !s.is_empty() {
            s.push('\n');
        }
        s.push_str(&note);
        s.push('\n');
        notes.push(format!(
            "{stream} limit ({}) exceeded",
            human_bytes(capture.cap as u64)
        ));
    }
    s
}

/// Splits the harness's length-prefixed PNG frames into plots; true when some were dropped.
fn decode_plots(
    bytes: &[u8],
    truncated: bool,
    limits: &Limits,
    notes: &mut Vec<String>,
) -> (Vec<Plot>, bool) {
    let mut plots = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        if rest.len() - 4 < len {
            break;
        }
        plots.push(Plot {
            content_base64: base64::engine::general_purpose::STANDARD.encode(&rest[4..4 + len]),
            format: "png".into(),
            filename: format!("plot_{}.png", plots.len() + 1),
        });
        rest = &rest[4 + len..];
    }
    let dropped = truncated || !rest.is_empty();
    if dropped {
        notes.push(format!(
            "plot size limit ({}) exceeded; later plots dropped",
            human_bytes(limits.plot_bytes as u64)
        ));
    }
    (plots, dropped)
}

/// The supervisor's ends of a run's pipes.
struct Reads {
    stdout: OwnedFd,
    stderr: OwnedFd,
    plots: OwnedFd,
    report: OwnedFd,
    release: OwnedFd,
}

/// Fresh pipes and the code in a memfd: our ends, and the ends the run gets.
fn prepare(code_text: &str) -> Result<(Reads, RunEnds), (&'static str, Errno)> {
    let e = |step| move |errno| (step, errno);
    let stdout = pipe().map_err(e("create pipes"))?;
    let stderr = pipe().map_err(e("create pipes"))?;
    let plots = pipe().map_err(e("create pipes"))?;
    let report = pipe().map_err(e("create pipes"))?;
    let release = pipe().map_err(e("create pipes"))?;
    let code =
        memfd_create(c"nsbox-code", MemFdCreateFlag::MFD_CLOEXEC).map_err(e("store the code"))?;
    let store = |code: &OwnedFd| -> std::io::Result<()> {
        std::fs::File::from(code.try_clone()?).write_all(code_text.as_bytes())
    };
    store(&code).map_err(|err| ("store the code", io_errno(&err)))?;
    lseek(code.as_raw_fd(), 0, Whence::SeekSet).map_err(e("store the code"))?;
    Ok((
        Reads {
            stdout: stdout.read,
            stderr: stderr.read,
            plots: plots.read,
            report: report.read,
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
enum Sandbox {
    /// Cloned by this supervisor: a child we can wait for.
    Cold(Pid),
    /// Cloned by a zygote's fork: watched through a pidfd.
    Warm { pid: Pid, pidfd: OwnedFd },
}

impl Sandbox {
    fn pid(&self) -> Pid {
        match self {
            Sandbox::Cold(pid) | Sandbox::Warm { pid, .. } => *pid,
        }
    }

    /// Kills the run's init; the kernel then kills every process of its PID namespace.
    fn kill(&self) {
        let _ = kill(self.pid(), Signal::SIGKILL);
    }

    /// Waits until the run's init is gone (and with it the whole PID namespace).
    fn wait(&self) {
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
) -> Result<Sandbox, (&'static str, Errno)> {
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
        release_read: ends.release,
        release_write: Some(reads.release.as_raw_fd()),
        report_write: ends.report,
        stdout_write: ends.stdout,
        stderr_write: ends.stderr,
        plots_write: ends.plots,
        code: ends.code,
    };
    let pid = match sys::clone_fork(RUN_NAMESPACES) {
        Ok(None) => {
            child::init_main(plan);
            // A cold plan execs or exits inside; nothing may run the supervisor's code.
            sys::exit_now(127)
        }
        Ok(Some(pid)) => pid,
        Err(errno) => return Err(("create namespaces", errno)),
    };
    // Only the child keeps the write ends, so EOF means every run process is gone.
    drop(plan);
    if let Err(e) = config.ids.write(pid) {
        tracing::error!(error = %e, "writing a run's id maps");
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(("write id maps", e.errno()));
    }
    super::cgroup::prefer_as_oom_victim(pid);
    Ok(Sandbox::Cold(pid))
}

/// Ends a run that could not be released: its init is killed and waited for, its cgroup
/// removed.
fn abort(
    sandbox: &Sandbox,
    cgroup: Option<RunCgroup>,
    step: &str,
    errno: Errno,
    start: Instant,
) -> RunOutcome {
    sandbox.kill();
    sandbox.wait();
    if let Some(cg) = cgroup {
        let _ = cg.remove();
    }
    setup_failed(step, errno, start)
}

fn execute(
    request: &RunRequest,
    config: &SpawnerConfig,
    seccomp: &SeccompProgram,
    warm: &WarmControls,
    client: &UnixStream,
) -> RunOutcome {
    let start = Instant::now();
    let limits = &request.limits;
    let memory_rlimit = config.cgroup.is_none();

    let mut started = None;
    if let Some(control) = request.template.and_then(|t| warm.get(t)) {
        match prepare(&request.code) {
            Ok((reads, ends)) => match warm::start(
                control,
                &ends,
                limits,
                memory_rlimit,
                config.ids.maps_root(),
            ) {
                Ok((pid, pidfd)) => {
                    drop(ends);
                    started = Some((Sandbox::Warm { pid, pidfd }, reads));
                }
                // A retiring or dead zygote: this run goes cold, with fresh pipes.
                Err(e) => tracing::warn!(error = %e, "warm start failed; running cold"),
            },
            Err((step, errno)) => return setup_failed(step, errno, start),
        }
    }
    let (sandbox, reads) = match started {
        Some(s) => s,
        None => {
            let (reads, ends) = match prepare(&request.code) {
                Ok(p) => p,
                Err((step, errno)) => return setup_failed(step, errno, start),
            };
            match start_cold(config, seccomp, limits, ends, &reads) {
                Ok(sandbox) => (sandbox, reads),
                Err((step, errno)) => return setup_failed(step, errno, start),
            }
        }
    };
    let warm_run = matches!(sandbox, Sandbox::Warm { .. });
    let pid = sandbox.pid();

    let run_name = format!("run-{}", std::process::id());
    let cgroup = match &config.cgroup {
        Some(parent) => match parent
            .create_run(&run_name, limits)
            .and_then(|cg| cg.add(pid).map(|()| cg))
        {
            Ok(cg) => Some(cg),
            Err(e) => {
                tracing::error!(error = %e, "run cgroup");
                return abort(&sandbox, None, "create the run cgroup", Errno::EIO, start);
            }
        },
        None => None,
    };
    if let Err(errno) = nix::unistd::write(&reads.release, &[1]) {
        return abort(&sandbox, cgroup, "release the sandbox", errno, start);
    }
    drop(reads.release);

    let run_start = Instant::now();
    let deadline = run_start + Duration::from_millis(limits.timeout_ms);
    let mut out = Capture::new(reads.stdout, limits.output_bytes);
    let mut err = Capture::new(reads.stderr, limits.output_bytes);
    let mut figs = Capture::new(reads.plots, limits.plot_bytes);
    let mut reports = Capture::new(reads.report, RECORD_LEN * 4);
    let mut timed_out = false;
    let mut cancelled = false;
    let mut killed_at: Option<Instant> = None;

    loop {
        let open: Vec<&OwnedFd> = [&out.fd, &err.fd, &figs.fd, &reports.fd]
            .into_iter()
            .flatten()
            .collect();
        if open.is_empty() {
            break;
        }
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
    }
    // Init is PID 1 of the run: once it is reaped, the kernel has killed and reaped every
    // other process of the namespace, double-forked and setsid ones included.
    if killed_at.is_some() || out.fd.is_some() || err.fd.is_some() {
        sandbox.kill();
    }
    sandbox.wait();
    let wall_ms = run_start.elapsed().as_millis() as u64;

    let (oom, pids_hit, peak) = match &cgroup {
        Some(cg) => (cg.oom_killed(), cg.pids_limit_hit(), cg.peak_memory()),
        None => (false, false, None),
    };
    if let Some(cg) = cgroup {
        if let Err(e) = cg.remove() {
            tracing::error!(error = %e, "removing the run cgroup");
        }
    }

    let records: Vec<Record> = reports
        .data
        .chunks(RECORD_LEN)
        .filter_map(Record::decode)
        .collect();
    let mut notes = Vec::new();
    let termination = if cancelled {
        Termination::Cancelled
    } else if let Some((step, errno)) = records.iter().find_map(|r| match r {
        Record::Failed { step, errno } => Some((*step, *errno)),
        _ => None,
    }) {
        Termination::SetupFailed {
            step: Step::from_code(step)
                .map(Step::name)
                .unwrap_or("unknown")
                .to_string(),
            errno,
        }
    } else if timed_out {
        Termination::TimedOut
    } else {
        match records.iter().find_map(|r| match r {
            Record::PythonStatus(s) => Some(*s),
            _ => None,
        }) {
            Some(status) if status & 0x7f == 0 => Termination::Exited {
                code: (status >> 8) & 0xff,
            },
            Some(_) | None if oom => Termination::OutOfMemory,
            Some(status) => Termination::Signaled {
                signal: status & 0x7f,
            },
            None => Termination::SetupFailed {
                step: "init exited without a status".into(),
                errno: 0,
            },
        }
    };
    let stdout = text(&out, "stdout", &mut notes);
    let mut stderr = text(&err, "stderr", &mut notes);
    // Limits that left no mark in the output itself are told in stderr.
    let mut told = Vec::new();
    if pids_hit {
        told.push(format!("process limit ({}) reached", limits.max_processes));
    }
    let (plots, plots_dropped) = decode_plots(&figs.data, figs.dropped > 0, limits, &mut told);
    for note in &told {
        stderr.push_str(&format!("nsbox: {note}\n"));
    }
    let cut_short = [
        (pids_hit, Cut::Processes),
        (out.dropped > 0 || err.dropped > 0, Cut::Output),
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
        plots,
        cut_short,
        wall_ms,
        peak_memory_bytes: peak,
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
    fn plot_frames_are_split_and_named_in_order() {
        let mut bytes = Vec::new();
        for payload in [&b"\x89PNG-one"[..], &b"\x89PNG-two"[..]] {
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(payload);
        }
        let mut notes = Vec::new();
        let (plots, _) = decode_plots(&bytes, false, &Limits::default(), &mut notes);
        assert_eq!(plots.len(), 2);
        assert_eq!(plots[1].filename, "plot_2.png");
        assert_eq!(plots[0].format, "png");
        assert!(notes.is_empty());
    }

    #[test]
    fn a_cut_plot_frame_is_dropped_with_a_note() {
        let mut bytes = 100u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 10]);
        let mut notes = Vec::new();
        assert!(decode_plots(&bytes, true, &Limits::default(), &mut notes)
            .0
            .is_empty());
        assert_eq!(notes.len(), 1);
    }

    #[test]
    fn truncated_output_is_marked() {
        let (r, _w) = pipe2(OFlag::O_CLOEXEC).unwrap();
        let mut cap = Capture::new(r, 4);
        cap.data = b"abcd".to_vec();
        cap.dropped = 10;
        let mut notes = Vec::new();
        let s = text(&cap, "stdout", &mut notes);
        assert!(s.starts_with("abcd\n[nsbox: stdout truncated at 4 bytes (10 more bytes dropped)]"));
        assert_eq!(notes, ["stdout limit (4 bytes) exceeded"]);
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(1 << 20), "1 MiB");
        assert_eq!(human_bytes(512 << 20), "512 MiB");
        assert_eq!(human_bytes(2048), "2 KiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
    }
}
