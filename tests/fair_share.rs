//! Tenants share the run slots fairly: one tenant's flood neither blocks another tenant's
//! run nor queues without bound.

mod common;

use common::{KEY_A, KEY_B, TestServer, exec, exec_in_background};
use serde_json::json;

#[tokio::test]
async fn another_tenants_run_completes_while_one_tenant_fills_its_share() {
    // Four slots, three per tenant: tenant A's eight long runs hold three and queue five.
    let server = TestServer::start(&[
        ("MAX_CONCURRENT_RUNS", "4"),
        ("MAX_CONCURRENT_RUNS_PER_TENANT", "3"),
    ])
    .await;
    let floods: Vec<_> = (0..8)
        .map(|_| {
            exec_in_background(
                &server,
                KEY_A,
                json!({"lang": "bash", "code": "sleep 20; echo done"}),
            )
        })
        .collect();
    // Let A's runs take their slots.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (status, body) = exec(&server, KEY_B, json!({"lang": "bash", "code": "echo hi"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stdout"], "hi\n", "{body}");
    // B finished while every one of A's twenty-second runs was still going.
    assert!(
        floods.iter().all(|f| !f.is_finished()),
        "tenant B waited for tenant A's runs"
    );
    for f in floods {
        f.abort();
    }
}

#[tokio::test]
async fn a_tenant_whose_queue_is_full_gets_429_and_others_do_not() {
    let server = TestServer::start(&[
        ("MAX_CONCURRENT_RUNS", "2"),
        ("MAX_CONCURRENT_RUNS_PER_TENANT", "1"),
        ("MAX_QUEUED_RUNS_PER_TENANT", "1"),
    ])
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(exec_in_background(
            &server,
            KEY_A,
            json!({"lang": "bash", "code": "sleep 20"}),
        ));
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    // One of A's runs holds A's share, one waits: a third is refused before it starts.
    let resp = server
        .client
        .post(server.url("/v1/exec"))
        .header("x-api-key", KEY_A)
        .json(&json!({"lang": "bash", "code": "echo never"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert!(body["retry_after_seconds"].as_u64().is_some(), "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("MAX_QUEUED_RUNS_PER_TENANT"),
        "{body}"
    );
    let (status, body) = exec(&server, KEY_B, json!({"lang": "bash", "code": "echo hi"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stdout"], "hi\n");
    for h in held {
        h.abort();
    }
}
