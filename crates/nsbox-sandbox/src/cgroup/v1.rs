//! cgroup v1: the server's cgroup and each run's as one directory per controller hierarchy (memory, pids, and cpu when it is mounted).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files::{
    cpu_quota, mkdir_p, read_key, read_number, remove_server_dirs, remove_stale_servers, write,
    CgroupError, CPU_PERIOD_US,
};
use super::interface::{RunCgroup, ServerCgroup};
use crate::run::Limits;

/// This server's `srv-<pid>` directory in each hierarchy nsbox uses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Parent {
    pub(super) memory: PathBuf,
    pub(super) pids: PathBuf,
    pub(super) cpu: Option<PathBuf>,
}

impl Parent {
    /// Creates `<own>/nsbox/<instance>` in every hierarchy, removing what crashed servers
    /// left beside it.
    pub(super) fn prepare(
        memory: &Path,
        pids: &Path,
        cpu: Option<&Path>,
        instance: &str,
    ) -> Result<Parent, CgroupError> {
        let parent = |own: &Path| -> Result<PathBuf, CgroupError> {
            let nsbox = own.join("nsbox");
            mkdir_p(&nsbox)?;
            remove_stale_servers(&nsbox, instance);
            let dir = nsbox.join(instance);
            mkdir_p(&dir)?;
            Ok(dir)
        };
        Ok(Parent {
            memory: parent(memory)?,
            pids: parent(pids)?,
            cpu: cpu.map(parent).transpose()?,
        })
    }

    pub(super) fn create(&self, name: &str, limits: &Limits) -> Result<Run, CgroupError> {
        let run = Run {
            memory: self.memory.join(name),
            pids: self.pids.join(name),
            cpu: self.cpu.as_ref().map(|c| c.join(name)),
        };
        for dir in run.dirs() {
            mkdir_p(dir)?;
        }
        let mem = limits.memory_bytes.to_string();
        write(&run.memory.join("memory.limit_in_bytes"), &mem)?;
        // memsw exists only with swap accounting on; where it does, it caps
        // memory plus swap at the same value, which turns swap off for the run.
        let memsw = run.memory.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write(&memsw, &mem)?;
        }
        let _ = fs::write(run.memory.join("memory.swappiness"), "0");
        write(
            &run.pids.join("pids.max"),
            &limits.max_processes.to_string(),
        )?;
        if let Some(cpu) = &run.cpu {
            write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            write(
                &cpu.join("cpu.cfs_quota_us"),
                &cpu_quota(limits).to_string(),
            )?;
        }
        Ok(run)
    }
}

impl ServerCgroup for Parent {
    fn dirs(&self) -> Vec<&Path> {
        let mut d = vec![self.memory.as_path(), self.pids.as_path()];
        d.extend(self.cpu.as_deref());
        d
    }

    fn runs_under(&self) -> &Path {
        &self.memory
    }

    fn create_run(&self, name: &str, limits: &Limits) -> Result<Box<dyn RunCgroup>, CgroupError> {
        Ok(Box::new(self.create(name, limits)?))
    }

    fn remove(&self) {
        remove_server_dirs(&self.dirs());
    }
}

/// One run's directory in each hierarchy.
#[derive(Debug)]
pub struct Run {
    pub(super) memory: PathBuf,
    pub(super) pids: PathBuf,
    pub(super) cpu: Option<PathBuf>,
}

impl RunCgroup for Run {
    fn dirs(&self) -> Vec<&Path> {
        // Co-mounted controllers share one directory, which is created and removed once.
        let mut d = vec![self.memory.as_path()];
        if self.pids != self.memory {
            d.push(&self.pids);
        }
        if let Some(cpu) = self.cpu.as_deref().filter(|c| *c != self.memory) {
            d.push(cpu);
        }
        d
    }

    fn oom_killed(&self) -> bool {
        read_key(&self.memory.join("memory.oom_control"), "oom_kill").unwrap_or(0) > 0
    }

    fn pids_limit_hit(&self) -> bool {
        read_key(&self.pids.join("pids.events"), "max").unwrap_or(0) > 0
    }

    fn peak_memory(&self) -> Option<u64> {
        read_number(&self.memory.join("memory.max_usage_in_bytes"))
    }

    fn memory_current(&self) -> Option<u64> {
        read_number(&self.memory.join("memory.usage_in_bytes"))
    }
}
