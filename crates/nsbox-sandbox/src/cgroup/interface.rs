//! The interface both cgroup versions implement: a server's parent cgroup and one run's cgroup.

use std::path::Path;
use std::time::Duration;

use nix::unistd::Pid;

use super::files::{kill_and_remove, sweep_runs, write, CgroupError};
use crate::run::Limits;

/// A server's parent cgroup: where its runs' cgroups are created.
pub trait ServerCgroup {
    /// The server's directories (one per controller hierarchy on v1).
    fn dirs(&self) -> Vec<&Path>;

    /// The directory to name when telling the operator where runs go.
    fn runs_under(&self) -> &Path;

    /// Creates the cgroup of one run with its limits set, ready for the run's first process.
    fn create_run(&self, name: &str, limits: &Limits) -> Result<Box<dyn RunCgroup>, CgroupError>;

    /// Removes this server's parent cgroup (at shutdown, once every run is over), leaving
    /// the cgroup nsbox was started in as it was found.
    fn remove(&self);

    /// Removes run cgroups left by supervisors that died (the spawner calls it at start).
    fn sweep_runs(&self) {
        for dir in self.dirs() {
            sweep_runs(dir);
        }
    }

    /// Kills whatever is in the run cgroup `name` and removes it (a run whose supervisor
    /// died). A name that does not exist is fine.
    fn remove_run(&self, name: &str) {
        for dir in self.dirs() {
            let _ = kill_and_remove(&dir.join(name), Duration::from_secs(2));
        }
    }
}

/// One run's cgroup.
pub trait RunCgroup: std::fmt::Debug {
    /// The run's directories (one per controller hierarchy on v1).
    fn dirs(&self) -> Vec<&Path>;

    /// Whether the kernel's OOM killer ended a process of this run.
    fn oom_killed(&self) -> bool;

    /// Whether a fork or clone failed because of the pids limit.
    fn pids_limit_hit(&self) -> bool;

    fn peak_memory(&self) -> Option<u64>;

    /// Memory the run holds now (a session's, between calls).
    fn memory_current(&self) -> Option<u64>;

    /// Moves a process (still paused before running anything) into the run's cgroup.
    fn add(&self, pid: Pid) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Kills every process still in the run and removes its cgroup directories.
    fn remove(self: Box<Self>) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            kill_and_remove(dir, Duration::from_secs(5))?;
        }
        Ok(())
    }
}
