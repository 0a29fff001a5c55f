#!/bin/bash
# kernel_bench's argument errors: a bad --gemv-mib or an unknown flag exits 2
# with the reason on stderr, before any benchmark runs.
# Usage: kernel_bench_args_test.sh PATH/TO/kernel_bench
set -u
BENCH="$1"
TMP="${TEST_TMPDIR:-$(mktemp -d)}"
FAILURES=0

fail() {
  echo "FAIL: $*" >&2
  FAILURES=$((FAILURES + 1))
}

# expect_usage_error DESCRIPTION STDERR_PATTERN ARGS...
expect_usage_error() {
  local what="$1" pattern="$2"
  shift 2
  "$BENCH" "$@" >"$TMP/out" 2>"$TMP/err"
  local rc=$?
  [[ $rc -eq 2 ]] || fail "$what: exit $rc, want 2"
  grep -q -- "$pattern" "$TMP/err" || fail "$what: no \"$pattern\" in stderr: $(cat "$TMP/err")"
  [[ ! -s "$TMP/out" ]] || fail "$what: printed results: $(head -3 "$TMP/out")"
}

expect_usage_error "--gemv-mib abc" "--gemv-mib: 'abc' is not a whole number of MiB in \[1, 65536\]" \
  --gemv-mib abc
expect_usage_error "--gemv-mib 0" "--gemv-mib: '0' is not a whole number" --gemv-mib 0
expect_usage_error "--gemv-mib 2x" "--gemv-mib: '2x' is not a whole number" --gemv-mib 2x
expect_usage_error "--gemv-mib 65537" "--gemv-mib: '65537' is not a whole number" --gemv-mib 65537
expect_usage_error "--types bogus" "--types: 'bogus' is not a quantized ggml type" --types q4_K,bogus
expect_usage_error "unknown flag" "usage: kernel_bench" --bogus

if [[ $FAILURES -ne 0 ]]; then
  echo "$FAILURES check(s) failed" >&2
  exit 1
fi
echo "kernel_bench argument checks passed"
