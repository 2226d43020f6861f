#!/usr/bin/env bash
# Install the playground's pinned npm packages (only when the lock changed), type-check,
# then build: `web/build.sh` writes web/dist; arguments go to build.mjs (--out DIR, --watch).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
command -v npm >/dev/null || { echo "web: npm is missing (scripts/bootstrap installs Node.js)" >&2; exit 1; }
stamp=node_modules/.install-stamp
want="$(cat package.json package-lock.json .npmrc | sha256sum | cut -d' ' -f1)-$(node --version)"
if [[ ! -d node_modules || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "web: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  printf '%s\n' "$want" >"$stamp"
fi
node_modules/.bin/tsc --noEmit -p .
exec node build.mjs "$@"
