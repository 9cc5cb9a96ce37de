//! Warm templates: the sandbox a zygote lives in (its own user, mount, PID and network namespaces over the read-only root filesystem), started by the spawner.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{chdir, execve, pipe2, read, write, Pid};

use super::child::{init_drops_caps, place_fds};
use super::config::SpawnerConfig;
use super::failure::{step, Failure, Step};
use super::namespaces::{self, RUN_NAMESPACES};
use super::run::Template;
use super::sandbox::{self, HARNESS};
use super::{caps, fdpass, rootfs};
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
}

/// A running template, as the spawner sees it.
pub struct TemplateProcess {
    pub template: Template,
    /// The spawner's end of the zygote's control socket; supervisors send runs on it.
    pub control: OwnedFd,
    /// The template's init (PID 1 of its namespaces), not the zygote.
    pub pid: Pid,
    pub ready: bool,
    /// A pidfd of the zygote, sent with its "ready": its pid in the template's namespace
    /// is not one the spawner can use.
    pub zygote: Option<OwnedFd>,
    /// The ping in flight, if any.
    ping: Option<Ping>,
    /// When the last ping was answered (or the zygote said it is ready).
    answered: Instant,
    /// When it was started: a zygote that becomes ready replaces those of its template
    /// started before it, never a later one still warming up.
    pub launched: Instant,
}

/// How often the spawner asks a ready zygote whether it still takes runs, while runs come.
pub const PING_INTERVAL: Duration = Duration::from_millis(200);
/// How long after a run arrives the zygotes are pinged. An idle server pings nothing (no
/// periodic work); the first run after a pause makes a ping due at once, so a zygote that
/// stalled meanwhile is found within [`PING_DEADLINE`], not after the hand-off's 10 s.
pub const PING_WHILE_ACTIVE: Duration = Duration::from_secs(2);
/// How long a ping may go unanswered while the zygote neither uses CPU nor waits for one. A
/// zygote busy forking runs queued before the ping does one or the other; a stopped,
/// frozen or blocked one does neither, and every run handed to it would wait for the
/// hand-off's 10 s timeout.
pub const PING_DEADLINE: Duration = Duration::from_millis(300);
/// How often a zygote past the ping's deadline but busy is looked at again.
const BUSY_RECHECK: Duration = Duration::from_millis(50);
/// How long a ping may go unanswered whatever the zygote is doing.
pub const BUSY_DEADLINE: Duration = Duration::from_secs(3);

/// A ping sent to a zygote and the zygote's CPU time then (clock ticks), to tell a busy
/// zygote from a stalled one.
struct Ping {
    sent: Instant,
    cpu_ticks: Option<u64>,
}

/// What [`TemplateProcess::check`] found.
pub enum Liveness {
    Alive,
    /// The zygote left a ping unanswered this long.
    Stalled(Duration),
}

impl TemplateProcess {
    /// The zygote said it is ready, with a pidfd of itself.
    pub fn became_ready(&mut self, zygote: Option<OwnedFd>) {
        self.ready = true;
        self.zygote = zygote;
        self.answered = Instant::now();
    }

    /// The zygote answered a ping.
    pub fn answered(&mut self) {
        self.ping = None;
        self.answered = Instant::now();
    }

    /// Pings a ready zygote when a ping is due (only while runs come: `active`), and says
    /// whether one in flight has gone unanswered too long. A ping that cannot even be
    /// queued (the zygote's queue is full of runs it does not take) counts as sent.
    pub fn check(&mut self, active: bool) -> Liveness {
        if !self.ready {
            return Liveness::Alive;
        }
        match &self.ping {
            Some(ping) => {
                let waited = ping.sent.elapsed();
                let (ticks, state) = self.zygote_stat().unzip();
                // Busy: it used CPU since the ping, or waits for a CPU to run on.
                let worked = state == Some('R')
                    || matches!((ping.cpu_ticks, ticks), (Some(then), Some(now)) if now > then);
                if waited >= BUSY_DEADLINE || (waited >= PING_DEADLINE && !worked) {
                    return Liveness::Stalled(waited);
                }
            }
            None if active && self.answered.elapsed() >= PING_INTERVAL => {
                let _ = fdpass::try_send(self.control.as_raw_fd(), b"ping", &[]);
                self.ping = Some(Ping {
                    sent: Instant::now(),
                    cpu_ticks: self.zygote_stat().map(|(ticks, _)| ticks),
                });
            }
            None => {}
        }
        Liveness::Alive
    }

    /// How long until [`TemplateProcess::check`] has something to do.
    pub fn next_check(&self, active: bool) -> Option<Duration> {
        if !self.ready || (!active && self.ping.is_none()) {
            return None;
        }
        Some(match &self.ping {
            // Past the deadline, a busy zygote is looked at again now and then, not in a
            // loop.
            Some(ping) => PING_DEADLINE
                .checked_sub(ping.sent.elapsed())
                .unwrap_or(BUSY_RECHECK),
            None => PING_INTERVAL.saturating_sub(self.answered.elapsed()),
        })
    }

    /// Kills the zygote (not the template's init, whose namespace holds the zygote's runs
    /// in flight: they go on). The runs queued on its control socket go with it: their
    /// supervisors see the hand-off end at once and start them cold.
    pub fn kill_zygote(&self) {
        if let Some(zygote) = &self.zygote {
            let _ = sys::pidfd_kill(zygote);
        }
    }

    /// The zygote's CPU time so far (user and system, in clock ticks) and its state letter.
    fn zygote_stat(&self) -> Option<(u64, char)> {
        let pid = sys::pidfd_pid(self.zygote.as_ref()?).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command name (which may hold spaces), field 3 is the state; utime and
        // stime are fields 14 and 15.
        let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
        let state = rest.next()?.chars().next()?;
        let mut times = rest.skip(10);
        let utime: u64 = times.next()?.parse().ok()?;
        let stime: u64 = times.next()?.parse().ok()?;
        Some((utime + stime, state))
    }
}

fn cstring(s: String) -> CString {
    CString::new(s).expect("no NUL in the zygote's program or environment")
}

/// Starts a template sandbox whose zygote warms `template` and then waits for runs. With
/// `grows_ml` (`template` is the scientific one), that zygote forks the ml template's once
/// warm, in the same sandbox: the two share the scientific warm-up's memory. Returns the
/// templates started, each with its control socket.
pub fn launch(
    template: Template,
    config: &SpawnerConfig,
    library: &OwnedFd,
    max_forks: u32,
    grows_ml: bool,
) -> Result<Vec<TemplateProcess>, TemplateError> {
    let seqpacket = || {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(TemplateError::Socket)
    };
    let (control, theirs) = seqpacket()?;
    let grown = grows_ml.then(seqpacket).transpose()?;
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
        cstring(u8::from(config.warm.as_ref().is_some_and(|w| w.huge_pages)).to_string()),
        cstring(u8::from(config.warm.as_ref().is_some_and(|w| w.nested_runs)).to_string()),
        cstring(u8::from(grown.is_some()).to_string()),
    ];
    let envp = sandbox::run_env(&config.limits, config.guard_rails);
    let plan = TemplatePlan {
        config,
        control: theirs.as_raw_fd(),
        grown_control: grown.as_ref().map(|(_, theirs)| theirs.as_raw_fd()),
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
    let grown = grown.map(|(ours, _)| ours);
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
    let process = |template, control| TemplateProcess {
        template,
        control,
        pid,
        ready: false,
        zygote: None,
        ping: None,
        answered: Instant::now(),
        launched: Instant::now(),
    };
    let mut started = vec![process(template, control)];
    started.extend(grown.map(|control| process(Template::Ml, control)));
    Ok(started)
}

struct TemplatePlan<'a> {
    config: &'a SpawnerConfig,
    control: RawFd,
    /// The control socket of the ml zygote this one grows, if it does (its fd 5).
    grown_control: Option<RawFd>,
    library: RawFd,
    release_read: RawFd,
    release_write: RawFd,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

/// The template's init (PID 1 of its namespace). Never returns.
fn template_main(plan: &TemplatePlan) -> ! {
    if let Err(Failure { step, errno }) = template_steps(plan) {
        // A bare line on the inherited stderr, not a `tracing` event: this is a clone of
        // the spawner in the template's new namespaces, doing only the sandbox steps (like
        // child.rs); the subscriber stays the spawner's.
        eprintln!("nsbox template: {step}: {errno}");
        sys::exit_now(127);
    }
    sys::exit_now(0)
}

fn template_steps(plan: &TemplatePlan) -> Result<(), Failure> {
    let _ = nix::unistd::close(plan.release_write);
    let mut byte = [0u8; 1];
    if step(Step::WaitRelease, read(plan.release_read, &mut byte))? != 1 {
        return Err(Failure {
            step: Step::WaitRelease,
            errno: Errno::EPIPE,
        });
    }
    step(
        Step::BecomeRoot,
        namespaces::become_root(plan.config.ids.maps_root()),
    )?;
    // The template (and every run still in it) ends with the spawner.
    step(
        Step::ParentDeathSignal,
        prctl::set_pdeathsig(Signal::SIGKILL),
    )?;
    rootfs::enter(
        &plan.config.rootfs,
        TEMPLATE_TMP_BYTES,
        true,
        None,
        plan.config.packages.as_deref(),
    )?;
    step(Step::Hostname, namespaces::set_hostname())?;

    let Some(zygote) = step(Step::ForkZygote, sys::fork())? else {
        let failure = zygote_steps(plan);
        // Bare, like the template's init above: a fork on its way to exec Python.
        eprintln!("nsbox zygote: {failure:?}");
        sys::exit_now(127);
    };

    let devnull = step(
        Step::InitStdio,
        open("/dev/null", OFlag::O_RDWR, Mode::empty()),
    )?;
    step(Step::InitStdio, place_fds(&[(devnull, 0), (devnull, 1)]))?;
    step(Step::InitStdio, sys::close_fds_from(3))?;
    init_drops_caps()?;
    step(Step::NoNewPrivs, prctl::set_no_new_privs())?;
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
            Err(errno) => {
                return Err(Failure {
                    step: Step::Reap,
                    errno,
                })
            }
        }
    }
}

/// The zygote: root of the template's user namespace keeping only CAP_SETUID, CAP_SETGID
/// and CAP_SETFCAP (to write each run's id maps; the kernel asks for CAP_SETFCAP to map
/// uid 0), then the warm interpreter. Returns only on
/// failure.
fn zygote_steps(plan: &TemplatePlan) -> Failure {
    let run = || -> Result<(), Failure> {
        step(
            Step::LimitCaps,
            caps::limit_bounding_to(&[
                ::caps::Capability::CAP_SETUID,
                ::caps::Capability::CAP_SETGID,
                ::caps::Capability::CAP_SETFCAP,
            ])
            .map_err(|_| Errno::EPERM),
        )?;
        let devnull = step(
            Step::ZygoteStdio,
            open("/dev/null", OFlag::O_RDWR, Mode::empty()),
        )?;
        let mut fds = vec![
            (devnull, 0),
            (devnull, 1),
            (plan.control, 3),
            (plan.library, 4),
        ];
        fds.extend(plan.grown_control.map(|fd| (fd, 5)));
        step(Step::ZygoteStdio, place_fds(&fds))?;
        let after = 1 + fds.iter().map(|(_, target)| *target).max().unwrap_or(4);
        step(Step::CloseFds, sys::close_fds_from(after))?;
        step(Step::WorkDir, chdir("/tmp"))?;
        step(
            Step::ExecZygote,
            execve(&plan.argv[0], &plan.argv, &plan.envp),
        )?;
        Ok(())
    };
    match run() {
        Ok(()) => Failure {
            step: Step::ExecZygote,
            errno: Errno::UnknownErrno,
        },
        Err(f) => f,
    }
}
