//! Faults from outside the API: the server SIGKILLed during runs and started again on the
//! same DATA_DIR, a kernel killed by someone else, a data disk that is really full, a client
//! that vanishes in the middle of an upload. (A client that leaves a stream is in
//! tests/cancellation.rs; the free-space floor in tests/disk_floor.rs.)

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{KEY_A, TestServer, exec, exec_in_background};
use futures::StreamExt;
use serde_json::{Value, json};

/// A marker no other process has in its command line.
fn marker(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("fault-{what}-{}-{nanos}", std::process::id())
}

fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
}

fn cmdline(pid: u32) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Host processes whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    pids().filter(|&p| contains(&cmdline(p), marker)).collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Processes below `root` whose command line holds `needle`.
fn descendants_with(root: u32, needle: &str) -> Vec<u32> {
    pids()
        .filter(|&p| {
            let mut at = p;
            for _ in 0..64 {
                match parent_of(at) {
                    Some(parent) if parent == root => return true,
                    Some(parent) if parent > 1 => at = parent,
                    _ => return false,
                }
            }
            false
        })
        .filter(|&p| contains(&cmdline(p), needle))
        .collect()
}

fn sigkill(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

async fn wait_until(what: &str, seconds: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cgroup v1 directories a server with `pid` keeps its runs' groups in (the server is
/// our child, so it starts in our groups).
fn server_groups(pid: u32) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    ["memory", "pids", "cpu", "cpuacct"]
        .iter()
        .filter_map(|controller| {
            let path = own.lines().find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                names.split(',').any(|n| n == *controller).then_some(path)
            })?;
            Some(
                Path::new("/sys/fs/cgroup")
                    .join(controller)
                    .join(path.trim_start_matches('/'))
                    .join("code-interpreter")
                    .join(pid.to_string()),
            )
        })
        .collect()
}

fn subgroups(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0)
}

fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let temp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        temp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let data = temp.path().join("data");
    (temp, data)
}

/// A multipart upload that sends one part's header and `bytes` bytes of it, then stalls.
fn stalled_upload(
    server: &TestServer,
    fields: &[(&str, &str)],
    bytes: usize,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let mut head = String::new();
    for (name, value) in fields {
        head.push_str(&format!(
            "--XBOUNDARYX\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    head.push_str(
        "--XBOUNDARYX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"half.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n",
    );
    let chunks = vec![head.into_bytes(), vec![b'h'; bytes]];
    let body = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>)).chain(
        futures::stream::once(async {
            std::future::pending::<()>().await;
            Ok(Vec::new())
        }),
    );
    let request = server
        .client
        .post(server.url("/upload"))
        .header("x-api-key", KEY_A)
        .header("content-type", "multipart/form-data; boundary=XBOUNDARYX")
        .body(reqwest::Body::wrap_stream(body));
    tokio::spawn(request.send())
}

fn staged_bytes(server: &TestServer) -> u64 {
    std::fs::read_dir(server.data_dir.join("staging"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

async fn download(server: &TestServer, sid: &str, fid: &str) -> Vec<u8> {
    let r = server.fetch(&format!("/download/{sid}/{fid}"), KEY_A).await;
    assert_eq!(r.status(), 200, "download {sid}/{fid}");
    r.bytes().await.unwrap().to_vec()
}

fn file_id(body: &Value, name: &str) -> String {
    body["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {body}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn listed_ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fileId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_server_killed_during_runs_restarts_clean_with_files_and_ids_intact() {
    let (_temp, data) = data_dir();
    let first = TestServer::start_in(&data, &[]).await;
    let old_pid = first.pid();

    // State before the kill: an upload, a file a Python cell wrote, and a second session.
    let kept: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (status, body) = first
        .upload("/upload", KEY_A, &[("kept.bin", &kept)], &[])
        .await;
    assert_eq!(status, 200, "{body}");
    let sid = body["session_id"].as_str().unwrap().to_owned();
    let kept_id = body["files"][0]["id"].as_str().unwrap().to_owned();
    let (status, body) = exec(
        &first,
        KEY_A,
        json!({"lang": "py", "session_id": sid,
               "code": "x = 1\nopen('made.txt', 'w').write('made before')"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let made_id = file_id(&body, "made.txt");
    let (_, body) = exec(&first, KEY_A, json!({"lang": "bash", "code": "true"})).await;
    let other = body["session_id"].as_str().unwrap().to_owned();
    let ids_before = listed_ids(
        &first
            .get_json(&format!("/files/{sid}?detail=summary"), KEY_A)
            .await,
    );

    // Runs in flight in three languages, each leaving a process with a marker, and an
    // upload half sent.
    let mark = marker("kill");
    let runs = [
        exec_in_background(
            &first,
            KEY_A,
            json!({"lang": "py", "session_id": sid, "code": format!(
                "import subprocess, time\nsubprocess.Popen(['bash', '-c', 'sleep 600; true', '{mark}-py'])\ntime.sleep(600)"
            )}),
        ),
        exec_in_background(
            &first,
            KEY_A,
            json!({"lang": "bash", "session_id": other, "code": "sleep 600",
                   "args": [format!("{mark}-bash")]}),
        ),
        exec_in_background(
            &first,
            KEY_A,
            json!({"lang": "js", "code": "setTimeout(() => {}, 600000);",
                   "args": [format!("{mark}-js")]}),
        ),
    ];
    let upload = stalled_upload(&first, &[("session_id", &sid)], 64 * 1024);
    for lang in ["py", "bash", "js"] {
        let m = format!("{mark}-{lang}");
        wait_until(&format!("the {lang} run to start"), 60, || {
            !processes_with(&m).is_empty()
        })
        .await;
    }
    wait_until("the upload to be staged", 20, || first.staged_files() == 1).await;
    let groups = server_groups(old_pid);
    let with_runs = groups.iter().filter(|g| subgroups(g) > 0).count();
    eprintln!(
        "before the kill: {} processes marked, {with_runs} of {} cgroup dirs hold runs",
        processes_with(&mark).len(),
        groups.len()
    );

    drop(first); // SIGKILL, then reaped
    for run in runs {
        run.abort();
    }
    upload.abort();

    let second = TestServer::start_in(&data, &[]).await;
    wait_until("no process of the killed server's runs", 10, || {
        processes_with(&mark).is_empty()
    })
    .await;
    for group in &groups {
        assert!(!group.exists(), "{} is left", group.display());
    }
    assert_eq!(second.staged_files(), 0, "the half upload is gone");

    // Files and ids are as they were; the half upload left no file.
    assert_eq!(download(&second, &sid, &kept_id).await, kept);
    assert_eq!(download(&second, &sid, &made_id).await, b"made before");
    let ids_after = listed_ids(
        &second
            .get_json(&format!("/files/{sid}?detail=summary"), KEY_A)
            .await,
    );
    assert_eq!(ids_after, ids_before);
    assert!(
        !second
            .data_dir
            .join("sessions")
            .join(&sid)
            .join("half.bin")
            .exists()
    );

    // Both sessions work; Python says its state is gone, once.
    let (status, body) = exec(
        &second,
        KEY_A,
        json!({"lang": "py", "session_id": sid, "code": "print('x' in dir(), open('made.txt').read())"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stdout"], "False made before\n", "{body}");
    assert!(
        body["stderr"]
            .as_str()
            .unwrap()
            .contains("server restarted"),
        "{body}"
    );
    let (_, body) = exec(
        &second,
        KEY_A,
        json!({"lang": "bash", "session_id": other, "code": "echo again"}),
    )
    .await;
    assert_eq!(body["session_id"], other.as_str(), "{body}");
    assert_eq!(body["stdout"], "again\n", "{body}");
}

/// The kernel processes below the server.
fn kernels(server: &TestServer) -> Vec<u32> {
    descendants_with(server.pid(), "ipykernel_launcher")
}

/// Whether `pid` has ended: gone, or a zombie. (A namespace's init that was killed loses
/// its command line at once but ends only after every process of its namespace did.)
fn ended(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).map_or(true, |status| {
        status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

/// The processes of the kernel that runs session `sid` (for a forked kernel its namespace's
/// init too): every kernel, cold or forked, runs as the host uid that owns its session's
/// workspace.
fn session_kernel(server: &TestServer, sid: &str) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(server.data_dir.join("sessions").join(sid)) else {
        return Vec::new();
    };
    let uid = |pid: u32| -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
        line.split_whitespace().next()?.parse().ok()
    };
    kernels(server)
        .into_iter()
        .filter(|&p| uid(p) == Some(meta.uid()))
        .collect()
}

#[tokio::test]
async fn a_kernel_killed_from_outside_is_reported_and_the_next_call_works() {
    let server = TestServer::start(&[]).await;
    let py = |sid: Option<&str>, code: &str| {
        let mut body = json!({"lang": "py", "code": code});
        if let Some(sid) = sid {
            body["session_id"] = sid.into();
        }
        exec(&server, KEY_A, body)
    };
    let (status, body) = py(None, "x = 1").await;
    assert_eq!(status, 200, "{body}");
    let sid = body["session_id"].as_str().unwrap().to_owned();

    // Killed while idle: the next call is told, runs in a new kernel, and the one after is
    // quiet.
    let found = session_kernel(&server, &sid);
    assert!(!found.is_empty(), "no kernel process found");
    found.iter().for_each(|&p| sigkill(p));
    wait_until("the kernel to die", 10, || found.iter().all(|&p| ended(p))).await;
    let (status, body) = py(Some(&sid), "print('x' in dir())").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["session_id"], sid.as_str());
    assert_eq!(body["stdout"], "False\n", "{body}");
    assert!(
        body["stderr"]
            .as_str()
            .unwrap()
            .contains("previous Python state of this session was lost"),
        "{body}"
    );
    let (_, body) = py(Some(&sid), "y = 2\nprint('ok')").await;
    assert_eq!(
        (body["stdout"].as_str(), body["stderr"].as_str()),
        (Some("ok\n"), Some("")),
        "{body}"
    );

    // Killed during a cell: that cell ends with the reason, the next call works.
    let cell = exec_in_background(
        &server,
        KEY_A,
        json!({"lang": "py", "session_id": sid,
               "code": "import time\nprint('started', flush=True)\ntime.sleep(600)"}),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let found = session_kernel(&server, &sid);
    assert!(!found.is_empty(), "no kernel process found");
    found.iter().for_each(|&p| sigkill(p));
    let body = tokio::time::timeout(Duration::from_secs(60), cell)
        .await
        .expect("the killed cell answered")
        .unwrap();
    assert_eq!(body["run"]["status"], "error", "{body}");
    assert!(
        body["run"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("exited during this cell"),
        "{body}"
    );
    let (status, body) = py(Some(&sid), "print('y' in dir())").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stdout"], "False\n", "{body}");
    let (_, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "session_id": sid, "code": "echo files still work > f.txt; cat f.txt"}),
    )
    .await;
    assert_eq!(body["stdout"], "files still work\n", "{body}");
}

/// A tmpfs of `mib` MiB mounted on `dir` while this lives (root only).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, mib: u64) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=755"),
                "tmpfs",
            ])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Write `path` until the filesystem has no byte left.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    // The last partial chunk, byte by byte in halves.
    let mut size = 32 * 1024;
    while size > 0 {
        if f.write_all(&chunk[..size]).is_err() {
            size /= 2;
        }
    }
}

fn assert_disk_refusal(what: &str, status: reqwest::StatusCode, body: &Value) {
    assert_eq!(status, 507, "{what}: {body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.ends_with('.') && detail.len() > 20, "{what}: {body}");
    assert!(!detail.contains('/'), "{what}: no server path in {body}");
}

#[tokio::test]
async fn a_full_data_disk_refuses_uploads_and_runs_with_507_and_serves_what_it_has() {
    let temp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        temp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let Some(disk) = SmallDisk::mount(&temp.path().join("disk"), 48) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let data = disk.0.join("data");
    // No floor: the disk itself runs out.
    let server = TestServer::start_in(&data, &[("DATA_DIR_MIN_FREE_MB", "0")]).await;
    let (status, body) = server
        .upload("/upload", KEY_A, &[("kept.txt", b"kept bytes")], &[])
        .await;
    assert_eq!(status, 200, "{body}");
    let sid = body["session_id"].as_str().unwrap().to_owned();
    let kept_id = body["files"][0]["id"].as_str().unwrap().to_owned();
    let (status, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "session_id": sid, "code": "echo made > made.txt"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let made_id = file_id(&body, "made.txt");
    let ids_before = listed_ids(
        &server
            .get_json(&format!("/files/{sid}?detail=summary"), KEY_A)
            .await,
    );

    // Something else fills the disk, all but 2 MiB.
    let reserve = disk.0.join("reserve");
    std::fs::write(&reserve, vec![1u8; 2 << 20]).unwrap();
    let filler = disk.0.join("filler");
    fill(&filler);
    std::fs::remove_file(&reserve).unwrap();
    let sessions = server.session_dirs();

    // An upload that runs out of disk mid-body: refused, nothing of it kept. (The answer is
    // a 507, or a closed connection when the client is still sending when it comes.)
    let form = reqwest::multipart::Form::new()
        .text("session_id", sid.clone())
        .part(
            "file",
            reqwest::multipart::Part::bytes(vec![7u8; 4 << 20]).file_name("big.bin"),
        );
    let answer = server
        .client
        .post(server.url("/upload"))
        .header("x-api-key", KEY_A)
        .multipart(form)
        .send()
        .await;
    if let Ok(r) = answer {
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_disk_refusal("an upload past the free space", status, &body);
    }
    wait_until("the staged part to be removed", 10, || {
        server.staged_files() == 0
    })
    .await;
    assert!(!data.join("sessions").join(&sid).join("big.bin").exists());

    // Now the disk is full: everything that writes is refused before it starts.
    fill(&disk.0.join("filler-2"));
    let (status, body) = server
        .upload(
            "/upload",
            KEY_A,
            &[("new.txt", b"new")],
            &[("session_id", &sid)],
        )
        .await;
    assert_disk_refusal("an upload into the session", status, &body);
    let (status, body) = server
        .upload("/upload", KEY_A, &[("new.txt", b"new")], &[])
        .await;
    assert_disk_refusal("an upload into a new session", status, &body);
    for (n, lang) in ["bash", "py", "js"].into_iter().enumerate() {
        // Whatever the server freed meanwhile (a refused run's scratch, a kernel's socket
        // directory) is taken again: the claim is about a run on a disk that is full.
        fill(&disk.0.join(format!("filler-run-{n}")));
        let (status, body) = exec(
            &server,
            KEY_A,
            json!({"lang": lang, "session_id": sid, "code": "print(1)"}),
        )
        .await;
        assert_disk_refusal(&format!("a {lang} run"), status, &body);
    }
    let (status, body) = exec(&server, KEY_A, json!({"lang": "bash", "code": "true"})).await;
    assert_disk_refusal("a run in a new session", status, &body);

    // Nothing partial: no staged bytes, no new file or session.
    assert_eq!(server.staged_files(), 0);
    assert_eq!(server.session_dirs(), sessions);
    assert!(!data.join("sessions").join(&sid).join("new.txt").exists());

    // Reads work.
    assert_eq!(download(&server, &sid, &kept_id).await, b"kept bytes");
    assert_eq!(download(&server, &sid, &made_id).await, b"made\n");
    let ids = listed_ids(
        &server
            .get_json(&format!("/files/{sid}?detail=summary"), KEY_A)
            .await,
    );
    assert_eq!(ids, ids_before);
    let health = server
        .client
        .get(server.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // With room again, the same calls work.
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(disk.0.join("filler-2")).unwrap();
    for n in 0..3 {
        std::fs::remove_file(disk.0.join(format!("filler-run-{n}"))).unwrap();
    }
    let (status, body) = server
        .upload(
            "/upload",
            KEY_A,
            &[("new.txt", b"new")],
            &[("session_id", &sid)],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "session_id": sid, "code": "cat new.txt kept.txt"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stdout"], "newkept bytes", "{body}");
}

#[tokio::test]
async fn a_client_that_drops_mid_upload_leaves_nothing_behind() {
    let server = TestServer::start(&[]).await;
    let (status, body) = server
        .upload("/upload", KEY_A, &[("first.txt", b"first")], &[])
        .await;
    assert_eq!(status, 200, "{body}");
    let sid = body["session_id"].as_str().unwrap().to_owned();

    for fields in [vec![], vec![("session_id", sid.as_str())]] {
        // Past the staging buffer, so part of it is on disk.
        let upload = stalled_upload(&server, &fields, 3 * 1024 * 1024 / 2);
        wait_until("the part to be staged", 20, || staged_bytes(&server) > 0).await;
        upload.abort(); // the connection closes mid-body
        wait_until("the staged part to be removed", 10, || {
            server.staged_files() == 0
        })
        .await;
    }
    assert_eq!(server.session_dirs(), 1, "no session was made");
    let list = server.get_json(&format!("/files/{sid}"), KEY_A).await;
    assert_eq!(common::names(&list), ["first.txt"]);
    let (status, _) = server
        .upload(
            "/upload",
            KEY_A,
            &[("second.txt", b"second")],
            &[("session_id", &sid)],
        )
        .await;
    assert_eq!(status, 200);
}
