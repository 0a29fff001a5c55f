#!/bin/bash
# Builds the GGUF fuzz target with clang's libFuzzer + ASan + UBSan and runs
# it for a bounded time from the checked-in seeds and regressions. Fails if
# the fuzzer finds a crash, leak or UB, and says where the input is.
#
# Under `bazel test //tests/model:gguf_libfuzzer_test` it runs in the runfiles
# tree; by hand, run it from the workspace root:
#   tests/model/run_libfuzzer.sh            # 60 s, -seed=1
#   GGUF_FUZZ_SECONDS=600 tests/model/run_libfuzzer.sh
# Needs clang++ and libFuzzer: Debian 12 packages `clang` and
# `libclang-rt-14-dev` (deploy/install-deps.sh installs both).
set -euo pipefail

ROOT="${PWD}"
if [[ -n "${TEST_SRCDIR:-}" ]]; then
  ROOT="${TEST_SRCDIR}/${TEST_WORKSPACE:-moeflow}"
fi
CXX="${CLANGXX:-clang++}"
SECONDS_TO_RUN="${GGUF_FUZZ_SECONDS:-60}"
WORK="${TEST_TMPDIR:-$(mktemp -d)}/gguf_libfuzzer"
ARTIFACTS="${TEST_UNDECLARED_OUTPUTS_DIR:-${WORK}/artifacts}"
mkdir -p "${WORK}/corpus" "${ARTIFACTS}"

if ! command -v "${CXX}" >/dev/null 2>&1; then
  echo "FAIL: ${CXX} not found. The libFuzzer test needs clang and libFuzzer:" >&2
  echo "  apt-get install clang libclang-rt-14-dev   (see deploy/install-deps.sh)" >&2
  exit 1
fi

# Pick up the clang that was found (e.g. clang++-14) for libFuzzer lookup.
if ! echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' |
    "${CXX}" -x c++ -fsanitize=fuzzer -o "${WORK}/probe" - >"${WORK}/probe.log" 2>&1; then
  cat "${WORK}/probe.log" >&2
  echo "FAIL: ${CXX} cannot link -fsanitize=fuzzer: libFuzzer is missing." >&2
  echo "  apt-get install libclang-rt-14-dev   (matching your clang version; see deploy/install-deps.sh)" >&2
  exit 1
fi

ABSL_LIBS=(-labsl_status -labsl_statusor -labsl_strings -labsl_strings_internal
  -labsl_str_format_internal -labsl_raw_hash_set -labsl_hash -labsl_city
  -labsl_low_level_hash -labsl_throw_delegate -labsl_int128 -labsl_raw_logging_internal
  -labsl_base -labsl_spinlock_wait -labsl_cord -labsl_cord_internal -labsl_cordz_info
  -labsl_cordz_functions -labsl_cordz_handle -labsl_synchronization -labsl_stacktrace
  -labsl_symbolize -labsl_debugging_internal -labsl_demangle_internal -labsl_malloc_internal
  -labsl_time -labsl_time_zone -labsl_exponential_biased -labsl_bad_optional_access
  -labsl_bad_variant_access -labsl_strerror -labsl_graphcycles_internal -labsl_log_severity)

echo "Building the fuzzer with ${CXX} ..."
"${CXX}" -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"${ROOT}" \
  "${ROOT}/tests/model/gguf_fuzz.cc" "${ROOT}"/model/gguf{,_metadata,_shard,_split,_value,_writer}.cc \
  "${ROOT}/formats/ggml_types.cc" \
  "${ABSL_LIBS[@]}" -lpthread -o "${WORK}/gguf_fuzzer"

cp "${ROOT}"/tests/data/gguf_fuzz/seeds/*.gguf "${WORK}/corpus/"
cp "${ROOT}"/tests/data/gguf_fuzz/regressions/* "${WORK}/corpus/" 2>/dev/null || true
rm -f "${WORK}/corpus/README.md" "${WORK}/corpus/BUILD.bazel"

echo "Fuzzing for ${SECONDS_TO_RUN} s (seed 1) ..."
set +e
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "${WORK}/gguf_fuzzer" -max_total_time="${SECONDS_TO_RUN}" -seed=1 -max_len=16384 \
  -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
  -dict="${ROOT}/tests/model/gguf_fuzz.dict" \
  -artifact_prefix="${ARTIFACTS}/" "${WORK}/corpus" >"${ARTIFACTS}/fuzz.log" 2>&1
status=$?
set -e
grep -E '^(INFO: Seed|Done|stat::)' "${ARTIFACTS}/fuzz.log" || true
if [[ ${status} -ne 0 ]]; then
  tail -n 80 "${ARTIFACTS}/fuzz.log"
  echo "FAIL: the fuzzer exited with ${status}. Crashing inputs:" >&2
  ls -l "${ARTIFACTS}"/crash-* "${ARTIFACTS}"/leak-* "${ARTIFACTS}"/timeout-* \
    "${ARTIFACTS}"/oom-* >&2 2>/dev/null || true
  if [[ -n "${TEST_UNDECLARED_OUTPUTS_DIR:-}" ]]; then
    echo "(under bazel they are kept in bazel-testlogs/tests/model/gguf_libfuzzer_test/test.outputs/)" >&2
  fi
  echo "Copy each into tests/data/gguf_fuzz/regressions/ (the replay test keeps it fixed)," >&2
  echo "reproduce with: bazel run //tests/model:gguf_fuzz_regression_test -- /absolute/path/to/FILE" >&2
  exit 1
fi
echo "PASS: no crash in ${SECONDS_TO_RUN} s"
