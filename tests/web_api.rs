//! The playground's files and the root document: served without a key, compressed, cached
//! by ETag, fenced by a Content-Security-Policy; the JSON root lists every route.

mod common;

use common::TestServer;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn the_root_lists_every_documented_route_and_says_a_key_is_needed() {
    let server = TestServer::start(&[]).await;
    let root: Value = server
        .client
        .get(server.url("/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(root["auth_required"], true);
    let doc: Value = server
        .client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<&str> = root["endpoints"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let route = format!("{} {path}", method.to_uppercase());
            assert!(
                listed.contains(&route.as_str()),
                "{route} is missing from {listed:?}"
            );
        }
    }
    for route in [
        "POST /exec/stream",
        "POST /mcp",
        "GET /sessions/{session_id}/notebook",
    ] {
        assert!(listed.contains(&route), "{route}");
    }
}

#[tokio::test]
async fn the_page_and_its_assets_need_no_key_and_come_compressed_and_cached() {
    let server = TestServer::start(&[]).await;
    let page = server
        .client
        .get(server.url("/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("assets/app.js") && html.contains("assets/app.css"));

    for path in ["/assets/app.js", "/v1/assets/app.css"] {
        let plain = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(plain.status(), StatusCode::OK, "{path}");
        let etag = plain.headers()["etag"].to_str().unwrap().to_owned();
        let size = plain.bytes().await.unwrap().len();
        let gz = server
            .client
            .get(server.url(path))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(gz.headers()["content-encoding"], "gzip", "{path}");
        assert!(
            gz.bytes().await.unwrap().len() < size / 2,
            "{path} compresses"
        );
        let again = server
            .client
            .get(server.url(path))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
    }
    let missing = server
        .client
        .get(server.url("/assets/secret.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let climb = server
        .client
        .get(server.url("/assets/..%2FCargo.toml"))
        .send()
        .await
        .unwrap();
    assert_eq!(climb.status(), StatusCode::NOT_FOUND);
}
