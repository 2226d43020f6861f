//! One ipykernel in its sandbox, and the client side of the Jupyter protocol: launch,
//! readiness, `execute_request` with every output matched on `parent_header.msg_id`,
//! interrupt over the control channel, and death detection.
//!
//! The kernel listens on `ipc` sockets in a short per-kernel directory on the host, bound
//! at `/run/kernel` inside the sandbox (its network namespace has no interfaces, so TCP is
//! not an option). Socket paths must stay under 107 bytes. Once the kernel has made its
//! sockets the directory becomes the server's and read-only to the kernel, so nothing can
//! be stored there or swapped in.
//!
//! User code shares the kernel's process, so it can write anything into the connections
//! the server reads. What the server keeps per kernel is bounded: one message being read
//! (`zmtp`, at most `KERNEL_MAX_MESSAGE_BYTES`), and routed messages waiting for their
//! cell (a budget of [`ROUTED_BUDGET_MESSAGES`] such messages). A kernel that breaks the
//! protocol is killed; its cell and session are told so.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::template::KernelTemplate;
use super::wire::{Codec, Message, WireError};
use super::zmtp::{self, Incoming, ZmtpError};
use crate::sandbox::{Handle, Job, Limits, Mount, Sandbox};

/// Where the socket directory appears inside the sandbox.
pub const SOCKETS_INSIDE: &str = "/run/kernel";
/// Channel ports; with `ipc` they are suffixes of the socket path (`k-1` …).
const PORTS: [(&str, u16); 5] = [
    ("shell_port", 1),
    ("iopub_port", 2),
    ("stdin_port", 3),
    ("control_port", 4),
    ("hb_port", 5),
];
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Run silently in every new kernel (see the file for what and why); a forked kernel runs it
/// itself before it serves (the template has it).
pub(super) const STARTUP: &str = include_str!("startup.py");
/// How long an interrupted cell gets to finish before the kernel is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(3);
/// While an interrupted cell has not ended, the interrupt is sent again this often. ipykernel
/// answers `interrupt_request` with a SIGINT to its own process; now and then Linux hands it
/// to one of the kernel's other threads, Python only notes it, and a main thread asleep in
/// `time.sleep` sleeps on (measured here with a bare jupyter_client: 3 in 410 interrupts sent
/// right after a flushed print). The next SIGINT wakes it.
pub(super) const INTERRUPT_AGAIN: Duration = Duration::from_millis(500);
/// Routed messages waiting for their cell may hold this many maximal messages' worth of
/// memory; past it the kernel's readers wait (and the kernel's own queues fill).
const ROUTED_BUDGET_MESSAGES: u64 = 2;
/// Messages waiting for their cell, at most (small ones; the byte budget bounds big ones).
const ROUTED_QUEUE: usize = 256;
/// The routing budget in permits; one permit is `ROUTED_BUDGET_MESSAGES × limit / PERMITS`
/// bytes.
const PERMITS: u32 = 1 << 16;
/// How long a dead kernel's last messages may take to be read before its cell is told.
const DRAIN_AFTER_DEATH: Duration = Duration::from_secs(1);
/// Messages bigger than this are checked and parsed on a blocking thread.
const BLOCKING_DECODE_BYTES: usize = 256 * 1024;
/// How much of the kernel process's own stdout/stderr is read (and logged) at once.
const LOG_CHUNK: usize = 8 * 1024;

/// Output of a cell as the kernel reports it.
#[derive(Debug, Clone)]
pub enum KernelEvent {
    Stream {
        name: String,
        text: String,
    },
    /// `display_data` (`result: false`) or `execute_result` (`result: true`): a MIME bundle.
    Display {
        data: Value,
        result: bool,
    },
    Error {
        ename: String,
        evalue: String,
        traceback: Vec<String>,
    },
}

/// How a cell ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellEnd {
    /// The kernel finished it; `ok` is false after an exception.
    Finished { ok: bool },
    /// The deadline passed and the interrupt stopped it: the kernel's state is kept.
    Interrupted,
    /// The deadline passed and the interrupt did not land: the kernel was killed.
    Killed,
    /// The kernel process died during the cell (os._exit, a crash, the memory limit).
    Died,
    /// The kernel sent what no Jupyter kernel sends and was killed for it.
    ProtocolBroken,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("the kernel's sandbox failed: {0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("the kernel did not start: {0}")]
    Start(String),
    #[error("kernel I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the kernel is gone")]
    Gone,
}

/// What a reader hands to the cell waiting for it.
enum Routed {
    /// A message with its share of the kernel's routing budget.
    Message(Message, #[allow(dead_code)] OwnedSemaphorePermit),
    /// A message too big to keep was thrown away.
    Dropped { bytes: u64 },
}

type Routes = Arc<Mutex<HashMap<String, mpsc::Sender<Routed>>>>;

/// What a kernel launch needs from its owner.
pub struct KernelSpec<'a> {
    pub python: &'a Path,
    pub sockets_root: &'a Path,
    pub workspace: &'a Path,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub limits: Limits,
    /// `KERNEL_MAX_MESSAGE_BYTES`.
    pub max_message_bytes: u64,
}

pub struct Kernel {
    codec: Codec,
    shell: tokio::sync::Mutex<zmtp::Sender>,
    control: tokio::sync::Mutex<zmtp::Sender>,
    /// Never written after the subscription, but dropping it would end the connection.
    _iopub: zmtp::Sender,
    routes: Routes,
    alive: watch::Receiver<bool>,
    /// A pidfd of the process whose end is the kernel's end: `is_alive` asks it directly,
    /// so a call that comes before the watcher task ran never gets a dead kernel.
    exit: Option<OwnedFd>,
    handle: Arc<Handle>,
    socket_dir: PathBuf,
    readers: Vec<tokio::task::JoinHandle<()>>,
    broken: Broken,
    max_message_bytes: u64,
    /// Forked from the template (which imported `PYTHON_PRELOAD`), not started cold.
    forked: bool,
    /// Cells sent to this kernel so far; `running` is the number of the one not ended yet
    /// (0: none).
    cells: AtomicU64,
    running: AtomicU64,
}

/// Why the kernel was stopped for breaking the protocol, once it was.
type Broken = Arc<Mutex<Option<String>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a channel's reader shares with the kernel.
struct ReaderContext {
    channel: &'static str,
    codec: Codec,
    routes: Routes,
    budget: Arc<Semaphore>,
    /// One permit stands for this many bytes (`Semaphore` counts in `u32`).
    permit_bytes: u64,
    broken: Broken,
    handle: Arc<Handle>,
}

impl ReaderContext {
    /// Read one channel until it ends. A message goes to whoever waits for its parent's
    /// `msg_id`; anything a real kernel never sends kills the kernel.
    async fn run(self, mut rx: zmtp::Receiver) {
        loop {
            let frames = match rx.recv().await {
                Ok(Incoming::Message(frames)) => frames,
                Ok(Incoming::Dropped { bytes }) => {
                    self.dropped(bytes);
                    continue;
                }
                Err(ZmtpError::Violation(v)) => return self.break_off(v.to_string()),
                Err(_) => return, // The kernel is gone; the watcher tells its cell.
            };
            match self.decode(frames).await {
                Ok(message) => self.deliver(message).await,
                Err(WireError::TooLarge { bytes }) => self.dropped(bytes),
                Err(err) => return self.break_off(err.to_string()),
            }
        }
    }

    async fn decode(&self, frames: Vec<Bytes>) -> Result<Message, WireError> {
        let size: usize = frames.iter().map(Bytes::len).sum();
        if size < BLOCKING_DECODE_BYTES {
            return self.codec.decode(frames);
        }
        // Hashing and parsing megabytes would hold up a runtime thread.
        let codec = self.codec.clone();
        tokio::task::spawn_blocking(move || codec.decode(frames))
            .await
            .unwrap_or(Err(WireError::NoDelimiter))
    }

    async fn deliver(&self, message: Message) {
        let Some(tx) = message
            .parent_id()
            .and_then(|parent| lock(&self.routes).get(parent).cloned())
        else {
            return; // Nobody waits for it (an old cell's, or a forgery).
        };
        // A message takes its share of the budget, and never more than all of it.
        let permits = (message.size as u64 / self.permit_bytes + 1).min(u64::from(PERMITS)) as u32;
        let Ok(permit) = Arc::clone(&self.budget).acquire_many_owned(permits).await else {
            return;
        };
        let _ = tx.send(Routed::Message(message, permit)).await;
    }

    /// Tell every waiting cell that one of its outputs was too big to keep.
    fn dropped(&self, bytes: u64) {
        tracing::warn!(
            channel = self.channel,
            bytes,
            "dropped an oversized kernel message"
        );
        for tx in lock(&self.routes).values() {
            let _ = tx.try_send(Routed::Dropped { bytes });
        }
    }

    fn break_off(&self, reason: String) {
        tracing::warn!(channel = self.channel, %reason, "stopping a kernel that broke the protocol");
        lock(&self.broken).get_or_insert(reason);
        self.handle.kill_tree();
    }
}

/// Names the server process that owns an instance directory.
const OWNER_FILE: &str = "server.pid";

/// This server's directory for kernel sockets below `root`: a random name, so that what a
/// sandbox sees of the path (in `/proc/self/mountinfo`) does not give away the server's
/// pid. Directories of servers that no longer run are removed.
pub fn instance_dir(root: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root)?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711))?;
    for entry in std::fs::read_dir(root)?.flatten() {
        // The owner's pid is in the file (or, in the older layout, the directory's name).
        let owner = std::fs::read_to_string(entry.path().join(OWNER_FILE))
            .ok()
            .or_else(|| entry.file_name().to_str().map(str::to_owned))
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        if let Some(pid) = owner
            && !Path::new("/proc").join(pid.to_string()).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = root.join(&crate::session::new_id()[..12]);
    std::fs::create_dir(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
    std::fs::write(dir.join(OWNER_FILE), std::process::id().to_string())?;
    Ok(dir)
}

/// The connected channels, before they become a `Kernel`.
struct Channels {
    codec: Codec,
    shell: zmtp::Sender,
    control: zmtp::Sender,
    iopub: zmtp::Sender,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// Log what the kernel process itself writes to stdout/stderr, in bounded chunks (user code
/// can write there too, without ever ending a line).
pub(super) fn drain_log(
    kernel: String,
    mut pipe: impl tokio::io::AsyncRead + Send + Unpin + 'static,
) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; LOG_CHUNK];
        while let Ok(n @ 1..) = pipe.read(&mut buf).await {
            tracing::debug!(%kernel, "{}", String::from_utf8_lossy(&buf[..n]).trim_end());
        }
    });
}

/// A started kernel's handle, what resolves when it ends, and a pidfd of its end.
type Started = (Handle, BoxFuture<'static, ()>, Option<OwnedFd>);

/// Whether the process behind `pidfd` has ended (a pidfd polls readable from then on).
fn has_ended(pidfd: &OwnedFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(n) if n > 0)
}

impl Kernel {
    /// Start a kernel: forked from `template` when given, else its own sandbox from nothing.
    pub async fn launch(
        sandbox: &Sandbox,
        spec: KernelSpec<'_>,
        template: Option<&KernelTemplate>,
    ) -> Result<Kernel, KernelError> {
        let id = crate::session::new_id()[..12].to_owned();
        let socket_dir = spec.sockets_root.join(&id);
        std::fs::create_dir_all(&socket_dir)?;
        // The kernel runs as its workspace's owner and must create its sockets here.
        if let Some((uid, gid)) = sandbox.user_for(Some(spec.workspace))? {
            std::os::unix::fs::chown(&socket_dir, Some(uid), Some(gid))?;
        }
        let key = crate::session::new_id() + &crate::session::new_id();
        let mut connection = json!({
            "transport": "ipc",
            "ip": format!("{SOCKETS_INSIDE}/k"),
            "key": key,
            "signature_scheme": "hmac-sha256",
            "kernel_name": "python3",
        });
        for (name, port) in PORTS {
            connection[name] = json!(port);
        }
        let connection_file = socket_dir.join("kernel.json");
        std::fs::write(&connection_file, connection.to_string())?;
        std::fs::set_permissions(
            &connection_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )?;

        let t0 = Instant::now();
        let (handle, exited, exit): Started = match template {
            Some(template) => {
                let (handle, pidfd) = template
                    .fork(
                        [spec.workspace, &socket_dir],
                        &spec.limits,
                        &format!("kernel-{id}"),
                    )
                    .await
                    .map_err(KernelError::Start)?;
                let exit = pidfd.try_clone().ok();
                // SAFETY: the `OwnedFd` moves into the `AsyncFd` and stays open, the same
                // descriptor, until the `AsyncFd` is dropped.
                let pidfd = unsafe { tokio::io::unix::AsyncFd::register(pidfd) }
                    .map_err(|e| KernelError::Start(format!("cannot watch the kernel: {e}")))?;
                (
                    handle,
                    Box::pin(async move {
                        let _ = pidfd.readable().await;
                    }),
                    exit,
                )
            }
            None => {
                let mut mounts = spec.mounts;
                mounts.push(Mount::writable(&socket_dir, SOCKETS_INSIDE));
                let job = Job {
                    argv: vec![
                        spec.python.to_string_lossy().into_owned(),
                        "-m".into(),
                        "ipykernel_launcher".into(),
                        "-f".into(),
                        format!("{SOCKETS_INSIDE}/kernel.json"),
                        "--HistoryManager.enabled=False".into(),
                        "--IPKernelApp.quiet=True".into(),
                    ],
                    env: spec.env,
                    workspace: Some(spec.workspace.to_path_buf()),
                    mounts,
                    limits: spec.limits,
                };
                let mut process = sandbox.spawn(&job, &format!("kernel-{id}"))?;
                if let Some(out) = process.child.stdout.take() {
                    drain_log(id.clone(), out);
                }
                if let Some(err) = process.child.stderr.take() {
                    drain_log(id.clone(), err);
                }
                let (mut child, handle) = process.into_parts();
                // The child is ours and not waited for yet, so its pid is still its own.
                let exit = child
                    .id()
                    .and_then(|pid| rustix::process::Pid::from_raw(pid as i32))
                    .and_then(|pid| {
                        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
                    });
                (
                    handle,
                    Box::pin(async move {
                        let _ = child.wait().await;
                    }),
                    exit,
                )
            }
        };
        let spawned_at = t0.elapsed();
        let handle = Arc::new(handle);
        let (alive_tx, alive) = watch::channel(true);
        let routes: Routes = Arc::default();
        let iopub_done = Arc::new(Notify::new());
        let watcher = {
            let routes = Arc::clone(&routes);
            let iopub_done = Arc::clone(&iopub_done);
            tokio::spawn(async move {
                exited.await;
                let _ = alive_tx.send(false);
                // What the kernel sent just before it died (the line before an OOM kill) is
                // still in the socket: let the iopub reader reach the end first.
                let _ = tokio::time::timeout(DRAIN_AFTER_DEATH, iopub_done.notified()).await;
                // Every waiting cell sees its channel close: the kernel died under it.
                lock(&routes).clear();
            })
        };

        let started = Instant::now();
        let broken = Broken::default();
        let connected = tokio::time::timeout(
            START_TIMEOUT,
            Self::connect(
                &socket_dir,
                &key,
                &id,
                &alive,
                &routes,
                &broken,
                &handle,
                &iopub_done,
                spec.max_message_bytes,
            ),
        )
        .await
        .unwrap_or_else(|_| {
            Err(KernelError::Start(
                "its sockets did not answer in time".into(),
            ))
        });
        let mut kernel = match connected {
            Ok(channels) => Kernel {
                codec: channels.codec,
                shell: tokio::sync::Mutex::new(channels.shell),
                control: tokio::sync::Mutex::new(channels.control),
                _iopub: channels.iopub,
                routes,
                alive,
                exit,
                handle,
                socket_dir,
                readers: channels.readers,
                broken,
                max_message_bytes: spec.max_message_bytes,
                forked: template.is_some(),
                cells: AtomicU64::new(0),
                running: AtomicU64::new(0),
            },
            Err(err) => {
                handle.kill_tree();
                watcher.abort();
                let _ = std::fs::remove_dir_all(&socket_dir);
                return Err(err);
            }
        };
        kernel.readers.push(watcher);
        let connected_at = t0.elapsed();
        // The sockets exist and are connected: from now on the kernel may neither add files
        // to its runtime directory nor replace a socket there.
        if sandbox.user().is_some() {
            std::os::unix::fs::chown(&kernel.socket_dir, Some(0), Some(0))?;
            std::fs::set_permissions(
                &kernel.socket_dir,
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )?;
        }
        kernel.wait_ready(started).await?;
        let ready_at = t0.elapsed();
        let (tx, _rx) = mpsc::channel(16);
        let deadline = Instant::now() + START_TIMEOUT;
        if template.is_none()
            && kernel
                .execute(STARTUP, true, deadline, &CancellationToken::new(), &tx)
                .await?
                != (CellEnd::Finished { ok: true })
        {
            tracing::warn!("the kernel start-up code failed; saved figures may also be displayed");
        }
        tracing::debug!(
            kernel = %id,
            forked = template.is_some(),
            sandbox_ms = spawned_at.as_secs_f64() * 1e3,
            connected_ms = connected_at.as_secs_f64() * 1e3,
            ready_ms = ready_at.as_secs_f64() * 1e3,
            total_ms = t0.elapsed().as_secs_f64() * 1e3,
            "kernel started"
        );
        Ok(kernel)
    }

    #[allow(clippy::too_many_arguments)]
    async fn connect(
        dir: &Path,
        key: &str,
        id: &str,
        alive: &watch::Receiver<bool>,
        routes: &Routes,
        broken: &Broken,
        handle: &Arc<Handle>,
        iopub_done: &Arc<Notify>,
        max_message_bytes: u64,
    ) -> Result<Channels, KernelError> {
        // Connect only once the kernel has made every socket.
        let path = |port: u16| dir.join(format!("k-{port}"));
        let is_socket = |p: &Path| {
            std::fs::symlink_metadata(p)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        };
        while !PORTS.iter().all(|(_, p)| is_socket(&path(*p))) {
            if !*alive.borrow() {
                return Err(KernelError::Start(
                    "the kernel process exited during start-up".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let open = |port: u16, kind: zmtp::Kind| {
            let path = path(port);
            async move {
                // The socket file appears just before the kernel listens on it.
                loop {
                    match zmtp::connect(&path, kind, max_message_bytes).await {
                        Err(ZmtpError::Io(e))
                            if e.kind() == std::io::ErrorKind::ConnectionRefused =>
                        {
                            tokio::time::sleep(Duration::from_millis(3)).await;
                        }
                        other => {
                            return other.map_err(|e| KernelError::Start(e.to_string()));
                        }
                    }
                }
            }
        };
        let (shell, shell_rx) = open(1, zmtp::Kind::Dealer).await?;
        let (control, control_rx) = open(4, zmtp::Kind::Dealer).await?;
        let (iopub, iopub_rx) = open(2, zmtp::Kind::Sub).await?;

        let codec = Codec::new(key, format!("ci-{id}"), max_message_bytes);
        let budget = Arc::new(Semaphore::new(PERMITS as usize));
        let permit_bytes = (ROUTED_BUDGET_MESSAGES * max_message_bytes / u64::from(PERMITS)).max(1);
        let reader = |channel: &'static str| ReaderContext {
            channel,
            codec: Codec::new(key, String::new(), max_message_bytes),
            routes: Arc::clone(routes),
            budget: Arc::clone(&budget),
            permit_bytes,
            broken: Arc::clone(broken),
            handle: Arc::clone(handle),
        };
        let readers = vec![
            tokio::spawn(reader("shell").run(shell_rx)),
            tokio::spawn(reader("control").run(control_rx)),
            tokio::spawn({
                let (ctx, done) = (reader("iopub"), Arc::clone(iopub_done));
                async move {
                    ctx.run(iopub_rx).await;
                    done.notify_one();
                }
            }),
        ];
        Ok(Channels {
            codec,
            shell,
            control,
            iopub,
            readers,
        })
    }

    /// Ready means a `kernel_info_reply` on shell and an iopub `status` for the same
    /// request: only then is our subscription known to be live (the slow-joiner problem).
    async fn wait_ready(&self, started: Instant) -> Result<(), KernelError> {
        while started.elapsed() < START_TIMEOUT {
            let (mut rx, msg_id) = self
                .send_shell("kernel_info_request", json!({}), started + START_TIMEOUT)
                .await?;
            let (mut replied, mut status_seen) = (false, false);
            let round = tokio::time::sleep(Duration::from_millis(500));
            tokio::pin!(round);
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(Routed::Message(m, _)) if m.msg_type() == "kernel_info_reply" => replied = true,
                        Some(Routed::Message(m, _)) if m.msg_type() == "status" => status_seen = true,
                        Some(_) => {}
                        None => return Err(KernelError::Start(self.gone_reason("the kernel exited during start-up"))),
                    },
                    _ = &mut round => break,
                }
                if replied && status_seen {
                    self.forget(&msg_id);
                    return Ok(());
                }
            }
            self.forget(&msg_id);
        }
        Err(KernelError::Start(
            "it did not answer kernel_info_request in time".into(),
        ))
    }

    fn gone_reason(&self, otherwise: &str) -> String {
        self.broken_reason().unwrap_or_else(|| otherwise.to_owned())
    }

    fn listen(&self, msg_id: &str) -> mpsc::Receiver<Routed> {
        let (tx, rx) = mpsc::channel(ROUTED_QUEUE);
        if *self.alive.borrow() {
            lock(&self.routes).insert(msg_id.to_owned(), tx);
        }
        rx
    }

    fn forget(&self, msg_id: &str) {
        lock(&self.routes).remove(msg_id);
    }

    /// Send a request on shell; a kernel that does not take it by `deadline` is gone.
    async fn send_shell(
        &self,
        msg_type: &str,
        content: Value,
        deadline: Instant,
    ) -> Result<(mpsc::Receiver<Routed>, String), KernelError> {
        let (msg_id, frames) = self.codec.request(msg_type, content);
        let rx = self.listen(&msg_id);
        let sent = tokio::time::timeout_at(deadline.into(), async {
            self.shell.lock().await.send(&frames).await
        })
        .await;
        match sent {
            Ok(Ok(())) => Ok((rx, msg_id)),
            _ => {
                self.forget(&msg_id);
                Err(KernelError::Gone)
            }
        }
    }

    /// Whether it was forked from the template.
    pub fn forked(&self) -> bool {
        self.forked
    }

    pub fn is_alive(&self) -> bool {
        *self.alive.borrow() && !self.exit.as_ref().is_some_and(has_ended)
    }

    /// Why the kernel was stopped for breaking the protocol, if it was.
    pub fn broken_reason(&self) -> Option<String> {
        lock(&self.broken).clone()
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Ask the kernel to stop the running cell (KeyboardInterrupt), over the control channel.
    pub async fn interrupt(&self) -> Result<(), KernelError> {
        self.send_control("interrupt_request", json!({})).await
    }

    /// Send a control-channel message: the kernel's control thread handles it while a cell
    /// runs (an interrupt, or a handler the cell installed for `msg_type`; no reply is
    /// awaited).
    pub async fn send_control(&self, msg_type: &str, content: Value) -> Result<(), KernelError> {
        let (_, frames) = self.codec.request(msg_type, content);
        let sent = tokio::time::timeout(INTERRUPT_GRACE, async {
            self.control.lock().await.send(&frames).await
        })
        .await;
        match sent {
            Ok(Ok(())) => Ok(()),
            _ => Err(KernelError::Gone),
        }
    }

    /// The number of the cell running now, if one is.
    pub fn running_cell(&self) -> Option<u64> {
        Some(self.running.load(Ordering::SeqCst)).filter(|&n| n != 0)
    }

    /// Run one cell, sending its output to `events` as it comes. At `deadline`, or when
    /// `stop` is cancelled, the cell is interrupted; if it does not stop within the grace
    /// period the kernel is killed.
    pub async fn execute(
        &self,
        code: &str,
        silent: bool,
        deadline: Instant,
        stop: &CancellationToken,
        events: &mpsc::Sender<KernelEvent>,
    ) -> Result<CellEnd, KernelError> {
        let content = json!({
            "code": code,
            "silent": silent,
            "store_history": !silent,
            "user_expressions": {},
            "allow_stdin": false,
            "stop_on_error": true,
        });
        let number = self.cells.fetch_add(1, Ordering::SeqCst) + 1;
        self.running.store(number, Ordering::SeqCst);
        let _ended = Ended(&self.running);
        let (mut rx, msg_id) = match self.send_shell("execute_request", content, deadline).await {
            Ok(sent) => sent,
            Err(_) if self.broken_reason().is_some() => return Ok(CellEnd::ProtocolBroken),
            Err(_) if self.is_alive() && Instant::now() >= deadline => {
                // It does not even take the request: it is stuck for good.
                self.handle.kill_tree();
                return Ok(CellEnd::Killed);
            }
            Err(_) if self.is_alive() => {
                // Its socket failed before the deadline: it is ending or broken.
                self.handle.kill_tree();
                return Ok(CellEnd::Died);
            }
            Err(_) => return Ok(CellEnd::Died),
        };
        let mut idle = false;
        let mut reply_ok: Option<bool> = None;
        let mut interrupted_at: Option<Instant> = None;
        let mut interrupt_again = deadline;
        let end = loop {
            let wake = match interrupted_at {
                Some(at) => (at + INTERRUPT_GRACE).min(interrupt_again),
                None => deadline,
            };
            tokio::select! {
                m = rx.recv() => {
                    let mut m = match m {
                        Some(Routed::Message(m, _budget)) => m,
                        Some(Routed::Dropped { bytes }) => {
                            let text = format!(
                                "[kernel] An output of {bytes} bytes was dropped: it is larger than KERNEL_MAX_MESSAGE_BYTES ({} bytes).\n",
                                self.max_message_bytes
                            );
                            let _ = events.send(KernelEvent::Stream { name: "stderr".into(), text }).await;
                            continue;
                        }
                        None if self.broken_reason().is_some() => break CellEnd::ProtocolBroken,
                        None => break CellEnd::Died,
                    };
                    match m.msg_type() {
                        "stream" => {
                            let name = match m.content["name"].as_str() {
                                Some("stderr") => "stderr",
                                _ => "stdout",
                            };
                            // `get_mut`, never `content["…"]` on a `&mut`: indexing a
                            // non-object mutably panics, and the kernel chooses the shape.
                            let text = match m.content.get_mut("text").map(Value::take) {
                                Some(Value::String(text)) => text,
                                _ => String::new(),
                            };
                            let _ = events.send(KernelEvent::Stream { name: name.into(), text }).await;
                        }
                        t @ ("display_data" | "execute_result") => {
                            let result = t == "execute_result";
                            let _ = events.send(KernelEvent::Display {
                                data: m.content.get_mut("data").map(Value::take).unwrap_or_default(),
                                result,
                            }).await;
                        }
                        "error" => {
                            let traceback = m.content["traceback"]
                                .as_array()
                                .map(|a| a.iter().filter_map(|l| l.as_str().map(str::to_owned)).collect())
                                .unwrap_or_default();
                            let _ = events.send(KernelEvent::Error {
                                ename: m.content["ename"].as_str().unwrap_or("").to_owned(),
                                evalue: m.content["evalue"].as_str().unwrap_or("").to_owned(),
                                traceback,
                            }).await;
                        }
                        "status" if m.content["execution_state"] == "idle" => idle = true,
                        "execute_reply" => reply_ok = Some(m.content["status"] == "ok"),
                        _ => {}
                    }
                    if idle && let Some(ok) = reply_ok {
                        break match interrupted_at {
                            Some(_) => CellEnd::Interrupted,
                            None => CellEnd::Finished { ok },
                        };
                    }
                }
                _ = stop.cancelled(), if interrupted_at.is_none() => {
                    interrupted_at = Some(Instant::now());
                    interrupt_again = Instant::now() + INTERRUPT_AGAIN;
                    let _ = self.interrupt().await;
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    match interrupted_at {
                        None => {
                            interrupted_at = Some(Instant::now());
                            interrupt_again = Instant::now() + INTERRUPT_AGAIN;
                            let _ = self.interrupt().await;
                        }
                        Some(at) if Instant::now() < at + INTERRUPT_GRACE => {
                            interrupt_again = Instant::now() + INTERRUPT_AGAIN;
                            let _ = self.interrupt().await;
                        }
                        Some(_) => {
                            self.handle.kill_tree();
                            break CellEnd::Killed;
                        }
                    }
                }
            }
        };
        self.forget(&msg_id);
        Ok(end)
    }

    /// Stop the kernel and everything in its sandbox.
    pub fn shutdown(&self) {
        self.handle.kill_tree();
    }
}

/// Marks the kernel's running cell as ended when `execute` returns, by any path.
struct Ended<'a>(&'a AtomicU64);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::SeqCst);
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.handle.kill_tree();
        for r in &self.readers {
            r.abort();
        }
        let _ = std::fs::remove_dir_all(&self.socket_dir);
    }
}
