//! The libraries beside the core five, through the real server: Excel workbooks (openpyxl),
//! Parquet tables (fastparquet), scikit-learn, statsmodels, and joblib's `n_jobs=-1` held to
//! the run's thread and process limits. Snippets are in tests/fixtures/libraries/, shared
//! with the measurements in the README.

mod common;

use common::Server;
use serde_json::{json, Value};

const EXCEL: &str = include_str!("fixtures/libraries/excel.py");
const PARQUET: &str = include_str!("fixtures/libraries/parquet.py");
const SKLEARN: &str = include_str!("fixtures/libraries/sklearn_pipeline.py");
const STATSMODELS: &str = include_str!("fixtures/libraries/statsmodels_ols.py");
const N_JOBS: &str = include_str!("fixtures/libraries/n_jobs.py");

/// The libraries this suite is about, by distribution name, as the lock spells them.
const ADDED: [&str; 7] = [
    "openpyxl",
    "fastparquet",
    "scikit-learn",
    "joblib",
    "threadpoolctl",
    "statsmodels",
    "patsy",
];

/// A run that ended by itself, with status 0 and nothing on stderr (no warning either).
fn assert_clean(r: &Value) -> &str {
    assert_eq!(r["success"], true, "{r:#}");
    assert_eq!(r["exit_code"], 0, "{r:#}");
    assert_eq!(r["stderr"], "", "{r:#}");
    r["stdout"].as_str().unwrap()
}

fn field<'a>(stdout: &'a str, label: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no line starting {label:?} in:\n{stdout}"))
        .trim()
}

#[test]
fn an_xlsx_with_two_sheets_is_written_and_read_back() {
    let server = Server::start(&[]);
    let r = server.run(EXCEL);
    let out = assert_clean(&r);
    assert_eq!(field(out, "sheets:"), "['Sales', 'Staff']");
    assert_eq!(field(out, "total revenue:"), "361.75");
    assert_eq!(field(out, "first hire:"), "2021-03-01");
}

#[test]
fn a_parquet_table_round_trips() {
    let server = Server::start(&[]);
    let r = server.run(PARQUET);
    let out = assert_clean(&r);
    assert_eq!(
        field(out, "rows:"),
        "1000 columns: ['id', 'value', 'label', 'when']"
    );
    assert_eq!(
        field(out, "subset:"),
        "['id', 'label'] {'a': 250, 'b': 250, 'c': 250, 'd': 250}"
    );
}

#[test]
fn a_scikit_learn_pipeline_is_fitted_and_scored() {
    let server = Server::start(&[]);
    let r = server.run(SKLEARN);
    let out = assert_clean(&r);
    assert_eq!(
        field(out, "steps:"),
        "['standardscaler', 'logisticregression']"
    );
    let accuracy: f64 = field(out, "accuracy:").parse().unwrap();
    assert!(accuracy > 0.75, "{out}");
}

#[test]
fn a_statsmodels_ols_summary_is_printed() {
    let server = Server::start(&[]);
    let r = server.run(STATSMODELS);
    let out = assert_clean(&r);
    for part in [
        "OLS Regression Results",
        "Dep. Variable:",
        "R-squared:",
        "Intercept",
    ] {
        assert!(out.contains(part), "no {part:?} in the summary:\n{out}");
    }
    // "intercept=1.19 slope=2.07 r2=0.971"
    let fit: Vec<f64> = out
        .lines()
        .find(|l| l.starts_with("intercept="))
        .unwrap_or_else(|| panic!("no fit line in:\n{out}"))
        .split_whitespace()
        .map(|kv| kv.split_once('=').unwrap().1.parse().unwrap())
        .collect();
    let [intercept, slope, r2] = fit[..] else {
        panic!("cannot read the fit from:\n{out}")
    };
    assert!((intercept - 1.5).abs() < 0.5, "{out}");
    assert!((slope - 2.0).abs() < 0.1, "{out}");
    assert!(r2 > 0.9, "{out}");
}

/// `n_jobs=-1` asks joblib for every core the host has; OpenMP and BLAS would start a thread
/// per core too. Under a small pids limit the run must still finish, on one thread.
fn check_n_jobs(server: &Server, start: &str) {
    let r = server.run(N_JOBS);
    let stderr = r["stderr"].as_str().unwrap();
    assert!(
        !stderr.contains("process limit"),
        "{start}: the run hit the process limit:\n{r:#}"
    );
    let out = assert_clean(&r);
    assert_eq!(field(out, "effective_n_jobs:"), "1", "{start}: {out}");
    // Every native pool (numpy's and scipy's OpenBLAS, scikit-learn's OpenMP) at one
    // thread. threadpoolctl sees the pools in cold runs only (see the snippet).
    let pools = field(out, "pools:");
    if start == "cold" {
        assert_eq!(pools, "[('blas', 1), ('openmp', 1)]", "{start}: {out}");
    } else {
        assert!(
            pools == "[]" || pools == "[('blas', 1), ('openmp', 1)]",
            "{start}: {out}"
        );
    }
    assert_eq!(field(out, "threads:"), "1", "{start}: {out}");
}

// The snippet counts the run's threads with os.listdir, which the enforcing scanner refuses:
// the scanner only reports here, the limits are the kernel's either way.
#[test]
fn n_jobs_minus_one_stays_within_the_thread_and_process_limits() {
    let warm = Server::start(&["--max-processes", "8", "--scanner", "report"]);
    check_n_jobs(&warm, "warm");
    drop(warm);
    let cold = Server::start(&[
        "--max-processes",
        "8",
        "--scanner",
        "report",
        "--mode",
        "cold",
    ]);
    check_n_jobs(&cold, "cold");
}

#[test]
fn the_libraries_are_listed_with_their_locked_versions_and_accepted() {
    let server = Server::start(&[]);
    let listing: Value = server.get("/v1/tools/code/libraries").json().unwrap();
    let lock = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/rootfs/requirements.lock"
    ))
    .unwrap();
    for name in ADDED {
        let pin = lock
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}==")))
            .unwrap_or_else(|| panic!("{name} is not pinned in rootfs/requirements.lock"));
        let version = pin.split_whitespace().next().unwrap();
        assert_eq!(listing["libraries"][name], version, "{name}: {listing:#}");
    }
    // Asked for by distribution name, in any PEP 503 spelling.
    let r = server.run_with(json!({
        "code": "import openpyxl, fastparquet, sklearn, statsmodels.api\nprint('ok')",
        "lang": "python",
        "libraries": ["Scikit_Learn", "statsmodels", "openpyxl", "fastparquet"],
    }));
    assert_eq!(assert_clean(&r), "ok\n");
    let (status, err) = server.post(&json!({
        "code": "print(1)",
        "lang": "python",
        "libraries": ["scikit-learn", "tensorflow"],
    }));
    assert_eq!(status, 400, "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("unknown libraries: tensorflow"),
        "{message}"
    );
    assert!(message.contains("scikit-learn "), "{message}");
}
