//! The sandbox every run goes through: bubblewrap namespaces, a read-only system, a private
//! `/tmp`, the session's workspace at `/mnt/data`, no network, an unprivileged uid, a
//! seccomp filter, cgroup limits and rlimits. Knows nothing about languages: a caller hands
//! it an argv, an environment, extra mounts and limits.
//!
//! The steps, in order, for one launch (`Sandbox::spawn`):
//! 1. make the run's cgroups and write its limits;
//! 2. fork; in the child, before exec: join the cgroups, set rlimits, mark every
//!    descriptor above stdio close-on-exec except the seccomp filters (whatever the server
//!    inherited or opened never reaches user code), ask for SIGKILL if the server dies,
//!    drop to the sandbox uid (when the server is root: bwrap started by root would map
//!    user code to host root, so it must start unprivileged);
//! 3. exec bwrap, which unshares every namespace (user, mount, pid, ipc, uts, net, cgroup),
//!    builds the filesystem below, forbids further user namespaces, installs the filter
//!    and runs the command as PID 2 under its own init, so when the command ends, the
//!    namespace and every process left in it end too.
//!
//! Steps 1 and 2 are usually done ahead by a launcher (`launcher`): a process that joined a
//! fresh group well before the run, waiting to be told the run's limits, uid and argv, so
//! that the run does not pay for joining its groups.

mod cgroup;
pub mod fork;
mod launcher;
pub mod probe;
mod seccomp;
mod selftest;
mod uids;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

pub use cgroup::GroupLimits;
use cgroup::{CgroupV1, RunCgroup};
pub use launcher::{LAUNCHER_ARG, serve_request};
pub use uids::{UidRange, owner_of};

use crate::config::SandboxMode;

/// Where the workspace appears inside the sandbox, and the working directory.
pub const WORKSPACE: &str = "/mnt/data";
/// The private home directory, inside the sandbox's `/tmp`.
pub const HOME: &str = "/tmp/home";
/// The uid and gid user code has inside the sandbox (`nobody`, named `sandbox` in its
/// `/etc/passwd`); on the host it is the workspace owner's (see `uids`).
const SANDBOX_ID: u32 = 65534;
/// Open files per process.
const OPEN_FILES: u64 = 4096;

/// Host configuration every program may need (alternatives symlinks, the dynamic linker
/// cache, certificates, fonts). Missing ones are skipped. What one toolchain needs more
/// comes in `Job::mounts`.
const ETC_FILES: &[&str] = &[
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/fonts",
    "/etc/localtime",
    "/etc/mime.types",
];

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the sandbox could not be started: {0}")]
    Spawn(io::Error),
    #[error("the run's cgroup could not be set up: {0}")]
    Cgroup(io::Error),
}

#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub mode: SandboxMode,
    pub network: bool,
    pub tmp_bytes: u64,
    /// A directory of the server's for files the sandbox reads (passwd, group, hosts).
    pub state_dir: PathBuf,
    /// At most this many CPUs' worth of time per sandbox (`MAX_CPUS`).
    pub max_cpus: Option<f64>,
    /// Host uids for sessions (`SANDBOX_UID_BASE`, `SANDBOX_UID_COUNT`), used as root.
    pub uid_base: u32,
    pub uid_count: u32,
    /// Launchers kept ready (`SANDBOX_LAUNCHERS`); 0 starts every sandbox from the server.
    pub launchers: usize,
}

/// A host path made visible inside the sandbox.
#[derive(Debug, Clone)]
pub struct Mount {
    pub host: PathBuf,
    pub inside: PathBuf,
    pub writable: bool,
}

impl Mount {
    pub fn read_only(host: impl Into<PathBuf>, inside: impl Into<PathBuf>) -> Self {
        Mount {
            host: host.into(),
            inside: inside.into(),
            writable: false,
        }
    }

    pub fn writable(host: impl Into<PathBuf>, inside: impl Into<PathBuf>) -> Self {
        Mount {
            host: host.into(),
            inside: inside.into(),
            writable: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub processes: Option<u64>,
    pub cpu_seconds: Option<u64>,
    pub file_size_bytes: Option<u64>,
}

/// One command to run in a sandbox.
#[derive(Debug, Clone, Default)]
pub struct Job {
    pub argv: Vec<String>,
    /// The complete environment: nothing of the server's is inherited.
    pub env: Vec<(String, String)>,
    /// Bound read-write at `/mnt/data` and used as the working directory.
    pub workspace: Option<PathBuf>,
    pub mounts: Vec<Mount>,
    pub limits: Limits,
}

/// How the sandbox is isolated on this machine, for `/health` and logs.
#[derive(Debug, Clone)]
pub struct Isolation {
    pub mode: &'static str,
    pub network: bool,
    pub cgroups: bool,
    pub seccomp: bool,
    pub unprivileged_uid: Option<u32>,
}

pub struct Sandbox {
    options: SandboxOptions,
    /// The uid of sandboxes without a workspace, when the server drops privileges.
    user: Option<(u32, u32)>,
    uids: Option<std::sync::Arc<UidRange>>,
    cgroups: Option<CgroupV1>,
    seccomp: Option<std::sync::Arc<seccomp::Filters>>,
    launchers: Option<launcher::Pool>,
}

/// A started sandbox. Dropping it kills everything still running in it.
pub struct Process {
    pub child: tokio::process::Child,
    pid: Option<u32>,
    cgroup: Option<RunCgroup>,
}

/// What stays of a sandbox once its `Child` was handed to a task that waits on it: the
/// means to measure and to kill it. Dropping it kills everything still running.
pub struct Handle {
    pid: Option<u32>,
    cgroup: Option<RunCgroup>,
}

impl Sandbox {
    pub fn new(options: SandboxOptions) -> io::Result<Self> {
        let root = rustix::process::geteuid().is_root();
        let uids =
            root.then(|| std::sync::Arc::new(UidRange::new(options.uid_base, options.uid_count)));
        let user = uids.as_ref().map(|u| (u.tool_uid(), u.tool_uid()));
        let cgroups = if root {
            CgroupV1::detect(options.max_cpus)
        } else {
            None
        };
        if cgroups.is_none() {
            tracing::warn!(
                "no writable cgroup v1 memory/pids controllers: memory and process limits fall back to rlimits"
            );
        }
        let seccomp = match options.mode {
            SandboxMode::Bwrap => Some(std::sync::Arc::new(
                seccomp::Filters::build().map_err(io::Error::other)?,
            )),
            SandboxMode::None => {
                tracing::warn!(
                    "SANDBOX=none: user code runs WITHOUT isolation; use this for development only"
                );
                None
            }
        };
        write_identity_files(&options.state_dir)?;
        let launchers = match (&cgroups, options.mode) {
            (Some(v1), SandboxMode::Bwrap) if options.launchers > 0 => launcher::Pool::start(
                launcher::Factory {
                    cgroups: v1.clone(),
                    seccomp: seccomp.clone(),
                },
                options.launchers,
            ),
            _ => None,
        };
        Ok(Sandbox {
            options,
            user,
            uids,
            cgroups,
            seccomp,
            launchers,
        })
    }

    /// Fail early, with the fix, when the sandbox user cannot reach `dir` by path (bwrap
    /// runs as that user and binds the workspace from there).
    pub fn check_reachable(&self, dir: &Path) -> Result<(), String> {
        if self.user.is_none() {
            return Ok(());
        }
        for ancestor in dir.ancestors().skip(1) {
            let Ok(meta) = std::fs::metadata(ancestor) else {
                continue;
            };
            if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o001 == 0 {
                return Err(format!(
                    "{} is not searchable by the sandbox user (uid {SANDBOX_ID}); run `chmod o+x {}` or choose another DATA_DIR",
                    ancestor.display(),
                    ancestor.display()
                ));
            }
        }
        Ok(())
    }

    /// The uid and gid of sandboxes without a workspace (builds, probes), when the server
    /// drops to one.
    pub fn user(&self) -> Option<(u32, u32)> {
        self.user
    }

    /// The uids sessions get, when the server is root.
    pub fn uids(&self) -> Option<&std::sync::Arc<UidRange>> {
        self.uids.as_ref()
    }

    /// Who a sandbox binding `workspace` runs as: the workspace's owner (each session has
    /// its own uid), never root.
    pub fn user_for(&self, workspace: Option<&Path>) -> io::Result<Option<(u32, u32)>> {
        let (Some(tool), Some(ws)) = (self.user, workspace) else {
            return Ok(self.user);
        };
        match owner_of(ws)? {
            0 => Ok(Some(tool)),
            uid => Ok(Some((uid, uid))),
        }
    }

    pub fn isolation(&self) -> Isolation {
        Isolation {
            mode: match self.options.mode {
                SandboxMode::Bwrap => "bwrap",
                SandboxMode::None => "none",
            },
            network: self.options.network,
            cgroups: self.cgroups.is_some(),
            seccomp: self.seccomp.is_some(),
            unprivileged_uid: self.user.map(|(u, _)| u),
        }
    }

    fn bwrap_args(&self, job: &Job, seccomp_fds: &[i32]) -> Vec<String> {
        self.bwrap_args_for(job, seccomp_fds, None)
    }

    /// bwrap's arguments for `job`; with `template` (mount points), the sandbox of a kernel
    /// template instead (see `fork`): root without a user namespace and with the
    /// capabilities to change uid, empty mount points for what each fork attaches, and its
    /// own filter (each fork installs the full one).
    fn bwrap_args_for(
        &self,
        job: &Job,
        seccomp_fds: &[i32],
        template: Option<&[&str]>,
    ) -> Vec<String> {
        let mut a: Vec<String> = Vec::with_capacity(96);
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        match template {
            // Root on the host without a user namespace, so that each fork can become its
            // session's uid and own its user namespace; only the capabilities that needs,
            // and what the template's first step needs and then drops (see `fork`).
            Some(_) => push(&[
                "--unshare-pid",
                "--unshare-ipc",
                "--unshare-net",
                "--unshare-uts",
                "--unshare-cgroup",
                "--cap-drop",
                "ALL",
                "--cap-add",
                "CAP_SETUID",
                "--cap-add",
                "CAP_SETGID",
                "--cap-add",
                "CAP_SETPCAP",
                "--cap-add",
                "CAP_SYS_ADMIN",
            ]),
            None => {
                push(&["--unshare-all", "--unshare-user", "--disable-userns"]);
                // Whatever host uid runs it, user code sees the same identity inside.
                let id = SANDBOX_ID.to_string();
                push(&["--uid", &id, "--gid", &id]);
            }
        }
        if self.options.network {
            push(&["--share-net"]);
        }
        push(&[
            "--die-with-parent",
            "--new-session",
            "--hostname",
            "sandbox",
        ]);
        // bwrap run as root makes the missing parents of a mount root's and 0700, which
        // the template's forks (no longer root) could not pass: they are made first.
        if template.is_some() {
            let dests = ETC_FILES
                .iter()
                .map(Path::new)
                .chain(job.mounts.iter().map(|m| m.inside.as_path()));
            for dir in parents_to_make(dests, false) {
                push(&["--dir", &dir.to_string_lossy()]);
            }
        }
        push(&["--ro-bind", "/usr", "/usr"]);
        // Merged-/usr systems link /bin, /lib… into /usr; others have real directories.
        for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(top);
            match std::fs::read_link(&host) {
                Ok(target) => push(&[
                    "--symlink",
                    &target.to_string_lossy(),
                    &host.to_string_lossy(),
                ]),
                Err(_) if host.is_dir() => push(&[
                    "--ro-bind",
                    &host.to_string_lossy(),
                    &host.to_string_lossy(),
                ]),
                Err(_) => {}
            }
        }
        for etc in ETC_FILES {
            push(&["--ro-bind-try", etc, etc]);
        }
        let state = self.options.state_dir.to_string_lossy().into_owned();
        push(&["--ro-bind", &format!("{state}/passwd"), "/etc/passwd"]);
        push(&["--ro-bind", &format!("{state}/group"), "/etc/group"]);
        if self.options.network {
            push(&["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]);
            push(&["--ro-bind-try", "/etc/hosts", "/etc/hosts"]);
        } else {
            push(&["--ro-bind", &format!("{state}/hosts"), "/etc/hosts"]);
        }
        push(&["--proc", "/proc", "--dev", "/dev"]);
        push(&[
            "--size",
            &self.options.tmp_bytes.to_string(),
            "--tmpfs",
            "/tmp",
        ]);
        push(&["--dir", HOME]);
        if template.is_some() {
            let dests = job.mounts.iter().map(|m| m.inside.as_path());
            for dir in parents_to_make(dests, true) {
                push(&["--dir", &dir.to_string_lossy()]);
            }
        }
        // Mounts below /tmp come after the tmpfs, or it would hide them.
        for m in &job.mounts {
            let kind = if m.writable { "--bind" } else { "--ro-bind" };
            push(&[kind, &m.host.to_string_lossy(), &m.inside.to_string_lossy()]);
        }
        if let Some(ws) = &job.workspace {
            push(&[
                "--bind",
                &ws.to_string_lossy(),
                WORKSPACE,
                "--chdir",
                WORKSPACE,
            ]);
        } else {
            push(&["--chdir", HOME]);
        }
        for point in template.unwrap_or_default() {
            push(&["--dir", point]);
        }
        // Nothing outside /tmp, /mnt/data and the writable mounts may be written.
        push(&["--remount-ro", "/"]);
        for fd in seccomp_fds {
            push(&["--add-seccomp-fd", &fd.to_string()]);
        }
        push(&["--"]);
        a.extend(job.argv.iter().cloned());
        a
    }

    /// Start `job`. The returned process has its stdout and stderr piped and stdin closed.
    pub fn spawn(&self, job: &Job, run_id: &str) -> Result<Process, SandboxError> {
        let user = self
            .user_for(job.workspace.as_deref())
            .map_err(SandboxError::Spawn)?;
        self.spawn_as(job, run_id, user, None)
    }

    /// `spawn` as `user`; with `template`, a kernel template (`fork::Template`): `inherit`
    /// stays open for it and the seccomp filters are its own descriptors, named after
    /// `job.argv` (the control socket first).
    fn spawn_as(
        &self,
        job: &Job,
        run_id: &str,
        user: Option<(u32, u32)>,
        template: Option<(&[&str], i32)>,
    ) -> Result<Process, SandboxError> {
        if template.is_none()
            && self.options.mode == SandboxMode::Bwrap
            && let Some(ready) = self.launchers.as_ref().and_then(|p| p.take())
        {
            match self.launch(ready, job, run_id, user) {
                Ok(process) => return Ok(process),
                Err(launcher::Refused::Exec(err)) => return Err(SandboxError::Spawn(err)),
                Err(launcher::Refused::Unusable(err)) => {
                    tracing::debug!(error = %err, "a launcher could not be used; starting the sandbox without one");
                }
            }
        }
        let cgroup = match &self.cgroups {
            Some(v1) => Some(
                v1.create_run(
                    run_id,
                    GroupLimits {
                        memory_bytes: job.limits.memory_bytes,
                        processes: job.limits.processes,
                    },
                )
                .map_err(SandboxError::Cgroup)?,
            ),
            None => None,
        };
        let seccomp_fds: Vec<OwnedFd> = match &self.seccomp {
            Some(f) => f.memfds().map_err(SandboxError::Spawn)?,
            None => Vec::new(),
        };

        let template_fds: Vec<OwnedFd> = match (&self.seccomp, template) {
            (Some(f), Some(_)) => f.template_memfds().map_err(SandboxError::Spawn)?,
            _ => Vec::new(),
        };
        let fds: Vec<i32> = seccomp_fds.iter().map(|f| f.as_raw_fd()).collect();
        let own: Vec<i32> = template_fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut keep = fds.clone();
        keep.extend(&own);
        let mut cmd = match (self.options.mode, template) {
            (SandboxMode::Bwrap, None) => {
                let mut c = tokio::process::Command::new("bwrap");
                c.args(self.bwrap_args(job, &fds));
                c
            }
            (SandboxMode::Bwrap, Some((points, control))) => {
                let mut c = tokio::process::Command::new("bwrap");
                c.args(self.bwrap_args_for(job, &own, Some(points)));
                c.arg(control.to_string());
                c.args(fds.iter().map(|fd| fd.to_string()));
                keep.push(control);
                c
            }
            (SandboxMode::None, _) => {
                let mut c = tokio::process::Command::new(&job.argv[0]);
                c.args(&job.argv[1..]);
                if let Some(ws) = &job.workspace {
                    c.current_dir(ws);
                }
                c
            }
        };
        cmd.env_clear()
            .envs(job.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);

        let setup = ChildSetup {
            cgroup_procs: cgroup.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
            rlimits: rlimits(&job.limits, cgroup.is_some()),
            seccomp_fds: keep,
            user,
            open_files_limit: current_open_files_limit(),
        };
        // SAFETY: `ChildSetup::apply` only makes async-signal-safe system calls on data
        // prepared before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || setup.apply());
        }
        let child = cmd.spawn().map_err(SandboxError::Spawn)?;
        drop(seccomp_fds);
        drop(template_fds);
        let pid = child.id();
        Ok(Process { child, pid, cgroup })
    }
}

impl Sandbox {
    /// `job` through a launcher that joined its groups ahead: the same bwrap argv, limits
    /// and uid as a sandbox started from here.
    fn launch(
        &self,
        ready: launcher::Launcher,
        job: &Job,
        run_id: &str,
        user: Option<(u32, u32)>,
    ) -> Result<Process, launcher::Refused> {
        let program = launcher::resolve("bwrap", &job.env).ok_or_else(|| {
            launcher::Refused::Unusable(io::Error::new(
                io::ErrorKind::NotFound,
                "bwrap is not in PATH",
            ))
        })?;
        let mut argv = vec!["bwrap".to_owned()];
        argv.extend(self.bwrap_args(job, ready.seccomp_fds()));
        ready.launch(&launcher::Request {
            program: &program,
            argv: &argv,
            env: &job.env,
            user,
            rlimits: &rlimits(&job.limits, true),
            limits: GroupLimits {
                memory_bytes: job.limits.memory_bytes,
                processes: job.limits.processes,
            },
            run_id,
        })
    }
}

impl Process {
    /// Kill every process of the run: the whole cgroup, and bwrap itself (whose death
    /// takes the PID namespace with it).
    pub fn kill_tree(&mut self) {
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
        let _ = self.child.start_kill();
    }

    /// Separate the child (to wait on it elsewhere) from the means to measure and kill.
    pub fn into_parts(mut self) -> (tokio::process::Child, Handle) {
        let handle = Handle {
            pid: self.pid,
            cgroup: self.cgroup.take(),
        };
        // Dropping `self` now must not kill the child: it moves out whole.
        let Process { child, .. } = self;
        (child, handle)
    }

    pub fn peak_memory(&self) -> Option<u64> {
        self.cgroup.as_ref().and_then(|c| c.peak_memory())
    }

    pub fn cpu_time(&self) -> Option<Duration> {
        self.cgroup.as_ref().and_then(|c| c.cpu_time())
    }

    pub fn oom_killed(&self) -> bool {
        self.cgroup.as_ref().is_some_and(|c| c.oom_killed())
    }

    pub fn hit_process_limit(&self) -> bool {
        self.cgroup.as_ref().is_some_and(|c| c.hit_process_limit())
    }

    /// Tear down off the async threads and off the run's path (once its measurements are
    /// read): removing a cgroup may wait for the last exit, and the answer needs none of it.
    pub fn release(mut self) {
        let cgroup = self.cgroup.take();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(cgroup))),
            Err(_) => drop(cgroup),
        }
    }
}

impl Handle {
    pub fn kill_tree(&self) {
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
        if let Some(pid) = self
            .pid
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }

    pub fn peak_memory(&self) -> Option<u64> {
        self.cgroup.as_ref().and_then(|c| c.peak_memory())
    }

    /// Start measuring peak memory afresh (per cell of a long-lived kernel).
    pub fn reset_peak_memory(&self) {
        if let Some(c) = &self.cgroup {
            c.reset_peak_memory();
        }
    }

    pub fn cpu_time(&self) -> Option<Duration> {
        self.cgroup.as_ref().and_then(|c| c.cpu_time())
    }

    pub fn oom_killed(&self) -> bool {
        self.cgroup.as_ref().is_some_and(|c| c.oom_killed())
    }

    /// Forks refused so far because the process limit was reached.
    pub fn process_limit_hits(&self) -> u64 {
        self.cgroup.as_ref().map_or(0, |c| c.process_limit_hits())
    }
}

/// The directories above `dests` that bwrap would have to make for them (below `/tmp` with
/// `in_tmp`, elsewhere without), parents first: none under `/usr` (bound whole) or under a
/// top-level symlink (`/lib` on merged-/usr systems).
fn parents_to_make<'a>(dests: impl Iterator<Item = &'a Path>, in_tmp: bool) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for dest in dests {
        let mut ancestors: Vec<&Path> = dest
            .ancestors()
            .skip(1)
            .filter(|a| a.parent().is_some())
            .collect();
        ancestors.reverse();
        let Some(top) = ancestors.first() else {
            continue;
        };
        let under_tmp = top == &Path::new("/tmp");
        let bound = top == &Path::new("/usr") || std::fs::read_link(top).is_ok();
        if under_tmp != in_tmp || bound {
            continue;
        }
        for dir in ancestors {
            if dir != Path::new("/tmp") && !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_path_buf());
            }
        }
    }
    dirs
}

/// `/etc/passwd`, `/etc/group` and `/etc/hosts` as the sandbox sees them: only its own user
/// and loopback, nothing about the host.
fn write_identity_files(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("passwd"),
        format!(
            "root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{SANDBOX_ID}:{SANDBOX_ID}:sandbox:{HOME}:/bin/sh\n"
        ),
    )?;
    std::fs::write(
        dir.join("group"),
        format!("root:x:0:\nsandbox:x:{SANDBOX_ID}:\n"),
    )?;
    std::fs::write(
        dir.join("hosts"),
        "127.0.0.1 localhost sandbox\n::1 localhost\n",
    )?;
    for f in ["passwd", "group", "hosts"] {
        std::fs::set_permissions(
            dir.join(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )?;
    }
    Ok(())
}

fn rlimits(limits: &Limits, have_cgroup: bool) -> Vec<(libc::__rlimit_resource_t, u64)> {
    let mut out = vec![(libc::RLIMIT_CORE, 0), (libc::RLIMIT_NOFILE, OPEN_FILES)];
    if let Some(cpu) = limits.cpu_seconds {
        out.push((libc::RLIMIT_CPU, cpu));
    }
    if let Some(size) = limits.file_size_bytes {
        out.push((libc::RLIMIT_FSIZE, size));
    }
    // Without a memory cgroup (as in a container), the data limit is the last resort: it
    // counts private writable memory, not reservations, so the JVM's class space, V8's
    // cage and Go's arenas (PROT_NONE ranges that RLIMIT_AS would count) still start.
    if !have_cgroup && let Some(mem) = limits.memory_bytes {
        out.push((libc::RLIMIT_DATA, mem));
    }
    out
}

/// The server's soft limit on descriptors: the highest number one can have, for closing
/// them one by one where `close_range` is missing.
/// Mark every descriptor above stdio close-on-exec: the server's own sockets and files,
/// and whatever it inherited without close-on-exec (from a shell, a supervisor, a test
/// harness). Async-signal-safe, for a child between fork and exec; `limit` bounds the
/// one-by-one fallback where `close_range` is missing (before Linux 5.11).
///
/// # Safety
/// Only in a child between fork and exec: it changes descriptors other threads may own.
unsafe fn close_on_exec_above_stdio(limit: i32) {
    // SAFETY: plain syscalls on descriptor numbers; closed numbers just fail.
    unsafe {
        let marked = libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        if marked != 0 {
            for fd in 3..limit.min(1 << 20) {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
}

fn current_open_files_limit() -> i32 {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit
        .current
        .map_or(i32::MAX, |n| i32::try_from(n).unwrap_or(i32::MAX))
}

/// Raise the server's soft limit on open descriptors to its hard limit: every connection,
/// kernel socket and staged upload takes one, and the usual soft default (1,024) is low.
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    // No hard limit: the kernel's own ceiling (`fs.nr_open`) is usually 2^20.
    let wanted = limit.maximum.unwrap_or(1 << 20);
    if limit.current.is_some_and(|c| c < wanted) {
        limit.current = Some(wanted);
        if let Err(err) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %err, "could not raise the open files limit");
        }
    }
}

/// What the child does between fork and exec, prepared in the parent.
struct ChildSetup {
    cgroup_procs: Vec<CString>,
    rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    seccomp_fds: Vec<i32>,
    user: Option<(u32, u32)>,
    /// The parent's descriptor limit, for the fallback of closing one by one.
    open_files_limit: i32,
}

impl ChildSetup {
    fn apply(&self) -> io::Result<()> {
        // SAFETY: plain system calls on valid, pre-built arguments.
        unsafe {
            for path in &self.cgroup_procs {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            for &(resource, value) in &self.rlimits {
                let lim = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                if libc::setrlimit(resource, &lim) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            close_on_exec_above_stdio(self.open_files_limit);
            for &fd in &self.seccomp_fds {
                // The filter keeps its number; only the child's copy loses close-on-exec,
                // so bwrap inherits it and no other process ever does.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some((uid, gid)) = self.user
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0)
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}
