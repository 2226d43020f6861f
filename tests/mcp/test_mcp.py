"""The MCP server through the official Python SDK client (`mcp`), over streamable HTTP and stdio,
plus a conformance check with the MCP Inspector CLI.

Run with tests/mcp/run.sh: it installs the pinned client, builds the server and sets
CODE_INTERPRETER_BIN. Every test starts from real processes: an HTTP server with two tenants
(one per API key) and a fresh DATA_DIR, and `code-interpreter mcp` children for stdio.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time

import anyio
import httpx2
import jsonschema
import pytest
from harness import BIN, KEY_A, KEY_B, HttpServer, fresh_data_dir, http_session, server_env, stdio_session
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

INVALID_PARAMS = -32602
TOOLS = {
    "execute_code",
    "upload_file",
    "list_files",
    "read_file",
    "delete_file",
    "reset_session",
    "list_runtimes",
}
# A run that never ends by itself (the server's own timeout would stop it after 300 s).
FOREVER = "import time\ni = 0\nwhile True:\n    i += 1\n    time.sleep(0.05)\n"

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def http_server():
    server = HttpServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stdio_data_dir():
    return fresh_data_dir()


@pytest.fixture(params=["http", "stdio"])
def connect(request, http_server, stdio_data_dir):
    """Open an initialized client session over the transport under test."""
    if request.param == "http":
        return lambda **kw: http_session(http_server, **kw)
    return lambda **kw: stdio_session(stdio_data_dir, **kw)


def texts(result) -> str:
    return "".join(c.text for c in result.content if c.type == "text")


async def run(session, code: str, language: str = "python", wait: float = 120, **args):
    return await session.call_tool(
        "execute_code", {"code": code, "language": language, **args}, read_timeout_seconds=wait
    )


# ---------------------------------------------------------------------------------------------


async def test_initialize_negotiates_a_revision_and_lists_tools_with_valid_schemas(connect):
    async with connect() as (session, init):
        assert init.protocol_version == "2025-11-25"
        assert init.server_info.name == "code-interpreter"
        assert init.server_info.version
        assert init.capabilities.tools is not None
        assert init.capabilities.resources is not None
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert set(tools) == TOOLS
        for tool in tools.values():
            assert tool.description and len(tool.description) > 40, tool.name
            for schema in (tool.input_schema, tool.output_schema):
                assert schema is not None, tool.name
                jsonschema.Draft202012Validator.check_schema(schema)
                assert schema["type"] == "object"
        props = tools["execute_code"].input_schema["properties"]
        assert set(tools["execute_code"].input_schema["required"]) == {"code", "language"}
        for name in ("code", "language", "session_id", "args", "timeout"):
            assert props[name].get("description"), name


async def test_python_state_carries_across_calls_in_the_conversation(connect):
    async with connect() as (session, _):
        first = await run(session, "x = 41")
        assert not first.is_error, texts(first)
        second = await run(session, "print(x + 1)")
        assert not second.is_error, texts(second)
        assert second.structured_content["stdout"] == "42\n"
        assert "42" in texts(second)
        sid = second.structured_content["session_id"]
        assert sid == first.structured_content["session_id"]
        # Passing the id back explicitly reaches the same kernel.
        third = await run(session, "x", session_id=sid)
        assert third.structured_content["stdout"] == "41\n"


async def test_a_matplotlib_plot_comes_back_as_an_image_and_a_link(connect):
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()\n"
    async with connect() as (session, _):
        result = await run(session, code)
        assert not result.is_error, texts(result)
        images = [c for c in result.content if c.type == "image"]
        assert len(images) == 1
        assert images[0].mime_type == "image/png"
        assert base64.b64decode(images[0].data).startswith(b"\x89PNG\r\n\x1a\n")
        sid = result.structured_content["session_id"]
        links = [c for c in result.content if c.type == "resource_link"]
        assert [str(l.uri) for l in links] == [f"session://{sid}/figure-1.png"]
        assert result.structured_content["files"][0]["content_type"] == "image/png"


async def test_an_image_over_the_inline_cap_is_only_linked_and_read_file_refuses_it(connect):
    # Random pixels do not compress: a PNG of about 3 MiB, over the 1 MiB cap.
    code = (
        "import os\nfrom PIL import Image\n"
        "Image.frombytes('RGB', (1000, 1000), os.urandom(3_000_000)).save('noise.png')\n"
    )
    async with connect() as (session, _):
        result = await run(session, code)
        assert not result.is_error, texts(result)
        assert not [c for c in result.content if c.type == "image"]
        links = [c for c in result.content if c.type == "resource_link"]
        assert [l.name for l in links] == ["noise.png"]
        assert links[0].size > 1024 * 1024
        assert "noise.png (2.9 MiB) is too large to show inline" in texts(result)
        sid = result.structured_content["session_id"]
        read = await session.call_tool("read_file", {"session_id": sid, "name": "noise.png"})
        assert read.is_error
        assert "over the 1.0 MiB" in texts(read) and "/download/" in texts(read)


async def test_each_mcp_session_gets_its_own_code_session(http_server):
    async with http_session(http_server) as (first, _):
        a = await run(first, "mine = 1")
        async with http_session(http_server) as (second, _):
            b = await run(second, "print('mine' in globals())")
    assert b.structured_content["stdout"] == "False\n"
    assert b.structured_content["session_id"] != a.structured_content["session_id"]


async def test_upload_then_read_back_text_and_binary(connect):
    blob = bytes(range(256)) * 4
    async with connect() as (session, _):
        up = await session.call_tool(
            "upload_file", {"name": "in/hello.csv", "content": "a,b\n1,2\n"}
        )
        assert not up.is_error, texts(up)
        sid = up.structured_content["session_id"]
        back = await session.call_tool("read_file", {"session_id": sid, "name": "in/hello.csv"})
        assert not back.is_error, texts(back)
        resource = next(c for c in back.content if c.type == "resource").resource
        assert resource.text == "a,b\n1,2\n"
        assert str(resource.uri) == f"session://{sid}/in/hello.csv"
        assert back.structured_content["encoding"] == "text"

        up = await session.call_tool(
            "upload_file",
            {"name": "raw.bin", "content_base64": base64.b64encode(blob).decode(), "session_id": sid},
        )
        assert not up.is_error, texts(up)
        file_id = up.structured_content["file_id"]
        back = await session.call_tool("read_file", {"session_id": sid, "file_id": file_id})
        resource = next(c for c in back.content if c.type == "resource").resource
        assert base64.b64decode(resource.blob) == blob
        assert back.structured_content["encoding"] == "base64"

        # Code in the session sees both files, and the conversation's session is that one.
        seen = await run(session, "print(open('in/hello.csv').read().split()[1]); print(len(open('raw.bin','rb').read()))")
        assert seen.structured_content["stdout"] == "1,2\n1024\n"
        assert seen.structured_content["session_id"] == sid

        listed = await session.call_tool("list_files", {"session_id": sid})
        names = {f["name"] for f in listed.structured_content["files"]}
        assert names == {"in/hello.csv", "raw.bin"}
        gone = await session.call_tool("delete_file", {"session_id": sid, "name": "raw.bin"})
        assert not gone.is_error, texts(gone)
        listed = await session.call_tool("list_files", {"session_id": sid})
        assert [f["name"] for f in listed.structured_content["files"]] == ["in/hello.csv"]


async def test_session_files_are_resources_to_list_and_read(connect):
    async with connect() as (session, _):
        made = await run(session, "open('notes.txt', 'w').write('remember me')")
        assert not made.is_error, texts(made)
        sid = made.structured_content["session_id"]
        uri = f"session://{sid}/notes.txt"
        templates = (await session.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["session://{session_id}/{name}", "notebook://{session_id}"]
        listed = (await session.list_resources()).resources
        assert uri in {str(r.uri) for r in listed}
        read = await session.read_resource(uri)
        assert read.contents[0].text == "remember me"
        with pytest.raises(MCPError):
            await session.read_resource(f"session://{sid}/missing.txt")


async def test_a_sessions_notebook_is_a_resource(connect):
    async with connect() as (session, _):
        made = await run(session, "print('in the notebook')\n6 * 7")
        assert not made.is_error, texts(made)
        sid = made.structured_content["session_id"]
        uri = f"notebook://{sid}"
        listed = (await session.list_resources()).resources
        assert uri in {str(r.uri) for r in listed}
        read = await session.read_resource(uri)
        assert read.contents[0].mime_type == "application/x-ipynb+json"
        notebook = json.loads(read.contents[0].text)
        assert notebook["nbformat"] == 4
        cell = notebook["cells"][-1]
        assert cell["source"] == "print('in the notebook')\n6 * 7"
        assert [o["output_type"] for o in cell["outputs"]] == ["stream", "execute_result"]
        with pytest.raises(MCPError):
            await session.read_resource("notebook://AAAAAAAAAAAAAAAAAAAAA")


async def test_bad_arguments_are_protocol_errors_and_failed_runs_are_error_results(connect):
    async with connect() as (session, _):
        unsupported = await run(session, "print(1)", language="cobol")
        assert unsupported.is_error
        message = unsupported.content[0].text
        assert "Unsupported language 'cobol'" in message
        assert "python" in message

        with pytest.raises(MCPError) as err:
            await session.call_tool("execute_code", {"language": "python"})
        assert err.value.code == INVALID_PARAMS
        assert "`code`" in err.value.message

        failed = await run(session, "raise ValueError('boom')")
        assert failed.is_error
        assert "ValueError: boom" in texts(failed)
        assert failed.structured_content["status"] == "error"

        failed = await run(session, "exit 3", language="bash")
        assert failed.is_error
        assert failed.structured_content["exit_code"] == 3

        timed_out = await run(session, "import time; time.sleep(30)", timeout=1)
        assert timed_out.is_error
        assert timed_out.structured_content["status"] == "timeout"


async def test_progress_and_output_arrive_while_a_run_streams(connect):
    logs = []

    async def on_log(params):
        logs.append((time.monotonic(), params))

    progress = []

    async def on_progress(value, total, message):
        progress.append((time.monotonic(), value, message))

    code = "import time\nfor i in range(5):\n    print('tick', i, flush=True)\n    time.sleep(0.5)\n"
    async with connect(logging_callback=on_log) as (session, _):
        started = time.monotonic()
        result = await session.call_tool(
            "execute_code",
            {"code": code, "language": "python"},
            read_timeout_seconds=60,
            progress_callback=on_progress,
        )
        finished = time.monotonic()
        await anyio.sleep(0.3)  # log messages may ride another stream than the result
    assert not result.is_error, texts(result)
    assert finished - started >= 2.0
    during = [p for p in progress if p[0] < finished]
    assert len(during) >= 2, progress
    values = [p[1] for p in during]
    assert values == sorted(values) and len(set(values)) == len(values)
    logged = "".join(p.data for _, p in logs if p.logger == "stdout")
    assert "tick 0" in logged and "tick 3" in logged, logs
    assert logs[0][0] < finished, "the first output arrived only after the run"


async def test_cancelling_a_request_stops_the_run(connect):
    async with connect() as (session, _):
        made = await run(session, "i = 0")
        sid = made.structured_content["session_id"]
        started = time.monotonic()
        with anyio.move_on_after(2.0) as scope:
            await run(session, FOREVER, session_id=sid)
        assert scope.cancelled_caught
        # Were the run still going, this call would wait for it (one run per session at a time).
        after = await run(session, "print(i)", session_id=sid, wait=20)
        assert time.monotonic() - started < 20
        count = int(after.structured_content["stdout"])
        assert count > 10
        await anyio.sleep(0.5)
        again = await run(session, "print(i)", session_id=sid)
        assert int(again.structured_content["stdout"]) == count


def processes_with(marker: str) -> list[int]:
    """Host processes whose command line holds `marker` (the server runs as root here, or as
    the same user as the sandboxes' launcher, so every /proc/<pid>/cmdline is readable)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            pass
    return found


SLEEPERS = {
    "bash": "echo started; sleep 600",
    "javascript": "console.log('started'); setTimeout(() => {}, 600000);",
    "go": 'package main\nimport ("fmt"; "time")\nfunc main() { fmt.Println("started"); time.Sleep(10 * time.Minute) }\n',
}


@pytest.mark.parametrize("language", sorted(SLEEPERS))
async def test_cancelling_a_one_shot_run_kills_its_processes(connect, language):
    marker = f"cancel-me-{language}-{os.getpid()}-{time.monotonic_ns()}"
    async with connect() as (session, _):
        made = await run(session, "echo ready", language="bash")
        sid = made.structured_content["session_id"]
        scope = anyio.CancelScope()

        async def call():
            with scope:
                await run(session, SLEEPERS[language], language=language, session_id=sid, args=[marker])

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call)
            # Cancel only once the program runs (a first Go build may take seconds).
            deadline = time.monotonic() + 90
            while not processes_with(marker) and time.monotonic() < deadline:
                await anyio.sleep(0.05)
            assert processes_with(marker), "the program never started"
            scope.cancel()
        assert scope.cancelled_caught
        deadline = time.monotonic() + 15
        while processes_with(marker) and time.monotonic() < deadline:
            await anyio.sleep(0.1)
        assert processes_with(marker) == [], "the cancelled program is still running"
        after = await run(session, "echo next", language="bash", session_id=sid, wait=30)
        assert after.structured_content["stdout"] == "next\n"


async def test_reset_session_restarts_the_kernel_and_keeps_files(connect):
    async with connect() as (session, _):
        made = await run(session, "y = 7\nopen('kept.txt', 'w').write('still here')")
        sid = made.structured_content["session_id"]
        reset = await session.call_tool("reset_session", {"session_id": sid})
        assert not reset.is_error, texts(reset)
        assert reset.structured_content["kernel_restarted"] is True
        after = await run(session, "print('y' in globals(), open('kept.txt').read())", session_id=sid)
        assert after.structured_content["stdout"] == "False still here\n"


async def test_list_runtimes_names_python_and_its_packages(connect):
    async with connect() as (session, _):
        result = await session.call_tool("list_runtimes", {})
        assert not result.is_error, texts(result)
        languages = {r["language"]: r for r in result.structured_content["languages"]}
        assert languages["python"]["stateful"] is True
        assert languages["bash"]["version"]
        packages = {p["name"].lower() for p in result.structured_content["python_packages"]}
        assert {"numpy", "pandas", "matplotlib"} <= packages


# --- HTTP only --------------------------------------------------------------------------------


async def test_http_without_a_valid_key_is_refused(http_server):
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"},
        },
    }
    headers = {"accept": "application/json, text/event-stream"}
    for path in ("/mcp", "/v1/mcp"):
        assert httpx2.post(http_server.base + path, json=body, headers=headers).status_code == 401
        wrong = {**headers, "x-api-key": "not-a-key"}
        assert httpx2.post(http_server.base + path, json=body, headers=wrong).status_code == 401
        right = {**headers, "x-api-key": KEY_A}
        response = httpx2.post(http_server.base + path, json=body, headers=right)
        assert response.status_code == 200
        assert response.headers.get("mcp-session-id")


async def test_an_unlisted_host_is_refused(http_server):
    response = httpx2.post(
        http_server.base + "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers={
            "accept": "application/json, text/event-stream",
            "x-api-key": KEY_A,
            "host": "evil.example",
        },
    )
    assert response.status_code == 403


async def test_one_tenant_cannot_reach_another_tenants_session(http_server):
    async with http_session(http_server, KEY_A) as (alice, _):
        made = await run(alice, "open('secret.txt', 'w').write('alice only')\nsecret = 1")
        sid = made.structured_content["session_id"]
        async with http_session(http_server, KEY_B) as (bob, _):
            listed = await bob.call_tool("list_files", {"session_id": sid})
            assert listed.is_error and "not found" in texts(listed)
            read = await bob.call_tool("read_file", {"session_id": sid, "name": "secret.txt"})
            assert read.is_error
            reset = await bob.call_tool("reset_session", {"session_id": sid})
            assert reset.is_error
            with pytest.raises(MCPError):
                await bob.read_resource(f"session://{sid}/secret.txt")
            listed = (await bob.list_resources()).resources
            assert not any(sid in str(r.uri) for r in listed)
            # Running "in" Alice's session runs in one of Bob's own, without her state.
            ran = await run(bob, "print('secret' in globals())", session_id=sid)
            assert ran.structured_content["session_id"] != sid
            assert ran.structured_content["stdout"] == "False\n"
        # Alice's session is untouched.
        still = await run(alice, "print(secret, open('secret.txt').read())", session_id=sid)
        assert still.structured_content["stdout"] == "1 alice only\n"


async def test_the_sessionless_2026_revision_works_when_session_id_is_passed_back(http_server):
    http = create_mcp_http_client(headers={"x-api-key": KEY_A})
    async with http:
        async with Client(streamable_http_client(http_server.base + "/mcp", http_client=http)) as client:
            assert client.protocol_version == "2026-07-28"
            assert {t.name for t in (await client.list_tools()).tools} == TOOLS
            first = await client.call_tool("execute_code", {"code": "z = 5", "language": "python"})
            sid = first.structured_content["session_id"]
            second = await client.call_tool(
                "execute_code", {"code": "print(z * 2)", "language": "py", "session_id": sid}
            )
            assert second.structured_content["stdout"] == "10\n"


async def test_a_graceful_shutdown_ends_open_mcp_streams():
    server = HttpServer()
    code, elapsed = None, None
    try:
        async with http_session(server) as (session, _):
            await session.list_tools()
            await anyio.sleep(0.5)  # the client's standalone GET stream is open by now
            started = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            code = await anyio.to_thread.run_sync(lambda: server.proc.wait(timeout=15))
            elapsed = time.monotonic() - started
    except Exception:
        pass  # the client may complain about the server going away; the exit code tells
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    assert code == 0
    assert elapsed < 10


# --- The MCP Inspector CLI ---------------------------------------------------------------------


def inspector(*args: str) -> subprocess.CompletedProcess:
    exe = os.environ.get("MCP_INSPECTOR", "")
    if not (exe and os.path.exists(exe)):
        pytest.skip("the MCP Inspector is not installed (tests/mcp/run.sh installs it with npm)")
    env = dict(os.environ, PATH=f"{os.path.dirname(exe)}:{os.environ.get('PATH', '')}")
    return subprocess.run(
        [exe, "--cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_inspector_cli_lists_the_tools_over_http(http_server):
    done = inspector(
        f"{http_server.base}/mcp", "--method", "tools/list", "--strict",
        "--header", f"x-api-key: {KEY_A}",
    )
    assert done.returncode == 0, done.stderr
    assert {t["name"] for t in json.loads(done.stdout)["tools"]} == TOOLS


def test_the_inspector_cli_lists_the_tools_over_stdio(stdio_data_dir):
    env_args = [a for k, v in server_env(stdio_data_dir).items() for a in ("-e", f"{k}={v}")]
    done = inspector(*env_args, BIN, "mcp", "--method", "tools/list", "--strict")
    assert done.returncode == 0, done.stderr
    assert {t["name"] for t in json.loads(done.stdout)["tools"]} == TOOLS
