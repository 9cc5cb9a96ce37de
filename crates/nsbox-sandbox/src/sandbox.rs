//! A run's sandbox as a process, shared by one-shot runs and sessions: its pipes and the bundle the harness reads, its init started cold (cloned here) or warm (handed to a zygote), released into its cgroup, and the handle that kills it and waits for it.

use std::cell::RefCell;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::waitpid;
use nix::unistd::{lseek, pipe2, Pid, Whence};

use super::cgroup::RunCgroup;
use super::child::{self, ChildPlan, Entry};
use super::config::SpawnerConfig;
use super::failure::{io_step, step, Failure, Step};
use super::namespaces::RUN_NAMESPACES;
use super::run::{FileCaps, InputFile, Limits, ResultCaps, RunRequest, Template};
use super::seccomp::SeccompProgram;
use super::warm::{self, RunEnds};
use crate::sys;

/// The Python program that wraps user code inside the sandbox.
pub const HARNESS: &str = include_str!("harness.py");

/// Where the harness finds matplotlib's writable config and cache inside the run.
const MPLCONFIGDIR: &str = "/tmp/.config/matplotlib";

/// How long each phase of one run took, in microseconds, for one debug line on the
/// `nsbox::phases` target (the benchmark reads it; nothing decides on it).
#[derive(Debug)]
pub(crate) struct Phases {
    pub(crate) began: Instant,
    pub(crate) lap_at: Instant,
    /// Pipes, the code's memfd and the warm hand-off (the zygote's clone of the run's
    /// init into its namespaces), or the cold clone.
    pub(crate) start_us: u64,
    /// Creating the run's cgroup and setting its limits.
    pub(crate) cgroup_us: u64,
    /// Moving the run's init into its cgroup (cgroup.procs).
    pub(crate) attach_us: u64,
    /// From the release to the run's output complete (its pipes closed, or its verdict
    /// recorded): the interpreter's own set-up, the code, the interpreter's exit.
    pub(crate) run_us: u64,
    /// After the reply: waiting for the run's init to be gone, removing its cgroup.
    pub(crate) teardown_us: u64,
    /// Reading the cgroup's counters, classifying the run and assembling its outcome.
    pub(crate) verdict_us: u64,
    /// Writing the outcome to the server.
    pub(crate) reply_us: u64,
    /// From the request read to the outcome written (teardown comes after).
    pub(crate) total_us: u64,
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
    pub(crate) fn lap(&mut self) -> u64 {
        let now = Instant::now();
        let us = now.duration_since(self.lap_at).as_micros() as u64;
        self.lap_at = now;
        us
    }

    pub(crate) fn log(&self, warm: bool) {
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
    /// plus more), when the operator keeps fewer templates or one died and is starting
    /// again (a retiring zygote keeps taking runs until its successor is warm).
    pub(crate) fn get(&self, template: Template) -> Option<RawFd> {
        let serving = template.served_by(|kept| self.0.iter().any(|(t, _)| *t == kept))?;
        self.0
            .iter()
            .find(|(t, _)| *t == serving)
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
    /// With the proxy, certificates (PEM) the harness adds to the tree's trusted ones.
    pub ca: Option<String>,
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
            proxy: super::door::proxy_url(request),
            ca: super::door::extra_ca(request),
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
    /// Cloned by a zygote: watched through a pidfd. `python` is the run's Python process
    /// when it exists before the release (the nested shape, warm.rs).
    Warm {
        pid: Pid,
        pidfd: OwnedFd,
        python: Option<Pid>,
    },
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
    pub(crate) fn kill_if_running(&self) {
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
    site: Option<&str>,
    ends: RunEnds,
    reads: &Reads,
) -> Result<Sandbox, Failure> {
    let site = match (site, &config.packages) {
        (None, _) => None,
        (Some(name), Some(dir)) if super::run::is_site_name(name) => Some(dir.join(name)),
        // A set this spawner cannot have: the server only names entries it stored.
        (Some(_), _) => {
            return Err(Failure {
                step: Step::MountSite,
                errno: nix::errno::Errno::ENOENT,
            })
        }
    };
    let plan = ChildPlan {
        rootfs: Some(config.rootfs.clone()),
        site,
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
        let _ = child::init_main(plan);
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
pub(crate) fn abort(
    sandbox: &Sandbox,
    cgroup: Option<Box<dyn RunCgroup>>,
    failure: Failure,
) -> Failure {
    sandbox.kill();
    sandbox.wait();
    if let Some(cg) = cgroup {
        let _ = cg.remove();
    }
    failure
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
            request.site.as_deref(),
        ) {
            Ok(warm::Started {
                init,
                pidfd,
                python,
            }) => {
                drop(ends);
                let sandbox = Sandbox::Warm {
                    pid: init,
                    pidfd,
                    python,
                };
                return Ok((sandbox, reads));
            }
            // A retiring or dead zygote: this run goes cold, with fresh pipes.
            Err(e) => tracing::warn!(error = %e, "warm start failed; running cold"),
        }
    }
    let (reads, ends) = prepare(code()?)?;
    let sandbox = start_cold(
        config,
        seccomp,
        limits,
        request.site.as_deref(),
        ends,
        &reads,
    )?;
    Ok((sandbox, reads))
}

/// Starts a sandbox whose harness finds a socket on fd 3 instead of a bundle (a session's,
/// or a ready one in the pool): the sandbox and our end of that socket.
pub(crate) fn start_with_socket(
    request: &RunRequest,
    config: &SpawnerConfig,
    seccomp: &SeccompProgram,
    warm: &WarmControls,
) -> Result<(Sandbox, Reads, OwnedFd), Failure> {
    let ours: RefCell<Option<OwnedFd>> = RefCell::new(None);
    // Asked again if a warm start fails: each attempt gets a fresh socket.
    let code = || -> Result<OwnedFd, Failure> {
        let (a, b) = step(
            Step::StoreCode,
            socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_CLOEXEC,
            ),
        )?;
        *ours.borrow_mut() = Some(a);
        Ok(b)
    };
    let (sandbox, reads) = start(request, config, seccomp, warm, &code)?;
    let control = ours.into_inner().expect("start made the socket");
    Ok((sandbox, reads, control))
}

/// A sandbox built ahead of its request (the pool): started, released into its cgroup,
/// its Python waiting on fd 3 (a socket) to learn what it is for. Used once, by one
/// request, or ended unused.
pub(crate) struct Ready {
    pub sandbox: Sandbox,
    pub outputs: Outputs,
    pub cgroup: Option<Box<dyn RunCgroup>>,
    /// The supervisor's end of the harness's fd 3.
    pub control: OwnedFd,
    /// The limits it was built under.
    pub limits: Limits,
}

impl Ready {
    /// Whether this sandbox can serve a request with `asked` limits: built alike, and
    /// with at least the CPU time the request may have (the harness lowers its own limit
    /// to the request's when claimed; nothing can raise it).
    pub fn fits(&self, asked: &Limits) -> bool {
        self.limits.built_alike(asked) && asked.cpu_seconds <= self.limits.cpu_seconds
    }

    /// What tells the waiting harness its `mode` ("run" or "session") and the limits that
    /// differ per request, which it applies to itself before anything of the request
    /// reaches it: the CPU time (a session's spans its life; lowering one's own limit
    /// needs no privilege, and no code of anyone's has run in the sandbox yet). The
    /// timeout is the supervisor's, counted from the hand-over.
    pub fn claim_message(&self, mode: &str, asked: &Limits) -> Vec<u8> {
        serde_json::json!({"mode": mode, "cpu_seconds": asked.cpu_seconds})
            .to_string()
            .into_bytes()
    }

    /// Ends a sandbox nobody used: kills it, waits for it, removes its cgroup.
    pub fn discard(self) {
        abort(
            &self.sandbox,
            self.cgroup,
            Failure {
                step: Step::ReleaseSandbox,
                errno: Errno::ECANCELED,
            },
        );
    }
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
            cg.add(sandbox.pid())?;
            if let Sandbox::Warm {
                python: Some(python),
                ..
            } = sandbox
            {
                cg.add(*python)?;
            }
            Ok(cg)
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
}
