//! GET /sessions/{sid}/notebook: every Python cell a session ran, as a Jupyter notebook,
//! and the copy written under NOTEBOOKS_DIR when the session ends.

mod common;

use base64::Engine;
use common::{KEY_A, KEY_B, TestServer, exec};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn run(server: &TestServer, sid: Option<&str>, code: &str) -> Value {
    let (status, body) = exec(
        server,
        KEY_A,
        json!({"lang": "py", "code": code, "session_id": sid}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn notebook(
    server: &TestServer,
    sid: &str,
    key: &str,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let resp = server
        .fetch(&format!("/v1/sessions/{sid}/notebook"), key)
        .await;
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

/// The checks nbformat 4.5's schema makes that matter here.
fn assert_nbformat(nb: &Value) {
    assert_eq!(nb["nbformat"], 4);
    assert!(nb["nbformat_minor"].as_u64().unwrap() >= 5);
    assert_eq!(nb["metadata"]["kernelspec"]["language"], "python");
    for cell in nb["cells"].as_array().unwrap() {
        let id = cell["id"].as_str().unwrap();
        assert!(
            (1..=64).contains(&id.len())
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert!(cell["source"].is_string());
        if cell["cell_type"] == "code" {
            assert!(cell["execution_count"].is_u64());
            for out in cell["outputs"].as_array().unwrap() {
                match out["output_type"].as_str().unwrap() {
                    "stream" => assert!(
                        out["text"].is_string()
                            && ["stdout", "stderr"].contains(&out["name"].as_str().unwrap())
                    ),
                    "display_data" => {
                        assert!(out["data"].is_object() && out["metadata"].is_object())
                    }
                    "execute_result" => {
                        assert!(out["data"].is_object() && out["execution_count"].is_u64())
                    }
                    "error" => assert!(out["ename"].is_string() && out["traceback"].is_array()),
                    other => panic!("unknown output type {other}"),
                }
            }
        }
    }
}

#[tokio::test]
async fn a_sessions_python_cells_come_back_as_a_notebook_with_images_embedded() {
    let server = TestServer::start(&[]).await;
    let first = run(&server, None, "x = 40\nprint('hello')\nx + 2").await;
    let sid = first["session_id"].as_str().unwrap().to_owned();
    run(
        &server,
        Some(&sid),
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()",
    )
    .await;
    run(&server, Some(&sid), "1 / 0").await;
    // Other languages are not notebook cells.
    let (status, _) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "code": "echo hi", "session_id": sid}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let (status, headers, nb) = notebook(&server, &sid, KEY_A).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/x-ipynb+json");
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .contains(".ipynb")
    );
    assert_nbformat(&nb);
    let cells = nb["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 3, "{nb:#}");
    assert_eq!(cells[0]["source"], "x = 40\nprint('hello')\nx + 2");
    assert_eq!(
        cells
            .iter()
            .map(|c| c["execution_count"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );

    // The value is an execute_result, shown once (not also as stdout).
    let outputs = cells[0]["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2, "{outputs:#?}");
    assert_eq!(
        outputs[0],
        json!({"output_type": "stream", "name": "stdout", "text": "hello\n"})
    );
    assert_eq!(outputs[1]["output_type"], "execute_result");
    assert_eq!(outputs[1]["execution_count"], 1);
    assert_eq!(outputs[1]["data"]["text/plain"], "42");

    let image = cells[1]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["output_type"] == "display_data")
        .expect("the figure is a display_data output");
    let png = base64::engine::general_purpose::STANDARD
        .decode(
            image["data"]["image/png"]
                .as_str()
                .unwrap()
                .replace('\n', ""),
        )
        .unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the image is embedded"
    );

    let error = cells[2]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["output_type"] == "error")
        .expect("the exception is an error output");
    assert_eq!(error["ename"], "ZeroDivisionError");
    assert!(
        !cells[2]["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["name"] == "stderr" && o["text"].as_str().unwrap().contains("Traceback")),
        "the traceback shows once"
    );
    assert_eq!(cells[2]["metadata"]["code_interpreter"]["status"], "error");
}

#[tokio::test]
async fn another_tenant_and_unknown_sessions_get_404_and_a_new_session_an_empty_notebook() {
    let server = TestServer::start(&[]).await;
    let sid = run(&server, None, "print(1)").await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, body) = notebook(&server, &sid, KEY_B).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, unknown) = notebook(&server, "AAAAAAAAAAAAAAAAAAAAA", KEY_A).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body, unknown,
        "a foreign session answers like a missing one"
    );
    let (status, _, _) = notebook(&server, "not-an-id", KEY_A).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let resp = server
        .client
        .get(server.url(&format!("/sessions/{sid}/notebook")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // A session that ran only bash has an empty, valid notebook.
    let (_, bash) = exec(&server, KEY_A, json!({"lang": "bash", "code": "true"})).await;
    let (status, _, nb) = notebook(&server, bash["session_id"].as_str().unwrap(), KEY_A).await;
    assert_eq!(status, StatusCode::OK);
    assert_nbformat(&nb);
    assert_eq!(nb["cells"], json!([]));
}

#[tokio::test]
async fn an_ended_session_leaves_its_notebook_in_notebooks_dir() {
    let keep = tempfile::tempdir().unwrap();
    let dir = keep.path().join("notebooks");
    let server = TestServer::start(&[("NOTEBOOKS_DIR", dir.to_str().unwrap())]).await;
    let sid = run(&server, None, "print('kept')").await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = server
        .delete(&format!("/v1/sessions/{sid}"), KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let written: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{sid}.ipynb"))).unwrap()).unwrap();
    assert_nbformat(&written);
    assert_eq!(written["cells"][0]["source"], "print('kept')");
    assert_eq!(written["cells"][0]["outputs"][0]["text"], "kept\n");
    assert_eq!(
        written["metadata"]["code_interpreter"]["session_id"],
        sid.as_str()
    );
    // The journal is gone with the session, and so is the route.
    assert!(
        !server
            .data_dir
            .join("notebooks")
            .join(format!("{sid}.jsonl"))
            .exists()
    );
    let (status, _, _) = notebook(&server, &sid, KEY_A).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_expired_session_leaves_its_notebook_too() {
    let keep = tempfile::tempdir().unwrap();
    let dir = keep.path().join("nb");
    // A warm kernel makes the cell quick, so the session does not expire while it runs.
    let server = TestServer::start(&[
        ("NOTEBOOKS_DIR", dir.to_str().unwrap()),
        ("SESSION_TTL_SECONDS", "4"),
        ("KERNEL_POOL_SIZE", "1"),
    ])
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while server.health().await["kernels"]["pooled"].as_u64() != Some(1) {
        assert!(std::time::Instant::now() < deadline, "no kernel was pooled");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let sid = run(&server, None, "21 * 2").await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = dir.join(format!("{sid}.ipynb"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the notebook was not written after expiry"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let written: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        written["cells"][0]["outputs"][0]["data"]["text/plain"],
        "42"
    );
}

#[tokio::test]
async fn a_notebook_stops_growing_at_its_limit_and_says_so() {
    let server = TestServer::start(&[("NOTEBOOK_MAX_MB", "1")]).await;
    let big_output = "print('x' * 600 * 1024)";
    let sid = run(&server, None, big_output).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Its output no longer fits: the code is kept, with a note.
    run(&server, Some(&sid), big_output).await;
    // Not even the code fits: the notebook is full from here on.
    let big_code = format!("# {}\nprint(1)", "y".repeat(500 * 1024));
    run(&server, Some(&sid), &big_code).await;
    run(&server, Some(&sid), "print('late')").await;

    let (status, _, nb) = notebook(&server, &sid, KEY_A).await;
    assert_eq!(status, StatusCode::OK);
    assert_nbformat(&nb);
    let cells = nb["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 3, "two code cells and the closing note");
    assert_eq!(
        cells[0]["outputs"][0]["text"].as_str().unwrap().len(),
        600 * 1024 + 1
    );
    assert_eq!(cells[1]["source"], big_output);
    let note = cells[1]["outputs"].as_array().unwrap();
    assert_eq!(note.len(), 1);
    assert!(note[0]["text"].as_str().unwrap().contains("too large"));
    assert_eq!(cells[2]["cell_type"], "markdown");
    assert!(cells[2]["source"].as_str().unwrap().contains("size limit"));
    let journal = server
        .data_dir
        .join("notebooks")
        .join(format!("{sid}.jsonl"));
    assert!(std::fs::metadata(journal).unwrap().len() <= 1024 * 1024 + 64);
}
