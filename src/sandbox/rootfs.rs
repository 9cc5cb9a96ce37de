//! The run's mount namespace: the read-only root filesystem, a fresh /proc, a private /tmp and a minimal /dev, then pivot_root into it.

use std::fs::File;
use std::os::unix::fs::symlink;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{chdir, pivot_root};

use super::child::{Failure, Step};

/// Device nodes a run may use; they are bind-mounted from the host one by one, so no other
/// device is reachable.
const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];

/// `/dev` links Python and shells expect.
const DEV_LINKS: [(&str, &str); 4] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Caps the number of files in /tmp so an inode flood ends inside the run.
const TMP_INODES: u64 = 16_384;

const NONE: Option<&str> = None;

fn step<T>(step: Step, r: Result<T, Errno>) -> Result<T, Failure> {
    r.map_err(|errno| Failure { step, errno })
}

fn io_step<T>(s: Step, r: std::io::Result<T>) -> Result<T, Failure> {
    step(
        s,
        r.map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
    )
}

/// Flags of the mount under `path` that a remount inside a user namespace must keep: the
/// kernel locks them on mounts inherited from the host, and dropping one gives EPERM.
fn locked_flags(path: &Path) -> Result<MsFlags, Errno> {
    let st = statvfs(path)?;
    let mut flags = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.flags().contains(fs) {
            flags |= ms;
        }
    }
    Ok(flags)
}

fn mount_proc_and_tmp(root: &Path, tmp_bytes: u64) -> Result<(), Failure> {
    step(
        Step::MountProc,
        mount(
            Some("proc"),
            &root.join("proc"),
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            NONE,
        ),
    )?;
    let tmp_opts = format!("size={tmp_bytes},nr_inodes={TMP_INODES},mode=1777");
    step(
        Step::MountTmp,
        mount(
            Some("tmpfs"),
            &root.join("tmp"),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(tmp_opts.as_str()),
        ),
    )
}

/// For a run forked from a zygote, whose mount namespace already has the read-only root
/// filesystem, /dev and a /proc of the zygote's PID namespace: a /proc of the run's own
/// PID namespace and a fresh private /tmp on top.
pub fn refresh(tmp_bytes: u64) -> Result<(), Failure> {
    step(
        Step::PrivateMounts,
        mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE),
    )?;
    mount_proc_and_tmp(Path::new("/"), tmp_bytes)
}

/// Builds the run's filesystem view on top of `root` and makes it the root directory.
/// Runs in the run's init, in fresh user, mount and PID namespaces.
pub fn enter(root: &Path, tmp_bytes: u64) -> Result<(), Failure> {
    // Nothing done here may propagate back to the host's mount namespace.
    step(
        Step::PrivateMounts,
        mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE),
    )?;
    // Non-recursive: host mounts below the tree stay out of the run.
    step(
        Step::BindRootfs,
        mount(Some(root), root, NONE, MsFlags::MS_BIND, NONE),
    )?;

    let dev = root.join("dev");
    step(
        Step::MountDev,
        mount(
            Some("tmpfs"),
            &dev,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0755,size=64k,nr_inodes=64"),
        ),
    )?;
    for name in DEVICES {
        let target = dev.join(name);
        io_step(Step::MountDev, File::create(&target))?;
        step(
            Step::MountDev,
            mount(
                Some(&Path::new("/dev").join(name)),
                &target,
                NONE,
                MsFlags::MS_BIND,
                NONE,
            ),
        )?;
    }
    for (name, target) in DEV_LINKS {
        io_step(Step::MountDev, symlink(target, dev.join(name)))?;
    }
    step(
        Step::MountDev,
        mount(
            NONE,
            &dev,
            NONE,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            NONE,
        ),
    )?;

    mount_proc_and_tmp(root, tmp_bytes)?;

    let keep = step(Step::RemountReadOnly, locked_flags(root))?;
    step(
        Step::RemountReadOnly,
        mount(
            NONE,
            root,
            NONE,
            keep | MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            NONE,
        ),
    )?;

    // pivot_root(".", ".") stacks the old root under the new one; detaching it leaves no
    // path back to the host's tree.
    step(Step::PivotRoot, chdir(root))?;
    step(Step::PivotRoot, pivot_root(".", "."))?;
    step(Step::DetachOldRoot, umount2(".", MntFlags::MNT_DETACH))?;
    step(Step::DetachOldRoot, chdir("/"))
}
