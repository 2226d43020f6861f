#!/opt/code-interpreter/python/bin/python
"""Benchmark harness for the code-interpreter server.

Builds the release binary, starts it on a free loopback port with a fresh DATA_DIR and a
random API key, and measures each registered scenario against a baseline taken in the same
run (interleaved round by round, so machine noise hits both sides alike).

    /opt/code-interpreter/python/bin/python bench/run.py            # full run (< 10 min)
    /opt/code-interpreter/python/bin/python bench/run.py --quick    # smoke run (< 2 min)

A scenario is one function decorated with @scenario; the list SCENARIOS is run in order.
A scenario raises Skip when the server lacks the feature it needs (404/405/501 on its
route) and ScenarioError when the server misbehaves (HTTP 5xx, wrong stdout, failed run).
Only errors make the exit status non-zero (and missed goals with --strict on a full run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
DEFAULT_RUNTIME_DIR = "/opt/code-interpreter"
MIB = 1 << 20
GIB = 1 << 30
SANDBOX_UID = 65534
HTTP_TIMEOUT = 300


# ----------------------------------------------------------------------------- outcomes


class Skip(Exception):
    """The server does not offer what the scenario needs (yet)."""


class ScenarioError(Exception):
    """The server (or a baseline) did something wrong: the run counts as failed."""


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class Series:
    label: str
    samples: list[float]
    unit: str = "ms"
    role: str = "measured"  # measured | baseline | detail

    def stats(self) -> dict:
        s = sorted(self.samples)
        return {
            "n": len(s),
            "p50": percentile(s, 0.50),
            "p90": percentile(s, 0.90),
            "p99": percentile(s, 0.99),
            "min": s[0] if s else float("nan"),
            "max": s[-1] if s else float("nan"),
            "mean": sum(s) / len(s) if s else float("nan"),
        }

    @property
    def p50(self) -> float:
        return self.stats()["p50"]


@dataclass
class Goal:
    text: str
    measured: str
    met: bool | None  # None: informational, no goal


@dataclass
class Result:
    name: str
    title: str
    measures: str = ""
    status: str = "ok"  # ok | skipped | error
    detail: str = ""
    series: list[Series] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    load: str = ""

    def add(self, label: str, samples: list[float], unit: str = "ms", role: str = "measured") -> Series:
        s = Series(label, list(samples), unit, role)
        self.series.append(s)
        return s

    def goal(self, text: str, measured: str, met: bool | None) -> None:
        self.goals.append(Goal(text, measured, met))

    def info(self, text: str, measured: str) -> None:
        self.goals.append(Goal(text, measured, None))


@dataclass
class Scenario:
    name: str
    title: str
    measures: str
    fn: Callable[["Ctx", Result], None]


SCENARIOS: list[Scenario] = []


def scenario(name: str, title: str, measures: str):
    """Register a scenario; the list order is the run order."""

    def register(fn):
        SCENARIOS.append(Scenario(name, title, measures, fn))
        return fn

    return register


# ----------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_line(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unavailable ({err.__class__.__name__})"
    text = (p.stdout or p.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


# Baselines run with the environment the server gives sandboxed code (an allowlist), not
# the harness's own: an inherited variable can change a baseline a lot (for example
# NODE_EXTRA_CA_CERTS makes every `node` start load a CA bundle, ~40 ms here).
BASELINE_ENV: dict[str, str] = {}


def timed_command(argv: list[str], expect_stdout: str | None = None, cwd: str = "/") -> float:
    """Run argv directly (no shell), stdout/stderr piped as the server does; ms."""
    t0 = time.perf_counter()
    p = subprocess.run(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=BASELINE_ENV
    )
    elapsed = ms_since(t0)
    if p.returncode != 0:
        raise ScenarioError(
            f"baseline {' '.join(argv[:3])}... exited {p.returncode}: {p.stderr.decode(errors='replace')[-400:]}"
        )
    if expect_stdout is not None and p.stdout.decode(errors="replace") != expect_stdout:
        raise ScenarioError(f"baseline {argv[0]} printed {p.stdout[:200]!r}, expected {expect_stdout!r}")
    return elapsed


def fmt_ms(v: float) -> str:
    if v != v:  # NaN
        return "-"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def proc_status(pid: int, key: str) -> int | None:
    """A kB field of /proc/<pid>/status, in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def route_missing(r: requests.Response) -> bool:
    """True when the answer means 'this route/feature is not built', not a failed request."""
    if r.status_code == 501:
        return True
    if r.status_code in (404, 405):
        try:
            code = r.json().get("error")
        except ValueError:
            return True
        return code in ("not_found", "method_not_allowed", None)
    return False


def describe(r: requests.Response) -> str:
    return f"HTTP {r.status_code}: {r.text[:400]}"


# ----------------------------------------------------------------------------- server


class Server:
    """The release binary, serving on a free loopback port with a throw-away DATA_DIR."""

    def __init__(self, binary: Path, runtime_dir: str, keep: bool, extra_env: dict[str, str] | None = None):
        self.binary = binary
        self.runtime_dir = runtime_dir
        self.keep = keep
        # Settings that differ from the main server's (e.g. KERNEL_POOL_SIZE=0 for a second one).
        self.extra_env = dict(extra_env or {})
        # mktemp -d gives 0700; the sandbox user (65534) must be able to search the parents.
        self.root = Path(tempfile.mkdtemp(prefix="ci-bench-"))
        os.chmod(self.root, 0o755)
        self.data_dir = self.root / "data"
        self.scratch = self.root / "scratch"
        self.scratch.mkdir()
        self.log_path = self.root / "server.log"
        self.api_key = secrets.token_urlsafe(24)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "DATA_DIR": str(self.data_dir),
            "RUNTIME_DIR": self.runtime_dir,
            "CODE_INTERPRETER_API_KEY": self.api_key,
            # The 1 GiB transfer needs more than the 150 MiB default upload limit and the
            # 1 GiB default session quota.
            "MAX_UPLOAD_BYTES": str(2 * GIB),
            "SESSION_DISK_QUOTA_MB": "0",
            "LOG_LEVEL": "warn",
            # "{port}" in a value is this server's port (NODE_URL).
            **{k: v.replace("{port}", str(self.port)) for k, v in self.extra_env.items()},
        }
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(self.binary), "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.base + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server did not answer /health within 60 s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def hwm(self) -> int | None:
        return proc_status(self.proc.pid, "VmHWM") if self.proc else None

    def rss(self) -> int | None:
        return proc_status(self.proc.pid, "VmRSS") if self.proc else None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if self._log:
            self._log.close()
        if self.keep:
            log(f"kept {self.root} (server log: {self.log_path})")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


class Api:
    """Thin client: keep-alive HTTP, x-api-key, checks that make a scenario fail loudly."""

    def __init__(self, server: Server):
        self.server = server
        self.http = self.new_http()

    def new_http(self) -> requests.Session:
        s = requests.Session()
        s.headers["x-api-key"] = self.server.api_key
        return s

    def url(self, path: str) -> str:
        return self.server.base + path

    def exec(
        self,
        lang: str,
        code: str,
        session_id: str | None = None,
        expect_stdout: str | None = None,
        http: requests.Session | None = None,
    ) -> tuple[float, dict]:
        """POST /exec; (client-side milliseconds, response JSON)."""
        body: dict = {"lang": lang, "code": code}
        if session_id:
            body["session_id"] = session_id
        t0 = time.perf_counter()
        r = (http or self.http).post(self.url("/exec"), json=body, timeout=HTTP_TIMEOUT)
        elapsed = ms_since(t0)
        if route_missing(r):
            raise Skip(f"POST /exec answered {r.status_code}")
        if r.status_code != 200:
            raise ScenarioError(f"POST /exec ({lang}) {describe(r)}")
        j = r.json()
        run = j.get("run") or {}
        if run.get("status") != "success":
            raise ScenarioError(
                f"POST /exec ({lang}) run.status={run.get('status')!r} code={run.get('code')} "
                f"stderr={str(j.get('stderr'))[-400:]!r}"
            )
        if expect_stdout is not None and j.get("stdout") != expect_stdout:
            raise ScenarioError(f"POST /exec ({lang}) stdout {j.get('stdout')!r}, expected {expect_stdout!r}")
        return elapsed, j

    def delete_session(self, session_id: str) -> None:
        try:
            self.http.delete(self.url(f"/sessions/{session_id}"), timeout=60)
        except requests.RequestException:
            pass


@dataclass
class Ctx:
    quick: bool
    server: Server
    api: Api
    runtime_dir: str
    nonce: str

    def reps(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    @property
    def scratch(self) -> Path:
        return self.server.scratch

    def sandbox_path(self) -> str:
        """The PATH the server gives sandboxed code, to resolve the same binaries."""
        return f"{self.runtime_dir}/python/bin:{self.runtime_dir}/go/bin:/usr/local/bin:/usr/bin:/bin"

    def wait_pool_full(self, timeout: float = 30.0) -> str:
        """Wait until /health reports a full kernel pool (its kernels.pool_size: KERNEL_POOL_SIZE
        or its default), so kernels starting in the background do not compete with a
        measurement. Returns how the wait ended, for the notes."""
        want = int(os.environ.get("KERNEL_POOL_SIZE", "2"))
        deadline = time.monotonic() + timeout
        while True:
            try:
                kernels = requests.get(self.api.url("/health"), timeout=10).json().get("kernels")
            except (requests.RequestException, ValueError):
                kernels = None
            if not isinstance(kernels, dict):
                time.sleep(0.5 if self.quick else 2.0)
                return "no kernel counts in /health: waited a fixed time"
            want = int(kernels.get("pool_size", want))
            if kernels.get("pooled", 0) >= want:
                return f"waited for /health kernels.pooled ≥ {want}"
            if time.monotonic() > deadline:
                return f"pool not full after {timeout:.0f} s (kernels.pooled={kernels.get('pooled')})"
            time.sleep(0.02)

    def baseline_env(self) -> dict[str, str]:
        """The allowlisted environment of src/runtime/process.rs `env`, HOME in the scratch dir."""
        home = self.scratch / "home"
        home.mkdir(exist_ok=True)
        return {
            "PATH": self.sandbox_path(),
            "HOME": str(home),
            "USER": "sandbox",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TZ": "UTC",
            "TERM": "dumb",
            "TMPDIR": "/tmp",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "MPLBACKEND": "Agg",
        }

    def which(self, name: str) -> str:
        found = shutil.which(name, path=self.sandbox_path())
        if not found:
            raise Skip(f"{name} is not installed")
        return found


# ----------------------------------------------------------------------------- scenarios


@scenario(
    "upload_download",
    "1 GiB upload, then download",
    "POST /upload of one large file (multipart, streamed from disk), then GET /download of it "
    "(streamed, discarded). Baseline: `cat FILE > /dev/null`. Goal: the server's peak RSS "
    "(VmHWM from /proc/<pid>/status) grows by at most 64 MiB across the transfers.",
)
def upload_download(ctx: Ctx, res: Result) -> None:
    size = 64 * MIB if ctx.quick else GIB
    reps = ctx.reps(3, 1)
    cat_reps = ctx.reps(5, 2)
    path = ctx.scratch / "upload.bin"
    block = os.urandom(16 * MIB)
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
    head, tail = block[:MIB], block[-MIB:]
    cat = ctx.which("cat")
    for _ in range(2):  # warm the page cache and the binaries
        timed_command([cat, str(path)])

    up_ms, down_ms, cat_ms = [], [], []
    hwm_before = ctx.server.hwm()
    rss_before = ctx.server.rss()
    rss_peak = [rss_before or 0]
    stop = threading.Event()

    def sample_rss():
        while not stop.is_set():
            v = ctx.server.rss()
            if v:
                rss_peak[0] = max(rss_peak[0], v)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    try:
        for i in range(max(reps, cat_reps)):
            if i < cat_reps:
                cat_ms.append(timed_command([cat, str(path)]))
            if i >= reps:
                continue
            body = MultipartFile(path, "file", f"bench-{i}.bin")
            t0 = time.perf_counter()
            r = ctx.api.http.post(
                ctx.api.url("/upload"),
                data=body,
                headers={"Content-Type": body.content_type},
                timeout=HTTP_TIMEOUT,
            )
            up_ms.append(ms_since(t0))
            if r.status_code != 200:
                raise ScenarioError(f"POST /upload {describe(r)}")
            j = r.json()
            sid, fobj = j["session_id"], j["files"][0]
            if fobj.get("size") != size:
                raise ScenarioError(f"upload stored {fobj.get('size')} bytes, sent {size}")

            t0 = time.perf_counter()
            r = ctx.api.http.get(ctx.api.url(f"/download/{sid}/{fobj['id']}"), stream=True, timeout=HTTP_TIMEOUT)
            if r.status_code != 200:
                raise ScenarioError(f"GET /download {describe(r)}")
            got, first, last = 0, b"", b""
            for chunk in r.iter_content(chunk_size=MIB):
                got += len(chunk)
                if len(first) < MIB:
                    first += chunk[: MIB - len(first)]
                last = (last + chunk)[-MIB:]
            down_ms.append(ms_since(t0))
            if got != size or first != head or last != tail:
                raise ScenarioError(f"download returned {got} bytes (expected {size}) or different content")
            ctx.api.delete_session(sid)
    finally:
        stop.set()
        sampler.join()
        path.unlink(missing_ok=True)
    hwm_after = ctx.server.hwm()

    def rate(samples):
        return [size / MIB / (v / 1000.0) for v in samples]

    label = f"{size // MIB} MiB"
    res.add(f"upload {label} (POST /upload)", up_ms)
    res.add(f"download {label} (GET /download)", down_ms)
    res.add(f"cat {label} > /dev/null (baseline)", cat_ms, role="baseline")
    up_rate, down_rate, cat_rate = rate(up_ms), rate(down_ms), rate(cat_ms)
    res.add("upload throughput", up_rate, unit="MiB/s", role="detail")
    res.add("download throughput", down_rate, unit="MiB/s", role="detail")
    res.add("cat throughput (baseline)", cat_rate, unit="MiB/s", role="detail")

    if hwm_before is None or hwm_after is None:
        res.goal("server VmHWM growth ≤ 64 MiB", "VmHWM unreadable", False)
    else:
        growth = (hwm_after - hwm_before) / MIB
        res.goal(
            "server VmHWM growth ≤ 64 MiB",
            f"{growth:+.1f} MiB (VmHWM {hwm_before / MIB:.1f} → {hwm_after / MIB:.1f} MiB)",
            growth <= 64,
        )
    if rss_before:
        res.info(
            "sampled VmRSS peak over the transfers (every 50 ms)",
            f"{(rss_peak[0] - rss_before) / MIB:+.1f} MiB (from {rss_before / MIB:.1f} MiB)",
        )
    med = lambda xs: percentile(sorted(xs), 0.5)  # noqa: E731
    res.info(
        "throughput vs cat (p50 MiB/s)",
        f"upload {med(up_rate):.0f} / download {med(down_rate):.0f} / cat {med(cat_rate):.0f} "
        f"→ upload {med(up_rate) / med(cat_rate):.2f}×, download {med(down_rate) / med(cat_rate):.2f}× of cat",
    )


class MultipartFile:
    """A multipart/form-data body with one file part, read from disk in 1 MiB pieces, with a
    known length (so requests sends Content-Length and never holds the file in memory)."""

    def __init__(self, path: Path, field_name: str, file_name: str):
        boundary = "bench" + secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={boundary}"
        self._parts = [
            (
                f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="{field_name}"; filename="{file_name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode(),
            path,
            f"\r\n--{boundary}--\r\n".encode(),
        ]
        self._len = len(self._parts[0]) + path.stat().st_size + len(self._parts[2])
        self._i = 0
        self._file = None

    def __len__(self) -> int:
        return self._len

    def read(self, _size: int = -1) -> bytes:
        while self._i < len(self._parts):
            part = self._parts[self._i]
            if isinstance(part, bytes):
                self._i += 1
                return part
            if self._file is None:
                self._file = open(part, "rb")
            chunk = self._file.read(MIB)
            if chunk:
                return chunk
            self._file.close()
            self._i += 1
        return b""


def bwrap_baseline_argv() -> list[str]:
    """bwrap with the server's base profile (see src/sandbox/mod.rs `bwrap_args`), minus the
    per-run parts (seccomp fds, workspace/runtime binds, /etc files, tmpfs size)."""
    argv = []
    if os.geteuid() == 0:
        argv += ["setpriv", "--reuid", str(SANDBOX_UID), "--regid", str(SANDBOX_UID), "--clear-groups"]
    argv += ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / top
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), str(host)]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--remount-ro", "/", "true"]
    return argv


# Calls per block when a scenario alternates between the server and its LaunchersOff twin.
LAUNCHERS_BLOCK = 10


class LaunchersOff:
    """A second server with SANDBOX_LAUNCHERS=0 (every sandbox joins its cgroups as it starts,
    as before launchers), for the same calls in the same run."""

    def __init__(self, ctx: Ctx):
        self.server = Server(ctx.server.binary, ctx.runtime_dir, ctx.server.keep,
                             {"SANDBOX_LAUNCHERS": "0", "KERNEL_POOL_SIZE": "0"})

    def __enter__(self) -> Api:
        self.server.start()
        return Api(self.server)

    def __exit__(self, *exc) -> None:
        self.server.stop()


@scenario(
    "bash_echo",
    "bash `echo hi` via /exec",
    "POST /exec {lang: bash, code: 'echo hi'} in one session, timed by the client. "
    "Baseline: bwrap with the server's base profile running `true`, as uid 65534 via setpriv. "
    "Goal: /exec p50 − bwrap p50 ≤ +5 ms. The same calls on a second server with "
    "SANDBOX_LAUNCHERS=0 (each sandbox joins its cgroups as it starts) are shown for comparison.",
)
def bash_echo(ctx: Ctx, res: Result) -> None:
    argv = bwrap_baseline_argv()
    n = ctx.reps(200, 15)
    sid = ctx.api.exec("bash", "echo hi", expect_stdout="hi\n")[1]["session_id"]
    call = lambda: ctx.api.exec("bash", "echo hi", session_id=sid, expect_stdout="hi\n")  # noqa: E731
    for _ in range(ctx.reps(10, 3)):
        call()
        timed_command(argv)
    exec_ms, server_ms, base_ms = [], [], []
    off_ms, off_base = [], []
    with LaunchersOff(ctx) as off:
        off_sid = off.exec("bash", "echo hi", expect_stdout="hi\n")[1]["session_id"]
        off_call = lambda: off.exec("bash", "echo hi", session_id=off_sid, expect_stdout="hi\n")  # noqa: E731
        for _ in range(ctx.reps(5, 2)):
            off_call()
        # Blocks of each server in turn, so both see the same load (not call by call: one
        # server's cgroup migrations would slow the other's next start).
        for block in range(0, n, LAUNCHERS_BLOCK):
            for _ in range(min(LAUNCHERS_BLOCK, n - block)):
                e, j = call()
                exec_ms.append(e)
                server_ms.append(float(j["run"]["wall_time"]))
                base_ms.append(timed_command(argv))
            for _ in range(max(LAUNCHERS_BLOCK // 2, 1)):
                off_ms.append(off_call()[0])
                off_base.append(timed_command(argv))
    # The same call back to back, with nothing in between: a sandbox that joins its cgroups
    # as it starts pays an RCU grace period (~10-20 ms) unless another migration happened a
    # few ms before, so the spacing of calls changes their cost.
    burst = [call()[0] for _ in range(max(n // 4, 3))]
    a = res.add("/exec bash echo hi", exec_ms)
    res.add("↳ server-reported run.wall_time", server_ms, role="detail")
    res.add("↳ same call back to back (no baseline in between)", burst, role="detail")
    off_s = res.add("↳ same calls with SANDBOX_LAUNCHERS=0", off_ms, role="detail")
    off_b = res.add("↳ its baseline, bwrap … true, interleaved", off_base, role="detail")
    b = res.add("bwrap … true as uid 65534 (baseline)", base_ms, role="baseline")
    diff = a.p50 - b.p50
    res.goal("/exec p50 − bwrap p50 ≤ +5 ms", f"{diff:+.1f} ms ({fmt_ms(a.p50)} vs {fmt_ms(b.p50)})", diff <= 5)
    res.info("same with SANDBOX_LAUNCHERS=0: /exec p50 − bwrap p50",
             f"{off_s.p50 - off_b.p50:+.1f} ms ({fmt_ms(off_s.p50)} vs {fmt_ms(off_b.p50)})")
    res.notes.append("baseline argv: " + " ".join(argv))
    res.notes.append(
        "the goal uses the interleaved series (a baseline run between /exec calls, like real traffic "
        "with gaps); the back-to-back series is shown for comparison only"
    )


JS_HELLO = 'console.log("hello");\n'
TS_HELLO = 'const greeting: string = "hello";\nconsole.log(greeting);\n'


@scenario(
    "node_ts",
    "node and ts hello via /exec",
    "POST /exec with a JavaScript and a TypeScript hello world, and `node hello.cjs` run directly "
    "on the same JavaScript (the baseline). Goal: /exec ts p50 ≤ 1.5× direct node p50; "
    "/exec js vs node is reported too, ts with a source never run before (its transform not "
    "in the build cache), and the same calls on a second server with "
    "SANDBOX_LAUNCHERS=0 (each sandbox joins its cgroups as it starts).",
)
def node_ts(ctx: Ctx, res: Result) -> None:
    node = ctx.which("node")
    js_file = ctx.scratch / "hello.cjs"
    js_file.write_text(JS_HELLO)
    direct = [node, str(js_file)]
    n = ctx.reps(100, 5)
    sid = ctx.api.exec("js", JS_HELLO, expect_stdout="hello\n")[1]["session_id"]
    for _ in range(ctx.reps(5, 2)):
        ctx.api.exec("js", JS_HELLO, session_id=sid, expect_stdout="hello\n")
        ctx.api.exec("ts", TS_HELLO, session_id=sid, expect_stdout="hello\n")
        timed_command(direct, "hello\n")
    js, ts, base, js_srv, ts_srv, ts_new = [], [], [], [], [], []
    off_ts, off_base = [], []
    with LaunchersOff(ctx) as off:
        off_sid = off.exec("js", JS_HELLO, expect_stdout="hello\n")[1]["session_id"]
        for _ in range(ctx.reps(3, 1)):
            off.exec("ts", TS_HELLO, session_id=off_sid, expect_stdout="hello\n")
        for block in range(0, n, LAUNCHERS_BLOCK):
            for _ in range(min(LAUNCHERS_BLOCK, n - block)):
                e, j = ctx.api.exec("js", JS_HELLO, session_id=sid, expect_stdout="hello\n")
                js.append(e)
                js_srv.append(float(j["run"]["wall_time"]))
                e, j = ctx.api.exec("ts", TS_HELLO, session_id=sid, expect_stdout="hello\n")
                ts.append(e)
                ts_srv.append(float(j["run"]["wall_time"]))
                base.append(timed_command(direct, "hello\n"))
                if block % (2 * LAUNCHERS_BLOCK) == 0:
                    # Source never run before: the transform is not cached.
                    fresh = f"{TS_HELLO}// {ctx.nonce} {len(ts_new)}\n"
                    ts_new.append(ctx.api.exec("ts", fresh, session_id=sid, expect_stdout="hello\n")[0])
            for _ in range(max(LAUNCHERS_BLOCK // 2, 1)):
                off_ts.append(off.exec("ts", TS_HELLO, session_id=off_sid, expect_stdout="hello\n")[0])
                off_base.append(timed_command(direct, "hello\n"))
    s_ts = res.add("/exec ts hello", ts)
    res.add("↳ server-reported run.wall_time", ts_srv, role="detail")
    s_new = res.add("↳ /exec ts hello, new source each call (transform not cached)", ts_new, role="detail")
    s_js = res.add("/exec js hello", js)
    res.add("↳ server-reported run.wall_time", js_srv, role="detail")
    off_s = res.add("↳ /exec ts hello with SANDBOX_LAUNCHERS=0", off_ts, role="detail")
    off_b = res.add("↳ its baseline, node hello.cjs, interleaved", off_base, role="detail")
    s_node = res.add("node hello.cjs, direct (baseline)", base, role="baseline")
    r_ts = s_ts.p50 / s_node.p50
    r_js = s_js.p50 / s_node.p50
    res.info("same with SANDBOX_LAUNCHERS=0: /exec ts p50 vs node p50",
             f"{off_s.p50 / off_b.p50:.2f}× ({fmt_ms(off_s.p50)} vs {fmt_ms(off_b.p50)})")
    res.goal("/exec ts p50 ≤ 1.5× node p50", f"{r_ts:.2f}× ({fmt_ms(s_ts.p50)} vs {fmt_ms(s_node.p50)})", r_ts <= 1.5)
    res.info("/exec js p50 vs node p50", f"{r_js:.2f}× ({fmt_ms(s_js.p50)} vs {fmt_ms(s_node.p50)})")
    res.info("/exec ts p50, new source each call, vs node p50",
             f"{s_new.p50 / s_node.p50:.2f}× ({fmt_ms(s_new.p50)} vs {fmt_ms(s_node.p50)})")
    res.notes.append(f"baseline: {node} {js_file.name} (same JavaScript as the /exec js call)")


def compiled_scenario(name: str, lang: str, label: str, template: str) -> None:
    """Register a first-build vs cached-build scenario for one compiled language."""

    def run(ctx: Ctx, res: Result) -> None:
        rounds = ctx.reps(20, 2)
        cached_per_round = ctx.reps(3, 1)
        counter = [0]

        def source() -> str:
            counter[0] += 1
            return template.replace("@TAG@", f"{ctx.nonce} {counter[0]}")

        # The very first build on a fresh DATA_DIR also prepares the toolchain's own caches
        # (for Go: GOCACHE seeded with the bootstrap's precompiled standard library);
        # recorded apart, it is no "first" of a warm server.
        cold, j = ctx.api.exec(lang, source(), expect_stdout="hello\n")
        sid = j["session_id"]
        res.add(f"first build ever on a fresh DATA_DIR ({label})", [cold], role="detail")
        warm_src = source()
        for _ in range(ctx.reps(2, 1)):
            ctx.api.exec(lang, warm_src, session_id=sid, expect_stdout="hello\n")
        first, first_srv, cached, cached_srv = [], [], [], []
        for _ in range(rounds):
            code = source()
            e, j = ctx.api.exec(lang, code, session_id=sid, expect_stdout="hello\n")
            first.append(e)
            first_srv.append(float(j["run"]["wall_time"]))
            for _ in range(cached_per_round):
                e, j = ctx.api.exec(lang, code, session_id=sid, expect_stdout="hello\n")
                cached.append(e)
                cached_srv.append(float(j["run"]["wall_time"]))
        s_first = res.add(f"/exec {label}, first (new source: build + run) (baseline)", first, role="baseline")
        res.add("↳ server-reported run.wall_time", first_srv, role="detail")
        s_cached = res.add(f"/exec {label}, cached (same source again)", cached)
        res.add("↳ server-reported run.wall_time", cached_srv, role="detail")
        speedup = s_first.p50 / s_cached.p50
        res.goal(
            "cached ≥ 10× faster than first (p50)",
            f"{speedup:.1f}× ({fmt_ms(s_first.p50)} vs {fmt_ms(s_cached.p50)})",
            speedup >= 10,
        )
        res.notes.append("each 'first' source differs only in a comment line carrying a counter")

    run.__name__ = name
    scenario(
        name,
        f"{label} hello, first vs cached",
        f"POST /exec {lang} hello world: a 'first' call with a never-seen source (a counter in a "
        f"comment, so it really builds) is the baseline; repeating the same source must hit the "
        f"server's build cache. Goal: cached p50 at least 10× faster than first p50.",
    )(run)


compiled_scenario(
    "go_build_cache",
    "go",
    "Go",
    '// bench @TAG@\npackage main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hello") }\n',
)
compiled_scenario(
    "cpp_build_cache",
    "cpp",
    "C++",
    '// bench @TAG@\n#include <iostream>\n\nint main() { std::cout << "hello" << std::endl; }\n',
)


class RawKernel:
    """A local, unsandboxed ipykernel driven the cheapest way jupyter_client allows."""

    def __init__(
        self,
        scratch: Path,
        env: dict[str, str] | None = None,
        extra_arguments: list[str] | None = None,
        name: str = "kernel",
    ):
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name="python3", transport="ipc")
        self.km.ip = str(scratch / name)
        kw: dict = {}
        if env is not None:
            kw["env"] = env
        if extra_arguments:
            kw["extra_arguments"] = list(extra_arguments)
        self.km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        # The command jupyter_client ran ("python" in the kernel spec becomes sys.executable).
        self.argv = self.km.format_kernel_cmd(extra_arguments)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def execute(self, code: str) -> float:
        t0 = time.perf_counter()
        msg_id = self.kc.execute(code)
        while True:
            msg = self.kc.get_iopub_msg(timeout=30)
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
            ):
                break
        while True:
            reply = self.kc.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        elapsed = ms_since(t0)
        if reply["content"].get("status") != "ok":
            raise ScenarioError(f"raw kernel: execute_reply status {reply['content'].get('status')}")
        return elapsed

    def close(self) -> None:
        try:
            self.kc.stop_channels()
            self.km.shutdown_kernel(now=True)
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass


@scenario(
    "python_warm",
    "warm Python `1+1`, same session",
    "POST /exec {lang: py, code: 'print(1+1)', session_id} repeatedly in one session. Baseline: "
    "a local unsandboxed ipykernel driven with jupyter_client: kc.execute('1+1'), read iopub "
    "until status idle for that msg_id, then the matching shell execute_reply. "
    "Goal: /exec p50 ≤ 1.3× raw kernel p50.",
)
def python_warm(ctx: Ctx, res: Result) -> None:
    try:
        kernel = RawKernel(ctx.scratch)
    except Exception as err:  # noqa: BLE001
        raise ScenarioError(f"could not start the baseline kernel: {err}") from err
    try:
        n = ctx.reps(300, 20)
        _, j = ctx.api.exec("py", "print(1+1)", expect_stdout="2\n")
        sid = j["session_id"]
        for _ in range(ctx.reps(20, 3)):
            ctx.api.exec("py", "print(1+1)", session_id=sid, expect_stdout="2\n")
            kernel.execute("1+1")
        exec_ms, srv, base = [], [], []
        for _ in range(n):
            e, j = ctx.api.exec("py", "print(1+1)", session_id=sid, expect_stdout="2\n")
            if j["session_id"] != sid:
                raise ScenarioError("/exec moved the call to another session")
            exec_ms.append(e)
            srv.append(float(j["run"]["wall_time"]))
            base.append(kernel.execute("1+1"))
    finally:
        kernel.close()
    a = res.add("/exec py print(1+1), warm session", exec_ms)
    res.add("↳ server-reported run.wall_time", srv, role="detail")
    b = res.add("raw jupyter_client execute('1+1') (baseline)", base, role="baseline")
    ratio = a.p50 / b.p50
    res.goal("/exec p50 ≤ 1.3× raw kernel p50", f"{ratio:.1f}× ({fmt_ms(a.p50)} vs {fmt_ms(b.p50)})", ratio <= 1.3)
    res.notes.append(
        "/exec sends print(1+1) so stdout can be checked; the baseline executes 1+1 as specified "
        "(both produce one iopub output message in a kernel)"
    )


@scenario(
    "python_new_session",
    "first Python call of a new session",
    "POST /exec {lang: py, code: 'print(1+1)'} without session_id: a new session each call, "
    "made once /health reports the kernel pool full, so this is the 'first call served by a "
    "pre-started kernel' path. No goal yet; a warm same-session call, made just before in the "
    "same quiet state, is the comparison.",
)
def python_new_session(ctx: Ctx, res: Result) -> None:
    n = ctx.reps(20, 3)
    _, j = ctx.api.exec("py", "print(1+1)", expect_stdout="2\n")
    warm_sid = j["session_id"]
    for _ in range(2):
        ctx.api.exec("py", "print(1+1)", session_id=warm_sid, expect_stdout="2\n")
    first, warm, waits = [], [], set()
    for _ in range(n):
        waits.add(ctx.wait_pool_full())
        e, _ = ctx.api.exec("py", "print(1+1)", session_id=warm_sid, expect_stdout="2\n")
        warm.append(e)
        e, j = ctx.api.exec("py", "print(1+1)", expect_stdout="2\n")
        first.append(e)
        ctx.api.delete_session(j["session_id"])
    a = res.add("/exec py, new session (first call)", first)
    b = res.add("/exec py, warm session (comparison)", warm, role="baseline")
    res.info("first call p50 vs warm call p50", f"{a.p50 / b.p50:.1f}× ({fmt_ms(a.p50)} vs {fmt_ms(b.p50)})")
    res.notes.append("before each pair: " + "; ".join(sorted(waits)))


# What the server adds to a kernel's command line (src/runtime/python/kernel.rs `launch`) and
# to its environment (src/runtime/python/mod.rs `env`), for a baseline kernel started alike.
KERNEL_EXTRA_ARGS = ["--HistoryManager.enabled=False", "--IPKernelApp.quiet=True"]
# jupyter_client's wait_for_ready() ends with `iopub_channel.get_msg(timeout=0.2)` until Empty.
RAW_READY_DRAIN_MS = 200.0
KERNEL_EXTRA_ENV = {
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
}


def kernel_counts(api: Api) -> dict:
    """/health's `kernels` ({live, pooled}), or {} when it has none."""
    try:
        kernels = requests.get(api.url("/health"), timeout=10).json().get("kernels")
    except (requests.RequestException, ValueError):
        return {}
    return kernels if isinstance(kernels, dict) else {}


def wait_no_kernels(api: Api, timeout: float = 15.0) -> bool:
    """Wait until the server has no live and no pooled kernel (a deleted session's kernel is
    gone), so its teardown does not overlap the next measurement. False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        k = kernel_counts(api)
        if k and k.get("live", 0) == 0 and k.get("pooled", 0) == 0:
            return True
        time.sleep(0.02)
    return False


@scenario(
    "python_cold_start",
    "first Python call with the kernel pool empty",
    "A second server (same binary and settings, its own DATA_DIR, KERNEL_POOL_SIZE=0): POST /exec "
    "{lang: py, code: 'print(1+1)'} without session_id, so the call starts a sandboxed kernel and "
    "then runs in it. Baseline: jupyter_client.KernelManager on the runtime's python: "
    "start_kernel(), client().start_channels(), wait_for_ready(), then execute('1+1') until "
    "status idle and its execute_reply (so both sides include one call). Interleaved, the order "
    "alternating each round. With PYTHON_KERNEL_FORK=true (the default) the server's kernel is "
    "forked from its template. Goals: /exec p50 ≤ 1.1× raw kernel p50, and ≤ 50 ms.",
)
def python_cold_start(ctx: Ctx, res: Result) -> None:
    server = Server(ctx.server.binary, ctx.runtime_dir, ctx.server.keep, {"KERNEL_POOL_SIZE": "0"})
    env = {**BASELINE_ENV, **KERNEL_EXTRA_ENV}
    counter = [0]
    argv: list[str] = []
    slow_teardown = [0]

    def raw() -> float:
        counter[0] += 1
        # A fresh IPYTHONDIR each start, like the sandbox's /tmp/ipython on a new tmpfs.
        run_env = dict(env, IPYTHONDIR=str(ctx.scratch / f"ipython-cold-{counter[0]}"))
        t0 = time.perf_counter()
        try:
            kernel = RawKernel(ctx.scratch, env=run_env, extra_arguments=KERNEL_EXTRA_ARGS, name=f"cold{counter[0]}")
        except Exception as err:  # noqa: BLE001
            raise ScenarioError(f"could not start the baseline kernel: {err}") from err
        try:
            kernel.execute("1+1")
            elapsed = ms_since(t0)
        finally:
            kernel.close()
        argv[:] = ["{connection_file}" if a == kernel.km.connection_file else a for a in kernel.argv]
        return elapsed

    def cold(api: Api) -> tuple[float, float]:
        if not wait_no_kernels(api):
            slow_teardown[0] += 1
        e, j = api.exec("py", "print(1+1)", expect_stdout="2\n")
        api.delete_session(j["session_id"])
        wait_no_kernels(api)
        return e, float(j["run"]["wall_time"])

    try:
        try:
            server.start()
        except RuntimeError as err:
            raise ScenarioError(f"the second server (KERNEL_POOL_SIZE=0) did not start: {err}") from err
        api = Api(server)
        api.exec("bash", "echo ready", expect_stdout="ready\n")
        pooled = kernel_counts(api).get("pooled")
        if pooled:
            raise ScenarioError(f"the KERNEL_POOL_SIZE=0 server reports {pooled} pooled kernel(s)")
        # Warm-up: the server's first Python call also probes the interpreter's version (and
        # starts the template kernels are forked from).
        for _ in range(ctx.reps(2, 1)):
            cold(api)
            raw()
        template = kernel_counts(api).get("template", "?")
        exec_ms, srv, base = [], [], []
        for i in range(ctx.reps(15, 2)):
            if i % 2 == 0:
                e, w = cold(api)
                base.append(raw())
            else:
                base.append(raw())
                e, w = cold(api)
            exec_ms.append(e)
            srv.append(w)
    finally:
        died = server.proc is not None and server.proc.poll() is not None
        tail = server.log_tail(15) if died else ""
        server.stop()
    if died:
        raise ScenarioError(f"the KERNEL_POOL_SIZE=0 server died:\n{tail}")
    a = res.add("/exec py print(1+1), new session, pool empty", exec_ms)
    res.add("↳ server-reported run.wall_time", srv, role="detail")
    b = res.add("raw KernelManager start → ready → execute('1+1') (baseline)", base, role="baseline")
    ratio = a.p50 / b.p50
    res.goal("/exec p50 ≤ 1.1× raw kernel start-to-ready p50", f"{ratio:.2f}× ({fmt_ms(a.p50)} vs {fmt_ms(b.p50)})", ratio <= 1.1)
    res.goal("/exec p50 ≤ 50 ms with the pool empty", f"{fmt_ms(a.p50)} (template: {template})", a.p50 <= 50)
    # wait_for_ready() ends by draining IOPub until 0.2 s pass without a message: every
    # baseline sample holds that idle wait, which the server's own ready check does not have.
    if b.p50 > RAW_READY_DRAIN_MS:
        res.info(
            "/exec p50 vs baseline p50 − 200 ms (wait_for_ready's final idle IOPub drain)",
            f"{a.p50 / (b.p50 - RAW_READY_DRAIN_MS):.2f}× ({fmt_ms(a.p50)} vs {fmt_ms(b.p50 - RAW_READY_DRAIN_MS)})",
        )
    res.notes.append(
        "measured on a second server process: the same binary and settings as the main one, but "
        "KERNEL_POOL_SIZE=0 and its own DATA_DIR; each call's session is deleted and the next call "
        "waits until /health reports no live kernel"
        + (f" (that wait timed out {slow_teardown[0]}×)" if slow_teardown[0] else "")
    )
    res.notes.append(
        "the server's kernel runs in its sandbox (bwrap, uid 65534) and also executes the server's "
        "start-up cell (src/runtime/python/startup.py) before the call; the baseline kernel is "
        f"unsandboxed, as uid {os.geteuid()}"
    )
    res.notes.append(
        "jupyter_client's wait_for_ready() returns only after IOPub has been quiet for 0.2 s (its "
        "final drain loop, get_msg(timeout=0.2)), so about 200 ms of each baseline sample is idle "
        "waiting; the goal uses the baseline as specified, and the info row shows the ratio "
        "without those 200 ms"
    )
    res.notes.append(
        "baseline: KernelManager(kernel_name='python3', transport='ipc'), argv "
        + " ".join(argv)
        + "; the server's flags and kernel environment (the sandbox allowlist plus "
        + ", ".join(f"{k}={v}" for k, v in KERNEL_EXTRA_ENV.items())
        + ", a fresh IPYTHONDIR per start)"
    )


def sse_frames(r: requests.Response):
    """Yield (arrival time, parsed JSON) for each `data:` frame of an SSE response."""
    buf = b""
    for chunk in r.iter_content(chunk_size=None):
        buf += chunk
        while True:
            cut = min((i for i in (buf.find(b"\n\n"), buf.find(b"\r\n\r\n")) if i >= 0), default=-1)
            if cut < 0:
                break
            raw, buf = buf[:cut], buf[cut:].lstrip(b"\r\n")
            data = b"\n".join(ln[5:].lstrip() for ln in raw.splitlines() if ln.startswith(b"data:")).strip()
            if data:  # a priming event (`id:`/`retry:` with empty data) carries no message
                yield time.perf_counter(), json.loads(data)


@scenario(
    "exec_stream_ttfb",
    "/exec/stream time to first byte",
    "POST /exec/stream {lang: py, code: 'print(1+1)'} in a warm session: time to the first SSE "
    "frame (`session`), to the first output frame, and to `done`. The same call through "
    "/exec is measured alongside. Skipped while the route is missing.",
)
def exec_stream_ttfb(ctx: Ctx, res: Result) -> None:
    _, j = ctx.api.exec("py", "print(1+1)", expect_stdout="2\n")
    sid = j["session_id"]

    def one(http: requests.Session | None = None) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        r = (http or ctx.api.http).post(
            ctx.api.url("/exec/stream"),
            json={"lang": "py", "code": "print(1+1)", "session_id": sid},
            stream=True,
            timeout=HTTP_TIMEOUT,
        )
        if route_missing(r):
            raise Skip(f"POST /exec/stream answered {r.status_code}")
        if r.status_code != 200:
            raise ScenarioError(f"POST /exec/stream {describe(r)}")
        first = output = done = None
        kinds, out = [], ""
        for at, frame in sse_frames(r):
            kinds.append(frame.get("type"))
            first = first or at
            if frame.get("type") == "stream" and frame.get("name") == "stdout":
                output = output or at
                out += frame.get("text", "")
            if frame.get("type") == "done":
                done = at
                break
        r.close()
        if not kinds or kinds[0] != "session" or done is None:
            raise ScenarioError(f"/exec/stream frames {kinds[:10]}: expected session first and done last")
        if out != "2\n":
            raise ScenarioError(f"/exec/stream stdout frames gave {out!r}, expected '2\\n'")
        return (first - t0) * 1000, ((output or done) - t0) * 1000, (done - t0) * 1000

    for _ in range(ctx.reps(5, 1)):
        one()
        ctx.api.exec("py", "print(1+1)", session_id=sid, expect_stdout="2\n")
    ttfb, out, done, plain = [], [], [], []
    for _ in range(ctx.reps(50, 5)):
        a, b, c = one()
        ttfb.append(a)
        out.append(b)
        done.append(c)
        plain.append(ctx.api.exec("py", "print(1+1)", session_id=sid, expect_stdout="2\n")[0])
    # The same request on a new connection each time (no keep-alive): a fresh TCP
    # connection starts in quick-ACK mode, so small frames are not held back by Nagle's
    # algorithm waiting for a delayed ACK. A gap between the two series points at TCP_NODELAY.
    fresh = []
    for _ in range(ctx.reps(20, 2)):
        with ctx.api.new_http() as http:
            fresh.append(one(http)[1])
    s = res.add("/exec/stream first frame (TTFB)", ttfb)
    res.add("/exec/stream first stdout frame", out, role="detail")
    res.add("/exec/stream done frame", done, role="detail")
    res.add("/exec/stream first stdout frame, new connection each call", fresh, role="detail")
    p = res.add("/exec same call (comparison)", plain, role="baseline")
    res.info("TTFB p50 vs /exec p50", f"{s.p50 / p.p50:.2f}× ({fmt_ms(s.p50)} vs {fmt_ms(p.p50)})")


MCP_VERSION = "2025-06-18"


def mcp_message(r: requests.Response, want_id: int) -> dict:
    """The JSON-RPC response with id `want_id`, from a JSON or an SSE answer."""
    ctype = r.headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        for _, msg in sse_frames(r):
            if msg.get("id") == want_id:
                r.close()
                return msg
        raise ScenarioError(f"MCP: the event stream ended without a response to id {want_id}")
    msg = r.json()
    if isinstance(msg, list):
        msg = next((m for m in msg if m.get("id") == want_id), {})
    return msg


@scenario(
    "mcp_roundtrip",
    "MCP execute_code round trip",
    "Streamable HTTP at /mcp: initialize, then tools/call execute_code {language: python, "
    "code: 'print(1+1)'} repeatedly in one code session; the /exec call is measured alongside. "
    "Skipped while /mcp is missing.",
)
def mcp_roundtrip(ctx: Ctx, res: Result) -> None:
    http = ctx.api.new_http()
    http.headers.update({"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": MCP_VERSION})
    url = ctx.api.url("/mcp")
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": MCP_VERSION, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
    }
    r = http.post(url, json=init, stream=True, timeout=60)
    if route_missing(r):
        raise Skip(f"POST /mcp answered {r.status_code}")
    if r.status_code != 200:
        raise ScenarioError(f"MCP initialize {describe(r)}")
    msg = mcp_message(r, 1)
    if "result" not in msg:
        raise ScenarioError(f"MCP initialize failed: {str(msg)[:300]}")
    mcp_session = r.headers.get("mcp-session-id")
    if mcp_session:
        http.headers["Mcp-Session-Id"] = mcp_session
    r = http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, timeout=60)
    if r.status_code not in (200, 202, 204):
        raise ScenarioError(f"MCP notifications/initialized {describe(r)}")

    next_id = [1]
    code_session: list[str | None] = [None]

    def call() -> float:
        next_id[0] += 1
        args = {"language": "python", "code": "print(1+1)"}
        if code_session[0]:
            args["session_id"] = code_session[0]
        body = {"jsonrpc": "2.0", "id": next_id[0], "method": "tools/call", "params": {"name": "execute_code", "arguments": args}}
        t0 = time.perf_counter()
        r = http.post(url, json=body, stream=True, timeout=HTTP_TIMEOUT)
        if r.status_code != 200:
            raise ScenarioError(f"MCP tools/call {describe(r)}")
        msg = mcp_message(r, next_id[0])
        elapsed = ms_since(t0)
        result = msg.get("result")
        if not result or result.get("isError"):
            raise ScenarioError(f"MCP execute_code failed: {str(msg)[:400]}")
        texts = "".join(c.get("text", "") for c in result.get("content", []) if c.get("type") == "text")
        structured = result.get("structuredContent") or {}
        if "2" not in texts and structured.get("stdout") != "2\n":
            raise ScenarioError(f"MCP execute_code output lacks '2': {str(result)[:300]}")
        code_session[0] = code_session[0] or structured.get("session_id")
        return elapsed

    try:
        _, j = ctx.api.exec("py", "print(1+1)", expect_stdout="2\n")
        sid = j["session_id"]
        for _ in range(ctx.reps(5, 1)):
            call()
        mcp, plain = [], []
        for _ in range(ctx.reps(50, 5)):
            mcp.append(call())
            plain.append(ctx.api.exec("py", "print(1+1)", session_id=sid, expect_stdout="2\n")[0])
    finally:
        if mcp_session:
            try:
                http.delete(url, timeout=10)
            except requests.RequestException:
                pass
    a = res.add("MCP tools/call execute_code", mcp)
    b = res.add("/exec same code (comparison)", plain, role="baseline")
    res.info("MCP p50 vs /exec p50", f"{a.p50 / b.p50:.2f}× ({fmt_ms(a.p50)} vs {fmt_ms(b.p50)})")


@scenario(
    "concurrent_sessions",
    "concurrent sessions × Python calls",
    "50 clients at once (10 in --quick), each with its own new session, each making 5 sequential "
    "POST /exec py calls (2 in --quick) that print a token unique to the call. Goals: 0 errors "
    "(any non-200, 429 included, or a failed run) and 0 mixed outputs (each response's stdout is "
    "exactly its own token). Reports per-call latency p50/p99, wall time, calls/s and the server "
    "process's RSS (VmRSS/VmHWM from /proc/<pid>/status; the kernels are separate processes and "
    "not included). Comparison: the same call made alone, before the burst.",
)
def concurrent_sessions(ctx: Ctx, res: Result) -> None:
    clients = ctx.reps(50, 10)
    calls = ctx.reps(5, 2)

    def token(k: int, c: int) -> str:
        return f"tok-{ctx.nonce}-{k}-{c}-{secrets.token_hex(4)}"

    tok = token(-1, 0)
    _, j = ctx.api.exec("py", f"print({tok!r})", expect_stdout=tok + "\n")
    alone_sid = j["session_id"]
    alone = []
    for c in range(ctx.reps(20, 3)):
        tok = token(-1, c + 1)
        alone.append(ctx.api.exec("py", f"print({tok!r})", session_id=alone_sid, expect_stdout=tok + "\n")[0])
    # Its kernel would count against MAX_SESSIONS during the burst.
    ctx.api.delete_session(alone_sid)
    res.notes.append("before the burst: " + ctx.wait_pool_full())

    pid = ctx.server.proc.pid
    rss_before = ctx.server.rss()
    try:  # "5" resets VmHWM to the current RSS (Linux ≥ 4.0), so it shows the burst's own peak
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    hwm_before = ctx.server.hwm()
    rss_peak = [rss_before or 0]
    stop = threading.Event()

    def sample_rss():
        while not stop.is_set():
            v = ctx.server.rss()
            if v:
                rss_peak[0] = max(rss_peak[0], v)
            time.sleep(0.05)

    barrier = threading.Barrier(clients)
    lock = threading.Lock()
    first_ms, later_ms, errors, mixed, statuses = [], [], [], [], {}
    printed: dict[str, str] = {}  # stdout of a mixed call -> whose token it was, filled in below
    all_tokens: dict[str, tuple[int, int]] = {}

    def client(k: int) -> None:
        http = ctx.api.new_http()
        sid = None
        barrier.wait(timeout=60)
        for c in range(calls):
            tok = token(k, c)
            with lock:
                all_tokens[tok] = (k, c)
            body: dict = {"lang": "py", "code": f"print({tok!r})"}
            if sid:
                body["session_id"] = sid
            t0 = time.perf_counter()
            try:
                r = http.post(ctx.api.url("/exec"), json=body, timeout=HTTP_TIMEOUT)
            except requests.RequestException as err:
                with lock:
                    errors.append(f"client {k} call {c}: {err.__class__.__name__}: {err}")
                continue
            elapsed = ms_since(t0)
            with lock:
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code != 200:
                with lock:
                    errors.append(f"client {k} call {c}: {describe(r)}")
                continue
            j = r.json()
            run = j.get("run") or {}
            if run.get("status") != "success":
                with lock:
                    errors.append(f"client {k} call {c}: run.status={run.get('status')!r} stderr={str(j.get('stderr'))[-200:]!r}")
                continue
            if sid and j.get("session_id") != sid:
                with lock:
                    errors.append(f"client {k} call {c}: answered from session {j.get('session_id')}, not {sid}")
                continue
            sid = j.get("session_id")
            with lock:
                if j.get("stdout") != tok + "\n":
                    mixed.append((k, c, j.get("stdout")))
                (later_ms if c else first_ms).append(elapsed)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=clients) as pool:
            for f in [pool.submit(client, k) for k in range(clients)]:
                f.result()
    finally:
        total = ms_since(t0)
        stop.set()
        sampler.join()
    hwm_after, rss_after = ctx.server.hwm(), ctx.server.rss()
    kernels = kernel_counts(ctx.api)

    n_calls = clients * calls
    lat = first_ms + later_ms
    a = res.add(f"/exec py, {clients} sessions × {calls} calls at once (per call)", lat)
    res.add("↳ first call of a session (pool claim or kernel start)", first_ms, role="detail")
    res.add("↳ follow-up calls (warm kernel)", later_ms, role="detail")
    res.add("/exec py, one call alone (comparison)", alone, role="baseline")
    res.add("burst wall time", [total], role="detail")
    for m in mixed:
        owner = all_tokens.get((m[2] or "").strip())
        printed[f"client {m[0]} call {m[1]}"] = f"{m[2]!r}" + (f" (the token of client {owner[0]} call {owner[1]})" if owner else "")
    n_err = len(errors)
    res.goal("0 errors (non-200 incl. 429, failed runs)", f"{n_err} of {n_calls} calls", n_err == 0)
    res.goal("0 mixed outputs (stdout is exactly the call's own token)", f"{len(mixed)} of {n_calls - n_err} answered calls", not mixed)
    res.info(
        "per-call latency",
        f"p50 {fmt_ms(a.p50)} ms, p99 {fmt_ms(a.stats()['p99'])} ms ({len(lat)} successful calls; "
        f"a call alone: p50 {fmt_ms(percentile(sorted(alone), 0.5))} ms)",
    )
    res.info(
        "burst",
        f"{n_calls} calls in {total / 1000:.2f} s = {n_calls / (total / 1000):.1f} calls/s",
    )
    if rss_before and rss_after:
        hwm_text = (
            f"VmHWM {hwm_before / MIB:.1f} → {hwm_after / MIB:.1f} MiB"
            + (" (reset via clear_refs just before)" if hwm_reset else " (process lifetime peak: could not reset it)")
            if hwm_before and hwm_after
            else "VmHWM unreadable"
        )
        res.info(
            "server RSS, excluding kernels",
            f"VmRSS {rss_before / MIB:.1f} → {rss_after / MIB:.1f} MiB (sampled peak {rss_peak[0] / MIB:.1f}); {hwm_text}",
        )
    else:
        res.info("server RSS, excluding kernels", "unreadable")
    res.notes.append(
        "server RSS is the server process's own VmRSS/VmHWM from /proc/<server pid>/status: the "
        "Python kernels are separate processes (bwrap sandboxes, uid 65534), so their memory is "
        "not included"
    )
    res.notes.append(
        f"HTTP statuses: {', '.join(f'{k}×{v}' for k, v in sorted(statuses.items())) or 'none'}; "
        f"/health kernels after the burst: {json.dumps(kernels)}"
    )
    if errors or mixed:
        n429 = statuses.get(429, 0)
        raise ScenarioError(
            f"{n_err} error(s){f' ({n429}× HTTP 429)' if n429 else ''} and {len(mixed)} mixed output(s) "
            f"in {n_calls} calls; first: "
            + "; ".join(errors[:2] + [f"{k}: {v}" for k, v in list(printed.items())[:2]])
        )


PTC_TOOLS = [
    {"name": "get_weather", "description": "Weather of a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    {"name": "lookup_id", "description": "A user's id",
     "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}},
]

# A slow step before the first call, two calls at once, then a chain of calls that each
# depend on the last: 1 + 1 + 6 = 8 rounds, 9 tool calls.
PTC_PROGRAM = """
import time
time.sleep(0.2)
sf, ny = await asyncio.gather(get_weather(city="SF"), get_weather(city="NY"))
ident = await lookup_id(name="alice")
total = 0
for i in range(6):
    total += (await get_weather(city=ident["id"] + str(i)))["temp"]
print(sf["temp"], ny["temp"], ident["id"], total)
"""

# The same program with the tools as local functions: what it costs run straight through.
PTC_INLINE = """
import asyncio, time
async def get_weather(city):
    return {"city": city, "temp": 18 if city == "SF" else 25 if city == "NY" else 10}
async def lookup_id(name):
    return {"id": "u-" + name}
async def main():
    time.sleep(0.2)
    sf, ny = await asyncio.gather(get_weather(city="SF"), get_weather(city="NY"))
    ident = await lookup_id(name="alice")
    total = 0
    for i in range(6):
        total += (await get_weather(city=ident["id"] + str(i)))["temp"]
    print(sf["temp"], ny["temp"], ident["id"], total)
await main()
"""
PTC_STDOUT = "18 25 u-alice 60\n"

# What a replaying server (the official Code API's default) runs per round: the program
# from the start, its earlier calls answered at once from the history, stopped at the
# first call without a result. ALLOWED is the number of calls with results so far.
PTC_REPLAY = """
import asyncio, time
class _Suspend(Exception):
    pass
_made = 0
def _call():
    global _made
    _made += 1
    if _made > ALLOWED:
        raise _Suspend()
async def get_weather(city):
    _call()
    return {"city": city, "temp": 18 if city == "SF" else 25 if city == "NY" else 10}
async def lookup_id(name):
    _call()
    return {"id": "u-" + name}
async def main():
    time.sleep(0.2)
    sf, ny = await asyncio.gather(get_weather(city="SF"), get_weather(city="NY"))
    ident = await lookup_id(name="alice")
    total = 0
    for i in range(6):
        total += (await get_weather(city=ident["id"] + str(i)))["temp"]
    print(sf["temp"], ny["temp"], ident["id"], total)
try:
    await main()
except _Suspend:
    pass
"""


def ptc_tool(call: dict) -> dict:
    args = call.get("input") or {}
    if call["name"] == "lookup_id":
        return {"id": "u-" + args["name"]}
    city = args["city"]
    return {"city": city, "temp": 18 if city == "SF" else 25 if city == "NY" else 10}


def ptc_run(api: Api, session_id: str) -> tuple[float, list[int]]:
    """Drive PTC_PROGRAM as LibreChat does: run the tools of each tool_call_required and
    continue. (client-side milliseconds, calls per round)."""
    url = api.url("/exec/programmatic")
    body: dict = {"code": PTC_PROGRAM, "tools": PTC_TOOLS, "session_id": session_id, "timeout": 60000}
    rounds: list[int] = []
    t0 = time.perf_counter()
    while True:
        r = api.http.post(url, json=body, timeout=HTTP_TIMEOUT)
        if route_missing(r):
            raise Skip(f"POST /exec/programmatic answered {r.status_code}")
        if r.status_code != 200:
            raise ScenarioError(f"POST /exec/programmatic {describe(r)}")
        step = r.json()
        if step.get("status") != "tool_call_required":
            break
        calls = step.get("tool_calls") or []
        rounds.append(len(calls))
        body = {
            "continuation_token": step["continuation_token"],
            "tool_results": [{"call_id": c["id"], "result": ptc_tool(c)} for c in calls],
        }
    elapsed = ms_since(t0)
    if step.get("status") != "completed" or step.get("stdout") != PTC_STDOUT:
        raise ScenarioError(f"the programmatic run ended with {json.dumps(step)[:400]}")
    return elapsed, rounds


@scenario(
    "ptc_rounds",
    "programmatic tool calling: a multi-round program",
    "A Python program with a 0.2 s step, two parallel tool calls, then seven chained ones, "
    "driven through POST /exec/programmatic as LibreChat drives it (each tool_call_required "
    "answered by the client, then the continuation). Baseline: the same program with the "
    "tools as local functions, run straight through by POST /exec in the same warm session. "
    "Info: the ratio and the rounds. Second baseline: replay as the official Code API does it "
    "by default, emulated through /exec: for each round the program runs again from the start "
    "with its earlier calls answered at once, up to its first call without a result (so "
    "only the code's own cost, no state store and no tool time).",
)
def ptc_rounds(ctx: Ctx, res: Result) -> None:
    n = ctx.reps(12, 3)
    _, j = ctx.api.exec("py", "print(1)", expect_stdout="1\n")
    sid = j["session_id"]
    ptc_run(ctx.api, sid)
    ctx.api.exec("py", PTC_INLINE, session_id=sid, expect_stdout=PTC_STDOUT)
    ptc_ms, inline_ms, replay_ms, rounds = [], [], [], []
    for _ in range(n):
        ms, rounds = ptc_run(ctx.api, sid)
        ptc_ms.append(ms)
        inline_ms.append(ctx.api.exec("py", PTC_INLINE, session_id=sid, expect_stdout=PTC_STDOUT)[0])
        replay, allowed = 0.0, 0
        for calls in rounds + [0]:
            last = calls == 0
            replay += ctx.api.exec(
                "py",
                PTC_REPLAY.replace("ALLOWED", str(allowed)),
                session_id=sid,
                expect_stdout=PTC_STDOUT if last else "",
            )[0]
            allowed += calls
        replay_ms.append(replay)
    ctx.api.delete_session(sid)
    a = res.add(f"/exec/programmatic, {len(rounds)} rounds, {sum(rounds)} tool calls", ptc_ms)
    b = res.add("the same program straight through /exec (baseline)", inline_ms, role="baseline")
    c = res.add(f"replayed: {len(rounds) + 1} runs from the start through /exec (baseline)", replay_ms, role="baseline")
    res.info("rounds (tool calls in each)", f"{len(rounds)}: {rounds}")
    res.info(
        "programmatic vs straight through",
        f"{a.p50 / b.p50:.2f}× ({fmt_ms(a.p50)} vs {fmt_ms(b.p50)} ms; "
        f"{(a.p50 - b.p50) / max(len(rounds), 1):.0f} ms per round)",
    )
    res.info(
        "programmatic vs replayed",
        f"{a.p50 / c.p50:.2f}× ({fmt_ms(a.p50)} vs {fmt_ms(c.p50)} ms: the 0.2 s step once instead of "
        f"{len(rounds) + 1} times)",
    )
    res.notes.append(
        "each round is one HTTP answer and one continuation over a keep-alive connection; the "
        "tools answer at once, so the difference is the cost of suspending and resuming"
    )


def kernel_memory(server: Server) -> list[dict]:
    """Memory of each live kernel of `server` from smaps_rollup, summed over the processes of
    the kernel's own pids cgroup (a cold kernel: bwrap, its init and ipykernel; a forked one:
    its pid-1 reaper and ipykernel). MiB per kernel: rss, pss, private."""
    line = next(
        (ln for ln in Path(f"/proc/{server.proc.pid}/cgroup").read_text().splitlines() if ":pids:" in ln),
        None,
    )
    if line is None:
        return []
    base = Path("/sys/fs/cgroup/pids") / line.split(":", 2)[2].lstrip("/") / "code-interpreter" / str(server.proc.pid)
    out = []
    for group in sorted(base.glob("kernel-*")):
        total = {"rss": 0, "pss": 0, "private": 0}
        try:
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except OSError:
            continue
        for pid in pids:
            try:
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            for ln in rollup.splitlines():
                key, _, rest = ln.partition(":")
                kib = int(rest.split()[0]) if rest.split() and rest.split()[0].isdigit() else 0
                if key == "Rss":
                    total["rss"] += kib
                elif key == "Pss":
                    total["pss"] += kib
                elif key in ("Private_Clean", "Private_Dirty"):
                    total["private"] += kib
        if pids:
            out.append({k: v / 1024 for k, v in total.items()})
    return out


def template_memory(server: Server) -> dict | None:
    """The kernel template's memory (its cgroup's processes), MiB, or None without one."""
    line = next(
        (ln for ln in Path(f"/proc/{server.proc.pid}/cgroup").read_text().splitlines() if ":pids:" in ln),
        None,
    )
    if line is None:
        return None
    base = Path("/sys/fs/cgroup/pids") / line.split(":", 2)[2].lstrip("/") / "code-interpreter" / str(server.proc.pid)
    for group in base.glob("template-*"):
        total = {"rss": 0, "pss": 0, "private": 0}
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            for ln in rollup.splitlines():
                key, _, rest = ln.partition(":")
                kib = int(rest.split()[0]) if rest.split() and rest.split()[0].isdigit() else 0
                if key == "Rss":
                    total["rss"] += kib
                elif key == "Pss":
                    total["pss"] += kib
                elif key in ("Private_Clean", "Private_Dirty"):
                    total["private"] += kib
        return {k: v / 1024 for k, v in total.items()}
    return None


def burst(api: Api, clients: int, calls: int, nonce: str) -> tuple[list[float], list[float], float, list[str], int]:
    """`clients` new sessions at once, each making `calls` sequential py calls that print a
    token of their own: first-call and later-call latencies, wall time, errors, mixed outputs."""
    barrier = threading.Barrier(clients)
    lock = threading.Lock()
    first, later, errors = [], [], []
    mixed = [0]
    sids: list[str] = []

    def client(k: int) -> None:
        http = api.new_http()
        sid = None
        barrier.wait(timeout=60)
        for c in range(calls):
            tok = f"tok-{nonce}-{k}-{c}-{secrets.token_hex(4)}"
            body: dict = {"lang": "py", "code": f"print({tok!r})"}
            if sid:
                body["session_id"] = sid
            t0 = time.perf_counter()
            try:
                r = http.post(api.url("/exec"), json=body, timeout=HTTP_TIMEOUT)
            except requests.RequestException as err:
                with lock:
                    errors.append(f"client {k} call {c}: {err}")
                continue
            elapsed = ms_since(t0)
            j = r.json() if r.status_code == 200 else {}
            if r.status_code != 200 or (j.get("run") or {}).get("status") != "success":
                with lock:
                    errors.append(f"client {k} call {c}: {describe(r)}")
                continue
            sid = j["session_id"]
            with lock:
                if j.get("stdout") != tok + "\n":
                    mixed[0] += 1
                (later if c else first).append(elapsed)
        if sid:
            with lock:
                sids.append(sid)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for f in [pool.submit(client, k) for k in range(clients)]:
            f.result()
    total = ms_since(t0)
    for sid in sids:
        api.delete_session(sid)
    return first, later, total, errors, mixed[0]


@scenario(
    "kernel_density",
    "forked kernels vs cold kernels: memory and many new sessions",
    "Two servers from the same binary, one with PYTHON_KERNEL_FORK=false (every kernel its own "
    "bwrap sandbox that imports PYTHON_PRELOAD itself; the baseline) and one with "
    "PYTHON_KERNEL_FORK=true (the default: kernels forked from the preloaded template), otherwise the default "
    "settings (each its default pool, /health kernels.pool_size: 8 forked, 2 cold). On each, in turn: (1) 20 new sessions one after another "
    "(2 in --quick), each one call `import numpy, pandas; print(1)` (then deleted), no pause between; (2) 8 idle "
    "kernels (2 in --quick) after `import numpy, pandas` and gc.collect(): RSS, PSS and private "
    "memory (Private_Clean + Private_Dirty) from /proc/<pid>/smaps_rollup, summed over each "
    "kernel's cgroup; (3) 10 new sessions at once (2), first call each; (4) 50 new sessions x 5 "
    "calls at once (4 x 2). Every session is deleted after its step.",
)
def kernel_density(ctx: Ctx, res: Result) -> None:
    results: dict[str, dict] = {}
    for label, fork in (("cold", "false"), ("forked", "true")):
        server = Server(ctx.server.binary, ctx.runtime_dir, ctx.server.keep, {"PYTHON_KERNEL_FORK": fork})
        try:
            try:
                server.start()
            except RuntimeError as err:
                raise ScenarioError(f"the PYTHON_KERNEL_FORK={fork} server did not start: {err}") from err
            api = Api(server)
            sub = Ctx(ctx.quick, server, api, ctx.runtime_dir, ctx.nonce)
            api.exec("py", "print(1)", expect_stdout="1\n")  # probes, template start
            if fork == "true":
                state = kernel_counts(api).get("template")
                if state != "ready":
                    raise Skip(f"the forking server's template is {state!r} (needs root, bwrap and cgroups)")
            sub.wait_pool_full(60)
            r: dict = {"pool_size": kernel_counts(api).get("pool_size", "?")}
            seq = []
            for _ in range(ctx.reps(20, 2)):
                e, j = api.exec("py", "import numpy, pandas; print(1)", expect_stdout="1\n")
                seq.append(e)
                api.delete_session(j["session_id"])
            r["sequential"] = seq
            sub.wait_pool_full(60)
            idle_sids = []
            for _ in range(ctx.reps(8, 2)):
                _, j = api.exec("py", "import numpy, pandas, gc; gc.collect(); print(1)", expect_stdout="1\n")
                idle_sids.append(j["session_id"])
            time.sleep(1.0)
            mem = kernel_memory(server)
            r["memory"] = mem
            r["template"] = template_memory(server)
            for sid in idle_sids:
                api.delete_session(sid)
            wait_no_kernels(api)
            sub.wait_pool_full(60)
            first, _, _, errors, mixed = burst(api, ctx.reps(10, 2), 1, ctx.nonce)
            if errors or mixed:
                raise ScenarioError(f"{label}: {len(errors)} errors, {mixed} mixed in the 10-at-once step: {errors[:2]}")
            r["at_once"] = first
            sub.wait_pool_full(60)
            first, later, total, errors, mixed = burst(api, ctx.reps(50, 4), ctx.reps(5, 2), ctx.nonce)
            r["burst"] = (first + later, total, len(errors), mixed, errors[:2])
            results[label] = r
        finally:
            server.stop()
    cold, forked = results["cold"], results["forked"]

    a = res.add("forked: 20 new sessions one after another, first call", forked["sequential"])
    b = res.add("cold: 20 new sessions one after another, first call (baseline)", cold["sequential"], role="baseline")
    res.goal("forked sequential first call p99 ≤ 100 ms", f"{fmt_ms(a.stats()['p99'])} (cold {fmt_ms(b.stats()['p99'])})", a.stats()["p99"] <= 100)
    res.info("sequential first call p50, forked vs cold", f"{a.p50 / b.p50:.2f}× ({fmt_ms(a.p50)} vs {fmt_ms(b.p50)})")

    def per_kernel(r: dict, key: str) -> float:
        return sum(m[key] for m in r["memory"]) / max(len(r["memory"]), 1)

    for key in ("rss", "pss", "private"):
        f, c = per_kernel(forked, key), per_kernel(cold, key)
        res.info(f"idle kernel {key.upper() if key != 'private' else 'private (USS)'} MiB, forked vs cold", f"{f:.1f} vs {c:.1f} ({f / c:.2f}×)")
    fp, cp = per_kernel(forked, "private"), per_kernel(cold, "private")
    tmpl = forked["template"] or {"private": 0.0, "rss": 0.0, "pss": 0.0}
    res.goal("forked idle kernel private memory ≤ 25 MiB", f"{fp:.1f} MiB (cold {cp:.1f})", fp <= 25)
    res.info(
        "idle kernels in 8 GiB (by PSS; forked: after the template's own memory)",
        f"forked {int((8 * 1024 - tmpl['pss']) / max(per_kernel(forked, 'pss'), 0.1))}, cold {int(8 * 1024 / max(per_kernel(cold, 'pss'), 0.1))}",
    )
    res.info("the template itself (RSS / PSS / private MiB)", f"{tmpl['rss']:.1f} / {tmpl['pss']:.1f} / {tmpl['private']:.1f}")

    a = res.add("forked: 10 new sessions at once, first call", forked["at_once"])
    b = res.add("cold: 10 new sessions at once, first call (baseline)", cold["at_once"], role="baseline")
    res.info("10 at once first call p50, forked vs cold", f"{a.p50 / b.p50:.2f}× ({fmt_ms(a.p50)} vs {fmt_ms(b.p50)})")

    n = f"{ctx.reps(50, 4)} sessions × {ctx.reps(5, 2)} calls"
    lat_f, total_f, err_f, mixed_f, first_err_f = forked["burst"]
    lat_c, total_c, err_c, mixed_c, _ = cold["burst"]
    a = res.add(f"forked: {n} at once (per call)", lat_f)
    b = res.add(f"cold: {n} at once (per call, baseline)", lat_c, role="baseline")
    res.add("forked burst wall time", [total_f], role="detail")
    res.add("cold burst wall time", [total_c], role="detail")
    p99 = a.stats()["p99"]
    res.goal(f"forked {n}: total ≤ 5 s, p99 ≤ 1.5 s, 0 errors, 0 mixed",
             f"total {fmt_ms(total_f)}, p99 {fmt_ms(p99)}, {err_f} errors, {mixed_f} mixed (cold: total {fmt_ms(total_c)}, p99 {fmt_ms(b.stats()['p99'])}, {err_c} errors)",
             total_f <= 5000 and p99 <= 1500 and err_f == 0 and mixed_f == 0)
    if err_f or mixed_f:
        raise ScenarioError(f"forked burst: {err_f} errors, {mixed_f} mixed: {first_err_f}")
    res.notes.append(f"pool sizes (/health kernels.pool_size): forked {forked['pool_size']}, cold {cold['pool_size']}")
    res.notes.append(
        "memory is per kernel, summed over the processes of the kernel's own pids cgroup; PSS "
        "divides shared pages among their sharers, so a forked kernel's PSS includes its share of "
        "the template's pages; the template's own memory is listed separately"
    )


SPIN = "while :; do :; done"


@scenario(
    "cpu_fairness",
    "another tenant's `echo hi` while 4 sessions spin the CPU",
    "A second server (same binary, a second API key, MAX_CONCURRENT_RUNS=8): tenant B's POST /exec "
    "{lang: bash, code: 'echo hi'} in one session, first on the idle server (the baseline), then "
    "while tenant A keeps 4 sessions running `while :; do :; done` (bash, 10 s timeout, 3 in --quick, each "
    "restarted when it ends). Goal: p99 with the spinners ≤ 3× the idle p99.",
)
def cpu_fairness(ctx: Ctx, res: Result) -> None:
    server = Server(ctx.server.binary, ctx.runtime_dir, ctx.server.keep, {"MAX_CONCURRENT_RUNS": "8"})
    key_b = secrets.token_urlsafe(24)
    server.extra_env["CODE_INTERPRETER_API_KEYS"] = key_b
    server.start()
    try:
        api_a = Api(server)
        api_b = Api(server)
        api_b.http.headers["x-api-key"] = key_b
        n = ctx.reps(60, 5)
        sid = api_b.exec("bash", "echo hi", expect_stdout="hi\n")[1]["session_id"]
        call = lambda: api_b.exec("bash", "echo hi", session_id=sid, expect_stdout="hi\n")[0]  # noqa: E731
        for _ in range(ctx.reps(5, 2)):
            call()
        idle = [call() for _ in range(n)]
        stop = threading.Event()
        spun = []
        spin_ms = ctx.reps(10000, 3000)

        def spinner() -> None:
            http = api_a.new_http()
            while not stop.is_set():
                try:
                    r = http.post(api_a.url("/exec"), json={"lang": "bash", "code": SPIN, "timeout": spin_ms},
                                  timeout=HTTP_TIMEOUT)
                    spun.append(r.status_code)
                except requests.RequestException:
                    spun.append(0)

        threads = [threading.Thread(target=spinner, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)  # the 4 runs are spinning
        busy = [call() for _ in range(n)]
        stop.set()
        # The spinners end at their timeout; their sessions go with the server.
        for t in threads:
            t.join(timeout=spin_ms / 1000 + 10)
    finally:
        server.stop()
    a = res.add("echo hi with 4 sessions spinning", busy)
    b = res.add("echo hi on the idle server (baseline)", idle, role="baseline")
    ratio = a.stats()["p99"] / b.stats()["p99"]
    res.goal("p99 with 4 spinners ≤ 3× idle p99",
             f"{ratio:.2f}× ({fmt_ms(a.stats()['p99'])} vs {fmt_ms(b.stats()['p99'])})", ratio <= 3)
    res.info("p50 with 4 spinners vs idle", f"{a.p50 / b.p50:.2f}× ({fmt_ms(a.p50)} vs {fmt_ms(b.p50)})")
    res.notes.append("each spinning run is its own cgroup with the same cpu.shares as the echo's")


class SharedParts:
    """redis-server and SeaweedFS (`weed mini`) on free loopback ports, for STORE=shared."""

    BUCKET = "code-interpreter-bench"

    def __init__(self, root: Path):
        tools = Path(os.environ.get("TOOLS_DIR", "/var/cache/code-interpreter/tools"))
        self.weed = tools / "bin" / "weed"
        self.redis = shutil.which("redis-server")
        if not self.weed.exists() or not self.redis:
            raise Skip("redis-server or weed is missing (scripts/install-cluster-tools)")
        self.root = root / "shared"
        self.root.mkdir(exist_ok=True)
        self.redis_port, self.s3_port = free_port(), free_port()
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        (self.root / "redis").mkdir(exist_ok=True)
        (self.root / "weed").mkdir(exist_ok=True)
        self.procs.append(subprocess.Popen(
            [self.redis, "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.root / "redis")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        ports = [free_port() for _ in range(9)]
        flags = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                 "filer.port.grpc", "admin.port", "admin.port.grpc", "s3.port.grpc"]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
        self.procs.append(subprocess.Popen(
            [str(self.weed), "mini", f"-dir={self.root / 'weed'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-s3.port={self.s3_port}", *[f"-{f}={p}" for f, p in zip(flags, ports)],
             "-s3.port.iceberg=0", "-s3.port.lance=0", "-admin.ui=false", "-webdav=false",
             f"-bucket={self.BUCKET}"],
            cwd=self.root / "weed", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True))
        filer = f"http://127.0.0.1:{ports[4]}/buckets/{self.BUCKET}/"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(filer, headers={"Accept": "application/json"}, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise ScenarioError("SeaweedFS did not create its bucket within 60 s")

    def env(self) -> dict[str, str]:
        return {
            "STORE": "shared",
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "REDIS_KEY_PREFIX": f"bench-{secrets.token_hex(4)}:",
            "S3_ENDPOINT": f"http://127.0.0.1:{self.s3_port}",
            "S3_BUCKET": self.BUCKET,
            "S3_ACCESS_KEY_ID": "bench",
            "S3_SECRET_ACCESS_KEY": "bench-secret",
        }

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(timeout=15)


@scenario(
    "shared_store",
    "STORE=shared (Redis + S3) against the local store",
    "The same calls, interleaved, on the main server (STORE=local) and on a second one with "
    "STORE=shared on a real redis-server and SeaweedFS (weed mini) on loopback: a warm Python "
    "call, a bash run that writes 10 files of 10 KiB (each written back to the bucket), and a "
    "100 MiB upload then download. Then two shared nodes in the session directory (NODE_URL): "
    "a warm Python call sent to the node that does not hold the kernel (forwarded) against "
    "one sent to the node that does; then the holder is killed (SIGKILL) and the time until "
    "the other answers the session's next call (it refuses the forward, so files hydrated "
    "from the bucket, a new kernel). No goals yet: the overhead is reported.",
)
def shared_store(ctx: Ctx, res: Result) -> None:
    parts = SharedParts(ctx.scratch)
    parts.start()
    env = {"KERNEL_POOL_SIZE": os.environ.get("KERNEL_POOL_SIZE", "2"), **parts.env(),
           "NODE_URL": "http://127.0.0.1:{port}"}
    shared = Server(ctx.server.binary, ctx.runtime_dir, keep=False, extra_env=env)
    servers: list[Server] = [shared]
    try:
        shared.start()
        apis = {"local": ctx.api, "shared": Api(shared)}
        sids = {k: a.exec("py", "print(1+1)", expect_stdout="2\n")[1]["session_id"] for k, a in apis.items()}
        warm: dict[str, list[float]] = {"local": [], "shared": []}
        files: dict[str, list[float]] = {"local": [], "shared": []}
        ten = "for i in $(seq 10); do head -c 10240 /dev/urandom > f$i.bin; done; echo ok"
        for _ in range(ctx.reps(3, 1)):
            for k, a in apis.items():
                a.exec("py", "print(1+1)", session_id=sids[k], expect_stdout="2\n")
        for _ in range(ctx.reps(100, 10)):
            for k, a in apis.items():
                warm[k].append(a.exec("py", "print(1+1)", session_id=sids[k], expect_stdout="2\n")[0])
        for _ in range(ctx.reps(30, 3)):
            for k, a in apis.items():
                e, j = a.exec("bash", ten, session_id=sids[k], expect_stdout="ok\n")
                if len(j.get("files") or []) != 10:
                    raise ScenarioError(f"{k}: the run reported {len(j.get('files') or [])} files, not 10")
                files[k].append(e)

        size = 100 * MIB if not ctx.quick else 16 * MIB
        path = ctx.scratch / "shared-upload.bin"
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        up: dict[str, list[float]] = {"local": [], "shared": []}
        down: dict[str, list[float]] = {"local": [], "shared": []}
        try:
            for _ in range(ctx.reps(3, 1)):
                for k, a in apis.items():
                    body = MultipartFile(path, "file", "big.bin")
                    t0 = time.perf_counter()
                    r = a.http.post(a.url("/upload"), data=body, headers={"Content-Type": body.content_type},
                                    timeout=HTTP_TIMEOUT)
                    up[k].append(ms_since(t0))
                    if r.status_code != 200:
                        raise ScenarioError(f"{k}: POST /upload {describe(r)}")
                    sid, fid = r.json()["session_id"], r.json()["files"][0]["id"]
                    t0 = time.perf_counter()
                    r = a.http.get(a.url(f"/download/{sid}/{fid}"), timeout=HTTP_TIMEOUT)
                    down[k].append(ms_since(t0))
                    if r.status_code != 200 or len(r.content) != size:
                        raise ScenarioError(f"{k}: GET /download {describe(r)}")
                    a.delete_session(sid)
        finally:
            path.unlink(missing_ok=True)

        # Two shared nodes: the one that ran the session dies, the other takes the next call.
        failover: list[float] = []
        direct: list[float] = []
        forwarded: list[float] = []
        for rep in range(ctx.reps(3, 1)):
            a_node = Server(ctx.server.binary, ctx.runtime_dir, keep=False, extra_env=env)
            # One tenant on both nodes: the tenant is derived from the API key.
            a_node.api_key = shared.api_key
            servers.append(a_node)
            a_node.start()
            _, j = Api(a_node).exec("py", "open('state.txt', 'w').write('x')\nprint('ok')", expect_stdout="ok\n")
            if rep == 0:
                for _ in range(ctx.reps(50, 5)):
                    direct.append(Api(a_node).exec("py", "print(1+1)", session_id=j["session_id"],
                                                   expect_stdout="2\n")[0])
                    e, k = apis["shared"].exec("py", "print(1+1)", session_id=j["session_id"], expect_stdout="2\n")
                    if k.get("runtime_status") != "reused":
                        raise ScenarioError(f"a forwarded call did not reach the kernel: {k}")
                    forwarded.append(e)
            os.killpg(a_node.proc.pid, signal.SIGKILL)
            a_node.proc.wait(timeout=15)
            t0 = time.perf_counter()
            _, j2 = apis["shared"].exec("py", "print(open('state.txt').read())", session_id=j["session_id"],
                                        expect_stdout="x\n")
            failover.append(ms_since(t0))
            if "state of this session was lost" not in (j2.get("stderr") or ""):
                raise ScenarioError("the surviving node did not say the kernel was lost")
    finally:
        for s in servers:
            s.stop()
        parts.stop()

    for label, series in [("warm py print(1+1)", warm), ("bash run writing 10 files", files),
                          (f"upload {size // MIB} MiB", up), (f"download {size // MIB} MiB", down)]:
        b = res.add(f"{label}, STORE=local (baseline)", series["local"], role="baseline")
        a = res.add(f"{label}, STORE=shared", series["shared"])
        res.info(f"{label}: shared − local (p50)", f"{a.p50 - b.p50:+.1f} ms ({a.p50 / b.p50:.2f}×)")
    b = res.add("warm py print(1+1) on the kernel's node (baseline)", direct, role="baseline")
    a = res.add("warm py print(1+1) through the other node (forwarded)", forwarded)
    res.info("forwarding: through the other node − on the kernel's node (p50)", f"{a.p50 - b.p50:+.1f} ms")
    f = res.add("node killed → next call answered by another node", failover)
    res.info("failover: SIGKILL of the session's node → the other node's answer (p50)", fmt_ms(f.p50) + " ms")
    res.notes.append("the shared server downloads from its own cache (it wrote the file); a node without "
                     "the file streams it from the bucket")

# ----------------------------------------------------------------------------- machine


def machine_info(runtime_dir: str) -> dict:
    info: dict = {}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?")
    except OSError:
        info["cpu"] = "?"
    info["cores"] = os.cpu_count()
    info["cores_usable"] = len(os.sched_getaffinity(0))
    mem = proc_status_mem()
    info["memory_gib"] = round(mem / GIB, 1) if mem else None
    info["kernel"] = platform.release()
    try:
        os_release = dict(
            ln.split("=", 1) for ln in Path("/etc/os-release").read_text().splitlines() if "=" in ln
        )
        info["os"] = os_release.get("PRETTY_NAME", "?").strip('"')
    except OSError:
        info["os"] = "?"
    info["user"] = "root" if os.geteuid() == 0 else str(os.geteuid())
    go = shutil.which("go", path=f"{runtime_dir}/go/bin:{os.environ.get('PATH', '')}") or "go"
    py = f"{runtime_dir}/python/bin/python"
    tools = {
        "bwrap": first_line(["bwrap", "--version"]),
        "setpriv": first_line(["setpriv", "--version"]),
        "node": first_line(["node", "--version"]),
        "esbuild": first_line([f"{runtime_dir}/node/node_modules/.bin/esbuild", "--version"]),
        "go": first_line([go, "version"]),
        "g++": first_line(["g++", "--version"]),
        "python (runtime venv)": first_line([py, "--version"]),
        "python (harness)": sys.version.split()[0],
        "cat": first_line(["cat", "--version"]),
        "rustc": first_line(["rustc", "--version"]),
        "cargo": first_line(["cargo", "--version"]),
    }
    try:
        import ipykernel
        import jupyter_client

        tools["jupyter_client / ipykernel"] = f"{jupyter_client.__version__} / {ipykernel.__version__}"
    except ImportError:
        tools["jupyter_client / ipykernel"] = "unavailable"
    tools["requests"] = requests.__version__
    info["tools"] = tools
    info["git"] = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                           capture_output=True, text=True)
    info["git_dirty_src"] = bool(dirty.stdout.strip())
    return info


def proc_status_mem() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ----------------------------------------------------------------------------- report


def verdict(g: Goal, quick: bool) -> str:
    if g.met is None:
        return "info"
    if quick:
        return "not judged (quick)"
    return "met" if g.met else "MISSED"


def table_rows(results: list[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        if r.status != "ok":
            detail = r.detail if len(r.detail) <= 90 else r.detail[:87] + "..."
            rows.append([r.name, f"{r.status}: {detail}", "", "", "", "", ""])
            continue
        for i, s in enumerate(r.series):
            st = s.stats()
            rows.append([
                r.name if i == 0 else "",
                s.label,
                str(st["n"]),
                fmt_ms(st["p50"]),
                fmt_ms(st["p90"]),
                fmt_ms(st["p99"]),
                s.unit,
            ])
    return rows


def goal_rows(results: list[Result], quick: bool) -> list[list[str]]:
    return [[r.name, g.text, g.measured, verdict(g, quick)] for r in results if r.status == "ok" for g in r.goals]


def text_table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    def line(cells):
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()
    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def md_table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    esc = lambda c: c.replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


SERIES_HEADER = ["scenario", "measurement", "n", "p50", "p90", "p99", "unit"]
GOAL_HEADER = ["scenario", "goal", "measured", "verdict"]


def write_reports(out_dir: Path, meta: dict, results: list[Result]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = meta["date"] + ("-quick" if meta["quick"] else "")
    md_path = out_dir / f"{stem}.md"
    k = 2
    while md_path.exists() or md_path.with_suffix(".json").exists():
        md_path = out_dir / f"{stem}-{k}.md"
        k += 1
    json_path = md_path.with_suffix(".json")

    m = meta["machine"]
    lines = [
        f"# Benchmark {meta['date']}{' (quick)' if meta['quick'] else ''}",
        "",
        f"Started {meta['started']}; benchmark {meta['bench_seconds']:.0f} s, build {meta['build_seconds']:.0f} s. "
        f"Server {meta['server'].get('version', '?')} at git {m['git']}"
        f"{' with uncommitted changes under src/' if m['git_dirty_src'] else ''} "
        f"({meta.get('build', '?')} build, {meta.get('binary', '?')}). "
        f"Load average at start / end: {meta['load_start']} / {meta['load_end']}.",
        "",
        "All times are client-side milliseconds (`time.perf_counter` around the HTTP call or the "
        "direct command), unless the unit says otherwise. Baselines ran in the same run, "
        "interleaved with the measured calls. p50/p90/p99 use linear interpolation.",
        "",
        "## Results",
        "",
        md_table(SERIES_HEADER, table_rows(results), {2, 3, 4, 5}),
        "",
        "## Goals",
        "",
        md_table(GOAL_HEADER, goal_rows(results, meta["quick"]), set()),
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable)",
        f"- Memory: {m['memory_gib']} GiB",
        f"- Kernel: {m['kernel']}; OS: {m['os']}; running as {m['user']}",
        f"- Server (GET /health): version {meta['server'].get('version', '?')}, sandbox "
        f"{json.dumps(meta['server'].get('sandbox'))}",
        f"- Server runtimes: {json.dumps(meta['server'].get('runtimes'))}",
        "",
        md_table(["tool", "version"], [[k, v] for k, v in m["tools"].items()], set()),
        "",
        "## Scenarios",
        "",
    ]
    for r in results:
        lines.append(f"### {r.name}: {r.title}")
        lines.append("")
        lines.append(r.measures)
        lines.append("")
        lines.append(
            f"Status: {r.status}{': ' + r.detail if r.detail else ''} ({r.seconds:.1f} s; "
            f"load average when it started: {r.load})."
        )
        for note in r.notes:
            lines.append(f"- {note}")
        lines.append("")
    md_path.write_text("\n".join(lines))

    payload = {
        **{k: v for k, v in meta.items()},
        "results": [
            {
                "name": r.name,
                "title": r.title,
                "status": r.status,
                "detail": r.detail,
                "seconds": round(r.seconds, 2),
                "load_at_start": r.load,
                "series": [
                    {"label": s.label, "unit": s.unit, "role": s.role, **s.stats(), "samples": [round(v, 3) for v in s.samples]}
                    for s in r.series
                ],
                "goals": [{"text": g.text, "measured": g.measured, "met": g.met, "verdict": verdict(g, meta["quick"])} for g in r.goals],
                "notes": r.notes,
            }
            for r in results
        ],
    }
    json_path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return md_path, json_path


# ----------------------------------------------------------------------------- main


def truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


def build(skip: bool) -> tuple[Path, float]:
    # BENCH_BINARY: measure that binary (e.g. the debug build `make test` already made).
    override = os.environ.get("BENCH_BINARY")
    if override:
        path = Path(override).resolve()
        if not path.exists():
            raise SystemExit(f"BENCH_BINARY: {path} does not exist")
        return path, 0.0
    binary = REPO / "target" / "release" / "code-interpreter"
    if skip:
        if not binary.exists():
            raise SystemExit(f"--skip-build: {binary} does not exist")
        return binary, 0.0
    if not shutil.which("cargo"):
        raise SystemExit("bench: cargo is missing; install Rust 1.85+ (https://rustup.rs)")
    log("cargo build --release --locked")
    t0 = time.perf_counter()
    p = subprocess.run(["cargo", "build", "--release", "--locked"], cwd=REPO)
    if p.returncode != 0:
        raise SystemExit(f"bench: cargo build failed ({p.returncode})")
    return binary, time.perf_counter() - t0


def use_runtime_python(runtime_dir: str) -> None:
    """The Python baselines drive kernels with jupyter_client, which the runtime's Python has
    (scripts/bootstrap installs it from the pinned requirements): a harness started by another
    Python that lacks it runs itself again under that one."""
    try:
        import jupyter_client  # noqa: F401
    except ImportError:
        python = Path(runtime_dir) / "python" / "bin" / "python"
        if python.exists() and Path(sys.executable).resolve() != python.resolve():
            log(f"this Python has no jupyter_client; running again under {python}")
            os.execv(python, [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    use_runtime_python(os.environ.get("RUNTIME_DIR", DEFAULT_RUNTIME_DIR))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", default=truthy(os.environ.get("QUICK")),
                    help="smoke run: few repetitions, 64 MiB upload, no goal verdicts (also QUICK=1)")
    ap.add_argument("--only", help="comma-separated scenario names to run")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--skip-build", action="store_true", help="use the existing target/release binary")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="directory for the .md and .json reports")
    ap.add_argument("--keep", action="store_true", help="keep the temporary DATA_DIR and server log")
    ap.add_argument("--strict", action="store_true", help="full run: exit 3 when a goal is missed")
    args = ap.parse_args(argv)

    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:22} {s.title}\n{'':22} {s.measures}\n")
        return 0
    chosen = SCENARIOS
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in {s.name for s in SCENARIOS}]
        if unknown:
            ap.error(f"unknown scenario(s): {', '.join(unknown)}; see --list")
        chosen = [s for s in SCENARIOS if s.name in wanted]

    runtime_dir = os.environ.get("RUNTIME_DIR", DEFAULT_RUNTIME_DIR)
    started = dt.datetime.now()
    binary, build_seconds = build(args.skip_build)
    if build_seconds:
        log(f"build took {build_seconds:.1f} s")

    t_bench = time.perf_counter()
    load_start = loadavg()
    machine = machine_info(runtime_dir)
    server = Server(binary, runtime_dir, args.keep)
    # The baseline kernel's connection files go to the scratch dir, not ~/.local.
    os.environ["JUPYTER_RUNTIME_DIR"] = str(server.scratch / "jupyter")
    results: list[Result] = []
    health: dict = {}
    fatal = None
    try:
        server.start()
        api = Api(server)
        r = api.http.get(api.url("/health"), timeout=30)
        health = r.json() if r.ok else {}
        log(f"server {health.get('version', '?')} on {server.base} (pid {server.proc.pid}), "
            f"{'quick' if args.quick else 'full'} run of {len(chosen)} scenario(s)")
        ctx = Ctx(args.quick, server, api, runtime_dir, secrets.token_hex(4))
        BASELINE_ENV.clear()
        BASELINE_ENV.update(ctx.baseline_env())
        try:
            api.exec("bash", "echo ready", expect_stdout="ready\n")
        except (Skip, ScenarioError) as err:
            raise RuntimeError(f"the server cannot run code: {err}") from err
        log("warm-up: " + ctx.wait_pool_full(timeout=60))
        for sc in chosen:
            res = Result(sc.name, sc.title, sc.measures)
            log(f"{sc.name}: {sc.title} ...")
            res.load = loadavg()
            t0 = time.perf_counter()
            try:
                sc.fn(ctx, res)
            except Skip as err:
                res.status, res.detail, res.series, res.goals = "skipped", f"not available ({err})", [], []
            except ScenarioError as err:
                res.status, res.detail = "error", str(err)
            except Exception as err:  # noqa: BLE001 - a harness bug still must not hide the others
                res.status, res.detail = "error", f"{err.__class__.__name__}: {err}"
                traceback.print_exc()
            res.seconds = time.perf_counter() - t0
            if server.proc.poll() is not None:
                res.status, res.detail = "error", f"the server died (exit {server.proc.returncode})"
            log(f"{sc.name}: {res.status}{' - ' + res.detail if res.detail else ''} ({res.seconds:.1f} s)")
            results.append(res)
            if server.proc.poll() is not None:
                fatal = "the server died:\n" + server.log_tail()
                break
        # Probes fill in /health's runtimes in the background: ask again for the report.
        r = api.http.get(api.url("/health"), timeout=30)
        health = r.json() if r.ok else health
    except (RuntimeError, requests.RequestException) as err:
        fatal = str(err)
    finally:
        server_log = server.log_tail(15)
        server.stop()
    bench_seconds = time.perf_counter() - t_bench

    meta = {
        "date": started.strftime("%Y-%m-%d"),
        "started": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "bench_seconds": round(bench_seconds, 1),
        "build_seconds": round(build_seconds, 1),
        "binary": str(binary.relative_to(REPO) if binary.is_relative_to(REPO) else binary),
        "build": "release" if "release" in binary.parts else "debug" if "debug" in binary.parts else "other",
        "load_start": load_start,
        "load_end": loadavg(),
        "machine": machine,
        "server": health,
        "fatal": fatal,
    }
    print()
    print(text_table(SERIES_HEADER, table_rows(results), {2, 3, 4, 5}))
    print()
    print(text_table(GOAL_HEADER, goal_rows(results, args.quick), set()))
    print()
    md_path, json_path = write_reports(args.out, meta, results)
    print(f"{'quick' if args.quick else 'full'} run: {bench_seconds:.0f} s (+ build {build_seconds:.0f} s); "
          f"reports: {md_path.relative_to(REPO) if md_path.is_relative_to(REPO) else md_path}, {json_path.name}")

    if fatal:
        print(f"bench: FATAL: {fatal}", file=sys.stderr)
        return 2
    errors = [r for r in results if r.status == "error"]
    if errors:
        print(f"bench: {len(errors)} scenario(s) failed: {', '.join(r.name for r in errors)}", file=sys.stderr)
        print(f"bench: last server log lines:\n{server_log}", file=sys.stderr)
        return 1
    if args.strict and not args.quick and any(g.met is False for r in results for g in r.goals):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
