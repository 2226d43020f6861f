//! Python kernels forked from the preloaded template (`PYTHON_KERNEL_FORK=true`): each test
//! attacks one promise of the fork's sandbox from inside a forked kernel, or kills the
//! template, and asserts the promise held. Forking is the default, so the escape battery
//! (`sandbox_escape.rs`) and every other Python test run on forked kernels too.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{KEY_A, TestServer, exec};
use serde_json::{Value, json};

/// The marker only the template program has on its command line.
const TEMPLATE_MARK: &str = "The kernel template";

async fn start() -> Option<TestServer> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: kernels are forked only when the server runs as root");
        return None;
    }
    Some(
        TestServer::start(&[
            ("PYTHON_KERNEL_FORK", "true"),
            ("KERNEL_POOL_SIZE", "0"),
            ("MAX_MEMORY_MB", "512"),
            ("MAX_PROCESSES", "64"),
        ])
        .await,
    )
}

async fn python(server: &TestServer, sid: Option<&str>, code: &str) -> Value {
    let mut body = json!({"lang": "py", "code": code});
    if let Some(sid) = sid {
        body["session_id"] = json!(sid);
    }
    let (status, body) = exec(server, KEY_A, body).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn stdout(body: &Value) -> &str {
    body["stdout"].as_str().unwrap_or_default()
}

/// Host pids of the server's template processes: in its template's cgroup, the program
/// itself (not bwrap, whose command line holds the program too).
fn template_pids(server: &TestServer) -> Vec<u32> {
    groups(server, "template-")
        .iter()
        .flat_map(|g| members(g))
        .filter(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            let program = cmdline.split('\0').next().unwrap_or_default();
            program.ends_with("/python") && cmdline.contains(TEMPLATE_MARK)
        })
        .collect()
}

/// How many PID namespaces deep `pid` is (1 = the host's).
fn nspid_depth(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map_or(0, |ids| ids.split_whitespace().count())
}

/// The pids cgroups this server made for its kernels.
fn kernel_groups(server: &TestServer) -> Vec<PathBuf> {
    groups(server, "kernel-")
}

/// The pids cgroups of this server whose names start with `prefix`.
fn groups(server: &TestServer, prefix: &str) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = own
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctl, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctl.split(',').any(|c| c == "pids").then(|| path.to_owned())
        })
        .unwrap_or_default();
    let base = Path::new("/sys/fs/cgroup/pids")
        .join(path.trim_start_matches('/'))
        .join("code-interpreter")
        .join(server.pid().to_string());
    std::fs::read_dir(base)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn members(group: &Path) -> Vec<u32> {
    std::fs::read_to_string(group.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

#[tokio::test]
async fn a_forked_kernel_sees_only_its_own_session_and_processes() {
    let Some(server) = start().await else { return };
    // Session A leaves traces everywhere a sibling might look.
    let a = python(
        &server,
        None,
        "import os, numpy\n\
         open('/mnt/data/a-file.txt', 'w').write('A')\n\
         open('/tmp/a-tmp', 'w').write('A')\n\
         open('/dev/shm/a-shm', 'w').write('A')\n\
         print(numpy.random.rand())",
    )
    .await;
    let sid_a = a["session_id"].as_str().unwrap().to_owned();
    let health = server.health().await;
    assert_eq!(health["kernels"]["template"], "ready", "{health}");

    let code = r#"
import ctypes, errno, os, numpy
libc = ctypes.CDLL(None, use_errno=True)
def err(rc):
    return errno.errorcode.get(ctypes.get_errno(), rc) if rc == -1 else 'ALLOWED'
print('files', sorted(os.listdir('/mnt/data')))
print('tmp', os.path.exists('/tmp/a-tmp'), 'shm', os.path.exists('/dev/shm/a-shm'))
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
print('pids', pids)
threads = {int(t) for p in pids for t in os.listdir(f'/proc/{p}/task')}
alive = [p for p in range(1, 32768) if p not in threads and err(libc.kill(p, 0)) != 'ESRCH']
print('signalable', alive)
print('mountinfo', open('/proc/self/mountinfo').read().replace('\n', ' | '))
status = open('/proc/self/status').read()
print([l for l in status.splitlines() if l.startswith(('Cap', 'NoNewPrivs', 'Seccomp:'))])
print('unshare-user', err(libc.unshare(0x10000000)), 'unshare-ns', err(libc.unshare(0x00020000)))
print('mount', err(libc.mount(b'none', b'/mnt', b'tmpfs', 0, None)))
print('dev', err(libc.mkdir(b'/dev/x', 0o755)))
print('cgroup-roots', sorted({l.split(':', 2)[2] for l in open('/proc/self/cgroup').read().splitlines()}))
print('rand', numpy.random.rand())
"#;
    let b = python(&server, None, code).await;
    let out = stdout(&b);
    let sid_b = b["session_id"].as_str().unwrap();
    assert_ne!(sid_a, sid_b);
    assert!(out.contains("files []"), "{out}");
    assert!(out.contains("tmp False shm False"), "{out}");
    // Its own PID namespace: the reaper (1), the kernel (2) and what the kernel started.
    let pids_line = out.lines().find(|l| l.starts_with("pids")).unwrap();
    assert!(pids_line.starts_with("pids [1, 2"), "{out}");
    assert!(out.contains("signalable []"), "{out}");
    let mountinfo = out.lines().find(|l| l.starts_with("mountinfo")).unwrap();
    assert!(
        !mountinfo.contains(&sid_a),
        "another session in {mountinfo}"
    );
    assert!(!mountinfo.contains("/pool/"), "{mountinfo}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            out.contains(&format!("{cap}:\\t0000000000000000")),
            "{cap} in {out}"
        );
    }
    assert!(out.contains("NoNewPrivs:\\t1"), "{out}");
    assert!(out.contains("Seccomp:\\t2"), "{out}");
    assert!(out.contains("unshare-user EPERM unshare-ns EPERM"), "{out}");
    assert!(out.contains("mount EPERM"), "{out}");
    assert!(out.contains("dev EROFS"), "{out}");
    // Its cgroups are its own, seen from inside as the root.
    assert!(out.contains("cgroup-roots ['/']"), "{out}");
    // The fork reseeded numpy's global generator.
    let rand = |body: &Value| {
        stdout(body)
            .lines()
            .last()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_ne!(rand(&a), rand(&b), "two forks drew the same random number");

    // From the host: each kernel's cgroup holds only its own processes, all inside a PID
    // namespace of their own below the template's, and never the template.
    let templates = template_pids(&server);
    assert_eq!(templates.len(), 1, "one template: {templates:?}");
    let groups = kernel_groups(&server);
    assert_eq!(groups.len(), 2, "{groups:?}");
    for group in groups {
        let pids = members(&group);
        assert!(!pids.is_empty(), "{}", group.display());
        for pid in pids {
            assert!(!templates.contains(&pid));
            assert_eq!(nspid_depth(pid), 3, "pid {pid} of {}", group.display());
        }
    }
    // Session A is untouched and still has its state.
    let again = python(
        &server,
        Some(&sid_a),
        "print(sorted(os.listdir('/mnt/data')))",
    )
    .await;
    assert_eq!(stdout(&again), "['a-file.txt']\n", "{again}");
}

#[tokio::test]
async fn a_killed_template_is_replaced_and_leaves_no_half_started_kernel() {
    let Some(server) = start().await else { return };
    let first = python(&server, None, "x = 41\nprint('up')").await;
    assert_eq!(stdout(&first), "up\n", "{first}");
    let sid = first["session_id"].as_str().unwrap().to_owned();
    let templates = template_pids(&server);
    assert_eq!(templates.len(), 1, "{templates:?}");

    // Kill it while new sessions are being forked.
    let racing: Vec<_> = (0..3)
        .map(|_| {
            common::exec_in_background(
                &server,
                KEY_A,
                json!({"lang": "py", "code": "print('raced')"}),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(templates[0] as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    for race in racing {
        // Each ends with an answer: forked after a restart, started cold, or told it failed.
        let body = race.await.unwrap();
        assert!(body["run"]["status"].is_string(), "{body}");
    }
    // The pooled forks died with the template: new sessions are never handed one of them.
    for _ in 0..3 {
        let body = python(&server, None, "print('new')").await;
        assert_eq!(stdout(&body), "new\n", "{body}");
    }

    // The old session lost its kernel (it lived in the template's PID namespace) and says so.
    let after = python(&server, Some(&sid), "print(x)").await;
    assert!(
        after["stderr"]
            .as_str()
            .unwrap_or_default()
            .contains("state of this session was lost"),
        "{after}"
    );
    let fresh = python(&server, None, "print('fresh')").await;
    assert_eq!(stdout(&fresh), "fresh\n", "{fresh}");
    let health = server.health().await;
    assert_eq!(health["kernels"]["template"], "ready", "{health}");
    assert!(
        health["kernels"]["template_restarts"].as_u64().unwrap() >= 1,
        "{health}"
    );
    assert_eq!(template_pids(&server).len(), 1);

    // No kernel is left half-started: every kernel group with processes is a live kernel.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live = server.health().await["kernels"]["live"].as_u64().unwrap() as usize;
        let busy = kernel_groups(&server)
            .iter()
            .filter(|g| !members(g).is_empty())
            .count();
        if busy <= live {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{busy} kernel groups busy, {live} live kernels"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_forked_kernel_has_no_secret_no_network_and_its_own_limits() {
    let Some(server) = start().await else { return };
    let port = server.base.rsplit(':').next().unwrap();
    let code = format!(
        "import os, socket\n\
         print(sorted(os.environ))\n\
         print(open('/proc/1/environ').read().replace('\\0', ' '))\n\
         try:\n\
         \x20   socket.create_connection(('127.0.0.1', {port}), timeout=2)\n\
         \x20   print('CONNECTED')\n\
         except OSError as e:\n\
         \x20   print('refused', e.errno)\n"
    );
    let body = python(&server, None, &code).await;
    let out = stdout(&body);
    assert!(!out.contains("CODE_INTERPRETER"), "{out}");
    assert!(
        !out.contains(common::KEY_A) && !out.contains("DATA_DIR"),
        "{out}"
    );
    assert!(
        out.contains("refused") && !out.contains("CONNECTED"),
        "{out}"
    );
    let sid = body["session_id"].as_str().unwrap().to_owned();

    // Its cgroup's process limit (MAX_PROCESSES = 64) holds, and the kernel survives it.
    let procs = python(
        &server,
        Some(&sid),
        "import os\nn = 0\ntry:\n    while n < 500:\n        if os.fork() == 0:\n            import time; time.sleep(30); os._exit(0)\n        n += 1\nexcept OSError as e:\n    print('refused after', n, e.errno)",
    )
    .await;
    let out = stdout(&procs);
    let n: u32 = out
        .strip_prefix("refused after ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{procs}"));
    assert!(n < 64, "{procs}");

    // Its memory limit (512 MiB) kills it, not the template or another kernel.
    let other = python(&server, None, "y = 1\nprint('other')").await;
    let bomb = python(
        &server,
        Some(&sid),
        "import time\nprint('start', flush=True)\ntime.sleep(0.5)\nx = bytearray(2 * 1024**3)\nx[::4096] = b'x' * len(x[::4096])\nprint('survived')",
    )
    .await;
    common::assert_stopped(&bomb, "killed", "memory limit of 512 MiB");
    let other_sid = other["session_id"].as_str().unwrap();
    let still = python(&server, Some(other_sid), "print(y)").await;
    assert_eq!(stdout(&still), "1\n", "{still}");
    assert_eq!(server.health().await["kernels"]["template_restarts"], 0);
}

/// The host uid `pid` runs as (real uid).
fn host_uid(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::test]
async fn each_forked_kernel_is_its_sessions_own_host_uid() {
    let Some(server) = start().await else { return };
    // One session takes every inotify instance its uid may have (128 by default).
    let hog = python(
        &server,
        None,
        "import ctypes\nlibc = ctypes.CDLL(None)\nfds = []\nwhile len(fds) < 100000:\n    fd = libc.inotify_init()\n    if fd < 0:\n        break\n    fds.append(fd)\nprint('held', len(fds))",
    )
    .await;
    assert!(stdout(&hog).starts_with("held "), "{hog}");
    // Another forked session still gets its own.
    let other = python(
        &server,
        None,
        "import ctypes\nprint('fd', ctypes.CDLL(None).inotify_init() >= 0)",
    )
    .await;
    assert_eq!(stdout(&other), "fd True\n", "{other}");

    // From the host: every process of a kernel runs as the uid that owns its session's
    // workspace, and the two sessions' uids differ (and are not the template's, root).
    let mut uids = Vec::new();
    for body in [&hog, &other] {
        let sid = body["session_id"].as_str().unwrap();
        let owner = owner(&server.data_dir.join("sessions").join(sid));
        assert_ne!(owner, 0, "{sid}");
        uids.push(owner);
    }
    assert_ne!(uids[0], uids[1], "two sessions share a host uid");
    let mut seen = Vec::new();
    for group in kernel_groups(&server) {
        for pid in members(&group) {
            let uid = host_uid(pid).unwrap_or_else(|| panic!("pid {pid}"));
            assert!(uids.contains(&uid), "pid {pid} runs as {uid}, not {uids:?}");
            seen.push(uid);
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 2, "{seen:?}");
}

fn owner(dir: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .uid()
}
