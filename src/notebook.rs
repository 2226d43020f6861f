//! Notebooks: every Python cell a session runs, with its outputs, kept as a journal (one
//! JSON line per cell under `DATA_DIR/notebooks/`, outside the workspace, so user code can
//! neither read nor forge it) and turned into a Jupyter notebook (nbformat 4.5) on demand.
//! When a session ends its notebook is written under `NOTEBOOKS_DIR` (when set) and the
//! journal is removed. Knows nothing about HTTP.
//!
//! Cells are recorded by tapping a run's event stream ([`Notebooks::record`]): the cell is
//! appended before the run's `Done` goes on, so a client that has seen a result can fetch
//! a notebook that contains it.

use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::config::Settings;
use crate::exec::{ExecEvent, ExecResult};
use crate::session::{is_valid_id, new_id};
use crate::store::Store;

/// The most output one cell keeps in memory while it runs (many cells run at once); a cell
/// with more keeps only its code.
const CELL_MAX_BYTES: u64 = 8 * 1024 * 1024;

/// The journal line that says later cells were left out (the size limit was reached).
const FULL_MARKER: &[u8] = b"{\"full\":true}\n";

/// One recorded cell, as a journal line.
#[derive(Debug, Serialize, Deserialize)]
struct Cell {
    id: String,
    source: String,
    /// nbformat outputs (`stream`, `display_data`, `execute_result`, `error`).
    outputs: Vec<Value>,
    status: String,
    wall_time_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    memory: Option<u64>,
    /// The Python version that ran it.
    version: String,
    /// Set when the cell's outputs were too large to keep.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    outputs_dropped: bool,
}

/// A line of the journal: a cell, or the marker that the notebook is full.
#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Cell(Box<Cell>),
    Full { full: bool },
}

/// Builds one cell's outputs from a run's events, as Jupyter would have shown them.
struct CellRecorder {
    outputs: Vec<Value>,
    /// Where in the last output the most recent text chunk starts: the exec service repeats
    /// a result's `text/plain` and an error's traceback as text just before the rich event,
    /// and the notebook must show each once.
    last_chunk: Option<usize>,
    bytes: usize,
    max_bytes: usize,
    dropped: bool,
}

impl CellRecorder {
    fn new(max_bytes: usize) -> Self {
        CellRecorder {
            outputs: Vec::new(),
            last_chunk: None,
            bytes: 0,
            max_bytes,
            dropped: false,
        }
    }

    /// Count `n` more bytes; past the limit the cell keeps no outputs at all.
    fn room_for(&mut self, n: usize) -> bool {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.max_bytes {
            self.dropped = true;
            self.outputs.clear();
            self.last_chunk = None;
        }
        !self.dropped
    }

    fn text(&mut self, name: &str, text: &str) {
        if text.is_empty() || !self.room_for(text.len()) {
            return;
        }
        if let Some(last) = self.outputs.last_mut()
            && last["output_type"] == "stream"
            && last["name"] == name
            && let Some(Value::String(buf)) = last.get_mut("text")
        {
            self.last_chunk = Some(buf.len());
            buf.push_str(text);
            return;
        }
        self.last_chunk = Some(0);
        self.outputs
            .push(json!({"output_type": "stream", "name": name, "text": text}));
    }

    /// Remove `echo` when it is exactly the most recent chunk of stream `name`.
    fn forget_echo(&mut self, name: &str, echo: &str) {
        let (Some(start), Some(last)) = (self.last_chunk.take(), self.outputs.last_mut()) else {
            return;
        };
        if last["output_type"] != "stream" || last["name"] != name {
            return;
        }
        let Some(Value::String(buf)) = last.get_mut("text") else {
            return;
        };
        if buf
            .get(start..)
            .is_some_and(|chunk| chunk.starts_with(echo))
        {
            buf.replace_range(start..start + echo.len(), "");
            if buf.is_empty() {
                self.outputs.pop();
            }
        }
    }

    fn observe(&mut self, event: &ExecEvent) {
        match event {
            ExecEvent::Stdout(text) => self.text("stdout", text),
            ExecEvent::Stderr(text) => self.text("stderr", text),
            // A programmatic run's tool calls are not output.
            ExecEvent::Display { data, .. } if data.get(crate::exec::ANNOUNCEMENT).is_some() => {}
            ExecEvent::Display { data, result, .. } => {
                if let Some(plain) = data.get("text/plain").and_then(Value::as_str) {
                    self.forget_echo("stdout", &format!("{plain}\n"));
                }
                let data = mime_bundle(data);
                if !self.room_for(data.to_string().len()) {
                    return;
                }
                self.outputs.push(if *result {
                    // The count is the cell's, filled in when the notebook is built.
                    json!({"output_type": "execute_result", "execution_count": null,
                           "data": data, "metadata": {}})
                } else {
                    json!({"output_type": "display_data", "data": data, "metadata": {}})
                });
            }
            ExecEvent::Error {
                ename,
                evalue,
                traceback,
            } => {
                let mut echo = traceback.join("\n");
                echo.push('\n');
                self.forget_echo("stderr", &echo);
                let size = echo.len() + ename.len() + evalue.len();
                if !self.room_for(size) {
                    return;
                }
                self.outputs
                    .push(json!({"output_type": "error", "ename": ename,
                                         "evalue": evalue, "traceback": traceback}));
            }
            ExecEvent::Done(_) => {}
        }
    }

    fn finish(&mut self, source: String, result: &ExecResult) -> Cell {
        let outcome = &result.outcome;
        Cell {
            id: new_id(),
            source,
            outputs: std::mem::take(&mut self.outputs),
            status: outcome.status.as_str().to_owned(),
            wall_time_ms: outcome.wall_time.as_secs_f64() * 1000.0,
            memory: outcome.peak_memory,
            version: result.version.clone(),
            outputs_dropped: self.dropped,
        }
    }
}

/// A MIME bundle as nbformat requires it: JSON types stay JSON, everything else is text.
/// User code chooses what it displays, so nothing here is taken on trust.
fn mime_bundle(data: &Value) -> Value {
    let Some(map) = data.as_object() else {
        return json!({"text/plain": data.to_string()});
    };
    let bundle: Map<String, Value> = map
        .iter()
        .map(|(mime, value)| {
            let is_json = mime == "application/json" || mime.ends_with("+json");
            let value = match value {
                _ if is_json => value.clone(),
                Value::String(_) => value.clone(),
                Value::Array(parts) if parts.iter().all(Value::is_string) => value.clone(),
                other => Value::String(other.to_string()),
            };
            (mime.clone(), value)
        })
        .collect();
    Value::Object(bundle)
}

/// Where notebooks are kept and how large one may grow.
pub struct Notebooks {
    store: Arc<dyn Store>,
    journals: PathBuf,
    keep_dir: Option<PathBuf>,
    max_bytes: u64,
    /// Appends are small; one at a time keeps every line whole.
    writing: tokio::sync::Mutex<()>,
    /// Whether `journals` was made already (each cell need not try again).
    journals_made: Arc<std::sync::atomic::AtomicBool>,
}

impl Notebooks {
    /// Journals go to `journals` (created on first use); ended sessions' notebooks to
    /// `keep_dir`, when set. A notebook holds at most `max_bytes` of cells.
    pub fn new(
        store: Arc<dyn Store>,
        journals: PathBuf,
        keep_dir: Option<PathBuf>,
        max_bytes: u64,
    ) -> Self {
        Notebooks {
            store,
            journals,
            keep_dir,
            max_bytes,
            writing: tokio::sync::Mutex::new(()),
            journals_made: Arc::default(),
        }
    }

    /// Journals under `DATA_DIR/notebooks`; `NOTEBOOKS_DIR` and `NOTEBOOK_MAX_MB` as set.
    pub fn from_settings(store: Arc<dyn Store>, settings: &Settings) -> Self {
        Notebooks::new(
            store,
            settings.data_dir.join("notebooks"),
            settings.notebooks_dir.clone(),
            settings.notebook_max_bytes(),
        )
    }

    fn journal(&self, session_id: &str) -> Option<PathBuf> {
        is_valid_id(session_id).then(|| self.journals.join(format!("{session_id}.jsonl")))
    }

    /// Record the cell that `events` runs: the events pass through unchanged (also when
    /// the receiver has gone away, the run is recorded to its end).
    pub fn record(
        self: &Arc<Self>,
        session_id: &str,
        code: &str,
        mut events: mpsc::Receiver<ExecEvent>,
    ) -> mpsc::Receiver<ExecEvent> {
        let (tx, rx) = mpsc::channel(64);
        let this = Arc::clone(self);
        let (session_id, code) = (session_id.to_owned(), code.to_owned());
        tokio::spawn(async move {
            let mut recorder = CellRecorder::new(this.max_bytes.min(CELL_MAX_BYTES) as usize);
            while let Some(event) = events.recv().await {
                if let ExecEvent::Done(result) = &event {
                    let cell = recorder.finish(code.clone(), result);
                    if let Err(err) = this.append(&session_id, &cell).await {
                        tracing::warn!(session = %session_id, error = %err, "could not record a notebook cell");
                    }
                } else {
                    recorder.observe(&event);
                }
                // A client that left does not stop the recording.
                let _ = tx.send(event).await;
            }
        });
        rx
    }

    async fn append(&self, session_id: &str, cell: &Cell) -> io::Result<()> {
        let Some(path) = self.journal(session_id) else {
            return Ok(());
        };
        let line = |cell: &Cell| -> io::Result<Vec<u8>> {
            let mut line = serde_json::to_vec(cell).map_err(io::Error::other)?;
            line.push(b'\n');
            Ok(line)
        };
        let whole = line(cell)?;
        // When the outputs do not fit, the code alone may.
        let slim = line(&Cell {
            id: cell.id.clone(),
            source: cell.source.clone(),
            outputs: Vec::new(),
            status: cell.status.clone(),
            wall_time_ms: cell.wall_time_ms,
            memory: cell.memory,
            version: cell.version.clone(),
            outputs_dropped: true,
        })?;
        // A session deleted while this cell ran has no notebook any more.
        let workspace = self.store.workspace_path(session_id);
        let (journals, max_bytes) = (self.journals.clone(), self.max_bytes);
        let made = Arc::clone(&self.journals_made);
        let _turn = self.writing.lock().await;
        tokio::task::spawn_blocking(move || {
            use std::sync::atomic::Ordering;
            if !workspace.is_dir() {
                return Ok(());
            }
            let open = || {
                std::fs::OpenOptions::new()
                    .create(true)
                    .read(true)
                    .append(true)
                    .open(&path)
            };
            if !made.load(Ordering::Relaxed) {
                std::fs::create_dir_all(&journals)?;
                made.store(true, Ordering::Relaxed);
            }
            let mut file = match open() {
                // The directory went away since it was made.
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(&journals)?;
                    open()?
                }
                opened => opened?,
            };
            let len = file.metadata()?.len();
            if ends_with_full_marker(&mut file, len)? {
                return Ok(());
            }
            let fits = |l: &[u8]| len + l.len() as u64 <= max_bytes;
            match [&whole, &slim].into_iter().find(|l| fits(l)) {
                Some(line) => file.write_all(line),
                None => file.write_all(FULL_MARKER),
            }
        })
        .await
        .map_err(io::Error::other)?
    }

    /// The session's notebook (an empty one when it has run no Python yet).
    pub async fn notebook(&self, session_id: &str) -> io::Result<Value> {
        let path = self.journal(session_id);
        let (sid, max_bytes) = (session_id.to_owned(), self.max_bytes);
        tokio::task::spawn_blocking(move || {
            let lines = match path {
                Some(path) => read_journal(&path, max_bytes)?,
                None => Vec::new(),
            };
            Ok(build(&sid, lines))
        })
        .await
        .map_err(io::Error::other)?
    }

    /// The session has ended: keep its notebook under `NOTEBOOKS_DIR` (when set) and drop
    /// the journal. Failures are logged; they never keep a session alive.
    pub async fn finish(&self, session_id: &str) {
        let Some(path) = self.journal(session_id) else {
            return;
        };
        if !path.exists() {
            return;
        }
        if let Some(dir) = &self.keep_dir {
            match self.notebook(session_id).await {
                Ok(notebook) => {
                    let target = dir.join(format!("{session_id}.ipynb"));
                    let dir = dir.clone();
                    let written = tokio::task::spawn_blocking(move || {
                        write_atomically(&dir, &target, &notebook)
                    })
                    .await
                    .map_err(io::Error::other)
                    .and_then(|r| r);
                    if let Err(err) = written {
                        tracing::warn!(session = %session_id, error = %err, "could not write the notebook to NOTEBOOKS_DIR");
                    }
                }
                Err(err) => {
                    tracing::warn!(session = %session_id, error = %err, "could not read a notebook journal")
                }
            }
        }
        let _turn = self.writing.lock().await;
        if let Err(err) = std::fs::remove_file(&path)
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(session = %session_id, error = %err, "could not remove a notebook journal");
        }
    }
}

fn ends_with_full_marker(file: &mut std::fs::File, len: u64) -> io::Result<bool> {
    let n = FULL_MARKER.len() as u64;
    if len < n {
        return Ok(false);
    }
    let mut tail = vec![0; FULL_MARKER.len()];
    file.seek(io::SeekFrom::Start(len - n))?;
    file.read_exact(&mut tail)?;
    Ok(tail == FULL_MARKER)
}

/// The journal's lines; a torn last line (a crash mid-write) is skipped.
fn read_journal(path: &Path, max_bytes: u64) -> io::Result<Vec<Line>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    // Appends stop at the limit; read no more than that whatever is on disk.
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(FULL_MARKER.len() as u64))
        .read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .collect())
}

/// The nbformat 4.5 document for a session's journal lines.
fn build(session_id: &str, lines: Vec<Line>) -> Value {
    let mut cells = Vec::new();
    let mut version = String::new();
    let mut full = false;
    for line in lines {
        let cell = match line {
            Line::Cell(cell) => cell,
            Line::Full { full: true } => {
                full = true;
                break;
            }
            Line::Full { .. } => continue,
        };
        let count = cells.len() + 1;
        let mut outputs = cell.outputs;
        for output in &mut outputs {
            if output["output_type"] == "execute_result" {
                output["execution_count"] = json!(count);
            }
        }
        if cell.outputs_dropped {
            outputs.push(json!({"output_type": "stream", "name": "stderr",
                "text": "[notebook] This cell's output was too large to keep (NOTEBOOK_MAX_MB).\n"}));
        }
        let mut meta = json!({"status": cell.status, "wall_time_ms": cell.wall_time_ms});
        if let Some(memory) = cell.memory {
            meta["memory_bytes"] = json!(memory);
        }
        version = cell.version;
        cells.push(json!({
            "cell_type": "code",
            "id": cell.id,
            "execution_count": count,
            "metadata": {"code_interpreter": meta},
            "source": cell.source,
            "outputs": outputs,
        }));
    }
    if full {
        cells.push(json!({
            "cell_type": "markdown",
            "id": new_id(),
            "metadata": {},
            "source": "*Later cells were not recorded: this notebook reached its size limit (NOTEBOOK_MAX_MB).*",
        }));
    }
    let mut language_info = json!({"name": "python", "file_extension": ".py",
                                   "mimetype": "text/x-python"});
    if !version.is_empty() {
        language_info["version"] = json!(version);
    }
    json!({
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": language_info,
            "code_interpreter": {"session_id": session_id},
        },
        "cells": cells,
    })
}

/// Write `notebook` to `target` whole or not at all.
fn write_atomically(dir: &Path, target: &Path, notebook: &Value) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(&mut temp, notebook).map_err(io::Error::other)?;
    temp.write_all(b"\n")?;
    temp.as_file().sync_all()?;
    temp.persist(target).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(events: &[ExecEvent]) -> Vec<Value> {
        let mut r = CellRecorder::new(1 << 20);
        events.iter().for_each(|e| r.observe(e));
        r.outputs
    }

    #[test]
    fn a_value_is_an_execute_result_and_not_also_stdout() {
        let outputs = recorded(&[
            ExecEvent::Stdout("hi\n".into()),
            ExecEvent::Stdout("2\n".into()),
            ExecEvent::Display {
                data: json!({"text/plain": "2"}),
                result: true,
                file: None,
            },
        ]);
        assert_eq!(outputs.len(), 2, "{outputs:?}");
        assert_eq!(outputs[0]["text"], "hi\n");
        assert_eq!(outputs[1]["output_type"], "execute_result");
        assert_eq!(outputs[1]["data"]["text/plain"], "2");
    }

    #[test]
    fn a_traceback_shows_once_and_a_hint_after_it_stays() {
        let tb = vec!["Traceback".to_owned(), "ModuleNotFoundError: x".to_owned()];
        let outputs = recorded(&[
            ExecEvent::Stderr("Traceback\nModuleNotFoundError: x\n[hint] none\n".into()),
            ExecEvent::Error {
                ename: "ModuleNotFoundError".into(),
                evalue: "x".into(),
                traceback: tb,
            },
        ]);
        assert_eq!(outputs.len(), 2, "{outputs:?}");
        assert_eq!(outputs[0]["text"], "[hint] none\n");
        assert_eq!(outputs[1]["output_type"], "error");
    }

    #[test]
    fn stream_chunks_merge_and_streams_stay_apart() {
        let outputs = recorded(&[
            ExecEvent::Stdout("a".into()),
            ExecEvent::Stdout("b\n".into()),
            ExecEvent::Stderr("warn\n".into()),
            ExecEvent::Stdout("c\n".into()),
        ]);
        let texts: Vec<_> = outputs.iter().map(|o| o["text"].clone()).collect();
        assert_eq!(texts, vec![json!("ab\n"), json!("warn\n"), json!("c\n")]);
    }

    #[test]
    fn hostile_display_data_becomes_valid_mime_bundles() {
        let bundle = mime_bundle(&json!({"image/png": 12, "application/json": {"a": 1},
                                          "text/plain": ["a", "b"], "text/html": [1]}));
        assert_eq!(bundle["image/png"], "12");
        assert_eq!(bundle["application/json"]["a"], 1);
        assert_eq!(bundle["text/plain"], json!(["a", "b"]));
        assert_eq!(bundle["text/html"], "[1]");
        assert_eq!(mime_bundle(&json!("x"))["text/plain"], "\"x\"");
    }

    #[test]
    fn outputs_past_the_limit_are_dropped_whole() {
        let mut r = CellRecorder::new(10);
        r.observe(&ExecEvent::Stdout("12345".into()));
        r.observe(&ExecEvent::Stdout("1234567890".into()));
        r.observe(&ExecEvent::Stdout("1".into()));
        assert!(r.dropped);
        assert!(r.outputs.is_empty());
    }

    #[test]
    fn a_full_journal_ends_with_a_note_and_counts_follow_cells() {
        let cell = |src: &str| {
            Line::Cell(Box::new(Cell {
                id: new_id(),
                source: src.into(),
                outputs: vec![
                    json!({"output_type": "execute_result", "execution_count": null,
                                     "data": {"text/plain": "1"}, "metadata": {}}),
                ],
                status: "success".into(),
                wall_time_ms: 1.0,
                memory: None,
                version: "3.11.2".into(),
                outputs_dropped: false,
            }))
        };
        let nb = build(
            "abcdefghij_klmnopq-rs",
            vec![cell("1"), cell("2"), Line::Full { full: true }, cell("3")],
        );
        let cells = nb["cells"].as_array().unwrap();
        assert_eq!(cells.len(), 3);
        assert_eq!(cells[1]["execution_count"], 2);
        assert_eq!(cells[1]["outputs"][0]["execution_count"], 2);
        assert_eq!(cells[2]["cell_type"], "markdown");
        assert_eq!(nb["metadata"]["language_info"]["version"], "3.11.2");
    }
}
