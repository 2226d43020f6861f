//! One ipykernel in its sandbox, and the client side of the Jupyter protocol: launch,
//! readiness, `execute_request` with every output matched on `parent_header.msg_id`,
//! interrupt over the control channel, and death detection.
//!
//! The kernel listens on `ipc` sockets in a short per-kernel directory on the host, bound
//! at `/run/kernel` inside the sandbox (its network namespace has no interfaces, so TCP is
//! not an option). Socket paths must stay under 107 bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, SubSocket};

use super::wire::{Codec, Message};
use crate::sandbox::{Handle, Job, Limits, Mount, Sandbox};

/// Where the socket directory appears inside the sandbox.
const SOCKETS_INSIDE: &str = "/run/kernel";
/// Channel ports; with `ipc` they are suffixes of the socket path (`k-1` …).
const PORTS: [(&str, u16); 5] = [
    ("shell_port", 1),
    ("iopub_port", 2),
    ("stdin_port", 3),
    ("control_port", 4),
    ("hb_port", 5),
];
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Run silently in every new kernel (see the file for what and why).
const STARTUP: &str = include_str!("startup.py");
/// How long an interrupted cell gets to finish before the kernel is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(3);

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

type Routes = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Message>>>>;

/// What a kernel launch needs from its owner.
pub struct KernelSpec<'a> {
    pub python: &'a Path,
    pub sockets_root: &'a Path,
    pub workspace: &'a Path,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub limits: Limits,
}

pub struct Kernel {
    codec: Codec,
    shell: tokio::sync::Mutex<zeromq::DealerSendHalf>,
    control: tokio::sync::Mutex<DealerSocket>,
    routes: Routes,
    alive: watch::Receiver<bool>,
    handle: Handle,
    socket_dir: PathBuf,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

fn lock(
    routes: &Routes,
) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Message>>> {
    routes.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hand each message to whoever waits for its parent's `msg_id`.
fn route(routes: &Routes, message: Message) {
    let Some(parent) = message.parent_id().map(str::to_owned) else {
        return;
    };
    if let Some(tx) = lock(routes).get(&parent) {
        let _ = tx.send(message);
    }
}

impl Kernel {
    pub async fn launch(sandbox: &Sandbox, spec: KernelSpec<'_>) -> Result<Kernel, KernelError> {
        let id = crate::session::new_id()[..12].to_owned();
        let socket_dir = spec.sockets_root.join(&id);
        std::fs::create_dir_all(&socket_dir)?;
        if let Some((uid, gid)) = sandbox.user() {
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
        // The kernel's own logs: drain them so it never blocks on a full pipe.
        for pipe in [
            process
                .child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            process
                .child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let kernel = id.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(%kernel, "{line}");
                }
            });
        }
        let (mut child, handle) = process.into_parts();
        let (alive_tx, alive) = watch::channel(true);
        let routes: Routes = Arc::default();
        let watcher = {
            let routes = Arc::clone(&routes);
            tokio::spawn(async move {
                let _ = child.wait().await;
                let _ = alive_tx.send(false);
                // Every waiting cell sees its channel close: the kernel died under it.
                lock(&routes).clear();
            })
        };

        let started = Instant::now();
        let mut kernel = match Self::connect(&socket_dir, &key, &id, &alive, started, &routes).await
        {
            Ok((codec, shell, control, readers)) => Kernel {
                codec,
                shell: tokio::sync::Mutex::new(shell),
                control: tokio::sync::Mutex::new(control),
                routes,
                alive,
                handle,
                socket_dir,
                readers,
            },
            Err(err) => {
                handle.kill_tree();
                let _ = std::fs::remove_dir_all(&socket_dir);
                return Err(err);
            }
        };
        kernel.readers.push(watcher);
        kernel.wait_ready(started).await?;
        let (tx, _rx) = mpsc::channel(16);
        let deadline = Instant::now() + START_TIMEOUT;
        if kernel
            .execute(STARTUP, true, deadline, &CancellationToken::new(), &tx)
            .await?
            != (CellEnd::Finished { ok: true })
        {
            tracing::warn!("the kernel start-up code failed; saved figures may also be displayed");
        }
        Ok(kernel)
    }

    #[allow(clippy::type_complexity)]
    async fn connect(
        dir: &Path,
        key: &str,
        id: &str,
        alive: &watch::Receiver<bool>,
        started: Instant,
        routes: &Routes,
    ) -> Result<
        (
            Codec,
            zeromq::DealerSendHalf,
            DealerSocket,
            Vec<tokio::task::JoinHandle<()>>,
        ),
        KernelError,
    > {
        // Connect only once the kernel has made its sockets: zeromq's reconnect back-off
        // would otherwise cost over 100 ms.
        let path = |port: u16| dir.join(format!("k-{port}"));
        loop {
            if PORTS.iter().all(|(_, p)| path(*p).exists()) {
                break;
            }
            if !*alive.borrow() {
                return Err(KernelError::Start(
                    "the kernel process exited during start-up".into(),
                ));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(KernelError::Start(
                    "its sockets did not appear in time".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let endpoint = |port: u16| format!("ipc://{}", path(port).display());
        let zmq_err = |e: zeromq::ZmqError| KernelError::Start(e.to_string());

        let mut shell = DealerSocket::new();
        shell.connect(&endpoint(1)).await.map_err(zmq_err)?;
        let mut control = DealerSocket::new();
        control.connect(&endpoint(4)).await.map_err(zmq_err)?;
        let mut iopub = SubSocket::new();
        iopub.subscribe("").await.map_err(zmq_err)?;
        iopub.connect(&endpoint(2)).await.map_err(zmq_err)?;

        let codec = Codec::new(key, format!("ci-{id}"));
        let (shell_tx, mut shell_rx) = shell.split();
        let shell_codec = Codec::new(key, String::new());
        let iopub_codec = Codec::new(key, String::new());
        let shell_routes = Arc::clone(routes);
        let iopub_routes = Arc::clone(routes);
        let readers = vec![
            tokio::spawn(async move {
                while let Ok(raw) = shell_rx.recv().await {
                    match shell_codec.decode(raw) {
                        Ok(m) => route(&shell_routes, m),
                        Err(e) => tracing::warn!(error = %e, "dropped a shell message"),
                    }
                }
            }),
            tokio::spawn(async move {
                while let Ok(raw) = iopub.recv().await {
                    match iopub_codec.decode(raw) {
                        Ok(m) => route(&iopub_routes, m),
                        Err(e) => tracing::warn!(error = %e, "dropped an iopub message"),
                    }
                }
            }),
        ];
        Ok((codec, shell_tx, control, readers))
    }

    /// Ready means a `kernel_info_reply` on shell and an iopub `status` for the same
    /// request: only then is our subscription known to be live (the slow-joiner problem).
    async fn wait_ready(&self, started: Instant) -> Result<(), KernelError> {
        while started.elapsed() < START_TIMEOUT {
            let (rx, msg_id) = self.send_shell("kernel_info_request", json!({})).await?;
            let mut rx = rx;
            let (mut replied, mut status_seen) = (false, false);
            let round = tokio::time::sleep(Duration::from_millis(500));
            tokio::pin!(round);
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) if m.msg_type() == "kernel_info_reply" => replied = true,
                        Some(m) if m.msg_type() == "status" => status_seen = true,
                        Some(_) => {}
                        None => return Err(KernelError::Start("the kernel exited during start-up".into())),
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

    fn listen(&self, msg_id: &str) -> mpsc::UnboundedReceiver<Message> {
        let (tx, rx) = mpsc::unbounded_channel();
        if *self.alive.borrow() {
            lock(&self.routes).insert(msg_id.to_owned(), tx);
        }
        rx
    }

    fn forget(&self, msg_id: &str) {
        lock(&self.routes).remove(msg_id);
    }

    async fn send_shell(
        &self,
        msg_type: &str,
        content: Value,
    ) -> Result<(mpsc::UnboundedReceiver<Message>, String), KernelError> {
        let (msg_id, message) = self.codec.request(msg_type, content);
        let rx = self.listen(&msg_id);
        self.shell
            .lock()
            .await
            .send(message)
            .await
            .map_err(|_| KernelError::Gone)?;
        Ok((rx, msg_id))
    }

    pub fn is_alive(&self) -> bool {
        *self.alive.borrow()
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Ask the kernel to stop the running cell (KeyboardInterrupt), over the control channel.
    pub async fn interrupt(&self) -> Result<(), KernelError> {
        let (_, message) = self.codec.request("interrupt_request", json!({}));
        self.control
            .lock()
            .await
            .send(message)
            .await
            .map_err(|_| KernelError::Gone)
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
        let (mut rx, msg_id) = self.send_shell("execute_request", content).await?;
        let mut idle = false;
        let mut reply_ok: Option<bool> = None;
        let mut interrupted_at: Option<Instant> = None;
        let end = loop {
            let wake = match interrupted_at {
                Some(at) => at + INTERRUPT_GRACE,
                None => deadline,
            };
            tokio::select! {
                m = rx.recv() => {
                    let Some(m) = m else { break CellEnd::Died };
                    match m.msg_type() {
                        "stream" => {
                            let _ = events.send(KernelEvent::Stream {
                                name: m.content["name"].as_str().unwrap_or("stdout").to_owned(),
                                text: m.content["text"].as_str().unwrap_or("").to_owned(),
                            }).await;
                        }
                        t @ ("display_data" | "execute_result") => {
                            let _ = events.send(KernelEvent::Display {
                                data: m.content["data"].clone(),
                                result: t == "execute_result",
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
                    let _ = self.interrupt().await;
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    if interrupted_at.is_none() {
                        interrupted_at = Some(Instant::now());
                        let _ = self.interrupt().await;
                    } else {
                        self.handle.kill_tree();
                        break CellEnd::Killed;
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

impl Drop for Kernel {
    fn drop(&mut self) {
        self.handle.kill_tree();
        for r in &self.readers {
            r.abort();
        }
        let _ = std::fs::remove_dir_all(&self.socket_dir);
    }
}
