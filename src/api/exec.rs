//! `POST /exec`: the request and response shapes (LibreChat's and the seed's), turned into
//! an `ExecRequest` for the `ExecService` and back.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::wire::download_path;
use super::{AppState, forward};
use crate::exec::{
    CancelOnDrop, ExecError, ExecEvent, ExecRequest, ExecResult, FileRef, OutputFile, RunHandle,
};
use crate::identity::Identity;
use crate::session::{SessionOwner, Tenant, is_valid_entity_id};
use crate::store::Allowance;

/// What a 429 for busy kernels suggests as a wait: about one short cell.
const BUSY_RETRY_SECONDS: u64 = 5;

/// `args`: a list is argv exactly; a string is split as a POSIX shell would.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ArgsField {
    List(Vec<String>),
    Line(String),
}

/// The argv a request's `args` stand for.
fn split_args(args: Option<ArgsField>) -> ApiResult<Vec<String>> {
    match args {
        None => Ok(Vec::new()),
        Some(ArgsField::List(list)) => Ok(list),
        Some(ArgsField::Line(line)) => shlex::split(&line).ok_or_else(|| {
            ApiError::bad_request(
                "'args' has an unclosed quote; balance the quotes or send a list.",
            )
        }),
    }
}

/// A file to place at `/mnt/data/<name>` before the run: LibreChat 2.x
/// `{id, session_id, name}` or 3.x `{id, resource_id, name, storage_session_id, kind, version}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct FileRefBody {
    pub id: Option<String>,
    pub name: Option<String>,
    pub session_id: Option<String>,
    pub storage_session_id: Option<String>,
    pub resource_id: Option<String>,
    pub kind: Option<String>,
    #[schema(value_type = Option<String>)]
    pub version: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ExecBody {
    /// The source code.
    pub code: Option<String>,
    // Its schema lists the registry's languages (`lang_schema`).
    #[schema(schema_with = lang_schema)]
    pub lang: Option<String>,
    pub args: Option<ArgsField>,
    /// Reuse this session (when it is yours); otherwise a new one is made.
    pub session_id: Option<String>,
    /// Without `session_id`: reuse the latest session of (you, this user, this entity).
    pub entity_id: Option<String>,
    pub user_id: Option<String>,
    pub files: Option<Vec<FileRefBody>>,
    /// Wall-clock limit in milliseconds, capped at `EXECUTION_TIMEOUT`.
    pub timeout: Option<u64>,
    /// LibreChat's stateful profile: runs with the same hint share a session.
    pub runtime_session_hint: Option<String>,
}

/// `lang`: a string naming one of the registry's languages.
fn lang_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(format!(
            "The language of `code`, case-insensitive: {}.",
            crate::runtime::supported()
        )))
        .examples(["py", "bash"])
        .build()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunInfo {
    pub stdout: String,
    pub stderr: String,
    pub code: Option<i32>,
    pub signal: Option<String>,
    /// stdout then stderr.
    pub output: String,
    /// `success`, `error`, `timeout` or `killed`.
    pub status: String,
    pub message: Option<String>,
    /// Milliseconds.
    pub wall_time: f64,
    /// Milliseconds, when measured.
    pub cpu_time: Option<f64>,
    /// Peak bytes, when measured.
    pub memory: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModifiedFrom {
    pub id: String,
    pub session_id: String,
    pub storage_session_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExecFile {
    pub id: String,
    /// Path relative to `/mnt/data`.
    pub name: String,
    pub session_id: String,
    pub storage_session_id: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inherited: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified_from: Option<ModifiedFrom>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactTruncation {
    pub code: String,
    pub limit: usize,
    pub total: usize,
    pub omitted: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExecResponse {
    pub session_id: String,
    pub language: String,
    pub version: String,
    pub stdout: String,
    pub stderr: String,
    pub run: RunInfo,
    pub files: Vec<ExecFile>,
    pub deleted_files: Vec<String>,
    /// The same as in `run`, flat, as LibreChat's official API answers.
    pub code: Option<i32>,
    pub signal: Option<String>,
    pub message: Option<String>,
    pub wall_time: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_truncation: Option<ArtifactTruncation>,
    /// The session whose workspace (and Python kernel) served the run: LibreChat's
    /// stateful profile echoes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_session_id: Option<String>,
    /// `reused` when the session's Python kernel, with its variables and imports, ran the
    /// cell; `new` when nothing in memory carried over (a fresh kernel, also after a
    /// restart, an eviction, a crash or a server restart; every one-shot language).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_status: Option<String>,
    /// Only when the run could not happen after the answer had started: the error code
    /// the status would otherwise have carried (e.g. `rate_limited`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `error: "rate_limited"`: when to try again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

impl ExecFile {
    pub(super) fn of(f: &OutputFile) -> Self {
        let reference = f.reference.as_ref();
        ExecFile {
            id: f.meta.id.clone(),
            name: f.meta.name.to_string(),
            session_id: f.meta.session_id.clone(),
            storage_session_id: f.meta.session_id.clone(),
            path: download_path(&f.meta),
            resource_id: reference.and_then(|r| r.resource_id.clone()),
            kind: reference.and_then(|r| r.kind.clone()),
            version: reference.and_then(|r| r.version.clone()),
            inherited: f.inherited,
            modified_from: f.modified_from.as_ref().map(|(id, sid)| ModifiedFrom {
                id: id.clone(),
                session_id: sid.clone(),
                storage_session_id: sid.clone(),
            }),
        }
    }
}

impl ExecResponse {
    pub fn of(r: &ExecResult) -> Self {
        let o = &r.outcome;
        let run = RunInfo {
            stdout: r.stdout.clone(),
            stderr: r.stderr.clone(),
            code: o.exit_code,
            signal: o.signal.clone(),
            output: format!("{}{}", r.stdout, r.stderr),
            status: o.status.as_str().to_owned(),
            message: o.message.clone(),
            wall_time: millis(o.wall_time),
            cpu_time: o.cpu_time.map(millis),
            memory: o.peak_memory,
        };
        ExecResponse {
            session_id: r.session_id.clone(),
            language: r.language.name().to_owned(),
            version: r.version.clone(),
            stdout: r.stdout.clone(),
            stderr: r.stderr.clone(),
            code: run.code,
            signal: run.signal.clone(),
            message: run.message.clone(),
            wall_time: run.wall_time,
            run,
            files: r.files.iter().map(ExecFile::of).collect(),
            deleted_files: r.deleted_files.clone(),
            artifact_truncation: r.truncated_files.map(|(limit, total)| ArtifactTruncation {
                code: "artifact_truncated".into(),
                limit,
                total,
                omitted: total - limit,
            }),
            runtime_session_id: Some(r.session_id.clone()),
            runtime_status: Some(r.runtime_status.as_str().to_owned()),
            error: None,
            retry_after_seconds: None,
        }
    }

    /// The result of a run that could not happen, for an answer already under way: the
    /// sentence where the model looks (stderr) and the code where programs look (`error`).
    fn failed(late: &LateFailure, err: &ApiError) -> Self {
        let stderr = format!("[sandbox] {}\n", err.detail);
        let run = RunInfo {
            stdout: String::new(),
            stderr: stderr.clone(),
            code: None,
            signal: None,
            output: stderr.clone(),
            status: crate::runtime::RunStatus::Error.as_str().to_owned(),
            message: Some(err.detail.clone()),
            wall_time: 0.0,
            cpu_time: None,
            memory: None,
        };
        ExecResponse {
            session_id: late.session_id.clone(),
            language: late.language.clone(),
            version: String::new(),
            stdout: String::new(),
            stderr,
            code: None,
            signal: None,
            message: run.message.clone(),
            wall_time: 0.0,
            run,
            files: Vec::new(),
            deleted_files: Vec::new(),
            artifact_truncation: None,
            runtime_session_id: None,
            runtime_status: None,
            error: Some(err.code.to_owned()),
            retry_after_seconds: err.retry_after,
        }
    }
}

impl From<ExecError> for ApiError {
    fn from(err: ExecError) -> Self {
        match err {
            ExecError::BadRequest(s) => ApiError::bad_request(s),
            e @ ExecError::UnsupportedLanguage(_) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_language",
                e.to_string(),
            ),
            e @ ExecError::CodeTooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "code_too_large",
                e.to_string(),
            ),
            ExecError::SessionNotFound => ApiError::session_not_found(),
            e @ ExecError::InputMissing(_) => ApiError::new(
                StatusCode::NOT_FOUND,
                "session_input_unavailable",
                e.to_string(),
            ),
            e @ ExecError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "runtime_unavailable",
                format!("{e} Run `code-interpreter doctor` on the server to see what is missing."),
            ),
            ExecError::Store(e) => e.into(),
            ExecError::Busy(s) => ApiError::rate_limited(format!("{s}."), BUSY_RETRY_SECONDS),
            ExecError::Internal(e) => ApiError::internal(e),
        }
    }
}

pub(super) fn label(value: Option<String>, field: &str) -> ApiResult<Option<String>> {
    match value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) {
        Some(v) if v.len() > 128 || v.chars().any(char::is_control) => Err(ApiError::validation(
            format!("'{field}' must be at most 128 printable characters."),
        )),
        other => Ok(other),
    }
}

/// The request's input files, in LibreChat's 2.x or 3.x shape.
pub(super) fn file_refs(files: Option<Vec<FileRefBody>>) -> ApiResult<Vec<FileRef>> {
    files
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let storage = f.storage_session_id.or(f.session_id);
            match (f.id, f.name, storage) {
                (Some(id), Some(name), Some(storage_session_id)) => Ok(FileRef {
                    storage_session_id,
                    id,
                    name,
                    resource_id: f.resource_id,
                    kind: f.kind,
                    version: f.version.map(|v| match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    }),
                }),
                _ => Err(ApiError::validation(format!(
                    "files[{i}] needs 'id', 'name' and 'session_id' (or 'storage_session_id')."
                ))),
            }
        })
        .collect()
}

/// Check and convert the JSON body. Every mistake gets its own sentence. The rate limit is
/// [`admit`]'s, once the run is known to be this node's.
pub fn parse_request(
    state: &AppState,
    identity: &Identity,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<ExecRequest> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                format!(
                    "The request body is too large: code may be at most {} bytes.",
                    state.settings.max_code_bytes
                ),
            )
        } else {
            ApiError::bad_request("The request body could not be read; send it again.")
        }
    })?;
    let body: ExecBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::validation(format!(
            "The body must be a JSON object with 'code' and 'lang' ({e})."
        ))
    })?;
    let lang = body.lang.ok_or_else(|| {
        ApiError::validation("'lang' is required: the language of the code, e.g. \"py\".")
    })?;
    let code = body
        .code
        .ok_or_else(|| ApiError::validation("'code' is required: the source to run."))?;
    let args = split_args(body.args)?;
    if let Some(entity) = &body.entity_id
        && !is_valid_entity_id(entity)
    {
        return Err(ApiError::validation(
            "entity_id must be 1 to 40 characters of A-Z, a-z, 0-9, '_' and '-'.",
        ));
    }
    if body.timeout == Some(0) {
        return Err(ApiError::validation(
            "'timeout' is in milliseconds and must be at least 1.",
        ));
    }
    let named_user = label(body.user_id, "user_id")?.or_else(|| {
        label(
            headers
                .get("user-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            "User-Id",
        )
        .ok()
        .flatten()
    });
    let user_id = identity.user(named_user);
    let hint = label(body.runtime_session_hint, "runtime_session_hint")?;
    let files = file_refs(body.files)?;
    // A stateful hint maps to a session like an entity does, keyed apart from entities.
    let entity_id = match hint {
        Some(h) => Some(format!("hint:{h}")),
        None => body.entity_id,
    };
    let request = ExecRequest {
        tenant: identity.tenant.clone(),
        lang,
        code,
        args,
        session_id: body.session_id.filter(|s| !s.is_empty()),
        owner: SessionOwner { user_id, entity_id },
        files,
        timeout: body.timeout.map(Duration::from_millis),
    };
    Ok(request)
}

/// Where a parsed run goes: the answer of the node that holds its session's kernel
/// (several nodes), or `None` after admitting it here (`RATE_LIMIT_EXEC_PER_MINUTE`
/// counts it where it runs).
async fn forward_or_admit(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    raw: Bytes,
    request: &ExecRequest,
) -> ApiResult<Option<Response>> {
    if state.forwarder.is_some()
        && let Some(sid) = state.exec.stateful_session(request).await?
        && let Some(answer) =
            forward::to_owner(state, &sid, Method::POST, uri, headers, raw).await?
    {
        return Ok(Some(answer));
    }
    admit(state, &request.tenant, request.owner.user_id.as_deref()).await?;
    Ok(None)
}

/// `RATE_LIMIT_EXEC_PER_MINUTE` for a run about to start (`/exec`, `/exec/stream`, a new
/// programmatic run), in the official Code API's 429 shape. Several nodes share one
/// allowance per (tenant, user) in the store; one node keeps its own.
pub async fn admit(state: &AppState, tenant: &Tenant, user_id: Option<&str>) -> ApiResult<()> {
    let per_minute = state.settings.rate_limit_exec_per_minute;
    let shared = if per_minute > 0 {
        state.store.take_run(tenant, user_id, per_minute).await?
    } else {
        Allowance::NotShared
    };
    let over = match shared {
        Allowance::Granted => return Ok(()),
        Allowance::Wait(retry_after) => crate::rate_limit::Limited {
            per_minute,
            retry_after,
        },
        Allowance::NotShared => match state.exec_rate.check(tenant, user_id) {
            Ok(()) => return Ok(()),
            Err(over) => over,
        },
    };
    let seconds = over.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let unit = if seconds == 1 { "second" } else { "seconds" };
    Err(ApiError::rate_limited(
        format!(
            "Too many code runs: each user may start {} per minute (RATE_LIMIT_EXEC_PER_MINUTE). Please retry in {seconds} {unit}.",
            over.per_minute
        ),
        seconds,
    )
    .with_field(
        "message",
        format!("Too many CodeAPI execution requests. Please retry in {seconds} {unit}."),
    )
    .with_header(RATE_LIMIT_LIMIT, HeaderValue::from(over.per_minute))
    .with_header(RATE_LIMIT_REMAINING, HeaderValue::from(0))
    .with_header(RATE_LIMIT_RESET, HeaderValue::from(seconds)))
}

const RATE_LIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATE_LIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATE_LIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// A file saved from a rich output, as a `display`/`result` frame names it.
#[derive(Debug, Serialize, ToSchema)]
pub struct FrameFile {
    pub id: String,
    /// Path relative to `/mnt/data`.
    pub name: String,
    pub session_id: String,
    pub storage_session_id: String,
    pub path: String,
}

/// One Server-Sent Events frame of `/exec/stream`: `data: <this object as JSON>`, told
/// apart by `type`. `session` comes first and `done` last, always.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StreamFrame {
    /// The run's session (new or reused).
    Session { session_id: String },
    /// Output as it is written; `name` is `stdout` or `stderr`.
    Stream { name: String, text: String },
    /// A rich output (a MIME bundle; images base64), with the file it was saved as.
    Display {
        #[schema(value_type = Object)]
        data: serde_json::Value,
        file: Option<FrameFile>,
    },
    /// A cell's last expression value, as `display`.
    Result {
        #[schema(value_type = Object)]
        data: serde_json::Value,
        file: Option<FrameFile>,
    },
    /// A Python exception; the traceback has no ANSI codes.
    Error {
        ename: String,
        evalue: String,
        traceback: Vec<String>,
    },
    /// The whole `/exec` response, plus `status` (the same as `run.status`).
    Done {
        status: String,
        #[serde(flatten)]
        response: Box<ExecResponse>,
    },
}

impl StreamFrame {
    fn of(event: &ExecEvent) -> Self {
        match event {
            ExecEvent::Stdout(text) => StreamFrame::Stream {
                name: "stdout".into(),
                text: text.clone(),
            },
            ExecEvent::Stderr(text) => StreamFrame::Stream {
                name: "stderr".into(),
                text: text.clone(),
            },
            ExecEvent::Display { data, result, file } => {
                let data = data.clone();
                let file = file.as_ref().map(|f| FrameFile {
                    id: f.id.clone(),
                    name: f.name.to_string(),
                    session_id: f.session_id.clone(),
                    storage_session_id: f.session_id.clone(),
                    path: download_path(f),
                });
                if *result {
                    StreamFrame::Result { data, file }
                } else {
                    StreamFrame::Display { data, file }
                }
            }
            ExecEvent::Error {
                ename,
                evalue,
                traceback,
            } => StreamFrame::Error {
                ename: ename.clone(),
                evalue: evalue.clone(),
                traceback: traceback.clone(),
            },
            ExecEvent::Done(result) => {
                let response = ExecResponse::of(result);
                StreamFrame::Done {
                    status: response.run.status.clone(),
                    response: Box::new(response),
                }
            }
        }
    }

    fn event(&self) -> Event {
        Event::default().data(serde_json::to_string(self).unwrap_or_default())
    }
}

/// The same request as `/exec`, answered as Server-Sent Events while it runs: `session`
/// first, then `stream`, `display`/`result` and `error` frames, and always a final `done`
/// carrying the whole `/exec` response. A bad request is a 4xx before any frame.
#[utoipa::path(
    post, path = "/exec/stream", tag = "exec",
    request_body = ExecBody,
    responses(
        (status = 200, description = "Server-Sent Events: each frame is `data: <StreamFrame as JSON>`; `: keep-alive` comments every 2 s", content_type = "text/event-stream", body = StreamFrame),
        (status = 400, description = "Unsupported language or bad arguments", body = ErrorBody),
        (status = 404, description = "An input file is missing", body = ErrorBody),
        (status = 422, description = "Missing or malformed fields", body = ErrorBody),
        (status = 429, description = "Over RATE_LIMIT_EXEC_PER_MINUTE, or every Python kernel busy", body = ErrorBody),
        (status = 502, description = "STORE=shared: the node holding the session stopped answering during the forwarded call (`node_failed`)", body = ErrorBody),
        (status = 503, description = "The language's runtime is not installed, or (STORE=shared) the node holding the session does not answer (`node_unavailable`) or Redis or the bucket is unreachable (`store_unavailable`)", body = ErrorBody),
        (status = 507, description = "DATA_DIR is below DATA_DIR_MIN_FREE_MB", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn exec_stream(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let raw = body.as_ref().cloned().unwrap_or_default();
    let request = parse_request(&state, &identity, &headers, body)?;
    if let Some(answer) = forward_or_admit(&state, &uri, &headers, raw, &request).await? {
        return Ok(answer);
    }
    let started = state.exec.start(request).await?;
    let session_id = started.session_id;
    let first = futures::stream::once(async move {
        Ok::<_, Infallible>(StreamFrame::Session { session_id }.event())
    });
    // The run goes on in its own task; the stream holds a guard that cancels it when the
    // client leaves (unless STREAM_CANCEL_ON_DISCONNECT is off).
    let guard = disconnect_guard(&state, &started.handle);
    let rest = tokio_stream::wrappers::ReceiverStream::new(started.events).map(move |event| {
        let _ = &guard;
        Ok(StreamFrame::of(&event).event())
    });
    Ok(Sse::new(first.chain(rest))
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(KEEP_ALIVE_SECONDS))
                .text("keep-alive"),
        )
        .into_response())
}

/// Comments on an idle stream keep proxies, and clients whose idle sockets time out after
/// 5 s (Node's `http.globalAgent`), from closing it.
const KEEP_ALIVE_SECONDS: u64 = 2;

/// A `/exec` still running after this long starts its answer: status line and headers,
/// then a space at least every [`KEEPALIVE_EVERY`] until the JSON follows (JSON parsers
/// skip leading whitespace). Clients whose pooled sockets die after 5 s of silence keep
/// the connection: Node >= 19's `http.globalAgent`, which LibreChat's axios calls and
/// `@librechat/agents`' node-fetch share, is one.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);

/// Run code in a session and wait for the result. A run that started answers 200, also
/// when the code failed, timed out or was killed (`run.status` says which).
///
/// A run that takes longer than 2 s answers 200 with its headers at once and sends a
/// space every second until the JSON body follows (no `Content-Length`; still
/// `application/json`). Everything a client can get wrong is refused with its 4xx before
/// that; a failure after it (every kernel still busy after `QUEUE_WAIT_SECONDS`, a
/// runtime gone missing) is a result with `run.status: "error"`, the sentence in
/// `stderr` and `run.message`, and the code in `error`.
#[utoipa::path(
    post, path = "/exec", tag = "exec",
    request_body = ExecBody,
    responses(
        (status = 200, description = "The run's result (after 2 s: leading spaces, then the JSON)", body = ExecResponse),
        (status = 400, description = "Unsupported language or bad arguments", body = ErrorBody),
        (status = 404, description = "An input file is missing", body = ErrorBody),
        (status = 413, description = "Code over MAX_CODE_BYTES", body = ErrorBody),
        (status = 422, description = "Missing or malformed fields", body = ErrorBody),
        (status = 429, description = "Over RATE_LIMIT_EXEC_PER_MINUTE, or every Python kernel busy and QUEUE_WAIT_SECONDS under 2 s", body = ErrorBody),
        (status = 502, description = "STORE=shared: the node holding the session stopped answering during the forwarded call (`node_failed`)", body = ErrorBody),
        (status = 503, description = "The language's runtime is not installed, or (STORE=shared) the node holding the session does not answer (`node_unavailable`) or Redis or the bucket is unreachable (`store_unavailable`)", body = ErrorBody),
        (status = 507, description = "DATA_DIR is below DATA_DIR_MIN_FREE_MB", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn exec(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let raw = body.as_ref().cloned().unwrap_or_default();
    let request = match parse_request(&state, &identity, &headers, body) {
        Ok(request) => request,
        Err(err) => return err.into_response(),
    };
    match forward_or_admit(&state, &uri, &headers, raw, &request).await {
        Ok(None) => {}
        Ok(Some(answer)) => return answer,
        Err(err) => return err.into_response(),
    }
    let late = LateFailure {
        session_id: request
            .session_id
            .clone()
            .filter(|s| crate::session::is_valid_id(s))
            .unwrap_or_default(),
        language: crate::runtime::Language::parse(&request.lang)
            .map_or_else(|| request.lang.clone(), |l| l.name().to_owned()),
    };
    let mut result: PendingResult = Box::pin(async move {
        let started = state.exec.start(request).await?;
        // Dropped with this future when the client leaves (before or after the answer
        // started): the run is cancelled.
        let _guard = disconnect_guard(&state, &started.handle);
        crate::exec::finish(started.events)
            .await
            .ok_or_else(|| ApiError::internal("the run ended without a result"))
    });
    match tokio::time::timeout(ANSWER_WITHIN, &mut result).await {
        Ok(Ok(result)) => Json(ExecResponse::of(&result)).into_response(),
        Ok(Err(err)) => err.into_response(),
        Err(_) => kept_alive(result, late),
    }
}

type PendingResult = Pin<Box<dyn Future<Output = ApiResult<ExecResult>> + Send>>;

/// What a result body needs when the run failed after the answer had started.
struct LateFailure {
    session_id: String,
    language: String,
}

/// A 200 whose body is spaces, one a second, then the result's JSON.
fn kept_alive(result: PendingResult, late: LateFailure) -> Response {
    let mut tick = tokio::time::interval(KEEPALIVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let body = futures::stream::unfold(Some((result, tick, late)), |state| async move {
        let (mut result, mut tick, late) = state?;
        tokio::select! {
            biased;
            outcome = &mut result => {
                let response = match outcome {
                    Ok(result) => ExecResponse::of(&result),
                    Err(err) => ExecResponse::failed(&late, &err),
                };
                let json = serde_json::to_vec(&response).unwrap_or_default();
                Some((Ok::<_, Infallible>(Bytes::from(json)), None))
            }
            _ = tick.tick() => Some((Ok(Bytes::from_static(b" ")), Some((result, tick, late)))),
        }
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
}

/// What cancels a run when its client goes away (dropped with the request or the stream).
fn disconnect_guard(state: &AppState, handle: &RunHandle) -> CancelOnDrop {
    let mut guard = handle.cancel_on_drop();
    if !state.settings.stream_cancel_on_disconnect {
        guard.disarm();
    }
    guard
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KernelAction {
    pub session_id: String,
    /// Whether the session had a live kernel to act on.
    pub applied: bool,
    pub message: String,
}

fn check_session_id(sid: &str) -> ApiResult<()> {
    if crate::session::is_valid_id(sid) {
        Ok(())
    } else {
        Err(ApiError::malformed_id("session id"))
    }
}

/// Interrupt what the session runs now: a Python cell ends with `KeyboardInterrupt` (its
/// state is kept); a one-shot program is stopped.
#[utoipa::path(
    post, path = "/sessions/{session_id}/interrupt", tag = "sessions",
    params(("session_id" = String, Path)),
    responses(
        (status = 200, body = KernelAction),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 502, description = "STORE=shared: the node holding the session stopped answering during the forwarded call (`node_failed`)", body = ErrorBody),
        (status = 503, description = "STORE=shared: the node holding the session does not answer (`node_unavailable`), or Redis or the bucket is unreachable (`store_unavailable`)", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn interrupt(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    axum::extract::Path(sid): axum::extract::Path<String>,
) -> ApiResult<Response> {
    check_session_id(&sid)?;
    if let Some(answer) =
        forward::to_owner(&state, &sid, Method::POST, &uri, &headers, Bytes::new()).await?
    {
        return Ok(answer);
    }
    let applied = state.exec.interrupt(&tenant, &sid).await?;
    Ok(Json(KernelAction {
        session_id: sid,
        applied,
        message: if applied {
            "The session's running code was interrupted.".into()
        } else {
            "Nothing was running in the session.".into()
        },
    })
    .into_response())
}

/// Restart the session's Python kernel: variables are lost, files are kept.
#[utoipa::path(
    post, path = "/sessions/{session_id}/restart", tag = "sessions",
    params(("session_id" = String, Path)),
    responses(
        (status = 200, body = KernelAction),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 502, description = "STORE=shared: the node holding the session stopped answering during the forwarded call (`node_failed`)", body = ErrorBody),
        (status = 503, description = "STORE=shared: the node holding the session does not answer (`node_unavailable`), or Redis or the bucket is unreachable (`store_unavailable`)", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn restart(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    axum::extract::Path(sid): axum::extract::Path<String>,
) -> ApiResult<Response> {
    check_session_id(&sid)?;
    if let Some(answer) =
        forward::to_owner(&state, &sid, Method::POST, &uri, &headers, Bytes::new()).await?
    {
        return Ok(answer);
    }
    let applied = state.exec.restart(&tenant, &sid).await?;
    Ok(Json(KernelAction {
        session_id: sid,
        applied,
        message: "The next Python call starts a fresh kernel; files in /mnt/data are kept.".into(),
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..Default::default()
        }
    }

    /// The events a client following the SSE specification reads from `bytes`: each the
    /// joined `data` lines before a blank line; comments and other fields ignored.
    fn sse_events(bytes: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(bytes).expect("SSE is UTF-8");
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        let (mut events, mut data): (Vec<String>, Option<String>) = (Vec::new(), None);
        for line in text.split('\n') {
            if line.is_empty() {
                events.extend(data.take());
            } else if let Some(value) = line.strip_prefix("data") {
                let value = value
                    .strip_prefix(':')
                    .map(|v| v.strip_prefix(' ').unwrap_or(v));
                let value = value.unwrap_or_default();
                data = Some(match data.take() {
                    Some(before) => format!("{before}\n{value}"),
                    None => value.to_owned(),
                });
            }
        }
        events
    }

    fn frame_bytes(frames: &[StreamFrame]) -> Vec<u8> {
        let events: Vec<Result<Event, std::convert::Infallible>> =
            frames.iter().map(|f| Ok(f.event())).collect();
        let response = Sse::new(futures::stream::iter(events)).into_response();
        let body = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
            .unwrap();
        body.to_vec()
    }

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "(data: |\r|\n|\r\n|:|\u{2028}|\u{85}|\\\\|\"|event: x|[a-z ]{0,5}){0,12}",
        ]
    }

    fn any_frame() -> impl Strategy<Value = StreamFrame> {
        prop_oneof![
            (any_text(), any_text()).prop_map(|(name, text)| StreamFrame::Stream { name, text }),
            (
                any_text(),
                any_text(),
                proptest::collection::vec(any_text(), 0..4)
            )
                .prop_map(|(ename, evalue, traceback)| StreamFrame::Error {
                    ename,
                    evalue,
                    traceback
                }),
            any_text().prop_map(|session_id| StreamFrame::Session { session_id }),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        /// Whatever user code prints (line breaks of every kind, `data:` lines, colons),
        /// each frame is exactly one SSE event, and its data is the frame's JSON.
        #[test]
        fn every_frame_is_one_event_carrying_its_json(frames in proptest::collection::vec(any_frame(), 1..6)) {
            let events = sse_events(&frame_bytes(&frames));
            prop_assert_eq!(events.len(), frames.len());
            for (event, frame) in events.iter().zip(&frames) {
                let parsed: serde_json::Value = serde_json::from_str(event).unwrap();
                prop_assert_eq!(parsed, serde_json::to_value(frame).unwrap());
            }
        }

        /// A list quoted as a shell would comes back as the same argv from a string, and
        /// no string makes the split panic.
        #[test]
        fn a_quoted_argv_splits_back_to_itself(
            argv in proptest::collection::vec("[^\\x00]{0,12}", 0..6),
            line in any::<String>(),
        ) {
            let quoted: Vec<String> = argv
                .iter()
                .map(|a| shlex::try_quote(a).unwrap().into_owned())
                .collect();
            let split = split_args(Some(ArgsField::Line(quoted.join(" "))));
            prop_assert_eq!(split.ok(), Some(argv.clone()));
            prop_assert_eq!(split_args(Some(ArgsField::List(argv.clone()))).ok(), Some(argv));
            let _ = split_args(Some(ArgsField::Line(line)));
        }
    }

    #[test]
    fn an_unclosed_quote_is_a_bad_request() {
        assert!(split_args(Some(ArgsField::Line("a 'b".into()))).is_err());
        assert_eq!(split_args(None).ok(), Some(Vec::new()));
    }
}
