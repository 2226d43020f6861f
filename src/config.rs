//! Every setting of the server: a CLI flag and an environment variable with a default,
//! validated once at start-up. Nothing else reads the environment.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A self-hosted, sandboxed code interpreter for AI agents (LibreChat Code API and MCP).
#[derive(Debug, Parser)]
#[command(name = "code-interpreter", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the REST API (the default).
    Serve,
    /// Print what this machine offers (runtimes, sandbox, cgroups); non-zero exit when something required is missing.
    Doctor,
    /// Speak MCP on stdin/stdout (for Claude Desktop and other local clients); logs go to stderr.
    Mcp,
    /// Print the OpenAPI document (`servers` from `PUBLIC_BASE_URL`) on stdout.
    Openapi,
    /// Ask the server on `PORT` whether it is ready (`/health?ready=1`); exit 0 when it is.
    /// The container image's health check.
    Healthcheck,
    /// List the languages this build runs: names, aliases, how each runs, its Debian packages.
    Languages {
        /// One JSON array, for tools.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxMode {
    /// bubblewrap namespaces, cgroup limits and a seccomp filter (the default).
    Bwrap,
    /// No isolation at all: for development on machines without namespaces only.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkPolicy {
    /// User code gets a network namespace with only its own loopback.
    Deny,
    /// User code shares the host's network.
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// SQLite and workspace directories under `DATA_DIR` (one machine).
    Local,
    /// Metadata in Redis, file bytes in an S3 bucket, `DATA_DIR` as this node's cache.
    Shared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExecutionProfile {
    Default,
    Stateful,
}

impl ExecutionProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionProfile::Default => "default",
            ExecutionProfile::Stateful => "stateful",
        }
    }
}

const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1", global = true)]
    pub host: IpAddr,

    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 8000, global = true)]
    pub port: u16,

    /// Directory for the metadata database and every session's workspace (`UPLOADS_DIR` is accepted too).
    #[arg(long, env = "DATA_DIR", default_value = "data", global = true)]
    pub data_dir: PathBuf,

    /// Where `scripts/bootstrap` installed the runtimes (Python environment, npm packages).
    #[arg(
        long,
        env = "RUNTIME_DIR",
        default_value = "/opt/code-interpreter",
        global = true
    )]
    pub runtime_dir: PathBuf,

    /// The directory relative paths in `DATA_DIR` and `RUNTIME_DIR` are taken from
    /// (default: the working directory), as in the Python project.
    #[arg(long, env = "APP_BASE_DIR", global = true)]
    pub app_base_dir: Option<PathBuf>,

    /// One API key; when set (or `CODE_INTERPRETER_API_KEYS`), every protected route needs it.
    #[arg(
        long,
        env = "CODE_INTERPRETER_API_KEY",
        hide_env_values = true,
        global = true
    )]
    pub api_key: Option<String>,

    /// Several API keys, comma-separated; each key is its own tenant.
    #[arg(
        long,
        env = "CODE_INTERPRETER_API_KEYS",
        hide_env_values = true,
        value_delimiter = ',',
        global = true
    )]
    pub api_keys: Vec<String>,

    /// A public key (PEM, Ed25519 or RSA, or one JWK) that verifies the JWTs LibreChat
    /// signs (`Authorization: Bearer <jwt>`); needs `CODEAPI_JWT_KID`.
    #[arg(
        long,
        env = "CODEAPI_JWT_PUBLIC_KEY",
        hide_env_values = true,
        global = true
    )]
    pub jwt_public_key: Option<String>,

    /// The key id (`kid`) LibreChat puts in the header of tokens signed with that key.
    #[arg(long, env = "CODEAPI_JWT_KID", global = true)]
    pub jwt_kid: Option<String>,

    /// A JWK set (`{"keys": [...]}`) of JWT verification keys, each with its `kid`.
    #[arg(
        long,
        env = "CODEAPI_JWT_JWKS_JSON",
        hide_env_values = true,
        global = true
    )]
    pub jwt_jwks_json: Option<String>,

    /// The one JWT algorithm to accept, `EdDSA` or `RS256` (LibreChat signs with it).
    #[arg(long, env = "CODEAPI_JWT_ALGORITHM", global = true)]
    pub jwt_algorithm: Option<String>,

    /// JWT algorithms accepted, comma-separated: `EdDSA`, `RS256`.
    #[arg(
        long,
        env = "CODEAPI_JWT_ALLOWED_ALGS",
        default_value = "EdDSA,RS256",
        global = true
    )]
    pub jwt_allowed_algs: String,

    /// The issuer (`iss`) a JWT must name.
    #[arg(
        long,
        env = "CODEAPI_JWT_ISSUER",
        default_value = "librechat",
        global = true
    )]
    pub jwt_issuer: String,

    /// The audience (`aud`) a JWT must name.
    #[arg(
        long,
        env = "CODEAPI_JWT_AUDIENCE",
        default_value = "codeapi",
        global = true
    )]
    pub jwt_audience: String,

    /// Clock difference tolerated on a JWT's `exp`, `nbf` and `iat`, in seconds (≤ 30).
    #[arg(long, env = "CODEAPI_JWT_CLOCK_SKEW_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=30), global = true)]
    pub jwt_clock_skew_seconds: u64,

    /// Longest JWT lifetime accepted (`exp` - `iat`), in seconds (≤ 300).
    #[arg(long, env = "CODEAPI_JWT_MAX_TTL_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=300), global = true)]
    pub jwt_max_ttl_seconds: u64,

    /// Refuse JWTs without a `tenant_id` claim (otherwise they belong to tenant `legacy`).
    #[arg(long, env = "CODEAPI_TENANT_ISOLATION_STRICT", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set, global = true)]
    pub tenant_isolation_strict: bool,

    /// `/exec` calls per minute for each (tenant, user); `0` = no limit.
    #[arg(
        long,
        env = "RATE_LIMIT_EXEC_PER_MINUTE",
        default_value_t = 0,
        global = true
    )]
    pub rate_limit_exec_per_minute: u32,

    /// Allowed CORS origins, comma-separated, or `*`.
    #[arg(long, env = "CORS_ALLOW_ORIGINS", default_value = "*", global = true)]
    pub cors_allow_origins: String,

    /// Log every request (method, path, status, time; keys masked).
    #[arg(long, env = "LOG_REQUESTS", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set, global = true)]
    pub log_requests: bool,

    /// Log format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    /// Log level or tracing filter (e.g. `info`, `code_interpreter=debug`).
    #[arg(long, env = "LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,

    /// Largest accepted upload per file, in bytes (LibreChat's own limit is 150 MiB).
    #[arg(long, env = "MAX_UPLOAD_BYTES", default_value_t = 150 * MIB, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub max_upload_bytes: u64,

    /// Most files one upload request may carry (`/upload/batch` takes at most 200).
    #[arg(long, env = "MAX_UPLOAD_FILES", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000), global = true)]
    pub max_upload_files: u64,

    /// Seconds an upload body may send nothing before it is dropped with a 408.
    #[arg(long, env = "UPLOAD_IDLE_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub upload_idle_seconds: u64,

    /// Idle time after which a session and its files are deleted (LibreChat expects 24 h).
    #[arg(long, env = "SESSION_TTL_SECONDS", default_value_t = 86400, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub session_ttl_seconds: u64,

    /// Disk quota per session in MiB; 0 turns it off.
    #[arg(
        long,
        env = "SESSION_DISK_QUOTA_MB",
        default_value_t = 1024,
        global = true
    )]
    pub session_disk_quota_mb: u64,

    /// Free space DATA_DIR keeps, in MiB: uploads, new sessions and runs are refused (507)
    /// when they would take it below this; reads and deletes keep working. 0 turns it off.
    #[arg(
        long,
        env = "DATA_DIR_MIN_FREE_MB",
        default_value_t = 256,
        global = true
    )]
    pub data_dir_min_free_mb: u64,

    /// Size of the build cache (compiled programs, kept per tenant) in MiB: past it the
    /// least recently used programs no run is using are evicted. 0 turns the cap off.
    #[arg(
        long,
        env = "BUILD_CACHE_MAX_MB",
        default_value_t = 2048,
        global = true
    )]
    pub build_cache_max_mb: u64,

    /// Largest output of one build, and largest file a compiler may write, in MiB; a build
    /// past it is stopped and not cached. 0 turns the cap off.
    #[arg(long, env = "BUILD_MAX_MB", default_value_t = 256, global = true)]
    pub build_max_mb: u64,

    /// The execution profile this deployment answers as (`X-CodeAPI-Execution-Profile`).
    #[arg(
        long,
        env = "EXECUTION_PROFILE",
        value_enum,
        default_value = "default",
        global = true
    )]
    pub execution_profile: ExecutionProfile,

    /// Absolute base URL of this server when it sits behind a proxy (used in OpenAPI `servers`).
    #[arg(long, env = "PUBLIC_BASE_URL", global = true)]
    pub public_base_url: Option<String>,

    /// How user code is isolated: `bwrap` (namespaces, cgroups, seccomp) or `none` (development only).
    #[arg(
        long,
        env = "SANDBOX",
        value_enum,
        default_value = "bwrap",
        global = true
    )]
    pub sandbox: SandboxMode,

    /// Whether user code may use the network.
    #[arg(
        long,
        env = "SANDBOX_NETWORK",
        value_enum,
        default_value = "deny",
        global = true
    )]
    pub sandbox_network: NetworkPolicy,

    /// First host uid of the range sessions' sandboxes run as, one uid per session (as
    /// root). The default lies in a range Linux distributions leave unused.
    #[arg(long, env = "SANDBOX_UID_BASE", default_value_t = 1_879_048_192, value_parser = clap::value_parser!(u32).range(1000..=4_000_000_000), global = true)]
    pub sandbox_uid_base: u32,

    /// How many uids the range has; builds and probes use the one just past it. Past this
    /// many sessions, sessions share uids.
    #[arg(long, env = "SANDBOX_UID_COUNT", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..=100_000_000), global = true)]
    pub sandbox_uid_count: u32,

    /// Wall-clock limit of one run, in seconds (a request's `timeout` may only lower it).
    #[arg(long, env = "EXECUTION_TIMEOUT", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub execution_timeout: u64,

    /// Memory limit of a sandbox in MiB (cgroup); 0 turns it off.
    #[arg(long, env = "MAX_MEMORY_MB", default_value_t = 1024, global = true)]
    pub max_memory_mb: u64,

    /// Memory limit of one-shot runs in MiB, overriding `MAX_MEMORY_MB` for them.
    #[arg(long, env = "SUBPROCESS_MAX_MEMORY_MB", global = true)]
    pub subprocess_max_memory_mb: Option<u64>,

    /// CPU seconds a one-shot run's processes may use (RLIMIT_CPU); 0 turns it off.
    #[arg(
        long,
        env = "SUBPROCESS_MAX_CPU_SECONDS",
        default_value_t = 0,
        global = true
    )]
    pub subprocess_max_cpu_seconds: u64,

    /// Processes and threads a sandbox may have at once (cgroup pids); 0 turns it off.
    #[arg(long, env = "MAX_PROCESSES", default_value_t = 256, global = true)]
    pub max_processes: u64,

    /// Size of a sandbox's private `/tmp` in MiB.
    #[arg(long, env = "SANDBOX_TMP_MB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub sandbox_tmp_mb: u64,

    /// Sandbox launchers kept ready, each already in a fresh cgroup, so a run does not wait
    /// to join one; 0 = off (every sandbox joins its groups as it starts).
    #[arg(long, env = "SANDBOX_LAUNCHERS", default_value_t = 4, value_parser = clap::value_parser!(u64).range(0..=64), global = true)]
    pub sandbox_launchers: u64,

    /// Output kept per stream (stdout, stderr) of one run, in bytes; past it the run is stopped.
    #[arg(long, env = "MAX_OUTPUT_BYTES", default_value_t = MIB, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub max_output_bytes: u64,

    /// Largest accepted `code`, in bytes.
    #[arg(long, env = "MAX_CODE_BYTES", default_value_t = MIB, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub max_code_bytes: u64,

    /// Most output files reported by one run.
    #[arg(long, env = "MAX_OUTPUT_FILES", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub max_output_files: u64,

    /// Run bash with `set -euo pipefail`.
    #[arg(long, env = "BASH_STRICT_MODE", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, global = true)]
    pub bash_strict_mode: bool,

    /// Python kernels started ahead, with `PYTHON_PRELOAD` imported, for new sessions
    /// (default: 8 when kernels are forked from the template, else 2).
    #[arg(long, env = "KERNEL_POOL_SIZE", global = true)]
    pub kernel_pool_size: Option<usize>,

    /// Modules the pooled kernels import ahead (comma-separated); empty for none.
    #[arg(
        long,
        env = "PYTHON_PRELOAD",
        default_value = "numpy,pandas,matplotlib.pyplot",
        global = true
    )]
    pub python_preload: String,

    /// Live Python kernels at most; past it the least recently used idle one is shut down.
    #[arg(long, env = "MAX_SESSIONS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub max_sessions: u64,

    /// Idle time after which a session's kernel is shut down (its files stay).
    #[arg(long, env = "KERNEL_IDLE_SECONDS", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub kernel_idle_seconds: u64,

    /// Fork Python kernels from one preloaded template (where bwrap, root and cgroups allow
    /// it) instead of starting each from nothing (see ARCHITECTURE.md).
    #[arg(long, env = "PYTHON_KERNEL_FORK", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, global = true)]
    pub python_kernel_fork: bool,

    /// Largest message a Python kernel may send, in bytes, counting what its JSON takes once
    /// parsed; a larger output is dropped with a note in stderr.
    #[arg(long, env = "KERNEL_MAX_MESSAGE_BYTES", default_value_t = 32 * MIB, value_parser = clap::value_parser!(u64).range(65536..), global = true)]
    pub kernel_max_message_bytes: u64,

    /// How long a Python call waits for a kernel slot when all are busy, before a 429.
    #[arg(long, env = "QUEUE_WAIT_SECONDS", default_value_t = 30, global = true)]
    pub queue_wait_seconds: u64,

    /// Add a one-line hint to `ModuleNotFoundError` saying whether installs are possible.
    #[arg(long, env = "PIP_INSTALL_HINTS", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, global = true)]
    pub pip_install_hints: bool,

    /// A client that disconnects from `/exec` or `/exec/stream` before the result cancels
    /// its run (process tree killed, Python cell interrupted).
    #[arg(long, env = "STREAM_CANCEL_ON_DISCONNECT", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, global = true)]
    pub stream_cancel_on_disconnect: bool,

    /// Runs executing at once across all sessions (default: 4 per core); more wait their turn.
    #[arg(long, env = "MAX_CONCURRENT_RUNS", value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub max_concurrent_runs: Option<u64>,

    /// CPUs' worth of time one sandbox may use (e.g. `0.5`, `2`); `0` = no cap. Every sandbox
    /// has the same CPU weight either way.
    #[arg(long, env = "MAX_CPUS", default_value_t = 0.0, value_parser = parse_cpus, global = true)]
    pub max_cpus: f64,

    /// Runs one tenant may execute at once (default: three quarters of MAX_CONCURRENT_RUNS,
    /// so other tenants always find a free slot; set it to MAX_CONCURRENT_RUNS on a server
    /// with a single tenant).
    #[arg(long, env = "MAX_CONCURRENT_RUNS_PER_TENANT", value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub max_concurrent_runs_per_tenant: Option<u64>,

    /// Runs one tenant may have waiting for a slot beyond its running ones; past it a run is
    /// refused with 429 and `retry_after_seconds` before it starts.
    #[arg(
        long,
        env = "MAX_QUEUED_RUNS_PER_TENANT",
        default_value_t = 64,
        global = true
    )]
    pub max_queued_runs_per_tenant: u64,

    /// Host names the MCP endpoint (`/mcp`) answers to, comma-separated (`name` or `name:port`),
    /// or `*` for any. A guard against DNS rebinding; behind a proxy or in compose, add the name
    /// clients use. Default: localhost, 127.0.0.1, ::1 and `HOST`.
    #[arg(long, env = "MCP_ALLOWED_HOSTS", value_delimiter = ',', global = true)]
    pub mcp_allowed_hosts: Vec<String>,

    /// Where a session's notebook (`.ipynb` of its Python cells) is written when the session
    /// ends; unset: notebooks last as long as their sessions.
    #[arg(long, env = "NOTEBOOKS_DIR", global = true)]
    pub notebooks_dir: Option<PathBuf>,

    /// Largest notebook per session in MiB; later cells are left out (the notebook says so).
    #[arg(long, env = "NOTEBOOK_MAX_MB", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096), global = true)]
    pub notebook_max_mb: u64,

    /// Where sessions and files live: `local` (this machine) or `shared` (Redis + S3, for
    /// several nodes).
    #[arg(
        long,
        env = "STORE",
        value_enum,
        default_value = "local",
        global = true
    )]
    pub store: StoreKind,

    /// The Redis that holds metadata when `STORE=shared` (`redis://[:password@]host:port/db`).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0",
        global = true
    )]
    pub redis_url: String,

    /// Prefix of every Redis key, so deployments can share one Redis.
    #[arg(
        long,
        env = "REDIS_KEY_PREFIX",
        default_value = "code-interpreter:",
        global = true
    )]
    pub redis_key_prefix: String,

    /// The S3-compatible endpoint for file bytes when `STORE=shared` (path-style requests).
    #[arg(long, env = "S3_ENDPOINT", global = true)]
    pub s3_endpoint: Option<String>,

    /// The bucket (it must exist).
    #[arg(
        long,
        env = "S3_BUCKET",
        default_value = "code-interpreter",
        global = true
    )]
    pub s3_bucket: String,

    /// The bucket's region (signing needs one; SeaweedFS and MinIO accept the default).
    #[arg(long, env = "S3_REGION", default_value = "us-east-1", global = true)]
    pub s3_region: String,

    /// The access key for the bucket (required with `STORE=shared`; no instance metadata is asked).
    #[arg(long, env = "S3_ACCESS_KEY_ID", global = true, hide_env_values = true)]
    pub s3_access_key_id: Option<String>,

    /// Its secret.
    #[arg(
        long,
        env = "S3_SECRET_ACCESS_KEY",
        global = true,
        hide_env_values = true
    )]
    pub s3_secret_access_key: Option<String>,

    /// With `STORE=shared`: the URL other nodes reach this one at (e.g. `http://10.0.0.5:8000`).
    /// Set, the node takes part in the session directory: calls for a session whose Python
    /// kernel another live node holds are forwarded there. Unset, every node runs every call
    /// itself, on a new kernel when the session's was elsewhere.
    #[arg(long, env = "NODE_URL", global = true)]
    pub node_url: Option<String>,

    /// How long a node's lease in the session directory lasts without renewal (it renews a
    /// third of the way); a node that stops answering loses its sessions after this long.
    #[arg(long, env = "NODE_LEASE_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=600), global = true)]
    pub node_lease_seconds: u64,
}

impl Settings {
    /// Relative directories are taken from `APP_BASE_DIR` when it is set.
    fn resolve_relative_paths(&mut self) {
        let Some(base) = self.app_base_dir.clone() else {
            return;
        };
        for dir in [&mut self.data_dir, &mut self.runtime_dir] {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
    }

    /// Every configured API key, trimmed, without empties.
    pub fn all_api_keys(&self) -> Vec<String> {
        self.api_key
            .iter()
            .chain(self.api_keys.iter())
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect()
    }

    pub fn kernel_memory_bytes(&self) -> Option<u64> {
        (self.max_memory_mb > 0).then(|| self.max_memory_mb * MIB)
    }

    pub fn notebook_max_bytes(&self) -> u64 {
        self.notebook_max_mb * MIB
    }

    pub fn preload_modules(&self) -> Vec<String> {
        self.python_preload
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect()
    }

    pub fn one_shot_memory_bytes(&self) -> Option<u64> {
        let mb = self.subprocess_max_memory_mb.unwrap_or(self.max_memory_mb);
        (mb > 0).then(|| mb * MIB)
    }

    pub fn concurrent_runs(&self) -> usize {
        self.max_concurrent_runs
            .map(|n| n as usize)
            .unwrap_or_else(|| 4 * std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    pub fn max_cpus(&self) -> Option<f64> {
        (self.max_cpus > 0.0).then_some(self.max_cpus)
    }

    /// The per-tenant share of `concurrent_runs` (at least one run).
    pub fn concurrent_runs_per_tenant(&self) -> usize {
        let total = self.concurrent_runs();
        self.max_concurrent_runs_per_tenant
            .map(|n| n as usize)
            .unwrap_or((total * 3 / 4).max(1))
            .min(total)
    }

    /// What `STORE=shared` connects to; an error names the missing setting.
    pub fn shared_store(&self) -> Result<crate::store::SharedSettings, String> {
        let need = |value: &Option<String>, name: &str| {
            value
                .clone()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| format!("STORE=shared needs {name}"))
        };
        Ok(crate::store::SharedSettings {
            redis_url: self.redis_url.clone(),
            key_prefix: self.redis_key_prefix.clone(),
            s3_endpoint: need(&self.s3_endpoint, "S3_ENDPOINT")?,
            s3_bucket: self.s3_bucket.clone(),
            s3_region: self.s3_region.clone(),
            s3_access_key_id: need(&self.s3_access_key_id, "S3_ACCESS_KEY_ID")?,
            s3_secret_access_key: need(&self.s3_secret_access_key, "S3_SECRET_ACCESS_KEY")?,
        })
    }

    pub fn session_disk_quota_bytes(&self) -> Option<u64> {
        (self.session_disk_quota_mb > 0).then(|| self.session_disk_quota_mb * MIB)
    }

    /// `BUILD_CACHE_MAX_MB` and `BUILD_MAX_MB`.
    pub fn build_cache_limits(&self) -> crate::runtime::build_cache::BuildCacheLimits {
        let mib = |n: u64| (n > 0).then(|| n.saturating_mul(MIB));
        crate::runtime::build_cache::BuildCacheLimits {
            total_bytes: mib(self.build_cache_max_mb),
            entry_bytes: mib(self.build_max_mb),
        }
    }

    /// The free-space floor of DATA_DIR (`DATA_DIR_MIN_FREE_MB`).
    pub fn disk_floor(&self) -> crate::store::DiskFloor {
        crate::store::DiskFloor::new(
            &self.data_dir,
            self.data_dir_min_free_mb.saturating_mul(MIB),
        )
    }

    /// The `Host` names `/mcp` answers to; `None` when any is allowed (`*`).
    pub fn mcp_hosts(&self) -> Option<Vec<String>> {
        let listed: Vec<String> = self
            .mcp_allowed_hosts
            .iter()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .collect();
        if listed.iter().any(|h| h == "*") {
            return None;
        }
        if !listed.is_empty() {
            return Some(listed);
        }
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .map(str::to_owned)
            .to_vec();
        let own = self.host.to_string();
        if !hosts.contains(&own) {
            hosts.push(own);
        }
        Some(hosts)
    }
}

/// A CPU count: a finite number, 0 or more.
fn parse_cpus(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err(format!(
            "'{value}' is not a CPU count such as 0.5 or 2 (0 = no cap)"
        )),
    }
}

/// Booleans accept 1/0, true/false, yes/no and on/off, in any case.
pub fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(format!(
            "'{other}' is not a boolean; use true/false, 1/0, yes/no or on/off"
        )),
    }
}

/// The arguments after `crate::sandbox::LAUNCHER_ARG` when this process was started as a
/// sandbox launcher (the server re-executes itself so); `None` for every other start.
pub fn launcher_args() -> Option<Vec<std::ffi::OsString>> {
    let mut args = std::env::args_os().skip(1);
    (args.next()? == crate::sandbox::LAUNCHER_ARG).then(|| args.collect())
}

/// Parse the command line and environment. A bad value ends the process with a message that
/// names both the flag and the environment variable it may have come from.
pub fn parse() -> Cli {
    apply_aliases();
    match Cli::try_parse() {
        Ok(mut cli) => {
            cli.settings.resolve_relative_paths();
            cli
        }
        Err(err) => {
            use clap::error::{ContextKind, ContextValue, ErrorKind};
            let named_env = match (err.kind(), err.get(ContextKind::InvalidArg)) {
                (
                    ErrorKind::ValueValidation | ErrorKind::InvalidValue,
                    Some(ContextValue::String(arg)),
                ) => env_name_for_flag(arg),
                _ => None,
            };
            if let Some(env) = named_env {
                eprintln!("error: bad value for setting {env}");
            }
            err.exit()
        }
    }
}

/// Map `--port <PORT>` to the environment variable behind it.
fn env_name_for_flag(arg: &str) -> Option<String> {
    use clap::CommandFactory;
    let long = arg.trim_start_matches("--").split([' ', '=']).next()?;
    let cmd = Cli::command();
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
}

/// Seed-compatible names that map onto one of ours.
fn apply_aliases() {
    const ALIASES: &[(&str, &str)] = &[
        ("UPLOADS_DIR", "DATA_DIR"),
        // LibreChat's official Code API names it so.
        ("CODEAPI_EXECUTION_PROFILE", "EXECUTION_PROFILE"),
    ];
    for (old, new) in ALIASES {
        if std::env::var_os(new).is_none()
            && let Some(value) = std::env::var_os(old)
        {
            // SAFETY: called once at start-up, before any other thread exists.
            unsafe { std::env::set_var(new, value) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_accept_the_documented_spellings() {
        for yes in ["1", "true", "YES", "On"] {
            assert_eq!(parse_bool(yes), Ok(true));
        }
        for no in ["0", "false", "No", "off"] {
            assert_eq!(parse_bool(no), Ok(false));
        }
        assert!(parse_bool("maybe").is_err());
    }

    #[test]
    fn mcp_hosts_default_to_loopback_and_host_and_a_star_allows_any() {
        let settings = |args: &[&str]| {
            let mut argv = vec!["code-interpreter"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).unwrap().settings
        };
        assert_eq!(
            settings(&["--host", "10.1.2.3"]).mcp_hosts(),
            Some(vec![
                "localhost".into(),
                "127.0.0.1".into(),
                "::1".into(),
                "10.1.2.3".into()
            ])
        );
        assert_eq!(
            settings(&["--mcp-allowed-hosts", "ci.example, ci.example:8443"]).mcp_hosts(),
            Some(vec!["ci.example".into(), "ci.example:8443".into()])
        );
        assert_eq!(settings(&["--mcp-allowed-hosts", "*"]).mcp_hosts(), None);
    }

    #[test]
    fn relative_directories_are_taken_from_the_app_base_dir() {
        let parsed = |args: &[&str]| {
            let mut argv = vec!["code-interpreter"];
            argv.extend_from_slice(args);
            let mut settings = Cli::try_parse_from(argv).unwrap().settings;
            settings.resolve_relative_paths();
            settings
        };
        let s = parsed(&["--app-base-dir", "/srv/ci", "--data-dir", "state"]);
        assert_eq!(s.data_dir, PathBuf::from("/srv/ci/state"));
        assert_eq!(s.runtime_dir, PathBuf::from("/opt/code-interpreter"));
        let s = parsed(&["--app-base-dir", "/srv/ci", "--data-dir", "/var/lib/ci"]);
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/ci"));
        assert_eq!(parsed(&[]).data_dir, PathBuf::from("data"));
    }

    #[test]
    fn a_flag_maps_to_its_environment_variable() {
        assert_eq!(env_name_for_flag("--port <PORT>").as_deref(), Some("PORT"));
        assert_eq!(
            env_name_for_flag("--max-upload-bytes <MAX_UPLOAD_BYTES>").as_deref(),
            Some("MAX_UPLOAD_BYTES")
        );
    }
}
