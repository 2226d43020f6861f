//! Sandboxes forked from a template process instead of started from nothing.
//!
//! A template is a sandbox of its own (`Sandbox::spawn_template`): bubblewrap with every
//! namespace but the user namespace, as root without a workspace, keeping only the
//! capabilities to change uid (`CAP_SETUID`, `CAP_SETGID`), so that each fork becomes its
//! session's host uid (the workspace's owner, as every other sandbox of the session) and
//! makes a user namespace owned by that uid, then namespaces of its own. It runs no user
//! code. The server talks to it over a `SOCK_SEQPACKET` socket: one request per fork,
//! carrying the fork's JSON settings (its uid among them) and descriptors the server
//! opened as root:
//! - the directories the fork attaches (the workspace first), as detached mounts
//!   (`open_tree(OPEN_TREE_CLONE)`): the template never sees DATA_DIR or another session's
//!   path, and a fork sees only what it was handed;
//! - the fork's own cgroup, as its `cgroup.procs` files opened for writing, which the fork
//!   writes itself into before it does anything else.
//!
//! The template answers once the fork's namespaces exist; the fork's init is then found
//! in its cgroup (the member that is pid 1 of its PID namespace) and watched through a
//! pidfd. The steps a fork takes before user code runs are the template program's (for
//! Python kernels: `runtime/python/template.py`); ARCHITECTURE.md says why they are safe.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    AddressFamily, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags,
    SocketType,
};

use super::cgroup::{GroupLimits, RunCgroup};
use super::{HOME, Handle, Job, Limits, Process, Sandbox, SandboxError, rlimits};
use crate::config::SandboxMode;

/// The most a template's answer may be.
const ANSWER_BYTES: usize = 4096;

/// A template's control socket (the server's end).
pub struct Control(OwnedFd);

/// One fork, prepared: its settings, descriptors and cgroup.
pub struct ForkRequest {
    settings: String,
    fds: Vec<OwnedFd>,
    cgroup: Option<RunCgroup>,
}

impl Sandbox {
    /// Whether sandboxes can be forked from a template here: bubblewrap, root (the server
    /// opens the mounts and cgroup files a fork receives) and writable cgroups (a fork is
    /// found, measured and killed through its own).
    pub fn can_fork(&self) -> bool {
        self.options.mode == SandboxMode::Bwrap && self.uids.is_some() && self.cgroups.is_some()
    }

    /// Start a template: `job.argv` gets the control socket's descriptor and the seccomp
    /// filters' descriptors appended; `points` are the empty mount points its forks attach
    /// directories to. It runs as root on the host, in namespaces of its own but the user
    /// namespace, with capabilities to change uid only (after its first step).
    pub fn spawn_template(
        &self,
        job: &Job,
        points: &[&str],
        run_id: &str,
    ) -> Result<(Process, Control), SandboxError> {
        if self.uids.is_none() {
            return Err(SandboxError::Spawn(io::Error::other("forking needs root")));
        }
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| SandboxError::Spawn(e.into()))?;
        let process = self.spawn_as(job, run_id, None, Some((points, theirs.as_raw_fd())))?;
        drop(theirs);
        Ok((process, Control(ours)))
    }

    /// Everything one fork needs: `attach` are bound in order at the template's mount
    /// points (read-write), the limits become its cgroup and rlimits, and it runs as the
    /// owner of the first (the workspace's), as a sandbox binding it would.
    pub fn prepare_fork(
        &self,
        attach: &[&Path],
        limits: &Limits,
        run_id: &str,
    ) -> Result<ForkRequest, SandboxError> {
        let (uid, gid) = self
            .user_for(attach.first().copied())
            .map_err(SandboxError::Spawn)?
            .ok_or_else(|| SandboxError::Spawn(io::Error::other("forking needs root")))?;
        let mut fds = Vec::with_capacity(attach.len() + 4);
        for dir in attach {
            let tree = rustix::mount::open_tree(
                rustix::fs::CWD,
                *dir,
                rustix::mount::OpenTreeFlags::OPEN_TREE_CLONE
                    | rustix::mount::OpenTreeFlags::OPEN_TREE_CLOEXEC,
            )
            .map_err(|e| SandboxError::Spawn(e.into()))?;
            fds.push(tree);
        }
        let cgroup = match &self.cgroups {
            Some(v1) => Some(
                v1.create_run(
                    run_id,
                    GroupLimits {
                        memory_bytes: limits.memory_bytes,
                        processes: limits.processes,
                    },
                )
                .map_err(SandboxError::Cgroup)?,
            ),
            None => None,
        };
        for procs in cgroup.iter().flat_map(|c| c.procs_paths()) {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(procs)
                .map_err(SandboxError::Cgroup)?;
            fds.push(OwnedFd::from(file));
        }
        let settings = serde_json::json!({
            "tmp_bytes": self.options.tmp_bytes,
            "home": HOME,
            "rlimits": rlimits(limits, cgroup.is_some()),
            "attach": attach.len(),
            "uid": uid,
            "gid": gid,
            "network": self.options.network,
        })
        .to_string();
        Ok(ForkRequest {
            settings,
            fds,
            cgroup,
        })
    }
}

impl Control {
    /// Wait up to `timeout` for one message from the template.
    pub fn receive(&self, timeout: Duration) -> io::Result<Vec<u8>> {
        rustix::net::sockopt::set_socket_timeout(
            &self.0,
            rustix::net::sockopt::Timeout::Recv,
            Some(timeout),
        )?;
        let mut buf = vec![0u8; ANSWER_BYTES];
        let (n, _) = rustix::net::recv(&self.0, &mut buf, RecvFlags::empty())?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the template closed its socket",
            ));
        }
        buf.truncate(n.min(ANSWER_BYTES));
        Ok(buf)
    }

    /// Send one fork request; the answer is the template's (see `receive`).
    pub fn send(&self, request: &ForkRequest) -> io::Result<()> {
        let borrowed: Vec<_> = request.fds.iter().map(|f| f.as_fd()).collect();
        let mut space =
            vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(borrowed.len()))];
        let mut ancillary = SendAncillaryBuffer::new(&mut space);
        if !ancillary.push(SendAncillaryMessage::ScmRights(&borrowed)) {
            return Err(io::Error::other("too many descriptors for one fork"));
        }
        let sent = rustix::net::sendmsg(
            &self.0,
            &[io::IoSlice::new(request.settings.as_bytes())],
            &mut ancillary,
            SendFlags::NOSIGNAL,
        )?;
        if sent != request.settings.len() {
            return Err(io::Error::other("a fork request was cut short"));
        }
        Ok(())
    }
}

impl ForkRequest {
    /// After the template said the fork's namespaces exist: the fork's init (the member of
    /// its cgroup that is pid 1 of its own PID namespace), as a handle that measures and
    /// kills the fork and a pidfd that becomes readable when it ends.
    pub fn adopt(mut self) -> Result<(Handle, OwnedFd), SandboxError> {
        drop(std::mem::take(&mut self.fds));
        let cgroup = self.cgroup.take();
        let init = cgroup
            .as_ref()
            .and_then(|c| c.members().into_iter().find(|&pid| is_namespace_init(pid)));
        let handle = Handle { pid: init, cgroup };
        let Some(pid) = init.and_then(|p| rustix::process::Pid::from_raw(p as i32)) else {
            return Err(SandboxError::Spawn(io::Error::other(
                "the forked sandbox ended before it started",
            )));
        };
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            .map_err(|e| SandboxError::Spawn(e.into()))?;
        Ok((handle, pidfd))
    }
}

/// Whether host process `pid` is pid 1 of a PID namespace below ours.
fn is_namespace_init(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|ids| {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            ids.len() > 1 && ids.last() == Some(&"1")
        })
        .unwrap_or(false)
}
