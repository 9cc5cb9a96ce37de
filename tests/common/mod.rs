//! Shared test support: finds the root filesystem and starts the real nsbox server over the real sandbox.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// `nobody` inside a run is this far above the server's uid base on the host.
pub const NOBODY: u32 = 65534;
/// The documented per-run limits the hostile runs hit: memory, processes, output per stream.
pub const MEMORY_MIB: u64 = 512;
pub const MAX_PROCESSES: u64 = 64;
pub const OUTPUT_BYTES: usize = 1 << 20;

/// These tests create namespaces and cgroups: without root they cannot prove anything, so
/// they fail loudly instead of skipping.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the sandbox tests need root (CI runs as root); run them with scripts/test.sh as root"
    );
}

/// The root filesystem: `NSBOX_ROOTFS`, or the one scripts/build-rootfs.sh builds or finds.
pub fn rootfs() -> PathBuf {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS
        .get_or_init(|| {
            if let Ok(p) = std::env::var("NSBOX_ROOTFS") {
                return PathBuf::from(p);
            }
            built_by("build-rootfs.sh")
        })
        .clone()
}

/// Runs `scripts/<script>`, which builds what is missing and prints the path of what it
/// built as its last line. A build that fails fails the test; it never skips.
pub fn built_by(script: &str) -> PathBuf {
    let path = format!("{}/scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(&path)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{script} failed ({}); its output is above",
        out.status
    );
    let stdout = String::from_utf8(out.stdout).expect("the script prints a path");
    PathBuf::from(
        stdout
            .lines()
            .last()
            .unwrap_or_else(|| panic!("scripts/{script} printed no path"))
            .trim(),
    )
}

pub struct Server {
    child: Child,
    pub base: String,
    pub port: u16,
    pub log: Arc<Mutex<String>>,
    client: reqwest::blocking::Client,
}

impl Server {
    /// Starts `nsbox serve` on an ephemeral loopback port with extra flags.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with_env(extra, &[])
    }

    /// Like `start`, with extra variables in the server's environment (e.g. a planted
    /// secret that no run may see).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_program(Path::new(env!("CARGO_BIN_EXE_nsbox")), extra, env)
    }

    /// Like `start_with_env`, with the runs on the host uid range from `uid_base` on, so a
    /// test counts the processes of its own server only.
    pub fn start_in_uid_range(uid_base: u32, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let base = uid_base.to_string();
        let mut args = extra.to_vec();
        args.extend(["--uid-base", base.as_str()]);
        Server::start_with_env(&args, env)
    }

    /// Like `start_with_env`, serving from another nsbox executable (the static build).
    pub fn start_program(program: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_under(&[], program, extra, env)
    }

    /// Like `start_program`, with `nsbox serve` started by `launcher` (a program and its
    /// arguments, which end by running the nsbox command line that follows them), e.g. as
    /// PID 1 of a new PID namespace. [`Server::pid`] is then the launcher's.
    pub fn start_under(
        launcher: &[&str],
        program: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        require_root();
        let mut command = match launcher.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0", "--rootfs"])
            .arg(rootfs())
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting nsbox");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    // Plain text or inside a JSON log line: the address ends where its
                    // characters do.
                    let addr: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c))
                        .collect();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("nsbox did not start listening:\n{}", log.lock().unwrap());
            });
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        let server = Server {
            child,
            base: format!("http://{addr}"),
            port,
            log,
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        };
        server.wait_ready();
        server
    }

    /// Waits until `/v1/health` says ready (the warm templates are up), so a test of the
    /// warm path really runs warm, and then (boundedly) until the ready sandboxes the
    /// server starts with are built: a sandbox being built is not in its run cgroup yet,
    /// so the leftover checks could not tell it from a run's processes.
    pub fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while std::time::Instant::now() < deadline {
            if let Ok(r) = self.client.get(format!("{}/v1/health", self.base)).send() {
                if r.status().is_success() {
                    wait_until(Duration::from_secs(30), || pool_built(self.pid()));
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("nsbox never became ready:\n{}", self.log.lock().unwrap());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// POSTs a JSON body to `/v1/tools/code`; returns the status and the JSON answer.
    pub fn post(&self, body: &Value) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}/v1/tools/code", self.base))
            .json(body)
            .send()
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().expect("JSON body"))
    }

    /// POSTs a session's creation request and returns the status and the JSON body.
    pub fn create_session(&self, body: &Value) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}/v1/sessions", self.base))
            .json(body)
            .send()
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().expect("JSON body"))
    }

    /// Runs Python code and returns the response object, asserting a 200.
    pub fn run(&self, code: &str) -> Value {
        self.run_with(json!({"code": code, "lang": "python"}))
    }

    pub fn run_with(&self, body: Value) -> Value {
        let (status, value) = self.post(&body);
        assert_eq!(
            status,
            200,
            "{value}\nserver log:\n{}",
            self.log.lock().unwrap()
        );
        value
    }

    pub fn get(&self, path: &str) -> reqwest::blocking::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .expect("request")
    }

    pub fn client(&self) -> &reqwest::blocking::Client {
        &self.client
    }

    /// Waits up to `within` for the server to exit by itself (e.g. after a signal the test
    /// sent); `None` if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}

/// The value of one series in a Prometheus exposition, e.g. `nsbox_runs_total{verdict="ok"}`;
/// `None` when the series is absent (a labelled counter appears at its first increment).
pub fn metric(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// Pids of host processes whose real uid is `uid`.
pub fn processes_of_uid(uid: u32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let real = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        if real == Some(uid) {
            pids.push(pid);
        }
    }
    pids
}

/// The command line of a host process, arguments joined by spaces; empty once it is gone.
pub fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

/// A string field of a JSON response; empty when absent.
pub fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

/// The spec's response for a run that ended by itself with exit 0.
pub fn expect_clean_exit(v: &Value) -> Result<(), String> {
    if v["success"] != true || v["exit_code"] != 0 {
        return Err("expected success true and exit_code 0".into());
    }
    Ok(())
}

/// The spec's failure shape: success false, exit_code -1 (the reason is in `stderr`).
pub fn expect_stopped(v: &Value) -> Result<(), String> {
    if v["success"] != false || v["exit_code"] != -1 {
        return Err("expected success false and exit_code -1".into());
    }
    Ok(())
}

/// An HTTP answer: status, `Retry-After`, the JSON body and how long it took.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Value,
    pub elapsed: Duration,
}

pub fn client(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .build()
        .unwrap()
}

/// POSTs `body` to `/v1/tools/code` without panicking, so a dead server or a bad answer
/// fails the caller's case instead of its thread.
pub fn post(client: &reqwest::blocking::Client, base: &str, body: &Value) -> Result<Reply, String> {
    let started = Instant::now();
    let resp = client
        .post(format!("{base}/v1/tools/code"))
        .json(body)
        .send()
        .map_err(|e| {
            format!(
                "request failed after {:.1} s{}: {e}",
                started.elapsed().as_secs_f64(),
                if e.is_timeout() {
                    " (client timeout)"
                } else {
                    ""
                }
            )
        })?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp
        .text()
        .map_err(|e| format!("status {status}: reading the body failed: {e}"))?;
    let body = serde_json::from_str(&text).map_err(|e| {
        format!(
            "status {status}: body is not JSON ({e}): {}",
            shorten(&text, 300)
        )
    })?;
    Ok(Reply {
        status,
        retry_after,
        body,
        elapsed: started.elapsed(),
    })
}

/// A flag for a test's background threads (load, trickles, samplers) to stop on, set when
/// the guard goes out of scope, a failed assertion included: threads left running load the
/// host under every test that comes after (a faults test once made the suite take 1,414 s
/// and fail five tests it had nothing to do with).
#[derive(Default)]
pub struct StopOnDrop(Arc<AtomicBool>);

impl StopOnDrop {
    /// The flag, for a thread to poll.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// `s` cut to at most `max` bytes (on a character boundary), saying how long it was.
pub fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

/// Fills `/tmp` with 8 MiB files until a write fails with one of `errnos` (names in
/// Python's `errno`), then checks that 48 to 64 MiB got written and prints `contained`.
pub fn fill_tmp(errnos: &[&str]) -> String {
    let errnos = errnos
        .iter()
        .map(|e| format!("errno.{e}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
import os, errno
total = 0
i = 0
chunk = b'\xff' * (1 << 20)
try:
    while i < 1000:
        fd = os.open('/tmp/fill%d' % i, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            for _ in range(8):
                total += os.write(fd, chunk)
        finally:
            os.close(fd)
        i += 1
except OSError as e:
    assert e.errno in [{errnos}], e
assert (48 << 20) <= total <= (64 << 20), total
print('contained')
"#
    )
}

// ---------------------------------------------------------------------------------------
// Host state for leftover checks: cgroups, mounts, memory (used by tests/sessions.rs and
// the red-team file cases).

/// Polls `ok` every 50 ms until it holds or `within` is over; whether it held.
pub fn wait_until(within: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `list` comes back empty; panics after `within` with `what` and the last
/// list (what was left).
pub fn wait_until_empty<T: std::fmt::Debug>(
    within: Duration,
    what: &str,
    mut list: impl FnMut() -> Vec<T>,
) {
    let mut left = Vec::new();
    assert!(
        wait_until(within, || {
            left = list();
            left.is_empty()
        }),
        "{what}: {left:?}"
    );
}

/// A field of `/proc/<pid>/status` (e.g. `"VmRSS:"`), trimmed; `None` once the process is
/// gone.
pub fn proc_status_field(pid: i32, key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
}

/// Resident memory of one process, KiB (0 once it is gone).
pub fn rss_kib(pid: i32) -> u64 {
    proc_status_field(pid, "VmRSS:")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Children of every thread of `pid` (a server starts processes from whichever runtime
/// thread does the work, not only from its main thread).
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// `pid` and all its descendants (children of every thread, recursively).
pub fn process_tree(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        i += 1;
        for c in children(p) {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// Summed resident memory of a process tree, KiB (shared pages counted once per process:
/// only for comparing the same tree at two moments).
pub fn tree_rss_kib(pid: i32) -> u64 {
    process_tree(pid).into_iter().map(rss_kib).sum()
}

/// The server's `srv-<pid>` cgroup directories: `<hierarchy>/<own cgroup>/nsbox/srv-<pid>`
/// for the memory, pids and cpu controllers of cgroup v1, or the one directory of v2 (the
/// server inherits this process's cgroups). Only the ones that exist.
pub fn server_cgroup_dirs(server_pid: u32) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut dirs = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim_end_matches('/');
        let candidates: Vec<String> = if controllers.is_empty() {
            vec![format!("/sys/fs/cgroup{path}/nsbox/srv-{server_pid}")]
        } else {
            ["memory", "pids", "cpu"]
                .iter()
                .filter(|ctl| controllers.split(',').any(|c| c == **ctl))
                .map(|ctl| format!("/sys/fs/cgroup/{ctl}{path}/nsbox/srv-{server_pid}"))
                .collect()
        };
        for c in candidates {
            let p = PathBuf::from(c);
            if p.is_dir() && !dirs.contains(&p) {
                dirs.push(p);
            }
        }
    }
    dirs
}

/// Every cgroup directory below the server's `srv-<pid>` directories (runs, sessions and
/// whatever else the server made there), sorted.
pub fn server_child_cgroups(server_pid: u32) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in server_cgroup_dirs(server_pid) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                found.push(e.path());
            }
        }
    }
    found.sort();
    found
}

/// The host's mount table as "mount point, type, source" lines (mount ids left out) with
/// their counts. An unreadable table fails the test rather than compare as empty.
pub fn host_mounts() -> std::collections::BTreeMap<String, usize> {
    let mut table = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string("/proc/self/mountinfo")
        .expect("reading /proc/self/mountinfo")
        .lines()
    {
        let fields: Vec<&str> = line.split(' ').collect();
        let after = line.split(" - ").nth(1).unwrap_or("");
        let mut tail = after.split(' ');
        let key = format!(
            "{} {} {}",
            fields.get(4).unwrap_or(&"?"),
            tail.next().unwrap_or("?"),
            tail.next().unwrap_or("?")
        );
        *table.entry(key).or_insert(0) += 1;
    }
    table
}

/// Mounts in `after` that `before` did not have.
pub fn mounts_added(
    before: &std::collections::BTreeMap<String, usize>,
    after: &std::collections::BTreeMap<String, usize>,
) -> Vec<String> {
    after
        .iter()
        .filter(|(k, n)| before.get(*k).copied().unwrap_or(0) < **n)
        .map(|(k, n)| format!("{k} (x{n})"))
        .collect()
}

/// What a pooled supervisor calls itself (`/proc/<pid>/comm`) while its sandbox waits for
/// a request; it renames itself as soon as a request claims it (`crates/nsbox-sandbox/src/pool.rs`).
pub const POOL_WAITING_NAME: &str = "nsbox-ready";
/// What it calls itself before, while it builds its sandbox.
pub const POOL_BUILDING_NAME: &str = "nsbox-building";

/// The start time of a host process in clock ticks since boot (`/proc/<pid>/stat` field 22).
fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The supervisor whose run cgroup (`run-<supervisor pid>`) a host process is in, as a
/// host pid. The cgroup is read from the host's `/proc/<pid>/cgroup` (the test runs in the
/// host's cgroup namespace), but the supervisor names it with its pid in the server's PID
/// namespace, which is not the host's when nsbox runs as PID 1 of a namespace of its own
/// (tests/pid1.rs, a container). So the supervisor is looked up where it lives: a child
/// of the spawner, which is an ancestor of every sandbox's process, in the spawner's PID
/// namespace (the same depth of `NSpid`) and with the named pid there.
pub fn run_supervisor_of(pid: i32) -> Option<i32> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let named = cgroups.lines().find_map(|l| {
        l.rsplit('/')
            .next()?
            .strip_prefix("run-")?
            .parse::<i32>()
            .ok()
    })?;
    let mut ancestor = pid;
    loop {
        ancestor = proc_status_field(ancestor, "PPid:")?.parse().ok()?;
        if ancestor == 0 {
            return None;
        }
        let depth = namespaced_pids(ancestor).len();
        let supervisor = children(ancestor).into_iter().find(|&c| {
            let ids = namespaced_pids(c);
            ids.len() == depth && ids.last() == Some(&named)
        });
        if supervisor.is_some() {
            return supervisor;
        }
    }
}

/// A process's pid in each PID namespace it is in, the host's first (`NSpid`).
fn namespaced_pids(pid: i32) -> Vec<i32> {
    proc_status_field(pid, "NSpid:")
        .map(|ids| {
            ids.split_whitespace()
                .filter_map(|i| i.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A host process's name (`/proc/<pid>/comm`); empty once it is gone.
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

/// The template a warm interpreter serves, from its command line (`python3 -I -B -c
/// PROGRAM TEMPLATE MAX_FORKS HUGE_PAGES`, the program carrying `_NSBOX_ZYGOTE`): a
/// zygote's, and its forks' until they exec. `None` for any other process, or one gone.
pub fn warm_template_of(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    let warm = args.iter().any(|a| {
        a.windows(b"_NSBOX_ZYGOTE".len())
            .any(|w| w == b"_NSBOX_ZYGOTE")
    });
    if !warm {
        return None;
    }
    Some(String::from_utf8_lossy(args.get(5)?).into_owned())
}

/// Whether `pid` is a warm interpreter of `template` that is no fork of another of that
/// template: a zygote (whose parent is its template's init, or for the ml zygote grown from
/// the scientific one, that zygote), or a fork left behind once its zygote is gone.
/// A run's Python process in the nested shape is the child of its run init, whose parent
/// is the zygote: the run init stands for the zygote it was cloned from.
pub fn is_unforked_interpreter(pid: i32, template: &str) -> bool {
    let parent_of = |p: i32| proc_status_field(p, "PPid:").and_then(|p| p.parse::<i32>().ok());
    warm_template_of(pid).as_deref() == Some(template)
        && parent_of(pid)
            .and_then(|parent| match is_run_init(parent) {
                true => parent_of(parent),
                false => Some(parent),
            })
            .is_some_and(|origin| warm_template_of(origin).as_deref() != Some(template))
}

/// Whether `pid` is a warm run's init in the nested shape (`init/run-init.c`, exec'd by
/// the zygote's clone as `nsbox-run-init`).
pub fn is_run_init(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"nsbox-run-init\0")
}

/// The warm interpreters of `template` below `root` that are not forks of another (see
/// [`is_unforked_interpreter`]): its zygotes, and any fork left behind whose zygote is gone.
pub fn unforked_interpreters(root: i32, template: &str) -> Vec<i32> {
    process_tree(root)
        .into_iter()
        .filter(|&p| is_unforked_interpreter(p, template))
        .collect()
}

/// Whether no pooled supervisor of the server builds its sandbox now.
pub fn pool_built(server_pid: u32) -> bool {
    !process_tree(server_pid as i32)
        .into_iter()
        .any(|p| comm(p) == POOL_BUILDING_NAME)
}

/// Whether `supervisor` is a pooled supervisor that no request has claimed: it builds its
/// sandbox or the sandbox waits. Its name is set by the host-side supervisor itself;
/// nothing inside a sandbox can rename a host process (another pid and user namespace,
/// no ptrace).
pub fn supervisor_waits(supervisor: i32) -> bool {
    [POOL_WAITING_NAME, POOL_BUILDING_NAME].contains(&comm(supervisor).as_str())
}

/// Whether a host process belongs to a ready sandbox that waits for a request (and so ran
/// no code of any request): it sits in the run cgroup of a pooled supervisor that still
/// calls itself [`POOL_WAITING_NAME`] (or [`POOL_BUILDING_NAME`]), and that supervisor started before it (a leftover
/// whose supervisor's pid was reused by a newer pooled supervisor does not pass).
///
/// Run code cannot forge this: the cgroup a process is in is set by the host (a run's
/// cgroup directories belong to the host's root and the sandbox sees them through its own
/// cgroup namespace), and the name is that of a host process outside every sandbox.
pub fn waiting_in_pool(pid: i32) -> bool {
    let Some(supervisor) = run_supervisor_of(pid) else {
        return false;
    };
    let (Some(sup_start), Some(own_start)) = (start_ticks(supervisor), start_ticks(pid)) else {
        return false;
    };
    sup_start <= own_start && supervisor_waits(supervisor)
}

/// Processes of `uid` that are not those of a waiting ready sandbox: what a leftover check
/// counts (a run's processes, or a claimed sandbox's).
pub fn run_processes_of_uid(uid: u32) -> Vec<i32> {
    processes_of_uid(uid)
        .into_iter()
        .filter(|p| !waiting_in_pool(*p))
        .collect()
}

/// Whether a cgroup directory is that of a ready sandbox that waits (`run-<pid>` of a
/// pooled supervisor that calls itself [`POOL_WAITING_NAME`]), for a server in the host's PID
/// namespace (the name holds the supervisor's pid in the server's).
pub fn is_waiting_pool_cgroup(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|n| n.to_str()?.strip_prefix("run-")?.parse::<i32>().ok())
        .is_some_and(supervisor_waits)
}

/// The cgroups below the server's `srv-<pid>` directories except those of ready
/// sandboxes that wait: what a leftover check counts.
pub fn run_cgroups(server_pid: u32) -> Vec<PathBuf> {
    server_child_cgroups(server_pid)
        .into_iter()
        .filter(|d| !is_waiting_pool_cgroup(d))
        .collect()
}
