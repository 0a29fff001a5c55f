#!/bin/bash
# The model files people have, through the real `moeflow` binary (issue 16):
# a split model (tests/data/llamacpp/tiny-v3-split, written by
# llama-gguf-split) given by any shard to inspect, generate, serve and
# launch; a bad shard set (missing, duplicated, foreign, truncated shard) and
# tensors of a type moeflow does not read or cannot compute, each a precise
# error naming the file (and tensor), a non-zero exit and nothing produced;
# the older MLA layout (tiny-v3-kvb, attn_kv_b) in inspect.
# Usage: model_files_test.sh PATH/TO/moeflow
set -u

MOEFLOW="$1"
TMP="${TEST_TMPDIR:-$(mktemp -d)}"
FIXTURES="${FIXTURES:-tests/data/llamacpp}"
SPLIT="$FIXTURES/tiny-v3-split/tiny-v3-split.q4_k_m"
WHOLE="$FIXTURES/tiny-v3/tiny-v3.q4_k_m.gguf"
FAILURES=0

fail() {
  echo "FAIL: $*" >&2
  FAILURES=$((FAILURES + 1))
}

# expect_rc WANT DESCRIPTION -- COMMAND...: runs COMMAND (stdin /dev/null,
# at most 120 s), output in $TMP/out and $TMP/err.
expect_rc() {
  local want="$1" what="$2"
  shift 3
  timeout 120 "$@" </dev/null >"$TMP/out" 2>"$TMP/err"
  local rc=$?
  if [[ $rc -ne $want ]]; then
    fail "$what: exit $rc, want $want"
    sed 's/^/  | /' "$TMP/out" "$TMP/err" | head -20 >&2
  fi
}

expect_in() {  # expect_in FILE TEXT DESCRIPTION (TEXT is a fixed string)
  grep -qF -- "$2" "$1" || {
    fail "$3: no \"$2\" in $(basename "$1")"
    sed 's/^/  | /' "$1" | head -10 >&2
  }
}

# --- inspect lists the shards, whichever one it is given.
expect_rc 0 "inspect shard 3" -- "$MOEFLOW" inspect --notensors "$SPLIT-00003-of-00004.gguf"
expect_in "$TMP/out" "split model: 4 shards (opened as $SPLIT-00003-of-00004.gguf)" "inspect"
for i in 1 2 3 4; do
  expect_in "$TMP/out" "$i/4 $SPLIT-0000$i-of-00004.gguf" "inspect lists shard $i"
done
expect_in "$TMP/out" "10 tensors (blk.3.attn_v_b.weight .. blk.3.ffn_up_shexp.weight)" \
  "inspect: shard 4's tensors"
expect_rc 0 "inspect --json shard 2" -- "$MOEFLOW" inspect --json "$SPLIT-00002-of-00004.gguf"
python3 - "$TMP/out" "$SPLIT" <<'PY' || fail "inspect --json shards"
import json, os, sys
j = json.load(open(sys.argv[1]))
shards = j["shards"]
assert [s["path"] for s in shards] == ["%s-%05d-of-00004.gguf" % (sys.argv[2], i)
                                       for i in range(1, 5)], shards
assert [s["tensors"] for s in shards] == [20, 20, 20, 10], shards
assert sum(s["tensors"] for s in shards) == len(j["tensors"]) == 70
assert all(s["bytes"] == os.path.getsize(s["path"]) for s in shards)
assert j["file_bytes"] == sum(s["bytes"] for s in shards)
PY

# --- generate on a shard gives the text of the same model in one file.
GEN=(generate --prompt "The quick brown fox" --max-tokens 12 --temperature 0 --threads 1)
expect_rc 0 "generate on the whole file" -- "$MOEFLOW" "${GEN[@]}" --model "$WHOLE"
cp "$TMP/out" "$TMP/whole.txt"
[[ -s "$TMP/whole.txt" ]] || fail "generate on the whole file printed nothing"
expect_rc 0 "generate on shard 3" -- "$MOEFLOW" "${GEN[@]}" --model "$SPLIT-00003-of-00004.gguf"
cmp -s "$TMP/out" "$TMP/whole.txt" || fail "generate: shard 3 and the whole file differ"

# The text of a /v1/completions answer from the server whose stderr is in
# $1 (it prints the URL of its API), for the prompt above; empty on failure.
# The model's id is the split's prefix, whichever shard the server was given.
completion() {
  local log="$1" url="" i
  for i in $(seq 1 600); do
    url="$(grep -o 'http://127.0.0.1:[0-9]*' "$log" | head -1)"
    [[ -n "$url" ]] && break
    sleep 0.1
  done
  [[ -n "$url" ]] || return 1
  curl -s -m 60 "$url/v1/completions" -H 'Content-Type: application/json' \
    -d '{"model": "tiny-v3-split.q4_k_m", "prompt": "The quick brown fox", "max_tokens": 12,
         "temperature": 0}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["text"], end="")'
}

# stop PID: SIGTERM, then wait for it.
stop() {
  kill -TERM "$1" 2>/dev/null
  wait "$1" 2>/dev/null
}

# --- serve and launch on a shard answer with the same text.
"$MOEFLOW" serve --model "$SPLIT-00004-of-00004.gguf" --host 127.0.0.1 --port 0 --threads 1 \
  </dev/null >/dev/null 2>"$TMP/serve.err" &
SERVE=$!
completion "$TMP/serve.err" >"$TMP/serve.txt" || fail "serve on shard 4: no completion"
stop "$SERVE"
cmp -s "$TMP/serve.txt" "$TMP/whole.txt" || fail "serve on shard 4: not generate's text"

cat >"$TMP/topo.yaml" <<YAML
model_path: $SPLIT-00002-of-00004.gguf
gpu_workers: [{backend: cpu}]
expert_workers: [{numa_node: 0}, {numa_node: 1}]
placement: shard
YAML
HWLOC_SYNTHETIC="package:2 numa:1 core:1 pu:1" "$MOEFLOW" launch "$TMP/topo.yaml" \
  --http_address 127.0.0.1:0 --control_address 127.0.0.1:0 </dev/null >/dev/null \
  2>"$TMP/launch.err" &
LAUNCH=$!
completion "$TMP/launch.err" >"$TMP/launch.txt" || fail "launch on shard 2: no completion"
stop "$LAUNCH"
cmp -s "$TMP/launch.txt" "$TMP/whole.txt" || {
  fail "launch on shard 2: not generate's text"
  sed 's/^/  | /' "$TMP/launch.err" | tail -10 >&2
}

# --- bad shard sets. expect_refused DIR FILE_GIVEN PHRASE FILE_AT_FAULT: every
# command that opens a model exits 1 with one message naming the file at
# fault, and produces nothing.
expect_refused() {
  local dir="$1" given="$2" phrase="$3" culprit="$4"
  expect_rc 1 "inspect $dir" -- "$MOEFLOW" inspect "$given"
  [[ -s "$TMP/out" ]] && fail "inspect $dir printed a report"
  expect_in "$TMP/err" "$phrase" "inspect $dir"
  expect_in "$TMP/err" "$culprit" "inspect $dir names the file"
  expect_rc 1 "generate $dir" -- "$MOEFLOW" generate --model "$given" --prompt hi
  [[ -s "$TMP/out" ]] && fail "generate $dir generated text"
  expect_in "$TMP/err" "$phrase" "generate $dir"
  expect_rc 1 "serve $dir" -- "$MOEFLOW" serve --model "$given" --port 0
  grep -q "listening on" "$TMP/err" && fail "serve $dir listened"
  expect_in "$TMP/err" "$phrase" "serve $dir"
  sed "s|^model_path: .*|model_path: $given|" "$TMP/topo.yaml" >"$TMP/bad-topo.yaml"
  expect_rc 1 "launch $dir" -- env HWLOC_SYNTHETIC="package:2 numa:1 core:1 pu:1" \
    "$MOEFLOW" launch "$TMP/bad-topo.yaml" --control_address 127.0.0.1:0
  grep -q "^CONTROL" "$TMP/out" && fail "launch $dir served"
  expect_in "$TMP/err" "$phrase" "launch $dir"
}
shard_set() {  # shard_set NAME: a copy of the split's shards in $TMP/NAME
  mkdir -p "$TMP/$1"
  cp "$SPLIT"-0000?-of-00004.gguf "$TMP/$1/"
  echo "$TMP/$1/tiny-v3-split.q4_k_m"
}

S="$(shard_set missing)"
rm "$S-00003-of-00004.gguf"
expect_refused missing "$S-00001-of-00004.gguf" "shard 3 of 4 of the split model" \
  "$S-00003-of-00004.gguf: shard 3 of 4"
expect_in "$TMP/err" "is missing (split.count = 4)" "missing shard message"

S="$(shard_set duplicated)"
cp "$S-00002-of-00004.gguf" "$S-00003-of-00004.gguf"
expect_refused duplicated "$S-00004-of-00004.gguf" \
  "split.no = 1 says it is shard 2 of 4: a duplicated or renamed shard" "$S-00003-of-00004.gguf"

# A shard of another split of the same count (mkmodel's tiny-v3 cut every 18
# tensors instead of 20) put in place of shard 3.
mkdir -p "$TMP/other"
expect_rc 0 "mkmodel another split" -- "$MOEFLOW" mkmodel --preset tiny-v3 --type q4_k_m \
  --split-max-tensors 18 --out "$TMP/other/tiny-v3-split.q4_k_m.gguf"
S="$(shard_set foreign)"
cp "$TMP/other/tiny-v3-split.q4_k_m-00003-of-00004.gguf" "$S-00003-of-00004.gguf"
expect_refused foreign "$S-00002-of-00004.gguf" \
  "tensor 'blk.2.attn_kv_a_mqa.weight' is in both $S-00002-of-00004.gguf and" \
  "$S-00003-of-00004.gguf: shards of different splits"

S="$(shard_set truncated)"
truncate -s -1000 "$S-00004-of-00004.gguf"
expect_refused truncated "$S-00001-of-00004.gguf" \
  "tensor 'blk.3.ffn_up_shexp.weight' (q4_K {256, 64}, 9216 bytes at data offset 628800) extends past the end of the file" \
  "$S-00004-of-00004.gguf"

# --- tensor types. set_type FILE TENSOR ID: rewrites TENSOR's ggml type id in
# its tensor info (the data is left as it is).
set_type() {
  python3 - "$@" <<'PY'
import struct, sys
path, name, type_id = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
b = bytearray(open(path, "rb").read())
key = struct.pack("<Q", len(name)) + name
at = b.find(key)
assert at >= 0 and b.find(key, at + 1) < 0, "the tensor info is not there once"
at += len(key)
n_dims = struct.unpack_from("<I", b, at)[0]
struct.pack_into("<I", b, at + 4 + 8 * n_dims, type_id)
open(path, "wb").write(b)
PY
}
# 39 is ggml's MXFP4, a type moeflow does not read: the file is refused at open.
cp "$FIXTURES/tiny-v3/tiny-v3.q8_0.gguf" "$TMP/mxfp4.gguf"
set_type "$TMP/mxfp4.gguf" blk.2.ffn_up_exps.weight 39 || fail "set_type mxfp4"
expect_refused mxfp4 "$TMP/mxfp4.gguf" \
  "tensor 'blk.2.ffn_up_exps.weight': unknown ggml type 39 (ggml's mxfp4, which moeflow does not read)" \
  "$TMP/mxfp4.gguf"
# 35 is TQ2_0: moeflow reads the file (inspect lists it) but has no kernel.
cp "$FIXTURES/tiny-v3/tiny-v3.q8_0.gguf" "$TMP/tq2_0.gguf"
set_type "$TMP/tq2_0.gguf" blk.2.ffn_up_exps.weight 35 || fail "set_type tq2_0"
expect_rc 0 "inspect a tq2_0 tensor" -- "$MOEFLOW" inspect "$TMP/tq2_0.gguf"
expect_in "$TMP/out" "1 tq2_0" "inspect counts the tq2_0 tensor"
WHY="$TMP/tq2_0.gguf: tensor blk.2.ffn_up_exps.weight has type tq2_0, which the engine's matmul does not support"
expect_rc 1 "generate on a tq2_0 tensor" -- "$MOEFLOW" generate --model "$TMP/tq2_0.gguf" --prompt hi
[[ -s "$TMP/out" ]] && fail "generate on a tq2_0 tensor generated text"
expect_in "$TMP/err" "$WHY" "generate on a tq2_0 tensor"
sed "s|^model_path: .*|model_path: $TMP/tq2_0.gguf|" "$TMP/topo.yaml" >"$TMP/bad-topo.yaml"
expect_rc 1 "launch on a tq2_0 tensor" -- env HWLOC_SYNTHETIC="package:2 numa:1 core:1 pu:1" \
  "$MOEFLOW" launch "$TMP/bad-topo.yaml" --control_address 127.0.0.1:0
grep -q "^CONTROL" "$TMP/out" && fail "launch on a tq2_0 tensor served"
expect_in "$TMP/err" "$WHY" "launch on a tq2_0 tensor"

# --- the older MLA layout: inspect says what is derived at load. Per layer
# (4 heads, kv_lora 128, qk_nope 32, v_head 32; Q8_0: 34 bytes a block of
# 32): attn_kv_b {128, 256} = 256 rows of 136 bytes = 34816; attn_k_b
# {32, 128, 4} = 512 rows of 34 and attn_v_b {128, 32, 4} = 128 rows of 136,
# 34816 together.
KVB="$FIXTURES/tiny-v3-kvb/tiny-v3-kvb.q8_0.gguf"
expect_rc 0 "inspect an attn_kv_b file" -- "$MOEFLOW" inspect --notensors "$KVB"
expect_in "$TMP/out" "older MLA layout: attn_kv_b in 2 layers (q8_0 ×2; 68.0 KiB)" "inspect kv_b"
expect_in "$TMP/out" "attn_k_b (q8_0 ×2) + attn_v_b (q8_0 ×2), 68.0 KiB held instead" \
  "inspect kv_b derived"
expect_rc 0 "inspect --json an attn_kv_b file" -- "$MOEFLOW" inspect --json "$KVB"
python3 - "$TMP/out" <<'PY' || fail "inspect --json older_mla_layout"
import json, sys
j = json.load(open(sys.argv[1]))
o = j["older_mla_layout"]
assert o["layers"] == 2 and o["kv_b_bytes"] == 2 * 34816 and o["derived_bytes"] == 2 * 34816, o
assert o["derived_k_b_type"] == "q8_0 ×2", o
assert not any(t["name"].endswith("attn_k_b.weight") for t in j["tensors"])
PY
expect_rc 0 "inspect a file in the newer layout" -- "$MOEFLOW" inspect --json "$WHOLE"
python3 -c 'import json, sys; assert "older_mla_layout" not in json.load(open(sys.argv[1]))' \
  "$TMP/out" || fail "a newer-layout file reports an older layout"

if [[ $FAILURES -ne 0 ]]; then
  echo "$FAILURES check(s) failed" >&2
  exit 1
fi
echo "PASS"
