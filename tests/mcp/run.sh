#!/usr/bin/env bash
# The MCP tests: the official Python SDK client (and the MCP Inspector CLI) against the real
# server, over streamable HTTP and stdio. Installs what is missing, builds, then runs pytest.
#
#   tests/mcp/run.sh                 # every test (extra arguments go to pytest)
#   tests/mcp/run.sh --roundtrip     # MCP-vs-REST round trip of execute_code 1+1 (release build)
#
# Installs, each only when its pinned list changed (a stamp holds the list's hash):
#   target/mcp-venv   the Python client from tests/mcp/requirements.txt
#   target/mcp-node   Node.js 22 and the Inspector CLI from tests/mcp/package-lock.json
# The Inspector step may fail (no npm, no registry); its test then skips and says why.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
target="$root/target"
mkdir -p "$target"

stamp_of() { sha256sum "$@" | sha256sum | cut -c1-64; }

# The client's Python: Debian's (what the bootstrap installs python3-venv for), else the
# runtime's.
python=""
for candidate in /usr/bin/python3 /opt/code-interpreter/python/bin/python3; do
    if [[ -x $candidate ]] && "$candidate" -c 'import venv, ensurepip' 2>/dev/null; then
        python=$candidate
        break
    fi
done
if [[ -z $python ]]; then
    echo "tests/mcp: no Python with venv support (apt-get install python3-venv)" >&2
    exit 1
fi

venv="$target/mcp-venv"
want=$(stamp_of "$here/requirements.txt")
if [[ ! -x $venv/bin/python || $(cat "$venv/.stamp" 2>/dev/null) != "$want" ]]; then
    echo "tests/mcp: installing the MCP Python client into $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    echo "$want" >"$venv/.stamp"
fi

node_dir="$target/mcp-node"
want=$(stamp_of "$here/package.json" "$here/package-lock.json")
if [[ $(cat "$node_dir/.stamp" 2>/dev/null) != "$want" ]]; then
    if command -v npm >/dev/null; then
        echo "tests/mcp: installing Node.js 22 and the MCP Inspector into $node_dir" >&2
        rm -rf "$node_dir"
        mkdir -p "$node_dir"
        cp "$here/package.json" "$here/package-lock.json" "$node_dir/"
        if (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
            echo "$want" >"$node_dir/.stamp"
        else
            echo "tests/mcp: the Inspector could not be installed; its test will skip" >&2
        fi
    else
        echo "tests/mcp: npm is missing; the Inspector test will skip" >&2
    fi
fi
export MCP_INSPECTOR="$node_dir/node_modules/.bin/inspector"

cd "$root"
if [[ ${1:-} == --roundtrip ]]; then
    shift
    cargo build --release --locked
    export CODE_INTERPRETER_BIN="$target/release/code-interpreter"
    exec "$venv/bin/python" "$here/roundtrip.py" "$@"
fi
cargo build --locked
export CODE_INTERPRETER_BIN="$target/debug/code-interpreter"
exec "$venv/bin/python" -m pytest "$here/test_mcp.py" -p no:cacheprovider "$@"
