//! Programmatic tool calling: a program (Python or bash) that calls the client's tools.
//! A tool call suspends the running program; the client gets the calls, runs the tools and
//! sends the results back with the continuation token; the same run then goes on where it
//! stopped. Nothing is run twice (LibreChat's official Code API replays the whole program
//! on every continuation instead).
//!
//! - Python runs in the session's kernel as one cell (`programmatic_kernel.py`): tools are
//!   async functions that announce their calls as a display bundle of a private MIME type
//!   and await results the server sends over the kernel's control channel.
//! - bash is a one-shot run (`programmatic_tools.sh`): tools are shell functions that meet
//!   the server through FIFOs in a per-run directory bound into the sandbox.
//!
//! A suspended run keeps its session's turn (one run per session) and its run slot. It
//! waits at most `timeout` for its continuation, runs at most `timeout` between tool calls,
//! and never longer than `EXECUTION_TIMEOUT` in all. Everything the program says is
//! checked: tool names against the request's tools, ids, sizes and counts against limits.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::{ExecError, ExecEvent, ExecRequest, ExecResult, ExecService, FileRef, RunExtras};
use super::{RunHandle, Started};
use crate::runtime::{self, RunStatus};
use crate::sandbox::Mount;
use crate::session::{SessionOwner, Tenant, new_id};

/// Tools one request may offer (the official API's limit).
const MAX_TOOLS: usize = 100;
/// Tool calls one run may make in all.
const MAX_CALLS: usize = 1000;
/// Tool calls handed to the client in one `tool_call_required`; more wait for the next.
const MAX_CALLS_PER_ROUND: usize = 100;
/// The JSON input of one tool call.
const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// The inputs of one run's calls that wait for their results, together: what the server
/// holds for a suspended run (inputs are kept as JSON text, so this is their memory).
const MAX_HELD_INPUT_BYTES: usize = 8 * 1024 * 1024;
/// One tool result, as JSON (the official API's `PTC_MAX_TOOL_RESULT_BYTES`).
pub const MAX_RESULT_BYTES: usize = 5 * 1024 * 1024;
/// Calls made within this much of each other go to the client together (a Python
/// program's calls in one `asyncio.gather` come at once, and its helper says when every
/// task waits; a bash program's background calls each start a process first)...
const PYTHON_QUIET: Duration = Duration::from_millis(20);
const BASH_QUIET: Duration = Duration::from_millis(50);
/// ...but the first of them never waits longer than this.
const BATCH_LONGEST: Duration = Duration::from_millis(250);
/// Malformed announcements tolerated before the run is stopped as broken.
const MAX_PROTOCOL_ERRORS: usize = 1000;
/// A cancellation for a request id not seen yet is remembered this long, so the request
/// that arrives late is refused.
const CANCEL_MEMORY: Duration = Duration::from_secs(120);
/// Request ids remembered at most (in flight and cancelled).
const MAX_REQUEST_IDS: usize = 10_000;

const KERNEL_HELPER: &str = include_str!("programmatic_kernel.py");
const BASH_HELPER: &str = include_str!("programmatic_tools.sh");
/// The MIME type of the kernel helper's announcements (not output: notebooks leave them out).
pub const ANNOUNCEMENT: &str = "application/vnd.code-interpreter.ptc+json";
/// The control message that carries results to the kernel helper.
const RESULT_MESSAGE: &str = "code_interpreter_ptc_result";
/// Where a bash run's bridge directory appears in its sandbox.
const BRIDGE_INSIDE: &str = "/run/ptc";

/// What the client's error handling recognises (LibreChat shows these to the model).
const CANCELLED: &str = "Programmatic execution request cancelled";
const TIME_LIMIT: &str = "Time limit exceeded";
const FAILED: &str = "Execution failed or timed out";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramLanguage {
    Python,
    Bash,
}

/// A tool the program may call, as the client describes it (LangChain's `LCTool`).
#[derive(Debug, Clone)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the input (`{"type": "object", "properties": …, "required": …}`).
    pub parameters: Option<Value>,
}

/// Who may continue or cancel a run: its tenant, and the user the credentials vouch for
/// (a verified token's subject; none for an API key, which names no user). A user named
/// only in a request body vouches for nothing and is not part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: Tenant,
    pub user: Option<String>,
}

pub struct ProgramRequest {
    pub principal: Principal,
    pub language: ProgramLanguage,
    pub code: String,
    pub tools: Vec<ToolSpec>,
    pub session_id: Option<String>,
    pub owner: SessionOwner,
    pub files: Vec<FileRef>,
    /// How long the program may run between tool calls, and wait for a continuation.
    pub timeout: Option<Duration>,
    /// The client's id for this HTTP request, for `cancel_program`.
    pub request_id: Option<String>,
}

/// A call the client must make.
#[derive(Debug, Clone)]
pub struct ToolCall {
    pub id: String,
    /// The tool's name as the client gave it.
    pub name: String,
    pub input: Value,
}

/// The client's answer to one call.
#[derive(Debug, Clone)]
pub struct ToolResult {
    pub call_id: String,
    pub result: Value,
    pub is_error: bool,
    pub error_message: Option<String>,
}

/// Where a programmatic run stands when a request gets its answer.
#[derive(Debug)]
pub enum Step {
    /// The program waits for these calls; send their results with `token`.
    ToolCalls {
        session_id: String,
        token: String,
        calls: Vec<ToolCall>,
    },
    /// The program ended normally.
    Completed(Box<ExecResult>),
    /// The program failed, was stopped or broke a limit; `error` is the official API's phrase.
    Failed {
        session_id: String,
        error: String,
        result: Option<Box<ExecResult>>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("Execution not found or expired")]
    NotFound,
    #[error("Forbidden")]
    Forbidden,
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Exec(#[from] ExecError),
}

/// A tool as the program sees it.
#[derive(Debug, Clone)]
struct Tool {
    name: String,
    function: String,
    description: Option<String>,
    /// Parameter names, required ones first.
    params: Vec<String>,
    required: Vec<String>,
}

const PYTHON_KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

/// Words a bash tool function may not be called (keywords and the builtins a program
/// relies on), as the official API reserves them.
const BASH_RESERVED: &[&str] = &[
    "if", "then", "else", "elif", "fi", "case", "esac", "for", "select", "while", "until", "do",
    "done", "in", "function", "time", "coproc", "return", "exit", "break", "continue", "shift",
    "export", "readonly", "local", "declare", "typeset", "unset", "alias", "unalias", "source",
    "echo", "printf", "read", "cd", "pwd", "kill", "trap", "wait", "eval", "exec", "jobs", "bg",
    "fg", "set", "let", "test", "true", "false",
];

/// A tool name as a Python function name, exactly as LibreChat's client predicts it
/// (`normalizeToPythonIdentifier`): hyphens and spaces become `_`, other characters that
/// are not letters, digits or `_` go, a leading digit gets a `_`, a keyword gets `_tool`.
pub fn python_identifier(name: &str) -> String {
    let mut id: String = name
        .chars()
        .map(|c| {
            if c == '-' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if id.starts_with(|c: char| c.is_ascii_digit()) {
        id.insert(0, '_');
    }
    if PYTHON_KEYWORDS.contains(&id.as_str()) {
        id.push_str("_tool");
    }
    id
}

/// A tool name as a bash function name: as for Python, dots also become `_`, reserved
/// words and the helper's `_ptc_` prefix get `_tool`, and an empty name becomes `tool`.
pub fn bash_identifier(name: &str) -> String {
    let mut id: String = name
        .chars()
        .map(|c| {
            if c == '-' || c == '.' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if id.starts_with(|c: char| c.is_ascii_digit()) {
        id.insert(0, '_');
    }
    if BASH_RESERVED.contains(&id.as_str()) || id.to_ascii_lowercase().starts_with("_ptc_") {
        id.push_str("_tool");
    }
    if id.is_empty() {
        id.push_str("tool");
    }
    id
}

/// JavaScript's `\s` (what the client's regular expression replaces) is Unicode
/// whitespace plus a few more; Rust's `is_whitespace` covers the same characters except
/// U+FEFF, which the client also replaces.
fn normalize(language: ProgramLanguage, name: &str) -> String {
    let name = name.replace('\u{feff}', "_");
    match language {
        ProgramLanguage::Python => python_identifier(&name),
        ProgramLanguage::Bash => bash_identifier(&name),
    }
}

fn tools_of(language: ProgramLanguage, specs: Vec<ToolSpec>) -> Result<Vec<Tool>, ProgramError> {
    if specs.is_empty() {
        return Err(ProgramError::BadRequest(
            "Missing required field: tools (must be a non-empty array)".into(),
        ));
    }
    if specs.len() > MAX_TOOLS {
        return Err(ProgramError::BadRequest(format!(
            "Too many tools provided ({}). Maximum is {MAX_TOOLS}.",
            specs.len()
        )));
    }
    let mut by_function: HashMap<String, String> = HashMap::new();
    let mut tools: Vec<Tool> = Vec::with_capacity(specs.len());
    for spec in specs {
        if spec.name.is_empty() || spec.name.len() > 256 {
            return Err(ProgramError::BadRequest(
                "Every tool needs a 'name' of 1 to 256 characters.".into(),
            ));
        }
        let function = normalize(language, &spec.name);
        if function.is_empty() {
            return Err(ProgramError::BadRequest(format!(
                "Tool name \"{}\" has no letter, digit or underscore to name a function after; rename it.",
                spec.name
            )));
        }
        match by_function.get(&function) {
            Some(first) if *first == spec.name => continue,
            Some(first) => {
                return Err(ProgramError::BadRequest(format!(
                    "Tool names \"{first}\" and \"{}\" normalize to the same function identifier \"{function}\"; rename one to avoid collision",
                    spec.name
                )));
            }
            None => {}
        }
        by_function.insert(function.clone(), spec.name.clone());
        let schema = spec.parameters.unwrap_or(Value::Null);
        let required: Vec<String> = schema["required"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut params: Vec<String> = schema["properties"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        params.sort_by_key(|p| !required.contains(p));
        tools.push(Tool {
            name: spec.name,
            function,
            description: spec.description,
            params,
            required,
        });
    }
    Ok(tools)
}

/// Which run a continuation token or request id leads to.
struct Continuation {
    principal: Principal,
    commands: mpsc::Sender<Command>,
    handle: RunHandle,
    /// The request id of the request that answered with this token: cancelling it stops
    /// the suspended run (LibreChat's user may abort while its tools run).
    request_id: Option<String>,
}

enum RequestState {
    /// A request with this id is in flight; its run, once known.
    Active(Option<RunHandle>),
    /// Cancelled (perhaps before the request arrived).
    Cancelled,
}

struct RequestSlot {
    principal: Principal,
    state: RequestState,
    since: Instant,
}

/// The programmatic runs waiting for their clients, by continuation token, and the
/// client request ids in flight.
#[derive(Default)]
pub(super) struct Registry {
    continuations: Mutex<HashMap<String, Continuation>>,
    requests: Mutex<HashMap<String, RequestSlot>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How `cancel_program` went.
#[derive(Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The run was asked to stop (or the request will be refused when it arrives).
    Requested,
    /// The request id belongs to another tenant or user.
    Forbidden,
}

/// Holds a request id while its request runs; frees it when dropped.
struct RequestGuard<'a> {
    registry: &'a Registry,
    id: Option<String>,
}

impl RequestGuard<'_> {
    /// Attach the run, so a cancellation reaches it; false when the request was already
    /// cancelled (the run is then stopped at once).
    fn attach(&self, handle: &RunHandle) -> bool {
        let Some(id) = &self.id else { return true };
        let mut requests = lock(&self.registry.requests);
        match requests.get_mut(id) {
            Some(RequestSlot {
                state: RequestState::Active(slot),
                ..
            }) => {
                *slot = Some(handle.clone());
                true
            }
            _ => {
                handle.cancel();
                false
            }
        }
    }

    /// The request answers `tool_call_required` with `step`'s token: the run stays
    /// cancellable by this request's id while it waits for its continuation.
    fn suspend(&self, step: &Result<Step, ProgramError>) {
        if let (Some(id), Ok(Step::ToolCalls { token, .. })) = (&self.id, step)
            && let Some(c) = lock(&self.registry.continuations).get_mut(token)
        {
            c.request_id = Some(id.clone());
        }
    }

    fn cancelled(&self) -> bool {
        let Some(id) = &self.id else { return false };
        matches!(
            lock(&self.registry.requests).get(id),
            Some(RequestSlot {
                state: RequestState::Cancelled,
                ..
            })
        )
    }
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let mut requests = lock(&self.registry.requests);
            if matches!(
                requests.get(&id),
                Some(RequestSlot {
                    state: RequestState::Active(_),
                    ..
                })
            ) {
                requests.remove(&id);
            }
        }
    }
}

impl Registry {
    /// Hold `id` for a request of `principal`. A guard without an id when none was sent;
    /// `Err(Reserve::Cancelled)` when the request was cancelled before it arrived.
    fn reserve(
        &self,
        principal: &Principal,
        id: Option<&str>,
    ) -> Result<RequestGuard<'_>, Reserve> {
        let Some(id) = id else {
            return Ok(RequestGuard {
                registry: self,
                id: None,
            });
        };
        let mut requests = lock(&self.requests);
        if requests.len() >= MAX_REQUEST_IDS {
            requests.retain(|_, slot| {
                !matches!(slot.state, RequestState::Cancelled)
                    || slot.since.elapsed() < CANCEL_MEMORY
            });
        }
        match requests.get(id) {
            Some(slot)
                if slot.principal == *principal
                    && matches!(slot.state, RequestState::Cancelled) =>
            {
                requests.remove(id);
                return Err(Reserve::Cancelled);
            }
            Some(_) => return Err(Reserve::InUse),
            None => {}
        }
        if requests.len() >= MAX_REQUEST_IDS {
            return Err(Reserve::InUse);
        }
        requests.insert(
            id.to_owned(),
            RequestSlot {
                principal: principal.clone(),
                state: RequestState::Active(None),
                since: Instant::now(),
            },
        );
        Ok(RequestGuard {
            registry: self,
            id: Some(id.to_owned()),
        })
    }
}

enum Reserve {
    Cancelled,
    InUse,
}

impl From<Reserve> for ProgramError {
    fn from(r: Reserve) -> Self {
        match r {
            Reserve::InUse => {
                ProgramError::Conflict("Programmatic request ID is already in use".into())
            }
            Reserve::Cancelled => ProgramError::Conflict(CANCELLED.into()),
        }
    }
}

enum Command {
    Resume {
        results: Vec<ToolResult>,
        reply: oneshot::Sender<Result<Step, ProgramError>>,
    },
}

impl ExecService {
    /// Start a program; answers when it first needs tool results, or when it ends.
    pub async fn start_program(
        self: &Arc<Self>,
        req: ProgramRequest,
    ) -> Result<Step, ProgramError> {
        if req.code.trim().is_empty() {
            return Err(ProgramError::BadRequest(
                "Missing required field: code".into(),
            ));
        }
        if req.code.len() as u64 > self.settings.max_code_bytes {
            return Err(ExecError::CodeTooLarge {
                size: req.code.len(),
                limit: self.settings.max_code_bytes,
            }
            .into());
        }
        let tools = tools_of(req.language, req.tools)?;
        let guard = match self
            .programs
            .reserve(&req.principal, req.request_id.as_deref())
        {
            Ok(g) => g,
            Err(Reserve::Cancelled) => {
                return Ok(Step::Failed {
                    session_id: req.session_id.unwrap_or_default(),
                    error: CANCELLED.into(),
                    result: None,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let limit = Duration::from_secs(self.settings.execution_timeout);
        let timeout = req.timeout.unwrap_or(limit).min(limit);
        let token = new_id();
        let (code, lang, bridge) = match req.language {
            ProgramLanguage::Python => (python_cell(&token, &tools, &req.code), "python", None),
            ProgramLanguage::Bash => {
                let bridge = Bridge::new(self, &tools).map_err(|e| {
                    ExecError::Internal(format!("the tool-call bridge could not be made: {e}"))
                })?;
                (req.code.clone(), "bash", Some(bridge))
            }
        };
        let extras = RunExtras {
            mounts: bridge
                .as_ref()
                .map(|b| vec![Mount::writable(b.dir.path(), BRIDGE_INSIDE)])
                .unwrap_or_default(),
            env: bridge
                .as_ref()
                .map(|_| vec![("BASH_ENV".to_owned(), format!("{BRIDGE_INSIDE}/tools.sh"))])
                .unwrap_or_default(),
            // The session's uid, known once the run has its session, owns the bridge.
            owned: bridge.as_ref().map(Bridge::paths).unwrap_or_default(),
            shown_code: Some(req.code.clone()),
            wrapped: true,
        };
        let exec_req = ExecRequest {
            tenant: req.principal.tenant.clone(),
            lang: lang.to_owned(),
            code,
            args: Vec::new(),
            session_id: req.session_id,
            owner: req.owner,
            files: req.files,
            timeout: None,
        };
        let Started {
            session_id,
            events,
            handle,
        } = self.start_with(exec_req, extras).await?;
        if !guard.attach(&handle) {
            return Ok(Step::Failed {
                session_id,
                error: CANCELLED.into(),
                result: None,
            });
        }
        let (commands_tx, commands) = mpsc::channel(4);
        let (reply, answer) = oneshot::channel();
        let driver = Driver {
            exec: Arc::clone(self),
            principal: req.principal,
            session_id,
            token,
            tools,
            timeout,
            handle,
            commands_tx,
            pending: VecDeque::new(),
            issued: HashMap::new(),
            ids: HashSet::new(),
            calls: 0,
            held: 0,
            protocol_errors: 0,
            first_pending: None,
            last_call: None,
            idle: false,
            quiet: match req.language {
                ProgramLanguage::Python => PYTHON_QUIET,
                ProgramLanguage::Bash => BASH_QUIET,
            },
            waiter: Some(reply),
            // Until the program starts (a kernel may have to be found first): the run's cap.
            deadline: Instant::now() + limit,
            started: false,
            stopped: None,
            exit_code: None,
            interrupted: false,
            finished: None,
            rounds: 0,
        };
        tokio::spawn(driver.drive(events, commands, bridge));
        let step = answer.await.unwrap_or_else(|_| {
            Err(ExecError::Internal("the program's driver ended".into()).into())
        });
        if guard.cancelled() {
            return cancelled_step(step);
        }
        guard.suspend(&step);
        step
    }

    /// Whether a run waiting for `token`'s continuation is held here.
    pub fn holds_program(&self, token: &str) -> bool {
        lock(&self.programs.continuations).contains_key(token)
    }

    /// Whether a request with this id is in flight here, or its run waits here for its
    /// continuation.
    pub fn knows_request(&self, request_id: &str) -> bool {
        lock(&self.programs.requests).contains_key(request_id)
            || lock(&self.programs.continuations)
                .values()
                .any(|c| c.request_id.as_deref() == Some(request_id))
    }

    /// Send the results for a program's calls; answers at its next calls or its end.
    pub async fn resume_program(
        &self,
        principal: &Principal,
        token: &str,
        results: Vec<ToolResult>,
        request_id: Option<&str>,
    ) -> Result<Step, ProgramError> {
        if results.is_empty() {
            return Err(ProgramError::BadRequest(
                "tool_results must be a non-empty array; resubmit with at least one result per pending tool call".into(),
            ));
        }
        if !is_token(token) {
            return Err(ProgramError::BadRequest(
                "Invalid continuation token".into(),
            ));
        }
        for (i, r) in results.iter().enumerate() {
            let size = serde_json::to_vec(&r.result).map(|v| v.len()).unwrap_or(0)
                + r.error_message.as_ref().map_or(0, String::len);
            if size > MAX_RESULT_BYTES {
                return Err(ProgramError::TooLarge(format!(
                    "tool_results[{i}] is {size} bytes; a tool result may be at most {MAX_RESULT_BYTES} bytes."
                )));
            }
        }
        // The driver forgets the token once it takes the results: a token is good for one
        // continuation, and a second one sent meanwhile gets a 409 from the driver.
        let (commands, handle) = match lock(&self.programs.continuations).get(token) {
            None => return Err(ProgramError::NotFound),
            Some(c) if c.principal != *principal => return Err(ProgramError::Forbidden),
            Some(c) => (c.commands.clone(), c.handle.clone()),
        };
        let guard = match self.programs.reserve(principal, request_id) {
            Ok(g) => g,
            Err(Reserve::Cancelled) => {
                return Ok(Step::Failed {
                    session_id: String::new(),
                    error: CANCELLED.into(),
                    result: None,
                });
            }
            Err(e) => return Err(e.into()),
        };
        if !guard.attach(&handle) {
            return Ok(Step::Failed {
                session_id: String::new(),
                error: CANCELLED.into(),
                result: None,
            });
        }
        let (reply, answer) = oneshot::channel();
        if commands
            .send(Command::Resume { results, reply })
            .await
            .is_err()
        {
            return Err(ProgramError::NotFound);
        }
        let step = answer.await.map_err(|_| ProgramError::NotFound)?;
        if guard.cancelled() {
            return cancelled_step(step);
        }
        guard.suspend(&step);
        step
    }

    /// Cancel the run behind a client's request id (`X-LibreChat-Code-Request-ID`): the
    /// run of a request in flight, or one suspended since that request answered
    /// `tool_call_required`. An id not seen yet is remembered for a while: its request is
    /// refused when it comes.
    pub fn cancel_program(&self, principal: &Principal, request_id: &str) -> CancelOutcome {
        let mut requests = lock(&self.programs.requests);
        match requests.get_mut(request_id) {
            Some(slot) if slot.principal != *principal => CancelOutcome::Forbidden,
            Some(slot) => {
                if let RequestState::Active(Some(handle)) = &slot.state {
                    handle.cancel();
                }
                slot.state = RequestState::Cancelled;
                slot.since = Instant::now();
                CancelOutcome::Requested
            }
            None => {
                let suspended = lock(&self.programs.continuations)
                    .values()
                    .find(|c| c.request_id.as_deref() == Some(request_id))
                    .map(|c| (c.principal.clone(), c.handle.clone()));
                match suspended {
                    Some((owner, _)) if owner != *principal => return CancelOutcome::Forbidden,
                    // Its next continuation learns that it was cancelled.
                    Some((_, handle)) => {
                        handle.cancel();
                        return CancelOutcome::Requested;
                    }
                    None => {}
                }
                requests.retain(|_, s| {
                    s.since.elapsed() < CANCEL_MEMORY || matches!(s.state, RequestState::Active(_))
                });
                if requests.len() < MAX_REQUEST_IDS {
                    requests.insert(
                        request_id.to_owned(),
                        RequestSlot {
                            principal: principal.clone(),
                            state: RequestState::Cancelled,
                            since: Instant::now(),
                        },
                    );
                }
                CancelOutcome::Requested
            }
        }
    }
}

/// A request cancelled by its id answers that it was cancelled, whatever the run said.
fn cancelled_step(step: Result<Step, ProgramError>) -> Result<Step, ProgramError> {
    let session_id = match &step {
        Ok(Step::ToolCalls { session_id, .. }) | Ok(Step::Failed { session_id, .. }) => {
            session_id.clone()
        }
        Ok(Step::Completed(r)) => r.session_id.clone(),
        Err(_) => String::new(),
    };
    Ok(Step::Failed {
        session_id,
        error: CANCELLED.into(),
        result: match step {
            Ok(Step::Completed(r)) => Some(r),
            Ok(Step::Failed { result, .. }) => result,
            _ => None,
        },
    })
}

/// Tokens are `new_id()` twice: 42 characters of the id alphabet.
fn is_token(token: &str) -> bool {
    token.len() == 42
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The cell that runs `code` with `tools` in the session's kernel (see the helper).
fn python_cell(token: &str, tools: &[Tool], code: &str) -> String {
    let spec = json!({
        "token": token,
        "limits": {"max_calls": MAX_CALLS, "max_input_bytes": MAX_INPUT_BYTES},
        "tools": tools.iter().map(|t| json!({
            "name": t.name,
            "function": t.function,
            "description": t.description,
            "params": t.params,
            "required": t.required,
        })).collect::<Vec<_>>(),
    });
    // JSON strings are valid Python string literals.
    let literal = |s: &str| serde_json::to_string(s).unwrap_or_default();
    format!(
        "exec(compile({}, '<programmatic-tools>', 'exec'), {{'__name__': '_code_interpreter_ptc', '__ci_args': ({}, {})}})",
        literal(KERNEL_HELPER),
        literal(&spec.to_string()),
        literal(code),
    )
}

/// A bash run's meeting point with the server: a directory bound at `/run/ptc` holding
/// the tool functions (`tools.sh`, read through `BASH_ENV`) and the `calls` FIFO.
struct Bridge {
    dir: tempfile::TempDir,
    calls: tokio::net::unix::pipe::Receiver,
}

impl Bridge {
    fn new(exec: &ExecService, tools: &[Tool]) -> std::io::Result<Bridge> {
        let dir = exec.process.scratch_dir()?;
        let mut script = String::from(BASH_HELPER);
        for (i, tool) in tools.iter().enumerate() {
            script.push_str(&format!(
                "{}() {{ _ptc_call {i} \"$@\"; }}\n",
                tool.function
            ));
        }
        let tools_path = dir.path().join("tools.sh");
        std::fs::write(&tools_path, script)?;
        let calls_path = dir.path().join("calls");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &calls_path,
            rustix::fs::Mode::from_raw_mode(0o600),
        )?;
        // Read-write: the server is always a writer too, so the FIFO never reads as ended.
        let calls = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&calls_path)?;
        Ok(Bridge { dir, calls })
    }

    /// The directory and what the server put in it.
    fn paths(&self) -> Vec<PathBuf> {
        let dir = self.dir.path();
        vec![dir.to_path_buf(), dir.join("tools.sh"), dir.join("calls")]
    }
}

/// Reads `<key> <index>` lines from the `calls` FIFO; a line over the limit is dropped.
struct LineReader {
    buf: Vec<u8>,
    skipping: bool,
}

const MAX_LINE: usize = 64;

impl LineReader {
    async fn next(&mut self, pipe: &mut tokio::net::unix::pipe::Receiver) -> Option<String> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                if std::mem::take(&mut self.skipping) {
                    continue;
                }
                return Some(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
            }
            if self.buf.len() > MAX_LINE {
                self.buf.clear();
                self.skipping = true;
            }
            let mut chunk = [0u8; 4096];
            match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// A call the program made: its id, tool, input, and (bash) where its answer goes.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    tool: usize,
    /// The input as JSON text (an object).
    input: String,
    key: Option<String>,
}

/// Why the server stopped a run.
#[derive(Debug, Clone)]
enum Stop {
    /// It ran longer than `timeout` without a tool call.
    TimeLimit,
    /// Its client did not come back within `timeout`.
    Expired,
    /// Its client went away mid-request.
    Disconnected,
    /// It broke the protocol or a limit: the official API's phrase and a sentence.
    Broken { error: String, detail: String },
}

/// Owns one programmatic run from start to end: reads its events, collects its calls,
/// answers each request at the next stable point, delivers results, enforces the limits.
struct Driver {
    exec: Arc<ExecService>,
    principal: Principal,
    session_id: String,
    token: String,
    tools: Vec<Tool>,
    timeout: Duration,
    handle: RunHandle,
    commands_tx: mpsc::Sender<Command>,
    /// Announced, not yet handed to the client.
    pending: VecDeque<Call>,
    /// Handed to the client, no result yet.
    issued: HashMap<String, Call>,
    ids: HashSet<String>,
    calls: usize,
    /// Bytes of input of the calls waiting for results (see `MAX_HELD_INPUT_BYTES`).
    held: usize,
    protocol_errors: usize,
    first_pending: Option<Instant>,
    last_call: Option<Instant>,
    /// The kernel helper said every task of the program waits on a tool.
    idle: bool,
    /// How long after the last call a batch goes out.
    quiet: Duration,
    /// The request waiting for this run's next step.
    waiter: Option<oneshot::Sender<Result<Step, ProgramError>>>,
    /// Running: when the program must have called a tool or ended. Suspended: when the
    /// continuation must have come.
    deadline: Instant,
    /// The helper said the program began.
    started: bool,
    stopped: Option<Stop>,
    /// From the kernel helper's end marker.
    exit_code: Option<i32>,
    interrupted: bool,
    finished: Option<Box<ExecResult>>,
    rounds: usize,
}

impl Driver {
    async fn drive(
        mut self,
        mut events: mpsc::Receiver<ExecEvent>,
        mut commands: mpsc::Receiver<Command>,
        bridge: Option<Bridge>,
    ) {
        let (bridge_dir, mut calls_pipe) = match bridge {
            Some(b) => (Some(b.dir), Some(b.calls)),
            None => (None, None),
        };
        let mut lines = LineReader {
            buf: Vec::new(),
            skipping: false,
        };
        let mut events_open = true;
        let mut check_waiter = tokio::time::interval(Duration::from_millis(200));
        loop {
            if self.finished.is_some() {
                if self.waiter.is_some() {
                    self.answer_end();
                    break;
                }
                if matches!(self.stopped, Some(Stop::Expired | Stop::Disconnected)) {
                    break;
                }
                // Ended while its client runs tools: the continuation gets the result.
            }
            let batch_at = self.batch_at();
            let dir = bridge_dir.as_ref().map(|d| d.path().to_path_buf());
            tokio::select! {
                biased;
                ev = events.recv(), if events_open => match ev {
                    Some(ExecEvent::Display { data, .. }) => {
                        if let Some(announcement) = data.get(ANNOUNCEMENT) {
                            self.on_announcement(announcement);
                        }
                    }
                    Some(ExecEvent::Done(result)) => {
                        self.finished = Some(result);
                        events_open = false;
                    }
                    Some(_) => {}
                    None => {
                        events_open = false;
                        if self.finished.is_none() {
                            self.break_run(FAILED, "The run ended without a result.");
                            self.finished = Some(Box::new(lost_result(&self.session_id)));
                        }
                    }
                },
                line = next_call(&mut lines, calls_pipe.as_mut()), if calls_pipe.is_some() => match line {
                    Some(line) => {
                        if let Some(dir) = dir {
                            self.on_bash_call(&dir, &line).await;
                        }
                    }
                    None => calls_pipe = None,
                },
                cmd = commands.recv() => match cmd {
                    Some(Command::Resume { results, reply }) => self.on_resume(results, reply, dir.as_deref()).await,
                    None => {}
                },
                _ = sleep_until(batch_at), if batch_at.is_some() => self.issue(),
                _ = tokio::time::sleep_until(self.deadline.into()), if self.finished.is_none() && self.stopped.is_none() => {
                    let stop = if self.waiter.is_some() { Stop::TimeLimit } else { Stop::Expired };
                    self.stop(stop);
                }
                _ = check_waiter.tick(), if self.waiter.is_some() => {
                    if self.waiter.as_ref().is_some_and(|w| w.is_closed()) {
                        self.waiter = None;
                        self.stop(Stop::Disconnected);
                    }
                }
                // Ended while suspended: the result waits for the continuation until then.
                _ = tokio::time::sleep_until(self.deadline.into()), if self.finished.is_some() => break,
            }
        }
        self.forget_token();
        tracing::debug!(
            rounds = self.rounds,
            calls = self.calls,
            "programmatic run ended"
        );
        drop(bridge_dir);
    }

    /// When the collected calls go to the waiting client.
    fn batch_at(&self) -> Option<Instant> {
        if self.waiter.is_none() || self.pending.is_empty() || self.stopped.is_some() {
            return None;
        }
        let (first, last) = (self.first_pending?, self.last_call?);
        if self.idle {
            return Some(Instant::now());
        }
        Some((last + self.quiet).min(first + BATCH_LONGEST))
    }

    fn tool_index(&self, name: &str) -> Option<usize> {
        self.tools.iter().position(|t| t.name == name)
    }

    fn add_call(&mut self, call: Call) {
        let now = Instant::now();
        self.first_pending.get_or_insert(now);
        self.last_call = Some(now);
        self.pending.push_back(call);
    }

    /// Too many malformed messages: the program is not using the helper as meant.
    fn protocol_error(&mut self, what: &str) {
        tracing::debug!(what, "malformed programmatic announcement ignored");
        self.protocol_errors += 1;
        if self.protocol_errors > MAX_PROTOCOL_ERRORS {
            self.break_run(
                FAILED,
                "The program sent too many malformed tool-call messages and was stopped.",
            );
        }
    }

    /// Hold one more call's input until its result comes; false (and the run stopped) when
    /// the run's waiting inputs would pass `MAX_HELD_INPUT_BYTES`.
    fn hold(&mut self, size: usize) -> bool {
        self.held += size;
        if self.held > MAX_HELD_INPUT_BYTES {
            self.break_run(
                FAILED,
                &format!(
                    "The program's tool calls waiting for results had more than {MAX_HELD_INPUT_BYTES} bytes of input together and it was stopped; make fewer calls at once or pass smaller inputs."
                ),
            );
            return false;
        }
        true
    }

    /// One call more; false (and the run stopped) past the limit.
    fn count_call(&mut self) -> bool {
        self.calls += 1;
        if self.calls > MAX_CALLS {
            self.break_run(
                FAILED,
                &format!("The program made more than {MAX_CALLS} tool calls and was stopped."),
            );
            return false;
        }
        true
    }

    fn on_announcement(&mut self, value: &Value) {
        if value["token"].as_str() != Some(self.token.as_str()) {
            return self.protocol_error("token");
        }
        if value["started"] == true {
            return self.on_started();
        }
        if let Some(end) = value.get("end") {
            self.exit_code = end["exit_code"].as_i64().map(|c| c as i32);
            self.interrupted = end["interrupted"].as_bool().unwrap_or(false);
            return;
        }
        let Some(calls) = value["calls"].as_array() else {
            return self.protocol_error("calls");
        };
        self.idle = value["idle"].as_bool().unwrap_or(false);
        for call in calls {
            let (Some(id), Some(name), Some(input)) = (
                call["id"].as_str(),
                call["name"].as_str(),
                call.get("input").filter(|v| v.is_object()),
            ) else {
                self.protocol_error("call");
                continue;
            };
            if !is_call_id(id) || self.ids.contains(id) {
                self.protocol_error("id");
                continue;
            }
            let Some(tool) = self.tool_index(name) else {
                let name: String = name.chars().take(100).collect();
                return self.break_run(
                    &format!("Sandbox requested an unregistered tool: {name}"),
                    &format!(
                        "The program called '{name}', which is not one of this request's tools."
                    ),
                );
            };
            let input = input.to_string();
            if input.len() > MAX_INPUT_BYTES {
                return self.break_run(
                    FAILED,
                    &format!("A tool call's input was larger than {MAX_INPUT_BYTES} bytes."),
                );
            }
            if !self.count_call() || !self.hold(input.len()) {
                return;
            }
            self.ids.insert(id.to_owned());
            self.add_call(Call {
                id: id.to_owned(),
                tool,
                input,
                key: None,
            });
        }
    }

    /// The program began: its time limit starts now (once).
    fn on_started(&mut self) {
        if !self.started && self.waiter.is_some() {
            self.deadline = Instant::now() + self.timeout;
        }
        self.started = true;
    }

    async fn on_bash_call(&mut self, dir: &Path, line: &str) {
        if line == "start" {
            return self.on_started();
        }
        let Some((key, index)) = line.split_once(' ') else {
            return self.protocol_error("line");
        };
        let valid_key = key.split_once('-').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.len() <= 10
                && b.len() <= 10
                && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
        });
        let Some(tool) = index
            .parse::<usize>()
            .ok()
            .filter(|i| *i < self.tools.len())
        else {
            return self.protocol_error("index");
        };
        if !valid_key || self.ids.contains(key) {
            return self.protocol_error("key");
        }
        self.ids.insert(key.to_owned());
        // Every call counts, even one refused below: a program cannot spin on bad calls.
        if !self.count_call() {
            return;
        }
        let input = match read_input(&dir.join(format!("{key}.in"))).await {
            Ok(bytes) => bytes,
            Err(problem) => {
                return self.reply_bash(dir, key, Err(problem));
            }
        };
        let name = self.tools[tool].name.clone();
        let input = match serde_json::from_slice::<Value>(&input) {
            Ok(v) if v.is_object() => v.to_string(),
            _ => {
                let shown: String = String::from_utf8_lossy(&input).chars().take(200).collect();
                return self.reply_bash(
                    dir,
                    key,
                    Err(format!(
                        "tool input for {name} must be a JSON object, got: {shown}"
                    )),
                );
            }
        };
        if !self.hold(input.len()) {
            return;
        }
        let id = format!("call_{:03}", self.calls);
        self.add_call(Call {
            id,
            tool,
            input,
            key: Some(key.to_owned()),
        });
    }

    /// Answer one bash call, in a task of its own (a program that does not read its FIFO
    /// must not hold the driver up).
    fn reply_bash(&self, dir: &Path, key: &str, answer: Result<String, String>) {
        let out = dir.join(format!("{key}.out"));
        let input = dir.join(format!("{key}.in"));
        let limit = self.timeout;
        tokio::spawn(async move {
            let (status, payload) = match answer {
                Ok(p) => ("ok", p),
                Err(p) => ("error", p.replace('\0', "")),
            };
            let message = format!("{status}\n{}\n{payload}", payload.len());
            let _ = tokio::time::timeout(limit, write_fifo(&out, message.as_bytes())).await;
            let _ = std::fs::remove_file(&out);
            let _ = std::fs::remove_file(&input);
        });
    }

    /// Hand the collected calls to the waiting client and suspend until it answers.
    fn issue(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        let take = self.pending.len().min(MAX_CALLS_PER_ROUND);
        let batch: Vec<Call> = self.pending.drain(..take).collect();
        if self.pending.is_empty() {
            self.first_pending = None;
        } else {
            self.first_pending = Some(Instant::now());
        }
        self.idle = false;
        let calls = batch
            .iter()
            .map(|c| ToolCall {
                id: c.id.clone(),
                name: self.tools[c.tool].name.clone(),
                input: serde_json::from_str(&c.input).unwrap_or(Value::Null),
            })
            .collect();
        for call in batch {
            self.issued.insert(call.id.clone(), call);
        }
        let token = new_id() + &new_id();
        lock(&self.exec.programs.continuations).insert(
            token.clone(),
            Continuation {
                principal: self.principal.clone(),
                commands: self.commands_tx.clone(),
                handle: self.handle.clone(),
                request_id: None,
            },
        );
        self.rounds += 1;
        self.deadline = Instant::now() + self.timeout;
        let step = Step::ToolCalls {
            session_id: self.session_id.clone(),
            token: token.clone(),
            calls,
        };
        if waiter.send(Ok(step)).is_err() {
            // The client left just now: it will never continue.
            lock(&self.exec.programs.continuations).remove(&token);
            self.stop(Stop::Disconnected);
        }
    }

    async fn on_resume(
        &mut self,
        results: Vec<ToolResult>,
        reply: oneshot::Sender<Result<Step, ProgramError>>,
        dir: Option<&Path>,
    ) {
        if self.waiter.is_some() {
            let _ = reply.send(Err(ProgramError::Conflict(
                "Another continuation is already in flight for this execution; retry shortly"
                    .into(),
            )));
            return;
        }
        if self.finished.is_some() || self.stopped.is_some() {
            // Ended (or ending) while its client ran the tools: the result is the answer.
            self.forget_token();
            self.waiter = Some(reply);
            return;
        }
        let mut seen = HashSet::new();
        for (i, r) in results.iter().enumerate() {
            if !self.issued.contains_key(&r.call_id) || !seen.insert(r.call_id.as_str()) {
                // Refused before anything reached the program: the token still works.
                let _ = reply.send(Err(ProgramError::BadRequest(format!(
                    "tool_results[{i}].call_id '{}' is not a pending tool call of this execution (or is repeated); send one result per call of the last tool_call_required.",
                    r.call_id.chars().take(100).collect::<String>()
                ))));
                return;
            }
        }
        self.forget_token();
        let mut python_results = Vec::new();
        for r in results {
            let Some(call) = self.issued.remove(&r.call_id) else {
                continue;
            };
            self.held = self.held.saturating_sub(call.input.len());
            let error = r
                .error_message
                .clone()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "Tool execution failed".into());
            match (&call.key, dir) {
                (Some(key), Some(dir)) => {
                    let answer = if r.is_error {
                        Err(error)
                    } else {
                        Ok(serde_json::to_string(&r.result).unwrap_or_else(|_| "null".into()))
                    };
                    self.reply_bash(dir, key, answer);
                }
                _ => python_results.push(if r.is_error {
                    json!({"id": call.id, "ok": false, "error": error})
                } else {
                    json!({"id": call.id, "ok": true, "result": r.result})
                }),
            }
        }
        if !python_results.is_empty() {
            let delivered = self
                .exec
                .python
                .notify(
                    &self.session_id,
                    RESULT_MESSAGE,
                    json!({"token": self.token, "results": python_results}),
                )
                .await;
            if !delivered {
                tracing::warn!("tool results could not reach the kernel");
            }
        }
        // Calls still unanswered go out again with whatever the program calls next.
        let unanswered: Vec<Call> = self.issued.drain().map(|(_, c)| c).collect();
        for call in unanswered {
            self.add_call(call);
        }
        self.waiter = Some(reply);
        self.idle = false;
        self.deadline = Instant::now() + self.timeout;
    }

    /// Stop the run (it ends with a `Done` the loop still reads). A run broken while its
    /// client ran tools keeps its token: the continuation learns why.
    fn stop(&mut self, why: Stop) {
        if self.stopped.is_none() {
            tracing::debug!(?why, "stopping a programmatic run");
            if matches!(why, Stop::Expired | Stop::Disconnected) {
                self.forget_token();
            }
            self.stopped = Some(why);
            self.handle.cancel();
        }
    }

    fn break_run(&mut self, error: &str, detail: &str) {
        self.stop(Stop::Broken {
            error: error.to_owned(),
            detail: detail.to_owned(),
        });
    }

    /// No continuation leads here any more.
    fn forget_token(&self) {
        lock(&self.exec.programs.continuations)
            .retain(|_, c| !c.commands.same_channel(&self.commands_tx));
    }

    /// The run has ended: answer the waiting request with its result.
    fn answer_end(&mut self) {
        let (Some(waiter), Some(result)) = (self.waiter.take(), self.finished.as_ref()) else {
            return;
        };
        let mut result = result.clone();
        let step = self.end_step(&mut result);
        let _ = waiter.send(Ok(step));
    }

    fn end_step(&self, result: &mut ExecResult) -> Step {
        let session_id = result.session_id.clone();
        let cancelled_line = format!("[sandbox] {}\n", runtime::CANCELLED_MESSAGE);
        let restate = |result: &mut ExecResult, status: RunStatus, message: String| {
            if let Some(head) = result.stderr.strip_suffix(&cancelled_line) {
                result.stderr = head.to_owned();
            }
            if !result.stderr.is_empty() && !result.stderr.ends_with('\n') {
                result.stderr.push('\n');
            }
            result.stderr.push_str(&format!("[sandbox] {message}\n"));
            result.outcome.status = status;
            result.outcome.exit_code = None;
            result.outcome.message = Some(message);
        };
        let failed = |error: &str, result: &ExecResult| Step::Failed {
            session_id: session_id.clone(),
            error: error.to_owned(),
            result: Some(Box::new(result.clone())),
        };
        match &self.stopped {
            Some(Stop::TimeLimit) => {
                let secs = self.timeout.as_secs_f64();
                restate(
                    result,
                    RunStatus::Timeout,
                    format!(
                        "The program ran for more than its time limit of {secs:.0} s without calling a tool, and was stopped."
                    ),
                );
                return failed(TIME_LIMIT, result);
            }
            Some(Stop::Broken { error, detail }) => {
                restate(result, RunStatus::Killed, detail.clone());
                return failed(error, result);
            }
            Some(Stop::Disconnected | Stop::Expired) => return failed(CANCELLED, result),
            None => {}
        }
        match result.outcome.status {
            RunStatus::Success if self.interrupted => failed(CANCELLED, result),
            RunStatus::Success => match self.exit_code.filter(|c| *c != 0) {
                Some(code) => {
                    result.outcome.status = RunStatus::Error;
                    result.outcome.exit_code = Some(code);
                    failed(&format!("Sandbox exited with code {code}"), result)
                }
                None => Step::Completed(Box::new(result.clone())),
            },
            RunStatus::Timeout => failed(TIME_LIMIT, result),
            RunStatus::Error => match result.outcome.exit_code {
                Some(code) => failed(&format!("Sandbox exited with code {code}"), result),
                None => failed(FAILED, result),
            },
            RunStatus::Killed
                if result.outcome.message.as_deref() == Some(runtime::CANCELLED_MESSAGE) =>
            {
                failed(CANCELLED, result)
            }
            RunStatus::Killed => failed(FAILED, result),
        }
    }
}

fn is_call_id(id: &str) -> bool {
    id.strip_prefix("call_")
        .is_some_and(|n| (3..=10).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The next line from a bash run's `calls` FIFO (never, for a Python run).
async fn next_call(
    lines: &mut LineReader,
    pipe: Option<&mut tokio::net::unix::pipe::Receiver>,
) -> Option<String> {
    match pipe {
        Some(pipe) => lines.next(pipe).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A bash call's input file: a regular file (never followed through a link, never a FIFO
/// that would block), at most `MAX_INPUT_BYTES`.
async fn read_input(path: &Path) -> Result<Vec<u8>, String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|_| "the tool call's input could not be read".to_owned())?;
        let meta = file
            .metadata()
            .map_err(|_| "the tool call's input could not be read".to_owned())?;
        if !meta.is_file() || meta.len() > MAX_INPUT_BYTES as u64 {
            return Err(format!(
                "a tool call's input must be a JSON object of at most {MAX_INPUT_BYTES} bytes"
            ));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(MAX_INPUT_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|_| "the tool call's input could not be read".to_owned())?;
        Ok(bytes)
    })
    .await
    .unwrap_or_else(|_| Err("the tool call's input could not be read".to_owned()))
}

/// Write a whole message into a FIFO the program opened (never through a link, never
/// into anything but a FIFO).
async fn write_fifo(path: &PathBuf, message: &[u8]) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let mut sender = tokio::net::unix::pipe::Sender::from_file(file)?;
    sender.write_all(message).await
}

/// A result for a run whose events ended without one (the server's failure, not the code's).
fn lost_result(session_id: &str) -> ExecResult {
    let message = "The server could not complete this run; try again.".to_owned();
    ExecResult {
        session_id: session_id.to_owned(),
        language: runtime::Language::PYTHON,
        version: String::new(),
        stdout: String::new(),
        stderr: format!("[sandbox] {message}\n"),
        outcome: runtime::RunOutcome {
            status: RunStatus::Error,
            exit_code: None,
            signal: None,
            message: Some(message),
            wall_time: Duration::ZERO,
            cpu_time: None,
            peak_memory: None,
        },
        files: Vec::new(),
        deleted_files: Vec::new(),
        truncated_files: None,
        runtime_status: super::RuntimeStatus::New,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_names_follow_the_client() {
        assert_eq!(python_identifier("get-weather"), "get_weather");
        assert_eq!(python_identifier("web search"), "web_search");
        assert_eq!(python_identifier("mcp.server/tool!"), "mcpservertool");
        assert_eq!(python_identifier("3d-render"), "_3d_render");
        assert_eq!(python_identifier("import"), "import_tool");
        assert_eq!(python_identifier("None"), "None_tool");
        assert_eq!(python_identifier("a.b"), "ab");
        assert_eq!(python_identifier("émoji_ok"), "moji_ok");
    }

    #[test]
    fn bash_names_follow_the_official_server() {
        assert_eq!(bash_identifier("get-weather"), "get_weather");
        assert_eq!(bash_identifier("a.b"), "a_b");
        assert_eq!(bash_identifier("echo"), "echo_tool");
        assert_eq!(bash_identifier("done"), "done_tool");
        assert_eq!(bash_identifier("_ptc_call"), "_ptc_call_tool");
        assert_eq!(bash_identifier("9lives"), "_9lives");
        assert_eq!(bash_identifier("!!!"), "tool");
    }

    #[test]
    fn colliding_names_are_refused_and_duplicates_merged() {
        let spec = |n: &str| ToolSpec {
            name: n.into(),
            description: None,
            parameters: None,
        };
        let err = tools_of(ProgramLanguage::Python, vec![spec("a-b"), spec("a_b")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("normalize to the same function identifier \"a_b\"")
        );
        let tools = tools_of(ProgramLanguage::Bash, vec![spec("x"), spec("x")]).unwrap();
        assert_eq!(tools.len(), 1);
        assert!(tools_of(ProgramLanguage::Python, vec![]).is_err());
        let many = (0..=MAX_TOOLS).map(|i| spec(&format!("t{i}"))).collect();
        assert!(
            tools_of(ProgramLanguage::Python, many)
                .unwrap_err()
                .to_string()
                .starts_with("Too many tools provided (101)")
        );
    }

    #[test]
    fn parameters_come_required_first() {
        let tools = tools_of(
            ProgramLanguage::Python,
            vec![ToolSpec {
                name: "t".into(),
                description: None,
                parameters: Some(json!({
                    "type": "object",
                    "properties": {"a": {}, "b": {}, "c": {}},
                    "required": ["c"]
                })),
            }],
        )
        .unwrap();
        assert_eq!(tools[0].params, ["c", "a", "b"]);
        assert_eq!(tools[0].required, ["c"]);
    }

    #[test]
    fn call_ids_and_tokens_have_one_shape() {
        assert!(is_call_id("call_001"));
        assert!(is_call_id("call_1234"));
        assert!(!is_call_id("call_01"));
        assert!(!is_call_id("call_00a"));
        assert!(!is_call_id("x_001"));
        assert!(is_token(&(new_id() + &new_id())));
        assert!(!is_token("abc"));
    }
}
