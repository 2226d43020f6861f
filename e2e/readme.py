"""Runs the README's shell examples against a running server, so a stale example fails CI.

    python3 e2e/readme.py README.md        (BASE_URL and API_KEY as for the smoke scripts)

Every ```sh block runs, in order, in one bash session (variables and files carry over), in
a fresh directory, with `set -euo pipefail`. A block whose line before it is
`<!-- readme-test: skip (why) -->` is skipped (starting the server, for one). When a ```text
block follows a ```sh block, it is what that block must print on stdout, exactly.

Two substitutions make the examples run against the test's server: the README's address
`http://127.0.0.1:8000` (or `localhost:8000`) becomes BASE_URL, and the key a block exports as
CODE_INTERPRETER_API_KEY becomes API_KEY. Ends with "N passed, N failed".
"""

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```(\w*)\s*$")
SKIP = re.compile(r"^<!--\s*readme-test:\s*skip\b")
ADDRESSES = ("http://127.0.0.1:8000", "http://localhost:8000")
EXPORTED_KEY = re.compile(r"^(\s*export\s+CODE_INTERPRETER_API_KEY=)\S+", re.MULTILINE)
BLOCK_TIMEOUT_SECONDS = 300


@dataclass
class Example:
    line: int
    code: str
    expected: str | None = None
    skipped: bool = False


def examples(markdown: str) -> list[Example]:
    """The ```sh blocks, each with the ```text block right after it, if any."""
    lines = markdown.splitlines()
    found: list[Example] = []
    last_prose = ""
    sh_closed_at = None  # the line after the latest ```sh block, while nothing else came
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            if lines[i].strip():
                last_prose = lines[i].strip()
                sh_closed_at = None
            i += 1
            continue
        kind, start = fence.group(1), i
        body = []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        text = "\n".join(body) + "\n"
        if kind == "sh":
            found.append(Example(start + 1, text, skipped=bool(SKIP.match(last_prose))))
            sh_closed_at = i
        elif kind == "text" and sh_closed_at is not None:
            found[-1].expected = text
            sh_closed_at = None
        else:
            sh_closed_at = None
        last_prose = ""
    return found


def localised(code: str, base_url: str) -> str:
    for address in ADDRESSES:
        code = code.replace(address, base_url)
    return EXPORTED_KEY.sub(r'\1"$API_KEY"', code)


def run(readme: Path) -> int:
    base_url = os.environ.get("BASE_URL", "http://127.0.0.1:8000").rstrip("/")
    blocks = examples(readme.read_text())
    runnable = [b for b in blocks if not b.skipped]
    if not runnable:
        print(f"{readme}: no ```sh examples found", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="readme-test-") as work:
        outputs = Path(work, ".outputs")
        outputs.mkdir()
        script = ["set -euo pipefail"]
        for n, block in enumerate(runnable):
            script.append(f"echo {n} > {outputs}/current")
            script.append(f"{{\n{localised(block.code, base_url)}\n}} > {outputs}/{n}.out")
        script.append(f"echo done > {outputs}/current")
        env = dict(os.environ)
        # The MCP Inspector needs Node 22; tests/mcp/run.sh installs one with it.
        node = Path(__file__).resolve().parent.parent / "target/mcp-node/node_modules/.bin"
        if node.is_dir():
            env["PATH"] = f"{node}:{env.get('PATH', '')}"
        done = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=BLOCK_TIMEOUT_SECONDS * len(runnable),
        )
        reached = (outputs / "current").read_text().strip()
        passed = failed = 0
        for n, block in enumerate(runnable):
            out_file = outputs / f"{n}.out"
            got = out_file.read_text() if out_file.exists() else ""
            if reached != "done" and n == int(reached):
                failed += 1
                print(f"FAIL {readme}:{block.line}: the example exited {done.returncode}")
                print(indent(block.code) + "stderr:\n" + indent(done.stderr[-2000:]))
                break
            if block.expected is not None and got != block.expected:
                failed += 1
                print(f"FAIL {readme}:{block.line}: printed something else than the README says")
                print("expected:\n" + indent(block.expected) + "got:\n" + indent(got))
                continue
            passed += 1
        not_run = len(runnable) - passed - failed
        skipped = len(blocks) - len(runnable)
        print(f"readme: {passed} passed, {failed + not_run} failed, {skipped} skipped")
        return 0 if failed == 0 and not_run == 0 else 1


def indent(text: str) -> str:
    return "".join(f"    {line}\n" for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")))
