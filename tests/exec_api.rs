//! POST /exec through a real server, real sandboxes and real toolchains.

mod common;

use std::time::Duration;

use common::{KEY_A, KEY_B, TestServer, exec};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn run(server: &TestServer, lang: &str, code: &str) -> Value {
    let (status, body) = exec(server, KEY_A, json!({"lang": lang, "code": code})).await;
    assert_eq!(status, StatusCode::OK, "{lang}: {body}");
    body
}

// Hello world, files, errors and the build cache of every language are in tests/languages.rs.

#[tokio::test]
async fn exit_codes_pass_through_and_output_is_exact() {
    let server = TestServer::start(&[]).await;
    for (lang, code, out, err) in [
        ("bash", "echo out; echo oops >&2", "out\n", "oops\n"),
        (
            "py",
            "import sys\nprint('out')\nprint('oops', file=sys.stderr)",
            "out\n",
            "oops\n",
        ),
        (
            "ts",
            "console.log('out'); console.error('oops')",
            "out\n",
            "oops\n",
        ),
    ] {
        let body = run(&server, lang, code).await;
        assert_eq!(body["stdout"], out, "{lang}: {body}");
        assert_eq!(body["stderr"], err, "{lang}: {body}");
        assert_eq!(body["run"]["code"], 0);
        assert_eq!(body["code"], 0);
        assert_eq!(body["run"]["output"], format!("{out}{err}"));
        assert_eq!(body["session_id"].as_str().unwrap().len(), 21);
        assert!(body["run"]["wall_time"].as_f64().unwrap() > 0.0);
    }
    for (lang, code) in [
        ("bash", "exit 3"),
        ("sh", "exit 3"),
        ("py", "import sys; sys.exit(3)"),
        ("js", "process.exit(3)"),
        ("ts", "process.exit(3 as number)"),
        ("c", "int main(void) { return 3; }"),
        (
            "go",
            "package main\nimport \"os\"\nfunc main() { os.Exit(3) }",
        ),
    ] {
        let body = run(&server, lang, code).await;
        assert_eq!(body["run"]["status"], "error", "{lang}: {body}");
        assert_eq!(body["run"]["code"], 3, "{lang}");
    }
    // Strict mode: the first failing command stops a bash script.
    let body = run(&server, "bash", "false\necho not reached").await;
    assert_eq!(body["stdout"], "");
    assert_eq!(body["run"]["code"], 1);
    let body = run(&server, "bash", "#!/bin/bash\nfalse\necho not reached").await;
    assert_eq!(body["stdout"], "");
}

#[tokio::test]
async fn args_are_passed_exactly_as_a_list_or_split_like_a_shell() {
    let server = TestServer::start(&[]).await;
    let code = "import sys, json; print(json.dumps(sys.argv[1:]))";
    let (_, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "py", "code": code, "args": ["a b", "it's", "\"q\""]}),
    )
    .await;
    assert_eq!(body["stdout"], "[\"a b\", \"it's\", \"\\\"q\\\"\"]\n");
    let (_, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "py", "code": code, "args": "one 'two three' \"four five\""}),
    )
    .await;
    assert_eq!(body["stdout"], "[\"one\", \"two three\", \"four five\"]\n");
    let (_, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "code": "printf '<%s>' \"$@\"", "args": ["a  b", ""]}),
    )
    .await;
    assert_eq!(body["stdout"], "<a  b><>");
    let (status, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "py", "code": code, "args": "unclosed 'quote"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn node_runs_commonjs_and_es_modules() {
    let server = TestServer::start(&[]).await;
    let cjs = run(
        &server,
        "js",
        "const path = require('path'); console.log(path.basename('/a/b.txt'))",
    )
    .await;
    assert_eq!(cjs["stdout"], "b.txt\n", "{cjs}");
    let esm = run(&server, "javascript", "import { basename } from 'node:path';\nconsole.log(basename('/x/y.md'));\nawait Promise.resolve();").await;
    assert_eq!(esm["stdout"], "y.md\n", "{esm}");
    let ts_esm = run(
        &server,
        "typescript",
        "import { EOL } from 'node:os';\nconst s: string = 'ok';\nprocess.stdout.write(s + EOL);",
    )
    .await;
    assert_eq!(ts_esm["stdout"], "ok\n", "{ts_esm}");
}

#[tokio::test]
async fn output_files_are_exactly_the_created_and_changed_ones() {
    let server = TestServer::start(&[]).await;
    let (_, up) = server
        .upload(
            "/upload",
            KEY_A,
            &[("keep.txt", b"same"), ("edit.txt", b"before")],
            &[],
        )
        .await;
    let sid = up["session_id"].as_str().unwrap();
    let edit_id = up["files"][1]["id"].as_str().unwrap();
    let (_, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "session_id": sid, "code": "echo after >> edit.txt; mkdir -p out; echo new > out/made.csv; ls"}),
    )
    .await;
    assert_eq!(body["session_id"], sid);
    assert_eq!(body["stdout"], "edit.txt\nkeep.txt\nout\n");
    let mut names = common::names(&body["files"]);
    names.sort();
    assert_eq!(names, ["edit.txt", "out/made.csv"], "{body}");
    let edited = body["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "edit.txt")
        .unwrap();
    assert_ne!(edited["id"], edit_id, "a changed file gets a new id");
    for f in body["files"].as_array().unwrap() {
        let r = server.fetch(f["path"].as_str().unwrap(), KEY_A).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let made = body["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "out/made.csv")
        .unwrap();
    let text = server
        .fetch(made["path"].as_str().unwrap(), KEY_A)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(text, "new\n");

    // A run that touches nothing reports nothing; deleting an input is reported.
    let (_, quiet) = exec(
        &server,
        KEY_A,
        json!({"lang": "sh", "session_id": sid, "code": "cat keep.txt"}),
    )
    .await;
    assert_eq!(quiet["files"], json!([]));
    assert_eq!(quiet["stdout"], "same");
    let list: Value = server.get_json(&format!("/files/{sid}"), KEY_A).await;
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
}

#[tokio::test]
async fn referenced_files_are_copied_in_for_both_librechat_shapes() {
    let server = TestServer::start(&[]).await;
    let (_, up) = server
        .upload("/upload", KEY_A, &[("data.csv", b"a,b\n1,2\n")], &[])
        .await;
    let sid = up["session_id"].as_str().unwrap();
    let fid = up["files"][0]["id"].as_str().unwrap();

    // 3.x shape, from another session; the run modifies its copy.
    let (status, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "code": "cat /mnt/data/data.csv; echo 3,4 >> data.csv",
               "files": [{"id": fid, "resource_id": "res-1", "name": "data.csv", "storage_session_id": sid, "kind": "user"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stdout"], "a,b\n1,2\n");
    assert_ne!(
        body["session_id"], sid,
        "a reference never moves the run into another session"
    );
    let changed = &body["files"][0];
    assert_eq!(changed["name"], "data.csv");
    assert_eq!(changed["resource_id"], "res-1");
    assert_eq!(changed["kind"], "user");
    assert_eq!(changed["modified_from"]["id"], fid);
    // The source is untouched: a copy, not a link.
    let original = server
        .fetch(&format!("/download/{sid}/{fid}"), KEY_A)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(original, "a,b\n1,2\n");

    // 2.x shape; an unchanged input is echoed back as inherited.
    let (_, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "py", "code": "print(open('data.csv').read().count(','))",
               "files": [{"id": fid, "session_id": sid, "name": "data.csv"}]}),
    )
    .await;
    assert_eq!(body["stdout"], "2\n");
    assert_eq!(body["files"][0]["inherited"], true);
    assert_eq!(body["files"][0]["id"], fid);

    // A missing reference is a 404 naming it; another tenant's file is missing too.
    let (status, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "code": "true", "files": [{"id": "AAAAAAAAAAAAAAAAAAAAA", "session_id": sid, "name": "gone.csv"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["detail"].as_str().unwrap().contains("gone.csv"));
    let (status, _) = exec(
        &server,
        KEY_B,
        json!({"lang": "bash", "code": "true", "files": [{"id": fid, "session_id": sid, "name": "data.csv"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn sessions_keep_files_between_runs_and_entities_find_their_session() {
    let server = TestServer::start(&[]).await;
    let (_, first) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "code": "echo 1 > state.txt", "entity_id": "agent_1"}),
    )
    .await;
    let sid = first["session_id"].as_str().unwrap();
    let (_, second) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "code": "cat state.txt", "entity_id": "agent_1"}),
    )
    .await;
    assert_eq!(second["session_id"], sid);
    assert_eq!(second["stdout"], "1\n");
    let (_, third) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "code": "cat state.txt", "session_id": sid}),
    )
    .await;
    assert_eq!(third["stdout"], "1\n");
    // Another tenant naming the session gets a fresh one, and no hint of the first.
    let (_, other) = exec(
        &server,
        KEY_B,
        json!({"lang": "bash", "code": "ls", "session_id": sid}),
    )
    .await;
    assert_ne!(other["session_id"], sid);
    assert_eq!(other["stdout"], "");
}

#[tokio::test]
async fn runs_on_one_session_take_turns() {
    let server = TestServer::start(&[]).await;
    let (_, first) = exec(&server, KEY_A, json!({"lang": "bash", "code": "true"})).await;
    let sid = first["session_id"].as_str().unwrap().to_owned();
    let runs = ["A", "B", "C"].map(|tag| {
        let sid = sid.clone();
        let server = &server;
        async move {
            let code = format!("echo {tag}-start >> log; sleep 0.4; echo {tag}-end >> log");
            exec(
                server,
                KEY_A,
                json!({"lang": "bash", "code": code, "session_id": sid}),
            )
            .await
        }
    });
    futures::future::join_all(runs).await;
    let (_, log) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "code": "cat log", "session_id": sid}),
    )
    .await;
    let lines: Vec<&str> = log["stdout"].as_str().unwrap().lines().collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    for pair in lines.chunks(2) {
        let tag = &pair[0][..1];
        assert_eq!(
            pair,
            [format!("{tag}-start"), format!("{tag}-end")],
            "{lines:?}"
        );
    }
}

#[tokio::test]
async fn a_timeout_stops_the_run_and_keeps_earlier_output() {
    let server = TestServer::start(&[]).await;
    let (_, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "code": "echo before; sleep 30; echo after", "timeout": 1000}),
    )
    .await;
    assert_eq!(body["run"]["status"], "timeout", "{body}");
    assert_eq!(body["stdout"], "before\n");
    assert!(
        body["run"]["message"]
            .as_str()
            .unwrap()
            .contains("time limit")
    );
    assert!(body["stderr"].as_str().unwrap().contains("[sandbox]"));
    assert!(body["run"]["wall_time"].as_f64().unwrap() < 10_000.0);
}

#[tokio::test]
async fn bad_exec_requests_get_clear_4xx_answers() {
    let server = TestServer::start(&[("MAX_CODE_BYTES", "1000")]).await;
    let (status, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "cobol", "code": "DISPLAY 1."}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("Unsupported language 'cobol'") && detail.contains("python"),
        "{detail}"
    );
    let (status, _) = exec(&server, KEY_A, json!({"code": "print(1)"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = exec(&server, KEY_A, json!({"lang": "py"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "py", "code": "#".repeat(2000)}),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (status, _) = exec(
        &server,
        KEY_A,
        json!({"lang": "py", "code": "1", "entity_id": "bad id!"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = exec(
        &server,
        KEY_A,
        json!({"lang": "py", "code": "1", "files": [{"name": "x"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = server
        .client
        .post(server.url("/exec"))
        .header("x-api-key", KEY_A)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = server
        .client
        .post(server.url("/exec"))
        .json(&json!({"lang": "py", "code": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_missing_runtime_is_a_503_naming_it() {
    let server = TestServer::start(&[("RUNTIME_DIR", "/nonexistent-runtime-dir")]).await;
    let (status, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "python", "code": "print(1)"}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("python"));
    // Languages that do not need RUNTIME_DIR still work.
    let (status, _) = exec(&server, KEY_A, json!({"lang": "bash", "code": "true"})).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn health_and_libraries_list_the_real_runtimes() {
    let server = TestServer::start(&[]).await;
    // Versions are probed in the background at start.
    let mut health = Value::Null;
    for _ in 0..100 {
        health = server.health().await;
        if health["runtimes"]
            .as_object()
            .is_some_and(|r| r.len() >= 10)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for lang in [
        "python",
        "bash",
        "javascript",
        "typescript",
        "go",
        "c",
        "cpp",
        "java",
    ] {
        assert!(health["runtimes"][lang].is_string(), "{lang}: {health}");
    }
    assert_eq!(health["sandbox"]["mode"], "bwrap");
    assert_eq!(health["sandbox"]["network"], false);
    assert_eq!(health["sandbox"]["seccomp"], true);

    let libs: Value = server.get_json("/libraries?runtime=python", KEY_A).await;
    let names: Vec<&str> = libs[0]["libraries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    for pkg in ["numpy", "pandas", "matplotlib", "ipykernel"] {
        assert!(
            names.iter().any(|n| n.eq_ignore_ascii_case(pkg)),
            "{pkg} missing: {names:?}"
        );
    }
    let r = server.fetch("/libraries?runtime=cobol", KEY_A).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn runs_keep_working_with_many_idle_client_connections_open() {
    let server = TestServer::start(&[]).await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    // Idle keep-alive connections take descriptors in the server; launching sandboxes must
    // not depend on which numbers are free.
    let idle: Vec<std::net::TcpStream> = (0..160)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..5 {
        let body = run(&server, "bash", &format!("echo ok-{i}")).await;
        assert_eq!(body["stdout"], format!("ok-{i}\n"), "{body}");
    }
    let py = run(&server, "py", "print('kernel ok')").await;
    assert_eq!(py["stdout"], "kernel ok\n", "{py}");
    drop(idle);
}
