//! `execute_code` while the run goes: output is forwarded as `notifications/message` (log)
//! and `notifications/progress` while it streams, and a cancelled request stops the run.
//!
//! Feedback is batched: at most one round of notifications every [`FEEDBACK_INTERVAL`], so a
//! run that prints in a tight loop does not turn into a notification per line, and a run
//! shorter than that sends none at all (it costs nothing over a plain request).

use std::time::Duration;

use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::service::RequestContext;
use rmcp::{Peer, RoleServer};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::error::{ToolError, ToolResult};
use crate::exec::{ExecEvent, ExecResult};

/// How often buffered output goes out as notifications, and progress is reported.
const FEEDBACK_INTERVAL: Duration = Duration::from_millis(500);
/// Largest piece of output in one log notification.
const LOG_CHUNK_BYTES: usize = 8 * 1024;
/// Output forwarded as log notifications per run; the rest is only in the result.
const LOGGED_BYTES_PER_RUN: usize = 256 * 1024;
/// A notification the client does not take within this long turns feedback off for the run,
/// so a client that stopped reading cannot stall the run's output.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a run's output goes while it streams.
pub struct Feedback {
    peer: Peer<RoleServer>,
    progress: Option<ProgressToken>,
    /// Whether the client asked for log messages at the level output is sent at.
    log: bool,
    started: Instant,
    stdout: String,
    stderr: String,
    output_bytes: usize,
    logged_bytes: usize,
    /// A notification timed out: the client is not reading them.
    muted: bool,
}

impl Feedback {
    pub fn new(ctx: &RequestContext<RoleServer>, log: bool) -> Self {
        Feedback {
            peer: ctx.peer.clone(),
            progress: ctx.meta.get_progress_token(),
            log,
            started: Instant::now(),
            stdout: String::new(),
            stderr: String::new(),
            output_bytes: 0,
            logged_bytes: 0,
            muted: false,
        }
    }

    fn output(&mut self, stdout: bool, text: &str) {
        self.output_bytes += text.len();
        if !self.log || self.logged_bytes >= LOGGED_BYTES_PER_RUN {
            return;
        }
        let room = LOGGED_BYTES_PER_RUN - self.logged_bytes;
        let text = cut(text, room);
        self.logged_bytes += text.len();
        let pending = if stdout {
            &mut self.stdout
        } else {
            &mut self.stderr
        };
        pending.push_str(text);
        if self.logged_bytes >= LOGGED_BYTES_PER_RUN {
            pending.push_str("\n[more output follows; the whole of it is in the result]\n");
        }
    }

    /// Send what has gathered since the last round: output as log messages, then progress.
    async fn flush(&mut self) {
        if self.muted {
            return;
        }
        for (logger, pending) in [("stdout", &mut self.stdout), ("stderr", &mut self.stderr)] {
            while !pending.is_empty() {
                let chunk = cut(pending, LOG_CHUNK_BYTES).to_owned();
                pending.drain(..chunk.len());
                if !notify(log_message(&self.peer, logger, chunk)).await {
                    self.muted = true;
                    return;
                }
            }
        }
        if let Some(token) = &self.progress {
            let elapsed = self.started.elapsed().as_secs_f64();
            let param =
                ProgressNotificationParam::new(token.clone(), (elapsed * 10.0).round() / 10.0)
                    .with_message(format!(
                        "running for {elapsed:.1} s, {} bytes of output so far",
                        self.output_bytes
                    ));
            if !notify(self.peer.notify_progress(param)).await {
                self.muted = true;
            }
        }
    }
}

#[allow(deprecated)] // Logging is deprecated in 2026-07-28 (SEP-2577); 2025 clients show it.
async fn log_message(
    peer: &Peer<RoleServer>,
    logger: &'static str,
    text: String,
) -> Result<(), rmcp::ServiceError> {
    use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
    peer.notify_logging_message(
        LoggingMessageNotificationParam::new(LoggingLevel::Info, serde_json::Value::String(text))
            .with_logger(logger),
    )
    .await
}

/// Whether the notification went out in time (a failed send is not worth stopping for).
async fn notify(send: impl Future<Output = Result<(), rmcp::ServiceError>>) -> bool {
    match tokio::time::timeout(NOTIFY_TIMEOUT, send).await {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "an MCP notification could not be sent");
            true
        }
        Err(_) => false,
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// An image from a rich output that was not saved as a file: (MIME type, base64 data).
pub type DisplayImage = (String, String);

pub enum Followed {
    Finished {
        result: Box<ExecResult>,
        images: Vec<DisplayImage>,
    },
    /// The request was cancelled.
    Cancelled,
}

/// Follow a run to its end, or until the request is cancelled.
pub async fn follow(
    mut events: mpsc::Receiver<ExecEvent>,
    ctx: &RequestContext<RoleServer>,
    mut feedback: Feedback,
) -> ToolResult<Followed> {
    let mut images = Vec::new();
    let mut tick = tokio::time::interval_at(Instant::now() + FEEDBACK_INTERVAL, FEEDBACK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = ctx.ct.cancelled() => return Ok(Followed::Cancelled),
            event = events.recv() => match event {
                Some(ExecEvent::Stdout(text)) => feedback.output(true, &text),
                Some(ExecEvent::Stderr(text)) => feedback.output(false, &text),
                Some(ExecEvent::Display { data, file: None, .. }) => {
                    images.extend(display_image(&data));
                }
                Some(ExecEvent::Display { .. } | ExecEvent::Error { .. }) => {}
                Some(ExecEvent::Done(result)) => {
                    return Ok(Followed::Finished { result, images });
                }
                None => return Err(ToolError::Internal("the run ended without a result".into())),
            },
            _ = tick.tick() => feedback.flush().await,
        }
    }
}

/// Image types a client can show inline.
pub const INLINE_IMAGE_TYPES: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];

/// The first inline-able image of a Jupyter MIME bundle, as base64.
fn display_image(data: &serde_json::Value) -> Option<DisplayImage> {
    let mime = INLINE_IMAGE_TYPES
        .iter()
        .find(|m| data.get(**m).is_some())?;
    let base64: String = match &data[*mime] {
        serde_json::Value::Array(parts) => parts.iter().filter_map(|p| p.as_str()).collect(),
        other => other.as_str()?.to_owned(),
    };
    let base64 = base64.chars().filter(|c| !c.is_whitespace()).collect();
    Some(((*mime).to_owned(), base64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutting_never_splits_a_character() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("abc", 10), "abc");
    }

    #[test]
    fn a_display_image_is_taken_from_its_bundle_without_line_breaks() {
        let bundle = serde_json::json!({"text/plain": "<Figure>", "image/png": "iVBO\nRw0K\n"});
        assert_eq!(
            display_image(&bundle),
            Some(("image/png".to_owned(), "iVBORw0K".to_owned()))
        );
        assert_eq!(display_image(&serde_json::json!({"text/plain": "1"})), None);
    }
}
