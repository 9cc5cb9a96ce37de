//! Linux namespaces of a run: which ones are created, the user-namespace id maps (and how they are written: as host root, through the setuid helpers, or as the one id an unprivileged user may map), and the per-run hostname and loopback.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{sethostname, setresgid, setresuid, Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

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

/// Where the setuid helpers are looked for when they are not on `PATH`.
const HELPER_DIRS: [&str; 4] = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"];

#[derive(Debug, thiserror::Error)]
pub enum IdMapError {
    #[error("writing {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error("starting {helper}: {source}")]
    Helper { helper: PathBuf, source: io::Error },
    #[error("{helper} refused the map ({status}): {stderr}")]
    HelperFailed {
        helper: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

impl IdMapError {
    /// The errno a run's failure report carries.
    pub fn errno(&self) -> Errno {
        match self {
            IdMapError::Write { source, .. } | IdMapError::Helper { source, .. } => {
                Errno::from_raw(source.raw_os_error().unwrap_or(libc::EIO))
            }
            IdMapError::HelperFailed { .. } => Errno::EPERM,
        }
    }
}

/// How host ids are mapped into every sandbox's user namespace. Chosen once, when the
/// server starts ([`IdMapping::choose`]), and the same for cold runs and templates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum IdMapping {
    /// The server holds CAP_SETUID and CAP_SETGID over the ids it maps (host root): it
    /// writes 0..65535 → `base`.. itself.
    HostRoot { base: u32 },
    /// Unprivileged, with a range of subordinate ids in /etc/subuid and /etc/subgid: the
    /// setuid helpers `newuidmap`/`newgidmap` write 0..65535 → the range.
    SubordinateIds {
        uid_base: u32,
        gid_base: u32,
        newuidmap: PathBuf,
        newgidmap: PathBuf,
    },
    /// Unprivileged without helpers: the only map the kernel lets a user write, its own ids
    /// (inside 65534 → the server's uid and gid), with setgroups denied. Inside there is no
    /// root, but the creator of a user namespace holds every capability in it, which is all
    /// the set-up needs.
    SingleId { uid: u32, gid: u32 },
}

/// What `/v1/status` reports about the id mapping.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IdMappingReport {
    /// `host-root`, `subordinate-ids` or `single-id`.
    pub mode: &'static str,
    /// The host uid the run's code (`nobody`) has.
    pub run_host_uid: u32,
    pub description: String,
}

impl IdMapping {
    /// Decides how id maps are written on this host, for a server configured with
    /// `uid_base`; a mode weaker than host root comes with a warning to say loudly.
    pub fn choose(uid_base: u32) -> (IdMapping, Option<String>) {
        let has = |cap| caps::has_cap(None, caps::CapSet::Effective, cap).unwrap_or(false);
        let privileged = has(caps::Capability::CAP_SETUID) && has(caps::Capability::CAP_SETGID);
        let covered = |file: &str| {
            fs::read_to_string(file)
                .map(|map| range_is_mapped(&map, uid_base, MAPPED_IDS))
                .unwrap_or(false)
        };
        let mut notes = Vec::new();
        if privileged {
            if covered("/proc/self/uid_map") && covered("/proc/self/gid_map") {
                return (IdMapping::HostRoot { base: uid_base }, None);
            }
            notes.push(format!(
                "--uid-base {uid_base}..+{MAPPED_IDS} is not mapped in this user namespace (see /proc/self/uid_map); pick a range that is"
            ));
        }
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let name = user_name(uid, &fs::read_to_string("/etc/passwd").unwrap_or_default());
        let helper = |n: &str| find_helper(n, std::env::var_os("PATH"));
        let range = |file: &str, id: u32| {
            let text = fs::read_to_string(file).unwrap_or_default();
            subordinate_range(&text, name.as_deref(), id, MAPPED_IDS)
        };
        match (
            helper("newuidmap"),
            helper("newgidmap"),
            range("/etc/subuid", uid),
            range("/etc/subgid", gid),
        ) {
            // The helpers refuse a user without a name ("Cannot determine your user name").
            (Some(newuidmap), Some(newgidmap), Some(uid_base), Some(gid_base))
                if name.is_some() =>
            {
                let mapping = IdMapping::SubordinateIds {
                    uid_base,
                    gid_base,
                    newuidmap,
                    newgidmap,
                };
                let warning = (!notes.is_empty()).then(|| notes.join("; "));
                (mapping, warning)
            }
            (u, g, su, sg) => {
                if u.is_none() || g.is_none() {
                    notes.push("newuidmap/newgidmap not found (Debian package uidmap)".into());
                }
                if name.is_none() {
                    notes.push(format!(
                        "uid {uid} has no entry in /etc/passwd, which newuidmap needs"
                    ));
                } else if su.is_none() || sg.is_none() {
                    notes.push(format!(
                        "no range of {MAPPED_IDS} ids for {} (uid {uid}, gid {gid}) in /etc/subuid and /etc/subgid",
                        name.as_deref().unwrap_or("this user")
                    ));
                }
                let mut groups = nix::unistd::getgroups().unwrap_or_default();
                groups.retain(|g| g.as_raw() != gid);
                if !groups.is_empty() {
                    notes.push(format!(
                        "runs keep the server's supplementary groups {:?} (setgroups is denied in a single-id namespace): start nsbox without them",
                        groups.iter().map(|g| g.as_raw()).collect::<Vec<_>>()
                    ));
                }
                let warning = format!(
                    "single-id user namespaces: runs execute as the server's own host uid {uid} (inside, nobody), not a uid of their own: {}",
                    notes.join("; ")
                );
                (IdMapping::SingleId { uid, gid }, Some(warning))
            }
        }
    }

    /// [`IdMapping::choose`], then proves the choice on a throwaway user namespace: a
    /// helper that is present but cannot map (not setuid, a stale /etc/subuid) falls back
    /// to a single id at start, loudly, rather than failing every run.
    pub fn decide(uid_base: u32) -> (IdMapping, Option<String>) {
        let (mapping, warning) = IdMapping::choose(uid_base);
        match (mapping.probe(), &mapping) {
            (Ok(_), _) | (Err(_), IdMapping::SingleId { .. }) => (mapping, warning),
            (Err(e), _) => {
                let uid = nix::unistd::getuid().as_raw();
                let gid = nix::unistd::getgid().as_raw();
                let single = IdMapping::SingleId { uid, gid };
                let warning = format!(
                    "single-id user namespaces: runs execute as the server's own host uid {uid} (inside, nobody), not a uid of their own: the {} mapping failed its start-up probe: {e}",
                    mapping.report().mode
                );
                (single, Some(warning))
            }
        }
    }

    /// Creates a user namespace, maps it this way and checks the ids inside from a child.
    /// Skipped (Ok) when the process already has threads: `clone_fork` needs a
    /// single-threaded caller, and serve, run and check all decide before starting any.
    pub fn probe(&self) -> Result<String, String> {
        let threads = fs::read_dir("/proc/self/task")
            .map(|d| d.count())
            .unwrap_or(0);
        if threads != 1 {
            return Ok("not probed (the process has threads)".into());
        }
        let (wait_read, wait_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let maps_root = self.maps_root();
        let child = match sys::clone_fork(CloneFlags::CLONE_NEWUSER) {
            Ok(None) => {
                drop(wait_write);
                let mut byte = [0u8; 1];
                let released =
                    nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&wait_read), &mut byte)
                        == Ok(1);
                let ok = released
                    && if maps_root {
                        become_root(true).is_ok()
                    } else {
                        nix::unistd::getuid().as_raw() == NOBODY
                            && nix::unistd::getgid().as_raw() == NOBODY
                    };
                sys::exit_now(if ok { 0 } else { 1 })
            }
            Ok(Some(pid)) => pid,
            Err(e) => return Err(format!("creating a user namespace: {e}")),
        };
        drop(wait_read);
        let written = self.write(child);
        if written.is_ok() {
            let _ = nix::unistd::write(&wait_write, &[1]);
        }
        drop(wait_write);
        let status = nix::sys::wait::waitpid(child, None);
        written.map_err(|e| e.to_string())?;
        match status {
            Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(self.report().description),
            other => Err(format!(
                "the ids inside were not as mapped (probe child: {other:?})"
            )),
        }
    }

    /// Whether uid 0 exists inside, so the sandbox's init can become root there.
    pub fn maps_root(&self) -> bool {
        !matches!(self, IdMapping::SingleId { .. })
    }

    /// What the status endpoint says.
    pub fn report(&self) -> IdMappingReport {
        match self {
            IdMapping::HostRoot { base } => IdMappingReport {
                mode: "host-root",
                run_host_uid: base + NOBODY,
                description: format!(
                    "ids 0-65535 of each run are host ids {base}-{}, written by the server (CAP_SETUID, CAP_SETGID)",
                    base + MAPPED_IDS - 1
                ),
            },
            IdMapping::SubordinateIds {
                uid_base, gid_base, ..
            } => IdMappingReport {
                mode: "subordinate-ids",
                run_host_uid: uid_base + NOBODY,
                description: format!(
                    "ids 0-65535 of each run are subordinate uids {uid_base}-{} and gids {gid_base}-{}, written by newuidmap/newgidmap",
                    uid_base + MAPPED_IDS - 1,
                    gid_base + MAPPED_IDS - 1
                ),
            },
            IdMapping::SingleId { uid, gid } => IdMappingReport {
                mode: "single-id",
                run_host_uid: *uid,
                description: format!(
                    "one id per run: nobody inside is the server's own uid {uid} and gid {gid}; no root inside, setgroups denied"
                ),
            },
        }
    }

    /// Writes the maps of a sandbox (cold run or template) whose init waits in its new
    /// user namespace, from the server's side (the initial user namespace).
    pub fn write(&self, pid: Pid) -> Result<(), IdMapError> {
        match self {
            IdMapping::HostRoot { base } => {
                let line = format!("0 {base} {MAPPED_IDS}\n");
                write_map(pid, "uid_map", &line)?;
                write_map(pid, "gid_map", &line)
            }
            IdMapping::SubordinateIds {
                uid_base,
                gid_base,
                newuidmap,
                newgidmap,
            } => {
                run_helper(newuidmap, pid, *uid_base)?;
                run_helper(newgidmap, pid, *gid_base)
            }
            IdMapping::SingleId { uid, gid } => {
                // The kernel lets an unprivileged gid map be written only once setgroups
                // is denied, so no one in the namespace can drop (or add) groups.
                write_map(pid, "setgroups", "deny\n")?;
                write_map(pid, "uid_map", &format!("{NOBODY} {uid} 1\n"))?;
                write_map(pid, "gid_map", &format!("{NOBODY} {gid} 1\n"))
            }
        }
    }

    /// Writes the maps of a warm run's namespace, nested in its template's: from the
    /// zygote, whose ids are the template's. The run gets the same ids as a cold one.
    pub fn write_nested(maps_root: bool, pid: Pid) -> Result<(), IdMapError> {
        if maps_root {
            // The zygote is root of the template with CAP_SETUID, CAP_SETGID, CAP_SETFCAP.
            let line = format!("0 0 {MAPPED_IDS}\n");
            write_map(pid, "uid_map", &line)?;
            write_map(pid, "gid_map", &line)
        } else {
            // The zygote is `nobody` of a single-id template, without capabilities: again
            // the one map of its own id is all it may write (setgroups is denied already,
            // inherited from the template, but the kernel wants it said).
            write_map(pid, "setgroups", "deny\n")?;
            let line = format!("{NOBODY} {NOBODY} 1\n");
            write_map(pid, "uid_map", &line)?;
            write_map(pid, "gid_map", &line)
        }
    }
}

fn write_map(pid: Pid, file: &str, text: &str) -> Result<(), IdMapError> {
    let path = format!("/proc/{pid}/{file}");
    fs::write(&path, text).map_err(|source| IdMapError::Write { path, source })
}

fn run_helper(helper: &Path, pid: Pid, base: u32) -> Result<(), IdMapError> {
    let out = Command::new(helper)
        .args([
            pid.to_string(),
            "0".into(),
            base.to_string(),
            MAPPED_IDS.to_string(),
        ])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| IdMapError::Helper {
            helper: helper.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(IdMapError::HelperFailed {
            helper: helper.to_path_buf(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Whether ids `first..first+count` of this namespace are all mapped, given the text of
/// `/proc/self/uid_map` (lines `inside outside count`).
fn range_is_mapped(map: &str, first: u32, count: u32) -> bool {
    let end = first as u64 + count as u64;
    let mut ranges: Vec<(u64, u64)> = map
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(|x| x.parse::<u64>().ok());
            let inside = f.next()??;
            let _outside = f.next()??;
            let n = f.next()??;
            Some((inside, inside + n))
        })
        .collect();
    ranges.sort();
    let mut at = first as u64;
    for (lo, hi) in ranges {
        if lo <= at && hi > at {
            at = hi;
        }
        if at >= end {
            return true;
        }
    }
    false
}

/// The user name of `uid` from the text of /etc/passwd (read directly: no NSS, so it
/// works the same in a static build; /etc/subuid names local users anyway).
fn user_name(uid: u32, passwd: &str) -> Option<String> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
    })
}

/// The first range of at least `count` subordinate ids that /etc/subuid (or subgid) text
/// gives to `name` or to the numeric `id`, as newuidmap accepts either.
fn subordinate_range(text: &str, name: Option<&str>, id: u32, count: u32) -> Option<u32> {
    let id = id.to_string();
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.trim().split(':').collect();
        let [owner, start, n] = f[..] else {
            return None;
        };
        let start: u32 = start.parse().ok()?;
        let n: u64 = n.parse().ok()?;
        let mine = Some(owner) == name || owner == id;
        (mine && n >= count as u64 && start as u64 + n <= u32::MAX as u64).then_some(start)
    })
}

/// `name` on `PATH`, else in the usual directories: the first executable file found.
fn find_helper(name: &str, path: Option<std::ffi::OsString>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let on_path: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(HELPER_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Makes the run's init root of its user namespace (mapped ids, full capabilities there).
/// In a single-id namespace there is no root: the init stays the one mapped id and keeps
/// the capabilities its new namespace gave it, so there is nothing to do.
/// Creates every namespace a run gets in a throwaway child that exits at once: proof that
/// this host allows them. The caller must still be single-threaded, as `clone_fork` requires
/// (`nsbox check` probes before any spawner or runtime starts).
pub fn probe() -> Result<(), String> {
    match sys::clone_fork(RUN_NAMESPACES) {
        Ok(None) => sys::exit_now(0),
        Ok(Some(child)) => match nix::sys::wait::waitpid(child, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
            other => Err(format!("the probe child ended with {other:?}")),
        },
        Err(e) => Err(format!("clone failed: {e}")),
    }
}

pub fn become_root(maps_root: bool) -> Result<(), Errno> {
    if !maps_root {
        return Ok(());
    }
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

/// Switches to `nobody`. From root the kernel clears every capability on this transition;
/// in a single-id namespace the process already is `nobody` and the caller drops them
/// explicitly. There setgroups is denied, so the groups stay what they were.
pub fn become_nobody(maps_root: bool) -> Result<(), Errno> {
    if maps_root {
        nix::unistd::setgroups(&[])?;
    }
    let gid = Gid::from_raw(NOBODY);
    let uid = Uid::from_raw(NOBODY);
    setresgid(gid, gid, gid)?;
    setresuid(uid, uid, uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_namespace_maps_every_range() {
        let init = "         0          0 4294967295\n";
        assert!(range_is_mapped(init, 1_000_000_000, MAPPED_IDS));
        let container = "0 100000 65536\n";
        assert!(range_is_mapped(container, 0, MAPPED_IDS));
        assert!(!range_is_mapped(container, 1_000_000_000, MAPPED_IDS));
        // Two adjacent ranges cover what neither covers alone.
        let split = "0 100000 40000\n40000 300000 40000\n";
        assert!(range_is_mapped(split, 0, MAPPED_IDS));
        assert!(!range_is_mapped("0 1 10\n", 0, 11));
    }

    #[test]
    fn subordinate_ranges_by_name_or_uid_and_big_enough() {
        let subuid = "alice:100000:65536\nbob:200000:1000\n1501:300000:70000\n";
        assert_eq!(
            subordinate_range(subuid, Some("alice"), 1500, MAPPED_IDS),
            Some(100000)
        );
        // Too small a range is not used.
        assert_eq!(
            subordinate_range(subuid, Some("bob"), 1502, MAPPED_IDS),
            None
        );
        assert_eq!(
            subordinate_range(subuid, None, 1501, MAPPED_IDS),
            Some(300000)
        );
        assert_eq!(subordinate_range("garbage\n", Some("x"), 1, 1), None);
    }

    #[test]
    fn user_names_come_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nnsbox:x:1500:1500::/tmp:/bin/sh\n";
        assert_eq!(user_name(1500, passwd).as_deref(), Some("nsbox"));
        assert_eq!(user_name(7, passwd), None);
    }

    #[test]
    fn host_root_is_chosen_when_privileged() {
        // The test suite runs as root in the initial user namespace.
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let (mapping, warning) = IdMapping::choose(1_000_000_000);
        assert_eq!(
            mapping,
            IdMapping::HostRoot {
                base: 1_000_000_000
            }
        );
        assert!(warning.is_none());
        assert_eq!(mapping.report().run_host_uid, 1_000_065_534);
    }

    #[test]
    fn reports_name_the_mode() {
        let single = IdMapping::SingleId {
            uid: 1500,
            gid: 1500,
        };
        assert!(!single.maps_root());
        assert_eq!(single.report().mode, "single-id");
        assert_eq!(single.report().run_host_uid, 1500);
        let sub = IdMapping::SubordinateIds {
            uid_base: 100000,
            gid_base: 200000,
            newuidmap: "/usr/bin/newuidmap".into(),
            newgidmap: "/usr/bin/newgidmap".into(),
        };
        assert!(sub.maps_root());
        assert_eq!(sub.report().run_host_uid, 165534);
    }
}
