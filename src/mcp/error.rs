//! How a tool fails. MCP has two channels for it and clients treat them differently: a
//! JSON-RPC error for a request that cannot be acted on (the arguments are wrong), and a
//! tool result with `isError: true` for a tool that ran and failed, which the model reads and
//! can recover from. Every failure is sorted into one of them here, in one place.

use rmcp::ErrorData;
use rmcp::model::{CallToolResult, ContentBlock};

use crate::exec::ExecError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The arguments cannot be acted on: a JSON-RPC "invalid params" error.
    #[error("{0}")]
    BadArguments(String),
    /// The tool ran into something the model can act on: a result with `isError`.
    #[error("{0}")]
    Failed(String),
    /// Our fault: logged in full; the client gets one generic sentence.
    #[error("{0}")]
    Internal(String),
}

pub type ToolResult<T> = Result<T, ToolError>;

/// What a client sees of an internal failure: nothing of the server's paths or messages.
const INTERNAL_SENTENCE: &str = "The server failed to complete this request; try again.";

impl ToolError {
    pub fn session_not_found(session_id: &str) -> Self {
        ToolError::Failed(format!(
            "Session '{session_id}' was not found: it may have expired or belong to another API \
             key. Omit session_id to work in this conversation's own session."
        ))
    }

    /// The answer to a `tools/call`: an error result or a JSON-RPC error.
    pub fn into_tool_response(self) -> Result<CallToolResult, ErrorData> {
        match self {
            ToolError::Failed(message) => {
                Ok(CallToolResult::error(vec![ContentBlock::text(message)]))
            }
            other => Err(other.into_error_data()),
        }
    }

    /// The answer to a request that has no error result (`resources/read`).
    pub fn into_error_data(self) -> ErrorData {
        match self {
            ToolError::BadArguments(message) => ErrorData::invalid_params(message, None),
            ToolError::Failed(message) => ErrorData::resource_not_found(message, None),
            ToolError::Internal(message) => {
                tracing::error!(error = %message, "MCP request failed");
                ErrorData::internal_error(INTERNAL_SENTENCE, None)
            }
        }
    }
}

impl From<StoreError> for ToolError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Io(_) | StoreError::Db(_) => ToolError::Internal(err.to_string()),
            StoreError::SessionNotFound => {
                ToolError::Failed("The session was not found: it may have expired.".into())
            }
            other => ToolError::Failed(upper_first(&format!("{other}."))),
        }
    }
}

impl From<ExecError> for ToolError {
    fn from(err: ExecError) -> Self {
        match err {
            ExecError::BadRequest(message) => ToolError::BadArguments(message),
            e @ ExecError::Unavailable(_) => ToolError::Failed(format!(
                "{e} Call list_runtimes to see which languages are installed."
            )),
            // A language the server lacks is something the model can fix: an error result,
            // not a protocol error.
            e @ (ExecError::InputMissing(_)
            | ExecError::Busy(_)
            | ExecError::UnsupportedLanguage(_)
            | ExecError::SessionNotFound) => ToolError::Failed(e.to_string()),
            e @ ExecError::CodeTooLarge { .. } => ToolError::BadArguments(e.to_string()),
            ExecError::Store(e) => e.into(),
            ExecError::Internal(message) => ToolError::Internal(message),
        }
    }
}

fn upper_first(sentence: &str) -> String {
    let mut chars = sentence.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_tool_is_an_error_result_and_bad_arguments_a_protocol_error() {
        let result = ToolError::Failed("no such file".into())
            .into_tool_response()
            .unwrap();
        assert_eq!(result.is_error, Some(true));
        let err = ToolError::BadArguments("missing code".into())
            .into_tool_response()
            .unwrap_err();
        assert_eq!(err.code, rmcp::model::ErrorCode::INVALID_PARAMS);
        assert_eq!(err.message, "missing code");
    }

    #[test]
    fn internal_details_never_reach_the_client() {
        let err = ToolError::Internal("/srv/data/metadata.sqlite3 is locked".into())
            .into_tool_response()
            .unwrap_err();
        assert_eq!(err.code, rmcp::model::ErrorCode::INTERNAL_ERROR);
        assert!(!err.message.contains("sqlite"));
    }

    #[test]
    fn quota_errors_are_sentences_the_model_can_read() {
        let err: ToolError = StoreError::QuotaExceeded { quota: 10 }.into();
        assert_eq!(
            err.to_string(),
            "The session's disk quota of 10 bytes would be exceeded."
        );
    }
}
