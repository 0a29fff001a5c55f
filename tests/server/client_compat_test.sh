#!/bin/bash
# `moeflow serve` (tiny-v3 fixture, 127.0.0.1) with the official `openai`
# and `ollama` npm packages (pinned): client_compat.js. Needs node, npm and
# the npm registry; bounded; the server is stopped on exit.
# Usage: client_compat_test.sh MOEFLOW [SCRIPT.js]  (default: client_compat.js;
# constrained_output_test runs constrained_clients.js the same way)
set -u
readonly OPENAI_VERSION="4.95.0"
readonly OLLAMA_VERSION="0.6.4"
MOEFLOW="$1"
SCRIPT="${2:-tests/server/client_compat.js}"
TMP="${TEST_TMPDIR:-$(mktemp -d)}"
MODEL="tests/data/llamacpp/tiny-v3/tiny-v3.f32.gguf"
NAME="tiny-v3"
PID=""
trap '[[ -n "$PID" ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null' EXIT
for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is not on PATH" >&2; exit 1; }
done
export npm_config_cache="$TMP/npm-cache" npm_config_update_notifier=false
cafile="$(npm config get cafile 2>/dev/null || true)"
if [[ -n "$cafile" && "$cafile" != "null" && "$cafile" != "undefined" ]]; then
  export npm_config_cafile="$cafile"
fi
if ! timeout 300 npm install --no-audit --no-fund --no-save --loglevel=error --prefix "$TMP/npm" \
    "openai@$OPENAI_VERSION" "ollama@$OLLAMA_VERSION" >&2; then
  echo "FAIL: npm install openai ollama failed (is the npm registry reachable?)" >&2
  exit 1
fi
timeout 600 "$MOEFLOW" serve --model "$MODEL" --model-name "$NAME" --port 0 --threads 1 \
  --context-tokens 4096 2>"$TMP/serve.log" &
PID=$!
PORT=""
for _ in $(seq 600); do
  PORT="$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$TMP/serve.log" | grep -o '[0-9]*$')"
  [[ -n "$PORT" ]] && break
  sleep 0.1
done
[[ -n "$PORT" ]] || { cat "$TMP/serve.log" >&2; echo "FAIL: serve did not start" >&2; exit 1; }
if ! timeout 300 node "$SCRIPT" "$TMP/npm/node_modules" "$PORT" "$NAME"; then
  tail -n 30 "$TMP/serve.log" >&2
  exit 1
fi
echo PASS
