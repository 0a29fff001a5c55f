#!/bin/bash
# `moeflow serve` (tiny-v3 fixture, real process on 127.0.0.1) against what a
# demanding user or an attacker does (issue 19):
#   * --host 0.0.0.0 without --api-key is refused, --allow-unauthenticated
#     opts out;
#   * unknown paths share one /metrics label (endpoint="other");
#   * 1,100 idle sockets held (more than --max-connections' 1024, and 1,000
#     against --max-connections 64): /health and /metrics still answer on
#     new connections, a running stream completes (hardening_clients.js idle);
#   * SIGTERM with a running stream: it finishes within the grace period,
#     /health says draining, new connections are refused, exit 0; with
#     --shutdown-grace-s 0 the stream ends with the documented error event
#     and [DONE] (hardening_clients.js drain).
# Usage: serve_hardening_test.sh MOEFLOW. Needs node and curl; bounded.
set -u

MOEFLOW="$1"
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
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
}
trap cleanup EXIT
for tool in node curl; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is not on PATH" >&2; exit 1; }
done

wait_port() {  # wait_port LOG [HOST]: the port of the "listening on" line (60 s max)
  local host="${2:-127.0.0.1}"
  for _ in $(seq 600); do
    local port
    port="$(grep -o "listening on http://$host:[0-9]*" "$1" 2>/dev/null | grep -o '[0-9]*$')"
    if [[ -n "$port" ]]; then echo "$port"; return 0; fi
    sleep 0.1
  done
  return 1
}
# start_serve LOG FLAGS...: starts a server in the background; SERVE_PID, PORT.
start_serve() {
  local log="$1"
  shift
  timeout 600 "$MOEFLOW" serve --model "$MODEL" --model-name "$NAME" --port 0 --threads 1 \
    --context-tokens 4096 "$@" 2>"$log" &
  SERVE_PID=$!
  PIDS+=("$SERVE_PID")
  PORT="$(wait_port "$log" "${HOST:-127.0.0.1}")" ||
    { cat "$log" >&2; echo "FAIL: serve did not start" >&2; exit 1; }
}
report() {  # report OUTPUT: prints it, counts its FAIL lines
  cat "$1" >&2
  if grep -q '^FAIL' "$1"; then fail "$(grep '^FAIL' "$1" | head -3)"; fi
}

# --- No authentication off loopback unless asked for.
timeout 60 "$MOEFLOW" serve --model "$MODEL" --host 0.0.0.0 --port 0 >"$TMP/out" 2>"$TMP/err"
rc=$?
[[ $rc -eq 2 ]] || fail "--host 0.0.0.0 without --api-key: exit $rc, want 2"
grep -q -- "--host 0.0.0.0 is not a loopback address: give --api-key" "$TMP/err" ||
  fail "--host 0.0.0.0 without --api-key: message: $(cat "$TMP/err")"
HOST=0.0.0.0 start_serve "$TMP/open.log" --host 0.0.0.0 --allow-unauthenticated
curl -sS --max-time 20 "http://127.0.0.1:$PORT/health" | grep -q '"ok"' ||
  fail "--allow-unauthenticated: the server does not answer"
kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null

# --- Unknown paths share one label; idle sockets do not lock anyone out.
start_serve "$TMP/serve.log"
URL="http://127.0.0.1:$PORT"
for path in /etc/passwd /x/../../y /v1/nothing "/api/$(head -c 200 /dev/zero | tr '\0' z)"; do
  curl -sS --max-time 20 -o /dev/null "$URL$path"
done
curl -sS --max-time 20 "$URL/metrics" >"$TMP/metrics.txt"
grep -q 'moeflow_requests_total{endpoint="other",code="404"} 4' "$TMP/metrics.txt" ||
  fail "unknown paths are not counted as endpoint=\"other\": $(grep requests_total "$TMP/metrics.txt")"
grep -q 'passwd\|nothing\|zzzz' "$TMP/metrics.txt" && fail "/metrics has a client-chosen label"
timeout 200 node tests/server/hardening_clients.js idle "$PORT" "$NAME" 1100 >"$TMP/idle.txt" 2>&1 ||
  fail "idle sockets (default --max-connections)"
report "$TMP/idle.txt"
kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null
start_serve "$TMP/serve64.log" --max-connections 64
timeout 200 node tests/server/hardening_clients.js idle "$PORT" "$NAME" 1000 >"$TMP/idle64.txt" 2>&1 ||
  fail "idle sockets (--max-connections 64)"
report "$TMP/idle64.txt"
kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null

# --- SIGTERM: running requests finish within the grace period.
start_serve "$TMP/drain.log"
timeout 200 node tests/server/hardening_clients.js drain "$PORT" "$NAME" "$SERVE_PID" finish \
  >"$TMP/drain.txt" 2>&1 || fail "SIGTERM with a running stream"
report "$TMP/drain.txt"
wait "$SERVE_PID"
rc=$?
[[ $rc -eq 0 ]] || fail "serve exited $rc after SIGTERM, want 0"
grep -q "every request finished" "$TMP/drain.log" || fail "serve log: $(tail -5 "$TMP/drain.log")"

# --- ... and are cancelled, cleanly, when the grace period is over.
start_serve "$TMP/cancel.log" --shutdown-grace-s 0
timeout 200 node tests/server/hardening_clients.js drain "$PORT" "$NAME" "$SERVE_PID" cancel \
  >"$TMP/cancel.txt" 2>&1 || fail "SIGTERM with --shutdown-grace-s 0"
report "$TMP/cancel.txt"
wait "$SERVE_PID"
rc=$?
[[ $rc -eq 0 ]] || fail "serve exited $rc after SIGTERM (grace 0), want 0"

if [[ $FAILURES -ne 0 ]]; then
  tail -n 20 "$TMP"/*.log >&2
  exit 1
fi
echo PASS
