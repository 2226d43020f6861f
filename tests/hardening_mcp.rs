//! An MCP session belongs to the tenant that opened it: another tenant that knows its
//! `Mcp-Session-Id` can neither call into it, read its stream, nor end it.

mod common;

use common::{KEY_A, KEY_B, TestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SESSION: &str = "mcp-session-id";

fn post(
    server: &TestServer,
    key: &str,
    session: Option<&str>,
    body: Value,
) -> reqwest::RequestBuilder {
    let mut req = server
        .client
        .post(server.url("/mcp"))
        .header("x-api-key", key)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body);
    if let Some(id) = session {
        req = req.header(SESSION, id);
    }
    req
}

/// A `tools/list` in the session, answered with the status.
async fn list_tools(server: &TestServer, key: &str, session: &str) -> StatusCode {
    let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let response = post(server, key, Some(session), body).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    if status == StatusCode::OK {
        assert!(text.contains("execute_code"), "{text}");
    }
    status
}

#[tokio::test]
async fn another_tenant_cannot_use_or_end_an_mcp_session() {
    let server = TestServer::start(&[]).await;
    let init = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "hardening-test", "version": "1"}
        }
    });
    let response = post(&server, KEY_A, None, init).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let id = response.headers()[SESSION].to_str().unwrap().to_owned();
    let _ = response.text().await.unwrap();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let response = post(&server, KEY_A, Some(&id), initialized)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(list_tools(&server, KEY_A, &id).await, StatusCode::OK);

    // Tenant B with A's id: as if there were no such session, for calls, streams, ends.
    assert_eq!(list_tools(&server, KEY_B, &id).await, StatusCode::NOT_FOUND);
    let stream = server
        .client
        .get(server.url("/mcp"))
        .header("x-api-key", KEY_B)
        .header("accept", "text/event-stream")
        .header(SESSION, &id)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::NOT_FOUND);
    let end = server
        .client
        .delete(server.url("/mcp"))
        .header("x-api-key", KEY_B)
        .header(SESSION, &id)
        .send()
        .await
        .unwrap();
    assert_eq!(end.status(), StatusCode::ACCEPTED);
    assert_eq!(list_tools(&server, KEY_A, &id).await, StatusCode::OK);

    // A ends its own session.
    let end = server
        .client
        .delete(server.url("/mcp"))
        .header("x-api-key", KEY_A)
        .header("mcp-protocol-version", "2025-06-18")
        .header(SESSION, &id)
        .send()
        .await
        .unwrap();
    assert!(end.status().is_success(), "{}", end.status());
    assert_eq!(list_tools(&server, KEY_A, &id).await, StatusCode::NOT_FOUND);
}
