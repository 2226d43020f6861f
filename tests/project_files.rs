//! The project's own files stay true: every setting is in `.env.example`, the container
//! options are the same in compose.yaml and the image test, every Makefile target is in
//! `make help`, and the documentation links only to files in the repository.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The environment variable of every setting, from `code-interpreter --help`.
fn settings() -> Vec<String> {
    let help = Command::new(env!("CARGO_BIN_EXE_code-interpreter"))
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    let text = String::from_utf8(help.stdout).unwrap();
    let names: Vec<String> = text
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    assert!(
        names.len() > 20,
        "too few settings found in --help: {names:?}"
    );
    names
}

#[test]
fn every_setting_is_in_the_env_example() {
    let example = read(".env.example");
    let missing: Vec<String> = settings()
        .into_iter()
        .filter(|name| {
            !example.lines().any(|l| {
                l.trim_start_matches(['#', ' '])
                    .starts_with(&format!("{name}="))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "add these settings to .env.example (a commented `# NAME=default` line with a comment above): {missing:?}"
    );
}

#[test]
fn compose_and_the_image_test_run_the_container_with_the_documented_options() {
    let compose = read("compose.yaml");
    let image_test = read("scripts/image");
    let readme = read("README.md");
    for option in ["seccomp=unconfined", "systempaths=unconfined"] {
        assert!(
            compose.contains(&format!("- {option}")),
            "compose.yaml lacks {option}"
        );
        assert!(
            image_test.contains(&format!("--security-opt {option}")),
            "scripts/image does not run the container with {option}"
        );
        assert!(
            readme.contains(option),
            "README.md does not document {option}"
        );
    }
    for needle in ["env_file: .env", "data:/data", "notebooks:/notebooks"] {
        assert!(compose.contains(needle), "compose.yaml lacks `{needle}`");
    }
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains(r#"CMD ["code-interpreter", "healthcheck"]"#),
        "the HEALTHCHECK is the exec-form readiness check"
    );
}

#[test]
fn every_make_target_has_a_line_in_make_help() {
    let makefile = read("Makefile");
    let phony: Vec<&str> = makefile
        .split(".PHONY:")
        .skip(1)
        .flat_map(|rest| {
            rest.split('\n')
                .take_while(|l| !l.trim().is_empty())
                .flat_map(|l| l.trim_end_matches('\\').split_whitespace())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(phony.contains(&"test"), "{phony:?}");
    for target in phony {
        let described = makefile
            .lines()
            .any(|l| l.starts_with(&format!("{target}:")) && l.contains("## "));
        assert!(
            described,
            "`make {target}` has no `## description` on its rule line, so `make help` omits it"
        );
    }
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![
        root().join("README.md"),
        root().join("CONTRIBUTING.md"),
        root().join("CHANGELOG.md"),
        root().join("ARCHITECTURE.md"),
        root().join("e2e/README.md"),
    ];
    if let Ok(entries) = std::fs::read_dir(root().join("docs")) {
        files.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "md")),
        );
    }
    files.into_iter().filter(|p| p.exists()).collect()
}

#[test]
fn the_documentation_stands_on_its_own() {
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(root()).unwrap().display().to_string();
        for outside in ["../shared", "/work/shared", "shared/"] {
            assert!(
                !text.contains(outside),
                "{name} points outside the repository ({outside})"
            );
        }
        // Relative links must reach a file of the repository.
        for target in text
            .split("](")
            .skip(1)
            .filter_map(|rest| rest.split(')').next())
        {
            let target = target.split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let resolved = file.parent().unwrap().join(target);
            assert!(
                resolved.exists(),
                "{name} links to {target}, which is not in the repository"
            );
        }
    }
}
