//! One logging set-up for the server and its spawner: the same filter, format and fields on stderr, so the spawner's and its supervisors' lines read like the server's.
//!
//! The server installs the subscriber with [`init`]; the spawner (started with its
//! environment cleared) gets what `init` was given through the environment that
//! `spawner::launch` sets ([`spawner_env`]) and installs the same subscriber with
//! [`init_from_env`], before it reads anything from the server.

use std::sync::OnceLock;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event, coloured on a terminal.
    Human,
    /// One JSON object per line: timestamp, level, target, fields and the current span.
    Json,
}

impl LogFormat {
    fn name(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }

    fn from_name(name: &str) -> Option<LogFormat> {
        match name {
            "human" => Some(LogFormat::Human),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// The spawner's variable for the format (the values of `--log-format`).
pub const FORMAT_VAR: &str = "NSBOX_LOG_FORMAT";
/// The spawner's variable for the level used when `RUST_LOG` is unset or unusable.
pub const DEFAULT_LEVEL_VAR: &str = "NSBOX_LOG_DEFAULT_LEVEL";

/// What [`init`] installed in this process, for the spawner it starts.
static INSTALLED: OnceLock<(LogFormat, String)> = OnceLock::new();

/// Installs the subscriber: `RUST_LOG` filters (or `default_level` when it is unset or
/// unusable), lines go to stderr as `format` says. Once per process; a second call (or a
/// subscriber installed elsewhere) leaves the first in place.
pub fn init(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_level.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    if installed.is_ok() {
        let _ = INSTALLED.set((format, default_level.to_string()));
    }
}

/// The variables that give a spawner this process's logging (besides `RUST_LOG`, which
/// is passed as it is); none when [`init`] was not called here.
pub fn spawner_env() -> Vec<(&'static str, String)> {
    match INSTALLED.get() {
        Some((format, level)) => vec![
            (FORMAT_VAR, format.name().to_string()),
            (DEFAULT_LEVEL_VAR, level.clone()),
        ],
        None => Vec::new(),
    }
}

/// In the spawner: installs the subscriber its server described in [`spawner_env`]'s
/// variables; human lines at `info` when they are missing.
pub fn init_from_env() {
    let format = std::env::var(FORMAT_VAR)
        .ok()
        .and_then(|f| LogFormat::from_name(&f))
        .unwrap_or(LogFormat::Human);
    let level = std::env::var(DEFAULT_LEVEL_VAR).unwrap_or_else(|_| "info".into());
    init(format, &level);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for f in [LogFormat::Human, LogFormat::Json] {
            assert_eq!(LogFormat::from_name(f.name()), Some(f));
        }
        assert_eq!(LogFormat::from_name("yaml"), None);
    }
}
