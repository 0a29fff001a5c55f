#!/bin/bash
# Runs `moeflow generate` and `moeflow chat` on the tiny-v3 llama.cpp fixture
# and on a `mkmodel --preset tiny` model: stdout carries only the generated
# text (same seed → same bytes), stderr the speeds; chat driven through a pipe
# with a multi-line message, /reset and /exit; bad flags exit 2.
# Usage: generate_chat_test.sh PATH/TO/moeflow
set -u

MOEFLOW="$1"
TMP="${TEST_TMPDIR:-$(mktemp -d)}"
MODEL="${FIXTURES:-tests/data/llamacpp}/tiny-v3/tiny-v3.f32.gguf"
FAILURES=0

fail() {
  echo "FAIL: $*" >&2
  FAILURES=$((FAILURES + 1))
}

# expect_rc WANT DESCRIPTION -- COMMAND...: runs COMMAND (stdin from $TMP/in
# when it exists), output in $TMP/out and $TMP/err.
expect_rc() {
  local want="$1" what="$2"
  shift 3
  if [[ -f "$TMP/in" ]]; then
    "$@" <"$TMP/in" >"$TMP/out" 2>"$TMP/err"
  else
    "$@" </dev/null >"$TMP/out" 2>"$TMP/err"
  fi
  local rc=$?
  if [[ $rc -ne $want ]]; then
    fail "$what: exit $rc, want $want"
    sed 's/^/  | /' "$TMP/out" "$TMP/err" | head -20 >&2
  fi
}

expect_in() {  # expect_in FILE PATTERN DESCRIPTION
  grep -q -- "$2" "$1" || fail "$3: no \"$2\" in $(basename "$1")"
}

expect_not_in() {  # expect_not_in FILE PATTERN DESCRIPTION
  if grep -q -- "$2" "$1"; then fail "$3: \"$2\" in $(basename "$1")"; fi
}

rm -f "$TMP/in"
GEN=("$MOEFLOW" generate --model "$MODEL" --prompt "The quick brown fox" --max-tokens 24
     --temperature 0.9 --threads 1)

# --- generate: stdout is the text only, and the same seed gives the same bytes.
expect_rc 0 "generate seed 5" -- "${GEN[@]}" --seed 5
cp "$TMP/out" "$TMP/seed5.a"
expect_in "$TMP/err" "prompt [0-9]* tokens, prefill [0-9.]* tok/s" "generate stderr prefill"
expect_in "$TMP/err" "generated 24 tokens, decode [0-9.]* tok/s" "generate stderr decode"
expect_in "$TMP/err" "finish reason: length" "generate stderr finish reason"
expect_not_in "$TMP/out" "tok/s" "generate stdout has no stats"
expect_not_in "$TMP/out" "loading model" "generate stdout has no progress"
[[ -s "$TMP/seed5.a" ]] || fail "generate printed no text"
expect_rc 0 "generate seed 5 again" -- "${GEN[@]}" --seed 5
cmp -s "$TMP/out" "$TMP/seed5.a" || fail "same seed, different stdout"
expect_rc 0 "generate seed 6" -- "${GEN[@]}" --seed 6
cmp -s "$TMP/out" "$TMP/seed5.a" && fail "different seeds, same stdout"

# --prompt-file and --chat.
printf 'The quick brown fox' >"$TMP/prompt.txt"
expect_rc 0 "generate --prompt-file" -- "$MOEFLOW" generate --model "$MODEL" \
  --prompt-file "$TMP/prompt.txt" --max-tokens 24 --temperature 0.9 --threads 1 --seed 5
cmp -s "$TMP/out" "$TMP/seed5.a" || fail "--prompt-file and --prompt differ"
expect_rc 0 "generate --chat" -- "${GEN[@]}" --chat --max-tokens 4 --stop 'x,\n' --stop y

# A stop string taken from the greedy text ends the output right before it.
expect_rc 0 "generate greedy" -- "${GEN[@]}" --temperature 0 --max-tokens 16
cp "$TMP/out" "$TMP/greedy"
STOP="$(head -c 8 "$TMP/greedy" | tail -c 3)"
if [[ ${#STOP} -eq 3 && "$STOP" != *,* && "$STOP" != *\\* ]]; then
  expect_rc 0 "generate --stop" -- "${GEN[@]}" --temperature 0 --max-tokens 16 --stop "$STOP"
  expect_in "$TMP/err" "finish reason: stop" "generate --stop finish reason"
  [[ "$(cat "$TMP/out")" == "$(head -c 5 "$TMP/greedy")" ]] ||
    fail "generate --stop: output is not the text before the stop string"
fi

# --- usage errors: exit 2, one line.
expect_rc 2 "generate without --model" -- "$MOEFLOW" generate --prompt hi
expect_in "$TMP/err" "--model is required" "missing --model message"
expect_rc 2 "generate without a prompt" -- "$MOEFLOW" generate --model "$MODEL"
expect_rc 2 "generate with both prompts" -- "$MOEFLOW" generate --model "$MODEL" --prompt a \
  --prompt-file "$TMP/prompt.txt"
expect_rc 2 "generate unreadable prompt file" -- "$MOEFLOW" generate --model "$MODEL" \
  --prompt-file "$TMP/no-such-file"
expect_in "$TMP/err" "no-such-file" "unreadable prompt file message"
expect_rc 2 "generate --top-p 1.5" -- "$MOEFLOW" generate --model "$MODEL" --prompt a --top-p 1.5
expect_in "$TMP/err" "--top-p" "bad --top-p message"
[[ $(wc -l <"$TMP/err") -eq 1 ]] || fail "bad --top-p: not one line"
expect_rc 2 "generate --temperature -1" -- "$MOEFLOW" generate --model "$MODEL" --prompt a \
  --temperature=-1
expect_rc 2 "generate --max-tokens -3" -- "$MOEFLOW" generate --model "$MODEL" --prompt a \
  --max-tokens=-3
expect_rc 2 "generate --no-such-flag" -- "$MOEFLOW" generate --model "$MODEL" --prompt a --bogus
expect_rc 2 "chat --prompt (not a chat flag)" -- "$MOEFLOW" chat --model "$MODEL" --prompt a
expect_rc 1 "generate on a missing model" -- "$MOEFLOW" generate --model "$TMP/missing.gguf" \
  --prompt a

# --- chat through a pipe: continued line, a """ block, /reset, then /exit.
cat >"$TMP/in" <<'INPUT'
Hello \
there
"""
first line
second line
"""
/reset
After the reset
/exit
This line is never read
INPUT
expect_rc 0 "chat through a pipe" -- "$MOEFLOW" chat --model "$MODEL" --max-tokens 8 \
  --temperature 0 --threads 1
[[ $(grep -c '^\[end of reply\]$' "$TMP/out") -eq 3 ]] || fail "chat: want 3 replies"
expect_not_in "$TMP/out" "^> " "chat through a pipe shows no prompt"
expect_in "$TMP/err" "conversation reset" "chat /reset"
expect_in "$TMP/err" "tok/s" "chat speeds on stderr"
# The second turn reuses the first turn's cache; after /reset nothing is cached.
sed -n 2p "$TMP/err" | grep -q "(0 cached)" && fail "chat turn 2 reused no cache"
grep "prompt tokens" "$TMP/err" | sed -n 3p | grep -q "(0 cached)" ||
  fail "chat after /reset reused the cache"
# Greedy replies: the first turn after /reset equals a first turn of a new run.
cp "$TMP/out" "$TMP/chat1"
printf 'After the reset\n' >"$TMP/in"
expect_rc 0 "chat one turn" -- "$MOEFLOW" chat --model "$MODEL" --max-tokens 8 \
  --temperature 0 --threads 1
reply() {  # reply N FILE: the text of the N-th reply (1-based)
  awk -v n="$1" '/^\[end of reply\]$/ {i++; next} i == n - 1 {print}' "$2"
}
[[ "$(reply 3 "$TMP/chat1")" == "$(reply 1 "$TMP/out")" ]] ||
  fail "chat: the reply after /reset differs from a fresh first turn"
[[ -n "$(reply 1 "$TMP/out")" ]] || fail "chat: empty reply"
# EOF without /exit quits with 0 too.
printf 'one message' >"$TMP/in"
expect_rc 0 "chat until EOF" -- "$MOEFLOW" chat --model "$MODEL" --max-tokens 4 --threads 1
rm -f "$TMP/in"

# --- a mkmodel model carries DeepSeek-V3's template: no fallback line.
expect_rc 0 "mkmodel tiny" -- "$MOEFLOW" mkmodel --preset tiny --out "$TMP/tiny.gguf" --force
printf 'hi\n' >"$TMP/in"
expect_rc 0 "chat on a mkmodel model" -- "$MOEFLOW" chat --model "$TMP/tiny.gguf" \
  --max-tokens 4 --threads 1 --force-think
expect_not_in "$TMP/err" "using deepseek-v3" "mkmodel model has a recognized template"
expect_in "$TMP/out" "^\[thinking\]$" "--force-think opens a [thinking] block"
rm -f "$TMP/in"

if [[ $FAILURES -ne 0 ]]; then
  echo "$FAILURES check(s) failed" >&2
  exit 1
fi
echo "PASS"
