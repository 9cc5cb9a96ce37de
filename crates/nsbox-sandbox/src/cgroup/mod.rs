//! Control groups: detecting the host's layout (v1, v2 or none) once, and a cgroup per run with its limits, behind one interface.
//!
//! The layout is detected here, once; after that, every v1/v2 difference lives in `v1.rs`
//! and `v2.rs`, behind [`ServerCgroup`] and [`RunCgroup`] (`interface.rs`), over the
//! cgroupfs reads and writes both share (`files.rs`). Per-run cgroups are created below the
//! cgroup the server itself sits in (never at a hierarchy's root), as
//! `<own>/nsbox/srv-<server pid>/run-<supervisor pid>`, so the host's own accounting still
//! covers every run and two servers on one host never touch each other's runs.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::run::Limits;

mod files;
mod interface;
pub mod v1;
pub mod v2;

pub use files::CgroupError;
pub use interface::{RunCgroup, ServerCgroup};

/// The host's cgroup layout, as detected at start.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    /// cgroup v1: the server's own cgroup directory for each controller nsbox uses.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: Option<PathBuf>,
    },
    /// cgroup v2: the server's own cgroup directory in the unified hierarchy.
    V2 {
        own: PathBuf,
        controllers: Vec<String>,
    },
}

impl Layout {
    pub fn describe(&self) -> String {
        match self {
            Layout::V1 { cpu, .. } => format!(
                "cgroup v1 (memory, pids{})",
                if cpu.is_some() { ", cpu" } else { "" }
            ),
            Layout::V2 { controllers, .. } => format!("cgroup v2 ({})", controllers.join(", ")),
        }
    }
}

/// Reads the layout from the live system.
pub fn detect() -> Result<Layout, CgroupError> {
    let cgroup = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| CgroupError::Unavailable(format!("reading /proc/self/cgroup: {e}")))?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CgroupError::Unavailable(format!("reading /proc/self/mountinfo: {e}")))?;
    detect_from(&cgroup, &mountinfo, Path::new("/"))
}

struct Mount {
    root: String,
    point: PathBuf,
    /// The mount's own options (`rw,nosuid,nodev,...`), apart from its superblock's.
    mount_opts: Vec<String>,
    fstype: String,
    super_opts: Vec<String>,
}

fn parse_mountinfo(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            Some(Mount {
                root: left.get(3)?.to_string(),
                point: PathBuf::from(left.get(4)?.replace("\\040", " ")),
                mount_opts: left.get(5)?.split(',').map(str::to_string).collect(),
                fstype: right.first()?.to_string(),
                super_opts: right.get(2)?.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// Joins a mount point with a cgroup path, allowing for cgroupfs mounted from a non-root
/// cgroup (as inside containers), where the mount's root prefix is not part of the path.
fn own_dir(fs_root: &Path, mount: &Mount, cgroup_path: &str) -> PathBuf {
    let rel = cgroup_path
        .strip_prefix(mount.root.as_str())
        .unwrap_or(cgroup_path)
        .trim_start_matches('/');
    let point = mount.point.strip_prefix("/").unwrap_or(&mount.point);
    fs_root.join(point).join(rel)
}

/// Detects the layout from the text of `/proc/self/cgroup` and `/proc/self/mountinfo`;
/// `fs_root` prefixes every path (a fake tree in tests, `/` for real).
pub fn detect_from(cgroup: &str, mountinfo: &str, fs_root: &Path) -> Result<Layout, CgroupError> {
    let mounts = parse_mountinfo(mountinfo);
    let entries: Vec<(&str, &str)> = cgroup
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?, parts.next()?))
        })
        .collect();

    // v2 first: if the unified hierarchy offers memory and pids at our cgroup, it wins.
    if let (Some((_, path)), Some(mount)) = (
        entries.iter().find(|(ctl, _)| ctl.is_empty()),
        mounts.iter().find(|m| m.fstype == "cgroup2"),
    ) {
        let own = own_dir(fs_root, mount, path);
        let controllers: Vec<String> = fs::read_to_string(own.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if controllers.iter().any(|c| c == "memory") && controllers.iter().any(|c| c == "pids") {
            return Ok(Layout::V2 { own, controllers });
        }
    }

    let v1_dir = |controller: &str| -> Option<PathBuf> {
        let (_, path) = entries
            .iter()
            .find(|(ctls, _)| ctls.split(',').any(|c| c == controller))?;
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.super_opts.iter().any(|o| o == controller))?;
        Some(own_dir(fs_root, mount, path))
    };
    match (v1_dir("memory"), v1_dir("pids")) {
        (Some(memory), Some(pids)) => Ok(Layout::V1 {
            memory,
            pids,
            cpu: v1_dir("cpu"),
        }),
        _ => Err(CgroupError::Unavailable(
            "neither cgroup v2 with memory and pids nor cgroup v1 memory and pids controllers are available"
                .into(),
        )),
    }
}
/// This server's parent cgroup as the spawner gets it (inside `SpawnerConfig`): the v1 or
/// v2 implementation of [`ServerCgroup`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum CgroupParent {
    V1(v1::Parent),
    V2(v2::Parent),
}

impl CgroupParent {
    /// Creates this server's parent cgroup and removes what crashed servers left behind.
    pub fn prepare(layout: &Layout, server_pid: u32) -> Result<CgroupParent, CgroupError> {
        let instance = format!("srv-{server_pid}");
        Ok(match layout {
            Layout::V1 { memory, pids, cpu } => CgroupParent::V1(v1::Parent::prepare(
                memory,
                pids,
                cpu.as_deref(),
                &instance,
            )?),
            Layout::V2 { own, controllers } => CgroupParent::V2(v2::Parent::prepare(
                own,
                controllers,
                server_pid,
                &instance,
            )?),
        })
    }

    fn server(&self) -> &dyn ServerCgroup {
        match self {
            CgroupParent::V1(p) => p,
            CgroupParent::V2(p) => p,
        }
    }

    /// See [`ServerCgroup::runs_under`].
    pub fn runs_under(&self) -> &Path {
        self.server().runs_under()
    }

    /// See [`ServerCgroup::create_run`].
    pub fn create_run(
        &self,
        name: &str,
        limits: &Limits,
    ) -> Result<Box<dyn RunCgroup>, CgroupError> {
        self.server().create_run(name, limits)
    }

    /// See [`ServerCgroup::sweep_runs`].
    pub fn sweep_runs(&self) {
        self.server().sweep_runs()
    }

    /// See [`ServerCgroup::remove_run`].
    pub fn remove_run(&self, name: &str) {
        self.server().remove_run(name)
    }

    /// See [`ServerCgroup::remove`].
    pub fn remove(&self) {
        self.server().remove()
    }
}

/// Takes the kernel's cgroup attach lock once, by writing the calling process's pid to the
/// `cgroup.procs` of the cgroup it already sits in: a move to where it is, which changes
/// nothing.
///
/// The lock (`cgroup_threadgroup_rwsem`) is global. The first move into any cgroup after a
/// few idle milliseconds waits for an RCU grace period while the lock switches to its
/// writer mode (about 5 to 10 ms); moves in the next few milliseconds find it switched and
/// take well under a millisecond. A supervisor has a helper process call this while the
/// run starts, so the move of the run's init into its cgroup finds the lock ready instead
/// of waiting on the hot path.
pub fn prime_attach() -> Result<(), CgroupError> {
    files::write(&own_procs()?, &std::process::id().to_string())
}

/// The `cgroup.procs` of the cgroup the calling process sits in (v1: its memory cgroup).
fn own_procs() -> Result<PathBuf, CgroupError> {
    let own = match detect()? {
        Layout::V1 { memory, .. } => memory,
        Layout::V2 { own, .. } => own,
    };
    Ok(own.join("cgroup.procs"))
}

/// How a run's move into its cgroup avoids waiting for the kernel's attach lock to switch
/// modes (an RCU grace period: 15 ms measured on these machines after 100 ms idle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// cgroup2's `favordynmods` is in force: the lock stays in the mode where a move costs
    /// microseconds (0.16 ms measured, against 15 ms), with no periodic work. It is the
    /// machine's: forks and exits pay a little more for it, everywhere.
    FavorDynMods,
    /// The fallback: a helper takes the lock as each run starts ([`prime_attach`]) and the
    /// spawner keeps it switched for a minute after each run ([`AttachKeeper`]).
    Keeper,
}

/// Which [`AttachMode`] is in force and why, for the log, `nsbox check` and `/v1/status`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachDecision {
    pub mode: AttachMode,
    pub detail: String,
}

/// What [`favor_dynmods`] will do, decided from the mount table alone.
#[derive(Debug, Clone, PartialEq)]
enum AttachPlan {
    AlreadySet,
    /// Remount `point` with these flags (the mount's own, so none is lost) and options.
    Remount {
        point: PathBuf,
        flags: nix::mount::MsFlags,
        options: String,
    },
    Keeper(String),
}

fn plan_attach(mountinfo: &str, allowed: bool) -> AttachPlan {
    let mounts = parse_mountinfo(mountinfo);
    let Some(cgroup2) = mounts.iter().find(|m| m.fstype == "cgroup2") else {
        return AttachPlan::Keeper("no cgroup2 mount to set favordynmods on".into());
    };
    if has_favordynmods(cgroup2) {
        return AttachPlan::AlreadySet;
    }
    if !allowed {
        return AttachPlan::Keeper("favordynmods = false in the configuration".into());
    }
    if cgroup2
        .mount_opts
        .iter()
        .chain(&cgroup2.super_opts)
        .any(|o| o == "ro")
    {
        // A read-only cgroupfs (a container's, usually) is kept so on purpose.
        return AttachPlan::Keeper(format!(
            "{} is mounted read-only, so nsbox leaves it as it is",
            cgroup2.point.display()
        ));
    }
    AttachPlan::Remount {
        point: cgroup2.point.clone(),
        flags: nix::mount::MsFlags::MS_REMOUNT | mount_flags(&cgroup2.mount_opts),
        options: remount_options(&cgroup2.super_opts),
    }
}

/// A remount replaces the mount's own flags with the ones it is given: these are the
/// mount's present ones, so `nosuid`, `nodev`, `noexec` and the atime rule stay.
fn mount_flags(mount_opts: &[String]) -> nix::mount::MsFlags {
    use nix::mount::MsFlags;
    mount_opts
        .iter()
        .map(|o| match o.as_str() {
            "ro" => MsFlags::MS_RDONLY,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            _ => MsFlags::empty(),
        })
        .fold(MsFlags::empty(), |all, f| all | f)
}

/// Puts `favordynmods` on the host's cgroup2 superblock when `allowed` and it is not there
/// yet: a remount with the mount's own flags and the superblock's other options passed
/// again (a cgroup2 remount sets exactly the options it is given). The attach lock is
/// shared by every hierarchy, so this serves a v1 or hybrid host too, as long as cgroup2
/// is mounted somewhere. It needs root in the initial user and cgroup namespaces;
/// elsewhere the kernel refuses or (in a cgroup namespace) accepts and ignores it, so the
/// result is read back, and the keeper stays in use unless the option is really on. With
/// `apply` false nothing is changed: the decision says what a server would do
/// (`nsbox check`).
pub fn favor_dynmods(allowed: bool, apply: bool) -> AttachDecision {
    let read = || fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let keeper = |why: String| AttachDecision {
        mode: AttachMode::Keeper,
        detail: format!("{why}; the spawner keeps the attach lock"),
    };
    let favored = |detail: String| AttachDecision {
        mode: AttachMode::FavorDynMods,
        detail,
    };
    let (point, flags, options) = match plan_attach(&read(), allowed) {
        AttachPlan::AlreadySet => {
            return favored("already set on the host's cgroup2".into());
        }
        AttachPlan::Keeper(why) => return keeper(why),
        AttachPlan::Remount {
            point,
            flags,
            options,
        } => (point, flags, options),
    };
    if !apply {
        return favored(format!(
            "not set yet; `nsbox serve` remounts {} with it at start",
            point.display()
        ));
    }
    if let Err(e) = nix::mount::mount(
        None::<&str>,
        &point,
        None::<&str>,
        flags,
        Some(options.as_str()),
    ) {
        return keeper(format!(
            "remounting cgroup2 with favordynmods failed ({e}: it needs root in the initial \
             user and cgroup namespaces and Linux 6.0)"
        ));
    }
    match plan_attach(&read(), allowed) {
        AttachPlan::AlreadySet => favored(format!(
            "nsbox remounted the host's cgroup2 ({}) with favordynmods: machine-wide, until \
             the next remount or reboot (favordynmods = false keeps the host's mount as it is)",
            point.display()
        )),
        _ => keeper(
            "the kernel accepted the remount with favordynmods but did not set it (a cgroup \
             namespace other than the initial one?)"
                .into(),
        ),
    }
}

fn has_favordynmods(mount: &Mount) -> bool {
    mount.super_opts.iter().any(|o| o == "favordynmods")
}

/// The superblock options of a cgroup2 remount that adds `favordynmods` and keeps the
/// others (`nsdelegate`, `memory_recursiveprot`, ...). `rw` is the mount's, not cgroup2's
/// (a read-only one is never remounted).
fn remount_options(super_opts: &[String]) -> String {
    super_opts
        .iter()
        .map(String::as_str)
        .filter(|o| !matches!(*o, "rw" | "ro" | "favordynmods" | ""))
        .chain(["favordynmods"])
        .collect::<Vec<_>>()
        .join(",")
}

/// How long the spawner keeps the attach lock switched after a run starts: an agent's
/// next call usually comes within seconds (a model's turn), and each keeping move costs
/// a few microseconds.
const KEEP_ATTACH_FOR: Duration = Duration::from_secs(60);

/// How often it moves itself while keeping the lock switched: the lock switches back after
/// about one idle RCU grace period, and moves 10 ms apart were measured to find it still
/// switched (20 ms apart, not).
const KEEP_ATTACH_EVERY: Duration = Duration::from_millis(5);

/// Keeps the cgroup attach lock in its writer mode while runs are coming, so a run that
/// follows an idle gap (an agent's next call) does not wait for the grace period the
/// [`prime_attach`] helper can only partly hide. The spawner moves itself to where it is
/// every few milliseconds until a minute after the last run started; an idle server does
/// nothing.
pub struct AttachKeeper {
    procs: fs::File,
    pid: String,
    until: Option<Instant>,
    next: Instant,
}

impl AttachKeeper {
    /// None without cgroups (nothing to keep) or when the file cannot be opened.
    pub fn open(cgroups: bool) -> Option<AttachKeeper> {
        if !cgroups {
            return None;
        }
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(own_procs().ok()?)
            .ok()?;
        Some(AttachKeeper {
            procs,
            pid: std::process::id().to_string(),
            until: None,
            next: Instant::now(),
        })
    }

    /// A run started: keep the lock switched for a while.
    pub fn run_started(&mut self) {
        self.until = Some(Instant::now() + KEEP_ATTACH_FOR);
    }

    /// How long the caller may sleep before the next [`AttachKeeper::tick`]; None when
    /// there is nothing to keep.
    pub fn due_in(&self) -> Option<Duration> {
        self.until?;
        Some(self.next.saturating_duration_since(Instant::now()))
    }

    /// Moves this process to its own cgroup when that is due.
    pub fn tick(&mut self) {
        let now = Instant::now();
        match self.until {
            Some(until) if now >= until => self.until = None,
            Some(_) if now >= self.next => {
                use std::io::Write;
                // A failed move only loses the head start; the runs still attach.
                let _ = (&self.procs).write_all(self.pid.as_bytes());
                self.next = now + KEEP_ATTACH_EVERY;
            }
            _ => {}
        }
    }
}

/// Makes a run (or template) the host OOM killer's first choice, over the server and every
/// other process: with cgroups the run's own limit normally acts first, but without them,
/// or when the host itself runs short, untrusted code is what should go. Inherited by every
/// process the run starts; raising the score needs no privilege.
pub fn prefer_as_oom_victim(pid: Pid) {
    let path = format!("/proc/{pid}/oom_score_adj");
    if let Err(e) = fs::write(&path, "1000") {
        tracing::warn!(error = %e, "setting {path}");
    }
}

#[cfg(test)]
mod tests {
    use super::files::remove_stale_servers;
    use super::*;

    #[test]
    fn a_favordynmods_remount_keeps_the_mounts_flags_and_the_other_cgroup2_options() {
        use nix::mount::MsFlags;
        let line = |mount: &str, sb: &str| {
            format!("41 31 0:38 / /sys/fs/cgroup/unified {mount} - cgroup2 cgroup2 {sb}\n")
        };
        assert_eq!(
            plan_attach(
                &line(
                    "rw,nosuid,nodev,noexec,relatime",
                    "rw,nsdelegate,memory_recursiveprot"
                ),
                true
            ),
            AttachPlan::Remount {
                point: "/sys/fs/cgroup/unified".into(),
                flags: MsFlags::MS_REMOUNT
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC
                    | MsFlags::MS_RELATIME,
                options: "nsdelegate,memory_recursiveprot,favordynmods".into(),
            }
        );
        assert_eq!(
            plan_attach(&line("rw,relatime", "rw,favordynmods"), true),
            AttachPlan::AlreadySet
        );
        assert!(matches!(
            plan_attach(&line("rw,relatime", "rw"), false),
            AttachPlan::Keeper(why) if why.contains("favordynmods = false")
        ));
        assert!(matches!(
            plan_attach(&line("ro,nosuid,nodev,noexec,relatime", "rw"), true),
            AttachPlan::Keeper(why) if why.contains("read-only")
        ));
        assert!(matches!(
            plan_attach(HYBRID_MOUNTINFO.lines().take(3).collect::<Vec<_>>().join("\n").as_str(), true),
            AttachPlan::Keeper(why) if why.contains("no cgroup2")
        ));
    }

    const HYBRID_CGROUP: &str =
        "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n";
    const HYBRID_MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 30 0:33 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
39 30 0:35 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const V2_CGROUP: &str = "0::/system.slice/nsbox.service\n";
    const V2_MOUNTINFO: &str =
        "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

    fn fake_v1() -> (tempfile::TempDir, Layout) {
        let root = tempfile::tempdir().unwrap();
        // The unified mount exists but offers no controllers, as on our hosts.
        fs::create_dir_all(root.path().join("sys/fs/cgroup/unified")).unwrap();
        fs::write(
            root.path().join("sys/fs/cgroup/unified/cgroup.controllers"),
            "",
        )
        .unwrap();
        let layout = detect_from(HYBRID_CGROUP, HYBRID_MOUNTINFO, root.path()).unwrap();
        (root, layout)
    }

    #[test]
    fn hybrid_host_is_detected_as_v1_with_per_controller_paths() {
        let (root, layout) = fake_v1();
        assert_eq!(
            layout,
            Layout::V1 {
                memory: root.path().join("sys/fs/cgroup/memory/process_api/abc"),
                pids: root.path().join("sys/fs/cgroup/pids/"),
                cpu: Some(root.path().join("sys/fs/cgroup/cpu/")),
            }
        );
    }

    #[test]
    fn unified_hierarchy_with_controllers_is_v2() {
        let root = tempfile::tempdir().unwrap();
        let own = root.path().join("sys/fs/cgroup/system.slice/nsbox.service");
        fs::create_dir_all(&own).unwrap();
        fs::write(
            own.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let layout = detect_from(V2_CGROUP, V2_MOUNTINFO, root.path()).unwrap();
        assert!(matches!(layout, Layout::V2 { ref own, .. } if own.ends_with("nsbox.service")));
    }

    #[test]
    fn no_controllers_anywhere_is_unavailable() {
        let root = tempfile::tempdir().unwrap();
        let err = detect_from("0::/\n", V2_MOUNTINFO, root.path()).unwrap_err();
        assert!(matches!(err, CgroupError::Unavailable(_)));
    }

    #[test]
    fn cgroupfs_mounted_from_a_nested_root_strips_the_mount_root() {
        let root = tempfile::tempdir().unwrap();
        let mountinfo = "33 30 0:29 /docker/x /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                         37 30 0:33 /docker/x /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
        let cgroup = "4:memory:/docker/x/inner\n8:pids:/docker/x\n";
        let Layout::V1 { memory, pids, cpu } = detect_from(cgroup, mountinfo, root.path()).unwrap()
        else {
            panic!("expected v1");
        };
        assert_eq!(memory, root.path().join("sys/fs/cgroup/memory/inner"));
        assert_eq!(pids, root.path().join("sys/fs/cgroup/pids/"));
        assert_eq!(cpu, None);
    }

    #[test]
    fn v1_run_cgroup_gets_every_limit_and_swap_off() {
        let (_root, layout) = fake_v1();
        let parent = CgroupParent::prepare(&layout, 4242).unwrap();
        let CgroupParent::V1(parent) = &parent else {
            panic!()
        };
        let memory = &parent.memory;
        assert!(memory.ends_with("nsbox/srv-4242"));
        // Swap accounting is on for this fake host.
        fs::create_dir_all(memory.join("run-1")).unwrap();
        fs::write(memory.join("run-1/memory.memsw.limit_in_bytes"), "").unwrap();
        let limits = Limits {
            memory_bytes: 256 << 20,
            max_processes: 32,
            cpus: 0.5,
            ..Limits::default()
        };
        let run = parent.create("run-1", &limits).unwrap();
        let read = |p: &Path| fs::read_to_string(p).unwrap();
        assert_eq!(read(&run.memory.join("memory.limit_in_bytes")), "268435456");
        assert_eq!(
            read(&run.memory.join("memory.memsw.limit_in_bytes")),
            "268435456"
        );
        assert_eq!(read(&run.pids.join("pids.max")), "32");
        assert_eq!(
            read(&run.cpu.as_ref().unwrap().join("cpu.cfs_quota_us")),
            "50000"
        );
        run.add(Pid::from_raw(77)).unwrap();
        assert_eq!(read(&run.pids.join("cgroup.procs")), "77");
    }

    #[test]
    fn v1_limit_counters_are_read_back() {
        let (_root, layout) = fake_v1();
        let parent = CgroupParent::prepare(&layout, 1).unwrap();
        let CgroupParent::V1(parent) = &parent else {
            panic!()
        };
        let run = parent.create("run-2", &Limits::default()).unwrap();
        assert!(!run.oom_killed());
        fs::write(
            run.memory.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        )
        .unwrap();
        fs::write(run.pids.join("pids.events"), "max 3\n").unwrap();
        fs::write(run.memory.join("memory.max_usage_in_bytes"), "1234\n").unwrap();
        assert!(run.oom_killed());
        assert!(run.pids_limit_hit());
        assert_eq!(run.peak_memory(), Some(1234));
    }

    #[test]
    fn v2_parent_moves_the_server_into_a_leaf_and_delegates_controllers() {
        let root = tempfile::tempdir().unwrap();
        let own = root.path().join("sys/fs/cgroup/system.slice/nsbox.service");
        fs::create_dir_all(&own).unwrap();
        fs::write(own.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        fs::write(own.join("cgroup.procs"), "4242\n").unwrap();
        let layout = detect_from(V2_CGROUP, V2_MOUNTINFO, root.path()).unwrap();
        let parent = CgroupParent::prepare(&layout, 4242).unwrap();
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(read(own.join("nsbox-server/cgroup.procs")), "4242");
        assert_eq!(
            read(own.join("cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        let CgroupParent::V2(parent) = &parent else {
            panic!("expected v2")
        };
        let run = parent.create("run-9", &Limits::default()).unwrap();
        assert_eq!(read(run.dir.join("memory.max")), (512u64 << 20).to_string());
        assert_eq!(read(run.dir.join("cpu.max")), "100000 100000");
        fs::write(
            run.dir.join("memory.events"),
            "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert!(run.oom_killed());
    }

    #[test]
    fn v2_remove_undoes_what_prepare_delegated() {
        let root = tempfile::tempdir().unwrap();
        let own = root.path().join("sys/fs/cgroup/system.slice/nsbox.service");
        fs::create_dir_all(&own).unwrap();
        fs::write(own.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        // memory was on already (another tool's choice): it stays on.
        fs::write(own.join("cgroup.subtree_control"), "memory\n").unwrap();
        fs::write(own.join("cgroup.procs"), "4242\n").unwrap();
        let layout = detect_from(V2_CGROUP, V2_MOUNTINFO, root.path()).unwrap();
        let parent = CgroupParent::prepare(&layout, 4242).unwrap();
        let CgroupParent::V2(v2) = &parent else {
            panic!("expected v2")
        };
        let delegated = &v2.delegated;
        assert_eq!(delegated.enabled, ["pids", "cpu"]);
        assert_eq!(delegated.leaf, Some(own.join("nsbox-server")));
        // What the kernel does when the server's run cgroups are gone: nsbox/ is empty.
        fs::remove_dir_all(own.join("nsbox")).unwrap();
        // The server and its spawner are in the leaf, as the kernel would list them.
        fs::write(own.join("nsbox-server/cgroup.procs"), "4242\n4243\n").unwrap();
        parent.remove();
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(read(own.join("cgroup.subtree_control")), "-pids -cpu");
        // Each write to cgroup.procs moves one process; the fake file keeps the last.
        assert_eq!(read(own.join("cgroup.procs")), "4243");
    }

    #[test]
    fn v2_remove_leaves_delegation_while_another_server_remains() {
        let root = tempfile::tempdir().unwrap();
        let own = root.path().join("sys/fs/cgroup/system.slice/nsbox.service");
        fs::create_dir_all(&own).unwrap();
        fs::write(own.join("cgroup.controllers"), "memory pids\n").unwrap();
        let layout = detect_from(V2_CGROUP, V2_MOUNTINFO, root.path()).unwrap();
        let parent = CgroupParent::prepare(&layout, 4242).unwrap();
        fs::remove_dir_all(own.join("nsbox/srv-4242")).unwrap();
        fs::create_dir_all(own.join("nsbox/srv-1")).unwrap();
        parent.remove();
        assert_eq!(
            fs::read_to_string(own.join("cgroup.subtree_control")).unwrap(),
            "+memory +pids"
        );
    }

    #[test]
    fn busy_error_tells_the_operator_what_to_do() {
        let e = CgroupError::Busy {
            path: "/sys/fs/cgroup/x".into(),
            others: v2::describe_pids(&[]),
        };
        let text = e.to_string();
        assert!(text.contains("Delegate=yes") && text.contains("/sys/fs/cgroup/x"));
    }

    #[test]
    fn stale_server_directories_are_removed_but_live_ones_kept() {
        let root = tempfile::tempdir().unwrap();
        let nsbox = root.path().join("nsbox");
        // A pid far above pid_max cannot be alive.
        fs::create_dir_all(nsbox.join("srv-999999999")).unwrap();
        let live = format!("srv-{}", std::process::id());
        fs::create_dir_all(nsbox.join(&live)).unwrap();
        remove_stale_servers(&nsbox, "srv-1");
        assert!(!nsbox.join("srv-999999999").exists());
        assert!(nsbox.join(&live).exists());
    }
}
