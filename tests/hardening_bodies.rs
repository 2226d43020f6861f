//! Clients are hostile too: a request that trickles in, or stops half-way, is dropped
//! with a clear status instead of holding a connection and a task forever.

mod common;

use std::time::Duration;

use common::{KEY_A, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send `head` and then nothing; what the server answers (its status line), or `closed`.
async fn stall(server: &TestServer, head: String) -> String {
    let addr = server.url("").trim_start_matches("http://").to_owned();
    let mut tcp = TcpStream::connect(addr.trim_end_matches('/'))
        .await
        .unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // Far longer than the idle limit of the test server (1 s): only a server that never
    // gives up waits this out.
    let read = tokio::time::timeout(Duration::from_secs(90), tcp.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the server still waits for the stalled request"
    );
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.lines().next().map_or("closed".into(), str::to_owned)
}

#[tokio::test]
async fn a_json_body_that_stops_half_way_gets_a_408() {
    let server = TestServer::start(&[("UPLOAD_IDLE_SECONDS", "1")]).await;
    let body = r#"{"lang": "py", "code": "print(1)""#;
    for route in ["/exec", "/exec/stream", "/exec/programmatic"] {
        let head = format!(
            "POST {route} HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY_A}\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{body}"
        );
        let status = stall(&server, head).await;
        assert!(status.contains(" 408 "), "{route}: {status}");
    }
    // An upload whose part never ends.
    let part =
        "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\nabc";
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY_A}\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 100000\r\n\r\n{part}"
    );
    let status = stall(&server, head).await;
    assert!(status.contains(" 408 "), "/upload: {status}");
    assert_eq!(server.staged_files(), 0);
    assert_eq!(server.health().await["status"], "healthy");
}
