//! Operating nsbox: configuration precedence and errors, `nsbox run`, `nsbox check`, the
//! refusal of incomplete isolation, `/metrics`, and JSON logs with request ids.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{require_root, rootfs, Server};
use serde_json::{json, Value};

fn nsbox(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nsbox"));
    cmd.args(args);
    // The tests' own environment must not leak options into the runs under test.
    for (k, _) in std::env::vars() {
        if k.starts_with("NSBOX_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn check_json(cmd: &mut Command) -> (Output, Value) {
    let out = cmd.output().expect("running nsbox check");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json printed no JSON ({e}):\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (out, report)
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nsbox.toml");
    std::fs::write(
        &file,
        "memory_mib = 100\nmax_running = 3\nmax_queue = 7\nscanner = \"report\"\n",
    )
    .unwrap();
    let (out, report) = check_json(
        nsbox(&["check", "--json", "--no-run", "--memory-mib", "300"])
            .arg("--config")
            .arg(&file)
            .arg("--rootfs")
            .arg(rootfs())
            .env("NSBOX_MEMORY_MIB", "200")
            .env("NSBOX_MAX_RUNNING", "4"),
    );
    let config = &report["config"];
    assert_eq!(config["memory_mib"], 300, "flag over env over file");
    assert_eq!(config["max_running"], 4, "env over file");
    assert_eq!(config["max_queue"], 7, "file over default");
    assert_eq!(config["scanner"], "report");
    assert_eq!(config["cpu_seconds"], 60, "default where nothing says");
    assert!(out.status.code().is_some());
}

/// deploy/nsbox.toml lists every key with its default: loading it changes nothing.
#[test]
fn the_example_configuration_is_valid_and_says_the_defaults() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nsbox.toml");
    let config_of = |extra: &[&str]| {
        let (out, report) = check_json(
            nsbox(&["check", "--json", "--no-run"])
                .args(extra)
                .arg("--rootfs")
                .arg(rootfs()),
        );
        assert!(out.status.code().is_some());
        report["config"].clone()
    };
    assert_eq!(config_of(&["--config", example]), config_of(&[]));
    let text = std::fs::read_to_string(example).unwrap();
    let keys = serde_json::to_value(nsbox::config::Config::default()).unwrap();
    for key in keys.as_object().unwrap().keys() {
        assert!(
            text.contains(&format!("{key} =")),
            "deploy/nsbox.toml does not document `{key}`"
        );
    }
}

#[test]
fn invalid_configuration_fails_at_start_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    // Parse errors name the file; range errors name the field, wherever its value came from.
    for (contents, needle, names_file) in [
        ("memory_mb = 64\n", "memory_mb", true),
        ("max_running = \"lots\"\n", "max_running", true),
        ("listen = \"0.0.0.0\"\n", "listen", true),
        ("default_timeout = 400\n", "`default_timeout`", false),
    ] {
        std::fs::write(&file, contents).unwrap();
        for sub in ["serve", "check", "run"] {
            let mut cmd = nsbox(&[sub]);
            cmd.arg("--config").arg(&file);
            if sub == "run" {
                cmd.arg("-");
            }
            let out = cmd.stdin(Stdio::null()).output().unwrap();
            assert_eq!(out.status.code(), Some(2), "{sub} with {contents}");
            let err = text(&out.stderr);
            assert!(
                err.contains(needle) && (err.contains("bad.toml") || !names_file),
                "{sub} with {contents}: {err}"
            );
        }
    }
    let out = nsbox(&["serve", "--cpus", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("`cpus`"),
        "{}",
        text(&out.stderr)
    );
    let out = nsbox(&["serve"])
        .env("NSBOX_MAX_TIMEOUT", "-5")
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("`max_timeout`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn help_explains_every_option_with_its_default() {
    let out = nsbox(&["serve", "--help"]).output().unwrap();
    let help = text(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--rootfs",
        "--memory-mib",
        "--allow-incomplete-isolation",
        "--log-format",
        "--api-keys-file",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    assert!(help.contains("[default: 512]") && help.contains("[env: NSBOX_MEMORY_MIB"));
}

/// `nsbox run - ARGS` with `code` on its standard input.
fn run_stdin(code: &str, args: &[&str]) -> Output {
    use std::io::Write;
    let mut child = nsbox(&["run", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(code.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn run_prints_the_output_writes_plots_and_exits_with_the_code_status() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let plot = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spec/plot.py");
    let out = nsbox(&["run", plot, "--plots-dir"])
        .arg(dir.path())
        .arg("--rootfs")
        .arg(rootfs())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Plot generated successfully!\n");
    let png = std::fs::read(dir.path().join("plot_1.png")).expect("plot_1.png written");
    assert_eq!(png_size(&png), (1000, 600));
    assert!(text(&out.stderr).contains("plot_1.png"));

    let run_stdin = |code: &str, extra: &[&str]| {
        let rootfs = rootfs();
        let mut args = vec!["--rootfs", rootfs.to_str().unwrap()];
        args.extend_from_slice(extra);
        run_stdin(code, &args)
    };
    let out = run_stdin("import sys\nprint('bye')\nsys.exit(3)\n", &[]);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(3), "bye\n".into())
    );
    let out = run_stdin("1/0\n", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("ZeroDivisionError"));
    let out = run_stdin("while True: pass\n", &["--timeout", "1"]);
    assert_eq!(out.status.code(), Some(124), "timeout(1)'s status");
    assert!(text(&out.stderr).contains("Execution timeout exceeded"));
    let out = run_stdin("import os\nos.system('id')\n", &[]);
    assert_eq!(out.status.code(), Some(126), "refused by the scanner");
    assert!(text(&out.stderr).contains("os.system line execution"));
    let out = run_stdin("print(42)\n", &["--json"]);
    let response: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(response["stdout"], "42\n");
    assert_eq!(response["success"], true);
    let out = run_stdin("   \n", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("empty"));
    // As a REPL: what the code displays and its last expression's value are printed.
    let results = dir.path().join("results.json");
    let out = run_stdin(
        "print('out')\ndisplay('shown')\nx = 6\nx * 7\n",
        &["--results", results.to_str().unwrap()],
    );
    assert_eq!(
        text(&out.stdout),
        "out\n'shown'\n42\n",
        "{}",
        text(&out.stderr)
    );
    let written: Value = serde_json::from_slice(&std::fs::read(&results).unwrap()).unwrap();
    assert_eq!(written["results"][1]["output_type"], "execute_result");
    assert_eq!(written["results"][1]["data"]["text/plain"], "42");
    assert!(written["error"].is_null());
}

#[test]
fn run_takes_input_files_and_writes_output_files() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("sales.csv");
    std::fs::write(&input, "region,amount\nnorth,10\nsouth,32\n").unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "unchanged\n").unwrap();
    let out_dir = dir.path().join("results");
    let code = "import pandas as pd\n\
                df = pd.read_csv('data/sales.csv')\n\
                print(df.amount.sum(), open('notes.txt').read().strip())\n\
                import pathlib\n\
                pathlib.Path('out').mkdir()\n\
                df.describe().to_csv('out/summary.csv')\n";
    let rootfs = rootfs();
    let named = format!("data/sales.csv={}", input.display());
    let out = run_stdin(
        code,
        &[
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--file",
            &named,
            "--file",
            notes.to_str().unwrap(),
            "--out-dir",
            out_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "42 unchanged\n");
    let summary = std::fs::read_to_string(out_dir.join("out/summary.csv")).unwrap();
    assert!(summary.starts_with(",amount\ncount,2.0\n"), "{summary}");
    assert!(
        !out_dir.join("notes.txt").exists() && !out_dir.join("data").exists(),
        "unchanged inputs are not written back"
    );
    // What is not returned (a link) is said on the terminal, once, and not written.
    let skipped_dir = dir.path().join("skipped");
    let out = run_stdin(
        "import os\nos.symlink('/', 'rootdir')\nopen('a.txt', 'w').write('a')\n",
        &[
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--scanner",
            "off",
            "--out-dir",
            skipped_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.matches("rootdir").count(),
        1,
        "the link is named once: {stderr}"
    );
    assert!(
        stderr.contains("nsbox: rootdir not written: symlink"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(skipped_dir.join("a.txt")).unwrap(),
        "a"
    );
    assert!(std::fs::symlink_metadata(skipped_dir.join("rootdir")).is_err());
    let out = run_stdin("print(1)\n", &["--file", "a=/nonexistent/nsbox-file"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("/nonexistent/nsbox-file"));
}

/// A symlinked rootfs (a link swapped at upgrade) works: nsbox resolves it at start.
#[test]
fn a_symlinked_root_filesystem_works() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("rootfs");
    std::os::unix::fs::symlink(rootfs(), &link).unwrap();
    let out = run_stdin(
        "print(6 * 7)",
        &["--json", "--rootfs", link.to_str().unwrap()],
    );
    let response: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(response["stdout"], "42\n", "{response}");
    assert!(
        !dir.path().join("nsbox-empty-layer").exists(),
        "the empty layer belongs beside the real tree, not the link"
    );
}

#[test]
fn check_reports_this_hosts_isolation_and_fails_when_it_is_incomplete() {
    require_root();
    let out = nsbox(&["check", "--rootfs"])
        .arg(rootfs())
        .output()
        .unwrap();
    let report = text(&out.stdout);
    println!("{report}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{report}\n{}",
        text(&out.stderr)
    );
    for line in [
        "ok    user namespaces",
        "ok    seccomp",
        "ok    overlayfs",
        "ok    root filesystem",
        "ok    sandbox run      Python ran as uid 65534 gid 65534, seccomp filter on, no capabilities",
        "isolation: complete",
    ] {
        assert!(report.contains(line), "{line:?} missing");
    }
    assert!(
        report.contains("ok    cgroups          cgroup v1 (memory, pids")
            || report.contains("ok    cgroups          cgroup v2 ("),
        "{report}"
    );

    let (out, json) =
        check_json(nsbox(&["check", "--json", "--no-cgroups", "--rootfs"]).arg(rootfs()));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json["isolation_complete"], false);
    let cgroups = json["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["feature"] == "cgroups")
        .unwrap();
    assert_eq!(
        (&cgroups["ok"], &cgroups["required"]),
        (&json!(false), &json!(true))
    );

    let (out, json) = check_json(
        nsbox(&[
            "check",
            "--json",
            "--no-cgroups",
            "--allow-incomplete-isolation",
            "--rootfs",
        ])
        .arg(rootfs()),
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json["isolation_complete"], true);
}

#[test]
fn serve_refuses_incomplete_isolation_unless_allowed_loudly() {
    require_root();
    let out = nsbox(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--no-cgroups",
        "--rootfs",
    ])
    .arg(rootfs())
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("refusing to start with incomplete isolation")
            && err.contains("--allow-incomplete-isolation"),
        "{err}"
    );

    let server = Server::start(&[
        "--no-cgroups",
        "--allow-incomplete-isolation",
        "--mode",
        "cold",
    ]);
    assert!(server.log.lock().unwrap().contains("INCOMPLETE ISOLATION"));
    let status: Value = server.get("/v1/status").json().unwrap();
    assert_eq!(status["isolation"]["cgroup"], Value::Null);
    assert!(status["isolation"]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("rlimits only"));
    assert_eq!(server.run("print(1)")["stdout"], "1\n");
}

/// The value of one sample line of the exposition, e.g. `nsbox_runs_total{verdict="ok"}`.
fn sample(exposition: &str, series: &str) -> f64 {
    common::metric(exposition, series)
        .unwrap_or_else(|| panic!("{series} missing from:\n{exposition}"))
}

#[test]
fn metrics_count_runs_by_verdict_limits_and_latency() {
    let server = Server::start(&[
        "--operator-key",
        "k",
        "--api-key",
        "plain",
        "--log-format",
        "json",
    ]);
    let next_id = std::sync::atomic::AtomicUsize::new(0);
    let post = |code: &str, timeout: f64| {
        let id = format!(
            "test-{}",
            next_id.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let resp = server
            .client()
            .post(format!("{}/v1/tools/code", server.base))
            .bearer_auth("k")
            .header("x-request-id", id.as_str())
            .header("x-relaxai-userid", "alice")
            .json(&json!({"code": code, "lang": "python", "timeout": timeout}))
            .send()
            .unwrap();
        assert_eq!(resp.headers()["x-request-id"], id.as_str());
        resp.json::<Value>().unwrap()
    };
    assert_eq!(post("print(1)", 10.0)["exit_code"], 0);
    assert_eq!(post("print(2)", 10.0)["exit_code"], 0);
    assert_eq!(post("1/0", 10.0)["exit_code"], 1);
    assert_eq!(post("import os; os.system('x')", 10.0)["success"], false);
    assert_eq!(post("while True: pass", 1.0)["exit_code"], -1);
    post("print('x' * 2_000_000)", 10.0);

    // An unusable client id is replaced by a fresh UUID rather than logged.
    let resp = server
        .client()
        .get(format!("{}/v1/status", server.base))
        .bearer_auth("k")
        .header("x-request-id", "a b\tc".repeat(50))
        .send()
        .unwrap();
    let fresh = resp.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(fresh.len(), 36, "a UUID: {fresh}");

    assert_eq!(server.get("/metrics").status(), 401, "metrics need the key");
    let resp = server
        .client()
        .get(format!("{}/metrics", server.base))
        .bearer_auth("plain")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 403, "metrics need an operator key");
    let resp = server
        .client()
        .get(format!("{}/metrics", server.base))
        .bearer_auth("k")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let m = resp.text().unwrap();
    assert_eq!(sample(&m, "nsbox_runs_total{verdict=\"ok\"}"), 3.0);
    assert_eq!(sample(&m, "nsbox_runs_total{verdict=\"error\"}"), 1.0);
    assert_eq!(sample(&m, "nsbox_runs_total{verdict=\"refused\"}"), 1.0);
    assert_eq!(sample(&m, "nsbox_runs_total{verdict=\"limit\"}"), 1.0);
    assert_eq!(
        sample(&m, "nsbox_limit_kills_total{limit=\"timeout\"}"),
        1.0
    );
    assert_eq!(sample(&m, "nsbox_limit_kills_total{limit=\"output\"}"), 1.0);
    assert_eq!(
        sample(&m, "nsbox_run_duration_seconds_count{start=\"warm\"}"),
        5.0
    );
    assert_eq!(sample(&m, "nsbox_template_forks_total"), 5.0);
    assert_eq!(sample(&m, "nsbox_request_duration_seconds_count"), 6.0);
    let timed_out_bucket = sample(
        &m,
        "nsbox_run_duration_seconds_bucket{le=\"0.64\",start=\"warm\"}",
    );
    assert!(
        (4.0..=5.0).contains(&timed_out_bucket),
        "the 1 s timeout is above 0.64 s: {timed_out_bucket}"
    );
    assert_eq!(sample(&m, "nsbox_queue_depth"), 0.0);
    assert_eq!(sample(&m, "nsbox_active_runs"), 0.0);
    assert_eq!(sample(&m, "nsbox_template_respawns_total"), 0.0);
    assert!(m.ends_with("# EOF\n"));

    // Every log line is JSON; a run's lines carry its request id, user and code hash,
    // and never the code.
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log.lock().unwrap().clone();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let finished: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "run finished")
        .collect();
    assert_eq!(finished.len(), 5, "{log}");
    let first = finished
        .iter()
        .find(|l| l["span"]["request_id"] == "test-0")
        .expect("the run of print(1) logged with its request id");
    assert_eq!(first["span"]["user"], "alice");
    assert_eq!(first["span"]["code_sha256"], sha256_hex("print(1)"));
    assert!(!log.contains("while True"), "code must not be logged");
}

fn sha256_hex(s: &str) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn systemd_is_told_when_the_server_is_ready_and_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let server = Server::start_with_env(&[], &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("no READY=1 within 60 s");
    assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
    assert_eq!(
        server.get("/v1/health").status(),
        200,
        "ready means healthy"
    );
    assert!(server.stop().success());
    let n = socket.recv(&mut buf).expect("no STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

/// Untrusted code is what the host's OOM killer takes first, warm or cold.
#[test]
fn runs_are_the_oom_killers_first_choice() {
    let code = "print(open('/proc/self/oom_score_adj').read().strip())";
    for mode in ["warm", "cold"] {
        let server = Server::start(&["--scanner", "off", "--mode", mode]);
        assert_eq!(server.run(code)["stdout"], "1000\n", "{mode}");
        let own = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", server.pid())).unwrap();
        assert_ne!(own.trim(), "1000", "the server itself keeps its score");
    }
}
