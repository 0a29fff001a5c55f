#!/bin/bash
# Runs the real `moeflow` binary: help, mkmodel, inspect (text, simulated
# dual-socket NUMA, JSON) and the exit codes of the error paths.
# Usage: moeflow_cli_test.sh PATH/TO/moeflow
set -u

MOEFLOW="$1"
TMP="${TEST_TMPDIR:-$(mktemp -d)}"
# llama.cpp fixtures (runfiles are rooted at the workspace).
FIXTURES="${FIXTURES:-tests/data/llamacpp}"
FAILURES=0

fail() {
  echo "FAIL: $*" >&2
  FAILURES=$((FAILURES + 1))
}

# expect_rc WANT DESCRIPTION -- COMMAND...: runs COMMAND, output in $TMP/out.
expect_rc() {
  local want="$1" what="$2"
  shift 3
  "$@" >"$TMP/out" 2>"$TMP/err"
  local rc=$?
  if [[ $rc -ne $want ]]; then
    fail "$what: exit $rc, want $want"
    sed 's/^/  | /' "$TMP/out" "$TMP/err" | head -20 >&2
  fi
}

expect_in() {  # expect_in FILE PATTERN DESCRIPTION
  grep -q -- "$2" "$1" || fail "$3: no \"$2\" in $(basename "$1")"
}

expect_rc 0 "moeflow --help" -- "$MOEFLOW" --help
expect_in "$TMP/out" "inspect" "moeflow --help lists inspect"
expect_in "$TMP/out" "mkmodel" "moeflow --help lists mkmodel"

expect_rc 0 "mkmodel --help" -- "$MOEFLOW" mkmodel --help
expect_in "$TMP/out" "--preset" "mkmodel --help shows --preset"
expect_in "$TMP/out" "--tokenizer-json" "mkmodel --help shows --tokenizer-json"
grep -q -- "--numa-nodes" "$TMP/out" && fail "mkmodel --help shows inspect's flags"

expect_rc 0 "inspect --help" -- "$MOEFLOW" inspect --help
expect_in "$TMP/out" "--numa-nodes" "inspect --help shows --numa-nodes"

expect_rc 2 "unknown command" -- "$MOEFLOW" frobnicate
expect_in "$TMP/err" "unknown command" "unknown command message"
expect_rc 2 "no command" -- "$MOEFLOW"
expect_rc 2 "flag of another command" -- "$MOEFLOW" inspect --seed=3 x.gguf
expect_in "$TMP/err" "unknown flag --seed" "flag of another command message"
expect_rc 2 "bad flag value" -- "$MOEFLOW" mkmodel --layers=many --out "$TMP/x.gguf"
expect_in "$TMP/err" "--layers=many" "bad flag value message"
[[ $(wc -l <"$TMP/err") -eq 1 ]] || fail "bad flag value: error is not one line"
expect_rc 2 "bad preset" -- "$MOEFLOW" mkmodel --preset=huge --out "$TMP/x.gguf"
expect_in "$TMP/err" "huge" "bad preset message"
expect_rc 2 "bad type" -- "$MOEFLOW" mkmodel --type=q9_9 --out "$TMP/x.gguf"
expect_in "$TMP/err" "q9_9" "bad type message"
expect_rc 2 "missing --out" -- "$MOEFLOW" mkmodel

MODEL="$TMP/t.gguf"
expect_rc 0 "mkmodel tiny" -- "$MOEFLOW" mkmodel --preset tiny --out "$MODEL"
[[ -s "$MODEL" ]] || fail "mkmodel wrote no file"
expect_rc 1 "mkmodel refuses to overwrite" -- "$MOEFLOW" mkmodel --preset tiny --out "$MODEL"
expect_in "$TMP/err" "--force" "overwrite refusal names --force"
expect_rc 0 "mkmodel --force" -- "$MOEFLOW" mkmodel --preset tiny-v3 --type q4_k_m --force --out "$MODEL"

# IQ types with llama-imatrix's matrix (GGUF and legacy .dat) and without one.
IMATRIX=$FIXTURES/tiny-v3-imatrix/imatrix
expect_rc 0 "mkmodel iq2_xxs --imatrix" -- "$MOEFLOW" mkmodel --preset tiny-v3 --type iq2_xxs \
  --imatrix "$IMATRIX.gguf" --out "$TMP/iq2.gguf"
expect_rc 0 "inspect iq2_xxs" -- "$MOEFLOW" inspect "$TMP/iq2.gguf"
expect_in "$TMP/out" "iq2_xxs" "mkmodel --type iq2_xxs writes IQ2_XXS tensors"
expect_rc 0 "mkmodel iq1_m --imatrix .dat" -- "$MOEFLOW" mkmodel --preset tiny-v3 --type iq1_m \
  --imatrix "$IMATRIX.dat" --out "$TMP/iq1.gguf"
expect_rc 0 "mkmodel iq3_xxs, uniform importance" -- "$MOEFLOW" mkmodel --preset tiny-v3 \
  --type iq3_xxs --out "$TMP/iq3.gguf"
expect_rc 1 "mkmodel --imatrix missing" -- "$MOEFLOW" mkmodel --preset tiny-v3 --type iq2_xxs \
  --imatrix "$TMP/none.imatrix" --out "$TMP/x.gguf"
expect_in "$TMP/err" "none.imatrix" "a missing imatrix file is named"
expect_rc 1 "mkmodel --imatrix of another model" -- "$MOEFLOW" mkmodel --preset tiny-v3 \
  --type iq2_xxs --imatrix "$FIXTURES"/tiny-v2-imatrix/imatrix.gguf --out "$TMP/x.gguf"
expect_in "$TMP/err" "no imatrix entry for tensor blk.0.attn_q_a.weight" "imatrix misfit names the tensor"
[[ -e "$TMP/x.gguf" ]] && fail "a failed mkmodel left a file"

expect_rc 0 "inspect" -- "$MOEFLOW" inspect "$MODEL"
for want in "architecture: deepseek2" "q_lora_rank" "gpt2" "tokenizer.ggml.merges" \
    "blk.3.ffn_down_exps.weight" "routed experts" "replicate" "slice" "shard"; do
  expect_in "$TMP/out" "$want" "inspect output"
done
expect_rc 0 "inspect --notensors" -- "$MOEFLOW" inspect --notensors "$MODEL"
grep -q "blk.3.ffn_down_exps.weight" "$TMP/out" && fail "--notensors still prints tensors"

expect_rc 0 "inspect on 2 simulated NUMA nodes" -- \
  env HWLOC_SYNTHETIC="package:2 numa:1 core:32 pu:1" "$MOEFLOW" inspect "$MODEL"
expect_in "$TMP/out" "over 2 NUMA nodes" "synthetic topology has 2 nodes"
expect_in "$TMP/out" "node 1" "synthetic topology shows node 1"
expect_rc 0 "inspect --numa-nodes=4" -- "$MOEFLOW" inspect --numa-nodes=4 "$MODEL"
expect_in "$TMP/out" "over 4 NUMA nodes" "--numa-nodes=4"

expect_rc 0 "inspect --json" -- \
  env HWLOC_SYNTHETIC="package:2 numa:1 core:32 pu:1" "$MOEFLOW" inspect --json "$MODEL"
python3 - "$TMP/out" <<'PY' || fail "inspect --json content"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["architecture"] == "deepseek2", j["architecture"]
assert j["hyperparameters"]["n_experts"] == 16
assert j["hyperparameters"]["q_lora_rank"] == 128
assert j["tokenizer"]["vocab_size"] == 2048
assert j["numa_nodes"] == 2
shard = j["placement"]["shard"]["nodes"]
assert [n["experts"] for n in shard] == [8, 8], shard
rep = j["placement"]["replicate"]
assert rep["total_expert_bytes"] == 2 * j["bytes"]["routed_experts"]
assert j["bytes"]["total"] == sum(t["bytes"] for t in j["tensors"])
PY

# The real shapes' structure at tiny widths (tiny-k2: Kimi-K2's 64 heads,
# 384 experts top-8 in one group; tiny-v3.1: V3.1's 128 heads, 256 experts in
# 8 groups, 4 used): mkmodel writes them, inspect reads them, generate runs.
for shape in "tiny-k2 64 384 1 1 3" "tiny-v3.1 128 256 8 4 5"; do
  read -r preset heads experts groups groups_used layers <<<"$shape"
  expect_rc 0 "mkmodel $preset" -- "$MOEFLOW" mkmodel --preset "$preset" --type q8_0 \
    --out "$TMP/$preset.gguf"
  expect_rc 0 "inspect --json $preset" -- "$MOEFLOW" inspect --json --notensors "$TMP/$preset.gguf"
  python3 - "$TMP/out" "$heads" "$experts" "$groups" "$groups_used" "$layers" <<'PY' ||
import json, sys
h = json.load(open(sys.argv[1]))["hyperparameters"]
heads, experts, groups, used, layers = map(int, sys.argv[2:])
assert (h["n_heads"], h["n_experts"], h["n_experts_used"]) == (heads, experts, 8), h
assert (h["n_expert_groups"], h["n_expert_groups_used"]) == (groups, used), h
assert h["n_layers"] == layers and h["hidden"] == 256, h
PY
    fail "inspect --json $preset: the preset's structure"
  expect_rc 0 "generate on $preset" -- "$MOEFLOW" generate --model "$TMP/$preset.gguf" \
    --prompt "The quick brown fox" --max-tokens 8 --threads 1
  expect_in "$TMP/err" "generated [0-9]* tokens" "generate on $preset"
done

echo "not a gguf" >"$TMP/bad.gguf"
expect_rc 1 "inspect a bad file" -- "$MOEFLOW" inspect "$TMP/bad.gguf"
expect_in "$TMP/err" "bad.gguf" "bad file message names the file"
expect_rc 1 "inspect a missing file" -- "$MOEFLOW" inspect "$TMP/missing.gguf"
expect_rc 2 "inspect without a file" -- "$MOEFLOW" inspect

# GPU memory plan (model/memory_plan.h PlanGpuMemory): the file (tiny-v3
# Q4_K_M here) and the DeepSeek-V3 shape at 4 quant mixes, over 1/2/4 cards.
expect_rc 0 "inspect --plan" -- "$MOEFLOW" inspect --plan --context 1000 "$MODEL"
for want in "Q4_K_M" "DeepSeek-V3 shape" "BF16" "workspace"; do
  expect_in "$TMP/out" "$want" "inspect --plan output"
done
expect_rc 0 "inspect --plan without a file" -- "$MOEFLOW" inspect --plan
expect_rc 2 "inspect --plan --context 0" -- "$MOEFLOW" inspect --plan --context 0
expect_in "$TMP/err" "--context=0" "bad --context message"
expect_rc 2 "serve --decode-reserve-tokens -1" -- \
  "$MOEFLOW" serve --model "$MODEL" --decode-reserve-tokens=-1
expect_in "$TMP/err" "decode-reserve-tokens must be >= 0" "serve --decode-reserve-tokens -1"
expect_rc 0 "inspect --plan --json" -- "$MOEFLOW" inspect --plan --json --context 1000 "$MODEL"
python3 - "$TMP/out" <<'PY' || fail "inspect --plan --json content"
import json, sys
j = json.load(open(sys.argv[1]))
plans = j["gpu_plan"]
assert [(p["model"], p["cards"]) for p in plans[:3]] == [("file", 1), ("file", 2), ("file", 4)]
assert len(plans) == 3 + 4 * 3, len(plans)
for p in plans:
    assert p["kv_cache_positions"] == 1024, p["kv_cache_positions"]  # 16 pages of 64
    assert len(p["devices"]) == p["cards"]
    for d in p["devices"]:
        assert d["total_bytes"] == d["weight_bytes"] + d["kv_cache_bytes"] + d["workspace_bytes"]
        assert "routed_experts" not in d["weight_bytes_by_part"]
v3 = {(p["quant"], p["cards"]): p for p in plans if p["model"] == "v3"}
assert v3[("Q4_K_M", 1)]["fits"]["24_gib"] and not v3[("BF16", 1)]["fits"]["24_gib"]
assert v3[("BF16", 4)]["max_card_bytes"] < v3[("BF16", 2)]["max_card_bytes"] < v3[("BF16", 1)]["max_card_bytes"]
PY
# The other real shapes (model/model_presets.h): V3.1 plans as V3 (the same
# shape); Kimi-K2's 64 heads (V3: 128) make its attention weights smaller,
# its 163840-token vocabulary its embedding and output larger.
expect_rc 0 "inspect --plan --shapes" -- "$MOEFLOW" inspect --plan --shapes v3,v3.1,kimi-k2
for want in "DeepSeek-V3 shape (preset v3: 61 layers, 128 heads" \
    "DeepSeek-V3.1 / R1-0528 shape (preset v3.1: 61 layers, 128 heads" \
    "Kimi-K2 shape (preset kimi-k2: 61 layers, 64 heads, hidden 7168, 384 experts top-8, vocab 163840)"; do
  expect_in "$TMP/out" "$want" "inspect --plan --shapes output"
done
expect_rc 0 "inspect --plan --shapes --json" -- "$MOEFLOW" inspect --plan --json --shapes v3,v3.1,kimi-k2
python3 - "$TMP/out" <<'PY' || fail "inspect --plan --shapes --json content"
import json, sys
plans = json.load(open(sys.argv[1]))["gpu_plan"]
assert sorted({p["model"] for p in plans}) == ["kimi-k2", "v3", "v3.1"], plans
by = {(p["model"], p["quant"], p["cards"]): p for p in plans}
assert len(by) == 3 * 4 * 3
for q in ("Q4_K_M", "Q6_K", "Q8_0", "BF16"):
    for cards in (1, 2, 4):
        v3, v31, kimi = (by[(m, q, cards)] for m in ("v3", "v3.1", "kimi-k2"))
        assert v3["devices"] == v31["devices"], (q, cards)
        k, v = kimi["devices"][0]["weight_bytes_by_part"], v3["devices"][0]["weight_bytes_by_part"]
        assert k["attention"] < v["attention"], (q, cards)
        assert k["embeddings"] > v["embeddings"] and k["output"] > v["output"], (q, cards)
PY
expect_rc 2 "inspect --plan --shapes with an unknown shape" -- "$MOEFLOW" inspect --plan --shapes v3,kimi
expect_in "$TMP/err" 'unknown preset "kimi"' "unknown --shapes message"

# `moeflow logits` on a llama.cpp fixture: the MFLG file it writes agrees with
# llama.cpp's (same tokens, top-1 everywhere, max |dlogit| < 1e-3 on F32).
for fixture in tiny-v2.f32 tiny-v3.q8_0 tiny-v3-kvb.f32; do
  dir="$FIXTURES/${fixture%%.*}"
  for engine in engine reference; do
    flag=""
    [[ $engine == reference ]] && flag="--reference"
    expect_rc 0 "logits $fixture ($engine)" -- "$MOEFLOW" logits --model "$dir/$fixture.gguf" \
      --tokens 2046,17,401,95,1200,33,7 --out "$TMP/$fixture.$engine.bin" --threads 2 $flag
    python3 - "$TMP/$fixture.$engine.bin" "$dir/$fixture.seq7.logits.bin" "$fixture" <<'PY' ||
import array, struct, sys
def read(path):
    b = open(path, "rb").read()
    magic, version, n, vocab = struct.unpack("<4sIII", b[:16])
    assert magic == b"MFLG" and version == 1, (magic, version)
    ids = list(struct.unpack("<%dI" % n, b[16:16 + 4 * n]))
    logits = array.array("f", b[16 + 4 * n:])
    assert len(logits) == n * vocab
    return ids, vocab, logits
ids, vocab, got = read(sys.argv[1])
want_ids, want_vocab, want = read(sys.argv[2])
assert ids == want_ids and vocab == want_vocab
bound = 1e-3 if ".f32" in sys.argv[3] else 2.0
for t in range(len(ids)):
    g = got[t * vocab:(t + 1) * vocab]
    w = want[t * vocab:(t + 1) * vocab]
    assert max(range(vocab), key=g.__getitem__) == max(range(vocab), key=w.__getitem__), t
    assert max(abs(a - b) for a, b in zip(g, w)) < bound, t
PY
      fail "logits $fixture ($engine) disagrees with llama.cpp"
  done
done
expect_rc 1 "logits with an out-of-range token" -- "$MOEFLOW" logits \
  --model "$FIXTURES/tiny-v2/tiny-v2.q8_0.gguf" --tokens 1,99999 --out "$TMP/x.bin"
expect_in "$TMP/err" "99999" "out-of-range token id is named"
expect_rc 2 "logits with a non-numeric token" -- "$MOEFLOW" logits \
  --model "$FIXTURES/tiny-v2/tiny-v2.q8_0.gguf" --tokens 1,x --out "$TMP/x.bin"

# --- launch --validate-only: each mistake a topology file can hold is caught
# before anything starts, with the file's line and the field (the host is a
# simulated 2-NUMA machine).
VALID_MODEL="$FIXTURES/tiny-v3/tiny-v3.q8_0.gguf"
TOPO="$TMP/topo.yaml"
# validate WANT_RC PATTERN DESCRIPTION [FLAGS...] <<YAML
validate() {
  local want="$1" pattern="$2" what="$3"
  shift 3
  cat >"$TOPO"
  expect_rc "$want" "launch --validate-only: $what" -- env HWLOC_SYNTHETIC="package:2 numa:1 core:1 pu:1" \
    "$MOEFLOW" launch "$TOPO" --validate-only "$@"
  [[ -z "$pattern" ]] || expect_in "$TMP/err" "$pattern" "launch --validate-only: $what"
}
validate 0 "" "a good topology" <<YAML
model_path: $VALID_MODEL
gpu_workers: [{backend: cpu}]
expert_workers: [{numa_node: 0}, {numa_node: 1}]
YAML
validate 2 "topo.yaml:3: placement: duplicated key (first given on line 2" "duplicated key" <<YAML
model_path: $VALID_MODEL
placement: shard
placement: replicate
gpu_workers: [{backend: cpu}]
expert_workers: [{numa_node: 0}]
YAML
validate 2 "topo.yaml:5: expert_workers\[1\].numa_node: 2: this host has 2 NUMA nodes (0-1, hwloc, simulated)" \
  "a numa_node the host lacks" <<YAML
model_path: $VALID_MODEL
gpu_workers: [{backend: cpu}]
expert_workers:
  - {numa_node: 0}
  - {numa_node: 2}
YAML
printf 'secret-token-for-the-cli-test\n' >"$TMP/worker.token"
validate 2 "topo.yaml:7: expert_workers\[1\].address: '127.0.0.1:50070' is already the address of expert_workers\[0\]" \
  "two expert workers at one address" <<YAML
model_path: $VALID_MODEL
ucx_transports: tcp
worker_token_file: $TMP/worker.token
gpu_workers: [{backend: cpu}]
expert_workers:
  - {numa_node: 0, address: '127.0.0.1:50070'}
  - {numa_node: 1, address: '127.0.0.1:50070'}
YAML
validate 2 "topo.yaml:4: gpu_workers\[1\]: the coordinator drives 1 gpu worker" \
  "more gpu workers than the coordinator drives" <<YAML
model_path: $VALID_MODEL
gpu_workers:
  - {backend: cpu}
  - {backend: cpu}
expert_workers: [{numa_node: 0}]
YAML
validate 2 "topo.yaml:1: model_path: '$TMP/missing.gguf': No such file" "a model path that does not exist" <<YAML
model_path: $TMP/missing.gguf
gpu_workers: [{backend: cpu}]
expert_workers: [{numa_node: 0}]
YAML
validate 2 "--model=$TMP/missing.gguf: No such file" "a --model that does not exist" \
  --model "$TMP/missing.gguf" <<YAML
model_path: $VALID_MODEL
gpu_workers: [{backend: cpu}]
expert_workers: [{numa_node: 0}]
YAML
validate 2 "http_address 0.0.0.0 is not a loopback address: give --api-key" \
  "an HTTP API off loopback without --api_key" --http_address 0.0.0.0:0 <<YAML
model_path: $VALID_MODEL
gpu_workers: [{backend: cpu}]
expert_workers: [{numa_node: 0}]
YAML
validate 0 "" "an HTTP API off loopback with --allow_unauthenticated" --http_address 0.0.0.0:0 \
  --allow_unauthenticated <<YAML
model_path: $VALID_MODEL
gpu_workers: [{backend: cpu}]
expert_workers: [{numa_node: 0}]
YAML
validate 2 "topo.yaml:4: expert_workers: must be a list of expert workers .*got a map" \
  "a map where a list is expected" <<YAML
model_path: $VALID_MODEL
gpu_workers: [{backend: cpu}]
expert_workers:
  numa_node: 0
YAML

# bench at a depth: -d D caches D tokens first; both tests are named as
# llama-bench names them, JSON carries the depth; a negative depth is a usage error.
BENCH_MODEL="$FIXTURES/tiny-v3/tiny-v3.q4_k_m.gguf"
expect_rc 0 "bench -d" -- "$MOEFLOW" bench -m "$BENCH_MODEL" -p 8 -n 2 -d 5 -r 1
expect_in "$TMP/out" "pp8 @ d5" "bench -d names the prefill test"
expect_in "$TMP/out" "tg2 @ d5" "bench -d names the decode test"
expect_rc 0 "bench -d --json" -- "$MOEFLOW" bench -m "$BENCH_MODEL" -p 8 -n 0 -d 5 -r 1 --json
expect_in "$TMP/out" '"depth": 5' "bench --json gives the depth"
expect_rc 2 "bench -d -3" -- "$MOEFLOW" bench -m "$BENCH_MODEL" -p 8 -d -3
expect_in "$TMP/err" "-d >= 0" "bench -d -3 says what it needs"

if [[ $FAILURES -ne 0 ]]; then
  echo "$FAILURES failure(s)" >&2
  exit 1
fi
echo "PASS"
