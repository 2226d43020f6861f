//! Health, metrics, the root document and the answers for routes that do not exist (yet).

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
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
    pub limits: SandboxLimits,
}

/// The limits every run is held to (`null`: off).
#[derive(Debug, Serialize, ToSchema)]
pub struct SandboxLimits {
    /// Memory of a Python kernel's sandbox, MiB.
    pub memory_mb: Option<u64>,
    /// Memory of a one-shot run's sandbox, MiB.
    pub one_shot_memory_mb: Option<u64>,
    pub processes: Option<u64>,
    /// Wall-clock seconds per run.
    pub timeout_seconds: u64,
    pub disk_quota_mb: Option<u64>,
    pub tmp_mb: u64,
    /// Output kept per stream, bytes.
    pub max_output_bytes: u64,
    pub max_upload_bytes: u64,
}

impl SandboxLimits {
    fn of(s: &crate::config::Settings) -> Self {
        let mib = |b: Option<u64>| b.map(|b| b / (1024 * 1024));
        SandboxLimits {
            memory_mb: mib(s.kernel_memory_bytes()),
            one_shot_memory_mb: mib(s.one_shot_memory_bytes()),
            processes: (s.max_processes > 0).then_some(s.max_processes),
            timeout_seconds: s.execution_timeout,
            disk_quota_mb: mib(s.session_disk_quota_bytes()),
            tmp_mb: s.sandbox_tmp_mb,
            max_output_bytes: s.max_output_bytes,
            max_upload_bytes: s.max_upload_bytes,
        }
    }
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
    /// How many kernels the pool is kept at (`KERNEL_POOL_SIZE`, or its default: 8 when
    /// kernels are forked from the template, else 2).
    pub pool_size: usize,
    /// The template kernels are forked from: `off` (kernels start cold), `starting`,
    /// `ready` or `failed` (kernels start cold until a fork works again).
    #[schema(example = "ready")]
    pub template: String,
    /// How often the template died and was started again.
    pub template_restarts: u64,
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
    let runtime_states = Language::all()
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
            limits: SandboxLimits::of(&state.settings),
        },
        runtimes: versions,
        kernels: KernelCounts {
            live: state.exec.python().live_kernels(),
            pooled: state.exec.python().pooled_kernels(),
            pool_size: state.exec.python().pool_size(),
            template: state.exec.python().template_state().0.as_str().into(),
            template_restarts: state.exec.python().template_state().1,
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
    /// `true` to ask the runtimes again instead of using the cached lists (at most once a
    /// minute: a refresh sooner answers from the cache).
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
        // Rate-bounded: a refresh within a minute of the last one answers from the cache.
        runtimes.forget_libraries().await;
    }
    let languages = match query.runtime.as_deref().filter(|r| !r.is_empty()) {
        Some(name) => vec![Language::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Unknown runtime '{name}'; supported: {}.",
                crate::runtime::supported()
            ))
        })?],
        None => Language::all().collect(),
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
    /// Every route, by operation id: `"METHOD /path"` (also served under `/v1`).
    pub endpoints: std::collections::BTreeMap<String, String>,
    /// Whether the protected routes need an API key.
    pub auth_required: bool,
}

/// Routes outside the OpenAPI document (which lists every REST route).
const OTHER_ENDPOINTS: &[(&str, &str)] = &[
    ("mcp", "POST /mcp"),
    ("docs", "GET /docs"),
    ("playground", "GET / (Accept: text/html)"),
];

fn root_info(state: &AppState) -> RootInfo {
    let mut endpoints = super::openapi::operations();
    endpoints.extend(
        OTHER_ENDPOINTS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    RootInfo {
        name: "code-interpreter".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        features: [
            "files",
            "sessions",
            "librechat-code-api",
            "streaming",
            "notebooks",
            "mcp",
            "playground",
            "openapi",
            "metrics",
        ]
        .map(String::from)
        .to_vec(),
        endpoints,
        auth_required: !state.auth.is_open(),
    }
}

/// The playground for browsers (`Accept: text/html`); otherwise the server's name, version
/// and routes as JSON.
#[utoipa::path(
    get, path = "/", tag = "system",
    responses((status = 200, body = RootInfo, description = "JSON, or the playground's HTML page for `Accept: text/html`"))
)]
pub async fn root(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if wants_html {
        super::web::index(&headers)
    } else {
        Json(root_info(&state)).into_response()
    }
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
