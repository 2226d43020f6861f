#!/usr/bin/env bash
# Every smoke test against a running server (BASE_URL, API_KEY; see lib.sh):
#   - test_lang.sh for each language the server's /health lists (the registry decides which;
#     a language without a program in e2e/programs fails, naming the file to add);
#   - test_python.sh: upload a CSV, pandas, state across calls, a streamed cell, a plot;
#   - test_unsupported_lang.sh: an unknown language gets a 400 that names the supported ones.
# A language the server reports as not installed is skipped, unless E2E_REQUIRE_ALL=1.
# Ends with "N passed, N failed"; exits 1 when anything failed.
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

new_workdir health
LAST_OUT="$WORK/health.json"
api GET /health "$LAST_OUT"
expect_status 200 "GET /health"
# Newer servers say which languages are installed and which are not; older ones list
# only the installed ones under `runtimes`.
mapfile -t entries < <(jq -r '
    if .readiness.runtimes then .readiness.runtimes | to_entries[] | "\(.key) \(.value)"
    else .runtimes | keys[] | "\(.) available" end' "$LAST_OUT")
[[ ${#entries[@]} -gt 0 ]] || fail "GET /health lists no runtimes: $(cat "$LAST_OUT")"

tests=()
skipped=0
for entry in "${entries[@]}"; do
    lang=${entry% *}
    state=${entry#* }
    if [[ $state == available ]]; then
        tests+=("$lang:test_lang.sh $lang")
    elif [[ ${E2E_REQUIRE_ALL:-0} == 1 ]]; then
        tests+=("$lang:false $lang is $state on the server")
    else
        echo "[e2e] $lang SKIPPED (the server says: $state)"
        skipped=$((skipped + 1))
    fi
done
tests+=("python-flow:test_python.sh" "unsupported:test_unsupported_lang.sh")

passed=0
failed=0
for entry in "${tests[@]}"; do
    name=${entry%%:*}
    read -r -a command <<<"${entry#*:}"
    if [[ ${command[0]} == *.sh ]]; then
        command[0]="$E2E_DIR/${command[0]}"
    fi
    if "${command[@]}"; then
        echo "[e2e] $name PASSED"
        passed=$((passed + 1))
    else
        echo "[e2e] $name FAILED"
        failed=$((failed + 1))
    fi
done

echo "e2e: $passed passed, $failed failed, $skipped skipped"
[[ $failed -eq 0 ]]
