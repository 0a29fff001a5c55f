#!/bin/bash
# Compares moeflow's GGUF tokenizer path (pre "deepseek-llm") with llama.cpp's
# tokenizer on the make_corpus.js corpus, using the tiny-v3 fixture's
# vocabulary. llama.cpp comes from node-llama-cpp's prebuilt CPU binary
# (pinned; ~85 MB from the npm registry), hence tags manual + requires-network:
#   bazel test //tests/tokenizer:llamacpp_compare_test
set -euo pipefail

readonly NODE_LLAMA_CPP_VERSION="3.22.1"
readonly HERE="tests/tokenizer"
readonly WORK="${TEST_TMPDIR:-$(mktemp -d)}"
readonly MODEL="tests/data/llamacpp/tiny-v3/tiny-v3.f32.gguf"

for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "FAIL: $tool is not on PATH ($PATH)" >&2
    exit 1
  fi
done
export npm_config_cache="$WORK/npm-cache"
export npm_config_update_notifier=false
cafile="$(npm config get cafile 2>/dev/null || true)"
if [[ -n "$cafile" && "$cafile" != "null" && "$cafile" != "undefined" ]]; then
  export npm_config_cafile="$cafile"
fi
# --ignore-scripts: never build llama.cpp from source; --omit=optional plus the
# one prebuilt package: skip the CUDA / Vulkan / ARM builds (~600 MB).
if ! npm install --no-audit --no-fund --no-save --loglevel=error --ignore-scripts \
    --omit=optional --prefix "$WORK/npm" "node-llama-cpp@$NODE_LLAMA_CPP_VERSION" \
    "@node-llama-cpp/linux-x64@$NODE_LLAMA_CPP_VERSION" >&2; then
  echo "FAIL: npm install of node-llama-cpp failed (is the npm registry reachable?)" >&2
  exit 1
fi

node "$HERE/make_corpus.js" "$WORK/corpus.json"
node "$HERE/llamacpp_encode.mjs" "$WORK/npm/node_modules" "$MODEL" "$WORK/corpus.json" \
  "$WORK/llamacpp_ids.json"
"$HERE/compare_main" "$MODEL" "$WORK/corpus.json" "$WORK/llamacpp_ids.json"
