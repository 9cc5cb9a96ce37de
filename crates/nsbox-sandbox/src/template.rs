//! Warm templates: the sandbox a zygote lives in (its own user, mount, PID and network namespaces over the read-only root filesystem), started by the spawner.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{chdir, execve, pipe2, read, write, Pid};

use super::child::place_fds;
use super::namespaces::{self, RUN_NAMESPACES};
use super::warm::Template;
use super::{caps, rootfs, supervisor, SpawnerConfig, HARNESS};
use crate::sys;

/// The zygote's program, run after the harness (which it reuses for every run).
pub const ZYGOTE: &str = include_str!("zygote.py");

/// A zygote has no use for a big /tmp; runs mount their own.
const TEMPLATE_TMP_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("creating the control socket: {0}")]
    Socket(#[source] Errno),
    #[error("creating the template's namespaces: {0}")]
    Clone(#[source] Errno),
    #[error("writing the template's id maps: {0}")]
    IdMaps(#[source] namespaces::IdMapError),
    #[error("releasing the template: {0}")]
    Release(#[source] Errno),
    #[error("watching the template: {0}")]
    Pidfd(#[source] Errno),
}

/// A running template, as the spawner sees it.
pub struct TemplateProcess {
    pub template: Template,
    /// The spawner's end of the zygote's control socket; supervisors send runs on it.
    pub control: OwnedFd,
    pub pid: Pid,
    pub ready: bool,
    pub started: Instant,
}

fn cstring(s: String) -> CString {
    CString::new(s).expect("no NUL in the zygote's program or environment")
}

/// Starts a template sandbox whose zygote warms `template` and then waits for runs.
pub fn launch(
    template: Template,
    config: &SpawnerConfig,
    library: &OwnedFd,
    max_forks: u32,
) -> Result<TemplateProcess, TemplateError> {
    let (control, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(TemplateError::Socket)?;
    let (release_read, release_write) = pipe2(OFlag::O_CLOEXEC).map_err(TemplateError::Socket)?;
    let program = cstring(format!("_NSBOX_ZYGOTE = True\n{HARNESS}\n{ZYGOTE}"));
    let argv = vec![
        cstring("/usr/bin/python3".into()),
        cstring("-I".into()),
        cstring("-B".into()),
        cstring("-c".into()),
        program,
        // Arguments rather than environment: a run's environment must be exactly a cold
        // run's, and /proc/1/environ would keep showing the zygote's.
        cstring(template.name().into()),
        cstring(max_forks.to_string()),
    ];
    let envp = supervisor::run_env(&config.limits, config.guard_rails);
    let plan = TemplatePlan {
        config,
        control: theirs.as_raw_fd(),
        library: library.as_raw_fd(),
        release_read: release_read.as_raw_fd(),
        release_write: release_write.as_raw_fd(),
        argv,
        envp,
    };
    let pid = match sys::clone_fork(RUN_NAMESPACES).map_err(TemplateError::Clone)? {
        None => template_main(&plan),
        Some(pid) => pid,
    };
    drop(theirs);
    drop(release_read);
    let started = (|| {
        config.ids.write(pid).map_err(TemplateError::IdMaps)?;
        super::cgroup::prefer_as_oom_victim(pid);
        write(&release_write, &[1]).map_err(TemplateError::Release)?;
        Ok(())
    })();
    if let Err(e) = started {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(e);
    }
    Ok(TemplateProcess {
        template,
        control,
        pid,
        ready: false,
        started: Instant::now(),
    })
}

struct TemplatePlan<'a> {
    config: &'a SpawnerConfig,
    control: RawFd,
    library: RawFd,
    release_read: RawFd,
    release_write: RawFd,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

/// The template's init (PID 1 of its namespace). Never returns.
fn template_main(plan: &TemplatePlan) -> ! {
    if let Err((step, errno)) = template_steps(plan) {
        // A bare line on the inherited stderr, not a `tracing` event: this is a clone of
        // the spawner in the template's new namespaces, doing only the sandbox steps (like
        // child.rs); the subscriber stays the spawner's.
        eprintln!("nsbox template: {step}: {errno}");
        sys::exit_now(127);
    }
    sys::exit_now(0)
}

fn template_steps(plan: &TemplatePlan) -> Result<(), (&'static str, Errno)> {
    let e = |step: &'static str| move |errno| (step, errno);
    let _ = nix::unistd::close(plan.release_write);
    let mut byte = [0u8; 1];
    if read(plan.release_read, &mut byte).map_err(e("wait for release"))? != 1 {
        return Err(("wait for release", Errno::EPIPE));
    }
    namespaces::become_root(plan.config.ids.maps_root()).map_err(e("become root"))?;
    // The template (and every run still in it) ends with the spawner.
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(e("set parent-death signal"))?;
    rootfs::enter(&plan.config.rootfs, TEMPLATE_TMP_BYTES, true)
        .map_err(|f| (f.step.name(), f.errno))?;
    namespaces::set_hostname().map_err(e("set hostname"))?;

    let Some(zygote) = sys::fork().map_err(e("fork the zygote"))? else {
        let failure = zygote_steps(plan);
        // Bare, like the template's init above: a fork on its way to exec Python.
        eprintln!("nsbox zygote: {failure:?}");
        sys::exit_now(127);
    };

    let devnull = open("/dev/null", OFlag::O_RDWR, Mode::empty()).map_err(e("init stdio"))?;
    place_fds(&[(devnull, 0), (devnull, 1)]).map_err(e("init stdio"))?;
    sys::close_fds_from(3).map_err(e("init stdio"))?;
    caps::drop_bounding().map_err(|_| ("init drops capabilities", Errno::EPERM))?;
    caps::drop_all().map_err(|_| ("init drops capabilities", Errno::EPERM))?;
    prctl::set_no_new_privs().map_err(e("set no_new_privs"))?;
    // Reap the zygote and every fork it leaves behind; once all are gone, so is the template.
    let mut zygote_alive = true;
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(status) => {
                if status.pid() == Some(zygote) {
                    zygote_alive = false;
                }
            }
            Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) if !zygote_alive => return Ok(()),
            Err(errno) => return Err(("reap", errno)),
        }
    }
}

/// The zygote: root of the template's user namespace keeping only CAP_SETUID, CAP_SETGID
/// and CAP_SETFCAP (to write each run's id maps; the kernel asks for CAP_SETFCAP to map
/// uid 0), then the warm interpreter. Returns only on
/// failure.
fn zygote_steps(plan: &TemplatePlan) -> (&'static str, Errno) {
    let run = || -> Result<(), (&'static str, Errno)> {
        let e = |step: &'static str| move |errno| (step, errno);
        caps::limit_bounding_to(&[
            ::caps::Capability::CAP_SETUID,
            ::caps::Capability::CAP_SETGID,
            ::caps::Capability::CAP_SETFCAP,
        ])
        .map_err(|_| ("limit capabilities", Errno::EPERM))?;
        let devnull = open("/dev/null", OFlag::O_RDWR, Mode::empty()).map_err(e("zygote stdio"))?;
        place_fds(&[
            (devnull, 0),
            (devnull, 1),
            (plan.control, 3),
            (plan.library, 4),
        ])
        .map_err(e("zygote stdio"))?;
        sys::close_fds_from(5).map_err(e("close descriptors"))?;
        chdir("/tmp").map_err(e("change to /tmp"))?;
        execve(&plan.argv[0], &plan.argv, &plan.envp).map_err(e("execute the zygote"))?;
        Ok(())
    };
    match run() {
        Ok(()) => ("execute the zygote", Errno::UnknownErrno),
        Err(f) => f,
    }
}
