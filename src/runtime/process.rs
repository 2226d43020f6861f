//! One-shot runs: bash, sh, Node, TypeScript (esbuild, then Node), Go, C, C++, Rust, Java,
//! and (until the Jupyter kernel lands) Python, each in a fresh sandbox.
//!
//! The source is written to a private directory bound read-only at `/code`, never into
//! the workspace. Compiled languages build in a sandbox of their own into a
//! content-addressed cache (`DATA_DIR/cache/build/<lang>-<hash>`, the hash covering the
//! toolchain version, the recipe and the source); a cached program is bound read-only at
//! `/build` and run without rebuilding.

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

use super::{Language, RunEvent, RunOutcome, RunStatus, RuntimeError};
use crate::sandbox::{HOME, Job, Limits, Mount, Process, Sandbox};

/// Bumped when a build recipe changes, so old cache entries are not reused.
const RECIPE_VERSION: &str = "1";
const CODE_DIR: &str = "/code";
const BUILD_DIR: &str = "/build";
const OUT_DIR: &str = "/out";
const GO_CACHE: &str = "/tmp/go-build-cache";
/// matplotlib's writable config and cache directory, inside the private /tmp.
const MPL_CONFIG: &str = "/tmp/matplotlib";
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
    bash_strict: bool,
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
    /// Cancelled: the whole process tree is killed.
    pub cancel: CancellationToken,
    /// More directories bound into the run's sandbox (not into a build's).
    pub mounts: &'a [Mount],
    /// More environment variables for the run (not for a build).
    pub env: &'a [(String, String)],
}

/// How a language turns source into a running program.
struct Plan {
    file_name: String,
    source: String,
    compile: Option<Vec<String>>,
    /// For compiled languages, relative to `/build`; otherwise a full argv head.
    run: Vec<String>,
}

/// Why a watched run was stopped by us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Timeout,
    Processes,
    Disk,
    Output(&'static str),
    Cancelled,
}

impl ProcessRuntime {
    pub fn new(
        sandbox: Arc<Sandbox>,
        runtime_dir: PathBuf,
        data_dir: &Path,
        bash_strict: bool,
    ) -> std::io::Result<Self> {
        let cache_dir = data_dir.join("cache");
        let runs_dir = data_dir.join("runs");
        for dir in [
            &cache_dir,
            &cache_dir.join("build"),
            &cache_dir.join("go-build"),
            &runs_dir,
        ] {
            std::fs::create_dir_all(dir)?;
        }
        // The sandbox user reaches these by path but must not list other runs.
        std::fs::set_permissions(&runs_dir, std::fs::Permissions::from_mode(0o711))?;
        std::fs::set_permissions(
            cache_dir.join("build"),
            std::fs::Permissions::from_mode(0o711),
        )?;
        std::fs::set_permissions(&cache_dir, std::fs::Permissions::from_mode(0o711))?;
        if let Some((uid, gid)) = sandbox.user() {
            // Go's build cache is shared by compile sandboxes (it never holds user code's output).
            std::os::unix::fs::chown(cache_dir.join("go-build"), Some(uid), Some(gid))?;
        }
        Ok(ProcessRuntime {
            sandbox,
            runtime_dir,
            cache_dir,
            runs_dir,
            bash_strict,
            versions: Default::default(),
            libraries: Default::default(),
            library_probes: Default::default(),
            missing: Default::default(),
        })
    }

    fn python_arg(&self) -> String {
        self.python().to_string_lossy().into_owned()
    }

    fn esbuild(&self) -> String {
        self.runtime_dir
            .join("node/node_modules/.bin/esbuild")
            .to_string_lossy()
            .into_owned()
    }

    /// The environment user code sees: an allowlist, nothing of the server's.
    pub fn env(&self, language: Language) -> Vec<(String, String)> {
        let path = format!(
            "{}/python/bin:/usr/local/go/bin:/usr/local/bin:/usr/bin:/bin",
            self.runtime_dir.display()
        );
        let mut env: Vec<(String, String)> = [
            ("PATH", path.as_str()),
            ("HOME", HOME),
            ("USER", "sandbox"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C.UTF-8"),
            ("TZ", "UTC"),
            ("TERM", "dumb"),
            ("TMPDIR", "/tmp"),
            ("PYTHONDONTWRITEBYTECODE", "1"),
            ("PYTHONUNBUFFERED", "1"),
            ("MPLBACKEND", "Agg"),
            ("MPLCONFIGDIR", MPL_CONFIG),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        if matches!(language, Language::Go) {
            for (k, v) in [
                ("GOCACHE", GO_CACHE),
                ("GOPATH", "/tmp/go"),
                ("GOTOOLCHAIN", "local"),
                ("CGO_ENABLED", "0"),
                ("GOFLAGS", "-buildvcs=false"),
                ("GOTELEMETRY", "off"),
            ] {
                env.push((k.to_owned(), v.to_owned()));
            }
        }
        env
    }

    /// `RUNTIME_DIR`, read-only at the same path, when it exists (languages that do not
    /// need it keep working without it).
    pub fn runtime_mounts(&self) -> Vec<Mount> {
        if !self.runtime_dir.is_dir() {
            return Vec::new();
        }
        let mut mounts = vec![Mount::read_only(&self.runtime_dir, &self.runtime_dir)];
        // matplotlib's font list, built at bootstrap: without it every fresh sandbox would
        // rebuild it (seconds) and warn about an unwritable config directory.
        if let Ok(entries) = std::fs::read_dir(self.runtime_dir.join("mplconfig")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("fontlist-") && name.ends_with(".json") {
                    mounts.push(Mount::read_only(e.path(), format!("{MPL_CONFIG}/{name}")));
                }
            }
        }
        mounts
    }

    pub fn python(&self) -> PathBuf {
        self.runtime_dir.join("python/bin/python")
    }

    /// The command that prints a language's version, run inside the sandbox.
    fn version_probe(&self, language: Language) -> Vec<String> {
        let v = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match language {
            Language::Python => vec![
                self.python_arg(),
                "-c".into(),
                "import platform; print(platform.python_version())".into(),
            ],
            Language::Bash => v(&["/bin/bash", "-c", "echo ${BASH_VERSION%%(*}"]),
            Language::Sh => v(&["/bin/sh", "-c", "echo posix"]),
            Language::JavaScript | Language::TypeScript => {
                v(&["node", "-p", "process.versions.node"])
            }
            Language::Go => v(&["go", "env", "GOVERSION"]),
            Language::C => v(&["gcc", "-dumpfullversion"]),
            Language::Cpp => v(&["g++", "-dumpfullversion"]),
            Language::Rust => v(&["rustc", "--version"]),
            Language::Java => v(&["javac", "-J-XX:+UseSerialGC", "-version"]),
        }
    }

    /// Run a short command in a sandbox without a workspace; its output if it succeeded.
    async fn probe(&self, language: Language, argv: Vec<String>) -> Option<String> {
        metrics::counter!("code_interpreter_runtime_probes_total").increment(1);
        let job = Job {
            argv,
            env: self.env(language),
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
        let found = self
            .probe(language, self.version_probe(language))
            .await
            .map(|t| clean_version(&t));
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
        for language in Language::ALL {
            let _ = self.version(language).await;
        }
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
        let list = match language {
            Language::Python => {
                let argv = vec![
                    self.python_arg(),
                    "-c".into(),
                    "import json, importlib.metadata as m; print(json.dumps(sorted({d.metadata['Name']: d.version for d in m.distributions()}.items())))".into(),
                ];
                self.probe(language, argv)
                    .await
                    .and_then(|t| serde_json::from_str::<Vec<(String, String)>>(&t).ok())
                    .unwrap_or_default()
            }
            Language::JavaScript | Language::TypeScript => {
                let argv = vec![
                    "node".into(),
                    "-p".into(),
                    "require('module').builtinModules.filter(m => !m.startsWith('_')).join('\\n')"
                        .into(),
                ];
                let mut list: Vec<(String, String)> = self
                    .probe(language, argv)
                    .await
                    .map(|t| t.lines().map(|m| (m.to_owned(), version.clone())).collect())
                    .unwrap_or_default();
                if language == Language::TypeScript
                    && let Some(esbuild) = self
                        .probe(language, vec![self.esbuild(), "--version".into()])
                        .await
                {
                    list.push(("esbuild".into(), esbuild));
                }
                list
            }
            Language::Go => self
                .probe(language, vec!["go".into(), "list".into(), "std".into()])
                .await
                .map(|t| {
                    t.lines()
                        .filter(|p| !p.contains("internal") && !p.starts_with("vendor/"))
                        .map(|p| (p.to_owned(), version.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
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

    fn plan(&self, language: Language, code: &str) -> Plan {
        let owned = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let file = |name: &str| format!("{CODE_DIR}/{name}");
        let out = |name: &str| format!("{OUT_DIR}/{name}");
        match language {
            Language::Python => Plan {
                file_name: "main.py".into(),
                source: code.into(),
                compile: None,
                run: vec![self.python_arg(), file("main.py")],
            },
            Language::Bash => Plan {
                file_name: "main.sh".into(),
                source: if self.bash_strict {
                    with_strict_mode(code)
                } else {
                    code.into()
                },
                compile: None,
                run: owned(&["/bin/bash", &file("main.sh")]),
            },
            Language::Sh => Plan {
                file_name: "main.sh".into(),
                source: code.into(),
                compile: None,
                run: owned(&["/bin/sh", &file("main.sh")]),
            },
            Language::JavaScript => {
                let name = if is_es_module(code) {
                    "main.mjs"
                } else {
                    "main.cjs"
                };
                Plan {
                    file_name: name.into(),
                    source: code.into(),
                    compile: None,
                    run: owned(&["node", &file(name)]),
                }
            }
            Language::TypeScript => {
                // One sandbox: esbuild strips the types (~5 ms), then Node runs the result.
                let (format, out_name) = if is_es_module(code) {
                    ("esm", "main.mjs")
                } else {
                    ("cjs", "main.cjs")
                };
                let script = format!(
                    "\"{}\" {} --format={format} --platform=node --target=node18 --log-level=warning --outfile=/tmp/{out_name} && exec node /tmp/{out_name} \"$@\"",
                    self.esbuild(),
                    file("main.ts"),
                );
                Plan {
                    file_name: "main.ts".into(),
                    source: code.into(),
                    compile: None,
                    run: vec!["/bin/sh".into(), "-c".into(), script, "main.ts".into()],
                }
            }
            Language::Go => Plan {
                file_name: "main.go".into(),
                source: code.into(),
                compile: Some(owned(&[
                    "go",
                    "build",
                    "-trimpath",
                    "-o",
                    &out("main"),
                    &file("main.go"),
                ])),
                run: owned(&["main"]),
            },
            Language::C => Plan {
                file_name: "main.c".into(),
                source: code.into(),
                compile: Some(owned(&[
                    "gcc",
                    "-std=c17",
                    "-O2",
                    "-o",
                    &out("main"),
                    &file("main.c"),
                    "-lm",
                ])),
                run: owned(&["main"]),
            },
            Language::Cpp => Plan {
                file_name: "main.cpp".into(),
                source: code.into(),
                compile: Some(owned(&[
                    "g++",
                    "-std=c++17",
                    "-O2",
                    "-o",
                    &out("main"),
                    &file("main.cpp"),
                ])),
                run: owned(&["main"]),
            },
            Language::Rust => Plan {
                file_name: "main.rs".into(),
                source: code.into(),
                compile: Some(owned(&[
                    "rustc",
                    "--edition",
                    "2021",
                    "-O",
                    "-o",
                    &out("main"),
                    &file("main.rs"),
                ])),
                run: owned(&["main"]),
            },
            Language::Java => {
                let class = java_class_name(code);
                let name = format!("{class}.java");
                Plan {
                    file_name: name.clone(),
                    source: code.into(),
                    compile: Some(owned(&[
                        "javac",
                        "-J-XX:+UseSerialGC",
                        "-J-XX:TieredStopAtLevel=1",
                        "-d",
                        OUT_DIR,
                        &file(&name),
                    ])),
                    run: owned(&[
                        "java",
                        "-XX:+UseSerialGC",
                        "-XX:TieredStopAtLevel=1",
                        "-cp",
                        BUILD_DIR,
                        &class,
                    ]),
                }
            }
        }
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
    fn write_source(&self, plan: &Plan) -> std::io::Result<tempfile::TempDir> {
        let dir = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&self.runs_dir)?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let path = dir.path().join(&plan.file_name);
        std::fs::write(&path, &plan.source)?;
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
        let plan = self.plan(req.language, req.code);
        let source_dir = self.write_source(&plan)?;
        let env = self.env(req.language);
        let mut mounts = self.runtime_mounts();
        mounts.push(Mount::read_only(source_dir.path(), CODE_DIR));

        let mut argv = plan.run.clone();
        if let Some(compile) = &plan.compile {
            let key = cache_key(req.language, &version, &plan);
            let build = self
                .cache_dir
                .join("build")
                .join(format!("{}-{key}", req.language));
            if !build.join(".ok").exists() {
                let compiled = self
                    .compile(
                        &req,
                        compile,
                        &env,
                        source_dir.path(),
                        &build,
                        deadline,
                        &events,
                    )
                    .await?;
                if let Some(failed) = compiled {
                    return Ok(failed);
                }
            }
            mounts.push(Mount::read_only(&build, BUILD_DIR));
            if req.language != Language::Java {
                argv[0] = format!("{BUILD_DIR}/{}", plan.run[0]);
            }
        }
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
        drop(source_dir);
        Ok(outcome)
    }

    /// Build into the cache. `Ok(Some(outcome))` when the build failed (diagnostics were
    /// sent as stderr); `Ok(None)` when the program is now in the cache.
    #[allow(clippy::too_many_arguments)]
    async fn compile(
        &self,
        req: &RunRequest<'_>,
        argv: &[String],
        env: &[(String, String)],
        source_dir: &Path,
        build: &Path,
        deadline: Instant,
        events: &mpsc::Sender<RunEvent>,
    ) -> Result<Option<RunOutcome>, RuntimeError> {
        let started = Instant::now();
        let out = tempfile::Builder::new()
            .prefix("tmp-")
            .tempdir_in(self.cache_dir.join("build"))?;
        std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o755))?;
        if let Some((uid, gid)) = self.sandbox.user() {
            std::os::unix::fs::chown(out.path(), Some(uid), Some(gid))?;
        }
        let mut mounts = self.runtime_mounts();
        mounts.push(Mount::read_only(source_dir, CODE_DIR));
        mounts.push(Mount::writable(out.path(), OUT_DIR));
        if req.language == Language::Go {
            mounts.push(Mount::writable(self.cache_dir.join("go-build"), GO_CACHE));
        }
        let job = Job {
            argv: argv.to_vec(),
            env: env.to_vec(),
            workspace: None,
            mounts,
            limits: Limits {
                file_size_bytes: None,
                ..req.limits
            },
        };
        let process = self.sandbox.spawn(&job, &format!("{}-build", req.run_id))?;
        // Compiler output is diagnostics: all of it goes to stderr, none to stdout.
        let (tx, mut rx) = mpsc::channel(64);
        let build_req = RunRequest {
            disk_quota: None,
            cancel: req.cancel.clone(),
            ..*req
        };
        let forward = {
            let events = events.clone();
            tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    let bytes = match ev {
                        RunEvent::Stdout(b) | RunEvent::Stderr(b) => b,
                        _ => continue,
                    };
                    let _ = events.send(RunEvent::Stderr(bytes)).await;
                }
            })
        };
        let outcome = supervise(process, &build_req, deadline, started, &tx).await;
        drop(tx);
        let _ = forward.await;
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
            return Ok(Some(outcome));
        }
        std::fs::write(out.path().join(".ok"), b"")?;
        let tmp = out.keep();
        if std::fs::rename(&tmp, build).is_err() {
            // Another run built the same program meanwhile; keep theirs.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Ok(None)
    }
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
    let (overflow_tx, mut overflow_rx) = mpsc::channel::<&'static str>(2);
    let stdout = process.child.stdout.take();
    let stderr = process.child.stderr.take();
    let pumps = [
        stdout.map(|r| {
            tokio::spawn(pump(
                r,
                "stdout",
                events.clone(),
                req.max_output_bytes,
                overflow_tx.clone(),
            ))
        }),
        stderr.map(|r| {
            tokio::spawn(pump(
                r,
                "stderr",
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
                stop = Some(Stop::Timeout);
                process.kill_tree();
            }
            _ = req.cancel.cancelled(), if stop.is_none() => {
                stop = Some(Stop::Cancelled);
                process.kill_tree();
            }
            Some(stream) = overflow_rx.recv(), if stop.is_none() => {
                stop = Some(Stop::Output(stream));
                process.kill_tree();
            }
            _ = watch.tick(), if stop.is_none() => {
                if process.hit_process_limit() {
                    stop = Some(Stop::Processes);
                    process.kill_tree();
                } else if let Some(quota) = req.disk_quota
                    && last_disk_check.elapsed() >= DISK_CHECK_EVERY
                {
                    last_disk_check = Instant::now();
                    let ws = req.workspace.to_path_buf();
                    let used = tokio::task::spawn_blocking(move || crate::store::workspace_usage(&ws)).await.unwrap_or(0);
                    if used > quota {
                        stop = Some(Stop::Disk);
                        process.kill_tree();
                    }
                }
            }
        }
    };
    // Everything else in the sandbox dies with it; the pipes close once it is gone.
    process.kill_tree();
    for pump in pumps.into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(5), pump).await;
    }
    let wall_time = started.elapsed();
    let oom = process.oom_killed();
    let cpu_time = process.cpu_time();
    let peak_memory = process.peak_memory();
    process.release().await;

    let exit_code = status.and_then(|s| s.code());
    let signal = exit_code
        .filter(|c| *c > 128)
        .and_then(|c| signal_name(c - 128))
        .map(str::to_owned);
    let mib = |b: u64| b / (1024 * 1024);
    let (status, message) = match (stop, oom) {
        (Some(Stop::Timeout), _) => (
            RunStatus::Timeout,
            Some(format!(
                "The run exceeded its time limit of {:.0} s and was stopped.",
                req.timeout.as_secs_f64()
            )),
        ),
        (Some(Stop::Cancelled), _) => (RunStatus::Killed, Some(super::CANCELLED_MESSAGE.into())),
        (_, true) => (
            RunStatus::Killed,
            Some(format!(
                "The run exceeded the memory limit of {} MiB and was killed.",
                req.limits.memory_bytes.map(mib).unwrap_or_default()
            )),
        ),
        (Some(Stop::Processes), _) => (
            RunStatus::Killed,
            Some(format!(
                "The run reached the limit of {} processes and was stopped.",
                req.limits.processes.unwrap_or_default()
            )),
        ),
        (Some(Stop::Output(stream)), _) => (
            RunStatus::Killed,
            Some(format!(
                "The run's {stream} passed the output limit of {} bytes and was stopped.",
                req.max_output_bytes
            )),
        ),
        (Some(Stop::Disk), _) => (
            RunStatus::Killed,
            Some(format!(
                "The run's files passed the session's disk quota of {} MiB and it was stopped.",
                req.disk_quota.map(mib).unwrap_or_default()
            )),
        ),
        (None, false) if signal.as_deref() == Some("SIGXFSZ") => (
            RunStatus::Killed,
            Some(format!(
                "The run wrote a file larger than the limit of {} MiB and was stopped.",
                req.limits.file_size_bytes.map(mib).unwrap_or_default()
            )),
        ),
        (None, false) if signal.as_deref() == Some("SIGXCPU") => (
            RunStatus::Killed,
            Some(format!(
                "The run used more than its CPU time limit of {} s and was stopped.",
                req.limits.cpu_seconds.unwrap_or_default()
            )),
        ),
        (None, false) if exit_code == Some(0) => (RunStatus::Success, None),
        (None, false) => (RunStatus::Error, None),
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

/// Forward a pipe's bytes as events, up to `cap`; past it, report the overflow and stop
/// reading (the run is about to be killed).
async fn pump(
    mut reader: impl AsyncRead + Unpin,
    stream: &'static str,
    events: mpsc::Sender<RunEvent>,
    cap: u64,
    overflow: mpsc::Sender<&'static str>,
) {
    let mut sent: u64 = 0;
    let mut buf = vec![0u8; PIPE_CHUNK];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let room = (cap - sent) as usize;
        let take = n.min(room);
        if take > 0 {
            let bytes = Bytes::copy_from_slice(&buf[..take]);
            let event = if stream == "stdout" {
                RunEvent::Stdout(bytes)
            } else {
                RunEvent::Stderr(bytes)
            };
            // A gone listener does not stop the run; keep draining.
            let _ = events.send(event).await;
            sent += take as u64;
        }
        if n > room {
            // Say where the output was cut, in the stream itself.
            let marker = format!("\n[output cut: more than {cap} bytes on {stream}]\n");
            let bytes = Bytes::from(marker);
            let event = if stream == "stdout" {
                RunEvent::Stdout(bytes)
            } else {
                RunEvent::Stderr(bytes)
            };
            let _ = events.send(event).await;
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

fn cache_key(language: Language, version: &str, plan: &Plan) -> String {
    let mut h = Sha256::new();
    for part in [
        language.name(),
        version,
        RECIPE_VERSION,
        &plan.file_name,
        &plan.source,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
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

/// `set -euo pipefail` as the first command, after a shebang line if there is one.
fn with_strict_mode(code: &str) -> String {
    const STRICT: &str = "set -euo pipefail\n";
    match code.strip_prefix("#!") {
        Some(_) => match code.split_once('\n') {
            Some((shebang, rest)) => format!("{shebang}\n{STRICT}{rest}"),
            None => format!("{code}\n{STRICT}"),
        },
        None => format!("{STRICT}{code}"),
    }
}

/// ES module syntax: a top-level `import`/`export` statement or a top-level `await`.
fn is_es_module(code: &str) -> bool {
    code.lines().any(|line| {
        let starts = |kw: &str| {
            line.strip_prefix(kw)
                .is_some_and(|rest| rest.starts_with([' ', '{', '*', '\t']))
        };
        (starts("import") && !line.starts_with("import(")) || starts("export") || starts("await")
    })
}

/// The public class's name (the file must be named after it), else `Main`.
fn java_class_name(code: &str) -> String {
    let mut words = code.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if w == "public" {
            let mut next = words.clone();
            while let Some(m) = next.next() {
                match m {
                    "final" | "abstract" | "static" | "strictfp" => continue,
                    "class" | "record" | "enum" | "interface" => {
                        if let Some(name) = next.next() {
                            let ident: String = name
                                .chars()
                                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
                                .collect();
                            if !ident.is_empty() {
                                return ident;
                            }
                        }
                        break;
                    }
                    _ => break,
                }
            }
        }
    }
    "Main".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_mode_goes_after_the_shebang() {
        assert_eq!(with_strict_mode("echo hi"), "set -euo pipefail\necho hi");
        assert_eq!(
            with_strict_mode("#!/bin/bash\necho hi"),
            "#!/bin/bash\nset -euo pipefail\necho hi"
        );
    }

    #[test]
    fn es_module_syntax_is_detected() {
        assert!(is_es_module("import fs from 'fs';"));
        assert!(is_es_module("import { readFileSync } from 'node:fs'"));
        assert!(is_es_module("export const x = 1;"));
        assert!(is_es_module("await new Promise(r => setTimeout(r, 1));"));
        assert!(!is_es_module(
            "const fs = require('fs');\nconsole.log('import x')"
        ));
        assert!(!is_es_module("import('fs').then(() => {})"));
    }

    #[test]
    fn java_class_names_are_found() {
        assert_eq!(java_class_name("public class Hello { }"), "Hello");
        assert_eq!(java_class_name("public final class Greeter{"), "Greeter");
        assert_eq!(java_class_name("class X {}"), "Main");
    }

    #[test]
    fn versions_are_cleaned() {
        assert_eq!(clean_version("rustc 1.63.0"), "1.63.0");
        assert_eq!(clean_version("go1.26.8"), "1.26.8");
        assert_eq!(clean_version("javac 17.0.15"), "17.0.15");
        assert_eq!(clean_version("v20.20.2"), "20.20.2");
        assert_eq!(clean_version("12.2.0"), "12.2.0");
    }
}
