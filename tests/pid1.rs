//! nsbox as PID 1 of its PID namespace, as in a container with nsbox as its entrypoint: it serves runs, reaps the orphans the namespace hands it, and a SIGKILL of the server takes the spawner and every run with it.
//!
//! The server runs under `unshare --pid --fork --mount-proc` in cgroups of its own (below
//! this process's), so its `srv-<pid>` directory (named after a pid of its namespace) meets
//! no other server's, and what is left there is this test's alone.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    children, client, cmdline, pool_built, post, processes_of_uid, run_processes_of_uid,
    wait_until, wait_until_empty, Server, NOBODY,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

const UID_BASE: u32 = 3_300_000_000;

/// Moves itself into the cgroup directories before `--`, then becomes PID 1 of a new PID
/// namespace running the command after it.
const LAUNCH: &str = r#"while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 1; shift; done
shift
exec unshare --pid --fork --kill-child --mount-proc "$@""#;

/// Cgroup directories of this test's own (memory, pids and cpu of cgroup v1, or the one
/// of v2), created below this process's.
struct OwnCgroups(Vec<PathBuf>);

impl OwnCgroups {
    /// `tag` tells apart the tests of this process: each server's `srv-<pid>` directory is
    /// `srv-2` (the server is PID 2 of its namespace, under its reaper).
    fn create(tag: u32) -> OwnCgroups {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let name = format!("nsbox-pid1-test-{}-{tag}", std::process::id());
        let mut v1 = Vec::new();
        let mut v2 = None;
        for line in own.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let path = path.trim_end_matches('/');
            if controllers.is_empty() {
                v2 = Some(PathBuf::from(format!("/sys/fs/cgroup{path}/{name}")));
            }
            for ctl in ["memory", "pids", "cpu"] {
                if controllers.split(',').any(|c| c == ctl) {
                    v1.push(PathBuf::from(format!("/sys/fs/cgroup/{ctl}{path}/{name}")));
                }
            }
        }
        let dirs = if v1.is_empty() {
            v2.into_iter().collect()
        } else {
            v1
        };
        assert!(
            !dirs.is_empty(),
            "no cgroup hierarchy in /proc/self/cgroup:\n{own}"
        );
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        }
        OwnCgroups(dirs)
    }

    /// Every cgroup directory below ours, deepest first.
    fn below(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                    out.push(e.path());
                }
            }
        }
        let mut out = Vec::new();
        for d in &self.0 {
            walk(d, &mut out);
        }
        out
    }

    /// Processes in our cgroups or any below them.
    fn processes(&self) -> Vec<(PathBuf, String)> {
        self.0
            .iter()
            .cloned()
            .chain(self.below())
            .filter_map(|d| {
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                (!procs.trim().is_empty()).then(|| (d, procs.split_whitespace().collect()))
            })
            .collect()
    }
}

impl Drop for OwnCgroups {
    fn drop(&mut self) {
        // A failed test's namespace may still be going down.
        wait_until(Duration::from_secs(5), || {
            for d in self.below().iter().chain(self.0.iter()) {
                let _ = std::fs::remove_dir(d);
            }
            self.0.iter().all(|d| !d.exists())
        });
    }
}

fn status_field(pid: i32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| Some(l.strip_prefix(key)?.trim().to_string()))
}

fn is_zombie(pid: i32) -> bool {
    status_field(pid, "State:").is_some_and(|s| s.starts_with('Z'))
}

fn live_children(pid: i32) -> Vec<i32> {
    children(pid)
        .into_iter()
        .filter(|&p| !is_zombie(p))
        .collect()
}

/// The one live child of `pid`, waiting a little for it (a spawner is replaced within
/// about a second).
fn only_child(pid: i32, what: &str) -> i32 {
    let mut live = Vec::new();
    let found = wait_until(Duration::from_secs(10), || {
        live = live_children(pid);
        live.len() == 1
    });
    assert!(
        found,
        "{what}: expected one live child of {pid}, found {live:?}"
    );
    live[0]
}

fn pid_namespace(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Zombies of the PID namespace whose PID 1 is `init`: orphans nobody reaped.
fn zombies_in_namespace_of(init: i32) -> Vec<(i32, String)> {
    let ns = pid_namespace(init).expect("the namespace's init is gone");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|&p| pid_namespace(p).as_ref() == Some(&ns) && is_zombie(p))
        .map(|p| (p, status_field(p, "Name:").unwrap_or_default()))
        .collect()
}

fn run_prints(server: &Server, what: &str) {
    let reply = post(
        &client(Duration::from_secs(60)),
        &server.base,
        &json!({"code": "print(6 * 7)", "lang": "python", "timeout": 30}),
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        (reply.status, reply.body["stdout"].clone()),
        (200, json!("42\n")),
        "{what}: {}",
        reply.body
    );
}

/// Starts `code` as a run on a thread (its answer is the thread's result) and waits until
/// its Python runs (a process of `uid_base`'s nobody exists).
fn run_in_flight(
    server: &Server,
    uid_base: u32,
    code: &str,
) -> std::thread::JoinHandle<Result<common::Reply, String>> {
    let base = server.base.clone();
    let body = json!({"code": code, "lang": "python", "timeout": 60});
    let run = std::thread::spawn(move || post(&client(Duration::from_secs(60)), &base, &body));
    assert!(
        wait_until(Duration::from_secs(20), || !run_processes_of_uid(
            uid_base + NOBODY
        )
        .is_empty()),
        "the run never started: {code}"
    );
    run
}

/// `nsbox serve` as PID 1 of a new PID namespace, in cgroups of its own, its runs on the
/// host ids from `uid_base`.
fn start_as_pid_1(uid_base: u32) -> (OwnCgroups, Server) {
    let cgroups = OwnCgroups::create(uid_base);
    let uid_base = uid_base.to_string();
    let mut launcher = vec!["sh", "-c", LAUNCH, "sh"];
    let dirs: Vec<String> = cgroups.0.iter().map(|d| d.display().to_string()).collect();
    launcher.extend(dirs.iter().map(String::as_str));
    launcher.push("--");
    let server = Server::start_under(
        &launcher,
        Path::new(env!("CARGO_BIN_EXE_nsbox")),
        &["--scanner", "off", "--uid-base", &uid_base],
        &[],
    );
    (cgroups, server)
}

#[test]
fn nsbox_as_pid_1_serves_reaps_orphans_and_takes_everything_with_it_when_killed() {
    let (cgroups, mut server) = start_as_pid_1(UID_BASE);
    // unshare's child is PID 1 of the new namespace: nsbox itself.
    let init = only_child(server.pid() as i32, "unshare");
    assert_eq!(
        status_field(init, "NSpid:").and_then(|s| s.split_whitespace().last().map(String::from)),
        Some("1".to_string()),
        "nsbox is PID 1 of its namespace"
    );
    run_prints(&server, "a run with nsbox as PID 1");

    // The spawner dies with a run in flight: its supervisors and templates die with it
    // (their parent-death signal) and are handed to PID 1, which must reap them.
    // With a reaper as PID 1, nsbox serves from its child; the spawner is the server's.
    let first = only_child(init, "PID 1");
    let nsbox_server = if cmdline(first).contains("__spawner") {
        init
    } else {
        first
    };
    let spawner = only_child(nsbox_server, "the server");
    let long = run_in_flight(&server, UID_BASE, "import time\ntime.sleep(30)");
    kill(Pid::from_raw(spawner), Signal::SIGKILL).unwrap();
    long.join()
        .unwrap()
        .expect("the run in flight is answered when its spawner dies");
    wait_until_empty(
        Duration::from_secs(10),
        "orphans left unreaped in the namespace of PID 1",
        || zombies_in_namespace_of(init),
    );
    server.wait_ready();
    run_prints(&server, "a run after the spawner was replaced");

    // SIGKILL of the server: the spawner, the templates and every run go with it.
    let spawner = only_child(nsbox_server, "the server");
    let long = run_in_flight(&server, UID_BASE, "import time\ntime.sleep(30)");
    kill(Pid::from_raw(nsbox_server), Signal::SIGKILL).unwrap();
    assert!(
        server.wait_exit(Duration::from_secs(10)).is_some(),
        "PID 1 outlived the server it started"
    );
    assert!(
        long.join().unwrap().is_err(),
        "the run in flight had no server to answer it"
    );
    let gone = |pid: i32| !Path::new(&format!("/proc/{pid}")).exists();
    assert!(
        wait_until(Duration::from_secs(5), || gone(spawner) && gone(init)),
        "the spawner {spawner} or PID 1 {init} outlived the server"
    );
    for uid in [UID_BASE, UID_BASE + NOBODY] {
        wait_until_empty(
            Duration::from_secs(5),
            &format!("processes of uid {uid} outlived the server"),
            || processes_of_uid(uid),
        );
    }
    wait_until_empty(
        Duration::from_secs(5),
        "processes left in the server's cgroups",
        || cgroups.processes(),
    );
}

/// A container engine stops a container with SIGTERM to its PID 1: nsbox's reaper passes
/// it on, the server shuts down cleanly (its run in flight answered), and PID 1 exits with
/// the server's status.
#[test]
fn sigterm_to_pid_1_is_a_clean_shutdown() {
    let (cgroups, mut server) = start_as_pid_1(UID_BASE + 1_000_000);
    let init = only_child(server.pid() as i32, "unshare");
    // Ready sandboxes name their cgroups with pids of the server's namespace, not the
    // host's: they must still be told from runs, or the wait for the run below ends early.
    assert!(
        wait_until(Duration::from_secs(30), || pool_built(server.pid())),
        "the ready sandboxes were never built"
    );
    let nobody = UID_BASE + 1_000_000 + NOBODY;
    assert!(
        !processes_of_uid(nobody).is_empty(),
        "no ready sandbox's process runs as nobody"
    );
    assert_eq!(
        run_processes_of_uid(nobody),
        Vec::<i32>::new(),
        "waiting sandboxes of a server that is PID 1 counted as runs"
    );
    let run = run_in_flight(
        &server,
        UID_BASE + 1_000_000,
        "import time\ntime.sleep(2)\nprint('done')",
    );
    kill(Pid::from_raw(init), Signal::SIGTERM).unwrap();
    let reply = run.join().unwrap().expect("the run in flight is answered");
    assert_eq!(
        (reply.status, reply.body["stdout"].clone()),
        (200, json!("done\n")),
        "{}",
        reply.body
    );
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("PID 1 exits after the server");
    assert!(
        status.success(),
        "exit {status}\n{}",
        server.log.lock().unwrap()
    );
    assert!(
        server.log.lock().unwrap().contains("nsbox stopped"),
        "{}",
        server.log.lock().unwrap()
    );
    wait_until_empty(
        Duration::from_secs(5),
        "processes left in the server's cgroups",
        || cgroups.processes(),
    );
}
