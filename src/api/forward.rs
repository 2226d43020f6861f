//! Several nodes (`STORE=shared` with `NODE_URL`): a call that needs a session's Python
//! kernel is sent to the node whose kernel it is, and that node's answer is streamed back
//! as it comes (the kept-alive `/exec` body and `/exec/stream`'s events alike).
//!
//! The store's session directory says which node holds a session and whether its lease is
//! live. A node that refuses the connection is gone: the call runs here, on a new kernel.
//! A node that does not answer at all is waited for until its lease ends (then the same);
//! past the lease, the client gets a 503 with a sentence. A forwarded call carries
//! [`FORWARDED_BY`] and is never forwarded again, so two nodes that disagree cannot bounce
//! a call between them. The same goes for a programmatic run's continuation and an MCP
//! session over HTTP, which live in the memory of the node that started them.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::session::Tenant;
use crate::store::Placement;

/// Set on a forwarded call: the id of the node that forwarded it.
pub const FORWARDED_BY: HeaderName = HeaderName::from_static("x-code-interpreter-forwarded-by");

/// How often a node that does not answer is asked again, its lease looked at in between.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// This node's name among the nodes and how it reaches the others.
pub struct Forwarder {
    node_id: String,
    /// The other nodes' leases last this long; a silent node is waited for this much more.
    lease: Duration,
    client: reqwest::Client,
}

impl Forwarder {
    pub fn new(node_id: String, lease: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            // Answers stream for as long as a run takes: no overall timeout. No connection
            // is pooled: one to a node that died would fail a call that never reached it.
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Forwarder {
            node_id,
            lease,
            client,
        })
    }
}

/// Why sending to a node failed.
enum SendError {
    /// Nothing listens at its address: it is gone.
    Refused,
    /// No connection within the connect timeout: it may be gone, or cut off.
    Silent,
    /// The connection broke after the call was sent: it may have run.
    Broken(String),
}

/// The answer of the node that holds `session_id`'s kernel, when that is another live
/// node; `None` when the call is this node's to run (one node, a forwarded call, a session
/// this node holds, nobody holds, or whose node is gone).
pub async fn to_owner(
    state: &AppState,
    session_id: &str,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> ApiResult<Option<Response>> {
    let sent = to_holder(
        state,
        "this session's Python kernel",
        || state.store.placement(session_id),
        method,
        uri,
        headers,
        body,
    )
    .await?;
    Ok(match sent {
        Sent::Here => None,
        Sent::Gone => {
            state
                .exec
                .python()
                .mark_lost(session_id, "the server node that held it stopped");
            None
        }
        Sent::Answer(response) => Some(response),
    })
}

/// What a call for something another node may hold came to.
pub enum Sent {
    /// It is this node's to answer (one node, a forwarded call, held here or nowhere).
    Here,
    /// The node that held it is gone (its lease ended, or it refuses connections).
    Gone,
    /// The holder's answer, streamed as it comes.
    Answer(Response),
}

/// Send the call to the live node that `placement` names; `what` is what that node holds,
/// for the sentences of a 503 (it does not answer) and a 502 (it broke off).
pub async fn to_holder<F, Fut>(
    state: &AppState,
    what: &str,
    placement: F,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> ApiResult<Sent>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Placement, crate::store::StoreError>>,
{
    let Some(forwarder) = state.forwarder.as_deref() else {
        return Ok(Sent::Here);
    };
    if headers.contains_key(&FORWARDED_BY) {
        return Ok(Sent::Here);
    }
    let deadline = Instant::now() + forwarder.lease + Duration::from_secs(2);
    loop {
        let (node, url) = match placement().await? {
            Placement::Here => return Ok(Sent::Here),
            Placement::Orphaned => return Ok(Sent::Gone),
            Placement::Node { id, url } => (id, url),
        };
        match send(forwarder, &url, method.clone(), uri, headers, body.clone()).await {
            Ok(response) => return Ok(Sent::Answer(response)),
            Err(SendError::Refused) => {
                tracing::info!(%node, "the node holding {what} refused the connection");
                return Ok(Sent::Gone);
            }
            Err(SendError::Silent) if Instant::now() < deadline => {
                tokio::time::sleep(RETRY_EVERY).await;
            }
            Err(SendError::Silent) => {
                let mut err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "node_unavailable",
                    format!(
                        "The server node that holds {what} does not answer; try again in a few seconds."
                    ),
                );
                err.retry_after = Some(forwarder.lease.as_secs().max(1));
                return Err(err);
            }
            Err(SendError::Broken(reason)) => {
                tracing::warn!(%node, %reason, "a forwarded call broke off");
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "node_failed",
                    format!(
                        "The server node that holds {what} stopped answering during the call; the call may have run. Look at the session's files before sending it again."
                    ),
                ));
            }
        }
    }
}

/// `Mcp-Session-Id`: the MCP session (streamable HTTP) a request belongs to.
const MCP_SESSION: HeaderName = HeaderName::from_static("mcp-session-id");

/// What the MCP middleware needs: the server's state and which sessions this node opened.
#[derive(Clone)]
pub struct McpSessions {
    pub state: AppState,
    pub owners: crate::mcp::SessionOwners,
}

/// Several nodes: an MCP request whose `Mcp-Session-Id` another live node opened goes to
/// that node, its answer (an SSE stream too) streamed back; a session this node opens or
/// uses is recorded as this node's for as long as an idle session lasts. A session whose
/// node is gone is answered here, as an unknown one (the client opens a new session).
pub async fn mcp_sessions(
    State(sessions): State<McpSessions>,
    request: Request,
    next: Next,
) -> Response {
    let state = &sessions.state;
    let tenant = request.extensions().get::<Tenant>().cloned();
    let (Some(_), Some(tenant)) = (state.forwarder.as_deref(), tenant) else {
        return next.run(request).await;
    };
    let session = request
        .headers()
        .get(&MCP_SESSION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(id) = session.as_deref()
        && !sessions.owners.knows(id)
    {
        let key = format!("mcp:{id}");
        let (parts, body) = request.into_parts();
        let limit = (state.settings.max_code_bytes as usize).saturating_mul(2) + 1024 * 1024;
        let Ok(body) = axum::body::to_bytes(body, limit).await else {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "The MCP request body is too large or could not be read.",
            )
            .into_response();
        };
        let placement = || async {
            let placed = state.store.program_placement(&tenant, &key).await?;
            Ok(placed.unwrap_or(Placement::Here))
        };
        let sent = to_holder(
            state,
            "this MCP session",
            placement,
            parts.method.clone(),
            &parts.uri,
            &parts.headers,
            body.clone(),
        )
        .await;
        return match sent {
            Ok(Sent::Answer(answer)) => answer,
            Ok(Sent::Here | Sent::Gone) => {
                next.run(Request::from_parts(parts, Body::from(body))).await
            }
            Err(err) => err.into_response(),
        };
    }
    let response = next.run(request).await;
    let opened = response
        .headers()
        .get(&MCP_SESSION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(id) = opened.or(session)
        && response.status().is_success()
    {
        let keep = Duration::from_secs(state.settings.session_ttl_seconds.max(1));
        if let Err(err) = state
            .store
            .hold_program(&tenant, &format!("mcp:{id}"), keep)
            .await
        {
            tracing::warn!(error = %err, "which node holds an MCP session could not be recorded");
        }
    }
    response
}

/// Headers that belong to one connection, not to the call.
fn hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::TE,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
    ]
    .contains(name)
}

async fn send(
    forwarder: &Forwarder,
    base: &str,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, SendError> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        if !hop_by_hop(name) {
            out.append(name.clone(), value.clone());
        }
    }
    if let Ok(id) = HeaderValue::from_str(&forwarder.node_id) {
        out.insert(FORWARDED_BY, id);
    }
    let answer = forwarder
        .client
        .request(method, url)
        .headers(out)
        .body(body)
        .send()
        .await
        .map_err(|err| classify(&err))?;
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) {
            response = response.header(name, value);
        }
    }
    let stream = answer.bytes_stream().map_err(std::io::Error::other);
    response
        .body(Body::from_stream(stream))
        .map_err(|e| SendError::Broken(e.to_string()))
}

fn classify(err: &reqwest::Error) -> SendError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return SendError::Refused,
                std::io::ErrorKind::TimedOut if err.is_connect() => return SendError::Silent,
                _ => {}
            }
        }
        source = e.source();
    }
    if err.is_connect() || (err.is_timeout() && !err.is_body()) {
        SendError::Silent
    } else {
        SendError::Broken(err.to_string())
    }
}
