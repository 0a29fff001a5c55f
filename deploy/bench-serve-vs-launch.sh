#!/usr/bin/env bash
# Serving throughput of `moeflow serve --model MODEL` against `moeflow launch
# TOPOLOGY --model MODEL` (same file, same HTTP API, the same scheduler over
# the single-process topology and over the worker processes): serve_bench
# (server/serve_bench.cc) at each concurrency against one, then the other,
# for --rounds rounds, so both run in the same minutes (the order swapped
# every other round, and --settle seconds of rest after each server exits:
# on the VMs this was measured on, memory a process frees is reported to the
# host over the following seconds and stalls whichever process runs then). Both servers get the
# same step (the topology's max_batch_tokens), KV budget (its gpu worker's
# kv_cache_tokens), --parallel and threads (serve: --threads; launch: the
# topology's, 0 = every core for each worker). Prints each run's table, then
# one JSON line per run (label, round, serve_bench's JSON).
#
# Usage: deploy/bench-serve-vs-launch.sh MODEL.gguf [--topology FILE]
#          [--rounds 1] [--concurrency 1,4,8,16] [--max-tokens 32]
#          [--requests-per-client 2] [--threads 2] [--port 18180] [--settle 15]
#          [--no-build]
# Run it under `flock /tmp/moeflow-bench.lock` on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: $0 MODEL.gguf [--topology FILE] [--rounds N] [--concurrency LIST] [--max-tokens N]" \
       "[--requests-per-client N] [--threads N] [--port P] [--no-build]" >&2
  exit 2
}
[[ $# -ge 1 ]] || usage
model="$1"
shift
topology=deploy/topologies/cpu-single-socket.yaml
rounds=1
concurrency=1,4,8,16
max_tokens=32
per_client=2
threads=2
port=18180
settle=15
build=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --topology) topology="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --concurrency) concurrency="$2"; shift 2 ;;
    --max-tokens) max_tokens="$2"; shift 2 ;;
    --requests-per-client) per_client="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --settle) settle="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    *) echo "bench-serve-vs-launch: unknown argument '$1'" >&2; usage ;;
  esac
done
[[ -r "$model" ]] || { echo "bench-serve-vs-launch: cannot read model '$model'" >&2; exit 2; }
[[ -r "$topology" ]] || { echo "bench-serve-vs-launch: cannot read topology '$topology'" >&2; exit 2; }
for v in "$rounds" "$max_tokens" "$per_client" "$threads" "$port" "$settle"; do
  [[ "$v" =~ ^[0-9]+$ ]] || { echo "bench-serve-vs-launch: '$v' is not a non-negative integer" >&2; exit 2; }
done
[[ "$concurrency" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "bench-serve-vs-launch: bad --concurrency '$concurrency'" >&2; exit 2; }
parallel=$(tr ',' '\n' <<< "$concurrency" | sort -n | tail -1)
step=$(sed -n 's/^max_batch_tokens: *\([0-9]*\).*/\1/p' "$topology")
kv=$(sed -n 's/.*kv_cache_tokens: *\([0-9]*\).*/\1/p' "$topology" | head -1)
step=${step:-64}
kv=${kv:-4096}

if [[ "$build" == 1 ]]; then
  bazel build //cli:moeflow //cpu_expert_worker //gpu_worker //server:serve_bench >&2
fi
bin=bazel-bin
work=$(mktemp -d)
server_pid=""
stop_server() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
trap 'stop_server; rm -rf "$work"' EXIT

wait_ready() {  # the server answers /health 200 within 600 s
  for _ in $(seq 1 1200); do
    if curl -sf "http://127.0.0.1:${port}/health" > /dev/null 2>&1; then return 0; fi
    kill -0 "$server_pid" 2>/dev/null || return 1
    sleep 0.5
  done
  return 1
}

run_one() {  # label round
  local label="$1" round="$2" log="$work/$1-$2.log"
  if [[ "$label" == serve ]]; then
    "$bin/cli/moeflow" serve --model "$model" --port "$port" --threads "$threads" \
      --parallel "$parallel" --max_batch_tokens "$step" --kv_tokens "$kv" > "$log" 2>&1 &
  else
    "$bin/cli/moeflow" launch "$topology" --model "$(realpath "$model")" \
      --http_address "127.0.0.1:${port}" --control_address 127.0.0.1:0 \
      --parallel "$parallel" \
      --gpu_worker_binary="$bin/gpu_worker/gpu_worker" \
      --expert_worker_binary="$bin/cpu_expert_worker/cpu_expert_worker" > "$log" 2>&1 &
  fi
  server_pid=$!
  if ! wait_ready; then
    echo "bench-serve-vs-launch: $label did not come up; its log:" >&2
    cat "$log" >&2
    exit 1
  fi
  local args=(--port="$port" --label="$label" --concurrency="$concurrency"
              --max_tokens="$max_tokens" --requests_per_client="$per_client" --prefix_tokens=0)
  local json
  json=$("$bin/server/serve_bench" "${args[@]}" --json)
  python3 -c 'import json, sys; print(json.dumps({"label": sys.argv[1], "round": int(sys.argv[2]),
    "bench": json.loads(sys.argv[3])}))' "$label" "$round" "$json" >> "$work/results.jsonl"
  stop_server
  sleep "$settle"
}

for r in $(seq 1 "$rounds"); do
  if (( r % 2 == 1 )); then
    run_one serve "$r"
    run_one launch "$r"
  else
    run_one launch "$r"
    run_one serve "$r"
  fi
done
# The table: aggregate decode tok/s (and e2e tok/s) per concurrency, the
# mean over the rounds, launch / serve, and launch's N concurrent / 1.
python3 - "$work/results.jsonl" <<'PY'
import collections, json, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
dec = collections.defaultdict(list)
e2e = collections.defaultdict(list)
errors = collections.Counter()
for r in runs:
    for level in r["bench"]["levels"]:
        key = (r["label"], level["concurrency"])
        dec[key].append(level["decode_tokens_per_s"])
        e2e[key].append(level["e2e_tokens_per_s"])
        errors[r["label"]] += level["errors"]
mean = lambda v: sum(v) / len(v)
ratio = lambda a, b: a / b if b > 0 else float("nan")
levels = sorted({c for (_, c) in dec})
print("| concurrent | serve decode tok/s | launch decode tok/s | launch / serve "
      "| serve e2e tok/s | launch e2e tok/s | launch vs its 1 |")
print("|---:|---:|---:|---:|---:|---:|---:|")
one = mean(dec[("launch", levels[0])]) if ("launch", levels[0]) in dec else 0
for c in levels:
    s, l = mean(dec[("serve", c)]), mean(dec[("launch", c)])
    print(f"| {c} | {s:.2f} | {l:.2f} | {ratio(l, s):.3f} | {mean(e2e[('serve', c)]):.2f} "
          f"| {mean(e2e[('launch', c)]):.2f} | {ratio(l, one):.2f}x |")
print(f"errors: serve {errors['serve']}, launch {errors['launch']}; rounds {len(runs) // 2}")
# launch / serve of each round (same minutes), to show the spread.
by_round = collections.defaultdict(dict)
for r in runs:
    for level in r["bench"]["levels"]:
        by_round[r["round"]][(r["label"], level["concurrency"])] = level["decode_tokens_per_s"]
for rnd in sorted(by_round):
    d = by_round[rnd]
    cells = ", ".join(f"{c}: {ratio(d.get(('launch', c), 0), d.get(('serve', c), 0)):.3f}"
                      for c in levels)
    print(f"round {rnd} launch / serve decode: {cells}")
PY
cat "$work/results.jsonl"
