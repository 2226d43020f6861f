//! Liveness and readiness: `/health` answers while the process serves; `/health?ready=1`
//! and `code-interpreter healthcheck` say yes only once a real sandbox has started.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::TestServer;

/// Ask `/health?ready=1` until it answers 200, or give up after `limit`.
async fn wait_until_ready(server: &TestServer, limit: Duration) -> Option<serde_json::Value> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let resp = server
            .client
            .get(server.url("/health?ready=1"))
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            return Some(resp.json().await.unwrap());
        }
        assert_eq!(resp.status(), 503, "a probe answers 200 or 503");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn port_of(server: &TestServer) -> String {
    server.base.rsplit(':').next().unwrap().to_owned()
}

/// `code-interpreter healthcheck` against `port`: its exit code and what it printed.
fn healthcheck(port: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_code-interpreter"))
        .arg("healthcheck")
        .env_clear()
        .env("HOST", "0.0.0.0")
        .env("PORT", port)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_server_becomes_ready_once_a_sandbox_ran_and_every_runtime_was_probed() {
    let server = TestServer::start(&[]).await;
    let health = wait_until_ready(&server, Duration::from_secs(60))
        .await
        .expect("the server became ready");
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["ready"], true);
    assert_eq!(health["readiness"]["sandbox"], "ready");
    let states = health["readiness"]["runtimes"].as_object().unwrap();
    assert!(states.len() >= 10, "{states:?}");
    for (language, state) in states {
        assert!(
            state == "available" || state == "unavailable",
            "{language} is still {state} after readiness"
        );
        // A language is available exactly when /health lists its version.
        assert_eq!(
            state == "available",
            health["runtimes"][language].is_string(),
            "{language}"
        );
    }
    assert_eq!(states["python"], "available");
    assert_eq!(states["bash"], "available");

    let (code, said) = healthcheck(&port_of(&server));
    assert_eq!(code, 0, "{said}");
}

#[tokio::test]
async fn without_a_working_sandbox_the_server_is_live_but_never_ready() {
    // No process may be started as the sandbox user, so every launch fails, as in a
    // container run without the options bubblewrap needs.
    let temp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        temp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let server = TestServer::start_launched(
        &["prlimit", "--nproc=0", "--"],
        &temp.path().join("data"),
        &[],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        let h = server.health().await;
        if h["readiness"]["sandbox"] != "pending" {
            break h;
        }
        assert!(Instant::now() < deadline, "the self-test never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health["status"], "healthy", "liveness holds");
    assert_eq!(health["ready"], false);
    assert_eq!(health["readiness"]["sandbox"], "failed");
    // No launcher message (they name server paths) reaches this public route.
    assert!(!health.to_string().contains("os error"), "{health}");

    let probe = server
        .client
        .get(server.url("/health?ready=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 503);
    let body: serde_json::Value = probe.json().await.unwrap();
    assert_eq!(body["ready"], false, "the 503 carries the same body");
    // Asked again at once: still 503 (the retry is rate-limited, the answer is not cached
    // into a 200).
    let again = server
        .client
        .get(server.url("/v1/health?ready=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 503);

    let (code, said) = healthcheck(&port_of(&server));
    assert_eq!(code, 1);
    assert!(said.contains("503"), "{said}");
}

#[tokio::test]
async fn the_healthcheck_fails_clearly_when_nothing_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, said) = healthcheck(&port.to_string());
    assert_eq!(code, 1);
    assert!(said.contains("cannot ask"), "{said}");
}
