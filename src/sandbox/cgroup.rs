//! Per-run control groups: memory and process limits, an equal CPU weight (and an optional CPU
//! cap), peak memory, CPU time, and killing a whole process tree.
//!
//! This machine (and many hosts) mount cgroup v1 controllers, with a v2 hierarchy that has
//! no controllers; the v1 files are what works. Each run gets its own group below the
//! server's own group in each controller (`…/<our path>/code-interpreter/<run>`), so limits
//! nest inside whatever the host set for the server. Without a writable hierarchy the
//! sandbox falls back to rlimits and says so in `doctor` and `/health`.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const GROUP_NAME: &str = "code-interpreter";
/// Every run's CPU weight: the same for all, so a run that spins gets no more of the CPU than
/// one that just started (the kernel's default weight, written explicitly).
const RUN_CPU_SHARES: u64 = 1024;
/// How long start-up waits for the processes of a dead server's groups to exit.
const STALE_EXIT_WAIT: Duration = Duration::from_secs(5);
/// The CFS period a CPU cap is expressed in.
const CFS_PERIOD_US: u64 = 100_000;

/// The v1 controllers we use and where the server's own group sits in each.
#[derive(Debug, Clone)]
pub struct CgroupV1 {
    memory: PathBuf,
    pids: PathBuf,
    cpuacct: Option<PathBuf>,
    cpu: Option<PathBuf>,
    /// `cpu.cfs_quota_us` for every run (`MAX_CPUS`), when set.
    cpu_quota_us: Option<u64>,
}

/// Which limits a run has.
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupLimits {
    pub memory_bytes: Option<u64>,
    pub processes: Option<u64>,
}

fn own_path(controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_owned())
    })
}

/// `…/<our group>/code-interpreter/<server pid>`: one subtree per server process, so
/// several servers on one host (or a test suite) never touch each other's runs.
fn parent_for(controller: &str, mount: &str) -> Option<PathBuf> {
    let path = own_path(controller)?;
    let base = Path::new(CGROUP_ROOT)
        .join(mount)
        .join(path.trim_start_matches('/'))
        .join(GROUP_NAME);
    let dir = base.join(std::process::id().to_string());
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

impl CgroupV1 {
    /// Set up our parent groups, or `None` when the v1 memory and pids controllers are not
    /// writable here. Groups left by an earlier crash are emptied and removed.
    /// `max_cpus` caps every run at that many CPUs' worth of time.
    pub fn detect(max_cpus: Option<f64>) -> Option<Self> {
        let memory = parent_for("memory", "memory")?;
        let pids = parent_for("pids", "pids")?;
        let cpuacct = parent_for("cpuacct", "cpuacct");
        let cpu = parent_for("cpu", "cpu");
        let v1 = CgroupV1 {
            memory,
            pids,
            cpuacct,
            cpu,
            cpu_quota_us: max_cpus.map(|n| ((n * CFS_PERIOD_US as f64) as u64).max(1_000)),
        };
        v1.remove_stale();
        Some(v1)
    }

    fn parents(&self) -> impl Iterator<Item = &PathBuf> {
        [
            Some(&self.memory),
            Some(&self.pids),
            self.cpuacct.as_ref(),
            self.cpu.as_ref(),
        ]
        .into_iter()
        .flatten()
    }

    /// Empty and remove what servers that no longer run left behind (and our own leftovers
    /// from a reused pid).
    fn remove_stale(&self) {
        let me = std::process::id().to_string();
        for parent in self.parents() {
            let Some(base) = parent.parent() else {
                continue;
            };
            let Ok(servers) = std::fs::read_dir(base) else {
                continue;
            };
            for server in servers.flatten().filter(|e| e.path().is_dir()) {
                let name = server.file_name().to_string_lossy().into_owned();
                let alive = name != me && Path::new("/proc").join(&name).exists();
                if alive {
                    continue;
                }
                let Ok(runs) = std::fs::read_dir(server.path()) else {
                    continue;
                };
                for run in runs.flatten().filter(|e| e.path().is_dir()) {
                    // A server killed a moment ago: its runs may still be exiting.
                    remove_group(&run.path(), STALE_EXIT_WAIT);
                }
                if name != me {
                    let _ = std::fs::remove_dir(server.path());
                }
            }
        }
    }

    /// A fresh group for one run, with its limits written.
    pub fn create_run(&self, name: &str, limits: GroupLimits) -> io::Result<RunCgroup> {
        let memory = self.memory.join(name);
        let pids = self.pids.join(name);
        let cpuacct = self.cpuacct.as_ref().map(|p| p.join(name));
        let cpu = self.cpu.as_ref().map(|p| p.join(name));
        let group = RunCgroup {
            memory,
            pids,
            cpuacct,
            cpu,
            cpu_before: Duration::ZERO,
        };
        for dir in group.dirs() {
            std::fs::create_dir(dir)?;
        }
        group.set_limits(limits)?;
        if let Some(cpu) = &group.cpu {
            std::fs::write(cpu.join("cpu.shares"), RUN_CPU_SHARES.to_string())?;
            if let Some(quota) = self.cpu_quota_us {
                std::fs::write(cpu.join("cpu.cfs_period_us"), CFS_PERIOD_US.to_string())?;
                std::fs::write(cpu.join("cpu.cfs_quota_us"), quota.to_string())?;
            }
        }
        Ok(group)
    }
}

/// One run's groups. Dropping it kills whatever is left inside and removes the groups.
#[derive(Debug)]
pub struct RunCgroup {
    memory: PathBuf,
    pids: PathBuf,
    cpuacct: Option<PathBuf>,
    cpu: Option<PathBuf>,
    /// CPU time spent in the group before its run began (a launcher's, see `launcher`).
    cpu_before: Duration,
}

/// A small control file's text in one read (a kernel cell reads several of these before
/// and after it runs; `read_to_string` would also stat the file and read twice).
fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut buf = [0u8; 512];
    let n = file.read(&mut buf).ok()?;
    if n < buf.len() {
        return String::from_utf8(buf[..n].to_vec()).ok();
    }
    let mut text = String::from_utf8(buf.to_vec()).ok()?;
    file.read_to_string(&mut text).ok()?;
    Some(text)
}

fn read_u64(path: &Path) -> Option<u64> {
    read_small(path)?.trim().parse().ok()
}

/// The value after `key` in a flat keyed file such as `memory.oom_control`.
fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    read_small(path)?.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Kill what is in `dir` and remove it, waiting up to `wait` for the last members to exit
/// (rmdir fails with EBUSY until they have).
fn remove_group(dir: &Path, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        kill_members(dir);
        match std::fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            _ => return,
        }
    }
}

fn kill_members(dir: &Path) {
    // A process may fork while we read the list: repeat until the group is empty.
    for _ in 0..50 {
        let Ok(list) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
            return;
        };
        let pids: Vec<i32> = list.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

impl RunCgroup {
    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        [
            Some(&self.memory),
            Some(&self.pids),
            self.cpuacct.as_ref(),
            self.cpu.as_ref(),
        ]
        .into_iter()
        .flatten()
    }

    /// Write the memory and process limits (a launcher's group gets its run's at hand-over).
    pub fn set_limits(&self, limits: GroupLimits) -> io::Result<()> {
        if let Some(bytes) = limits.memory_bytes {
            std::fs::write(self.memory.join("memory.limit_in_bytes"), bytes.to_string())?;
            // Without swap this changes nothing; with swap it stops the limit leaking into it.
            let _ = std::fs::write(
                self.memory.join("memory.memsw.limit_in_bytes"),
                bytes.to_string(),
            );
        }
        if let Some(n) = limits.processes {
            std::fs::write(self.pids.join("pids.max"), n.to_string())?;
        }
        Ok(())
    }

    /// Give every directory of the group the name `name` (cgroup v1 renames in place; the
    /// members stay), so a launcher's group is known by its run's name.
    pub fn rename(&mut self, name: &str) -> io::Result<()> {
        let rename = |dir: &mut PathBuf| -> io::Result<()> {
            let to = dir.with_file_name(name);
            std::fs::rename(&*dir, &to)?;
            *dir = to;
            Ok(())
        };
        rename(&mut self.memory)?;
        rename(&mut self.pids)?;
        if let Some(dir) = self.cpuacct.as_mut() {
            rename(dir)?;
        }
        if let Some(dir) = self.cpu.as_mut() {
            rename(dir)?;
        }
        Ok(())
    }

    /// From now on, measure the run alone: peak memory and CPU time start afresh.
    pub fn begin_run(&mut self) {
        self.reset_peak_memory();
        self.cpu_before = Duration::ZERO;
        self.cpu_before = self.cpu_time().unwrap_or_default();
    }

    /// The `cgroup.procs` files a child writes `0` into (itself) before it execs, so
    /// everything it starts is accounted from the first instruction.
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs()
            .filter_map(|d| {
                CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()).ok()
            })
            .collect()
    }

    /// The `cgroup.procs` files of the run's groups.
    pub fn procs_paths(&self) -> Vec<PathBuf> {
        self.dirs().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The host pids of the run's processes.
    pub fn members(&self) -> Vec<u32> {
        std::fs::read_to_string(self.pids.join("cgroup.procs"))
            .map(|list| list.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    pub fn peak_memory(&self) -> Option<u64> {
        read_u64(&self.memory.join("memory.max_usage_in_bytes"))
    }

    pub fn reset_peak_memory(&self) {
        let _ = std::fs::write(self.memory.join("memory.max_usage_in_bytes"), "0");
    }

    pub fn cpu_time(&self) -> Option<Duration> {
        let dir = self.cpuacct.as_ref()?;
        read_u64(&dir.join("cpuacct.usage"))
            .map(|n| Duration::from_nanos(n).saturating_sub(self.cpu_before))
    }

    /// Whether the kernel killed something here for exceeding the memory limit.
    pub fn oom_killed(&self) -> bool {
        read_keyed(&self.memory.join("memory.oom_control"), "oom_kill").is_some_and(|n| n > 0)
    }

    /// Whether a fork was refused because the process limit was reached.
    pub fn hit_process_limit(&self) -> bool {
        self.process_limit_hits() > 0
    }

    /// Forks refused so far because the process limit was reached.
    pub fn process_limit_hits(&self) -> u64 {
        read_keyed(&self.pids.join("pids.events"), "max").unwrap_or(0)
    }

    pub fn kill_all(&self) {
        kill_members(&self.pids);
        kill_members(&self.memory);
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        self.kill_all();
        for dir in self.dirs() {
            // The last process may still be exiting; rmdir fails with EBUSY until it is gone.
            for _ in 0..100 {
                match std::fs::remove_dir(dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    _ => break,
                }
            }
        }
    }
}
