//! Ready sandboxes (the pool, issue 25): one that nobody uses leaves nothing behind, each is given to one request only, and a pool under SIGTERM drains, through the real server over the real sandbox.
//!
//! Every test starts its own server on a uid range of its own (so the processes it counts
//! are its own) and takes [`exclusive`] first: they count the host's processes, cgroups and
//! descriptors. Run them as root.

mod common;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::{
    children, cmdline, comm, proc_status_field, process_tree, processes_of_uid, run_cgroups,
    run_processes_of_uid, run_supervisor_of, server_cgroup_dirs, server_child_cgroups,
    unforked_interpreters, wait_until, wait_until_empty, waiting_in_pool, Server, NOBODY,
    POOL_WAITING_NAME,
};
use serde_json::{json, Value};

fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A uid range per test, apart from the ranges of the other test files.
fn uid_base(slot: u32) -> u32 {
    3_300_000_000 + slot * 1_000_000
}

fn status(server: &Server) -> Value {
    server.get("/v1/status").json().unwrap()
}

/// Ready sandboxes of `template` waiting now.
fn ready_of(server: &Server, template: &str) -> u64 {
    status(server)["pool"]["ready"][template]
        .as_u64()
        .unwrap_or(0)
}

/// Ready sandboxes of the base template waiting now.
fn ready_base(server: &Server) -> u64 {
    ready_of(server, "base")
}

fn claims(server: &Server) -> u64 {
    status(server)["pool"]["claims"].as_u64().unwrap()
}

fn wait_for_ready(server: &Server, n: u64) {
    assert!(
        wait_until(Duration::from_secs(30), || ready_base(server) == n),
        "the pool never had {n} ready base sandboxes: {:#}",
        status(server)
    );
}

/// The server's spawner (its one child running `__spawner`).
fn spawner_of(server: &Server) -> i32 {
    children(server.pid() as i32)
        .into_iter()
        .find(|p| cmdline(*p).contains("__spawner"))
        .expect("the server has a spawner")
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// What a number of waiting sandboxes holds on the host: the spawner's descriptors and
/// processes, the run cgroups, and the processes of the runs' `nobody`.
#[derive(Debug, PartialEq)]
struct Held {
    spawner_fds: usize,
    spawner_tree: usize,
    cgroups: usize,
    nobody: usize,
    server_fds: usize,
}

fn held(server: &Server, base: u32) -> Held {
    let spawner = spawner_of(server);
    Held {
        spawner_fds: open_fds(spawner),
        // A supervisor that exited waits as a zombie until the spawner next wakes.
        spawner_tree: process_tree(spawner)
            .into_iter()
            .filter(|p| proc_status_field(*p, "State:").is_some_and(|s| !s.starts_with('Z')))
            .count(),
        cgroups: server_child_cgroups(server.pid()).len(),
        nobody: processes_of_uid(base + NOBODY).len(),
        server_fds: open_fds(server.pid() as i32),
    }
}

/// A pool that shrinks once idle ends the sandboxes it lets go of unused: each takes its
/// processes, its cgroup and its descriptors in the spawner with it, and the server holds
/// no more than it did.
#[test]
fn a_ready_sandbox_nobody_uses_leaves_nothing() {
    let _one = exclusive();
    let base = uid_base(0);
    let server = Server::start_in_uid_range(
        base,
        &[
            "--warm-templates",
            "base",
            "--pool-size",
            "3",
            "--pool-idle",
            "10",
        ],
        &[],
    );
    // A run, so the pool is full again right after it (its sandbox refilled) and then
    // idles down to one. The idle time leaves room to see the three first on a loaded
    // machine: at 3 s the pool once shrank before they were counted (after the faults
    // suite), and the test failed on the count, not on a leak.
    let r = server.run("print('hi')");
    assert_eq!(r["stdout"], "hi\n", "{r:#}");
    wait_for_ready(&server, 3);
    // Once the run is torn down: three sandboxes' cgroups, one per hierarchy each.
    let hierarchies = server_cgroup_dirs(server.pid()).len();
    let mut three = held(&server, base);
    assert!(
        wait_until(Duration::from_secs(5), || {
            three = held(&server, base);
            three.cgroups == 3 * hierarchies && three.nobody == 3
        }),
        "one cgroup and one waiting Python per ready sandbox: {three:?}"
    );
    wait_for_ready(&server, 1);
    let mut one = held(&server, base);
    // Each sandbox let go of is gone as a whole: its init and Python, its supervisor, its
    // link in the spawner and every cgroup directory of it.
    let expected = |one: &Held| {
        Held {
            spawner_fds: three.spawner_fds - 2,
            spawner_tree: three.spawner_tree - 2 * 3,
            cgroups: three.cgroups / 3,
            nobody: 1,
            server_fds: three.server_fds,
        } == *one
    };
    assert!(
        wait_until(Duration::from_secs(5), || {
            one = held(&server, base);
            expected(&one)
        }),
        "with three ready sandboxes {three:?}, after two were let go of {one:?}"
    );
}

/// Many requests at once against a small pool: every run gets a sandbox of its own (none
/// sees another's files or processes), every request is answered, and the pool served
/// some of them without serving more than there were.
#[test]
fn a_ready_sandbox_is_given_to_one_request_only() {
    let _one = exclusive();
    let base = uid_base(1);
    let server = std::sync::Arc::new(Server::start_in_uid_range(
        base,
        &[
            "--warm-templates",
            "base",
            "--pool-size",
            "4",
            "--max-running",
            "8",
            "--scanner",
            "off",
        ],
        &[],
    ));
    wait_for_ready(&server, 4);
    let before = claims(&server);
    let code = r#"
import os, time
seen = sorted(os.listdir('/tmp/work')) + (['mark'] if os.path.exists('/tmp/mark') else [])
open('/tmp/mark', 'w').write('x')
open('/tmp/work/mine', 'w').write('x')
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
time.sleep(0.3)
print(seen, pids == [1, os.getpid()])
"#;
    let requests = 24;
    let answers: Vec<Value> = (0..requests)
        .map(|_| {
            let server = server.clone();
            std::thread::spawn(move || server.run_with(json!({"lang": "python", "code": code})))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for a in &answers {
        assert_eq!(a["stdout"], "[] True\n", "{a:#}");
        assert_eq!(a["exit_code"], 0, "{a:#}");
    }
    let served = claims(&server) - before;
    assert!(
        served > 0 && served <= requests,
        "the pool served {served} of {requests} requests"
    );
}

/// SIGTERM while a run is in flight and ready sandboxes wait: the run finishes, the server
/// exits, and nothing of any sandbox is left (processes, cgroups).
#[test]
fn a_pool_under_sigterm_drains() {
    let _one = exclusive();
    let base = uid_base(2);
    let mut server = Server::start_in_uid_range(
        base,
        &[
            "--warm-templates",
            "base",
            "--pool-size",
            "3",
            "--scanner",
            "off",
        ],
        &[],
    );
    wait_for_ready(&server, 3);
    let pid = server.pid();
    let cgroup_dirs = server_cgroup_dirs(pid);
    assert!(!cgroup_dirs.is_empty());
    let client = server.client().clone();
    let url = format!("{}/v1/tools/code", server.base);
    let run = std::thread::spawn(move || {
        client
            .post(url)
            .json(&json!({"lang": "python", "code": "import time\ntime.sleep(1.5)\nprint('done')"}))
            .send()
            .and_then(|r| r.json::<Value>())
    });
    assert!(wait_until(Duration::from_secs(10), || status(&server)
        ["running"]
        == 1));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let answer = run.join().unwrap().expect("the run in flight is answered");
    assert_eq!(answer["stdout"], "done\n", "{answer:#}");
    let exit = server
        .wait_exit(Duration::from_secs(20))
        .expect("the server exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
    wait_until_empty(Duration::from_secs(5), "processes of the runs", || {
        (0..=65535u32)
            .step_by(65534)
            .flat_map(|id| processes_of_uid(base + id))
            .collect()
    });
    wait_until_empty(Duration::from_secs(5), "run cgroups", || {
        server_child_cgroups(pid)
    });
    wait_until_empty(Duration::from_secs(5), "the server's cgroups", || {
        cgroup_dirs.iter().filter(|d| d.exists()).cloned().collect()
    });
}

/// Ready sandboxes whose Python is killed while they wait (nothing in them should end):
/// each is ended and replaced, and the requests that come at once are all answered (one
/// sent to a sandbox that just ended is served the way it would be without a pool).
#[test]
fn a_ready_sandbox_that_dies_while_it_waits_costs_no_request() {
    let _one = exclusive();
    let base = uid_base(3);
    let server = std::sync::Arc::new(Server::start_in_uid_range(
        base,
        &["--warm-templates", "base", "--pool-size", "3"],
        &[],
    ));
    wait_for_ready(&server, 3);
    for pid in processes_of_uid(base + NOBODY) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // The kill itself is not instant; a run handed over in the moment Python dies would
    // be killed with it, as by any SIGKILL from outside.
    std::thread::sleep(Duration::from_millis(100));
    let answers: Vec<Value> = (0..4)
        .map(|_| {
            let server = server.clone();
            std::thread::spawn(move || server.run("print(6 * 7)"))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for a in &answers {
        assert_eq!(a["stdout"], "42\n", "{a:#}");
    }
    wait_for_ready(&server, 3);
}

/// The other suites' leftover checks (`run_processes_of_uid`, `run_cgroups`) leave out the
/// sandboxes that wait, by a fact of the host (the name of the supervisor whose `run-<pid>`
/// cgroup a process is in), and still count the processes of a claimed run, even ones
/// that give themselves that name.
#[test]
fn leftover_checks_leave_out_waiting_sandboxes_but_not_a_claimed_runs_processes() {
    let _one = exclusive();
    let base = uid_base(4);
    let server = std::sync::Arc::new(Server::start_in_uid_range(
        base,
        &[
            "--warm-templates",
            "base",
            "--pool-size",
            "2",
            "--scanner",
            "off",
        ],
        &[],
    ));
    wait_for_ready(&server, 2);
    let mut waiting = Vec::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            waiting = processes_of_uid(base + NOBODY);
            !waiting.is_empty() && waiting.iter().all(|p| waiting_in_pool(*p))
        }),
        "the waiting sandboxes' processes {waiting:?} are not told apart"
    );
    assert_eq!(run_processes_of_uid(base + NOBODY), Vec::<i32>::new());
    assert!(!server_child_cgroups(server.pid()).is_empty());
    assert_eq!(run_cgroups(server.pid()), Vec::<std::path::PathBuf>::new());
    let claimed_before = claims(&server);
    // A run whose Python and a child of it take the name of a waiting sandbox's supervisor.
    let code = format!(
        "import os, time\n\
         open('/proc/self/comm', 'w').write('{POOL_WAITING_NAME}')\n\
         if os.fork() == 0:\n    time.sleep(60)\n\
         time.sleep(60)"
    );
    let run = {
        let server = server.clone();
        std::thread::spawn(move || {
            server.run_with(json!({"code": code, "lang": "python", "timeout": 6}))
        })
    };
    let mut forged = Vec::new();
    let named = wait_until(Duration::from_secs(20), || {
        forged = processes_of_uid(base + NOBODY)
            .into_iter()
            .filter(|p| comm(*p) == POOL_WAITING_NAME)
            .collect();
        forged.len() == 2
    });
    assert!(
        named,
        "the run's two processes never named themselves: {forged:?}; the run: {:#}",
        run.join().unwrap()
    );
    let counted = run_processes_of_uid(base + NOBODY);
    for pid in &forged {
        assert!(
            counted.contains(pid) && !waiting_in_pool(*pid),
            "a claimed run's process {pid} is taken for a waiting sandbox's"
        );
        let supervisor = run_supervisor_of(*pid).expect("a run's process is in a run cgroup");
        assert_eq!(comm(supervisor), "nsbox-claimed");
    }
    assert!(
        !run_cgroups(server.pid()).is_empty(),
        "the run's cgroup is counted"
    );
    assert_eq!(
        claims(&server),
        claimed_before + 1,
        "a ready sandbox served the run"
    );
    let answer = run.join().unwrap();
    assert_eq!(
        answer["stderr"], "Execution failed: Execution timeout exceeded",
        "{answer:#}"
    );
    wait_until_empty(Duration::from_secs(10), "the run's processes", || {
        run_processes_of_uid(base + NOBODY)
    });
}

/// A run whose template the operator does not keep warm forks from the next larger one
/// kept (`--warm-templates base,ml`: a pandas run forks from ml); the pool serves it the
/// same way, from a ready sandbox of that template, rather than building one at its request.
#[test]
fn a_run_whose_template_is_not_kept_is_served_from_the_next_larger_ones_pool() {
    let _one = exclusive();
    let server = Server::start_in_uid_range(
        uid_base(5),
        &[
            "--warm-templates",
            "base,ml",
            "--pool-size",
            "1",
            "--scanner",
            "off",
        ],
        &[],
    );
    assert!(
        wait_until(Duration::from_secs(60), || ready_of(&server, "ml") == 1),
        "the pool never had a ready ml sandbox: {:#}",
        status(&server)
    );
    let before = claims(&server);
    let answer = server.run_with(json!({
        "lang": "python",
        "code": "import sys\nimport pandas as pd\nprint(pd.DataFrame({'a': [1, 2]})['a'].sum(), 'sklearn' in sys.modules)",
    }));
    // sklearn already imported: the run came from the ml template's interpreter.
    assert_eq!(answer["stdout"], "3 True\n", "{answer:#}");
    assert_eq!(
        claims(&server),
        before + 1,
        "the scientific run was not served by the ready ml sandbox: {:#}",
        status(&server)
    );
}

/// A zygote that retires at its fork limit leaves once its successor is warm, with a pool
/// on as without: no pooled supervisor keeps its control socket (one forked while it was
/// still starting used to), and the ready sandboxes forked from it are ended and built
/// again from the successor (they used to keep the old interpreter's memory alive).
#[test]
fn a_retired_zygote_leaves_with_the_ready_sandboxes_forked_from_it() {
    let _one = exclusive();
    let server = Server::start_in_uid_range(
        uid_base(6),
        &[
            "--warm-templates",
            "base,scientific",
            "--pool-size",
            "1",
            "--max-forks",
            "10",
            "--scanner",
            "off",
        ],
        &[],
    );
    let ready = |t: &str| ready_of(&server, t) == 1;
    assert!(
        wait_until(Duration::from_secs(60), || ready("base")
            && ready("scientific")),
        "the pool never filled: {:#}",
        status(&server)
    );
    let respawns = || {
        let text = server.get("/metrics").text().unwrap();
        common::metric(&text, "nsbox_template_respawns_total").unwrap_or(0.0)
    };
    for _ in 0..16 {
        let v = server.run("import pandas\nprint(1)");
        assert_eq!(v["stdout"], "1\n", "{v}");
    }
    assert!(
        wait_until(Duration::from_secs(60), || respawns() >= 1.0),
        "the scientific zygote never retired at its fork limit"
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            unforked_interpreters(server.pid() as i32, "scientific").len() == 1
                && ready("scientific")
        }),
        "the retired scientific zygote (or a sandbox forked from it) outlived its successor: \
         {:?}, pool {:#}",
        unforked_interpreters(server.pid() as i32, "scientific"),
        status(&server)
    );
    let v = server.run("import pandas\nprint(2)");
    assert_eq!(v["stdout"], "2\n", "{v}");
}
