//! The MCP front end: the run service as Model Context Protocol tools, over stdio (`nsbox mcp`) and streamable HTTP (`/mcp` on `nsbox serve`).
//!
//! An adapter like the HTTP API: a tool call's arguments become a `CodeRequest`, the
//! `RunResult` becomes text content (stdout, stderr, how the run ended, violations) and one
//! `image/png` content per plot, so an agent host shows the chart. Arguments of the wrong
//! shape are protocol errors (invalid params); code that ran and failed, or that the
//! scanner refused, is a tool result with `isError`, so the model reads why and can fix it.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{json, Value};
use tracing::Instrument;

use crate::config::Config;
use crate::host::{LocalService, StartError};
use crate::service::{self, CodeRequest, Ending, Limit, RunResult, RunService, ServiceError};

#[derive(Debug, thiserror::Error)]
pub enum McpServeError {
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("serving MCP on stdio: {0}")]
    Transport(String),
}

/// `nsbox mcp`: the sandbox of `nsbox serve` (same configuration, warm path) served to one
/// MCP client over stdin and stdout, with no HTTP listener. Returns when the client closes
/// the connection.
pub fn serve_stdio(config: &Config) -> Result<(), McpServeError> {
    use rmcp::ServiceExt;
    // Nothing cancels runs but the client, which cancels its requests or hangs up.
    let never = tokio::sync::watch::channel(false).1;
    let local = LocalService::start(config, config.mode, never)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(McpServeError::Runtime)?;
    let result = runtime.block_on(async {
        let running = McpServer::new(local.service().clone())
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| McpServeError::Transport(e.to_string()))?;
        tracing::info!("serving MCP on stdio");
        running
            .waiting()
            .await
            .map(drop)
            .map_err(|e| McpServeError::Transport(e.to_string()))
    });
    // Every clone of the service goes with the runtime's tasks, before `local` stops the
    // spawner and cleans the host.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    drop(local);
    result
}

/// The one tool today; sessions and files add theirs beside it.
pub const RUN_PYTHON: &str = "run_python";

/// The MCP server over one run service. Cheap to clone: the streamable HTTP transport makes
/// one per MCP session.
#[derive(Clone)]
pub struct McpServer {
    service: Arc<RunService>,
    tools: Arc<Vec<Tool>>,
    instructions: Arc<String>,
}

impl McpServer {
    pub fn new(service: Arc<RunService>) -> McpServer {
        let rules = sandbox_rules(&service);
        McpServer {
            tools: Arc::new(vec![run_python_tool(&rules)]),
            instructions: Arc::new(format!(
                "nsbox runs Python in an isolated sandbox. Call `{RUN_PYTHON}` with the code. {rules}"
            )),
            service,
        }
    }

    async fn run_python(&self, arguments: JsonObject) -> Result<CallToolResult, McpError> {
        let request = code_request(&arguments)?;
        // An MCP call has no `x-request-id`; its log lines get an id of their own.
        let span = service::request_span(&format!("mcp-{}", uuid::Uuid::new_v4().simple()));
        match self.service.execute(request).instrument(span).await {
            Ok(result) => Ok(tool_result(result)),
            Err(ServiceError::Invalid(m) | ServiceError::TooLarge(m)) => {
                Err(McpError::invalid_params(m, None))
            }
            // The model may retry these later; say so in words it reads.
            Err(ServiceError::Overloaded(m) | ServiceError::Unavailable(m)) => Ok(
                CallToolResult::error(vec![ContentBlock::text(format!("nsbox is busy: {m}"))]),
            ),
            Err(ServiceError::NotFound(m) | ServiceError::Conflict(m)) => {
                Ok(CallToolResult::error(vec![ContentBlock::text(m)]))
            }
            Err(ServiceError::SetupFailed { .. } | ServiceError::Internal) => Err(
                McpError::internal_error("the sandbox could not run the code", None),
            ),
        }
    }
}

/// What the model must know to write code that works here: the interpreter, the libraries
/// with their versions (read from the root filesystem), and the limits.
fn sandbox_rules(service: &RunService) -> String {
    let catalog = service.catalog();
    let settings = service.settings();
    let limits = &settings.limits;
    let libraries: Vec<String> = catalog
        .libraries
        .iter()
        .map(|(name, version)| format!("{name} {version}"))
        .collect();
    format!(
        "Python {python} with its standard library and: {libraries}. No network access, \
         no package installation. Each call starts a fresh interpreter (nothing is kept \
         between calls); the working directory is a private /tmp of {tmp} MiB, discarded \
         after the call, and the rest of the filesystem is read-only. Limits per call: \
         timeout {default_timeout} s by default (at most {max_timeout} s, set with \
         `timeout`), {memory} MiB of memory, {processes} processes, {cpu} s of CPU time, \
         {output} KiB of stdout and of stderr. Print what you want to see. Matplotlib and \
         seaborn figures shown with plt.show() come back as PNG images. Code that uses \
         os.system, subprocess, eval/exec, sockets or similar is refused by a security \
         scanner before it runs.",
        python = catalog.python,
        libraries = libraries.join(", "),
        tmp = limits.tmp_bytes >> 20,
        default_timeout = settings.default_timeout_s,
        max_timeout = settings.max_timeout_s,
        memory = limits.memory_bytes >> 20,
        processes = limits.max_processes,
        cpu = limits.cpu_seconds,
        output = limits.output_bytes >> 10,
    )
}

fn run_python_tool(rules: &str) -> Tool {
    let schema = json!({
        "type": "object",
        "properties": {
            "code": {
                "type": "string",
                "description": "The Python program to run (at most 50,000 characters)."
            },
            "timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": "Seconds the run may take before it is killed."
            },
            "libraries": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Libraries the code needs (checked against those installed)."
            }
        },
        "required": ["code"],
        "additionalProperties": false
    });
    let Value::Object(schema) = schema else {
        unreachable!("the schema is an object literal")
    };
    Tool::new(
        RUN_PYTHON,
        format!("Run a Python program in an isolated sandbox and return its output. {rules}"),
        schema,
    )
}

/// The tool's arguments as a run request; a wrong shape is the caller's error.
fn code_request(arguments: &JsonObject) -> Result<CodeRequest, McpError> {
    let invalid = |m: &str| McpError::invalid_params(m.to_string(), None);
    if let Some(unknown) = arguments
        .keys()
        .find(|k| !["code", "timeout", "libraries"].contains(&k.as_str()))
    {
        return Err(invalid(&format!("unknown argument `{unknown}`")));
    }
    let code = match arguments.get("code") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => return Err(invalid("`code` is required")),
        Some(_) => return Err(invalid("`code` must be a string")),
    };
    let timeout_s = match arguments.get("timeout") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_f64().unwrap_or(f64::INFINITY)),
        Some(_) => return Err(invalid("`timeout` must be a number of seconds")),
    };
    let libraries = match arguments.get("libraries") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid("`libraries` must be an array of strings"))?,
        Some(_) => return Err(invalid("`libraries` must be an array of strings")),
    };
    Ok(CodeRequest {
        code,
        timeout_s,
        libraries,
        ..CodeRequest::default()
    })
}

/// How the run ended, in the words the model reads first.
fn ending_line(ending: Ending) -> String {
    match ending {
        Ending::Exited { code: 0 } => "The code ran to its end (exit status 0).".into(),
        Ending::Exited { code } => format!("The code exited with status {code}."),
        Ending::Refused => {
            "The security scanner refused the code before it ran; nothing was executed.".into()
        }
        Ending::Limit(Limit::Timeout) => "The run was killed: timeout exceeded.".into(),
        Ending::Limit(Limit::Memory) => "The run was killed: memory limit exceeded.".into(),
        Ending::Limit(Limit::Cpu) => "The run was killed: CPU time limit exceeded.".into(),
        Ending::Signaled { signal } => format!("The run was killed by signal {signal}."),
    }
}

fn tool_result(result: RunResult) -> CallToolResult {
    let mut text = ending_line(result.ending);
    if !result.violations.is_empty() {
        text.push_str(&format!("\nViolations: {}", result.violations.join("; ")));
    }
    for (name, stream) in [("stdout", &result.stdout), ("stderr", &result.stderr)] {
        if !stream.is_empty() {
            text.push_str(&format!("\n--- {name} ---\n{stream}"));
            if !stream.ends_with('\n') {
                text.push('\n');
            }
        }
    }
    let plots = result.plots.len();
    if plots > 0 {
        text.push_str(&format!("\n{plots} figure(s) attached as PNG images."));
    }
    let mut content = vec![ContentBlock::text(text)];
    content.extend(
        result
            .plots
            .into_iter()
            .map(|p| ContentBlock::image(p.content_base64, "image/png")),
    );
    if result.ending == (Ending::Exited { code: 0 }) {
        CallToolResult::success(content)
    } else {
        CallToolResult::error(content)
    }
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("nsbox", env!("CARGO_PKG_VERSION")))
            .with_instructions(self.instructions.as_str())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items((*self.tools).clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        match request.name.as_ref() {
            RUN_PYTHON => self
                .run_python(request.arguments.unwrap_or_default())
                .await
                .map(Into::into),
            other => Err(McpError::invalid_params(
                format!("unknown tool `{other}`; the tools are: {RUN_PYTHON}"),
                None,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> JsonObject {
        let Value::Object(o) = v else { panic!() };
        o
    }

    #[test]
    fn arguments_of_the_wrong_shape_are_invalid_params() {
        for bad in [
            json!({}),
            json!({"code": 1}),
            json!({"code": "x", "timeout": "5"}),
            json!({"code": "x", "libraries": [1]}),
            json!({"code": "x", "lang": "python"}),
        ] {
            let err = code_request(&args(bad.clone())).unwrap_err();
            assert_eq!(err.code, rmcp::model::ErrorCode::INVALID_PARAMS, "{bad}");
        }
        let ok = code_request(&args(
            json!({"code": "print(1)", "timeout": 2.5, "libraries": ["numpy"]}),
        ))
        .unwrap();
        assert_eq!((ok.timeout_s, ok.libraries.len()), (Some(2.5), 1));
    }

    #[test]
    fn a_result_is_text_then_one_image_per_plot() {
        let plot = crate::sandbox::Plot {
            content_base64: "iVBORw0K".into(),
            format: "png".into(),
            filename: "plot_1.png".into(),
        };
        let r = tool_result(RunResult {
            plots: vec![plot],
            ..RunResult::ended(Ending::Exited { code: 0 }, "4\n", "")
        });
        assert_eq!(r.is_error, Some(false));
        let v = serde_json::to_value(&r.content).unwrap();
        assert_eq!(v[0]["type"], "text");
        assert!(v[0]["text"]
            .as_str()
            .unwrap()
            .contains("--- stdout ---\n4\n"));
        assert_eq!(v[1]["type"], "image");
        assert_eq!(v[1]["mimeType"], "image/png");
        let r = tool_result(RunResult::ended(
            Ending::Limit(Limit::Timeout),
            "",
            "Execution failed: Execution timeout exceeded",
        ));
        assert_eq!(r.is_error, Some(true));
        let v = serde_json::to_value(&r.content).unwrap();
        assert!(v[0]["text"].as_str().unwrap().contains("timeout exceeded"));
    }
}
