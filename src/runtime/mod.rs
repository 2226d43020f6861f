//! Languages and how their code runs. `languages` is the registry (one file per language);
//! `process` runs one-shot programs (interpreted or compiled and cached) inside the
//! sandbox from a registry entry; `python` keeps a Jupyter kernel per session. Knows
//! nothing about HTTP.

pub mod build_cache;
pub mod languages;
pub mod process;
pub mod python;
pub mod supervisor;

use std::time::Duration;

pub use languages::{Language, supported};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Exit code 0.
    Success,
    /// Non-zero exit, an exception, or a compile error.
    Error,
    /// The wall-clock limit passed.
    Timeout,
    /// A limit (memory, processes, output, disk) stopped it.
    Killed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Success => "success",
            RunStatus::Error => "error",
            RunStatus::Timeout => "timeout",
            RunStatus::Killed => "killed",
        }
    }
}

/// Output as it is produced.
#[derive(Debug, Clone)]
pub enum RunEvent {
    Stdout(bytes::Bytes),
    Stderr(bytes::Bytes),
    /// A rich output (Jupyter MIME bundle): `result` for a cell's value, else a display.
    Display {
        data: serde_json::Value,
        result: bool,
    },
    /// An exception, with its traceback as plain lines.
    Error {
        ename: String,
        evalue: String,
        traceback: Vec<String>,
    },
}

/// What a run stopped by its client (a cancellation, a disconnect) says.
pub const CANCELLED_MESSAGE: &str = "The run was cancelled before it finished.";

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    /// One sentence when a limit stopped the run.
    pub message: Option<String>,
    pub wall_time: Duration,
    pub cpu_time: Option<Duration>,
    pub peak_memory: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the {0} runtime is not installed on this server")]
    Unavailable(Language),
    #[error("the sandbox failed: {0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("runtime I/O failed: {0}")]
    Io(#[from] std::io::Error),
}
