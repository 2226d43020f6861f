//! Descriptors: what the server holds never reaches user code, and no client can take all
//! of the server's descriptors with one upload.

mod common;

use std::ffi::CString;
use std::time::Duration;

use common::{KEY_A, KEY_B, TestServer, exec};
use reqwest::StatusCode;
use serde_json::json;

const SECRET: &str = "inherited-descriptor-secret-93b1";

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn a_descriptor_the_server_inherited_never_reaches_a_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("root-only.txt");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // Opened without O_CLOEXEC, as a careless parent would: the server inherits it.
    let path = CString::new(secret.to_str().unwrap()).unwrap();
    // SAFETY: a plain open of a valid path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    assert!(fd > 2);
    let server = TestServer::start(&[]).await;
    let held = std::fs::read_link(format!("/proc/{}/fd/{fd}", server.pid())).unwrap();
    assert_eq!(
        held, secret,
        "the server should have inherited the descriptor"
    );

    let (_, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "code": format!("ls /proc/self/fd | tr '\\n' ' '; echo; cat /proc/self/fd/{fd} 2>&1; cat <&{fd} 2>&1; true")}),
    )
    .await;
    let out = format!("{}{}", body["stdout"], body["stderr"]);
    assert!(!out.contains(SECRET), "{out}");
    // ls sees its stdio and the directory it reads, nothing else.
    assert!(
        body["stdout"].as_str().unwrap().starts_with("0 1 2 3 \n"),
        "{body}"
    );

    let code = format!(
        "import os\nlinks = []\nfor fd in os.listdir('/proc/self/fd'):\n    try:\n        links.append(os.readlink(f'/proc/self/fd/{{fd}}'))\n    except OSError:\n        pass\nprint([l for l in links if 'root-only' in l])\ntry:\n    print(os.read({fd}, 100))\nexcept OSError as e:\n    print('refused', e.errno)\n"
    );
    let (_, body) = exec(&server, KEY_A, json!({"lang": "py", "code": code})).await;
    let out = format!("{}{}", body["stdout"], body["stderr"]);
    assert!(!out.contains(SECRET), "{out}");
    assert!(
        body["stdout"].as_str().unwrap().starts_with("[]\n"),
        "{body}"
    );
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
}

#[tokio::test]
async fn the_soft_descriptor_limit_is_raised_at_start() {
    let server = TestServer::start(&[]).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers[0], numbers[1], "{line}");
}

/// A multipart body of `parts` tiny files, ended or left hanging.
fn multipart_parts(parts: usize) -> Vec<Vec<u8>> {
    (0..parts)
        .map(|i| {
            format!(
                "--XBOUNDARYX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f{i}.txt\"\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
            )
            .into_bytes()
        })
        .collect()
}

fn upload_request(
    server: &TestServer,
    key: &str,
    chunks: Vec<Vec<u8>>,
    hang: bool,
) -> reqwest::RequestBuilder {
    let tail = (!hang).then(|| b"--XBOUNDARYX--\r\n".to_vec());
    let stream = futures::stream::iter(chunks.into_iter().chain(tail).map(Ok::<_, std::io::Error>))
        .chain(futures::stream::unfold(hang, |hang| async move {
            if hang {
                // Never end: a client that stalls mid-upload.
                std::future::pending::<()>().await;
            }
            None::<(Result<Vec<u8>, std::io::Error>, bool)>
        }));
    server
        .client
        .post(server.url("/upload"))
        .header("x-api-key", key)
        .header("content-type", "multipart/form-data; boundary=XBOUNDARYX")
        .body(reqwest::Body::wrap_stream(stream))
}

use futures::StreamExt;

#[tokio::test]
async fn an_upload_of_2000_parts_is_refused_while_another_tenant_runs() {
    let server = TestServer::start(&[]).await;
    let upload = upload_request(&server, KEY_A, multipart_parts(2000), false).send();
    let run = exec(
        &server,
        KEY_B,
        json!({"lang": "bash", "code": "echo still here"}),
    );
    let (upload, (status, body)) = tokio::join!(upload, run);
    let upload = upload.unwrap();
    assert_eq!(upload.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let detail: serde_json::Value = upload.json().await.unwrap();
    assert_eq!(detail["error"], "too_many_files", "{detail}");
    assert!(
        detail["detail"]
            .as_str()
            .unwrap()
            .contains("at most 200 files")
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["stdout"], "still here\n", "{body}");
    assert_eq!(server.staged_files(), 0);
    assert_eq!(server.session_dirs(), 1, "only the run's session exists");
}

#[tokio::test]
async fn a_stalled_upload_of_many_parts_holds_no_descriptor_per_part_and_times_out() {
    let server =
        TestServer::start(&[("MAX_UPLOAD_FILES", "5000"), ("UPLOAD_IDLE_SECONDS", "4")]).await;
    let baseline = open_fds(server.pid());
    let upload = tokio::spawn(upload_request(&server, KEY_A, multipart_parts(1500), true).send());
    // Wait until every part is staged (the form is read as it arrives; a busy machine may
    // take many seconds).
    let mut staged = 0;
    for _ in 0..1200 {
        staged = server.staged_files();
        if staged == 1500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(staged, 1500);
    let held = open_fds(server.pid());
    assert!(
        held < baseline + 50,
        "{held} descriptors open with 1500 parts staged (baseline {baseline})"
    );
    let (status, body) = exec(&server, KEY_B, json!({"lang": "bash", "code": "echo fine"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["stdout"], "fine\n");

    // The stalled body is dropped after UPLOAD_IDLE_SECONDS, and its parts with it.
    let answer = tokio::time::timeout(Duration::from_secs(30), upload)
        .await
        .expect("the server answered a stalled upload")
        .unwrap();
    if let Ok(response) = answer {
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    }
    for _ in 0..600 {
        if server.staged_files() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.staged_files(), 0);
    assert_eq!(
        server.session_dirs(),
        1,
        "the stalled upload made no session"
    );
}
