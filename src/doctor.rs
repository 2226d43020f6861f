//! `code-interpreter doctor`: what this machine offers, as a table, and whether the server
//! can run here at all (non-zero exit when something required is missing). Every language
//! of the registry is checked the way the server sees it: its version probe, in a sandbox.

use std::path::Path;
use std::sync::Arc;

use crate::config::Settings;
use crate::runtime::Language;
use crate::runtime::languages::Recipe;
use crate::runtime::process::ProcessRuntime;
use crate::sandbox::{Sandbox, probe};

struct Check {
    component: &'static str,
    required: bool,
    outcome: Result<String, String>,
}

/// A sandbox made the way the server makes them, for the checks that run something.
struct Probe {
    sandbox: Arc<Sandbox>,
    runtime: tokio::runtime::Runtime,
    state: tempfile::TempDir,
}

fn checks(settings: &Settings) -> Vec<Check> {
    let python = settings.runtime_dir.join("python/bin/python");
    let layout = probe::cgroup_layout(Path::new("/sys/fs/cgroup"));
    let probe = start_probe(settings);
    let mut checks = vec![
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
            outcome: probe
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|p| launch_sandbox(p, settings)),
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
            component: "ipykernel",
            required: true,
            outcome: probe::first_line_of(
                &python.to_string_lossy(),
                &["-c", "import ipykernel; print(ipykernel.__version__)"],
            )
            .ok_or_else(|| format!("missing at {}; run scripts/bootstrap", python.display())),
        },
    ];
    checks.extend(language_checks(probe.as_ref().ok(), settings));
    checks
}

/// Every registry language, asked for its version inside a sandbox, as the server asks.
fn language_checks(probe: Option<&Probe>, settings: &Settings) -> Vec<Check> {
    let process = probe.and_then(|p| {
        ProcessRuntime::new(
            Arc::clone(&p.sandbox),
            settings.runtime_dir.clone(),
            &p.state.path().join("data"),
            Default::default(),
            Default::default(),
        )
        .ok()
        .map(|r| (p, r))
    });
    Language::all()
        .map(|language| {
            let spec = language.spec();
            let outcome = match &process {
                None => Err("not checked: no sandbox could be started".to_owned()),
                Some((p, runtime)) => p
                    .runtime
                    .block_on(runtime.version(language))
                    .map_err(|_| match spec.packages {
                        [] => "not available in the sandbox; run scripts/bootstrap".to_owned(),
                        packages => format!(
                            "not available in the sandbox; scripts/bootstrap installs it (Debian: {})",
                            packages.join(" ")
                        ),
                    }),
            };
            Check {
                component: spec.name,
                required: spec.required,
                outcome,
            }
        })
        .collect()
}

fn start_probe(settings: &Settings) -> Result<Probe, String> {
    let state = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::set_permissions(
        state.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(|e| e.to_string())?;
    let sandbox = Sandbox::new(crate::sandbox::SandboxOptions {
        mode: settings.sandbox,
        network: false,
        tmp_bytes: 16 * 1024 * 1024,
        state_dir: state.path().join("sandbox"),
        max_cpus: None,
        uid_base: settings.sandbox_uid_base,
        uid_count: settings.sandbox_uid_count,
        launchers: 0,
    })
    .map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Probe {
        sandbox: Arc::new(sandbox),
        runtime,
        state,
    })
}

/// Start a real sandbox the way runs do (same launcher, limits and filter) and check it.
fn launch_sandbox(probe: &Probe, settings: &Settings) -> Result<String, String> {
    let sandbox = &probe.sandbox;
    probe.runtime.block_on(sandbox.self_test("doctor"))?;
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

/// `code-interpreter languages`: the registry as a table, or as JSON for tools.
pub fn list_languages(json: bool) -> String {
    let specs = crate::runtime::languages::LANGUAGES;
    if json {
        let list: Vec<serde_json::Value> = specs
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "aliases": s.aliases,
                    "compat_aliases": s.compat_aliases,
                    "stateful": s.recipe == Recipe::Kernel,
                    "compiled": s.compiled(),
                    "doc": s.doc,
                    "packages": s.packages,
                    "programs": s.programs(),
                })
            })
            .collect();
        return format!("{}\n", serde_json::Value::Array(list));
    }
    let mut out = format!(
        "{:<12} {:<16} {:<12} {}\n",
        "language", "aliases", "runs as", "Debian packages"
    );
    for s in specs {
        let runs = match s.recipe {
            Recipe::Kernel => "kernel",
            Recipe::Interpret { .. } => "interpreted",
            Recipe::Compile { .. } => "compiled",
        };
        out.push_str(&format!(
            "{:<12} {:<16} {:<12} {}\n",
            s.name,
            s.aliases.join(", "),
            runs,
            s.packages.join(" ")
        ));
    }
    out
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
