//! Health, metrics, the root document and the answers for routes that do not exist (yet).

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use crate::config::parse_bool;
use crate::readiness::SandboxState;
use crate::runtime::Language;

#[derive(Debug, Serialize, ToSchema)]
pub struct SandboxInfo {
    /// `bwrap`, or `none` (no isolation: development only).
    pub mode: String,
    pub network: bool,
    /// Memory and process limits through cgroups (else rlimits only).
    pub cgroups: bool,
    pub seccomp: bool,
    /// The host uid user code runs as, when the server drops privileges.
    pub unprivileged_uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `healthy` while the server answers (liveness); whether it can run code is `ready`.
    pub status: String,
    pub version: String,
    pub uptime_seconds: u64,
    /// Sessions currently stored (not yet expired).
    pub active_sessions: u64,
    pub sandbox: SandboxInfo,
    /// Available languages and their versions.
    pub runtimes: std::collections::BTreeMap<String, String>,
    pub kernels: KernelCounts,
    /// True once a real sandbox launch has succeeded and every runtime has been probed.
    /// `GET /health?ready=1` answers 503 until then.
    pub ready: bool,
    pub readiness: ReadinessInfo,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadinessInfo {
    /// `pending` (not tried yet), `ready` (a sandboxed `true` ran) or `failed` (no code
    /// can run; the server log and `code-interpreter doctor` say why; retried when asked).
    #[schema(example = "ready")]
    pub sandbox: String,
    /// Every language: `available`, `unavailable` (not installed) or `pending` (not probed yet).
    pub runtimes: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KernelCounts {
    /// Python kernels attached to sessions.
    pub live: usize,
    /// Kernels started ahead, waiting for a new session.
    pub pooled: usize,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct HealthQuery {
    /// `1` (or `true`): a readiness probe; answer 503 (with the same body) until the server
    /// can run code.
    ready: Option<String>,
}

/// Liveness (200 while the server answers) and, with `?ready=1`, readiness (503 until a
/// sandbox has started and every runtime has been probed); no key needed.
#[utoipa::path(
    get, path = "/health", tag = "system",
    params(HealthQuery),
    responses(
        (status = 200, body = Health),
        (status = 503, description = "`?ready=1` and the server cannot run code yet (body: Health), or the store is unreachable (body: ErrorBody)", body = Health),
    )
)]
pub async fn health(
    State(state): State<AppState>,
    Query(query): Query<HealthQuery>,
) -> ApiResult<Response> {
    let probe = query
        .ready
        .as_deref()
        .is_some_and(|r| parse_bool(r).unwrap_or(true));
    let readiness = &state.readiness;
    if probe && readiness.sandbox_state() != SandboxState::Ready {
        // Pending: the start-up check is still running; failed: try again (rate-limited).
        readiness.check_sandbox().await;
    }
    let stats = state.store.stats().await.map_err(|err| {
        tracing::error!(error = %err, "health check could not read the store");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "The metadata store is unavailable; check the server's disk and logs.",
        )
    })?;
    let iso = &state.sandbox;
    let warning = match (iso.mode, iso.cgroups) {
        ("none", _) => Some("SANDBOX=none: user code runs without any isolation.".to_owned()),
        (_, false) => {
            Some("No cgroups: memory and process limits fall back to rlimits.".to_owned())
        }
        _ => None,
    };
    let versions: std::collections::BTreeMap<String, String> = state
        .exec
        .runtimes()
        .known_versions()
        .into_iter()
        .map(|(l, v)| (l.name().to_owned(), v))
        .collect();
    let probed = readiness.runtimes_probed();
    let runtime_states = Language::ALL
        .iter()
        .map(|l| {
            let state = match (versions.contains_key(l.name()), probed) {
                (true, _) => "available",
                (false, true) => "unavailable",
                (false, false) => "pending",
            };
            (l.name().to_owned(), state.to_owned())
        })
        .collect();
    let ready = readiness.is_ready();
    let body = Health {
        status: "healthy".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_seconds: state.started.elapsed().as_secs(),
        active_sessions: stats.sessions,
        sandbox: SandboxInfo {
            mode: iso.mode.into(),
            network: iso.network,
            cgroups: iso.cgroups,
            seccomp: iso.seccomp,
            unprivileged_uid: iso.unprivileged_uid,
            warning,
        },
        runtimes: versions,
        kernels: KernelCounts {
            live: state.exec.python().live_kernels(),
            pooled: state.exec.python().pooled_kernels(),
        },
        ready,
        readiness: ReadinessInfo {
            sandbox: match readiness.sandbox_state() {
                SandboxState::Pending => "pending",
                SandboxState::Ready => "ready",
                SandboxState::Failed => "failed",
            }
            .into(),
            runtimes: runtime_states,
        },
    };
    let status = if probe && !ready {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)).into_response())
}

/// Prometheus text format: requests by route and status, latency histogram, sessions,
/// files and bytes stored.
#[utoipa::path(
    get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus exposition format", content_type = "text/plain")),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let stats = state.store.stats().await?;
    metrics::gauge!("code_interpreter_sessions").set(stats.sessions as f64);
    metrics::gauge!("code_interpreter_files").set(stats.files as f64);
    metrics::gauge!("code_interpreter_stored_bytes").set(stats.bytes as f64);
    metrics::gauge!("code_interpreter_uptime_seconds").set(state.started.elapsed().as_secs_f64());
    metrics::gauge!("code_interpreter_kernels_live").set(state.exec.python().live_kernels() as f64);
    metrics::gauge!("code_interpreter_kernels_pooled")
        .set(state.exec.python().pooled_kernels() as f64);
    let body = state.metrics.render();
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct LibrariesQuery {
    /// A language name (`python`, `js`, `go`, …); all languages when absent.
    runtime: Option<String>,
    /// `true` to ask the runtimes again instead of using the cached lists.
    refresh: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Library {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RuntimeLibraries {
    pub runtime: String,
    pub version: String,
    pub libraries: Vec<Library>,
}

/// Installed packages per runtime, read through the sandboxed runtimes themselves.
#[utoipa::path(
    get, path = "/libraries", tag = "system",
    params(LibrariesQuery),
    responses(
        (status = 200, body = Vec<RuntimeLibraries>),
        (status = 400, description = "Unknown runtime", body = ErrorBody),
        (status = 503, description = "The runtime is not installed", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn libraries(
    State(state): State<AppState>,
    Query(query): Query<LibrariesQuery>,
) -> ApiResult<Json<Vec<RuntimeLibraries>>> {
    let runtimes = state.exec.runtimes();
    if query
        .refresh
        .as_deref()
        .is_some_and(|r| parse_bool(r).unwrap_or(false))
    {
        runtimes.forget_libraries();
    }
    let languages = match query.runtime.as_deref().filter(|r| !r.is_empty()) {
        Some(name) => vec![Language::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Unknown runtime '{name}'; supported: {}.",
                crate::runtime::SUPPORTED
            ))
        })?],
        None => Language::ALL.to_vec(),
    };
    let mut out = Vec::with_capacity(languages.len());
    for language in languages {
        let libraries = match runtimes.libraries(language).await {
            Ok(list) => list,
            Err(_) if query.runtime.is_none() => continue,
            Err(e) => return Err(crate::exec::ExecError::from(e).into()),
        };
        out.push(RuntimeLibraries {
            runtime: language.name().into(),
            version: runtimes.version(language).await.unwrap_or_default(),
            libraries: libraries
                .into_iter()
                .map(|(name, version)| Library { name, version })
                .collect(),
        });
    }
    Ok(Json(out))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RootInfo {
    pub name: String,
    pub version: String,
    pub features: Vec<String>,
    pub endpoints: std::collections::BTreeMap<String, String>,
}

fn root_info() -> RootInfo {
    let endpoints = [
        ("exec", "POST /exec"),
        ("libraries", "GET /libraries?runtime="),
        ("upload", "POST /upload"),
        ("upload_batch", "POST /upload/batch"),
        (
            "files",
            "GET /files/{session_id}?detail=simple|summary|full",
        ),
        ("download", "GET /download/{session_id}/{file_id}"),
        ("delete_file", "DELETE /files/{session_id}/{file_id}"),
        ("delete_session", "DELETE /sessions/{session_id}"),
        ("health", "GET /health"),
        ("metrics", "GET /metrics"),
        ("openapi", "GET /openapi.json"),
        ("docs", "GET /docs"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    RootInfo {
        name: "code-interpreter".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        features: [
            "files",
            "sessions",
            "librechat-code-api",
            "openapi",
            "metrics",
        ]
        .map(String::from)
        .to_vec(),
        endpoints,
    }
}

/// The server's name, version and routes (JSON), or a short page for browsers.
#[utoipa::path(
    get, path = "/", tag = "system",
    responses((status = 200, body = RootInfo))
)]
pub async fn root(headers: HeaderMap) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if !wants_html {
        return Json(root_info()).into_response();
    }
    let info = root_info();
    let rows: String = info
        .endpoints
        .values()
        .map(|e| format!("<li><code>{}</code></li>", e.replace('<', "&lt;")))
        .collect();
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>code-interpreter</title></head>\
         <body><h1>code-interpreter {}</h1><p>A sandboxed code interpreter for AI agents. \
         The API is described at <a href=\"/docs\">/docs</a> (<a href=\"/openapi.json\">openapi.json</a>).</p>\
         <ul>{rows}</ul></body></html>",
        info.version
    ))
    .into_response()
}

/// LibreChat 3.x programmatic tool calling is not built yet.
#[utoipa::path(
    post, path = "/exec/programmatic", tag = "exec",
    responses((status = 501, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn programmatic() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "Programmatic tool calling is not available on this server yet; call POST /exec instead.",
    )
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("No such route; the API is described at /docs and /openapi.json.")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "This route does not accept that method; see /docs for the methods it takes.",
    )
}
