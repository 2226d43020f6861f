//! The store for several nodes: metadata in Redis, file bytes in S3-compatible object
//! storage, and on each node a [`LocalStore`] as the cache of workspaces its sandboxes use.
//!
//! What is true lives in Redis and the bucket; the node's cache follows:
//! - every change goes to the cache first (the same checks and renames as a single node),
//!   then its bytes to the bucket under `sessions/<session>/<file id>` (a file id is never
//!   reused, so an object is written once: a conditional create), then its metadata to Redis
//!   in one Lua script that checks the quota again and replaces files by name. A change that
//!   fails at Redis is undone in the bucket, and the cache is marked stale; nothing that was
//!   acknowledged is lost, and a lost race loses no file.
//! - every session carries a generation in Redis, raised by every change; a node remembers
//!   the generation its cache matches and syncs the cache (downloading what differs,
//!   removing what is gone) before a run and before a change whenever they differ, so a
//!   session another node worked on is hydrated from the bucket.
//!
//! Redis keys, under `REDIS_KEY_PREFIX`: `s:<id>` (a session's hash: tenant, owner labels,
//! times, `kernel`, `bytes`, `gen`, `okey`), `f:<id>` (file name → file JSON), `i:<id>` (file
//! id → name), `used` (sessions by last use), `o:<hash>` (an owner's sessions by last use:
//! the entity map) and `stats`. One Redis (with replicas if wanted), not Redis Cluster: the
//! scripts touch keys they compute.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutPayload, RetryConfig};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::{
    Allowance, BodyStream, FileMeta, FileName, FileOrigin, LocalStore, NewFile, Placement,
    ReadOnlyCopies, Session, Share, ShareLimits, Snapshot, StagedFile, Store, StoreError,
    StoreResult, StoreStats, now_millis,
};
use crate::session::{SessionOwner, Tenant, new_id};

/// Where the shared parts are and how to reach them.
#[derive(Debug, Clone)]
pub struct SharedSettings {
    pub redis_url: String,
    pub key_prefix: String,
    pub s3_endpoint: String,
    pub s3_bucket: String,
    pub s3_region: String,
    pub s3_access_key_id: String,
    pub s3_secret_access_key: String,
}

/// Files up to this size go to the bucket in one conditional PUT; larger ones in parts.
const SINGLE_PUT_BYTES: u64 = 16 * 1024 * 1024;
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Syncs of a session that may find a file replaced under them before one gives up.
const SYNC_ATTEMPTS: usize = 5;
/// Sessions one expiry round removes per script call.
const EXPIRE_BATCH: usize = 200;

const REDIS: &str = "the metadata store (Redis)";
const BUCKET: &str = "the file storage (S3)";

fn object_path(session_id: &str, file_id: &str) -> ObjectPath {
    ObjectPath::from(format!("sessions/{session_id}/{file_id}"))
}

/// A file as Redis keeps it (JSON, read and written by the scripts too).
#[derive(Debug, Serialize, Deserialize)]
struct StoredFile {
    id: String,
    name: String,
    size: u64,
    sha256: String,
    content_type: String,
    modified_at: i64,
    #[serde(default)]
    read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ref_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
}

impl StoredFile {
    fn from_meta(meta: &FileMeta) -> Self {
        StoredFile {
            id: meta.id.clone(),
            name: meta.name.to_string(),
            size: meta.size,
            sha256: meta.sha256.clone(),
            content_type: meta.content_type.clone(),
            modified_at: meta.modified_at,
            read_only: meta.read_only,
            kind: meta.origin.kind.clone(),
            ref_id: meta.origin.ref_id.clone(),
            version: meta.origin.version.clone(),
        }
    }

    fn parse(session_id: &str, json: &str) -> StoreResult<FileMeta> {
        let f: StoredFile = serde_json::from_str(json)
            .map_err(|e| StoreError::Io(io::Error::other(format!("file metadata: {e}"))))?;
        let name = FileName::parse(&f.name)
            .map_err(|e| StoreError::Io(io::Error::other(format!("file name: {e}"))))?;
        Ok(FileMeta {
            id: f.id,
            session_id: session_id.to_owned(),
            name,
            size: f.size,
            sha256: f.sha256,
            content_type: f.content_type,
            modified_at: f.modified_at,
            read_only: f.read_only,
            origin: FileOrigin {
                kind: f.kind,
                ref_id: f.ref_id,
                version: f.version,
            },
        })
    }
}

// Every script gets the key prefix as ARGV[1]. Lua's `-x` of 0 is "-0", which Redis does not
// take as an integer: counters are moved by `0 - x`.

/// ARGV: prefix, session, tenant, now → [tenant, user, entity, created] or nil.
const TOUCH: &str = r#"
local p, sid = ARGV[1], ARGV[2]
local s = p .. 's:' .. sid
local f = redis.call('HMGET', s, 'tenant', 'user', 'entity', 'created', 'okey')
if not f[1] or f[1] ~= ARGV[3] then return false end
redis.call('HSET', s, 'used', ARGV[4])
redis.call('ZADD', p .. 'used', ARGV[4], sid)
if f[5] then redis.call('ZADD', f[5], ARGV[4], sid) end
return {f[1], f[2] or false, f[3] or false, f[4]}
"#;

/// ARGV: prefix, owner key, now → [id, tenant, user, entity, created] or nil.
const LATEST: &str = r#"
local p, okey = ARGV[1], ARGV[2]
local ids = redis.call('ZREVRANGE', okey, 0, 0)
if #ids == 0 then return false end
local sid = ids[1]
local s = p .. 's:' .. sid
local f = redis.call('HMGET', s, 'tenant', 'user', 'entity', 'created')
if not f[1] then redis.call('ZREM', okey, sid) return false end
redis.call('HSET', s, 'used', ARGV[3])
redis.call('ZADD', p .. 'used', ARGV[3], sid)
redis.call('ZADD', okey, ARGV[3], sid)
return {sid, f[1], f[2] or false, f[3] or false, f[4]}
"#;

/// Removing a session's keys, shared by DELETE and EXPIRE.
const DROP: &str = r#"
local function drop(p, sid)
  local s = p .. 's:' .. sid
  local okey = redis.call('HGET', s, 'okey')
  local files = redis.call('HVALS', p .. 'f:' .. sid)
  local bytes = 0
  for _, m in ipairs(files) do bytes = bytes + cjson.decode(m).size end
  redis.call('HINCRBY', p .. 'stats', 'files', 0 - #files)
  redis.call('HINCRBY', p .. 'stats', 'bytes', 0 - bytes)
  redis.call('DEL', s, p .. 'f:' .. sid, p .. 'i:' .. sid)
  redis.call('ZREM', p .. 'used', sid)
  if okey then redis.call('ZREM', okey, sid) end
end
"#;

/// ARGV: prefix, session, tenant → 1 when it was deleted.
const DELETE: &str = r#"
local p, sid = ARGV[1], ARGV[2]
if redis.call('HGET', p .. 's:' .. sid, 'tenant') ~= ARGV[3] then return 0 end
drop(p, sid)
return 1
"#;

/// ARGV: prefix, cutoff, batch → [id, tenant, id, tenant, …] of the sessions removed.
const EXPIRE: &str = r#"
local p = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', p .. 'used', '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, sid in ipairs(ids) do
  local tenant = redis.call('HGET', p .. 's:' .. sid, 'tenant')
  drop(p, sid)
  if tenant then out[#out + 1] = sid; out[#out + 1] = tenant end
end
return out
"#;

/// Files in and out of a session, all or nothing.
/// ARGV: prefix, session, quota (-1: none), inherit (1: a replaced file's read-only flag and
/// origin carry over), n, n names to remove, then the new files' JSON.
/// → [generation, m, m replaced or removed ids, the stored JSON of each new file].
const APPLY: &str = r#"
local p, sid = ARGV[1], ARGV[2]
local s, fk, ik = p .. 's:' .. sid, p .. 'f:' .. sid, p .. 'i:' .. sid
if redis.call('EXISTS', s) == 0 then return redis.error_reply('NOSESSION session not found') end
local quota, inherit, nrem = tonumber(ARGV[3]), ARGV[4] == '1', tonumber(ARGV[5])
local first_put = 6 + nrem
if quota >= 0 then
  local total = tonumber(redis.call('HGET', s, 'bytes') or '0')
  for i = 6, first_put - 1 do
    local old = redis.call('HGET', fk, ARGV[i])
    if old then total = total - cjson.decode(old).size end
  end
  for i = first_put, #ARGV do
    local m = cjson.decode(ARGV[i])
    local old = redis.call('HGET', fk, m.name)
    if old then total = total - cjson.decode(old).size end
    total = total + m.size
  end
  if total > quota then return redis.error_reply('QUOTA the session quota would be exceeded') end
end
local dropped, dfiles, dbytes = {}, 0, 0
local function take(name)
  local old = redis.call('HGET', fk, name)
  if not old then return nil end
  local m = cjson.decode(old)
  redis.call('HDEL', fk, name)
  redis.call('HDEL', ik, m.id)
  dropped[#dropped + 1] = m.id
  dfiles, dbytes = dfiles - 1, dbytes - m.size
  return m
end
for i = 6, first_put - 1 do take(ARGV[i]) end
local stored = {}
for i = first_put, #ARGV do
  local m = cjson.decode(ARGV[i])
  local old = take(m.name)
  if inherit and old then
    m.read_only, m.kind, m.ref_id, m.version = old.read_only, old.kind, old.ref_id, old.version
  end
  local json = cjson.encode(m)
  redis.call('HSET', fk, m.name, json)
  redis.call('HSET', ik, m.id, m.name)
  dfiles, dbytes = dfiles + 1, dbytes + m.size
  stored[#stored + 1] = json
end
redis.call('HINCRBY', s, 'bytes', dbytes)
redis.call('HINCRBY', p .. 'stats', 'files', dfiles)
redis.call('HINCRBY', p .. 'stats', 'bytes', dbytes)
local out = {redis.call('HINCRBY', s, 'gen', 1), #dropped}
for _, id in ipairs(dropped) do out[#out + 1] = id end
for _, json in ipairs(stored) do out[#out + 1] = json end
return out
"#;

/// ARGV: prefix, session, file id → [generation, the file's JSON] or nil.
const DELETE_FILE: &str = r#"
local p, sid = ARGV[1], ARGV[2]
local s, fk, ik = p .. 's:' .. sid, p .. 'f:' .. sid, p .. 'i:' .. sid
local name = redis.call('HGET', ik, ARGV[3])
if not name then return false end
local json = redis.call('HGET', fk, name)
redis.call('HDEL', ik, ARGV[3])
redis.call('HDEL', fk, name)
local size = json and cjson.decode(json).size or 0
redis.call('HINCRBY', s, 'bytes', 0 - size)
redis.call('HINCRBY', p .. 'stats', 'files', -1)
redis.call('HINCRBY', p .. 'stats', 'bytes', 0 - size)
return {redis.call('HINCRBY', s, 'gen', 1), json or false}
"#;

/// ARGV: prefix, session → whether the session had a kernel before (and now has had one).
const NOTE_KERNEL: &str = r#"
local s = ARGV[1] .. 's:' .. ARGV[2]
local before = redis.call('HGET', s, 'kernel')
if redis.call('EXISTS', s) == 1 then redis.call('HSET', s, 'kernel', 1) end
return before == '1' and 1 or 0
"#;

/// ARGV: prefix, session, node → 1 when another node ran the session's Python last.
const CLAIM_KERNEL: &str = r#"
local s = ARGV[1] .. 's:' .. ARGV[2]
if redis.call('EXISTS', s) == 0 then return 0 end
local before = redis.call('HGET', s, 'knode')
redis.call('HSET', s, 'knode', ARGV[3])
return (before and before ~= ARGV[3]) and 1 or 0
"#;

/// ARGV: prefix, session, node → false (nobody else holds it), [node] (its lease ended) or
/// [node, url] (its lease is live).
const PLACE: &str = r#"
local owner = redis.call('HGET', ARGV[1] .. 's:' .. ARGV[2], 'knode')
if not owner or owner == ARGV[3] then return false end
local url = redis.call('GET', ARGV[1] .. 'n:' .. owner)
if not url then return {owner} end
return {owner, url}
"#;

/// A generic cell rate per key, on Redis's clock: ARGV: prefix, key, ms between runs →
/// -1 (granted) or the ms until the next run would be.
const TAKE_RUN: &str = r#"
local k = ARGV[1] .. 'r:' .. ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local step = tonumber(ARGV[3])
local burst = 60000 - step
local tat = tonumber(redis.call('GET', k) or '0')
if tat < now then tat = now end
if tat - now > burst then return tat - now - burst end
redis.call('SET', k, string.format('%.0f', tat + step), 'PX', tat + step - now + 1000)
return -1
"#;

/// A tenant's runs across nodes: `cr:<tenant>` holds the runs with a slot and `cq:<tenant>`
/// the runs waiting for one, each scored by when its place ends (Redis's clock) unless its
/// node renews it; `cw:<tenant>` is the line of waiting runs ready to start, in the order
/// they joined it, a run that left `cq` dropped from it as it is met. Each key lasts as
/// long as its last place. ARGV: prefix, tenant key, run, share, queue limit, lease ms,
/// first (1: a new run) → 1 (a slot), 0 (waiting) or -1 - n (refused: the tenant runs its
/// share and n runs wait).
const TAKE_SHARE: &str = r#"
local p, t, m = ARGV[1], ARGV[2], ARGV[3]
local run, queue, line = p .. 'cr:' .. t, p .. 'cq:' .. t, p .. 'cw:' .. t
local share, max_queued, lease = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local c = redis.call('TIME')
local now = tonumber(c[1]) * 1000 + math.floor(tonumber(c[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', run, '-inf', now)
redis.call('ZREMRANGEBYSCORE', queue, '-inf', now)
local function place(key)
  redis.call('ZADD', key, now + lease, m)
  redis.call('PEXPIRE', key, lease)
end
if redis.call('ZSCORE', run, m) then place(run) return 1 end
if ARGV[7] == '1' then
  local queued = redis.call('ZCARD', queue)
  if redis.call('ZCARD', run) >= share and queued >= max_queued then return -1 - queued end
  place(queue)
  return 0
end
place(queue)
if not redis.call('ZSCORE', line, m) then redis.call('ZADD', line, now, m) end
redis.call('PEXPIRE', line, lease)
local free = share - redis.call('ZCARD', run)
local i = 0
while i < free do
  local ahead = redis.call('ZRANGE', line, i, i)[1]
  if not ahead then return 0 end
  if ahead == m then
    redis.call('ZREM', line, m)
    redis.call('ZREM', queue, m)
    place(run)
    return 1
  end
  if redis.call('ZSCORE', queue, ahead) then i = i + 1 else redis.call('ZREM', line, ahead) end
end
return 0
"#;

/// ARGV: prefix, tenant key, run, granted (1: it holds a slot), lease ms. A place that
/// ended meanwhile (Redis was out of reach) is taken again: the run is still there.
const RENEW_SHARE: &str = r#"
local key = ARGV[1] .. (ARGV[4] == '1' and 'cr:' or 'cq:') .. ARGV[2]
local c = redis.call('TIME')
local now = tonumber(c[1]) * 1000 + math.floor(tonumber(c[2]) / 1000)
redis.call('ZADD', key, now + tonumber(ARGV[5]), ARGV[3])
redis.call('PEXPIRE', key, tonumber(ARGV[5]))
return 1
"#;

/// ARGV: prefix, tenant key, run.
const RELEASE_SHARE: &str = r#"
redis.call('ZREM', ARGV[1] .. 'cr:' .. ARGV[2], ARGV[3])
redis.call('ZREM', ARGV[1] .. 'cq:' .. ARGV[2], ARGV[3])
redis.call('ZREM', ARGV[1] .. 'cw:' .. ARGV[2], ARGV[3])
return 1
"#;

/// ARGV: prefix, program key → false (no node recorded it), [node] (its lease ended) or
/// [node, url] (its lease is live).
const PLACE_PROGRAM: &str = r#"
local owner = redis.call('GET', ARGV[1] .. 'p:' .. ARGV[2])
if not owner then return false end
local url = redis.call('GET', ARGV[1] .. 'n:' .. owner)
if not url then return {owner} end
return {owner, url}
"#;

struct Scripts {
    place_program: redis::Script,
    take_share: redis::Script,
    renew_share: redis::Script,
    release_share: redis::Script,
    take_run: redis::Script,
    place: redis::Script,
    claim_kernel: redis::Script,
    touch: redis::Script,
    latest: redis::Script,
    delete: redis::Script,
    expire: redis::Script,
    apply: redis::Script,
    delete_file: redis::Script,
    note_kernel: redis::Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            place_program: redis::Script::new(PLACE_PROGRAM),
            take_share: redis::Script::new(TAKE_SHARE),
            renew_share: redis::Script::new(RENEW_SHARE),
            release_share: redis::Script::new(RELEASE_SHARE),
            take_run: redis::Script::new(TAKE_RUN),
            place: redis::Script::new(PLACE),
            claim_kernel: redis::Script::new(CLAIM_KERNEL),
            touch: redis::Script::new(TOUCH),
            latest: redis::Script::new(LATEST),
            delete: redis::Script::new(&format!("{DROP}{DELETE}")),
            expire: redis::Script::new(&format!("{DROP}{EXPIRE}")),
            apply: redis::Script::new(APPLY),
            delete_file: redis::Script::new(DELETE_FILE),
            note_kernel: redis::Script::new(NOTE_KERNEL),
        }
    }
}

pub struct SharedStore {
    /// This process's name among the nodes (new at every start: a restarted node holds no
    /// kernels).
    node_id: String,
    redis: ConnectionManager,
    prefix: String,
    scripts: Scripts,
    objects: Arc<dyn ObjectStore>,
    /// This node's workspaces and their files (also a cache of the files' metadata).
    cache: LocalStore,
    quota_bytes: Option<u64>,
    /// The generation of each session as this node's cache holds it.
    synced: Mutex<HashMap<String, i64>>,
    /// One sync of a session at a time.
    syncing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A session's `gen`, `tenant`, `user`, `entity` and `created`, as Redis answers HMGET.
type SessionFields = (
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

fn redis_error(err: redis::RedisError) -> StoreError {
    match err.code() {
        Some("NOSESSION") => StoreError::SessionNotFound,
        _ => StoreError::Unavailable {
            what: REDIS,
            reason: err.to_string(),
        },
    }
}

fn bucket_error(err: object_store::Error) -> StoreError {
    StoreError::Unavailable {
        what: BUCKET,
        reason: err.to_string(),
    }
}

/// A key's part made of names (tenants, users) that Redis never sees as they are.
fn hashed(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update(b"\0");
        }
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

fn parse_session(id: String, fields: Vec<Option<String>>) -> Option<Session> {
    let mut fields = fields.into_iter();
    let tenant = fields.next()??;
    let user_id = fields.next()?;
    let entity_id = fields.next()?;
    let created_at = fields
        .next()?
        .and_then(|c| c.parse().ok())
        .unwrap_or_default();
    Some(Session {
        id,
        tenant: Tenant(tenant),
        user_id,
        entity_id,
        created_at,
        last_used_at: now_millis(),
    })
}

impl SharedStore {
    /// Connect to Redis and the bucket (both must answer) around a node cache.
    pub async fn open(
        settings: &SharedSettings,
        cache: LocalStore,
        quota_bytes: Option<u64>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let client = redis::Client::open(settings.redis_url.as_str())
            .context("REDIS_URL is not a Redis URL")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let mut redis = tokio::time::timeout(
            Duration::from_secs(10),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .context("Redis at REDIS_URL did not answer within 10 s")?
        .context("Redis at REDIS_URL cannot be reached")?;
        let _: String = redis::cmd("PING")
            .query_async(&mut redis)
            .await
            .context("Redis at REDIS_URL does not answer PING")?;

        let objects = AmazonS3Builder::new()
            .with_endpoint(&settings.s3_endpoint)
            .with_bucket_name(&settings.s3_bucket)
            .with_region(&settings.s3_region)
            .with_access_key_id(&settings.s3_access_key_id)
            .with_secret_access_key(&settings.s3_secret_access_key)
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(settings.s3_endpoint.starts_with("http://"))
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(300)),
            )
            .build()
            .context("the S3 settings (S3_ENDPOINT, S3_BUCKET, …) are not usable")?;
        let objects: Arc<dyn ObjectStore> = Arc::new(objects);

        // A missing object is the expected answer; anything else means no bucket or no access.
        match objects.head(&ObjectPath::from("probe/none")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(err) => {
                return Err(anyhow::anyhow!(err).context(format!(
                    "the bucket {} at S3_ENDPOINT cannot be used",
                    settings.s3_bucket
                )));
            }
        }
        Ok(SharedStore {
            node_id: new_id(),
            redis,
            prefix: settings.key_prefix.clone(),
            scripts: Scripts::new(),
            objects,
            cache,
            quota_bytes,
            synced: Mutex::new(HashMap::new()),
            syncing: Mutex::new(HashMap::new()),
        })
    }

    fn conn(&self) -> ConnectionManager {
        self.redis.clone()
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    /// The entity map's key for one owner: (tenant, entity, user), hashed.
    fn owner_key(&self, tenant: &Tenant, entity: &str, user: Option<&str>) -> String {
        let mut hasher = Sha256::new();
        for part in [tenant.0.as_str(), "\0", entity, "\0"] {
            hasher.update(part.as_bytes());
        }
        match user {
            Some(user) => hasher.update(format!("u{user}").as_bytes()),
            None => hasher.update(b"-"),
        }
        self.key("o", &hex::encode(hasher.finalize()))
    }

    /// Record the generation a change of ours produced; the cache is in sync only when it
    /// was at the one before.
    fn advance(&self, session_id: &str, generation: i64) {
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        match synced.get(session_id) {
            Some(g) if *g == generation - 1 => {
                synced.insert(session_id.to_owned(), generation);
            }
            _ => {
                synced.remove(session_id);
            }
        }
    }

    /// The cache may differ from Redis: the next sync compares them file by file.
    fn mark_stale(&self, session_id: &str) {
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        synced.remove(session_id);
    }

    /// A session that is gone: nothing of it is kept in memory.
    fn forget(&self, session_id: &str) {
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        synced.remove(session_id);
        let mut syncing = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        syncing.remove(session_id);
    }

    /// This node's lock on a session's cache. Every sync and every change holds it, so the
    /// node's changes reach Redis in the order they reached its cache (a change of another
    /// node in between shows as a skipped generation).
    async fn lock_session(&self, session_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut syncing = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(syncing.entry(session_id.to_owned()).or_default())
        };
        lock.lock_owned().await
    }

    /// Bring this node's copy of a session up to what Redis and the bucket hold.
    async fn sync(&self, session_id: &str) -> StoreResult<()> {
        let _turn = self.lock_session(session_id).await;
        self.sync_locked(session_id).await
    }

    /// [`Self::sync`] under the session's lock.
    async fn sync_locked(&self, session_id: &str) -> StoreResult<()> {
        // A file replaced by another node between the listing and the download has no
        // object any more: list again (a few times; then the cache stays marked stale).
        for _ in 0..SYNC_ATTEMPTS {
            if self.sync_once(session_id).await? {
                return Ok(());
            }
        }
        tracing::info!(session = %session_id, "a session changed under every sync attempt; the next call syncs again");
        Ok(())
    }

    /// One pass of [`Self::sync`]; false when a listed file's object was gone.
    async fn sync_once(&self, session_id: &str) -> StoreResult<bool> {
        let (generation, tenant, user, entity, created): SessionFields = redis::cmd("HMGET")
            .arg(self.key("s", session_id))
            .arg(&["gen", "tenant", "user", "entity", "created"])
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        let Some(tenant) = tenant.map(Tenant) else {
            // Gone from Redis (deleted or expired elsewhere): nothing to hold.
            return Ok(true);
        };
        let generation = generation.unwrap_or(0);
        // Known here: keep the cache's own clock of use fresh (its expiry follows it).
        let cached = self.cache.session(&tenant, session_id).await?.is_some();
        let in_sync = {
            let synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
            synced.get(session_id) == Some(&generation)
        };
        if cached && in_sync {
            return Ok(true);
        }
        if !cached {
            let now = now_millis();
            self.cache
                .insert_session(&Session {
                    id: session_id.to_owned(),
                    tenant,
                    user_id: user,
                    entity_id: entity,
                    created_at: created.unwrap_or(now),
                    last_used_at: now,
                })
                .await?;
        }
        let remote = self.list_files(session_id).await?;
        let mut local: HashMap<String, FileMeta> = self
            .cache
            .list_files(session_id)
            .await?
            .into_iter()
            .map(|f| (f.name.to_string(), f))
            .collect();
        let mut fetched = Vec::new();
        let mut complete = true;
        for file in remote {
            match local.remove(file.name.as_str()) {
                Some(here) if here.sha256 == file.sha256 => {}
                _ => match self.fetch_if_there(&file).await? {
                    Some(staged) => fetched.push(NewFile {
                        name: file.name.clone(),
                        staged,
                        read_only: file.read_only,
                        origin: file.origin.clone(),
                    }),
                    None => complete = false,
                },
            }
        }
        for gone in local.into_values() {
            self.cache.delete_file(session_id, &gone.id).await?;
        }
        let hydrated = fetched.len();
        if !fetched.is_empty() {
            self.cache.commit(session_id, fetched).await?;
        }
        if hydrated > 0 || !cached {
            tracing::debug!(session = %session_id, files = hydrated, "hydrated a session from the bucket");
        }
        if complete {
            let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
            synced.insert(session_id.to_owned(), generation);
        }
        Ok(complete)
    }

    /// A file's bytes from the bucket, staged on this node (hash checked).
    async fn fetch(&self, file: &FileMeta) -> StoreResult<StagedFile> {
        self.fetch_if_there(file)
            .await?
            .ok_or_else(|| StoreError::Unavailable {
                what: BUCKET,
                reason: format!("the object of file {} is missing", file.id),
            })
    }

    /// [`Self::fetch`], or `None` when the object is not there (replaced or deleted since
    /// its metadata was read).
    async fn fetch_if_there(&self, file: &FileMeta) -> StoreResult<Option<StagedFile>> {
        let got = match self
            .objects
            .get(&object_path(&file.session_id, &file.id))
            .await
        {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(bucket_error(err)),
        };
        let body: BodyStream<'static> = Box::pin(got.into_stream().map_err(io::Error::other));
        let staged = self.cache.stage(body, u64::MAX).await?;
        if staged.sha256 != file.sha256 {
            return Err(StoreError::Io(io::Error::other(format!(
                "the bucket's copy of file {} does not match its hash",
                file.id
            ))));
        }
        Ok(Some(staged))
    }

    /// Upload a cached file's bytes; returns the size and hash of what was sent (user code
    /// may have changed the file since it was hashed).
    async fn upload(&self, meta: &FileMeta) -> StoreResult<(u64, String)> {
        let mut file = self.cache.open(meta).await?;
        let path = object_path(&meta.session_id, &meta.id);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        if meta.size <= SINGLE_PUT_BYTES {
            let mut buf = Vec::with_capacity(meta.size as usize);
            (&mut file)
                .take(SINGLE_PUT_BYTES + 1)
                .read_to_end(&mut buf)
                .await
                .map_err(StoreError::from_io)?;
            if buf.len() as u64 <= SINGLE_PUT_BYTES {
                hasher.update(&buf);
                size = buf.len() as u64;
                self.objects
                    .put_opts(&path, PutPayload::from(buf), PutMode::Create.into())
                    .await
                    .map_err(bucket_error)?;
                return Ok((size, hex::encode(hasher.finalize())));
            }
            // It grew past one PUT since it was hashed: send it in parts after all.
            let upload = self
                .objects
                .put_multipart(&path)
                .await
                .map_err(bucket_error)?;
            let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            hasher.update(&buf);
            size += buf.len() as u64;
            writer.write(&buf);
            return self.finish_parts(file, writer, hasher, size).await;
        }
        let upload = self
            .objects
            .put_multipart(&path)
            .await
            .map_err(bucket_error)?;
        let writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        self.finish_parts(file, writer, hasher, size).await
    }

    async fn finish_parts(
        &self,
        mut file: tokio::fs::File,
        mut writer: object_store::WriteMultipart,
        mut hasher: Sha256,
        mut size: u64,
    ) -> StoreResult<(u64, String)> {
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = file.read(&mut buf).await.map_err(StoreError::from_io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
            writer.write(&buf[..n]);
            // At most two parts in flight: memory stays at a few parts whatever the size.
            writer.wait_for_capacity(2).await.map_err(bucket_error)?;
        }
        writer.finish().await.map_err(bucket_error)?;
        Ok((size, hex::encode(hasher.finalize())))
    }

    async fn delete_objects(&self, paths: Vec<ObjectPath>) {
        for path in paths {
            match self.objects.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => {
                    tracing::warn!(object = %path, error = %err, "could not delete an object; it stays in the bucket")
                }
            }
        }
    }

    async fn delete_session_objects(&self, session_id: &str) {
        let prefix = ObjectPath::from(format!("sessions/{session_id}"));
        let listed: Vec<ObjectPath> = match self
            .objects
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
        {
            Ok(listed) => listed,
            Err(err) => {
                tracing::warn!(session = %session_id, error = %err, "could not list a deleted session's objects; they stay in the bucket");
                return;
            }
        };
        self.delete_objects(listed).await;
    }

    /// Publish files the cache has just taken (their bytes to the bucket, then their
    /// metadata to Redis, all or nothing); `removed` names go in the same step.
    async fn publish(
        &self,
        session_id: &str,
        mut metas: Vec<FileMeta>,
        removed: Vec<FileName>,
        inherit: bool,
        check_quota: bool,
    ) -> StoreResult<Vec<FileMeta>> {
        let mut uploaded = Vec::with_capacity(metas.len());
        for meta in &mut metas {
            match self.upload(meta).await {
                Ok((size, sha256)) => {
                    meta.size = size;
                    meta.sha256 = sha256;
                    uploaded.push(object_path(session_id, &meta.id));
                }
                Err(err) => {
                    self.mark_stale(session_id);
                    self.delete_objects(uploaded).await;
                    return Err(err);
                }
            }
        }
        let quota = match (check_quota, self.quota_bytes) {
            (true, Some(q)) => q as i64,
            _ => -1,
        };
        let mut call = self.scripts.apply.prepare_invoke();
        call.arg(&self.prefix)
            .arg(session_id)
            .arg(quota)
            .arg(if inherit { 1 } else { 0 })
            .arg(removed.len());
        for name in &removed {
            call.arg(name.as_str());
        }
        for meta in &metas {
            let json = serde_json::to_string(&StoredFile::from_meta(meta))
                .map_err(|e| StoreError::Io(io::Error::other(e)))?;
            call.arg(json);
        }
        let reply: Result<Vec<redis::Value>, _> = call.invoke_async(&mut self.conn()).await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) => {
                // The cache took files Redis does not have: the next sync puts it right.
                self.mark_stale(session_id);
                self.delete_objects(uploaded).await;
                return Err(match err.code() {
                    Some("QUOTA") => StoreError::QuotaExceeded {
                        quota: self.quota_bytes.unwrap_or_default(),
                    },
                    _ => redis_error(err),
                });
            }
        };
        let mut reply = reply.into_iter();
        let generation: i64 = reply
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or_default();
        let dropped: usize = reply
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or_default();
        let mut stale = Vec::with_capacity(dropped);
        for _ in 0..dropped {
            if let Some(id) = reply
                .next()
                .and_then(|v| redis::from_redis_value::<String>(v).ok())
            {
                stale.push(object_path(session_id, &id));
            }
        }
        let stored = reply
            .map(|v| {
                let json: String = redis::from_redis_value(v)
                    .map_err(|e| StoreError::Io(io::Error::other(e.to_string())))?;
                StoredFile::parse(session_id, &json)
            })
            .collect::<StoreResult<Vec<_>>>()?;
        self.advance(session_id, generation);
        self.delete_objects(stale).await;
        Ok(stored)
    }

    /// The cache's file with this name and content, if it holds one.
    async fn cached(&self, file: &FileMeta) -> StoreResult<Option<FileMeta>> {
        Ok(self
            .cache
            .list_files(&file.session_id)
            .await?
            .into_iter()
            .find(|f| f.name == file.name && f.sha256 == file.sha256))
    }
}

#[async_trait]
impl Store for SharedStore {
    async fn create_session(&self, tenant: &Tenant, owner: &SessionOwner) -> StoreResult<Session> {
        let session = Session::new(tenant, owner);
        let now = session.created_at;
        let key = self.key("s", &session.id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &key,
                &[
                    ("tenant", tenant.0.clone()),
                    ("created", now.to_string()),
                    ("used", now.to_string()),
                    ("gen", "0".to_owned()),
                    ("bytes", "0".to_owned()),
                ],
            )
            .ignore()
            .zadd(format!("{}used", self.prefix), &session.id, now)
            .ignore();
        if let Some(user) = &owner.user_id {
            pipe.hset(&key, "user", user).ignore();
        }
        if let Some(entity) = &owner.entity_id {
            let okey = self.owner_key(tenant, entity, owner.user_id.as_deref());
            pipe.hset(&key, "entity", entity)
                .ignore()
                .hset(&key, "okey", &okey)
                .ignore()
                .zadd(&okey, &session.id, now)
                .ignore();
        }
        let () = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        self.cache.insert_session(&session).await?;
        self.synced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.id.clone(), 0);
        Ok(session)
    }

    async fn session(&self, tenant: &Tenant, id: &str) -> StoreResult<Option<Session>> {
        let fields: Option<Vec<Option<String>>> = self
            .scripts
            .touch
            .arg(&self.prefix)
            .arg(id)
            .arg(&tenant.0)
            .arg(now_millis())
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        let session = fields.and_then(|f| parse_session(id.to_owned(), f));
        if session.is_some() {
            // The cache's expiry follows its own clock of use: a session in use here (a run
            // longer than the TTL marks it used as it goes) is not let go under its run.
            self.cache.session(tenant, id).await?;
        }
        Ok(session)
    }

    async fn latest_session_for(
        &self,
        tenant: &Tenant,
        owner: &SessionOwner,
    ) -> StoreResult<Option<Session>> {
        let Some(entity) = owner.entity_id.as_deref() else {
            return Ok(None);
        };
        let okey = self.owner_key(tenant, entity, owner.user_id.as_deref());
        let fields: Option<Vec<Option<String>>> = self
            .scripts
            .latest
            .arg(&self.prefix)
            .arg(okey)
            .arg(now_millis())
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        Ok(fields.and_then(|mut f| {
            let id = f.first_mut()?.take()?;
            parse_session(id, f.into_iter().skip(1).collect())
        }))
    }

    async fn delete_session(&self, tenant: &Tenant, id: &str) -> StoreResult<bool> {
        let deleted: i64 = self
            .scripts
            .delete
            .arg(&self.prefix)
            .arg(id)
            .arg(&tenant.0)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        if deleted == 0 {
            return Ok(false);
        }
        self.forget(id);
        self.cache.delete_session(tenant, id).await?;
        self.delete_session_objects(id).await;
        Ok(true)
    }

    async fn expire_idle_sessions(&self, idle: Duration) -> StoreResult<Vec<String>> {
        let cutoff = now_millis() - idle.as_millis() as i64;
        let mut gone = Vec::new();
        loop {
            let batch: Vec<String> = self
                .scripts
                .expire
                .arg(&self.prefix)
                .arg(cutoff)
                .arg(EXPIRE_BATCH)
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            let pairs = batch.len() / 2;
            for pair in batch.chunks_exact(2) {
                let (id, tenant) = (&pair[0], Tenant(pair[1].clone()));
                self.forget(id);
                self.cache.delete_session(&tenant, id).await?;
                self.delete_session_objects(id).await;
                gone.push(id.clone());
            }
            if pairs < EXPIRE_BATCH {
                break;
            }
        }
        // Sessions another node expired, or that this node has not used for as long: the
        // cache lets them go (a later call hydrates them again if they still exist).
        for id in self.cache.expire_idle_sessions(idle).await? {
            self.forget(&id);
            if !gone.contains(&id) {
                gone.push(id);
            }
        }
        Ok(gone)
    }

    async fn list_files(&self, session_id: &str) -> StoreResult<Vec<FileMeta>> {
        let all: Vec<String> = redis::cmd("HVALS")
            .arg(self.key("f", session_id))
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        let mut files = all
            .iter()
            .map(|json| StoredFile::parse(session_id, json))
            .collect::<StoreResult<Vec<_>>>()?;
        files.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        Ok(files)
    }

    async fn file(&self, session_id: &str, file_id: &str) -> StoreResult<Option<FileMeta>> {
        let name: Option<String> = redis::cmd("HGET")
            .arg(self.key("i", session_id))
            .arg(file_id)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        let Some(name) = name else { return Ok(None) };
        let json: Option<String> = redis::cmd("HGET")
            .arg(self.key("f", session_id))
            .arg(name)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        json.map(|j| StoredFile::parse(session_id, &j))
            .transpose()
            .map(|f| f.filter(|f| f.id == file_id))
    }

    async fn stage(&self, body: BodyStream<'_>, max_bytes: u64) -> StoreResult<StagedFile> {
        self.cache.stage(body, max_bytes).await
    }

    async fn commit(&self, session_id: &str, files: Vec<NewFile>) -> StoreResult<Vec<FileMeta>> {
        let _turn = self.lock_session(session_id).await;
        self.sync_locked(session_id).await?;
        let metas = self.cache.commit(session_id, files).await?;
        self.publish(session_id, metas, Vec::new(), false, true)
            .await
    }

    async fn open(&self, file: &FileMeta) -> StoreResult<tokio::fs::File> {
        if self.cached(file).await?.is_some() {
            return self.cache.open(file).await;
        }
        // Not on this node: read it from the bucket through a temporary file.
        let staged = self.fetch(file).await?;
        let opened = tokio::fs::File::open(&staged.temp)
            .await
            .map_err(StoreError::from_io)?;
        drop(staged);
        Ok(opened)
    }

    async fn delete_file(&self, session_id: &str, file_id: &str) -> StoreResult<Option<FileMeta>> {
        let _turn = self.lock_session(session_id).await;
        let reply: Option<(i64, Option<String>)> = self
            .scripts
            .delete_file
            .arg(&self.prefix)
            .arg(session_id)
            .arg(file_id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        let Some((generation, json)) = reply else {
            return Ok(None);
        };
        let meta = json
            .map(|j| StoredFile::parse(session_id, &j))
            .transpose()?;
        if let Some(meta) = &meta
            && let Some(here) = self.cached(meta).await?
        {
            self.cache.delete_file(session_id, &here.id).await?;
        }
        self.advance(session_id, generation);
        self.delete_objects(vec![object_path(session_id, file_id)])
            .await;
        Ok(meta)
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        let (sessions, files, bytes): (u64, Option<i64>, Option<i64>) = redis::pipe()
            .zcard(format!("{}used", self.prefix))
            .hget(format!("{}stats", self.prefix), "files")
            .hget(format!("{}stats", self.prefix), "bytes")
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        Ok(StoreStats {
            sessions,
            files: files.unwrap_or_default().max(0) as u64,
            bytes: bytes.unwrap_or_default().max(0) as u64,
        })
    }

    async fn note_kernel(&self, session_id: &str) -> StoreResult<bool> {
        let before: i64 = self
            .scripts
            .note_kernel
            .arg(&self.prefix)
            .arg(session_id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        Ok(before == 1)
    }

    async fn claim_kernel(&self, session_id: &str) -> StoreResult<bool> {
        let moved: i64 = self
            .scripts
            .claim_kernel
            .arg(&self.prefix)
            .arg(session_id)
            .arg(&self.node_id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        Ok(moved == 1)
    }

    async fn take_run(
        &self,
        tenant: &Tenant,
        user_id: Option<&str>,
        per_minute: u32,
    ) -> StoreResult<Allowance> {
        let step = (60_000 / u64::from(per_minute.max(1))).max(1);
        let wait: i64 = self
            .scripts
            .take_run
            .arg(&self.prefix)
            .arg(hashed(&[&tenant.0, user_id.unwrap_or_default()]))
            .arg(step)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        Ok(match u64::try_from(wait) {
            Ok(ms) => Allowance::Wait(Duration::from_millis(ms)),
            Err(_) => Allowance::Granted,
        })
    }

    async fn take_share(
        &self,
        tenant: &Tenant,
        run: &str,
        limits: ShareLimits,
        first: bool,
    ) -> StoreResult<Share> {
        let answer: i64 = self
            .scripts
            .take_share
            .arg(&self.prefix)
            .arg(hashed(&[&tenant.0]))
            .arg(run)
            .arg(limits.per_tenant)
            .arg(limits.max_queued)
            .arg(limits.lease.as_millis().max(1) as u64)
            .arg(u8::from(first))
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        Ok(match answer {
            1 => Share::Granted,
            0 => Share::Queued,
            n => Share::Full {
                queued: usize::try_from(-1 - n).unwrap_or_default(),
            },
        })
    }

    async fn renew_share(
        &self,
        tenant: &Tenant,
        run: &str,
        granted: bool,
        lease: Duration,
    ) -> StoreResult<()> {
        self.scripts
            .renew_share
            .arg(&self.prefix)
            .arg(hashed(&[&tenant.0]))
            .arg(run)
            .arg(u8::from(granted))
            .arg(lease.as_millis().max(1) as u64)
            .invoke_async::<()>(&mut self.conn())
            .await
            .map_err(redis_error)
    }

    async fn release_share(&self, tenant: &Tenant, run: &str) {
        let released = self
            .scripts
            .release_share
            .arg(&self.prefix)
            .arg(hashed(&[&tenant.0]))
            .arg(run)
            .invoke_async::<()>(&mut self.conn())
            .await;
        if let Err(err) = released {
            tracing::warn!(error = %err, "a run's share could not be given back; it ends with its lease");
        }
    }

    async fn hold_program(&self, tenant: &Tenant, key: &str, ttl: Duration) -> StoreResult<()> {
        redis::cmd("SET")
            .arg(self.key("p", &hashed(&[&tenant.0, key])))
            .arg(&self.node_id)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(redis_error)
    }

    async fn program_placement(
        &self,
        tenant: &Tenant,
        key: &str,
    ) -> StoreResult<Option<Placement>> {
        let owner: Option<Vec<String>> = self
            .scripts
            .place_program
            .arg(&self.prefix)
            .arg(hashed(&[&tenant.0, key]))
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        let Some(owner) = owner else { return Ok(None) };
        let mut owner = owner.into_iter();
        Ok(Some(match (owner.next(), owner.next()) {
            (Some(id), _) if id == self.node_id => Placement::Here,
            (Some(id), Some(url)) => Placement::Node { id, url },
            _ => Placement::Orphaned,
        }))
    }

    async fn placement(&self, session_id: &str) -> StoreResult<Placement> {
        let owner: Option<Vec<String>> = self
            .scripts
            .place
            .arg(&self.prefix)
            .arg(session_id)
            .arg(&self.node_id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        let mut owner = owner.unwrap_or_default().into_iter();
        Ok(match (owner.next(), owner.next()) {
            (Some(id), Some(url)) => Placement::Node { id, url },
            (Some(_), None) => Placement::Orphaned,
            _ => Placement::Here,
        })
    }

    fn node_id(&self) -> Option<&str> {
        Some(&self.node_id)
    }

    async fn renew_node(&self, url: &str, lease: Duration) -> StoreResult<()> {
        redis::cmd("SET")
            .arg(self.key("n", &self.node_id))
            .arg(url)
            .arg("PX")
            .arg(lease.as_millis().max(1) as u64)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(redis_error)
    }

    async fn release_node(&self) {
        let removed = redis::cmd("DEL")
            .arg(self.key("n", &self.node_id))
            .query_async::<()>(&mut self.conn())
            .await;
        if let Err(err) = removed {
            tracing::warn!(error = %err, "this node's lease could not be removed; it ends on its own");
        }
    }

    async fn sync_workspace(&self, session_id: &str) -> StoreResult<()> {
        self.sync(session_id).await
    }

    async fn snapshot(&self, session_id: &str) -> StoreResult<Snapshot> {
        // A run starts with a snapshot: the workspace must hold the session's files by then.
        self.sync(session_id).await?;
        self.cache.snapshot(session_id).await
    }

    async fn record_changes(
        &self,
        session_id: &str,
        changed: Vec<FileName>,
        removed: Vec<FileName>,
    ) -> StoreResult<Vec<FileMeta>> {
        let _turn = self.lock_session(session_id).await;
        let metas = self
            .cache
            .record_changes(session_id, changed, removed.clone())
            .await?;
        if metas.is_empty() && removed.is_empty() {
            return Ok(metas);
        }
        self.publish(session_id, metas, removed, true, false).await
    }

    async fn copy_into(
        &self,
        source: &FileMeta,
        session_id: &str,
        name: FileName,
        read_only: bool,
        origin: FileOrigin,
    ) -> StoreResult<FileMeta> {
        let _turn = self.lock_session(session_id).await;
        self.sync_locked(session_id).await?;
        let placed = if self.cached(source).await?.is_some() {
            self.cache
                .copy_into(source, session_id, name, read_only, origin)
                .await?
        } else {
            let staged = self.fetch(source).await?;
            let file = NewFile {
                name,
                staged,
                read_only,
                origin,
            };
            self.cache.commit_one(session_id, file).await?
        };
        let mut stored = self
            .publish(session_id, vec![placed], Vec::new(), false, true)
            .await?;
        stored
            .pop()
            .ok_or_else(|| StoreError::Io(io::Error::other("the copy was not recorded")))
    }

    // Read-only inputs are guarded and put back in this node's workspace, before the run's
    // changes are recorded: what is put back never reaches Redis or the bucket.
    async fn guard_read_only(
        &self,
        session_id: &str,
        names: Vec<FileName>,
    ) -> StoreResult<ReadOnlyCopies> {
        self.cache.guard_read_only(session_id, names).await
    }

    async fn restore_read_only(
        &self,
        session_id: &str,
        copies: ReadOnlyCopies,
    ) -> StoreResult<Vec<FileName>> {
        self.cache.restore_read_only(session_id, copies).await
    }

    fn workspace_path(&self, session_id: &str) -> std::path::PathBuf {
        self.cache.workspace_path(session_id)
    }
}
