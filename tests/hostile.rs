//! Frames and answers from the sandbox are hostile: the harness shares its interpreter with the code, so everything it sends the supervisor (plot and file frames, session answers) is the code's to forge. These red-team cases, each seen to work against nsbox before it was fixed, forge them through the real server and sandbox and check that the host pays a bounded price and that ending a session ends its sandbox.
//!
//! The last case is the HTTP edge's: the output cap counts what is sent, not what was written.
//!
//! Each test starts its own server on a uid range of its own and measures the host (the
//! supervisors' memory, processes, cgroups), so they run one at a time ([`exclusive`]).

mod common;

use std::io::{Read, Write};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{metric, run_cgroups, run_processes_of_uid, wait_until, Server, StopOnDrop, NOBODY};
use serde_json::{json, Value};

/// One test at a time: they measure the host.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A uid range per test, apart from the other test files' ranges.
fn uid_base(slot: u32) -> u32 {
    2_900_000_000 + slot * 1_000_000
}

/// A server as an attacker meets it: the scanner off (code can always get past a scanner;
/// the sandbox is the wall), on a uid range of its own.
struct Target {
    _one: MutexGuard<'static, ()>,
    server: Server,
    base: u32,
    /// The processes on the range once the server is ready: its warm templates.
    templates: Vec<i32>,
}

impl Target {
    /// Processes on the server's uid range that are not its templates: runs and sessions.
    fn sandboxes(&self) -> Vec<i32> {
        let mut pids = run_processes_of_uid(self.base);
        pids.extend(run_processes_of_uid(self.base + NOBODY));
        // A zombie is gone but for its pid: a cold init waits there for its parent, the
        // supervisor, to reap it.
        pids.retain(|p| {
            !self.templates.contains(p)
                && common::proc_status_field(*p, "State:").is_some_and(|s| !s.starts_with('Z'))
        });
        pids
    }
}

fn start(slot: u32, extra: &[&str]) -> Target {
    let one = exclusive();
    let base = uid_base(slot);
    let mut args = vec!["--scanner", "off"];
    args.extend(extra);
    let server = Server::start_in_uid_range(base, &args, &[]);
    let mut templates = run_processes_of_uid(base);
    templates.extend(run_processes_of_uid(base + NOBODY));
    Target {
        _one: one,
        server,
        base,
        templates,
    }
}

fn log_tail(server: &Server) -> String {
    let log = server.log.lock().unwrap();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn create_session(server: &Server) -> String {
    let r = server
        .client()
        .post(format!("{}/v1/sessions", server.base))
        .json(&json!({}))
        .send()
        .expect("create a session");
    assert_eq!(r.status().as_u16(), 201, "{}", log_tail(server));
    let body: Value = r.json().unwrap();
    body["id"].as_str().unwrap().to_string()
}

fn call(server: &Server, sid: &str, code: &str) -> Value {
    server.run_with(json!({"lang": "python", "code": code, "session_id": sid, "timeout": 30}))
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
                .flat_map(|l| {
                    l.split_whitespace()
                        .filter_map(|c| c.parse().ok())
                        .collect::<Vec<i32>>()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn user_ns(pid: i32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/user")).ok()
}

/// The server's supervisors of runs and sessions: the spawner's children in the spawner's
/// own user namespace (its template inits each have one of their own), but for the pooled
/// ones no request has claimed.
fn supervisors(server: &Server) -> Vec<i32> {
    children(server.pid() as i32)
        .into_iter()
        .flat_map(|spawner| {
            let ns = user_ns(spawner);
            children(spawner)
                .into_iter()
                .filter(move |c| user_ns(*c) == ns && !common::supervisor_waits(*c))
        })
        .collect()
}

fn kib_field(pid: i32, key: &str) -> u64 {
    common::proc_status_field(pid, key)
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Samples the largest peak memory (VmHWM) any supervisor of `server` reaches while `f`
/// runs, in MiB.
fn peak_supervisor_mib<T>(server: &Server, f: impl FnOnce() -> T) -> (T, u64) {
    use std::sync::atomic::Ordering;
    // Stops the sampler however `f` ends: a failing request must fail the test, not leave
    // the scope waiting for the sampler.
    let guard = StopOnDrop::default();
    let stop = guard.flag();
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = 0;
            while !stop.load(Ordering::SeqCst) {
                for pid in supervisors(server) {
                    peak = peak.max(kib_field(pid, "VmHWM:"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            peak >> 10
        });
        let out = {
            let _stop = guard;
            let out = f();
            // The last supervisor may still be writing its outcome.
            std::thread::sleep(Duration::from_millis(200));
            out
        };
        (out, sampler.join().unwrap())
    })
}

/// Python that finds the current call's plots pipe (the harness's `plots_out`) and writes
/// `count` empty plot frames to it: five bytes each on the pipe.
fn empty_plot_frames(count: usize) -> String {
    format!(
        r#"
import os, sys
f = sys._getframe()
while 'plots_out' not in f.f_locals:
    f = f.f_back
fd = f.f_locals['plots_out'].fileno()
os.write(fd, b'P\0\0\0\0' * {count})
print('flooded')
"#
    )
}

#[test]
fn empty_plot_frames_are_capped_as_they_are_decoded() {
    let t = start(0, &[]);
    let server = &t.server;
    // 3.3 million empty frames: the plots pipe's whole 16 MiB cap.
    let flood = empty_plot_frames(3_300_000);
    let (r, peak) = peak_supervisor_mib(server, || server.run(&flood));
    assert_eq!(
        r["stdout"],
        "flooded\n",
        "{}",
        common::shorten(&r.to_string(), 500)
    );
    let plots = r["plots"].as_array().unwrap().len();
    assert!(plots <= 16, "a run returned {plots} plots");
    assert!(
        r["stderr"].as_str().unwrap().contains("plots dropped"),
        "{}",
        r["stderr"]
    );
    assert!(peak < 128, "a run's supervisor peaked at {peak} MiB");

    let sid = create_session(server);
    let (r, peak) = peak_supervisor_mib(server, || call(server, &sid, &flood));
    assert_eq!(
        r["stdout"],
        "flooded\n",
        "{}",
        common::shorten(&r.to_string(), 500)
    );
    assert!(r["plots"].as_array().unwrap().len() <= 16);
    assert!(peak < 128, "the session's supervisor peaked at {peak} MiB");
    assert_eq!(call(server, &sid, "print(1)")["stdout"], "1\n");
}

/// A streamed request on a socket that is not read. Its receive buffer keeps its default
/// size (autotuning grows it only as the application reads): a tiny one (a `SO_RCVBUF` of
/// 2 KiB) makes loopback TCP crawl at zero-window probes once the client does read, about
/// 20 KB/s here, so the megabytes the kernel buffered on the server's side took minutes to
/// drain and the server rightly ended the connection as one not being read.
fn stalled_stream(server: &Server, code: &str) -> std::net::TcpStream {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let body = json!({"lang": "python", "code": code, "timeout": 30}).to_string();
    write!(
        tcp,
        "POST /v1/tools/code HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Accept: text/event-stream\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    tcp
}

fn metrics(server: &Server) -> String {
    server.get("/metrics").text().unwrap()
}

#[test]
fn a_client_that_stops_reading_a_stream_ends_it_and_its_run() {
    // Output caps wide enough that what the run writes is more than the socket's and the
    // HTTP layer's buffers hold, so the queue is where it waits.
    let t = start(
        1,
        &["--stream-backlog-events", "32", "--output-kib", "32768"],
    );
    let server = &t.server;
    // stdout and stderr in turn, 8 kB a line: events that cannot merge, tens of megabytes.
    let code = r#"
import sys, time
for i in range(3000):
    print('o' * 8000, flush=True)
    print('e' * 8000, file=sys.stderr, flush=True)
    time.sleep(0.001)
time.sleep(20)
"#;
    let before = kib_field(server.pid() as i32, "VmRSS:");
    let mut tcp = stalled_stream(server, code);
    let overflowed =
        || metric(&metrics(server), "nsbox_stream_overflows_total").is_some_and(|n| n >= 1.0);
    assert!(
        wait_until(Duration::from_secs(20), overflowed),
        "the stream never overflowed:\n{}\n{}",
        metrics(server)
            .lines()
            .filter(|l| l.starts_with("nsbox_runs") || l.starts_with("nsbox_stream"))
            .collect::<Vec<_>>()
            .join("\n"),
        log_tail(server)
    );
    // The run was stopped, not left to its 20 s sleep.
    assert!(
        wait_until(Duration::from_secs(5), || t.sandboxes().is_empty()),
        "the run outlived its stream: {:?}",
        t.sandboxes()
    );
    let grown = kib_field(server.pid() as i32, "VmRSS:").saturating_sub(before) >> 10;
    assert!(grown < 64, "the server grew by {grown} MiB");
    // What the client finally reads ends with the error, naming what happened.
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut received = Vec::new();
    let _ = tcp.read_to_end(&mut received);
    let received = String::from_utf8_lossy(&received);
    let last_event = received
        .rsplit("event: ")
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        last_event.starts_with("error") && last_event.contains("did not read the stream"),
        "the stream ended with: {}",
        common::shorten(&last_event, 400)
    );
    assert_eq!(server.run("print(2)")["stdout"], "2\n");
}

#[test]
fn empty_plot_frames_in_a_stream_that_is_not_read_cost_the_server_little() {
    let t = start(2, &[]);
    let server = &t.server;
    let before = kib_field(server.pid() as i32, "VmHWM:");
    let _tcp = stalled_stream(
        server,
        &(empty_plot_frames(3_300_000) + "import time\ntime.sleep(3)\n"),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        wait_until(Duration::from_secs(15), || t.sandboxes().is_empty()),
        "the run did not end"
    );
    let grown = kib_field(server.pid() as i32, "VmHWM:").saturating_sub(before) >> 10;
    assert!(grown < 64, "the server's peak grew by {grown} MiB");
}

#[test]
fn a_forged_answer_does_not_pass_for_a_call() {
    let t = start(3, &[]);
    let server = &t.server;
    let sid = create_session(server);
    // The code keeps the harness's socket and answers for it, before the harness does.
    let r = call(
        server,
        &sid,
        r#"
import os, socket, time
s = socket.socket(fileno=os.dup(3))
s.send(b'{"exit_code": 7}')
time.sleep(0.5)
print('finished')
"#,
    );
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(r["stdout"], "finished\n", "{r}");
    // The real answer did not linger to be taken for the next call's.
    let r = call(server, &sid, "print(1)");
    assert_eq!(r["stdout"], "1\n", "{r}");
    assert_eq!(r["session"]["state"], "active", "{r}");
}

#[test]
fn ending_a_session_kills_its_sandbox_even_with_its_supervisor_stopped() {
    // A warm session's init is the zygote's child, a cold one's the supervisor's: the
    // server's handle on it comes from a different place in each.
    for (slot, mode) in [(4, "warm"), (8, "cold")] {
        kill_with_supervisor_stopped(start(slot, &["--mode", mode]));
    }
}

fn kill_with_supervisor_stopped(t: Target) {
    let server = &t.server;
    let sid = create_session(server);
    assert_eq!(call(server, &sid, "print(1)")["stdout"], "1\n");
    let sups = supervisors(server);
    assert_eq!(sups.len(), 1, "one session, one supervisor: {sups:?}");
    let sup = nix::unistd::Pid::from_raw(sups[0]);
    assert!(!t.sandboxes().is_empty());
    nix::sys::signal::kill(sup, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let d = server
        .client()
        .delete(format!("{}/v1/sessions/{sid}", server.base))
        .send()
        .unwrap();
    assert_eq!(d.status().as_u16(), 204);
    let gone = wait_until(Duration::from_secs(5), || t.sandboxes().is_empty());
    let left = t.sandboxes();
    nix::sys::signal::kill(sup, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(gone, "the session's sandbox outlived DELETE: {left:?}");
    // Let go, the supervisor removes the session's cgroup.
    assert!(
        wait_until(Duration::from_secs(5), || run_cgroups(server.pid())
            .is_empty()),
        "cgroups left: {:?}",
        run_cgroups(server.pid())
    );
}

#[test]
fn a_session_that_never_reads_its_socket_is_ended_not_stalled() {
    let t = start(5, &[]);
    let server = &t.server;
    let sid = create_session(server);
    // The call answers for itself (with its own token, read from the harness's frame), then
    // keeps the interpreter busy for good. A thread answers every call that arrives, token
    // included, by peeking at the socket without ever reading it (SO_PEEK_OFF makes each
    // peek the next message), so the supervisor's sends pile up in its queue.
    let r = call(
        server,
        &sid,
        r#"
import json, os, socket, sys, threading, time
s = socket.socket(fileno=os.dup(3))
s.setsockopt(socket.SOL_SOCKET, 42, 0)  # SO_PEEK_OFF
f = sys._getframe()
while f is not None and f.f_code.co_name != '_nsbox_session':
    f = f.f_back
token = f.f_locals['op'].get('call') if f is not None else None
def forge():
    while True:
        head = json.loads(s.recv(65536, socket.MSG_PEEK))
        s.send(json.dumps({'exit_code': 0, 'call': head.get('call')}).encode())
threading.Thread(target=forge, daemon=True).start()
s.send(json.dumps({'exit_code': 0, 'call': token}).encode())
while True:
    time.sleep(1)
"#,
    );
    assert_eq!(r["exit_code"], 0, "{r}");
    let client = common::client(Duration::from_secs(30));
    let url = format!("{}/v1/sessions/{sid}/files", server.base);
    let mut ended = None;
    for i in 0..400 {
        let started = Instant::now();
        let resp = client
            .get(&url)
            .send()
            .unwrap_or_else(|e| panic!("file listing {i} did not answer: {e}"));
        let status = resp.status().as_u16();
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "file listing {i} took {:?}",
            started.elapsed()
        );
        if status != 200 {
            ended = Some((i, status, resp.text().unwrap_or_default()));
            break;
        }
    }
    let (i, status, body) = ended.expect("400 listings answered by forged replies");
    assert!(
        [404, 503].contains(&status) && body.contains("ended"),
        "listing {i}: {status} {body}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || t.sandboxes().is_empty()),
        "the sandbox outlived its session: {:?}",
        t.sandboxes()
    );
    let status: Value = server.get("/v1/status").json().unwrap();
    assert_eq!(status["sessions"]["active"], 0, "{status}");
}

#[test]
fn a_forged_file_frame_is_held_to_the_file_size_limit() {
    let t = start(6, &["--file-max-mib", "1"]);
    let server = &t.server;
    let sid = create_session(server);
    // The code replaces the harness's file sender with one that sends 3 MiB as any file.
    call(
        server,
        &sid,
        r#"
import json, struct, sys
g = sys._getframe(1).f_globals
def forged(out, rel, caps, sent, notes):
    head = json.dumps({'path': rel, 'size': 1, 'truncated': False}).encode()
    body = struct.pack('<I', len(head)) + head + b'x' * (3 << 20)
    out.write(b'F' + struct.pack('<I', len(body)) + body)
    return True
g['_nsbox_send_file'] = forged
open('small.txt', 'w').write('hi')
"#,
    );
    let resp = server.get(&format!("/v1/sessions/{sid}/files/small.txt"));
    let status = resp.status().as_u16();
    let bytes = resp.bytes().unwrap();
    assert!(
        status != 200 && bytes.len() < 1 << 20,
        "GET answered {status} with {} bytes",
        bytes.len()
    );
}

#[test]
fn session_file_requests_are_held_to_the_configured_output_limit() {
    let t = start(7, &["--output-kib", "64"]);
    let server = &t.server;
    let sid = create_session(server);
    // Every file request now writes a megabyte to stderr before it fails.
    call(
        server,
        &sid,
        r#"
import sys
g = sys._getframe(1).f_globals
def noisy(op, bundle, plots_out):
    sys.stderr.write('E' * 1_000_000)
    return {'error': 'refused'}
g['_nsbox_file_op'] = noisy
"#,
    );
    let resp = server
        .client()
        .put(format!("{}/v1/sessions/{sid}/files/a.txt", server.base))
        .body("x")
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().unwrap();
    assert_eq!(status, 400, "{}", common::shorten(&body, 300));
    assert!(
        body.len() < 100_000,
        "the answer carried {} bytes of the sandbox's stderr",
        body.len()
    );
}

#[test]
fn control_bytes_do_not_multiply_the_answer() {
    let t = start(9, &[]);
    let server = &t.server;
    // Each control byte is six bytes in a JSON string, each invalid byte three (U+FFFD).
    let resp = server
        .client()
        .post(format!("{}/v1/tools/code", server.base))
        .json(&json!({"lang": "python", "code":
            "import os\nos.write(1, b'\\x01' * (2 << 20))\nos.write(2, b'\\xff' * (2 << 20))"}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.bytes().unwrap();
    // stdout and stderr at 1 MiB each as sent, the notes and the other fields.
    assert!(
        body.len() < (2 << 20) + 4096,
        "the answer is {} bytes",
        body.len()
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["stdout"]
        .as_str()
        .unwrap()
        .contains("stdout truncated at 1 MiB"));
    assert!(v["stderr"]
        .as_str()
        .unwrap()
        .contains("stderr truncated at 1 MiB"));
}
