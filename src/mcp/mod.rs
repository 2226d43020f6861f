//! MCP: the Model Context Protocol server, through the official Rust SDK (`rmcp`). A thin
//! adapter: every tool is a call on the [`ExecService`] or the [`Store`], with MCP's shapes
//! around it. It owns the tools and resources (`server`), their JSON shapes (`wire`), the
//! `session://` names of files (`uri`), how a streaming run becomes notifications (`run`)
//! and content (`render`), which failures are protocol errors (`error`), and the two
//! transports: streamable HTTP, which `api` mounts at `/mcp` behind its API-key middleware,
//! and stdio for `code-interpreter mcp`. `owners` binds each HTTP session to the tenant
//! that opened it.

mod error;
mod owners;
mod render;
mod run;
mod server;
mod uri;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpServerConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use tokio_util::sync::CancellationToken;

pub use owners::{SessionOwners, bind_sessions};
pub use rmcp::transport::StreamableHttpService;
pub use server::McpServer;

use crate::config::Settings;
use crate::exec::ExecService;
use crate::session::Tenant;
use crate::store::Store;

/// Largest file `read_file` and `resources/read` return, and largest image `execute_code`
/// shows inline: a model's context is the limit, not the server's.
const MAX_INLINE_BYTES: usize = 1024 * 1024;
/// Images shown inline by one run, in bytes; the rest are only linked.
const MAX_INLINE_IMAGE_TOTAL: usize = 4 * 1024 * 1024;
/// Comments on an idle SSE stream keep proxies from closing it (the same as `/exec/stream`).
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Smallest limit on one JSON-RPC message: room for a base64 upload of a few MiB. Larger
/// files go through `POST /upload`.
const MIN_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// What the tools work with.
#[derive(Clone)]
pub struct Backend {
    pub settings: Arc<Settings>,
    pub store: Arc<dyn Store>,
    pub exec: Arc<ExecService>,
}

/// The MCP endpoint for axum: streamable HTTP with `Mcp-Session-Id` sessions (one
/// [`McpServer`] per session), stateless requests for clients of the 2026-07-28 revision,
/// and SSE responses so a long run streams. `shutdown` ends open streams when the server
/// stops, so a graceful shutdown does not wait on them.
pub fn http_service(
    backend: Backend,
    shutdown: CancellationToken,
) -> StreamableHttpService<McpServer, LocalSessionManager> {
    let settings = Arc::clone(&backend.settings);
    let mut sessions = LocalSessionManager::default();
    // An MCP session is tiny; keep it as long as the code session it leads to can live.
    sessions.session_config.keep_alive = Some(Duration::from_secs(settings.session_ttl_seconds));
    // JSON escaping can double the size of the code.
    let max_request = (settings.max_code_bytes as usize)
        .saturating_mul(2)
        .max(MIN_REQUEST_BYTES);
    let config = StreamableHttpServerConfig::default()
        .with_sse_keep_alive(Some(SSE_KEEP_ALIVE))
        .with_max_request_body_bytes(max_request)
        .with_cancellation_token(shutdown);
    let config = match settings.mcp_hosts() {
        Some(hosts) => config.with_allowed_hosts(hosts),
        None => config.disable_allowed_hosts(),
    };
    StreamableHttpService::new(
        move || Ok(McpServer::new(backend.clone(), None)),
        Arc::new(sessions),
        config,
    )
}

/// Serve one MCP client on stdin/stdout until it closes the stream or `stop` is cancelled.
/// Every call runs as `tenant`. Nothing else may write to stdout.
pub async fn serve_stdio(
    backend: Backend,
    tenant: Tenant,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let server = McpServer::new(backend, Some(tenant));
    let running = server
        .serve_with_ct(rmcp::transport::stdio_pipes(), stop)
        .await
        .map_err(|e| anyhow::anyhow!("the MCP handshake on stdin/stdout failed: {e}"))?;
    let reason = running
        .waiting()
        .await
        .context("the MCP stdio service failed")?;
    tracing::info!(?reason, "MCP client disconnected");
    Ok(())
}
