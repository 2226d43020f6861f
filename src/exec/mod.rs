//! `ExecService`: the one place a request becomes a run. It resolves the session (owner
//! check), places referenced files, takes the session's turn, runs the code through its
//! runtime, works out which files the run created, changed or deleted, and reports all of
//! it as a stream of events ending in `Done`. `/exec` folds that stream; `/exec/stream`
//! and MCP forward it. Speaks Rust types only.

mod programmatic;
mod slots;
mod utf8;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::notebook::Notebooks;
use crate::runtime::process::{ProcessRuntime, RunRequest};
use crate::runtime::python::{PythonError, PythonRuntime};
use crate::runtime::{self, Language, RunEvent, RunOutcome, RunStatus, RuntimeError};
use crate::sandbox::{Limits, Mount};
use crate::session::{SessionOwner, SessionTurns, Tenant, is_valid_id, new_id};
use crate::store::{
    FileMeta, FileName, FileOrigin, Session, ShareLimits, Snapshot, Store, StoreError,
};

pub use programmatic::{
    ANNOUNCEMENT, CancelOutcome, MAX_RESULT_BYTES, Principal, ProgramError, ProgramLanguage,
    ProgramRequest, Step, ToolResult, ToolSpec,
};
use slots::{Queued, RunSlots, SharePlace};
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
                        "[hint] Packages cannot be installed here (no network): use the preinstalled ones or the standard library.\n"
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
    /// The language as the client named it; `ExecService::start` checks it.
    pub lang: String,
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
    /// Whether the run continued the session's live state (LibreChat's `runtime_status`).
    pub runtime_status: RuntimeStatus,
}

/// Whether a run found the session's in-memory state from earlier calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeStatus {
    /// Nothing in memory carried over: a fresh Python kernel (the first call, or after a
    /// restart, an eviction, a crash, an idle shutdown or a server restart), and every run
    /// of a one-shot language. Only the files in `/mnt/data` are there.
    New,
    /// The session's Python kernel, with its variables and imports, ran the cell.
    Reused,
}

impl RuntimeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeStatus::New => "new",
            RuntimeStatus::Reused => "reused",
        }
    }
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
    #[error("Unsupported language '{}'; supported: {}.", .0.escape_debug(), runtime::supported())]
    UnsupportedLanguage(String),
    #[error("'code' is {size} bytes; the limit is {limit} bytes (MAX_CODE_BYTES).")]
    CodeTooLarge { size: usize, limit: u64 },
    #[error("The session was not found: it may have expired or been deleted.")]
    SessionNotFound,
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

/// A tenant with its share running and its queue full (on this node, or on all together).
fn queue_full(queued: usize) -> ExecError {
    ExecError::Busy(format!(
        "this API key already has {queued} runs waiting for a slot (MAX_QUEUED_RUNS_PER_TENANT); \
         wait for some to finish"
    ))
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

/// Stops one run whatever its language: a Python cell is interrupted (and its kernel killed
/// if the interrupt does not land), a one-shot program's whole process tree is killed, and a
/// run still waiting for its turn never starts. Cancelling a finished run does nothing.
#[derive(Debug, Clone)]
pub struct RunHandle {
    token: CancellationToken,
}

impl RunHandle {
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// A guard that cancels the run when dropped: held by a request whose client may leave.
    pub fn cancel_on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(Some(self.token.clone()))
    }
}

/// Cancels its run when dropped, unless disarmed.
#[derive(Debug)]
pub struct CancelOnDrop(Option<CancellationToken>);

impl CancelOnDrop {
    /// Let the run go on after the guard is dropped.
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(token) = self.0.take() {
            token.cancel();
        }
    }
}

/// What a programmatic run adds to a plain one.
#[derive(Debug, Default)]
struct RunExtras {
    /// Bound into a one-shot run's sandbox (the bridge its tool calls go through).
    mounts: Vec<Mount>,
    /// Added to a one-shot run's environment.
    env: Vec<(String, String)>,
    /// Handed to the user the sandbox runs as (the session's own uid), once it is known.
    owned: Vec<std::path::PathBuf>,
    /// What the session's notebook shows as the cell's source (the client's code, not the
    /// wrapper around it).
    shown_code: Option<String>,
    /// The code wraps the client's, whose size the caller checked: `MAX_CODE_BYTES` is for
    /// the client's code, not for the wrapper.
    wrapped: bool,
}

/// A run that has started: its session, its events (ending with `Done`), its handle.
pub struct Started {
    pub session_id: String,
    pub events: mpsc::Receiver<ExecEvent>,
    pub handle: RunHandle,
}

/// The run that holds a session's turn now.
struct ActiveRun {
    run_id: String,
    tenant: Tenant,
    language: Language,
    token: CancellationToken,
}

/// Removes a run from the active table when it ends, however it ends.
struct Active<'a> {
    table: &'a Mutex<HashMap<String, ActiveRun>>,
    session_id: String,
    run_id: String,
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table
            .get(&self.session_id)
            .is_some_and(|a| a.run_id == self.run_id)
        {
            table.remove(&self.session_id);
        }
    }
}

/// Owns sessions' runs: every run, interrupt, restart and delete of a session goes through
/// here and takes the session's turn.
pub struct ExecService {
    store: Arc<dyn Store>,
    process: Arc<ProcessRuntime>,
    python: Arc<PythonRuntime>,
    settings: Arc<Settings>,
    turns: Arc<SessionTurns>,
    slots: Arc<RunSlots>,
    active: Mutex<HashMap<String, ActiveRun>>,
    notebooks: Arc<Notebooks>,
    /// The tenant share several nodes count together (fixed at start: the CPU count behind
    /// its default is read from cgroup files, too slow for every call).
    share_limits: ShareLimits,
    /// Programmatic runs waiting for their client's tool results.
    programs: programmatic::Registry,
}

impl ExecService {
    pub fn new(
        store: Arc<dyn Store>,
        process: Arc<ProcessRuntime>,
        python: Arc<PythonRuntime>,
        settings: Arc<Settings>,
        turns: Arc<SessionTurns>,
    ) -> Self {
        let slots = RunSlots::new(
            settings.concurrent_runs(),
            settings.concurrent_runs_per_tenant(),
            settings.max_queued_runs_per_tenant as usize,
        );
        let notebooks = Arc::new(Notebooks::from_settings(Arc::clone(&store), &settings));
        let share_limits = ShareLimits {
            per_tenant: settings.concurrent_runs_per_tenant(),
            max_queued: settings.max_queued_runs_per_tenant as usize,
            lease: Duration::from_secs(settings.node_lease_seconds.max(1)),
        };
        ExecService {
            store,
            process,
            python,
            settings,
            turns,
            slots,
            active: Mutex::default(),
            notebooks,
            share_limits,
            programs: programmatic::Registry::default(),
        }
    }

    /// Every session's Python cells, as notebooks.
    pub fn notebooks(&self) -> &Arc<Notebooks> {
        &self.notebooks
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
    pub async fn start(self: &Arc<Self>, req: ExecRequest) -> Result<Started, ExecError> {
        self.start_with(req, RunExtras::default()).await
    }

    /// `start`, with what a programmatic run adds (see `RunExtras`).
    async fn start_with(
        self: &Arc<Self>,
        req: ExecRequest,
        extras: RunExtras,
    ) -> Result<Started, ExecError> {
        let language = Language::parse(&req.lang)
            .ok_or_else(|| ExecError::UnsupportedLanguage(req.lang.clone()))?;
        if !extras.wrapped && req.code.len() as u64 > self.settings.max_code_bytes {
            return Err(ExecError::CodeTooLarge {
                size: req.code.len(),
                limit: self.settings.max_code_bytes,
            });
        }
        if let Err(full) = self.slots.admit(&req.tenant) {
            return Err(queue_full(full.queued));
        }
        let version = self.process.version(language).await?;
        // A run may write (and a new session is a directory): not below the disk floor.
        self.settings.disk_floor().check(0)?;
        let inputs = self.resolve_inputs(&req).await?;
        let session = self.resolve_session(&req).await?;
        if language == Language::PYTHON {
            self.python.check_room(&session.id).await?;
        }
        // Several nodes count the tenant's share together; the last check before the run.
        let share = match SharePlace::queue(&self.store, &req.tenant, self.share_limits).await? {
            Queued::NotShared => None,
            Queued::Place(place) => Some(place),
            Queued::Full(full) => return Err(queue_full(full.queued)),
        };
        let (tx, mut rx) = mpsc::channel(256);
        if language == Language::PYTHON {
            let shown = extras.shown_code.as_deref().unwrap_or(&req.code);
            rx = self.notebooks.record(&session.id, shown, rx);
        }
        let token = CancellationToken::new();
        let service = Arc::clone(self);
        let session_id = session.id.clone();
        let run_token = token.clone();
        tokio::spawn(async move {
            let sid = session.id.clone();
            let started = Instant::now();
            let result = service
                .run(
                    req,
                    language,
                    session,
                    version.clone(),
                    inputs,
                    run_token,
                    &extras,
                    share.as_ref(),
                    &tx,
                )
                .await;
            if let Some(place) = share {
                place.release().await;
            }
            let done = result.unwrap_or_else(|err| {
                let message = match err {
                    ExecError::SessionNotFound => err.to_string(),
                    err => {
                        // A failure of ours still ends with a result the client can show.
                        tracing::error!(error = %err, "run failed");
                        "The server could not complete this run; try again.".to_owned()
                    }
                };
                without_a_run(
                    sid,
                    language,
                    version,
                    RunStatus::Error,
                    message,
                    started.elapsed(),
                )
            });
            let _ = tx.send(ExecEvent::Done(Box::new(done))).await;
        });
        Ok(Started {
            session_id,
            events: rx,
            handle: RunHandle { token },
        })
    }

    /// The session if `tenant` owns it.
    async fn owned(&self, tenant: &Tenant, session_id: &str) -> Result<Session, ExecError> {
        if !is_valid_id(session_id) {
            return Err(ExecError::SessionNotFound);
        }
        self.store
            .session(tenant, session_id)
            .await?
            .ok_or(ExecError::SessionNotFound)
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, HashMap<String, ActiveRun>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cancel the run that holds the session's turn, if any.
    fn cancel_active(&self, session_id: &str) {
        if let Some(run) = self.lock_active().get(session_id) {
            run.token.cancel();
        }
    }

    /// Interrupt what the session runs now: a Python cell gets `KeyboardInterrupt` (the
    /// kernel's state is kept), a one-shot program is stopped. False when nothing ran.
    pub async fn interrupt(&self, tenant: &Tenant, session_id: &str) -> Result<bool, ExecError> {
        self.owned(tenant, session_id).await?;
        let running = self
            .lock_active()
            .get(session_id)
            .map(|r| (r.language, r.token.clone()));
        Ok(match running {
            Some((Language::PYTHON, _)) => self.python.interrupt(session_id).await,
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        })
    }

    /// Restart the session's Python kernel (state lost, files kept): the running run, if
    /// any, is cancelled, then the restart takes the session's turn. False when the session
    /// had no kernel.
    pub async fn restart(&self, tenant: &Tenant, session_id: &str) -> Result<bool, ExecError> {
        self.owned(tenant, session_id).await?;
        self.cancel_active(session_id);
        let _turn = self.turns.take(session_id).await;
        Ok(self.python.restart(session_id))
    }

    /// End a session: its run is cancelled, its kernel stopped, then its files and metadata
    /// are deleted, in its turn. False when `tenant` has no such session.
    pub async fn delete_session(
        &self,
        tenant: &Tenant,
        session_id: &str,
    ) -> Result<bool, ExecError> {
        if !is_valid_id(session_id) || self.store.session(tenant, session_id).await?.is_none() {
            return Ok(false);
        }
        self.cancel_active(session_id);
        let _turn = self.turns.take(session_id).await;
        self.python.forget(session_id);
        let deleted = self.store.delete_session(tenant, session_id).await?;
        self.notebooks.finish(session_id).await;
        Ok(deleted)
    }

    /// Delete sessions idle for longer than `ttl` (and stop their kernels), checking often
    /// enough that a session never outlives its TTL by more than a quarter of it.
    pub fn spawn_expiry(self: &Arc<Self>, ttl: Duration) -> tokio::task::JoinHandle<()> {
        let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // A session whose run is going is in use however long the run takes:
                // expiry never deletes one under its run.
                let running: Vec<(Tenant, String)> = this
                    .lock_active()
                    .iter()
                    .map(|(sid, run)| (run.tenant.clone(), sid.clone()))
                    .collect();
                for (tenant, sid) in running {
                    let _ = this.store.session(&tenant, &sid).await;
                }
                match this.store.expire_idle_sessions(ttl).await {
                    Ok(gone) if !gone.is_empty() => {
                        tracing::info!(count = gone.len(), "expired idle sessions");
                        for id in &gone {
                            this.cancel_active(id);
                            this.python.forget(id);
                            this.notebooks.finish(id).await;
                        }
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "session expiry failed"),
                }
            }
        })
    }

    /// The one policy for every entry point: the named session when the tenant owns it;
    /// otherwise (none named, or unknown, expired or another tenant's, treated alike) the
    /// latest session of the request's owner labels; otherwise a new one. Never a hint
    /// that someone else's session exists.
    async fn resolve_session(&self, req: &ExecRequest) -> Result<Session, ExecError> {
        if let Some(sid) = req.session_id.as_deref().filter(|s| is_valid_id(s))
            && let Some(s) = self.store.session(&req.tenant, sid).await?
        {
            return Ok(s);
        }
        if let Some(s) = self
            .store
            .latest_session_for(&req.tenant, &req.owner)
            .await?
        {
            return Ok(s);
        }
        Ok(self.store.create_session(&req.tenant, &req.owner).await?)
    }

    /// The existing session `req` would run in (as [`Self::resolve_session`] picks it) when
    /// its language keeps state in a kernel: the calls several nodes must send to one node.
    pub async fn stateful_session(&self, req: &ExecRequest) -> Result<Option<String>, ExecError> {
        if !Language::parse(&req.lang).is_some_and(Language::stateful) {
            return Ok(None);
        }
        if let Some(sid) = req.session_id.as_deref().filter(|s| is_valid_id(s))
            && let Some(s) = self.store.session(&req.tenant, sid).await?
        {
            return Ok(Some(s.id));
        }
        Ok(self
            .store
            .latest_session_for(&req.tenant, &req.owner)
            .await?
            .map(|s| s.id))
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
            // No file may take DATA_DIR below its floor either.
            file_size_bytes: match (s.session_disk_quota_bytes(), s.disk_floor().room()) {
                (Some(quota), Some(room)) => Some(quota.min(room)),
                (quota, room) => quota.or(room),
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        req: ExecRequest,
        language: Language,
        session: Session,
        version: String,
        inputs: Vec<(FileRef, FileName, FileMeta)>,
        cancel: CancellationToken,
        extras: &RunExtras,
        share: Option<&SharePlace>,
        tx: &mpsc::Sender<ExecEvent>,
    ) -> Result<ExecResult, ExecError> {
        let queued = Instant::now();
        let _turn = tokio::select! {
            turn = self.turns.take(&session.id) => turn,
            _ = cancel.cancelled() => {
                return Ok(cancelled_before_start(session.id, language, version, queued.elapsed()));
            }
        };
        // A delete may have taken the turn before us: the session is gone. (It was marked
        // used when the request found it.)
        if !self.store.session_exists(&req.tenant, &session.id).await? {
            return Err(ExecError::SessionNotFound);
        }
        // A Python run gets its kernel before its slot: runs waiting for a kernel to be
        // forked or claimed hold no slot that a session with a kernel could run in. Meanwhile
        // the run counts as queued for its tenant, and one that needs a new kernel waits for
        // one of its tenant's start turns. A kernel's start is not cancelled midway (a cancel
        // is seen at the slot, or by the cell).
        let mut preparing = self.slots.prepare(&req.tenant);
        let workspace = self.store.workspace_path(&session.id);
        let had_kernel = if language == Language::PYTHON {
            if !self.python.holds(&session.id) {
                tokio::select! {
                    () = self.slots.start_turn(&mut preparing) => {}
                    _ = cancel.cancelled() => {
                        return Ok(cancelled_before_start(session.id, language, version, queued.elapsed()));
                    }
                }
            }
            // A pooled kernel is claimed by moving the session's files into its directory.
            self.store.sync_workspace(&session.id).await?;
            if self.store.claim_kernel(&session.id).await? {
                self.python
                    .lose(&session.id, "it ran on another server node since");
            }
            // A kernel live here was noted in the store when it started for the session
            // (the note only matters to a session without one).
            let had_kernel =
                self.python.holds(&session.id) || self.store.note_kernel(&session.id).await?;
            self.python
                .ready(&session.id, had_kernel, &workspace)
                .await?;
            had_kernel
        } else {
            false
        };
        let wait = async {
            if let Some(place) = share {
                place.wait().await?;
            }
            drop(preparing);
            Ok::<_, StoreError>(self.slots.acquire(&req.tenant).await)
        };
        let _slot = tokio::select! {
            got = wait => got?,
            _ = cancel.cancelled() => {
                return Ok(cancelled_before_start(session.id, language, version, queued.elapsed()));
            }
        };
        let run_id = new_id();
        self.lock_active().insert(
            session.id.clone(),
            ActiveRun {
                run_id: run_id.clone(),
                tenant: req.tenant.clone(),
                language,
                token: cancel.clone(),
            },
        );
        let _active = Active {
            table: &self.active,
            session_id: session.id.clone(),
            run_id: run_id.clone(),
        };

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
        // Read-only inputs are copied aside and put back if the run changes them.
        let read_only: Vec<FileName> = placed
            .iter()
            .filter(|(_, _, here)| here.read_only)
            .map(|(_, _, here)| here.name.clone())
            .collect();
        let read_only = self.store.guard_read_only(&session.id, read_only).await?;
        if !extras.owned.is_empty() {
            self.process
                .hand_to_sandbox(&workspace, &extras.owned)
                .map_err(|e| {
                    ExecError::Internal(format!(
                        "a run's files could not be handed to its sandbox: {e}"
                    ))
                })?;
        }
        let timeout = req
            .timeout
            .unwrap_or(Duration::MAX)
            .min(Duration::from_secs(self.settings.execution_timeout));
        let (run_tx, mut run_rx) = mpsc::channel::<RunEvent>(64);

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
        // A kernel has no watcher of its own: its cells are stopped here when the workspace
        // passes the quota (one-shot runs are watched by their runtime).
        let quota = self.settings.session_disk_quota_bytes();
        let disk_stop = cancel.child_token();
        let over_quota = std::sync::atomic::AtomicBool::new(false);
        let ran = CancellationToken::new();
        let guard_disk = async {
            let Some(quota) = quota.filter(|_| language.stateful()) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(DISK_CHECK_EVERY) => {}
                    _ = ran.cancelled() => return,
                }
                if over(&workspace, quota).await {
                    over_quota.store(true, std::sync::atomic::Ordering::SeqCst);
                    disk_stop.cancel();
                    return;
                }
            }
        };
        let mut runtime_status = RuntimeStatus::New;
        let run_cancel = cancel.clone();
        let execute = async {
            let _ran = ran.clone().drop_guard();
            let cancel = &disk_stop;
            let outcome = match language {
                Language::PYTHON => {
                    let cell = self
                        .python
                        .execute(
                            &session.id,
                            had_kernel,
                            &workspace,
                            &req.code,
                            &req.args,
                            timeout,
                            cancel,
                            &run_tx,
                        )
                        .await
                        .map_err(ExecError::from);
                    cell.map(|(outcome, fresh)| {
                        if !fresh {
                            runtime_status = RuntimeStatus::Reused;
                        }
                        outcome
                    })
                }
                _ => {
                    // Limits are a one-shot sandbox's (a kernel got its own at launch);
                    // their file size cap asks the disk floor's filesystem.
                    let run_req = RunRequest {
                        language,
                        code: &req.code,
                        args: &req.args,
                        workspace: &workspace,
                        limits: self.limits(),
                        timeout,
                        max_output_bytes: self.settings.max_output_bytes,
                        disk_quota: self.settings.session_disk_quota_bytes(),
                        run_id: &run_id,
                        cache_scope: &req.tenant.0,
                        cancel: run_cancel,
                        mounts: &extras.mounts,
                        env: &extras.env,
                    };
                    self.process
                        .run(run_req, run_tx.clone())
                        .await
                        .map_err(ExecError::from)
                }
            };
            drop(run_tx);
            outcome
        };
        let (outcome, (), ()) = tokio::join!(execute, forward, guard_disk);
        let mut outcome = outcome?;
        // Stopped for the quota, or past it when the run ended (faster than a check).
        let stopped = over_quota.load(std::sync::atomic::Ordering::SeqCst);
        if let Some(quota) = quota
            && (stopped || (outcome.status != RunStatus::Killed && over(&workspace, quota).await))
        {
            let stopped = if stopped { " and it was stopped" } else { "" };
            outcome.status = RunStatus::Killed;
            outcome.message = Some(format!(
                "The run's files passed the session's disk quota of {} MiB{stopped}; delete files to make room.",
                quota / (1024 * 1024)
            ));
        }
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

        let restored = self.store.restore_read_only(&session.id, read_only).await?;
        let mut after = self.store.snapshot(&session.id).await?;
        for name in &restored {
            // The same bytes under the same metadata: not a change.
            if let Some(stamp) = before.get(name) {
                after.insert(name.clone(), *stamp);
            }
        }
        if !restored.is_empty() {
            let list: Vec<&str> = restored.iter().map(FileName::as_str).collect();
            let note = format!(
                "The run changed read-only input files, which were put back: {}.",
                list.join(", ")
            );
            outcome.message = Some(match outcome.message.take() {
                Some(m) => format!("{m} {note}"),
                None => note,
            });
        }
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
            language,
            version,
            stdout: out_text,
            stderr: err_text,
            outcome,
            files,
            deleted_files,
            truncated_files,
            runtime_status,
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

/// How often a kernel's workspace is measured against the quota during a cell.
const DISK_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Whether a workspace takes more than `quota` bytes on disk (measured off the runtime).
async fn over(workspace: &std::path::Path, quota: u64) -> bool {
    let ws = workspace.to_path_buf();
    tokio::task::spawn_blocking(move || crate::store::workspace_usage(&ws))
        .await
        .is_ok_and(|used| used > quota)
}

/// The result of a run cancelled while it waited for its turn: it never started.
fn cancelled_before_start(
    session_id: String,
    language: Language,
    version: String,
    waited: Duration,
) -> ExecResult {
    let message = runtime::CANCELLED_MESSAGE.to_owned();
    without_a_run(
        session_id,
        language,
        version,
        RunStatus::Killed,
        message,
        waited,
    )
}

/// The result of a run that ended without its program: `message` says why, in
/// `run.message` and as the `[sandbox]` line of stderr.
fn without_a_run(
    session_id: String,
    language: Language,
    version: String,
    status: RunStatus,
    message: String,
    wall_time: Duration,
) -> ExecResult {
    ExecResult {
        session_id,
        language,
        version,
        stdout: String::new(),
        stderr: format!("[sandbox] {message}\n"),
        outcome: RunOutcome {
            status,
            exit_code: None,
            signal: None,
            message: Some(message),
            wall_time,
            cpu_time: None,
            peak_memory: None,
        },
        files: Vec::new(),
        deleted_files: Vec::new(),
        truncated_files: None,
        runtime_status: RuntimeStatus::New,
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
