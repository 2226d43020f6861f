//! A `/exec` that runs for longer than 2 s starts its answer early (status and headers,
//! then a space every second) so that clients whose idle sockets time out (Node's
//! `http.globalAgent`: 5 s) keep the connection; the JSON follows the spaces. What a
//! client got wrong is still refused with its 4xx first; a run that cannot happen after
//! the answer started says so in the body.

mod common;

use std::time::Duration;

use common::{KEY_A, TestServer, exec};
use reqwest::StatusCode;
use serde_json::{Value, json};

const LONG_BASH: &str = "sleep 4; echo done";

#[tokio::test]
async fn a_long_run_answers_with_spaces_then_json_and_no_content_length() {
    let server = TestServer::start(&[]).await;
    let resp = server
        .client
        .post(server.url("/v1/exec"))
        .header("x-api-key", KEY_A)
        .json(&json!({"lang": "bash", "code": LONG_BASH}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let headers = resp.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.get("content-length").is_none(), "{headers:?}");
    assert_eq!(headers["transfer-encoding"], "chunked");
    assert!(headers.get("x-codeapi-execution-profile").is_some());
    let bytes = resp.bytes().await.unwrap();
    let text = std::str::from_utf8(&bytes).unwrap();
    let json_at = text.find('{').expect("a JSON object follows");
    assert!(
        json_at > 0,
        "the answer started before the result: {text:?}"
    );
    assert!(text[..json_at].bytes().all(|b| b == b' '), "{text:?}");
    let body: Value = serde_json::from_str(text).unwrap();
    assert_eq!(body["stdout"], "done\n");
    assert_eq!(body["run"]["status"], "success");
    assert!(body.get("error").is_none(), "{body}");
}

#[tokio::test]
async fn reqwest_and_python_json_clients_read_the_spaced_answer() {
    let server = TestServer::start(&[]).await;
    let (status, body) = exec(&server, KEY_A, json!({"lang": "bash", "code": LONG_BASH})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["stdout"], "done\n", "reqwest's .json(): {body}");

    // Python's standard client, as a seed-compatible Python caller would read it.
    let python = std::env::var("RUNTIME_DIR").unwrap_or_else(|_| "/opt/code-interpreter".into())
        + "/python/bin/python";
    let script = r#"
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=json.dumps({"lang": "bash", "code": sys.argv[3]}).encode(),
                             headers={"x-api-key": sys.argv[2], "content-type": "application/json"})
with urllib.request.urlopen(req, timeout=120) as r:
    print(json.load(r)["stdout"], end="")
"#;
    let url = server.url("/v1/exec");
    let out = tokio::process::Command::new(python)
        .args(["-c", script, &url, KEY_A, LONG_BASH])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
}

#[tokio::test]
async fn client_mistakes_are_still_refused_with_their_status_first() {
    let server = TestServer::start(&[]).await;
    let missing_input = json!({
        "lang": "bash", "code": LONG_BASH,
        "files": [{"id": "AAAAAAAAAAAAAAAAAAAAA", "session_id": "BBBBBBBBBBBBBBBBBBBBB", "name": "x.csv"}],
    });
    let (status, body) = exec(&server, KEY_A, missing_input).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = exec(&server, KEY_A, json!({"lang": "cobol", "code": "x"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = exec(&server, KEY_A, json!({"lang": "py"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

/// One kernel, held by a long cell; `QUEUE_WAIT_SECONDS` decides what a second
/// conversation's call gets.
async fn second_call_while_the_only_kernel_is_busy(
    queue_wait: &str,
    holder: &str,
) -> (Value, Value) {
    let server =
        TestServer::start(&[("MAX_SESSIONS", "1"), ("QUEUE_WAIT_SECONDS", queue_wait)]).await;
    let first = exec(&server, KEY_A, json!({"lang": "py", "code": holder}));
    let second = async {
        // Long enough for the first call to hold the kernel (its claim is atomic).
        tokio::time::sleep(Duration::from_secs(2)).await;
        exec(
            &server,
            KEY_A,
            json!({"lang": "py", "code": "print('second')"}),
        )
        .await
    };
    let ((s1, first), (s2, second)) = tokio::join!(first, second);
    assert_eq!(s1, StatusCode::OK, "{first}");
    assert_eq!(s2, StatusCode::OK, "{second}");
    (first, second)
}

#[tokio::test]
async fn a_kernel_that_frees_up_during_the_wait_serves_the_waiting_call() {
    let (first, second) =
        second_call_while_the_only_kernel_is_busy("60", "import time\ntime.sleep(5)").await;
    assert_eq!(first["run"]["status"], "success", "{first}");
    assert_eq!(second["stdout"], "second\n", "{second}");
    assert_eq!(second["run"]["status"], "success", "{second}");
}

#[tokio::test]
async fn kernels_still_busy_after_a_wait_past_two_seconds_answer_in_the_body() {
    let (first, second) =
        second_call_while_the_only_kernel_is_busy("3", "import time\ntime.sleep(9)").await;
    assert_eq!(first["run"]["status"], "success", "{first}");
    assert_eq!(second["error"], "rate_limited", "{second}");
    assert!(
        second["retry_after_seconds"].as_u64().unwrap() > 0,
        "{second}"
    );
    assert_eq!(second["run"]["status"], "error", "{second}");
    assert_eq!(second["stdout"], "");
    let stderr = second["stderr"].as_str().unwrap();
    assert!(
        stderr.starts_with("[sandbox] ") && stderr.contains("busy"),
        "{stderr}"
    );
}
