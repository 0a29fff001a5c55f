#!/usr/bin/env bash
# The README's first command: installs what moeflow needs (Debian packages),
# builds `moeflow`, makes a small random-weight DeepSeek-V3-style model with
# the project's own generator, inspects it, generates text with the engine and
# benchmarks it.
# Usage: deploy/quickstart.sh [--preset tiny-v3] [--type q4_k_m]
set -euo pipefail
cd "$(dirname "$0")/.."

preset=tiny-v3
type=q4_k_m
while [[ $# -gt 0 ]]; do
  case "$1" in
    --preset) preset="$2"; shift 2 ;;
    --type) type="$2"; shift 2 ;;
    *) echo "quickstart: unknown argument '$1' (use --preset P --type T)" >&2; exit 2 ;;
  esac
done

deploy/install-deps.sh
echo "quickstart: building moeflow (bazel, offline)"
bazel build //:moeflow
moeflow=bazel-bin/cli/moeflow
mkdir -p out/models
model="out/models/${preset}.${type}.gguf"

echo "quickstart: $moeflow mkmodel --preset $preset --type $type --out $model"
"$moeflow" mkmodel --preset "$preset" --type "$type" --out "$model" --force

echo
echo "quickstart: $moeflow inspect --notensors $model"
"$moeflow" inspect --notensors "$model"

echo
echo "quickstart: $moeflow generate (greedy, 48 tokens; random weights, so the text is noise)"
"$moeflow" generate --model "$model" --prompt "Write a haiku about mixture-of-experts models." \
  --chat --max-tokens 48 --temperature 0 --threads 2
echo
echo
echo "quickstart: $moeflow bench -p 64 -n 32 -r 2 (prefill / decode tokens per second)"
"$moeflow" bench -m "$model" -p 64 -n 32 -r 2 -t 2
echo
echo "quickstart: done. Next: moeflow chat --model $model, moeflow serve --model $model --port 8080,"
echo "  or a bigger model: moeflow mkmodel --preset v2-lite --layers 8 --type q4_k_m --out out/models/v2l8.gguf"
