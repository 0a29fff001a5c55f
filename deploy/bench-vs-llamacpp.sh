#!/bin/bash
# moeflow bench next to llama-bench on the same GGUF files, in interleaved
# rounds (llama.cpp then moeflow, test by test, same minutes), 2 threads by
# default. Prints one Markdown table per round and one JSON line per
# measurement (tokens/s), plus the ratios moeflow / llama.cpp.
#
#   deploy/bench-vs-llamacpp.sh [--rounds 2] [--tests "pp512 tg128 pp4096 tg128@d4096"]
#       [--llama-bench PATH] [--moeflow PATH] [-t 2] FILE.gguf...
#
# A test is ppN (prompt of N tokens), tgN (N decode steps) or either with
# @dD (after D cached tokens: llama-bench -d, moeflow bench -d). Each test
# runs -r 3 repetitions for short tests and 1 for tests of 2048 tokens or
# more (llama-bench --no-warmup then; moeflow bench always warms up once).
# Bandwidth moves with the host's load: compare within one round.
set -euo pipefail

rounds=2
tests="pp512 tg128"
llama_bench=${LLAMA_BENCH:-/work/ext/llama.cpp/build/bin/llama-bench}
moeflow=${MOEFLOW:-bazel-bin/cli/moeflow}
threads=2
files=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --tests) tests=$2; shift 2 ;;
    --llama-bench) llama_bench=$2; shift 2 ;;
    --moeflow) moeflow=$2; shift 2 ;;
    -t) threads=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) files+=("$1"); shift ;;
  esac
done
if [[ ${#files[@]} -eq 0 ]]; then
  echo "bench-vs-llamacpp: give one or more GGUF files" >&2
  exit 2
fi
for tool in "$llama_bench" "$moeflow"; do
  [[ -x $tool ]] || { echo "bench-vs-llamacpp: $tool is not an executable" >&2; exit 2; }
done

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "# flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512bw|avx512vl|avx512_vnni|avx512_bf16|avx512vbmi|amx_tile|amx_int8)$' | tr '\n' ' ')"

# run_test FILE TEST -> prints "llama_tps moeflow_tps"
run_test() {
  local file=$1 test=$2 kind n depth=0 reps=3 warm=()
  kind=${test:0:2}
  n=${test:2}
  if [[ $n == *@d* ]]; then depth=${n#*@d}; n=${n%@d*}; fi
  if (( n + depth >= 2048 )); then reps=1; warm=(--no-warmup); fi
  local lp=0 ln=0
  if [[ $kind == pp ]]; then lp=$n; else ln=$n; fi
  local l m
  l=$("$llama_bench" -m "$file" -t "$threads" -p "$lp" -n "$ln" -d "$depth" -r "$reps" \
      "${warm[@]}" -o json 2>/dev/null |
      python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["avg_ts"])')
  m=$("$moeflow" bench -m "$file" -t "$threads" -p "$lp" -n "$ln" -d "$depth" -r "$reps" --json |
      python3 -c "import json,sys; j=json.load(sys.stdin); print(j['prefill_tokens_per_s'] if '$kind'=='pp' else j['decode_tokens_per_s'], j['peak_rss_over_model'], j['decode_fraction_of_floor'], j['bandwidth_read_gb_per_s_before'])")
  echo "$l $m"
}

for ((r = 1; r <= rounds; ++r)); do
  echo
  echo "round $r"
  echo "| file | test | llama.cpp tok/s | moeflow tok/s | ratio | moeflow RSS / file | decode / floor | GB/s |"
  echo "|---|---|---|---|---|---|---|---|"
  for file in "${files[@]}"; do
    for test in $tests; do
      read -r l m rss floor bw < <(run_test "$file" "$test")
      ratio=$(python3 -c "print(f'{$m / $l:.2f}')")
      fl="-"; [[ ${test:0:2} == tg ]] && fl=$(python3 -c "print(f'{$floor:.2f}')")
      printf '| %s | %s | %.2f | %.2f | %s | %.2f | %s | %.1f |\n' "$(basename "$file")" \
        "$test" "$l" "$m" "$ratio" "$rss" "$fl" "$bw"
      printf '{"round": %d, "file": "%s", "test": "%s", "llamacpp_tps": %s, "moeflow_tps": %s, "ratio": %s, "rss_over_file": %s, "bw_gbps": %s}\n' \
        "$r" "$(basename "$file")" "$test" "$l" "$m" "$ratio" "$rss" "$bw" >&2
    done
  done
done
