//! A real server process for the integration tests: its own port, its own DATA_DIR,
//! killed when dropped.

#![allow(dead_code)]

pub mod netns;
pub mod shared;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KEY_A: &str = "key-alpha-0123456789";
pub const KEY_B: &str = "key-beta-9876543210";

pub struct TestServer {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    pub client: reqwest::Client,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestServer {
    /// A server with two tenants (KEY_A, KEY_B) and the given extra settings.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let temp = tempfile::tempdir().unwrap();
        // bwrap runs as the sandbox user and must reach the workspaces by path.
        std::fs::set_permissions(
            temp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let data_dir = temp.path().join("data");
        let mut server = Self::start_in(&data_dir, env).await;
        server._temp = Some(temp);
        server
    }

    /// A server on an existing DATA_DIR (to test restarts).
    pub async fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_launched(&[], data_dir, env).await
    }

    /// A server started through `launcher` (e.g. `prlimit --nproc=0 --`), to change the
    /// conditions it runs in.
    pub async fn start_launched(launcher: &[&str], data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let binary = env!("CARGO_BIN_EXE_code-interpreter");
        let mut cmd = match launcher.split_first() {
            None => Command::new(binary),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary);
                c
            }
        };
        Self::configure(&mut cmd, "127.0.0.1", port, data_dir, env);
        Self::spawn(cmd, format!("http://127.0.0.1:{port}"), data_dir).await
    }

    /// A server inside network namespace `ns`, listening on its address, port 8000. Call it
    /// from a thread inside a namespace on the same bridge (the server is asked when it is
    /// ready from there).
    pub async fn start_in_netns(ns: &netns::Netns, env: &[(&str, &str)]) -> Self {
        let temp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            temp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let data_dir = temp.path().join("data");
        let mut cmd = ns.command(env!("CARGO_BIN_EXE_code-interpreter"));
        Self::configure(&mut cmd, "0.0.0.0", 8000, &data_dir, env);
        let mut server = Self::spawn(cmd, format!("http://{}:8000", ns.ip), &data_dir).await;
        server._temp = Some(temp);
        server
    }

    fn configure(cmd: &mut Command, host: &str, port: u16, data_dir: &Path, env: &[(&str, &str)]) {
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOST", host)
            .env("PORT", port.to_string())
            .env("DATA_DIR", data_dir)
            .env("CODE_INTERPRETER_API_KEYS", format!("{KEY_A},{KEY_B}"))
            .env("LOG_LEVEL", "warn")
            // Most tests need no warm kernels; the Python tests ask for a pool.
            .env("KERNEL_POOL_SIZE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // CODE_INTERPRETER_TEST_STORE=shared: the same tests against Redis + S3.
        if shared::wanted() && !env.iter().any(|(k, _)| *k == "STORE") {
            for (k, v) in shared::SharedParts::get().env(&shared::prefix_for(data_dir)) {
                cmd.env(k, v);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
    }

    async fn spawn(mut cmd: Command, base: String, data_dir: &Path) -> Self {
        let child = cmd.spawn().expect("the server binary starts");
        let server = TestServer {
            child,
            base,
            data_dir: data_dir.to_path_buf(),
            _temp: None,
            client: reqwest::Client::new(),
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = self.client.get(self.url("/health")).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the server did not become ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill with SIGKILL (no chance to clean up, as when a machine dies) and wait.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stop with SIGTERM (graceful) and wait.
    pub fn stop(&mut self) {
        unsafe_kill(self.child.id(), "TERM");
        let _ = self.child.wait();
    }

    pub fn get(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).header("x-api-key", key)
    }

    /// GET with a key; the response, whatever its status.
    pub async fn fetch(&self, path: &str, key: &str) -> reqwest::Response {
        self.get(path, key).send().await.unwrap()
    }

    /// POST a multipart form with a key.
    pub async fn post_form(
        &self,
        path: &str,
        key: &str,
        form: reqwest::multipart::Form,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("x-api-key", key)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// GET a JSON answer (any status).
    pub async fn get_json(&self, path: &str, key: &str) -> serde_json::Value {
        self.get(path, key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// GET /health (no key).
    pub async fn health(&self) -> serde_json::Value {
        self.client
            .get(self.url("/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn delete(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.client.delete(self.url(path)).header("x-api-key", key)
    }

    /// Upload named byte blobs (`file` parts) with extra form fields; returns status and JSON.
    pub async fn upload(
        &self,
        path: &str,
        key: &str,
        files: &[(&str, &[u8])],
        fields: &[(&str, &str)],
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut form = reqwest::multipart::Form::new();
        for (name, bytes) in files {
            let part = reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_string());
            form = form.part("file", part);
        }
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        let resp = self
            .client
            .post(self.url(path))
            .header("x-api-key", key)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Files left in the staging area (uploads in flight or abandoned).
    pub fn staged_files(&self) -> usize {
        std::fs::read_dir(self.data_dir.join("staging"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn session_dirs(&self) -> usize {
        std::fs::read_dir(self.data_dir.join("sessions"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Peak resident memory of a process in bytes (VmHWM).
/// A run ended with `status` and a `run.message` that mentions `part`.
pub fn assert_stopped(body: &serde_json::Value, status: &str, part: &str) {
    assert_eq!(body["run"]["status"], status, "{body}");
    let message = body["run"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(part), "{part:?} not in {body}");
}

/// The `name` of every item of a JSON array of files, in order.
pub fn names(files: &serde_json::Value) -> Vec<String> {
    files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect()
}

/// POST /exec with a JSON body; returns status and JSON.
pub async fn exec(
    server: &TestServer,
    key: &str,
    body: serde_json::Value,
) -> (reqwest::StatusCode, serde_json::Value) {
    let resp = server
        .client
        .post(server.url("/v1/exec"))
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// POST /exec in a task of its own; the task ends with the whole answer (a long answer sends
/// its headers after 2 s, then spaces, then the JSON). Aborting the task drops the client.
pub fn exec_in_background(
    server: &TestServer,
    key: &str,
    body: serde_json::Value,
) -> tokio::task::JoinHandle<serde_json::Value> {
    let client = server.client.clone();
    let url = server.url("/v1/exec");
    let key = key.to_owned();
    tokio::spawn(async move {
        let resp = client
            .post(url)
            .header("x-api-key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        resp.json().await.unwrap_or(serde_json::Value::Null)
    })
}

/// POST a session action (`interrupt`, `restart`) and return its JSON answer.
pub async fn session_action(
    server: &TestServer,
    key: &str,
    session_id: &str,
    action: &str,
) -> (reqwest::StatusCode, serde_json::Value) {
    let resp = server
        .client
        .post(server.url(&format!("/v1/sessions/{session_id}/{action}")))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}
