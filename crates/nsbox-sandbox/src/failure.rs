//! The set-up steps of a run and of a template, and the (step, errno) failure every one of them reports.
//!
//! The run's init and Python process, the supervisor, and a template's init and zygote all
//! name what failed from [`Step`], so a failure reads the same wherever it happened. A
//! step's number travels in the report pipe's records; numbers are never reused.

use std::fmt;

use nix::errno::Errno;

/// Every set-up step, grouped by the process that takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    // The run's init, then its Python process (cold and warm paths), in order.
    WaitRelease = 1,
    BecomeRoot,
    ParentDeathSignal,
    CgroupNamespace,
    PrivateMounts,
    BindRootfs,
    MountDev,
    MountProc,
    MountTmp,
    PivotRoot,
    DetachOldRoot,
    Hostname,
    Loopback,
    StartPython,
    InitStdio,
    InitDropCaps,
    Rlimits,
    DropBoundingCaps,
    BecomeNobody,
    DropCaps,
    NoNewPrivs,
    Stdio,
    CloseFds,
    WorkDir,
    Seccomp,
    Exec,
    // The supervisor, before and around the run's init.
    CreatePipes,
    StoreCode,
    CreateNamespaces,
    WriteIdMaps,
    RunCgroup,
    ReleaseSandbox,
    InitStatus,
    // A template's init and its zygote (besides the run steps they share).
    ForkZygote,
    Reap,
    LimitCaps,
    ZygoteStdio,
    ExecZygote,
    // The supervisor again: the egress door, after the run's namespaces exist.
    EgressListener,
    // The run's init again: a cached package set (issue 24), after the tree's overlay.
    MountSite,
}

impl Step {
    pub const ALL: [Step; 40] = [
        Step::WaitRelease,
        Step::BecomeRoot,
        Step::ParentDeathSignal,
        Step::CgroupNamespace,
        Step::PrivateMounts,
        Step::BindRootfs,
        Step::MountDev,
        Step::MountProc,
        Step::MountTmp,
        Step::PivotRoot,
        Step::DetachOldRoot,
        Step::Hostname,
        Step::Loopback,
        Step::StartPython,
        Step::InitStdio,
        Step::InitDropCaps,
        Step::Rlimits,
        Step::DropBoundingCaps,
        Step::BecomeNobody,
        Step::DropCaps,
        Step::NoNewPrivs,
        Step::Stdio,
        Step::CloseFds,
        Step::WorkDir,
        Step::Seccomp,
        Step::Exec,
        Step::CreatePipes,
        Step::StoreCode,
        Step::CreateNamespaces,
        Step::WriteIdMaps,
        Step::RunCgroup,
        Step::ReleaseSandbox,
        Step::InitStatus,
        Step::ForkZygote,
        Step::Reap,
        Step::LimitCaps,
        Step::ZygoteStdio,
        Step::ExecZygote,
        Step::EgressListener,
        Step::MountSite,
    ];

    pub fn from_code(code: u32) -> Option<Step> {
        Step::ALL.into_iter().find(|s| *s as u32 == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            Step::WaitRelease => "wait for release",
            Step::BecomeRoot => "become root of the user namespace",
            Step::ParentDeathSignal => "set parent-death signal",
            Step::CgroupNamespace => "enter cgroup namespace",
            Step::PrivateMounts => "make mounts private",
            Step::BindRootfs => "mount the root filesystem overlay",
            Step::MountDev => "mount /dev",
            Step::MountProc => "mount /proc",
            Step::MountTmp => "mount /tmp",
            Step::PivotRoot => "pivot_root",
            Step::DetachOldRoot => "detach the old root",
            Step::Hostname => "set hostname",
            Step::Loopback => "bring up loopback",
            Step::StartPython => "fork the python process",
            Step::InitStdio => "init stdio",
            Step::InitDropCaps => "init drops capabilities",
            Step::Rlimits => "set rlimits",
            Step::DropBoundingCaps => "drop the capability bounding set",
            Step::BecomeNobody => "switch to nobody",
            Step::DropCaps => "drop capabilities",
            Step::NoNewPrivs => "set no_new_privs",
            Step::Stdio => "set up stdio",
            Step::CloseFds => "close inherited descriptors",
            Step::WorkDir => "create and enter the working directory",
            Step::Seccomp => "install the seccomp filter",
            Step::Exec => "execute python3",
            Step::CreatePipes => "create pipes",
            Step::StoreCode => "store the code",
            Step::CreateNamespaces => "create namespaces",
            Step::WriteIdMaps => "write id maps",
            Step::RunCgroup => "create the run cgroup",
            Step::ReleaseSandbox => "release the sandbox",
            Step::InitStatus => "init exited without a status",
            Step::EgressListener => {
                "open the egress proxy's listener in the run's network namespace"
            }
            Step::MountSite => "mount the cached packages read-only",
            Step::ForkZygote => "fork the zygote",
            Step::Reap => "reap",
            Step::LimitCaps => "limit capabilities",
            Step::ZygoteStdio => "zygote stdio",
            Step::ExecZygote => "execute the zygote",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The step that failed and the error the kernel gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub step: Step,
    pub errno: Errno,
}

/// Names the step a system call belongs to.
pub fn step<T>(step: Step, r: Result<T, Errno>) -> Result<T, Failure> {
    r.map_err(|errno| Failure { step, errno })
}

/// [`step`] for the standard library's I/O errors.
pub fn io_step<T>(s: Step, r: std::io::Result<T>) -> Result<T, Failure> {
    step(
        s,
        r.map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_code_maps_back() {
        for s in Step::ALL {
            assert_eq!(Step::from_code(s as u32), Some(s));
            assert!(!s.name().is_empty());
        }
        assert_eq!(Step::from_code(0), None);
    }
}
