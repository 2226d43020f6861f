//! The index of built programs in `DATA_DIR/cache/build`: what each entry takes on disk
//! (allocated blocks, as the session quota counts), when it was last used, and which runs
//! use it now. The total is held to `BUILD_CACHE_MAX_MB` by evicting the least recently
//! used entries that no run has bound; an entry in use is never removed under its run.
//!
//! Entries are named by a hash that covers the tenant (see `process::cache_key`): one
//! tenant's build never serves another's, so a fast run tells nobody what others ran.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The marker a finished build leaves in its entry (the entry directory's mtime is its
/// last use).
pub const DONE_MARKER: &str = ".ok";
/// Prefix of a build still being written (removed at start-up: its run is gone).
pub const BUILDING_PREFIX: &str = "tmp-";
/// Prefix of an evicted entry on its way out.
const EVICTED_PREFIX: &str = "evicted-";

#[derive(Debug, Clone, Copy, Default)]
pub struct BuildCacheLimits {
    /// The whole cache, in bytes; `None`: no cap.
    pub total_bytes: Option<u64>,
    /// One build's output and any file a compiler writes, in bytes; `None`: no cap.
    pub entry_bytes: Option<u64>,
}

struct Entry {
    bytes: u64,
    last_used: u64,
    users: usize,
}

#[derive(Default)]
struct Index {
    entries: HashMap<String, Entry>,
    total: u64,
    clock: u64,
}

pub struct BuildCache {
    dir: PathBuf,
    limits: BuildCacheLimits,
    index: Arc<Mutex<Index>>,
}

/// A run's hold on an entry: it is not evicted while held.
pub struct Held {
    index: Arc<Mutex<Index>>,
    name: String,
    pub path: PathBuf,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut index = lock(&self.index);
        if let Some(e) = index.entries.get_mut(&self.name) {
            e.users = e.users.saturating_sub(1);
        }
    }
}

fn lock(m: &Mutex<Index>) -> std::sync::MutexGuard<'_, Index> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BuildCache {
    /// Index what `dir` holds: finished entries by their last use, everything else (half
    /// builds, evictions a stopped server did not finish) removed.
    pub fn open(dir: &Path, limits: BuildCacheLimits) -> std::io::Result<Self> {
        let mut found: Vec<(String, u64, SystemTime)> = Vec::new();
        for entry in std::fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let used = std::fs::metadata(path.join(DONE_MARKER))
                .and_then(|_| std::fs::metadata(&path))
                .and_then(|m| m.modified());
            match used {
                Ok(used)
                    if !name.starts_with(BUILDING_PREFIX) && !name.starts_with(EVICTED_PREFIX) =>
                {
                    found.push((name, crate::store::workspace_usage(&path), used));
                }
                _ => {
                    if let Err(err) = crate::store::remove_tree(&path) {
                        tracing::warn!(path = %path.display(), error = %err, "could not remove a stale build");
                    }
                }
            }
        }
        found.sort_by_key(|(_, _, used)| *used);
        let mut index = Index::default();
        for (name, bytes, _) in found {
            index.clock += 1;
            index.total = index.total.saturating_add(bytes);
            let last_used = index.clock;
            index.entries.insert(
                name,
                Entry {
                    bytes,
                    last_used,
                    users: 0,
                },
            );
        }
        let cache = BuildCache {
            dir: dir.to_path_buf(),
            limits,
            index: Arc::new(Mutex::new(index)),
        };
        cache.evict();
        Ok(cache)
    }

    pub fn limits(&self) -> BuildCacheLimits {
        self.limits
    }

    /// Bytes the cache holds.
    pub fn total_bytes(&self) -> u64 {
        lock(&self.index).total
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Hold the entry `name` when it is built; it counts as used now.
    pub fn hold(&self, name: &str) -> Option<Held> {
        let mut index = lock(&self.index);
        index.clock += 1;
        let now = index.clock;
        let entry = index.entries.get_mut(name)?;
        entry.users += 1;
        entry.last_used = now;
        drop(index);
        let path = self.path(name);
        // The order survives a restart through the directory's mtime (best effort).
        if let Ok(dir) = std::fs::File::open(&path) {
            let _ = dir.set_modified(SystemTime::now());
        }
        Some(Held {
            index: Arc::clone(&self.index),
            name: name.to_owned(),
            path,
        })
    }

    /// Move a finished build (`built`, `bytes` on disk) to its place as `name` and hold it;
    /// when another run put the same program there first, `built` is removed and theirs
    /// is held. Then evict what the cap no longer has room for.
    pub fn add(&self, name: &str, built: &Path, bytes: u64) -> std::io::Result<Held> {
        let target = self.path(name);
        let placed = {
            let mut index = lock(&self.index);
            if index.entries.contains_key(name) {
                false
            } else {
                std::fs::rename(built, &target)?;
                index.clock += 1;
                let last_used = index.clock;
                index.total = index.total.saturating_add(bytes);
                index.entries.insert(
                    name.to_owned(),
                    Entry {
                        bytes,
                        last_used,
                        users: 0,
                    },
                );
                true
            }
        };
        if !placed {
            crate::store::remove_tree(built)?;
        }
        let held = self
            .hold(name)
            .ok_or_else(|| std::io::Error::other("a build was evicted as it was added"))?;
        self.evict();
        Ok(held)
    }

    /// Remove least recently used entries nobody holds until the total fits the cap.
    fn evict(&self) {
        let Some(cap) = self.limits.total_bytes else {
            return;
        };
        let mut victims = Vec::new();
        {
            let mut index = lock(&self.index);
            while index.total > cap {
                let Some(name) = index
                    .entries
                    .iter()
                    .filter(|(_, e)| e.users == 0)
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(n, _)| n.clone())
                else {
                    break;
                };
                let entry = index.entries.remove(&name).expect("found above");
                index.total = index.total.saturating_sub(entry.bytes);
                // Renamed under the lock, so a new build of the same program finds the
                // name free.
                let gone = self
                    .dir
                    .join(format!("{EVICTED_PREFIX}{}", crate::session::new_id()));
                if std::fs::rename(self.path(&name), &gone).is_ok() {
                    victims.push(gone);
                }
            }
        }
        for path in victims {
            if let Err(err) = crate::store::remove_tree(&path) {
                tracing::warn!(path = %path.display(), error = %err, "could not remove an evicted build");
            }
        }
        metrics::gauge!("code_interpreter_build_cache_bytes").set(self.total_bytes() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dir: &Path, name: &str, bytes: usize) -> PathBuf {
        let path = dir.join(format!("{BUILDING_PREFIX}{name}"));
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("main"), vec![1u8; bytes]).unwrap();
        std::fs::write(path.join(DONE_MARKER), b"").unwrap();
        path
    }

    #[test]
    fn the_least_recently_used_unheld_entries_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let limits = BuildCacheLimits {
            total_bytes: Some(300 * 1024),
            entry_bytes: None,
        };
        let cache = BuildCache::open(dir.path(), limits).unwrap();
        let size = |p: &Path| crate::store::workspace_usage(p);
        let a = entry(dir.path(), "a", 100 * 1024);
        drop(cache.add("a", &a, size(&a)).unwrap());
        let b = entry(dir.path(), "b", 100 * 1024);
        let held_b = cache.add("b", &b, size(&b)).unwrap();
        drop(cache.hold("a").unwrap());
        // c passes the cap: b is the oldest but held, so a goes.
        let c = entry(dir.path(), "c", 100 * 1024);
        let held_c = cache.add("c", &c, size(&c)).unwrap();
        assert!(cache.hold("a").is_none());
        assert!(!cache.path("a").exists());
        assert!(held_b.path.join("main").exists() && held_c.path.join("main").exists());
        assert!(cache.total_bytes() <= 300 * 1024);
        drop((held_b, held_c));

        // A restart keeps the finished entries and drops half builds.
        let half = dir.path().join(format!("{BUILDING_PREFIX}half"));
        std::fs::create_dir(&half).unwrap();
        let again = BuildCache::open(dir.path(), limits).unwrap();
        assert!(!half.exists());
        assert!(again.hold("b").is_some() && again.hold("c").is_some());
        assert!(again.total_bytes() > 0);
    }
}
