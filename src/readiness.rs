//! Whether the server can run code yet. Liveness (the process answers) is not enough for a
//! container health check or a load balancer: a server whose sandbox cannot start answers
//! every `/exec` with an error. Ready means a real sandbox launch has succeeded and every
//! runtime has been asked for its version (so `/health` lists them all).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sandbox::Sandbox;

/// A failed self-test is tried again when asked, at most this often.
const RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// The sandbox's state as `/health` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    /// Not tried yet (the server has just started).
    Pending,
    /// A sandboxed `true` ran.
    Ready,
    /// The last attempt failed; the log says why.
    Failed,
}

enum Check {
    Pending,
    Passed,
    Failed { at: Instant },
}

pub struct Readiness {
    sandbox: Arc<Sandbox>,
    check: Mutex<Check>,
    /// Held while a self-test runs, so concurrent probes start one sandbox, not many.
    attempt: tokio::sync::Mutex<()>,
    runtimes_probed: AtomicBool,
}

impl Readiness {
    pub fn new(sandbox: Arc<Sandbox>) -> Self {
        Readiness {
            sandbox,
            check: Mutex::new(Check::Pending),
            attempt: tokio::sync::Mutex::new(()),
            runtimes_probed: AtomicBool::new(false),
        }
    }

    /// Launch a test sandbox unless one already succeeded, or the last one failed less
    /// than `RETRY_INTERVAL` ago.
    pub async fn check_sandbox(&self) {
        let _turn = self.attempt.lock().await;
        let due = match *self.lock_check() {
            Check::Passed => false,
            Check::Pending => true,
            Check::Failed { at } => at.elapsed() >= RETRY_INTERVAL,
        };
        if !due {
            return;
        }
        let run_id = format!("selftest-{}", crate::session::new_id());
        let outcome = self.sandbox.self_test(&run_id).await;
        *self.lock_check() = match outcome {
            Ok(()) => {
                tracing::info!("sandbox self-test passed: ready to run code");
                Check::Passed
            }
            Err(reason) => {
                tracing::error!(
                    %reason,
                    "sandbox self-test failed: no code can run until it passes (`code-interpreter doctor` shows the details)"
                );
                Check::Failed { at: Instant::now() }
            }
        };
    }

    pub fn sandbox_state(&self) -> SandboxState {
        match *self.lock_check() {
            Check::Pending => SandboxState::Pending,
            Check::Passed => SandboxState::Ready,
            Check::Failed { .. } => SandboxState::Failed,
        }
    }

    /// Every runtime has been asked for its version once.
    pub fn mark_runtimes_probed(&self) {
        self.runtimes_probed.store(true, Ordering::Release);
    }

    pub fn runtimes_probed(&self) -> bool {
        self.runtimes_probed.load(Ordering::Acquire)
    }

    pub fn is_ready(&self) -> bool {
        self.sandbox_state() == SandboxState::Ready && self.runtimes_probed()
    }

    fn lock_check(&self) -> std::sync::MutexGuard<'_, Check> {
        self.check.lock().unwrap_or_else(|p| p.into_inner())
    }
}
