//! What MCP clients see of each tool: the arguments (their JSON Schema is the tool's
//! `inputSchema`, so the doc comments are what a model reads) and the structured results
//! (their schema is the tool's `outputSchema`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::uri;
use crate::exec::ExecResult;
use crate::runtime::RunStatus;
use crate::store::FileMeta;

// ---------------------------------------------------------------------------------------------
// Arguments

/// Arguments of `execute_code`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExecuteCodeArgs {
    /// The source code to run. Python runs as a notebook cell in a kernel that lives as long as
    /// the session: variables, imports and functions stay defined for the next call, the value
    /// of the last expression is printed, and a matplotlib figure shown with `plt.show()`
    /// comes back as an image. Every other language runs as a fresh program.
    pub code: String,
    // Its schema lists the registry's languages (`language_schema`).
    #[serde(alias = "lang")]
    #[schemars(schema_with = "language_schema")]
    pub language: String,
    /// The session to run in: the `session_id` an earlier call returned. Omit it to use this
    /// conversation's own session (made on first use). A session holds the files under
    /// /mnt/data and the Python variables.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Command-line arguments for the program (what it sees after its own name).
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Wall-clock limit of this run in seconds. The server's own limit caps it; a run that
    /// passes it is stopped and reported with status `timeout`.
    #[serde(default)]
    pub timeout: Option<f64>,
}

/// `language`: one of the registry's names or aliases.
fn language_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": crate::runtime::languages::all_names(),
        "description": format!(
            "The language of `code`: {}. Python keeps its state in the session; the others run as fresh programs.",
            crate::runtime::supported()
        ),
    })
}

/// Arguments of `upload_file`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct UploadFileArgs {
    /// Where the file goes, relative to /mnt/data: `data.csv`, or `input/report.txt` for a
    /// subdirectory. An existing file of that name is replaced.
    pub name: String,
    /// The file's content as text (stored as UTF-8). Give this or `content_base64`.
    #[serde(default)]
    pub content: Option<String>,
    /// The file's bytes, base64-encoded (standard alphabet, padding optional), for binary
    /// files. Give this or `content`.
    #[serde(default)]
    pub content_base64: Option<String>,
    /// The session to upload into: a `session_id` an earlier call returned. Omit it to use this
    /// conversation's own session.
    #[serde(default)]
    pub session_id: Option<String>,
}

/// Arguments of the tools that act on one session.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SessionArgs {
    /// The session: a `session_id` that `execute_code` or `upload_file` returned.
    pub session_id: String,
}

/// Arguments of the tools that act on one file of a session.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct FileArgs {
    /// The session: a `session_id` that `execute_code` or `upload_file` returned.
    pub session_id: String,
    /// The file's path relative to /mnt/data, e.g. `figure-1.png`. Give this or `file_id`.
    #[serde(default)]
    pub name: Option<String>,
    /// The file's id, as `list_files` or `execute_code` reported it. Give this or `name`.
    #[serde(default)]
    pub file_id: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Results

/// A file in a session.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileInfo {
    /// The file's id; it changes whenever the file is replaced.
    pub file_id: String,
    /// Path relative to /mnt/data, where code sees the file.
    pub name: String,
    pub session_id: String,
    /// The file as an MCP resource (`resources/read`).
    pub uri: String,
    /// Size in bytes.
    pub size: u64,
    pub content_type: String,
}

impl FileInfo {
    pub fn of(meta: &FileMeta) -> Self {
        FileInfo {
            file_id: meta.id.clone(),
            name: meta.name.to_string(),
            session_id: meta.session_id.clone(),
            uri: uri::file_uri(&meta.session_id, meta.name.as_str()),
            size: meta.size,
            content_type: meta.content_type.clone(),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Exit code 0 (Python: no exception).
    Success,
    /// A non-zero exit code, an exception or a compile error.
    Error,
    /// The wall-clock limit passed.
    Timeout,
    /// A limit (memory, processes, output size, disk) stopped it.
    Killed,
}

impl From<RunStatus> for RunState {
    fn from(status: RunStatus) -> Self {
        match status {
            RunStatus::Success => RunState::Success,
            RunStatus::Error => RunState::Error,
            RunStatus::Timeout => RunState::Timeout,
            RunStatus::Killed => RunState::Killed,
        }
    }
}

/// The result of `execute_code`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ExecOutput {
    /// The session the code ran in: pass it as `session_id` to keep working there.
    pub session_id: String,
    pub language: String,
    /// The runtime's version.
    pub version: String,
    pub status: RunState,
    /// The process's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended the process, when one did.
    pub signal: Option<String>,
    /// Why the run was stopped, when a limit stopped it.
    pub message: Option<String>,
    pub stdout: String,
    pub stderr: String,
    /// Wall-clock time of the run in milliseconds.
    pub wall_time_ms: f64,
    /// Files the run created or changed (figures shown by Python included).
    pub files: Vec<FileInfo>,
    /// Files the run deleted, by name.
    pub deleted_files: Vec<String>,
}

impl ExecOutput {
    pub fn of(result: &ExecResult) -> Self {
        let outcome = &result.outcome;
        ExecOutput {
            session_id: result.session_id.clone(),
            language: result.language.name().to_owned(),
            version: result.version.clone(),
            status: outcome.status.into(),
            exit_code: outcome.exit_code,
            signal: outcome.signal.clone(),
            message: outcome.message.clone(),
            stdout: result.stdout.clone(),
            stderr: result.stderr.clone(),
            wall_time_ms: (outcome.wall_time.as_secs_f64() * 10_000.0).round() / 10.0,
            files: result.files.iter().map(|f| FileInfo::of(&f.meta)).collect(),
            deleted_files: result.deleted_files.clone(),
        }
    }
}

/// The files of a session.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileList {
    pub session_id: String,
    pub files: Vec<FileInfo>,
}

/// How `read_file` returned the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// UTF-8 text, in `text` and in an embedded text resource.
    Text,
    /// Bytes, base64-encoded in an embedded blob resource.
    Base64,
}

/// The result of `read_file`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ReadFileOutput {
    pub file: FileInfo,
    pub encoding: Encoding,
    /// The content, when the file is text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// The result of `delete_file`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DeletedFile {
    pub session_id: String,
    pub deleted: FileInfo,
}

/// The result of `reset_session`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ResetOutput {
    pub session_id: String,
    /// Whether a live Python kernel was shut down (false when none was running).
    pub kernel_restarted: bool,
    pub message: String,
}

/// A language this server can run.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RuntimeInfo {
    /// The name `execute_code` takes as `language`.
    pub language: String,
    pub version: String,
    /// Whether state (variables, imports) carries over between calls in one session.
    pub stateful: bool,
}

/// An installed package.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// The result of `list_runtimes`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RuntimesOutput {
    /// The languages installed here.
    pub languages: Vec<RuntimeInfo>,
    /// Notable Python packages that are installed (there are more).
    pub python_packages: Vec<Package>,
    /// The longest a run may take, in seconds.
    pub max_timeout_seconds: u64,
    /// Whether code may reach the network (and so install packages).
    pub network: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_language_schema_lists_the_registry() {
        let schema = serde_json::to_value(schemars::schema_for!(ExecuteCodeArgs)).unwrap();
        let language = &schema["properties"]["language"];
        let names: Vec<&str> = language["enum"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(names, crate::runtime::languages::all_names());
        assert!(
            names.contains(&"php") && names.contains(&"f90"),
            "{language}"
        );
        let description = language["description"].as_str().unwrap();
        assert!(
            description.contains(crate::runtime::supported()),
            "{language}"
        );
    }
}
