#!/usr/bin/env bash
# LibreChat end-to-end tests: the real @librechat/agents tools against the real
# server binary. Installs the pinned npm packages when needed, then runs
# `node --test`. The server binary is $CODE_INTERPRETER_BIN, else
# ../../target/release/code-interpreter, else ../../target/debug/code-interpreter.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# A relative CODE_INTERPRETER_BIN is relative to where this script was called from.
if [[ -n "${CODE_INTERPRETER_BIN:-}" && "${CODE_INTERPRETER_BIN}" != /* ]]; then
  export CODE_INTERPRETER_BIN="$PWD/$CODE_INTERPRETER_BIN"
fi
cd "$here"

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "e2e/librechat: '$tool' is not installed (Node.js 20 or newer is needed)" >&2
    exit 1
  fi
done

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if (( node_major < 20 )); then
  echo "e2e/librechat: Node.js 20 or newer is needed, found $(node --version)" >&2
  exit 1
fi

# Reinstall only when node_modules is missing or the lock (or npm settings,
# or the Node major version) changed since the last install.
stamp="node_modules/.e2e-install-stamp"
want="$(cat package.json package-lock.json .npmrc | sha256sum | cut -d' ' -f1)-node${node_major}"
have=""
if [[ -f "$stamp" ]]; then
  have="$(cat "$stamp")"
fi
if [[ ! -d node_modules || "$have" != "$want" ]]; then
  echo "e2e/librechat: npm ci (lock changed or node_modules missing)"
  npm ci --no-audit --no-fund --loglevel=error
  printf '%s\n' "$want" > "$stamp"
fi

# Fail fast, with one clear sentence, when there is no server binary to test.
if ! binary="$(node --input-type=module -e '
  import { resolveBinary } from "./lib/server.mjs";
  try { console.log(resolveBinary()); } catch (err) { console.log(err.message); process.exit(1); }
')"; then
  echo "e2e/librechat: $binary" >&2
  exit 1
fi
echo "e2e/librechat: server binary $binary"

reporter="${E2E_TEST_REPORTER:-spec}"
exec node --test --test-reporter="$reporter" test/*.test.mjs
