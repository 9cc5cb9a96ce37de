//! cgroup v2: the server's cgroup and each run's as one directory of the unified hierarchy, and the controller delegation v2 asks of the cgroup nsbox was started in.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::files::{
    cpu_quota, mkdir_p, read_key, read_number, read_pids, remove_server_dirs, remove_stale_servers,
    write, CgroupError, CPU_PERIOD_US,
};
use super::interface::{RunCgroup, ServerCgroup};
use crate::run::Limits;

/// This server's `srv-<pid>` directory, with the controllers delegated to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Parent {
    pub(super) dir: PathBuf,
    pub(super) cpu: bool,
    /// What [`Parent::prepare`] changed in the server's own cgroup, undone by
    /// [`ServerCgroup::remove`] so a clean stop leaves the cgroup as it was found.
    pub(super) delegated: Delegation,
}

/// The changes a v2 server made to the cgroup it was started in.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Delegation {
    /// The server's own cgroup.
    pub own: PathBuf,
    /// Controllers this server enabled in `own/cgroup.subtree_control` (not those that
    /// were on already).
    pub enabled: Vec<String>,
    /// The leaf the server moved itself (and so its spawner) into, if it had to.
    pub leaf: Option<PathBuf>,
}

impl Parent {
    /// Delegates memory, pids and (when offered) cpu from `own` down to
    /// `own/nsbox/<instance>`, removing what crashed servers left beside it.
    pub(super) fn prepare(
        own: &Path,
        controllers: &[String],
        server_pid: u32,
        instance: &str,
    ) -> Result<Parent, CgroupError> {
        let wanted: Vec<&str> = ["memory", "pids", "cpu"]
            .into_iter()
            .filter(|c| controllers.iter().any(|have| have == c))
            .collect();
        let enable = wanted
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        let before = fs::read_to_string(own.join("cgroup.subtree_control")).unwrap_or_default();
        let enabled: Vec<String> = wanted
            .iter()
            .filter(|c| !before.split_whitespace().any(|b| b == **c))
            .map(|c| c.to_string())
            .collect();
        // v2 forbids processes in a cgroup whose controllers are delegated to
        // children, so the server moves itself into a leaf of its own first.
        let leaf = own.join("nsbox-server");
        let mut delegated = Delegation {
            own: own.to_path_buf(),
            enabled: Vec::new(),
            leaf: None,
        };
        if !read_pids(own).is_empty() {
            mkdir_p(&leaf)?;
            delegated.leaf = Some(leaf.clone());
            write(&leaf.join("cgroup.procs"), &server_pid.to_string())?;
            // nsbox's reaper as PID 1 of a container sits in the same cgroup; moved back
            // with the server by `undo_delegation`.
            if let Some(reaper) = crate::pid1::reaper() {
                write(&leaf.join("cgroup.procs"), &reaper.to_string())?;
            }
        }
        if let Err(e) = write(&own.join("cgroup.subtree_control"), &enable) {
            let others = read_pids(own);
            // Back where we were: the caller goes on without cgroups.
            undo_delegation(&delegated);
            return Err(match e {
                CgroupError::Write { source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
                    CgroupError::Busy {
                        path: own.to_path_buf(),
                        others: describe_pids(&others),
                    }
                }
                e => e,
            });
        }
        delegated.enabled = enabled;
        let nsbox = own.join("nsbox");
        mkdir_p(&nsbox)?;
        write(&nsbox.join("cgroup.subtree_control"), &enable)?;
        remove_stale_servers(&nsbox, instance);
        let dir = nsbox.join(instance);
        mkdir_p(&dir)?;
        write(&dir.join("cgroup.subtree_control"), &enable)?;
        Ok(Parent {
            dir,
            cpu: wanted.contains(&"cpu"),
            delegated,
        })
    }

    pub(super) fn create(&self, name: &str, limits: &Limits) -> Result<Run, CgroupError> {
        let path = self.dir.join(name);
        mkdir_p(&path)?;
        write(&path.join("memory.max"), &limits.memory_bytes.to_string())?;
        if path.join("memory.swap.max").exists() {
            write(&path.join("memory.swap.max"), "0")?;
        }
        write(&path.join("pids.max"), &limits.max_processes.to_string())?;
        if self.cpu {
            write(
                &path.join("cpu.max"),
                &format!("{} {CPU_PERIOD_US}", cpu_quota(limits)),
            )?;
        }
        Ok(Run { dir: path })
    }
}

impl ServerCgroup for Parent {
    fn dirs(&self) -> Vec<&Path> {
        vec![self.dir.as_path()]
    }

    fn runs_under(&self) -> &Path {
        &self.dir
    }

    fn create_run(&self, name: &str, limits: &Limits) -> Result<Box<dyn RunCgroup>, CgroupError> {
        Ok(Box::new(self.create(name, limits)?))
    }

    /// Also undoes the delegation, unless another server started in the same cgroup is
    /// still using `nsbox/`.
    fn remove(&self) {
        remove_server_dirs(&self.dirs());
        let nsbox = self.dir.parent().unwrap_or(&self.dir);
        match fs::remove_dir(nsbox) {
            Ok(()) => undo_delegation(&self.delegated),
            Err(e) if e.kind() == io::ErrorKind::NotFound => undo_delegation(&self.delegated),
            Err(e) => tracing::warn!(
                path = %nsbox.display(),
                error = %e,
                "leaving cgroup delegation in place: another server's cgroups remain"
            ),
        }
    }
}

/// One run's directory, holding every controller.
#[derive(Debug)]
pub struct Run {
    pub(super) dir: PathBuf,
}

impl RunCgroup for Run {
    fn dirs(&self) -> Vec<&Path> {
        vec![self.dir.as_path()]
    }

    fn oom_killed(&self) -> bool {
        read_key(&self.dir.join("memory.events"), "oom_kill").unwrap_or(0) > 0
    }

    fn pids_limit_hit(&self) -> bool {
        read_key(&self.dir.join("pids.events"), "max").unwrap_or(0) > 0
    }

    fn peak_memory(&self) -> Option<u64> {
        read_number(&self.dir.join("memory.peak"))
    }

    fn memory_current(&self) -> Option<u64> {
        read_number(&self.dir.join("memory.current"))
    }
}

/// Turns off the controllers the server enabled, then moves every process in its leaf
/// (itself, a spawner on its way out) back to its own cgroup and removes the leaf: in that
/// order, as v2 refuses processes in a cgroup that still delegates controllers.
fn undo_delegation(d: &Delegation) {
    if !d.enabled.is_empty() {
        let disable = d
            .enabled
            .iter()
            .map(|c| format!("-{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        if let Err(e) = write(&d.own.join("cgroup.subtree_control"), &disable) {
            tracing::warn!(error = %e, "turning off the controllers nsbox enabled");
            return;
        }
    }
    let Some(leaf) = &d.leaf else { return };
    // The spawner and its templates may still be alive (they die with this process) and
    // fork while being moved: move again until the leaf is empty enough to remove.
    let start = Instant::now();
    loop {
        for pid in read_pids(leaf) {
            // A process that exited meanwhile cannot be moved, and need not be.
            let _ = write(&d.own.join("cgroup.procs"), &pid.to_string());
        }
        match fs::remove_dir(leaf) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) if start.elapsed() >= Duration::from_secs(2) => {
                tracing::warn!(path = %leaf.display(), error = %e, "removing the server's leaf cgroup");
                return;
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Pids with their command names, for a message to the operator.
pub(super) fn describe_pids(pids: &[i32]) -> String {
    if pids.is_empty() {
        return "none listed".into();
    }
    pids.iter()
        .take(8)
        .map(|p| {
            let comm = fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            format!("{p} {}", comm.trim())
        })
        .collect::<Vec<_>>()
        .join(", ")
}
