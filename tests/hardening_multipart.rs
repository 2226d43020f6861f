//! Property test of `/upload` against a real server: any multipart body, well formed or cut
//! and corrupted anywhere, gets its files stored exactly or a 4xx, never a 5xx, and leaves
//! nothing staged behind.

mod common;

use common::{KEY_A, TestServer};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const BOUNDARY: &str = "hardening-boundary-7f3a";

/// A multipart body of `file` parts, each `(file name, bytes)`.
fn body(parts: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, bytes) in parts {
        out.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

#[derive(Debug, Clone)]
enum Damage {
    None,
    /// Cut the body at this fraction of its length.
    Cut(f64),
    /// Overwrite bytes at these fractions with these values.
    Flip(Vec<(f64, u8)>),
    /// Splice in bytes that look like multipart syntax.
    Splice(f64, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    let syntax = prop_oneof![
        Just(format!("\r\n--{BOUNDARY}\r\n").into_bytes()),
        Just(format!("--{BOUNDARY}--").into_bytes()),
        Just(
            b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"../x\"\r\n\r\n"
                .to_vec()
        ),
        Just(b"\r\n\r\n".to_vec()),
        Just(b"\"".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..64),
    ];
    prop_oneof![
        2 => Just(Damage::None),
        1 => (0.0..1.0f64).prop_map(Damage::Cut),
        1 => proptest::collection::vec((0.0..1.0f64, any::<u8>()), 1..8).prop_map(Damage::Flip),
        1 => (0.0..1.0f64, syntax).prop_map(|(at, bytes)| Damage::Splice(at, bytes)),
    ]
}

fn apply(mut bytes: Vec<u8>, damage: &Damage) -> Vec<u8> {
    let at = |f: f64, len: usize| ((len as f64) * f) as usize;
    match damage {
        Damage::None => {}
        Damage::Cut(f) => bytes.truncate(at(*f, bytes.len())),
        Damage::Flip(flips) => {
            for (f, value) in flips {
                let i = at(*f, bytes.len()).min(bytes.len() - 1);
                bytes[i] = *value;
            }
        }
        Damage::Splice(f, extra) => {
            let i = at(*f, bytes.len());
            bytes.splice(i..i, extra.iter().copied());
        }
    }
    bytes
}

/// File names: plain ones the server must keep, and hostile ones it may refuse.
fn file_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z]{1,8}(\\.[a-z]{1,3})?",
        1 => "(\\.\\./|/|[a-z]{0,3}|\\.|\\\\|%2e|\u{0}|\r\n|;|=|\u{e9}|\u{202e}){1,6}",
    ]
}

/// A name the plain strategy makes (`[a-z]{1,8}(\.[a-z]{1,3})?`): the hostile one can make
/// such names too, and also ``, `.` or `a..`, which the server may refuse.
fn is_plain(name: &str) -> bool {
    let word = |w: &str, max: usize| {
        (1..=max).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_lowercase())
    };
    match name.split_once('.') {
        None => word(name, 8),
        Some((stem, ext)) => word(stem, 8) && word(ext, 3),
    }
}

#[test]
fn any_multipart_body_is_stored_exactly_or_refused_with_a_4xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(TestServer::start(&[]));
    let parts = proptest::collection::vec(
        (file_name(), proptest::collection::vec(any::<u8>(), 0..2048)),
        1..4,
    );
    let mut runner = TestRunner::new(Config {
        cases: 160,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(parts, damage()), |(parts, damage)| {
            rt.block_on(async {
                let bytes = apply(body(&parts), &damage);
                let response = server
                    .client
                    .post(server.url("/upload"))
                    .header("x-api-key", KEY_A)
                    .header(
                        "content-type",
                        format!("multipart/form-data; boundary={BOUNDARY}"),
                    )
                    .body(bytes)
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let answer: serde_json::Value = response.json().await.unwrap_or_default();
                prop_assert!(!status.is_server_error(), "{status}: {answer}");
                prop_assert_eq!(server.staged_files(), 0, "{}", answer);
                let plain = parts.iter().all(|(n, _)| is_plain(n));
                let distinct = parts
                    .iter()
                    .map(|(n, _)| n)
                    .collect::<std::collections::HashSet<_>>()
                    .len()
                    == parts.len();
                if matches!(damage, Damage::None) && plain && distinct {
                    prop_assert!(status.is_success(), "{status}: {answer}");
                }
                if status.is_success() && matches!(damage, Damage::None) && distinct {
                    // Every stored file holds exactly the bytes of the part of that name.
                    let sid = answer["session_id"].as_str().unwrap();
                    for file in answer["files"].as_array().unwrap() {
                        let (id, name) =
                            (file["id"].as_str().unwrap(), file["name"].as_str().unwrap());
                        let stored = server
                            .fetch(&format!("/download/{sid}/{id}"), KEY_A)
                            .await
                            .bytes()
                            .await
                            .unwrap();
                        let sent = parts.iter().find(|(n, _)| n == name);
                        prop_assert!(sent.is_some(), "{} was never sent: {}", name, answer);
                        prop_assert_eq!(&stored[..], &sent.unwrap().1[..]);
                    }
                }
                Ok(())
            })
        })
        .unwrap();
    // And the server still answers.
    let health = rt.block_on(server.health());
    assert_eq!(health["status"], "healthy", "{health}");
}
