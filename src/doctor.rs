//! `code-interpreter doctor`: what this machine offers, as a table, and whether the server
//! can run here at all (non-zero exit when something required is missing).

use std::path::Path;

use crate::config::Settings;
use crate::sandbox::probe;

struct Check {
    component: &'static str,
    required: bool,
    outcome: Result<String, String>,
}

fn version_of(program: &str, args: &[&str]) -> Result<String, String> {
    probe::first_line_of(program, args).ok_or_else(|| format!("{program} not found on PATH"))
}

fn checks(settings: &Settings) -> Vec<Check> {
    let python = settings.runtime_dir.join("python/bin/python");
    let esbuild = settings.runtime_dir.join("node/node_modules/.bin/esbuild");
    let path_str = |p: &Path| p.to_string_lossy().into_owned();
    let in_runtime_dir = |p: &Path, args: &[&str]| {
        probe::first_line_of(&path_str(p), args)
            .ok_or_else(|| format!("missing at {}; run scripts/bootstrap", p.display()))
    };
    let layout = probe::cgroup_layout(Path::new("/sys/fs/cgroup"));
    vec![
        Check {
            component: "bubblewrap",
            required: true,
            outcome: probe::bwrap_version()
                .ok_or_else(|| "not installed; run scripts/bootstrap".into()),
        },
        Check {
            component: "namespaces",
            required: true,
            outcome: probe::namespaces_work()
                .map(|()| "user, mount, pid, ipc, uts, net, cgroup".to_owned()),
        },
        Check {
            component: "sandbox",
            required: true,
            outcome: launch_sandbox(settings),
        },
        Check {
            component: "cgroups",
            required: false,
            outcome: if layout.limits_available() {
                Ok(layout.describe())
            } else {
                Err(format!(
                    "{}: memory and process limits need the memory and pids controllers",
                    layout.describe()
                ))
            },
        },
        Check {
            component: "python",
            required: true,
            outcome: in_runtime_dir(&python, &["--version"]),
        },
        Check {
            component: "ipykernel",
            required: true,
            outcome: in_runtime_dir(
                &python,
                &["-c", "import ipykernel; print(ipykernel.__version__)"],
            ),
        },
        Check {
            component: "bash",
            required: true,
            outcome: version_of("bash", &["--version"]),
        },
        Check {
            component: "node",
            required: false,
            outcome: version_of("node", &["--version"]),
        },
        Check {
            component: "esbuild",
            required: false,
            outcome: in_runtime_dir(&esbuild, &["--version"]),
        },
        Check {
            component: "go",
            required: false,
            outcome: version_of("go", &["version"]),
        },
        Check {
            component: "gcc",
            required: false,
            outcome: version_of("gcc", &["--version"]),
        },
        Check {
            component: "g++",
            required: false,
            outcome: version_of("g++", &["--version"]),
        },
        Check {
            component: "rustc",
            required: false,
            outcome: version_of("/usr/bin/rustc", &["--version"]),
        },
        Check {
            component: "javac",
            required: false,
            outcome: version_of("javac", &["-version"]),
        },
    ]
}

/// Start a real sandbox the way runs do (same launcher, limits and filter) and run `true`.
fn launch_sandbox(settings: &Settings) -> Result<String, String> {
    let state = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::set_permissions(
        state.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(|e| e.to_string())?;
    let sandbox = crate::sandbox::Sandbox::new(crate::sandbox::SandboxOptions {
        mode: settings.sandbox,
        network: false,
        tmp_bytes: 16 * 1024 * 1024,
        state_dir: state.path().join("sandbox"),
        max_cpus: None,
        uid_base: settings.sandbox_uid_base,
        uid_count: settings.sandbox_uid_count,
    })
    .map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(sandbox.self_test("doctor"))?;
    let iso = sandbox.isolation();
    Ok(format!(
        "{}{}, cgroup limits {}, seccomp {}, network {}",
        iso.mode,
        iso.unprivileged_uid
            .map(|u| format!(" as uid {u}"))
            .unwrap_or_default(),
        if iso.cgroups {
            "on"
        } else {
            "OFF (rlimits only)"
        },
        if iso.seccomp { "on" } else { "off" },
        if settings.sandbox_network == crate::config::NetworkPolicy::Allow {
            "allowed"
        } else {
            "none"
        },
    ))
}

/// Print the table; the exit code is 0 only when every required part is present.
pub fn run(settings: &Settings) -> i32 {
    let checks = checks(settings);
    println!("code-interpreter {} doctor", env!("CARGO_PKG_VERSION"));
    println!("{:<12} {:<8} detail", "component", "status");
    let mut missing = 0;
    for c in &checks {
        let (status, detail) = match &c.outcome {
            Ok(d) => ("ok", d.as_str()),
            Err(d) if c.required => {
                missing += 1;
                ("MISSING", d.as_str())
            }
            Err(d) => ("absent", d.as_str()),
        };
        println!("{:<12} {:<8} {}", c.component, status, detail);
    }
    if missing > 0 {
        println!(
            "\n{missing} required component(s) missing: run scripts/bootstrap (or `make run`)."
        );
        1
    } else {
        0
    }
}
