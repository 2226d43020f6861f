//! One-shot runs: every registry language that does not run in a kernel, each run in a
//! fresh sandbox. This module knows no language by name; what each needs (file name,
//! build and run commands, mounts, environment) comes from its entry in `languages`.
//!
//! The source is written to a private directory bound read-only at `/code`, never into
//! the workspace. Compiled languages build in a sandbox of their own into a
//! content-addressed cache (`DATA_DIR/cache/build/<lang>-<hash>`, the hash covering the
//! tenant, the toolchain version, the build command, the environment and the source); a
//! cached program is bound read-only at `/build` and run without rebuilding. The cache is
//! counted and capped (`build_cache`); one build's output and every file a compiler
//! writes are capped too.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::build_cache::{BUILDING_PREFIX, BuildCache, BuildCacheLimits, DONE_MARKER, Held};
use super::languages::{Argv, LANGUAGES, MountSpec, Recipe, Source, SourceOptions, Spec};
use super::supervisor::{Aftermath, OutputCap, Stop, Stream};
use super::{Language, RunEvent, RunOutcome, RunStatus, RuntimeError};
use crate::sandbox::{HOME, Job, Limits, Mount, Process, Sandbox};

const CODE_DIR: &str = "/code";
const BUILD_DIR: &str = "/build";
const OUT_DIR: &str = "/out";
/// After the languages' own directories.
const SYSTEM_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How often limits that have no kernel notification (processes, disk) are checked.
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// The workspace's size is checked this often (it walks the tree).
const DISK_CHECK_EVERY: Duration = Duration::from_millis(500);
/// The shortest time between two refreshes of the package lists.
pub const LIBRARIES_REFRESH_EVERY: Duration = Duration::from_secs(60);
/// Read size for output pipes.
const PIPE_CHUNK: usize = 16 * 1024;

pub struct ProcessRuntime {
    sandbox: Arc<Sandbox>,
    runtime_dir: PathBuf,
    cache_dir: PathBuf,
    runs_dir: PathBuf,
    builds: Arc<BuildCache>,
    source_options: SourceOptions,
    /// Held while a toolchain cache is seeded.
    seeding: tokio::sync::Mutex<()>,
    versions: std::sync::Mutex<HashMap<Language, String>>,
    libraries: std::sync::Mutex<HashMap<Language, Vec<(String, String)>>>,
    /// Held while a package list is probed; when the lists were last forgotten.
    library_probes: tokio::sync::Mutex<Option<Instant>>,
    /// Runtimes whose version probe found nothing, and when.
    missing: std::sync::Mutex<HashMap<Language, Instant>>,
}

fn lock_or_recover<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything one run needs, in runtime terms.
pub struct RunRequest<'a> {
    pub language: Language,
    pub code: &'a str,
    pub args: &'a [String],
    pub workspace: &'a Path,
    pub limits: Limits,
    pub timeout: Duration,
    pub max_output_bytes: u64,
    pub disk_quota: Option<u64>,
    pub run_id: &'a str,
    /// Whose builds this run may reuse (the tenant): caches are never shared across scopes.
    pub cache_scope: &'a str,
    /// Cancelled: the whole process tree is killed.
    pub cancel: CancellationToken,
    /// More directories bound into the run's sandbox (not into a build's).
    pub mounts: &'a [Mount],
    /// More environment variables for the run (not for a build).
    pub env: &'a [(String, String)],
}

/// A registry recipe made concrete for one piece of code.
struct Plan {
    source: Source,
    build: Option<Build>,
    run: Vec<String>,
}

struct Build {
    argv: Vec<String>,
    toolchain_cache: Option<ToolchainCacheDir>,
}

/// A toolchain's own cache, on the host.
struct ToolchainCacheDir {
    host: PathBuf,
    inside: String,
    seed: Option<PathBuf>,
}

impl ProcessRuntime {
    pub fn new(
        sandbox: Arc<Sandbox>,
        runtime_dir: PathBuf,
        data_dir: &Path,
        source_options: SourceOptions,
        build_limits: BuildCacheLimits,
    ) -> std::io::Result<Self> {
        let cache_dir = data_dir.join("cache");
        let runs_dir = data_dir.join("runs");
        for dir in [&cache_dir, &cache_dir.join("build"), &runs_dir] {
            std::fs::create_dir_all(dir)?;
        }
        // The sandbox user reaches these by path but must not list other runs.
        for dir in [&runs_dir, &cache_dir.join("build"), &cache_dir] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
        }
        // Toolchain caches are shared by compile sandboxes (they never hold user code's
        // output), so the sandbox user owns them.
        for spec in LANGUAGES {
            if let Recipe::Compile {
                toolchain_cache: Some(_),
                ..
            } = spec.recipe
            {
                let dir = cache_dir.join(spec.name);
                std::fs::create_dir_all(&dir)?;
                if let Some((uid, gid)) = sandbox.user() {
                    std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
                }
            }
        }
        let builds = Arc::new(BuildCache::open(&cache_dir.join("build"), build_limits)?);
        Ok(ProcessRuntime {
            sandbox,
            runtime_dir,
            cache_dir,
            runs_dir,
            builds,
            source_options,
            seeding: Default::default(),
            versions: Default::default(),
            libraries: Default::default(),
            library_probes: Default::default(),
            missing: Default::default(),
        })
    }

    /// `RUNTIME_DIR`: the environments and toolchains `scripts/bootstrap` installed.
    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }

    /// Fill a registry argument's placeholders: `{runtime}` always, the rest from `vars`.
    fn expand(&self, arg: &str, vars: &[(&str, &str)]) -> String {
        let mut out = arg.replace("{runtime}", &self.runtime_dir.to_string_lossy());
        for (name, value) in vars {
            out = out.replace(&format!("{{{name}}}"), value);
        }
        out
    }

    fn argv(&self, argv: Argv, vars: &[(&str, &str)]) -> Vec<String> {
        argv.iter().map(|a| self.expand(a, vars)).collect()
    }

    /// The environment user code sees: an allowlist, nothing of the server's. Every
    /// language's variables and tool directories are in every run (a shell script may
    /// call any toolchain).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut path: Vec<String> = LANGUAGES
            .iter()
            .flat_map(|s| s.path.iter().map(|p| self.expand(p, &[])))
            .collect();
        path.push(SYSTEM_PATH.to_owned());
        let base = [
            ("HOME", HOME),
            ("USER", "sandbox"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C.UTF-8"),
            ("TZ", "UTC"),
            ("TERM", "dumb"),
            ("TMPDIR", "/tmp"),
        ];
        let mut env = vec![("PATH".to_owned(), path.join(":"))];
        for (k, v) in base
            .into_iter()
            .chain(LANGUAGES.iter().flat_map(|s| s.env.iter().copied()))
        {
            env.push((k.to_owned(), self.expand(v, &[])));
        }
        env
    }

    /// `RUNTIME_DIR`, read-only at the same path, when it exists (languages that do not
    /// need it keep working without it), and every language's mounts that exist here.
    pub fn runtime_mounts(&self) -> Vec<Mount> {
        let mut mounts = Vec::new();
        if self.runtime_dir.is_dir() {
            mounts.push(Mount::read_only(&self.runtime_dir, &self.runtime_dir));
        }
        for spec in LANGUAGES {
            for m in spec.mounts {
                mounts.extend(self.expand_mount(m));
            }
        }
        mounts
    }

    /// The host paths a mount names (a `*` in the last component matches any run of
    /// characters), each with where it appears.
    fn expand_mount(&self, m: &MountSpec) -> Vec<Mount> {
        let host = PathBuf::from(self.expand(m.host, &[]));
        let Some(pattern) = host.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return Vec::new();
        };
        let found: Vec<PathBuf> = match (pattern.split_once('*'), host.parent()) {
            (None, _) => host.exists().then_some(host.clone()).into_iter().collect(),
            (Some((prefix, suffix)), Some(parent)) => std::fs::read_dir(parent)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter(|e| {
                            let name = e.file_name().to_string_lossy().into_owned();
                            name.len() >= prefix.len() + suffix.len()
                                && name.starts_with(prefix)
                                && name.ends_with(suffix)
                        })
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default(),
            (Some(_), None) => Vec::new(),
        };
        found
            .into_iter()
            .map(|path| {
                let inside = match m.inside {
                    None => path.clone(),
                    Some(inside) => {
                        let name = path.file_name().unwrap_or_default().to_string_lossy();
                        PathBuf::from(self.expand(inside, &[("name", &name)]))
                    }
                };
                Mount::read_only(path, inside)
            })
            .collect()
    }

    /// Run a short command in a sandbox without a workspace; its output if it succeeded.
    async fn probe(&self, language: Language, argv: Vec<String>) -> Option<String> {
        metrics::counter!("code_interpreter_runtime_probes_total").increment(1);
        let job = Job {
            argv,
            env: self.env(),
            workspace: None,
            mounts: self.runtime_mounts(),
            limits: Limits::default(),
        };
        let proc = match self.sandbox.spawn(&job, &crate::session::new_id()) {
            Ok(p) => p,
            Err(err) => {
                tracing::warn!(%language, error = %err, "probe could not start");
                return None;
            }
        };
        let out = proc.child.wait_with_output().await.ok()?;
        let text = [out.stdout, out.stderr]
            .iter()
            .map(|b| String::from_utf8_lossy(b).trim().to_owned())
            .find(|s| !s.is_empty());
        text.filter(|_| out.status.success())
    }

    /// The runtime's real version (asked once, in the sandbox), or `Unavailable`.
    pub async fn version(&self, language: Language) -> Result<String, RuntimeError> {
        if let Some(known) = self.lock_versions().get(&language) {
            return Ok(known.clone());
        }
        // A runtime found missing is asked again a minute later (a runtime installed later
        // is picked up), not on every call.
        let missing = lock_or_recover(&self.missing).get(&language).copied();
        if missing.is_some_and(|at| at.elapsed() < LIBRARIES_REFRESH_EVERY) {
            return Err(RuntimeError::Unavailable(language));
        }
        let argv = self.argv(language.spec().version, &[]);
        let found = self.probe(language, argv).await.map(|t| clean_version(&t));
        match &found {
            Some(v) => {
                self.lock_versions().insert(language, v.clone());
            }
            None => {
                lock_or_recover(&self.missing).insert(language, Instant::now());
            }
        }
        found.ok_or(RuntimeError::Unavailable(language))
    }

    fn lock_versions(&self) -> std::sync::MutexGuard<'_, HashMap<Language, String>> {
        self.versions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Versions found so far (never waits for a probe).
    pub fn known_versions(&self) -> Vec<(Language, String)> {
        let mut v: Vec<_> = self
            .lock_versions()
            .iter()
            .map(|(l, v)| (*l, v.clone()))
            .collect();
        v.sort();
        v
    }

    /// Ask every runtime for its version, so `/health` can list them and first runs are quick.
    pub async fn warm_up(&self) {
        for language in Language::all() {
            let _ = self.version(language).await;
        }
    }

    /// Fill an empty toolchain cache from its seed before the first build, once: builds
    /// that start meanwhile wait rather than compile what the seed holds.
    async fn seed_toolchain_cache(&self, cache: &ToolchainCacheDir) -> std::io::Result<()> {
        let _turn = self.seeding.lock().await;
        let (seed, host, owner) = (cache.seed.clone(), cache.host.clone(), self.sandbox.user());
        let made = tokio::task::spawn_blocking(move || {
            if !host.is_dir() {
                std::fs::create_dir_all(&host)?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(&host, Some(uid), Some(gid))?;
                }
            }
            let parent = host.parent().unwrap_or(&host).to_path_buf();
            if let Some(seed) = seed
                && let Err(err) = local_seed(&seed, &parent).and_then(|seed| seed_cache(&seed, &host, owner))
            {
                tracing::warn!(cache = %host.display(), error = %err, "could not seed a toolchain cache");
            }
            Ok(())
        })
        .await;
        made.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Installed packages of a runtime, read through the sandboxed runtime itself.
    pub async fn libraries(
        &self,
        language: Language,
    ) -> Result<Vec<(String, String)>, RuntimeError> {
        let version = self.version(language).await?;
        let cached = self.lock_libraries().get(&language).cloned();
        if let Some(list) = cached {
            return Ok(list);
        }
        // One probe at a time, whoever asks: callers that waited find the list cached.
        let _probing = self.library_probes.lock().await;
        let cached = self.lock_libraries().get(&language).cloned();
        if let Some(list) = cached {
            return Ok(list);
        }
        let list = match language.spec().libraries {
            None => Vec::new(),
            Some(argv) => {
                let text = self
                    .probe(language, self.argv(argv, &[]))
                    .await
                    .unwrap_or_default();
                parse_libraries(&text, &version)
            }
        };
        self.lock_libraries().insert(language, list.clone());
        Ok(list)
    }

    /// Forget cached package lists, so the next `libraries` call asks again; at most once
    /// per [`LIBRARIES_REFRESH_EVERY`] (each refresh runs a sandbox per language). Whether
    /// the lists were forgotten.
    pub async fn forget_libraries(&self) -> bool {
        let mut last = self.library_probes.lock().await;
        if last.is_some_and(|at| at.elapsed() < LIBRARIES_REFRESH_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        self.lock_libraries().clear();
        true
    }

    fn lock_libraries(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Language, Vec<(String, String)>>> {
        self.libraries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The registry's recipe for this code: the source file and the commands, filled in.
    fn plan(&self, spec: &Spec, code: &str, scope: &str) -> Option<Plan> {
        let source = spec.source(code, &self.source_options);
        let file = format!("{CODE_DIR}/{}", source.file);
        let stem = source
            .file
            .rsplit_once('.')
            .map_or(source.file.as_str(), |(stem, _)| stem)
            .to_owned();
        let mut vars: Vec<(&str, &str)> = vec![
            ("file", &file),
            ("stem", &stem),
            ("out", OUT_DIR),
            ("build", BUILD_DIR),
        ];
        vars.extend(source.vars.iter().copied());
        let (build, run) = match spec.recipe {
            Recipe::Kernel => return None,
            Recipe::Interpret { run } => (None, self.argv(run, &vars)),
            Recipe::Compile {
                build,
                run,
                toolchain_cache,
            } => (
                Some(Build {
                    argv: self.argv(build, &vars),
                    toolchain_cache: toolchain_cache.map(|c| ToolchainCacheDir {
                        // One per scope: a toolchain's cache hit would tell as much as ours.
                        host: self.cache_dir.join(spec.name).join(scope_dir(scope)),
                        inside: c.inside.to_owned(),
                        seed: c.seed.map(|seed| PathBuf::from(self.expand(seed, &[]))),
                    }),
                }),
                self.argv(run, &vars),
            ),
        };
        Some(Plan { source, build, run })
    }

    /// A private directory that sandboxed code may write (owned by the sandbox's user),
    /// removed when dropped: a run's helpers meet the server there.
    pub fn scratch_dir(&self) -> std::io::Result<tempfile::TempDir> {
        let dir = tempfile::Builder::new()
            .prefix("scratch-")
            .tempdir_in(&self.runs_dir)?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = self.sandbox.user() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        Ok(dir)
    }

    /// Give `paths` to the user a sandbox binding `workspace` runs as (the session's own
    /// uid), when runs switch users.
    pub fn hand_to_sandbox(&self, workspace: &Path, paths: &[PathBuf]) -> std::io::Result<()> {
        if let Some((uid, gid)) = self.sandbox.user_for(Some(workspace))? {
            for path in paths {
                std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
            }
        }
        Ok(())
    }

    /// A private, readable-by-the-sandbox directory holding the source.
    fn write_source(&self, source: &Source) -> std::io::Result<BoundDir> {
        let dir = BoundDir(Some(
            tempfile::Builder::new()
                .prefix("run-")
                .tempdir_in(&self.runs_dir)?,
        ));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let path = dir.path().join(&source.file);
        std::fs::write(&path, &source.text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        Ok(dir)
    }

    /// Run `req`, sending output to `events` as it is produced.
    pub async fn run(
        &self,
        req: RunRequest<'_>,
        events: mpsc::Sender<RunEvent>,
    ) -> Result<RunOutcome, RuntimeError> {
        let started = Instant::now();
        let deadline = started + req.timeout;
        let version = self.version(req.language).await?;
        let plan = self
            .plan(req.language.spec(), req.code, req.cache_scope)
            .ok_or_else(|| {
                RuntimeError::Io(std::io::Error::other(format!(
                    "{} runs in a kernel, not as a one-shot program",
                    req.language
                )))
            })?;
        let source_dir = self.write_source(&plan.source)?;
        let env = self.env();
        let mut mounts = self.runtime_mounts();
        mounts.push(Mount::read_only(source_dir.path(), CODE_DIR));

        // Held until the run ends, so the program is not evicted under it.
        let mut held: Option<Held> = None;
        if let Some(build) = &plan.build {
            let key = cache_key(
                req.cache_scope,
                req.language,
                &version,
                &build.argv,
                &env,
                &plan.source,
            );
            let name = format!("{}-{key}", req.language);
            let entry = match self.builds.hold(&name) {
                Some(entry) => entry,
                None => {
                    let compiled = self
                        .compile(
                            &req,
                            build,
                            &env,
                            source_dir.path(),
                            &name,
                            deadline,
                            &events,
                        )
                        .await?;
                    match compiled {
                        Ok(entry) => entry,
                        Err(failed) => return Ok(failed),
                    }
                }
            };
            mounts.push(Mount::read_only(&entry.path, BUILD_DIR));
            held = Some(entry);
        }
        let mut argv = plan.run;
        argv.extend(req.args.iter().cloned());
        mounts.extend(req.mounts.iter().cloned());
        let mut env = env;
        env.extend(req.env.iter().cloned());

        let job = Job {
            argv,
            env,
            workspace: Some(req.workspace.to_path_buf()),
            mounts,
            limits: req.limits,
        };
        let process = self.sandbox.spawn(&job, req.run_id)?;
        let outcome = supervise(process, &req, deadline, started, &events).await;
        drop((source_dir, held));
        Ok(outcome)
    }

    /// Build into the cache as `name`. `Ok(Err(outcome))` when the build failed
    /// (diagnostics were sent as stderr) or passed the build limit; otherwise the program,
    /// now in the cache, held for this run.
    #[allow(clippy::too_many_arguments)]
    async fn compile(
        &self,
        req: &RunRequest<'_>,
        build: &Build,
        env: &[(String, String)],
        source_dir: &Path,
        name: &str,
        deadline: Instant,
        events: &mpsc::Sender<RunEvent>,
    ) -> Result<Result<Held, RunOutcome>, RuntimeError> {
        let started = Instant::now();
        let mut out = BoundDir(Some(
            tempfile::Builder::new()
                .prefix(BUILDING_PREFIX)
                .tempdir_in(self.cache_dir.join("build"))?,
        ));
        std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o755))?;
        if let Some((uid, gid)) = self.sandbox.user() {
            std::os::unix::fs::chown(out.path(), Some(uid), Some(gid))?;
        }
        let mut mounts = self.runtime_mounts();
        mounts.push(Mount::read_only(source_dir, CODE_DIR));
        mounts.push(Mount::writable(out.path(), OUT_DIR));
        if let Some(cache) = &build.toolchain_cache {
            self.seed_toolchain_cache(cache).await?;
            mounts.push(Mount::writable(&cache.host, &cache.inside));
        }
        // No file a compiler writes may pass the build limit (nor the run's own limit).
        let cap = self.builds.limits().entry_bytes;
        let file_size_bytes = match (cap, req.limits.file_size_bytes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let job = Job {
            argv: build.argv.clone(),
            env: env.to_vec(),
            workspace: None,
            mounts,
            limits: Limits {
                file_size_bytes,
                ..req.limits
            },
        };
        let process = self.sandbox.spawn(&job, &format!("{}-build", req.run_id))?;
        // Compiler output is diagnostics: all of it goes to stderr, none to stdout.
        let (tx, mut rx) = mpsc::channel(64);
        // The build's output is watched like a workspace, against the build limit.
        let build_req = RunRequest {
            workspace: out.path(),
            disk_quota: cap,
            limits: Limits {
                file_size_bytes,
                ..req.limits
            },
            cancel: req.cancel.clone(),
            ..*req
        };
        // It also notes whether a tool said it hit the file size limit (the assembler's
        // temporary files are not in `out`, and the driver reports its SIGXFSZ as an error).
        let forward = {
            let events = events.clone();
            tokio::spawn(async move {
                let mut tail: Vec<u8> = Vec::new();
                let mut file_too_large = false;
                while let Some(ev) = rx.recv().await {
                    let bytes = match ev {
                        RunEvent::Stdout(b) | RunEvent::Stderr(b) => b,
                        _ => continue,
                    };
                    if !file_too_large {
                        tail.extend_from_slice(&bytes);
                        file_too_large = says_file_too_large(&tail);
                        let keep = tail.len().saturating_sub(64);
                        tail.drain(..keep);
                    }
                    let _ = events.send(RunEvent::Stderr(bytes)).await;
                }
                file_too_large
            })
        };
        let outcome = supervise(process, &build_req, deadline, started, &tx).await;
        drop(tx);
        let file_too_large = forward.await.unwrap_or(false);
        let measured = out.path().to_path_buf();
        let (bytes, largest) =
            tokio::task::spawn_blocking(move || crate::store::usage_and_largest_file(&measured))
                .await
                .unwrap_or((u64::MAX, u64::MAX));
        // A failed build that wrote a file of the build limit's size, or whose tools said
        // they hit the file size limit, was stopped by that limit (RLIMIT_FSIZE).
        let stopped_at_cap = outcome.status != RunStatus::Success
            && cap.is_some_and(|cap| {
                file_size_bytes == Some(cap) && (largest >= cap || file_too_large)
            });
        if let Some(cap) = cap
            && (bytes > cap || stopped_at_cap)
        {
            return Ok(Err(RunOutcome {
                status: RunStatus::Killed,
                message: Some(format!(
                    "The build's output passed the limit of {} MiB (BUILD_MAX_MB) and was stopped.",
                    cap / (1024 * 1024)
                )),
                ..outcome
            }));
        }
        if outcome.status != RunStatus::Success {
            let outcome = match outcome.status {
                RunStatus::Error => RunOutcome {
                    message: Some(
                        "The program did not compile; the compiler's messages are in stderr."
                            .into(),
                    ),
                    ..outcome
                },
                _ => outcome,
            };
            return Ok(Err(outcome));
        }
        std::fs::write(out.path().join(DONE_MARKER), b"")?;
        let built = out.keep();
        let (builds, name) = (Arc::clone(&self.builds), name.to_owned());
        let held = tokio::task::spawn_blocking(move || builds.add(&name, &built, bytes))
            .await
            .map_err(|e| RuntimeError::Io(std::io::Error::other(e)))??;
        Ok(Ok(held))
    }
}

/// A directory a sandbox binds, removed off the run's path once dropped. Removing a mount
/// point of a mount namespace that is still being torn down waits for the kernel to detach
/// the mount (an RCU grace period: under 1 ms on a quiet host, up to seconds on a loaded
/// one), and nothing of a run's answer depends on it.
struct BoundDir(Option<tempfile::TempDir>);

impl BoundDir {
    fn path(&self) -> &Path {
        self.0.as_ref().map_or(Path::new(""), |d| d.path())
    }

    /// Keep the directory: it is no longer removed.
    fn keep(&mut self) -> PathBuf {
        self.0
            .take()
            .map(tempfile::TempDir::keep)
            .unwrap_or_default()
    }
}

impl Drop for BoundDir {
    fn drop(&mut self) {
        let Some(dir) = self.0.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(dir))),
            Err(_) => drop(dir),
        }
    }
}

/// Whether compiler output reports the file size limit: `strsignal(SIGXFSZ)` or
/// `strerror(EFBIG)`, the words gcc, as, ld and Go's tools print for it.
fn says_file_too_large(output: &[u8]) -> bool {
    [&b"File size limit exceeded"[..], b"File too large"]
        .iter()
        .any(|needle| output.windows(needle.len()).any(|w| w == *needle))
}

/// Wait for a sandboxed process while forwarding its output and enforcing the limits the
/// kernel does not enforce by itself (wall clock, output size, disk, process count).
async fn supervise(
    mut process: Process,
    req: &RunRequest<'_>,
    deadline: Instant,
    started: Instant,
    events: &mpsc::Sender<RunEvent>,
) -> RunOutcome {
    let (overflow_tx, mut overflow_rx) = mpsc::channel::<Stream>(2);
    let stdout = process.child.stdout.take();
    let stderr = process.child.stderr.take();
    let pumps = [
        stdout.map(|r| {
            tokio::spawn(pump(
                r,
                Stream::Stdout,
                events.clone(),
                req.max_output_bytes,
                overflow_tx.clone(),
            ))
        }),
        stderr.map(|r| {
            tokio::spawn(pump(
                r,
                Stream::Stderr,
                events.clone(),
                req.max_output_bytes,
                overflow_tx.clone(),
            ))
        }),
    ];
    drop(overflow_tx);

    let mut stop: Option<Stop> = None;
    let mut watch = tokio::time::interval(WATCH_EVERY);
    let mut last_disk_check = Instant::now();
    let status = loop {
        tokio::select! {
            status = process.child.wait() => break status.ok(),
            _ = tokio::time::sleep_until(deadline.into()), if stop.is_none() => {
                stop = Some(Stop::Time(req.timeout));
                process.kill_tree();
            }
            _ = req.cancel.cancelled(), if stop.is_none() => {
                stop = Some(Stop::Cancelled);
                process.kill_tree();
            }
            Some(stream) = overflow_rx.recv(), if stop.is_none() => {
                stop = Some(Stop::Output { stream, cap: req.max_output_bytes });
                process.kill_tree();
            }
            _ = watch.tick(), if stop.is_none() => {
                if process.hit_process_limit() {
                    stop = Some(Stop::Processes(req.limits.processes));
                    process.kill_tree();
                } else if let Some(quota) = req.disk_quota
                    && last_disk_check.elapsed() >= DISK_CHECK_EVERY
                {
                    last_disk_check = Instant::now();
                    let ws = req.workspace.to_path_buf();
                    let used = tokio::task::spawn_blocking(move || crate::store::workspace_usage(&ws)).await.unwrap_or(0);
                    if used > quota {
                        stop = Some(Stop::Disk(Some(quota)));
                        process.kill_tree();
                    }
                }
            }
        }
    };
    // A fork refused at the limit is reported even when the program ended before a check
    // saw it (a shell that exits 0 after its fork bomb failed).
    if stop.is_none() && process.hit_process_limit() {
        stop = Some(Stop::Processes(req.limits.processes));
    }
    // Everything else in the sandbox dies with it; the pipes close once it is gone.
    process.kill_tree();
    for pump in pumps.into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(5), pump).await;
    }
    let wall_time = started.elapsed();
    let oom = process.oom_killed();
    let cpu_time = process.cpu_time();
    let peak_memory = process.peak_memory();
    process.release();

    let exit_code = status.and_then(|s| s.code());
    let signal = exit_code
        .filter(|c| *c > 128)
        .and_then(|c| signal_name(c - 128))
        .map(str::to_owned);
    // When several apply: the time limit or a cancellation, then the OOM killer, then our
    // other limits, then an rlimit's signal.
    let stop = match (stop, oom, signal.as_deref()) {
        (Some(Stop::Time(t)), _, _) => Some(Stop::Time(t)),
        (Some(Stop::Cancelled), _, _) => Some(Stop::Cancelled),
        (_, true, _) => Some(Stop::Memory(req.limits.memory_bytes)),
        (Some(stop), false, _) => Some(stop),
        (None, false, Some("SIGXFSZ")) => Some(Stop::FileSize(req.limits.file_size_bytes)),
        (None, false, Some("SIGXCPU")) => Some(Stop::CpuTime(req.limits.cpu_seconds)),
        (None, false, _) => None,
    };
    let (status, message) = match stop {
        Some(stop) => (stop.status(), Some(stop.message(Aftermath::Stopped))),
        None if exit_code == Some(0) => (RunStatus::Success, None),
        None => (RunStatus::Error, None),
    };
    RunOutcome {
        status,
        exit_code,
        signal,
        message,
        wall_time,
        cpu_time,
        peak_memory,
    }
}

/// Forward a pipe's bytes as events up to the output cap; past it, say where the stream was
/// cut, report the overflow and stop reading (the run is about to be killed).
async fn pump(
    mut reader: impl AsyncRead + Unpin,
    stream: Stream,
    events: mpsc::Sender<RunEvent>,
    cap: u64,
    overflow: mpsc::Sender<Stream>,
) {
    let mut cap = OutputCap::new(cap);
    let mut buf = vec![0u8; PIPE_CHUNK];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let admitted = cap.admit(stream, &buf[..n]);
        if admitted.take > 0 {
            let bytes = Bytes::copy_from_slice(&buf[..admitted.take]);
            // A gone listener does not stop the run; keep draining.
            let _ = events.send(stream.event(bytes)).await;
        }
        if let Some(marker) = admitted.cut {
            let _ = events.send(stream.event(Bytes::from(marker))).await;
            let _ = overflow.send(stream).await;
            return;
        }
    }
}

fn signal_name(n: i32) -> Option<&'static str> {
    Some(match n {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => return None,
    })
}

/// A scope's directory name: fixed length, whatever the tenant's name holds.
fn scope_dir(scope: &str) -> String {
    hex::encode(&Sha256::digest(scope.as_bytes())[..16])
}

fn cache_key(
    scope: &str,
    language: Language,
    version: &str,
    build: &[String],
    env: &[(String, String)],
    source: &Source,
) -> String {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update(bytes);
        h.update([0]);
    };
    part(scope.as_bytes());
    part(language.name().as_bytes());
    part(version.as_bytes());
    for arg in build {
        part(arg.as_bytes());
    }
    for (k, v) in env {
        part(format!("{k}={v}").as_bytes());
    }
    part(source.file.as_bytes());
    part(source.text.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// `rustc 1.63.0` → `1.63.0`, `go1.26.8` → `1.26.8`, `javac 17.0.15` → `17.0.15`.
fn clean_version(raw: &str) -> String {
    let first = raw.lines().next().unwrap_or(raw).trim();
    let word = first
        .split_whitespace()
        .find(|w| {
            w.trim_start_matches("go")
                .starts_with(|c: char| c.is_ascii_digit())
        })
        .unwrap_or(first);
    word.trim_start_matches("go")
        .trim_start_matches('v')
        .to_owned()
}

/// `name version` lines (or `name` alone: then it has the language's version), sorted by
/// name, each name once.
fn parse_libraries(text: &str, version: &str) -> Vec<(String, String)> {
    let mut list: Vec<(String, String)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((name, v)) if !v.trim().is_empty() => (name.to_owned(), v.trim().to_owned()),
            _ => (l.to_owned(), version.to_owned()),
        })
        .collect();
    list.sort_by_key(|(name, _)| name.to_ascii_lowercase());
    list.dedup_by(|a, b| a.0.eq_ignore_ascii_case(&b.0));
    list
}

/// Fill an empty toolchain cache from a prepared one: linked (or copied, across file
/// systems) into a temporary directory beside it, then renamed over it, so a build never
/// sees half a seed. The seed's files are never written through the links: a toolchain
/// cache only adds files, and the seed's belong to another user than the sandbox's.
fn seed_cache(seed: &Path, cache: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    if !seed.is_dir() || std::fs::read_dir(cache)?.next().is_some() {
        return Ok(());
    }
    let parent = cache.parent().unwrap_or(cache);
    let temp = tempfile::Builder::new()
        .prefix(".seed-")
        .tempdir_in(parent)?;
    link_tree(seed, temp.path(), owner)?;
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o755))?;
    let temp = temp.keep();
    // Fails when a build filled the cache meanwhile: then it is kept as it is.
    if std::fs::rename(&temp, cache).is_err() {
        std::fs::remove_dir_all(&temp)?;
    }
    Ok(())
}

/// The seed on the caches' file system, so that each scope's cache links to it rather than
/// copying it: the seed itself when it is there already, else one copy made once beside
/// the scopes' caches (`.seed`).
fn local_seed(seed: &Path, parent: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let local = parent.join(".seed");
    if !seed.is_dir() || local.is_dir() {
        return Ok(if local.is_dir() {
            local
        } else {
            seed.to_path_buf()
        });
    }
    if std::fs::metadata(seed)?.dev() == std::fs::metadata(parent)?.dev() {
        return Ok(seed.to_path_buf());
    }
    let temp = tempfile::Builder::new()
        .prefix(".seed-")
        .tempdir_in(parent)?;
    link_tree(seed, temp.path(), None)?;
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o755))?;
    let temp = temp.keep();
    if std::fs::rename(&temp, &local).is_err() {
        std::fs::remove_dir_all(&temp)?;
    }
    Ok(local)
}

/// Regular files (hard-linked where possible) and directories (owned by `owner`) only.
fn link_tree(from: &Path, to: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(to, Some(uid), Some(gid))?;
    }
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if kind.is_dir() {
            std::fs::create_dir(&dest)?;
            link_tree(&entry.path(), &dest, owner)?;
        } else if kind.is_file() && std::fs::hard_link(entry.path(), &dest).is_err() {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiler_words_for_the_file_size_limit_are_recognised() {
        assert!(says_file_too_large(
            b"gcc: internal compiler error: File size limit exceeded signal terminated program as"
        ));
        assert!(says_file_too_large(
            b"/usr/bin/ld: final link failed: File too large\n"
        ));
        assert!(!says_file_too_large(b"main.c:1:1: error: expected ';'"));
    }

    #[test]
    fn a_seed_on_another_file_system_is_copied_once_and_then_linked() {
        use std::os::unix::fs::MetadataExt;
        // /dev/shm is a tmpfs: another file system than the temporary directory's, mostly.
        let seed = tempfile::tempdir_in("/dev/shm").unwrap();
        std::fs::create_dir(seed.path().join("ab")).unwrap();
        std::fs::write(seed.path().join("ab/entry"), b"compiled").unwrap();
        let parent = tempfile::tempdir().unwrap();
        let local = local_seed(seed.path(), parent.path()).unwrap();
        let apart = std::fs::metadata(seed.path()).unwrap().dev()
            != std::fs::metadata(parent.path()).unwrap().dev();
        assert_eq!(local == parent.path().join(".seed"), apart);
        assert_eq!(local_seed(seed.path(), parent.path()).unwrap(), local);
        for scope in ["a", "b"] {
            let cache = parent.path().join(scope);
            std::fs::create_dir(&cache).unwrap();
            seed_cache(&local, &cache, None).unwrap();
            let entry = std::fs::metadata(cache.join("ab/entry")).unwrap();
            assert_eq!(
                entry.ino(),
                std::fs::metadata(local.join("ab/entry")).unwrap().ino()
            );
        }
    }

    #[test]
    fn versions_are_cleaned() {
        assert_eq!(clean_version("rustc 1.63.0"), "1.63.0");
        assert_eq!(
            clean_version("rustc 1.96.0 (ac68faa20 2026-05-25) (built from a source tarball)"),
            "1.96.0"
        );
        assert_eq!(clean_version("go1.26.8"), "1.26.8");
        assert_eq!(clean_version("javac 17.0.15"), "17.0.15");
        assert_eq!(clean_version("v20.20.2"), "20.20.2");
        assert_eq!(clean_version("12.2.0"), "12.2.0");
    }

    #[test]
    fn library_lines_carry_their_version_or_the_languages() {
        let list = parse_libraries("numpy 2.1.0\nfs\n\nNumPy 9\nabc  1.0 \n", "3.11");
        assert_eq!(
            list,
            [
                ("abc".to_owned(), "1.0".to_owned()),
                ("fs".to_owned(), "3.11".to_owned()),
                ("numpy".to_owned(), "2.1.0".to_owned()),
            ]
        );
    }
}
