#!/usr/bin/env bash
# The fresh-clone check (.ci/run calls it): clone the repository into a temporary folder with no
# ../shared beside it, run the README's "Start the app" command as written (plus headless flags and a
# free port), wait for the app's health endpoint, classify a bundled scan with the installed CLI, and
# stop the server. Exits non-zero, with the server log's tail, on any failure.
#
# A clone holds what is committed. When the working tree has uncommitted changes, they are copied
# over the clone (what `git add -A` would commit: tracked and untracked files, .gitignore respected),
# so a run before committing checks the tree as it stands; FRESH_CLONE_COMMITTED_ONLY=1 skips that.
# pip's own cache (~/.cache/pip, or $PIP_CACHE_DIR) is reused; FRESH_CLONE_TIMEOUT (seconds, default
# 1200) bounds the install plus the server start.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
timeout_s="${FRESH_CLONE_TIMEOUT:-1200}"
work="$(mktemp -d "${TMPDIR:-/tmp}/imagemasknet-fresh.XXXXXX")"
clone="$work/imagemasknet"
log="$work/server.log"
server_pid=""

cleanup() {
    local status=$?
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM -- "-$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL -- "-$server_pid" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ] && [ -f "$log" ]; then
        echo "fresh-clone: FAILED; last lines of the app's output:" >&2
        tail -n 40 "$log" >&2 || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

echo "fresh-clone: cloning $repo into $clone"
git clone --quiet "$repo" "$clone"
if [ "${FRESH_CLONE_COMMITTED_ONLY:-0}" != "1" ] && [ -n "$(git -C "$repo" status --porcelain)" ]; then
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done) > "$work/tree.list"
    tar -C "$repo" --null -T "$work/tree.list" -cf - | tar -C "$clone" -xf -
    (cd "$repo" && git ls-files -z --deleted) | (cd "$clone" && xargs -0 -r rm -f --)
    echo "fresh-clone: the working tree has uncommitted changes; checking it as it stands" \
         "($(tr -cd '\0' < "$work/tree.list" | wc -c) files copied over the clone)"
fi
if [ -e "$work/shared" ] || [ -e "$clone/../shared" ]; then
    echo "fresh-clone: $work/shared exists; the check needs a clone with no ../shared beside it" >&2
    exit 1
fi
[ -d "$clone/data/busi/Dataset_BUSI_with_GT" ] || { echo "fresh-clone: the clone has no data/busi/Dataset_BUSI_with_GT" >&2; exit 1; }

# The README's command, exactly as written there.
start="$(awk '/^Start the app/ {found = 1} found && /^```bash/ {getline; print; exit}' "$repo/README.md")"
case "$start" in
    *"streamlit run app.py"*) ;;
    *) echo "fresh-clone: cannot find the 'Start the app' command in README.md (got: '$start')" >&2; exit 1 ;;
esac
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
echo "fresh-clone: running the README's command: $start --server.headless true --server.port $port"
cd "$clone"
unset IMAGEMASKNET_DATA IMAGEMASKNET_SKIP_VERIFY VIRTUAL_ENV PYTHONPATH
export IMAGEMASKNET_CACHE="$work/cache" IMAGEMASKNET_RUNS="$work/runs"
setsid bash -c "$start --server.headless true --server.port $port --browser.gatherUsageStats false" > "$log" 2>&1 &
server_pid=$!

started=$SECONDS
until [ "$(curl -fsS --max-time 5 "http://127.0.0.1:$port/_stcore/health" 2>/dev/null || true)" = "ok" ]; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "fresh-clone: the README's command stopped before the app answered" >&2
        exit 1
    fi
    if [ $((SECONDS - started)) -ge "$timeout_s" ]; then
        echo "fresh-clone: no healthy app on port $port after ${timeout_s}s" >&2
        exit 1
    fi
    sleep 2
done
echo "fresh-clone: the app is healthy on port $port after $((SECONDS - started))s"

scan="data/busi/Dataset_BUSI_with_GT/malignant/images/malignant (1).png"
.venv/bin/imagemasknet data verify > "$work/verify.txt" || { cat "$work/verify.txt" >&2; exit 1; }
.venv/bin/imagemasknet predict "$scan" --json --no-progress > "$work/predict.json"
.venv/bin/python - "$work/predict.json" <<'EOF'
import json
import sys

records = json.load(open(sys.argv[1]))
label = records[0].get("predicted_class")
if label not in ("normal", "benign", "malignant"):
    sys.exit(f"fresh-clone: predict printed no predicted_class: {records}")
if records[0]["model"] != "lesion-effnet-lite0" or not isinstance(records[0]["suspicious_for_malignancy"], bool):
    sys.exit(f"fresh-clone: predict did not use the default model with its malignancy flag: {records}")
p = records[0]["probabilities"]
print(f"fresh-clone: predict on a bundled scan: {label} (P(malignant) {p['malignant']:.3f}, {records[0]['mode']} mode)")
EOF

# A non-editable install (`pip install .`) into another fresh venv: the CLI, run from a folder outside the
# clone, must find the shipped weights inside the installed package.
echo "fresh-clone: pip install . (not editable) into a fresh venv"
python3 -m venv "$work/installed"
"$work/installed/bin/pip" install -q "$clone" > "$work/install.log" 2>&1 || { tail -n 20 "$work/install.log" >&2; exit 1; }
mkdir -p "$work/elsewhere"
(cd "$work/elsewhere" && "$work/installed/bin/imagemasknet" predict "$clone/$scan" --json --no-progress) > "$work/installed.json"
(cd "$work/elsewhere" && "$work/installed/bin/python" - "$work/installed.json" "$clone") <<'EOF'
import json
import sys
from pathlib import Path

from imagemasknet.core.paths import WEIGHTS_DIR
from imagemasknet.inference.predictor import available_models

records, clone = json.load(open(sys.argv[1])), Path(sys.argv[2]).resolve()
if "error" in records[0] or records[0].get("model") != available_models()[0]:
    sys.exit(f"fresh-clone: the installed CLI did not predict with the default model: {records}")
weights = WEIGHTS_DIR.resolve()
if clone in weights.parents or "site-packages" not in str(weights):
    sys.exit(f"fresh-clone: the installed package reads its weights from {weights}, not from inside itself")
print(f"fresh-clone: installed package predicts with {records[0]['model']} from {weights}")
EOF
echo "fresh-clone: OK"
