//! The kernel template: one process per server that has imported ipykernel and
//! `PYTHON_PRELOAD`, from which kernels are forked (`template.py` is the program,
//! `sandbox::fork` the sandbox side). A template that dies is started again at the next
//! fork; the log says so and `/health` counts it.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::sandbox::fork::Control;
use crate::sandbox::{Handle, Job, Limits, Sandbox};

/// The template program, run with `python -c`.
const PROGRAM: &str = include_str!("template.py");
/// How long a template may take to import everything.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one fork may take to make its namespaces.
const FORK_TIMEOUT: Duration = Duration::from_secs(30);

/// After a template failed to start, kernels start cold this long before it is tried again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// What `/health` says of the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateState {
    /// Kernels start cold (`PYTHON_KERNEL_FORK=false`, or this host cannot fork safely).
    Off,
    Starting,
    Ready,
    /// The last start failed; kernels start cold until a fork works again.
    Failed,
}

impl TemplateState {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateState::Off => "off",
            TemplateState::Starting => "starting",
            TemplateState::Ready => "ready",
            TemplateState::Failed => "failed",
        }
    }
}

struct Running {
    control: Arc<Control>,
    alive: watch::Receiver<bool>,
    /// Kills the template (and with its PID namespace every fork) when dropped.
    _handle: Handle,
}

pub struct KernelTemplate {
    sandbox: Arc<Sandbox>,
    job: Job,
    /// Where the template's forks attach the workspace and the socket directory.
    points: [&'static str; 2],
    running: tokio::sync::Mutex<Option<Running>>,
    state: Mutex<TemplateState>,
    starts: AtomicU64,
    /// The number of the template that is running and alive (its start's count), 0 when
    /// none is: kernels forked from an earlier one die with it.
    live: Arc<AtomicU64>,
    /// When a start last failed: kernels start cold for a while before the next try.
    failed_at: Mutex<Option<std::time::Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KernelTemplate {
    /// A template for kernels run with `python` in `env`, importing `preload`.
    pub fn new(
        sandbox: Arc<Sandbox>,
        python: &Path,
        mut env: Vec<(String, String)>,
        preload: &[String],
        mounts: Vec<crate::sandbox::Mount>,
        limits: Limits,
        points: [&'static str; 2],
    ) -> Self {
        // Libraries that start threads at import would make forking unsafe: OpenBLAS's
        // workers (numpy) and jemalloc's background thread (pyarrow, through pandas).
        env.push(("OPENBLAS_NUM_THREADS".into(), "1".into()));
        env.push((
            "JE_ARROW_MALLOC_CONF".into(),
            "background_thread:false".into(),
        ));
        env.push(("CI_TEMPLATE_STARTUP".into(), super::kernel::STARTUP.into()));
        env.push((
            "CI_TEMPLATE_PRELOAD".into(),
            serde_json::to_string(preload).unwrap_or_default(),
        ));
        let job = Job {
            argv: vec![
                python.to_string_lossy().into_owned(),
                "-c".into(),
                PROGRAM.into(),
            ],
            env,
            workspace: None,
            mounts,
            limits,
        };
        KernelTemplate {
            sandbox,
            job,
            points,
            running: tokio::sync::Mutex::new(None),
            state: Mutex::new(TemplateState::Starting),
            starts: AtomicU64::new(0),
            live: Arc::new(AtomicU64::new(0)),
            failed_at: Mutex::new(None),
        }
    }

    /// Whether to fork now: not within `RETRY_AFTER_FAILURE` of a failed start.
    pub fn usable(&self) -> bool {
        lock(&self.failed_at).is_none_or(|at| at.elapsed() >= RETRY_AFTER_FAILURE)
    }

    pub fn state(&self) -> TemplateState {
        *lock(&self.state)
    }

    /// The number of the live template, 0 when none is alive; a kernel forked when this
    /// was `n` is gone once it is no longer `n`.
    pub fn generation(&self) -> u64 {
        self.live.load(Ordering::SeqCst)
    }

    /// Times a template had to be started again after the first.
    pub fn restarts(&self) -> u64 {
        self.starts.load(Ordering::SeqCst).saturating_sub(1)
    }

    async fn start(&self) -> Result<Running, String> {
        let n = self.starts.fetch_add(1, Ordering::SeqCst);
        if n > 0 {
            tracing::warn!(
                restarts = n,
                "the kernel template had died; starting a new one"
            );
        }
        *lock(&self.state) = TemplateState::Starting;
        let id = crate::session::new_id()[..12].to_owned();
        let (mut process, control) = self
            .sandbox
            .spawn_template(&self.job, &self.points, &format!("template-{id}"))
            .map_err(|e| e.to_string())?;
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
            super::kernel::drain_log(format!("template-{id}"), pipe);
        }
        let (mut child, handle) = process.into_parts();
        let (alive_tx, alive) = watch::channel(true);
        let generation = n + 1;
        let live = Arc::clone(&self.live);
        tokio::spawn(async move {
            let status = child.wait().await;
            tracing::warn!(?status, "the kernel template exited");
            let _ = live.compare_exchange(generation, 0, Ordering::SeqCst, Ordering::SeqCst);
            let _ = alive_tx.send(false);
        });
        let control = Arc::new(control);
        let waiting = Arc::clone(&control);
        let ready = tokio::task::spawn_blocking(move || waiting.receive(READY_TIMEOUT))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("the kernel template did not become ready: {e}"))?;
        if !ready.starts_with(br#"{"ready""#) {
            return Err("the kernel template sent something else than ready".into());
        }
        if *alive.borrow() {
            self.live.store(generation, Ordering::SeqCst);
        }
        Ok(Running {
            control,
            alive,
            _handle: handle,
        })
    }

    /// A new sandbox forked from the template with `attach` at its mount points: its
    /// handle, and a pidfd that becomes readable when it ends.
    pub async fn fork(
        &self,
        attach: [&Path; 2],
        limits: &Limits,
        run_id: &str,
    ) -> Result<(Handle, OwnedFd), String> {
        let mut running = self.running.lock().await;
        if running.as_ref().is_none_or(|r| !*r.alive.borrow()) {
            *running = None;
            match self.start().await {
                Ok(r) => *running = Some(r),
                Err(err) => {
                    *lock(&self.state) = TemplateState::Failed;
                    *lock(&self.failed_at) = Some(std::time::Instant::now());
                    return Err(err);
                }
            }
        }
        *lock(&self.state) = TemplateState::Ready;
        let Some(current) = running.as_ref() else {
            return Err("no kernel template".into());
        };
        let t0 = std::time::Instant::now();
        let request = self
            .sandbox
            .prepare_fork(&attach, limits, run_id)
            .map_err(|e| e.to_string())?;
        let prepared = t0.elapsed();
        let control = Arc::clone(&current.control);
        let (request, answer) = tokio::task::spawn_blocking(move || {
            let answer = control
                .send(&request)
                .and_then(|()| control.receive(FORK_TIMEOUT));
            (request, answer)
        })
        .await
        .map_err(|e| e.to_string())?;
        let answer = match answer {
            Ok(a) => a,
            Err(err) => {
                // A template that does not answer is of no further use.
                *running = None;
                return Err(format!("the kernel template did not answer: {err}"));
            }
        };
        let answer: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|e| format!("bad template answer: {e}"))?;
        if answer["ok"] != true {
            return Err(format!(
                "the kernel template could not fork: {}",
                answer["error"].as_str().unwrap_or("no reason given")
            ));
        }
        let answered = t0.elapsed();
        let adopted = request.adopt().map_err(|e| e.to_string());
        tracing::debug!(
            prepare_ms = prepared.as_secs_f64() * 1e3,
            answer_ms = answered.as_secs_f64() * 1e3,
            template_ms = answer["ms"].as_f64().unwrap_or(-1.0),
            total_ms = t0.elapsed().as_secs_f64() * 1e3,
            "kernel forked"
        );
        adopted
    }
}
