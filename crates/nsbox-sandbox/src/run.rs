//! What one run is asked to do and what it reports back: its limits, the request (with the warm template it forks from), and the outcome.
//!
//! Plain data, serialized between the server and a supervisor; nothing here imports the
//! modules that act on it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Per-run resource limits. Every field is enforced by the kernel (cgroup or rlimit).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// Wall-clock limit; the whole process tree is killed when it passes.
    pub timeout_ms: u64,
    /// Memory (cgroup memory limit, swap off for the run).
    pub memory_bytes: u64,
    /// Processes and threads (cgroup pids limit and RLIMIT_NPROC).
    pub max_processes: u64,
    /// CPU time (RLIMIT_CPU), seconds.
    pub cpu_seconds: u64,
    /// CPU bandwidth (cgroup CPU quota), in CPUs.
    pub cpus: f64,
    /// Largest file a run may write (RLIMIT_FSIZE).
    pub file_size_bytes: u64,
    /// Size of the private `/tmp` tmpfs.
    pub tmp_bytes: u64,
    /// Open files (RLIMIT_NOFILE).
    pub open_files: u64,
    /// Captured bytes of stdout and of stderr, each.
    pub output_bytes: usize,
    /// Number of plots returned.
    pub max_plots: usize,
    /// Total PNG bytes of the plots returned.
    pub plot_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 30_000,
            memory_bytes: 512 << 20,
            max_processes: 64,
            cpu_seconds: 60,
            cpus: 1.0,
            file_size_bytes: 64 << 20,
            tmp_bytes: 64 << 20,
            open_files: 256,
            output_bytes: 1 << 20,
            max_plots: 16,
            plot_bytes: 16 << 20,
        }
    }
}

impl Limits {
    /// Whether a sandbox built under these limits (a ready one, from the pool) can serve a
    /// request with `asked`: everything set while the sandbox is built (cgroup, `/tmp`'s
    /// size, the rlimits, the environment) is the same. The timeout and the CPU time
    /// differ per request (a session's CPU time spans its life): they are applied when the
    /// sandbox is claimed; the output caps are the supervisor's.
    pub fn built_alike(&self, asked: &Limits) -> bool {
        let baked = |l: &Limits| {
            (
                l.memory_bytes,
                l.max_processes,
                l.cpus.to_bits(),
                l.file_size_bytes,
                l.tmp_bytes,
                l.open_files,
                l.max_plots,
            )
        };
        baked(self) == baked(asked)
    }
}

/// One run, as sent from the server to a supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRequest {
    pub code: String,
    pub limits: Limits,
    /// The warm template to fork from, or `None` for a cold interpreter.
    pub template: Option<Template>,
    /// The server's id of the request (`x-request-id`), for the supervisor's log lines.
    #[serde(default)]
    pub request_id: Option<String>,
    /// Whether the supervisor sends the output as it comes ([`Report::Event`]) before the
    /// outcome.
    #[serde(default)]
    pub stream: bool,
    /// Files written into the run's working directory before the code starts.
    #[serde(default)]
    pub files: Vec<InputFile>,
    /// Whether (and under which caps) the files the code creates or changes come back.
    #[serde(default)]
    pub collect_files: Option<FileCaps>,
    /// Starts a session (an interpreter that stays for [`SessionOp`]s) instead of a run;
    /// `code` is then empty.
    #[serde(default)]
    pub session: bool,
    /// Whether (and under which caps) the run returns notebook results: its last
    /// expression's value, what it displays, its figures, and its exception as data.
    #[serde(default)]
    pub results: Option<ResultCaps>,
    /// The port of the egress proxy's listener on the run's own loopback (docs/egress.md),
    /// when the run may reach the network through nsbox; `None`: no listener and no proxy
    /// variables, the sealed sandbox.
    #[serde(default)]
    pub egress_port: Option<u16>,
    /// Certificates (PEM) the run trusts beside the tree's own bundle when it has a door:
    /// the operator's `[egress] ca_file`, for upstreams signed by a private CA.
    #[serde(default)]
    pub egress_ca: Option<String>,
    /// A cached package set (docs/egress.md, "Packages on demand"): the name of its
    /// directory under the spawner's `packages` directory, bind-mounted read-only at
    /// [`SITE_DIR`] and appended to `sys.path` by the harness; `None`: the tree alone.
    #[serde(default)]
    pub site: Option<String>,
}

impl RunRequest {
    /// Whether a ready sandbox (built ahead, with neither) could serve this run as far as
    /// the run itself goes: no egress door to make and no package set to mount. The
    /// server's hand-off key and the pooled supervisor's own check both ask this.
    pub fn needs_nothing_built_per_run(&self) -> bool {
        self.egress_port.is_none() && self.site.is_none()
    }
}

/// Where a run sees its cached package set (an empty directory of every tree).
pub const SITE_DIR: &str = "/opt";

/// Whether `name` can be a cache entry's directory name: lowercase hex only, so it never
/// names a path outside the packages directory.
pub fn is_site_name(name: &str) -> bool {
    (16..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Caps on a run's notebook results. The harness keeps to them (a result past a cap keeps
/// its plain text, marked truncated); the supervisor holds frames to them again, since the
/// code can write frames itself.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ResultCaps {
    /// Results per run.
    pub max_count: usize,
    /// One result, as JSON.
    pub max_bytes: usize,
    /// All of a run's results, as JSON.
    pub max_total_bytes: usize,
    /// Rows of a DataFrame's markdown table (head and tail).
    pub markdown_rows: usize,
}

impl Default for ResultCaps {
    fn default() -> Self {
        ResultCaps {
            max_count: 256,
            max_bytes: 2 << 20,
            max_total_bytes: 24 << 20,
            markdown_rows: 20,
        }
    }
}

/// Text that is one JSON value, checked when it was taken from a run. A run's results stay
/// text all the way to the client: built into a value tree, hostile JSON takes many times
/// its size.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct JsonText(String);

impl JsonText {
    /// `text` if it is one JSON value.
    pub fn new(text: &str) -> Option<JsonText> {
        serde_json::from_str::<serde::de::IgnoredAny>(text).ok()?;
        Some(JsonText(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The MIME type of nsbox's summary of a matplotlib figure (docs/results.md).
pub const CHART_MIME: &str = "application/vnd.nsbox.chart+json";

/// Which Jupyter output a result is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutputType {
    /// The value of the code's last expression.
    ExecuteResult,
    /// What the code displayed, and the figures it showed.
    DisplayData,
}

/// One Jupyter output object (nbformat v4), its MIME values as checked JSON text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NotebookOutput {
    pub output_type: OutputType,
    pub data: BTreeMap<String, JsonText>,
    /// A JSON object.
    pub metadata: JsonText,
}

/// The exception a run's code raised, in nbformat's error shape, with the line of the code
/// it was raised at.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NotebookError {
    pub ename: String,
    pub evalue: String,
    pub traceback: Vec<String>,
    pub lineno: Option<u64>,
}

/// The working directory of every run: the code's current directory, on its private /tmp.
pub const WORKDIR: &str = "/tmp/work";

/// A file written into the working directory before the code starts. The content stays
/// base64 from the client to the harness, which decodes it inside the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputFile {
    /// Relative to the working directory, checked by the server (no `..`, no absolute part).
    pub path: String,
    pub content_base64: String,
    /// Added at the end of the file instead of replacing it: a session's upload in pieces.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub append: bool,
}

/// Caps on the files a run returns; a file past them is listed without content.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct FileCaps {
    pub max_count: usize,
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
}

/// A file the code created or changed in the working directory (or one a session was asked
/// to list or read).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutputFile {
    pub path: String,
    pub size: u64,
    /// `None` when listed only: past a cap (`truncated`), or in a listing.
    pub content_base64: Option<String>,
    /// Past a cap: listed without content.
    pub truncated: bool,
}

/// A file the code created or changed in the working directory that is not returned, and
/// why: the response says so in its metadata, not in the code's stderr.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SkippedFile {
    pub path: String,
    pub reason: SkipReason,
}

/// Why a file of the working directory is not returned.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// A symbolic link: never followed.
    Symlink,
    /// A FIFO, a socket or a device node.
    NotRegularFile,
    /// A directory deeper than the walk goes (32 levels).
    TooDeep,
    /// The walk stopped here: the working directory has more entries than it looks at.
    EntryLimit,
}

/// What the server asks of a session once it is started, one at a time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SessionOp {
    /// Runs code in the session's interpreter (its `session` and `template` are ignored).
    Run { request: Box<RunRequest> },
    /// Lists the regular files of the working directory.
    ListFiles { request_id: Option<String> },
    /// Reads one file of the working directory, under the caps.
    ReadFile {
        path: String,
        caps: FileCaps,
        request_id: Option<String>,
    },
    /// Writes one file into the working directory.
    WriteFile {
        file: InputFile,
        request_id: Option<String>,
    },
}

/// Output of a run as it happens, for callers that asked to stream it. Only what the caps
/// keep is sent, so what streams is bounded like what is captured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunEvent {
    /// Text written to stdout since the last event, cut at character boundaries.
    Stdout { text: String },
    /// Text written to stderr since the last event, cut at character boundaries.
    Stderr { text: String },
    /// A figure, complete, as it will appear in the outcome.
    Plot { plot: Plot },
    /// A notebook result, as it will appear in the outcome.
    Display { output: NotebookOutput },
}

/// What a supervisor writes on a run's socket: events while the run goes on (when the
/// request asked to stream), then exactly one outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "snake_case")]
pub enum Report {
    Event { event: RunEvent },
    Done { outcome: Box<RunOutcome> },
}

/// How a run ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Termination {
    /// Python exited by itself with this status.
    Exited { code: i32 },
    /// Python was killed by a signal nsbox did not send (e.g. SIGSEGV, SIGXCPU).
    Signaled { signal: i32 },
    /// The wall-clock limit passed and the run was killed.
    TimedOut,
    /// The memory limit was hit and the kernel killed the run.
    OutOfMemory,
    /// The sandbox could not be set up; `step` names what failed.
    SetupFailed { step: String, errno: i32 },
    /// The client went away and the run was killed.
    Cancelled,
}

/// A figure returned by the run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plot {
    pub content_base64: String,
    pub format: String,
    pub filename: String,
}

/// A limit that cut a run short without ending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cut {
    /// The process limit refused a fork.
    Processes,
    /// stdout or stderr were truncated.
    Output,
    /// Plots were dropped.
    Plots,
}

/// What the supervisor reports when a run is over and everything it started is gone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOutcome {
    pub termination: Termination,
    pub stdout: String,
    pub stderr: String,
    pub plots: Vec<Plot>,
    /// What cut the run short without ending it (output caps, plot caps, pids); stderr
    /// says so in words.
    pub cut_short: Vec<Cut>,
    pub wall_ms: u64,
    /// Peak memory of the run's cgroup, when cgroups are in use.
    pub peak_memory_bytes: Option<u64>,
    /// Whether the run was forked from a warm template.
    pub warm: bool,
    /// Files created or changed in the working directory, when the request asked for them.
    #[serde(default)]
    pub files: Vec<OutputFile>,
    /// Files created or changed that are not returned (links, FIFOs...), with the reason.
    #[serde(default)]
    pub skipped_files: Vec<SkippedFile>,
    /// Memory the run's cgroup holds when the outcome is written (a session's, between
    /// calls), when cgroups are in use.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// For a session: why this call (or op) ended the session, which is gone once this
    /// outcome is written.
    #[serde(default)]
    pub session_ended: Option<String>,
    /// Notebook results, in the order the code produced them, when the request asked.
    #[serde(default)]
    pub results: Vec<NotebookOutput>,
    /// The exception the code raised, when the request asked for results.
    #[serde(default)]
    pub error: Option<NotebookError>,
}

/// Which warm interpreter a run forks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// The standard library only: small and quick to fork.
    Base,
    /// numpy, pandas, scipy, matplotlib and seaborn imported and exercised, with pandas'
    /// Excel and Parquet engines.
    Scientific,
    /// The scientific template plus scikit-learn and statsmodels.
    Ml,
}

impl Template {
    pub const ALL: [Template; 3] = [Template::Base, Template::Scientific, Template::Ml];

    pub fn name(self) -> &'static str {
        match self {
            Template::Base => "base",
            Template::Scientific => "scientific",
            Template::Ml => "ml",
        }
    }

    /// The template a run of this one is forked from when only those `kept` are warm:
    /// itself, or else the smallest kept one that has everything it has (each template is
    /// the one before it plus more).
    pub fn served_by(self, kept: impl Fn(Template) -> bool) -> Option<Template> {
        Template::ALL
            .into_iter()
            .skip_while(|t| *t != self)
            .find(|t| kept(*t))
    }
}

/// Top-level modules that only the scientific (and ml) template has warm, and the
/// distribution names a request's `libraries` may give for them. Plotly Express and Altair
/// are not warm themselves, but they import pandas: forked from this template they find it
/// loaded.
const SCIENTIFIC: [&str; 14] = [
    "plotly",
    "altair",
    "numpy",
    "pandas",
    "scipy",
    "matplotlib",
    "seaborn",
    "PIL",
    "pillow",
    "dateutil",
    "python-dateutil",
    "pytz",
    "openpyxl",
    "fastparquet",
];

/// Top-level modules (and distribution names) that only the ml template has warm.
const ML: [&str; 6] = [
    "sklearn",
    "scikit-learn",
    "statsmodels",
    "patsy",
    "joblib",
    "threadpoolctl",
];

/// Picks the template from the modules the code imports and the `libraries` it asked for.
pub fn template_for(imported: &[String], libraries: &[String]) -> Template {
    // Distribution names compare as PEP 503 does: `Scikit_Learn` is `scikit-learn`.
    let wants = |list: &[&str]| {
        imported.iter().chain(libraries).any(|m| {
            let top = m.split('.').next().unwrap_or("").replace('_', "-");
            list.iter().any(|s| s.eq_ignore_ascii_case(&top))
        })
    };
    if wants(&ML) {
        Template::Ml
    } else if wants(&SCIENTIFIC) {
        Template::Scientific
    } else {
        Template::Base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_not_kept_is_served_by_the_next_larger_one_kept() {
        let kept = |list: &'static [Template]| move |t| list.contains(&t);
        let base_ml = kept(&[Template::Base, Template::Ml]);
        assert_eq!(Template::Scientific.served_by(base_ml), Some(Template::Ml));
        assert_eq!(Template::Base.served_by(base_ml), Some(Template::Base));
        assert_eq!(Template::Ml.served_by(base_ml), Some(Template::Ml));
        let base_only = kept(&[Template::Base]);
        assert_eq!(Template::Scientific.served_by(base_only), None);
        let sci = kept(&[Template::Scientific]);
        assert_eq!(Template::Base.served_by(sci), Some(Template::Scientific));
    }

    #[test]
    fn a_sandbox_built_under_other_limits_does_not_fit_but_the_timeout_and_cpu_time_may_differ() {
        let built = Limits::default();
        let asked = Limits {
            timeout_ms: 1,
            cpu_seconds: 1,
            output_bytes: 1,
            plot_bytes: 1,
            ..Limits::default()
        };
        assert!(built.built_alike(&asked));
        for other in [
            Limits {
                memory_bytes: 1,
                ..Limits::default()
            },
            Limits {
                max_processes: 1,
                ..Limits::default()
            },
            Limits {
                cpus: 2.0,
                ..Limits::default()
            },
            Limits {
                file_size_bytes: 1,
                ..Limits::default()
            },
            Limits {
                tmp_bytes: 1,
                ..Limits::default()
            },
            Limits {
                open_files: 1,
                ..Limits::default()
            },
            Limits {
                max_plots: 1,
                ..Limits::default()
            },
        ] {
            assert!(!built.built_alike(&other), "{other:?}");
        }
    }

    #[test]
    fn scientific_imports_pick_the_scientific_template() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(template_for(&s(&["json", "math"]), &[]), Template::Base);
        assert_eq!(template_for(&s(&["pandas"]), &[]), Template::Scientific);
        assert_eq!(
            template_for(&s(&["scipy.stats"]), &[]),
            Template::Scientific
        );
        assert_eq!(
            template_for(&s(&["json"]), &s(&["numpy"])),
            Template::Scientific
        );
        assert_eq!(template_for(&s(&["numpyish"]), &[]), Template::Base);
        assert_eq!(
            template_for(&s(&["plotly.express"]), &[]),
            Template::Scientific
        );
        assert_eq!(template_for(&s(&["altair"]), &[]), Template::Scientific);
        assert_eq!(template_for(&s(&["openpyxl"]), &[]), Template::Scientific);
        for module in ["sklearn.linear_model", "statsmodels.formula.api", "patsy"] {
            assert_eq!(
                template_for(&s(&["pandas", module]), &[]),
                Template::Ml,
                "{module}"
            );
        }
        assert_eq!(
            template_for(&s(&["json"]), &s(&["Scikit_Learn"])),
            Template::Ml
        );
    }
}
