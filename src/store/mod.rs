//! Sessions' metadata and bytes. Handlers talk to the [`Store`] trait only: [`LocalStore`]
//! (SQLite + workspace directories) on one machine, [`SharedStore`] (Redis + an S3 bucket,
//! with a `LocalStore` as each node's workspace cache) on several.
//!
//! Uploads are two steps: [`Store::stage`] streams a body to a temporary file (size-capped,
//! hashed on the way), and [`Store::commit`] moves staged files into a session atomically,
//! checking the quota. A staged file that is dropped is deleted, so nothing partial survives.

mod floor;
mod local;
mod name;
mod shared;
mod tree;
mod workspace;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub use floor::DiskFloor;
pub use local::LocalStore;
pub use name::FileName;
pub use shared::{SharedSettings, SharedStore};
pub use tree::{give_tree, remove_tree};

use crate::session::{SessionOwner, Tenant};

/// Most entries the quota check of a workspace looks at; a workspace with more counts as
/// over any quota (it costs the disk and every walk more than a session needs).
pub const MAX_WORKSPACE_ENTRIES: usize = 200_000;

/// Bytes a workspace takes on disk as the session's quota counts them: allocated blocks,
/// each inode once, at any depth (see [`tree::disk_usage`]). `u64::MAX` when it holds more
/// than [`MAX_WORKSPACE_ENTRIES`]; 0 when it could not be measured (it changed meanwhile:
/// the next check measures again).
pub fn workspace_usage(root: &std::path::Path) -> u64 {
    match tree::disk_usage(root, MAX_WORKSPACE_ENTRIES) {
        Ok(usage) if usage.complete => usage.bytes,
        Ok(_) => u64::MAX,
        Err(_) => 0,
    }
}

/// [`workspace_usage`] and, from the same walk, the apparent size of the largest regular
/// file below `root` (0 when it cannot be measured).
pub fn usage_and_largest_file(root: &std::path::Path) -> (u64, u64) {
    match tree::disk_usage(root, MAX_WORKSPACE_ENTRIES) {
        Ok(usage) if usage.complete => (usage.bytes, usage.largest_file),
        Ok(usage) => (u64::MAX, usage.largest_file),
        Err(_) => (0, 0),
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub tenant: Tenant,
    pub user_id: Option<String>,
    pub entity_id: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub last_used_at: i64,
}

impl Session {
    /// A new session of `tenant` for `owner`, created and used now, with a fresh id.
    pub fn new(tenant: &Tenant, owner: &SessionOwner) -> Self {
        let now = now_millis();
        Session {
            id: crate::session::new_id(),
            tenant: tenant.clone(),
            user_id: owner.user_id.clone(),
            entity_id: owner.entity_id.clone(),
            created_at: now,
            last_used_at: now,
        }
    }
}

/// The time now in Unix milliseconds, as sessions and files record it.
pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Where an uploaded file came from, as LibreChat labels it (echoed back in exec results).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileOrigin {
    pub kind: Option<String>,
    pub ref_id: Option<String>,
    pub version: Option<String>,
}

#[derive(Debug, Clone)]
pub struct FileMeta {
    pub id: String,
    pub session_id: String,
    /// Path relative to the workspace (`/mnt/data` inside the sandbox).
    pub name: FileName,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    /// Unix milliseconds.
    pub modified_at: i64,
    pub read_only: bool,
    pub origin: FileOrigin,
}

impl FileMeta {
    /// A strong validator for HTTP caching: the content hash (a prefix is plenty).
    pub fn etag(&self) -> String {
        format!("\"{}\"", &self.sha256[..32.min(self.sha256.len())])
    }
}

/// What identifies one version of a file on disk, for change detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    pub modified_ns: i128,
    pub inode: u64,
}

pub type Snapshot = std::collections::BTreeMap<FileName, FileStamp>;

/// Directories tools leave behind that are never session files.
pub const IGNORED_DIRS: &[&str] = &["__pycache__", ".ipynb_checkpoints"];

#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    pub sessions: u64,
    pub files: u64,
    pub bytes: u64,
}

/// A body written to a temporary file, not yet part of any session. It holds the file's
/// path, not an open descriptor, so a request with many parts costs no descriptor per part.
pub struct StagedFile {
    temp: tempfile::TempPath,
    pub size: u64,
    pub sha256: String,
}

/// One staged file and where it goes.
pub struct NewFile {
    pub name: FileName,
    pub staged: StagedFile,
    pub read_only: bool,
    pub origin: FileOrigin,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the file is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the session's disk quota of {quota} bytes would be exceeded")]
    QuotaExceeded { quota: u64 },
    #[error("the upload was interrupted: {0}")]
    BodyInterrupted(String),
    #[error("the upload sent nothing for {seconds} s")]
    BodyStalled { seconds: u64 },
    #[error("the server's disk is full")]
    DiskFull,
    #[error(
        "the server's disk is nearly full (less than DATA_DIR_MIN_FREE_MB = {min_free_mb} MiB free)"
    )]
    BelowFloor { min_free_mb: u64 },
    #[error("'{0}' clashes with a directory (or a file used as a directory) of the same name")]
    NameConflict(String),
    #[error("session not found")]
    SessionNotFound,
    #[error("storage I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("metadata database failed: {0}")]
    Db(#[from] rusqlite::Error),
    /// A shared part (Redis, the bucket) did not answer or refused; `what` names it.
    #[error("{what} is unavailable: {reason}")]
    Unavailable { what: &'static str, reason: String },
}

impl StoreError {
    pub(crate) fn from_io(err: io::Error) -> Self {
        if err.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
            StoreError::DiskFull
        } else {
            StoreError::Io(err)
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A run taken from an allowance that several nodes share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// This store keeps no shared allowance (one node counts its own).
    NotShared,
    Granted,
    /// Over the allowance: the next run would be allowed after this long.
    Wait(Duration),
}

/// Where a run stands in its tenant's share of runs counted by several nodes
/// (`MAX_CONCURRENT_RUNS_PER_TENANT`, `MAX_QUEUED_RUNS_PER_TENANT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// This store keeps no shared count (one node counts its own).
    NotShared,
    /// The run holds one of its tenant's slots.
    Granted,
    /// The run waits for a slot, counted among its tenant's waiting runs.
    Queued,
    /// The tenant runs its share already and has this many runs waiting: refused.
    Full { queued: usize },
}

/// A tenant's share of runs, and how long a place in it lasts unless renewed.
#[derive(Debug, Clone, Copy)]
pub struct ShareLimits {
    pub per_tenant: usize,
    pub max_queued: usize,
    pub lease: Duration,
}

/// Where a session's calls that need its Python kernel run: the session directory of
/// several nodes. One node always answers [`Placement::Here`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On this node: it holds the session, or nobody does.
    Here,
    /// The node that held it is gone (its lease ended): this node takes it, on a new kernel.
    Orphaned,
    /// On another node whose lease is live, reached at `url`.
    Node { id: String, url: String },
}

/// A request body as a stream of chunks; an `Err` means the client went away or sent garbage.
pub type BodyStream<'a> = BoxStream<'a, Result<Bytes, io::Error>>;

#[async_trait]
pub trait Store: Send + Sync {
    async fn create_session(&self, tenant: &Tenant, owner: &SessionOwner) -> StoreResult<Session>;

    /// The session if it exists and belongs to `tenant`; marks it used.
    async fn session(&self, tenant: &Tenant, id: &str) -> StoreResult<Option<Session>>;

    /// Whether the session still exists and belongs to `tenant` (a run's check after its
    /// wait for its turn, when [`Store::session`] has just marked it used); a store may
    /// answer without marking it used again.
    async fn session_exists(&self, tenant: &Tenant, id: &str) -> StoreResult<bool> {
        Ok(self.session(tenant, id).await?.is_some())
    }

    /// The most recently used session of (tenant, user, entity).
    async fn latest_session_for(
        &self,
        tenant: &Tenant,
        owner: &SessionOwner,
    ) -> StoreResult<Option<Session>>;

    /// Remove a session with its files; false when it did not exist for this tenant.
    async fn delete_session(&self, tenant: &Tenant, id: &str) -> StoreResult<bool>;

    /// Delete sessions unused for `idle`; returns their ids.
    async fn expire_idle_sessions(&self, idle: Duration) -> StoreResult<Vec<String>>;

    async fn list_files(&self, session_id: &str) -> StoreResult<Vec<FileMeta>>;

    async fn file(&self, session_id: &str, file_id: &str) -> StoreResult<Option<FileMeta>>;

    /// Stream a body into a temporary file, refusing it past `max_bytes`.
    async fn stage(&self, body: BodyStream<'_>, max_bytes: u64) -> StoreResult<StagedFile>;

    /// Move staged files into a session, all or nothing; a name that exists is replaced
    /// (new id, the old id is gone).
    async fn commit(&self, session_id: &str, files: Vec<NewFile>) -> StoreResult<Vec<FileMeta>>;

    /// `commit` for a single file.
    async fn commit_one(&self, session_id: &str, file: NewFile) -> StoreResult<FileMeta> {
        let mut metas = self.commit(session_id, vec![file]).await?;
        Ok(metas.remove(0))
    }

    /// Store bytes the server produced (an image from a rich output) as `name` in a session.
    async fn write_bytes(
        &self,
        session_id: &str,
        name: FileName,
        bytes: Bytes,
    ) -> StoreResult<FileMeta> {
        let body: BodyStream<'_> = Box::pin(futures::stream::once(async move { Ok(bytes) }));
        let staged = self.stage(body, u64::MAX).await?;
        let file = NewFile {
            name,
            staged,
            read_only: false,
            origin: FileOrigin::default(),
        };
        self.commit_one(session_id, file).await
    }

    /// Open a file's bytes for reading, never following a symlink out of the workspace.
    async fn open(&self, file: &FileMeta) -> StoreResult<tokio::fs::File>;

    /// Delete one file; `None` when it was not there.
    async fn delete_file(&self, session_id: &str, file_id: &str) -> StoreResult<Option<FileMeta>>;

    async fn stats(&self) -> StoreResult<StoreStats>;

    /// Record that the session has had a Python kernel; returns whether it had one before
    /// (possibly in an earlier server process, whose kernels are gone).
    async fn note_kernel(&self, session_id: &str) -> StoreResult<bool>;

    /// Have the session's workspace hold its files now (a node's cache of a shared store
    /// syncs it; a local workspace always holds them). A run does this before anything
    /// looks at the workspace: [`Store::snapshot`] does it too.
    async fn sync_workspace(&self, _session_id: &str) -> StoreResult<()> {
        Ok(())
    }

    /// Record that this node runs the session's Python now; true when another node did
    /// since this one last did (a kernel this node still holds for it is stale). One node
    /// alone never sees that.
    async fn claim_kernel(&self, _session_id: &str) -> StoreResult<bool> {
        Ok(false)
    }

    /// Take one run from (tenant, user)'s allowance of `per_minute` runs a minute (a burst
    /// of the whole minute, then one every `60 / per_minute` s), counted by every node alike.
    async fn take_run(
        &self,
        _tenant: &Tenant,
        _user_id: Option<&str>,
        _per_minute: u32,
    ) -> StoreResult<Allowance> {
        Ok(Allowance::NotShared)
    }

    /// Place run `run` (an id new for each run) in its tenant's share across nodes. The
    /// first call queues it, or refuses it when the tenant runs its share and its queue is
    /// full; a later call grants it a slot when one is free. A place or a slot lasts
    /// `limits.lease` unless renewed, so a node that dies gives its own back.
    async fn take_share(
        &self,
        _tenant: &Tenant,
        _run: &str,
        _limits: ShareLimits,
        _first: bool,
    ) -> StoreResult<Share> {
        Ok(Share::NotShared)
    }

    /// Keep run `run`'s place (or, `granted`, its slot) for another `lease`.
    async fn renew_share(
        &self,
        _tenant: &Tenant,
        _run: &str,
        _granted: bool,
        _lease: Duration,
    ) -> StoreResult<()> {
        Ok(())
    }

    /// Give run `run`'s place or slot back.
    async fn release_share(&self, _tenant: &Tenant, _run: &str) {}

    /// Record that this node holds the programmatic run that `key` leads to (a
    /// continuation token or a request id, with its tenant), for `ttl` (several nodes only).
    async fn hold_program(&self, _tenant: &Tenant, _key: &str, _ttl: Duration) -> StoreResult<()> {
        Ok(())
    }

    /// Which node holds the programmatic run that `key` leads to; `None` when no node
    /// recorded it (one node always answers `None`).
    async fn program_placement(
        &self,
        _tenant: &Tenant,
        _key: &str,
    ) -> StoreResult<Option<Placement>> {
        Ok(None)
    }

    /// Which node's kernel serves the session's Python (several nodes only).
    async fn placement(&self, _session_id: &str) -> StoreResult<Placement> {
        Ok(Placement::Here)
    }

    /// This node's name among several; `None` on one node.
    fn node_id(&self) -> Option<&str> {
        None
    }

    /// Say that this node is alive and reached at `url`, for `lease` from now.
    async fn renew_node(&self, _url: &str, _lease: Duration) -> StoreResult<()> {
        Ok(())
    }

    /// Say that this node is gone (a clean stop), so its sessions are taken at once.
    async fn release_node(&self) {}

    /// The workspace's regular files as they are on disk now (no symlinks, no tool litter).
    async fn snapshot(&self, session_id: &str) -> StoreResult<Snapshot>;

    /// Record what a run did to the workspace: `changed` files get fresh ids (hashed from
    /// disk), `removed` ones lose their metadata.
    async fn record_changes(
        &self,
        session_id: &str,
        changed: Vec<FileName>,
        removed: Vec<FileName>,
    ) -> StoreResult<Vec<FileMeta>>;

    /// Copy a stored file into a session under `name` (a kernel-side copy: the bytes never
    /// pass through memory, and the copy is independent of the source).
    async fn copy_into(
        &self,
        source: &FileMeta,
        session_id: &str,
        name: FileName,
        read_only: bool,
        origin: FileOrigin,
    ) -> StoreResult<FileMeta>;

    /// Keep a copy of each named file (the run's read-only inputs) before a run, so
    /// [`Store::restore_read_only`] can put back what the run changed.
    async fn guard_read_only(
        &self,
        session_id: &str,
        names: Vec<FileName>,
    ) -> StoreResult<ReadOnlyCopies>;

    /// Put back every guarded file the run changed, replaced or removed (its metadata
    /// never changed); the names put back.
    async fn restore_read_only(
        &self,
        session_id: &str,
        copies: ReadOnlyCopies,
    ) -> StoreResult<Vec<FileName>>;

    /// The directory that is `/mnt/data` for this session's runs.
    fn workspace_path(&self, session_id: &str) -> PathBuf;
}

/// Copies of read-only files taken before a run, each with what identified the file then
/// (device, inode, size, mtime and ctime); dropped copies are deleted.
#[derive(Default)]
pub struct ReadOnlyCopies(pub(crate) Vec<(FileName, tempfile::TempPath, [i128; 6])>);
