//! The build cache is counted, capped and evicted least recently used first; one build's
//! output and every file a compiler writes are capped; no tenant reuses another's build
//! (a fast run would tell one tenant that another ran the same program).

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

use common::{KEY_A, KEY_B, TestServer, exec};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn c(server: &TestServer, key: &str, code: &str) -> Value {
    let (status, body) = exec(server, key, json!({"lang": "c", "code": code})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The finished builds in the cache, by name.
fn entries(server: &TestServer) -> BTreeSet<String> {
    std::fs::read_dir(server.data_dir.join("cache/build"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Allocated bytes under the build cache.
fn cache_bytes(server: &TestServer) -> u64 {
    let mut total = 0;
    let mut stack = vec![server.data_dir.join("cache/build")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

/// A program whose binary carries `kib` KiB of initialised data.
fn program(kib: u32, tag: u32) -> String {
    format!(
        "#include <stdio.h>\nchar data[{kib} << 10] = {{{tag}}};\nint main(int argc, char **argv) {{ (void)argv; printf(\"%d\\n\", data[argc - 1]); return 0; }}\n"
    )
}

/// Run `code` as tenant A; the build it added to the cache.
async fn build(server: &TestServer, code: &str, stdout: &str) -> String {
    let before = entries(server);
    let body = c(server, KEY_A, code).await;
    assert_eq!(body["stdout"], stdout, "{body}");
    let added: Vec<String> = entries(server).difference(&before).cloned().collect();
    assert_eq!(added.len(), 1, "{added:?}");
    added[0].clone()
}

#[tokio::test]
async fn builds_are_kept_per_tenant_capped_and_evicted_least_recently_used() {
    let server = TestServer::start(&[("BUILD_CACHE_MAX_MB", "1"), ("BUILD_MAX_MB", "1")]).await;
    let cap = 1 << 20;

    // The same program from two tenants is two builds.
    let hello = "#include <stdio.h>\nint main(void) { puts(\"hi\"); return 0; }\n";
    for key in [KEY_A, KEY_B] {
        let body = c(&server, key, hello).await;
        assert_eq!(body["stdout"], "hi\n", "{body}");
    }
    assert_eq!(entries(&server).len(), 2, "{:?}", entries(&server));

    // A build whose object file passes BUILD_MAX_MB fails, and nothing of it is kept.
    let before = entries(&server);
    let body = c(&server, KEY_A, &program(3 * 1024, 1)).await;
    assert_ne!(body["run"]["status"], "success", "{body}");
    let message = body["run"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("BUILD_MAX_MB"), "{body}");
    assert_eq!(entries(&server), before);

    // Three programs of 250 KiB fit in 1 MiB with the two small ones; a fourth does not:
    // the least recently used go (the small ones, then the second), the first (used
    // again) stays.
    let first = build(&server, &program(250, 1), "1\n").await;
    let second = build(&server, &program(250, 2), "2\n").await;
    let third = build(&server, &program(250, 3), "3\n").await;
    let again = c(&server, KEY_A, &program(250, 1)).await;
    assert_eq!(again["stdout"], "1\n", "{again}");
    let fourth = build(&server, &program(250, 4), "4\n").await;
    let kept = entries(&server);
    for name in [&first, &third, &fourth] {
        assert!(kept.contains(name), "{name} was evicted: {kept:?}");
    }
    assert!(!kept.contains(&second), "{kept:?}");
    assert!(
        cache_bytes(&server) <= cap,
        "{} bytes",
        cache_bytes(&server)
    );

    // An evicted program builds again.
    let body = c(&server, KEY_A, &program(250, 2)).await;
    assert_eq!(body["stdout"], "2\n", "{body}");
    assert!(cache_bytes(&server) <= cap);
}
