//! The invariants of ARCHITECTURE.md that a reading of the source can check. Each test names
//! the invariant it guards; a failure names the file and line that broke it.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn src(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(rel)
}

/// Lines of the given modules (files or directories under src/) that contain any of
/// `needles`, outside comments and `#[cfg(test)]` modules.
fn offending(modules: &[&str], needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for module in modules {
        let path = src(module);
        let files = if path.is_dir() {
            rust_files(&path)
        } else {
            vec![path]
        };
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("#[cfg(test)]") {
                    break;
                }
                if code.starts_with("//") {
                    continue;
                }
                if let Some(needle) = needles.iter().find(|needle| line.contains(*needle)) {
                    let rel = file.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
                    found.push(format!("{}:{}: {needle}", rel.display(), n + 1));
                }
            }
        }
    }
    found
}

#[test]
fn only_api_and_mcp_know_http_and_mcp() {
    let found = offending(
        &[
            "exec",
            "runtime",
            "sandbox",
            "store",
            "session.rs",
            "notebook.rs",
            "identity",
        ],
        &[
            "axum",
            "rmcp",
            "StatusCode",
            "http::",
            "HeaderMap",
            "/libraries",
            "GET /",
        ],
    );
    assert!(
        found.is_empty(),
        "HTTP or MCP outside api/mcp:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_config_reads_the_environment() {
    let found = offending(
        &[
            "api",
            "mcp",
            "exec",
            "runtime",
            "sandbox",
            "store",
            "session.rs",
            "doctor.rs",
            "main.rs",
        ],
        &["env::var", "env::vars", "temp_dir()", "env::args"],
    );
    assert!(
        found.is_empty(),
        "environment read outside config:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_store_and_the_sandbox_know_no_runtime_and_sessions_know_no_store() {
    let found = offending(
        &["store", "sandbox", "session.rs"],
        &["crate::runtime", "crate::exec", "crate::api", "crate::mcp"],
    );
    assert!(
        found.is_empty(),
        "a lower layer imports a higher one:\n{}",
        found.join("\n")
    );
    let found = offending(&["session.rs"], &["crate::store"]);
    assert!(
        found.is_empty(),
        "session and store import each other:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_runtimes_start_sandboxes() {
    // Every run goes through ExecService, which hands it to a runtime; `doctor` launches one
    // probe sandbox of its own (no user code).
    let found = offending(
        &["api", "mcp", "exec", "store", "session.rs", "main.rs"],
        &["sandbox.spawn(", ".spawn(&job"],
    );
    assert!(
        found.is_empty(),
        "a sandbox started outside runtime:\n{}",
        found.join("\n")
    );
}

/// The words of the given modules' code (outside comments and `#[cfg(test)]` modules),
/// lower-cased, each with the file and line it is on.
fn code_words(modules: &[&str]) -> Vec<(String, String)> {
    let mut words = Vec::new();
    for module in modules {
        let path = src(module);
        let files = if path.is_dir() {
            rust_files(&path)
        } else {
            vec![path]
        };
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let rel = file.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("#[cfg(test)]") {
                    break;
                }
                if code.starts_with("//") {
                    continue;
                }
                for word in line.split(|c: char| !c.is_ascii_alphanumeric() && c != '+') {
                    if !word.is_empty() {
                        words.push((
                            word.to_ascii_lowercase(),
                            format!("{}:{}", rel.display(), n + 1),
                        ));
                    }
                }
            }
        }
    }
    words
}

#[test]
fn the_sandbox_the_process_runtime_and_the_store_know_no_language() {
    // What the registry declares, as the binary prints it: names, aliases and the programs
    // each language's probes and recipe start. Words of one or two letters (`c`, `go`, `sh`)
    // are ordinary identifiers and are not looked for.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_code-interpreter"))
        .args(["languages", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let registry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut known = std::collections::BTreeSet::new();
    for language in registry.as_array().unwrap() {
        let name = std::iter::once(&language["name"]);
        let lists = ["aliases", "compat_aliases", "programs"]
            .iter()
            .flat_map(|k| language[*k].as_array().unwrap());
        for word in name.chain(lists) {
            known.insert(word.as_str().unwrap().to_ascii_lowercase());
        }
    }
    assert!(
        known.contains("gfortran") && known.contains("php"),
        "{known:?}"
    );
    known.retain(|w| w.len() > 2);

    let found: Vec<String> = code_words(&["sandbox", "runtime/process.rs"])
        .into_iter()
        // The store and sessions know no language either; there a `node` is a machine of a
        // cluster (STORE=shared), not Node.js.
        .chain(
            code_words(&["store", "session.rs"])
                .into_iter()
                .filter(|(word, _)| word != "node"),
        )
        .filter(|(word, _)| known.contains(word))
        .map(|(word, at)| format!("{at}: {word}"))
        .collect();
    assert!(
        found.is_empty(),
        "the sandbox, the process runtime, the store or the sessions name a language or its toolchain (declare what it needs in its entry in src/runtime/languages):\n{}",
        found.join("\n")
    );
}
