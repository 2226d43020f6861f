//! DATA_DIR's free-space floor (`DATA_DIR_MIN_FREE_MB`): below it uploads, new sessions and
//! runs are refused with 507 and one sentence, nothing is left half-written, and reads and
//! deletes keep working.

mod common;

use common::{KEY_A, TestServer, exec};
use serde_json::json;

/// A floor no disk can meet: every write is "below the floor".
const IMPOSSIBLE_FLOOR_MB: &str = "1000000000000";

fn assert_low_disk(status: reqwest::StatusCode, body: &serde_json::Value) {
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"], "disk_low", "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("MiB of disk free"), "{body}");
    assert!(!detail.contains('/'), "no server path in {body}");
}

#[tokio::test]
async fn below_the_floor_writes_are_refused_while_reads_and_deletes_work() {
    let temp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        temp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let data_dir = temp.path().join("data");

    // With room to spare: a file and a second session to delete later.
    let mut server = TestServer::start_in(&data_dir, &[("DATA_DIR_MIN_FREE_MB", "1")]).await;
    let (status, body) = server
        .upload("/upload", KEY_A, &[("kept.txt", b"kept bytes")], &[])
        .await;
    assert_eq!(status, 200, "{body}");
    let sid = body["session_id"].as_str().unwrap().to_owned();
    let fid = body["files"][0]["id"].as_str().unwrap().to_owned();
    let (status, body) = server
        .upload("/upload", KEY_A, &[("other.txt", b"x")], &[])
        .await;
    assert_eq!(status, 200, "{body}");
    let other = body["session_id"].as_str().unwrap().to_owned();
    server.stop();

    let server =
        TestServer::start_in(&data_dir, &[("DATA_DIR_MIN_FREE_MB", IMPOSSIBLE_FLOOR_MB)]).await;
    let sessions = server.session_dirs();

    // Uploads, into the session or into a new one, are refused; nothing is staged or made.
    let (status, body) = server
        .upload(
            "/upload",
            KEY_A,
            &[("new.txt", b"new")],
            &[("session_id", &sid)],
        )
        .await;
    assert_low_disk(status, &body);
    let (status, body) = server
        .upload("/upload", KEY_A, &[("new.txt", b"new")], &[])
        .await;
    assert_low_disk(status, &body);
    let (status, body) = server
        .upload("/upload/batch", KEY_A, &[("new.txt", b"new")], &[])
        .await;
    assert_low_disk(status, &body);
    assert_eq!(server.staged_files(), 0);
    assert_eq!(server.session_dirs(), sessions, "no new session");

    // A run (which may write) is refused before it starts, in a new session or an old one.
    let (status, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "code": "echo hi > out.txt"}),
    )
    .await;
    assert_low_disk(status, &body);
    let (status, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "code": "echo hi > out.txt", "session_id": sid}),
    )
    .await;
    assert_low_disk(status, &body);
    assert_eq!(server.session_dirs(), sessions, "no new session");

    // Reads work.
    let r = server.fetch(&format!("/download/{sid}/{fid}"), KEY_A).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"kept bytes");
    let files = server.get_json(&format!("/files/{sid}"), KEY_A).await;
    assert_eq!(common::names(&files), ["kept.txt"]);

    // Deletes work: a file and a whole session.
    let r = server
        .delete(&format!("/files/{sid}/{fid}"), KEY_A)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let r = server
        .delete(&format!("/sessions/{other}"), KEY_A)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}
