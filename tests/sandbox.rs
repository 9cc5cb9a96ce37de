//! The real server over the real sandbox: the spec's basic behaviours and the isolation every run must have.

mod common;

use std::time::{Duration, Instant};

use common::{processes_of_uid, run_processes_of_uid, Server};
use serde_json::json;

/// These tests probe the kernel isolation itself, which must hold with the scanner off.
const SCANNER_OFF: &[&str] = &["--scanner", "off"];

/// Runs `code`, which must print "ok" and nothing else if the property holds.
fn assert_holds(server: &Server, code: &str) {
    let r = server.run(code);
    assert_eq!(r["stdout"], "ok\n", "code:\n{code}\nresponse: {r:#}");
    assert_eq!(r["exit_code"], 0, "{r:#}");
}

#[test]
fn spec_basic_example() {
    let server = Server::start(SCANNER_OFF);
    let r = server.run_with(json!({"code": "print(2**2)", "lang": "python", "timeout": 30}));
    assert_eq!(r["success"], true);
    assert_eq!(r["stdout"], "4\n");
    assert_eq!(r["stderr"], "");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["security_checked"], true);
    assert_eq!(r["violations"], json!([]));
    assert_eq!(r["plots"], json!([]));
    assert!(r["execution_time"].as_f64().unwrap() > 0.0);
}

#[test]
fn runtime_error_gives_the_user_traceback_only() {
    let server = Server::start(SCANNER_OFF);
    let r = server.run("result = 10 / 0");
    assert_eq!(r["success"], true);
    assert_eq!(r["exit_code"], 1);
    assert_eq!(
        r["stderr"],
        "Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\nZeroDivisionError: division by zero\n"
    );
}

#[test]
fn syntax_error_is_reported_by_python() {
    let server = Server::start(SCANNER_OFF);
    let r = server.run("print('Hello world'");
    assert_eq!(r["success"], true);
    assert_eq!(r["exit_code"], 1);
    let stderr = r["stderr"].as_str().unwrap();
    assert!(
        stderr.starts_with("  File \"<string>\", line 1\n    print('Hello world'\n"),
        "{stderr}"
    );
    assert!(stderr.contains("SyntaxError: "), "{stderr}");
    assert!(!stderr.contains("Traceback"), "{stderr}");
}

#[test]
fn sys_exit_status_and_stderr_pass_through() {
    let server = Server::start(SCANNER_OFF);
    let r = server.run("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)");
    assert_eq!(
        (r["success"].clone(), r["exit_code"].clone()),
        (json!(true), json!(3))
    );
    assert_eq!(r["stdout"], "out\n");
    assert_eq!(r["stderr"], "err\n");
}

#[test]
fn timeout_gives_the_spec_response_in_about_the_timeout() {
    let server = Server::start(SCANNER_OFF);
    let started = Instant::now();
    let r = server.run_with(json!({"code": "import time\nprint('before', flush=True)\ntime.sleep(100)", "lang": "python", "timeout": 2}));
    let elapsed = started.elapsed();
    assert_eq!(r["success"], false);
    assert_eq!(r["exit_code"], -1);
    assert_eq!(r["stderr"], "Execution failed: Execution timeout exceeded");
    // Output written before the timeout is kept.
    assert_eq!(r["stdout"], "before\n");
    let t = r["execution_time"].as_f64().unwrap();
    assert!((2.0..4.0).contains(&t), "execution_time {t}");
    assert!(elapsed < Duration::from_secs(6), "took {elapsed:?}");
}

#[test]
fn runs_as_nobody_with_no_capabilities() {
    let server = Server::start(SCANNER_OFF);
    assert_holds(
        &server,
        r#"
import os
assert os.getuid() == 65534 and os.geteuid() == 65534, os.getuid()
assert os.getgid() == 65534 and os.getgroups() in ([], [65534]), (os.getgid(), os.getgroups())
status = open('/proc/self/status').read()
caps = {l.split(':')[0]: int(l.split(':')[1], 16) for l in status.splitlines() if l.startswith('Cap')}
assert all(v == 0 for v in caps.values()), caps
assert 'NoNewPrivs:\t1' in status
assert 'Seccomp:\t2' in status
print('ok')
"#,
    );
}

#[test]
fn root_filesystem_is_read_only_and_tmp_is_writable() {
    let server = Server::start(SCANNER_OFF);
    assert_holds(
        &server,
        r#"
import errno
for path in ['/usr/nsbox-probe', '/etc/passwd', '/probe', '/usr/bin/python3', '/dev/probe', '/proc/probe']:
    try:
        open(path, 'w').write('x')
    except OSError as e:
        assert e.errno in (errno.EROFS, errno.EACCES, errno.ENOENT), (path, e)
    else:
        raise AssertionError('wrote ' + path)
with open('/tmp/probe', 'w') as f:
    f.write('x' * 1000)
assert open('/tmp/probe').read() == 'x' * 1000
import os
assert os.getcwd() == '/tmp/work', os.getcwd()
print('ok')
"#,
    );
}

#[test]
fn only_loopback_exists_and_the_server_is_unreachable() {
    let server = Server::start(SCANNER_OFF);
    let code = format!(
        r#"
import socket, errno
ifaces = [l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]]
assert ifaces == ['lo'], ifaces
s = socket.socket()
s.settimeout(2)
try:
    s.connect(('127.0.0.1', {port}))
except OSError as e:
    assert e.errno == errno.ECONNREFUSED, e
else:
    raise AssertionError('reached the server')
try:
    socket.create_connection(('1.1.1.1', 53), timeout=2)
except OSError:
    pass
else:
    raise AssertionError('reached the internet')
print('ok')
"#,
        port = server.port
    );
    assert_holds(&server, &code);
}

#[test]
fn host_files_are_invisible() {
    let server = Server::start(SCANNER_OFF);
    let marker = std::env::temp_dir().join(format!("nsbox-marker-{}", std::process::id()));
    std::fs::write(&marker, "secret").unwrap();
    let binary = env!("CARGO_BIN_EXE_nsbox");
    let rootfs = common::rootfs();
    let code = format!(
        r#"
import os
for p in [{marker:?}, {binary:?}, {rootfs:?}, '/work', '/var/cache/nsbox', '/sys/fs/cgroup']:
    assert not os.path.exists(p), p
assert sorted(os.listdir('/dev')) == ['fd', 'full', 'null', 'random', 'stderr', 'stdin', 'stdout', 'urandom', 'zero'], os.listdir('/dev')
mounts = open('/proc/self/mountinfo').read()
assert {binary:?} not in mounts and '/work' not in mounts, mounts
print('ok')
"#,
        marker = marker.display().to_string(),
        rootfs = rootfs.display().to_string(),
    );
    let r = server.run(&code);
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(r["stdout"], "ok\n", "{r:#}");
}

#[test]
fn own_pid_namespace() {
    let server = Server::start(SCANNER_OFF);
    assert_holds(
        &server,
        r#"
import os
assert os.getpid() < 10, os.getpid()
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
assert len(pids) <= 3, pids
print('ok')
"#,
    );
}

#[test]
fn privileged_syscalls_fail_with_eperm() {
    let server = Server::start(SCANNER_OFF);
    assert_holds(
        &server,
        r#"
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
def eperm(name, *args):
    ctypes.set_errno(0)
    rc = getattr(libc, name)(*args)
    assert rc == -1 and ctypes.get_errno() == errno.EPERM, (name, rc, ctypes.get_errno())
eperm('ptrace', 16, 1, None, None)           # PTRACE_ATTACH to init
eperm('mount', b'none', b'/tmp', b'tmpfs', 0, None)
eperm('unshare', 0x10000000)                  # CLONE_NEWUSER
eperm('unshare', 0x00020000)                  # CLONE_NEWNS
eperm('chroot', b'/tmp')
eperm('sethostname', b'x', 1)
print('ok')
"#,
    );
}

#[test]
fn setsid_double_fork_does_not_outlive_the_timeout() {
    // A uid range of its own, so processes of other tests' runs are not counted.
    let uid_base = 1_200_000_000u32;
    let server = Server::start(&["--scanner", "off", "--uid-base", &uid_base.to_string()]);
    let r = server.run_with(json!({
        "code": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(1000)\n    os._exit(0)\ntime.sleep(1000)",
        "lang": "python",
        "timeout": 1.5,
    }));
    assert_eq!(r["stderr"], "Execution failed: Execution timeout exceeded");
    let nobody = uid_base + 65534;
    assert_eq!(
        run_processes_of_uid(nobody),
        Vec::<i32>::new(),
        "run processes survived the timeout"
    );
}

#[test]
fn a_run_leaves_nothing_behind() {
    let uid_base = 1_300_000_000u32;
    let server = Server::start(&["--scanner", "off", "--uid-base", &uid_base.to_string()]);
    let server_pid = server.pid();
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    for _ in 0..3 {
        let r = server.run(
            "import os\nopen('/tmp/x','w').write('x')\nprint(len(os.listdir('/proc/self/fd')))",
        );
        // stdin, stdout, stderr, the plots pipe and the listing's own descriptor.
        assert!(
            r["stdout"].as_str().unwrap().trim().parse::<u32>().unwrap() <= 5,
            "{r:#}"
        );
    }
    // The spawner is started by a keeper thread, so look at every thread's children.
    let mut children: Vec<u32> = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{server_pid}/task"))
        .unwrap()
        .flatten()
    {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(list.split_whitespace().map(|p| p.parse::<u32>().unwrap()));
    }
    assert_eq!(
        children.len(),
        1,
        "only the spawner is a child of the server: {children:?}"
    );
    let status = server.stop();
    assert!(status.success(), "server exit: {status}");
    std::thread::sleep(Duration::from_millis(200));
    for pid in children {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "spawner {pid} survived the server"
        );
    }
    // The kernel tears PID namespaces down asynchronously: give it a moment.
    for _ in 0..50 {
        if processes_of_uid(uid_base + 65534).is_empty() && processes_of_uid(uid_base).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        processes_of_uid(uid_base + 65534),
        Vec::<i32>::new(),
        "run processes left"
    );
    assert_eq!(
        processes_of_uid(uid_base),
        Vec::<i32>::new(),
        "template processes left"
    );
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    assert_eq!(mounts_before, mounts_after, "host mount table changed");
    // The server removed its own cgroup directories.
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctl, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        if ctl == "memory" || ctl == "pids" {
            let dir = format!("/sys/fs/cgroup/{ctl}{path}/nsbox/srv-{server_pid}");
            assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
        }
    }
}

#[test]
fn concurrent_runs_do_not_see_each_other() {
    let server = Server::start(SCANNER_OFF);
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            server.run(
                "import time\nopen('/tmp/secret','w').write('s3cret')\ntime.sleep(2)\nprint('ok')",
            )
        });
        std::thread::sleep(Duration::from_millis(700));
        let reader = server.run(
            "import os\nassert not os.path.exists('/tmp/secret')\nassert len([p for p in os.listdir('/proc') if p.isdigit()]) <= 3\nprint('ok')",
        );
        assert_eq!(reader["stdout"], "ok\n", "{reader:#}");
        assert_eq!(writer.join().unwrap()["stdout"], "ok\n");
    });
}

/// One run after another through the same zygote (or the same cold path) with nothing
/// else running: the second sees nothing the first left, neither files in `/tmp`, nor
/// processes, nor interpreter state, nor the first run's memory or process count held
/// against its own limits.
fn the_next_run_sees_nothing_of_the_last(mode: &str, pool_size: &str) {
    let server = Server::start(&[
        "--scanner",
        "off",
        "--mode",
        mode,
        "--pool-size",
        pool_size,
        "--max-running",
        "1",
        "--memory-mib",
        "256",
        "--max-processes",
        "32",
    ]);
    let dirty = r#"
import json, os, subprocess, sys, time
open('/tmp/mark', 'w').write('x')
os.makedirs('/tmp/work/left', exist_ok=True)
json.nsbox_mark = 1
sys.modules['nsbox_mark'] = json
os.environ['NSBOX_MARK'] = '1'
subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
held = bytearray(150 << 20)
for i in range(0, len(held), 4096):
    held[i] = 1
children = []
try:
    while True:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
except BlockingIOError:
    pass
print('dirty', len(children) > 10)
"#;
    let clean = r#"
import json, os, sys
assert not os.path.exists('/tmp/mark'), 'the last run left /tmp/mark'
assert os.listdir('/tmp/work') == [], os.listdir('/tmp/work')
assert not hasattr(json, 'nsbox_mark') and 'nsbox_mark' not in sys.modules, 'interpreter state'
assert 'NSBOX_MARK' not in os.environ, 'environment'
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
assert pids == [1, os.getpid()], pids
# The last run's 150 MiB and its process count are not held against this one.
held = bytearray(150 << 20)
for i in range(0, len(held), 4096):
    held[i] = 1
children = []
for _ in range(20):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
print('ok')
"#;
    for round in 0..3 {
        let r = server.run(dirty);
        assert_eq!(r["stdout"], "dirty True\n", "[{mode}] round {round}: {r:#}");
        let r = server.run(clean);
        assert_eq!(r["stdout"], "ok\n", "[{mode}] round {round}: {r:#}");
        assert_eq!(r["stderr"], "", "[{mode}] round {round}: {r:#}");
        assert_eq!(r["exit_code"], 0, "[{mode}] round {round}: {r:#}");
    }
}

/// Each run in a ready sandbox of the pool (the default).
#[test]
fn the_next_warm_run_sees_nothing_of_the_last() {
    the_next_run_sees_nothing_of_the_last("warm", "2");
}

/// Each run's sandbox built at its request.
#[test]
fn the_next_warm_run_without_a_pool_sees_nothing_of_the_last() {
    the_next_run_sees_nothing_of_the_last("warm", "0");
}

#[test]
fn the_next_cold_run_sees_nothing_of_the_last() {
    the_next_run_sees_nothing_of_the_last("cold", "0");
}
