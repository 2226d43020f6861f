#!/usr/bin/env bash
# Schemathesis over the served /openapi.json: generated requests (valid and invalid) to every
# operation, against a real server. Passes when no answer is a 5xx and every answer matches
# the document (status code, content type, headers, body schema).
#
#   tests/schemathesis/run.sh                    # builds the debug binary first
#   CODE_INTERPRETER_BIN=path tests/schemathesis/run.sh
#   ST_MAX_EXAMPLES=50 tests/schemathesis/run.sh # more cases per operation (default 20)
#
# Installs Schemathesis from requirements.txt into target/schemathesis-venv, only when that
# list changed. Extra arguments go to `st run`.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
target="$root/target"
mkdir -p "$target"

python=""
for candidate in /usr/bin/python3 /opt/code-interpreter/python/bin/python3; do
    if [[ -x $candidate ]] && "$candidate" -c 'import venv, ensurepip' 2>/dev/null; then
        python=$candidate
        break
    fi
done
if [[ -z $python ]]; then
    echo "tests/schemathesis: no Python with venv support (apt-get install python3-venv)" >&2
    exit 1
fi

venv="$target/schemathesis-venv"
want=$(sha256sum "$here/requirements.txt" | cut -c1-64)
if [[ ! -x $venv/bin/st || $(cat "$venv/.stamp" 2>/dev/null) != "$want" ]]; then
    echo "tests/schemathesis: installing Schemathesis into $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    echo "$want" >"$venv/.stamp"
fi

cd "$root"
binary=${CODE_INTERPRETER_BIN:-}
if [[ -z $binary ]]; then
    cargo build --locked
    binary="$target/debug/code-interpreter"
fi

report="$target/schemathesis"
rm -rf "$report"
mkdir -p "$report"
# Generated code runs for real: keep each run short. No warm kernels (a generated cell
# starts one when it needs it).
export EXECUTION_TIMEOUT=${EXECUTION_TIMEOUT:-5} KERNEL_POOL_SIZE=0
# shellcheck disable=SC2016 # expanded by the inner shell, where with-server.sh set them
# One worker: Hypothesis parses lambdas with `ast` from several threads, which Python 3.11
# can fail with "AST constructor recursion depth mismatch". Run inside the report directory,
# where Schemathesis leaves its cache.
exec e2e/with-server.sh "$binary" bash -c '
    cd "$1" && exec "$0"/bin/st run "$BASE_URL/openapi.json" \
        --header "x-api-key: $API_KEY" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
        --max-examples "${ST_MAX_EXAMPLES:-20}" --seed "${ST_SEED:-1}" --workers 1 \
        --request-timeout 60 --no-color --generation-database none \
        --report junit --report-dir "$1" "${@:2}"
' "$venv" "$report" "$@"
