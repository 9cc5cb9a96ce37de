//! Reading and writing cgroupfs for both versions: limits, member pids, counters, and removing cgroups with whatever is left in them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::run::Limits;

/// The CPU bandwidth period; 100 ms is the kernel's default and keeps quota jitter low.
pub(super) const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy: {0}")]
    Unavailable(String),
    #[error("creating cgroup {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("removing cgroup {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error(
        "enabling controllers in {path}/cgroup.subtree_control: busy: cgroup v2 allows no \
         processes in a cgroup that delegates controllers to its children, and other processes \
         ({others}) share nsbox's cgroup. Run nsbox as the only process of its cgroup: a \
         systemd service with Delegate=yes, `exec` from the wrapper script or container \
         entrypoint, or `systemd-run --scope -p Delegate=yes`"
    )]
    Busy { path: PathBuf, others: String },
}

pub(super) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        source,
    })
}

pub(super) fn mkdir_p(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(path).map_err(|source| CgroupError::Create {
        path: path.to_path_buf(),
        source,
    })
}

/// Kills whatever is left in a cgroup directory and removes it, waiting for the processes
/// to be gone (the kernel refuses to remove a cgroup that still has members).
pub(super) fn kill_and_remove(dir: &Path, deadline: Duration) -> Result<(), CgroupError> {
    let start = Instant::now();
    loop {
        if dir.join("cgroup.kill").exists() {
            let _ = fs::write(dir.join("cgroup.kill"), "1");
        } else {
            for pid in read_pids(dir) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) if start.elapsed() >= deadline => {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                })
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

pub(super) fn read_pids(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Removes the `srv-<pid>` directories of servers that are no longer running, and every run
/// cgroup below them: what a crashed server left behind.
pub(super) fn remove_stale_servers(nsbox_dir: &Path, own_instance: &str) {
    let Ok(entries) = fs::read_dir(nsbox_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("srv-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if name == own_instance || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        sweep_runs(&entry.path());
        let _ = kill_and_remove(&entry.path(), Duration::from_secs(2));
    }
}
/// Removes every `run-*` cgroup below `dir`.
pub(super) fn sweep_runs(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with("run-") {
            let _ = kill_and_remove(&entry.path(), Duration::from_secs(2));
        }
    }
}
pub(super) fn read_key(path: &Path, key: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}
/// What a run's CPU bandwidth is, in microseconds per [`CPU_PERIOD_US`].
pub(super) fn cpu_quota(limits: &Limits) -> u64 {
    ((limits.cpus * CPU_PERIOD_US as f64) as u64).max(1000)
}

/// Kills and removes the run cgroups below each of a server's directories, then the
/// directories themselves.
pub(super) fn remove_server_dirs(dirs: &[&Path]) {
    for dir in dirs {
        sweep_runs(dir);
        if let Err(e) = kill_and_remove(dir, Duration::from_secs(2)) {
            tracing::warn!(error = %e, "removing this server's cgroup");
        }
    }
}

pub(super) fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}
