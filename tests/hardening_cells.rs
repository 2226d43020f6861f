//! What one run leaves must not reach past it: a read-only input comes out of every run
//! as it went in, and output from a cell's background threads and processes never lands
//! in a later cell.

mod common;

use common::{KEY_A, TestServer, exec};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn run(server: &TestServer, body: Value) -> Value {
    let (status, body) = exec(server, KEY_A, body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn a_read_only_input_comes_back_unchanged_from_runs_that_attack_it() {
    let server = TestServer::start(&[]).await;
    let (status, up) = server
        .upload(
            "/upload/batch",
            KEY_A,
            &[("skill.md", b"original\n")],
            &[("read_only", "true"), ("kind", "skill")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{up}");
    let sid = up["session_id"].as_str().unwrap().to_owned();
    let fid = up["files"][0]["fileId"].as_str().unwrap().to_owned();
    let input = json!([{"id": fid, "session_id": sid, "name": "skill.md"}]);
    // Each with whether the file is certainly changed (a copy put back is the server's, so
    // a later write in place is refused rather than undone).
    let attacks = [
        // Written in place with its mtime set back: only the ctime tells.
        (
            "py",
            "import os\nst = os.stat('skill.md')\nwith open('skill.md', 'r+') as f:\n    f.write('XXXXXXXX')\nos.utime('skill.md', ns=(st.st_atime_ns, st.st_mtime_ns))",
            true,
        ),
        ("bash", "echo changed > skill.md || true", false),
        ("bash", "rm -f skill.md && echo new > skill.md", true),
        ("bash", "rm -f skill.md", true),
        ("bash", "ln -sf /etc/passwd skill.md", true),
    ];
    for (lang, code, changed) in attacks {
        let body = run(
            &server,
            json!({"lang": lang, "code": code, "session_id": sid, "files": input}),
        )
        .await;
        let message = body["run"]["message"].as_str().unwrap_or_default();
        assert!(
            !changed || message.contains("put back: skill.md"),
            "{code}: {body}"
        );
        let listed = server.get_json(&format!("/files/{sid}"), KEY_A).await;
        assert_eq!(listed.as_array().unwrap().len(), 1, "{code}: {listed}");
        let download = server.fetch(&format!("/download/{sid}/{fid}"), KEY_A).await;
        assert_eq!(download.status(), StatusCode::OK, "{code}");
        assert_eq!(download.text().await.unwrap(), "original\n", "{code}");
        let read = run(
            &server,
            json!({"lang": "bash", "code": "cat skill.md", "session_id": sid}),
        )
        .await;
        assert_eq!(read["stdout"], "original\n", "{code}: {read}");
    }
}

#[tokio::test]
async fn background_output_of_a_cell_never_lands_in_the_next_one() {
    let server = TestServer::start(&[]).await;
    let first = run(
        &server,
        json!({"lang": "py", "code": r#"
import subprocess, threading, time
threading.Thread(target=lambda: (time.sleep(1.5), print("late thread")), daemon=True).start()
subprocess.Popen("sleep 1.5; echo late process; echo late error >&2", shell=True)
print("cell one")
"#}),
    )
    .await;
    assert_eq!(first["stdout"], "cell one\n", "{first}");
    let sid = first["session_id"].as_str().unwrap().to_owned();
    let second = run(
        &server,
        json!({"lang": "py", "session_id": sid, "code": "import time\ntime.sleep(3)\nprint('cell two')"}),
    )
    .await;
    assert_eq!(second["stdout"], "cell two\n", "{second}");
    assert_eq!(second["stderr"], "", "{second}");

    // Output of the cell's own children, threads and pooled tasks is its own.
    let third = run(
        &server,
        json!({"lang": "py", "session_id": sid, "code": r#"
import os, threading
from concurrent.futures import ThreadPoolExecutor
os.system("echo from a child")
t = threading.Thread(target=print, args=("from a thread",))
t.start(); t.join()
pool = ThreadPoolExecutor(1)
pool.submit(print, "pooled once").result()
"#}),
    )
    .await;
    assert_eq!(
        third["stdout"], "from a child\nfrom a thread\npooled once\n",
        "{third}"
    );
    let fourth = run(
        &server,
        json!({"lang": "py", "session_id": sid, "code": "pool.submit(print, 'pooled again').result()"}),
    )
    .await;
    assert_eq!(fourth["stdout"], "pooled again\n", "{fourth}");
}
