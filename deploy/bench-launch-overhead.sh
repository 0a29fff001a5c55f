#!/usr/bin/env bash
# Launch overhead benchmark: decode tokens/s of `moeflow launch TOPOLOGY`
# (driven by `moeflowctl generate`) against the single-process engine
# (`moeflow generate`) on the same model, prompt and token count, in
# interleaved rounds. Prints a table, then one JSON line.
#
# Each single-process round is a fresh process that allocates and frees the
# whole model; on the VMs this was measured on, the memory that frees is
# reported to the host over the following seconds and stalls whichever
# long-lived process runs then (coordinator/README.md, "Two processes on the
# same cores"), so the launch's round waits --settle seconds after it.
#
# Usage: deploy/bench-launch-overhead.sh MODEL.gguf [--rounds 6] [--tokens 128]
#          [--settle 15] [--topology deploy/topologies/cpu-single-socket.yaml]
#          [--port 50061] [--no-build]
# Extra environment (MOEFLOW_PIN, MOEFLOW_YIELD_US, ...) reaches the launch.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: $0 MODEL.gguf [--rounds N] [--tokens N] [--settle S] [--topology FILE] [--port P] [--no-build]" >&2
  exit 2
}
[[ $# -ge 1 ]] || usage
model="$1"
shift
rounds=6
tokens=128
settle=15
topology=deploy/topologies/cpu-single-socket.yaml
port=50061
build=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --tokens) tokens="$2"; shift 2 ;;
    --settle) settle="$2"; shift 2 ;;
    --topology) topology="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    *) echo "bench-launch-overhead: unknown argument '$1'" >&2; usage ;;
  esac
done
[[ -r "$model" ]] || { echo "bench-launch-overhead: cannot read model '$model'" >&2; exit 2; }
[[ -r "$topology" ]] || { echo "bench-launch-overhead: cannot read topology '$topology'" >&2; exit 2; }
for v in "$rounds" "$tokens" "$settle" "$port"; do
  [[ "$v" =~ ^[0-9]+$ ]] || { echo "bench-launch-overhead: '$v' is not a non-negative integer" >&2; exit 2; }
done
[[ "$rounds" -ge 1 && "$tokens" -ge 2 ]] || { echo "bench-launch-overhead: need --rounds >= 1 and --tokens >= 2" >&2; exit 2; }

if [[ "$build" == 1 ]]; then
  echo "bench-launch-overhead: bazel build -c opt (moeflow, moeflowctl, the workers)" >&2
  bazel build -c opt //cli:moeflow //cli:moeflowctl //cpu_expert_worker //gpu_worker >&2
fi
bin=bazel-bin
moeflow="$bin/cli/moeflow"
ctl="$bin/cli/moeflowctl"
[[ -x "$moeflow" && -x "$ctl" ]] || { echo "bench-launch-overhead: $moeflow or $ctl missing (build first)" >&2; exit 2; }

work=$(mktemp -d)
launch_pid=""
cleanup() {
  if [[ -n "$launch_pid" ]] && kill -0 "$launch_pid" 2>/dev/null; then
    kill -INT "$launch_pid" 2>/dev/null || true
    wait "$launch_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# The topology with this model, this control port and no HTTP API.
abs_model=$(realpath "$model")
sed -e "s#^model_path:.*#model_path: ${abs_model}#" \
    -e "s#^control_address:.*#control_address: 127.0.0.1:${port}#" \
    -e "/^http_address:/d" "$topology" > "$work/topology.yaml"

prompt="Write a short story about a robot who learns to paint."
echo "bench-launch-overhead: starting moeflow launch $topology (log: $work/launch.log)" >&2
"$moeflow" launch "$work/topology.yaml" > "$work/launch.log" 2>&1 &
launch_pid=$!
ready=0
for _ in $(seq 1 600); do
  if "$ctl" --addr "127.0.0.1:${port}" status > /dev/null 2>&1; then ready=1; break; fi
  kill -0 "$launch_pid" 2>/dev/null || break
  sleep 1
done
if [[ "$ready" != 1 ]]; then
  echo "bench-launch-overhead: the launch did not become ready; its log:" >&2
  tail -20 "$work/launch.log" >&2
  exit 1
fi
"$ctl" --addr "127.0.0.1:${port}" generate --prompt "hi" --max-tokens 4 > /dev/null 2>&1  # warm-up

single_rate() {
  "$moeflow" generate --model "$model" --prompt "$prompt" --max-tokens "$tokens" --temperature 0 \
    2>&1 > /dev/null | sed -n 's/.*decode \([0-9.]*\) tok\/s.*/\1/p' | tail -1
}
launch_rate() {
  "$ctl" --addr "127.0.0.1:${port}" generate --prompt "$prompt" --max-tokens "$tokens" \
    --temperature 0 2>&1 > /dev/null | sed -n 's/.*decode \([0-9.]*\) tok\/s.*/\1/p' | tail -1
}

printf "%-6s %14s %14s %8s\n" round "single tok/s" "launch tok/s" ratio
results=()
for r in $(seq 1 "$rounds"); do
  s=$(single_rate)
  sleep "$settle"
  l=$(launch_rate)
  if [[ -z "$s" || -z "$l" ]]; then
    echo "bench-launch-overhead: round $r: no decode rate (single '$s', launch '$l'); launch log:" >&2
    tail -20 "$work/launch.log" >&2
    exit 1
  fi
  ratio=$(awk -v a="$l" -v b="$s" 'BEGIN { printf "%.3f", a / b }')
  printf "%-6s %14s %14s %8s\n" "$r" "$s" "$l" "$ratio"
  results+=("$s $l $ratio")
done

printf '%s\n' "${results[@]}" | awk -v model="$model" -v topo="$topology" -v tokens="$tokens" \
    -v settle="$settle" '
  { s[NR] = $1; l[NR] = $2; r[NR] = $3; ss += $1; ls += $2; rs += $3 }
  END {
    n = NR
    for (i = 1; i <= n; ++i) sorted[i] = r[i]
    for (i = 1; i <= n; ++i) for (j = i + 1; j <= n; ++j) if (sorted[j] < sorted[i]) { t = sorted[i]; sorted[i] = sorted[j]; sorted[j] = t }
    median = (n % 2) ? sorted[(n + 1) / 2] : (sorted[n / 2] + sorted[n / 2 + 1]) / 2
    printf "mean   %14.1f %14.1f %8.3f   (median ratio %.3f, %d rounds)\n", ss / n, ls / n, rs / n, median, n
    printf "{\"benchmark\":\"launch_overhead\",\"model\":\"%s\",\"topology\":\"%s\",\"tokens\":%d,\"settle_s\":%d,\"rounds\":%d,", model, topo, tokens, settle, n
    printf "\"single_tok_s\":%.2f,\"launch_tok_s\":%.2f,\"ratio_mean\":%.4f,\"ratio_median\":%.4f,\"per_round\":[", ss / n, ls / n, rs / n, median
    for (i = 1; i <= n; ++i) printf "%s{\"single\":%s,\"launch\":%s,\"ratio\":%s}", (i > 1 ? "," : ""), s[i], l[i], r[i]
    printf "]}\n"
  }'
