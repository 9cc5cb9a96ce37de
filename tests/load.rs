//! The HTTP edge under every hostile client at once (issue 28): key A floods, key B calls at a steady rate, 1,000 sockets sit idle, clients trickle their heads, others send oversize bodies and code the scanner refuses, for 60 s (`NSBOX_LOAD_SECONDS` shortens it). Every key-B request is served, every other request is answered, and afterwards nothing is left over: descriptors, processes and cgroups are back where they started.
//!
//! It prints key B's latency (p50, p99) and the server's peak memory and descriptors; run
//! with `--nocapture` to see them. Timings are reported, never asserted.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{run_cgroups, run_processes_of_uid, wait_until, Server, StopOnDrop, NOBODY};
use serde_json::{json, Value};

const KEY_A: &str = "flood-key-a";
const KEY_B: &str = "steady-key-b";
const UID_BASE: u32 = 3_900_000_000;

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn hwm_mib(pid: u32) -> u64 {
    common::proc_status_field(pid as i32, "VmHWM:")
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        >> 10
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    refused_429: AtomicU64,
    too_large: AtomicU64,
    scanner_refused: AtomicU64,
    cut_off: AtomicU64,
    /// Answers no client should get (5xx, a dropped connection on a good request).
    wrong: Mutex<Vec<String>>,
}

impl Tally {
    fn wrong(&self, what: String) {
        let mut w = self.wrong.lock().unwrap();
        if w.len() < 20 {
            w.push(what);
        }
    }
}

fn post(client: &reqwest::blocking::Client, base: &str, key: &str, body: Vec<u8>) -> (u16, String) {
    match client
        .post(format!("{base}/v1/tools/code"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
    {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

fn code(c: &str) -> Vec<u8> {
    json!({"lang": "python", "code": c, "timeout": 30})
        .to_string()
        .into_bytes()
}

#[test]
fn every_hostile_client_at_once_leaves_key_b_served_and_nothing_behind() {
    common::require_root();
    let seconds: u64 = std::env::var("NSBOX_LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // 1,000 idle sockets and the rest need more descriptors than a default soft limit.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let server = Server::start_in_uid_range(
        UID_BASE,
        &[
            "--api-keys",
            &format!("{KEY_A},{KEY_B}"),
            "--max-running",
            "4",
            "--max-queue",
            "8",
            "--header-timeout",
            "3",
            "--idle-timeout",
            "5",
            "--body-timeout",
            "10",
        ],
        &[],
    );
    let pid = server.pid();
    let base = server.base.clone();
    let fds_before = fds(pid);
    let stop = StopOnDrop::default();
    let tally = Arc::new(Tally::default());
    let b_latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let peak_fds = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let client = || {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    };
    let mut threads = Vec::new();
    let until = move || Instant::now() < deadline;

    // Key A floods: more slow runs than its share, without a user id.
    for _ in 0..6 {
        let (base, tally, c) = (base.clone(), tally.clone(), client());
        threads.push(std::thread::spawn(move || {
            while until() {
                match post(&c, &base, KEY_A, code("import time\ntime.sleep(0.5)")) {
                    (200, _) => tally.ok.fetch_add(1, Ordering::Relaxed),
                    (429, _) => tally.refused_429.fetch_add(1, Ordering::Relaxed),
                    (s, body) => {
                        tally.wrong(format!("key A flood: {s} {body}"));
                        0
                    }
                };
            }
        }));
    }
    // Key A also sends code the scanner refuses, and bodies past the limit.
    for _ in 0..2 {
        let (base, tally, c) = (base.clone(), tally.clone(), client());
        threads.push(std::thread::spawn(move || {
            while until() {
                match post(&c, &base, KEY_A, code("import os\nos.system('id')")) {
                    (200, body) if body.contains("Security violations") => {
                        tally.scanner_refused.fetch_add(1, Ordering::Relaxed)
                    }
                    (429, _) => tally.refused_429.fetch_add(1, Ordering::Relaxed),
                    (s, body) => {
                        tally.wrong(format!("refused code: {s} {body}"));
                        0
                    }
                };
            }
        }));
    }
    {
        let (base, tally, c) = (base.clone(), tally.clone(), client());
        threads.push(std::thread::spawn(move || {
            let big = vec![b' '; 46 << 20];
            while until() {
                match post(&c, &base, KEY_A, big.clone()) {
                    (413, _) => tally.too_large.fetch_add(1, Ordering::Relaxed),
                    // The server may close the connection once it has said 413.
                    (0, _) => tally.too_large.fetch_add(1, Ordering::Relaxed),
                    (s, body) => {
                        tally.wrong(format!(
                            "oversize body: {s} {}",
                            common::shorten(&body, 200)
                        ));
                        0
                    }
                };
            }
        }));
    }
    // Trickling heads: a byte every 300 ms until the server cuts the connection.
    for _ in 0..8 {
        let (port, tally) = (server.port, tally.clone());
        threads.push(std::thread::spawn(move || {
            while until() {
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
                for b in b"POST /v1/tools/code HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
                    .iter()
                    .cycle()
                {
                    if !until() {
                        break;
                    }
                    if s.write_all(&[*b]).is_err() {
                        tally.cut_off.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    let mut buf = [0u8; 512];
                    match s.read(&mut buf) {
                        Ok(0) => {
                            tally.cut_off.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        // A 408 or the like before the close.
                        Ok(_) => {}
                        Err(_) => {}
                    }
                }
            }
        }));
    }
    // 1,000 idle sockets all along: the server closes idle ones after its idle timeout
    // (5 s here), so a fresh thousand is opened every 4 s.
    {
        let port = server.port;
        threads.push(std::thread::spawn(move || {
            while until() {
                let batch: Vec<TcpStream> = (0..1000)
                    .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
                    .collect();
                let next = Instant::now() + Duration::from_secs(4);
                while until() && Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(100));
                }
                drop(batch);
            }
        }));
    }
    // The server's descriptors, sampled.
    {
        let (stop, peak) = (stop.flag(), peak_fds.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(fds(pid) as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        }));
    }
    // Key B: one request every 250 ms; each must be served.
    let c = client();
    let mut b_failures = Vec::new();
    while until() {
        let started = Instant::now();
        let (status, body) = post(&c, &base, KEY_B, code("print(1)"));
        let took = started.elapsed();
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if status == 200 && v["stdout"] == "1\n" {
            b_latencies.lock().unwrap().push(took);
        } else {
            b_failures.push(format!("{status} {}", common::shorten(&body, 200)));
        }
        std::thread::sleep(Duration::from_millis(250).saturating_sub(took));
    }
    for t in threads.drain(..threads.len() - 1) {
        t.join().unwrap();
    }
    drop(stop);
    for t in threads {
        t.join().unwrap();
    }

    let mut lat = b_latencies.lock().unwrap().clone();
    lat.sort();
    let pct = |p: f64| lat.get(((lat.len() as f64 - 1.0) * p) as usize).copied();
    eprintln!(
        "load ({seconds} s): key B {} served, p50 {:?}, p99 {:?}; server peak memory {} MiB (VmHWM), \
         peak descriptors {} (before {fds_before}); key A {} ok, {} 429, {} refused by the scanner, \
         {} oversize answered 413, {} trickling connections cut off",
        lat.len(),
        pct(0.5),
        pct(0.99),
        hwm_mib(pid),
        peak_fds.load(Ordering::Relaxed),
        tally.ok.load(Ordering::Relaxed),
        tally.refused_429.load(Ordering::Relaxed),
        tally.scanner_refused.load(Ordering::Relaxed),
        tally.too_large.load(Ordering::Relaxed),
        tally.cut_off.load(Ordering::Relaxed),
    );
    assert!(
        b_failures.is_empty(),
        "key B was not served: {b_failures:?}"
    );
    assert!(
        lat.len() as u64 >= seconds,
        "key B got {} answers in {seconds} s",
        lat.len()
    );
    let wrong = tally.wrong.lock().unwrap().clone();
    assert!(wrong.is_empty(), "answers no client should get: {wrong:?}");
    assert!(tally.ok.load(Ordering::Relaxed) > 0 && tally.refused_429.load(Ordering::Relaxed) > 0);
    assert!(
        tally.cut_off.load(Ordering::Relaxed) > 0,
        "no trickling head was cut off"
    );
    assert!(tally.too_large.load(Ordering::Relaxed) > 0);

    // Nothing left over: descriptors, sandboxes, cgroups.
    let settled = wait_until(Duration::from_secs(30), || fds(pid) <= fds_before + 8);
    assert!(
        settled,
        "descriptors: {} after, {fds_before} before",
        fds(pid)
    );
    // A run's processes are in its cgroup (`run-<n>`); a template's are not, and a template
    // retired at its fork limit has been replaced by a new one meanwhile.
    let sandboxes = || {
        let mut p = run_processes_of_uid(UID_BASE);
        p.extend(run_processes_of_uid(UID_BASE + NOBODY));
        p.retain(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cgroup"))
                .is_ok_and(|c| c.lines().any(|l| l.contains("/run-")))
        });
        p
    };
    assert!(
        wait_until(Duration::from_secs(15), || sandboxes().is_empty()),
        "sandboxes left: {:?}",
        sandboxes()
    );
    assert!(
        wait_until(Duration::from_secs(15), || run_cgroups(pid).is_empty()),
        "cgroups left: {:?}",
        run_cgroups(pid)
    );
    let health = server.get("/v1/health");
    assert_eq!(health.status().as_u16(), 200);
}
