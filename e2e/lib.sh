# Shared by the smoke scripts (sourced, not run): settings, HTTP helpers and assertions.
#
#   BASE_URL  the server (default http://localhost:8000; a /v1 suffix works too)
#   API_KEY   sent as x-api-key (default dev-demo-key, as the Python project's scripts)
#   RUNS_DIR  where each run keeps its requests and answers (default e2e/runs)
# shellcheck shell=bash

BASE_URL=${BASE_URL:-http://localhost:8000}
BASE_URL=${BASE_URL%/}
API_KEY=${API_KEY:-dev-demo-key}
E2E_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
RUNS_DIR=${RUNS_DIR:-$E2E_DIR/runs}

for tool in curl jq cmp; do
    command -v "$tool" >/dev/null || { echo "e2e: $tool is missing (scripts/bootstrap installs it)" >&2; exit 1; }
done

# A fresh directory for this script's files: WORK=<RUNS_DIR>/<name>-<time>-<pid>.
new_workdir() {
    WORK="$RUNS_DIR/$1-$(date +%Y%m%d-%H%M%S)-$$"
    mkdir -p "$WORK"
}

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# api METHOD PATH OUT [curl arguments…]: the answer's body goes to OUT, its status to $STATUS.
api() {
    local method=$1 path=$2 out=$3
    shift 3
    STATUS=$(curl -sS -o "$out" -w '%{http_code}' -X "$method" -H "x-api-key: $API_KEY" \
        "$@" "$BASE_URL$path") || fail "$method $path: no answer from $BASE_URL"
}

# expect_status WANT WHAT: the last api call answered WANT.
expect_status() {
    [[ $STATUS == "$1" ]] || fail "$2: HTTP $STATUS, expected $1 (body: $(head -c 600 "$LAST_OUT" 2>/dev/null))"
}

# expect_eq WHAT GOT WANT
expect_eq() {
    [[ $2 == "$3" ]] || fail "$1: got $(printf '%q' "$2"), expected $(printf '%q' "$3")"
}

# json FILE FILTER: one value out of a JSON answer (raw strings).
json() {
    jq -r "$2" "$1"
}

# exec_json BODY_FILE OUT: POST /exec; the answer must be 200.
exec_json() {
    LAST_OUT=$2
    api POST /exec "$2" -H 'content-type: application/json' --data-binary "@$1"
    expect_status 200 "POST /exec"
}

# upload NAME FILE OUT [form fields…]: POST /upload of one file part.
upload() {
    local name=$1 file=$2 out=$3
    shift 3
    LAST_OUT=$out
    local fields=()
    for field in "$@"; do fields+=(-F "$field"); done
    api POST /upload "$out" -F "file=@$file;filename=$name" "${fields[@]}"
    expect_status 200 "POST /upload $name"
}

# download_and_compare PATH WANT_FILE WHAT: GET PATH (a file's `path`) and compare its bytes.
download_and_compare() {
    local path=$1 want=$2 what=$3
    local got="$WORK/downloaded-$(basename "$want")"
    LAST_OUT=$got
    api GET "$path" "$got"
    expect_status 200 "GET $path ($what)"
    cmp -s "$got" "$want" || fail "$what: the downloaded bytes differ from the expected ones ($got vs $want)"
}
