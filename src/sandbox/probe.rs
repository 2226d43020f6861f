//! Read-only checks of the machine: is bubblewrap here and can it make namespaces, and which
//! cgroup hierarchy (v1, v2 or the hybrid of both) offers which controllers.

use std::path::Path;
use std::process::{Command, Stdio};

/// The smallest sandbox that proves namespaces work: read-only `/usr`, fresh `/proc`,
/// `/dev` and `/tmp`, every namespace unshared.
const BWRAP_PROBE: &[&str] = &[
    "--unshare-all",
    "--die-with-parent",
    "--ro-bind",
    "/usr",
    "/usr",
    "--symlink",
    "usr/lib",
    "/lib",
    "--symlink",
    "usr/lib64",
    "/lib64",
    "--symlink",
    "usr/bin",
    "/bin",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--tmpfs",
    "/tmp",
    "/usr/bin/true",
];

/// Run a command and return the first non-empty line it printed (stdout, else stderr).
pub fn first_line_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    [out.stdout, out.stderr]
        .iter()
        .flat_map(|b| {
            String::from_utf8_lossy(b)
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
}

/// bubblewrap's version, if it is installed.
pub fn bwrap_version() -> Option<String> {
    first_line_of("bwrap", &["--version"]).map(|l| l.trim_start_matches("bubblewrap ").to_owned())
}

/// Whether bubblewrap can start a process in fresh namespaces here; the error otherwise.
pub fn namespaces_work() -> Result<(), String> {
    let out = Command::new("bwrap")
        .args(BWRAP_PROBE)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("bwrap could not start: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Only the unified hierarchy; its controllers.
    V2(Vec<String>),
    /// v1 hierarchies (controllers mounted as directories), perhaps beside a v2 mount with
    /// its own controllers.
    V1 {
        v1: Vec<String>,
        v2: Option<Vec<String>>,
    },
    None,
}

impl CgroupLayout {
    pub fn describe(&self) -> String {
        match self {
            CgroupLayout::V2(c) => format!("v2 (controllers: {})", c.join(" ")),
            CgroupLayout::V1 { v1, v2 } => {
                let mut s = format!("v1 (controllers: {})", v1.join(" "));
                if let Some(v2) = v2 {
                    let list = if v2.is_empty() {
                        "none".to_owned()
                    } else {
                        v2.join(" ")
                    };
                    s.push_str(&format!(" + v2 hybrid (controllers: {list})"));
                }
                s
            }
            CgroupLayout::None => "no cgroup filesystem found".to_owned(),
        }
    }

    /// Whether memory and process-count limits can be enforced.
    pub fn limits_available(&self) -> bool {
        let has = |list: &[String], c: &str| list.iter().any(|x| x == c);
        match self {
            CgroupLayout::V2(c) => has(c, "memory") && has(c, "pids"),
            CgroupLayout::V1 { v1, .. } => has(v1, "memory") && has(v1, "pids"),
            CgroupLayout::None => false,
        }
    }
}

fn read_controllers(path: &Path) -> Option<Vec<String>> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
}

pub fn cgroup_layout(root: &Path) -> CgroupLayout {
    if let Some(c) = read_controllers(&root.join("cgroup.controllers")) {
        return CgroupLayout::V2(c);
    }
    const V1: &[&str] = &[
        "cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "blkio", "devices",
    ];
    let v1: Vec<String> = V1
        .iter()
        .filter(|c| root.join(c).join("cgroup.procs").exists())
        .map(|c| c.to_string())
        .collect();
    if v1.is_empty() {
        return CgroupLayout::None;
    }
    let v2 = read_controllers(&root.join("unified/cgroup.controllers"));
    CgroupLayout::V1 { v1, v2 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v1_hybrid_layout_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        for c in ["memory", "pids", "cpu"] {
            std::fs::create_dir_all(dir.path().join(c)).unwrap();
            std::fs::write(dir.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("unified")).unwrap();
        std::fs::write(dir.path().join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        let layout = cgroup_layout(dir.path());
        assert!(layout.limits_available());
        assert_eq!(
            layout.describe(),
            "v1 (controllers: cpu memory pids) + v2 hybrid (controllers: hugetlb)"
        );
    }

    #[test]
    fn a_v2_layout_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert_eq!(
            cgroup_layout(dir.path()),
            CgroupLayout::V2(vec!["cpu".into(), "memory".into(), "pids".into()])
        );
    }
}
