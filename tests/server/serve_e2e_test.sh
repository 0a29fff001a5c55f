#!/bin/bash
# Starts a real `moeflow serve` on the tiny-v3 llama.cpp fixture (and
# scripted_server, for tool calls) on free 127.0.0.1 ports, then:
#   * curl: non-streaming and SSE streaming chat, /health, /metrics, prefix
#     reuse reported as cached_tokens (the default batching scheduler);
#   * every bad-input case with its status code while a concurrent streaming
#     request still completes;
#   * clients.js: the official `openai` npm package (pinned), Ollama
#     endpoints, and 32 concurrent streaming clients whose greedy outputs
#     must equal the same prompts run one at a time.
# Usage: serve_e2e_test.sh MOEFLOW SCRIPTED_SERVER
# Needs node, npm, curl and the npm registry. Everything is bounded and the
# servers are stopped on exit.
set -u

readonly OPENAI_VERSION="4.95.0"
MOEFLOW="$1"
SCRIPTED="$2"
TMP="${TEST_TMPDIR:-$(mktemp -d)}"
MODEL="tests/data/llamacpp/tiny-v3/tiny-v3.f32.gguf"
NAME="tiny-v3"
FAILURES=0
PIDS=()

fail() {
  echo "FAIL: $*" >&2
  FAILURES=$((FAILURES + 1))
}
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
}
trap cleanup EXIT

for tool in node npm curl; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is not on PATH" >&2; exit 1; }
done

# wait_port LOG: the port from the server's "listening on" line (60 s max).
wait_port() {
  for _ in $(seq 600); do
    local port
    port="$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$1" 2>/dev/null | grep -o '[0-9]*$')"
    if [[ -n "$port" ]]; then echo "$port"; return 0; fi
    sleep 0.1
  done
  return 1
}

timeout 600 "$MOEFLOW" serve --model "$MODEL" --model-name "$NAME" --host 127.0.0.1 --port 0 \
  --threads 1 --context-tokens 4096 --max-body-bytes 65536 --max-queue 64 2>"$TMP/serve.log" &
PIDS+=($!)
timeout 600 "$SCRIPTED" "$MODEL" "Hello from moeflow!" 2>"$TMP/scripted.log" &
PIDS+=($!)
PORT="$(wait_port "$TMP/serve.log")" || { cat "$TMP/serve.log" >&2; echo "FAIL: serve did not start" >&2; exit 1; }
SPORT="$(wait_port "$TMP/scripted.log")" || { echo "FAIL: scripted_server did not start" >&2; exit 1; }
URL="http://127.0.0.1:$PORT"
CURL=(curl -sS --max-time 60)

# --- curl: non-streaming and streaming.
"${CURL[@]}" "$URL/health" | grep -q '"ok"' || fail "/health"
"${CURL[@]}" "$URL/v1/chat/completions" -H 'Content-Type: application/json' \
  -d "{\"model\":\"$NAME\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":8,\"temperature\":0}" \
  >"$TMP/chat.json"
grep -q '"object":"chat.completion"' "$TMP/chat.json" || fail "curl chat: $(cat "$TMP/chat.json")"
grep -q '"completion_tokens":8' "$TMP/chat.json" || fail "curl chat usage"
"${CURL[@]}" -N "$URL/v1/chat/completions" \
  -d "{\"model\":\"$NAME\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":8,\"temperature\":0,\"stream\":true}" \
  >"$TMP/stream.txt"
[[ "$(tail -n 2 "$TMP/stream.txt" | head -n 1)" == "data: [DONE]" ]] || fail "curl stream: no [DONE]"
[[ "$(grep -c '^data: {' "$TMP/stream.txt")" -ge 3 ]] || fail "curl stream: too few events"
grep -q '"finish_reason":"length"' "$TMP/stream.txt" || fail "curl stream: no finish_reason"

# --- Bad input while a long streaming request runs (3000 tokens: about 2 s
# on the tiny model; validation errors never wait for the engine).
"${CURL[@]}" -N "$URL/v1/completions" \
  -d "{\"model\":\"$NAME\",\"prompt\":\"Count:\",\"max_tokens\":3000,\"temperature\":0,\"stream\":true}" \
  >"$TMP/long.txt" &
LONG=$!
status() {  # status BODY [CURL ARGS...]: prints the HTTP status
  local body="$1"; shift
  "${CURL[@]}" -o "$TMP/err.json" -w '%{http_code}' "$@" --data-binary "$body" "$URL/v1/chat/completions"
}
expect_status() {  # expect_status WANT DESCRIPTION BODY [CURL ARGS...]
  local want="$1" what="$2" body="$3"; shift 3
  local got
  got="$(status "$body" "$@")"
  [[ "$got" == "$want" ]] || fail "$what: status $got, want $want ($(head -c 300 "$TMP/err.json"))"
  grep -q '"error"' "$TMP/err.json" || fail "$what: no OpenAI error body"
}
MSG='"messages":[{"role":"user","content":"Hi"}]'
expect_status 400 "invalid JSON" '{"model":'
expect_status 400 "wrong type" "{\"model\":\"$NAME\",$MSG,\"temperature\":\"x\"}"
expect_status 404 "unknown model" "{\"model\":\"gpt-4o\",$MSG}"
expect_status 400 "empty messages" "{\"model\":\"$NAME\",\"messages\":[]}"
LONG_TEXT="$(head -c 15000 /dev/zero | tr '\0' 'a' | sed 's/aaa/a b c /g')"  # ~15000 tokens
expect_status 400 "prompt longer than the context" \
  "{\"model\":\"$NAME\",\"messages\":[{\"role\":\"user\",\"content\":\"$LONG_TEXT\"}]}"
grep -q context_length_exceeded "$TMP/err.json" || fail "long prompt: not context_length_exceeded"
RUNNING="$(grep -c '^data: {' "$TMP/long.txt")"
expect_status 400 "max_tokens past the context" "{\"model\":\"$NAME\",$MSG,\"max_tokens\":100000}"
BIG="$(head -c 70000 /dev/zero | tr '\0' 'a')"
expect_status 413 "oversize body" "{\"model\":\"$NAME\",\"messages\":[{\"role\":\"user\",\"content\":\"$BIG\"}]}"
echo "bad-input checks done while the long request had streamed $RUNNING events" >&2
wait "$LONG"
[[ "$(tail -n 2 "$TMP/long.txt" | head -n 1)" == "data: [DONE]" ]] ||
  fail "the concurrent request did not complete: $(tail -c 300 "$TMP/long.txt")"
"${CURL[@]}" "$URL/metrics" >"$TMP/metrics.txt"
for metric in moeflow_queue_depth moeflow_running_requests moeflow_decode_tokens_per_second \
  moeflow_time_to_first_token_seconds_bucket moeflow_inter_token_latency_seconds_count \
  moeflow_kv_pages_used moeflow_kv_pages_total moeflow_batch_decode_tokens_per_second; do
  grep -q "^$metric" "$TMP/metrics.txt" || fail "/metrics has no $metric"
done

# --- Prefix reuse (batching scheduler): the same long system prompt twice;
# the second request reports the KV blocks it reused as cached tokens.
SYSTEM="$(for i in $(seq 40); do printf 'Rule %d: answer briefly. ' "$i"; done)"
for q in first second; do
  "${CURL[@]}" "$URL/v1/chat/completions" \
    -d "{\"model\":\"$NAME\",\"messages\":[{\"role\":\"system\",\"content\":\"$SYSTEM\"},{\"role\":\"user\",\"content\":\"The $q question\"}],\"max_tokens\":4,\"temperature\":0}" \
    >"$TMP/prefix_$q.json"
done
grep -q '"cached_tokens":0' "$TMP/prefix_first.json" || fail "prefix: first request reused tokens"
CACHED="$(grep -o '"cached_tokens":[0-9]*' "$TMP/prefix_second.json" | grep -o '[0-9]*$')"
[[ -n "$CACHED" && "$CACHED" -ge 128 ]] ||
  fail "prefix: second request reports cached_tokens=${CACHED:-none}, want >= 128"

# --- The openai package, Ollama, and the load test.
export npm_config_cache="$TMP/npm-cache"
cafile="$(npm config get cafile 2>/dev/null || true)"
if [[ -n "$cafile" && "$cafile" != "null" && "$cafile" != "undefined" ]]; then
  export npm_config_cafile="$cafile"
fi
export npm_config_update_notifier=false
if ! timeout 300 npm install --no-audit --no-fund --no-save --loglevel=error --prefix "$TMP/npm" \
    "openai@$OPENAI_VERSION" >&2; then
  echo "FAIL: npm install openai@$OPENAI_VERSION failed (is the npm registry reachable?)" >&2
  exit 1
fi
timeout 300 node tests/server/clients.js "$TMP/npm/node_modules" "$PORT" "$SPORT" "$NAME" ||
  fail "clients.js"

# The server logged one line per request and is still up.
"${CURL[@]}" "$URL/health" >/dev/null || fail "the server died"
grep -q '^/v1/chat/completions 200' "$TMP/serve.log" || fail "no request log lines"
if [[ $FAILURES -ne 0 ]]; then
  echo "--- serve.log (tail)" >&2
  tail -n 30 "$TMP/serve.log" >&2
  exit 1
fi
echo "PASS"
