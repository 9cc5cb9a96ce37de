//! nsbox as PID 1 of its container: a reaper whose one own child is nsbox itself.
//!
//! PID 1 inherits every orphan of its PID namespace (a spawner's supervisors and template
//! inits when the spawner dies, their children) and must reap them, or their zombies
//! accumulate. Reaping with `waitpid(-1)` inside the server would take exit statuses that
//! the server's own code waits for (its spawner, the kernel probes it forks), so PID 1
//! does nothing else: it forks before any thread exists, the child goes on as nsbox, and
//! PID 1 reaps whatever it is given, forwards the signals a container engine sends, and
//! exits with nsbox's status (the kernel then ends everything left in the namespace).

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::sys;

/// Set in nsbox's process when PID 1 forked it: PID 1 is then its reaper.
static UNDER_REAPER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// PID 1 of this namespace when it is nsbox's reaper (see [`become_init_if_pid1`]): on
/// cgroup v2 it shares the container's cgroup with nsbox, so it moves where nsbox moves.
pub fn reaper() -> Option<Pid> {
    UNDER_REAPER
        .load(std::sync::atomic::Ordering::Relaxed)
        .then(|| Pid::from_raw(1))
}

/// Signals PID 1 passes on to nsbox: what engines and terminals send to stop or nudge it.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// When this process is PID 1, forks: returns in the child, which goes on as nsbox, while
/// this process stays PID 1 until that child exits, then exits with its status. Returns at
/// once otherwise. Call it first thing in `main`, while the process is single-threaded.
pub fn become_init_if_pid1() {
    if nix::unistd::getpid().as_raw() != 1 {
        return;
    }
    let mut waited = SigSet::empty();
    waited.add(Signal::SIGCHLD);
    for s in FORWARDED {
        waited.add(s);
    }
    // Blocked before the fork, so a signal that arrives before PID 1 waits is kept pending
    // rather than lost (PID 1 ignores a signal it has no handler for).
    let mut before = SigSet::empty();
    if nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&waited), Some(&mut before))
        .is_err()
    {
        return;
    }
    let child = match sys::fork() {
        Ok(Some(child)) => child,
        Ok(None) => {
            UNDER_REAPER.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&before), None);
            return;
        }
        Err(e) => {
            // Serving without a reaper beats not serving: zombies only cost pids.
            eprintln!(
                "nsbox: as PID 1, forking the server failed ({e}); orphans will not be reaped"
            );
            let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&before), None);
            return;
        }
    };
    sys::exit_now(reap_until_exit(child, &waited));
}

/// PID 1's loop: reaps every child that ended, passes the forwarded signals on to `nsbox`,
/// and returns nsbox's exit code (128 + the signal for a signal, as a shell reports it).
fn reap_until_exit(nsbox: Pid, waited: &SigSet) -> i32 {
    loop {
        match waited.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(code) = reap(nsbox) {
                    return code;
                }
            }
            Ok(signal) => {
                let _ = kill(nsbox, signal);
            }
            Err(_) => {}
        }
    }
}

/// Reaps every child that has ended; nsbox's exit code once it is among them.
fn reap(nsbox: Pid) -> Option<i32> {
    let mut code = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, status)) if pid == nsbox => code = Some(status),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == nsbox => {
                code = Some(128 + signal as i32)
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return code,
            Ok(_) => {}
        }
    }
}
