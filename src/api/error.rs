//! The one place where failures become HTTP answers: `{"detail": "<sentence>", "error": "<code>"}`.
//! `detail` is what FastAPI clients (the seed's) read; `error` is what LibreChat's official
//! Code API sends. Server paths and internal errors never reach the body.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// One sentence saying what went wrong and what to do.
    pub detail: String,
    /// A stable machine-readable code.
    pub error: String,
    /// With 429: when to try again (LibreChat reads it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// With coded errors (rate limits, execution profiles): the official Code API's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub retry_after: Option<u64>,
    /// Rarely there, so boxed: errors travel in `Result`s everywhere.
    pub extra: Option<Box<Extra>>,
}

/// More body fields next to `detail` and `error` (LibreChat's official shapes), and more
/// response headers.
#[derive(Debug, Default)]
pub struct Extra {
    pub fields: serde_json::Map<String, serde_json::Value>,
    pub headers: HeaderMap,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
            extra: None,
        }
    }

    pub fn with_field(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        let extra = self.extra.get_or_insert_with(Box::default);
        extra.fields.insert(name.to_owned(), value.into());
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        let extra = self.extra.get_or_insert_with(Box::default);
        extra.headers.insert(name, value);
        self
    }

    /// 429 with a `Retry-After`.
    pub fn rate_limited(detail: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail)
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    pub fn validation(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_error", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Invalid or missing API key",
        )
    }

    pub fn file_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "file_not_found",
            "File not found: it may have expired or been deleted; upload it again.",
        )
    }

    pub fn session_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "session_not_found",
            "Session not found: it may have expired; omit session_id to start a new one.",
        )
    }

    pub fn malformed_id(what: &str) -> Self {
        Self::bad_request(format!(
            "Malformed {what}: ids are 21 characters of A-Z, a-z, 0-9, '_' and '-'."
        ))
    }

    /// Something broke on our side; the details go to the log, not to the client.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "The server failed to handle this request; try again, and report it if it keeps happening.",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::TooLarge { limit } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "file_too_large",
                format!("File size limit exceeded: each file may be at most {limit} bytes."),
            ),
            StoreError::QuotaExceeded { quota } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "quota_exceeded",
                format!(
                    "The session's disk quota of {} MiB would be exceeded; delete files or start a new session.",
                    quota / (1024 * 1024)
                ),
            ),
            StoreError::BodyInterrupted(reason) => ApiError::bad_request(format!(
                "The upload was cut off before it finished ({reason}); send it again."
            )),
            StoreError::BodyStalled { seconds } => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "upload_stalled",
                format!("The upload sent nothing for {seconds} s and was dropped; send it again."),
            ),
            StoreError::NameConflict(name) => ApiError::new(
                StatusCode::CONFLICT,
                "name_conflict",
                format!(
                    "'{name}' clashes with a directory or file of the same name in the session; choose another name."
                ),
            ),
            StoreError::DiskFull => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "disk_full",
                "The server's disk is full; try again later.",
            ),
            StoreError::BelowFloor { min_free_mb } => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "disk_low",
                format!(
                    "The server is keeping its last {min_free_mb} MiB of disk free, so it takes no new files or runs now; delete files or sessions, or try again later."
                ),
            ),
            StoreError::SessionNotFound => ApiError::session_not_found(),
            StoreError::Unavailable { what, reason } => {
                tracing::warn!(%what, %reason, "a shared store is unavailable");
                let mut err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    format!(
                        "The server cannot reach {what} right now; try again in a few seconds."
                    ),
                );
                err.retry_after = Some(5);
                err
            }
            err @ (StoreError::Io(_) | StoreError::Db(_)) => ApiError::internal(err),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        body.insert("detail".into(), self.detail.into());
        body.insert("error".into(), self.code.into());
        if let Some(seconds) = self.retry_after {
            body.insert("retry_after_seconds".into(), seconds.into());
        }
        let extra = self.extra.map(|e| *e).unwrap_or_default();
        body.extend(extra.fields);
        let mut response = (self.status, Json(body)).into_response();
        response.headers_mut().extend(extra.headers);
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"code-interpreter\""),
            );
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
