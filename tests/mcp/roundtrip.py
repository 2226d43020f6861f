"""Round trip of a trivial Python run, `1+1`, over MCP (streamable HTTP) and over REST
`POST /exec`, against one server in one run. Each call is timed on the client from sending the
request to having the parsed result; calls alternate between the ways so drift hits all alike.

    tests/mcp/run.sh --roundtrip [calls]     # release build; calls defaults to 50

Ways measured:
  rest        POST /exec with keep-alive (httpx2), JSON parsed
  mcp-raw     tools/call as one POST with Mcp-Session-Id (httpx2), SSE body parsed: the protocol
  mcp-sdk     ClientSession.call_tool of the official SDK: the protocol plus the SDK's own work
              (pydantic models, validating structuredContent against the outputSchema)
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time

import anyio
import httpx2
from harness import KEY_A, HttpServer, http_session

WARM_UP = 5
ACCEPT = "application/json, text/event-stream"


def sse_result(body: str) -> dict:
    for line in body.splitlines():
        if line.startswith("data:") and line[5:].strip():
            message = json.loads(line[5:])
            if "result" in message or "error" in message:
                return message
    raise RuntimeError(f"no JSON-RPC response in {body!r}")


async def main(calls: int) -> None:
    server = HttpServer()
    try:
        async with httpx2.AsyncClient(base_url=server.base, headers={"x-api-key": KEY_A}, timeout=60) as http:
            # REST: one session, reused, so the kernel is warm for every call.
            first = (await http.post("/exec", json={"code": "1+1", "lang": "py"})).json()
            rest_body = {"code": "1+1", "lang": "py", "session_id": first["session_id"]}

            # MCP without the SDK: initialize, then tools/call POSTs on the session.
            init = await http.post(
                "/mcp",
                headers={"accept": ACCEPT},
                json={
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "roundtrip", "version": "1"},
                    },
                },
            )
            raw_headers = {
                "accept": ACCEPT,
                "mcp-session-id": init.headers["mcp-session-id"],
                "mcp-protocol-version": sse_result(init.text)["result"]["protocolVersion"],
            }
            await http.post(
                "/mcp",
                headers=raw_headers,
                json={"jsonrpc": "2.0", "method": "notifications/initialized"},
            )

            async def rest() -> None:
                out = (await http.post("/exec", json=rest_body)).json()
                assert out["stdout"] == "2\n", out

            next_id = 0

            async def mcp_raw() -> None:
                nonlocal next_id
                next_id += 1
                response = await http.post(
                    "/mcp",
                    headers=raw_headers,
                    json={
                        "jsonrpc": "2.0",
                        "id": next_id,
                        "method": "tools/call",
                        "params": {
                            "name": "execute_code",
                            "arguments": {"code": "1+1", "language": "python"},
                        },
                    },
                )
                out = sse_result(response.text)["result"]["structuredContent"]
                assert out["stdout"] == "2\n", out

            async with http_session(server) as (session, init_result):

                async def mcp_sdk() -> None:
                    out = await session.call_tool("execute_code", {"code": "1+1", "language": "python"})
                    assert out.structured_content["stdout"] == "2\n", out

                ways = {"rest": rest, "mcp-raw": mcp_raw, "mcp-sdk": mcp_sdk}
                times: dict[str, list[float]] = {name: [] for name in ways}
                for i in range(WARM_UP + calls):
                    for name, call in ways.items():
                        started = time.perf_counter()
                        await call()
                        if i >= WARM_UP:
                            times[name].append((time.perf_counter() - started) * 1000)
                print(f"protocol revision negotiated by ClientSession.initialize(): {init_result.protocol_version}")
                print(f"execute_code '1+1' (python), {calls} calls each, milliseconds:")
                for name, values in times.items():
                    values.sort()
                    p90 = values[int(len(values) * 0.9) - 1]
                    print(
                        f"  {name:8}  median {statistics.median(values):6.2f}  p90 {p90:6.2f}"
                        f"  min {values[0]:6.2f}"
                    )
    finally:
        server.stop()


if __name__ == "__main__":
    # The SDK warns that DELETE of the MCP session answered 202 rather than 200/204.
    logging.getLogger("mcp").setLevel(logging.ERROR)
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 50)
