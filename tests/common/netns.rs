//! Network namespaces joined by a bridge, made for one test and deleted after it (also
//! when it fails). The bridge lives in a namespace of its own, so the test's machine gets no
//! interface, address or route: every address here is reachable only from inside one of
//! these namespaces. Processes are started in one ([`Netns::command`] joins it between fork
//! and exec, only its network: mounts, cgroups and the rest stay the machine's), and the
//! test talks to them from a thread that joined one ([`Netns::run`]).

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;

/// One namespace of a [`Network`] and its address on the bridge.
#[derive(Clone)]
pub struct Netns {
    pub name: String,
    pub ip: Ipv4Addr,
    file: Arc<File>,
}

impl Netns {
    /// `program` to be started inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        self.join_on_exec(&mut cmd);
        cmd
    }

    /// Make `cmd`'s process join this namespace before it execs.
    pub fn join_on_exec(&self, cmd: &mut Command) {
        let file = Arc::clone(&self.file);
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Run `f` on a thread inside this namespace; threads it starts (a tokio runtime's)
    /// are inside it too.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let rc = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

/// Namespaces `<prefix>-<name>` on one bridge (10.88.0.0/24, the n-th at .n+1), deleted on drop.
pub struct Network {
    hub: String,
    members: Vec<Netns>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Network {
    pub fn create(names: &[&str]) -> Network {
        let prefix = format!("ci{}", std::process::id());
        let hub = format!("{prefix}-hub");
        // Whatever happens next, `Drop` deletes what was made.
        let mut network = Network {
            hub: hub.clone(),
            members: Vec::new(),
        };
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{prefix}-{name}");
            let address = Ipv4Addr::new(10, 88, 0, i as u8 + 1);
            ip(&["netns", "add", &ns]);
            let file = File::open(format!("/run/netns/{ns}")).expect("the namespace opens");
            network.members.push(Netns {
                name: ns.clone(),
                ip: address,
                file: Arc::new(file),
            });
            let port = format!("p{i}");
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        network
    }

    /// The namespace made as `name`.
    pub fn ns(&self, name: &str) -> &Netns {
        self.members
            .iter()
            .find(|m| m.name.ends_with(&format!("-{name}")))
            .unwrap_or_else(|| panic!("no namespace {name}"))
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for name in self
            .members
            .iter()
            .map(|m| m.name.as_str())
            .chain([self.hub.as_str()])
        {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
}
