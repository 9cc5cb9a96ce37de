//! The configuration: one typed set of options, read from a TOML file and overridden by
//! environment variables and then by command-line flags, validated before anything starts.
//!
//! Every option has one name in all three places: the TOML key `memory_mib`, the
//! variable `NSBOX_MEMORY_MIB` and the flag `--memory-mib`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::service::session_ids::NodeTag;

/// What the pre-execution scanner does with flagged code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScannerMode {
    Enforce,
    Report,
    Off,
}

/// Where runs start: forked from a warm zygote, or in a fresh interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    Warm,
    Cold,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event, coloured on a terminal.
    Human,
    /// One JSON object per line, with the run's span fields (request id, user, code hash).
    Json,
}

/// One API key with its options: a `[[keys]]` table of the configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub key: String,
    /// The key's weight in the shares of the run slots and the queue (default 1).
    #[serde(default = "weight_one")]
    pub weight: u32,
    /// Whether the key sees the whole server in `/v1/status` and may read `/metrics`.
    #[serde(default)]
    pub operator: bool,
    /// The hosts this key's runs may reach (docs/egress.md), within `[egress] allow`;
    /// `None` takes `[egress] allow` as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_allow: Option<Vec<String>>,
}

fn weight_one() -> u32 {
    1
}

impl KeyEntry {
    fn plain(key: String) -> KeyEntry {
        KeyEntry {
            key,
            weight: 1,
            operator: false,
            egress_allow: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("reading api_keys_file {path}: {source}")]
    KeysFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: `{field}` {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.into(),
    }
}

/// Everything an operator can set. The defaults work on a fresh machine, listening on
/// loopback only; units are in the names or said below.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The root filesystem built by `scripts/build-rootfs.sh`.
    pub rootfs: PathBuf,
    /// Runs executing at once; further requests queue.
    pub max_running: usize,
    /// Requests (scanning, queued or running) one `x-relaxai-userid` of an API key may
    /// have; `None` = half of the key's share, at least 1.
    pub max_running_per_user: Option<usize>,
    /// Requests waiting for a slot; past this, 429 with Retry-After.
    pub max_queue: usize,
    /// Accepted `Authorization: Bearer` keys. Prefer `api_keys_file` or the environment
    /// over writing keys into a world-readable file.
    pub api_keys: Vec<String>,
    /// A file with one API key per line (blank lines and `#` comments ignored).
    pub api_keys_file: Option<PathBuf>,
    /// Keys accepted like `api_keys` that also see the whole server: every key's runs and
    /// sessions in `/v1/status`, and `/metrics`.
    pub operator_keys: Vec<String>,
    /// Keys with options (`[[keys]]` tables: `key`, `weight`, `operator`).
    pub keys: Vec<KeyEntry>,
    /// Timeout of a request that gives none, seconds.
    pub default_timeout: f64,
    /// Largest timeout a request may ask for, seconds.
    pub max_timeout: f64,
    /// Memory per run, MiB.
    pub memory_mib: u64,
    /// Processes and threads per run.
    pub max_processes: u64,
    /// CPU time per run, seconds.
    pub cpu_seconds: u64,
    /// CPU bandwidth per run, CPUs.
    pub cpus: f64,
    /// Size of each run's private /tmp, MiB.
    pub tmp_mib: u64,
    /// Captured stdout and stderr per run, KiB each.
    pub output_kib: usize,
    /// First host uid/gid of the 65536 ids mapped into runs.
    pub uid_base: u32,
    /// Use cgroups for memory, process and CPU limits.
    pub cgroups: bool,
    /// Remount the host's cgroup2 with `favordynmods` (machine-wide) so runs join their
    /// cgroups without the attach lock's wait; false keeps the host's mount as it is and
    /// uses the keeper instead.
    pub favordynmods: bool,
    /// Serve the web playground and status page at `/`.
    pub ui: bool,
    /// Start even when part of the isolation (cgroups) cannot be had, with rlimits only.
    pub allow_incomplete_isolation: bool,
    /// `warm` forks runs from warm interpreters; `cold` starts a fresh one per run.
    pub mode: RunMode,
    /// nsbox built as a shared library for the warm interpreters; `None` = `libnsbox_sandbox.so`
    /// beside the binary.
    pub warm_library: Option<PathBuf>,
    /// Runs a warm interpreter forks before it is replaced. A zygote runs no code of the runs
    /// and keeps its memory over its forks (tests/floor.rs), while each replacement costs a
    /// warm-up (about 2.5 s of CPU for the scientific and ml pair): at 500, under a steady
    /// pandas load, that was a sixth of the CPU, and concurrency 8 served 19 % fewer runs.
    pub max_forks: u32,
    /// Warm interpreters put their memory in transparent huge pages after warming up, so
    /// each run's copies of it are cheap.
    pub huge_pages: bool,
    /// Each warm run holds one copy of its zygote: Python is the zygote's only fork and
    /// PID 1 a few-KiB program the zygote execs (false: PID 1 is a second fork).
    pub nested_runs: bool,
    /// Ready sandboxes kept per warm template, built ahead of requests (each used once);
    /// 0 builds every run's sandbox at its request.
    pub pool_size: usize,
    /// Seconds without a request after which the pool keeps one ready sandbox per template.
    pub pool_idle: u64,
    /// The templates kept warm. Each has everything the one before it has (base ⊂
    /// scientific ⊂ ml): a run whose template is not kept forks from the next larger one.
    pub warm_templates: Vec<crate::sandbox::warm::Template>,
    /// Seconds runs in flight may take to finish after SIGTERM.
    pub shutdown_grace: f64,
    /// `enforce`, `report` or `off`.
    pub scanner: ScannerMode,
    /// `human` or `json`.
    pub log_format: LogFormat,
    /// Files a request may send, and a run may return (each way).
    pub files_max_count: usize,
    /// Largest file a request may send or a run return, MiB.
    pub file_max_mib: u64,
    /// All files a request may send, or a run return (each way), MiB.
    pub files_max_mib: u64,
    /// Sessions open at once, in all.
    pub max_sessions: usize,
    /// Sessions open at once per API key.
    pub max_sessions_per_key: usize,
    /// Memory all sessions may hold together, MiB: each reserves its `memory_mib`.
    pub session_memory_budget_mib: u64,
    /// Seconds a session may stay unused before it is ended, when it asks for no TTL.
    pub session_idle_ttl: u64,
    /// The largest `ttl_seconds` a session may ask for.
    pub session_max_idle_ttl: u64,
    /// Seconds a session may live, however busy.
    pub session_max_lifetime: u64,
    /// Events a streamed run may have waiting for a slow client (after text is merged);
    /// past this the stream and the run end.
    pub stream_backlog_events: usize,
    /// File content attached to one MCP tool result, KiB in all; the rest is listed by
    /// path and size (fetched with `download_file` in a session).
    pub mcp_attach_kib: u64,
    /// Characters of text one MCP tool result gives a model (output, results, notes);
    /// past it the head and the tail are kept.
    pub mcp_text_chars: usize,
    /// One notebook result, KiB as JSON; past it the result keeps its plain text.
    pub result_max_kib: usize,
    /// All of a run's notebook results, MiB as JSON.
    pub results_max_mib: usize,
    /// Rows of a DataFrame's markdown table in a result (head and tail).
    pub result_markdown_rows: usize,
    /// Seconds a request's head may take to arrive, from its first byte.
    pub header_timeout: f64,
    /// Seconds a request's body may take to arrive, from the end of its head.
    pub body_timeout: f64,
    /// Seconds a connection may stay open with no request on it (silent since it opened,
    /// or idle between keep-alive requests).
    pub idle_timeout: f64,
    /// Client connections open at once; past this only `/v1/health` is answered, on a
    /// few reserved connections.
    pub max_connections: usize,
    /// Client connections open at once from one peer address; `None` = no cap of its own.
    pub max_connections_per_peer: Option<usize>,
    /// Largest request body on `/mcp`, MiB.
    pub mcp_max_body_mib: u64,
    /// Request bodies over 1 MiB read and parsed at once; more wait for their turn.
    pub max_large_bodies: usize,
    /// This node's name in its session ids (`sess_<node>_<hex>`), which a load balancer
    /// routes by: 1 to 32 of `a-z`, `0-9`, `-`; `None` = from the hostname.
    pub node: Option<String>,
    /// The egress door (docs/egress.md): hosts runs may reach through nsbox's own proxy,
    /// and the limits on it. `None` (no `[egress]` table): runs have no network at all.
    /// A table, so deploy/nsbox.toml shows it commented out after the top-level keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<crate::egress::EgressConfig>,
    /// Packages on demand (docs/egress.md): `libraries` the tree lacks installed from
    /// `index_url` in a sandbox and cached. `None` (no `[packages]` table): off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packages: Option<crate::packages::PackagesConfig>,
}

/// Where `nsbox` finds the root filesystem when nothing says otherwise.
pub const DEFAULT_ROOTFS: &str = "/var/lib/nsbox/rootfs";

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            rootfs: PathBuf::from(DEFAULT_ROOTFS),
            max_running: 8,
            max_running_per_user: None,
            max_queue: 64,
            api_keys: Vec::new(),
            api_keys_file: None,
            operator_keys: Vec::new(),
            keys: Vec::new(),
            default_timeout: 30.0,
            max_timeout: 300.0,
            memory_mib: 512,
            max_processes: 64,
            cpu_seconds: 60,
            cpus: 1.0,
            tmp_mib: 64,
            output_kib: 1024,
            uid_base: 1_000_000_000,
            cgroups: true,
            favordynmods: true,
            ui: true,
            allow_incomplete_isolation: false,
            mode: RunMode::Warm,
            warm_library: None,
            max_forks: 10_000,
            huge_pages: true,
            nested_runs: true,
            pool_size: 2,
            pool_idle: 60,
            warm_templates: crate::sandbox::warm::Template::ALL.to_vec(),
            shutdown_grace: 15.0,
            scanner: ScannerMode::Enforce,
            log_format: LogFormat::Human,
            files_max_count: 32,
            file_max_mib: 16,
            files_max_mib: 32,
            max_sessions: 32,
            max_sessions_per_key: 8,
            session_memory_budget_mib: 4096,
            session_idle_ttl: 600,
            session_max_idle_ttl: 3600,
            session_max_lifetime: 14_400,
            stream_backlog_events: crate::service::events::DEFAULT_MAX_EVENTS,
            mcp_attach_kib: 256,
            mcp_text_chars: 20_000,
            result_max_kib: 2048,
            results_max_mib: 24,
            result_markdown_rows: 20,
            header_timeout: 10.0,
            body_timeout: 60.0,
            idle_timeout: 60.0,
            max_connections: 1024,
            max_connections_per_peer: None,
            mcp_max_body_mib: 4,
            max_large_bodies: 4,
            node: None,
            egress: None,
            packages: None,
        }
    }
}

impl Config {
    /// The defaults overlaid with `path`'s keys, or the defaults alone without a file.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text; the message names the offending key and line.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Checks values no type can: ranges and relations between options.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |field: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(invalid(field, format!("must be a number above 0, got {v}")))
            }
        };
        let nonzero = |field: &'static str, v: u64| {
            if v > 0 {
                Ok(())
            } else {
                Err(invalid(field, "must be at least 1"))
            }
        };
        positive("default_timeout", self.default_timeout)?;
        let templates = &self.warm_templates;
        if templates.is_empty()
            || (1..templates.len()).any(|i| templates[..i].contains(&templates[i]))
        {
            return Err(invalid(
                "warm_templates",
                "must name each of base, scientific and ml at most once, and at least one",
            ));
        }
        positive("max_timeout", self.max_timeout)?;
        positive("cpus", self.cpus)?;
        positive("header_timeout", self.header_timeout)?;
        positive("body_timeout", self.body_timeout)?;
        positive("idle_timeout", self.idle_timeout)?;
        if self.default_timeout > self.max_timeout {
            return Err(invalid(
                "default_timeout",
                format!(
                    "({} s) must not exceed max_timeout ({} s)",
                    self.default_timeout, self.max_timeout
                ),
            ));
        }
        if !(self.shutdown_grace.is_finite() && self.shutdown_grace >= 0.0) {
            return Err(invalid("shutdown_grace", "must be 0 or more seconds"));
        }
        nonzero("max_running", self.max_running as u64)?;
        nonzero("memory_mib", self.memory_mib)?;
        nonzero("max_processes", self.max_processes)?;
        nonzero("cpu_seconds", self.cpu_seconds)?;
        nonzero("tmp_mib", self.tmp_mib)?;
        nonzero("output_kib", self.output_kib as u64)?;
        nonzero("stream_backlog_events", self.stream_backlog_events as u64)?;
        nonzero("mcp_text_chars", self.mcp_text_chars as u64)?;
        nonzero("result_max_kib", self.result_max_kib as u64)?;
        nonzero("results_max_mib", self.results_max_mib as u64)?;
        nonzero("result_markdown_rows", self.result_markdown_rows as u64)?;
        nonzero("max_forks", self.max_forks.into())?;
        nonzero("file_max_mib", self.file_max_mib)?;
        nonzero("files_max_mib", self.files_max_mib)?;
        nonzero("session_idle_ttl", self.session_idle_ttl)?;
        if self.session_idle_ttl > self.session_max_idle_ttl {
            return Err(invalid(
                "session_idle_ttl",
                format!(
                    "({} s) must not exceed session_max_idle_ttl ({} s)",
                    self.session_idle_ttl, self.session_max_idle_ttl
                ),
            ));
        }
        nonzero("session_max_lifetime", self.session_max_lifetime)?;
        nonzero("max_connections", self.max_connections as u64)?;
        nonzero("mcp_max_body_mib", self.mcp_max_body_mib)?;
        nonzero("max_large_bodies", self.max_large_bodies as u64)?;
        if self.max_connections_per_peer == Some(0) {
            return Err(invalid("max_connections_per_peer", "must be at least 1"));
        }
        if self.files_max_mib > 64 {
            // A run's outcome, files in base64 included, travels as one frame of at most
            // 128 MiB.
            return Err(invalid("files_max_mib", "must be at most 64 MiB"));
        }
        if self.file_max_mib > self.files_max_mib {
            return Err(invalid(
                "file_max_mib",
                format!(
                    "({} MiB) must not exceed files_max_mib ({} MiB)",
                    self.file_max_mib, self.files_max_mib
                ),
            ));
        }
        if let Some(node) = &self.node {
            NodeTag::new(node).map_err(|e| invalid("node", e.to_string()))?;
        }
        if let Some(egress) = &self.egress {
            crate::egress::Policy::from_config(egress, vec![self.listen])
                .map_err(|e| invalid("egress", e.to_string()))?;
        }
        crate::egress::Policies::from_config(self).map_err(|e| invalid("keys", e))?;
        if let Some(packages) = &self.packages {
            crate::packages::Rules::from_config(packages, self.egress.as_ref(), self.listen)
                .map_err(|e| invalid("packages", e.to_string()))?;
        }
        if self.max_running_per_user == Some(0) {
            return Err(invalid("max_running_per_user", "must be at least 1"));
        }
        // Shifting MiB into bytes must not wrap.
        for (field, v) in [
            ("memory_mib", self.memory_mib),
            ("tmp_mib", self.tmp_mib),
            ("files_max_mib", self.files_max_mib),
            ("mcp_max_body_mib", self.mcp_max_body_mib),
            ("session_memory_budget_mib", self.session_memory_budget_mib),
        ] {
            if v > 1 << 40 {
                return Err(invalid(field, format!("{v} MiB is beyond any machine")));
            }
        }
        if self.uid_base == 0 || self.uid_base.checked_add(65535).is_none() {
            return Err(invalid(
                "uid_base",
                "must leave room for 65536 ids above it and not be 0 (root)",
            ));
        }
        if self.api_keys.iter().any(|k| k.trim().is_empty()) {
            return Err(invalid("api_keys", "must not contain empty keys"));
        }
        if self.operator_keys.iter().any(|k| k.trim().is_empty()) {
            return Err(invalid("operator_keys", "must not contain empty keys"));
        }
        if self.keys.iter().any(|k| k.key.trim().is_empty()) {
            return Err(invalid("keys", "must not contain empty keys"));
        }
        if self.keys.iter().any(|k| k.weight == 0) {
            return Err(invalid("keys", "`weight` must be at least 1"));
        }
        Ok(())
    }

    /// The node tag of this server's session ids: `node`, or one from the hostname.
    pub fn node_tag(&self) -> NodeTag {
        self.node
            .as_deref()
            .and_then(|n| NodeTag::new(n).ok())
            .unwrap_or_else(NodeTag::of_this_host)
    }

    /// Every accepted key with its options: `api_keys`, the lines of `api_keys_file`,
    /// `operator_keys` and `keys`. A key given more than once is one key, with the largest
    /// weight given and operator if any entry says so.
    pub fn all_api_keys(&self) -> Result<Vec<KeyEntry>, ConfigError> {
        let mut keys: Vec<KeyEntry> = self.api_keys.iter().cloned().map(KeyEntry::plain).collect();
        if let Some(path) = &self.api_keys_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::KeysFile {
                path: path.clone(),
                source,
            })?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|l| KeyEntry::plain(l.to_string())),
            );
        }
        keys.extend(self.operator_keys.iter().map(|k| KeyEntry {
            operator: true,
            ..KeyEntry::plain(k.clone())
        }));
        keys.extend(self.keys.iter().cloned());
        let mut merged: Vec<KeyEntry> = Vec::new();
        for entry in keys {
            match merged.iter_mut().find(|m| m.key == entry.key) {
                Some(m) => {
                    m.weight = m.weight.max(entry.weight);
                    m.operator |= entry.operator;
                    m.egress_allow = m.egress_allow.take().or(entry.egress_allow);
                }
                None => merged.push(entry),
            }
        }
        Ok(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults_and_they_are_valid() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn keys_set_their_fields() {
        let c = Config::parse(
            "listen = \"0.0.0.0:9000\"\nmemory_mib = 256\nmode = \"cold\"\nscanner = \"off\"\n\
             cpus = 0.5\napi_keys = [\"k1\"]\nlog_format = \"json\"\n",
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.memory_mib, 256);
        assert_eq!(c.mode, RunMode::Cold);
        assert_eq!(c.scanner, ScannerMode::Off);
        assert_eq!(c.cpus, 0.5);
        assert_eq!(c.api_keys, vec!["k1".to_string()]);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.max_running, 8, "unset keys keep their defaults");
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_field() {
        let e = Config::parse("memory_mb = 5\n").unwrap_err();
        assert!(e.contains("memory_mb"), "{e}");
        let e = Config::parse("max_running = \"eight\"\n").unwrap_err();
        assert!(e.contains("max_running"), "{e}");
        let e = Config::parse("mode = \"tepid\"\n").unwrap_err();
        assert!(e.contains("mode"), "{e}");
        let e = Config::parse("listen = \"nowhere\"\n").unwrap_err();
        assert!(e.contains("listen"), "{e}");
    }

    #[test]
    fn impossible_values_name_the_field() {
        let cases: [(&str, &str); 10] = [
            ("default_timeout = 0", "default_timeout"),
            ("default_timeout = 400", "default_timeout"),
            ("cpus = -1", "cpus"),
            ("max_running = 0", "max_running"),
            ("memory_mib = 0", "memory_mib"),
            ("uid_base = 0", "uid_base"),
            ("max_running_per_user = 0", "max_running_per_user"),
            ("api_keys = [\"\"]", "api_keys"),
            ("node = \"\"", "node"),
            ("node = \"Node_1\"", "node"),
        ];
        for (text, field) in cases {
            let e = Config::parse(text).unwrap().validate().unwrap_err();
            assert!(e.to_string().contains(&format!("`{field}`")), "{text}: {e}");
        }
    }

    #[test]
    fn the_egress_table_is_read_and_checked() {
        let c = Config::parse(
            "[egress]\nallow = [\"pypi.org\"]\n[egress.hosts]\n\"m.internal\" = \"10.0.0.5\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.egress.as_ref().unwrap().allow, ["pypi.org"]);
        assert_eq!(c.egress.as_ref().unwrap().max_connections, 64);
        let e = Config::parse("[egress]\nallow = [\"a b\"]\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("`egress`") && e.contains("a b"), "{e}");
        assert!(Config::parse("[egress]\nalow = []\n")
            .unwrap_err()
            .contains("alow"));
    }

    #[test]
    fn the_packages_table_is_read_and_checked() {
        let c = Config::parse(
            "[packages]\nindex_url = \"http://mirror.internal:8080/simple/\"\ndeny = [\"Bad_Pkg\"]\n",
        )
        .unwrap();
        c.validate().unwrap();
        let rules =
            crate::packages::Rules::from_config(c.packages.as_ref().unwrap(), None, c.listen)
                .unwrap();
        assert_eq!(
            (rules.index_host.as_str(), rules.index_port),
            ("mirror.internal", 8080)
        );
        assert!(rules.admits("bad-pkg").unwrap_err().contains("deny list"));
        assert!(rules.admits("tabulate").is_ok());
        for (text, word) in [
            ("[packages]\n", "index_url"),
            ("[packages]\nindex_url = \"ftp://x/\"\n", "ftp"),
            (
                "[packages]\nindex_url = \"http://x/\"\nmax_installed_mib = 65\n",
                "max_installed_mib",
            ),
            (
                "[packages]\nindex_url = \"http://x/\"\ninstall_seconds = 0\n",
                "install_seconds",
            ),
        ] {
            let e = Config::parse(text)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains("`packages`") && e.contains(word), "{text}: {e}");
        }
    }

    #[test]
    fn keys_file_lines_are_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# ops team\nalpha\n\n  beta  \n").unwrap();
        let c = Config {
            api_keys: vec!["inline".into()],
            api_keys_file: Some(path),
            ..Config::default()
        };
        let keys: Vec<String> = c
            .all_api_keys()
            .unwrap()
            .into_iter()
            .map(|k| k.key)
            .collect();
        assert_eq!(keys, ["inline", "alpha", "beta"]);
    }

    #[test]
    fn keys_carry_weights_and_operators() {
        let c = Config::parse(
            "api_keys = [\"a\", \"b\"]\noperator_keys = [\"ops\"]\n\
             [[keys]]\nkey = \"b\"\nweight = 3\n\
             [[keys]]\nkey = \"c\"\noperator = true\n",
        )
        .unwrap();
        c.validate().unwrap();
        let keys = c.all_api_keys().unwrap();
        let got: Vec<(&str, u32, bool)> = keys
            .iter()
            .map(|k| (k.key.as_str(), k.weight, k.operator))
            .collect();
        assert_eq!(
            got,
            [
                ("a", 1, false),
                ("b", 3, false),
                ("ops", 1, true),
                ("c", 1, true)
            ]
        );
        let e = Config::parse("[[keys]]\nkey = \"x\"\nweight = 0\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("`keys`"), "{e}");
        let e = Config::parse("[[keys]]\nkey = \"x\"\nwieght = 2\n").unwrap_err();
        assert!(e.contains("wieght"), "{e}");
    }
}
