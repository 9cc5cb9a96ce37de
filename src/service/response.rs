//! The spec's response object, which every front end that answers in the spec's shape (HTTP, `nsbox run --json`, the streamed result) writes from a [`RunResult`].

use std::time::Duration;

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::files::mime_type;
use super::{RunResult, SessionState};
use crate::sandbox::{NotebookError, NotebookOutput, OutputFile, OutputType, Plot, SkippedFile};

/// The spec's response object, field for field.
#[derive(Debug, serde::Serialize, PartialEq)]
pub struct CodeResponse {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    pub execution_time: f64,
    pub security_checked: bool,
    pub violations: Vec<String>,
    /// Beyond the spec, with `results` and violations only: each rule that fired and the
    /// line of the code it fired at, so a client can show them against the code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub violation_lines: Option<Vec<crate::scanner::Violation>>,
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
    /// Beyond the spec, only when asked for (`"results": true`, or in a session): Jupyter
    /// output objects, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<NotebookResult>>,
    /// With `results`: the exception the code raised, or null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Option<NotebookError>>,
}

/// One notebook result as the API writes it: an nbformat v4 output object, its MIME values
/// the JSON the run produced, written as they are.
#[derive(Debug, PartialEq)]
pub struct NotebookResult(pub NotebookOutput);

impl Serialize for NotebookResult {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let raw = |text: &str| -> Result<Box<serde_json::value::RawValue>, S::Error> {
            serde_json::value::RawValue::from_string(text.to_string()).map_err(S::Error::custom)
        };
        let output = &self.0;
        let execute = output.output_type == OutputType::ExecuteResult;
        let mut map = serializer.serialize_map(Some(if execute { 4 } else { 3 }))?;
        map.serialize_entry("output_type", &output.output_type)?;
        let data = output
            .data
            .iter()
            .map(|(mime, value)| Ok((mime.as_str(), raw(value.as_str())?)))
            .collect::<Result<std::collections::BTreeMap<_, _>, S::Error>>()?;
        map.serialize_entry("data", &data)?;
        map.serialize_entry("metadata", &raw(output.metadata.as_str())?)?;
        if execute {
            // nbformat requires it on an execute_result; nsbox has no cell count.
            map.serialize_entry("execution_count", &None::<u64>)?;
        }
        map.end()
    }
}

/// An output file as the API returns it.
#[derive(Debug, serde::Serialize, PartialEq)]
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
            violation_lines: (r.results.is_some() && !r.violation_lines.is_empty())
                .then_some(r.violation_lines),
            plots: r.plots,
            files: r
                .files
                .map(|files| files.into_iter().map(FileResponse::from).collect()),
            skipped_files: r.skipped_files,
            session: r.session,
            error: r.results.is_some().then_some(r.error),
            results: r
                .results
                .map(|results| results.into_iter().map(NotebookResult).collect()),
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
