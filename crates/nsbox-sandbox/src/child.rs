//! What runs inside a run's namespaces: the init (PID 1) that builds the sandbox, and the Python process it starts as `nobody`.
//!
//! Everything here follows a plan built by the supervisor before `clone`, walks a linear
//! list of steps, and reports a failure as a fixed-size (step, errno) record on a pipe.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, FdFlag, OFlag};
use nix::sys::prctl;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, dup2, execve, read, write, Pid};

use super::failure::{step, Failure, Step};
use super::run::Limits;
use super::seccomp::SeccompProgram;
use super::{caps, namespaces, rootfs};
use crate::sys;

/// A fixed-size record on the report pipe, so a write from a dying process is atomic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    Failed {
        step: u32,
        errno: i32,
    },
    /// The Python process's raw wait status, sent by init.
    PythonStatus(i32),
}

pub const RECORD_LEN: usize = 12;

impl Record {
    pub fn encode(self) -> [u8; RECORD_LEN] {
        let (kind, a, b) = match self {
            Record::Failed { step, errno } => (1u32, step, errno),
            Record::PythonStatus(status) => (2u32, 0, status),
        };
        let mut out = [0u8; RECORD_LEN];
        out[..4].copy_from_slice(&kind.to_le_bytes());
        out[4..8].copy_from_slice(&a.to_le_bytes());
        out[8..].copy_from_slice(&b.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        if bytes.len() != RECORD_LEN {
            return None;
        }
        match word(0) {
            1 => Some(Record::Failed {
                step: word(4),
                errno: word(8) as i32,
            }),
            2 => Some(Record::PythonStatus(word(8) as i32)),
            _ => None,
        }
    }
}

/// The records in what was read of a report pipe (a record cut by the end is left out).
fn records(data: &[u8]) -> impl Iterator<Item = Record> + '_ {
    data.chunks(RECORD_LEN).filter_map(Record::decode)
}

/// The first set-up failure reported, as (step, errno).
pub fn reported_failure(data: &[u8]) -> Option<(u32, i32)> {
    records(data).find_map(|r| match r {
        Record::Failed { step, errno } => Some((step, errno)),
        _ => None,
    })
}

/// Python's wait status, once init reported it.
pub fn reported_python_status(data: &[u8]) -> Option<i32> {
    records(data).find_map(|r| match r {
        Record::PythonStatus(status) => Some(status),
        _ => None,
    })
}

/// How the run's Python process starts once the sandbox is built.
pub enum Entry {
    /// Cold path: execute a fresh interpreter with the harness.
    Exec {
        argv: Vec<CString>,
        envp: Vec<CString>,
    },
    /// Warm path: return into the already-warm interpreter (a clone of the zygote) that called us.
    ReturnToCaller,
}

/// Everything the child side needs, prepared before `clone`.
pub struct ChildPlan {
    /// The root filesystem to pivot into, or `None` when the caller already runs inside it
    /// (a clone of a zygote).
    pub rootfs: Option<PathBuf>,
    /// The run's cached package set, as a path this process sees (a host path cold, one
    /// under the template's packages view warm).
    pub site: Option<PathBuf>,
    pub limits: Limits,
    /// Without cgroups, memory falls back to RLIMIT_DATA.
    pub memory_rlimit: bool,
    /// Whether uid 0 is mapped inside (not in a single-id namespace).
    pub maps_root: bool,
    pub seccomp: SeccompProgram,
    pub entry: Entry,
    /// Whether init dies with its parent: a cold run's parent is its supervisor; a warm
    /// run's is the zygote, whose retirement or death must spare the runs it started
    /// (their supervisors still end them).
    pub die_with_parent: bool,
    pub release_read: OwnedFd,
    /// The supervisor's end of the release pipe, if this process inherited it (cold path).
    pub release_write: Option<RawFd>,
    pub report_write: OwnedFd,
    pub stdout_write: OwnedFd,
    pub stderr_write: OwnedFd,
    pub plots_write: OwnedFd,
    pub code: OwnedFd,
}

impl ChildPlan {
    /// The descriptors the plan holds, which a process cloned for it must keep open.
    pub fn descriptors(&self) -> Vec<RawFd> {
        let mut fds = vec![
            self.release_read.as_raw_fd(),
            self.report_write.as_raw_fd(),
            self.stdout_write.as_raw_fd(),
            self.stderr_write.as_raw_fd(),
            self.plots_write.as_raw_fd(),
            self.code.as_raw_fd(),
        ];
        fds.extend(self.release_write);
        fds
    }
}

/// Descriptor numbers the harness expects.
pub const CODE_FD: RawFd = 3;
pub const PLOTS_FD: RawFd = 4;
const REPORT_FD: RawFd = 5;
/// Sources are first copied above this, so moving them to 0..=5 never clobbers another.
const SCRATCH_FD: RawFd = 64;

/// Writes a record; a failure can happen before or after the pipe moved to REPORT_FD, so
/// the fixed number is the fallback.
fn report(fd: RawFd, record: Record) {
    if write(sys::borrow_fd(fd), &record.encode()).is_err() && fd != REPORT_FD {
        let _ = write(sys::borrow_fd(REPORT_FD), &record.encode());
    }
}

/// Entry point of the run's init (PID 1 of the new PID namespace). Returns only in the
/// run's Python process when the plan says [`Entry::ReturnToCaller`], with the plan: that
/// process is a fork of a warm interpreter, which does the interpreter's after-fork work
/// and then calls [`python_main_warm`]. Every other process ends inside.
pub fn init_main(plan: ChildPlan) -> ChildPlan {
    let report_fd = plan.report_write.as_raw_fd();
    match init_steps(&plan) {
        Ok(Role::Python) => plan,
        Ok(Role::Init(status)) => {
            // By now init has moved the report pipe to its fixed number.
            report(REPORT_FD, Record::PythonStatus(status));
            sys::exit_now(0)
        }
        Err(f) => fail(report_fd, f),
    }
}

/// The warm run's Python process, once the interpreter's after-fork work is done: the same
/// steps as a cold run's Python, ending in a return to the interpreter (run the code, then
/// exit). A step that fails is reported and ends the process.
pub fn python_main_warm(plan: ChildPlan) {
    python_main(&plan);
    // The plan's descriptors were moved to fixed numbers and the originals closed;
    // dropping them now would close whatever holds those numbers today.
    std::mem::forget(plan);
}

/// Which process came back from the init steps.
enum Role {
    /// The run's init, with Python's wait status.
    Init(i32),
    /// The run's Python process, ready to run the code in this interpreter.
    Python,
}

/// The warm run's Python process in the nested shape (forked before the run's init was
/// exec'd, see `sys::clone_nested`): it builds the sandbox itself, with the steps a
/// cloned init takes, then returns to the warm interpreter like [`init_main`]'s Python.
pub fn python_builds_main(plan: ChildPlan) -> ChildPlan {
    let report_fd = plan.report_write.as_raw_fd();
    // Python is already in the session its init leads.
    match build_steps(&plan, false) {
        Ok(()) => plan,
        Err(f) => fail(report_fd, f),
    }
}

fn init_steps(plan: &ChildPlan) -> Result<Role, Failure> {
    build_steps(plan, true)?;
    init_forks_and_reaps(plan)
}

/// From the release to a sandbox ready for Python: ids, session (`new_session`: the init
/// that will fork Python starts it), mounts, names, network.
fn build_steps(plan: &ChildPlan, new_session: bool) -> Result<(), Failure> {
    // Our copy of the write end would keep the pipe open if the supervisor died.
    if let Some(fd) = plan.release_write {
        let _ = nix::unistd::close(fd);
    }
    let mut byte = [0u8; 1];
    if step(
        Step::WaitRelease,
        read(plan.release_read.as_raw_fd(), &mut byte),
    )? != 1
    {
        // The supervisor went away before releasing us.
        sys::exit_now(1);
    }
    step(Step::BecomeRoot, namespaces::become_root(plan.maps_root))?;
    // A session and process group of the run's own: kill(0, ...) or setpriority on the
    // process group must not reach other runs (they share a host uid).
    if new_session {
        step(Step::BecomeRoot, nix::unistd::setsid().map(drop))?;
    }
    if plan.die_with_parent {
        // Set after the uid change, which clears it.
        step(
            Step::ParentDeathSignal,
            prctl::set_pdeathsig(Signal::SIGKILL),
        )?;
    }
    step(Step::CgroupNamespace, namespaces::enter_cgroup_namespace())?;
    match &plan.rootfs {
        Some(root) => rootfs::enter(
            root,
            plan.limits.tmp_bytes,
            false,
            plan.site.as_deref(),
            None,
        )?,
        None => rootfs::refresh(plan.limits.tmp_bytes, plan.site.as_deref())?,
    }
    step(Step::Hostname, namespaces::set_hostname())?;
    step(Step::Loopback, namespaces::loopback_up())?;
    Ok(())
}

fn init_forks_and_reaps(plan: &ChildPlan) -> Result<Role, Failure> {
    let Some(python) = step(Step::StartPython, sys::fork())? else {
        return match plan.entry {
            // A warm interpreter's own after-fork work comes first, in this process rather
            // than in init: init then runs no Python at all, so it copies none of the
            // interpreter's pages, and that work still sees the zygote's descriptors.
            Entry::ReturnToCaller => Ok(Role::Python),
            Entry::Exec { .. } => {
                python_main(plan);
                Ok(Role::Python)
            }
        };
    };

    // Init keeps only the report pipe; holding the output pipes would hide EOF from the
    // supervisor, and holding the server's stderr (or, warm, a zygote's descriptors) is
    // no business of a sandbox.
    step(Step::InitStdio, sys::close_fds_except(&plan.descriptors()))?;
    let devnull = step(
        Step::InitStdio,
        open("/dev/null", OFlag::O_RDWR, Mode::empty()),
    )?;
    for fd in 0..=2 {
        step(Step::InitStdio, dup2(devnull, fd))?;
    }
    step(
        Step::InitStdio,
        dup2(plan.report_write.as_raw_fd(), REPORT_FD),
    )?;
    step(Step::InitStdio, sys::close_fds_from(REPORT_FD + 1))?;
    init_drops_caps()?;
    step(Step::InitDropCaps, prctl::set_no_new_privs())?;
    // Init runs without the seccomp filter. In a single-id namespace it has the same uid as
    // the run's code, and a dumpable init would let that code write to /proc/1/mem and run
    // unfiltered system calls through it; non-dumpable, it needs CAP_SYS_PTRACE, which the
    // code never has. (From root the uid change already made it so; this says it always.)
    step(Step::InitDropCaps, prctl::set_dumpable(false))?;

    // Reap everything (orphans are re-parented to us) until Python itself is done; leaving
    // then makes the kernel kill whatever else is still in the namespace.
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == python => return Ok(Role::Init(code << 8)),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == python => {
                return Ok(Role::Init(sig as i32))
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(errno) => {
                return Err(Failure {
                    step: Step::StartPython,
                    errno,
                })
            }
        }
    }
}

/// An init (a run's or a template's) keeps no capability, in any set: it only reaps.
pub fn init_drops_caps() -> Result<(), Failure> {
    step(
        Step::InitDropCaps,
        caps::drop_bounding().map_err(|_| Errno::EPERM),
    )?;
    step(
        Step::InitDropCaps,
        caps::drop_all().map_err(|_| Errno::EPERM),
    )
}

/// Moves each `(source, target)` descriptor to its target number. Sources are first copied
/// above every target, so moving one never clobbers another that is still to be moved.
pub fn place_fds(pairs: &[(RawFd, RawFd)]) -> Result<(), Errno> {
    let mut moved = Vec::with_capacity(pairs.len());
    for &(fd, target) in pairs {
        moved.push((fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(SCRATCH_FD))?, target));
    }
    for (fd, target) in moved {
        dup2(fd, target)?;
    }
    Ok(())
}

/// Sets a limit, never above the hard limit the process already has: without
/// CAP_SYS_RESOURCE in the host's user namespace (a rootless server) raising one fails,
/// and a lower limit set by the operator is the stricter one anyway.
fn limit(resource: Resource, soft: u64, hard: u64) -> Result<(), Errno> {
    let (_, current_hard) = getrlimit(resource)?;
    setrlimit(resource, soft.min(current_hard), hard.min(current_hard))
}

fn set_rlimits(limits: &Limits, memory_rlimit: bool) -> Result<(), Errno> {
    limit(
        Resource::RLIMIT_CPU,
        limits.cpu_seconds,
        limits.cpu_seconds + 1,
    )?;
    limit(
        Resource::RLIMIT_NPROC,
        limits.max_processes,
        limits.max_processes,
    )?;
    limit(
        Resource::RLIMIT_FSIZE,
        limits.file_size_bytes,
        limits.file_size_bytes,
    )?;
    limit(
        Resource::RLIMIT_NOFILE,
        limits.open_files,
        limits.open_files,
    )?;
    limit(Resource::RLIMIT_CORE, 0, 0)?;
    if memory_rlimit {
        // RLIMIT_AS would count the address space OpenBLAS reserves but never touches;
        // RLIMIT_DATA counts private writable memory, which is what a memory bomb grows.
        limit(
            Resource::RLIMIT_DATA,
            limits.memory_bytes,
            limits.memory_bytes,
        )?;
    }
    Ok(())
}

/// The Python process: drops to nobody, loses every privilege, installs seccomp last and
/// executes the harness, or returns to the warm interpreter that forked it. A step that
/// fails is reported and ends the process.
fn python_main(plan: &ChildPlan) {
    let report_fd = plan.report_write.as_raw_fd();
    if let Err(failure) = python_steps(plan) {
        fail(report_fd, failure)
    }
}

/// Reports which step failed and ends the process.
fn fail(report_fd: RawFd, failure: Failure) -> ! {
    report(
        report_fd,
        Record::Failed {
            step: failure.step as u32,
            errno: failure.errno as i32,
        },
    );
    sys::exit_now(127)
}

fn python_steps(plan: &ChildPlan) -> Result<(), Failure> {
    step(Step::Rlimits, set_rlimits(&plan.limits, plan.memory_rlimit))?;
    step(
        Step::DropBoundingCaps,
        caps::drop_bounding().map_err(|_| Errno::EPERM),
    )?;
    step(
        Step::BecomeNobody,
        namespaces::become_nobody(plan.maps_root),
    )?;
    step(Step::DropCaps, caps::drop_all().map_err(|_| Errno::EPERM))?;
    step(Step::NoNewPrivs, prctl::set_no_new_privs())?;

    let devnull = step(
        Step::Stdio,
        open("/dev/null", OFlag::O_RDONLY, Mode::empty()),
    )?;
    let sources = [
        (devnull, 0),
        (plan.stdout_write.as_raw_fd(), 1),
        (plan.stderr_write.as_raw_fd(), 2),
        (plan.code.as_raw_fd(), CODE_FD),
        (plan.plots_write.as_raw_fd(), PLOTS_FD),
        (plan.report_write.as_raw_fd(), REPORT_FD),
    ];
    step(Step::Stdio, place_fds(&sources))?;
    // The report pipe must close on exec, so the supervisor sees EOF once Python started.
    step(
        Step::Stdio,
        fcntl(REPORT_FD, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map(drop),
    )?;
    step(Step::CloseFds, sys::close_fds_from(REPORT_FD + 1))?;
    // The working directory is made by the run's own user, on the run's own /tmp, so the
    // code may write there and input files land there.
    match nix::unistd::mkdir(super::run::WORKDIR, Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(errno) => {
            return Err(Failure {
                step: Step::WorkDir,
                errno,
            })
        }
    }
    step(Step::WorkDir, chdir(super::run::WORKDIR))?;
    step(
        Step::Seccomp,
        plan.seccomp.apply().map_err(|_| Errno::EINVAL),
    )?;
    match &plan.entry {
        Entry::Exec { argv, envp } => step(Step::Exec, execve(&argv[0], argv, envp)).map(drop),
        Entry::ReturnToCaller => {
            // Without an exec, close-on-exec never fires: the report pipe must not stay
            // open for the user's code.
            step(Step::Exec, nix::unistd::close(REPORT_FD))?;
            // The uid change left the process non-dumpable, which an exec would have reset;
            // without it /proc/self belongs to the run's root and a warm run could not
            // read its own /proc/self/environ as a cold one can.
            step(Step::Exec, prctl::set_dumpable(true))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for r in [
            Record::Failed {
                step: Step::MountProc as u32,
                errno: 13,
            },
            Record::PythonStatus(256),
        ] {
            assert_eq!(Record::decode(&r.encode()), Some(r));
        }
        assert_eq!(Record::decode(&[0u8; 12]), None);
        assert_eq!(Record::decode(&[1u8; 3]), None);
    }
}
