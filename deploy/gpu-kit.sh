#!/usr/bin/env bash
# Builds the GPU device kit: one folder with everything a machine with a CUDA
# GPU needs to validate moeflow's CUDA backend in one short run, with nothing
# to install there (deploy/gpukit/README.md).
#
#   deploy/gpu-kit.sh --out DIR [--dry-run] [--max-mib 64] [--no-fixtures] [--pack]
#
# DIR/bin    the CUDA test and benchmark binaries, moeflow, moeflowctl,
#            gpu_worker, cpu_expert_worker (bazel --config=gpukit: moeflow's
#            own libraries and the CUDA runtime linked in, DT_RPATH
#            $ORIGIN/../lib)
# DIR/lib    every other library they load (Abseil, gRPC, protobuf, UCX and
#            its cma module in lib/ucx, hwloc, yaml-cpp, GoogleTest, libstdc++,
#            ...) but the C library and the device's CUDA (libcuda, cuBLAS, NCCL)
# DIR/data   the quantized llama.cpp fixtures the tests read, a small random model
# DIR/driver.py (+ gpukit_launch.py, gpukit_machine.py, gpukit_report.py), manifest.json,
#            README.md
#
# --dry-run (CI): then checks the kit without a GPU: its size, that every
# binary's libraries resolve to the kit, the C library or CUDA's own (ldd with
# LD_LIBRARY_PATH cleared), and runs `driver.py --dry-run` (every GPU check
# skipped "no device", the CPU sides for real) — as root in a mount namespace
# where the system's copies of the carried libraries, the UCX modules and the
# shared CUDA runtime are hidden (bound to /dev/null), so that nothing can be
# found outside the kit. Exits non-zero if anything fails.
# --no-fixtures leaves out data/tests (the driver then reads the fixtures from
# the repository checkout the kit sits in). --pack also writes DIR.tar.xz.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

out=""
dry_run=0
max_mib=64
fixtures=1
pack=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="${2:?--out needs a folder}"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    --dry-run) dry_run=1; shift ;;
    --max-mib) max_mib="${2:?}"; shift 2 ;;
    --no-fixtures) fixtures=0; shift ;;
    --pack) pack=1; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu-kit: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$out" ]] || { echo "gpu-kit: --out DIR is required" >&2; exit 2; }
nvcc="${CUDA_PATH:-/usr/local/cuda}/bin/nvcc"
if [[ ! -x "$nvcc" ]]; then
  echo "gpu-kit: $nvcc not found: the kit's CUDA binaries need the CUDA toolkit" >&2
  exit 3
fi
start=$(date +%s)

TESTS=(dequant_test layer_ops_test mla_attention_test weight_only_gemm_test cublas_gemm_test
       cuda_graph_test nccl_all_reduce_test)
TARGETS=()
for t in "${TESTS[@]}"; do TARGETS+=("//tests/kernels/cuda:$t"); done
TARGETS+=(//tests/gpu_worker:cuda_backend_test //kernels/cuda:cuda_kernel_bench //cli:moeflow
          //cli:moeflowctl //gpu_worker //cpu_expert_worker)

jobs=$(nproc 2>/dev/null || echo 2)
echo "gpu-kit: bazel build --config=gpukit (${#TARGETS[@]} targets)"
bazel build --config=gpukit --jobs="$jobs" "${TARGETS[@]}"
bin=$(bazel info --config=gpukit bazel-bin 2>/dev/null)

rm -rf "$out"
mkdir -p "$out/bin" "$out/lib/ucx" "$out/data/models"
out=$(cd "$out" && pwd)
for t in "${TARGETS[@]}"; do
  path="${t#//}"
  [[ "$path" == *:* ]] || path="$path:${path##*/}"  # //gpu_worker = //gpu_worker:gpu_worker
  path="${path/://}"
  cp "$bin/$path" "$out/bin/"
done
chmod u+w "$out"/bin/*
strip --strip-all "$out"/bin/*

# UCX's shared-memory module (cma; the InfiniBand ones need libraries a
# workstation lacks); UCX_MODULE_DIR points the driver's children at it.
ucx_modules=$(pkg-config --variable=libdir ucx 2>/dev/null || echo /usr/lib/x86_64-linux-gnu)/ucx
cp -L "$ucx_modules/libuct_cma.so.0" "$out/lib/ucx/"
python3 deploy/gpukit/kit_libs.py collect "$out"

# The fixtures cuda_backend_test reads, but the two f32 ones (37 MB: the driver
# finds them in the repository checkout around the kit, or leaves those two
# cases out and says so).
if [[ $fixtures -eq 1 ]]; then
  for f in tiny-v2/tiny-v2.q8_0.gguf tiny-v3/tiny-v3.q4_k_m.gguf; do
    mkdir -p "$out/data/tests/data/llamacpp/$(dirname $f)"
    cp "tests/data/llamacpp/$f" "$out/data/tests/data/llamacpp/$f"
  done
fi
"$out/bin/moeflow" mkmodel --preset tiny-v3 --type q4_k_m --seed 17 --threads 2 \
  --out "$out/data/models/random-tiny-v3.q4_k_m.gguf" >/dev/null
cp deploy/gpukit/driver.py deploy/gpukit/gpukit_*.py "$out/"
cp deploy/gpukit/README.md "$out/README.md"
chmod +x "$out/driver.py"
python3 deploy/gpukit/kit_libs.py manifest "$out"
python3 deploy/gpukit/kit_libs.py check "$out" "$max_mib"
if [[ $pack -eq 1 ]]; then
  tar -C "$(dirname "$out")" -cf - "$(basename "$out")" | xz -T0 -6 > "$out.tar.xz"
  echo "gpu-kit: packed $out.tar.xz ($(( $(stat -c %s "$out.tar.xz") / 1048576 )) MiB)"
fi
echo "gpu-kit: built $out in $(( $(date +%s) - start )) s; on a GPU machine:" \
  "python3 $(basename "$out")/driver.py --out OUT (ends within 480 s; deploy/gpukit/README.md)"
[[ $dry_run -eq 1 ]] || exit 0

# The dry run, with the system's copies of what the kit carries hidden.
report="$out.dry-run"
rm -rf "$report"
hidden=$(python3 deploy/gpukit/kit_libs.py hide "$out")
hidden+=$'\n'$(readlink -f "${CUDA_PATH:-/usr/local/cuda}"/lib64/libcudart.so.* 2>/dev/null | sort -u)
script='set -e
n=0
while read -r f; do
  [[ -n "$f" && -e "$f" ]] || continue
  mount --bind /dev/null "$f"
  [[ ! -s "$f" ]] || { echo "gpu-kit: could not hide $f" >&2; exit 1; }
  n=$((n + 1))
done <<< "$HIDDEN"
[[ -d "$UCX_DIR" ]] && mount -t tmpfs -o size=1m none "$UCX_DIR"
echo "gpu-kit: dry run with $n system libraries and $UCX_DIR hidden"
python3 deploy/gpukit/kit_libs.py check "$KIT" "$MAX_MIB"
exec python3 "$KIT/driver.py" --dry-run --out "$REPORT" --budget-s 420'
export HIDDEN="$hidden" UCX_DIR="$ucx_modules" KIT="$out" MAX_MIB="$max_mib" REPORT="$report"
if [[ $(id -u) -eq 0 ]] && unshare --mount --propagation private true 2>/dev/null; then
  unshare --mount --propagation private bash -c "$script"
else
  echo "gpu-kit: cannot hide the system libraries (needs root and unshare --mount);" \
    "dry run with them in place (the ldd check above still holds)"
  python3 "$out/driver.py" --dry-run --out "$report" --budget-s 420
fi
echo "gpu-kit: dry run passed in $(( $(date +%s) - start )) s; report $report/gpu-kit-report.md"
