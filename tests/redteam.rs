//! Red-team suite: attack snippets through the real HTTP API with the scanner off, each with an asserted contained outcome.
//!
//! Every family below is a table of cases run against one server per configuration in
//! [`MODES`]. A case is one or more runs (concurrent when there are several, each after its
//! own delay) plus checks on each response; after every case no process of the server's
//! uid range may be left, and after every family the server must still answer
//! `GET /v1/health` and run a trivial snippet. Failures are collected per family so one
//! report names every failing case.
//!
//! Most snippets assert inside Python and print `contained`; the rest are checked on the
//! Rust side (response fields, host state). Only documentation addresses (RFC 5737, RFC
//! 3849) are ever used as network targets.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    cmdline, expect_clean_exit, expect_stopped, run_processes_of_uid, text, Server, MAX_PROCESSES,
    MEMORY_MIB, NOBODY, OUTPUT_BYTES,
};
use serde_json::{json, Value};

/// Server configurations every family runs against. The warm path will be one more line:
/// `&["--scanner", "off", "--mode", "warm"]`.
/// Every attack runs against both ways a run can start: forked from a warm zygote (the
/// default) and in a fresh interpreter.
const MODES: &[&[&str]] = &[
    &["--scanner", "off", "--mode", "warm"],
    &["--scanner", "off", "--mode", "cold"],
];

/// Timeout of cases that are expected to end by themselves.
const DEFAULT_TIMEOUT: f64 = 20.0;
/// Timeout of cases that are expected to be ended by the timeout.
const SHORT_TIMEOUT: f64 = 2.0;

/// Planted in the server's environment; no run may see it.
const SECRET_VAR: &str = "NSBOX_REDTEAM_SECRET";
const SECRET: &str = "redteam-s3cret-7f3a9c";

/// The documented plot limits the exhaustion family checks against (the others are in
/// `common`).
const MAX_PLOTS: usize = 16;
const PLOT_BYTES: usize = 16 << 20;

type Check = Box<dyn Fn(&Value) -> Result<(), String> + Send + Sync>;
type JointCheck = Box<dyn Fn(&[Value]) -> Result<(), String> + Send + Sync>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        let holds: bool = $cond;
        if !holds {
            return Err(format!($($fmt)+));
        }
    };
}

/// One request of a case.
struct Run {
    delay_ms: u64,
    code: String,
    timeout: f64,
    check: Check,
    /// The request's `files` field (input files, or `[]` to get the output files back);
    /// `None` leaves it out.
    files: Option<Value>,
}

/// One attack: its runs start together (each after its delay), then every check applies.
struct Case {
    name: &'static str,
    runs: Vec<Run>,
    joint: Option<JointCheck>,
}

impl Case {
    fn single(name: &'static str, code: impl Into<String>, timeout: f64, check: Check) -> Case {
        Case {
            name,
            runs: vec![run(0, code, timeout, check)],
            joint: None,
        }
    }

    fn concurrent(name: &'static str, runs: Vec<Run>) -> Case {
        Case {
            name,
            runs,
            joint: None,
        }
    }

    /// Two runs that assert by themselves and print `contained`, the second starting
    /// 1.2 s after the first, while the first still runs.
    fn overlapping(name: &'static str, first: &str, second: &str) -> Case {
        Case::concurrent(
            name,
            vec![contained_run(0, first), contained_run(1200, second)],
        )
    }

    fn joint(
        mut self,
        check: impl Fn(&[Value]) -> Result<(), String> + Send + Sync + 'static,
    ) -> Case {
        self.joint = Some(Box::new(check));
        self
    }
}

fn run(delay_ms: u64, code: impl Into<String>, timeout: f64, check: Check) -> Run {
    Run {
        delay_ms,
        code: code.into(),
        timeout,
        check,
        files: None,
    }
}

/// A run whose snippet asserts by itself and prints `contained`.
fn contained_run(delay_ms: u64, code: impl Into<String>) -> Run {
    run(delay_ms, code, DEFAULT_TIMEOUT, expect_contained())
}

/// A case whose snippet asserts by itself and prints `contained`.
fn contained(name: &'static str, code: impl Into<String>) -> Case {
    Case::single(name, code, DEFAULT_TIMEOUT, expect_contained())
}

fn check(f: impl Fn(&Value) -> Result<(), String> + Send + Sync + 'static) -> Check {
    Box::new(f)
}

/// `first`, then, if it holds, `then`.
fn and_then(
    first: Check,
    then: impl Fn(&Value) -> Result<(), String> + Send + Sync + 'static,
) -> Check {
    check(move |v| {
        first(v)?;
        then(v)
    })
}

fn expect_contained() -> Check {
    check(|v| {
        ensure!(
            v["success"] == true && v["exit_code"] == 0 && v["stdout"] == "contained\n",
            "expected success, exit 0 and stdout \"contained\""
        );
        Ok(())
    })
}

/// The spec's timeout response, arriving in about the timeout.
fn expect_timeout(timeout: f64) -> Check {
    check(move |v| {
        expect_stopped(v)?;
        ensure!(
            text(v, "stderr").ends_with("Execution failed: Execution timeout exceeded"),
            "expected the timeout message at the end of stderr"
        );
        let t = v["execution_time"].as_f64().unwrap_or(-1.0);
        ensure!(
            t >= timeout && t < timeout + 3.0,
            "execution_time {t} is not about the timeout {timeout}"
        );
        Ok(())
    })
}

/// The spec's failure shape, for a run that failed for a reason of its own.
fn expect_failed() -> Check {
    check(|v| {
        expect_stopped(v)?;
        ensure!(
            text(v, "stderr").contains("Execution failed: "),
            "no failure message in stderr"
        );
        Ok(())
    })
}

fn expect_oom() -> Check {
    check(|v| {
        expect_stopped(v)?;
        let message = format!("Memory limit exceeded ({MEMORY_MIB} MiB)");
        ensure!(
            text(v, "stderr").contains(&message),
            "expected {message:?} in stderr"
        );
        Ok(())
    })
}

/// `contained`, and the run ended by itself well before its timeout (nothing it left
/// behind kept the response waiting).
fn expect_contained_quickly(limit_s: f64) -> Check {
    and_then(expect_contained(), move |v| {
        let t = v["execution_time"].as_f64().unwrap_or(f64::MAX);
        ensure!(t < limit_s, "took {t} s; expected under {limit_s} s");
        Ok(())
    })
}

/// Replaces `@NAME@` placeholders, so the Python snippets keep their own braces.
fn fill(code: &str, vars: &[(&str, &str)]) -> String {
    let mut out = code.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("@{name}@"), value);
    }
    let unfilled =
        out.split('@').skip(1).step_by(2).find(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        });
    assert!(
        unfilled.is_none(),
        "unfilled placeholder {unfilled:?} in:\n{out}"
    );
    out
}

/// A Python string literal.
fn py(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A Python list of string literals.
fn py_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items.iter().map(|s| py(s)).collect::<Vec<_>>().join(", ")
    )
}

/// A response shortened for failure messages: long output cut, plots as sizes.
fn abbreviated(v: &Value) -> String {
    let mut v = v.clone();
    for key in ["stdout", "stderr"] {
        if let Some(s) = v[key].as_str() {
            if s.len() > 1500 {
                let cut: String = s.chars().take(1500).collect();
                v[key] = json!(format!("{cut}... ({} bytes in all)", s.len()));
            }
        }
    }
    if let Some(plots) = v["plots"].as_array() {
        let sizes: Vec<usize> = plots
            .iter()
            .map(|p| p["content_base64"].as_str().map_or(0, str::len))
            .collect();
        v["plots"] = json!(format!("{} plot(s), base64 sizes {sizes:?}", sizes.len()));
    }
    if let Some(files) = v.get_mut("files").and_then(Value::as_array_mut) {
        let n = files.len();
        files.truncate(12);
        for f in files.iter_mut() {
            if let Some(c) = f.get("content_base64").and_then(Value::as_str) {
                let shown: String = c.chars().take(80).collect();
                f["content_base64"] = json!(format!("{shown}... ({} characters)", c.len()));
            }
        }
        if n > 12 {
            files.push(json!(format!("... {n} files in all")));
        }
    }
    serde_json::to_string_pretty(&v).unwrap()
}

/// Posts one run without panicking, so a dead server fails the case instead of the thread.
fn post(server: &Server, code: &str, timeout: f64) -> Result<Value, String> {
    post_with_files(server, code, timeout, None)
}

/// Like [`post`], with the request's `files` field when there is one.
fn post_with_files(
    server: &Server,
    code: &str,
    timeout: f64,
    files: Option<&Value>,
) -> Result<Value, String> {
    let mut body = json!({"code": code, "lang": "python", "timeout": timeout});
    if let Some(files) = files {
        body["files"] = files.clone();
    }
    let reply = common::post(server.client(), &server.base, &body)?;
    ensure!(reply.status == 200, "HTTP {}: {}", reply.status, reply.body);
    Ok(reply.body)
}

/// Host uid range of a family's server: its own, so leftover counts are its own.
fn uid_base(family: u32, mode: usize) -> u32 {
    1_500_000_000 + family * 10_000_000 + mode as u32 * 1_000_000
}

fn describe_pid(pid: i32) -> String {
    let cmdline: String = cmdline(pid).chars().take(80).collect();
    format!("{pid} ({cmdline})")
}

/// Processes of a finished run (the run uids: its init runs as the mapped root, its
/// Python as nobody) still alive after a grace. Any found are killed, so a failure does
/// not leave them on the machine.
///
/// The warm templates (init and zygote) run as the mapped root too; they are the
/// processes of that uid that existed before the case (`before`), since every earlier
/// case's leftovers were killed. Only processes already there when the runs ended can
/// be the runs' own: with the pool on, a claim starts a refill, and its sandbox is forked
/// from the zygote as the mapped root and counts as waiting only once its supervisor has
/// moved it into its cgroup, which may be after the last run ended.
fn survivors(uid_base: u32, before: &[i32]) -> Vec<String> {
    let leftovers = |among: Option<&[i32]>| -> Vec<i32> {
        [uid_base, uid_base + NOBODY]
            .iter()
            .flat_map(|uid| run_processes_of_uid(*uid))
            .filter(|p| !before.contains(p) && among.is_none_or(|a| a.contains(p)))
            .collect()
    };
    let ended = leftovers(None);
    // The kernel tears a PID namespace down asynchronously, a zygote's fork exits a
    // moment after the run it watched, and a refill already forked when the runs ended
    // needs a moment to reach the pool: only what is still there after a grace counts.
    let mut left = ended.clone();
    for _ in 0..60 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        left = leftovers(Some(&ended));
    }
    left.into_iter()
        .map(|pid| {
            let described = describe_pid(pid);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            described
        })
        .collect()
}

fn execute(server: &Server, uid_base: u32, case: &Case) -> Result<(), String> {
    let before = run_processes_of_uid(uid_base);
    let results: Vec<Result<Value, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = case
            .runs
            .iter()
            .map(|r| {
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(r.delay_ms));
                    post_with_files(server, &r.code, r.timeout, r.files.as_ref())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("request thread panicked".into()))
            })
            .collect()
    });
    let mut errors = Vec::new();
    let mut values = Vec::new();
    for (i, (r, result)) in case.runs.iter().zip(results).enumerate() {
        let label = if case.runs.len() > 1 {
            format!("run {i}: ")
        } else {
            String::new()
        };
        match result {
            Ok(v) => {
                if let Err(e) = (r.check)(&v) {
                    errors.push(format!("{label}{e}\nresponse: {}", abbreviated(&v)));
                }
                values.push(v);
            }
            Err(e) => errors.push(format!("{label}{e}")),
        }
    }
    if let Some(joint) = &case.joint {
        if values.len() == case.runs.len() {
            if let Err(e) = joint(&values) {
                errors.push(e);
            }
        }
    }
    let left = survivors(uid_base, &before);
    if !left.is_empty() {
        errors.push(format!(
            "processes of the run survived the response: {left:?}"
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// The server still serves after a family: health, then a trivial run.
fn healthy(server: &Server) -> Result<(), String> {
    let resp = server
        .client()
        .get(format!("{}/v1/health", server.base))
        .send()
        .map_err(|e| format!("health request failed: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp.text().unwrap_or_default();
    ensure!(
        status == 200 && body == "OK",
        "health answered {status} {body:?}"
    );
    let v = post(server, "print('still serving')", 20.0)?;
    ensure!(
        v["stdout"] == "still serving\n" && v["exit_code"] == 0,
        "basic run after the family: {}",
        abbreviated(&v)
    );
    Ok(())
}

/// What a family's cases may need to know about the server they run on.
struct Target<'a> {
    server: &'a Server,
}

/// Runs a family's cases against one fresh server per mode and fails with every failing
/// case named.
fn run_family(family: &str, slot: u32, cases: impl Fn(&Target) -> Vec<Case>) {
    let mut failures = Vec::new();
    let mut count = 0;
    for (m, mode) in MODES.iter().enumerate() {
        let base = uid_base(slot, m);
        let server = Server::start_in_uid_range(base, mode, &[(SECRET_VAR, SECRET)]);
        let target = Target { server: &server };
        let table = cases(&target);
        let mut names = std::collections::HashSet::new();
        for case in &table {
            assert!(names.insert(case.name), "duplicate case {}", case.name);
        }
        count = table.len();
        for case in &table {
            let started = Instant::now();
            let result = execute(&server, base, case);
            eprintln!(
                "[{}] {family}/{}: {} in {:.1} s",
                mode.join(" "),
                case.name,
                if result.is_ok() {
                    "contained"
                } else {
                    "FAILED"
                },
                started.elapsed().as_secs_f64()
            );
            if let Err(e) = result {
                failures.push(format!("[{}] {family}/{}: {e}", mode.join(" "), case.name));
            }
        }
        if let Err(e) = healthy(&server) {
            failures.push(format!(
                "[{}] {family}: server unhealthy after the family: {e}\nserver log:\n{}",
                mode.join(" "),
                server.log.lock().unwrap()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s) in {family} ({count} cases per mode):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Removes a host file when dropped, also when a family's assertion unwinds.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn rootfs_str() -> String {
    common::rootfs().display().to_string()
}

/// Host paths a run must not see or learn: this checkout, the server binary, the root
/// filesystem's location, and the shared work tree.
fn host_paths() -> Vec<String> {
    vec![
        env!("CARGO_MANIFEST_DIR").to_string(),
        env!("CARGO_BIN_EXE_nsbox").to_string(),
        rootfs_str(),
        "/work".to_string(),
        "/var/cache/nsbox".to_string(),
    ]
}

/// Size, mode, owner and mtime of a host file, to prove a run changed nothing.
fn fingerprint(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            let content = if m.is_file() && m.len() < (1 << 20) {
                std::fs::read(path).unwrap_or_default()
            } else {
                Vec::new()
            };
            format!(
                "size {} mode {:o} uid {} mtime {}.{} content {:?}",
                m.len(),
                m.mode(),
                m.uid(),
                m.mtime(),
                m.mtime_nsec(),
                content
            )
        }
        Err(e) => format!("missing: {e}"),
    }
}

/// A check that, besides `contained`, the given host files are unchanged.
fn contained_and_unchanged(files: Vec<PathBuf>) -> Check {
    let before: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|p| {
            let f = fingerprint(&p);
            (p, f)
        })
        .collect();
    and_then(expect_contained(), move |_| {
        for (path, was) in &before {
            ensure!(
                fingerprint(path) == *was,
                "host file {} changed during the run",
                path.display()
            );
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// Python building blocks.

/// ctypes access to raw system calls (x86_64 numbers) for the privilege family.
const SYSCALLS: &str = r#"
import ctypes, errno, os, signal, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def sc(nr, *args):
    conv = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), *conv)
    return rc, ctypes.get_errno()

def denied(what, nr, *args, err=errno.EPERM):
    rc, e = sc(nr, *args)
    assert (rc, e) == (-1, err), (what, rc, e, os.strerror(e))

def raises(what, fn, *errnos):
    try:
        fn()
    except OSError as e:
        assert not errnos or e.errno in errnos, (what, e)
    else:
        raise AssertionError(what + ' succeeded')
"#;

/// A privilege case: `body` runs after [`SYSCALLS`] and must not raise.
fn sys_case(name: &'static str, body: &str) -> Case {
    contained(name, format!("{SYSCALLS}\n{body}\nprint('contained')\n"))
}

// ---------------------------------------------------------------------------------------
// Families.

#[test]
fn host_file_reads() {
    let marker_name = format!("nsbox-redteam-marker-{}", std::process::id());
    let marker = std::env::temp_dir().join(&marker_name);
    std::fs::write(&marker, SECRET).unwrap();
    let _cleanup = RemoveOnDrop(marker.clone());
    let host_name = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    run_family("host_file_reads", 1, |t| {
        let port = t.server.port.to_string();
        let server_pid = t.server.pid().to_string();
        let mut hidden = host_paths();
        hidden.push(marker.display().to_string());
        hidden.push(format!("/tmp/{marker_name}"));
        let hidden = py_list(&hidden);
        let vars: &[(&str, &str)] = &[
            ("SECRET", SECRET),
            ("SECRET_VAR", SECRET_VAR),
            ("HIDDEN", &hidden),
            ("PORT", &port),
            ("SERVER_PID", &server_pid),
            ("HOST_NAME", &host_name),
            ("ROOTFS", &rootfs_str()),
        ];
        vec![
            contained(
                "shadow_files_unreadable_as_nobody",
                r#"
import os
checked = 0
for p in ['/etc/shadow', '/etc/gshadow', '/root']:
    if not os.path.lexists(p):
        continue
    try:
        if os.path.isdir(p):
            os.listdir(p)
        else:
            open(p, 'rb').read()
    except PermissionError:
        checked += 1
    else:
        raise AssertionError(p + ' is readable by nobody')
assert checked >= 1, 'nothing to check'
print('contained')
"#,
            ),
            contained(
                "init_environ_holds_no_host_env",
                fill(
                    r#"
try:
    data = open('/proc/1/environ', 'rb').read()
except PermissionError:
    data = b''
for needle in (b'@SECRET@', b'@SECRET_VAR@', b'RUST_LOG', b'CARGO'):
    assert needle not in data, (needle, data[:300])
for p in ['/proc/1/cmdline', '/proc/self/environ', '/proc/self/cmdline']:
    d = open(p, 'rb').read()
    assert b'@SECRET@' not in d and b'@SECRET_VAR@' not in d, (p, d[:300])
print('contained')
"#,
                    vars,
                ),
            ),
            contained(
                "environment_is_the_fixed_minimum",
                fill(
                    r#"
import os
fixed = {'PATH', 'HOME', 'TMPDIR', 'LANG', 'LC_ALL', 'NSBOX_MAX_PLOTS', 'LOKY_MAX_CPU_COUNT', 'JOBLIB_MULTIPROCESSING'}
extra = [k for k in os.environ
         if k not in fixed and not k.startswith('MPL') and not k.endswith('_NUM_THREADS')]
assert not extra, extra
assert os.environ['PATH'] == '/usr/local/bin:/usr/bin:/bin', os.environ['PATH']
assert os.environ['JOBLIB_MULTIPROCESSING'] == '0', os.environ['JOBLIB_MULTIPROCESSING']
assert os.environ['HOME'] == '/tmp' and os.environ['TMPDIR'] == '/tmp', dict(os.environ)
assert not any('@SECRET@' in v for v in os.environ.values())
print('contained')
"#,
                    vars,
                ),
            ),
            contained(
                "host_paths_and_server_invisible",
                fill(
                    r#"
import os
for p in @HIDDEN@:
    assert not os.path.lexists(p), p
assert not os.path.exists('/proc/@SERVER_PID@'), 'server pid visible'
print('contained')
"#,
                    vars,
                ),
            ),
            contained(
                "mountinfo_leaks_no_host_path",
                fill(
                    r#"
texts = {}
for p in ['/proc/self/mountinfo', '/proc/self/mounts', '/proc/1/mountinfo']:
    try:
        texts[p] = open(p).read()
    except PermissionError:
        pass
for p, text in texts.items():
    for host in @HIDDEN@:
        assert host not in text, (p, host, text)
print('contained')
"#,
                    vars,
                ),
            ),
            contained(
                "sys_is_absent",
                r#"
import os
assert not os.path.exists('/sys') or os.listdir('/sys') == [], os.listdir('/sys')
for p in ['/sys/fs/cgroup', '/sys/kernel', '/sys/firmware', '/sys/class/net', '/sys/fs/bpf']:
    assert not os.path.exists(p), p
print('contained')
"#,
            ),
            contained(
                "kernel_memory_and_sysrq_unusable",
                r#"
import os, errno
for p, flags in [('/proc/kcore', os.O_RDONLY), ('/proc/kmsg', os.O_RDONLY),
                 ('/proc/kpagecount', os.O_RDONLY), ('/proc/kpageflags', os.O_RDONLY),
                 ('/proc/sysrq-trigger', os.O_WRONLY)]:
    try:
        fd = os.open(p, flags)
    except OSError as e:
        assert e.errno in (errno.ENOENT, errno.EACCES, errno.EPERM), (p, e)
    else:
        os.close(fd)
        raise AssertionError('opened ' + p)
print('contained')
"#,
            ),
            contained(
                "dev_has_no_host_devices",
                r#"
import os
for p in ['/dev/mem', '/dev/kmem', '/dev/port', '/dev/sda', '/dev/vda', '/dev/nvme0n1',
          '/dev/kmsg', '/dev/tty', '/dev/console', '/dev/ptmx', '/dev/pts', '/dev/shm',
          '/dev/net/tun', '/dev/fuse', '/dev/kvm', '/dev/userfaultfd', '/dev/mqueue']:
    assert not os.path.lexists(p), p
allowed = {'null', 'zero', 'full', 'random', 'urandom', 'fd', 'stdin', 'stdout', 'stderr'}
assert set(os.listdir('/dev')) <= allowed, os.listdir('/dev')
print('contained')
"#,
            ),
            contained(
                "no_descriptor_inherited_from_the_server",
                r#"
import os
fds = [int(f) for f in os.listdir('/proc/self/fd')]
links = {}
for fd in fds:
    try:
        links[fd] = os.readlink('/proc/self/fd/%d' % fd)
    except OSError:
        pass  # the listing's own descriptor, closed by now
assert set(links) <= {0, 1, 2, 4}, links
assert not [l for l in links.values() if l.startswith('socket:')], links
assert links[0] == '/dev/null', links
try:
    os.listdir('/proc/1/fd')
except PermissionError:
    pass
else:
    raise AssertionError("init's descriptors are listable")
print('contained')
"#,
            ),
            contained(
                "proc_net_shows_no_host_socket",
                fill(
                    r#"
port = ':%04X' % @PORT@
for name in ['tcp', 'tcp6', 'udp', 'udp6', 'raw', 'raw6', 'unix', 'packet']:
    try:
        text = open('/proc/net/' + name).read()
    except FileNotFoundError:
        continue
    assert port not in text, (name, text)
    assert text.splitlines()[1:] == [], (name, text[:2000])
print('contained')
"#,
                    vars,
                ),
            ),
            contained(
                "hostname_is_not_the_hosts",
                fill(
                    r#"
import os, socket
assert socket.gethostname() == 'nsbox', socket.gethostname()
assert os.uname().nodename == 'nsbox'
assert open('/proc/sys/kernel/hostname').read().strip() == 'nsbox'
assert @HOST_NAME_PY@ != 'nsbox' and @HOST_NAME_PY@ not in open('/proc/sys/kernel/hostname').read()
print('contained')
"#,
                    &[("HOST_NAME_PY", &py(&host_name))],
                ),
            ),
            contained(
                "cgroup_paths_are_hidden",
                r#"
for p in ['/proc/self/cgroup', '/proc/1/cgroup']:
    for line in open(p).read().splitlines():
        path = line.split(':', 2)[2]
        assert path == '/', (p, line)
print('contained')
"#,
            ),
            contained(
                "init_shows_no_host_command_line",
                fill(
                    r#"
for p in ['/proc/1/cmdline', '/proc/1/comm', '/proc/1/status', '/proc/1/stat']:
    text = open(p, 'rb').read().decode('utf-8', 'replace')
    for host in @HIDDEN@ + ['127.0.0.1:', '--rootfs', '--uid-base']:
        assert host not in text, (p, host, text[:500])
print('contained')
"#,
                    vars,
                ),
            ),
            contained(
                "init_private_proc_files_denied",
                r#"
import os, errno
def denied(what, fn):
    try:
        fn()
    except OSError as e:
        assert e.errno in (errno.EACCES, errno.EPERM, errno.ENOENT), (what, e)
    else:
        raise AssertionError(what + ' allowed')
for name in ['maps', 'smaps', 'mem', 'environ', 'auxv', 'stack', 'syscall', 'pagemap', 'io']:
    denied(name, lambda: open('/proc/1/' + name, 'rb').read(1))
for name in ['exe', 'root', 'cwd']:
    denied(name, lambda: os.readlink('/proc/1/' + name))
denied('fd', lambda: os.listdir('/proc/1/fd'))
print('contained')
"#,
            ),
        ]
    });
}

#[test]
fn writes_outside_tmp() {
    let rootfs = common::rootfs();
    run_family("writes_outside_tmp", 2, |_t| {
        let marker = format!("nsbox-redteam-write-{}", std::process::id());
        let host_copies = vec![
            std::env::temp_dir().join(&marker),
            PathBuf::from("/tmp").join(&marker),
            rootfs.join("tmp").join(&marker),
            rootfs.join("tmp/.config").join(&marker),
        ];
        let watched = vec![
            rootfs.join("etc/passwd"),
            rootfs.join("etc/hosts"),
            rootfs.join("usr/bin/python3.11"),
            rootfs.join("usr/lib/python3.11/os.py"),
            rootfs.join("dev"),
            rootfs.join("tmp"),
        ];
        vec![
            Case::single(
                "rootfs_files_and_dirs_read_only",
                r#"
import os, errno
for p in ['/etc/passwd', '/etc/hosts', '/usr/bin/python3', '/usr/lib/python3.11/os.py',
          '/usr/local/share/nsbox/libraries.json']:
    try:
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    except OSError as e:
        assert e.errno in (errno.EROFS, errno.EACCES), (p, e)
    else:
        os.close(fd)
        raise AssertionError('opened for writing: ' + p)
for d in ['/', '/etc', '/usr', '/usr/local/lib/python3.11/dist-packages', '/var/tmp',
          '/var/log', '/run', '/home', '/opt', '/srv', '/root', '/proc', '/sys']:
    p = os.path.join(d, 'nsbox-redteam-probe')
    try:
        fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
    except OSError as e:
        assert e.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT), (p, e)
    else:
        os.close(fd)
        raise AssertionError('created ' + p)
print('contained')
"#,
                DEFAULT_TIMEOUT,
                contained_and_unchanged(watched.clone()),
            ),
            Case::single(
                "rootfs_metadata_unchangeable",
                r#"
import os, stat
attempts = {
    'chmod setuid python': lambda: os.chmod('/usr/bin/python3', 0o4777),
    'chown passwd': lambda: os.chown('/etc/passwd', 65534, 65534),
    'utime passwd': lambda: os.utime('/etc/passwd', (0, 0)),
    'rename passwd': lambda: os.rename('/etc/passwd', '/etc/passwd.x'),
    'unlink hosts': lambda: os.unlink('/etc/hosts'),
    'mkdir etc': lambda: os.mkdir('/etc/nsbox'),
    'rmdir opt': lambda: os.rmdir('/opt'),
    'symlink etc': lambda: os.symlink('/tmp', '/etc/nsbox'),
    'truncate passwd': lambda: os.truncate('/etc/passwd', 0),
    'setxattr passwd': lambda: os.setxattr('/etc/passwd', 'user.nsbox', b'1'),
    'mknod usr': lambda: os.mknod('/usr/nsbox', 0o600 | stat.S_IFREG),
}
for what, fn in attempts.items():
    try:
        fn()
    except OSError:
        pass
    else:
        raise AssertionError(what + ' succeeded')
print('contained')
"#,
                DEFAULT_TIMEOUT,
                contained_and_unchanged(watched.clone()),
            ),
            contained(
                "dev_is_read_only",
                r#"
import os, stat
attempts = {
    'create': lambda: os.close(os.open('/dev/nsbox', os.O_CREAT | os.O_WRONLY, 0o666)),
    'unlink null': lambda: os.unlink('/dev/null'),
    'chmod null': lambda: os.chmod('/dev/null', 0o777),
    'rename zero': lambda: os.rename('/dev/zero', '/dev/zero2'),
    'mknod sda': lambda: os.mknod('/dev/sda', 0o600 | stat.S_IFBLK, os.makedev(8, 0)),
    'symlink log': lambda: os.symlink('/tmp/log', '/dev/log'),
    'mkdir shm': lambda: os.mkdir('/dev/shm'),
    'replace stdout link': lambda: os.unlink('/dev/stdout'),
}
for what, fn in attempts.items():
    try:
        fn()
    except OSError:
        pass
    else:
        raise AssertionError(what + ' succeeded')
assert stat.S_ISCHR(os.stat('/dev/null').st_mode)
print('contained')
"#,
            ),
            contained(
                "proc_sys_not_writable",
                r#"
import os
# Some sysctls (ns_last_pid) are mode 0666 and check privilege when written, so an open
# that succeeds is followed by writing back the value just read: harmless if it ever
# went through, and it must not.
for p in ['/proc/sys/kernel/core_pattern', '/proc/sys/kernel/modprobe',
          '/proc/sys/kernel/hostname', '/proc/sys/kernel/ns_last_pid',
          '/proc/sys/kernel/sysrq', '/proc/sys/kernel/randomize_va_space',
          '/proc/sys/vm/drop_caches', '/proc/sys/vm/overcommit_memory',
          '/proc/sys/fs/protected_symlinks', '/proc/sys/fs/binfmt_misc/register',
          '/proc/sys/net/ipv4/ip_forward', '/proc/sys/user/max_user_namespaces',
          '/proc/sysrq-trigger']:
    try:
        fd = os.open(p, os.O_WRONLY)
    except OSError:
        continue
    try:
        current = open(p, 'rb').read()
    except OSError:
        os.close(fd)
        raise AssertionError('opened for writing and cannot probe safely: ' + p)
    try:
        os.write(fd, current)
    except OSError:
        pass
    else:
        raise AssertionError('wrote ' + p)
    finally:
        os.close(fd)
print('contained')
"#,
            ),
            contained(
                "proc_self_privileged_knobs_refused",
                r#"
import os, errno
def refused(path, data, *errnos):
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        assert e.errno in errnos, (path, e)
    else:
        raise AssertionError('wrote %r to %s' % (data, path))
refused('/proc/self/oom_score_adj', b'-1000', errno.EACCES)
# EPERM from the kernel's id-map rules, or EACCES when the file is not even writable by
# the run (a warm run's maps belong to its init): refused either way.
refused('/proc/self/uid_map', b'0 0 1\n', errno.EPERM, errno.EACCES)
refused('/proc/self/gid_map', b'0 0 1\n', errno.EPERM, errno.EACCES)
refused('/proc/self/setgroups', b'allow', errno.EPERM, errno.EACCES)
# (/proc/self/loginuid is left out: an unset loginuid may be set once by anyone, and the
# value is mapped through the run's user namespace, so it names no host user.)
assert open('/proc/self/oom_score_adj').read().strip() != '-1000'
print('contained')
"#,
            ),
            contained(
                "proc_of_init_not_writable",
                r#"
import os
for name in ['oom_score_adj', 'comm', 'mem', 'attr/current', 'timerslack_ns', 'sched',
             'clear_refs', 'coredump_filter']:
    try:
        fd = os.open('/proc/1/' + name, os.O_WRONLY)
    except OSError:
        continue
    try:
        os.write(fd, b'0')
    except OSError:
        pass
    else:
        raise AssertionError('wrote /proc/1/' + name)
    finally:
        os.close(fd)
print('contained')
"#,
            ),
            Case::single(
                "tmp_writes_stay_in_the_run",
                fill(
                    r#"
import os
os.makedirs('/tmp/.config', exist_ok=True)
for p in ['/tmp/@MARKER@', '/tmp/.config/@MARKER@']:
    with open(p, 'wb') as f:
        f.write(b'x' * 10000)
assert os.path.getsize('/tmp/@MARKER@') == 10000
print('contained')
"#,
                    &[("MARKER", &marker)],
                ),
                DEFAULT_TIMEOUT,
                and_then(expect_contained(), move |_| {
                    for p in &host_copies {
                        ensure!(!p.exists(), "{} exists on the host", p.display());
                    }
                    Ok(())
                }),
            ),
        ]
    });
}

#[test]
fn symlink_and_hardlink_tricks() {
    let rootfs = common::rootfs();
    run_family("symlink_and_hardlink_tricks", 3, |_t| {
        let protected = vec![
            PathBuf::from("/etc/passwd"),
            PathBuf::from("/etc/shadow"),
            rootfs.join("etc/passwd"),
            rootfs.join("etc/shadow"),
            rootfs.join("usr/bin/python3.11"),
        ];
        let hidden = py_list(&host_paths());
        vec![
            Case::single(
                "symlink_to_passwd_then_write",
                r#"
import os, errno
os.symlink('/etc/passwd', '/tmp/passwd-link')
for flags in (os.O_WRONLY | os.O_APPEND, os.O_WRONLY | os.O_TRUNC, os.O_RDWR):
    try:
        fd = os.open('/tmp/passwd-link', flags)
    except OSError as e:
        assert e.errno in (errno.EROFS, errno.EACCES), e
    else:
        os.close(fd)
        raise AssertionError('opened /etc/passwd for writing through a symlink')
print('contained')
"#,
                DEFAULT_TIMEOUT,
                contained_and_unchanged(protected.clone()),
            ),
            contained(
                "symlink_to_host_paths_dangles",
                fill(
                    r#"
import os
for i, target in enumerate(@HIDDEN@):
    link = '/tmp/host-link-%d' % i
    os.symlink(target, link)
    assert not os.path.exists(link), target
    try:
        open(link, 'rb')
    except (FileNotFoundError, IsADirectoryError) as e:
        assert isinstance(e, FileNotFoundError), (target, e)
    else:
        raise AssertionError('opened host path ' + target)
print('contained')
"#,
                    &[("HIDDEN", &hidden)],
                ),
            ),
            Case::single(
                "hardlink_to_rootfs_file",
                r#"
import os, errno
for src in ['/etc/passwd', '/usr/bin/python3', '/etc/shadow']:
    if not os.path.exists(src):
        continue
    try:
        os.link(src, '/tmp/hard')
    except OSError as e:
        assert e.errno in (errno.EXDEV, errno.EPERM, errno.EACCES), (src, e)
    else:
        raise AssertionError('hard-linked ' + src + ' into /tmp')
fd = os.open('/etc/passwd', os.O_RDONLY)
try:
    os.link('/proc/self/fd/%d' % fd, '/tmp/hard2', follow_symlinks=True)
except OSError as e:
    assert e.errno in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.ENOENT), e
else:
    raise AssertionError('linkat through /proc/self/fd made a rootfs link')
print('contained')
"#,
                DEFAULT_TIMEOUT,
                contained_and_unchanged(protected.clone()),
            ),
            Case::single(
                "link_or_move_tmp_file_over_rootfs",
                r#"
import os, errno
open('/tmp/evil', 'w').write('root::0:0::/root:/bin/sh\n')
attempts = {
    'link into etc': lambda: os.link('/tmp/evil', '/etc/evil'),
    'rename over passwd': lambda: os.rename('/tmp/evil', '/etc/passwd'),
    'replace passwd': lambda: os.replace('/tmp/evil', '/etc/passwd'),
    'rename over python': lambda: os.rename('/tmp/evil', '/usr/bin/python3'),
}
for what, fn in attempts.items():
    try:
        fn()
    except OSError as e:
        assert e.errno in (errno.EXDEV, errno.EROFS, errno.EACCES, errno.EPERM), (what, e)
    else:
        raise AssertionError(what + ' succeeded')
assert 'root::0:0' not in open('/etc/passwd').read()
print('contained')
"#,
                DEFAULT_TIMEOUT,
                contained_and_unchanged(protected.clone()),
            ),
            contained(
                "proc_self_root_is_the_run_root",
                r#"
import os
assert os.readlink('/proc/self/root') == '/'
assert sorted(os.listdir('/proc/self/root')) == sorted(os.listdir('/'))
for p in ['/proc/self/root/..', '/proc/self/root/../../..', '/proc/self/cwd/../../..']:
    assert os.path.samefile(p, '/'), p
for p in ['/proc/self/root/work', '/proc/self/root/../work', '/proc/self/root/var/cache/nsbox']:
    assert not os.path.exists(p), p
print('contained')
"#,
            ),
            contained(
                "proc_init_root_traversal_denied",
                r#"
import os, errno
def denied(what, fn):
    try:
        fn()
    except OSError as e:
        assert e.errno in (errno.EACCES, errno.EPERM), (what, e)
    else:
        raise AssertionError(what + ' allowed')
denied('list /proc/1/root', lambda: os.listdir('/proc/1/root'))
denied('open via /proc/1/root', lambda: open('/proc/1/root/etc/passwd'))
denied('chdir /proc/1/cwd', lambda: os.chdir('/proc/1/cwd'))
os.symlink('/proc/1/root', '/tmp/init-root')
denied('list through a symlink', lambda: os.listdir('/tmp/init-root/'))
denied('stat /proc/1/root/..', lambda: os.stat('/proc/1/root/..'))
print('contained')
"#,
            ),
            contained(
                "dotdot_above_root_stays_at_root",
                r#"
import os
root = os.stat('/')
for p in ['/..', '/../..', '/../../../../..', '/tmp/../..', '/usr/../../..']:
    s = os.stat(p)
    assert (s.st_dev, s.st_ino) == (root.st_dev, root.st_ino), p
os.chdir('/')
for _ in range(10):
    os.chdir('..')
assert os.getcwd() == '/'
fd = os.open('/', os.O_RDONLY | os.O_DIRECTORY)
up = os.open('..', os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
assert os.path.samestat(os.fstat(up), root)
print('contained')
"#,
            ),
            contained(
                "o_path_descriptor_cannot_be_reopened_for_reading",
                r#"
import os
target = '/etc/shadow' if os.path.exists('/etc/shadow') else '/root'
fd = os.open(target, os.O_PATH)
try:
    os.open('/proc/self/fd/%d' % fd, os.O_RDONLY)
except PermissionError:
    pass
else:
    raise AssertionError('reopened an O_PATH descriptor of ' + target + ' for reading')
print('contained')
"#,
            ),
            contained(
                "init_report_pipe_unreachable",
                r#"
import os, errno
# init's fd 5 is its report pipe to the supervisor: a forged record there would lie
# about the run's status.
for path in ['/proc/1/fd/5', '/proc/1/fd/0', '/proc/1/fd/1']:
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        assert e.errno in (errno.EACCES, errno.EPERM, errno.ENOENT), (path, e)
    else:
        os.close(fd)
        raise AssertionError('opened ' + path)
print('contained')
"#,
            ),
            contained(
                "symlink_swap_under_tmp_cannot_reach_outside",
                r#"
import os
# A directory symlink swapped in /tmp can only ever point within the run's own tree.
os.mkdir('/tmp/d')
os.rename('/tmp/d', '/tmp/d.old')
os.symlink('/', '/tmp/d')
assert os.path.samefile('/tmp/d/..', '/')
assert os.path.samefile('/tmp/d/proc/self/root', '/')
assert not os.path.exists('/tmp/d/work')
print('contained')
"#,
            ),
        ]
    });
}

#[test]
fn network() {
    run_family("network", 4, |t| {
        let port = t.server.port.to_string();
        let vars: &[(&str, &str)] = &[("PORT", &port)];
        vec![
            contained(
                "server_port_refused",
                fill(
                    r#"
import socket, errno
for family, addr in [(socket.AF_INET, ('127.0.0.1', @PORT@)), (socket.AF_INET6, ('::1', @PORT@))]:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(addr)
    except OSError as e:
        assert e.errno in (errno.ECONNREFUSED, errno.EADDRNOTAVAIL, errno.ENETUNREACH), (addr, e)
    else:
        raise AssertionError('reached the server at %r' % (addr,))
print('contained')
"#,
                    vars,
                ),
            ),
            contained(
                "tcp_to_documentation_ipv4_fails",
                r#"
import socket
for addr in [('192.0.2.1', 80), ('198.51.100.1', 443), ('203.0.113.1', 22)]:
    try:
        socket.create_connection(addr, timeout=2)
    except OSError:
        pass
    else:
        raise AssertionError('connected to %r' % (addr,))
print('contained')
"#,
            ),
            contained(
                "tcp_to_documentation_ipv6_fails",
                r#"
import socket
try:
    socket.create_connection(('2001:db8::1', 80), timeout=2)
except OSError:
    pass
else:
    raise AssertionError('connected to 2001:db8::1')
print('contained')
"#,
            ),
            contained(
                "udp_out_fails",
                r#"
import socket, errno
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for addr in [('198.51.100.1', 53), ('203.0.113.1', 123)]:
    try:
        s.sendto(b'nsbox', addr)
    except OSError as e:
        assert e.errno == errno.ENETUNREACH, (addr, e)
    else:
        raise AssertionError('sent a datagram to %r' % (addr,))
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
try:
    s.sendto(b'nsbox', ('255.255.255.255', 9))
except OSError:
    pass
else:
    raise AssertionError('sent a broadcast')
print('contained')
"#,
            ),
            contained(
                "dns_resolution_fails",
                r#"
import socket
for name in ['example.com', 'pypi.org', 'nsbox-redteam.invalid']:
    try:
        socket.getaddrinfo(name, 80)
    except socket.gaierror:
        pass
    else:
        raise AssertionError('resolved ' + name)
print('contained')
"#,
            ),
            contained(
                "only_loopback_and_no_route",
                r#"
ifaces = [l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]]
assert ifaces == ['lo'], ifaces
routes = open('/proc/net/route').read().splitlines()[1:]
assert all(r.split()[0] == 'lo' for r in routes), routes
print('contained')
"#,
            ),
            contained(
                "raw_sockets_denied",
                r#"
import socket, errno
for family, proto in [(socket.AF_INET, socket.IPPROTO_ICMP), (socket.AF_INET, socket.IPPROTO_RAW),
                      (socket.AF_INET6, socket.IPPROTO_ICMPV6)]:
    try:
        socket.socket(family, socket.SOCK_RAW, proto)
    except PermissionError:
        pass
    else:
        raise AssertionError('raw socket %r' % ((family, proto),))
print('contained')
"#,
            ),
            contained(
                "packet_and_netlink_sockets_denied",
                r#"
import socket, errno
for family, kind in [(17, socket.SOCK_RAW), (17, socket.SOCK_DGRAM), (16, socket.SOCK_RAW),
                     (16, socket.SOCK_DGRAM), (socket.AF_INET, 10)]:
    try:
        socket.socket(family, kind, 0)
    except OSError as e:
        assert e.errno == errno.EPERM, (family, kind, e)
    else:
        raise AssertionError('socket %r' % ((family, kind),))
print('contained')
"#,
            ),
            contained(
                "other_socket_families_denied",
                r#"
import socket, errno
# AF_UNSPEC, AF_KEY, AF_TIPC, AF_BLUETOOTH, AF_ALG, AF_VSOCK, AF_XDP, AF_MCTP
for family in [0, 15, 30, 31, 38, 40, 44, 45]:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET, socket.SOCK_RAW):
        try:
            socket.socket(family, kind, 0)
        except OSError as e:
            assert e.errno == errno.EPERM, (family, kind, e)
        else:
            raise AssertionError('socket family %d type %d' % (family, kind))
try:
    socket.socketpair(socket.AF_INET, socket.SOCK_STREAM)
except OSError as e:
    assert e.errno == errno.EPERM, e
else:
    raise AssertionError('AF_INET socketpair')
print('contained')
"#,
            ),
            contained(
                "icmp_ping_socket_unusable",
                r#"
import socket
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
except OSError:
    pass
else:
    try:
        s.sendto(b'\x08\x00\x00\x00\x00\x00\x00\x00', ('192.0.2.1', 0))
    except OSError:
        pass
    else:
        raise AssertionError('sent an ICMP echo')
print('contained')
"#,
            ),
            contained(
                "host_unix_sockets_absent",
                r#"
import socket
for path in ['/run/systemd/private', '/run/dbus/system_bus_socket', '/var/run/docker.sock',
             '/run/containerd/containerd.sock', '/tmp/.X11-unix/X0', '/dev/log',
             '/run/systemd/journal/socket']:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    else:
        raise AssertionError('connected to ' + path)
print('contained')
"#,
            ),
            Case::overlapping(
                "abstract_unix_socket_of_another_run_unreachable",
                r#"
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind('\0nsbox-redteam-abstract')
s.listen(4)
s.settimeout(3.5)
try:
    s.accept()
except socket.timeout:
    print('contained')
else:
    print('another run connected to this run')
"#,
                r#"
import socket
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    c.connect('\0nsbox-redteam-abstract')
except ConnectionRefusedError:
    pass
else:
    raise AssertionError("connected to the other run's abstract socket")
# The name is free in this run's network namespace, and abstract sockets do work here.
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind('\0nsbox-redteam-abstract')
s.listen(1)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect('\0nsbox-redteam-abstract')
print('contained')
"#,
            ),
            Case::overlapping(
                "loopback_port_of_another_run_unreachable",
                r#"
import socket
s = socket.socket()
s.bind(('127.0.0.1', 47123))
s.listen(4)
s.settimeout(3.5)
try:
    s.accept()
except socket.timeout:
    print('contained')
else:
    print("another run connected to this run's port")
"#,
                r#"
import socket
c = socket.socket()
c.settimeout(2)
try:
    c.connect(('127.0.0.1', 47123))
except ConnectionRefusedError:
    pass
else:
    raise AssertionError("connected to the other run's port")
s = socket.socket()
s.bind(('127.0.0.1', 47123))  # free here: a loopback of its own
print('contained')
"#,
            ),
        ]
    });
}

#[test]
fn privilege_escalation() {
    run_family("privilege_escalation", 5, |_t| {
        vec![
            sys_case(
                "setuid_root",
                r#"
for what, fn in [('setuid', lambda: os.setuid(0)), ('seteuid', lambda: os.seteuid(0)),
                 ('setresuid', lambda: os.setresuid(0, 0, 0)), ('setgid', lambda: os.setgid(0)),
                 ('setgroups', lambda: os.setgroups([0])), ('setreuid', lambda: os.setreuid(0, 0))]:
    raises(what, fn, errno.EPERM)
assert os.getresuid() == (65534, 65534, 65534) and os.getresgid() == (65534, 65534, 65534)
"#,
            ),
            sys_case(
                "capset_all_capabilities",
                r#"
hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)
data = (ctypes.c_uint32 * 6)(*([0xffffffff] * 6))
denied('capset', 126, hdr, data)
caps = [l for l in open('/proc/self/status').read().splitlines() if l.startswith('Cap')]
assert all(int(l.split()[1], 16) == 0 for l in caps), caps
# PR_CAP_AMBIENT_RAISE CAP_SYS_ADMIN, PR_SET_SECUREBITS, PR_SET_MM_ARG_START
for what, args in [('ambient raise', (47, 2, 21, 0, 0)), ('securebits', (28, 0x2f, 0, 0, 0)),
                   ('set mm', (35, 8, 0, 0, 0))]:
    ctypes.set_errno(0)
    rc = libc.prctl(*[ctypes.c_ulong(a) for a in args])
    assert rc == -1 and ctypes.get_errno() in (errno.EPERM, errno.EINVAL), (what, rc, ctypes.get_errno())
"#,
            ),
            sys_case(
                "unshare_any_namespace",
                r#"
for flag in [0x10000000, 0x00020000, 0x20000000, 0x40000000, 0x08000000, 0x04000000,
             0x02000000, 0x00000080, 0x10000000 | 0x00020000]:
    denied('unshare %#x' % flag, 272, flag)
"#,
            ),
            sys_case(
                "clone_with_new_namespaces",
                r#"
SIGCHLD = 17
for flag in [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
             0x40000000, 0x00000080, (1 << 32) | 0x10000000, 0x10000000 | 0x00020000]:
    rc, e = sc(56, flag | SIGCHLD, 0, 0, 0, 0)
    if rc == 0:
        os._exit(0)  # the child of a clone that should not have happened
    if rc > 0:
        os.waitpid(rc, 0)
    assert (rc, e) == (-1, errno.EPERM), ('clone %#x' % flag, rc, e)
"#,
            ),
            sys_case(
                "clone3_is_enosys_and_fork_still_works",
                r#"
args = (ctypes.c_uint64 * 11)()
args[0] = 0x10000000  # CLONE_NEWUSER
args[4] = 17          # exit_signal SIGCHLD
denied('clone3 newuser', 435, args, 88, err=errno.ENOSYS)
denied('clone3 null', 435, None, 0, err=errno.ENOSYS)
import threading
t = threading.Thread(target=lambda: None)
t.start(); t.join()
pid = os.fork()
if pid == 0:
    os._exit(7)
assert os.waitpid(pid, 0)[1] >> 8 == 7
"#,
            ),
            sys_case(
                "setns_into_any_namespace",
                r#"
for ns in ['net', 'mnt', 'user', 'pid', 'ipc', 'uts', 'cgroup']:
    fd = os.open('/proc/self/ns/' + ns, os.O_RDONLY)
    denied('setns ' + ns, 308, fd, 0)
    os.close(fd)
for ns in ['net', 'mnt', 'user']:
    raises('open /proc/1/ns/' + ns, lambda: os.open('/proc/1/ns/' + ns, os.O_RDONLY), errno.EACCES, errno.EPERM)
"#,
            ),
            sys_case(
                "mount_family",
                r#"
denied('mount tmpfs', 165, b'none', b'/tmp', b'tmpfs', 0, None)
denied('remount rw', 165, None, b'/', None, 0x20 | 0x1000, None)  # MS_REMOUNT|MS_BIND
denied('bind /proc', 165, b'/proc', b'/tmp', None, 0x1000, None)
denied('umount2 /proc', 166, b'/proc', 2)
denied('pivot_root', 155, b'/tmp', b'/tmp')
denied('chroot', 161, b'/tmp')
denied('fsopen', 430, b'tmpfs', 0)
denied('fspick', 433, -100, b'/', 0)
denied('open_tree', 428, -100, b'/', 1)
denied('move_mount', 429, -100, b'/proc', -100, b'/tmp', 0)
denied('mount_setattr', 442, -100, b'/', 0, None, 0)
"#,
            ),
            sys_case(
                "ptrace_init_self_and_child",
                r#"
denied('attach init', 101, 16, 1, 0, 0)
denied('seize init', 101, 0x4206, 1, 0, 0)
denied('traceme', 101, 0, 0, 0, 0)
pid = os.fork()
if pid == 0:
    time.sleep(30)
    os._exit(0)
denied('attach own child', 101, 16, pid, 0, 0)
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
"#,
            ),
            sys_case(
                "process_vm_readv_writev",
                r#"
class iovec(ctypes.Structure):
    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]
src = ctypes.create_string_buffer(b'secret', 16)
dst = ctypes.create_string_buffer(16)
local = iovec(ctypes.cast(dst, ctypes.c_void_p), 16)
remote = iovec(ctypes.cast(src, ctypes.c_void_p), 16)
for pid in (1, os.getpid()):
    denied('readv %d' % pid, 310, pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    denied('writev %d' % pid, 311, pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
denied('process_madvise', 440, -1, None, 0, 0, 0)
denied('pidfd_getfd', 438, -1, 0, 0)
denied('kcmp', 312, os.getpid(), 1, 0, 0, 0)
"#,
            ),
            sys_case(
                "proc_mem_of_init",
                r#"
for mode in ('rb', 'r+b', 'wb'):
    raises('/proc/1/mem ' + mode, lambda: open('/proc/1/mem', mode), errno.EACCES, errno.EPERM)
"#,
            ),
            sys_case(
                "kernel_keyring",
                r#"
denied('keyctl get session', 250, 0, -3, 0)
denied('add_key', 248, b'user', b'nsbox', b'x', 1, -3)
denied('request_key', 249, b'user', b'nsbox', None, -3)
"#,
            ),
            sys_case(
                "bpf",
                r#"
attr = ctypes.create_string_buffer(128)
for cmd in (0, 5, 18):  # MAP_CREATE, PROG_LOAD, BTF_LOAD
    denied('bpf %d' % cmd, 321, cmd, attr, 128)
"#,
            ),
            sys_case(
                "perf_event_open",
                r#"
attr = ctypes.create_string_buffer(128)
ctypes.c_uint32.from_buffer(attr, 4).value = 128  # attr.size
denied('perf_event_open', 298, attr, 0, -1, -1, 0)
"#,
            ),
            sys_case(
                "userfaultfd",
                r#"
denied('userfaultfd', 323, 0)
denied('userfaultfd nonblock', 323, os.O_NONBLOCK | os.O_CLOEXEC)
"#,
            ),
            sys_case(
                "io_uring",
                r#"
params = ctypes.create_string_buffer(120)
denied('io_uring_setup', 425, 1, params)
denied('io_uring_enter', 426, 0, 1, 0, 0, None, 0)
denied('io_uring_register', 427, 0, 0, None, 0)
"#,
            ),
            sys_case(
                "tiocsti_and_tioclinux",
                r#"
c = ctypes.create_string_buffer(b'x')
for fd in (0, 1, 2):
    for req in (0x5412, 0xdead00005412, 0x541C):
        denied('ioctl %#x on %d' % (req, fd), 16, fd, req, c)
"#,
            ),
            sys_case(
                "kernel_modules",
                r#"
image = ctypes.create_string_buffer(64)
denied('init_module', 175, image, 64, b'')
fd = os.open('/dev/null', os.O_RDONLY)
denied('finit_module', 313, fd, b'', 0)
denied('delete_module', 176, b'nsbox_redteam_no_such_module', 0)
"#,
            ),
            sys_case(
                "reboot_and_kexec",
                r#"
# LINUX_REBOOT_CMD_CAD_OFF: harmless even if it were allowed.
denied('reboot', 169, 0xfee1dead, 672274793, 0, None)
denied('kexec_load', 246, 0, 0, None, 0)
denied('kexec_file_load', 320, -1, -1, 0, None, 0)
assert os.path.exists('/proc/1')
"#,
            ),
            sys_case(
                "clock_changes",
                r#"
# The current time, so nothing would change even if a call got through.
now = time.time()
tv = (ctypes.c_long * 2)(int(now), 0)
ts = (ctypes.c_long * 2)(int(now), 0)
denied('settimeofday', 164, tv, None)
denied('clock_settime', 227, 0, ts)
timex = ctypes.create_string_buffer(208)  # modes = 0: a read, still refused
denied('adjtimex', 159, timex)
denied('clock_adjtime', 305, 0, timex)
"#,
            ),
            sys_case(
                "hostname_changes",
                r#"
denied('sethostname', 170, b'evil', 4)
denied('setdomainname', 171, b'evil', 4)
import socket
assert socket.gethostname() == 'nsbox'
"#,
            ),
            sys_case(
                "open_by_handle_shocker",
                r#"
handle = ctypes.create_string_buffer(136)
ctypes.c_uint32.from_buffer(handle, 0).value = 128
mount_id = ctypes.c_int()
denied('name_to_handle_at', 303, -100, b'/etc/passwd', handle, ctypes.byref(mount_id), 0)
denied('open_by_handle_at', 304, -100, handle, 0)
"#,
            ),
            sys_case(
                "io_ports_and_ldt",
                r#"
denied('iopl', 172, 3)
denied('ioperm', 173, 0x80, 1, 1)
denied('modify_ldt', 154, 1, ctypes.create_string_buffer(16), 16)
"#,
            ),
            sys_case(
                "kernel_log_and_accounting",
                r#"
buf = ctypes.create_string_buffer(4096)
denied('syslog read all', 103, 3, buf, 4096)
denied('acct', 163, b'/tmp/acct')
open('/tmp/swap', 'wb').write(b'\0' * 65536)
denied('swapon', 167, b'/tmp/swap', 0)
denied('swapoff', 168, b'/tmp/swap')
denied('fanotify_init', 300, 0, 0)
denied('vhangup', 153)
denied('quotactl', 179, 0x800002, b'/tmp', 0, None)
"#,
            ),
            sys_case(
                "personality_aslr_off",
                r#"
denied('ADDR_NO_RANDOMIZE', 135, 0x0040000)
denied('READ_IMPLIES_EXEC', 135, 0x0400000)
rc, e = sc(135, 0xffffffff)
assert rc >= 0 and rc & 0x0040000 == 0, (rc, e)
"#,
            ),
            sys_case(
                "x32_abi_syscalls",
                r#"
X32 = 0x40000000
for name, nr, args in [('unshare', 272, (0x10000000,)), ('mount', 165, (b'none', b'/tmp', b'tmpfs', 0, None)),
                       ('ptrace', 101, (16, 1, 0, 0)), ('setuid', 105, (0,))]:
    pid = os.fork()
    if pid == 0:
        rc, e = sc(X32 | nr, *args)
        os._exit(0 if rc == -1 and e in (errno.ENOSYS, errno.EPERM) else 3)
    _, status = os.waitpid(pid, 0)
    ok = (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS) or \
         (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
    assert ok, ('x32 ' + name, status)
"#,
            ),
            sys_case(
                "i386_int80_syscalls",
                r#"
import mmap
def int80(nr, ebx, ecx=0):
    code = (b'\x53' +                                  # push rbx
            b'\xb8' + nr.to_bytes(4, 'little') +       # mov eax, nr
            b'\xbb' + ebx.to_bytes(4, 'little') +      # mov ebx, arg1
            b'\xb9' + ecx.to_bytes(4, 'little') +      # mov ecx, arg2
            b'\xcd\x80' +                              # int 0x80
            b'\x5b\xc3')                               # pop rbx; ret
    m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    m.write(code)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    return ctypes.CFUNCTYPE(ctypes.c_int)(addr)()
# i386 numbers: unshare 310, setuid 23, chroot 61 (with a null path: EFAULT if it ran)
for name, nr, arg in [('unshare', 310, 0x10000000), ('setuid', 23, 0), ('chroot', 61, 0)]:
    pid = os.fork()
    if pid == 0:
        rc = int80(nr, arg)
        os._exit(0 if rc in (-errno.EPERM, -errno.ENOSYS) else 3)
    _, status = os.waitpid(pid, 0)
    ok = (os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGSYS, signal.SIGSEGV)) or \
         (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
    assert ok, ('int 0x80 ' + name, status)
"#,
            ),
            sys_case(
                "device_nodes_in_tmp",
                r#"
import stat
for what, mode, dev in [('block', stat.S_IFBLK, os.makedev(8, 0)), ('char mem', stat.S_IFCHR, os.makedev(1, 1)),
                        ('char kmsg', stat.S_IFCHR, os.makedev(1, 11))]:
    raises('mknod ' + what, lambda: os.mknod('/tmp/dev-' + what.replace(' ', '-'), 0o666 | mode, dev), errno.EPERM)
"#,
            ),
            sys_case(
                "raise_rlimits",
                r#"
import resource
for name in ['RLIMIT_NPROC', 'RLIMIT_NOFILE', 'RLIMIT_CPU', 'RLIMIT_FSIZE']:
    r = getattr(resource, name)
    soft, hard = resource.getrlimit(r)
    try:
        resource.setrlimit(r, (hard + 1, hard + 1))
    except (ValueError, PermissionError):
        pass
    else:
        raise AssertionError('raised ' + name)
try:
    resource.prlimit(1, resource.RLIMIT_NPROC, (1, 1))
except PermissionError:
    pass
else:
    raise AssertionError("changed init's rlimit")
"#,
            ),
            sys_case(
                "seccomp_and_no_new_privs_on_every_thread_and_child",
                r#"
import threading, subprocess, sys
ev = threading.Event()
ts = [threading.Thread(target=ev.wait) for _ in range(4)]
for t in ts:
    t.start()
def check_status(st, who):
    assert 'Seccomp:\t2' in st and 'NoNewPrivs:\t1' in st, (who, st)
    caps = [l for l in st.splitlines() if l.startswith('Cap')]
    assert all(int(l.split()[1], 16) == 0 for l in caps), (who, caps)
tids = os.listdir('/proc/self/task')
assert len(tids) == 5, tids
for tid in tids:
    check_status(open('/proc/self/task/%s/status' % tid).read(), tid)
ev.set()
for t in ts:
    t.join()
out = subprocess.run([sys.executable, '-c', "print(open('/proc/self/status').read())"],
                     capture_output=True, text=True).stdout
check_status(out, 'exec child')
"#,
            ),
            sys_case(
                "no_setuid_files_in_the_root_filesystem",
                r#"
import stat
bad = []
for top in ['/usr', '/etc', '/var', '/opt', '/home', '/root', '/srv', '/run', '/bin', '/sbin']:
    for dp, dns, fns in os.walk(top):
        for n in fns:
            p = os.path.join(dp, n)
            try:
                m = os.lstat(p).st_mode
            except OSError:
                continue
            if stat.S_ISREG(m) and m & (stat.S_ISUID | stat.S_ISGID):
                bad.append(p)
assert not bad, bad
for line in open('/proc/self/mountinfo'):
    fields = line.split()
    if fields[4] in ('/', '/tmp', '/dev', '/proc'):
        assert 'nosuid' in fields[5], line
"#,
            ),
            sys_case(
                "pidfd_signal_to_init",
                r#"
rc, e = sc(434, 1, 0)  # pidfd_open(1)
if rc >= 0:
    denied('pidfd_send_signal', 424, rc, 9, None, 0)
else:
    assert e in (errno.EPERM, errno.EACCES), e
assert os.path.exists('/proc/1')
"#,
            ),
        ]
    });
}

#[test]
fn escape_from_the_timeout() {
    run_family("escape_from_the_timeout", 6, |_t| {
        let timeout = |name, code: &str| {
            Case::single(name, code, SHORT_TIMEOUT, expect_timeout(SHORT_TIMEOUT))
        };
        let quick =
            |name, code: &str| Case::single(name, code, 10.0, expect_contained_quickly(3.0));
        vec![
            timeout(
                "setsid_double_fork",
                r#"
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(1000)
    os._exit(0)
time.sleep(1000)
"#,
            ),
            timeout(
                "ignores_sigterm_and_friends",
                r#"
import signal, time
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
          signal.SIGXCPU, signal.SIGALRM, signal.SIGPIPE):
    signal.signal(s, signal.SIG_IGN)
print('ignoring', flush=True)
while True:
    time.sleep(0.1)
"#,
            ),
            Case::single(
                "non_daemon_thread_keeps_running",
                r#"
import threading, time
def spin():
    while True:
        time.sleep(0.05)
threading.Thread(target=spin).start()
print('main done', flush=True)
"#,
                SHORT_TIMEOUT,
                and_then(expect_timeout(SHORT_TIMEOUT), move |v| {
                    ensure!(v["stdout"] == "main done\n", "main's output lost");
                    Ok(())
                }),
            ),
            quick(
                "child_closes_stdout_and_lingers",
                r#"
import os, time
if os.fork() == 0:
    os.setsid()
    for fd in (0, 1, 2, 4):
        os.close(fd)
    time.sleep(1000)
    os._exit(0)
print('contained')
"#,
            ),
            quick(
                "detached_subprocess_in_new_session",
                r#"
import subprocess, sys
subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)'], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                 close_fds=True)
print('contained')
"#,
            ),
            quick(
                "posix_spawn_setsid",
                r#"
import os, sys
os.posix_spawn(sys.executable, [sys.executable, '-c', 'import time; time.sleep(1000)'], {},
               setsid=True)
print('contained')
"#,
            ),
            quick(
                "stopped_child_left_behind",
                r#"
import os, signal
pid = os.fork()
if pid == 0:
    os.kill(os.getpid(), signal.SIGSTOP)
    os._exit(0)
os.waitpid(pid, os.WUNTRACED)
print('contained')
"#,
            ),
            Case::single(
                "orphan_keeps_writing_to_stdout",
                r#"
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            print('tick', flush=True)
            time.sleep(0.05)
    os._exit(0)
time.sleep(0.3)
print('contained', flush=True)
"#,
                10.0,
                check(|v| {
                    ensure!(
                        v["success"] == true && v["exit_code"] == 0,
                        "expected success and exit 0"
                    );
                    ensure!(
                        text(v, "stdout").lines().any(|l| l == "contained"),
                        "main's line missing"
                    );
                    let t = v["execution_time"].as_f64().unwrap_or(f64::MAX);
                    ensure!(t < 3.0, "took {t} s: the orphan held the run open");
                    Ok(())
                }),
            ),
            timeout(
                "hydra_respawns_itself",
                r#"
import os, time
if os.fork() == 0:
    while True:
        time.sleep(0.05)
        try:
            if os.fork() != 0:
                os._exit(0)
            os.setsid()
        except OSError:
            pass
time.sleep(1000)
"#,
            ),
            timeout(
                "unreaped_zombies",
                r#"
import os, time
for _ in range(20):
    if os.fork() == 0:
        os._exit(0)
time.sleep(1000)
"#,
            ),
            timeout(
                "cpu_spinning_children",
                r#"
import os, time
for _ in range(4):
    if os.fork() == 0:
        while True:
            pass
time.sleep(1000)
"#,
            ),
            timeout(
                "blocked_on_a_fifo",
                r#"
import os
os.mkfifo('/tmp/fifo')
print('waiting', flush=True)
open('/tmp/fifo').read()
"#,
            ),
            timeout(
                "main_process_stops_itself",
                r#"
import os, signal
print('stopping', flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"#,
            ),
        ]
    });
}

#[test]
fn resource_exhaustion() {
    run_family("resource_exhaustion", 7, |_t| {
        let truncated = |stream: &'static str| {
            check(move |v| {
                let out = text(v, stream);
                let marker = format!("[nsbox: {stream} truncated at 1 MiB");
                ensure!(out.contains(&marker), "no {marker:?} in {stream}");
                ensure!(
                    out.len() <= OUTPUT_BYTES + 200,
                    "{stream} is {} bytes, over the cap",
                    out.len()
                );
                Ok(())
            })
        };
        vec![
            Case::single(
                "memory_bomb",
                r#"
chunks = []
while True:
    chunks.append(b'x' * (32 << 20))
"#,
                DEFAULT_TIMEOUT,
                expect_oom(),
            ),
            Case::single(
                "numpy_memory_bomb",
                "import numpy as np\na = np.ones(1 << 28)\nprint(a.sum())\n",
                DEFAULT_TIMEOUT,
                expect_oom(),
            ),
            Case::single(
                "fork_bomb_counted",
                r#"
import os, time
n = 0
try:
    while n < 1000:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
except BlockingIOError as e:
    assert n < 64, n
    print('contained')
"#,
                DEFAULT_TIMEOUT,
                and_then(expect_contained(), move |v| {
                    let note = format!("process limit ({MAX_PROCESSES}) reached");
                    ensure!(text(v, "stderr").contains(&note), "no {note:?} in stderr");
                    Ok(())
                }),
            ),
            Case::single(
                "fork_bomb_classic",
                r#"
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"#,
                3.0,
                expect_timeout(3.0),
            ),
            contained(
                "thread_bomb",
                r#"
import threading, time
n = 0
try:
    while n < 1000:
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        n += 1
except RuntimeError as e:
    assert "can't start new thread" in str(e), e
    assert n < 64, n
    print('contained')
"#,
            ),
            contained("tmp_disk_fill", common::fill_tmp(&["ENOSPC"])),
            contained(
                "tmp_inode_flood",
                r#"
import os, errno
n = 0
try:
    while n < 100000:
        os.close(os.open('/tmp/i%d' % n, os.O_CREAT | os.O_WRONLY, 0o600))
        n += 1
except OSError as e:
    assert e.errno == errno.ENOSPC, e
assert 16000 <= n <= 16384, n
print('contained')
"#,
            ),
            contained(
                "file_bigger_than_fsize",
                r#"
import os, errno, resource
assert resource.getrlimit(resource.RLIMIT_FSIZE) == (64 << 20, 64 << 20), resource.getrlimit(resource.RLIMIT_FSIZE)
fd = os.open('/tmp/big', os.O_CREAT | os.O_WRONLY, 0o600)
os.lseek(fd, 64 << 20, os.SEEK_SET)
try:
    os.write(fd, b'x')
except OSError as e:
    assert e.errno == errno.EFBIG, e
else:
    raise AssertionError('wrote past RLIMIT_FSIZE')
try:
    os.ftruncate(fd, 65 << 20)
except OSError as e:
    assert e.errno == errno.EFBIG, e
else:
    raise AssertionError('ftruncate past RLIMIT_FSIZE')
print('contained')
"#,
            ),
            contained(
                "rlimits_as_documented",
                r#"
import resource
want = {'RLIMIT_CPU': 60, 'RLIMIT_FSIZE': 64 << 20, 'RLIMIT_NOFILE': 256, 'RLIMIT_NPROC': 64}
for name, soft in want.items():
    got = resource.getrlimit(getattr(resource, name))
    assert got[0] == soft, (name, got)
print('contained')
"#,
            ),
            contained(
                "descriptor_exhaustion",
                r#"
import os, errno
fds = []
try:
    while len(fds) < 10000:
        fds.append(os.open('/dev/null', os.O_RDONLY))
except OSError as e:
    assert e.errno == errno.EMFILE, e
assert len(fds) < 256, len(fds)
print('contained')
"#,
            ),
            Case::single(
                "stdout_flood",
                r#"
import sys
line = 'x' * 1023 + '\n'
for _ in range(4096):
    sys.stdout.write(line)
"#,
                DEFAULT_TIMEOUT,
                and_then(check(expect_clean_exit), truncated("stdout")),
            ),
            Case::single(
                "stderr_flood",
                r#"
import sys
line = 'e' * 1023 + '\n'
for _ in range(4096):
    sys.stderr.write(line)
print('contained')
"#,
                DEFAULT_TIMEOUT,
                and_then(expect_contained(), truncated("stderr")),
            ),
            Case::single(
                "endless_output_until_timeout",
                r#"
import sys
chunk = 'y' * 65535 + '\n'
while True:
    sys.stdout.write(chunk)
"#,
                SHORT_TIMEOUT,
                and_then(expect_timeout(SHORT_TIMEOUT), truncated("stdout")),
            ),
            Case::single(
                "invalid_utf8_and_nul_output",
                r#"
import sys
sys.stdout.buffer.write(bytes(range(256)) * 4 + b'\n')
sys.stdout.flush()
sys.stderr.buffer.write(b'\xff\xfe\x00\xc0\n')
print('contained')
"#,
                DEFAULT_TIMEOUT,
                check(|v| {
                    ensure!(v["exit_code"] == 0, "expected exit 0");
                    ensure!(
                        text(v, "stdout").ends_with("contained\n"),
                        "output after the binary garbage lost"
                    );
                    Ok(())
                }),
            ),
            Case::single(
                "many_plots_capped",
                r#"
import matplotlib.pyplot as plt
for i in range(20):
    plt.figure(figsize=(1, 1), dpi=40)
    plt.plot([0, i])
plt.show()
print('contained')
"#,
                60.0,
                and_then(expect_contained(), move |v| {
                    let n = v["plots"].as_array().map_or(0, Vec::len);
                    ensure!(n == MAX_PLOTS, "{n} plots returned, cap is {MAX_PLOTS}");
                    let note =
                        format!("plot limit ({MAX_PLOTS}) reached; 4 more figure(s) not returned");
                    ensure!(text(v, "stderr").contains(&note), "no {note:?} in stderr");
                    Ok(())
                }),
            ),
            Case::single(
                "huge_plots_capped_by_size",
                r#"
import numpy as np, matplotlib.pyplot as plt
# Incompressible 1600x1600 images, about 7.5 MB of PNG each: three pass the 16 MiB cap.
# Each is shown (rendered and closed) before the next, to stay well inside 512 MiB.
rng = np.random.default_rng(1)
for i in range(3):
    fig = plt.figure(figsize=(16, 16), dpi=100)
    fig.figimage(rng.integers(0, 256, (1600, 1600, 3), dtype=np.uint8))
    plt.show()
print('contained')
"#,
                60.0,
                and_then(expect_contained(), move |v| {
                    let plots = v["plots"].as_array().cloned().unwrap_or_default();
                    let bytes: usize = plots
                        .iter()
                        .map(|p| p["content_base64"].as_str().map_or(0, str::len) / 4 * 3)
                        .sum();
                    ensure!(
                        !plots.is_empty() && plots.len() < 3,
                        "{} plots returned",
                        plots.len()
                    );
                    ensure!(
                        bytes <= PLOT_BYTES,
                        "{bytes} plot bytes, cap is {PLOT_BYTES}"
                    );
                    ensure!(
                        text(v, "stderr").contains("plot size limit (16 MiB) exceeded"),
                        "no plot size note in stderr"
                    );
                    Ok(())
                }),
            ),
            Case::single(
                "cpu_spin_short_timeout",
                "while True:\n    pass\n",
                SHORT_TIMEOUT,
                expect_timeout(SHORT_TIMEOUT),
            ),
            Case::single(
                "c_stack_overflow",
                r#"
import sys
# Python-to-Python calls do not use the C stack in 3.11; repr of nested lists does.
sys.setrecursionlimit(10 ** 7)
x = []
for _ in range(10 ** 6):
    x = [x]
repr(x)
"#,
                DEFAULT_TIMEOUT,
                expect_failed(),
            ),
        ]
    });
}

#[test]
fn leaks_between_concurrent_runs() {
    run_family("leaks_between_concurrent_runs", 8, |_t| {
        vec![
            Case::overlapping(
                "tmp_and_dev_shm_secret",
                r#"
import os, time, errno
open('/tmp/nsbox-secret', 'w').write('s3cret-of-run-A')
try:
    os.close(os.open('/dev/shm/nsbox-secret', os.O_CREAT | os.O_WRONLY, 0o666))
except OSError as e:
    assert e.errno in (errno.ENOENT, errno.EROFS, errno.EACCES), e
else:
    raise AssertionError('wrote /dev/shm')
try:
    from multiprocessing import shared_memory
    shared_memory.SharedMemory(name='nsbox-secret', create=True, size=64)
except OSError:
    pass
else:
    raise AssertionError('created POSIX shared memory')
time.sleep(3)
assert open('/tmp/nsbox-secret').read() == 's3cret-of-run-A'
print('contained')
"#,
                r#"
import os
assert not os.path.exists('/tmp/nsbox-secret')
assert not os.path.exists('/dev/shm')
assert set(os.listdir('/tmp')) <= {'.config', 'work'}, os.listdir('/tmp')
assert os.listdir('/tmp/work') == [], os.listdir('/tmp/work')
print('contained')
"#,
            ),
            Case::concurrent(
                "tmp_not_reused_by_the_next_run",
                vec![
                    contained_run(
                        0,
                        "open('/tmp/left-behind', 'w').write('x')\nprint('contained')\n",
                    ),
                    contained_run(
                        1500,
                        "import os\nassert not os.path.exists('/tmp/left-behind')\nprint('contained')\n",
                    ),
                ],
            ),
            Case::overlapping(
                "pids_of_other_runs_invisible",
                r#"
import os, time
for _ in range(3):
    if os.fork() == 0:
        time.sleep(3)
        os._exit(0)
time.sleep(3)
print('contained')
"#,
                r#"
import os
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
assert pids == [1, os.getpid()], pids
visible = [p for p in range(1, 32768) if p != os.getpid() and os.path.exists('/proc/%d' % p)]
assert visible == [1], visible
print('contained')
"#,
            ),
            Case::overlapping(
                "sysv_ipc_objects_of_another_run_invisible",
                r#"
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
KEY = 0x5EC7E7
shm = libc.shmget(KEY, 4096, 0o1666)  # IPC_CREAT | 0666
assert shm >= 0, ctypes.get_errno()
addr = libc.shmat(shm, None, 0)
ctypes.memmove(addr, b's3cret-of-run-A', 15)
assert libc.semget(KEY, 1, 0o1666) >= 0
assert libc.msgget(KEY, 0o1666) >= 0
time.sleep(3)
print('contained')
"#,
                r#"
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
KEY = 0x5EC7E7
for name in ['shmget', 'semget', 'msgget']:
    ctypes.set_errno(0)
    args = (KEY, 0, 0) if name != 'msgget' else (KEY, 0)
    rc = getattr(libc, name)(*args)
    assert rc == -1 and ctypes.get_errno() == errno.ENOENT, (name, rc, ctypes.get_errno())
for name in ['shm', 'sem', 'msg']:
    assert open('/proc/sysvipc/' + name).read().splitlines()[1:] == [], name
assert libc.shmget(KEY, 4096, 0o3666) >= 0  # IPC_CREAT | IPC_EXCL: the key is free here
print('contained')
"#,
            ),
            Case::overlapping(
                "posix_message_queue_of_another_run_invisible",
                r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
q = libc.mq_open(b'/nsbox-redteam', os.O_CREAT | os.O_RDWR, 0o666, None)
if q >= 0:
    libc.mq_send(q, b's3cret', 6, 0)
time.sleep(3)
print('contained')
"#,
                r#"
import ctypes, os, errno
libc = ctypes.CDLL(None, use_errno=True)
ctypes.set_errno(0)
q = libc.mq_open(b'/nsbox-redteam', os.O_RDONLY)
assert q == -1 and ctypes.get_errno() == errno.ENOENT, (q, ctypes.get_errno())
print('contained')
"#,
            ),
            Case::overlapping(
                "lock_covert_channel_on_shared_rootfs_files",
                r#"
import fcntl, os, time
a = os.open('/usr/lib/python3.11/os.py', os.O_RDONLY)
fcntl.flock(a, fcntl.LOCK_EX)
b = os.open('/usr/lib/python3.11/socket.py', os.O_RDONLY)
fcntl.lockf(b, fcntl.LOCK_SH)
time.sleep(3)
print('contained')
"#,
                r#"
import fcntl, os, struct
a = os.open('/usr/lib/python3.11/os.py', os.O_RDONLY)
try:
    fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    raise AssertionError("another run's flock is visible: a covert channel")
b = os.open('/usr/lib/python3.11/socket.py', os.O_RDONLY)
probe = struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, 0, 0, 0)
kind = struct.unpack('hhqqi4x', fcntl.fcntl(b, fcntl.F_GETLK, probe))[0]
assert kind == fcntl.F_UNLCK, "another run's fcntl lock is visible: a covert channel"
print('contained')
"#,
            ),
            Case::overlapping(
                "inotify_covert_channel_on_shared_rootfs_files",
                r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_NONBLOCK)
if fd >= 0:
    # IN_ACCESS | IN_OPEN on a module nothing imports by itself
    wd = libc.inotify_add_watch(fd, b'/usr/lib/python3.11/colorsys.py', 0x21)
    time.sleep(3)
    try:
        events = os.read(fd, 4096)
    except BlockingIOError:
        events = b''
    assert not events, "saw another run open a shared file: a covert channel"
print('contained')
"#,
                "open('/usr/lib/python3.11/colorsys.py', 'rb').read()\nprint('contained')\n",
            ),
            Case::concurrent(
                "random_state_not_shared",
                (0..2)
                    .map(|i| {
                        run(
                            i * 100,
                            r#"
import os, random, json
import numpy as np
print(json.dumps([os.urandom(16).hex(), random.getrandbits(64),
                  float(np.random.rand()), float(np.random.default_rng().random())]))
"#,
                            DEFAULT_TIMEOUT,
                            check(|v| {
                                ensure!(v["exit_code"] == 0, "expected exit 0");
                                Ok(())
                            }),
                        )
                    })
                    .collect(),
            )
            .joint(|values| {
                let parsed: Vec<Value> = values
                    .iter()
                    .map(|v| serde_json::from_str(text(v, "stdout").trim()).unwrap_or(Value::Null))
                    .collect();
                // The str hash seed is not compared: forks of one zygote share it (CPython
                // cannot reseed it in a running interpreter) until the zygote is replaced,
                // and knowing it only lets a run slow down its own dicts.
                let names = ["urandom", "random", "np.random", "default_rng"];
                for (i, name) in names.iter().enumerate() {
                    ensure!(
                        parsed[0][i] != Value::Null && parsed[0][i] != parsed[1][i],
                        "{name} is the same in two runs: {} / {}",
                        parsed[0],
                        parsed[1]
                    );
                }
                Ok(())
            }),
        ]
    });
}

#[test]
fn signals_to_the_server() {
    run_family("signals_to_the_server", 9, |t| {
        let server_pid = t.server.pid();
        let spawners =
            std::fs::read_to_string(format!("/proc/{server_pid}/task/{server_pid}/children"))
                .unwrap_or_default();
        let mut host_pids: Vec<String> = spawners.split_whitespace().map(String::from).collect();
        host_pids.push(server_pid.to_string());
        host_pids.push(std::process::id().to_string());
        let host_pids = format!("[{}]", host_pids.join(", "));
        let victim = || contained_run(0, "import time\ntime.sleep(3)\nprint('contained')\n");
        vec![
            Case::concurrent(
                "kill_minus_one",
                vec![
                    victim(),
                    contained_run(
                        800,
                        r#"
import os, signal, time
pid = os.fork()
if pid == 0:
    time.sleep(30)
    os._exit(0)
os.kill(-1, signal.SIGKILL)
_, status = os.waitpid(pid, 0)
assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
assert os.path.exists('/proc/1')
print('contained')
"#,
                    ),
                ],
            ),
            contained(
                "kill_init",
                r#"
import os, signal, time
for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP, signal.SIGINT, signal.SIGHUP,
            signal.SIGSEGV):
    try:
        os.kill(1, sig)
    except PermissionError:
        pass
time.sleep(0.2)
state = [l for l in open('/proc/1/status').read().splitlines() if l.startswith('State:')][0]
assert 'T' not in state.split()[1], state
print('contained')
"#,
            ),
            Case::concurrent(
                "killpg_sweep",
                vec![
                    victim(),
                    contained_run(
                        800,
                        r#"
import os, signal, errno
hit = []
for pg in range(1, 32768):
    try:
        os.killpg(pg, signal.SIGKILL)
    except OSError as e:
        assert e.errno in (errno.ESRCH, errno.EPERM), (pg, e)
    else:
        hit.append(pg)
assert hit == [], hit
print('contained')
"#,
                    ),
                ],
            ),
            contained(
                "kill_host_pids",
                fill(
                    r#"
import os, signal, errno
me = os.getpid()
visible = []
for pid in range(1, 32768):
    if pid == me:
        continue
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        continue
    except PermissionError:
        pass
    visible.append(pid)
assert visible == [1], visible
for pid in @HOST_PIDS@:
    if pid in (1, me):
        continue
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError as e:
        assert e.errno in (errno.ESRCH, errno.EPERM), (pid, e)
    else:
        raise AssertionError('signalled host pid %d' % pid)
print('contained')
"#,
                    &[("HOST_PIDS", &host_pids)],
                ),
            ),
            Case::concurrent(
                "kill_own_process_group_spares_other_runs",
                vec![
                    victim(),
                    run(
                        800,
                        "import os, signal\nos.kill(0, signal.SIGKILL)\nprint('not killed')\n",
                        DEFAULT_TIMEOUT,
                        check(|_| Ok(())),
                    ),
                ],
            ),
            Case::concurrent(
                "renice_own_process_group_spares_other_runs",
                vec![
                    contained_run(
                        0,
                        r#"
import os, time
time.sleep(2.5)
assert os.getpriority(os.PRIO_PROCESS, 0) == 0, 'reniced by another run'
print('contained')
"#,
                    ),
                    contained_run(
                        800,
                        r#"
import os
try:
    os.setpriority(os.PRIO_PGRP, 0, 19)
except PermissionError:
    pass
print('contained')
"#,
                    ),
                ],
            ),
            Case::single(
                "sigkill_self",
                "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
                DEFAULT_TIMEOUT,
                expect_failed(),
            ),
        ]
    });
}

// ---------------------------------------------------------------------------------------
// Files collected from the working directory (issue 14): whatever a run plants in
// /tmp/work, the output files are its own regular files only, the answer comes promptly and
// the server stays well.

/// Texts that only a host file, the run's environment or the server's could hold.
const HOST_MARKERS: &[&str] = &["root:x:0:0", "root:*:", "PATH=/", SECRET, SECRET_VAR];

/// The contract's rules for a path: relative and normal, no control characters, at most
/// 255 bytes per component and 1024 in all.
fn normal_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 1024
        && !p.chars().any(char::is_control)
        && p.split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && c.len() <= 255)
}

/// What the output files of a planting case must be.
struct Planted {
    /// Files of the run that must come back with exactly this content.
    own: &'static [(&'static str, &'static str)],
    /// Other paths that may come back (a trailing `*` matches any continuation), with
    /// their content, if any, free of host markers.
    may: &'static [&'static str],
    /// Whether stderr must have an `nsbox: ...` line (something was skipped or cut).
    note: bool,
    /// The run (code and collection) must take less than this, seconds.
    within_s: f64,
}

fn allowed_by(may: &[&str], path: &str) -> bool {
    may.iter().any(|m| match m.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == *m,
    })
}

/// A returned file: its path and its content (`None` when truncated).
type Returned = (String, Option<Vec<u8>>);

/// The output files of a response: every entry has a normal path and either its content
/// (of its `size`, free of host markers) or `truncated: true`. Returns (path, content)
/// pairs, content `None` when truncated.
fn returned_files(v: &Value) -> Result<Vec<Returned>, String> {
    use base64::Engine as _;
    let Some(files) = v.get("files").and_then(Value::as_array) else {
        return Err("no `files` array in the response to a request with `files`".into());
    };
    let mut out = Vec::new();
    for f in files {
        let path = text(f, "path");
        ensure!(normal_path(path), "returned a file with a bad path: {f}");
        let content = match f.get("content_base64").and_then(Value::as_str) {
            Some(c) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(c)
                    .map_err(|e| format!("{path}: bad base64 ({e})"))?;
                ensure!(
                    f["size"] == bytes.len(),
                    "{path}: size {} but {} bytes of content",
                    f["size"],
                    bytes.len()
                );
                ensure!(
                    f.get("truncated").is_none_or(|t| t == false),
                    "{path}: content and truncated"
                );
                let lossy = String::from_utf8_lossy(&bytes);
                for marker in HOST_MARKERS {
                    ensure!(
                        !lossy.contains(marker),
                        "{path} came back with {marker:?} in it: the collection read outside the run"
                    );
                }
                Some(bytes)
            }
            None => {
                ensure!(
                    f["truncated"] == true,
                    "{path}: neither content nor truncated: {f}"
                );
                None
            }
        };
        out.push((path.to_string(), content));
    }
    Ok(out)
}

fn planted(p: Planted) -> Check {
    and_then(expect_contained(), move |v| {
        let files = returned_files(v)?;
        for (path, content) in p.own {
            let got = files.iter().find(|(f, _)| f == path);
            ensure!(
                got.is_some_and(|(_, c)| c.as_deref() == Some(content.as_bytes())),
                "the run's own {path} did not come back as written ({content:?}): {:?}",
                got.map(|(_, c)| c.as_ref().map(|c| String::from_utf8_lossy(c).into_owned()))
            );
        }
        for (path, _) in &files {
            ensure!(
                p.own.iter().any(|(o, _)| o == path) || allowed_by(p.may, path),
                "returned {path}, which is not one of the run's own regular files"
            );
        }
        let skipped = skipped_files(v)?;
        if p.note {
            ensure!(
                !skipped.is_empty() || text(v, "stderr").lines().any(|l| l.starts_with("nsbox:")),
                "neither `skipped_files` nor an `nsbox: ...` line in stderr says what was skipped"
            );
        }
        ensure!(
            !text(v, "stderr").contains("only regular files"),
            "stderr names skipped files (they belong in `skipped_files`): {}",
            common::shorten(text(v, "stderr"), 300)
        );
        let t = v["execution_time"].as_f64().unwrap_or(f64::MAX);
        ensure!(
            t < p.within_s,
            "took {t} s; expected under {} s",
            p.within_s
        );
        Ok(())
    })
}

/// The `skipped_files` of a response (none when absent): each a normal path and one of
/// the documented reasons.
fn skipped_files(v: &Value) -> Result<Vec<(String, String)>, String> {
    let Some(skipped) = v.get("skipped_files") else {
        return Ok(Vec::new());
    };
    let entries = skipped
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| format!("`skipped_files` is not a non-empty array: {skipped}"))?;
    let mut out = Vec::new();
    for s in entries {
        let (path, reason) = (text(s, "path"), text(s, "reason"));
        ensure!(normal_path(path), "skipped a file with a bad path: {s}");
        ensure!(
            ["symlink", "not_regular_file", "too_deep", "entry_limit"].contains(&reason),
            "skipped a file for an unknown reason: {s}"
        );
        out.push((path.to_string(), reason.to_string()));
    }
    Ok(out)
}

/// A case whose request has `"files": []` (or the given input files).
fn with_files(mut case: Case, files: Value) -> Case {
    for r in &mut case.runs {
        r.files = Some(files.clone());
    }
    case
}

const OWN: &[(&str, &str)] = &[("own.txt", "mine")];

#[test]
fn files_planted_in_the_working_directory() {
    run_family("files_planted_in_the_working_directory", 10, |t| {
        let server_pid = t.server.pid() as i32;
        let rss_at_start = common::rss_kib(server_pid);
        let memory_fine = move |v: &Value| -> Result<(), String> {
            let now = common::rss_kib(server_pid);
            ensure!(
                now < rss_at_start + 100 * 1024,
                "the server's VmRSS went from {rss_at_start} KiB to {now} KiB"
            );
            let _ = v;
            Ok(())
        };
        vec![
            with_files(
                Case::single(
                    "symlinks_to_host_files_and_root",
                    r#"
import os
os.symlink('/etc/passwd', 'passwd')
os.symlink('/etc/shadow', 'shadow')
os.symlink('/proc/self/environ', 'environ')
os.symlink('/proc/1/environ', 'init-environ')
os.symlink('/', 'rootlink')
os.symlink('/etc', 'etc')
os.symlink('/proc/self/root', 'procroot')
os.symlink('/nonexistent', 'dangling')
os.makedirs('sub')
os.symlink('/etc/passwd', 'sub/passwd')
os.symlink('../own.txt', 'sub/own-link')
open('own.txt', 'w').write('mine')
print('contained')
"#,
                    DEFAULT_TIMEOUT,
                    planted(Planted {
                        own: OWN,
                        may: &[],
                        note: true,
                        within_s: 10.0,
                    }),
                ),
                json!([]),
            ),
            with_files(
                Case::single(
                    "symlink_replacing_an_input_file",
                    r#"
import os
assert open('in.txt').read() == 'input'
os.remove('in.txt')
os.symlink('/etc/passwd', 'in.txt')
os.remove('data/in2.txt')
os.symlink('/proc/self/environ', 'data/in2.txt')
open('own.txt', 'w').write('mine')
print('contained')
"#,
                    DEFAULT_TIMEOUT,
                    planted(Planted {
                        own: OWN,
                        may: &[],
                        note: true,
                        within_s: 10.0,
                    }),
                ),
                json!([
                    {"path": "in.txt", "content": "input"},
                    {"path": "data/in2.txt", "content": "input 2"},
                ]),
            ),
            with_files(
                Case::single(
                    "hardlinks_to_files_elsewhere",
                    r#"
import os, errno
open('/tmp/outside.txt', 'w').write('outside')
os.link('/tmp/outside.txt', 'hard.txt')
for src in ['/etc/passwd', '/etc/hostname', '/usr/bin/python3', '/proc/self/environ']:
    try:
        os.link(src, 'hard-' + os.path.basename(src))
    except OSError as e:
        assert e.errno in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.ENOENT), (src, e)
    else:
        raise AssertionError('hard-linked ' + src)
# Whatever else lives in this run's /tmp (the harness's own files, if any).
for name in os.listdir('/tmp'):
    p = os.path.join('/tmp', name)
    if name not in ('work', 'outside.txt') and os.path.isfile(p) and not os.path.islink(p):
        try:
            os.link(p, 'tmp-' + name)
        except OSError:
            pass
open('own.txt', 'w').write('mine')
print('contained')
"#,
                    DEFAULT_TIMEOUT,
                    and_then(
                        planted(Planted {
                            own: OWN,
                            may: &["hard.txt", "tmp-*"],
                            note: false,
                            within_s: 10.0,
                        }),
                        |v| {
                            // A hard link in the run's own tmpfs is the run's own data.
                            let files = returned_files(v)?;
                            if let Some((_, Some(c))) = files.iter().find(|(p, _)| p == "hard.txt")
                            {
                                ensure!(c == b"outside", "hard.txt came back as {c:?}");
                            }
                            Ok(())
                        },
                    ),
                ),
                json!([]),
            ),
            with_files(
                Case::single(
                    "fifos_do_not_block",
                    r#"
import os
os.mkfifo('fifo')
os.makedirs('sub')
os.mkfifo('sub/fifo.csv')
assert open('in.txt').read() == 'input'
os.remove('in.txt')
os.mkfifo('in.txt')
open('own.txt', 'w').write('mine')
print('contained')
"#,
                    DEFAULT_TIMEOUT,
                    planted(Planted {
                        own: OWN,
                        may: &[],
                        note: true,
                        within_s: 10.0,
                    }),
                ),
                json!([{"path": "in.txt", "content": "input"}]),
            ),
            with_files(
                Case::single(
                    "unix_socket_and_device_nodes",
                    r#"
import os, stat, socket
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind('sock')
    s.listen(1)
except OSError:
    # The guard rails may refuse sockets: a socket inode made directly is the same to the
    # collection.
    os.mknod('sock', stat.S_IFSOCK | 0o600)
assert stat.S_ISSOCK(os.lstat('sock').st_mode)
for name, dev in (('null', os.makedev(1, 3)), ('sda', os.makedev(8, 0))):
    try:
        os.mknod(name, stat.S_IFCHR | 0o600, dev)
    except OSError:
        pass
open('own.txt', 'w').write('mine')
print('contained')
"#,
                    DEFAULT_TIMEOUT,
                    planted(Planted {
                        own: OWN,
                        may: &[],
                        note: true,
                        within_s: 10.0,
                    }),
                ),
                json!([]),
            ),
            with_files(
                Case::single(
                    "directory_loops_and_a_deep_chain",
                    r#"
import os
os.symlink('.', 'loop')
os.symlink('..', 'up')
os.makedirs('a/b')
os.symlink('../..', 'a/b/back')
os.symlink('/tmp/work', 'a/self')
os.mkdir('deep')
os.chdir('deep')
for _ in range(1500):
    os.mkdir('d')
    os.chdir('d')
open('bottom.txt', 'w').write('bottom')
os.chdir('/tmp/work')
open('own.txt', 'w').write('mine')
print('contained')
"#,
                    DEFAULT_TIMEOUT,
                    planted(Planted {
                        own: OWN,
                        may: &["deep/*"],
                        note: true,
                        within_s: 15.0,
                    }),
                ),
                json!([]),
            ),
            with_files(
                Case::single(
                    "sparse_giant_files",
                    r#"
import os, errno
size = 100 << 30
with open('sparse.bin', 'wb') as f:
    try:
        f.truncate(size)
    except OSError as e:
        # RLIMIT_FSIZE stops it first: then as large as the limit lets it be.
        assert e.errno == errno.EFBIG, e
        size = 64 << 20
        f.truncate(size)
assert os.path.getsize('sparse.bin') == size
for i in range(8):
    with open('sparse%d.bin' % i, 'wb') as f:
        f.truncate(size)
open('own.txt', 'w').write('mine')
print('contained')
"#,
                    DEFAULT_TIMEOUT,
                    and_then(
                        planted(Planted {
                            own: OWN,
                            may: &["sparse*"],
                            note: true,
                            within_s: 10.0,
                        }),
                        move |v| {
                            let files = returned_files(v)?;
                            let sparse: Vec<_> = files
                                .iter()
                                .filter(|(p, _)| p.starts_with("sparse"))
                                .collect();
                            ensure!(
                                sparse.len() == 9,
                                "{} sparse files listed, not 9",
                                sparse.len()
                            );
                            for (p, c) in sparse {
                                ensure!(c.is_none(), "{p} came back with content");
                            }
                            memory_fine(v)
                        },
                    ),
                ),
                json!([]),
            ),
            with_files(
                Case::single(
                    "ten_thousand_small_files",
                    r#"
import os
os.mkdir('many')
for i in range(10000):
    with open('many/f%05d' % i, 'w') as f:
        f.write(str(i))
print('contained')
"#,
                    DEFAULT_TIMEOUT,
                    and_then(
                        planted(Planted {
                            own: &[],
                            may: &["many/*"],
                            note: true,
                            within_s: 20.0,
                        }),
                        move |v| {
                            let files = returned_files(v)?;
                            let with_content = files.iter().filter(|(_, c)| c.is_some()).count();
                            ensure!(
                                (1..=32).contains(&with_content),
                                "{with_content} files came back with content; the count cap is 32"
                            );
                            for (p, c) in &files {
                                if let Some(c) = c {
                                    let n: usize =
                                        p["many/f".len()..].parse().unwrap_or(usize::MAX);
                                    ensure!(
                                        *c == n.to_string().into_bytes(),
                                        "{p} came back as {c:?}"
                                    );
                                }
                            }
                            memory_fine(v)
                        },
                    ),
                ),
                json!([]),
            ),
            with_files(
                Case::single(
                    "odd_file_names",
                    r#"
import os
for name in [b'bad\xffname.txt', b'new\nline.txt', b'tab\tname', b'esc\x1b[31m', b'back\\slash', b'...', b' ', b'-', b'x' * 255]:
    with open(name, 'wb') as f:
        f.write(b'odd')
os.makedirs(b'dir\xfe')
with open(b'dir\xfe/inner.txt', 'wb') as f:
    f.write(b'odd')
open('own.txt', 'w').write('mine')
print('contained')
"#,
                    DEFAULT_TIMEOUT,
                    planted(Planted {
                        own: OWN,
                        may: &["*"],
                        note: false,
                        within_s: 10.0,
                    }),
                ),
                json!([]),
            ),
            with_files(
                Case::single(
                    "forged_file_frames_on_the_harness_pipes",
                    r#"
import os, struct, json, stat
# Frames as the harness sends files today (kind, length, header length, JSON header,
# content); if the framing changes these are garbage, which must be as harmless.
def frame(kind, payload):
    return kind + struct.pack('<I', len(payload)) + payload
def file_frame(path, content, **extra):
    head = dict({'path': path, 'size': len(content), 'truncated': False}, **extra)
    head = json.dumps(head).encode()
    return frame(b'F', struct.pack('<I', len(head)) + head + content)
forged = b''.join([
    file_frame('../escape.txt', b'x'),
    file_frame('/etc/escape.txt', b'x'),
    file_frame('a/../../escape.txt', b'x'),
    file_frame('', b'x'),
    file_frame('nul\x00escape.txt', b'x'),
    file_frame('big-claim.txt', b'x', size=1 << 40),
    file_frame('truncated-claim.txt', b'y' * 100, truncated=True),
    frame(b'F', struct.pack('<I', 1 << 30)),
])
open('own.txt', 'w').write('mine')
for fd in range(3, 256):
    try:
        st = os.fstat(fd)
    except OSError:
        continue
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        try:
            os.set_blocking(fd, False)
            os.write(fd, forged)
        except OSError:
            pass
print('contained')
"#,
                    DEFAULT_TIMEOUT,
                    check(|v| {
                        // The run's answer may be anything sane; no forged path may come out.
                        let files = returned_files(v)?;
                        for (p, c) in &files {
                            ensure!(!p.contains("escape"), "returned forged path {p}");
                            if p == "big-claim.txt" {
                                ensure!(c.as_deref().is_none_or(|c| c.len() < 1024), "{p}");
                            }
                        }
                        Ok(())
                    }),
                ),
                json!([]),
            ),
            with_files(
                Case::single(
                    "links_swapped_while_files_are_collected",
                    r#"
import os, time
open('own.txt', 'w').write('mine')
os.makedirs('realdir')
open('realdir/f.txt', 'w').write('real')
open('race.txt', 'w').write('own')
if os.fork() == 0:
    # Goes on after the code is over, while the output files are collected.
    end = time.time() + 4
    while time.time() < end:
        try:
            os.rename('realdir', 'tmpdir')
            os.symlink('/etc', 'realdir')
            os.unlink('realdir')
            os.rename('tmpdir', 'realdir')
        except OSError:
            pass
        try:
            os.symlink('/etc/passwd', 'race.lnk')
            os.replace('race.lnk', 'race.txt')
            open('race.new', 'w').write('own')
            os.replace('race.new', 'race.txt')
        except OSError:
            pass
    os._exit(0)
print('contained')
"#,
                    DEFAULT_TIMEOUT,
                    and_then(
                        planted(Planted {
                            own: OWN,
                            may: &[
                                "realdir/f.txt",
                                "race.txt",
                                "race.new",
                                "race.lnk",
                                "tmpdir/f.txt",
                            ],
                            note: false,
                            within_s: 10.0,
                        }),
                        |v| {
                            for (p, c) in returned_files(v)? {
                                if let Some(c) = c {
                                    // Caught mid-write, a file may be any prefix of what
                                    // the run writes into it.
                                    ensure!(
                                        [&b"own"[..], b"real", b"mine"]
                                            .iter()
                                            .any(|w| w.starts_with(&c)),
                                        "{p} came back as {:?}",
                                        String::from_utf8_lossy(&c)
                                    );
                                }
                            }
                            Ok(())
                        },
                    ),
                ),
                json!([]),
            ),
        ]
    });
}

/// The session file endpoints on a session whose working directory has links, a FIFO and
/// a socket in it: never the target's content, never a hang. Both modes; a server that
/// offers no sessions in cold mode must say so with a clean error.
#[test]
fn session_file_endpoints_follow_no_link() {
    let mut failures = Vec::new();
    for (m, mode) in MODES.iter().enumerate() {
        let base = uid_base(11, m);
        let server = Server::start_in_uid_range(base, mode, &[(SECRET_VAR, SECRET)]);
        let label = mode.join(" ");
        match session_links(&server, base) {
            Ok(()) => eprintln!("[{label}] session_file_endpoints_follow_no_link: contained"),
            Err(e) => failures.push(format!("[{label}] {e}")),
        }
        if let Err(e) = healthy(&server) {
            failures.push(format!("[{label}] server unhealthy afterwards: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn session_links(server: &Server, base: u32) -> Result<(), String> {
    let before = run_processes_of_uid(base);
    let client = server.client();
    let url = |p: &str| format!("{}{p}", server.base);
    let created = client
        .post(url("/v1/sessions"))
        .json(&json!({}))
        .send()
        .map_err(|e| format!("create: {e}"))?;
    let status = created.status().as_u16();
    let body: Value = created.json().map_err(|e| format!("create: {e}"))?;
    if status != 201 {
        if (400..600).contains(&status) && body["error"]["message"].is_string() {
            eprintln!("no session on this server: {status} {body}");
            return Ok(());
        }
        return Err(format!("create answered {status}: {body}"));
    }
    let sid = text(&body, "id").to_string();
    let plant = json!({"lang": "python", "timeout": 20, "session_id": sid, "code": r#"
import os, socket, stat
os.symlink('/etc/passwd', 'passwd')
os.symlink('/proc/self/environ', 'environ')
os.symlink('/', 'rootlink')
os.symlink('/etc', 'etclink')
os.symlink('.', 'loop')
os.mkfifo('fifo')
os.mknod('sock', stat.S_IFSOCK | 0o600)
open('own.txt', 'w').write('mine')
print('planted')
"#});
    let r: Value = client
        .post(url("/v1/tools/code"))
        .json(&plant)
        .send()
        .and_then(|r| r.json())
        .map_err(|e| format!("planting call: {e}"))?;
    ensure!(
        r["stdout"] == "planted\n",
        "planting call: {}",
        abbreviated(&r)
    );
    let files = returned_files(&r)?;
    ensure!(
        files.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>() == ["own.txt"],
        "the planting call returned {:?}",
        files.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );

    let skipped = skipped_files(&r)?;
    let mut names: Vec<&str> = skipped.iter().map(|(p, _)| p.as_str()).collect();
    names.sort();
    ensure!(
        names == ["environ", "etclink", "fifo", "loop", "passwd", "rootlink", "sock"],
        "the planting call skipped {skipped:?}"
    );
    ensure!(
        !text(&r, "stderr").contains("nsbox:"),
        "the planting call's stderr: {}",
        text(&r, "stderr")
    );

    // The listing: regular files only, nothing reached through a link.
    let list: Value = client
        .get(url(&format!("/v1/sessions/{sid}/files")))
        .send()
        .and_then(|r| r.json())
        .map_err(|e| format!("listing: {e}"))?;
    let listed: Vec<&str> = list["files"]
        .as_array()
        .map(|a| a.iter().map(|f| text(f, "path")).collect())
        .unwrap_or_default();
    ensure!(listed == ["own.txt"], "the listing: {list}");

    for path in [
        "passwd",
        "environ",
        "rootlink/etc/passwd",
        "rootlink",
        "etclink/passwd",
        "loop/own.txt",
        "loop/loop/loop/passwd",
        "fifo",
        "sock",
    ] {
        let started = Instant::now();
        let resp = client
            .get(url(&format!("/v1/sessions/{sid}/files/{path}")))
            .send()
            .map_err(|e| format!("GET {path}: {e}"))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().map_err(|e| format!("GET {path}: {e}"))?;
        let took = started.elapsed();
        let lossy = String::from_utf8_lossy(&bytes);
        ensure!(
            status == 404 || status == 400,
            "GET files/{path} answered {status}: {}",
            common::shorten(&lossy, 300)
        );
        for marker in HOST_MARKERS {
            ensure!(!lossy.contains(marker), "GET files/{path} gave {marker:?}");
        }
        ensure!(
            took < Duration::from_secs(5),
            "GET files/{path} took {took:?}"
        );
    }
    // An upload through a directory link, or onto a FIFO, is refused at once, not written
    // where the link points (`rootlink/tmp` is writable in the sandbox) nor waited on.
    for path in [
        "etclink/planted.txt",
        "rootlink/tmp/outside.txt",
        "loop/own.txt",
        "fifo",
        "sock",
    ] {
        let started = Instant::now();
        let put = client
            .put(url(&format!("/v1/sessions/{sid}/files/{path}")))
            .body("x")
            .send()
            .map_err(|e| format!("PUT {path}: {e}"))?;
        let put_status = put.status().as_u16();
        ensure!(
            put_status == 400 || put_status == 404,
            "PUT {path} answered {put_status}"
        );
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "PUT {path} took {:?}",
            started.elapsed()
        );
    }
    let check = json!({"lang": "python", "timeout": 20, "session_id": sid,
        "code": "import os\nprint(os.path.exists('/tmp/outside.txt'))"});
    let r: Value = client
        .post(url("/v1/tools/code"))
        .json(&check)
        .send()
        .and_then(|r| r.json())
        .map_err(|e| format!("checking call: {e}"))?;
    ensure!(
        r["stdout"] == "False\n" && r["session"]["state"] == "active",
        "after the uploads: {}",
        abbreviated(&r)
    );
    // The session still works, and its own file is there.
    let r: Value = client
        .get(url(&format!("/v1/sessions/{sid}/files/own.txt")))
        .send()
        .and_then(|r| r.bytes())
        .map(|b| json!(String::from_utf8_lossy(&b)))
        .map_err(|e| format!("GET own.txt: {e}"))?;
    ensure!(r == "mine", "own.txt: {r}");
    let d = client
        .delete(url(&format!("/v1/sessions/{sid}")))
        .send()
        .map_err(|e| format!("delete: {e}"))?;
    ensure!(d.status().as_u16() == 204, "delete answered {}", d.status());
    let left = survivors(base, &before);
    ensure!(
        left.is_empty(),
        "the session's processes survived its deletion: {left:?}"
    );
    Ok(())
}
