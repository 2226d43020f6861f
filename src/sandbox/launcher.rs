//! Launchers: processes that have joined a fresh cgroup well before a run needs one, so the
//! run's start does not pay for the migration.
//!
//! On cgroup v1 (and v2 without `CLONE_INTO_CGROUP`) a process enters a group by writing
//! itself into `cgroup.procs`. That takes the kernel's global `cgroup_threadgroup_rwsem`
//! for writing: the writer waits for an RCU grace period (10-20 ms on a busy host), and
//! every fork and thread start on the host takes the slow path of that lock for a while
//! after. A one-shot run that joins its groups just before it execs bwrap pays both, and a
//! program that starts many threads at once (Node starts about ten) pays the second more.
//!
//! A launcher is made ahead, by a thread of its own (`Pool`): a new set of run groups
//! (memory, pids, cpu, cpuacct; the CPU weight written), fresh seccomp filter descriptors
//! and stdout/stderr pipes; the child joins the groups, marks every other descriptor
//! close-on-exec and re-executes the server binary (`/proc/self/exe`) as `LAUNCHER_ARG`,
//! which waits for one request on a pipe. Taking one for a run (`Launcher::launch`): the
//! run's memory and process limits are written into its groups, the groups are renamed to
//! the run's name, peak memory and CPU time start afresh, then the request (the run's uid
//! and gid, rlimits, the descriptors to keep, bwrap's argv and the environment) is written
//! and the pipe closed. The launcher applies the rlimits, drops to the uid, marks every
//! descriptor but the filters close-on-exec and execs bwrap: from there on it is the
//! sandbox exactly as `Sandbox::spawn` starts it without one, in the same process (the
//! server's child, whose pid and pipes the run already holds).
//!
//! A launcher serves one run and nothing else: it is taken out of the pool before its
//! request is written, it reads to the end of its pipe and execs or exits, and it was made
//! before any session existed (it holds no path, uid or descriptor of one). One that is
//! never taken is killed with its groups when the pool goes (`Drop`), and it exits by
//! itself when the server dies (its pipe reaches its end; it also has `PDEATHSIG`).

use std::collections::VecDeque;
use std::ffi::{CString, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::cgroup::{CgroupV1, GroupLimits, RunCgroup};
use super::{ChildSetup, Process, close_on_exec_above_stdio, current_open_files_limit, seccomp};

/// The first argument that makes the server binary a launcher (see `serve_request`).
pub const LAUNCHER_ARG: &str = "__sandbox-launcher";
/// How long after a take the pool refills when half or fewer are left: the run that took
/// one starts its threads first.
const AFTER_TAKE: Duration = Duration::from_millis(20);
/// How long without a take before the pool refills when more than half are left.
const QUIET: Duration = Duration::from_millis(150);
/// How long the pool waits after it failed to make a launcher before it tries again.
const RETRY_DELAY: Duration = Duration::from_secs(5);

/// What making a launcher needs, shared with the pool's thread.
pub(super) struct Factory {
    pub cgroups: CgroupV1,
    pub seccomp: Option<Arc<seccomp::Filters>>,
}

/// A process that has joined its groups and waits for one run.
pub(super) struct Launcher {
    child: tokio::process::Child,
    request: OwnedFd,
    status: OwnedFd,
    cgroup: RunCgroup,
    /// The seccomp filters' descriptor numbers in the launcher.
    seccomp: Vec<i32>,
}

/// What a launcher execs, as decided by the sandbox for one run.
pub(super) struct Request<'a> {
    pub program: &'a std::path::Path,
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub user: Option<(u32, u32)>,
    pub rlimits: &'a [(libc::__rlimit_resource_t, u64)],
    pub limits: GroupLimits,
    pub run_id: &'a str,
}

/// Why a launcher was not used; the caller starts the sandbox without one.
#[derive(Debug)]
pub(super) enum Refused {
    /// The launcher was unusable before its request was sent (it ended, or its group could
    /// not take the run's limits or name).
    Unusable(io::Error),
    /// The request was sent and the launcher could not exec: the launch failed.
    Exec(io::Error),
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl Factory {
    fn make(&self) -> io::Result<Launcher> {
        let name = format!("launcher-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let cgroup = self.cgroups.create_run(&name, GroupLimits::default())?;
        let seccomp_fds: Vec<OwnedFd> = match &self.seccomp {
            Some(f) => f.memfds()?,
            None => Vec::new(),
        };
        let (request_r, request_w) = pipe()?;
        let (status_r, status_w) = pipe()?;
        let seccomp: Vec<i32> = seccomp_fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut keep = seccomp.clone();
        keep.extend([request_r.as_raw_fd(), status_w.as_raw_fd()]);
        let mut cmd = tokio::process::Command::new("/proc/self/exe");
        cmd.arg(LAUNCHER_ARG)
            .arg(request_r.as_raw_fd().to_string())
            .arg(status_w.as_raw_fd().to_string())
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let setup = ChildSetup {
            cgroup_procs: cgroup.procs_files(),
            rlimits: Vec::new(),
            seccomp_fds: keep,
            user: None,
            open_files_limit: current_open_files_limit(),
        };
        // SAFETY: as in `Sandbox::spawn_as`: only async-signal-safe calls on prepared data.
        unsafe {
            cmd.pre_exec(move || setup.apply());
        }
        let child = cmd.spawn()?;
        drop((request_r, status_w, seccomp_fds));
        Ok(Launcher {
            child,
            request: request_w,
            status: status_r,
            cgroup,
            seccomp,
        })
    }
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just opened and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Launcher {
    /// The seccomp filters' descriptor numbers, for bwrap's `--add-seccomp-fd`.
    pub fn seccomp_fds(&self) -> &[i32] {
        &self.seccomp
    }

    /// Hand the launcher its run: it becomes bwrap with `request`'s argv.
    pub fn launch(mut self, request: &Request<'_>) -> Result<Process, Refused> {
        match self.child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => {
                return Err(Refused::Unusable(io::Error::other(format!(
                    "the launcher ended before its run ({status})"
                ))));
            }
            Err(e) => return Err(Refused::Unusable(e)),
        }
        self.cgroup
            .set_limits(request.limits)
            .and_then(|()| self.cgroup.rename(request.run_id))
            .map_err(Refused::Unusable)?;
        self.cgroup.begin_run();
        let Launcher {
            child,
            request: pipe,
            status,
            cgroup,
            ..
        } = self;
        let bytes = encode(request);
        let mut pipe = std::fs::File::from(pipe);
        if let Err(e) = pipe.write_all(&bytes) {
            // Its pipe is gone: it ended after all. Nothing of the run reached it.
            return Err(Refused::Unusable(e));
        }
        drop(pipe);
        // Nothing until the end means bwrap was executed; an error number otherwise.
        let mut answer = Vec::new();
        std::fs::File::from(status)
            .read_to_end(&mut answer)
            .map_err(Refused::Exec)?;
        if let Ok(errno) = <[u8; 4]>::try_from(answer.as_slice()) {
            return Err(Refused::Exec(io::Error::from_raw_os_error(
                i32::from_ne_bytes(errno),
            )));
        }
        let pid = child.id();
        Ok(Process {
            child,
            pid,
            cgroup: Some(cgroup),
        })
    }
}

/// NUL-terminated fields: uid, gid (empty for none), then counted lists of rlimits (pairs),
/// descriptors to keep, argv and `KEY=VALUE` pairs, the program first.
fn encode(r: &Request<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    let mut field = |s: &str| {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    };
    match r.user {
        Some((uid, gid)) => {
            field(&uid.to_string());
            field(&gid.to_string());
        }
        None => {
            field("");
            field("");
        }
    }
    field(&r.rlimits.len().to_string());
    for (resource, value) in r.rlimits {
        field(&resource.to_string());
        field(&value.to_string());
    }
    field(&r.program.to_string_lossy());
    field(&r.argv.len().to_string());
    for a in r.argv {
        field(a);
    }
    field(&r.env.len().to_string());
    for (k, v) in r.env {
        field(&format!("{k}={v}"));
    }
    out
}

/// A request as the launcher reads it.
struct Decoded {
    user: Option<(u32, u32)>,
    rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    program: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
}

fn decode(bytes: &[u8]) -> Option<Decoded> {
    let mut fields = bytes.split(|&b| b == 0);
    let mut next = || fields.next();
    let text = |f: &[u8]| std::str::from_utf8(f).ok().map(str::to_owned);
    let number = |f: Option<&[u8]>| -> Option<u64> { text(f?)?.parse().ok() };
    let uid = next()?;
    let gid = next()?;
    let user = if uid.is_empty() {
        None
    } else {
        Some((text(uid)?.parse().ok()?, text(gid)?.parse().ok()?))
    };
    let n = number(next())?;
    let mut rlimits = Vec::new();
    for _ in 0..n {
        let resource = number(next())?;
        let value = number(next())?;
        rlimits.push((libc::__rlimit_resource_t::try_from(resource).ok()?, value));
    }
    let program = CString::new(next()?).ok()?;
    let n = number(next())?;
    let mut argv = Vec::new();
    for _ in 0..n {
        argv.push(CString::new(next()?).ok()?);
    }
    let n = number(next())?;
    let mut env = Vec::new();
    for _ in 0..n {
        env.push(CString::new(next()?).ok()?);
    }
    Some(Decoded {
        user,
        rlimits,
        program,
        argv,
        env,
    })
}

/// The launcher's side, in the re-executed server binary: `args` are the request and
/// status descriptors. Reads one request and execs it; never returns.
pub fn serve_request(args: &[OsString]) -> ! {
    let fd = |i: usize| -> Option<i32> { args.get(i)?.to_str()?.parse().ok() };
    let (Some(request_fd), Some(status_fd)) = (fd(0), fd(1)) else {
        std::process::exit(2);
    };
    // SAFETY: the server handed us these two descriptors and nothing else owns them.
    let (mut request, mut status) = unsafe {
        (
            std::fs::File::from_raw_fd(request_fd),
            std::fs::File::from_raw_fd(status_fd),
        )
    };
    let mut bytes = Vec::new();
    if request.read_to_end(&mut bytes).is_err() || bytes.is_empty() {
        // The server discarded us, or is gone.
        std::process::exit(0);
    }
    drop(request);
    let err = match decode(&bytes) {
        Some(req) => exec(&req),
        None => io::Error::from_raw_os_error(libc::EINVAL),
    };
    let errno = err.raw_os_error().unwrap_or(libc::EIO);
    let _ = status.write_all(&errno.to_ne_bytes());
    std::process::exit(127);
}

/// Apply the request's limits and uid, keep only the filters open, exec. Returns the error
/// that stopped it.
fn exec(req: &Decoded) -> io::Error {
    // SAFETY: plain system calls on valid arguments; this process has one thread.
    unsafe {
        for &(resource, value) in &req.rlimits {
            let lim = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            if libc::setrlimit(resource, &lim) != 0 {
                return io::Error::last_os_error();
            }
        }
        if let Some((uid, gid)) = req.user
            && (libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0)
        {
            return io::Error::last_os_error();
        }
        // This binary's runtime ignores SIGPIPE, and an ignored signal stays ignored across
        // exec: user code gets the default, as from a sandbox started by the server.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // A change of uid clears the parent-death signal: ask again.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            return io::Error::last_os_error();
        }
        close_on_exec_above_stdio(current_open_files_limit());
        for fd in kept_descriptors(&req.argv) {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return io::Error::last_os_error();
            }
        }
        let mut argv: Vec<*const libc::c_char> = req.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = req.env.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        libc::execve(req.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
    }
    io::Error::last_os_error()
}

/// The descriptors bwrap is told to read filters from (`--add-seccomp-fd N`): the only
/// ones that stay open across the exec.
fn kept_descriptors(argv: &[CString]) -> Vec<i32> {
    argv.windows(2)
        .filter(|w| w[0].as_bytes() == b"--add-seccomp-fd")
        .filter_map(|w| std::str::from_utf8(w[1].as_bytes()).ok()?.parse().ok())
        .collect()
}

/// Launchers kept ready, refilled by a thread of the pool's own (a launcher's bwrap dies
/// with the thread that forked it, so that thread lives as long as the pool).
pub(super) struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    target: usize,
    stop: AtomicBool,
}

struct State {
    ready: VecDeque<Launcher>,
    last_take: Instant,
}

impl Pool {
    /// Keep `target` launchers ready; `None` outside a Tokio runtime (the launchers' pipes
    /// and exits are watched by it).
    pub fn start(factory: Factory, target: usize) -> Option<Pool> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ready: VecDeque::with_capacity(target),
                last_take: Instant::now(),
            }),
            wake: Condvar::new(),
            target,
            stop: AtomicBool::new(false),
        });
        let theirs = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("sandbox-launchers".into())
            .spawn(move || {
                let _runtime = runtime.enter();
                refill(&theirs, &factory);
            })
            .ok()?;
        Some(Pool { shared })
    }

    /// The oldest ready launcher (the longest in its group), if there is one; the pool
    /// makes others in the background.
    pub fn take(&self) -> Option<Launcher> {
        let mut state = self.shared.state.lock().ok()?;
        state.last_take = Instant::now();
        let taken = state.ready.pop_front();
        drop(state);
        self.shared.wake.notify_one();
        taken
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }
}

/// How long to wait before making launchers, or `None` to make them now: at once on an
/// empty pool, soon after a take on a pool at half or less, otherwise once runs have
/// stopped starting for a moment (each batch of migrations slows the thread starts of runs
/// starting at that time, so they are made together and away from starts).
fn refill_wait(state: &State, target: usize) -> Option<Option<Duration>> {
    let have = state.ready.len();
    if have >= target {
        return Some(None);
    }
    let since = state.last_take.elapsed();
    let due = if have == 0 {
        Duration::ZERO
    } else if have <= target / 2 {
        AFTER_TAKE
    } else {
        QUIET
    };
    (since < due).then(|| Some(due - since))
}

fn refill(shared: &Shared, factory: &Factory) {
    loop {
        {
            let Ok(mut state) = shared.state.lock() else {
                return;
            };
            loop {
                if shared.stop.load(Ordering::SeqCst) {
                    // The pool is gone: what is left is killed with its groups.
                    state.ready.clear();
                    return;
                }
                state = match refill_wait(&state, shared.target) {
                    None => break,
                    Some(None) => match shared.wake.wait(state) {
                        Ok(s) => s,
                        Err(_) => return,
                    },
                    Some(Some(wait)) => match shared.wake.wait_timeout(state, wait) {
                        Ok((s, _)) => s,
                        Err(_) => return,
                    },
                };
            }
        }
        // Every one missing, back to back: migrations close together share one slow period.
        loop {
            let missing = shared
                .state
                .lock()
                .map_or(0, |s| shared.target.saturating_sub(s.ready.len()));
            if missing == 0 || shared.stop.load(Ordering::SeqCst) {
                break;
            }
            match factory.make() {
                Ok(launcher) => {
                    if let Ok(mut state) = shared.state.lock() {
                        state.ready.push_back(launcher);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "a sandbox launcher could not be started; runs start without one meanwhile");
                    std::thread::sleep(RETRY_DELAY);
                    break;
                }
            }
        }
    }
}

/// `program` as found in `PATH` of `env` (the search `Command` makes for the child), or in
/// the usual system directories without one.
pub(super) fn resolve(program: &str, env: &[(String, String)]) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("/usr/local/bin:/usr/bin:/bin", |(_, v)| v.as_str());
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
}
