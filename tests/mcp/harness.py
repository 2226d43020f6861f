"""Real server processes and client sessions for the MCP tests and the round-trip measurement."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("CODE_INTERPRETER_BIN") or str(ROOT / "target/debug/code-interpreter")
KEY_A = "mcp-key-alpha-0123456789"
KEY_B = "mcp-key-beta-9876543210"


def fresh_data_dir() -> str:
    # Sandboxed code runs as an unprivileged uid that must reach the workspaces by path.
    parent = tempfile.mkdtemp(prefix="ci-mcp-")
    os.chmod(parent, 0o755)
    return os.path.join(parent, "data")


def server_env(data_dir: str, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATA_DIR": data_dir,
        "CODE_INTERPRETER_API_KEYS": f"{KEY_A},{KEY_B}",
        "LOG_LEVEL": "warn",
        "KERNEL_POOL_SIZE": "1",
    }
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpServer:
    """`code-interpreter serve` on a free port with a fresh DATA_DIR and two API keys."""

    def __init__(self, **extra: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.data_dir = fresh_data_dir()
        env = server_env(self.data_dir, HOST="127.0.0.1", PORT=str(self.port), **extra)
        self.proc = subprocess.Popen(
            [BIN, "serve"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx2.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}")
            time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError("the server did not become ready")

    def stop(self) -> int:
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@asynccontextmanager
async def http_session(server: HttpServer, key: str = KEY_A, path: str = "/mcp", **kwargs):
    """An initialized `ClientSession` over streamable HTTP: (session, InitializeResult)."""
    async with create_mcp_http_client(headers={"x-api-key": key}) as http:
        async with streamable_http_client(server.base + path, http_client=http) as (read, write):
            async with ClientSession(read, write, **kwargs) as session:
                init = await session.initialize()
                yield session, init


@asynccontextmanager
async def stdio_session(data_dir: str, **kwargs):
    """An initialized `ClientSession` with a `code-interpreter mcp` child on stdio."""
    params = StdioServerParameters(command=BIN, args=["mcp"], env=server_env(data_dir))
    async with stdio_client(params, errlog=sys.stderr) as (read, write):
        async with ClientSession(read, write, **kwargs) as session:
            init = await session.initialize()
            yield session, init
