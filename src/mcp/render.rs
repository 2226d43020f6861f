//! Results as MCP content: the text a model reads, images it can see, links to files.

use base64::Engine;
use rmcp::model::{CallToolResult, ContentBlock, Resource};
use serde::Serialize;
use tokio::io::AsyncReadExt;

use super::error::{ToolError, ToolResult};
use super::run::{DisplayImage, INLINE_IMAGE_TYPES};
use super::wire::{ExecOutput, FileInfo, RunState};
use super::{MAX_INLINE_BYTES, MAX_INLINE_IMAGE_TOTAL};
use crate::exec::ExecResult;
use crate::store::{FileMeta, Store};

/// A tool result: `text` for the model, the same facts as `structuredContent`.
pub fn structured<T: Serialize>(
    text: String,
    value: &T,
    extra: Vec<ContentBlock>,
) -> ToolResult<CallToolResult> {
    let value = serde_json::to_value(value).map_err(|e| ToolError::Internal(e.to_string()))?;
    let mut content = vec![ContentBlock::text(text)];
    content.extend(extra);
    let mut result = CallToolResult::success(content);
    result.structured_content = Some(value);
    Ok(result)
}

/// `execute_code`'s answer: the output as text, images inline (within the size caps), every
/// file as a `resource_link`, and [`ExecOutput`] as structured content. A run that did not
/// succeed is an error result, so the model sees it failed.
pub async fn exec_result(
    store: &dyn Store,
    result: &ExecResult,
    display_images: Vec<DisplayImage>,
    notes: Vec<String>,
) -> ToolResult<CallToolResult> {
    let output = ExecOutput::of(result);
    let mut notes = notes;
    let mut images = Vec::new();
    let mut inline_total = 0usize;
    for (mime, data) in display_images {
        let size = data.len() / 4 * 3;
        if size <= MAX_INLINE_BYTES && inline_total + size <= MAX_INLINE_IMAGE_TOTAL {
            inline_total += size;
            images.push(ContentBlock::image(data, mime));
        }
    }
    let mut links = Vec::new();
    for file in &result.files {
        let meta = &file.meta;
        if INLINE_IMAGE_TYPES.contains(&meta.content_type.as_str()) {
            let size = meta.size as usize;
            if size > MAX_INLINE_BYTES || inline_total + size > MAX_INLINE_IMAGE_TOTAL {
                notes.push(format!(
                    "{} ({}) is too large to show inline; it is linked below.",
                    meta.name,
                    human_size(meta.size)
                ));
            } else if let Some(bytes) = read_capped(store, meta, MAX_INLINE_BYTES).await? {
                inline_total += bytes.len();
                images.push(ContentBlock::image(
                    base64::engine::general_purpose::STANDARD.encode(bytes),
                    meta.content_type.clone(),
                ));
            }
        }
        links.push(resource_link(meta));
    }

    let text = run_text(&output, &notes);
    let mut call = structured(text, &output, images.into_iter().chain(links).collect())?;
    call.is_error = Some(output.status != RunState::Success);
    Ok(call)
}

pub fn resource_link(meta: &FileMeta) -> ContentBlock {
    let info = FileInfo::of(meta);
    ContentBlock::resource_link(
        Resource::new(info.uri, info.name)
            .with_mime_type(info.content_type)
            .with_size(info.size),
    )
}

/// What the model reads of a run: its output, then one line on how it ended.
fn run_text(output: &ExecOutput, notes: &[String]) -> String {
    let mut text = String::new();
    if !output.stdout.is_empty() {
        text.push_str(&output.stdout);
        if !output.stdout.ends_with('\n') {
            text.push('\n');
        }
    }
    if !output.stderr.is_empty() {
        text.push_str("[stderr]\n");
        text.push_str(&output.stderr);
        if !output.stderr.ends_with('\n') {
            text.push('\n');
        }
    }
    if output.stdout.is_empty() && output.stderr.is_empty() {
        text.push_str("(no output)\n");
    }
    let ending = match (output.status, output.exit_code, &output.signal) {
        (RunState::Success, _, _) => "success".to_owned(),
        (RunState::Error, Some(code), _) => format!("error, exit code {code}"),
        (RunState::Error, None, _) => "error".to_owned(),
        (RunState::Timeout, _, _) => "timeout".to_owned(),
        (RunState::Killed, _, Some(signal)) => format!("killed ({signal})"),
        (RunState::Killed, _, None) => "killed".to_owned(),
    };
    text.push_str(&format!(
        "[{ending} in {:.2} s · {} {} · session_id {}]\n",
        output.wall_time_ms / 1000.0,
        output.language,
        output.version,
        output.session_id
    ));
    // A limit's message is in stderr already (the run reports it there for the model).
    if let Some(message) = &output.message
        && !output.stderr.contains(message.as_str())
    {
        text.push_str(&format!("[{message}]\n"));
    }
    for file in &output.files {
        text.push_str(&format!(
            "[file /mnt/data/{} ({}, {}) · {}]\n",
            file.name,
            human_size(file.size),
            file.content_type,
            file.uri
        ));
    }
    for name in &output.deleted_files {
        text.push_str(&format!("[deleted /mnt/data/{name}]\n"));
    }
    for note in notes {
        text.push_str(&format!("[{note}]\n"));
    }
    text
}

/// A file's bytes, or `None` when it is larger than `limit`.
pub async fn read_capped(
    store: &dyn Store,
    meta: &FileMeta,
    limit: usize,
) -> ToolResult<Option<Vec<u8>>> {
    if meta.size > limit as u64 {
        return Ok(None);
    }
    let file = store.open(meta).await?;
    let mut bytes = Vec::with_capacity(meta.size as usize);
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| ToolError::Internal(format!("reading {}: {e}", meta.name)))?;
    // The file may have grown since its size was recorded.
    Ok((bytes.len() <= limit).then_some(bytes))
}

pub fn human_size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{:.1} MiB", b / (KIB * KIB))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(status: RunState, stdout: &str, stderr: &str) -> ExecOutput {
        ExecOutput {
            session_id: "S".into(),
            language: "python".into(),
            version: "3.11.2".into(),
            status,
            exit_code: Some(if status == RunState::Success { 0 } else { 1 }),
            signal: None,
            message: None,
            stdout: stdout.into(),
            stderr: stderr.into(),
            wall_time_ms: 1234.0,
            files: Vec::new(),
            deleted_files: Vec::new(),
        }
    }

    #[test]
    fn the_text_shows_output_then_how_the_run_ended() {
        let text = run_text(&output(RunState::Success, "2\n", ""), &[]);
        assert_eq!(
            text,
            "2\n[success in 1.23 s · python 3.11.2 · session_id S]\n"
        );
        let text = run_text(&output(RunState::Error, "", "boom"), &[]);
        assert!(
            text.starts_with("[stderr]\nboom\n[error, exit code 1 in"),
            "{text}"
        );
    }

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        assert_eq!(human_size(12), "12 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 * 1024 * 1024), "3.0 MiB");
    }
}
