#!/usr/bin/env bash
# Runs a command against a fresh server:   e2e/with-server.sh BINARY COMMAND [ARGUMENTS…]
# Starts BINARY on a free loopback port with its own DATA_DIR and API key, waits until
# /health?ready=1 answers 200, runs COMMAND with BASE_URL and API_KEY set, then stops the
# server (SIGTERM) and removes its data. The command's exit code is this script's.
set -euo pipefail

binary=${1:?usage: e2e/with-server.sh BINARY COMMAND [ARGUMENTS…]}
shift
[[ -x $binary ]] || { echo "with-server: $binary is not an executable (build it first)" >&2; exit 1; }

# The sandbox user (uid 65534 when root) must reach DATA_DIR by path.
work=$(mktemp -d /tmp/code-interpreter-e2e.XXXXXX)
chmod 755 "$work"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export API_KEY=${API_KEY:-e2e-$RANDOM$RANDOM$RANDOM}
export BASE_URL="http://127.0.0.1:$port"

env -u CODE_INTERPRETER_API_KEYS HOST=127.0.0.1 PORT="$port" DATA_DIR="$work/data" \
    CODE_INTERPRETER_API_KEY="$API_KEY" KERNEL_POOL_SIZE="${KERNEL_POOL_SIZE:-1}" \
    LOG_LEVEL="${LOG_LEVEL:-warn}" "$binary" serve 2>"$work/server.log" &
server=$!
stop() {
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap stop EXIT

deadline=$((SECONDS + ${READY_TIMEOUT:-90}))
until curl -fsS -o /dev/null "$BASE_URL/health?ready=1" 2>/dev/null; do
    if ! kill -0 "$server" 2>/dev/null || ((SECONDS > deadline)); then
        echo "with-server: the server did not become ready; its log:" >&2
        tail -n 40 "$work/server.log" >&2
        exit 1
    fi
    sleep 0.2
done

status=0
"$@" || status=$?
if [[ $status -ne 0 ]]; then
    echo "with-server: '$*' failed ($status); the server's log:" >&2
    tail -n 40 "$work/server.log" >&2
fi
exit "$status"
