//! Bounds on what a client can make the server wait for: a request body that stops
//! sending is dropped with a 408, whichever route reads it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::AppState;
use super::error::ApiError;

/// Every request body must send something at least every `UPLOAD_IDLE_SECONDS`; one that
/// pauses longer fails the read where the handler reads it, and the answer is a 408.
pub async fn body_idle_timeout(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let idle = Duration::from_secs(state.settings.upload_idle_seconds);
    let stalled = Arc::new(AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let flag = Arc::clone(&stalled);
    let chunks = tokio_stream::StreamExt::timeout(body.into_data_stream(), idle).map(move |item| {
        item.unwrap_or_else(|_| {
            flag.store(true, Ordering::SeqCst);
            Err(axum::Error::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request body stalled",
            )))
        })
    });
    // After a stall the stream ends: the handler sees the error, then nothing more.
    let chunks = chunks.scan(false, |failed, item| {
        let done = *failed;
        *failed |= item.is_err();
        futures::future::ready((!done).then_some(item))
    });
    let response = next
        .run(Request::from_parts(parts, Body::from_stream(chunks)))
        .await;
    if stalled.load(Ordering::SeqCst) {
        return ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "The request body sent nothing for {} s (UPLOAD_IDLE_SECONDS) and was dropped; send it without pauses.",
                idle.as_secs()
            ),
        )
        .into_response();
    }
    response
}
