#!/usr/bin/env bash
# Sets up (Debian packages) and runs moeflow's whole test suite with Bazel,
# offline. This is the README's test command and what .ci/run calls.
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
echo "tests: ${passed} passed, ${failed} failed, ${skipped} skipped"
exit $rc
