// kernels/cpu/matmul dispatch: activation quantization per ISA, the vec_dot and GEMM
// tables per (type, ISA, layout), and the row-parallel MatmulQuantized loops.
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "base/check.h"
#include "formats/quant_blocks.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/cpu/panel_layout.h"
#include "kernels/cpu/quants.h"

namespace moeflow {
namespace {

void QuantizeRowScalar(GgmlType at, const float* xr, int64_t cols, uint8_t* o);

// The trailing Σqs of each Q8_0 block of an activation row (|Σ| ≤ 32·127).
void WriteQ8_0BlockSums(uint8_t* row, int64_t nb) {
  const BlockQ8_0* b = reinterpret_cast<const BlockQ8_0*>(row);
  int16_t* sums = reinterpret_cast<int16_t*>(row + nb * static_cast<int64_t>(sizeof(BlockQ8_0)));
  for (int64_t i = 0; i < nb; ++i) {
    int s = 0;
    for (int j = 0; j < kQK; ++j) s += b[i].qs[j];
    int16_t v = static_cast<int16_t>(s);
    std::memcpy(sums + i, &v, 2);
  }
}

VecDotFn SimdVecDot(const SimdVecDots& t, GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return t.f32;
    case GgmlType::kF16:
      return t.f16;
    case GgmlType::kBF16:
      return t.bf16;
    case GgmlType::kQ8_0:
      return t.q8_0;
    case GgmlType::kQ5_0:
      return t.q5_0;
    case GgmlType::kQ4_K:
      return t.q4_k;
    case GgmlType::kQ6_K:
      return t.q6_k;
    default:
      return nullptr;
  }
}

// The ISAs whose kernels include the AVX-512 VNNI tables.
bool IsAvx512Vnni(CpuIsa isa) {
  return isa == CpuIsa::kAvx512 || isa == CpuIsa::kAvx512Bf16 || isa == CpuIsa::kAmx;
}

// The SIMD tables of `isa` (nullptr for kScalar): kAvx512Bf16 and kAmx
// run the AVX-512 VNNI ones for everything but their own special cases.
const SimdVecDots* SimdTable(CpuIsa isa) {
  if (isa == CpuIsa::kAvx2) return &Avx2VecDots();
  if (isa == CpuIsa::kAvx512NoVnni) return &Avx512NoVnniVecDots();
  if (IsAvx512Vnni(isa)) return &Avx512VecDots();
  return nullptr;
}

// The unpacked kernels of `isa` for `type` (IQ types, Q2_K, Q3_K, Q5_K;
// none for kScalar).
UnpackedKernels UnpackedFor(CpuIsa isa, GgmlType type) {
  if (isa == CpuIsa::kAvx2) return Avx2UnpackedKernels(type);
  if (isa == CpuIsa::kAvx512NoVnni) return Avx512NoVnniUnpackedKernels(type);
  if (IsAvx512Vnni(isa)) return Avx512UnpackedKernels(type);
  return {};
}

// kAmx's Q8_0 GEMM: AMX tiles from 16 tokens on (a 16-token tile column is
// the AMX unit of work), the AVX-512 VNNI tiles below that (decode).
constexpr int64_t kAmxMinTokens = 16;

void GemmQ8_0Amx(int64_t cols, const uint8_t* w, int64_t w_row_bytes, int64_t n_rows,
                 const uint8_t* act, int64_t act_row_bytes, int64_t n_tokens, float* y,
                 int64_t y_stride) {
  if (n_tokens < kAmxMinTokens) {
    Avx512VecDots().gemm_q8_0(cols, w, w_row_bytes, n_rows, act, act_row_bytes, n_tokens, y,
                              y_stride);
  } else {
    AmxGemmQ8_0(cols, w, w_row_bytes, n_rows, act, act_row_bytes, n_tokens, y, y_stride);
  }
}

}  // namespace

bool MatmulSupports(GgmlType weight_type) { return ScalarVecDot(weight_type) != nullptr; }

GgmlType ActivationType(GgmlType weight_type) {
  switch (weight_type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return weight_type;
    case GgmlType::kQ4_0:
    case GgmlType::kQ5_0:
    case GgmlType::kQ8_0:
    case GgmlType::kIQ4_NL:
      return GgmlType::kQ8_0;
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_1:
      return GgmlType::kQ8_1;
    case GgmlType::kQ2_K:
    case GgmlType::kQ3_K:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
    case GgmlType::kIQ2_XXS:
    case GgmlType::kIQ2_XS:
    case GgmlType::kIQ2_S:
    case GgmlType::kIQ3_XXS:
    case GgmlType::kIQ3_S:
    case GgmlType::kIQ1_S:
    case GgmlType::kIQ1_M:
    case GgmlType::kIQ4_XS:
      return GgmlType::kQ8_K;
    default:
      MOEFLOW_CHECK(false && "type not supported by Matmul");
  }
  return GgmlType::kF32;
}

int64_t ActivationRowBytes(GgmlType weight_type, int64_t cols) {
  const GgmlTypeTraits& t = Traits(ActivationType(weight_type));
  MOEFLOW_CHECK(cols % t.block_size == 0);
  const int64_t nb = cols / t.block_size;
  // Q8_0 rows carry one int16 Σqs per block after the blocks (matmul.h).
  return nb * t.type_size + (t.type == GgmlType::kQ8_0 ? nb * 2 : 0);
}

void QuantizeActivations(GgmlType weight_type, const float* x, int64_t n_rows, int64_t cols,
                         int64_t x_stride, uint8_t* out) {
  QuantizeActivations(weight_type, x, n_rows, cols, x_stride, out, SelectedIsa());
}

void QuantizeActivations(GgmlType weight_type, const float* x, int64_t n_rows, int64_t cols,
                         int64_t x_stride, uint8_t* out, CpuIsa isa) {
  const GgmlType at = ActivationType(weight_type);
  const int64_t row_bytes = ActivationRowBytes(weight_type, cols);
  // The SIMD quantizer of `isa`, if it has one for this activation type.
  const SimdVecDots* simd = SimdTable(isa);
  QuantizeRowFn fast = nullptr;
  if (simd != nullptr) {
    fast = at == GgmlType::kQ8_0   ? simd->quantize_q8_0
           : at == GgmlType::kQ8_1 ? simd->quantize_q8_1
           : at == GgmlType::kQ8_K ? simd->quantize_q8_k
                                   : nullptr;
  }
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* xr = x + r * x_stride;
    uint8_t* o = out + r * row_bytes;
    if (fast != nullptr) {
      fast(xr, o, cols);
    } else {
      QuantizeRowScalar(at, xr, cols, o);
    }
    if (at == GgmlType::kQ8_0) WriteQ8_0BlockSums(o, cols / kQK);
  }
}

namespace {

void QuantizeRowScalar(GgmlType at, const float* xr, int64_t cols, uint8_t* o) {
  switch (at) {
    case GgmlType::kF32:
      std::memcpy(o, xr, static_cast<size_t>(cols) * sizeof(float));
      break;
    case GgmlType::kF16: {
      uint16_t* h = reinterpret_cast<uint16_t*>(o);
      for (int64_t i = 0; i < cols; ++i) h[i] = Fp32ToFp16(xr[i]);
      break;
    }
    case GgmlType::kBF16: {
      uint16_t* h = reinterpret_cast<uint16_t*>(o);
      for (int64_t i = 0; i < cols; ++i) h[i] = Fp32ToBf16(xr[i]);
      break;
    }
    case GgmlType::kQ8_0:
      QuantizeRowQ8_0(xr, reinterpret_cast<BlockQ8_0*>(o), cols);
      break;
    case GgmlType::kQ8_1:
      QuantizeRowQ8_1(xr, reinterpret_cast<BlockQ8_1*>(o), cols);
      break;
    case GgmlType::kQ8_K:
      QuantizeRowQ8_K(xr, reinterpret_cast<BlockQ8_K*>(o), cols);
      break;
    default:
      MOEFLOW_CHECK(false);
  }
}

}  // namespace

VecDotFn GetVecDot(GgmlType weight_type, CpuIsa isa) {
  VecDotFn fn = nullptr;
  if ((isa == CpuIsa::kAvx512Bf16 || isa == CpuIsa::kAmx) && weight_type == GgmlType::kBF16) {
    fn = Avx512Bf16VecDots().bf16;
  }
  const SimdVecDots* simd = SimdTable(isa);
  if (fn == nullptr && simd != nullptr) fn = SimdVecDot(*simd, weight_type);
  if (fn == nullptr) fn = UnpackedFor(isa, weight_type).dot;
  if (fn == nullptr) fn = ScalarVecDot(weight_type);
  MOEFLOW_CHECK(fn != nullptr);
  return fn;
}

MatmulWeight MatmulWeight::Slice(int64_t first, int64_t n) const {
  MOEFLOW_CHECK(first >= 0 && first + n <= rows);
  MOEFLOW_CHECK(layout != WeightLayout::kPanel16 ||
                (first % kPanelRows == 0 && n % kPanelRows == 0));
  MatmulWeight s = *this;
  s.data = data + first * row_bytes;
  s.rows = n;
  return s;
}

VecDotFn F16ViaBf16VecDot() {
  return CpuSupportsIsa(CpuIsa::kAvx512Bf16) ? Avx512Bf16VecDots().f16_via_bf16 : nullptr;
}

namespace {

// Rows per unit of the row-parallel loops: the decode tile height (8), or
// whole panels. A panel GEMM call prepares its tokens' activations first
// (per-block scales and zero-point sums), so prefill calls get at most ~8
// units per thread (each of them a run of panels) rather than one per panel.
int64_t UnitRows(const MatmulWeight& w, int64_t n_tokens, int n_threads) {
  if (w.layout != WeightLayout::kPanel16) return 8;
  if (n_tokens <= 2) return kPanelRows;
  const int64_t panels = (w.rows + kPanelRows - 1) / kPanelRows;
  const int64_t per_unit = std::max<int64_t>(1, panels / (8 * std::max(n_threads, 1)));
  return per_unit * kPanelRows;
}

}  // namespace

GemmFn SimdGemm(const MatmulWeight& w, CpuIsa isa) {
  const GgmlType type = w.type;
  if (isa == CpuIsa::kAmx && type == GgmlType::kQ8_0 && w.layout == WeightLayout::kGgml) {
    return GemmQ8_0Amx;
  }
  if (w.layout == WeightLayout::kPanel16) {
    // Only the VNNI builds have panel tiles; elsewhere the scalar path
    // reads the panels back.
    if (!IsAvx512Vnni(isa)) return nullptr;
    const PanelGemms& p = Avx512PanelGemms();
    switch (type) {
      case GgmlType::kQ8_0:
        return p.q8_0;
      case GgmlType::kQ5_0:
        return p.q5_0;
      case GgmlType::kQ4_K:
        return p.q4_k;
      case GgmlType::kQ5_K:
        return p.q5_k;
      case GgmlType::kQ6_K:
        return p.q6_k;
      default:
        return nullptr;
    }
  }
  const SimdVecDots* simd = SimdTable(isa);
  if (simd == nullptr) return nullptr;
  const SimdVecDots& t = *simd;
  if (w.layout == WeightLayout::kQ5_0Pairs) return t.gemm_q5_0_pairs;
  switch (type) {
    case GgmlType::kQ8_0:
      return t.gemm_q8_0;
    case GgmlType::kQ5_0:
      return t.gemm_q5_0;
    case GgmlType::kQ4_K:
      return t.gemm_q4_k;
    case GgmlType::kQ6_K:
      return t.gemm_q6_k;
    default:
      return UnpackedFor(isa, type).gemm;
  }
}

void MatmulQuantized(const MatmulWeight& w, const uint8_t* act, int64_t n_act_rows, float* y,
                     int64_t y_stride, CpuIsa isa, ThreadPool* pool) {
  if (const GemmFn gemm = SimdGemm(w, isa)) {
    const int64_t act_bytes = ActivationRowBytes(w.type, w.cols);
    // Rows in multiples of the tile height per thread.
    const int64_t unit = UnitRows(w, n_act_rows, pool == nullptr ? 1 : pool->size());
    const int64_t units = (w.rows + unit - 1) / unit;
    auto job = [&](int64_t u0, int64_t u1, int /*thread*/) {
      const int64_t r0 = u0 * unit, r1 = std::min(w.rows, u1 * unit);
      gemm(w.cols, w.row(r0), w.row_bytes, r1 - r0, act, act_bytes, n_act_rows, y + r0, y_stride);
    };
    if (pool == nullptr) {
      job(0, units, 0);
    } else {
      pool->ParallelFor(units, job);
    }
    return;
  }
  // A repacked weight gets here on the scalar path (or an ISA without tiles
  // for its layout): its rows are read back into GGUF blocks (a per-thread
  // buffer of one row, or of one panel) for the scalar reference's vec_dot.
  const bool repacked = w.layout != WeightLayout::kGgml;
  const VecDotFn dot = repacked ? ScalarVecDot(w.type) : GetVecDot(w.type, isa);
  MOEFLOW_CHECK(dot != nullptr);
  const int64_t act_bytes = ActivationRowBytes(w.type, w.cols);
  const int64_t cols = w.cols;
  const int64_t group = w.layout == WeightLayout::kPanel16 ? kPanelRows : 1;
  // Activation rows in tiles, so that a tile stays in L2 while every weight
  // row of the thread's range streams past it once.
  constexpr int64_t kTokenTile = 32;
  auto groups_job = [&](int64_t g0, int64_t g1, int /*thread*/) {
    thread_local std::vector<uint8_t> unpacked;
    if (repacked && static_cast<int64_t>(unpacked.size()) < group * w.row_bytes) {
      unpacked.resize(static_cast<size_t>(group * w.row_bytes));
    }
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t r0 = g * group, r1 = std::min(w.rows, r0 + group);
      const uint8_t* wg = w.row(r0);
      if (repacked) {
        UnpackRowsToGgml(w, wg, unpacked.data(), group);
        wg = unpacked.data();
      }
      for (int64_t t0 = 0; t0 < n_act_rows; t0 += kTokenTile) {
        const int64_t t1 = std::min(n_act_rows, t0 + kTokenTile);
        for (int64_t r = r0; r < r1; ++r) {
          const uint8_t* wr = wg + (r - r0) * w.row_bytes;
          for (int64_t t = t0; t < t1; ++t) {
            y[t * y_stride + r] = dot(cols, wr, act + t * act_bytes);
          }
        }
      }
    }
  };
  const int64_t n_groups = (w.rows + group - 1) / group;
  if (pool == nullptr) {
    groups_job(0, n_groups, 0);
  } else {
    pool->ParallelFor(n_groups, groups_job);
  }
}

void MatmulQuantizedBatch(const MatmulJob* jobs, int64_t n_jobs, CpuIsa isa, ThreadPool* pool) {
  bool all_simd = true;
  for (int64_t j = 0; j < n_jobs; ++j) all_simd = all_simd && SimdGemm(jobs[j].w, isa) != nullptr;
  constexpr int64_t kMaxJobs = 128;
  if (!all_simd || pool == nullptr || pool->size() == 1 || n_jobs > kMaxJobs) {
    for (int64_t j = 0; j < n_jobs; ++j) {
      const MatmulJob& b = jobs[j];
      MatmulQuantized(b.w, b.act, b.n_act_rows, b.y, b.y_stride, isa, pool);
    }
    return;
  }
  // Units of the tile height, numbered across all jobs.
  int64_t first_unit[kMaxJobs + 1];
  first_unit[0] = 0;
  for (int64_t j = 0; j < n_jobs; ++j) {
    const int64_t unit = UnitRows(jobs[j].w, jobs[j].n_act_rows, pool->size());
    first_unit[j + 1] = first_unit[j] + (jobs[j].w.rows + unit - 1) / unit;
  }
  auto job = [&](int64_t u0, int64_t u1, int /*thread*/) {
    int64_t j = 0;
    while (first_unit[j + 1] <= u0) ++j;
    for (; j < n_jobs && first_unit[j] < u1; ++j) {
      const MatmulJob& b = jobs[j];
      const int64_t a0 = std::max(u0, first_unit[j]) - first_unit[j];
      const int64_t a1 = std::min(u1, first_unit[j + 1]) - first_unit[j];
      const int64_t unit = UnitRows(b.w, b.n_act_rows, pool->size());
      const int64_t r0 = a0 * unit, r1 = std::min(b.w.rows, a1 * unit);
      if (r0 >= r1) continue;
      SimdGemm(b.w, isa)(b.w.cols, b.w.row(r0), b.w.row_bytes, r1 - r0, b.act,
                         ActivationRowBytes(b.w.type, b.w.cols), b.n_act_rows, b.y + r0,
                         b.y_stride);
    }
  };
  pool->ParallelFor(first_unit[n_jobs], job);
}

void Matmul(const MatmulWeight& w, const float* x, int64_t n_rows, int64_t x_stride, float* y,
            int64_t y_stride, uint8_t* act_scratch, CpuIsa isa, ThreadPool* pool) {
  QuantizeActivations(w.type, x, n_rows, w.cols, x_stride, act_scratch);
  MatmulQuantized(w, act_scratch, n_rows, y, y_stride, isa, pool);
}

}  // namespace moeflow
