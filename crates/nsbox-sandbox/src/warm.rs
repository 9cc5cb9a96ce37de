//! The warm path: handing a run to a zygote (a long-lived interpreter that has imported the libraries) and, inside the zygote's fork, entering the run's sandbox through the same steps as the cold path.
//!
//! ```text
//! supervisor --(run socket, over the template's control socket)--> zygote --os.fork--> outer
//! outer: nsbox_enter_run(): clone(NEWUSER|NEWNS|NEWPID|...) -> init (same code as cold) -> python
//! ```
//! The zygote's fork ("outer") calls [`nsbox_enter_run`] from this crate built as a shared
//! library, so the isolation steps exist once, in Rust, for both paths. The run's Python
//! process returns from that call into the warm interpreter with every step done.

use std::ffi::c_int;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    UnixCredentials,
};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::child::{self, ChildPlan, Entry};
use super::namespaces::{self, RUN_NAMESPACES};
use super::seccomp::{self, SeccompProgram};
use super::Limits;
use crate::sys;

/// Which warm interpreter a run forks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// The standard library only: small and quick to fork.
    Base,
    /// numpy, pandas, scipy, matplotlib and seaborn imported and exercised, with pandas'
    /// Excel and Parquet engines.
    Scientific,
    /// The scientific template plus scikit-learn and statsmodels.
    Ml,
}

impl Template {
    pub const ALL: [Template; 3] = [Template::Base, Template::Scientific, Template::Ml];

    pub fn name(self) -> &'static str {
        match self {
            Template::Base => "base",
            Template::Scientific => "scientific",
            Template::Ml => "ml",
        }
    }
}

/// Top-level modules that only the scientific (and ml) template has warm, and the
/// distribution names a request's `libraries` may give for them.
const SCIENTIFIC: [&str; 12] = [
    "numpy",
    "pandas",
    "scipy",
    "matplotlib",
    "seaborn",
    "PIL",
    "pillow",
    "dateutil",
    "python-dateutil",
    "pytz",
    "openpyxl",
    "fastparquet",
];

/// Top-level modules (and distribution names) that only the ml template has warm.
const ML: [&str; 6] = [
    "sklearn",
    "scikit-learn",
    "statsmodels",
    "patsy",
    "joblib",
    "threadpoolctl",
];

/// Picks the template from the modules the code imports and the `libraries` it asked for.
pub fn template_for(imported: &[String], libraries: &[String]) -> Template {
    // Distribution names compare as PEP 503 does: `Scikit_Learn` is `scikit-learn`.
    let wants = |list: &[&str]| {
        imported.iter().chain(libraries).any(|m| {
            let top = m.split('.').next().unwrap_or("").replace('_', "-");
            list.iter().any(|s| s.eq_ignore_ascii_case(&top))
        })
    };
    if wants(&ML) {
        Template::Ml
    } else if wants(&SCIENTIFIC) {
        Template::Scientific
    } else {
        Template::Base
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("creating the run socket: {0}")]
    Socket(#[source] Errno),
    #[error("handing the run to the zygote: {0}")]
    Handoff(#[source] Errno),
    #[error("the zygote did not take the run")]
    NotTaken,
    #[error("finding the run's init: {0}")]
    FindInit(String),
    #[error("reading the warm plan: {0}")]
    Plan(String),
    #[error("creating the run's namespaces: {0}")]
    Clone(#[source] Errno),
    #[error("writing the run's id maps: {0}")]
    IdMaps(#[source] namespaces::IdMapError),
    #[error("compiling the seccomp policy: {0}")]
    Seccomp(#[from] seccomp::SeccompError),
}

/// What a zygote's fork needs besides the descriptors.
#[derive(Debug, Serialize, Deserialize)]
struct WarmPlan {
    limits: Limits,
    memory_rlimit: bool,
    /// Whether the template maps uid 0 (see [`namespaces::IdMapping::maps_root`]).
    maps_root: bool,
}

/// The descriptors a run's processes write to or read from, in the order they travel.
pub struct RunEnds {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub plots: OwnedFd,
    pub report: OwnedFd,
    pub code: OwnedFd,
    pub release: OwnedFd,
}

const RUN_ENDS: usize = 6;

/// Supervisor side: gives the run to the zygote behind `control` and returns the run's
/// init (host pid and pidfd), which then waits for the supervisor's release like a cold one.
/// The caller drops its copies of `ends` afterwards, so EOF still means the run is over.
pub fn start(
    control: RawFd,
    ends: &RunEnds,
    limits: &Limits,
    memory_rlimit: bool,
    maps_root: bool,
) -> Result<(Pid, OwnedFd), WarmError> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(WarmError::Socket)?;
    setsockopt(&ours, sockopt::PassCred, &true).map_err(WarmError::Socket)?;
    // A zygote that took the run answers within milliseconds; never wait forever on one.
    let patience = nix::sys::time::TimeVal::new(10, 0);
    setsockopt(&ours, sockopt::ReceiveTimeout, &patience).map_err(WarmError::Socket)?;
    sendmsg::<()>(
        control,
        &[IoSlice::new(b"run")],
        &[ControlMessage::ScmRights(&[theirs.as_raw_fd()])],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(WarmError::Handoff)?;
    drop(theirs);
    let plan = serde_json::to_vec(&WarmPlan {
        limits: limits.clone(),
        memory_rlimit,
        maps_root,
    })
    .map_err(|e| WarmError::Plan(e.to_string()))?;
    let fds = [
        ends.stdout.as_raw_fd(),
        ends.stderr.as_raw_fd(),
        ends.plots.as_raw_fd(),
        ends.report.as_raw_fd(),
        ends.code.as_raw_fd(),
        ends.release.as_raw_fd(),
    ];
    sendmsg::<()>(
        ours.as_raw_fd(),
        &[IoSlice::new(&plan)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(WarmError::Handoff)?;

    // The zygote's fork answers with its own pid as credentials (the kernel translates it
    // into our PID namespace); the run's init is its only child.
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(UnixCredentials);
    let msg = recvmsg::<()>(
        ours.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(WarmError::Handoff)?;
    let outer = msg
        .cmsgs()
        .map_err(WarmError::Handoff)?
        .find_map(|c| match c {
            ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
            _ => None,
        })
        .filter(|_| msg.bytes == 1)
        .ok_or(WarmError::NotTaken)?;
    let children = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
        .map_err(|e| WarmError::FindInit(e.to_string()))?;
    let init: i32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| WarmError::FindInit("the zygote's fork has no child".into()))?;
    let init = Pid::from_raw(init);
    // The init is blocked until we release it, so this pid cannot have been reused yet.
    let pidfd = sys::pidfd_open(init).map_err(|e| WarmError::FindInit(e.to_string()))?;
    Ok((init, pidfd))
}

/// The seccomp program, compiled once in the zygote before it forks anything.
static PROGRAM: OnceLock<SeccompProgram> = OnceLock::new();

/// Called once by a zygote at start: compiles what every fork would otherwise repeat.
/// Returns 0 on success.
#[no_mangle]
pub extern "C" fn nsbox_zygote_init() -> c_int {
    match seccomp::builtin() {
        Ok(p) => {
            let _ = PROGRAM.set(p);
            0
        }
        Err(e) => {
            eprintln!("nsbox zygote: {e}");
            -1
        }
    }
}

/// Called by a zygote's fork with the run socket it was handed. Returns 0 in the run's
/// Python process (sandboxed, as `nobody`, seccomp on: run the code, then exit), 1 in the
/// fork itself once the run is over (exit), -1 on failure (exit).
#[no_mangle]
pub extern "C" fn nsbox_enter_run(run_fd: c_int) -> c_int {
    match enter_run(run_fd) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("nsbox zygote: {e}");
            -1
        }
    }
}

/// Returns true in the run's Python process, false in the zygote's fork.
fn enter_run(run_fd: RawFd) -> Result<bool, WarmError> {
    let sock = sys::take_fd(run_fd);
    let mut buf = vec![0u8; 64 * 1024];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; RUN_ENDS]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(WarmError::Handoff)?;
    let len = msg.bytes;
    let mut fds: Vec<OwnedFd> = msg
        .cmsgs()
        .map_err(WarmError::Handoff)?
        .filter_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => Some(fds),
            _ => None,
        })
        .flatten()
        .map(sys::take_fd)
        .collect();
    if fds.len() != RUN_ENDS {
        return Err(WarmError::Plan(format!(
            "expected {RUN_ENDS} descriptors, got {}",
            fds.len()
        )));
    }
    let plan: WarmPlan =
        serde_json::from_slice(&buf[..len]).map_err(|e| WarmError::Plan(e.to_string()))?;
    let seccomp = match PROGRAM.get() {
        Some(p) => p.clone(),
        None => seccomp::builtin()?,
    };
    let plan_maps_root = plan.maps_root;
    let mut take = || fds.remove(0);
    let plan = ChildPlan {
        rootfs: None,
        memory_rlimit: plan.memory_rlimit,
        maps_root: plan.maps_root,
        limits: plan.limits,
        seccomp,
        entry: Entry::ReturnToCaller,
        stdout_write: take(),
        stderr_write: take(),
        plots_write: take(),
        report_write: take(),
        code: take(),
        release_read: take(),
        release_write: None,
    };
    let init = match sys::clone_fork(RUN_NAMESPACES).map_err(WarmError::Clone)? {
        None => {
            // Returns only in the run's Python process; init and failures end inside.
            child::init_main(plan);
            // Its number was closed with every other inherited descriptor.
            std::mem::forget(sock);
            return Ok(true);
        }
        Some(pid) => pid,
    };
    drop(plan);
    // The run's ids are the template's own, which the template maps to the same host ids a
    // cold run gets: 0..65535, or only `nobody` in a single-id template.
    let mapped =
        namespaces::IdMapping::write_nested(plan_maps_root, init).map_err(WarmError::IdMaps);
    if mapped.is_err() {
        // The init waits for a release that will never come.
        let _ = nix::sys::signal::kill(init, nix::sys::signal::Signal::SIGKILL);
    } else {
        let creds = UnixCredentials::new();
        sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&[1])],
            &[ControlMessage::ScmCredentials(&creds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(WarmError::Handoff)?;
    }
    drop(sock);
    // The run's init has this process as parent (its parent-death signal is tied to it),
    // so stay until it is gone.
    let _ = waitpid(init, None);
    mapped.map(|()| false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scientific_imports_pick_the_scientific_template() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(template_for(&s(&["json", "math"]), &[]), Template::Base);
        assert_eq!(template_for(&s(&["pandas"]), &[]), Template::Scientific);
        assert_eq!(
            template_for(&s(&["scipy.stats"]), &[]),
            Template::Scientific
        );
        assert_eq!(
            template_for(&s(&["json"]), &s(&["numpy"])),
            Template::Scientific
        );
        assert_eq!(template_for(&s(&["numpyish"]), &[]), Template::Base);
        assert_eq!(template_for(&s(&["openpyxl"]), &[]), Template::Scientific);
        for module in ["sklearn.linear_model", "statsmodels.formula.api", "patsy"] {
            assert_eq!(
                template_for(&s(&["pandas", module]), &[]),
                Template::Ml,
                "{module}"
            );
        }
        assert_eq!(
            template_for(&s(&["json"]), &s(&["Scikit_Learn"])),
            Template::Ml
        );
    }
}
