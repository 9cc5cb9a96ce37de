//! The command line: `nsbox serve`, `nsbox run`, `nsbox check` and `nsbox mcp`, and how their options
//! combine with the configuration file and the environment (file < environment < flag).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, LogFormat};
use crate::config::{RunMode, ScannerMode};

#[derive(Debug, Parser)]
#[command(
    name = "nsbox",
    version,
    about = "Self-hosted code-execution API: untrusted Python in fresh Linux namespaces",
    long_about = "Self-hosted code-execution API: untrusted Python in fresh Linux namespaces.\n\n\
        Every option can be set in a TOML file (--config), where its key is the flag's name \
        with `_` for `-` (memory_mib = 256), in the environment (NSBOX_MEMORY_MIB=256), or \
        as a flag (--memory-mib 256); a flag beats the environment, which beats the file."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the code-execution API.
    Serve(ServeArgs),
    /// Run one Python file in the sandbox: its output here, plots to files, its exit status.
    Run(RunArgs),
    /// Report which isolation features this host supports; exits non-zero when the
    /// configured isolation cannot be had.
    Check(CheckArgs),
    /// Serve the sandbox to one MCP client (an agent host) over stdin and stdout.
    Mcp(McpArgs),
}

#[derive(Debug, clap::Args)]
pub struct McpArgs {
    #[command(flatten)]
    pub options: Options,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub options: Options,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The Python file to run, or `-` for standard input.
    pub file: PathBuf,
    /// Where plots are written (plot_1.png, ...).
    #[arg(long, default_value = ".")]
    pub plots_dir: PathBuf,
    /// Timeout of this run, seconds [default: default_timeout].
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Print the API's JSON response instead of the output.
    #[arg(long)]
    pub json: bool,
    /// A file copied into the run's working directory under its own name, or under NAME
    /// with `NAME=PATH` (repeatable).
    #[arg(long = "file", value_name = "[NAME=]PATH")]
    pub files: Vec<String>,
    /// Where the files the code creates or changes in its working directory are written
    /// (kept under their paths); without it they are not collected.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Where the run's notebook results (and its error) are written as JSON
    /// (docs/results.md); their plain text is printed either way.
    #[arg(long, value_name = "FILE")]
    pub results: Option<PathBuf>,
    #[command(flatten)]
    pub options: Options,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Only probe the kernel features; skip the end-to-end sandbox run.
    #[arg(long)]
    pub no_run: bool,
    #[command(flatten)]
    pub options: Options,
}

/// Every configuration option as a flag (and variable); unset ones keep the file's value
/// or the default. The defaults written here are `Config::default()`'s, which a test checks.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Options {
    /// TOML configuration file (see deploy/nsbox.toml); unknown keys are errors.
    #[arg(long, env = "NSBOX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "NSBOX_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The root filesystem built by scripts/build-rootfs.sh [default: /var/lib/nsbox/rootfs].
    #[arg(long, env = "NSBOX_ROOTFS")]
    pub rootfs: Option<PathBuf>,
    /// Runs executing at once; further requests queue [default: 8].
    #[arg(long, env = "NSBOX_MAX_RUNNING")]
    pub max_running: Option<usize>,
    /// Requests (scanning, queued or running) one `x-relaxai-userid` of an API key may have
    /// at once [default: half of the key's share, at least 1].
    #[arg(long, env = "NSBOX_MAX_RUNNING_PER_USER")]
    pub max_running_per_user: Option<usize>,
    /// Requests waiting for a slot; past this, 429 with Retry-After [default: 64].
    #[arg(long, env = "NSBOX_MAX_QUEUE")]
    pub max_queue: Option<usize>,
    /// API keys accepted as `Authorization: Bearer <key>` (repeat the flag, or separate with
    /// commas in the variable). Without any, every request is accepted and nsbox only
    /// listens on loopback.
    #[arg(
        long = "api-keys",
        visible_alias = "api-key",
        env = "NSBOX_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Option<Vec<String>>,
    /// A file of API keys, one per line (`#` comments allowed); added to --api-key.
    #[arg(long, env = "NSBOX_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Keys accepted like --api-key that also see the whole server: every key's runs and
    /// sessions in /v1/status, and /metrics (repeat the flag, or separate with commas in
    /// the variable).
    #[arg(
        long = "operator-keys",
        visible_alias = "operator-key",
        env = "NSBOX_OPERATOR_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub operator_keys: Option<Vec<String>>,
    /// Timeout when a request gives none, seconds [default: 30].
    #[arg(long, env = "NSBOX_DEFAULT_TIMEOUT")]
    pub default_timeout: Option<f64>,
    /// Largest timeout a request may ask for, seconds [default: 300].
    #[arg(long, env = "NSBOX_MAX_TIMEOUT")]
    pub max_timeout: Option<f64>,
    /// Memory per run, MiB [default: 512].
    #[arg(long, env = "NSBOX_MEMORY_MIB")]
    pub memory_mib: Option<u64>,
    /// Processes and threads per run [default: 64].
    #[arg(long, env = "NSBOX_MAX_PROCESSES")]
    pub max_processes: Option<u64>,
    /// CPU time per run, seconds [default: 60].
    #[arg(long, env = "NSBOX_CPU_SECONDS")]
    pub cpu_seconds: Option<u64>,
    /// CPU bandwidth per run, in CPUs [default: 1].
    #[arg(long, env = "NSBOX_CPUS")]
    pub cpus: Option<f64>,
    /// Size of each run's private /tmp, MiB [default: 64].
    #[arg(long, env = "NSBOX_TMP_MIB")]
    pub tmp_mib: Option<u64>,
    /// Captured stdout and stderr per run, KiB each [default: 1024].
    #[arg(long, env = "NSBOX_OUTPUT_KIB")]
    pub output_kib: Option<usize>,
    /// Events a streamed run may have waiting for a client that reads slowly (text merged);
    /// past this the stream and its run end [default: 4096].
    #[arg(long, env = "NSBOX_STREAM_BACKLOG_EVENTS")]
    pub stream_backlog_events: Option<usize>,
    /// Output file content attached to one MCP tool result, KiB in all; the rest is listed
    /// by path and size [default: 256].
    #[arg(long, env = "NSBOX_MCP_ATTACH_KIB")]
    pub mcp_attach_kib: Option<u64>,
    /// Characters of text one MCP tool result gives a model; past it the head and the
    /// tail are kept [default: 20000].
    #[arg(long, env = "NSBOX_MCP_TEXT_CHARS")]
    pub mcp_text_chars: Option<usize>,
    /// One notebook result, KiB as JSON; past it the result keeps its plain text, marked
    /// truncated [default: 2048].
    #[arg(long, env = "NSBOX_RESULT_MAX_KIB")]
    pub result_max_kib: Option<usize>,
    /// All of a run's notebook results, MiB as JSON [default: 24].
    #[arg(long, env = "NSBOX_RESULTS_MAX_MIB")]
    pub results_max_mib: Option<usize>,
    /// Rows of a DataFrame's markdown table in a result, head and tail [default: 20].
    #[arg(long, env = "NSBOX_RESULT_MARKDOWN_ROWS")]
    pub result_markdown_rows: Option<usize>,
    /// First host uid/gid of the range mapped into runs (65536 ids) [default: 1000000000].
    #[arg(long, env = "NSBOX_UID_BASE")]
    pub uid_base: Option<u32>,
    /// Do not use cgroups (limits are then rlimits only, which also needs
    /// --allow-incomplete-isolation) (config: cgroups = false).
    #[arg(long, env = "NSBOX_NO_CGROUPS")]
    pub no_cgroups: bool,
    /// The warm templates to keep, comma-separated (base, scientific, ml); a run whose
    /// template is not kept forks from the next larger one [default: base,scientific,ml].
    #[arg(long, env = "NSBOX_WARM_TEMPLATES", value_delimiter = ',', value_parser = parse_template)]
    pub warm_templates: Option<Vec<crate::sandbox::warm::Template>>,
    /// Warm interpreters keep their memory in 4 KiB pages: no huge-page collapse after warm-up
    /// (config: huge_pages = false).
    #[arg(long, env = "NSBOX_NO_HUGE_PAGES")]
    pub no_huge_pages: bool,
    /// Warm runs hold two copies of their zygote: PID 1 is a fork of it rather than the
    /// few-KiB run init it execs (config: nested_runs = false).
    #[arg(long, env = "NSBOX_NO_NESTED_RUNS")]
    pub no_nested_runs: bool,
    /// Leave the host's cgroup2 mount as it is: no `favordynmods` remount; the spawner then
    /// keeps the cgroup attach lock switched while runs come (config: favordynmods = false).
    #[arg(long, env = "NSBOX_NO_FAVORDYNMODS")]
    pub no_favordynmods: bool,
    /// Do not serve the web playground and status page at `/` (config: ui = false).
    #[arg(long, env = "NSBOX_NO_UI")]
    pub no_ui: bool,
    /// Start even when cgroups cannot be had, enforcing memory, process and CPU limits with
    /// rlimits only. Weaker isolation: meant for rootless hosts, and said loudly at start.
    #[arg(long, env = "NSBOX_ALLOW_INCOMPLETE_ISOLATION")]
    pub allow_incomplete_isolation: bool,
    /// `warm` forks runs from warm interpreters (zygotes) for millisecond starts; `cold`
    /// starts a fresh interpreter per run. Both give every run the same isolation
    /// [default: warm].
    #[arg(long, env = "NSBOX_MODE", value_enum)]
    pub mode: Option<RunMode>,
    /// nsbox built as a shared library, loaded into zygotes [default: libnsbox_sandbox.so beside
    /// the nsbox binary].
    #[arg(long, env = "NSBOX_WARM_LIBRARY")]
    pub warm_library: Option<PathBuf>,
    /// Runs a zygote forks before it is replaced by a fresh one [default: 10000].
    #[arg(long, env = "NSBOX_MAX_FORKS")]
    pub max_forks: Option<u32>,
    /// Ready sandboxes kept per warm template, built ahead of requests and each used once;
    /// 0 builds every run's sandbox at its request [default: 2].
    #[arg(long, env = "NSBOX_POOL_SIZE")]
    pub pool_size: Option<usize>,
    /// Seconds without a request after which the pool keeps one ready sandbox per template;
    /// the next request fills it again [default: 60].
    #[arg(long, env = "NSBOX_POOL_IDLE")]
    pub pool_idle: Option<u64>,
    /// Seconds runs in flight may take to finish after SIGTERM; then they are cancelled
    /// (keep it under the service manager's stop timeout) [default: 15].
    #[arg(long, env = "NSBOX_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<f64>,
    /// Pre-execution scanner: `enforce` rejects flagged code, `report` runs it and lists the
    /// violations, `off` skips scanning (the kernel isolation holds either way)
    /// [default: enforce].
    #[arg(long, env = "NSBOX_SCANNER", value_enum)]
    pub scanner: Option<ScannerMode>,
    /// Log lines as readable text or as JSON objects (RUST_LOG sets the level; code itself
    /// is logged only at RUST_LOG=nsbox::code=debug) [default: human].
    #[arg(long, env = "NSBOX_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Files a request may send, and a run may return, each way [default: 32].
    #[arg(long, env = "NSBOX_FILES_MAX_COUNT")]
    pub files_max_count: Option<usize>,
    /// Largest file a request may send or a run return, MiB [default: 16].
    #[arg(long, env = "NSBOX_FILE_MAX_MIB")]
    pub file_max_mib: Option<u64>,
    /// All files a request may send, or a run return, each way, MiB [default: 32].
    #[arg(long, env = "NSBOX_FILES_MAX_MIB")]
    pub files_max_mib: Option<u64>,
    /// Sessions open at once, in all [default: 32].
    #[arg(long, env = "NSBOX_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,
    /// Sessions open at once per API key [default: 8].
    #[arg(long, env = "NSBOX_MAX_SESSIONS_PER_KEY")]
    pub max_sessions_per_key: Option<usize>,
    /// Memory all sessions may hold together, MiB; each reserves --memory-mib
    /// [default: 4096].
    #[arg(long, env = "NSBOX_SESSION_MEMORY_BUDGET_MIB")]
    pub session_memory_budget_mib: Option<u64>,
    /// Seconds a session may stay unused before it is ended, unless it asks for its own
    /// `ttl_seconds` [default: 600].
    #[arg(long, env = "NSBOX_SESSION_IDLE_TTL")]
    pub session_idle_ttl: Option<u64>,
    /// Largest `ttl_seconds` a session may ask for [default: 3600].
    #[arg(long, env = "NSBOX_SESSION_MAX_IDLE_TTL")]
    pub session_max_idle_ttl: Option<u64>,
    /// Seconds a session may live, however busy [default: 14400].
    #[arg(long, env = "NSBOX_SESSION_MAX_LIFETIME")]
    pub session_max_lifetime: Option<u64>,
    /// Seconds a request's head may take to arrive, from its first byte; a client that
    /// trickles it is cut off [default: 10].
    #[arg(long, env = "NSBOX_HEADER_TIMEOUT")]
    pub header_timeout: Option<f64>,
    /// Seconds a request's body may take to arrive, from the end of its head [default: 60].
    #[arg(long, env = "NSBOX_BODY_TIMEOUT")]
    pub body_timeout: Option<f64>,
    /// Seconds a connection may stay open with no request on it: silent since it opened,
    /// or idle between keep-alive requests [default: 60].
    #[arg(long, env = "NSBOX_IDLE_TIMEOUT")]
    pub idle_timeout: Option<f64>,
    /// Client connections open at once; past this only /v1/health is answered, on a few
    /// reserved connections [default: 1024].
    #[arg(long, env = "NSBOX_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Client connections open at once from one peer address (leave unset behind a load
    /// balancer, whose connections all come from one address) [default: no cap].
    #[arg(long, env = "NSBOX_MAX_CONNECTIONS_PER_PEER")]
    pub max_connections_per_peer: Option<usize>,
    /// Largest request body on /mcp, MiB; larger files go to a session with upload_file
    /// [default: 4].
    #[arg(long, env = "NSBOX_MCP_MAX_BODY_MIB")]
    pub mcp_max_body_mib: Option<u64>,
    /// Request bodies over 1 MiB read and parsed at once; more wait [default: 4].
    #[arg(long, env = "NSBOX_MAX_LARGE_BODIES")]
    pub max_large_bodies: Option<usize>,
    /// This node's name in its session ids, which a load balancer routes by: 1 to 32 of
    /// a-z, 0-9 and - [default: the hostname's first label, made to fit].
    #[arg(long, env = "NSBOX_NODE")]
    pub node: Option<String>,
}

impl Options {
    /// The configuration file's values (or the defaults) with these options over them.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut c = Config::load(self.config.as_deref())?;
        macro_rules! overlay {
            ($($field:ident),*) => {$(
                if let Some(v) = &self.$field {
                    c.$field = v.clone();
                }
            )*};
        }
        macro_rules! overlay_optional {
            ($($field:ident),*) => {$(
                if let Some(v) = &self.$field {
                    c.$field = Some(v.clone());
                }
            )*};
        }
        overlay!(
            listen,
            rootfs,
            max_running,
            max_queue,
            api_keys,
            operator_keys,
            default_timeout,
            max_timeout,
            memory_mib,
            max_processes,
            cpu_seconds,
            cpus,
            tmp_mib,
            output_kib,
            uid_base,
            mode,
            max_forks,
            pool_size,
            pool_idle,
            shutdown_grace,
            scanner,
            log_format,
            files_max_count,
            file_max_mib,
            files_max_mib,
            max_sessions,
            max_sessions_per_key,
            session_memory_budget_mib,
            session_idle_ttl,
            session_max_idle_ttl,
            session_max_lifetime,
            stream_backlog_events,
            mcp_attach_kib,
            mcp_text_chars,
            result_max_kib,
            results_max_mib,
            result_markdown_rows,
            header_timeout,
            body_timeout,
            idle_timeout,
            max_connections,
            mcp_max_body_mib,
            max_large_bodies,
            warm_templates
        );
        overlay_optional!(
            max_running_per_user,
            api_keys_file,
            warm_library,
            max_connections_per_peer,
            node
        );
        if self.no_cgroups {
            c.cgroups = false;
        }
        if self.no_huge_pages {
            c.huge_pages = false;
        }
        if self.no_nested_runs {
            c.nested_runs = false;
        }
        if self.no_favordynmods {
            c.favordynmods = false;
        }
        if self.allow_incomplete_isolation {
            c.allow_incomplete_isolation = true;
        }
        if self.no_ui {
            c.ui = false;
        }
        c.validate()?;
        Ok(c)
    }
}

/// A template's name, as `--warm-templates` lists them.
fn parse_template(name: &str) -> Result<crate::sandbox::warm::Template, String> {
    crate::sandbox::warm::Template::ALL
        .into_iter()
        .find(|t| t.name() == name.trim())
        .ok_or_else(|| format!("{name:?} is not a template (base, scientific, ml)"))
}

/// The sandbox crate's logging set-up, which the spawner repeats with the same format
/// and default level, so its lines (supervisors, templates) read like the server's.
fn init_logging(format: LogFormat, default_level: &str) {
    let format = match format {
        LogFormat::Human => crate::sandbox::logging::LogFormat::Human,
        LogFormat::Json => crate::sandbox::logging::LogFormat::Json,
    };
    crate::sandbox::logging::init(format, default_level);
}

/// Resolves the configuration and starts logging, or says what is wrong with it.
fn configure(options: &Options, default_level: &str) -> Result<Config, ExitCode> {
    match options.resolve() {
        Ok(config) => {
            init_logging(config.log_format, default_level);
            Ok(config)
        }
        Err(e) => {
            eprintln!("nsbox: {e}");
            Err(ExitCode::from(crate::run::status::USAGE))
        }
    }
}

/// The exit status of a command that serves until stopped; its failure goes to the log.
fn served(result: Result<(), impl std::fmt::Display>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("nsbox: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            // rmcp logs every streamable HTTP request at info; its warnings are what matter.
            let config = match configure(&args.options, "info,rmcp=warn") {
                Ok(c) => c,
                Err(code) => return code,
            };
            served(crate::server::serve(&config))
        }
        Command::Run(args) => {
            // Quiet by default: the terminal is for the code's own output.
            let config = match configure(&args.options, "warn") {
                Ok(c) => c,
                Err(code) => return code,
            };
            let opts = crate::run::RunOptions {
                file: args.file,
                plots_dir: args.plots_dir,
                timeout_s: args.timeout,
                json: args.json,
                files: args.files,
                out_dir: args.out_dir,
                results_file: args.results,
            };
            match crate::run::main(&config, &opts) {
                Ok(status) => ExitCode::from(status),
                Err(e) => {
                    eprintln!("nsbox: {e}");
                    ExitCode::from(e.exit_status())
                }
            }
        }
        Command::Mcp(args) => {
            // stdout carries the protocol; logs go to stderr, quiet by default.
            let config = match configure(&args.options, "warn") {
                Ok(c) => c,
                Err(code) => return code,
            };
            served(crate::mcp::serve_stdio(&config))
        }
        Command::Check(args) => {
            let config = match configure(&args.options, "warn") {
                Ok(c) => c,
                Err(code) => return code,
            };
            ExitCode::from(crate::check::main(&config, args.json, !args.no_run))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Parses `nsbox serve ARGS` as if no `NSBOX_*` variable were set (scripts/test.sh
    /// exports NSBOX_ROOTFS, and the point here is the flags and the file).
    fn resolve(args: &[&str]) -> Result<Config, ConfigError> {
        use clap::FromArgMatches;
        let cmd = Cli::command().mut_subcommand("serve", |serve| {
            let ids: Vec<String> = serve
                .get_arguments()
                .map(|a| a.get_id().to_string())
                .collect();
            ids.iter()
                .fold(serve, |s, id| s.mut_arg(id, |a| a.env(None)))
        });
        let matches = cmd
            .try_get_matches_from(["nsbox", "serve"].iter().chain(args))
            .unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let Command::Serve(serve) = cli.command else {
            unreachable!()
        };
        serve.options.resolve()
    }

    /// Each `[default: X]` in --help must be what `Config::default()` holds: passing X
    /// explicitly gives the default configuration.
    #[test]
    fn the_defaults_in_help_are_the_real_defaults() {
        let mut cmd = Cli::command();
        let serve = cmd.find_subcommand_mut("serve").unwrap();
        let mut checked = 0;
        for arg in serve.get_arguments() {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let long = arg.get_long().unwrap();
            let Some(start) = help.find("[default: ") else {
                continue;
            };
            let value = &help[start + 10..help[start..].find(']').unwrap() + start];
            if value.contains(' ') {
                continue; // a rule in words, like "half of max_running"
            }
            let flag = format!("--{long}");
            let config = resolve(&[flag.as_str(), value]).unwrap();
            assert_eq!(config, Config::default(), "{flag} {value}");
            checked += 1;
        }
        assert!(checked >= 18, "only {checked} defaults checked");
    }

    #[test]
    fn flags_beat_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nsbox.toml");
        std::fs::write(&file, "memory_mib = 256\nmax_running = 3\ncgroups = true\n").unwrap();
        let f = file.to_str().unwrap();
        let c = resolve(&["--config", f, "--memory-mib", "128", "--no-cgroups"]).unwrap();
        assert_eq!(c.memory_mib, 128);
        assert_eq!(
            c.max_running, 3,
            "the file's value stays where no flag is given"
        );
        assert!(!c.cgroups);
    }

    #[test]
    fn the_page_is_on_unless_the_file_or_the_flag_says_off() {
        assert!(resolve(&[]).unwrap().ui);
        assert!(!resolve(&["--no-ui"]).unwrap().ui);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nsbox.toml");
        std::fs::write(&file, "ui = false\n").unwrap();
        assert!(!resolve(&["--config", file.to_str().unwrap()]).unwrap().ui);
    }

    #[test]
    fn invalid_values_fail_naming_the_field() {
        let e = resolve(&["--default-timeout", "500"]).unwrap_err();
        assert!(e.to_string().contains("`default_timeout`"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nsbox.toml");
        std::fs::write(&file, "max_runing = 3\n").unwrap();
        let e = resolve(&["--config", file.to_str().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("max_runing"), "{e}");
        assert!(e.to_string().contains("nsbox.toml"), "{e}");
    }
}
