//! The floor of a run's cost (issue 25): the cgroup attach lock kept fast by `favordynmods` with no periodic work, and warm interpreters in huge pages.
//!
//! The remount is the machine's, so these tests leave it set (as every server on the host
//! would): they never clear it.

mod common;

use std::time::Duration;

use common::{cmdline, process_tree, Server};

/// Context switches of every thread of `pids` so far.
fn context_switches(pids: &[i32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            total += status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    total
}

fn cgroup2_has_favordynmods() -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .filter_map(|l| l.split_once(" - "))
        .filter(|(_, fs)| fs.starts_with("cgroup2 "))
        .any(|(_, fs)| {
            fs.split(' ')
                .nth(2)
                .unwrap_or("")
                .split(',')
                .any(|o| o == "favordynmods")
        })
}

#[test]
fn the_server_sets_favordynmods_and_is_quiet_when_idle() {
    common::require_root();
    let server = Server::start(&[]);
    let status: serde_json::Value = server.get("/v1/status").json().unwrap();
    assert_eq!(
        status["isolation"]["cgroup_attach"], "favordynmods",
        "/v1/status: {status}"
    );
    assert!(
        cgroup2_has_favordynmods(),
        "the host's cgroup2 mount has no favordynmods after the server started"
    );
    // A run, as an agent's call would be; then the idle gap before its next call.
    let v = server.run("print(2 + 2)");
    assert_eq!(v["stdout"], "4\n", "{v}");
    std::thread::sleep(Duration::from_secs(1));
    let tree = process_tree(server.pid() as i32);
    let before = context_switches(&tree);
    std::thread::sleep(Duration::from_secs(3));
    let after = context_switches(&tree);
    // The keeper moved the spawner every 5 ms for a minute after each run: about 600
    // switches in these 3 s. Idle threads wake only for their own timers.
    assert!(
        after - before < 100,
        "the server's {} processes switched context {} times in 3 idle seconds",
        tree.len(),
        after - before
    );
}

#[test]
fn nsbox_check_reports_how_runs_attach() {
    common::require_root();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nsbox"))
        .args(["check", "--json", "--no-run", "--rootfs"])
        .arg(common::rootfs())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "nsbox check --json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let probe = report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["feature"] == "cgroup attach")
        .unwrap_or_else(|| panic!("no cgroup attach probe: {report}"))
        .clone();
    assert_eq!(probe["ok"], true, "{probe}");
    assert!(
        probe["detail"]
            .as_str()
            .unwrap()
            .starts_with("favordynmods"),
        "{probe}"
    );
}

/// Kibibytes of anonymous memory in transparent huge pages in process `pid`.
fn anon_huge_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("AnonHugePages:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The template a zygote warms: the argument after its program (`python3 -I -B -c
/// PROGRAM TEMPLATE MAX_FORKS HUGE_PAGES`).
fn template_of(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    Some(String::from_utf8_lossy(args.get(5)?).into_owned())
}

#[test]
fn warm_interpreters_keep_their_memory_in_huge_pages_and_runs_are_unchanged() {
    common::require_root();
    let server = Server::start(&[]);
    let zygotes: Vec<i32> = process_tree(server.pid() as i32)
        .into_iter()
        .filter(|p| cmdline(*p).contains("_NSBOX_ZYGOTE"))
        .filter(|p| template_of(*p).as_deref() == Some("scientific"))
        .collect();
    assert!(!zygotes.is_empty(), "no scientific zygote under the server");
    // Without the collapse a zygote has none: the host's THP mode is madvise, and
    // nothing else asks.
    let huge = zygotes.iter().map(|z| anon_huge_kib(*z)).max().unwrap();
    eprintln!("scientific zygote(s) {zygotes:?}: {huge} KiB in huge pages");
    assert!(
        huge >= 16 << 10,
        "the scientific zygote has {huge} KiB in huge pages"
    );
    // Runs forked from it compute as before, and each sees fresh memory of its own.
    let code = "import pandas as pd\nimport numpy as np\nx = np.arange(1_000_000)\nprint(int(x.sum()), pd.DataFrame({'a': [1, 2]}).a.sum())";
    for _ in 0..3 {
        let v = server.run(code);
        assert_eq!(v["stdout"], "499999500000 3\n", "{v}");
    }
}

#[test]
fn runs_of_a_template_not_kept_fork_from_the_next_larger_one() {
    common::require_root();
    let server = Server::start(&["--warm-templates", "base,ml"]);
    let status: serde_json::Value = server.get("/v1/status").json().unwrap();
    assert_eq!(
        status["warm_templates"],
        serde_json::json!(["base", "ml"]),
        "{status}"
    );
    let zygotes: Vec<Option<String>> = process_tree(server.pid() as i32)
        .into_iter()
        .filter(|p| cmdline(*p).contains("_NSBOX_ZYGOTE"))
        .map(template_of)
        .collect();
    assert!(
        !zygotes.contains(&Some("scientific".into())) && zygotes.contains(&Some("ml".into())),
        "zygotes: {zygotes:?}"
    );
    // The spec's pandas example: a scientific run, forked warm from ml.
    let v = server.run("import pandas as pd\nprint(pd.DataFrame({'a': [1, 2, 3]}).a.sum())");
    assert_eq!(v["stdout"], "6\n", "{v}");
    let metrics = server.get("/metrics").text().unwrap();
    assert_eq!(
        common::metric(&metrics, "nsbox_template_forks_total"),
        Some(1.0),
        "{metrics}"
    );
}
