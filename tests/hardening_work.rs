//! The work the server does for user code is bounded, and what user code leaves behind
//! (links, sparse files, deep trees, a kernel still writing) never makes a session unusable
//! or undeletable.

mod common;

use std::time::Duration;

use common::{KEY_A, TestServer, exec};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn run(server: &TestServer, lang: &str, session: Option<&str>, code: &str) -> Value {
    let mut body = json!({"lang": lang, "code": code});
    if let Some(sid) = session {
        body["session_id"] = json!(sid);
    }
    let (status, body) = exec(server, KEY_A, body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Bytes the server has hashed so far (a Prometheus counter).
async fn hashed_bytes(server: &TestServer) -> u64 {
    let text = server.fetch("/metrics", KEY_A).await.text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with("code_interpreter_hashed_bytes_total"))
        .and_then(|l| l.split_whitespace().last())
        .map_or(0, |v| v.parse::<f64>().unwrap() as u64)
}

/// Sandboxes the server started to ask a runtime its version or packages.
async fn probes(server: &TestServer) -> u64 {
    let text = server.fetch("/metrics", KEY_A).await.text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with("code_interpreter_runtime_probes_total"))
        .and_then(|l| l.split_whitespace().last())
        .map_or(0, |v| v.parse::<f64>().unwrap() as u64)
}

/// Wait until `done` holds, for at most 20 s.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn trash_entries(server: &TestServer) -> usize {
    std::fs::read_dir(server.data_dir.join("trash")).map_or(0, |d| d.count())
}

#[tokio::test]
async fn one_sparse_file_with_100_hard_links_is_hashed_once() {
    let server = TestServer::start(&[("SESSION_DISK_QUOTA_MB", "200")]).await;
    let before = hashed_bytes(&server).await;
    // 4 KiB on disk, 100 MiB apparent, 101 names: 10 GiB to hash, name by name.
    let body = run(
        &server,
        "bash",
        None,
        "truncate -s 100M big.bin; for i in $(seq 1 100); do ln big.bin link$i.bin; done; echo made",
    )
    .await;
    assert!(body["stdout"].as_str().unwrap().contains("made"), "{body}");
    let spent = hashed_bytes(&server).await - before;
    assert!(spent <= 101 << 20, "the server hashed {spent} bytes");
    let shas: std::collections::HashSet<String> = server
        .get_json(
            &format!(
                "/files/{}?detail=full",
                body["session_id"].as_str().unwrap()
            ),
            KEY_A,
        )
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| {
            f["etag"]
                .as_str()
                .or(f["metadata"]["etag"].as_str())
                .map(str::to_owned)
        })
        .collect();
    assert!(shas.len() <= 1, "{shas:?}");
}

#[tokio::test]
async fn many_sparse_files_cost_no_more_hashing_than_the_quota() {
    let server = TestServer::start(&[("SESSION_DISK_QUOTA_MB", "100")]).await;
    let before = hashed_bytes(&server).await;
    run(
        &server,
        "bash",
        None,
        "for i in $(seq 1 40); do truncate -s 90M sparse$i.bin; done; true",
    )
    .await;
    let spent = hashed_bytes(&server).await - before;
    assert!(
        spent <= 100 << 20,
        "the server hashed {spent} bytes for a 100 MiB quota"
    );
}

#[tokio::test]
async fn a_tree_deeper_than_path_max_leaves_the_session_usable_and_deletable() {
    let server = TestServer::start(&[]).await;
    // 3,000 levels of "d/", 6,000 bytes of path: more than PATH_MAX (bash's `cd` slows to a
    // crawl past PATH_MAX; Python's chdir does not).
    let deep = r#"
import os
open('top.txt', 'w').write('top\n')
home = os.open('.', os.O_RDONLY)
for _ in range(3000):
    os.mkdir('d')
    os.chdir('d')
open('f.txt', 'w').write('deep')
os.fchdir(home)
print('made')
"#;
    let body = run(&server, "py", None, deep).await;
    assert_eq!(body["stdout"], "made\n", "{body}");
    assert_eq!(body["run"]["status"], "success", "{body}");
    assert!(
        common::names(&body["files"]).contains(&"top.txt".to_owned()),
        "{body}"
    );
    let sid = body["session_id"].as_str().unwrap().to_owned();
    // Every later run of the session works, in both runtimes.
    for lang in ["bash", "py"] {
        let code = if lang == "bash" {
            "cat top.txt"
        } else {
            "print(open('top.txt').read(), end='')"
        };
        let again = run(&server, lang, Some(&sid), code).await;
        assert_eq!(again["run"]["status"], "success", "{again}");
        assert_eq!(again["stdout"], "top\n");
    }
    let listed = server.get_json(&format!("/files/{sid}"), KEY_A).await;
    assert!(!listed.as_array().unwrap().is_empty(), "{listed}");
    // And it can be deleted, all the way down.
    let r = server
        .delete(&format!("/sessions/{sid}"), KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let workspace = server.data_dir.join("sessions").join(&sid);
    assert!(!workspace.exists());
    assert!(
        eventually(|| trash_entries(&server) == 0).await,
        "the deep tree stayed in the trash"
    );
}

#[tokio::test]
async fn deleting_a_session_while_its_kernel_writes_leaves_nothing_on_disk() {
    let server = TestServer::start(&[]).await;
    let writer = r#"
import threading, time, os
def write():
    i = 0
    while True:
        i += 1
        os.makedirs(f'w/{i % 50}', exist_ok=True)
        with open(f'w/{i % 50}/f{i}.txt', 'w') as f:
            f.write('x' * 1000)
threading.Thread(target=write, daemon=True).start()
time.sleep(0.5)
print('writing')
"#;
    let body = run(&server, "py", None, writer).await;
    assert_eq!(body["stdout"], "writing\n", "{body}");
    let sid = body["session_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = server
        .delete(&format!("/sessions/{sid}"), KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!server.data_dir.join("sessions").join(&sid).exists());
    assert!(
        eventually(|| trash_entries(&server) == 0).await,
        "the workspace stayed on disk"
    );
}

#[tokio::test]
async fn a_restart_sweeps_the_trash_and_workspaces_without_a_session() {
    let mut server = TestServer::start(&[]).await;
    let kept = run(&server, "bash", None, "echo keep > keep.txt").await;
    let kept_sid = kept["session_id"].as_str().unwrap().to_owned();
    server.stop();
    let orphan = server.data_dir.join("sessions").join("orphan-from-a-crash");
    std::fs::create_dir_all(orphan.join("a/b")).unwrap();
    std::fs::write(orphan.join("a/b/file"), b"left").unwrap();
    let stale = server.data_dir.join("trash").join("half-removed");
    std::fs::create_dir_all(stale.join("x")).unwrap();
    let again = TestServer::start_in(&server.data_dir, &[]).await;
    assert!(!orphan.exists());
    assert!(eventually(|| trash_entries(&again) == 0).await);
    let body = run(&again, "bash", Some(&kept_sid), "cat keep.txt").await;
    assert_eq!(body["stdout"], "keep\n", "{body}");
}

#[tokio::test]
async fn the_quota_counts_real_blocks_in_every_runtime() {
    let server = TestServer::start(&[("SESSION_DISK_QUOTA_MB", "100")]).await;
    // A Python cell that leaves 180 MiB in a 100 MiB session is stopped and says so.
    let body = run(
        &server,
        "py",
        None,
        "import time\nwith open('fill.bin', 'wb') as f:\n    for _ in range(180):\n        f.write(b'x' * (1 << 20))\n        f.flush()\n        time.sleep(0.02)\nprint('done')",
    )
    .await;
    assert_eq!(body["run"]["status"], "killed", "{body}");
    assert!(
        body["run"]["message"]
            .as_str()
            .unwrap()
            .contains("disk quota of 100 MiB"),
        "{body}"
    );
    let sid = body["session_id"].as_str().unwrap().to_owned();
    // Written fast, before any check: the end of the cell sees it.
    let fast = run(
        &server,
        "py",
        Some(&sid),
        "open('fast.bin', 'wb').write(b'y' * (30 << 20)); print('fast')",
    )
    .await;
    assert_eq!(fast["run"]["status"], "killed", "{fast}");
    // Sparse files and hard links cost what they allocate: 50 names of a 90 MiB hole fit.
    let sparse = run(
        &server,
        "bash",
        None,
        "truncate -s 90M hole.bin; for i in $(seq 1 50); do ln hole.bin h$i.bin; done; echo ok",
    )
    .await;
    assert_eq!(sparse["run"]["status"], "success", "{sparse}");
}

#[tokio::test]
async fn refreshing_the_package_lists_cannot_start_sandboxes_at_will() {
    let server = TestServer::start(&[]).await;
    // Once the start-up probes are done (readiness), nothing else asks the runtimes.
    for _ in 0..600 {
        if server.fetch("/health?ready=1", KEY_A).await.status() == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A cold cache asked by 20 clients at once: one probe, the others wait for its list.
    let before = probes(&server).await;
    let asks = (0..20).map(|_| server.fetch("/libraries?runtime=python", KEY_A));
    for r in futures::future::join_all(asks).await {
        assert_eq!(r.status(), StatusCode::OK);
    }
    let cold = probes(&server).await - before;
    assert!(cold <= 1, "{cold} probes for one list");
    // 20 refreshes at once, then 20 more: at most one refresh a minute reaches a runtime.
    for _ in 0..2 {
        let asks = (0..20).map(|_| server.fetch("/libraries?runtime=python&refresh=true", KEY_A));
        for r in futures::future::join_all(asks).await {
            assert_eq!(r.status(), StatusCode::OK);
            let body: Value = r.json().await.unwrap();
            assert!(
                !body[0]["libraries"].as_array().unwrap().is_empty(),
                "{body}"
            );
        }
    }
    let refreshed = probes(&server).await - before - cold;
    assert!(refreshed <= 1, "40 refreshes started {refreshed} probes");
}
