//! `POST /exec/programmatic` and `/exec/programmatic/cancel`: LibreChat 3.x programmatic
//! tool calling, in the shapes of LibreChat's official Code API. The first request starts
//! the program; while it calls tools the answer is `tool_call_required` with a
//! continuation token, and the next request (token plus `tool_results`) resumes the same
//! run. Refusals carry the official API's sentence in `error` (the same sentence, with a
//! full stop, in `detail`).

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::exec::{ArtifactTruncation, ExecFile, FileRefBody, file_refs, label};
use super::forward::{self, Sent};
use crate::exec::{
    CancelOutcome, ExecResult, Principal, ProgramError, ProgramLanguage, ProgramRequest, Step,
    ToolResult, ToolSpec,
};
use crate::identity::Identity;
use crate::session::{SessionOwner, is_valid_entity_id};
use crate::store::Placement;

/// The header LibreChat sends with each request it may cancel.
const REQUEST_ID: &str = "x-librechat-code-request-id";
/// An answer still not ready after this long starts: status, headers, then a space every
/// `KEEPALIVE_EVERY` until the JSON (Node's pooled sockets die after 5 s of silence).
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);

/// A tool the program may call (LangChain's `LCTool`).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ToolBody {
    pub name: Option<String>,
    pub description: Option<String>,
    /// JSON Schema of the tool's input.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
}

/// The client's answer to one tool call.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ToolResultBody {
    pub call_id: Option<String>,
    /// The tool's output (any JSON value).
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub is_error: Option<bool>,
    pub error_message: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ProgramBody {
    /// The program: Python (top-level `await` works; tools are async functions called with
    /// keyword arguments) or bash (tools are functions taking one JSON argument).
    pub code: Option<String>,
    /// At most 100.
    pub tools: Option<Vec<ToolBody>>,
    /// `python` (default) or `bash`; `lang` is accepted as well.
    #[schema(value_type = Option<String>)]
    pub language: Option<Value>,
    #[schema(value_type = Option<String>)]
    pub lang: Option<Value>,
    /// Run in this session when it is yours (its files, its kernel); otherwise a new one.
    pub session_id: Option<String>,
    pub entity_id: Option<String>,
    pub user_id: Option<String>,
    pub files: Option<Vec<FileRefBody>>,
    /// Milliseconds the program may run between tool calls, and wait for the next
    /// continuation; capped at `EXECUTION_TIMEOUT`, which also bounds the whole run.
    pub timeout: Option<f64>,
    pub runtime_session_hint: Option<String>,
    /// From the last `tool_call_required`; with `tool_results`, resumes the program.
    pub continuation_token: Option<String>,
    #[schema(value_type = Option<Vec<ToolResultBody>>)]
    pub tool_results: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToolCallBody {
    pub id: String,
    /// The tool's name as the request gave it.
    pub name: String,
    #[schema(value_type = Object)]
    pub input: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProgramResponse {
    /// `tool_call_required`, `completed` or `error`.
    pub status: &'static str,
    pub session_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continuation_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallBody>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<ExecFile>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_files: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_truncation: Option<ArtifactTruncation>,
    /// With `status: "error"`: what went wrong, in the official API's words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ProgramResponse {
    fn of(step: Step) -> Self {
        let blank = |status, session_id| ProgramResponse {
            status,
            session_id,
            continuation_token: None,
            tool_calls: None,
            stdout: None,
            stderr: None,
            files: None,
            deleted_files: None,
            artifact_truncation: None,
            error: None,
        };
        match step {
            Step::ToolCalls {
                session_id,
                token,
                calls,
            } => ProgramResponse {
                continuation_token: Some(token),
                tool_calls: Some(
                    calls
                        .into_iter()
                        .map(|c| ToolCallBody {
                            id: c.id,
                            name: c.name,
                            input: c.input,
                        })
                        .collect(),
                ),
                ..blank("tool_call_required", session_id)
            },
            Step::Completed(result) => {
                let mut response = blank("completed", result.session_id.clone());
                response.fill(&result);
                response
            }
            Step::Failed {
                session_id,
                error,
                result,
            } => {
                let mut response = blank("error", session_id);
                if let Some(result) = result {
                    response.fill(&result);
                }
                response.error = Some(error);
                response
            }
        }
    }

    fn fill(&mut self, r: &ExecResult) {
        if self.session_id.is_empty() {
            self.session_id = r.session_id.clone();
        }
        self.stdout = Some(r.stdout.clone());
        self.stderr = Some(r.stderr.clone());
        self.files = Some(r.files.iter().map(ExecFile::of).collect());
        self.deleted_files = Some(r.deleted_files.clone());
        self.artifact_truncation = r.truncated_files.map(|(limit, total)| ArtifactTruncation {
            code: "artifact_truncated".into(),
            limit,
            total,
            omitted: total - limit,
        });
    }

    /// A failure after the answer had started: the sentence goes in the body.
    fn late(err: &Refusal, session_id: String) -> Self {
        ProgramResponse {
            status: "error",
            session_id,
            continuation_token: None,
            tool_calls: None,
            stdout: None,
            stderr: None,
            files: None,
            deleted_files: None,
            artifact_truncation: None,
            error: Some(err.sentence()),
        }
    }
}

/// A refusal: the official API's `{error}` sentence, or one of the server's own errors.
enum Refusal {
    Official(StatusCode, String),
    Api(ApiError),
}

impl Refusal {
    fn bad(sentence: impl Into<String>) -> Self {
        Refusal::Official(StatusCode::BAD_REQUEST, sentence.into())
    }

    fn sentence(&self) -> String {
        match self {
            Refusal::Official(_, s) => s.clone(),
            Refusal::Api(e) => e.detail.clone(),
        }
    }
}

impl From<ProgramError> for Refusal {
    fn from(err: ProgramError) -> Self {
        let official = |status| Refusal::Official(status, err.to_string());
        match &err {
            ProgramError::BadRequest(_) => official(StatusCode::BAD_REQUEST),
            ProgramError::TooLarge(_) => official(StatusCode::PAYLOAD_TOO_LARGE),
            ProgramError::NotFound => official(StatusCode::NOT_FOUND),
            ProgramError::Forbidden => official(StatusCode::FORBIDDEN),
            ProgramError::Conflict(_) => official(StatusCode::CONFLICT),
            ProgramError::Exec(_) => match err {
                ProgramError::Exec(e) => Refusal::Api(e.into()),
                _ => unreachable!(),
            },
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Api(e) => e.into_response(),
            Refusal::Official(status, error) => {
                let detail = if error.ends_with('.') {
                    error.clone()
                } else {
                    format!("{error}.")
                };
                (
                    status,
                    Json(serde_json::json!({"error": error, "detail": detail})),
                )
                    .into_response()
            }
        }
    }
}

/// JavaScript's `String(value)`, as the official API quotes a bad `language`.
fn js_string(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::Null => String::new(),
                v => js_string(v),
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => "[object Object]".into(),
        other => other.to_string(),
    }
}

fn language(body: &ProgramBody) -> Result<ProgramLanguage, Refusal> {
    let requested = [&body.language, &body.lang]
        .into_iter()
        .flatten()
        .find(|v| !v.is_null());
    match requested.map(|v| (v, v.as_str())) {
        None | Some((_, Some("python"))) => Ok(ProgramLanguage::Python),
        Some((_, Some("bash"))) => Ok(ProgramLanguage::Bash),
        Some((v, _)) => Err(Refusal::bad(format!(
            "Unsupported language \"{}\"; supported values are \"python\" and \"bash\"",
            js_string(v)
        ))),
    }
}

/// `X-LibreChat-Code-Request-ID`: absent, or 16 to 128 of `[A-Za-z0-9_-]`.
fn request_id(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let Some(value) = headers.get(REQUEST_ID) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(id) if is_request_id(id) => Ok(Some(id.to_owned())),
        _ => Err(Refusal::bad("Invalid programmatic request ID")),
    }
}

fn is_request_id(id: &str) -> bool {
    (16..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn body_of(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<ProgramBody, Refusal> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal::Official(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "Request too large: code may be at most {} bytes and one tool result {} bytes",
                    state.settings.max_code_bytes,
                    crate::exec::MAX_RESULT_BYTES
                ),
            )
        } else {
            Refusal::bad("The request body could not be read; send it again")
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        Refusal::bad(format!(
            "The body must be a JSON object with 'code' and 'tools', or 'continuation_token' and 'tool_results' ({e})"
        ))
    })
}

fn tool_results(value: Value) -> Result<Vec<ToolResult>, Refusal> {
    let Value::Array(items) = value else {
        return Err(Refusal::bad(
            "tool_results must be an array when continuation_token is provided",
        ));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let item: ToolResultBody = serde_json::from_value(item).map_err(|_| {
                Refusal::bad(format!(
                    "tool_results[{i}] must be an object with 'call_id' and 'result'"
                ))
            })?;
            let call_id = item
                .call_id
                .filter(|c| !c.is_empty())
                .ok_or_else(|| Refusal::bad(format!("tool_results[{i}].call_id is required")))?;
            Ok(ToolResult {
                call_id,
                result: item.result.unwrap_or(Value::Null),
                is_error: item.is_error.unwrap_or(false),
                error_message: item.error_message,
            })
        })
        .collect()
}

/// Who may continue or cancel a run: the tenant and the user the credentials vouch for
/// (a JWT's `sub`; an API key names none), never a user a body names.
fn principal_of(identity: &Identity) -> Principal {
    Principal {
        tenant: identity.tenant.clone(),
        user: identity.user_id.clone(),
    }
}

async fn program_request(
    state: &AppState,
    identity: &Identity,
    headers: &HeaderMap,
    body: ProgramBody,
    language: ProgramLanguage,
    request_id: Option<String>,
) -> Result<ProgramRequest, Refusal> {
    let timeout = match body.timeout {
        None => None,
        Some(ms) if ms.is_finite() && ms >= 1.0 => Some(Duration::from_millis(ms as u64)),
        Some(_) => {
            return Err(Refusal::bad(
                "timeout must be a positive number of milliseconds",
            ));
        }
    };
    let code = body
        .code
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| Refusal::bad("Missing required field: code"))?;
    let tools = body
        .tools
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Refusal::bad("Missing required field: tools (must be a non-empty array)"))?
        .into_iter()
        .enumerate()
        .map(|(i, t)| match t.name {
            Some(name) => Ok(ToolSpec {
                name,
                description: t.description,
                parameters: t.parameters,
            }),
            None => Err(Refusal::bad(format!("tools[{i}].name is required"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(entity) = &body.entity_id
        && !is_valid_entity_id(entity)
    {
        return Err(Refusal::bad(
            "entity_id must be 1 to 40 characters of A-Z, a-z, 0-9, '_' and '-'",
        ));
    }
    let named_user = label(body.user_id, "user_id")
        .map_err(Refusal::Api)?
        .or_else(|| {
            headers
                .get("user-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| label(Some(v.to_owned()), "User-Id").ok().flatten())
        });
    let user_id = identity.user(named_user);
    let hint = label(body.runtime_session_hint, "runtime_session_hint").map_err(Refusal::Api)?;
    let entity_id = match hint {
        Some(h) => Some(format!("hint:{h}")),
        None => body.entity_id,
    };
    let files = file_refs(body.files).map_err(Refusal::Api)?;
    // Continuations go on with a run already admitted; only a new run counts.
    super::exec::admit(state, &identity.tenant, user_id.as_deref())
        .await
        .map_err(Refusal::Api)?;
    Ok(ProgramRequest {
        principal: principal_of(identity),
        language,
        code,
        tools,
        session_id: body.session_id.filter(|s| !s.is_empty()),
        owner: SessionOwner { user_id, entity_id },
        files,
        timeout,
        request_id,
    })
}

/// Run a program that calls the client's tools, or resume one with the tools' results.
///
/// The first request carries `code` and `tools`. While the program waits for tools the
/// answer is `{status: "tool_call_required", continuation_token, tool_calls, session_id}`;
/// the next request sends `{continuation_token, tool_results: [{call_id, result,
/// is_error?, error_message?}]}` and the program goes on where it stopped (it is never run
/// again from the start). The end is `{status: "completed", stdout, stderr, files,
/// session_id}` or `{status: "error", error, session_id, …}`. An answer that takes over
/// 2 s starts with spaces (one a second) before the JSON.
#[utoipa::path(
    post, path = "/exec/programmatic", tag = "exec",
    request_body = ProgramBody,
    params(("X-LibreChat-Code-Request-ID" = Option<String>, Header, description = "16 to 128 of [A-Za-z0-9_-]: lets /exec/programmatic/cancel stop this request's run")),
    responses(
        (status = 200, description = "The program's next step", body = ProgramResponse),
        (status = 400, description = "Missing code or tools, an unsupported language, a bad continuation", body = ErrorBody),
        (status = 403, description = "Another tenant's or user's continuation token", body = ErrorBody),
        (status = 404, description = "An unknown or expired continuation token, or a missing input file", body = ErrorBody),
        (status = 409, description = "A continuation already in flight, or a request id in use", body = ErrorBody),
        (status = 413, description = "Code over MAX_CODE_BYTES or a tool result over 5 MiB", body = ErrorBody),
        (status = 429, description = "Over RATE_LIMIT_EXEC_PER_MINUTE (new runs only), or every Python kernel busy", body = ErrorBody),
        (status = 502, description = "STORE=shared: the node holding the run stopped answering during the forwarded call (`node_failed`)", body = ErrorBody),
        (status = 503, description = "STORE=shared: the node holding the run does not answer (`node_unavailable`), or Redis or the bucket is unreachable (`store_unavailable`)", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn programmatic(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // A continuation for a run another node holds is that node's to answer.
    if let Ok(raw) = &body
        && let Ok(TokenOnly {
            continuation_token: Some(token),
        }) = serde_json::from_slice(raw)
        && !token.is_empty()
        && !state.exec.holds_program(&token)
    {
        let sent = from_holder(&state, &identity, &token, &uri, &headers, raw.clone()).await;
        match sent {
            Ok(Sent::Here) => {}
            Ok(Sent::Answer(answer)) => return answer,
            Ok(Sent::Gone) => {
                return Refusal::Official(StatusCode::NOT_FOUND, HOLDER_GONE.into())
                    .into_response();
            }
            Err(err) => return err.into_response(),
        }
    }
    let principal = principal_of(&identity);
    let refused = async {
        let request_id = request_id(&headers)?;
        if let Some(id) = &request_id {
            hold(&state, &identity, id).await;
        }
        let mut body = body_of(&state, body)?;
        let language = language(&body)?;
        let session_hint = body.session_id.clone().unwrap_or_default();
        let exec = state.exec.clone();
        let step: futures::future::BoxFuture<'static, Result<Step, ProgramError>> =
            match body.continuation_token.take().filter(|t| !t.is_empty()) {
                Some(token) => {
                    let results = tool_results(body.tool_results.take().unwrap_or(Value::Null))?;
                    Box::pin(async move {
                        exec.resume_program(&principal, &token, results, request_id.as_deref())
                            .await
                    })
                }
                None => {
                    let req =
                        program_request(&state, &identity, &headers, body, language, request_id)
                            .await?;
                    Box::pin(async move { exec.start_program(req).await })
                }
            };
        let step = record_token(&state, &identity, step);
        Ok::<_, Refusal>((step, session_hint))
    };
    let (mut step, session_hint) = match refused.await {
        Ok(s) => s,
        Err(refusal) => return refusal.into_response(),
    };
    match tokio::time::timeout(ANSWER_WITHIN, &mut step).await {
        Ok(Ok(step)) => Json(ProgramResponse::of(step)).into_response(),
        Ok(Err(err)) => Refusal::from(err).into_response(),
        Err(_) => kept_alive(step, session_hint),
    }
}

/// Only the continuation token of a body, to know where the request goes.
#[derive(Deserialize)]
struct TokenOnly {
    continuation_token: Option<String>,
}

/// A continuation whose run's node stopped (several nodes): the run is gone with it.
const HOLDER_GONE: &str =
    "Execution not found or expired: the server node that ran it stopped; run the program again";

/// Which node holds the run that `key` leads to (a continuation token, or a request id to
/// cancel), and that node's answer when it is another live one.
async fn from_holder(
    state: &AppState,
    identity: &Identity,
    key: &str,
    uri: &Uri,
    headers: &HeaderMap,
    raw: Bytes,
) -> Result<Sent, ApiError> {
    if state.forwarder.is_none() {
        return Ok(Sent::Here);
    }
    let placement = || async {
        let placed = state.store.program_placement(&identity.tenant, key).await?;
        Ok(placed.unwrap_or(Placement::Here))
    };
    forward::to_holder(
        state,
        "this programmatic run",
        placement,
        Method::POST,
        uri,
        headers,
        raw,
    )
    .await
}

/// How long a record of which node holds a run lasts: as long as the run may.
fn held_for(state: &AppState) -> Duration {
    Duration::from_secs(state.settings.execution_timeout + 60)
}

/// Record that this node holds the run `key` leads to (several nodes only).
async fn hold(state: &AppState, identity: &Identity, key: &str) {
    if state.forwarder.is_none() {
        return;
    }
    if let Err(err) = state
        .store
        .hold_program(&identity.tenant, key, held_for(state))
        .await
    {
        tracing::warn!(error = %err, "which node holds a programmatic run could not be recorded");
    }
}

/// `step`, recording that this node holds its run once it answers with a continuation
/// token, before the client can send the continuation anywhere.
fn record_token(
    state: &AppState,
    identity: &Identity,
    step: futures::future::BoxFuture<'static, Result<Step, ProgramError>>,
) -> futures::future::BoxFuture<'static, Result<Step, ProgramError>> {
    if state.forwarder.is_none() {
        return step;
    }
    let (state, identity) = (state.clone(), identity.clone());
    Box::pin(async move {
        let step = step.await;
        if let Ok(Step::ToolCalls { token, .. }) = &step {
            hold(&state, &identity, token).await;
        }
        step
    })
}

/// A 200 whose body is spaces, one a second, then the step's JSON (JSON parsers skip
/// leading whitespace). Dropped with the connection, which tells the run its client left.
fn kept_alive(
    step: futures::future::BoxFuture<'static, Result<Step, ProgramError>>,
    session_id: String,
) -> Response {
    let mut tick = tokio::time::interval(KEEPALIVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let body = futures::stream::unfold(Some((step, tick)), move |state| {
        let session_id = session_id.clone();
        async move {
            let (mut step, mut tick) = state?;
            tokio::select! {
                biased;
                outcome = &mut step => {
                    let response = match outcome {
                        Ok(step) => ProgramResponse::of(step),
                        Err(err) => ProgramResponse::late(&Refusal::from(err), session_id),
                    };
                    let json = serde_json::to_vec(&response).unwrap_or_default();
                    Some((Ok::<_, Infallible>(Bytes::from(json)), None))
                }
                _ = tick.tick() => Some((Ok(Bytes::from_static(b" ")), Some((step, tick)))),
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CancelBody {
    /// The `X-LibreChat-Code-Request-ID` of the request whose run should stop.
    pub request_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CancelResponse {
    /// `cancellation_requested`.
    pub status: &'static str,
}

/// Stop the run of the programmatic request sent with this `X-LibreChat-Code-Request-ID`
/// (LibreChat posts it when the user aborts), also when that request already answered
/// `tool_call_required` and the run waits for its continuation (which then answers that
/// it was cancelled). An id not seen yet is remembered for two minutes, so a request that
/// arrives after its cancellation is refused.
#[utoipa::path(
    post, path = "/exec/programmatic/cancel", tag = "exec",
    request_body = CancelBody,
    responses(
        (status = 202, description = "The run is being stopped", body = CancelResponse),
        (status = 400, description = "A missing or malformed request_id", body = ErrorBody),
        (status = 403, description = "Another tenant's or user's request", body = ErrorBody),
        (status = 502, description = "STORE=shared: the node holding the run stopped answering during the forwarded call (`node_failed`)", body = ErrorBody),
        (status = 503, description = "STORE=shared: the node holding the run does not answer (`node_unavailable`), or Redis or the bucket is unreachable (`store_unavailable`)", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let raw = body.ok();
    let id = raw
        .as_ref()
        .and_then(|b| serde_json::from_slice::<CancelBody>(b).ok())
        .and_then(|b| b.request_id)
        .filter(|id| is_request_id(id));
    let (Some(id), Some(raw)) = (id, raw) else {
        return Refusal::bad("Invalid or missing request_id").into_response();
    };
    // The request's run is on another node: that node stops it. A run whose node stopped
    // is gone already; this node remembers the cancellation as for an id not seen yet.
    if !state.exec.knows_request(&id) {
        match from_holder(&state, &identity, &id, &uri, &headers, raw).await {
            Ok(Sent::Answer(answer)) => return answer,
            Ok(Sent::Here | Sent::Gone) => {}
            Err(err) => return err.into_response(),
        }
    }
    match state.exec.cancel_program(&principal_of(&identity), &id) {
        CancelOutcome::Requested => (
            StatusCode::ACCEPTED,
            Json(CancelResponse {
                status: "cancellation_requested",
            }),
        )
            .into_response(),
        CancelOutcome::Forbidden => Refusal::Official(
            StatusCode::FORBIDDEN,
            "Programmatic request belongs to another principal".into(),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_have_the_official_shape() {
        assert!(is_request_id("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(!is_request_id("short"));
        assert!(!is_request_id(&"a".repeat(129)));
        assert!(!is_request_id("has space in it, too long"));
    }

    #[test]
    fn a_bad_language_is_quoted_as_javascript_would() {
        assert_eq!(js_string(&serde_json::json!("py")), "py");
        assert_eq!(js_string(&serde_json::json!(5)), "5");
        assert_eq!(js_string(&serde_json::json!({"a": 1})), "[object Object]");
        assert_eq!(js_string(&serde_json::json!(["a", 1])), "a,1");
    }
}
