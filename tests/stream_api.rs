//! POST /exec/stream: Server-Sent Events while code runs, for every language.

mod common;

use std::time::{Duration, Instant};

use common::{KEY_A, TestServer};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Every `data:` frame with the time it arrived.
async fn stream(server: &TestServer, body: Value) -> Vec<(Duration, Value)> {
    let started = Instant::now();
    let resp = server
        .client
        .post(server.url("/v1/exec/stream"))
        .header("x-api-key", KEY_A)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut frames = Vec::new();
    let mut buffer = String::new();
    let mut bytes = resp.bytes_stream();
    while let Some(chunk) = bytes.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(data) = line
                    .strip_prefix("data: ")
                    .or_else(|| line.strip_prefix("data:"))
                {
                    frames.push((started.elapsed(), serde_json::from_str(data).unwrap()));
                }
            }
        }
    }
    frames
}

fn text_of(frames: &[(Duration, Value)], name: &str) -> String {
    frames
        .iter()
        .filter(|(_, f)| f["type"] == "stream" && f["name"] == name)
        .map(|(_, f)| f["text"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn python_output_arrives_while_the_cell_runs_and_done_comes_last() {
    let server = TestServer::start(&[]).await;
    let frames = stream(&server, json!({"lang": "py", "code": "import time\nprint('first', flush=True)\ntime.sleep(2.5)\nprint('second')"})).await;
    assert_eq!(frames[0].1["type"], "session");
    let sid = frames[0].1["session_id"].as_str().unwrap().to_owned();
    let (done_at, done) = frames.last().unwrap();
    assert_eq!(done["type"], "done");
    assert_eq!(done["status"], "success");
    assert_eq!(done["session_id"], sid.as_str());
    assert_eq!(done["stdout"], "first\nsecond\n");
    let first_at = frames
        .iter()
        .find(|(_, f)| f["text"] == "first\n")
        .expect("first line streamed")
        .0;
    assert!(
        *done_at - first_at >= Duration::from_millis(1500),
        "first line was not streamed early: {first_at:?} vs {done_at:?}"
    );
    assert_eq!(text_of(&frames, "stdout"), "first\nsecond\n");
}

#[tokio::test]
async fn rich_outputs_and_errors_have_their_own_frames() {
    let server = TestServer::start(&[]).await;
    let frames = stream(&server, json!({"lang": "py", "code": "import matplotlib.pyplot as plt\nplt.plot([1,2]); plt.show()\n6 * 7"})).await;
    let display = frames
        .iter()
        .find(|(_, f)| f["type"] == "display")
        .expect("display frame")
        .1
        .clone();
    assert!(display["data"]["image/png"].is_string());
    assert_eq!(display["file"]["name"], "figure-1.png");
    let result = frames
        .iter()
        .find(|(_, f)| f["type"] == "result")
        .expect("result frame")
        .1
        .clone();
    assert_eq!(result["data"]["text/plain"], "42");
    let done = &frames.last().unwrap().1;
    assert_eq!(done["files"][0]["name"], "figure-1.png");

    let frames = stream(
        &server,
        json!({"lang": "py", "code": "raise ValueError('bad')"}),
    )
    .await;
    let error = frames
        .iter()
        .find(|(_, f)| f["type"] == "error")
        .expect("error frame")
        .1
        .clone();
    assert_eq!(error["ename"], "ValueError");
    assert_eq!(error["evalue"], "bad");
    assert!(
        error["traceback"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| !l.as_str().unwrap().contains('\u{1b}'))
    );
    assert_eq!(frames.last().unwrap().1["status"], "error");
}

#[tokio::test]
async fn every_language_streams_and_a_timeout_still_ends_with_done() {
    let server = TestServer::start(&[]).await;
    for (lang, code, out) in [
        ("bash", "echo one; sleep 0.3; echo two >&2", "one\n"),
        (
            "js",
            "console.log('one'); setTimeout(() => console.error('two'), 300)",
            "one\n",
        ),
        (
            "go",
            "package main\nimport (\"fmt\"; \"os\"; \"time\")\nfunc main() { fmt.Println(\"one\"); time.Sleep(300 * time.Millisecond); fmt.Fprintln(os.Stderr, \"two\") }",
            "one\n",
        ),
    ] {
        let frames = stream(&server, json!({"lang": lang, "code": code})).await;
        assert_eq!(frames[0].1["type"], "session", "{lang}");
        assert_eq!(text_of(&frames, "stdout"), out, "{lang}");
        assert_eq!(text_of(&frames, "stderr"), "two\n", "{lang}");
        assert_eq!(frames.last().unwrap().1["type"], "done", "{lang}");
    }
    let frames = stream(
        &server,
        json!({"lang": "bash", "code": "echo start; sleep 30", "timeout": 800}),
    )
    .await;
    let done = &frames.last().unwrap().1;
    assert_eq!(done["type"], "done");
    assert_eq!(done["status"], "timeout");
    assert_eq!(done["stdout"], "start\n");
}

#[tokio::test]
async fn a_bad_request_is_refused_before_the_stream_starts() {
    let server = TestServer::start(&[]).await;
    let r = server
        .client
        .post(server.url("/exec/stream"))
        .header("x-api-key", KEY_A)
        .json(&json!({"lang": "cobol", "code": "DISPLAY 'HI'."}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        r.json::<Value>().await.unwrap()["detail"]
            .as_str()
            .unwrap()
            .contains("Unsupported language")
    );
}

#[tokio::test]
async fn health_answers_while_ten_streams_run() {
    let server = TestServer::start(&[]).await;
    let streams = (0..10).map(|i| {
        let server = &server;
        async move {
            stream(
                server,
                json!({"lang": "bash", "code": format!("echo {i}; sleep 2; echo done-{i}")}),
            )
            .await
        }
    });
    let probe = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let started = Instant::now();
        let r = server
            .client
            .get(server.url("/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        started.elapsed()
    };
    let (all, health_took) = tokio::join!(futures::future::join_all(streams), probe);
    eprintln!("/health took {health_took:?} during 10 streams");
    assert!(health_took < Duration::from_secs(2));
    for (i, frames) in all.iter().enumerate() {
        assert_eq!(text_of(frames, "stdout"), format!("{i}\ndone-{i}\n"));
    }
}
