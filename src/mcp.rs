//! The MCP front end: the run service as Model Context Protocol tools, over stdio (`nsbox mcp`) and streamable HTTP (`/mcp` on `nsbox serve`).
//!
//! An adapter like the HTTP API: a tool call's arguments become a `CodeRequest` (or a
//! session or file request), the `RunResult` becomes text content (stdout, stderr, how the
//! run ended, violations, the output files and the session), one `image/png` content per
//! plot, so an agent host shows the chart, and one content per output file (an image, or
//! an embedded resource: text when it is text, a blob otherwise). Arguments of the wrong
//! shape, and values the service refuses, are protocol errors (invalid params); code that
//! ran and failed, or that the scanner refused, an unknown or busy session, a missing file
//! or a full server is a tool result with `isError`, so the model reads why and can act.
//!
//! Sessions and shares of the run slots belong to the caller as over the REST API: over
//! HTTP the owner is what the server's `owner_of` makes of the request's headers (its API
//! key's fingerprint) and the user its `x-relaxai-userid`; over stdio there is one client
//! and no key (owner `None`, no user).

use std::sync::Arc;

use base64::Engine as _;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ResourceContents, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{json, Value};
use tracing::Instrument;

use crate::config::Config;
use crate::host::{LocalService, StartError};
use crate::sandbox::{NotebookOutput, OutputType, CHART_MIME};
use crate::service::files::{mime_type, FileContent, FileInput};
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
    let local = LocalService::start(config, config.mode, never, Default::default())?;
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

/// The tools' names.
pub const RUN_PYTHON: &str = "run_python";
pub const CREATE_SESSION: &str = "create_session";
pub const CLOSE_SESSION: &str = "close_session";
pub const LIST_FILES: &str = "list_files";
pub const DOWNLOAD_FILE: &str = "download_file";
pub const UPLOAD_FILE: &str = "upload_file";

/// Who a call over HTTP is, from its request's headers: the owner of the sessions it may
/// reach, as the REST API decides it (the API key's fingerprint, `None` without keys).
pub type OwnerOf = dyn Fn(&axum::http::HeaderMap) -> Option<String> + Send + Sync;

/// The MCP server over one run service. Cheap to clone: the streamable HTTP transport makes
/// one per MCP session.
#[derive(Clone)]
pub struct McpServer {
    service: Arc<RunService>,
    tools: Arc<Vec<Tool>>,
    instructions: Arc<String>,
    owner_of: Arc<OwnerOf>,
}

/// Who called, for one tool call: the owner of the sessions it may reach and of its share
/// of the runs, its user, and the id its log lines carry.
struct Caller {
    owner: Option<String>,
    /// The request's `x-relaxai-userid` (over HTTP), for its share of its key's runs.
    user: Option<String>,
    request_id: String,
}

impl Caller {
    fn span(&self) -> tracing::Span {
        service::request_span(&self.request_id)
    }
}

impl McpServer {
    /// A server whose callers own nothing of their own (stdio: one client, no keys).
    pub fn new(service: Arc<RunService>) -> McpServer {
        let rules = Rules::of(&service);
        McpServer {
            tools: Arc::new(tools(&rules)),
            instructions: Arc::new(format!(
                "nsbox runs Python in an isolated sandbox. Call `{RUN_PYTHON}` with the code; \
                 for work in several steps (load data, then clean it, plot it, export it), \
                 call `{CREATE_SESSION}` first and pass its id to each `{RUN_PYTHON}`. {} {} {}",
                rules.sandbox, rules.files, rules.sessions
            )),
            owner_of: Arc::new(|_| None),
            service,
        }
    }

    /// Over HTTP: each call's sessions are those of the owner `owner_of` reads from the
    /// call's request headers, the same owner the REST API gives the same key.
    pub fn with_owner(
        mut self,
        owner_of: impl Fn(&axum::http::HeaderMap) -> Option<String> + Send + Sync + 'static,
    ) -> McpServer {
        self.owner_of = Arc::new(owner_of);
        self
    }

    /// The caller of a tool call: over streamable HTTP the transport hands the request's
    /// parts in the context (its headers carry the key and the `x-request-id`); over stdio
    /// there are none.
    fn caller(&self, context: &RequestContext<RoleServer>) -> Caller {
        let parts = context.extensions.get::<axum::http::request::Parts>();
        let owner = parts.and_then(|p| (self.owner_of)(&p.headers));
        let request_id = parts
            .and_then(|p| p.headers.get("x-request-id"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            // A call over stdio has no `x-request-id`; its log lines get an id of their own.
            .unwrap_or_else(|| format!("mcp-{}", uuid::Uuid::new_v4().simple()));
        let user = parts.and_then(|p| crate::api::auth::user(&p.headers));
        Caller {
            owner,
            user,
            request_id,
        }
    }

    async fn run_python(
        &self,
        arguments: JsonObject,
        caller: Caller,
    ) -> Result<CallToolResult, McpError> {
        let request = CodeRequest {
            owner: caller.owner.clone(),
            user: caller.user.clone(),
            request_id: Some(caller.request_id.clone()),
            ..code_request(&arguments)?
        };
        match self
            .service
            .execute(request)
            .instrument(caller.span())
            .await
        {
            Ok(result) => {
                let settings = self.service.settings();
                Ok(tool_result(
                    result,
                    settings.mcp_attach_bytes,
                    settings.mcp_text_chars,
                ))
            }
            Err(e) => service_error(e),
        }
    }

    async fn create_session(
        &self,
        arguments: JsonObject,
        caller: Caller,
    ) -> Result<CallToolResult, McpError> {
        let args = Args::new(&arguments, &["libraries", "ttl_seconds"])?;
        let libraries = args.strings("libraries")?;
        let ttl = args.whole_number("ttl_seconds")?;
        let span = caller.span();
        let created = self
            .service
            .create_session(
                caller.owner,
                libraries,
                ttl,
                Some(caller.request_id),
                None,
                None,
            )
            .instrument(span)
            .await;
        match created {
            Ok(info) => Ok(CallToolResult::success(vec![json_text(&info)])),
            Err(e) => service_error(e),
        }
    }

    fn close_session(
        &self,
        arguments: JsonObject,
        caller: Caller,
    ) -> Result<CallToolResult, McpError> {
        let args = Args::new(&arguments, &["session_id"])?;
        let id = args.required("session_id")?;
        match self.service.close_session(id, &caller.owner) {
            Ok(()) => Ok(CallToolResult::success(vec![ContentBlock::text(format!(
                "Session {id} is closed: its interpreter, variables and files are gone."
            ))])),
            Err(e) => service_error(e),
        }
    }

    async fn list_files(
        &self,
        arguments: JsonObject,
        caller: Caller,
    ) -> Result<CallToolResult, McpError> {
        let args = Args::new(&arguments, &["session_id"])?;
        let id = args.required("session_id")?;
        let span = caller.span();
        let listed = self
            .service
            .list_session_files(id, &caller.owner, Some(caller.request_id))
            .instrument(span)
            .await;
        match listed {
            Ok(files) => Ok(CallToolResult::success(vec![json_text(
                &json!({ "files": files }),
            )])),
            Err(e) => service_error(e),
        }
    }

    async fn download_file(
        &self,
        arguments: JsonObject,
        caller: Caller,
    ) -> Result<CallToolResult, McpError> {
        let args = Args::new(&arguments, &["session_id", "path"])?;
        let id = args.required("session_id")?;
        let path = args.required("path")?;
        let span = caller.span();
        let read = self
            .service
            .read_session_file(id, &caller.owner, path, Some(caller.request_id))
            .instrument(span)
            .await;
        match read {
            Ok(bytes) => {
                let mime = mime_type(path);
                let line = format!("{path}: {} bytes, {mime}.", bytes.len());
                let content = BASE64.encode(&bytes);
                Ok(CallToolResult::success(vec![
                    ContentBlock::text(line),
                    file_block(file_uri(Some(id), path), &mime, content),
                ]))
            }
            Err(e) => service_error(e),
        }
    }

    async fn upload_file(
        &self,
        arguments: JsonObject,
        caller: Caller,
    ) -> Result<CallToolResult, McpError> {
        let args = Args::new(
            &arguments,
            &["session_id", "path", "content", "content_base64", "append"],
        )?;
        let id = args.required("session_id")?;
        let path = args.required("path")?;
        let append = match args.get("append") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("`append` must be true or false")),
        };
        let content = file_content(&arguments, &format!("upload {path:?}"))?;
        let span = caller.span();
        let written = self
            .service
            .write_session_file(
                id,
                &caller.owner,
                path,
                content,
                append,
                Some(caller.request_id),
            )
            .instrument(span)
            .await;
        match written {
            Ok(written) => Ok(CallToolResult::success(vec![json_text(&written)])),
            Err(e) => service_error(e),
        }
    }
}

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A value as JSON text content.
fn json_text(value: &impl serde::Serialize) -> ContentBlock {
    ContentBlock::text(serde_json::to_string_pretty(value).unwrap_or_default())
}

/// A `ServiceError` as MCP answers it. Values the contract refuses are the caller's error
/// (invalid params, as for a wrong shape); what the model can act on (an unknown or busy
/// session, a missing file, a full server) is a tool result with `isError`, in words it
/// reads; nsbox's own failures are internal errors, without their details.
fn service_error(e: ServiceError) -> Result<CallToolResult, McpError> {
    let says = |text: String| Ok(CallToolResult::error(vec![ContentBlock::text(text)]));
    match e {
        ServiceError::Invalid(m) | ServiceError::TooLarge(m) => {
            Err(McpError::invalid_params(m, None))
        }
        // The model may retry these later.
        ServiceError::Overloaded(m) => says(format!("nsbox is busy: {m}")),
        ServiceError::Unavailable(m) => says(format!("nsbox could not do it now: {m}")),
        ServiceError::NotFound(m) if m.starts_with("session") => says(format!(
            "{m}. Its variables and files are gone (or it was never yours): create a new \
             session with `{CREATE_SESSION}` and load what you need again."
        )),
        ServiceError::NotFound(m) => {
            says(format!("{m}. `{LIST_FILES}` lists the session's files."))
        }
        ServiceError::Misdirected(m) => says(format!(
            "{m}. Its variables and files are on that node; if it is gone, create a new \
             session with `{CREATE_SESSION}`."
        )),
        ServiceError::Conflict(m) => says(format!(
            "{m}. Wait for the answer of the call that is running, then call again."
        )),
        ServiceError::SetupFailed { .. } | ServiceError::Internal => Err(McpError::internal_error(
            "the sandbox could not run the code",
            None,
        )),
    }
}

/// What the model must know to write code that works here, read from the root filesystem
/// and the configuration.
struct Rules {
    /// The interpreter, the libraries with their versions, the working directory, the
    /// limits of a call.
    sandbox: String,
    /// Files in and out.
    files: String,
    /// Sessions: what they keep, one call at a time, when they end.
    sessions: String,
}

impl Rules {
    fn of(service: &RunService) -> Rules {
        Rules {
            sandbox: sandbox_rules(service),
            files: file_rules(service),
            sessions: session_rules(service),
        }
    }
}

/// The interpreter, the libraries with their versions (read from the root filesystem), the
/// working directory and the limits of a call.
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
         no package installation. The working directory is /tmp/work, on a private /tmp \
         of {tmp} MiB; the rest of the filesystem is read-only. Without a session each \
         call starts a fresh interpreter and its files are discarded after the call; in a \
         session (`{CREATE_SESSION}`, then `{RUN_PYTHON}` with its `session_id`) \
         variables, imports and the files of /tmp/work are kept between calls. Limits per \
         call: timeout {default_timeout} s by default (at most {max_timeout} s, set with \
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

/// Files in and out: paths and caps.
fn file_rules(service: &RunService) -> String {
    let files = &service.settings().files;
    format!(
        "File paths are relative to /tmp/work (no leading `/`, no `..`). At most {count} \
         files, {per} MiB each and {total} MiB in all go in or come out of one call; a \
         larger output file is listed but not returned. Output files are attached to a \
         call's result up to {attach} KiB in all; the others are listed by path and size \
         (in a session, fetch one with `{DOWNLOAD_FILE}`).",
        count = files.max_count,
        per = files.max_file_bytes >> 20,
        total = files.max_total_bytes >> 20,
        attach = service.settings().mcp_attach_bytes >> 10,
    )
}

/// Sessions: what they keep, one call at a time, when they end.
fn session_rules(service: &RunService) -> String {
    let s = &service.settings().sessions;
    format!(
        "A session keeps one Python interpreter alive between calls: variables, imports, \
         functions, DataFrames and the files of /tmp/work persist until it ends, and the \
         {memory} MiB memory limit holds for all it keeps. Send one call at a time to a \
         session: a call or file request while another runs in it is refused as busy, \
         never queued. A session ends after {idle} s without a call (`ttl_seconds` sets \
         this, at most {max_idle} s), {lifetime} s after it was created however busy, \
         when `{CLOSE_SESSION}` is called, or when the code ends the interpreter (exit(), \
         a crash, the memory limit, or a timeout it does not stop within 1 s of the \
         interrupt); its state is then gone. A server restart ends every session. Close \
         sessions you no longer need.",
        memory = service.settings().limits.memory_bytes >> 20,
        idle = s.idle_ttl.as_secs(),
        max_idle = s.max_idle_ttl.as_secs(),
        lifetime = s.max_lifetime.as_secs(),
    )
}

fn schema(value: Value) -> JsonObject {
    let Value::Object(schema) = value else {
        unreachable!("the schemas are object literals")
    };
    schema
}

fn session_id_schema() -> Value {
    json!({
        "type": "string",
        "description": format!("The session's id, as `{CREATE_SESSION}` returned it (`sess_...`).")
    })
}

fn tools(rules: &Rules) -> Vec<Tool> {
    let Rules {
        sandbox,
        files,
        sessions,
    } = rules;
    let file_item = json!({
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "Where the file goes, relative to /tmp/work (e.g. data/sales.csv)."},
            "content": {"type": "string", "description": "The file's content as UTF-8 text."},
            "content_base64": {"type": "string", "description": "The file's bytes in base64 (for binary files); instead of `content`."}
        },
        "required": ["path"],
        "additionalProperties": false
    });
    vec![
        Tool::new(
            RUN_PYTHON,
            format!(
                "Run a Python program in an isolated sandbox and return its output, its \
                 figures as PNG images, and the files it creates or changes in /tmp/work \
                 (when `files` is given, even empty, or in a session). {sandbox} {files} \
                 {sessions}"
            ),
            schema(json!({
                "type": "object",
                "properties": {
                    "code": {
                        "type": "string",
                        "description": "The Python program to run (at most 50,000 characters)."
                    },
                    "timeout": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "description": "Seconds the run may take before it is stopped."
                    },
                    "libraries": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "Libraries the code needs (checked against those installed)."
                    },
                    "session_id": {
                        "type": "string",
                        "description": format!("Run in this session (from `{CREATE_SESSION}`), where earlier calls' variables and files are kept.")
                    },
                    "files": {
                        "type": "array",
                        "items": file_item,
                        "description": "Files written into /tmp/work before the code runs, each with `path` and `content` or `content_base64`. Given (even empty), the files the code creates or changes come back."
                    },
                    "results": {
                        "type": "boolean",
                        "description": "Show the value of the last line (as a notebook does), what display() shows, tables as markdown and a summary of each chart's data (default true)."
                    }
                },
                "required": ["code"],
                "additionalProperties": false
            })),
        ),
        Tool::new(
            CREATE_SESSION,
            format!(
                "Start a session: a sandboxed Python interpreter that keeps its state \
                 between `{RUN_PYTHON}` calls given its id. Returns the session as JSON \
                 (`id`, `expires_at`, `ttl_seconds`, `memory_limit_bytes`, ...). {sessions} \
                 {files}"
            ),
            schema(json!({
                "type": "object",
                "properties": {
                    "libraries": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "Libraries the session's code will use (checked against those installed)."
                    },
                    "ttl_seconds": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Seconds the session may stay unused before it ends."
                    }
                },
                "additionalProperties": false
            })),
        ),
        Tool::new(
            CLOSE_SESSION,
            format!(
                "End a session now and free its memory: its interpreter, variables and \
                 files in /tmp/work are gone. A call running in it is stopped. {sessions}"
            ),
            schema(json!({
                "type": "object",
                "properties": {"session_id": session_id_schema()},
                "required": ["session_id"],
                "additionalProperties": false
            })),
        ),
        Tool::new(
            LIST_FILES,
            format!(
                "List the regular files of a session's working directory /tmp/work, as \
                 JSON: `{{\"files\": [{{\"path\", \"size\", \"mime_type\"}}]}}`, paths \
                 relative to /tmp/work. One call at a time per session, as for \
                 `{RUN_PYTHON}`."
            ),
            schema(json!({
                "type": "object",
                "properties": {"session_id": session_id_schema()},
                "required": ["session_id"],
                "additionalProperties": false
            })),
        ),
        Tool::new(
            DOWNLOAD_FILE,
            format!(
                "Return one file of a session's working directory /tmp/work: an image as \
                 an image, text as a text resource, anything else as a base64 blob \
                 resource, each with its media type. One call at a time per session, as \
                 for `{RUN_PYTHON}`. {files}"
            ),
            schema(json!({
                "type": "object",
                "properties": {
                    "session_id": session_id_schema(),
                    "path": {"type": "string", "description": "The file's path, relative to /tmp/work (e.g. out/summary.csv)."}
                },
                "required": ["session_id", "path"],
                "additionalProperties": false
            })),
        ),
        Tool::new(
            UPLOAD_FILE,
            format!(
                "Write one file into a session's working directory /tmp/work (directories \
                 are made on the way; a file of the same path is replaced), for the \
                 session's code to read later, e.g. pd.read_csv('data/sales.csv'). Give \
                 `content` (UTF-8 text) or `content_base64` (binary). A file larger than \
                 one call may carry (a few MiB) goes in pieces: the first call \
                 without `append`, the next ones with `append: true`. One call at a time \
                 per session, as for `{RUN_PYTHON}`. {files}"
            ),
            schema(json!({
                "type": "object",
                "properties": {
                    "session_id": session_id_schema(),
                    "path": {"type": "string", "description": "Where the file goes, relative to /tmp/work (e.g. data/sales.csv)."},
                    "content": {"type": "string", "description": "The file's content as UTF-8 text."},
                    "content_base64": {"type": "string", "description": "The file's bytes in base64 (for binary files); instead of `content`."},
                    "append": {"type": "boolean", "description": "Add this piece at the end of the file instead of replacing it (default false). The answer's size is the whole file's."}
                },
                "required": ["session_id", "path"],
                "additionalProperties": false
            })),
        ),
    ]
}

fn invalid(m: impl Into<String>) -> McpError {
    McpError::invalid_params(m.into(), None)
}

/// A tool's arguments, read for their types (the values' rules are the service's). A
/// `null` is an argument not given.
struct Args<'a>(&'a JsonObject);

impl<'a> Args<'a> {
    /// Refuses arguments the tool does not take.
    fn new(arguments: &'a JsonObject, known: &[&str]) -> Result<Args<'a>, McpError> {
        if let Some(unknown) = arguments.keys().find(|k| !known.contains(&k.as_str())) {
            let takes: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
            return Err(invalid(format!(
                "unknown argument `{unknown}`; this tool takes {}",
                takes.join(", ")
            )));
        }
        Ok(Args(arguments))
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, McpError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid(format!("`{name}` must be a string"))),
        }
    }

    fn required(&self, name: &str) -> Result<&'a str, McpError> {
        self.string(name)?
            .ok_or_else(|| invalid(format!("`{name}` is required")))
    }

    fn strings(&self, name: &str) -> Result<Vec<String>, McpError> {
        let wrong = || invalid(format!("`{name}` must be an array of strings"));
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(wrong),
            Some(_) => Err(wrong()),
        }
    }

    fn whole_number(&self, name: &str) -> Result<Option<u64>, McpError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| invalid(format!("`{name}` must be a whole number of seconds"))),
            Some(_) => Err(invalid(format!(
                "`{name}` must be a whole number of seconds"
            ))),
        }
    }

    /// Input files: `[{"path", "content" | "content_base64"}]`, as the HTTP API takes them.
    fn files(&self, name: &str) -> Result<Option<Vec<FileInput>>, McpError> {
        let items = match self.get(name) {
            None => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(_) => {
                return Err(invalid(format!(
                    "`{name}` must be an array of {{\"path\", \"content\" or \"content_base64\"}} objects"
                )))
            }
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let Value::Object(o) = item else {
                    return Err(invalid(format!("`{name}[{i}]` must be an object")));
                };
                let file = Args::new(o, &["path", "content", "content_base64"])
                    .map_err(|e| invalid(format!("`{name}[{i}]`: {}", e.message)))?;
                let path = file
                    .required("path")
                    .map_err(|e| invalid(format!("`{name}[{i}]`: {}", e.message)))?;
                Ok(FileInput {
                    path: path.to_string(),
                    content: file_content(o, &format!("`{name}[{i}]` ({path:?})"))?,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

/// A file's content: exactly one of `content` (UTF-8 text) or `content_base64`.
fn file_content(o: &JsonObject, what: &str) -> Result<FileContent, McpError> {
    let given = |k: &str| o.get(k).filter(|v| !v.is_null());
    match (given("content"), given("content_base64")) {
        (Some(Value::String(text)), None) => Ok(FileContent::Text(text.clone())),
        (None, Some(Value::String(b64))) => Ok(FileContent::Base64(b64.clone())),
        (Some(_), Some(_)) => Err(invalid(format!(
            "{what} has both `content` and `content_base64`; send one"
        ))),
        (None, None) => Err(invalid(format!(
            "{what} needs `content` (text) or `content_base64`"
        ))),
        _ => Err(invalid(format!(
            "{what}: `content` and `content_base64` must be strings"
        ))),
    }
}

/// `run_python`'s arguments as a run request; a wrong shape is the caller's error.
fn code_request(arguments: &JsonObject) -> Result<CodeRequest, McpError> {
    let args = Args::new(
        arguments,
        &[
            "code",
            "timeout",
            "libraries",
            "session_id",
            "files",
            "results",
        ],
    )?;
    let code = args.required("code")?.to_string();
    let timeout_s = match args.get("timeout") {
        None => None,
        // A number too large for f64 is out of range like any other.
        Some(Value::Number(n)) => Some(n.as_f64().unwrap_or(f64::INFINITY)),
        Some(_) => return Err(invalid("`timeout` must be a number of seconds")),
    };
    Ok(CodeRequest {
        code,
        timeout_s,
        libraries: args.strings("libraries")?,
        session_id: args.string("session_id")?.map(str::to_string),
        files: args.files("files")?,
        // A model reads a value it did not print: results are on unless asked off.
        results: Some(match args.get("results") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("`results` must be true or false")),
        }),
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
        Ending::Limit(Limit::Timeout) => "The run was stopped: timeout exceeded.".into(),
        Ending::Limit(Limit::Memory) => "The run was killed: memory limit exceeded.".into(),
        Ending::Limit(Limit::Cpu) => "The run was killed: CPU time limit exceeded.".into(),
        Ending::Signaled { signal } => format!("The run was killed by signal {signal}."),
    }
}

/// Where a file of the working directory is, as a resource's URI: the session's, or the
/// one-off run's (gone after the call).
fn file_uri(session: Option<&str>, path: &str) -> String {
    let mut encoded = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    match session {
        Some(id) => format!("nsbox://sessions/{id}/files/{encoded}"),
        None => format!("nsbox://run/files/{encoded}"),
    }
}

/// The image types agent hosts show as images.
const IMAGE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// One file as content: an image as an image (the host shows it), UTF-8 text as a text
/// resource (the model reads it), anything else as a base64 blob resource.
fn file_block(uri: String, mime: &str, content_base64: String) -> ContentBlock {
    if IMAGE_TYPES.contains(&mime) {
        return ContentBlock::image(content_base64, mime);
    }
    let text = BASE64
        .decode(&content_base64)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|t| !t.contains('\0'));
    let resource = match text {
        Some(text) => ResourceContents::text(text, uri),
        None => ResourceContents::blob(content_base64, uri),
    };
    ContentBlock::resource(resource.with_mime_type(mime))
}

/// A run's result as tool content. Output files are attached in path order while their
/// bytes stay within `attach_bytes` (what a run may return is far more than a model's
/// context should take); the others are listed by path and size.
fn tool_result(result: RunResult, attach_bytes: u64, max_text: usize) -> CallToolResult {
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
    let mut result_blocks = Vec::new();
    for (i, output) in result.results.iter().flatten().enumerate() {
        render_result(i + 1, output, &mut text, &mut result_blocks);
    }
    if let Some(error) = result.error.as_ref() {
        text.push_str(&format!(
            "\n--- error ---\n{}: {}{}\n",
            error.ename,
            error.evalue,
            error
                .lineno
                .map(|l| format!(" (line {l} of the code)"))
                .unwrap_or_default()
        ));
    }
    let plots = result.plots.len();
    if plots > 0 {
        text.push_str(&format!("\n{plots} figure(s) attached as PNG images."));
    }
    let session = result.session.as_ref();
    let mut files = result.files.unwrap_or_default();
    if !files.is_empty() {
        text.push_str("\nFiles created or changed in /tmp/work:");
        let mut attached = 0u64;
        for f in &mut files {
            text.push_str(&format!(
                "\n- {} ({} bytes, {})",
                f.path,
                f.size,
                mime_type(&f.path)
            ));
            if f.truncated {
                text.push_str(": too large to return, not attached");
            } else if attached.saturating_add(f.size) > attach_bytes {
                f.content_base64 = None;
                text.push_str(&format!(
                    ": not attached (past {} KiB of files attached per call); ",
                    attach_bytes >> 10
                ));
                text.push_str(match session {
                    Some(s) if s.state == "active" => "fetch it with `download_file`",
                    _ => "in a session, it could be fetched with `download_file`",
                });
            } else {
                attached += f.size;
                text.push_str(": attached");
            }
        }
    }
    if !result.skipped_files.is_empty() {
        let skipped: Vec<String> = result
            .skipped_files
            .iter()
            .map(|s| format!("{} ({})", s.path, skip_reason(s.reason)))
            .collect();
        text.push_str(&format!(
            "\nNot returned (only regular files are): {}",
            skipped.join(", ")
        ));
    }
    match session {
        Some(s) if s.state == "active" => text.push_str(&format!(
            "\nSession {}: active; its variables and files are kept for the next call.",
            s.id
        )),
        Some(s) => text.push_str(&format!(
            "\nSession {} has ended ({}): its variables and files are gone; create a new \
             session to go on.",
            s.id,
            s.reason.as_deref().unwrap_or("no reason given")
        )),
        None => {}
    }
    let mut content = vec![ContentBlock::text(bounded_text(text, max_text))];
    content.extend(
        result
            .plots
            .into_iter()
            .map(|p| ContentBlock::image(p.content_base64, "image/png")),
    );
    content.extend(result_blocks);
    let session_id = session.map(|s| s.id.as_str());
    content.extend(files.into_iter().filter_map(|f| {
        let body = f.content_base64?;
        Some(file_block(
            file_uri(session_id, &f.path),
            &mime_type(&f.path),
            body,
        ))
    }));
    if result.ending == (Ending::Exited { code: 0 }) {
        CallToolResult::success(content)
    } else {
        CallToolResult::error(content)
    }
}

/// The largest HTML result attached as a resource: a table's markdown or a chart's summary
/// is what a model reads; the HTML is for a host that renders it.
const HTML_RESOURCE_MAX: usize = 64 << 10;

/// A JSON string value of a result's bundle, as text.
fn bundle_text(output: &NotebookOutput, mime: &str) -> Option<String> {
    serde_json::from_str(output.data.get(mime)?.as_str()).ok()
}

/// One notebook result for a model: its markdown (a table it reads best) or plain text, and
/// a figure's chart summary, as text; an image that is not a figure (those are attached as
/// plots) as an image; HTML with no markdown beside it as a resource.
fn render_result(
    n: usize,
    output: &NotebookOutput,
    text: &mut String,
    blocks: &mut Vec<ContentBlock>,
) {
    let what = match output.output_type {
        OutputType::ExecuteResult => "value of the last line",
        OutputType::DisplayData => "displayed",
    };
    text.push_str(&format!("\n--- result {n} ({what}) ---\n"));
    let markdown = bundle_text(output, "text/markdown");
    let body = markdown
        .clone()
        .or_else(|| bundle_text(output, "text/plain"))
        .unwrap_or_default();
    text.push_str(&body);
    if !body.ends_with('\n') {
        text.push('\n');
    }
    let figure = output.data.get(CHART_MIME);
    if let Some(chart) = figure {
        text.push_str(&format!("chart data: {}\n", chart.as_str()));
    } else {
        for mime in ["image/png", "image/jpeg"] {
            if let Some(image) = bundle_text(output, mime) {
                blocks.push(ContentBlock::image(image, mime));
            }
        }
    }
    if markdown.is_none() {
        if let Some(html) = bundle_text(output, "text/html") {
            if html.len() <= HTML_RESOURCE_MAX {
                let resource = ResourceContents::text(html, format!("nsbox://run/results/{n}"));
                blocks.push(ContentBlock::resource(resource.with_mime_type("text/html")));
            } else {
                text.push_str(&format!(
                    "(its HTML, {} bytes, is not attached)\n",
                    html.len()
                ));
            }
        }
    }
}

/// The text a model is given, within `max` characters: the head and the tail, with a line
/// saying how much of the middle was left out.
fn bounded_text(text: String, max: usize) -> String {
    let total = text.chars().count();
    if total <= max {
        return text;
    }
    let head = max * 2 / 3;
    let tail = max - head;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(total - tail).collect();
    format!(
        "{start}\n[nsbox: {} characters left out here; at most {max} are returned]\n{end}",
        total - head - tail
    )
}

fn skip_reason(reason: crate::sandbox::SkipReason) -> &'static str {
    use crate::sandbox::SkipReason;
    match reason {
        SkipReason::Symlink => "a symbolic link",
        SkipReason::NotRegularFile => "not a regular file",
        SkipReason::TooDeep => "deeper than 32 levels",
        SkipReason::EntryLimit => "past 20,000 entries",
    }
}

/// Every tool's name, as an unknown tool's error lists them.
const TOOLS: [&str; 6] = [
    RUN_PYTHON,
    CREATE_SESSION,
    CLOSE_SESSION,
    LIST_FILES,
    DOWNLOAD_FILE,
    UPLOAD_FILE,
];

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
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let caller = self.caller(&context);
        let arguments = request.arguments.unwrap_or_default();
        let result = match request.name.as_ref() {
            RUN_PYTHON => self.run_python(arguments, caller).await,
            CREATE_SESSION => self.create_session(arguments, caller).await,
            CLOSE_SESSION => self.close_session(arguments, caller),
            LIST_FILES => self.list_files(arguments, caller).await,
            DOWNLOAD_FILE => self.download_file(arguments, caller).await,
            UPLOAD_FILE => self.upload_file(arguments, caller).await,
            other => Err(McpError::invalid_params(
                format!(
                    "unknown tool `{other}`; the tools are: {}",
                    TOOLS.join(", ")
                ),
                None,
            )),
        };
        result.map(Into::into)
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
            json!({"code": "x", "session_id": 5}),
            json!({"code": "x", "files": {"a": "b"}}),
            json!({"code": "x", "files": [{"path": "a"}]}),
            json!({"code": "x", "files": [{"path": "a", "content": "x", "content_base64": "eA=="}]}),
            json!({"code": "x", "files": [{"path": "a", "contents": "x"}]}),
            json!({"code": "x", "files": [{"content": "x"}]}),
        ] {
            let err = code_request(&args(bad.clone())).unwrap_err();
            assert_eq!(err.code, rmcp::model::ErrorCode::INVALID_PARAMS, "{bad}");
        }
        let ok = code_request(&args(
            json!({"code": "print(1)", "timeout": 2.5, "libraries": ["numpy"]}),
        ))
        .unwrap();
        assert_eq!((ok.timeout_s, ok.libraries.len()), (Some(2.5), 1));
        assert_eq!((ok.files, ok.session_id), (None, None));
        let ok = code_request(&args(json!({
            "code": "x",
            "session_id": "sess_1",
            "files": [{"path": "a.csv", "content": "x"}, {"path": "b.bin", "content_base64": "AA=="}],
        })))
        .unwrap();
        assert_eq!(ok.session_id.as_deref(), Some("sess_1"));
        assert_eq!(
            ok.files.unwrap(),
            [
                FileInput {
                    path: "a.csv".into(),
                    content: FileContent::Text("x".into())
                },
                FileInput {
                    path: "b.bin".into(),
                    content: FileContent::Base64("AA==".into())
                }
            ]
        );
        let empty = code_request(&args(json!({"code": "x", "files": []}))).unwrap();
        assert_eq!(
            empty.files,
            Some(vec![]),
            "an empty list still asks for the output files"
        );
    }

    #[test]
    fn files_are_images_text_or_blobs() {
        let b64 = |b: &[u8]| BASE64.encode(b);
        let v = |c: ContentBlock| serde_json::to_value(c).unwrap();
        let image = v(file_block("u".into(), "image/png", b64(b"\x89PNG")));
        assert_eq!(
            (image["type"].as_str(), image["mimeType"].as_str()),
            (Some("image"), Some("image/png"))
        );
        let text = v(file_block("u".into(), "text/csv", b64(b"a,b\n1,2\n")));
        assert_eq!(text["type"], "resource");
        assert_eq!(text["resource"]["text"], "a,b\n1,2\n");
        assert_eq!(text["resource"]["mimeType"], "text/csv");
        let blob = v(file_block(
            "u".into(),
            "application/octet-stream",
            b64(&[0, 159, 146, 150]),
        ));
        assert_eq!(blob["resource"]["blob"], "AJ+Slg==");
        assert_eq!(blob["resource"]["uri"], "u");
        assert_eq!(
            file_uri(Some("sess_1"), "out/x y/ü.csv"),
            "nsbox://sessions/sess_1/files/out/x%20y/%C3%BC.csv"
        );
        assert_eq!(file_uri(None, "a.txt"), "nsbox://run/files/a.txt");
    }

    #[test]
    fn a_session_call_lists_its_files_and_says_the_session() {
        let file = |path: &str, content: Option<&str>| crate::sandbox::OutputFile {
            path: path.into(),
            size: 3,
            content_base64: content.map(|c| BASE64.encode(c)),
            truncated: content.is_none(),
        };
        let r = tool_result(
            RunResult {
                files: Some(vec![file("out/a.csv", Some("x,y")), file("big.bin", None)]),
                session: Some(service::SessionState {
                    id: "sess_1".into(),
                    state: "active",
                    reason: None,
                }),
                ..RunResult::ended(Ending::Exited { code: 0 }, "", "")
            },
            1 << 20,
            20_000,
        );
        let v = serde_json::to_value(&r.content).unwrap();
        let text = v[0]["text"].as_str().unwrap();
        assert!(text.contains("- out/a.csv (3 bytes, text/csv)"), "{text}");
        assert!(
            text.contains("- big.bin (3 bytes, application/octet-stream): too large"),
            "{text}"
        );
        assert!(text.contains("Session sess_1: active"), "{text}");
        assert_eq!(
            v.as_array().unwrap().len(),
            2,
            "the truncated file has no content"
        );
        assert_eq!(
            v[1]["resource"]["uri"],
            "nsbox://sessions/sess_1/files/out/a.csv"
        );
    }

    #[test]
    fn files_past_the_attach_cap_are_listed_for_download_file() {
        let file = |path: &str, size: usize| crate::sandbox::OutputFile {
            path: path.into(),
            size: size as u64,
            content_base64: Some(BASE64.encode(vec![b'x'; size])),
            truncated: false,
        };
        let files = vec![file("a.txt", 600), file("b.csv", 600), file("c.txt", 300)];
        let result = |session| RunResult {
            files: Some(files.clone()),
            session,
            ..RunResult::ended(Ending::Exited { code: 0 }, "", "")
        };
        let active = service::SessionState {
            id: "sess_1".into(),
            state: "active",
            reason: None,
        };
        // 1 KiB: a.txt fits, b.csv would pass it, c.txt still fits.
        let r = tool_result(result(Some(active)), 1 << 10, 20_000);
        let v = serde_json::to_value(&r.content).unwrap();
        let text = v[0]["text"].as_str().unwrap();
        assert!(
            text.contains("- a.txt (600 bytes, text/plain): attached"),
            "{text}"
        );
        assert!(
            text.contains("- b.csv (600 bytes, text/csv): not attached (past 1 KiB")
                && text.contains("fetch it with `download_file`"),
            "{text}"
        );
        assert!(
            text.contains("- c.txt (300 bytes, text/plain): attached"),
            "{text}"
        );
        let uris: Vec<&str> = v.as_array().unwrap()[1..]
            .iter()
            .map(|c| c["resource"]["uri"].as_str().unwrap())
            .collect();
        assert_eq!(
            uris,
            [
                "nsbox://sessions/sess_1/files/a.txt",
                "nsbox://sessions/sess_1/files/c.txt"
            ]
        );
        // What the call skipped is named in the text too.
        let r = tool_result(
            RunResult {
                skipped_files: vec![crate::sandbox::SkippedFile {
                    path: "rootdir".into(),
                    reason: crate::sandbox::SkipReason::Symlink,
                }],
                ..result(None)
            },
            1 << 10,
            20_000,
        );
        let v = serde_json::to_value(&r.content).unwrap();
        let text = v[0]["text"].as_str().unwrap();
        assert!(
            text.contains("Not returned (only regular files are): rootdir (a symbolic link)"),
            "{text}"
        );
        // No cap at all: every file is listed, none attached.
        let r = tool_result(result(None), 0, 20_000);
        let v = serde_json::to_value(&r.content).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
        assert_eq!(
            v[0]["text"]
                .as_str()
                .unwrap()
                .matches("not attached")
                .count(),
            3
        );
    }

    #[test]
    fn service_errors_the_model_can_act_on_are_tool_errors() {
        for e in [
            ServiceError::NotFound("session not found".into()),
            ServiceError::Conflict("session busy".into()),
            ServiceError::Overloaded("session limit reached".into()),
        ] {
            let r = service_error(e.clone()).unwrap();
            assert_eq!(r.is_error, Some(true), "{e:?}");
        }
        let e = service_error(ServiceError::Invalid("bad path".into())).unwrap_err();
        assert_eq!(e.code, rmcp::model::ErrorCode::INVALID_PARAMS);
    }

    #[test]
    fn every_tool_is_listed_and_takes_objects() {
        let rules = Rules {
            sandbox: "S".into(),
            files: "F".into(),
            sessions: "X".into(),
        };
        let tools = tools(&rules);
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(names, TOOLS);
        for t in &tools {
            assert_eq!(t.input_schema["type"], "object", "{}", t.name);
            assert_eq!(t.input_schema["additionalProperties"], false, "{}", t.name);
        }
    }

    #[test]
    fn a_result_is_text_then_one_image_per_plot() {
        let plot = crate::sandbox::Plot {
            content_base64: "iVBORw0K".into(),
            format: "png".into(),
            filename: "plot_1.png".into(),
        };
        let r = tool_result(
            RunResult {
                plots: vec![plot],
                ..RunResult::ended(Ending::Exited { code: 0 }, "4\n", "")
            },
            1 << 20,
            20_000,
        );
        assert_eq!(r.is_error, Some(false));
        let v = serde_json::to_value(&r.content).unwrap();
        assert_eq!(v[0]["type"], "text");
        assert!(v[0]["text"]
            .as_str()
            .unwrap()
            .contains("--- stdout ---\n4\n"));
        assert_eq!(v[1]["type"], "image");
        assert_eq!(v[1]["mimeType"], "image/png");
        let r = tool_result(
            RunResult::ended(
                Ending::Limit(Limit::Timeout),
                "",
                "Execution failed: Execution timeout exceeded",
            ),
            1 << 20,
            20_000,
        );
        assert_eq!(r.is_error, Some(true));
        let v = serde_json::to_value(&r.content).unwrap();
        assert!(v[0]["text"].as_str().unwrap().contains("timeout exceeded"));
    }

    fn output(kind: OutputType, data: &[(&str, &str)]) -> NotebookOutput {
        NotebookOutput {
            output_type: kind,
            data: data
                .iter()
                .map(|(mime, json)| {
                    (
                        mime.to_string(),
                        crate::sandbox::JsonText::new(json).unwrap(),
                    )
                })
                .collect(),
            metadata: crate::sandbox::JsonText::new("{}").unwrap(),
        }
    }

    #[test]
    fn results_reach_the_model_as_markdown_text_chart_data_images_and_html() {
        let results = vec![
            output(
                OutputType::ExecuteResult,
                &[
                    ("text/plain", r#""   a\n0  1""#),
                    ("text/markdown", r#""|  | a |\n|---|---|\n| 0 | 1 |""#),
                    ("text/html", r#""<table></table>""#),
                ],
            ),
            output(
                OutputType::DisplayData,
                &[
                    ("text/plain", r#""<Figure>""#),
                    ("image/png", r#""iVBORw0KGgo=""#),
                    (CHART_MIME, r#"{"version":1,"axes":[{"type":"bar"}]}"#),
                ],
            ),
            output(
                OutputType::DisplayData,
                &[("text/plain", r#""<PIL>""#), ("image/png", r#""AAAA""#)],
            ),
            output(
                OutputType::DisplayData,
                &[
                    ("text/plain", r#""<HTML>""#),
                    ("text/html", r#""<b>x</b>""#),
                ],
            ),
        ];
        let r = tool_result(
            RunResult {
                results: Some(results),
                error: Some(crate::sandbox::NotebookError {
                    ename: "ZeroDivisionError".into(),
                    evalue: "division by zero".into(),
                    traceback: vec![],
                    lineno: Some(2),
                }),
                ..RunResult::ended(Ending::Exited { code: 1 }, "", "Traceback ...\n")
            },
            1 << 20,
            20_000,
        );
        let v = serde_json::to_value(&r.content).unwrap();
        let text = v[0]["text"].as_str().unwrap();
        assert!(
            text.contains("--- result 1 (value of the last line) ---\n|  | a |"),
            "{text}"
        );
        assert!(
            !text.contains("<table>"),
            "markdown stands for the table: {text}"
        );
        assert!(text.contains(r#"chart data: {"version":1,"axes":[{"type":"bar"}]}"#));
        assert!(text
            .contains("--- error ---\nZeroDivisionError: division by zero (line 2 of the code)"));
        // The figure comes as a plot; the PIL image as an image; HTML alone as a resource.
        assert_eq!(v.as_array().unwrap().len(), 3, "{v}");
        assert_eq!(
            (&v[1]["type"], &v[1]["data"]),
            (&json!("image"), &json!("AAAA"))
        );
        assert_eq!(v[2]["resource"]["mimeType"], "text/html");
        assert_eq!(v[2]["resource"]["text"], "<b>x</b>");
        assert_eq!(r.is_error, Some(true));
    }

    #[test]
    fn the_text_a_model_gets_is_bounded_head_and_tail() {
        let long: String = (0..50_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let r = tool_result(
            RunResult::ended(Ending::Exited { code: 0 }, &format!("START{long}END\n"), ""),
            0,
            1_000,
        );
        let v = serde_json::to_value(&r.content).unwrap();
        let text = v[0]["text"].as_str().unwrap();
        assert!(text.chars().count() < 1_100, "{}", text.len());
        assert!(text.contains("START") && text.contains("END"));
        assert!(text.contains("characters left out here; at most 1000 are returned"));
        assert_eq!(bounded_text("short".into(), 10), "short");
    }
}
