//! The file API against a real server process: real HTTP, real SQLite, real files.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{KEY_A, KEY_B, TestServer};
use reqwest::StatusCode;
use serde_json::Value;

fn is_nanoid(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 21
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

async fn upload_one(server: &TestServer, name: &str, bytes: &[u8]) -> (String, String) {
    let (status, body) = server.upload("/upload", KEY_A, &[(name, bytes)], &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (
        body["session_id"].as_str().unwrap().to_owned(),
        body["files"][0]["id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn upload_answers_every_field_librechat_and_the_seed_read() {
    let server = TestServer::start(&[]).await;
    let (status, body) = server
        .upload(
            "/v1/upload",
            KEY_A,
            &[("data.csv", b"a,b\n1,2\n")],
            &[
                ("entity_id", "agent_123"),
                ("kind", "user"),
                ("id", "user-1"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["message"], "success");
    assert!(is_nanoid(&body["session_id"]));
    assert_eq!(body["session_id"], body["storage_session_id"]);
    let f = &body["files"][0];
    assert!(is_nanoid(&f["id"]));
    assert_eq!(f["id"], f["fileId"]);
    assert_eq!(f["name"], "data.csv");
    assert_eq!(f["filename"], "data.csv");
    assert_eq!(f["size"], 8);
    assert_eq!(f["contentType"], "text/csv");
    assert_eq!(f["metadata"]["original-filename"], "data.csv");
    assert_eq!(f["metadata"]["content-type"], "text/csv");
    assert_eq!(f["session_id"], body["session_id"]);
    assert_eq!(f["storage_session_id"], body["session_id"]);
    assert!(f["etag"].as_str().unwrap().starts_with('"'));
    assert!(f["lastModified"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        f["path"],
        format!(
            "/download/{}/{}",
            body["session_id"].as_str().unwrap(),
            f["id"].as_str().unwrap()
        )
    );
}

#[tokio::test]
async fn files_part_name_is_accepted_and_repeatable_and_a_session_id_field_reuses_the_session() {
    let server = TestServer::start(&[]).await;
    let form = reqwest::multipart::Form::new()
        .part(
            "files",
            reqwest::multipart::Part::bytes(b"one".to_vec()).file_name("one.txt"),
        )
        .part(
            "files",
            reqwest::multipart::Part::bytes(b"two".to_vec()).file_name("dir/two.txt"),
        );
    let resp = server.post_form("/upload", KEY_A, form).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let sid = body["session_id"].as_str().unwrap().to_owned();
    let names = common::names(&body["files"]);
    assert_eq!(names, ["one.txt", "dir/two.txt"]);

    // The session_id field may come after the file part (LibreChat's order).
    let (status, again) = server
        .upload(
            "/upload",
            KEY_A,
            &[("three.txt", b"3")],
            &[("session_id", &sid)],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["session_id"], sid.as_str());
    let list: Value = server.get_json(&format!("/files/{sid}"), KEY_A).await;
    assert_eq!(list.as_array().unwrap().len(), 3);

    // Without session_id every upload gets a fresh session.
    let (_, fresh) = server
        .upload("/upload", KEY_A, &[("x.txt", b"x")], &[])
        .await;
    assert_ne!(fresh["session_id"], sid.as_str());
}

#[tokio::test]
async fn listing_has_the_three_librechat_shapes_and_unknown_sessions_are_empty() {
    let server = TestServer::start(&[]).await;
    let (sid, fid) = upload_one(&server, "report.txt", b"hello").await;

    let list = |detail: &'static str| {
        let req = server.get(
            &format!("/v1/files/{sid}?detail={detail}&kind=user&id=u1"),
            KEY_A,
        );
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()
        }
    };
    let simple = list("simple").await;
    assert_eq!(simple[0]["id"], fid.as_str());
    assert_eq!(simple[0]["name"], "report.txt");
    assert_eq!(simple[0]["session_id"], sid.as_str());
    assert_eq!(simple[0]["path"], format!("/download/{sid}/{fid}"));

    let summary = list("summary").await;
    let item = &summary[0];
    assert_eq!(item["name"], format!("{sid}/{fid}"));
    assert_eq!(item["fileId"], fid.as_str());
    assert_eq!(item["id"], fid.as_str());
    assert_eq!(item["filename"], "report.txt");
    assert_eq!(item["storage_session_id"], sid.as_str());
    assert_eq!(item["size"], 5);
    assert_eq!(item["metadata"]["original-filename"], "report.txt");
    // LibreChat parses lastModified as a date.
    assert!(item["lastModified"].as_str().unwrap().starts_with("20"));

    let full = list("full").await;
    assert_eq!(full[0]["name"], format!("{sid}/{fid}"));
    assert_eq!(full[0]["metadata"]["original-filename"], "report.txt");
    assert_eq!(full[0]["contentType"], "text/plain");
    // LibreChat 2.x: id = name.split('/')[1].split('.')[0]
    let derived = full[0]["name"]
        .as_str()
        .unwrap()
        .split('/')
        .nth(1)
        .unwrap()
        .split('.')
        .next()
        .unwrap();
    assert_eq!(derived, fid);

    let normalized = list("normalized").await;
    assert_eq!(normalized[0]["name"], "report.txt");
    assert_eq!(normalized[0]["id"], fid.as_str());

    // Unknown (but well-formed) session: 200 [].
    let r = server
        .fetch("/files/AAAAAAAAAAAAAAAAAAAAA?detail=summary", KEY_A)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), serde_json::json!([]));
    // Malformed: 400 with a sentence.
    let r = server.fetch("/files/not-an-id", KEY_A).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("21 characters"));
}

#[tokio::test]
async fn download_streams_bytes_with_range_etag_and_disposition() {
    let server = TestServer::start(&[]).await;
    let bytes: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let (sid, fid) = upload_one(&server, "blob.bin", &bytes).await;
    let path = format!("/v1/download/{sid}/{fid}?kind=user&id=someone&version=3");

    let r = server
        .get(&path, KEY_A)
        .header("user-agent", "LibreChat/1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.headers()["content-length"], "10000");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    let disposition = r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    assert!(
        disposition.contains("filename*=UTF-8''blob.bin"),
        "{disposition}"
    );
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(r.bytes().await.unwrap().as_ref(), bytes.as_slice());

    let r = server
        .get(&path, KEY_A)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 100-199/10000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &bytes[100..200]);

    let r = server
        .get(&path, KEY_A)
        .header("range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &bytes[9990..]);

    let r = server
        .get(&path, KEY_A)
        .header("range", "bytes=20000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"], "bytes */10000");

    let r = server
        .get(&path, KEY_A)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

    // A stale If-Range gets the whole file.
    let r = server
        .get(&path, KEY_A)
        .header("range", "bytes=0-9")
        .header("if-range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Unknown file in a known session, and malformed ids.
    let r = server
        .fetch(&format!("/download/{sid}/AAAAAAAAAAAAAAAAAAAAA"), KEY_A)
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = server
        .fetch(&format!("/download/{sid}/..%2F..%2Fetc"), KEY_A)
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn reuploading_a_name_replaces_it_with_a_new_id() {
    let server = TestServer::start(&[]).await;
    let (sid, old) = upload_one(&server, "notes.txt", b"v1").await;
    let (status, body) = server
        .upload(
            "/upload",
            KEY_A,
            &[("notes.txt", b"version 2")],
            &[("session_id", &sid)],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let new = body["files"][0]["id"].as_str().unwrap();
    assert_ne!(new, old);
    let list: Value = server.get_json(&format!("/files/{sid}"), KEY_A).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let r = server.fetch(&format!("/download/{sid}/{old}"), KEY_A).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = server.fetch(&format!("/download/{sid}/{new}"), KEY_A).await;
    assert_eq!(r.text().await.unwrap(), "version 2");
}

#[tokio::test]
async fn deleting_files_and_sessions_makes_them_404() {
    let server = TestServer::start(&[]).await;
    let (sid, fid) = upload_one(&server, "a.txt", b"a").await;

    let probe = server
        .fetch(&format!("/sessions/{sid}/objects/{fid}"), KEY_A)
        .await;
    assert_eq!(probe.status(), StatusCode::OK);
    let info: Value = probe.json().await.unwrap();
    assert_eq!(info["name"], format!("{sid}/{fid}"));
    assert_eq!(info["originalFilename"], "a.txt");
    assert_eq!(info["readOnly"], false);
    assert_eq!(info["size"], 1);

    let r = server
        .delete(&format!("/files/{sid}/{fid}"), KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["fileId"], fid.as_str());
    assert_eq!(body["message"], "File deleted successfully");
    for path in [
        format!("/download/{sid}/{fid}"),
        format!("/sessions/{sid}/objects/{fid}"),
    ] {
        let r = server.fetch(&path, KEY_A).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let body: Value = r.json().await.unwrap();
        assert!(body["detail"].as_str().unwrap().len() > 10);
        assert_eq!(body["error"], "file_not_found");
    }
    let r = server
        .delete(&format!("/files/{sid}/{fid}"), KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // The official API's alias deletes too.
    let (sid2, fid2) = upload_one(&server, "b.txt", b"b").await;
    let r = server
        .delete(&format!("/v1/sessions/{sid2}/objects/{fid2}"), KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let r = server
        .delete(&format!("/sessions/{sid2}"), KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!server.data_dir.join("sessions").join(&sid2).exists());
    let r = server
        .delete(&format!("/sessions/{sid2}"), KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn batch_reports_each_file_and_one_bad_file_does_not_sink_the_rest() {
    let server = TestServer::start(&[]).await;
    let (status, body) = server
        .upload(
            "/v1/upload/batch",
            KEY_A,
            &[
                ("good.txt", b"ok"),
                ("../evil.txt", b"no"),
                ("also-good.md", b"# hi"),
            ],
            &[("read_only", "true"), ("kind", "skill"), ("version", "2")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "partial_success");
    assert_eq!(body["succeeded"], 2);
    assert_eq!(body["failed"], 1);
    assert_eq!(body["session_id"], body["storage_session_id"]);
    let files = body["files"].as_array().unwrap();
    assert_eq!(files[0]["status"], "success");
    assert!(is_nanoid(&files[0]["fileId"]));
    assert_eq!(files[1]["status"], "error");
    assert_eq!(files[1]["filename"], "../evil.txt");
    assert!(files[1]["error"].as_str().unwrap().contains(".."));
    assert_eq!(files[2]["status"], "success");

    // read_only is kept and shown on download.
    let sid = body["session_id"].as_str().unwrap();
    let fid = files[0]["fileId"].as_str().unwrap();
    let r = server.fetch(&format!("/download/{sid}/{fid}"), KEY_A).await;
    assert_eq!(r.headers()["x-read-only"], "true");

    // Every file failing is a 400 with message "error".
    let (status, body) = server
        .upload("/upload/batch", KEY_A, &[("/abs.txt", b"x")], &[])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["message"], "error");
    assert_eq!(body["failed"], 1);
}

#[tokio::test]
async fn traversal_and_odd_names_are_rejected_and_leave_nothing() {
    let server = TestServer::start(&[]).await;
    for name in [
        "../x.txt",
        "a/../../x",
        "/etc/passwd",
        "a//b",
        "dir/",
        &"x".repeat(300),
    ] {
        let (status, body) = server.upload("/upload", KEY_A, &[(name, b"x")], &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .starts_with("Invalid file name"),
            "{body}"
        );
    }
    // Other control characters break the multipart header itself: still a 400 with a sentence.
    let (status, body) = server
        .upload("/upload", KEY_A, &[("bad\u{1}name", b"x")], &[])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["detail"].is_string());
    assert_eq!(server.session_dirs(), 0);
    assert_eq!(server.staged_files(), 0);
}

#[tokio::test]
async fn an_upload_over_the_limit_gets_413_and_nothing_is_kept() {
    let server = TestServer::start(&[("MAX_UPLOAD_BYTES", "4096")]).await;
    let (status, body) = server
        .upload("/upload", KEY_A, &[("big.bin", &[7u8; 8192])], &[])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("4096"));
    assert_eq!(server.session_dirs(), 0);
    assert_eq!(server.staged_files(), 0);
    // A file at the limit is fine.
    let (status, _) = server
        .upload("/upload", KEY_A, &[("ok.bin", &[7u8; 4096])], &[])
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_session_quota_refuses_a_file_and_keeps_the_earlier_ones() {
    let server = TestServer::start(&[("SESSION_DISK_QUOTA_MB", "1")]).await;
    let (sid, _) = upload_one(&server, "first.bin", &vec![1u8; 600 * 1024]).await;
    let (status, body) = server
        .upload(
            "/upload",
            KEY_A,
            &[("second.bin", &vec![2u8; 600 * 1024])],
            &[("session_id", &sid)],
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("quota"));
    // Replacing the first file with one of the same size fits.
    let (status, _) = server
        .upload(
            "/upload",
            KEY_A,
            &[("first.bin", &vec![3u8; 600 * 1024])],
            &[("session_id", &sid)],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let list: Value = server.get_json(&format!("/files/{sid}"), KEY_A).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(server.staged_files(), 0);
}

#[tokio::test]
async fn an_aborted_upload_leaves_nothing_behind() {
    let server = TestServer::start(&[]).await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    let boundary = "XbOuNdArY";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"partial.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: {addr}\r\nx-api-key: {KEY_A}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 10000000\r\n\r\n{head}"
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(&[0u8; 200_000]).unwrap();
    stream.flush().unwrap();
    // Give the server time to stage what arrived, then drop the connection mid-body.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.staged_files() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.staged_files(), 0);
    assert_eq!(server.session_dirs(), 0);
    let health: Value = server.health().await;
    assert_eq!(health["active_sessions"], 0);
}

#[tokio::test]
async fn twenty_parallel_uploads_into_one_session_are_all_listed() {
    let server = TestServer::start(&[]).await;
    let (sid, _) = upload_one(&server, "seed.txt", b"seed").await;
    let uploads = (0..20).map(|i| {
        let name = format!("part-{i:02}.txt");
        let body = format!("content {i}");
        let sid = sid.clone();
        let server = &server;
        async move {
            server
                .upload(
                    "/upload",
                    KEY_A,
                    &[(&name, body.as_bytes())],
                    &[("session_id", &sid)],
                )
                .await
        }
    });
    for (status, body) in futures::future::join_all(uploads).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let list: Value = server.get_json(&format!("/files/{sid}"), KEY_A).await;
    let mut names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 21, "{names:?}");
    for i in 0..20 {
        assert!(names.contains(&format!("part-{i:02}.txt")));
    }
}

#[tokio::test]
async fn a_restart_keeps_sessions_files_and_ids() {
    let temp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        temp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let data = temp.path().join("data");
    let mut first = TestServer::start_in(&data, &[]).await;
    let (status, body) = first
        .upload("/upload", KEY_A, &[("keep.txt", b"still here")], &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    let sid = body["session_id"].as_str().unwrap().to_owned();
    let fid = body["files"][0]["id"].as_str().unwrap().to_owned();
    first.stop();

    let second = TestServer::start_in(&data, &[]).await;
    let r = second.fetch(&format!("/download/{sid}/{fid}"), KEY_A).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "still here");
    let list: Value = second
        .get_json(&format!("/files/{sid}?detail=summary"), KEY_A)
        .await;
    assert_eq!(list[0]["fileId"], fid.as_str());
    // Still invisible to the other tenant after the restart.
    let r = second.fetch(&format!("/download/{sid}/{fid}"), KEY_B).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn idle_sessions_expire_with_their_files() {
    let server = TestServer::start(&[("SESSION_TTL_SECONDS", "2")]).await;
    let (sid, fid) = upload_one(&server, "short-lived.txt", b"bye").await;
    assert!(
        server
            .data_dir
            .join("sessions")
            .join(&sid)
            .join("short-lived.txt")
            .exists()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.data_dir.join("sessions").join(&sid).exists()
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!server.data_dir.join("sessions").join(&sid).exists());
    let r = server.fetch(&format!("/download/{sid}/{fid}"), KEY_A).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let list: Value = server.get_json(&format!("/files/{sid}"), KEY_A).await;
    assert_eq!(list, serde_json::json!([]));
}

#[tokio::test]
async fn a_one_gib_upload_barely_moves_the_servers_memory() {
    let server = TestServer::start(&[
        ("MAX_UPLOAD_BYTES", "2147483648"),
        ("SESSION_DISK_QUOTA_MB", "0"),
    ])
    .await;
    let before = common::peak_rss(server.pid());
    const CHUNK: usize = 1024 * 1024;
    const TOTAL: usize = 1024 * CHUNK;
    let chunks = futures::stream::iter(
        (0..TOTAL / CHUNK)
            .map(|i| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![(i % 251) as u8; CHUNK]))),
    );
    let part = reqwest::multipart::Part::stream_with_length(
        reqwest::Body::wrap_stream(chunks),
        TOTAL as u64,
    )
    .file_name("huge.bin");
    let form = reqwest::multipart::Form::new().part("file", part);
    let r = server.post_form("/upload", KEY_A, form).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["files"][0]["size"], TOTAL as u64);
    let sid = body["session_id"].as_str().unwrap();
    let fid = body["files"][0]["id"].as_str().unwrap();

    // Download it back, counting bytes without keeping them.
    let mut r = server.fetch(&format!("/download/{sid}/{fid}"), KEY_A).await;
    let mut got = 0usize;
    while let Some(chunk) = r.chunk().await.unwrap() {
        got += chunk.len();
    }
    assert_eq!(got, TOTAL);

    let growth = common::peak_rss(server.pid()).saturating_sub(before);
    eprintln!(
        "1 GiB upload + download: peak RSS grew by {} KiB",
        growth / 1024
    );
    assert!(growth < 64 * 1024 * 1024, "peak RSS grew by {growth} bytes");
    let mut f =
        std::fs::File::open(server.data_dir.join("sessions").join(sid).join("huge.bin")).unwrap();
    let mut first = [0u8; 4];
    f.read_exact(&mut first).unwrap();
    assert_eq!(first, [0, 0, 0, 0]);
}
