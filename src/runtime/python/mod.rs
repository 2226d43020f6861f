//! Stateful Python: one ipykernel per session, inside the session's sandbox.
//!
//! - A warm pool of kernels (`KERNEL_POOL_SIZE`) is started ahead on empty workspaces
//!   with `PYTHON_PRELOAD` imported. A kernel's `/mnt/data` bind is fixed at start, so a
//!   claim moves the session's files into the pooled directory and renames that directory
//!   over the session's (the mount follows the inode). A new session that finds the pool
//!   empty while pooled kernels are starting waits for one of those (`POOL_WAIT`) rather
//!   than start its own beside them. With forked kernels, every waiting session also asks
//!   for one more pooled start, and up to one start per CPU (at least two) run at once, so a
//!   burst of new sessions is served as fast as the CPUs start kernels; as each start ends,
//!   the next one begins while sessions wait or the pool is short.
//! - At most `MAX_SESSIONS` kernels live; past that the least recently used idle one is
//!   shut down (its files stay). `KERNEL_IDLE_SECONDS` shuts idle kernels down.
//! - A kernel that died, was restarted or shut down leaves a note: the session's next
//!   call starts with one stderr line saying its state was lost.

mod kernel;
mod template;
mod wire;
mod zmtp;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::process::ProcessRuntime;
use super::supervisor::{Aftermath, OutputCap, Stop, Stream};
use super::{Language, RunEvent, RunOutcome, RunStatus, RuntimeError};
use crate::sandbox::{Limits, Sandbox};
use crate::session::SessionTurns;
use kernel::{CellEnd, Kernel, KernelEvent, KernelSpec};
use template::KernelTemplate;

/// How long a new session waits for a pooled kernel already on its way before it starts
/// its own.
const POOL_WAIT: Duration = Duration::from_secs(10);
/// `KERNEL_POOL_SIZE` when unset: forked kernels cost little memory while idle (~25 MiB
/// private) and start fast, so more of them are kept ahead than of cold ones.
const POOL_SIZE_FORKED: usize = 8;
const POOL_SIZE_COLD: usize = 2;
pub use template::TemplateState;

#[derive(Debug, Clone)]
pub struct PythonSettings {
    /// `KERNEL_POOL_SIZE`; unset: [`POOL_SIZE_FORKED`] or [`POOL_SIZE_COLD`].
    pub pool_size: Option<usize>,
    pub max_kernels: usize,
    pub idle_shutdown: Duration,
    pub preload: Vec<String>,
    pub limits: Limits,
    pub queue_wait: Duration,
    pub max_output_bytes: u64,
    /// `KERNEL_MAX_MESSAGE_BYTES`: the most a kernel's message may take.
    pub max_message_bytes: u64,
    /// `PYTHON_KERNEL_FORK`: fork kernels from a preloaded template where that is safe.
    pub fork: bool,
}

struct LiveKernel {
    kernel: Kernel,
    last_used: Mutex<Instant>,
    busy: AtomicBool,
    argv: Mutex<Vec<String>>,
    /// No cell has run in it yet.
    fresh: AtomicBool,
    /// What the session lost before this kernel: said once, by its first cell.
    lost_before: Mutex<Option<&'static str>>,
}

/// What this process knows of one session's kernel. A session it has run no kernel for
/// has no entry.
enum KernelState {
    /// A kernel serves the session (idle or running a cell).
    Live(Arc<LiveKernel>),
    /// Its kernel is gone (died, evicted, reaped, broke the protocol; or the server
    /// restarted): the session's next cell starts with a line saying why.
    Lost(&'static str),
    /// The client restarted it: the next cell starts a kernel, and there is nothing to say.
    Restarted,
}

/// Every session's [`KernelState`], in one table under one lock.
#[derive(Default)]
struct Kernels(HashMap<String, KernelState>);

impl Kernels {
    fn live(&self, session_id: &str) -> Option<Arc<LiveKernel>> {
        match self.0.get(session_id) {
            Some(KernelState::Live(k)) => Some(Arc::clone(k)),
            _ => None,
        }
    }

    fn lives(&self) -> impl Iterator<Item = (&String, &Arc<LiveKernel>)> {
        self.0.iter().filter_map(|(sid, state)| match state {
            KernelState::Live(k) => Some((sid, k)),
            _ => None,
        })
    }

    /// Put `state` in the session's place; the kernel it had, if it had one live.
    fn set(&mut self, session_id: &str, state: KernelState) -> Option<Arc<LiveKernel>> {
        match self.0.insert(session_id.to_owned(), state) {
            Some(KernelState::Live(k)) => Some(k),
            _ => None,
        }
    }

    /// The session's kernel is gone for `reason`; shut down what is left of it.
    fn lose(&mut self, session_id: &str, reason: &'static str) {
        if let Some(k) = self.set(session_id, KernelState::Lost(reason)) {
            k.kernel.shutdown();
        }
    }
}

struct Pooled {
    kernel: Box<Kernel>,
    dir: PathBuf,
    /// For a forked kernel, the template it came from (`KernelTemplate::generation`).
    template: Option<u64>,
}

pub struct PythonRuntime {
    sandbox: Arc<Sandbox>,
    process: Arc<ProcessRuntime>,
    sockets_root: PathBuf,
    pool_dir: PathBuf,
    settings: PythonSettings,
    /// Sessions' turns: a kernel is evicted or reaped only while its session's turn is free.
    turns: Arc<SessionTurns>,
    kernels: Mutex<Kernels>,
    pool: Mutex<Vec<Pooled>>,
    /// Kernels kept ahead (`KERNEL_POOL_SIZE`, or its default for how kernels start here).
    pool_size: usize,
    starting: AtomicUsize,
    /// Pooled starts that may run at once (one per CPU, at least two).
    max_starting: usize,
    /// New sessions waiting for a pooled kernel: each asks for one more start (forked only).
    waiting: AtomicUsize,
    /// Woken whenever a pooled kernel's start ends (landed in the pool or failed).
    pool_ready: tokio::sync::Notify,
    /// Kernels being started or claimed for a session: they count against `MAX_SESSIONS`.
    reserved: AtomicUsize,
    /// Where kernels are forked from, when they are.
    template: Option<KernelTemplate>,
}

#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("all {0} Python kernels are busy; try again shortly")]
    Busy(usize),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Traceback lines come with terminal colours; clients get plain text.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl PythonRuntime {
    pub fn new(
        sandbox: Arc<Sandbox>,
        process: Arc<ProcessRuntime>,
        data_dir: &Path,
        settings: PythonSettings,
        turns: Arc<SessionTurns>,
    ) -> std::io::Result<Arc<Self>> {
        // ipc socket paths must stay short (107 bytes): a fixed root, not DATA_DIR.
        let sockets_root = if rustix::process::geteuid().is_root() {
            PathBuf::from("/run/code-interpreter")
        } else {
            // Not TMPDIR: the path must stay short, and only `config` reads the environment.
            PathBuf::from("/tmp").join(format!(
                "code-interpreter-{}",
                rustix::process::getuid().as_raw()
            ))
        };
        let sockets_root = kernel::instance_dir(&sockets_root)?;
        // Pooled workspaces must be on the same filesystem as the sessions' (a claim renames).
        let pool_dir = data_dir.join("pool");
        if pool_dir.exists() {
            std::fs::remove_dir_all(&pool_dir)?;
        }
        std::fs::create_dir_all(&pool_dir)?;
        std::fs::set_permissions(
            &pool_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )?;
        let template = match (settings.fork, sandbox.can_fork()) {
            (true, true) => Some(KernelTemplate::new(
                Arc::clone(&sandbox),
                &process.runtime_dir().join("python/bin/python"),
                kernel_env(&process),
                &settings.preload,
                process.runtime_mounts(),
                settings.limits,
                [crate::sandbox::WORKSPACE, kernel::SOCKETS_INSIDE],
            )),
            (true, false) => {
                tracing::info!(
                    "Python kernels start cold: forking from a template needs bwrap, root and writable cgroups"
                );
                None
            }
            (false, _) => None,
        };
        let pool_size = settings.pool_size.unwrap_or(if template.is_some() {
            POOL_SIZE_FORKED
        } else {
            POOL_SIZE_COLD
        });
        let max_starting = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .max(2);
        Ok(Arc::new(PythonRuntime {
            template,
            sandbox,
            process,
            sockets_root,
            pool_dir,
            settings,
            turns,
            kernels: Mutex::default(),
            pool: Mutex::default(),
            pool_size,
            starting: AtomicUsize::new(0),
            max_starting,
            waiting: AtomicUsize::new(0),
            pool_ready: tokio::sync::Notify::new(),
            reserved: AtomicUsize::new(0),
        }))
    }

    async fn launch(&self, workspace: &Path) -> Result<Kernel, RuntimeError> {
        // Fails with Unavailable when the Python environment is missing.
        self.process.version(Language::PYTHON).await?;
        let python = self.process.runtime_dir().join("python/bin/python");
        let spec = || KernelSpec {
            python: &python,
            sockets_root: &self.sockets_root,
            workspace,
            env: kernel_env(&self.process),
            mounts: self.process.runtime_mounts(),
            limits: self.settings.limits,
            max_message_bytes: self.settings.max_message_bytes,
        };
        if let Some(template) = self.template.as_ref().filter(|t| t.usable()) {
            match Kernel::launch(&self.sandbox, spec(), Some(template)).await {
                Ok(kernel) => return Ok(kernel),
                Err(err) => {
                    tracing::warn!(error = %err, "could not fork a kernel; starting one cold")
                }
            }
        }
        Kernel::launch(&self.sandbox, spec(), None)
            .await
            .map_err(|e| RuntimeError::Io(std::io::Error::other(e.to_string())))
    }

    /// The kernel template's state and how often it was restarted, for `/health`.
    pub fn template_state(&self) -> (TemplateState, u64) {
        match &self.template {
            Some(t) => (t.state(), t.restarts()),
            None => (TemplateState::Off, 0),
        }
    }

    /// Keep the pool full, and start one more kernel for each session waiting for one, in
    /// the background: at most `max_starting` at once.
    pub fn refill(self: &Arc<Self>) {
        loop {
            let starting = self.starting.load(Ordering::SeqCst);
            let want = self.pool_size + self.waiting.load(Ordering::SeqCst);
            if lock(&self.pool).len() + starting >= want || starting >= self.max_starting {
                return;
            }
            if self
                .starting
                .compare_exchange(starting, starting + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let landed = match this.start_pooled().await {
                    Ok(p) => {
                        // Started for a session that gave up waiting meanwhile (it started
                        // its own) while the pool is full: not kept, or the pool would grow
                        // past KERNEL_POOL_SIZE for good.
                        let wanted = this.pool_size + this.waiting.load(Ordering::SeqCst);
                        let mut pool = lock(&this.pool);
                        if pool.len() < wanted {
                            pool.push(p);
                            true
                        } else {
                            drop(pool);
                            p.kernel.shutdown();
                            this.discard_pool_dir(&p.dir);
                            false
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "could not start a pooled kernel");
                        false
                    }
                };
                this.starting.fetch_sub(1, Ordering::SeqCst);
                this.pool_ready.notify_waiters();
                // After a failure, waiting sessions start their own (and see its error).
                if landed {
                    this.refill();
                }
            });
        }
    }

    async fn start_pooled(&self) -> Result<Pooled, RuntimeError> {
        let dir = self.pool_dir.join(crate::session::new_id());
        std::fs::create_dir(&dir)?;
        // A uid of its own, which the session that claims it takes over.
        if let Some(uids) = self.sandbox.uids() {
            let uid = uids.allocate();
            std::os::unix::fs::chown(&dir, Some(uid), Some(uid))?;
        }
        let kernel = match self.launch(&dir).await {
            Ok(k) => k,
            Err(e) => {
                self.discard_pool_dir(&dir);
                return Err(e);
            }
        };
        // A forked kernel has the preloads already: the template imported them.
        if !self.settings.preload.is_empty() && !kernel.forked() {
            let code = format!("import {}", self.settings.preload.join(", "));
            let (tx, _rx) = mpsc::channel(16);
            let deadline = Instant::now() + Duration::from_secs(120);
            // Best effort: a module that fails to import is simply not preloaded.
            let _ = kernel
                .execute(&code, true, deadline, &CancellationToken::new(), &tx)
                .await;
        }
        // Read after the fork: a template that died since makes it a number that no longer
        // matches, so the kernel (which died with it) is never handed out.
        let template = self
            .template
            .as_ref()
            .filter(|_| kernel.forked())
            .map(KernelTemplate::generation);
        Ok(Pooled {
            kernel: Box::new(kernel),
            dir,
            template,
        })
    }

    /// Remove a pooled kernel's directory and give its uid back.
    fn discard_pool_dir(&self, dir: &Path) {
        let owner = crate::sandbox::owner_of(dir);
        let _ = std::fs::remove_dir_all(dir);
        if let (Some(uids), Ok(uid)) = (self.sandbox.uids(), owner) {
            uids.release(uid);
        }
    }

    /// Move the session's files into a pooled kernel's directory and put that directory
    /// in the session's place; the files and the session take the kernel's uid. `Err` gives
    /// the kernel back when the swap cannot be made.
    fn claim(&self, pooled: Pooled, workspace: &Path) -> Result<Box<Kernel>, Pooled> {
        let old_owner = crate::sandbox::owner_of(workspace);
        let moved: Vec<PathBuf> = match std::fs::read_dir(workspace) {
            Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
            Err(_) => return Err(pooled),
        };
        let mut done = Vec::with_capacity(moved.len());
        for from in &moved {
            let Some(name) = from.file_name() else {
                continue;
            };
            let to = pooled.dir.join(name);
            if std::fs::rename(from, &to).is_err() {
                break;
            }
            done.push((from.clone(), to));
        }
        if done.len() == moved.len() && std::fs::rename(&pooled.dir, workspace).is_ok() {
            if let (Some(uids), Ok(old), Ok(new)) = (
                self.sandbox.uids(),
                old_owner,
                crate::sandbox::owner_of(workspace),
            ) && old != new
            {
                if let Err(err) = crate::store::give_tree(workspace, new) {
                    tracing::warn!(error = %err, "could not hand a session's files to its kernel's uid");
                }
                uids.release(old);
            }
            return Ok(pooled.kernel);
        }
        // Something raced us (an upload landed meanwhile): put everything back.
        for (from, to) in done.into_iter().rev() {
            let _ = std::fs::rename(&to, &from);
        }
        Err(pooled)
    }

    /// Whether one more kernel may live now, evicting the least recently used idle one
    /// when needed. With `reserve`, the slot is taken (see `Reservation`).
    fn try_room(&self, reserve: bool) -> bool {
        let mut kernels = lock(&self.kernels);
        if kernels.lives().count() + self.reserved.load(Ordering::SeqCst)
            < self.settings.max_kernels
        {
            if reserve {
                self.reserved.fetch_add(1, Ordering::SeqCst);
            }
            return true;
        }
        let victim = kernels
            .lives()
            .filter(|(_, k)| !k.busy.load(Ordering::SeqCst))
            .min_by_key(|(_, k)| *lock(&k.last_used))
            .map(|(sid, _)| sid.clone());
        let Some(sid) = victim else { return false };
        // Evict only in the session's turn: a run about to use the kernel keeps it.
        let Some(_turn) = self.turns.try_take(&sid) else {
            return false;
        };
        if reserve {
            kernels.lose(
                &sid,
                "it was shut down to make room for other sessions (MAX_SESSIONS)",
            );
            self.reserved.fetch_add(1, Ordering::SeqCst);
        }
        true
    }

    /// Wait up to `QUEUE_WAIT_SECONDS` for room when every kernel is busy.
    async fn wait_for_room(&self, reserve: bool) -> Result<(), PythonError> {
        let until = Instant::now() + self.settings.queue_wait;
        loop {
            if self.try_room(reserve) {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(PythonError::Busy(self.settings.max_kernels));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether this server holds a live kernel for the session.
    pub fn holds(&self, session_id: &str) -> bool {
        lock(&self.kernels).live(session_id).is_some()
    }

    /// Answer "busy" before a call starts (so the client gets a 429, not a failed run).
    pub async fn check_room(&self, session_id: &str) -> Result<(), PythonError> {
        if lock(&self.kernels).live(session_id).is_some() {
            return Ok(());
        }
        self.wait_for_room(false).await
    }

    /// A live kernel from the pool, moved to `workspace`, if one is there.
    fn take_pooled(&self, workspace: &Path) -> Option<Box<Kernel>> {
        loop {
            let pooled = lock(&self.pool).pop()?;
            // A fork dies with its template's PID namespace, and can be dying still.
            let orphan = pooled.template.is_some_and(|forked_from| {
                self.template.as_ref().map(KernelTemplate::generation) != Some(forked_from)
            });
            if orphan || !pooled.kernel.is_alive() {
                self.discard_pool_dir(&pooled.dir);
                continue;
            }
            return match self.claim(pooled, workspace) {
                Ok(k) => Some(k),
                Err(back) => {
                    lock(&self.pool).push(back);
                    None
                }
            };
        }
    }

    /// The session's kernel, started or claimed as needed. `had_kernel` says the session had
    /// a kernel before, perhaps in a server process that is gone.
    async fn kernel_for(
        self: &Arc<Self>,
        session_id: &str,
        had_kernel: bool,
        workspace: &Path,
    ) -> Result<Arc<LiveKernel>, PythonError> {
        let existing = {
            let mut kernels = lock(&self.kernels);
            if had_kernel {
                // A kernel of another server process: this one has no entry for the session.
                kernels
                    .0
                    .entry(session_id.to_owned())
                    .or_insert(KernelState::Lost(
                        "the server restarted since its last call",
                    ));
            }
            kernels.live(session_id)
        };
        if let Some(k) = existing {
            if k.kernel.is_alive() {
                return Ok(k);
            }
            let reason = match k.kernel.broken_reason() {
                Some(_) => "its kernel broke the Jupyter protocol and was stopped",
                None => "its kernel stopped",
            };
            lock(&self.kernels).lose(session_id, reason);
        }
        self.wait_for_room(true).await?;
        let _reservation = Reservation(&self.reserved);
        let until = tokio::time::Instant::now() + POOL_WAIT;
        // Forks are cheap and their starts bounded: a waiting session asks for one more.
        let waiting = self
            .template
            .is_some()
            .then(|| Waiting::enter(&self.waiting));
        self.refill();
        let kernel = loop {
            // Registered before the pool is looked at, so a kernel landing meanwhile wakes it.
            let landed = self.pool_ready.notified();
            tokio::pin!(landed);
            landed.as_mut().enable();
            if let Some(k) = self.take_pooled(workspace) {
                break Some(k);
            }
            // A kernel on its way is ready sooner than one started now, which would also
            // take the CPU from it.
            if self.starting.load(Ordering::SeqCst) == 0
                || tokio::time::timeout_at(until, landed).await.is_err()
            {
                break None;
            }
        };
        drop(waiting);
        let kernel = match kernel {
            Some(k) => *k,
            None => self.launch(workspace).await?,
        };
        self.refill();
        let live = Arc::new(LiveKernel {
            kernel,
            last_used: Mutex::new(Instant::now()),
            busy: AtomicBool::new(false),
            // What the start-up code set (startup.py).
            argv: Mutex::new(vec!["main.py".to_owned()]),
            fresh: AtomicBool::new(true),
            lost_before: Mutex::new(None),
        });
        let mut kernels = lock(&self.kernels);
        if let Some(KernelState::Lost(reason)) = kernels.0.get(session_id) {
            *lock(&live.lost_before) = Some(reason);
        }
        kernels.set(session_id, KernelState::Live(Arc::clone(&live)));
        Ok(live)
    }

    /// Have the session's kernel live (started or claimed as needed) before its cell's run
    /// takes a run slot, so that starting kernels hold none. Call in the session's turn.
    pub async fn ready(
        self: &Arc<Self>,
        session_id: &str,
        had_kernel: bool,
        workspace: &Path,
    ) -> Result<(), PythonError> {
        self.kernel_for(session_id, had_kernel, workspace)
            .await
            .map(drop)
    }

    /// Run a cell in the session's kernel (started or claimed as needed, see
    /// [`Self::ready`]). Also says whether the kernel was started for this cell (nothing of
    /// the session's state in it).
    #[allow(clippy::too_many_arguments)]
    pub async fn execute(
        self: &Arc<Self>,
        session_id: &str,
        had_kernel: bool,
        workspace: &Path,
        code: &str,
        args: &[String],
        timeout: Duration,
        cancel: &CancellationToken,
        events: &mpsc::Sender<RunEvent>,
    ) -> Result<(RunOutcome, bool), PythonError> {
        let started = Instant::now();
        let live = self.kernel_for(session_id, had_kernel, workspace).await?;
        live.busy.store(true, Ordering::SeqCst);
        let _idle_again = scopeguard(&live);
        let fresh = live.fresh.swap(false, Ordering::SeqCst);
        let lost_before = lock(&live.lost_before).take();
        if let Some(reason) = lost_before {
            let line = format!(
                "[kernel] The previous Python state of this session was lost: {reason}. Files in /mnt/data are kept; variables and imports must be recreated.\n"
            );
            let _ = events.send(RunEvent::Stderr(Bytes::from(line))).await;
        }
        let handle = live.kernel.handle();
        handle.reset_peak_memory();
        let cpu_before = handle.cpu_time();
        let forks_refused_before = handle.process_limit_hits();
        let deadline = started + timeout;

        // sys.argv[1:] are the request's args (only set when they change).
        let argv: Vec<String> = std::iter::once("main.py".to_owned())
            .chain(args.iter().cloned())
            .collect();
        if *lock(&live.argv) != argv {
            let set = format!(
                "import sys as __ci_sys; __ci_sys.argv = {}; del __ci_sys",
                serde_json::to_string(&argv).unwrap_or_default()
            );
            let (tx, _rx) = mpsc::channel(4);
            let _ = live.kernel.execute(&set, true, deadline, cancel, &tx).await;
            *lock(&live.argv) = argv;
        }

        // Small: every event may be a big message (see kernel.rs on what a kernel may hold).
        let (ktx, mut krx) = mpsc::channel::<KernelEvent>(8);
        let mut cap = OutputCap::new(self.settings.max_output_bytes);
        // `sys.exit(n)` in a cell surfaces as a SystemExit error: n is the exit code.
        let system_exit = Arc::new(Mutex::new(None::<i32>));
        // Cancelled at the output cap: the cell is interrupted like a cancelled one, and its
        // kernel killed if the interrupt does not end it within the grace period (a kernel
        // interrupted inside its own output machinery may never answer).
        let cut = cancel.child_token();
        let forward = {
            let events = events.clone();
            let system_exit = Arc::clone(&system_exit);
            let cut = cut.clone();
            async move {
                while let Some(ev) = krx.recv().await {
                    let event = match ev {
                        KernelEvent::Stream { name, mut text } => {
                            let stream = if name == "stderr" {
                                Stream::Stderr
                            } else {
                                Stream::Stdout
                            };
                            let admitted = cap.admit(stream, text.as_bytes());
                            if admitted.take == 0 && admitted.cut.is_none() {
                                continue;
                            }
                            text.truncate(admitted.take);
                            if let Some(marker) = admitted.cut {
                                text.push_str(&marker);
                                cut.cancel();
                            }
                            stream.event(Bytes::from(text))
                        }
                        KernelEvent::Display { data, result } => RunEvent::Display { data, result },
                        KernelEvent::Error {
                            ename,
                            evalue,
                            traceback,
                        } => {
                            if ename == "SystemExit" {
                                *lock(&system_exit) = Some(evalue.trim().parse().unwrap_or(1));
                            }
                            RunEvent::Error {
                                ename,
                                evalue,
                                traceback: traceback.iter().map(|l| strip_ansi(l)).collect(),
                            }
                        }
                    };
                    let _ = events.send(event).await;
                }
                cap.passed()
            }
        };
        let run = async {
            let end = live.kernel.execute(code, false, deadline, &cut, &ktx).await;
            drop(ktx);
            end
        };
        let (end, overflowed) = tokio::join!(run, forward);
        let end = end.unwrap_or(CellEnd::Died);

        let oom = handle.oom_killed();
        let limit = |stop: Stop, after: Aftermath| Some(stop.message(after));
        let overflow = overflowed.map(|stream| Stop::Output {
            stream,
            cap: self.settings.max_output_bytes,
        });
        let (status, message, lost) = match (end, overflow) {
            (CellEnd::Interrupted | CellEnd::Killed, _) if cancel.is_cancelled() => (
                RunStatus::Killed,
                limit(Stop::Cancelled, Aftermath::Interrupted),
                (end == CellEnd::Killed).then_some("the kernel was restarted after a cancelled cell ignored its interrupt"),
            ),
            (CellEnd::Killed, Some(stop)) => (
                stop.status(),
                limit(stop, Aftermath::KernelLost),
                Some("the kernel was restarted after a cell past the output limit ignored its interrupt"),
            ),
            (_, Some(stop)) => (stop.status(), limit(stop, Aftermath::Interrupted), None),
            (CellEnd::Finished { ok }, None) => (if ok { RunStatus::Success } else { RunStatus::Error }, None, None),
            (CellEnd::Interrupted, None) => (
                RunStatus::Timeout,
                limit(Stop::Time(timeout), Aftermath::Interrupted),
                None,
            ),
            (CellEnd::Killed, None) => (
                RunStatus::Timeout,
                limit(Stop::Time(timeout), Aftermath::KernelLost),
                Some("the kernel was restarted after a timeout"),
            ),
            (CellEnd::Died, None) if oom => (
                RunStatus::Killed,
                limit(Stop::Memory(self.settings.limits.memory_bytes), Aftermath::KernelLost),
                Some("the kernel was killed by the memory limit"),
            ),
            (CellEnd::ProtocolBroken, None) => (
                RunStatus::Error,
                Some(format!(
                    "The kernel sent data that breaks the Jupyter protocol ({}), so it was stopped: its state was lost (files are kept).",
                    live.kernel.broken_reason().unwrap_or_default()
                )),
                Some("its kernel broke the Jupyter protocol and was stopped"),
            ),
            (CellEnd::Died, None) => (
                RunStatus::Error,
                Some("The Python kernel exited during this cell (os._exit, a crash or a signal): its state was lost (files are kept).".to_owned()),
                Some("the kernel exited"),
            ),
        };
        // A fork refused at the process limit during the cell is reported as the limit,
        // like a one-shot run's, whatever the cell made of the failure.
        let forks_refused = lost.is_none() && handle.process_limit_hits() > forks_refused_before;
        let (status, message) = match status {
            RunStatus::Success | RunStatus::Error if forks_refused => {
                let stop = Stop::Processes(self.settings.limits.processes);
                (stop.status(), Some(stop.message(Aftermath::Interrupted)))
            }
            _ => (status, message),
        };
        let cpu_time = match (cpu_before, handle.cpu_time()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let peak_memory = handle.peak_memory();
        if let Some(reason) = lost {
            lock(&self.kernels).lose(session_id, reason);
        }
        let exit_code = match status {
            RunStatus::Success => Some(0),
            RunStatus::Error if lost.is_none() => Some(lock(&system_exit).unwrap_or(1)),
            _ => None,
        };
        // `sys.exit(0)` is a clean end, not an error.
        let status = if exit_code == Some(0) {
            RunStatus::Success
        } else {
            status
        };
        let outcome = RunOutcome {
            status,
            exit_code,
            signal: None,
            message,
            wall_time: started.elapsed(),
            cpu_time,
            peak_memory,
        };
        Ok((outcome, fresh))
    }

    /// Interrupt the session's running cell; false when it has no live kernel. While that
    /// cell has not ended, the interrupt is sent again for a while (see `INTERRUPT_AGAIN`:
    /// one SIGINT now and then does not wake a sleeping cell).
    pub async fn interrupt(&self, session_id: &str) -> bool {
        let Some(live) = lock(&self.kernels).live(session_id) else {
            return false;
        };
        let cell = live.kernel.running_cell();
        if live.kernel.interrupt().await.is_err() {
            return false;
        }
        if let Some(cell) = cell {
            tokio::spawn(async move {
                let until = Instant::now() + kernel::INTERRUPT_GRACE;
                while Instant::now() < until {
                    tokio::time::sleep(kernel::INTERRUPT_AGAIN).await;
                    if live.kernel.running_cell() != Some(cell) {
                        break;
                    }
                    let _ = live.kernel.interrupt().await;
                }
            });
        }
        true
    }

    /// Hand a control-channel message to the session's kernel (for a handler its running
    /// cell installed); false when it has no live kernel.
    pub async fn notify(
        &self,
        session_id: &str,
        msg_type: &str,
        content: serde_json::Value,
    ) -> bool {
        let live = lock(&self.kernels).live(session_id);
        match live {
            Some(k) => k.kernel.send_control(msg_type, content).await.is_ok(),
            None => false,
        }
    }

    /// Shut the session's kernel down; the next call starts a fresh one. Files stay.
    pub fn restart(&self, session_id: &str) -> bool {
        let removed = lock(&self.kernels).set(session_id, KernelState::Restarted);
        match removed {
            Some(k) => {
                k.kernel.shutdown();
                true
            }
            None => false,
        }
    }

    /// The session's kernel here no longer holds its state (the session ran on another
    /// node since): shut it down, and tell the session so on its next call.
    pub fn lose(&self, session_id: &str, reason: &'static str) {
        let mut kernels = lock(&self.kernels);
        if kernels.live(session_id).is_some() {
            kernels.lose(session_id, reason);
        }
    }

    /// The session's kernel was on a node that is gone: its next cell here says so (a kernel
    /// this node may still hold for it is older than the session's state, and is shut down).
    pub fn mark_lost(&self, session_id: &str, reason: &'static str) {
        lock(&self.kernels).lose(session_id, reason);
    }

    /// Forget a deleted or expired session, with its kernel.
    pub fn forget(&self, session_id: &str) {
        if let Some(KernelState::Live(k)) = lock(&self.kernels).0.remove(session_id) {
            k.kernel.shutdown();
        }
    }

    pub fn live_kernels(&self) -> usize {
        lock(&self.kernels).lives().count()
    }

    pub fn pooled_kernels(&self) -> usize {
        lock(&self.pool).len()
    }

    /// How many kernels the pool is kept at.
    pub fn pool_size(&self) -> usize {
        self.pool_size
    }

    /// Shut down kernels idle for longer than `KERNEL_IDLE_SECONDS`, now and then.
    pub fn spawn_idle_reaper(self: &Arc<Self>) {
        let this = Arc::clone(self);
        let every = (this.settings.idle_shutdown / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let idle: Vec<String> = lock(&this.kernels)
                    .lives()
                    .filter(|(_, k)| {
                        !k.busy.load(Ordering::SeqCst)
                            && lock(&k.last_used).elapsed() > this.settings.idle_shutdown
                    })
                    .map(|(sid, _)| sid.clone())
                    .collect();
                for sid in idle {
                    let Some(_turn) = this.turns.try_take(&sid) else {
                        continue;
                    };
                    lock(&this.kernels).lose(
                        &sid,
                        "its kernel was shut down after being idle (KERNEL_IDLE_SECONDS)",
                    );
                }
            }
        });
    }
}

/// The environment of every kernel (and of the template they are forked from).
fn kernel_env(process: &ProcessRuntime) -> Vec<(String, String)> {
    let mut env = process.env();
    env.retain(|(k, _)| k != "MPLBACKEND");
    env.push((
        "MPLBACKEND".into(),
        "module://matplotlib_inline.backend_inline".into(),
    ));
    env.push(("IPYTHONDIR".into(), "/tmp/ipython".into()));
    env.push(("PYDEVD_DISABLE_FILE_VALIDATION".into(), "1".into()));
    env
}

/// A slot counted against `MAX_SESSIONS` while its kernel starts; given back when dropped
/// (by then the kernel is in `kernels`, or failed).
struct Reservation<'a>(&'a AtomicUsize);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A session counted in `waiting` until dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Marks the kernel idle and used-now when a call ends, however it ends.
struct IdleAgain<'a>(&'a LiveKernel);

fn scopeguard(live: &LiveKernel) -> IdleAgain<'_> {
    IdleAgain(live)
}

impl Drop for IdleAgain<'_> {
    fn drop(&mut self) {
        *lock(&self.0.last_used) = Instant::now();
        self.0.busy.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_colours_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[0;31mValueError\u{1b}[0m: bad"),
            "ValueError: bad"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
