//! Entry point: parse settings, set up logging, then serve or run a one-off command.

mod api;
mod config;
mod doctor;
mod exec;
mod healthcheck;
mod identity;
mod mcp;
mod notebook;
mod rate_limit;
mod readiness;
mod runtime;
mod sandbox;
mod session;
mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::serve::ListenerExt;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use config::{Command, LogFormat, Settings};

/// Latency buckets (seconds) for the request histogram: from a cached file to a long run.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

fn init_logging(settings: &Settings) -> anyhow::Result<()> {
    // rmcp logs every MCP session and notification at info: quiet unless asked for by name.
    let directives = if settings.log_level.contains('=') {
        settings.log_level.clone()
    } else {
        format!("{},rmcp=warn", settings.log_level)
    };
    let filter = EnvFilter::try_new(&directives).with_context(|| {
        format!(
            "LOG_LEVEL '{}' is not a valid level or filter",
            settings.log_level
        )
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

fn main() {
    if let Some(args) = config::launcher_args() {
        sandbox::serve_request(&args);
    }
    let cli = config::parse();
    let outcome = match cli.command.unwrap_or(Command::Serve) {
        Command::Doctor => std::process::exit(doctor::run(&cli.settings)),
        Command::Serve => serve(cli.settings),
        Command::Mcp => mcp_stdio(cli.settings),
        Command::Openapi => {
            print!(
                "{}",
                api::openapi_json(cli.settings.public_base_url.as_deref())
            );
            Ok(())
        }
        Command::Healthcheck => std::process::exit(healthcheck::run(&cli.settings)),
        Command::Languages { json } => {
            print!("{}", doctor::list_languages(json));
            Ok(())
        }
    };
    let code = match outcome {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("error: {err:#}");
            1
        }
    };
    std::process::exit(code);
}

/// What `serve` and `mcp` both run on: the store and the execution service, with the
/// background tasks that keep them (warm-up, kernel reaping, session expiry).
struct Core {
    settings: Arc<Settings>,
    store: Arc<dyn store::Store>,
    exec: Arc<exec::ExecService>,
    sandbox: Arc<sandbox::Sandbox>,
    readiness: Arc<readiness::Readiness>,
}

#[tokio::main]
async fn serve(settings: Settings) -> anyhow::Result<()> {
    init_logging(&settings)?;
    let settings = Arc::new(settings);

    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("http_request_duration_seconds".into()),
            LATENCY_BUCKETS,
        )
        .context("bad latency buckets")?
        .install_recorder()
        .context("could not install the metrics recorder")?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });

    // Bad JWT settings stop start-up before anything is started.
    let jwt = identity::jwt::JwtVerifier::from_settings(&settings)?;
    let auth = identity::Authenticator::new(&settings.all_api_keys(), jwt);
    if auth.is_open() {
        tracing::warn!(
            "no API key set (CODE_INTERPRETER_API_KEY) and no JWT key (CODEAPI_JWT_PUBLIC_KEY): every route is open to anyone who can reach this port"
        );
    }
    if auth.accepts_jwt() {
        tracing::info!("accepting JWTs signed by LibreChat (CODEAPI_JWT_*) besides API keys");
    }

    let Core {
        settings,
        store,
        exec,
        sandbox,
        readiness,
    } = start_core(settings).await?;
    let state = api::AppState {
        settings: Arc::clone(&settings),
        store,
        exec,
        sandbox: sandbox.isolation(),
        readiness,
        auth: Arc::new(auth),
        exec_rate: Arc::new(rate_limit::ExecRateLimit::per_minute(
            settings.rate_limit_exec_per_minute,
        )),
        started: Instant::now(),
        metrics,
        shutdown: CancellationToken::new(),
        forwarder: None,
    };

    let addr = std::net::SocketAddr::new(settings.host, settings.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (HOST/PORT)"))?;
    // A streamed response (SSE: MCP, /exec/stream) ends with a small write after its last
    // event; with Nagle's algorithm that write waits for the client's delayed ACK (~40 ms).
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
    });
    tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), "listening");
    // Several nodes: this one joins the session directory once it listens.
    let mut state = state;
    let store = Arc::clone(&state.store);
    let lease = Duration::from_secs(settings.node_lease_seconds);
    match (store.node_id(), settings.node_url.as_deref()) {
        (Some(id), Some(url)) => {
            state.forwarder = Some(Arc::new(
                api::Forwarder::new(id.to_owned(), lease)
                    .context("the client for other nodes cannot be made")?,
            ));
            spawn_node_lease(Arc::clone(&store), url.to_owned(), lease);
            tracing::info!(node = %id, %url, "in the session directory");
        }
        (Some(_), None) => tracing::warn!(
            "STORE=shared without NODE_URL: this node never forwards a call, and a session's Python state stays only while its calls keep coming here"
        ),
        (None, Some(_)) => tracing::warn!("NODE_URL is set but STORE is not shared: it is ignored"),
        (None, None) => {}
    }
    let streams = state.shutdown.clone();
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            streams.cancel();
        })
        .await
        .context("the HTTP server failed")?;
    store.release_node().await;
    tracing::info!("stopped");
    Ok(())
}

/// `code-interpreter mcp`: the same service as `serve`, spoken as MCP on stdin/stdout to one
/// client. Calls run as the local tenant, or as the first API key's tenant when keys are set,
/// so stdio and HTTP clients with that key share sessions.
#[tokio::main]
async fn mcp_stdio(settings: Settings) -> anyhow::Result<()> {
    init_logging(&settings)?;
    let Core {
        settings,
        store,
        exec,
        ..
    } = start_core(Arc::new(settings)).await?;
    // The first API key's tenant (or the local one), so stdio and HTTP clients with that
    // key share sessions.
    let keys = settings.all_api_keys();
    let credentials = keys
        .first()
        .map(|key| identity::Credentials::key(key))
        .unwrap_or_default();
    let tenant = identity::Authenticator::new(&keys, None)
        .identify(&credentials)
        .context("the first API key does not identify a tenant")?
        .tenant;
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "serving MCP on stdio");
    mcp::serve_stdio(
        mcp::Backend {
            settings,
            store,
            exec,
        },
        tenant,
        stop,
    )
    .await
}

/// Open the store and start the runtimes under `DATA_DIR`, with their background tasks.
async fn start_core(settings: Arc<Settings>) -> anyhow::Result<Core> {
    sandbox::raise_open_files_limit();
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("DATA_DIR {} cannot be created", settings.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&settings.data_dir).with_context(|| {
        format!(
            "DATA_DIR {} cannot be resolved",
            settings.data_dir.display()
        )
    })?;
    let sandbox = sandbox::Sandbox::new(sandbox::SandboxOptions {
        mode: settings.sandbox,
        network: settings.sandbox_network == config::NetworkPolicy::Allow,
        tmp_bytes: settings.sandbox_tmp_mb * 1024 * 1024,
        state_dir: data_dir.join("sandbox"),
        max_cpus: settings.max_cpus(),
        uid_base: settings.sandbox_uid_base,
        uid_count: settings.sandbox_uid_count,
        launchers: settings.sandbox_launchers as usize,
    })
    .context("the sandbox cannot be set up (SANDBOX)")?;
    sandbox
        .check_reachable(&data_dir)
        .map_err(|e| anyhow::anyhow!("DATA_DIR: {e}"))?;
    let sandbox = Arc::new(sandbox);
    let store = store::LocalStore::open(
        &data_dir,
        settings.session_disk_quota_bytes(),
        sandbox.uids().cloned(),
    )
    .with_context(|| {
        format!(
            "the store in DATA_DIR {} cannot be opened",
            settings.data_dir.display()
        )
    })?
    .with_body_idle_timeout(Duration::from_secs(settings.upload_idle_seconds));
    let store: Arc<dyn store::Store> = match settings.store {
        config::StoreKind::Local => Arc::new(store),
        config::StoreKind::Shared => {
            let shared = settings.shared_store().map_err(anyhow::Error::msg)?;
            let quota = settings.session_disk_quota_bytes();
            Arc::new(
                store::SharedStore::open(&shared, store, quota)
                    .await
                    .context("STORE=shared cannot start")?,
            )
        }
    };
    let process = runtime::process::ProcessRuntime::new(
        Arc::clone(&sandbox),
        settings.runtime_dir.clone(),
        &data_dir,
        runtime::languages::SourceOptions {
            bash_strict: settings.bash_strict_mode,
        },
        settings.build_cache_limits(),
    )
    .context("the runtime cache under DATA_DIR cannot be set up")?;
    let process = Arc::new(process);
    let turns = Arc::new(session::SessionTurns::default());
    let python = runtime::python::PythonRuntime::new(
        Arc::clone(&sandbox),
        Arc::clone(&process),
        &data_dir,
        runtime::python::PythonSettings {
            pool_size: settings.kernel_pool_size,
            max_kernels: settings.max_sessions as usize,
            idle_shutdown: Duration::from_secs(settings.kernel_idle_seconds),
            preload: settings.preload_modules(),
            limits: sandbox::Limits {
                memory_bytes: settings.kernel_memory_bytes(),
                processes: (settings.max_processes > 0).then_some(settings.max_processes),
                cpu_seconds: None,
                file_size_bytes: settings.session_disk_quota_bytes(),
            },
            queue_wait: Duration::from_secs(settings.queue_wait_seconds),
            max_output_bytes: settings.max_output_bytes,
            max_message_bytes: settings.kernel_max_message_bytes,
            fork: settings.python_kernel_fork,
        },
        Arc::clone(&turns),
    )
    .context("the Python kernel directories cannot be set up")?;
    python.spawn_idle_reaper();
    python.refill();
    let exec = Arc::new(exec::ExecService::new(
        Arc::clone(&store),
        process,
        python,
        Arc::clone(&settings),
        turns,
    ));
    // Prove that a sandbox starts, then ask every runtime for its version, so /health lists
    // them and first runs are quick. Until both are done the server is not ready.
    let readiness = Arc::new(readiness::Readiness::new(Arc::clone(&sandbox)));
    let warm = Arc::clone(&exec);
    let ready = Arc::clone(&readiness);
    tokio::spawn(async move {
        ready.check_sandbox().await;
        warm.runtimes().warm_up().await;
        ready.mark_runtimes_probed();
    });
    exec.spawn_expiry(Duration::from_secs(settings.session_ttl_seconds));
    Ok(Core {
        settings,
        store,
        exec,
        sandbox,
        readiness,
    })
}

/// Keep this node's lease in the session directory, renewed a third of the way through.
fn spawn_node_lease(store: Arc<dyn store::Store>, url: String, lease: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            match store.renew_node(&url, lease).await {
                Ok(()) if failing => {
                    tracing::info!("this node's lease is renewed again");
                    failing = false;
                }
                Ok(()) => {}
                Err(err) if !failing => {
                    tracing::warn!(error = %err, "this node's lease cannot be renewed; other nodes take its sessions when it ends");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    });
}

/// Resolve on SIGTERM or SIGINT, so in-flight requests can finish.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
