//! One real launch of the sandbox, as runs do it (same launcher, filter and limits), running
//! `/bin/true`. `doctor` and the server's readiness both use it: a machine where this fails
//! cannot run any user code, whatever else it offers.

use super::{Job, Limits, Sandbox};

/// Memory and processes the self-test may use: enough for bwrap and `true`.
const SELF_TEST_LIMITS: Limits = Limits {
    memory_bytes: Some(64 * 1024 * 1024),
    processes: Some(16),
    cpu_seconds: None,
    file_size_bytes: None,
};

/// The most of bwrap's error output kept in the failure message.
const MAX_DETAIL_CHARS: usize = 400;

impl Sandbox {
    /// Start a sandbox running `/bin/true` and wait for it. The error says what failed,
    /// with the launcher's own words (e.g. which mount it was refused).
    pub async fn self_test(&self, run_id: &str) -> Result<(), String> {
        let job = Job {
            argv: vec!["/bin/true".into()],
            limits: SELF_TEST_LIMITS,
            ..Default::default()
        };
        let process = self.spawn(&job, run_id).map_err(|e| e.to_string())?;
        let (child, handle) = process.into_parts();
        let output = child.wait_with_output().await.map_err(|e| e.to_string());
        drop(handle);
        let output = output?;
        if output.status.success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&output.stderr);
        let said = said.trim();
        let mut detail = format!("a sandboxed `true` failed ({})", output.status);
        if !said.is_empty() {
            detail.push_str(": ");
            detail.extend(said.chars().take(MAX_DETAIL_CHARS));
        }
        Err(detail)
    }
}
