#!/usr/bin/env bash
# Smoke test of one language against a running server:  e2e/test_lang.sh LANGUAGE
#
# Runs e2e/programs/LANGUAGE.* in a new session: it reads an uploaded e2e-input.txt (21),
# prints "e2e LANGUAGE 42" and writes the same line to e2e-LANGUAGE.txt. Asserts the status,
# stdout and stderr, finds the file in the response, downloads it and compares the bytes,
# checks the listing, then deletes the session. Exits non-zero on the first failure.
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

lang=${1:?usage: e2e/test_lang.sh LANGUAGE}
programs=("$E2E_DIR"/programs/"$lang".*)
[[ -f ${programs[0]} ]] || fail "no smoke program for '$lang': add e2e/programs/$lang.<ext> (see e2e/README.md)"
program=${programs[0]}
new_workdir "$lang"

expected="e2e $lang 42"
printf '21\n' >"$WORK/e2e-input.txt"
printf '%s\n' "$expected" >"$WORK/expected.txt"

upload e2e-input.txt "$WORK/e2e-input.txt" "$WORK/upload.json"
session=$(json "$WORK/upload.json" .session_id)
input_id=$(json "$WORK/upload.json" '.files[0].id')

jq -n --rawfile code "$program" --arg lang "$lang" --arg sid "$session" --arg fid "$input_id" \
    '{code: $code, lang: $lang, session_id: $sid,
      files: [{id: $fid, session_id: $sid, name: "e2e-input.txt"}]}' >"$WORK/exec-request.json"
exec_json "$WORK/exec-request.json" "$WORK/exec.json"

expect_eq "$lang: run.status (stderr: $(json "$WORK/exec.json" .stderr | head -c 400))" \
    "$(json "$WORK/exec.json" .run.status)" success
expect_eq "$lang: session_id" "$(json "$WORK/exec.json" .session_id)" "$session"
expect_eq "$lang: stdout" "$(json "$WORK/exec.json" .stdout)" "$expected"
[[ $(jq '.stdout | endswith("\n")' "$WORK/exec.json") == true ]] || fail "$lang: stdout does not end with a newline"
expect_eq "$lang: stderr" "$(json "$WORK/exec.json" .stderr)" ""

out_name="e2e-$lang.txt"
out_path=$(jq -r --arg n "$out_name" '.files[] | select(.name == $n) | .path' "$WORK/exec.json")
[[ -n $out_path ]] || fail "$lang: $out_name is not in the response's files: $(jq -c .files "$WORK/exec.json")"
download_and_compare "$out_path" "$WORK/expected.txt" "$lang: $out_name"

LAST_OUT="$WORK/listing.json"
api GET "/files/$session?detail=simple" "$LAST_OUT"
expect_status 200 "GET /files/$session"
jq -e --arg n "$out_name" 'map(.name) | index($n) != null' "$LAST_OUT" >/dev/null ||
    fail "$lang: $out_name is not in the session's listing: $(jq -c 'map(.name)' "$LAST_OUT")"

LAST_OUT="$WORK/delete.json"
api DELETE "/sessions/$session" "$LAST_OUT"
expect_status 200 "DELETE /sessions/$session"
echo "$lang: ok ($(json "$WORK/exec.json" .version), $(json "$WORK/exec.json" .run.wall_time) ms)"
