//! The spec's response object, which every front end that answers in the spec's shape (HTTP, `nsbox run --json`, the streamed result) writes from a [`RunResult`].

use std::time::Duration;

use serde::Serialize;

use super::files::mime_type;
use super::{RunResult, SessionState};
use crate::sandbox::{OutputFile, Plot, SkippedFile};

/// The spec's response object, field for field.
#[derive(Debug, Serialize, PartialEq)]
pub struct CodeResponse {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    pub execution_time: f64,
    pub security_checked: bool,
    pub violations: Vec<String>,
    pub plots: Vec<Plot>,
    /// Beyond the spec, only when asked for (a request with `files`, or in a session).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileResponse>>,
    /// Beyond the spec: files the code created or changed that are not returned (links,
    /// FIFOs...), and why; only when there are some.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_files: Vec<SkippedFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionState>,
}

/// An output file as the API returns it.
#[derive(Debug, Serialize, PartialEq)]
pub struct FileResponse {
    pub path: String,
    pub size: u64,
    pub mime_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl From<OutputFile> for FileResponse {
    fn from(f: OutputFile) -> FileResponse {
        FileResponse {
            mime_type: mime_type(&f.path),
            path: f.path,
            size: f.size,
            content_base64: f.content_base64,
            truncated: f.truncated,
        }
    }
}

impl From<RunResult> for CodeResponse {
    fn from(r: RunResult) -> CodeResponse {
        CodeResponse {
            success: r.ending.success(),
            stdout: r.stdout,
            stderr: r.stderr,
            exit_code: r.ending.exit_code(),
            execution_time: seconds(r.execution_time),
            security_checked: true,
            violations: r.violations,
            plots: r.plots,
            files: r
                .files
                .map(|files| files.into_iter().map(FileResponse::from).collect()),
            skipped_files: r.skipped_files,
            session: r.session,
        }
    }
}

/// Seconds with millisecond precision, as the spec's examples show them.
fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{Ending, Limit};

    #[test]
    fn a_result_maps_to_the_spec_fields() {
        let r = RunResult {
            execution_time: Duration::from_micros(5_020_400),
            ..RunResult::ended(
                Ending::Limit(Limit::Timeout),
                "",
                "Execution failed: Execution timeout exceeded",
            )
        };
        let response = CodeResponse::from(r);
        assert_eq!((response.success, response.exit_code), (false, -1));
        assert_eq!(response.execution_time, 5.02);
        assert!(response.security_checked);
    }
}
