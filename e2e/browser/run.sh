#!/usr/bin/env bash
# The playground's end-to-end tests: the real server binary, the page it embeds, and
# Debian's headless Chromium driven by playwright-core. Before the browser starts:
#   - installs the pinned npm packages when their lock changed,
#   - rebuilds the playground (web/build.sh) into a temporary directory and fails when it
#     differs from the committed web/dist (the bundle must be reproducible and current),
#   - installs nbformat (requirements.txt) into target/browser-venv, to check exports.
# The server binary is $CODE_INTERPRETER_BIN, else target/release, else target/debug.
# Screenshots go to $SCREENSHOT_DIR (default target/browser-screenshots).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if [[ -n "${CODE_INTERPRETER_BIN:-}" && "${CODE_INTERPRETER_BIN}" != /* ]]; then
  export CODE_INTERPRETER_BIN="$PWD/$CODE_INTERPRETER_BIN"
fi
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
export SCREENSHOT_DIR="${SCREENSHOT_DIR:-$root/target/browser-screenshots}"

fail() { echo "e2e/browser: $*" >&2; exit 1; }
command -v node >/dev/null && command -v npm >/dev/null || fail "node and npm are needed (scripts/bootstrap installs them)"
[[ -x $CHROMIUM ]] || fail "$CHROMIUM is missing: run scripts/bootstrap (it installs Debian's chromium)"

# npm ci in $1, only when node_modules is missing or the lock changed.
npm_ci() {
  local dir=$1 stamp="$1/node_modules/.install-stamp" want
  want="$(cat "$dir/package.json" "$dir/package-lock.json" "$dir/.npmrc" | sha256sum | cut -d' ' -f1)-$(node --version)"
  if [[ ! -d $dir/node_modules || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "e2e/browser: npm ci in ${dir#"$root"/}"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    printf '%s\n' "$want" >"$stamp"
  fi
}
npm_ci "$here"

fresh="$(mktemp -d)"
trap 'rm -rf "$fresh"' EXIT
"$root/web/build.sh" --out "$fresh"
if ! diff -r "$fresh" "$root/web/dist" >/dev/null; then
  diff -rq "$fresh" "$root/web/dist" >&2 || true
  fail "web/dist is not what web/ builds: run 'make web' and commit web/dist"
fi
echo "e2e/browser: web/dist matches a fresh build"

venv="$root/target/browser-venv"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x $venv/bin/python || "$(cat "$venv/.stamp" 2>/dev/null)" != "$want" ]]; then
  echo "e2e/browser: installing nbformat into $venv"
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  echo "$want" >"$venv/.stamp"
fi
export NBFORMAT_PYTHON="$venv/bin/python"

cd "$here"
exec node --test --test-reporter="${E2E_TEST_REPORTER:-spec}" test/*.test.mjs
