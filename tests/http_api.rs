//! Cross-cutting HTTP behaviour: auth and tenants, `/v1`, errors, headers, health, metrics,
//! OpenAPI and the docs page, configuration errors.

mod common;

use std::process::Command;

use common::{KEY_A, KEY_B, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::Value;

const SID: &str = "AAAAAAAAAAAAAAAAAAAAA";
const FID: &str = "BBBBBBBBBBBBBBBBBBBBB";

/// Every route that needs a key, with a method that reaches it.
fn protected_routes() -> Vec<(Method, String)> {
    vec![
        (Method::POST, "/upload".into()),
        (Method::POST, "/upload/batch".into()),
        (Method::GET, format!("/files/{SID}")),
        (Method::DELETE, format!("/files/{SID}/{FID}")),
        (Method::GET, format!("/download/{SID}/{FID}")),
        (Method::DELETE, format!("/sessions/{SID}")),
        (Method::GET, format!("/sessions/{SID}/objects/{FID}")),
        (Method::DELETE, format!("/sessions/{SID}/objects/{FID}")),
        (Method::POST, "/exec/programmatic".into()),
        (Method::GET, "/metrics".into()),
    ]
}

#[tokio::test]
async fn every_protected_route_needs_a_valid_key_under_both_prefixes() {
    let server = TestServer::start(&[]).await;
    for prefix in ["", "/v1"] {
        for (method, path) in protected_routes() {
            let url = server.url(&format!("{prefix}{path}"));
            let none = server
                .client
                .request(method.clone(), &url)
                .send()
                .await
                .unwrap();
            assert_eq!(none.status(), StatusCode::UNAUTHORIZED, "{method} {url}");
            assert!(none.headers().contains_key("www-authenticate"));
            let body: Value = none.json().await.unwrap();
            assert_eq!(body["detail"], "Invalid or missing API key");
            assert_eq!(body["error"], "unauthorized");

            let wrong = server
                .client
                .request(method.clone(), &url)
                .header("x-api-key", "not-a-key")
                .send()
                .await
                .unwrap();
            assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{method} {url}");

            for auth in [
                ("x-api-key", KEY_A.to_owned()),
                ("authorization", format!("Bearer {KEY_B}")),
            ] {
                let ok = server
                    .client
                    .request(method.clone(), &url)
                    .header(auth.0, &auth.1)
                    .send()
                    .await
                    .unwrap();
                assert_ne!(
                    ok.status(),
                    StatusCode::UNAUTHORIZED,
                    "{method} {url} with {}",
                    auth.0
                );
                assert!(
                    ok.status().as_u16() < 500 || ok.status() == StatusCode::NOT_IMPLEMENTED,
                    "{method} {url}: {}",
                    ok.status()
                );
            }
        }
    }
}

#[tokio::test]
async fn basic_auth_and_librechat_jwt_next_to_the_key_are_accepted() {
    let server = TestServer::start(&[]).await;
    let r = server
        .client
        .get(server.url(&format!("/v1/files/{SID}")))
        .basic_auth(KEY_A, None::<&str>)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = server
        .client
        .get(server.url(&format!("/v1/files/{SID}")))
        .header("x-api-key", KEY_A)
        .header("authorization", "Bearer eyJhbGciOiJFZERTQSJ9.e30.sig")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_tenant_cannot_see_or_touch_another_tenants_session() {
    let server = TestServer::start(&[]).await;
    let (status, body) = server
        .upload("/upload", KEY_A, &[("secret.txt", b"tenant A only")], &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    let sid = body["session_id"].as_str().unwrap();
    let fid = body["files"][0]["id"].as_str().unwrap();

    let list: Value = server
        .get_json(&format!("/files/{sid}?detail=full"), KEY_B)
        .await;
    assert_eq!(list, serde_json::json!([]));
    for path in [
        format!("/download/{sid}/{fid}"),
        format!("/sessions/{sid}/objects/{fid}"),
    ] {
        let r = server.fetch(&path, KEY_B).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let r = server
        .delete(&format!("/files/{sid}/{fid}"), KEY_B)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = server
        .delete(&format!("/sessions/{sid}"), KEY_B)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (status, _) = server
        .upload(
            "/upload",
            KEY_B,
            &[("secret.txt", b"overwrite")],
            &[("session_id", sid)],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Tenant A still has its file, unchanged.
    let r = server.fetch(&format!("/download/{sid}/{fid}"), KEY_A).await;
    assert_eq!(r.text().await.unwrap(), "tenant A only");
}

#[tokio::test]
async fn bad_input_gets_a_4xx_with_a_sentence_never_a_5xx() {
    let server = TestServer::start(&[]).await;
    let check = |r: reqwest::Response, want: StatusCode| async move {
        assert_eq!(r.status(), want);
        let body: Value = r.json().await.unwrap();
        let detail = body["detail"].as_str().expect("detail");
        assert!(detail.len() > 15 && detail.ends_with('.'), "{detail}");
        assert!(body["error"].is_string());
        assert!(
            !detail.contains("/tmp") && !detail.contains("sqlite"),
            "{detail}"
        );
    };
    // Not multipart.
    let r = server
        .client
        .post(server.url("/upload"))
        .header("x-api-key", KEY_A)
        .body("plain")
        .send()
        .await
        .unwrap();
    check(r, StatusCode::BAD_REQUEST).await;
    // Multipart without a file.
    let form = reqwest::multipart::Form::new().text("entity_id", "agent");
    let r = server.post_form("/upload", KEY_A, form).await;
    check(r, StatusCode::BAD_REQUEST).await;
    // Batch without a file.
    let form = reqwest::multipart::Form::new().text("read_only", "true");
    let r = server.post_form("/upload/batch", KEY_A, form).await;
    check(r, StatusCode::BAD_REQUEST).await;
    // A bad entity_id.
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("x.txt"),
        )
        .text(
            "entity_id",
            "has spaces and is far too long for an entity id",
        );
    let r = server.post_form("/upload", KEY_A, form).await;
    check(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    // A bad read_only.
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("x.txt"),
        )
        .text("read_only", "perhaps");
    let r = server.post_form("/upload/batch", KEY_A, form).await;
    check(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    // Broken multipart.
    let r = server
        .client
        .post(server.url("/upload"))
        .header("x-api-key", KEY_A)
        .header("content-type", "multipart/form-data; boundary=zzz")
        .body("--zzz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nabc")
        .send()
        .await
        .unwrap();
    check(r, StatusCode::BAD_REQUEST).await;
    // Upload into a session that does not exist.
    let (status, body) = server
        .upload("/upload", KEY_A, &[("x.txt", b"x")], &[("session_id", SID)])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Malformed ids.
    for path in [
        format!("/download/short/{FID}"),
        format!("/sessions/{SID}/objects/x"),
        "/files/%00".into(),
    ] {
        let r = server.fetch(&path, KEY_A).await;
        check(r, StatusCode::BAD_REQUEST).await;
    }
    // Unknown route and wrong method.
    check(
        server.fetch("/no/such/route", KEY_A).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    check(
        server.fetch("/upload", KEY_A).await,
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
    // A programmatic call without a body.
    let r = server
        .client
        .post(server.url("/v1/exec/programmatic"))
        .header("x-api-key", KEY_A)
        .send()
        .await
        .unwrap();
    check(r, StatusCode::BAD_REQUEST).await;
    // Profile headers.
    let r = server
        .get(&format!("/files/{SID}"), KEY_A)
        .header("x-codeapi-expected-profile", "weird")
        .send()
        .await
        .unwrap();
    check(r, StatusCode::BAD_REQUEST).await;
    let r = server
        .get(&format!("/files/{SID}"), KEY_A)
        .header("x-codeapi-expected-profile", "stateful")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-codeapi-execution-profile"], "default");
    check(r, StatusCode::CONFLICT).await;
}

#[tokio::test]
async fn responses_carry_a_request_id_profile_and_cors_headers() {
    let server = TestServer::start(&[("CORS_ALLOW_ORIGINS", "https://chat.example")]).await;
    let r = server
        .client
        .get(server.url("/health"))
        .header("origin", "https://chat.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://chat.example"
    );
    assert_eq!(r.headers()["x-codeapi-execution-profile"], "default");
    assert!(!r.headers()["x-request-id"].is_empty());
    // A request id the client sent is kept.
    let r = server
        .client
        .get(server.url("/health"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-me-42");
    // Another origin is not allowed.
    let r = server
        .client
        .get(server.url("/health"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    // Preflight for an upload.
    let r = server
        .client
        .request(Method::OPTIONS, server.url("/v1/upload"))
        .header("origin", "https://chat.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-api-key")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert!(
        r.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
}

#[tokio::test]
async fn health_is_public_and_metrics_count_requests() {
    let server = TestServer::start(&[]).await;
    for prefix in ["", "/v1"] {
        let r = server
            .client
            .get(server.url(&format!("{prefix}/health")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let h: Value = r.json().await.unwrap();
        assert_eq!(h["status"], "healthy");
        assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
        assert!(h["uptime_seconds"].is_u64());
        assert_eq!(h["active_sessions"], 0);
    }
    server
        .upload("/upload", KEY_A, &[("m.txt", b"12345")], &[])
        .await;
    let text = server.fetch("/metrics", KEY_A).await.text().await.unwrap();
    assert!(
        text.contains(r#"http_requests_total{route="/upload",method="POST",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("code_interpreter_sessions 1"), "{text}");
    assert!(text.contains("code_interpreter_files 1"), "{text}");
    assert!(text.contains("code_interpreter_stored_bytes 5"), "{text}");
}

#[tokio::test]
async fn openapi_and_docs_are_served_without_a_key_and_without_any_download() {
    let server = TestServer::start(&[("PUBLIC_BASE_URL", "https://ci.example.org/")]).await;
    let doc: Value = server
        .client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(doc["servers"][0]["url"], "https://ci.example.org");
    let upload = &doc["paths"]["/upload"]["post"];
    assert!(upload["requestBody"]["content"]["multipart/form-data"].is_object());
    assert!(upload["responses"]["200"].is_object());
    assert!(doc["components"]["schemas"]["FileObject"].is_object());
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
    let v1: Value = server
        .client
        .get(server.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v1, doc);

    let page = server
        .client
        .get(server.url("/docs/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    // Its assets come from this server, not a CDN.
    assert!(!html.contains("https://"), "{html}");
    let init = server
        .client
        .get(server.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("/openapi.json"), "{init}");
    let js = server
        .client
        .get(server.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), StatusCode::OK);
    assert!(js.bytes().await.unwrap().len() > 100_000);

    // The root answers JSON or, for browsers, a page.
    let root: Value = server
        .client
        .get(server.url("/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(root["name"], "code-interpreter");
    assert!(root["endpoints"].is_object());
    let html = server
        .client
        .get(server.url("/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("/docs"));
}

#[test]
fn a_bad_setting_stops_start_up_naming_the_variable() {
    for (var, value) in [
        ("PORT", "eighty"),
        ("LOG_REQUESTS", "perhaps"),
        ("MAX_UPLOAD_BYTES", "0"),
        ("LOG_FORMAT", "xml"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_code-interpreter"))
            .arg("serve")
            .env(var, value)
            .env("DATA_DIR", std::env::temp_dir().join("ci-never-used"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var), "{var}: {stderr}");
    }
}

#[test]
fn help_lists_every_setting_and_version_prints() {
    let help = Command::new(env!("CARGO_BIN_EXE_code-interpreter"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for var in [
        "PORT",
        "HOST",
        "DATA_DIR",
        "CODE_INTERPRETER_API_KEY",
        "CORS_ALLOW_ORIGINS",
        "SESSION_TTL_SECONDS",
        "MAX_UPLOAD_BYTES",
        "LOG_FORMAT",
    ] {
        assert!(text.contains(var), "{var} missing from --help");
    }
    assert!(text.contains("doctor"));
    let version = Command::new(env!("CARGO_BIN_EXE_code-interpreter"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn doctor_prints_a_table_of_the_machine() {
    let out = Command::new(env!("CARGO_BIN_EXE_code-interpreter"))
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for row in [
        "bubblewrap",
        "namespaces",
        "cgroups",
        "python",
        "javascript",
        "go",
        "cpp",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(row)),
            "{row} missing:\n{text}"
        );
    }
    // A runtime dir with nothing in it makes doctor fail, naming what is missing.
    let out = Command::new(env!("CARGO_BIN_EXE_code-interpreter"))
        .arg("doctor")
        .env("RUNTIME_DIR", std::env::temp_dir().join("no-runtimes-here"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("MISSING") && text.contains("scripts/bootstrap"),
        "{text}"
    );
}

#[test]
fn json_request_logs_carry_the_request_id_and_mask_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_code-interpreter"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", port.to_string())
        .env("DATA_DIR", dir.path().join("data"))
        .env("CODE_INTERPRETER_API_KEY", KEY_A)
        .env("KERNEL_POOL_SIZE", "0")
        .env("LOG_FORMAT", "json")
        .env("LOG_REQUESTS", "yes")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/files/{SID}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client
                .get(&url)
                .header("x-api-key", KEY_A)
                .header("x-request-id", "req-log-1")
                .send()
                .await
            {
                assert_eq!(r.status(), StatusCode::OK);
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("server did not start");
    });
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(KEY_A),
        "the key leaked into the log: {stderr}"
    );
    let line = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "request" && l["span"]["id"] == "req-log-1")
        .unwrap_or_else(|| panic!("no JSON request line with the request id: {stderr}"));
    assert_eq!(line["fields"]["status"], "200");
    assert_eq!(line["fields"]["path"], format!("/files/{SID}"));
    assert_eq!(line["fields"]["key"], "key-…");
}
