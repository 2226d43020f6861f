//! HTTP: routes, wire shapes, auth, errors. The only module (with `mcp`) that knows about
//! HTTP or JSON; everything below it speaks Rust types.
//!
//! Every route is served at the root and again under `/v1`, because LibreChat's base URL
//! ends in `/v1`. That includes the MCP endpoint (`/mcp`), which `mcp` provides as a tower
//! service and which sits behind the same API-key middleware as the REST routes.

mod auth;
mod error;
mod exec;
mod files;
mod forward;
mod limits;
mod notebook;
mod openapi;
mod programmatic;
mod system;
mod web;
mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tracing::Instrument;

use error::ApiError;
pub use forward::Forwarder;
pub use openapi::document as openapi_json;

use crate::config::Settings;
use crate::exec::ExecService;
use crate::sandbox::Isolation;
use crate::store::Store;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Arc<dyn Store>,
    pub exec: Arc<ExecService>,
    pub sandbox: Isolation,
    pub readiness: Arc<crate::readiness::Readiness>,
    pub auth: Arc<crate::identity::Authenticator>,
    /// `RATE_LIMIT_EXEC_PER_MINUTE`, per (tenant, user).
    pub exec_rate: Arc<crate::rate_limit::ExecRateLimit>,
    pub started: Instant,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Cancelled when the server stops, to end long-lived streams (MCP's SSE) that would
    /// otherwise hold a graceful shutdown open.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Several nodes: how calls reach the node that holds a session's kernel.
    pub forwarder: Option<Arc<Forwarder>>,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const PROFILE: HeaderName = HeaderName::from_static("x-codeapi-execution-profile");
const EXPECTED_PROFILE: HeaderName = HeaderName::from_static("x-codeapi-expected-profile");

/// Routes that need credentials (when keys or JWT keys are configured).
fn protected_routes(state: &AppState) -> Router<AppState> {
    let uploads = Router::new()
        .route("/upload", post(files::upload))
        .route("/upload/batch", post(files::upload_batch))
        // Upload size is enforced per file while streaming, not by buffering the body.
        .layer(DefaultBodyLimit::disable());
    // JSON escaping can double the size of the code; the code itself is checked after parsing.
    let exec_body_limit = (state.settings.max_code_bytes as usize).saturating_mul(2) + 1024 * 1024;
    let exec = Router::new()
        .route("/exec", post(exec::exec))
        .route("/exec/stream", post(exec::exec_stream))
        .layer(DefaultBodyLimit::max(exec_body_limit));
    // A continuation carries tool results as well (each at most 5 MiB).
    let programs = Router::new()
        .route("/exec/programmatic", post(programmatic::programmatic))
        .route("/exec/programmatic/cancel", post(programmatic::cancel))
        .layer(DefaultBodyLimit::max(exec_body_limit + 32 * 1024 * 1024));
    // The MCP service bounds its own request bodies; one service (and one session table)
    // answers at /mcp and /v1/mcp.
    let mcp = crate::mcp::http_service(
        crate::mcp::Backend {
            settings: Arc::clone(&state.settings),
            store: Arc::clone(&state.store),
            exec: Arc::clone(&state.exec),
        },
        state.shutdown.clone(),
    );
    // Each MCP session answers only the tenant that opened it (kept as long as rmcp keeps
    // an idle session, twice over).
    let owners = crate::mcp::SessionOwners::new(Duration::from_secs(
        state.settings.session_ttl_seconds.saturating_mul(2),
    ));
    let mcp = ServiceBuilder::new()
        .layer(middleware::from_fn_with_state(
            forward::McpSessions {
                state: state.clone(),
                owners: owners.clone(),
            },
            forward::mcp_sessions,
        ))
        .layer(middleware::from_fn_with_state(
            owners,
            crate::mcp::bind_sessions,
        ))
        .service(mcp);
    Router::new()
        .merge(uploads)
        .merge(exec)
        .merge(programs)
        .route_service("/mcp", mcp)
        .route("/files/{session_id}", get(files::list_files))
        .route("/files/{session_id}/{file_id}", delete(files::delete_file))
        .route("/download/{session_id}/{file_id}", get(files::download))
        .route("/sessions/{session_id}", delete(files::delete_session))
        .route("/sessions/{session_id}/interrupt", post(exec::interrupt))
        .route("/sessions/{session_id}/restart", post(exec::restart))
        .route("/sessions/{session_id}/notebook", get(notebook::notebook))
        .route(
            "/sessions/{session_id}/objects/{file_id}",
            get(files::object_info).delete(files::delete_file),
        )
        .route("/metrics", get(system::metrics))
        .route("/libraries", get(system::libraries))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_identity,
        ))
}

fn public_routes() -> Router<AppState> {
    Router::new()
        .merge(web::routes())
        .route("/health", get(system::health))
        .route("/openapi.json", get(openapi::spec))
}

pub fn router(state: AppState) -> Router {
    let api = protected_routes(&state).merge(public_routes());
    Router::new()
        .merge(api.clone())
        .nest("/v1", api)
        .merge(openapi::docs())
        .fallback(system::not_found)
        .method_not_allowed_fallback(system::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::body_idle_timeout,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            execution_profile,
        ))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(cors(&state.settings)),
        )
        .with_state(state)
}

fn cors(settings: &Settings) -> CorsLayer {
    let origins = settings.cors_allow_origins.trim();
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers(Any)
        .expose_headers(Any)
        .max_age(Duration::from_secs(600));
    if origins == "*" {
        layer.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> = origins
            .split(',')
            .filter_map(|o| HeaderValue::from_str(o.trim()).ok())
            .collect();
        layer.allow_origin(AllowOrigin::list(list))
    }
}

/// Tag every response with this deployment's execution profile, and refuse requests that
/// expected the other one (LibreChat routes stateful work by it).
async fn execution_profile(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let ours = state.settings.execution_profile.as_str();
    // Exactly as LibreChat's official Code API: case-sensitive, and a repeated header
    // reads as its values joined by commas (so it is never a valid profile).
    let values = request.headers().get_all(EXPECTED_PROFILE);
    let expected = (values.iter().count() > 0).then(|| {
        values
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(",")
    });
    let refusal = |status, code, detail: String, message: String, expected: &str| {
        ApiError::new(status, code, detail)
            .with_field("message", message)
            .with_field("expected_profile", expected)
            .with_field("actual_profile", ours)
            .into_response()
    };
    let mut response = match expected.as_deref() {
        None => next.run(request).await,
        Some(e) if e == ours => next.run(request).await,
        Some(e @ ("default" | "stateful")) => refusal(
            StatusCode::CONFLICT,
            "execution_profile_mismatch",
            format!(
                "Expected the {e} execution profile, but reached {ours}: this server runs the {ours} profile (EXECUTION_PROFILE); send {e} requests to a server that runs it."
            ),
            format!("Expected the {e} execution profile, but reached {ours}"),
            e,
        ),
        Some(e) => refusal(
            StatusCode::BAD_REQUEST,
            "invalid_execution_profile",
            format!(
                "Invalid execution profile: {e}; X-CodeAPI-Expected-Profile must be 'default' or 'stateful'."
            ),
            format!("Invalid execution profile: {e}"),
            e,
        ),
    };
    response
        .headers_mut()
        .insert(PROFILE, HeaderValue::from_static(ours));
    response
}

/// Count and time every request; log it when `LOG_REQUESTS` is on. Runs inside a span
/// that carries the request id, so every log line of the request has it.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| {
            p.as_str()
                .strip_prefix("/v1")
                .unwrap_or(p.as_str())
                .to_owned()
        })
        .map(|p| if p.is_empty() { "/".to_owned() } else { p })
        .unwrap_or_else(|| "unmatched".to_owned());
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let credential = state.settings.log_requests.then(|| {
        let h = request.headers();
        h.get("x-api-key")
            .or_else(|| h.get(axum::http::header::AUTHORIZATION))
            .and_then(|v| v.to_str().ok())
            .map(auth::mask)
            .unwrap_or_else(|| "none".to_owned())
    });
    let path = request.uri().path().to_owned();
    let span = tracing::info_span!("request", id = %request_id);
    let response = next.run(request).instrument(span.clone()).await;

    let status = response.status().as_u16().to_string();
    let elapsed = started.elapsed();
    metrics::counter!("http_requests_total", "route" => route.clone(), "method" => method.to_string(), "status" => status.clone())
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "route" => route)
        .record(elapsed.as_secs_f64());
    if let Some(credential) = credential {
        span.in_scope(|| {
            tracing::info!(
                method = %method,
                path = %path,
                status = %status,
                ms = elapsed.as_secs_f64() * 1000.0,
                key = %credential,
                "request"
            )
        });
    }
    response
}
