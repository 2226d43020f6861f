//! Stateful Python through real, sandboxed Jupyter kernels.

mod common;

use std::time::{Duration, Instant};

use common::{KEY_A, KEY_B, TestServer, exec};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn py(server: &TestServer, session: Option<&str>, code: &str) -> Value {
    py_with(
        server,
        json!({"lang": "py", "code": code, "session_id": session}),
    )
    .await
}

async fn py_with(server: &TestServer, body: Value) -> Value {
    let (status, body) = exec(server, KEY_A, body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn sid(body: &Value) -> String {
    body["session_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn state_persists_and_sessions_are_separate() {
    let server = TestServer::start(&[("KERNEL_POOL_SIZE", "1")]).await;
    let first = py(
        &server,
        None,
        "import math\nx = 41\nopen('made.txt', 'w').write('hello')\nprint('set')",
    )
    .await;
    assert_eq!(first["stdout"], "set\n");
    assert_eq!(first["stderr"], "");
    assert_eq!(first["run"]["status"], "success");
    assert_eq!(first["run"]["code"], 0);
    let s1 = sid(&first);
    let names = common::names(&first["files"]);
    assert_eq!(names, ["made.txt"]);

    let second = py(
        &server,
        Some(&s1),
        "print(x + 1, math.pi > 3, open('made.txt').read())\nx * 2",
    )
    .await;
    assert_eq!(
        second["stdout"], "42 True hello\n82\n",
        "the last expression's value follows stdout"
    );
    assert_eq!(second["files"], json!([]));

    let other = py(
        &server,
        None,
        "import os\nprint('x' in dir(), sorted(os.listdir('.')))",
    )
    .await;
    assert_ne!(sid(&other), s1);
    assert_eq!(other["stdout"], "False []\n");
}

#[tokio::test]
async fn a_pooled_kernel_serves_a_new_session_and_sees_its_uploads() {
    let server = TestServer::start(&[("KERNEL_POOL_SIZE", "1")]).await;
    // Wait for the pool to fill.
    for _ in 0..150 {
        let h: Value = server.health().await;
        if h["kernels"]["pooled"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, up) = server
        .upload("/upload", KEY_A, &[("input.csv", b"a,b\n1,2\n")], &[])
        .await;
    let s = up["session_id"].as_str().unwrap();
    let body = py(&server, Some(s), "import sys, pandas as pd\nprint('numpy' in sys.modules)\nprint(pd.read_csv('input.csv').shape)").await;
    assert_eq!(body["stdout"], "True\n(1, 2)\n", "{body}");
    let h: Value = server.health().await;
    assert_eq!(h["kernels"]["live"], 1);
}

#[tokio::test]
async fn exceptions_are_errors_with_a_plain_traceback_once() {
    let server = TestServer::start(&[]).await;
    let body = py(&server, None, "print('before')\n1/0").await;
    assert_eq!(body["run"]["status"], "error");
    assert_eq!(body["stdout"], "before\n");
    let err = body["stderr"].as_str().unwrap();
    assert!(err.contains("ZeroDivisionError: division by zero"), "{err}");
    assert_eq!(
        err.matches("ZeroDivisionError: division by zero").count(),
        1,
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "ANSI codes left: {err:?}");

    let body = py(&server, None, "import not_a_real_module_xyz").await;
    let err = body["stderr"].as_str().unwrap();
    assert!(err.contains("ModuleNotFoundError"), "{err}");
    assert!(
        err.contains("[hint] Packages cannot be installed here"),
        "{err}"
    );

    let body = py(&server, None, "import sys\nsys.exit(3)").await;
    assert_eq!(body["run"]["code"], 3);
    assert_eq!(body["run"]["status"], "error");
    let body = py(&server, None, "import sys\nsys.exit(0)").await;
    assert_eq!(body["run"]["status"], "success");
}

#[tokio::test]
async fn args_files_sqlite_and_subprocesses_work_in_mnt_data() {
    let server = TestServer::start(&[("SECRET_TOKEN", "kernel-must-not-see-this")]).await;
    let body = py_with(&server, json!({"lang": "py", "args": ["one", "two words"], "code": r#"
import os, sys, sqlite3, subprocess
print(sys.argv[1:], os.getcwd())
open('/mnt/data/x.csv', 'w').write('a\n1\n')
db = sqlite3.connect('/mnt/data/db.sqlite'); db.execute('create table t(x)'); db.execute('insert into t values (7)'); db.commit()
print(db.execute('select x from t').fetchone()[0])
print(subprocess.run(['ls', '/mnt/data'], capture_output=True, text=True).stdout.split())
print('SECRET_TOKEN' in os.environ, any('kernel-must-not-see-this' in v for v in os.environ.values()))
"#})).await;
    assert_eq!(
        body["stdout"], "['one', 'two words'] /mnt/data\n7\n['db.sqlite', 'x.csv']\nFalse False\n",
        "{body}"
    );
    let mut names = common::names(&body["files"]);
    names.sort();
    assert_eq!(names, ["db.sqlite", "x.csv"]);
}

#[tokio::test]
async fn a_matplotlib_plot_comes_back_as_a_downloadable_png() {
    let server = TestServer::start(&[]).await;
    let body = py(
        &server,
        None,
        "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('demo')\nplt.show()",
    )
    .await;
    assert_eq!(body["run"]["status"], "success", "{body}");
    assert_eq!(body["stderr"], "");
    let files = body["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{body}");
    assert_eq!(files[0]["name"], "figure-1.png");
    let r = server
        .fetch(files[0]["path"].as_str().unwrap(), KEY_A)
        .await;
    assert_eq!(r.headers()["content-type"], "image/png");
    let bytes = r.bytes().await.unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // A second figure in the same session gets the next name.
    let again = py(&server, Some(&sid(&body)), "plt.plot([1, 2]); plt.show()").await;
    assert_eq!(again["files"][0]["name"], "figure-2.png");
}

#[tokio::test]
async fn a_timeout_interrupts_and_the_state_survives() {
    let server = TestServer::start(&[]).await;
    let first = py(&server, None, "kept = 'still here'").await;
    let s = sid(&first);
    let body = py_with(&server, json!({"lang": "py", "session_id": s, "timeout": 1500, "code": "print('looping', flush=True)\nwhile True:\n    pass"})).await;
    assert_eq!(body["run"]["status"], "timeout", "{body}");
    assert_eq!(body["stdout"], "looping\n");
    assert!(
        body["run"]["message"]
            .as_str()
            .unwrap()
            .contains("state was kept"),
        "{body}"
    );
    let after = py(&server, Some(&s), "print(kept)").await;
    assert_eq!(after["stdout"], "still here\n");
    assert_eq!(after["stderr"], "");
}

#[tokio::test]
async fn a_cell_that_ignores_interrupts_gets_a_fresh_kernel() {
    let server = TestServer::start(&[]).await;
    let first = py(&server, None, "lost_soon = 1").await;
    let s = sid(&first);
    let body = py_with(&server, json!({"lang": "py", "session_id": s, "timeout": 1000,
        "code": "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.05)"})).await;
    common::assert_stopped(&body, "timeout", "state was lost");
    let after = py(&server, Some(&s), "print('lost_soon' in dir())").await;
    assert_eq!(after["stdout"], "False\n");
    assert!(
        after["stderr"]
            .as_str()
            .unwrap()
            .starts_with("[kernel] The previous Python state"),
        "{after}"
    );
}

#[tokio::test]
async fn a_dying_kernel_answers_at_once_and_the_next_call_works() {
    let server = TestServer::start(&[("MAX_MEMORY_MB", "512")]).await;
    let first = py(&server, None, "v = 1").await;
    let s = sid(&first);
    let started = Instant::now();
    let body = py(&server, Some(&s), "import os\nos._exit(1)").await;
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(body["run"]["status"], "error");
    assert!(
        body["run"]["message"].as_str().unwrap().contains("exited"),
        "{body}"
    );
    let next = py(&server, Some(&s), "print('alive')").await;
    assert_eq!(next["stdout"], "alive\n");
    assert!(
        next["stderr"]
            .as_str()
            .unwrap()
            .contains("state of this session was lost")
    );

    let body = py(&server, Some(&s), "x = bytearray(4 * 1024**3)").await;
    common::assert_stopped(&body, "killed", "memory limit of 512 MiB");
    let next = py(&server, Some(&s), "print('alive again')").await;
    assert_eq!(next["stdout"], "alive again\n");
    let r = server
        .client
        .get(server.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn concurrent_calls_on_one_session_never_mix() {
    let server = TestServer::start(&[]).await;
    let first = py(&server, None, "import time").await;
    let s = sid(&first);
    let calls = (0..10).map(|i| {
        let s = s.clone();
        let server = &server;
        async move {
            let token = format!("token-{i}");
            let code = format!("for _ in range(3):\n    print('{token}')\n    time.sleep(0.01)");
            (token, py(server, Some(&s), &code).await)
        }
    });
    for (token, body) in futures::future::join_all(calls).await {
        assert_eq!(body["stdout"], format!("{token}\n{token}\n{token}\n"));
    }
}

#[tokio::test]
async fn interrupt_and_restart_endpoints_act_on_the_kernel() {
    let server = TestServer::start(&[]).await;
    let first = py(&server, None, "y = 5").await;
    let s = sid(&first);
    let long = py(
        &server,
        Some(&s),
        "import time\nprint('sleeping', flush=True)\ntime.sleep(60)",
    );
    let interrupt = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let r = server
            .client
            .post(server.url(&format!("/sessions/{s}/interrupt")))
            .header("x-api-key", KEY_A)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()
    };
    let (body, action) = tokio::join!(long, interrupt);
    assert_eq!(action["applied"], true);
    assert_eq!(body["run"]["status"], "error");
    assert!(
        body["stderr"]
            .as_str()
            .unwrap()
            .contains("KeyboardInterrupt"),
        "{body}"
    );
    assert_eq!(py(&server, Some(&s), "print(y)").await["stdout"], "5\n");

    let r = server
        .client
        .post(server.url(&format!("/v1/sessions/{s}/restart")))
        .header("x-api-key", KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let after = py(&server, Some(&s), "print('y' in dir())").await;
    assert_eq!(after["stdout"], "False\n");
    assert_eq!(
        after["stderr"], "",
        "a restart the user asked for needs no warning"
    );
    // Another tenant cannot touch the session.
    let r = server
        .client
        .post(server.url(&format!("/sessions/{s}/restart")))
        .header("x-api-key", KEY_B)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn past_max_sessions_the_least_recently_used_kernel_is_evicted_and_says_so() {
    let server = TestServer::start(&[("MAX_SESSIONS", "1")]).await;
    let a = py(&server, None, "a = 1").await;
    let b = py(&server, None, "b = 2").await;
    assert_ne!(sid(&a), sid(&b));
    let h: Value = server.health().await;
    assert_eq!(h["kernels"]["live"], 1);
    let again = py(&server, Some(&sid(&a)), "print('a' in dir())").await;
    assert_eq!(again["stdout"], "False\n");
    assert!(
        again["stderr"].as_str().unwrap().contains("MAX_SESSIONS"),
        "{again}"
    );
}

#[tokio::test]
async fn idle_kernels_are_shut_down_and_files_stay() {
    let server = TestServer::start(&[("KERNEL_IDLE_SECONDS", "1")]).await;
    let first = py(&server, None, "z = 3\nopen('kept.txt', 'w').write('yes')").await;
    let s = sid(&first);
    let mut live = Value::Null;
    for _ in 0..60 {
        let h: Value = server.health().await;
        live = h["kernels"]["live"].clone();
        if live == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(live, 0);
    let after = py(
        &server,
        Some(&s),
        "print('z' in dir(), open('kept.txt').read())",
    )
    .await;
    assert_eq!(after["stdout"], "False yes\n");
    assert!(
        after["stderr"].as_str().unwrap().contains("idle"),
        "{after}"
    );
}

#[tokio::test]
async fn busy_kernels_get_a_429_with_retry_after_before_any_run() {
    let server = TestServer::start(&[("MAX_SESSIONS", "1"), ("QUEUE_WAIT_SECONDS", "0")]).await;
    let long = py(&server, None, "import time\ntime.sleep(4)");
    let second = async {
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let r = server
            .client
            .post(server.url("/v1/exec"))
            .header("x-api-key", KEY_A)
            .json(&json!({"lang": "py", "code": "print(1)"}))
            .send()
            .await
            .unwrap();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (r.status(), retry, r.json::<Value>().await.unwrap())
    };
    let (first, (status, retry, body)) = tokio::join!(long, second);
    assert_eq!(first["run"]["status"], "success");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "rate_limited");
    assert!(body["retry_after_seconds"].as_u64().unwrap() > 0);
    assert!(retry.is_some());
}

#[tokio::test]
async fn a_figure_saved_to_a_file_is_not_returned_twice() {
    let server = TestServer::start(&[]).await;
    let body = py(
        &server,
        None,
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.savefig('/mnt/data/chart.png')",
    )
    .await;
    let names = common::names(&body["files"]);
    assert_eq!(names, ["chart.png"], "{body}");
    // A figure that is only shown still comes back.
    let shown = py(
        &server,
        Some(&sid(&body)),
        "plt.figure(); plt.plot([3, 1]); plt.show()",
    )
    .await;
    let names = common::names(&shown["files"]);
    assert_eq!(names, ["figure-1.png"], "{shown}");
}

#[tokio::test]
async fn after_a_server_restart_the_first_call_says_the_kernel_was_restarted() {
    let temp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        temp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let data = temp.path().join("data");
    let mut first = TestServer::start_in(&data, &[]).await;
    let body = py(&first, None, "x = 1\nopen('kept.txt', 'w').write('yes')").await;
    let s = sid(&body);
    first.stop();

    let second = TestServer::start_in(&data, &[]).await;
    let after = py(
        &second,
        Some(&s),
        "print('x' in dir(), open('kept.txt').read())",
    )
    .await;
    assert_eq!(after["session_id"], s.as_str());
    assert_eq!(after["stdout"], "False yes\n");
    assert!(
        after["stderr"]
            .as_str()
            .unwrap()
            .contains("server restarted"),
        "{after}"
    );
    // Only once; and a session that never ran Python gets no such line.
    let again = py(&second, Some(&s), "print(1)").await;
    assert_eq!(again["stderr"], "");
    let (_, up) = second
        .upload("/upload", KEY_A, &[("a.txt", b"a")], &[])
        .await;
    let fresh = py(&second, up["session_id"].as_str(), "print(2)").await;
    assert_eq!(fresh["stderr"], "");
}
