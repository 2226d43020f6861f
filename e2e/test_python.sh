#!/usr/bin/env bash
# The Python flow LibreChat users go through, asserted step by step against a running server:
# upload a CSV, read it with pandas, keep state between calls, stream a cell over SSE, save a
# matplotlib plot and download it (bytes checked by hash), delete a file, end the session.
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
new_workdir python-flow
entity="e2e_$$_$RANDOM"

printf 'name,value\nAlice,10\nBob,20\nCarol,12\n' >"$WORK/data.csv"
upload data.csv "$WORK/data.csv" "$WORK/upload.json" "entity_id=$entity"
session=$(json "$WORK/upload.json" .session_id)
csv_id=$(json "$WORK/upload.json" '.files[0].id')
expect_eq "upload message" "$(json "$WORK/upload.json" .message)" success

# run NAME CODE: POST /exec in the session with data.csv referenced; the answer in $WORK/NAME.json.
run() {
    jq -n --arg code "$2" --arg sid "$session" --arg fid "$csv_id" --arg entity "$entity" \
        '{code: $code, lang: "py", session_id: $sid, entity_id: $entity,
          files: [{id: $fid, session_id: $sid, name: "data.csv"}]}' >"$WORK/$1-request.json"
    exec_json "$WORK/$1-request.json" "$WORK/$1.json"
    expect_eq "$1: run.status (stderr: $(json "$WORK/$1.json" .stderr | head -c 400))" \
        "$(json "$WORK/$1.json" .run.status)" success
    expect_eq "$1: session_id" "$(json "$WORK/$1.json" .session_id)" "$session"
}

run pandas 'import pandas as pd
df = pd.read_csv("data.csv")
total = int(df["value"].sum())
print("rows", len(df), "sum", total)'
expect_eq "pandas: stdout" "$(json "$WORK/pandas.json" .stdout)" "rows 3 sum 42"

run state 'print(total * 2)'
expect_eq "state kept between calls: stdout" "$(json "$WORK/state.json" .stdout)" "84"

# A streamed cell: session first, the ticks as stdout frames, done last.
jq -n --arg sid "$session" \
    '{code: "import time\nfor i in range(3):\n    print(f\"tick {i}\", flush=True)\n    time.sleep(0.2)", lang: "py", session_id: $sid}' \
    >"$WORK/stream-request.json"
curl -sS -N --max-time 120 -X POST -H "x-api-key: $API_KEY" -H 'content-type: application/json' \
    --data-binary "@$WORK/stream-request.json" "$BASE_URL/exec/stream" >"$WORK/stream.sse" ||
    fail "POST /exec/stream: no complete answer"
sed -n 's/^data: //p' "$WORK/stream.sse" | jq -s . >"$WORK/stream-frames.json"
expect_eq "stream: first frame" "$(json "$WORK/stream-frames.json" '.[0].type')" session
expect_eq "stream: last frame" "$(json "$WORK/stream-frames.json" '.[-1].type')" done
expect_eq "stream: final status" "$(json "$WORK/stream-frames.json" '.[-1].run.status')" success
jq -e '[.[] | select(.type == "stream" and .name == "stdout") | .text] | add == "tick 0\ntick 1\ntick 2\n"' \
    "$WORK/stream-frames.json" >/dev/null ||
    fail "stream: stdout frames: $(jq -c '[.[] | select(.type == "stream")]' "$WORK/stream-frames.json")"
[[ $(jq '[.[] | select(.type == "stream")] | length' "$WORK/stream-frames.json") -ge 2 ]] ||
    fail "stream: the output came in one frame, not as it was printed"

# A plot saved by the code comes back as a file; its bytes are checked against the hash the
# kernel computed.
run plot 'import hashlib
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(3, 2))
ax.bar(df["name"], df["value"])
fig.savefig("sales.png")
plt.close(fig)
print(hashlib.sha256(open("sales.png", "rb").read()).hexdigest())'
plot_path=$(jq -r '.files[] | select(.name == "sales.png") | .path' "$WORK/plot.json")
[[ -n $plot_path ]] || fail "plot: sales.png is not in the response's files: $(jq -c .files "$WORK/plot.json")"
LAST_OUT="$WORK/sales.png"
api GET "$plot_path" "$LAST_OUT"
expect_status 200 "GET $plot_path"
expect_eq "plot: sha256 of the download" "$(sha256sum "$LAST_OUT" | cut -d' ' -f1)" \
    "$(json "$WORK/plot.json" .stdout)"
expect_eq "plot: PNG signature" "$(head -c 4 "$LAST_OUT" | tail -c 3)" PNG

# The uploaded CSV downloads unchanged; once deleted it is gone.
download_and_compare "/download/$session/$csv_id" "$WORK/data.csv" "data.csv"
LAST_OUT="$WORK/delete-file.json"
api DELETE "/files/$session/$csv_id" "$LAST_OUT"
expect_status 200 "DELETE /files/$session/$csv_id"
api GET "/download/$session/$csv_id" "$WORK/gone"
expect_status 404 "GET a deleted file"

LAST_OUT="$WORK/delete-session.json"
api DELETE "/sessions/$session" "$LAST_OUT"
expect_status 200 "DELETE /sessions/$session"
echo "python-flow: ok"
