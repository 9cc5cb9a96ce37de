//! The run's mount namespace: the read-only root filesystem, a fresh /proc, a private /tmp and a minimal /dev, then pivot_root into it.

use std::fs::File;
use std::os::unix::fs::symlink;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root};

use super::failure::{io_step, step, Failure, Step};
use super::run::SITE_DIR;

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

/// An empty directory beside the root filesystem, the overlay's second lower layer; the
/// server creates it and checks it is empty at start.
pub const EMPTY_LAYER: &str = "nsbox-empty-layer";

/// Where a template keeps a second view of the tree with no submounts: the kernel will not
/// stack an overlay on a mount whose submounts (/dev, /proc, /tmp) are locked.
const TEMPLATE_COPY: &str = "mnt";
/// Where a warm run mounts its empty layer.
const EMPTY_MOUNT: &str = "/media";
/// Where a template sees the host's packages directory (read-only), so the runs it forks
/// can mount their cached set from it: an empty directory of every tree, which a run's
/// fresh root (made from the plain view at /mnt) shows empty again.
pub const TEMPLATE_PACKAGES: &str = "/srv";

/// Caps the number of files in /tmp so an inode flood ends inside the run.
const TMP_INODES: u64 = 16_384;

const NONE: Option<&str> = None;

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

/// For a run forked from a zygote, whose mount namespace already has the template's
/// view: a new read-only overlay of that view (so no inode, lock or inotify watch is
/// shared with other runs of the template), a fresh /dev, a /proc of the run's own PID
/// namespace and a private /tmp, then pivot_root into it.
/// `site` (a directory under [`TEMPLATE_PACKAGES`]) is the run's cached package set.
pub fn refresh(tmp_bytes: u64, site: Option<&Path>) -> Result<(), Failure> {
    step(
        Step::PrivateMounts,
        mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE),
    )?;
    // The overlay's second lower layer: an empty filesystem of its own, because layers on
    // one filesystem may not nest.
    step(
        Step::BindRootfs,
        mount(
            Some("tmpfs"),
            EMPTY_MOUNT,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=4k,nr_inodes=1"),
        ),
    )?;
    // Built on /tmp, which the template leaves empty in the tree and the run replaces.
    let root = Path::new("/tmp");
    mount_overlay(root, "lowerdir=/mnt:/media")?;
    if let Some(site) = site {
        bind_read_only(site, &root.join(&SITE_DIR[1..]))?;
    }
    populate(root, tmp_bytes)
}

/// Builds the run's filesystem view on top of `root` and makes it the root directory.
/// Runs in the run's init, in fresh user, mount and PID namespaces.
/// A template passes `template_copy` to keep a plain view of the tree at /mnt for its runs.
/// `site`, a host directory, is a cold run's cached package set (mounted at [`SITE_DIR`]);
/// `packages`, the host's packages directory, is a template's (at [`TEMPLATE_PACKAGES`]).
pub fn enter(
    root: &Path,
    tmp_bytes: u64,
    template_copy: bool,
    site: Option<&Path>,
    packages: Option<&Path>,
) -> Result<(), Failure> {
    // Nothing done here may propagate back to the host's mount namespace.
    step(
        Step::PrivateMounts,
        mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE),
    )?;
    // A read-only overlay of the tree, new for each sandbox, rather than a bind mount:
    // file locks and inotify watches belong to the overlay's own inodes, so they cannot
    // carry signals between concurrent sandboxes, and the layers are given relative to the
    // tree so /proc/self/mountinfo shows no host path. Overlay needs two lower layers
    // without an upper one, and they may not nest: the second is an empty directory beside
    // the tree (see `EMPTY_LAYER`). Host mounts below the tree stay out: an overlay does
    // not include submounts.
    step(Step::BindRootfs, chdir(root))?;
    mount_overlay(root, "lowerdir=.:../nsbox-empty-layer")?;
    if template_copy {
        mount_overlay(&root.join(TEMPLATE_COPY), "lowerdir=.:../nsbox-empty-layer")?;
    }
    if let Some(site) = site {
        bind_read_only(site, &root.join(&SITE_DIR[1..]))?;
    }
    if let Some(packages) = packages {
        bind_read_only(packages, &root.join(&TEMPLATE_PACKAGES[1..]))?;
    }
    populate(root, tmp_bytes)
}

/// A read-only overlay of `lowerdir` (lower layers only) on `target`.
fn mount_overlay(target: &Path, lowerdir: &str) -> Result<(), Failure> {
    step(
        Step::BindRootfs,
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(lowerdir),
        ),
    )
}

/// Bind-mounts `source` on `target` (an empty directory of the tree) read-only, without
/// set-id or device files. Not recursive: nothing mounted below `source` comes along.
fn bind_read_only(source: &Path, target: &Path) -> Result<(), Failure> {
    step(
        Step::MountSite,
        mount(Some(source), target, NONE, MsFlags::MS_BIND, NONE),
    )?;
    step(
        Step::MountSite,
        mount(
            NONE,
            target,
            NONE,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            NONE,
        ),
    )
}

/// Gives the new root its /dev, /proc and /tmp and makes it the root directory.
fn populate(root: &Path, tmp_bytes: u64) -> Result<(), Failure> {
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

    // pivot_root(".", ".") stacks the old root under the new one; detaching it leaves no
    // path back to the host's tree.
    step(Step::PivotRoot, chdir(root))?;
    step(Step::PivotRoot, pivot_root(".", "."))?;
    step(Step::DetachOldRoot, umount2(".", MntFlags::MNT_DETACH))?;
    step(Step::DetachOldRoot, chdir("/"))
}
