//! Real Redis and a real SeaweedFS S3 server on loopback for `STORE=shared` tests, started
//! once per test binary and killed with it.
//!
//! The processes are started by a keeper thread that lives as long as the test binary, with
//! `PR_SET_PDEATHSIG`, so they die with it whatever way it ends. Tests stop and restart them
//! through [`SharedParts::stop_redis`] and friends (outage tests).

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::netns::Netns;

pub const S3_KEY: &str = "test-access-key";
pub const S3_SECRET: &str = "test-secret-key";
pub const BUCKET: &str = "code-interpreter-test";

/// Where scripts/install-cluster-tools puts its pinned tools.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/code-interpreter/tools"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs jobs on one thread that never ends, so `PR_SET_PDEATHSIG` (which follows the thread
/// that forked) kills the children only when the test binary ends.
fn keeper() -> &'static Mutex<mpsc::Sender<Job>> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for job in rx {
                job();
            }
        });
        Mutex::new(tx)
    })
}

fn on_keeper<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    keeper()
        .lock()
        .unwrap()
        .send(Box::new(move || {
            let _ = tx.send(f());
        }))
        .unwrap();
    rx.recv().unwrap()
}

/// Start `cmd` so that it dies with the test binary.
pub fn spawn_dying_with_us(mut cmd: Command) -> Child {
    on_keeper(move || {
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.spawn().expect("the test part starts")
    })
}

/// Wait for `host:port` to take connections, asked from inside `netns` when given.
pub fn wait_port(netns: Option<&Netns>, host: &str, port: u16, what: &str, within: Duration) {
    let wait = || {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if TcpStream::connect((host, port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{what} did not listen on {host}:{port} within {within:?}");
    };
    match netns {
        Some(ns) => ns.run(wait),
        None => wait(),
    }
}

pub struct SharedParts {
    /// Where they listen: loopback, or an address inside `netns`.
    pub host: String,
    netns: Option<Netns>,
    pub redis_port: u16,
    pub s3_port: u16,
    dir: PathBuf,
    redis: Mutex<Option<Child>>,
    weed: Mutex<Option<Child>>,
    weed_ports: [u16; 10],
}

impl SharedParts {
    /// The parts of this test binary, started on first use.
    pub fn get() -> &'static SharedParts {
        static PARTS: OnceLock<SharedParts> = OnceLock::new();
        PARTS.get_or_init(SharedParts::start)
    }

    /// Parts of one's own (a test that stops them must not disturb the others).
    pub fn start() -> SharedParts {
        Self::start_at(None)
    }

    /// Parts listening on `netns`'s address, started inside it.
    pub fn start_in(netns: &Netns) -> SharedParts {
        Self::start_at(Some(netns))
    }

    fn start_at(netns: Option<&Netns>) -> SharedParts {
        let dir = tempfile::Builder::new()
            .prefix("ci-shared-")
            .tempdir()
            .unwrap()
            .keep();
        let parts = SharedParts {
            host: netns.map_or_else(|| "127.0.0.1".to_owned(), |ns| ns.ip.to_string()),
            netns: netns.cloned(),
            redis_port: free_port(),
            s3_port: free_port(),
            dir,
            redis: Mutex::new(None),
            weed: Mutex::new(None),
            weed_ports: std::array::from_fn(|_| free_port()),
        };
        parts.start_redis();
        parts.start_weed();
        parts
    }

    pub fn redis_url(&self) -> String {
        format!("redis://{}:{}/0", self.host, self.redis_port)
    }

    pub fn s3_endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.s3_port)
    }

    /// The settings a server needs for `STORE=shared`, its keys under `prefix`.
    pub fn env(&self, prefix: &str) -> Vec<(String, String)> {
        [
            ("STORE", "shared".to_owned()),
            ("REDIS_URL", self.redis_url()),
            ("REDIS_KEY_PREFIX", prefix.to_owned()),
            ("S3_ENDPOINT", self.s3_endpoint()),
            ("S3_BUCKET", BUCKET.to_owned()),
            ("S3_ACCESS_KEY_ID", S3_KEY.to_owned()),
            ("S3_SECRET_ACCESS_KEY", S3_SECRET.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Redis with an append-only file synced on every write: a restart keeps everything
    /// it acknowledged, as a deployment's Redis must.
    pub fn start_redis(&self) {
        let dir = self.dir.join("redis");
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = self.command("redis-server");
        cmd.args(["--bind", &self.host, "--port"])
            .arg(self.redis_port.to_string())
            // No password: it answers only on loopback or inside a test's own namespaces.
            .args(["--protected-mode", "no"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        *self.redis.lock().unwrap() = Some(spawn_dying_with_us(cmd));
        self.wait_port(self.redis_port, "redis-server", Duration::from_secs(20));
    }

    pub fn stop_redis(&self) {
        stop(&mut self.redis.lock().unwrap());
    }

    /// `weed mini` (master, volume, filer and S3 in one process), every port on loopback,
    /// the bucket created at start.
    pub fn start_weed(&self) {
        let weed = tools_dir().join("bin/weed");
        assert!(
            weed.exists(),
            "{} is missing: run scripts/bootstrap",
            weed.display()
        );
        let data = self.dir.join("weed");
        std::fs::create_dir_all(&data).unwrap();
        let p = self.weed_ports;
        let mut cmd = self.command(weed);
        cmd.arg("mini")
            .arg(format!("-dir={}", data.display()))
            .arg(format!("-ip={}", self.host))
            .arg(format!("-ip.bind={}", self.host))
            .arg(format!("-s3.port={}", self.s3_port))
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-admin.port={}", p[6]))
            .arg(format!("-admin.port.grpc={}", p[7]))
            .arg(format!("-s3.port.grpc={}", p[8]))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .args(["-admin.ui=false", "-webdav=false"])
            .arg(format!("-bucket={BUCKET}"))
            .current_dir(&data)
            .env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        *self.weed.lock().unwrap() = Some(spawn_dying_with_us(cmd));
        self.wait_port(self.s3_port, "weed mini (S3)", Duration::from_secs(60));
        self.wait_bucket();
    }

    /// The S3 port opens before the bucket exists: wait until the filer lists it.
    fn wait_bucket(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!(
            "http://{}:{}/buckets/{BUCKET}/",
            self.host, self.weed_ports[4]
        );
        while Instant::now() < deadline {
            let out = self
                .command("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(["-H", "Accept: application/json"])
                .arg(&url)
                .output()
                .unwrap();
            if out.stdout == b"200" {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the bucket {BUCKET} did not appear");
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            Some(ns) => ns.command(program),
            None => Command::new(program),
        }
    }

    fn wait_port(&self, port: u16, what: &str, within: Duration) {
        wait_port(self.netns.as_ref(), &self.host, port, what, within);
    }

    pub fn stop_weed(&self) {
        stop(&mut self.weed.lock().unwrap());
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SharedParts {
    fn drop(&mut self) {
        self.stop_redis();
        self.stop_weed();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stop(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A key prefix of its own for each DATA_DIR, so servers of different tests never see each
/// other's sessions, and a server restarted on the same DATA_DIR finds its own again.
pub fn prefix_for(data_dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut hasher);
    format!("t{:016x}:", hasher.finish())
}

/// Whether this test run asks every server for `STORE=shared` (`make test` runs some test
/// files both ways).
pub fn wanted() -> bool {
    std::env::var("CODE_INTERPRETER_TEST_STORE").as_deref() == Ok("shared")
}
