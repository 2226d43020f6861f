//! `GET /sessions/{session_id}/notebook`: the session's Python cells as a Jupyter notebook.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use crate::session::{Tenant, is_valid_id};

/// The session's notebook (nbformat 4.5): every Python cell it ran, with outputs and
/// images embedded; an empty notebook before its first Python cell.
#[utoipa::path(
    get, path = "/sessions/{session_id}/notebook", tag = "sessions",
    params(("session_id" = String, Path)),
    responses(
        (status = 200, description = "A Jupyter notebook (nbformat 4)", content_type = "application/x-ipynb+json"),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, description = "Unknown, expired or not yours", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn notebook(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(sid): Path<String>,
) -> ApiResult<Response> {
    if !is_valid_id(&sid) {
        return Err(ApiError::malformed_id("session id"));
    }
    state
        .store
        .session(&tenant, &sid)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    let notebook = state
        .exec
        .notebooks()
        .notebook(&sid)
        .await
        .map_err(ApiError::internal)?;
    let body = serde_json::to_vec_pretty(&notebook).map_err(ApiError::internal)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ipynb+json".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"session-{sid}.ipynb\""),
            ),
        ],
        body,
    )
        .into_response())
}
