//! The sandbox's surface: system calls a filter cannot see through, kernel limits counted
//! per uid, and what `/proc` tells about the host.

mod common;

use common::{KEY_A, KEY_B, TestServer, exec};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn run(
    server: &TestServer,
    key: &str,
    lang: &str,
    session: Option<&str>,
    code: &str,
) -> Value {
    let mut body = json!({"lang": lang, "code": code});
    if let Some(sid) = session {
        body["session_id"] = json!(sid);
    }
    let (status, body) = exec(server, key, body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn io_uring_odd_personalities_and_modify_ldt_are_refused() {
    let server = TestServer::start(&[]).await;
    let code = r#"
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(*args):
    rc = libc.syscall(*args)
    return errno.errorcode.get(ctypes.get_errno(), '?') if rc == -1 else 'ok'
params = ctypes.create_string_buffer(120)
print('io_uring_setup', call(425, 8, params))
print('io_uring_enter', call(426, 0, 1, 0, 0, None, 0))
print('io_uring_register', call(427, 0, 0, None, 0))
print('personality_query', call(135, 0xffffffff))
print('personality_linux', call(135, 0))
print('personality_no_aslr', call(135, 0x0040000))
print('personality_linux32', call(135, 0x0008))
print('modify_ldt', call(154, 0, None, 0))
"#;
    let body = run(&server, KEY_A, "py", None, code).await;
    let out = body["stdout"].as_str().unwrap();
    for expected in [
        "io_uring_setup ENOSYS",
        "io_uring_enter ENOSYS",
        "io_uring_register ENOSYS",
        "personality_query ok",
        "personality_linux ok",
        "personality_no_aslr EPERM",
        "personality_linux32 EPERM",
        "modify_ldt EPERM",
    ] {
        assert!(out.contains(expected), "{expected:?} not in {body}");
    }
    // Node (libuv tries io_uring) and threads still work.
    let body = run(&server, KEY_A, "node", None, "require('fs').writeFileSync('/tmp/x', 'y'); console.log(require('fs').readFileSync('/tmp/x', 'utf8'))").await;
    assert_eq!(body["stdout"], "y\n", "{body}");
}

#[tokio::test]
async fn each_session_has_its_own_uid_so_per_uid_limits_are_not_shared() {
    let server = TestServer::start(&[]).await;
    // Session A's kernel takes every inotify instance its uid may have (128 by default) and
    // keeps them.
    let hog = r#"
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
held = []
while True:
    fd = libc.inotify_init1(0)
    if fd < 0:
        break
    held.append(fd)
print('held', len(held), 'errno', ctypes.get_errno())
"#;
    let a = run(&server, KEY_A, "py", None, hog).await;
    let out = a["stdout"].as_str().unwrap();
    assert!(out.starts_with("held "), "{a}");
    let held: usize = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(held > 0 && held < 1000, "{a}");

    // Another tenant's session, Python and bash alike, still gets its own.
    let probe = "import ctypes; libc = ctypes.CDLL(None, use_errno=True); print('fd' if libc.inotify_init1(0) >= 0 else 'EMFILE')";
    let b = run(&server, KEY_B, "py", None, probe).await;
    assert_eq!(b["stdout"], "fd\n", "{b}");
    // The same tenant's second session too.
    let c = run(&server, KEY_A, "py", None, probe).await;
    assert_eq!(c["stdout"], "fd\n", "{c}");

    // Inside, every sandbox is uid 65534; on the host each session's files have their own
    // owner, none of them root.
    let mut owners = Vec::new();
    for (key, body) in [(KEY_A, &a), (KEY_B, &b)] {
        let sid = body["session_id"].as_str().unwrap();
        let inside = run(&server, key, "bash", Some(sid), "id -u; touch mine.txt").await;
        assert_eq!(inside["stdout"], "65534\n", "{inside}");
        let meta =
            std::fs::metadata(server.data_dir.join("sessions").join(sid).join("mine.txt")).unwrap();
        owners.push(std::os::unix::fs::MetadataExt::uid(&meta));
    }
    assert_ne!(owners[0], owners[1]);
    assert!(owners.iter().all(|&u| u >= 1_879_048_192), "{owners:?}");
}

#[tokio::test]
async fn mountinfo_does_not_give_away_the_servers_pid() {
    let server = TestServer::start(&[]).await;
    let body = run(
        &server,
        KEY_A,
        "py",
        None,
        "print(open('/proc/self/mountinfo').read())",
    )
    .await;
    let mounts = body["stdout"].as_str().unwrap();
    assert!(mounts.contains("/run/kernel"), "{mounts}");
    let pid = format!("/{}/", server.pid());
    assert!(
        !mounts.contains(&pid),
        "the server's pid {pid} is in:\n{mounts}"
    );
}

#[tokio::test]
async fn a_claimed_pooled_kernel_and_later_runs_can_write_the_sessions_files() {
    let server = TestServer::start(&[("KERNEL_POOL_SIZE", "1")]).await;
    // Wait for the pooled kernel, so the first Python call claims it.
    for _ in 0..600 {
        if server.health().await["kernels"]["pooled"].as_u64() == Some(1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, up) = server
        .upload("/upload", KEY_A, &[("notes.txt", b"uploaded\n")], &[])
        .await;
    let sid = up["session_id"].as_str().unwrap().to_owned();
    let py = run(
        &server,
        KEY_A,
        "py",
        Some(&sid),
        "open('notes.txt', 'a').write('from the kernel\\n'); open('made.txt', 'w').write('k')",
    )
    .await;
    assert_eq!(py["run"]["status"], "success", "{py}");
    let sh = run(
        &server,
        KEY_A,
        "bash",
        Some(&sid),
        "echo from bash >> notes.txt; echo b >> made.txt; cat notes.txt",
    )
    .await;
    assert_eq!(
        sh["stdout"], "uploaded\nfrom the kernel\nfrom bash\n",
        "{sh}"
    );
}

#[tokio::test]
async fn a_fork_refused_at_the_process_limit_is_reported_even_after_a_clean_exit() {
    let server = TestServer::start(&[("MAX_PROCESSES", "24")]).await;
    // Forks until one is refused, then exits 0 at once: before any periodic check.
    let c = r#"
#define _GNU_SOURCE
#include <unistd.h>
int main(void) {
    for (int i = 0; i < 1000; i++) {
        pid_t pid = fork();
        if (pid < 0) return 0;
        if (pid == 0) { pause(); _exit(0); }
    }
    return 0;
}
"#;
    let body = run(&server, KEY_A, "c", None, c).await;
    common::assert_stopped(&body, "killed", "processes");

    // The same in a kernel cell, which catches the failure and ends normally; the
    // session's next cell is a success again.
    let py = r#"
import os, signal, time
children = []
try:
    while True:
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
except OSError as err:
    print("refused after", len(children))
for pid in children:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
"#;
    let body = run(&server, KEY_A, "py", None, py).await;
    assert!(
        body["stdout"].as_str().unwrap().contains("refused after"),
        "{body}"
    );
    common::assert_stopped(&body, "killed", "processes");
    let sid = body["session_id"].as_str().unwrap().to_owned();
    let next = run(&server, KEY_A, "py", Some(&sid), "print('still here')").await;
    assert_eq!(next["run"]["status"], "success", "{next}");
    assert_eq!(next["stdout"], "still here\n", "{next}");
}

/// The server's idle sandbox launchers (children started as `__sandbox-launcher`, by any of
/// its threads).
fn idle_launchers(server: &TestServer) -> Vec<u32> {
    let mut children = String::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", server.pid()))
        .unwrap()
        .flatten()
    {
        children += &std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.push(' ');
    }
    children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(b"__sandbox-launcher"))
        })
        .collect()
}

#[tokio::test]
async fn idle_launchers_hold_nothing_of_a_session_and_runs_keep_their_defaults() {
    let server = TestServer::start(&[("SANDBOX_LAUNCHERS", "2")]).await;
    // A session exists before the launchers are looked at.
    let first = run(&server, KEY_A, "bash", None, "echo hi > a.txt; echo ok").await;
    assert_eq!(first["stdout"], "ok\n", "{first}");
    let sid = first["session_id"].as_str().unwrap().to_owned();
    // The start-up probes take launchers too: wait until the pool is full and stays so.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut launchers = idle_launchers(&server);
    let mut steady = 0;
    while steady < 5 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = idle_launchers(&server);
        steady = if now.len() == 2 && now == launchers {
            steady + 1
        } else {
            0
        };
        launchers = now;
    }
    if launchers.is_empty() {
        eprintln!("no launchers here (needs root and cgroups): nothing to check");
        return;
    }
    let data_dir = server.data_dir.to_string_lossy().into_owned();
    for pid in &launchers {
        // No environment, and of descriptors only stdio, its two pipes and the filters.
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(environ.is_empty(), "launcher {pid} has an environment");
        let mut open = Vec::new();
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
        {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            open.push(target.to_string_lossy().into_owned());
        }
        assert!(
            open.iter().all(|t| t == "/dev/null"
                || t.starts_with("pipe:")
                || t == "/memfd:seccomp (deleted)"
                || t == "/memfd:seccomp"),
            "launcher {pid} holds {open:?}"
        );
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        assert!(!cwd.to_string_lossy().starts_with(&data_dir), "{cwd:?}");
        // Its group is its own, made for one run, and holds only itself.
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let pids_path = cgroup
            .lines()
            .find_map(|l| l.split_once(":pids:").map(|(_, p)| p.to_owned()))
            .unwrap();
        assert!(pids_path.contains("/launcher-"), "{pids_path}");
        let members =
            std::fs::read_to_string(format!("/sys/fs/cgroup/pids{}/cgroup.procs", pids_path))
                .unwrap();
        assert_eq!(members.trim(), pid.to_string(), "{pids_path}");
    }
    // A run through a launcher: the session's files, uid 65534 inside, its own cgroup seen
    // as the root, SIGPIPE at its default (the launcher's runtime ignores it).
    let body = run(
        &server,
        KEY_A,
        "bash",
        Some(&sid),
        "cat a.txt; id -u; grep -c ':/$' /proc/self/cgroup >/dev/null && echo root-cgroup; \
         set +o pipefail; yes | head -1 >/dev/null; echo \"pipe ${PIPESTATUS[0]}\"",
    )
    .await;
    assert_eq!(
        body["stdout"], "hi\n65534\nroot-cgroup\npipe 141\n",
        "{body}"
    );
    // Each launcher serves one run: those seen idle are gone or no longer launchers.
    for _ in 0..4 {
        run(&server, KEY_B, "bash", None, "true").await;
    }
    let now = idle_launchers(&server);
    assert!(
        launchers.iter().all(|p| !now.contains(p)),
        "{launchers:?} still idle after six runs: {now:?}"
    );
}
