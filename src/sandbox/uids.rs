//! Host uids for sandboxes: one per session, from a range (`SANDBOX_UID_BASE`,
//! `SANDBOX_UID_COUNT`).
//!
//! The kernel counts some limits per uid, whatever the namespaces: inotify instances and
//! watches, `RLIMIT_NPROC`, message-queue bytes, user namespaces. With one uid for every
//! sandbox, one session could take them all from every other (128 inotify instances by
//! default). So each session's workspace belongs to a uid of its own, and a sandbox runs as
//! the owner of the workspace it binds; sandboxes without a workspace (builds, version
//! probes) share one more uid just past the range. Which uid a session has is kept where
//! the sandbox reads it: the workspace directory's owner.
//!
//! Past `SANDBOX_UID_COUNT` live sessions uids are shared again, the least used first.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug)]
pub struct UidRange {
    base: u32,
    count: u32,
    /// Sessions (workspaces) holding each uid in use.
    holders: Mutex<HashMap<u32, u32>>,
}

impl UidRange {
    pub fn new(base: u32, count: u32) -> Self {
        UidRange {
            base,
            count,
            holders: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, u32>> {
        self.holders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `uid` is one of the range's (never the shared tool uid).
    pub fn contains(&self, uid: u32) -> bool {
        uid >= self.base && uid - self.base < self.count
    }

    /// The uid of sandboxes that bind no workspace.
    pub fn tool_uid(&self) -> u32 {
        self.base + self.count
    }

    /// A uid for a new workspace: a free one, or (when all are taken) the least shared.
    pub fn allocate(&self) -> u32 {
        let mut holders = self.lock();
        let start = random_below(self.count);
        let mut best = (u32::MAX, self.base + start);
        for i in 0..self.count {
            let uid = self.base + (start + i) % self.count;
            let held = holders.get(&uid).copied().unwrap_or(0);
            if held == 0 {
                best = (0, uid);
                break;
            }
            if held < best.0 {
                best = (held, uid);
            }
        }
        *holders.entry(best.1).or_default() += 1;
        best.1
    }

    /// Record a uid found in use (a workspace that exists at start-up).
    pub fn mark_used(&self, uid: u32) {
        if self.contains(uid) {
            *self.lock().entry(uid).or_default() += 1;
        }
    }

    /// A workspace holding `uid` is gone.
    pub fn release(&self, uid: u32) {
        let mut holders = self.lock();
        if let Some(n) = holders.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                holders.remove(&uid);
            }
        }
    }
}

fn random_below(n: u32) -> u32 {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    u32::from_ne_bytes(bytes) % n.max(1)
}

/// The owner of `dir` (not following a symlink).
pub fn owner_of(dir: &Path) -> io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::symlink_metadata(dir)?.uid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_unique_until_the_range_is_full_then_shared_evenly() {
        let range = UidRange::new(5000, 4);
        let mut got: Vec<u32> = (0..4).map(|_| range.allocate()).collect();
        got.sort();
        assert_eq!(got, [5000, 5001, 5002, 5003]);
        let mut shared: Vec<u32> = (0..4).map(|_| range.allocate()).collect();
        shared.sort();
        assert_eq!(shared, [5000, 5001, 5002, 5003]);
        range.release(5002);
        range.release(5002);
        assert_eq!(range.allocate(), 5002);
        assert_eq!(range.tool_uid(), 5004);
        assert!(!range.contains(5004) && range.contains(5000));
    }
}
