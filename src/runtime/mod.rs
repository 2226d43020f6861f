//! Languages and how their code runs. `process` runs one-shot programs (interpreted or
//! compiled and cached) inside the sandbox. Knows nothing about HTTP.

pub mod process;
pub mod python;

use std::fmt;
use std::time::Duration;

/// Every language `lang` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Language {
    Python,
    Bash,
    Sh,
    JavaScript,
    TypeScript,
    Go,
    C,
    Cpp,
    Rust,
    Java,
}

/// The names `lang` accepts, for error messages.
pub const SUPPORTED: &str =
    "py, python, bash, sh, js, javascript, node, ts, typescript, go, c, cpp, c++, rs, rust, java";

impl Language {
    pub const ALL: [Language; 10] = [
        Language::Python,
        Language::Bash,
        Language::Sh,
        Language::JavaScript,
        Language::TypeScript,
        Language::Go,
        Language::C,
        Language::Cpp,
        Language::Rust,
        Language::Java,
    ];

    /// Case-insensitive; LibreChat's official API aliases (`nodejs`, `bun`, …) map to Node.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "py" | "python" | "python3" => Language::Python,
            "bash" => Language::Bash,
            "sh" => Language::Sh,
            "js" | "javascript" | "node" | "nodejs" | "node-js" | "node-javascript" | "bun"
            | "bun-js" => Language::JavaScript,
            "ts" | "typescript" | "bun-ts" | "bun-typescript" => Language::TypeScript,
            "go" | "golang" => Language::Go,
            "c" => Language::C,
            "cpp" | "c++" => Language::Cpp,
            "rs" | "rust" => Language::Rust,
            "java" => Language::Java,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Bash => "bash",
            Language::Sh => "sh",
            Language::JavaScript => "javascript",
            Language::TypeScript => "typescript",
            Language::Go => "go",
            Language::C => "c",
            Language::Cpp => "cpp",
            Language::Rust => "rust",
            Language::Java => "java",
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_and_aliases_map() {
        assert_eq!(Language::parse("PY"), Some(Language::Python));
        assert_eq!(Language::parse("Node"), Some(Language::JavaScript));
        assert_eq!(Language::parse("c++"), Some(Language::Cpp));
        assert_eq!(Language::parse("bun-ts"), Some(Language::TypeScript));
        assert_eq!(Language::parse("php"), None);
        for lang in Language::ALL {
            assert_eq!(Language::parse(lang.name()), Some(lang));
        }
    }
}
