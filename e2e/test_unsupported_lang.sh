#!/usr/bin/env bash
# An unknown language gets 400 with a sentence that says so and names the supported ones;
# no session or file is made for it.
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
new_workdir unsupported

jq -n '{code: "print(42)", lang: "brainfuck"}' >"$WORK/request.json"
LAST_OUT="$WORK/answer.json"
api POST /exec "$LAST_OUT" -H 'content-type: application/json' --data-binary "@$WORK/request.json"
expect_status 400 "POST /exec with lang brainfuck"
detail=$(json "$LAST_OUT" .detail)
[[ $detail == "Unsupported language 'brainfuck'"* ]] || fail "unexpected detail: $detail"
[[ $detail == *python* && $detail == *bash* ]] || fail "the detail does not name the supported languages: $detail"
echo "unsupported: ok ($detail)"
