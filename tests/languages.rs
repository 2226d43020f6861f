//! Every registered language, through the same table: hello world with arguments, reading
//! an uploaded file from /mnt/data, writing a file that comes back in `files`, a broken
//! program that ends in `status: error` with the message in stderr, and, for compiled
//! languages, a second identical run served from the build cache. The languages come from
//! the binary's own registry (`code-interpreter languages --json`), so a language added
//! there without a row here fails this test.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{KEY_A, TestServer, exec};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Programs for one language. `hello` prints `hello <number of args>`; `io` reads the
/// number in `/mnt/data/in.txt` (21), prints its double and writes it to `out.txt`;
/// `broken` fails to compile or to run, naming `undefined_name`.
struct Sample {
    /// Asked for by this name (an alias, where there is one, to exercise the aliases).
    lang: &'static str,
    hello: &'static str,
    io: &'static str,
    broken: &'static str,
    /// A package `/libraries` must list, for languages that list some.
    library: Option<&'static str>,
}

const SAMPLES: &[(&str, Sample)] = &[
    (
        "python",
        Sample {
            lang: "py",
            hello: "import sys\nprint('hello', len(sys.argv) - 1)",
            io: "n = int(open('/mnt/data/in.txt').read())\nprint(n * 2)\nwith open('/mnt/data/out.txt', 'w') as f:\n    f.write(f'{n * 2}\\n')",
            broken: "print(undefined_name)",
            library: Some("numpy"),
        },
    ),
    (
        "bash",
        Sample {
            lang: "bash",
            hello: "echo \"hello $#\"",
            io: "n=$(cat /mnt/data/in.txt)\necho $((n * 2))\necho $((n * 2)) > /mnt/data/out.txt",
            broken: "undefined_name",
            library: None,
        },
    ),
    (
        "sh",
        Sample {
            lang: "sh",
            hello: "echo \"hello $#\"",
            io: "n=$(cat /mnt/data/in.txt)\necho $((n * 2))\necho $((n * 2)) > out.txt",
            broken: "undefined_name",
            library: None,
        },
    ),
    (
        "javascript",
        Sample {
            lang: "js",
            hello: "console.log('hello', process.argv.length - 2)",
            io: "const fs = require('fs');\nconst n = parseInt(fs.readFileSync('/mnt/data/in.txt', 'utf8'));\nconsole.log(n * 2);\nfs.writeFileSync('/mnt/data/out.txt', `${n * 2}\\n`);",
            broken: "console.log(undefined_name)",
            library: Some("fs"),
        },
    ),
    (
        "typescript",
        Sample {
            lang: "ts",
            hello: "const n: number = process.argv.length - 2;\nconsole.log('hello', n);",
            io: "import { readFileSync, writeFileSync } from 'node:fs';\nconst n: number = parseInt(readFileSync('/mnt/data/in.txt', 'utf8'));\nconsole.log(n * 2);\nwriteFileSync('/mnt/data/out.txt', `${n * 2}\\n`);",
            // esbuild strips types without checking them: a syntax error fails the build.
            broken: "const x: number = undefined_name +;\nconsole.log(x);",
            library: Some("esbuild"),
        },
    ),
    (
        "go",
        Sample {
            lang: "golang",
            hello: "package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n)\n\nfunc main() { fmt.Println(\"hello\", len(os.Args)-1) }\n",
            io: "package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n\t\"strconv\"\n\t\"strings\"\n)\n\nfunc main() {\n\tb, err := os.ReadFile(\"/mnt/data/in.txt\")\n\tif err != nil {\n\t\tpanic(err)\n\t}\n\tn, _ := strconv.Atoi(strings.TrimSpace(string(b)))\n\tfmt.Println(n * 2)\n\tos.WriteFile(\"/mnt/data/out.txt\", []byte(fmt.Sprintf(\"%d\\n\", n*2)), 0o644)\n}\n",
            broken: "package main\n\nfunc main() { undefined_name() }\n",
            library: Some("fmt"),
        },
    ),
    (
        "c",
        Sample {
            lang: "c",
            hello: "#include <stdio.h>\nint main(int argc, char **argv) { printf(\"hello %d\\n\", argc - 1); return 0; }",
            io: "#include <stdio.h>\nint main(void) {\n  int n;\n  FILE *in = fopen(\"/mnt/data/in.txt\", \"r\");\n  if (!in || fscanf(in, \"%d\", &n) != 1) return 1;\n  fclose(in);\n  printf(\"%d\\n\", n * 2);\n  FILE *out = fopen(\"/mnt/data/out.txt\", \"w\");\n  fprintf(out, \"%d\\n\", n * 2);\n  return fclose(out);\n}",
            broken: "int main(void) { return undefined_name; }",
            library: None,
        },
    ),
    (
        "cpp",
        Sample {
            lang: "c++",
            hello: "#include <iostream>\nint main(int argc, char **argv) { std::cout << \"hello \" << argc - 1 << std::endl; }",
            io: "#include <fstream>\n#include <iostream>\nint main() {\n  int n;\n  std::ifstream(\"/mnt/data/in.txt\") >> n;\n  std::cout << n * 2 << '\\n';\n  std::ofstream(\"/mnt/data/out.txt\") << n * 2 << '\\n';\n}",
            broken: "int main() { return undefined_name; }",
            library: None,
        },
    ),
    (
        "rust",
        Sample {
            lang: "rs",
            hello: "fn main() { println!(\"hello {}\", std::env::args().count() - 1); }",
            io: "fn main() {\n    let n: i64 = std::fs::read_to_string(\"/mnt/data/in.txt\").unwrap().trim().parse().unwrap();\n    println!(\"{}\", n * 2);\n    std::fs::write(\"/mnt/data/out.txt\", format!(\"{}\\n\", n * 2)).unwrap();\n}",
            broken: "fn main() { undefined_name(); }",
            library: None,
        },
    ),
    (
        "java",
        Sample {
            lang: "java",
            hello: "public class Hello { public static void main(String[] a) { System.out.println(\"hello \" + a.length); } }",
            io: "import java.nio.file.*;\npublic class Io {\n  public static void main(String[] a) throws Exception {\n    int n = Integer.parseInt(Files.readString(Path.of(\"/mnt/data/in.txt\")).trim());\n    System.out.println(n * 2);\n    Files.writeString(Path.of(\"/mnt/data/out.txt\"), (n * 2) + \"\\n\");\n  }\n}",
            broken: "public class Broken { public static void main(String[] a) { undefined_name(); } }",
            library: Some("java.base"),
        },
    ),
    (
        "r",
        Sample {
            lang: "R",
            hello: "cat(sprintf(\"hello %d\\n\", length(commandArgs(trailingOnly = TRUE))))",
            io: "n <- as.integer(readLines(\"/mnt/data/in.txt\"))\ncat(n * 2, \"\\n\", sep = \"\")\nwriteLines(as.character(n * 2), \"/mnt/data/out.txt\")",
            broken: "print(undefined_name)",
            library: Some("stats"),
        },
    ),
    (
        "php",
        Sample {
            lang: "php",
            hello: "<?php\necho 'hello ', $argc - 1, \"\\n\";",
            io: "<?php\n$n = (int) file_get_contents('/mnt/data/in.txt');\necho $n * 2, \"\\n\";\nfile_put_contents('/mnt/data/out.txt', ($n * 2) . \"\\n\");",
            broken: "<?php\nundefined_name();",
            library: Some("Core"),
        },
    ),
    (
        "fortran",
        Sample {
            lang: "f90",
            hello: "program hello\n  print '(a, i0)', 'hello ', command_argument_count()\nend program hello\n",
            io: "program io\n  integer :: n, u\n  open(newunit=u, file='/mnt/data/in.txt', status='old', action='read')\n  read(u, *) n\n  close(u)\n  print '(i0)', n * 2\n  open(newunit=u, file='/mnt/data/out.txt', status='replace', action='write')\n  write(u, '(i0)') n * 2\n  close(u)\nend program io\n",
            broken: "program broken\n  implicit none\n  print *, undefined_name\nend program broken\n",
            library: None,
        },
    ),
    (
        "d",
        Sample {
            lang: "dlang",
            hello: "import std.stdio;\nvoid main(string[] args) { writeln(\"hello \", args.length - 1); }\n",
            io: "import std.conv, std.file, std.stdio, std.string;\nvoid main() {\n    auto n = to!int(readText(\"/mnt/data/in.txt\").strip);\n    writeln(n * 2);\n    std.file.write(\"/mnt/data/out.txt\", to!string(n * 2) ~ \"\\n\");\n}\n",
            broken: "void main() { undefined_name(); }\n",
            library: None,
        },
    ),
];

/// The registry as the binary prints it.
fn registered() -> Vec<Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_code-interpreter"))
        .args(["languages", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn runtime_dir() -> PathBuf {
    std::env::var_os("RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/code-interpreter"))
}

/// Each build in the cache with the time it was finished.
fn builds(server: &TestServer) -> BTreeMap<String, std::time::SystemTime> {
    std::fs::read_dir(server.data_dir.join("cache/build"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let done = std::fs::metadata(e.path().join(".ok")).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                done.modified().ok()?,
            ))
        })
        .collect()
}

/// Files under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

async fn run(server: &TestServer, body: Value) -> Result<Value, String> {
    let (status, answer) = exec(server, KEY_A, body).await;
    if status != StatusCode::OK {
        return Err(format!("POST /exec answered {status}: {answer}"));
    }
    Ok(answer)
}

fn check(ok: bool, what: &str, body: &Value) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("{what}: {body}"))
    }
}

/// Everything the table promises, for one language.
async fn exercise(server: &TestServer, language: &Value, sample: &Sample) -> Result<(), String> {
    let name = language["name"].as_str().unwrap();
    let compiled = language["compiled"].as_bool().unwrap();

    // Hello world, with arguments; a compiled program is built once.
    let hello = json!({"lang": sample.lang, "code": sample.hello, "args": ["x y", "z"]});
    let before = builds(server);
    let first = run(server, hello.clone()).await?;
    check(first["language"] == name, "the canonical name", &first)?;
    check(first["stdout"] == "hello 2\n", "hello's stdout", &first)?;
    check(first["stderr"] == "", "hello's stderr", &first)?;
    check(
        first["run"]["status"] == "success",
        "hello's status",
        &first,
    )?;
    check(
        first["files"] == json!([]),
        "no files (builds stay out)",
        &first,
    )?;
    let after = builds(server);
    let new_builds = after.len() - before.len();
    check(
        new_builds == usize::from(compiled),
        "one build when compiled, else none",
        &first,
    )?;
    if compiled {
        let again = run(server, hello).await?;
        check(
            again["stdout"] == first["stdout"],
            "the cached run's stdout",
            &again,
        )?;
        check(
            builds(server) == after,
            "a second identical run is not rebuilt",
            &again,
        )?;
    }

    // Read an uploaded file; write one that comes back.
    let (status, up) = server
        .upload("/upload", KEY_A, &[("in.txt", b"21\n")], &[])
        .await;
    check(status == StatusCode::OK, "upload", &up)?;
    let sid = up["session_id"].as_str().unwrap();
    let io = run(
        server,
        json!({"lang": sample.lang, "code": sample.io, "session_id": sid}),
    )
    .await?;
    check(io["stdout"] == "42\n", "io's stdout", &io)?;
    check(io["run"]["status"] == "success", "io's status", &io)?;
    check(
        common::names(&io["files"]) == ["out.txt"],
        "io's files",
        &io,
    )?;
    let out = server
        .fetch(io["files"][0]["path"].as_str().unwrap(), KEY_A)
        .await
        .bytes()
        .await
        .unwrap();
    check(&out[..] == b"42\n", "the downloaded out.txt", &io)?;

    // A broken program.
    let broken = run(server, json!({"lang": sample.lang, "code": sample.broken})).await?;
    check(
        broken["run"]["status"] == "error",
        "broken's status",
        &broken,
    )?;
    check(broken["stdout"] == "", "broken's stdout", &broken)?;
    let stderr = broken["stderr"].as_str().unwrap_or_default();
    check(
        stderr.contains("undefined_name"),
        "broken's stderr",
        &broken,
    )?;
    if compiled {
        let message = broken["run"]["message"].as_str().unwrap_or_default();
        check(message.contains("compile"), "broken's message", &broken)?;
    }

    // Its packages, read through the sandboxed runtime.
    let libs: Value = server
        .get_json(
            &format!("/libraries?runtime={}", sample.lang.replace('+', "%2B")),
            KEY_A,
        )
        .await;
    check(libs[0]["runtime"] == name, "/libraries names it", &libs)?;
    if let Some(package) = sample.library {
        let listed = libs[0]["libraries"].as_array().is_some_and(|l| {
            l.iter().any(|p| {
                p["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(package))
            })
        });
        check(listed, &format!("/libraries lists {package}"), &libs)?;
    }
    Ok(())
}

#[tokio::test]
async fn every_registered_language_passes_the_same_table() {
    let languages = registered();
    let names: Vec<&str> = languages
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    let sampled: Vec<&str> = SAMPLES.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names, sampled,
        "every registered language needs a row in SAMPLES (and only those), in registry order"
    );

    let runtime_dir = runtime_dir();
    let server = TestServer::start(&[("RUNTIME_DIR", runtime_dir.to_str().unwrap())]).await;
    // /health lists every language with its version once the probes have run.
    let mut health = Value::Null;
    for _ in 0..300 {
        health = server.health().await;
        if names.iter().all(|n| health["runtimes"][n].is_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for name in &names {
        assert!(
            health["runtimes"][name].is_string(),
            "{name} is not in /health: {health}"
        );
    }

    let mut failures = Vec::new();
    for (language, (_, sample)) in languages.iter().zip(SAMPLES) {
        if let Err(why) = exercise(&server, language, sample).await {
            failures.push(format!("{}: {why}", language["name"]));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    // Go's first build on this fresh DATA_DIR found the standard library prepared at
    // bootstrap instead of compiling it.
    // The tenant's own Go cache (one per tenant, and this test used one tenant).
    let seed = runtime_dir.join("go-cache");
    let tenants: Vec<_> = std::fs::read_dir(server.data_dir.join("cache/go"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    assert_eq!(tenants.len(), 1, "{tenants:?}");
    let cache = files_under(&tenants[0]);
    let missing: Vec<_> = files_under(&seed)
        .into_iter()
        .filter(|f| cache.binary_search(f).is_err())
        .collect();
    assert!(
        missing.is_empty() && !cache.is_empty(),
        "{} seed files are not in the Go cache",
        missing.len()
    );
}

#[tokio::test]
async fn unknown_languages_are_refused_with_the_registered_list() {
    let server = TestServer::start(&[]).await;
    let (status, body) = exec(&server, KEY_A, json!({"lang": "cobol", "code": "x"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let detail = body["detail"].as_str().unwrap();
    for language in registered() {
        let name = language["name"].as_str().unwrap();
        assert!(detail.contains(name), "{name} missing from: {detail}");
    }
    let openapi: Value = server.get_json("/openapi.json", KEY_A).await;
    let lang = &openapi["components"]["schemas"]["ExecBody"]["properties"]["lang"];
    let description = lang["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("fortran (f90)") && description.contains("php"),
        "{lang}"
    );
}
