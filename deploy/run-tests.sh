#!/usr/bin/env bash
# Sets up (Debian packages) and runs moeflow's whole test suite with Bazel,
# offline, then the GPU device kit's dry run (deploy/gpu-kit.sh --dry-run).
# This is the README's test command and what .ci/run calls.
# Extra arguments are passed to `bazel test` (e.g. --config=nocuda).
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/install-deps.sh

jobs=$(nproc 2>/dev/null || echo 2)
log=$(mktemp -t moeflow-test.XXXXXX)
trap 'rm -f "$log"' EXIT

echo "run-tests: bazel test //... (offline, ${jobs} jobs)"
set +e
bazel test //... --jobs="$jobs" --test_summary=short "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

# One closing line in the plain "N passed, N failed, N skipped" form.
passed=$(grep -cE '^//[^ ]+ +(\(cached\) )?PASSED' "$log" || true)
failed=$(grep -cE '^//[^ ]+ +(\(cached\) )?(FAILED|TIMEOUT|NO STATUS|FLAKY|INCOMPLETE)' "$log" || true)
skipped=$(grep -cE '^//[^ ]+ +SKIPPED' "$log" || true)
if [[ $rc -ne 0 && $failed -eq 0 ]]; then failed=1; fi  # build failure: no test line

# The GPU device kit's dry run (deploy/gpukit/README.md): builds the kit and
# checks it without a GPU. Needs nvcc; skipped with --config=nocuda.
nvcc="${CUDA_PATH:-/usr/local/cuda}/bin/nvcc"
if [[ " $* " == *" --config=nocuda "* || ! -x "$nvcc" ]]; then
  echo "run-tests: gpu-kit dry run SKIPPED (no $nvcc or --config=nocuda)"
  skipped=$((skipped + 1))
else
  kit_dir=$(mktemp -d -t moeflow-gpukit.XXXXXX)
  echo "run-tests: deploy/gpu-kit.sh --dry-run"
  kit_start=$(date +%s)
  if deploy/gpu-kit.sh --dry-run --out "$kit_dir/kit"; then
    echo "run-tests: gpu-kit dry run PASSED in $(( $(date +%s) - kit_start )) s"
    passed=$((passed + 1))
  else
    echo "run-tests: gpu-kit dry run FAILED after $(( $(date +%s) - kit_start )) s"
    failed=$((failed + 1))
    rc=1
  fi
  rm -rf "$kit_dir"
fi
echo "tests: ${passed} passed, ${failed} failed, ${skipped} skipped"
exit $rc
