//! `ExecService`: the one place a request becomes a run. It resolves the session (owner
//! check), places referenced files, takes the session's turn, runs the code through its
//! runtime, works out which files the run created, changed or deleted, and reports all of
//! it as a stream of events ending in `Done`. `/exec` folds that stream; `/exec/stream`
//! and MCP forward it. Speaks Rust types only.

mod utf8;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use crate::config::Settings;
use crate::runtime::process::{ProcessRuntime, RunRequest};
use crate::runtime::python::{PythonError, PythonRuntime};
use crate::runtime::{Language, RunEvent, RunOutcome, RunStatus, RuntimeError};
use crate::sandbox::Limits;
use crate::session::{SessionOwner, Tenant, is_valid_id, new_id};
use crate::store::{FileMeta, FileName, FileOrigin, Session, Snapshot, Store, StoreError};

pub use utf8::Utf8Decoder;

/// Image types a rich output may carry, the file extension each is saved with.
const IMAGE_TYPES: &[(&str, &str)] = &[
    ("image/png", "png"),
    ("image/jpeg", "jpg"),
    ("image/svg+xml", "svg"),
];

/// Gathers a run's output: decodes text, forwards events, keeps what `/exec` folds, and
/// saves images from rich outputs into the workspace.
struct Output<'a> {
    tx: &'a mpsc::Sender<ExecEvent>,
    store: &'a dyn Store,
    session_id: &'a str,
    taken: std::collections::HashSet<String>,
    stdout: Utf8Decoder,
    stderr: Utf8Decoder,
    out: String,
    err: String,
    saved: Vec<FileMeta>,
    pip_hints: bool,
    network: bool,
}

impl<'a> Output<'a> {
    fn new(
        tx: &'a mpsc::Sender<ExecEvent>,
        store: &'a dyn Store,
        session_id: &'a str,
        before: &Snapshot,
        pip_hints: bool,
        network: bool,
    ) -> Self {
        Output {
            tx,
            store,
            session_id,
            taken: before.keys().map(|n| n.to_string()).collect(),
            stdout: Utf8Decoder::default(),
            stderr: Utf8Decoder::default(),
            out: String::new(),
            err: String::new(),
            saved: Vec::new(),
            pip_hints,
            network,
        }
    }

    async fn text(&mut self, stdout: bool, chunk: String) {
        if chunk.is_empty() {
            return;
        }
        if stdout {
            self.out.push_str(&chunk);
            let _ = self.tx.send(ExecEvent::Stdout(chunk)).await;
        } else {
            self.err.push_str(&chunk);
            let _ = self.tx.send(ExecEvent::Stderr(chunk)).await;
        }
    }

    async fn handle(&mut self, ev: RunEvent) {
        match ev {
            RunEvent::Stdout(b) => {
                let chunk = self.stdout.push(&b);
                self.text(true, chunk).await;
            }
            RunEvent::Stderr(b) => {
                let chunk = self.stderr.push(&b);
                self.text(false, chunk).await;
            }
            RunEvent::Display { data, result } => {
                let file = self.save_image(&data).await;
                // A value shows as a notebook shows it; a display without an image too.
                if (result || file.is_none())
                    && let Some(text) = data["text/plain"].as_str()
                {
                    self.text(true, format!("{text}\n")).await;
                }
                let _ = self
                    .tx
                    .send(ExecEvent::Display { data, result, file })
                    .await;
            }
            RunEvent::Error {
                ename,
                evalue,
                traceback,
            } => {
                let mut text = traceback.join("\n");
                text.push('\n');
                if self.pip_hints && ename == "ModuleNotFoundError" {
                    text.push_str(if self.network {
                        "[hint] Install missing packages with `%pip install <package>`.\n"
                    } else {
                        "[hint] Packages cannot be installed here (no network); GET /libraries?runtime=python lists what is available.\n"
                    });
                }
                self.text(false, text).await;
                let _ = self
                    .tx
                    .send(ExecEvent::Error {
                        ename,
                        evalue,
                        traceback,
                    })
                    .await;
            }
        }
    }

    /// Save the first image of a MIME bundle as `figure-<n>.<ext>` (a name not yet used).
    async fn save_image(&mut self, data: &serde_json::Value) -> Option<FileMeta> {
        use base64::Engine;
        let (mime, ext) = IMAGE_TYPES.iter().find(|(m, _)| data.get(*m).is_some())?;
        let raw = &data[*mime];
        let text = match raw {
            serde_json::Value::Array(parts) => {
                parts.iter().filter_map(|p| p.as_str()).collect::<String>()
            }
            other => other.as_str()?.to_owned(),
        };
        let bytes = if *mime == "image/svg+xml" {
            text.into_bytes()
        } else {
            let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .ok()?
        };
        let name = (1..)
            .map(|n| format!("figure-{n}.{ext}"))
            .find(|n| !self.taken.contains(n))?;
        self.taken.insert(name.clone());
        let name = FileName::parse(&name).ok()?;
        match self
            .store
            .write_bytes(self.session_id, name, bytes::Bytes::from(bytes))
            .await
        {
            Ok(meta) => {
                self.saved.push(meta.clone());
                Some(meta)
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not save an image output");
                None
            }
        }
    }

    async fn finish(&mut self) {
        let rest = self.stdout.finish();
        self.text(true, rest).await;
        let rest = self.stderr.finish();
        self.text(false, rest).await;
    }
}

/// A file the request wants at `/mnt/data/<name>` (LibreChat 2.x and 3.x shapes).
#[derive(Debug, Clone)]
pub struct FileRef {
    pub storage_session_id: String,
    pub id: String,
    pub name: String,
    pub resource_id: Option<String>,
    pub kind: Option<String>,
    pub version: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub tenant: Tenant,
    pub language: Language,
    pub code: String,
    pub args: Vec<String>,
    pub session_id: Option<String>,
    pub owner: SessionOwner,
    pub files: Vec<FileRef>,
    pub timeout: Option<Duration>,
}

/// A file in a run's result.
#[derive(Debug, Clone)]
pub struct OutputFile {
    pub meta: FileMeta,
    /// The request's reference this file came from, when it did.
    pub reference: Option<FileRef>,
    /// An input echoed back unchanged (or read-only): not a new artifact.
    pub inherited: bool,
    /// The input this changed file replaces (id, storage session).
    pub modified_from: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct ExecResult {
    pub session_id: String,
    pub language: Language,
    pub version: String,
    pub stdout: String,
    pub stderr: String,
    pub outcome: RunOutcome,
    pub files: Vec<OutputFile>,
    pub deleted_files: Vec<String>,
    /// (limit, total) when more files were made than are reported.
    pub truncated_files: Option<(usize, usize)>,
}

/// What a run reports while it goes.
#[derive(Debug, Clone)]
pub enum ExecEvent {
    Stdout(String),
    Stderr(String),
    /// A rich output; `file` when its image was saved into the workspace.
    Display {
        data: serde_json::Value,
        result: bool,
        file: Option<FileMeta>,
    },
    Error {
        ename: String,
        evalue: String,
        traceback: Vec<String>,
    },
    Done(Box<ExecResult>),
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{0}")]
    BadRequest(String),
    #[error("The input file '{0}' was not found: it may have expired; upload it again.")]
    InputMissing(String),
    #[error("The {0} runtime is not available on this server.")]
    Unavailable(Language),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Busy(String),
    #[error("the run failed to start: {0}")]
    Internal(String),
}

impl From<PythonError> for ExecError {
    fn from(err: PythonError) -> Self {
        match err {
            PythonError::Runtime(e) => e.into(),
            e @ PythonError::Busy(_) => ExecError::Busy(e.to_string()),
        }
    }
}

impl From<RuntimeError> for ExecError {
    fn from(err: RuntimeError) -> Self {
        match err {
            RuntimeError::Unavailable(lang) => ExecError::Unavailable(lang),
            other => ExecError::Internal(other.to_string()),
        }
    }
}

/// One queue per session: runs on a session take turns, never mix.
#[derive(Default)]
struct SessionTurns {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl SessionTurns {
    fn lock_for(&self, session_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Forget turns nobody waits for, so the map does not grow with every session ever seen.
        map.retain(|_, l| Arc::strong_count(l) > 1);
        Arc::clone(map.entry(session_id.to_owned()).or_default())
    }
}

pub struct ExecService {
    store: Arc<dyn Store>,
    process: Arc<ProcessRuntime>,
    python: Arc<PythonRuntime>,
    settings: Arc<Settings>,
    turns: SessionTurns,
    slots: Arc<Semaphore>,
}

impl ExecService {
    pub fn new(
        store: Arc<dyn Store>,
        process: Arc<ProcessRuntime>,
        python: Arc<PythonRuntime>,
        settings: Arc<Settings>,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(settings.concurrent_runs()));
        ExecService {
            store,
            process,
            python,
            settings,
            turns: SessionTurns::default(),
            slots,
        }
    }

    /// The runtimes behind this service (versions, libraries).
    pub fn runtimes(&self) -> &ProcessRuntime {
        &self.process
    }

    pub fn python(&self) -> &Arc<PythonRuntime> {
        &self.python
    }

    /// Check the request, resolve its session and inputs, then start the run. Everything a
    /// client can get wrong fails here, before any event is sent.
    pub async fn start(
        self: &Arc<Self>,
        req: ExecRequest,
    ) -> Result<(String, mpsc::Receiver<ExecEvent>), ExecError> {
        let version = self.process.version(req.language).await?;
        let inputs = self.resolve_inputs(&req).await?;
        let session = self.resolve_session(&req).await?;
        if req.language == Language::Python {
            self.python.check_room(&session.id).await?;
        }
        let (tx, rx) = mpsc::channel(256);
        let service = Arc::clone(self);
        let session_id = session.id.clone();
        tokio::spawn(async move {
            let (language, sid) = (req.language, session.id.clone());
            let started = Instant::now();
            let result = service
                .run(req, session, version.clone(), inputs, &tx)
                .await;
            let done = result.unwrap_or_else(|err| {
                // A failure of ours still ends with a result the client can show.
                tracing::error!(error = %err, "run failed");
                let message = "The server could not complete this run; try again.".to_owned();
                ExecResult {
                    session_id: sid,
                    language,
                    version,
                    stdout: String::new(),
                    stderr: format!("[sandbox] {message}\n"),
                    outcome: RunOutcome {
                        status: RunStatus::Error,
                        exit_code: None,
                        signal: None,
                        message: Some(message),
                        wall_time: started.elapsed(),
                        cpu_time: None,
                        peak_memory: None,
                    },
                    files: Vec::new(),
                    deleted_files: Vec::new(),
                    truncated_files: None,
                }
            });
            let _ = tx.send(ExecEvent::Done(Box::new(done))).await;
        });
        Ok((session_id, rx))
    }

    async fn resolve_session(&self, req: &ExecRequest) -> Result<Session, ExecError> {
        if let Some(sid) = req.session_id.as_deref().filter(|s| is_valid_id(s))
            && let Some(s) = self.store.session(&req.tenant, sid).await?
        {
            return Ok(s);
        }
        if req.session_id.is_none()
            && let Some(s) = self
                .store
                .latest_session_for(&req.tenant, &req.owner)
                .await?
        {
            return Ok(s);
        }
        // Unknown, expired or another tenant's: a new session, never a hint that it exists.
        Ok(self.store.create_session(&req.tenant, &req.owner).await?)
    }

    async fn resolve_inputs(
        &self,
        req: &ExecRequest,
    ) -> Result<Vec<(FileRef, FileName, FileMeta)>, ExecError> {
        let mut out = Vec::with_capacity(req.files.len());
        for r in &req.files {
            let name = FileName::parse(&r.name).map_err(|e| {
                ExecError::BadRequest(format!("Invalid input file name '{}': {e}.", r.name))
            })?;
            let missing = || ExecError::InputMissing(r.name.clone());
            if !is_valid_id(&r.storage_session_id) || !is_valid_id(&r.id) {
                return Err(missing());
            }
            if self
                .store
                .session(&req.tenant, &r.storage_session_id)
                .await?
                .is_none()
            {
                return Err(missing());
            }
            let meta = self
                .store
                .file(&r.storage_session_id, &r.id)
                .await?
                .ok_or_else(missing)?;
            out.push((r.clone(), name, meta));
        }
        Ok(out)
    }

    fn limits(&self) -> Limits {
        let s = &self.settings;
        Limits {
            memory_bytes: s.one_shot_memory_bytes(),
            processes: (s.max_processes > 0).then_some(s.max_processes),
            cpu_seconds: (s.subprocess_max_cpu_seconds > 0).then_some(s.subprocess_max_cpu_seconds),
            file_size_bytes: s.session_disk_quota_bytes(),
        }
    }

    async fn run(
        &self,
        req: ExecRequest,
        session: Session,
        version: String,
        inputs: Vec<(FileRef, FileName, FileMeta)>,
        tx: &mpsc::Sender<ExecEvent>,
    ) -> Result<ExecResult, ExecError> {
        let turn = self.turns.lock_for(&session.id);
        let _turn = turn.lock().await;
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|e| ExecError::Internal(e.to_string()))?;

        // Place the inputs (a copy; a file already at its place in this session stays).
        let mut placed: Vec<(FileRef, FileMeta, FileMeta)> = Vec::with_capacity(inputs.len());
        for (reference, name, source) in inputs {
            let here = if source.session_id == session.id && source.name == name {
                source.clone()
            } else {
                let origin = FileOrigin {
                    kind: reference.kind.clone(),
                    ref_id: reference.resource_id.clone(),
                    version: reference.version.clone(),
                };
                self.store
                    .copy_into(&source, &session.id, name, source.read_only, origin)
                    .await?
            };
            placed.push((reference, source, here));
        }

        let before = self.store.snapshot(&session.id).await?;
        let workspace = self.store.workspace_path(&session.id);
        let timeout = req
            .timeout
            .unwrap_or(Duration::MAX)
            .min(Duration::from_secs(self.settings.execution_timeout));
        let run_id = new_id();
        let (run_tx, mut run_rx) = mpsc::channel::<RunEvent>(64);
        let run_req = RunRequest {
            language: req.language,
            code: &req.code,
            args: &req.args,
            workspace: &workspace,
            limits: self.limits(),
            timeout,
            max_output_bytes: self.settings.max_output_bytes,
            disk_quota: self.settings.session_disk_quota_bytes(),
            run_id: &run_id,
        };

        let mut output = Output::new(
            tx,
            &*self.store,
            &session.id,
            &before,
            self.settings.pip_install_hints,
            self.settings.sandbox_network == crate::config::NetworkPolicy::Allow,
        );
        let forward = async {
            while let Some(ev) = run_rx.recv().await {
                output.handle(ev).await;
            }
        };
        let execute = async {
            let outcome = match req.language {
                Language::Python => {
                    let had_kernel = self.store.note_kernel(&session.id).await?;
                    self.python
                        .execute(
                            &session.id,
                            had_kernel,
                            &workspace,
                            &req.code,
                            &req.args,
                            timeout,
                            &run_tx,
                        )
                        .await
                        .map_err(ExecError::from)
                }
                _ => self
                    .process
                    .run(run_req, run_tx.clone())
                    .await
                    .map_err(ExecError::from),
            };
            drop(run_tx);
            outcome
        };
        let (outcome, ()) = tokio::join!(execute, forward);
        let mut outcome = outcome?;
        output.finish().await;
        let Output {
            out: out_text,
            err: mut err_text,
            saved,
            ..
        } = output;

        // The model only sees stdout and stderr: say why a run was stopped there too.
        if let Some(message) = &outcome.message
            && matches!(outcome.status, RunStatus::Timeout | RunStatus::Killed)
        {
            let line = format!(
                "{}[sandbox] {message}\n",
                if err_text.is_empty() || err_text.ends_with('\n') {
                    ""
                } else {
                    "\n"
                }
            );
            err_text.push_str(&line);
            let _ = tx.send(ExecEvent::Stderr(line)).await;
        }

        let after = self.store.snapshot(&session.id).await?;
        let (files, deleted_files, truncated_files) = self
            .collect_files(&session.id, &before, &after, placed, saved)
            .await?;
        if let Some((limit, total)) = truncated_files {
            let note = format!(
                "The run made {total} files; only the first {limit} are listed (MAX_OUTPUT_FILES)."
            );
            outcome.message = Some(match outcome.message.take() {
                Some(m) => format!("{m} {note}"),
                None => note,
            });
        }
        Ok(ExecResult {
            session_id: session.id,
            language: req.language,
            version,
            stdout: out_text,
            stderr: err_text,
            outcome,
            files,
            deleted_files,
            truncated_files,
        })
    }

    /// Files the run created or changed, inputs echoed back, inputs it deleted.
    async fn collect_files(
        &self,
        session_id: &str,
        before: &Snapshot,
        after: &Snapshot,
        placed: Vec<(FileRef, FileMeta, FileMeta)>,
        saved: Vec<FileMeta>,
    ) -> Result<(Vec<OutputFile>, Vec<String>, Option<(usize, usize)>), ExecError> {
        // Images saved from rich outputs are recorded already.
        let changed: Vec<FileName> = after
            .iter()
            .filter(|(name, stamp)| before.get(*name) != Some(*stamp))
            .filter(|(name, _)| !saved.iter().any(|s| &s.name == *name))
            .map(|(name, _)| name.clone())
            .collect();
        let removed: Vec<FileName> = before
            .keys()
            .filter(|name| !after.contains_key(*name))
            .cloned()
            .collect();
        let mut recorded = self
            .store
            .record_changes(session_id, changed, removed.clone())
            .await?;
        recorded.extend(saved);

        let limit = self.settings.max_output_files as usize;
        let mut files = Vec::new();
        let mut by_name: HashMap<FileName, FileMeta> =
            recorded.into_iter().map(|m| (m.name.clone(), m)).collect();
        let mut deleted_files = Vec::new();
        for (reference, source, here) in placed {
            if removed.contains(&here.name) {
                deleted_files.push(here.name.to_string());
                continue;
            }
            let echo = OutputFile {
                meta: source.clone(),
                reference: Some(reference.clone()),
                inherited: true,
                modified_from: None,
            };
            match by_name.remove(&here.name) {
                // Read-only inputs are never reported as changed, whatever the run did.
                Some(_) if source.read_only => files.push(echo),
                Some(new) => files.push(OutputFile {
                    meta: new,
                    reference: Some(reference),
                    inherited: false,
                    modified_from: Some((source.id.clone(), source.session_id.clone())),
                }),
                None => files.push(echo),
            }
        }
        let mut created: Vec<FileMeta> = by_name.into_values().collect();
        created.sort_by(|a, b| a.name.cmp(&b.name));
        let total = created.len();
        let truncated = (total > limit).then_some((limit, total));
        files.extend(created.into_iter().take(limit).map(|meta| OutputFile {
            meta,
            reference: None,
            inherited: false,
            modified_from: None,
        }));
        Ok((files, deleted_files, truncated))
    }
}

/// Fold a run's events into its result (what `/exec` answers).
pub async fn finish(mut events: mpsc::Receiver<ExecEvent>) -> Option<ExecResult> {
    while let Some(ev) = events.recv().await {
        if let ExecEvent::Done(result) = ev {
            return Some(*result);
        }
    }
    None
}
