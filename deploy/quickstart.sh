#!/usr/bin/env bash
# The README's first command: installs what moeflow needs (Debian packages),
# builds `moeflow`, makes a small random-weight DeepSeek-V3-style model with
# the project's own generator and runs the engine on it.
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
echo "quickstart: $moeflow logits (one forward pass of 7 tokens)"
"$moeflow" logits --model "$model" --tokens 0,17,401,95,1200,33,7 --out out/logits.bin
python3 - out/logits.bin <<'PY'
import array, struct, sys
b = open(sys.argv[1], "rb").read()
_, _, n, vocab = struct.unpack("<4sIII", b[:16])
logits = array.array("f", b[16 + 4 * n:])
for t in range(n):
    row = logits[t * vocab:(t + 1) * vocab]
    top = sorted(range(vocab), key=row.__getitem__, reverse=True)[:3]
    print("  position %d: top-3 %s" % (t, ", ".join("%d (%.2f)" % (i, row[i]) for i in top)))
PY
