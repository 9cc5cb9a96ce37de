//! Linux namespaces of a run: which ones are created, the user-namespace id maps, and the per-run hostname and loopback.

use std::fs;

use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{sethostname, setresgid, setresuid, Gid, Pid, Uid};

use crate::sys;

/// Namespaces every run gets at clone time. The cgroup namespace is entered later, by the
/// run's init once it has been moved into its own cgroup, so that cgroup becomes its root.
pub const RUN_NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWUSER
    .union(CloneFlags::CLONE_NEWNS)
    .union(CloneFlags::CLONE_NEWPID)
    .union(CloneFlags::CLONE_NEWNET)
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWUTS);

/// How many ids are mapped into a run's user namespace: 0 (the run's init, for set-up)
/// through 65534 (`nobody`, who runs the code).
pub const MAPPED_IDS: u32 = 65536;

/// `nobody` and `nogroup` inside the run.
pub const NOBODY: u32 = 65534;

/// The hostname a run sees; fixed so it reveals nothing about the host.
pub const HOSTNAME: &str = "nsbox";

/// Writes the uid and gid maps of a child that is waiting in its new user namespace.
///
/// Run as host root, so any range may be mapped; the range starts at `uid_base`, which
/// must be unused on the host, so nothing inside a run owns a host file.
pub fn write_id_maps(pid: Pid, uid_base: u32) -> Result<(), std::io::Error> {
    let line = format!("0 {uid_base} {MAPPED_IDS}\n");
    fs::write(format!("/proc/{pid}/uid_map"), &line)?;
    fs::write(format!("/proc/{pid}/gid_map"), &line)
}

/// Makes the run's init root of its user namespace (mapped ids, full capabilities there).
pub fn become_root() -> Result<(), Errno> {
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
}

/// Enters a new cgroup namespace rooted at the run's own cgroup.
pub fn enter_cgroup_namespace() -> Result<(), Errno> {
    unshare(CloneFlags::CLONE_NEWCGROUP)
}

/// Gives the run's UTS namespace its fixed hostname.
pub fn set_hostname() -> Result<(), Errno> {
    sethostname(HOSTNAME)
}

/// Brings up the loopback interface of the run's private network namespace.
///
/// Loopback is up so code that talks to itself over 127.0.0.1 (a test server, asyncio)
/// works; the namespace has no other interface, so nothing beyond the run is reachable.
pub fn loopback_up() -> Result<(), Errno> {
    sys::loopback_up()
}

/// Switches to `nobody`; the kernel clears every capability on this transition from root.
pub fn become_nobody() -> Result<(), Errno> {
    nix::unistd::setgroups(&[])?;
    let gid = Gid::from_raw(NOBODY);
    let uid = Uid::from_raw(NOBODY);
    setresgid(gid, gid, gid)?;
    setresuid(uid, uid, uid)
}
