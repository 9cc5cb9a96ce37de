//! The spec's response object, which every front end that answers in the spec's shape (HTTP, `nsbox run --json`, the streamed result) writes from a [`RunResult`].

use std::time::Duration;

use serde::Serialize;

use super::RunResult;
use crate::sandbox::Plot;

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
