//! The free-space floor of `DATA_DIR` (`DATA_DIR_MIN_FREE_MB`): below it nothing new is
//! written there (uploads, new sessions, runs), while reads and deletes keep working, so
//! many sessions' files together cannot fill the disk the database and the server share.

use std::path::{Path, PathBuf};

use super::{StoreError, StoreResult};

/// Below this much free space a filesystem counts as full even with the floor off: a run or
/// an upload started there fails half-way (its source file, a database page, a staged part).
const FULL_BELOW: u64 = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct DiskFloor {
    dir: PathBuf,
    min_free: u64,
}

impl DiskFloor {
    /// `min_free` of 0 turns the floor off.
    pub fn new(dir: &Path, min_free: u64) -> Self {
        DiskFloor {
            dir: dir.to_path_buf(),
            min_free,
        }
    }

    /// Bytes free for unprivileged writers on `DATA_DIR`'s filesystem.
    fn free(&self) -> Option<u64> {
        let stat = rustix::fs::statvfs(&self.dir).ok()?;
        Some(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// How many more bytes may be written before free space falls to the floor; `None` when
    /// there is no floor (or the filesystem cannot say).
    pub fn room(&self) -> Option<u64> {
        if self.min_free == 0 {
            return None;
        }
        Some(self.free()?.saturating_sub(self.min_free))
    }

    /// Refuse when writing `more` bytes would take free space below the floor, and, floor or
    /// not, when the disk is full (less than `FULL_BELOW` free). One `statvfs` for both.
    pub fn check(&self, more: u64) -> StoreResult<()> {
        let Some(free) = self.free() else {
            return Ok(());
        };
        if self.min_free > 0 && free.saturating_sub(self.min_free) <= more {
            return Err(self.refusal());
        }
        if free < FULL_BELOW {
            return Err(StoreError::DiskFull);
        }
        Ok(())
    }

    pub fn refusal(&self) -> StoreError {
        StoreError::BelowFloor {
            min_free_mb: self.min_free / (1024 * 1024),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_floor_never_refuses_and_an_impossible_floor_always_does() {
        let dir = std::env::temp_dir();
        assert!(DiskFloor::new(&dir, 0).check(u64::MAX / 2).is_ok());
        assert_eq!(DiskFloor::new(&dir, 0).room(), None);
        let floor = DiskFloor::new(&dir, u64::MAX / 2);
        assert_eq!(floor.room(), Some(0));
        assert!(matches!(floor.check(0), Err(StoreError::BelowFloor { .. })));
        // A small floor leaves room for a small write.
        assert!(DiskFloor::new(&dir, 1).check(1).is_ok());
    }
}
