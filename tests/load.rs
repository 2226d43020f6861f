//! Load: 50 sessions of two tenants make 20 calls each at once, in bash, Python and Node,
//! with uploads and downloads between them. Every call answers, every answer is its own
//! (no output of another session or call), every byte that goes in comes back out the same,
//! and after those 1,000 runs the server holds no more descriptors, threads or children
//! than before them.

mod common;

use std::time::{Duration, Instant};

use common::{KEY_A, KEY_B, TestServer, exec};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const SESSIONS: usize = 50;
const CALLS: usize = 20;

/// Bytes that differ for every (session, upload): a small xorshift stream.
fn payload(session: usize, upload: usize) -> Vec<u8> {
    let mut x =
        (session as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((upload as u64 + 7) << 17);
    let len = 4096 + (session * 131 + upload * 977) % 12288;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One call's program: print `token` and the input's SHA-256, copy the input to `output`.
fn program(lang: &str, token: &str, input: &str, output: &str) -> String {
    match lang {
        "bash" => {
            format!("echo \"{token} $(sha256sum < {input} | cut -d' ' -f1)\"\ncp {input} {output}")
        }
        "py" => format!(
            "import hashlib, shutil\nprint('{token}', hashlib.sha256(open('{input}', 'rb').read()).hexdigest())\n_ = shutil.copyfile('{input}', '{output}')"
        ),
        "js" => format!(
            "const fs = require('fs'), crypto = require('crypto');\nconst b = fs.readFileSync('{input}');\nconsole.log('{token}', crypto.createHash('sha256').update(b).digest('hex'));\nfs.writeFileSync('{output}', b);"
        ),
        other => unreachable!("{other}"),
    }
}

/// Every fifth call Node; the others Python in a fifth of the sessions (each keeps a
/// kernel), bash in the rest.
fn language(session: usize, call: usize) -> &'static str {
    if call % 5 == 4 {
        "js"
    } else if session.is_multiple_of(5) {
        "py"
    } else {
        "bash"
    }
}

#[derive(Default)]
struct Tally {
    runs: usize,
    uploads: usize,
    downloads: usize,
    bytes: usize,
}

/// One session's whole life: an upload, 20 runs (a new upload before every fifth), each
/// output downloaded and compared. Panics on the first wrong answer.
async fn one_session(server: &TestServer, session: usize) -> Tally {
    let key = if session.is_multiple_of(2) {
        KEY_A
    } else {
        KEY_B
    };
    let mut tally = Tally::default();
    let first = payload(session, 0);
    let (status, body) = server
        .upload("/upload", key, &[("in-0.bin", &first)], &[])
        .await;
    assert_eq!(status, 200, "session {session}: {body}");
    tally.uploads += 1;
    let sid = body["session_id"].as_str().unwrap().to_owned();
    let mut input = ("in-0.bin".to_owned(), first);
    for call in 0..CALLS {
        if call > 0 && call % 5 == 0 {
            let name = format!("in-{call}.bin");
            let bytes = payload(session, call);
            let (status, body) = server
                .upload("/upload", key, &[(&name, &bytes)], &[("session_id", &sid)])
                .await;
            assert_eq!(status, 200, "session {session} call {call}: {body}");
            assert_eq!(body["session_id"], sid.as_str());
            tally.uploads += 1;
            input = (name, bytes);
        }
        let lang = language(session, call);
        let token = format!("s{session}-c{call}");
        let output = format!("out-{call}.bin");
        let code = program(lang, &token, &input.0, &output);
        let (status, body) = exec(
            server,
            key,
            json!({"lang": lang, "code": code, "session_id": sid}),
        )
        .await;
        let context = format!("session {session} call {call} ({lang})");
        assert_eq!(status, 200, "{context}: {body}");
        assert_eq!(body["session_id"], sid.as_str(), "{context}: {body}");
        assert_eq!(body["run"]["status"], "success", "{context}: {body}");
        assert_eq!(
            body["stdout"],
            format!("{token} {}\n", sha256_hex(&input.1)),
            "{context}: {body}"
        );
        assert_eq!(body["stderr"], "", "{context}: {body}");
        tally.runs += 1;
        let made: Vec<&Value> = body["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["name"] == output.as_str())
            .collect();
        assert_eq!(made.len(), 1, "{context}: {body}");
        let fid = made[0]["id"].as_str().unwrap();
        let r = server.fetch(&format!("/download/{sid}/{fid}"), key).await;
        assert_eq!(r.status(), 200, "{context}");
        let got = r.bytes().await.unwrap();
        assert!(
            got.as_ref() == input.1.as_slice(),
            "{context}: bytes differ"
        );
        tally.downloads += 1;
        tally.bytes += got.len();
    }
    // The first upload is still there, unchanged.
    let files = server.get_json(&format!("/files/{sid}"), key).await;
    assert_eq!(
        files.as_array().unwrap().len(),
        CALLS + CALLS / 5,
        "session {session}: {files}"
    );
    let delete = server
        .delete(&format!("/sessions/{sid}"), key)
        .send()
        .await
        .unwrap();
    assert!(delete.status().is_success(), "{}", delete.status());
    tally
}

/// What each of the server's descriptors points at, for a failure message.
fn descriptors(pid: u32) -> String {
    let mut targets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|t| t.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    targets.sort();
    targets.join(", ")
}

/// What the server process holds: open descriptors, threads, child processes.
fn holdings(pid: u32) -> (usize, usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let children = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .is_some_and(|ppid| ppid == pid.to_string())
        })
        .count();
    (fds, threads, children)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_sessions_of_twenty_mixed_calls_hold_and_leave_nothing_behind() {
    let mut server = TestServer::start(&[]).await;
    let pid = server.pid();

    // Warm up every path once (a kernel started and stopped, a build of nothing, uploads),
    // so lazily made things (the database's connection, thread pools) exist before counting.
    let warm = one_session(&server, SESSIONS).await;
    assert_eq!(warm.runs, CALLS);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = holdings(pid);
    let held_before = descriptors(pid);

    let started = Instant::now();
    let tallies = futures::future::join_all((0..SESSIONS).map(|s| one_session(&server, s))).await;
    let wall = started.elapsed();
    let total = tallies.iter().fold(Tally::default(), |mut t, s| {
        t.runs += s.runs;
        t.uploads += s.uploads;
        t.downloads += s.downloads;
        t.bytes += s.bytes;
        t
    });
    assert_eq!(total.runs, SESSIONS * CALLS);
    eprintln!(
        "load: {} runs, {} uploads, {} downloads ({} KiB compared) in {:.1} s, 0 errors",
        total.runs,
        total.uploads,
        total.downloads,
        total.bytes / 1024,
        wall.as_secs_f64()
    );

    // A new client: the old one's idle keep-alive connections close, and with them the
    // server's sockets. Idle threads of the blocking pool end 10 s after their last task.
    server.client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = holdings(pid);
    while (after.0 > before.0 || after.1 > before.1 || after.2 > before.2)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = holdings(pid);
    }
    eprintln!(
        "load: descriptors {} -> {}, threads {} -> {}, children {} -> {}",
        before.0, after.0, before.1, after.1, before.2, after.2
    );
    assert!(
        after.0 <= before.0,
        "descriptors grew: {before:?} -> {after:?}; open before: {held_before}; open now: {}",
        descriptors(pid)
    );
    assert!(after.1 <= before.1, "threads grew: {before:?} -> {after:?}");
    assert!(
        after.2 <= before.2,
        "children grew: {before:?} -> {after:?}"
    );
    assert_eq!(server.session_dirs(), 0, "every session was deleted");
}
