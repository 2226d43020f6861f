//! The CPU is divided between sandboxes: every run is its own group with the same weight, so
//! sessions spinning the CPU do not starve another tenant's run, and `MAX_CPUS` caps a run.

mod common;

use common::{KEY_A, KEY_B, TestServer, exec, exec_in_background};
use serde_json::json;

/// The v1 `cpu` controller's group for this server's runs, when the host has one.
fn runs_cpu_dir(server: &TestServer) -> Option<std::path::PathBuf> {
    let dir =
        std::path::Path::new("/sys/fs/cgroup/cpu/code-interpreter").join(server.pid().to_string());
    dir.is_dir().then_some(dir)
}

#[tokio::test]
async fn spinning_sessions_do_not_starve_another_tenants_run() {
    let server = TestServer::start(&[("MAX_CONCURRENT_RUNS", "8")]).await;
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            exec_in_background(
                &server,
                KEY_A,
                json!({"lang": "bash", "code": "while :; do :; done", "timeout": 20000}),
            )
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    if let Some(dir) = runs_cpu_dir(&server) {
        let groups: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .collect();
        assert!(
            groups.len() >= 4,
            "each spinning run has a CPU group of its own"
        );
        for g in &groups {
            let shares = std::fs::read_to_string(g.path().join("cpu.shares")).unwrap();
            assert_eq!(shares.trim(), "1024");
        }
    }
    // It completes, with the spinners still going.
    let (status, body) = exec(&server, KEY_B, json!({"lang": "bash", "code": "echo hi"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stdout"], "hi\n");
    assert!(spinners.iter().all(|s| !s.is_finished()));
    for s in spinners {
        s.abort();
    }
}

#[tokio::test]
async fn max_cpus_caps_a_run() {
    let server = TestServer::start(&[("MAX_CPUS", "0.25")]).await;
    if runs_cpu_dir(&server).is_none() {
        eprintln!("no cgroup v1 cpu controller here: the cap cannot be checked");
        return;
    }
    // Two spinning processes for two seconds would use ~4 CPU-seconds uncapped.
    let (status, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "code": "spin() { while :; do :; done; }; spin & spin & sleep 2; kill %1 %2"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let cpu_ms = body["run"]["cpu_time"]
        .as_f64()
        .expect("cpu_time is measured");
    let wall_ms = body["run"]["wall_time"].as_f64().unwrap();
    // The cap allows a quarter of a CPU; leave room for accounting granularity.
    assert!(
        cpu_ms <= wall_ms * 0.25 * 1.5 + 200.0,
        "cpu {cpu_ms} ms in {wall_ms} ms wall with MAX_CPUS=0.25: {body}"
    );
}

#[tokio::test]
async fn a_bad_max_cpus_stops_start_up_naming_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_code-interpreter"))
        .args(["serve"])
        .env("MAX_CPUS", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MAX_CPUS") || err.contains("max-cpus"),
        "{err}"
    );
}
