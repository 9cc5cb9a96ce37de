//! The spawner's lines in the server's log: a warm start that fails (its zygote stopped) is logged by the supervisor in the server's format, with the request's id, and the run still answers, cold; a shutdown does not say it restarts the spawner.

mod common;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::Server;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

const WARM_START_FAILED: &str = "warm start failed; running cold";

/// One test at a time: each stops a zygote or its server, and the host is small.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn argv(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn ppid(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Every process below `root`.
fn descendants(root: i32) -> Vec<i32> {
    let all: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, ppid(pid)?)))
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

/// The server's `base` zygote: the warm interpreter (`_NSBOX_ZYGOTE` in its program, the
/// template's name as its argument) whose parent is its template's init, not a zygote.
fn base_zygote(server_pid: i32) -> i32 {
    let zygotes = common::unforked_interpreters(server_pid, "base");
    assert_eq!(zygotes.len(), 1, "one base zygote: {zygotes:?}");
    zygotes[0]
}

/// Keeps a process stopped, and lets it go however the test ends.
struct Stopped(Pid);

impl Stopped {
    fn new(pid: i32) -> Stopped {
        let pid = Pid::from_raw(pid);
        kill(pid, Signal::SIGSTOP).expect("stopping the zygote");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

/// Starts a warm server logging in `format`, stops its base zygote, runs stdlib-only code
/// with `request_id`, and returns the run's answer, the server's log and its metrics.
fn run_with_a_stopped_zygote(format: &str, request_id: &str) -> (Value, String, String) {
    // Without ready sandboxes: one built before the zygote stopped would serve the run warm,
    // and the failed hand-off to the zygote is what this looks at.
    let server = Server::start(&["--mode", "warm", "--log-format", format, "--pool-size", "0"]);
    let zygote = Stopped::new(base_zygote(server.pid() as i32));
    let resp = server
        .client()
        .post(format!("{}/v1/tools/code", server.base))
        .header("x-request-id", request_id)
        .json(&json!({"code": "import json\nprint(json.dumps([6 * 7]))", "lang": "python"}))
        .send()
        .expect("request");
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().unwrap();
    let metrics = server.get("/metrics").text().unwrap();
    // The supervisor's line was written before its answer; the reader thread may lag.
    let log = (0..50)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            server.log.lock().unwrap().clone()
        })
        .find(|log| log.contains(WARM_START_FAILED))
        .unwrap_or_else(|| server.log.lock().unwrap().clone());
    // The spawner ends the stopped zygote (it stops answering pings) and with it the
    // hand-off, which this run then makes cold; the guard's SIGCONT comes after the server.
    server.stop();
    drop(zygote);
    (answer, log, metrics)
}

/// The run answered as a cold run: right output, and counted as cold.
fn assert_answered_cold(answer: &Value, metrics: &str, log: &str) {
    assert_eq!(answer["stdout"], "[42]\n", "{answer}\n{log}");
    assert_eq!(answer["exit_code"], 0, "{answer}");
    assert_eq!(
        common::metric(metrics, "nsbox_run_duration_seconds_count{start=\"cold\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        common::metric(metrics, "nsbox_run_duration_seconds_count{start=\"warm\"}").unwrap_or(0.0),
        0.0,
        "{metrics}"
    );
}

#[test]
fn a_failed_warm_start_is_in_the_servers_log_with_the_request_id() {
    let _one = exclusive();
    let (answer, log, metrics) = run_with_a_stopped_zygote("human", "warm-fails-human");
    assert_answered_cold(&answer, &metrics, &log);
    let line = log
        .lines()
        .find(|l| l.contains(WARM_START_FAILED))
        .unwrap_or_else(|| panic!("no {WARM_START_FAILED:?} in the server's log:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("run{request_id=warm-fails-human}"),
        "the supervisor's line carries the request id: {line}"
    );
    // Logged by the supervisor process, from the module that starts the run's sandbox.
    assert!(line.contains("nsbox_sandbox::sandbox"), "{line}");
}

#[test]
fn a_failed_warm_start_is_a_json_line_with_the_request_id() {
    let _one = exclusive();
    let (answer, log, metrics) = run_with_a_stopped_zygote("json", "warm-fails-json");
    assert_answered_cold(&answer, &metrics, &log);
    // Every line, the spawner's too, is JSON.
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{log}")))
        .collect();
    let line = lines
        .iter()
        .find(|l| l["fields"]["message"] == WARM_START_FAILED)
        .unwrap_or_else(|| panic!("no {WARM_START_FAILED:?} in the server's log:\n{log}"));
    assert_eq!(line["span"]["request_id"], "warm-fails-json", "{line}");
    assert_eq!(line["span"]["name"], "run", "{line}");
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["target"], "nsbox_sandbox::sandbox", "{line}");
    assert!(line["fields"]["error"].is_string(), "{line}");
    // The same shape as the server's own lines of the request.
    let server_line = lines
        .iter()
        .find(|l| {
            l["span"]["request_id"] == "warm-fails-json" && l["target"] != "nsbox_sandbox::sandbox"
        })
        .unwrap_or_else(|| panic!("the server's lines of the request:\n{log}"));
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(line), keys(server_line), "{line}\n{server_line}");
}

/// The spawner: the server's child that runs the hidden spawner command.
fn spawner_of(server_pid: i32) -> i32 {
    let spawners: Vec<i32> = descendants(server_pid)
        .into_iter()
        .filter(|&p| ppid(p) == Some(server_pid) && argv(p).iter().any(|a| a == "__spawner"))
        .collect();
    assert_eq!(spawners.len(), 1, "one spawner: {spawners:?}");
    spawners[0]
}

/// Posts `code` from a thread; its answer comes on the returned handle.
fn run_in_background(
    server: &Server,
    code: &str,
) -> std::thread::JoinHandle<Result<(u16, Value), String>> {
    let url = format!("{}/v1/tools/code", server.base);
    let body = json!({"code": code, "lang": "python", "timeout": 30});
    std::thread::spawn(move || {
        let resp = common::client(Duration::from_secs(60))
            .post(url)
            .json(&body)
            .send()
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().map_err(|e| e.to_string())?))
    })
}

/// Waits until the server's log contains `text`.
fn wait_for_line(server: &Server, text: &str) -> bool {
    common::wait_until(Duration::from_secs(20), || {
        server.log.lock().unwrap().contains(text)
    })
}

/// What the shutdown must not say.
const RESTARTING: [&str; 2] = ["starting a new one", "restarting the spawner"];

/// Ctrl-C in a terminal or `kill -- -PGID` signals the server's whole process group: the
/// server shuts down with its grace; its spawner is not in that group, so it neither dies
/// (taking the run in flight with it) nor is restarted.
#[test]
fn a_signal_to_the_servers_process_group_shuts_down_without_restarting_the_spawner() {
    let _one = exclusive();
    // setsid makes the server the leader of a process group of its own.
    let mut server = Server::start_under(
        &["setsid"],
        std::path::Path::new(env!("CARGO_BIN_EXE_nsbox")),
        &["--mode", "warm", "--scanner", "off"],
        &[],
    );
    let pid = server.pid() as i32;
    let run = run_in_background(
        &server,
        "import time\nprint('started', flush=True)\ntime.sleep(3)\nprint('done')",
    );
    // A warm run starts within milliseconds.
    std::thread::sleep(Duration::from_secs(1));
    kill(Pid::from_raw(-pid), Signal::SIGTERM).unwrap();
    let (status, answer) = run.join().unwrap().expect("the run in flight is answered");
    assert_eq!(
        (status, answer["stdout"].clone()),
        (200, json!("started\ndone\n")),
        "{answer}"
    );
    let exit = server
        .wait_exit(Duration::from_secs(20))
        .expect("the server exits");
    assert!(exit.success(), "server exit: {exit}");
    std::thread::sleep(Duration::from_millis(500));
    let log = server.log.lock().unwrap().clone();
    assert!(log.contains("shutting down"), "{log}");
    for said in RESTARTING.iter().chain(&["spawner exited"]) {
        assert!(!log.contains(said), "the shutdown said {said:?}:\n{log}");
    }
}

/// A spawner that dies while the server shuts down is not replaced, and the log says so.
#[test]
fn a_spawner_lost_during_the_shutdown_is_not_restarted() {
    use std::io::Write;
    let _one = exclusive();
    let mut server = Server::start(&[
        "--mode",
        "warm",
        "--shutdown-grace",
        "3",
        "--body-timeout",
        "600",
    ]);
    let pid = server.pid() as i32;
    let spawner = spawner_of(pid);
    // A request whose body is still coming keeps the server in its shutdown for the grace.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let head = format!(
        "POST /v1/tools/code HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\n\r\n{{\"code\": \"",
        server.port
    );
    slow.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    assert!(
        wait_for_line(&server, "shutting down"),
        "{}",
        server.log.lock().unwrap()
    );
    kill(Pid::from_raw(spawner), Signal::SIGKILL).unwrap();
    let exit = server
        .wait_exit(Duration::from_secs(30))
        .expect("the server exits");
    assert!(exit.success(), "server exit: {exit}");
    drop(slow);
    std::thread::sleep(Duration::from_millis(500));
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.contains("the spawner exited during the shutdown"),
        "the loss is logged:\n{log}"
    );
    for said in RESTARTING {
        assert!(!log.contains(said), "the shutdown said {said:?}:\n{log}");
    }
}
