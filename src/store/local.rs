//! The single-node store: metadata in one SQLite file, bytes in one directory per session.
//!
//! Layout under `DATA_DIR`:
//! - `metadata.sqlite3`: sessions and files;
//! - `sessions/<session_id>/`: the workspace, bound at `/mnt/data` in the sandbox;
//! - `staging/`: uploads in flight (same filesystem, so committing is a rename).
//!
//! Every metadata change runs in a transaction under one connection lock, so parallel
//! uploads to one session serialise at the commit and never lose a file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use rusqlite::{Connection, OptionalExtension, Row, params};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};

use super::workspace::Workspace;
use super::{
    BodyStream, FileMeta, FileName, FileOrigin, FileStamp, IGNORED_DIRS, NewFile, ReadOnlyCopies,
    Session, Snapshot, StagedFile, Store, StoreError, StoreResult, StoreStats, now_millis,
};
use crate::sandbox::{UidRange, owner_of};
use crate::session::{SessionOwner, Tenant, new_id};

const SCHEMA_VERSION: i64 = 2;
/// Changes after the first schema, applied in order to older databases.
const MIGRATIONS: &[(i64, &str)] = &[(
    2,
    "ALTER TABLE sessions ADD COLUMN kernel_used INTEGER NOT NULL DEFAULT 0;",
)];
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    user_id       TEXT,
    entity_id     TEXT,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_owner ON sessions (tenant, entity_id, user_id, last_used_at);
CREATE INDEX IF NOT EXISTS sessions_by_use ON sessions (last_used_at);
CREATE TABLE IF NOT EXISTS files (
    id            TEXT PRIMARY KEY,
    session_id    TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    size          INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    modified_at   INTEGER NOT NULL,
    read_only     INTEGER NOT NULL DEFAULT 0,
    kind          TEXT,
    ref_id        TEXT,
    version       TEXT,
    UNIQUE (session_id, name)
);
";

const FILE_MODE: u32 = 0o644;

/// Buffer between the network and the disk while staging an upload.
const STAGING_BUFFER_BYTES: usize = 1024 * 1024;

pub struct LocalStore {
    /// Uids for workspaces (when the server is root): each session's workspace and the
    /// files the server puts there belong to the session's own uid.
    uids: Option<Arc<UidRange>>,
    sessions_dir: PathBuf,
    staging_dir: PathBuf,
    /// Workspaces of deleted sessions, moved here at once and removed in the background.
    trash_dir: PathBuf,
    quota_bytes: Option<u64>,
    /// How long an upload body may send nothing before it is refused.
    body_idle: Option<Duration>,
    db: Arc<Mutex<Connection>>,
}

impl LocalStore {
    /// Open (or create) the store under `data_dir`. Uploads left in staging by a crash are removed.
    pub fn open(
        data_dir: &Path,
        quota_bytes: Option<u64>,
        uids: Option<Arc<UidRange>>,
    ) -> StoreResult<Self> {
        let sessions_dir = data_dir.join("sessions");
        let staging_dir = data_dir.join("staging");
        std::fs::create_dir_all(&sessions_dir)?;
        // The sandbox user must reach its own workspace by path, but not list the others.
        for dir in [data_dir, sessions_dir.as_path()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
        }
        if staging_dir.exists() {
            std::fs::remove_dir_all(&staging_dir)?;
        }
        std::fs::create_dir_all(&staging_dir)?;

        let conn = Connection::open(data_dir.join("metadata.sqlite3"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        conn.execute_batch(SCHEMA)?;
        for (to, sql) in MIGRATIONS {
            if version < *to {
                conn.execute_batch(sql)?;
            }
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;

        // Workspaces whose removal a crash interrupted, and workspaces without a session
        // (a crash between the row and the directory), go; then what stays gets its uids.
        let trash_dir = data_dir.join("trash");
        std::fs::create_dir_all(&trash_dir)?;
        std::fs::set_permissions(&trash_dir, std::fs::Permissions::from_mode(0o700))?;
        let known: std::collections::HashSet<String> = conn
            .prepare("SELECT id FROM sessions")?
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<_>>()?;
        for entry in std::fs::read_dir(&sessions_dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                tracing::info!(dir = %name, "moving a workspace without a session to the trash");
                let _ = std::fs::rename(entry.path(), trash_dir.join(format!("orphan-{name}")));
            }
        }
        empty_trash(trash_dir.clone());

        if let Some(uids) = &uids {
            adopt_workspaces(&sessions_dir, uids);
        }
        Ok(LocalStore {
            uids,
            sessions_dir,
            staging_dir,
            trash_dir,
            quota_bytes,
            body_idle: None,
            db: Arc::new(Mutex::new(conn)),
        })
    }

    /// Who owns the session's workspace (and must own what the server puts there).
    fn owner(&self, session_id: &str) -> Option<(u32, u32)> {
        self.uids.as_ref()?;
        let uid = owner_of(&self.workspace_path(session_id)).ok()?;
        Some((uid, uid))
    }

    /// Refuse an upload body that sends nothing for `idle` (a client that stalls would
    /// otherwise hold its staging file and connection forever).
    pub fn with_body_idle_timeout(mut self, idle: Duration) -> Self {
        self.body_idle = Some(idle);
        self
    }

    /// Run `f` with the connection on a blocking thread.
    async fn with_db<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite inconsistent (transactions
            // roll back on drop), so a poisoned lock is safe to keep using.
            let mut conn = db.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    /// Add a session row with its (empty) workspace: a new session, or one that another
    /// node created and this one now caches.
    pub(super) async fn insert_session(&self, session: &Session) -> StoreResult<()> {
        let workspace = self.workspace_path(&session.id);
        std::fs::create_dir_all(&workspace).map_err(StoreError::from_io)?;
        if let Some(uids) = &self.uids {
            let uid = uids.allocate();
            std::os::unix::fs::chown(&workspace, Some(uid), Some(uid))?;
        }
        let row = session.clone();
        self.with_db(move |conn| {
            conn.execute(
                "INSERT INTO sessions (id, tenant, user_id, entity_id, created_at, last_used_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    row.id,
                    row.tenant.0,
                    row.user_id,
                    row.entity_id,
                    row.created_at,
                    row.last_used_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Take deleted sessions' workspaces away at once (a rename to the trash) and remove
    /// them in the background, to any depth. A kernel still dying writes into the trash,
    /// which is removed a few rounds over, and emptied again at the next start.
    fn remove_workspaces(&self, ids: &[String]) {
        for id in ids {
            let dir = self.workspace_path(id);
            let owner = owner_of(&dir).ok();
            let trash = self.trash_dir.join(format!("{id}-{}", &new_id()[..8]));
            let doomed = match std::fs::rename(&dir, &trash) {
                Ok(()) => trash,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => {
                    tracing::warn!(session = %id, error = %err, "could not move a session's files to the trash");
                    dir
                }
            };
            if let (Some(uids), Some(uid)) = (&self.uids, owner) {
                uids.release(uid);
            }
            let session = id.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(err) = super::tree::remove_tree(&doomed) {
                    tracing::warn!(%session, error = %err, "could not remove a session's files; the next start retries");
                }
            });
        }
    }
}

/// Remove everything in the trash, on a thread of its own (a big trash must not hold up
/// the start).
fn empty_trash(trash: PathBuf) {
    std::thread::spawn(move || {
        for entry in std::fs::read_dir(&trash).into_iter().flatten().flatten() {
            if let Err(err) = super::tree::remove_tree(&entry.path()) {
                tracing::warn!(error = %err, "could not empty the trash");
            }
        }
    });
}

/// Give every workspace a uid of the range: record the ones that have one, and hand the
/// others (made by an older version, all as one uid) a fresh one.
fn adopt_workspaces(sessions_dir: &Path, uids: &UidRange) {
    for entry in std::fs::read_dir(sessions_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(uid) = owner_of(&entry.path()) else {
            continue;
        };
        if uids.contains(uid) {
            uids.mark_used(uid);
            continue;
        }
        let fresh = uids.allocate();
        if let Err(err) = super::tree::give_tree(&entry.path(), fresh) {
            tracing::warn!(error = %err, "could not give a workspace its own uid");
        }
    }
}

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: row.get(0)?,
        tenant: Tenant(row.get(1)?),
        user_id: row.get(2)?,
        entity_id: row.get(3)?,
        created_at: row.get(4)?,
        last_used_at: row.get(5)?,
    })
}

const SESSION_COLUMNS: &str = "id, tenant, user_id, entity_id, created_at, last_used_at";
const FILE_COLUMNS: &str = "id, session_id, name, size, sha256, content_type, modified_at, read_only, kind, ref_id, version";

fn file_from_row(row: &Row<'_>) -> rusqlite::Result<FileMeta> {
    let name: String = row.get(2)?;
    let name = FileName::parse(&name).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(FileMeta {
        id: row.get(0)?,
        session_id: row.get(1)?,
        name,
        size: row.get::<_, i64>(3)? as u64,
        sha256: row.get(4)?,
        content_type: row.get(5)?,
        modified_at: row.get(6)?,
        read_only: row.get(7)?,
        origin: FileOrigin {
            kind: row.get(8)?,
            ref_id: row.get(9)?,
            version: row.get(10)?,
        },
    })
}

/// A rename that fails because a directory (or a file used as a directory) is in the way
/// is the client's problem, not the server's.
fn name_conflict_or(err: std::io::Error, name: &FileName) -> StoreError {
    use rustix::io::Errno;
    let conflict = [Errno::ISDIR, Errno::NOTDIR, Errno::NOTEMPTY, Errno::EXIST]
        .iter()
        .any(|e| err.raw_os_error() == Some(e.raw_os_error()));
    if conflict {
        StoreError::NameConflict(name.to_string())
    } else {
        StoreError::from_io(err)
    }
}

fn insert_file(conn: &Connection, meta: &FileMeta) -> rusqlite::Result<()> {
    conn.execute(
        &format!("INSERT INTO files ({FILE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
        params![
            meta.id,
            meta.session_id,
            meta.name.as_str(),
            meta.size as i64,
            meta.sha256,
            meta.content_type,
            meta.modified_at,
            meta.read_only,
            meta.origin.kind,
            meta.origin.ref_id,
            meta.origin.version,
        ],
    )?;
    Ok(())
}

/// Bytes one run's outputs may cost the server in hashing, without a session quota (with
/// one, the quota: a workspace cannot legitimately hold more).
const MAX_HASHED_BYTES_PER_RUN: u64 = 8 << 30;

/// Size and SHA-256 of the files a run changed. User code chooses what the server reads
/// here, so the work is bounded: each inode is read once however many links it has, a file
/// is read up to the size it had when opened (it may still grow), and past `budget` bytes
/// in all, further files are not recorded.
fn hash_changed(root: &Path, changed: Vec<FileName>, budget: u64) -> Vec<(FileName, u64, String)> {
    use std::os::unix::fs::MetadataExt;
    let ws = Workspace::new(root, None);
    let mut by_inode: std::collections::HashMap<(u64, u64), (u64, String)> = Default::default();
    let (mut spent, mut skipped) = (0u64, 0usize);
    let mut out = Vec::with_capacity(changed.len());
    for name in changed {
        let Ok(file) = ws.open_file(&name) else {
            continue;
        };
        let Ok(meta) = file.metadata() else { continue };
        let inode = (meta.dev(), meta.ino());
        if let Some((size, sha)) = by_inode.get(&inode) {
            out.push((name, *size, sha.clone()));
            continue;
        }
        if spent.saturating_add(meta.len()) > budget {
            skipped += 1;
            continue;
        }
        let Ok((size, sha)) = hash_file(file, meta.len()) else {
            continue;
        };
        spent += size;
        by_inode.insert(inode, (size, sha.clone()));
        out.push((name, size, sha));
    }
    metrics::counter!("code_interpreter_hashed_bytes_total").increment(spent);
    if skipped > 0 {
        tracing::warn!(
            skipped,
            budget,
            "files past the hashing budget of a run were not recorded"
        );
    }
    out
}

/// Size and SHA-256 of a file's first `limit` bytes, read in chunks.
fn hash_file(file: std::fs::File, limit: u64) -> std::io::Result<(u64, String)> {
    use std::io::Read;
    let mut file = file.take(limit);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Most entries one snapshot looks at; a workspace with more is reported partially.
const MAX_WALK_ENTRIES: usize = 100_000;

/// The regular files under `root`, without following symlinks or entering tool litter,
/// by descriptor (a tree deeper than `PATH_MAX` is walked to the depth a file name can
/// have, never failing the run), at most `MAX_WALK_ENTRIES` entries.
fn walk_workspace(root: &Path) -> std::io::Result<Snapshot> {
    use rustix::fs::FileType;
    let mut out = Snapshot::new();
    super::tree::walk(root, MAX_WALK_ENTRIES, |entry| {
        let Ok(name) = entry.name.to_str() else {
            return false;
        };
        match entry.file_type() {
            FileType::Directory => {
                !IGNORED_DIRS.contains(&name) && entry.rel.len() < super::name::MAX_NAME_BYTES
            }
            FileType::RegularFile => {
                if let Ok(file_name) = FileName::parse(entry.rel) {
                    let stat = entry.stat;
                    out.insert(
                        file_name,
                        FileStamp {
                            size: stat.st_size as u64,
                            modified_ns: stat.st_mtime as i128 * 1_000_000_000
                                + stat.st_mtime_nsec as i128,
                            inode: stat.st_ino,
                        },
                    );
                }
                false
            }
            _ => false,
        }
    })?;
    Ok(out)
}

fn session_exists(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    conn.query_row("SELECT 1 FROM sessions WHERE id = ?1", [id], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

#[async_trait]
impl Store for LocalStore {
    async fn create_session(&self, tenant: &Tenant, owner: &SessionOwner) -> StoreResult<Session> {
        let session = Session::new(tenant, owner);
        self.insert_session(&session).await?;
        Ok(session)
    }

    async fn session(&self, tenant: &Tenant, id: &str) -> StoreResult<Option<Session>> {
        let (tenant, id) = (tenant.0.clone(), id.to_owned());
        self.with_db(move |conn| {
            let sql = format!(
                "UPDATE sessions SET last_used_at = ?1 WHERE id = ?2 AND tenant = ?3
                 RETURNING {SESSION_COLUMNS}"
            );
            // Cached: every call asks this (a parse cost more than the query).
            Ok(conn
                .prepare_cached(&sql)?
                .query_row(params![now_millis(), id, tenant], session_from_row)
                .optional()?)
        })
        .await
    }

    async fn session_exists(&self, tenant: &Tenant, id: &str) -> StoreResult<bool> {
        let (tenant, id) = (tenant.0.clone(), id.to_owned());
        self.with_db(move |conn| {
            Ok(conn
                .prepare_cached("SELECT 1 FROM sessions WHERE id = ?1 AND tenant = ?2")?
                .query_row(params![id, tenant], |_| Ok(()))
                .optional()?
                .is_some())
        })
        .await
    }

    async fn latest_session_for(
        &self,
        tenant: &Tenant,
        owner: &SessionOwner,
    ) -> StoreResult<Option<Session>> {
        let Some(entity) = owner.entity_id.clone() else {
            return Ok(None);
        };
        let (tenant, user) = (tenant.0.clone(), owner.user_id.clone());
        self.with_db(move |conn| {
            let sql = format!(
                "UPDATE sessions SET last_used_at = ?1 WHERE id = (
                    SELECT id FROM sessions
                    WHERE tenant = ?2 AND entity_id = ?3 AND user_id IS ?4
                    ORDER BY last_used_at DESC LIMIT 1)
                 RETURNING {SESSION_COLUMNS}"
            );
            Ok(conn
                .prepare_cached(&sql)?
                .query_row(
                    params![now_millis(), tenant, entity, user],
                    session_from_row,
                )
                .optional()?)
        })
        .await
    }

    async fn delete_session(&self, tenant: &Tenant, id: &str) -> StoreResult<bool> {
        let (tenant, sid) = (tenant.0.clone(), id.to_owned());
        let deleted = self
            .with_db(move |conn| {
                Ok(conn.execute(
                    "DELETE FROM sessions WHERE id = ?1 AND tenant = ?2",
                    params![sid, tenant],
                )? > 0)
            })
            .await?;
        if deleted {
            self.remove_workspaces(&[id.to_owned()]);
        }
        Ok(deleted)
    }

    async fn expire_idle_sessions(&self, idle: Duration) -> StoreResult<Vec<String>> {
        let cutoff = now_millis() - idle.as_millis() as i64;
        let gone = self
            .with_db(move |conn| {
                let mut stmt =
                    conn.prepare("DELETE FROM sessions WHERE last_used_at < ?1 RETURNING id")?;
                let ids = stmt
                    .query_map([cutoff], |row| row.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(ids)
            })
            .await?;
        self.remove_workspaces(&gone);
        Ok(gone)
    }

    async fn list_files(&self, session_id: &str) -> StoreResult<Vec<FileMeta>> {
        let sid = session_id.to_owned();
        self.with_db(move |conn| {
            let sql =
                format!("SELECT {FILE_COLUMNS} FROM files WHERE session_id = ?1 ORDER BY name");
            let mut stmt = conn.prepare(&sql)?;
            let files = stmt
                .query_map([sid], file_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(files)
        })
        .await
    }

    async fn file(&self, session_id: &str, file_id: &str) -> StoreResult<Option<FileMeta>> {
        let (sid, fid) = (session_id.to_owned(), file_id.to_owned());
        self.with_db(move |conn| {
            let sql = format!("SELECT {FILE_COLUMNS} FROM files WHERE session_id = ?1 AND id = ?2");
            Ok(conn
                .query_row(&sql, params![sid, fid], file_from_row)
                .optional()?)
        })
        .await
    }

    async fn stage(&self, mut body: BodyStream<'_>, max_bytes: u64) -> StoreResult<StagedFile> {
        let dir = self.staging_dir.clone();
        let temp = tokio::task::spawn_blocking(move || tempfile::NamedTempFile::new_in(dir))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
            .map_err(StoreError::from_io)?;
        // Readable by the sandbox user once it is in the workspace (tempfile makes 0600).
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        // One descriptor while the body streams, none once it is staged.
        let (file, temp) = temp.into_parts();
        let file = tokio::fs::File::from_std(file);
        let mut writer = BufWriter::with_capacity(STAGING_BUFFER_BYTES, file);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        loop {
            let next = match self.body_idle {
                Some(idle) => tokio::time::timeout(idle, body.next()).await.map_err(|_| {
                    StoreError::BodyStalled {
                        seconds: idle.as_secs(),
                    }
                })?,
                None => body.next().await,
            };
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| StoreError::BodyInterrupted(e.to_string()))?;
            size += chunk.len() as u64;
            if size > max_bytes {
                return Err(StoreError::TooLarge { limit: max_bytes });
            }
            hasher.update(&chunk);
            writer
                .write_all(&chunk)
                .await
                .map_err(StoreError::from_io)?;
        }
        writer.flush().await.map_err(StoreError::from_io)?;
        let file = writer.into_inner();
        file.sync_all().await.map_err(StoreError::from_io)?;
        drop(file);
        Ok(StagedFile {
            temp,
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    async fn commit(&self, session_id: &str, files: Vec<NewFile>) -> StoreResult<Vec<FileMeta>> {
        let sid = session_id.to_owned();
        let root = self.workspace_path(session_id);
        let quota = self.quota_bytes;
        let owner = self.owner(session_id);
        self.with_db(move |conn| {
            let tx = conn.transaction()?;
            if !session_exists(&tx, &sid)? {
                return Err(StoreError::SessionNotFound);
            }
            if let Some(quota) = quota {
                let mut total: i64 = tx.query_row(
                    "SELECT COALESCE(SUM(size), 0) FROM files WHERE session_id = ?1",
                    [&sid],
                    |r| r.get(0),
                )?;
                for f in &files {
                    let replaced: i64 = tx.query_row(
                        "SELECT COALESCE(SUM(size), 0) FROM files WHERE session_id = ?1 AND name = ?2",
                        params![sid, f.name.as_str()],
                        |r| r.get(0),
                    )?;
                    total += f.staged.size as i64 - replaced;
                }
                if total as u64 > quota {
                    return Err(StoreError::QuotaExceeded { quota });
                }
            }

            let workspace = Workspace::new(&root, owner);
            let now = now_millis();
            let mut metas = Vec::with_capacity(files.len());
            for f in files {
                let meta = FileMeta {
                    id: new_id(),
                    session_id: sid.clone(),
                    content_type: f.name.content_type(),
                    name: f.name,
                    size: f.staged.size,
                    sha256: f.staged.sha256.clone(),
                    modified_at: now,
                    read_only: f.read_only,
                    origin: f.origin,
                };
                tx.execute(
                    "DELETE FROM files WHERE session_id = ?1 AND name = ?2",
                    params![sid, meta.name.as_str()],
                )?;
                insert_file(&tx, &meta)?;
                // The session's uid owns it (set while it is still in the server's staging).
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(&f.staged.temp, Some(uid), Some(gid))?;
                }
                // The rename happens inside the transaction: if it fails, the metadata rolls back.
                workspace
                    .rename_into(&f.staged.temp, &meta.name)
                    .map_err(|err| name_conflict_or(err, &meta.name))?;
                // The file now lives at its name; stop the guard from deleting anything.
                let _ = f.staged.temp.keep();
                metas.push(meta);
            }
            tx.commit()?;
            Ok(metas)
        })
        .await
    }

    async fn open(&self, file: &FileMeta) -> StoreResult<tokio::fs::File> {
        let root = self.workspace_path(&file.session_id);
        let name = file.name.clone();
        let std_file =
            tokio::task::spawn_blocking(move || Workspace::new(&root, None).open_file(&name))
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        Ok(tokio::fs::File::from_std(std_file))
    }

    async fn delete_file(&self, session_id: &str, file_id: &str) -> StoreResult<Option<FileMeta>> {
        let (sid, fid) = (session_id.to_owned(), file_id.to_owned());
        let root = self.workspace_path(session_id);
        self.with_db(move |conn| {
            let tx = conn.transaction()?;
            let sql = format!(
                "DELETE FROM files WHERE session_id = ?1 AND id = ?2 RETURNING {FILE_COLUMNS}"
            );
            let Some(meta) = tx
                .query_row(&sql, params![sid, fid], file_from_row)
                .optional()?
            else {
                return Ok(None);
            };
            Workspace::new(&root, None).remove(&meta.name)?;
            tx.commit()?;
            Ok(Some(meta))
        })
        .await
    }

    async fn note_kernel(&self, session_id: &str) -> StoreResult<bool> {
        let sid = session_id.to_owned();
        self.with_db(move |conn| {
            let tx = conn.transaction()?;
            let before: bool = tx
                .prepare_cached("SELECT kernel_used FROM sessions WHERE id = ?1")?
                .query_row([&sid], |r| r.get(0))
                .optional()?
                .unwrap_or(false);
            if !before {
                tx.execute("UPDATE sessions SET kernel_used = 1 WHERE id = ?1", [&sid])?;
            }
            tx.commit()?;
            Ok(before)
        })
        .await
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        self.with_db(|conn| {
            let sessions: i64 =
                conn.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))?;
            let (files, bytes): (i64, i64) = conn.query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM files",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(StoreStats {
                sessions: sessions as u64,
                files: files as u64,
                bytes: bytes as u64,
            })
        })
        .await
    }

    async fn snapshot(&self, session_id: &str) -> StoreResult<Snapshot> {
        let root = self.workspace_path(session_id);
        tokio::task::spawn_blocking(move || walk_workspace(&root))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
            .map_err(StoreError::from_io)
    }

    async fn record_changes(
        &self,
        session_id: &str,
        changed: Vec<FileName>,
        removed: Vec<FileName>,
    ) -> StoreResult<Vec<FileMeta>> {
        // Most runs change no file: no hashing and no transaction (each a blocking task).
        if changed.is_empty() && removed.is_empty() {
            return Ok(Vec::new());
        }
        let root = self.workspace_path(session_id);
        let budget = self.quota_bytes.unwrap_or(MAX_HASHED_BYTES_PER_RUN);
        // Hash outside the metadata lock: big outputs take a while.
        let hashed = tokio::task::spawn_blocking(move || hash_changed(&root, changed, budget))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;

        let sid = session_id.to_owned();
        self.with_db(move |conn| {
            let tx = conn.transaction()?;
            for name in &removed {
                tx.execute(
                    "DELETE FROM files WHERE session_id = ?1 AND name = ?2",
                    params![sid, name.as_str()],
                )?;
            }
            let now = now_millis();
            let mut metas = Vec::with_capacity(hashed.len());
            for (name, size, sha256) in hashed {
                let sql = format!(
                    "DELETE FROM files WHERE session_id = ?1 AND name = ?2 RETURNING {FILE_COLUMNS}"
                );
                let previous = tx
                    .query_row(&sql, params![sid, name.as_str()], file_from_row)
                    .optional()?;
                let meta = FileMeta {
                    id: new_id(),
                    session_id: sid.clone(),
                    content_type: name.content_type(),
                    name,
                    size,
                    sha256,
                    modified_at: now,
                    read_only: previous.as_ref().is_some_and(|p| p.read_only),
                    origin: previous.map(|p| p.origin).unwrap_or_default(),
                };
                insert_file(&tx, &meta)?;
                metas.push(meta);
            }
            tx.commit()?;
            Ok(metas)
        })
        .await
    }

    async fn copy_into(
        &self,
        source: &FileMeta,
        session_id: &str,
        name: FileName,
        read_only: bool,
        origin: FileOrigin,
    ) -> StoreResult<FileMeta> {
        let src_root = self.workspace_path(&source.session_id);
        let src_name = source.name.clone();
        let sha256 = source.sha256.clone();
        let staging = self.staging_dir.clone();
        let staged = tokio::task::spawn_blocking(move || -> std::io::Result<StagedFile> {
            let mut src = Workspace::new(&src_root, None).open_file(&src_name)?;
            let temp = tempfile::NamedTempFile::new_in(staging)?;
            temp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
            // std's copy between files uses copy_file_range: no bytes pass through memory,
            // and the result is a copy, never a link to the source.
            let size = std::io::copy(&mut src, &mut temp.as_file())?;
            Ok(StagedFile {
                temp: temp.into_temp_path(),
                size,
                sha256,
            })
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
        .map_err(StoreError::from_io)?;
        let file = NewFile {
            name,
            staged,
            read_only,
            origin,
        };
        self.commit_one(session_id, file).await
    }

    async fn guard_read_only(
        &self,
        session_id: &str,
        names: Vec<FileName>,
    ) -> StoreResult<ReadOnlyCopies> {
        if names.is_empty() {
            return Ok(ReadOnlyCopies(Vec::new()));
        }
        let root = self.workspace_path(session_id);
        let staging = self.staging_dir.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<ReadOnlyCopies> {
            let workspace = Workspace::new(&root, None);
            let mut copies = Vec::with_capacity(names.len());
            for name in names {
                let Ok(mut file) = workspace.open_file(&name) else {
                    continue;
                };
                let identity = identify(&file)?;
                let temp = tempfile::NamedTempFile::new_in(&staging)?;
                temp.as_file()
                    .set_permissions(std::fs::Permissions::from_mode(0o444))?;
                std::io::copy(&mut file, &mut temp.as_file())?;
                copies.push((name, temp.into_temp_path(), identity));
            }
            Ok(ReadOnlyCopies(copies))
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
        .map_err(StoreError::from_io)
    }

    async fn restore_read_only(
        &self,
        session_id: &str,
        copies: ReadOnlyCopies,
    ) -> StoreResult<Vec<FileName>> {
        if copies.0.is_empty() {
            return Ok(Vec::new());
        }
        let root = self.workspace_path(session_id);
        let restored = tokio::task::spawn_blocking(move || {
            let workspace = Workspace::new(&root, None);
            let mut restored = Vec::new();
            for (name, copy, identity) in copies.0 {
                let unchanged = workspace
                    .open_file(&name)
                    .and_then(|f| identify(&f))
                    .is_ok_and(|now| now == identity);
                if unchanged {
                    continue;
                }
                // The rename replaces what the run left at the name (a file or a link; a
                // directory there is left, and the copy with it).
                if let Err(err) = workspace.rename_into(&copy, &name) {
                    tracing::warn!(file = %name, error = %err, "a read-only file could not be put back");
                    continue;
                }
                let _ = copy.keep();
                restored.push(name);
            }
            restored
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        Ok(restored)
    }

    fn workspace_path(&self, session_id: &str) -> PathBuf {
        self.sessions_dir.join(session_id)
    }
}

/// What identifies a file's bytes without reading them: a write in place changes the
/// ctime even when the mtime is set back.
fn identify(file: &std::fs::File) -> std::io::Result<[i128; 6]> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata()?;
    Ok([
        m.dev() as i128,
        m.ino() as i128,
        m.size() as i128,
        m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        m.mode() as i128,
    ])
}
