//! The escape battery: each test tries to break one promise of the sandbox and asserts it
//! held, while the server keeps answering.

mod common;

use std::time::Duration;

use common::{KEY_A, TestServer, exec};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SECRET: &str = "planted-server-secret-4f1c";

async fn start() -> TestServer {
    TestServer::start(&[
        ("SECRET_TOKEN", SECRET),
        ("MAX_MEMORY_MB", "256"),
        ("MAX_PROCESSES", "64"),
        ("SESSION_DISK_QUOTA_MB", "64"),
    ])
    .await
}

async fn bash(server: &TestServer, code: &str) -> Value {
    let (status, body) = exec(server, KEY_A, json!({"lang": "bash", "code": code})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn python(server: &TestServer, code: &str) -> Value {
    let (status, body) = exec(server, KEY_A, json!({"lang": "py", "code": code})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn output(body: &Value) -> String {
    format!(
        "{}{}",
        body["stdout"].as_str().unwrap_or(""),
        body["stderr"].as_str().unwrap_or("")
    )
}

async fn health_answers(server: &TestServer) {
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        server.client.get(server.url("/health")).send(),
    )
    .await
    .expect("/health answered in time")
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn another_sessions_files_cannot_be_listed_or_read() {
    let server = start().await;
    let (_, up) = server
        .upload("/upload", KEY_A, &[("secret.txt", b"TOPSECRET-A")], &[])
        .await;
    let victim = up["session_id"].as_str().unwrap();
    let victim_dir = server.data_dir.join("sessions").join(victim);
    let code = format!(
        "ls -la /mnt /mnt/data 2>&1; cat {dir}/secret.txt 2>&1; ls {data} 2>&1; \
         grep -rs TOPSECRET /mnt /tmp /home /root /var /srv /opt /run 2>/dev/null; \
         find / -xdev -name 'secret.txt' 2>/dev/null; true",
        dir = victim_dir.display(),
        data = server.data_dir.display()
    );
    let body = bash(&server, &code).await;
    let out = output(&body);
    assert!(!out.contains("TOPSECRET"), "{out}");
    assert!(out.contains("No such file or directory"), "{out}");
}

#[tokio::test]
async fn the_servers_environment_and_keys_are_invisible() {
    let server = start().await;
    let body = bash(
        &server,
        "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; cat /proc/1/cmdline; true",
    )
    .await;
    let out = output(&body);
    assert!(!out.contains(SECRET), "{out}");
    assert!(
        !out.contains(common::KEY_A) && !out.contains(common::KEY_B),
        "{out}"
    );
    assert!(!out.contains("DATA_DIR"), "{out}");
    let body = python(&server, "import os; print(sorted(os.environ))").await;
    let out = output(&body);
    assert!(
        !out.contains("SECRET_TOKEN") && !out.contains("CODE_INTERPRETER"),
        "{out}"
    );
}

#[tokio::test]
async fn there_is_no_network_not_even_the_servers_port() {
    let server = start().await;
    let port = server.base.rsplit(':').next().unwrap();
    let code = format!(
        "import socket\n\
         for host, port in [('127.0.0.1', {port}), ('192.0.2.1', 80), ('::1', {port})]:\n\
         \x20   try:\n\
         \x20       socket.create_connection((host, port), timeout=2)\n\
         \x20       print('CONNECTED', host)\n\
         \x20   except OSError as e:\n\
         \x20       print('refused', host, e.errno)\n\
         try:\n\
         \x20   socket.getaddrinfo('pypi.org', 443)\n\
         \x20   print('RESOLVED')\n\
         except OSError:\n\
         \x20   print('no dns')\n"
    );
    let body = python(&server, &code).await;
    let out = output(&body);
    assert!(
        !out.contains("CONNECTED") && !out.contains("RESOLVED"),
        "{out}"
    );
    assert_eq!(out.matches("refused").count(), 3, "{out}");
    let body = bash(
        &server,
        &format!("(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>&1 && echo CONNECTED; true"),
    )
    .await;
    assert!(!output(&body).contains("CONNECTED"));
}

#[tokio::test]
async fn nothing_outside_mnt_data_and_tmp_is_writable() {
    let server = start().await;
    let body = bash(
        &server,
        "for p in /x /usr/x /etc/x /var/x /home/x /opt/x /opt/code-interpreter/x /proc/x /code/x; do \
           touch $p 2>/dev/null && echo WROTE $p; done; \
         touch /tmp/ok /mnt/data/ok && echo fine; id -u",
    )
    .await;
    let out = output(&body);
    assert!(!out.contains("WROTE"), "{out}");
    assert!(out.contains("fine\n65534\n"), "{out}");
    // Files made inside are owned on the host by the session's own unprivileged uid (from
    // SANDBOX_UID_BASE on), never by root.
    let sid = body["session_id"].as_str().unwrap();
    let meta = std::fs::metadata(server.data_dir.join("sessions").join(sid).join("ok")).unwrap();
    assert!(std::os::unix::fs::MetadataExt::uid(&meta) >= 1_879_048_192);
}

#[tokio::test]
async fn privileged_syscalls_are_refused() {
    let server = start().await;
    let code = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def err(rc):
    return errno.errorcode.get(ctypes.get_errno(), rc) if rc == -1 else 'ALLOWED'
print('ptrace', err(libc.ptrace(16, 1, 0, 0)))
print('mount', err(libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)))
print('unshare', err(libc.unshare(0x10000000)))
print('clone3', err(libc.syscall(435, 0, 0)))
print('bpf', err(libc.syscall(321, 0, 0, 0)))
status = open('/proc/self/status').read()
print([l for l in status.splitlines() if l.startswith(('CapEff', 'NoNewPrivs', 'Seccomp:'))])
"#;
    let body = python(&server, code).await;
    let out = output(&body);
    assert!(out.contains("ptrace EPERM"), "{out}");
    assert!(out.contains("mount EPERM"), "{out}");
    assert!(out.contains("unshare EPERM"), "{out}");
    assert!(out.contains("clone3 ENOSYS"), "{out}");
    assert!(out.contains("bpf EPERM"), "{out}");
    assert!(out.contains("CapEff:\\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\\t1"), "{out}");
    assert!(out.contains("Seccomp:\\t2"), "{out}");
    // Threads still work (glibc falls back from clone3 to clone).
    let body = python(&server, "import threading; t = threading.Thread(target=print, args=('thread ok',)); t.start(); t.join()").await;
    assert_eq!(body["stdout"], "thread ok\n");
}

#[tokio::test]
async fn a_fork_bomb_is_stopped_and_the_server_lives() {
    let server = start().await;
    let bomb = bash(&server, "bomb() { bomb | bomb & }; bomb; sleep 20");
    let (body, ()) = tokio::join!(bomb, async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        health_answers(&server).await;
    });
    common::assert_stopped(&body, "killed", "processes");
    assert!(body["stderr"].as_str().unwrap().contains("[sandbox]"));
    health_answers(&server).await;
}

#[tokio::test]
async fn a_memory_bomb_is_killed_by_the_limit() {
    let server = start().await;
    let body = python(
        &server,
        // A flushed line is queued in the kernel's ZeroMQ thread; give it a moment to leave
        // the process before the kill.
        "import time\nprint('start', flush=True)\ntime.sleep(0.5)\nx = bytearray(2 * 1024**3)\nprint('survived')",
    )
    .await;
    common::assert_stopped(&body, "killed", "memory limit of 256 MiB");
    assert_eq!(body["stdout"], "start\n");
    health_answers(&server).await;
}

#[tokio::test]
async fn disk_fillers_are_stopped_at_the_quota() {
    let server = start().await;
    let body = bash(&server, "head -c 200M /dev/zero > big.bin; echo done").await;
    common::assert_stopped(&body, "killed", "larger than the limit");
    let body = bash(
        &server,
        "for i in $(seq 1 20); do head -c 5M /dev/zero > f$i.bin; done; sleep 10; echo done",
    )
    .await;
    common::assert_stopped(&body, "killed", "disk quota");
    assert!(!body["stdout"].as_str().unwrap().contains("done"));
    // /tmp is a small private tmpfs, and the file size limit holds there too.
    let body = bash(&server, "head -c 400M /dev/zero > /tmp/fill; echo done").await;
    assert_eq!(body["run"]["status"], "killed", "{body}");
    health_answers(&server).await;
}

#[tokio::test]
async fn an_output_flood_is_cut_and_stopped() {
    let server = start().await;
    let body = bash(&server, "yes | head -c 100000000").await;
    assert_eq!(body["run"]["status"], "killed", "{body:.300}");
    assert!(
        body["run"]["message"]
            .as_str()
            .unwrap()
            .contains("output limit")
    );
    let stdout = body["stdout"].as_str().unwrap();
    assert!(stdout.len() <= 1024 * 1024 + 100, "{}", stdout.len());
    assert!(stdout.ends_with("[output cut: more than 1048576 bytes on stdout]\n"));
    // A kernel cell meets the same cap and the same wording; it is interrupted, not killed,
    // so its session's state survives.
    let (_, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "py", "code": "kept = 7\nwhile True:\n    print('é' * 4000, flush=True)"}),
    )
    .await;
    common::assert_stopped(
        &body,
        "killed",
        "stdout passed the output limit of 1048576 bytes",
    );
    assert!(
        body["stderr"]
            .as_str()
            .unwrap()
            .contains("[sandbox] The cell's stdout passed the output limit"),
        "{body:.300}"
    );
    let stdout = body["stdout"].as_str().unwrap();
    assert!(stdout.len() <= 1024 * 1024 + 100, "{}", stdout.len());
    assert!(stdout.ends_with("[output cut: more than 1048576 bytes on stdout]\n"));
    let sid = body["session_id"].as_str().unwrap();
    let (_, after) = exec(
        &server,
        KEY_A,
        json!({"lang": "py", "code": "print(kept)", "session_id": sid}),
    )
    .await;
    assert_eq!(after["stdout"], "7\n", "{after}");
    health_answers(&server).await;
}

#[tokio::test]
async fn background_processes_do_not_survive_the_run() {
    let server = start().await;
    let body = bash(
        &server,
        "sleep 1234.5 & disown; nohup sleep 1234.5 >/dev/null 2>&1 & echo started",
    )
    .await;
    assert_eq!(body["stdout"], "started\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let found = std::process::Command::new("pgrep")
        .args(["-f", "sleep 1234.5"])
        .output()
        .unwrap();
    assert!(
        found.stdout.is_empty(),
        "left behind: {}",
        String::from_utf8_lossy(&found.stdout)
    );
}

#[tokio::test]
async fn symlinks_made_by_user_code_are_never_listed_or_served() {
    let server = start().await;
    let (_, up) = server
        .upload("/upload", KEY_A, &[("data.txt", b"mine")], &[])
        .await;
    let sid = up["session_id"].as_str().unwrap();
    let fid = up["files"][0]["id"].as_str().unwrap();
    let (_, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "session_id": sid,
               "code": "ln -s /etc/passwd passwd.txt; ln -s / root; rm data.txt; ln -s /etc/passwd data.txt; echo hi > real.txt"}),
    )
    .await;
    let names = common::names(&body["files"]);
    assert_eq!(names, ["real.txt"], "{body}");
    assert_eq!(body["deleted_files"], json!([]));
    let list: Value = server.get_json(&format!("/files/{sid}"), KEY_A).await;
    let listed: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["real.txt"], "{list}");
    let r = server.fetch(&format!("/download/{sid}/{fid}"), KEY_A).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
