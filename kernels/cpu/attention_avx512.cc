// The AVX-512 variant of MlaAttention (see attention.h for the tiling and
// why a head's result does not depend on the tile it falls in).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cpu/attention.h"

namespace moeflow {
namespace internal {
namespace {

constexpr int kHeadTile = 4;   // heads per score / context tile
constexpr int kRowTile = 4;    // cached rows per score tile
constexpr int kColChunks = 4;  // 16-float chunks per context tile (64 columns)

// scores[h * stride + j] = (q[h] · k[j]) · scale for h < H, j < J. Every
// dot product: one 16-lane accumulator, FMA over the columns in order, then
// _mm512_reduce_add_ps — the same whatever H and J.
template <int H, int J>
inline void ScoreTile(const float* q, int64_t q_stride, const float* const* k, int64_t row_dim,
                      float scale, float* scores, int64_t stride) {
  __m512 acc[H][J];
  for (int h = 0; h < H; ++h) {
    for (int j = 0; j < J; ++j) acc[h][j] = _mm512_setzero_ps();
  }
  for (int64_t c = 0; c < row_dim; c += 16) {
    __m512 kv[J];
    for (int j = 0; j < J; ++j) kv[j] = _mm512_loadu_ps(k[j] + c);
    for (int h = 0; h < H; ++h) {
      const __m512 qv = _mm512_loadu_ps(q + h * q_stride + c);
      for (int j = 0; j < J; ++j) acc[h][j] = _mm512_fmadd_ps(qv, kv[j], acc[h][j]);
    }
  }
  for (int h = 0; h < H; ++h) {
    for (int j = 0; j < J; ++j) scores[h * stride + j] = _mm512_reduce_add_ps(acc[h][j]) * scale;
  }
}

template <int H>
void ScoresForHeads(const float* q, int64_t q_stride, const float* const* rows, int64_t n_rows,
                    int64_t row_dim, float scale, float* scores) {
  int64_t j = 0;
  for (; j + kRowTile <= n_rows; j += kRowTile) {
    ScoreTile<H, kRowTile>(q, q_stride, rows + j, row_dim, scale, scores + j, n_rows);
  }
  for (; j < n_rows; ++j)
    ScoreTile<H, 1>(q, q_stride, rows + j, row_dim, scale, scores + j, n_rows);
}

// out[h * out_stride + c0 + 16 i + l] = Σ_j p[h * n_rows + j] · v[j][c0 + 16 i + l]
// for h < H, i < C: each column's sum runs over j ascending (FMA), the same
// whatever H and C.
template <int H, int C>
inline void ContextTile(const float* p, const float* const* v, int64_t n_rows, int64_t c0,
                        float* out, int64_t out_stride) {
  __m512 acc[H][C];
  for (int h = 0; h < H; ++h) {
    for (int i = 0; i < C; ++i) acc[h][i] = _mm512_setzero_ps();
  }
  for (int64_t j = 0; j < n_rows; ++j) {
    __m512 vv[C];
    const float* vj = v[j] + c0;
    for (int i = 0; i < C; ++i) vv[i] = _mm512_loadu_ps(vj + 16 * i);
    for (int h = 0; h < H; ++h) {
      const __m512 ph = _mm512_set1_ps(p[h * n_rows + j]);
      for (int i = 0; i < C; ++i) acc[h][i] = _mm512_fmadd_ps(ph, vv[i], acc[h][i]);
    }
  }
  for (int h = 0; h < H; ++h) {
    for (int i = 0; i < C; ++i) _mm512_storeu_ps(out + h * out_stride + c0 + 16 * i, acc[h][i]);
  }
}

template <int H>
void ContextForHeads(const float* p, const float* const* rows, int64_t n_rows, int64_t v_dim,
                     float* out, int64_t out_stride) {
  int64_t c = 0;
  for (; c + 16 * kColChunks <= v_dim; c += 16 * kColChunks) {
    ContextTile<H, kColChunks>(p, rows, n_rows, c, out, out_stride);
  }
  for (; c < v_dim; c += 16) ContextTile<H, 1>(p, rows, n_rows, c, out, out_stride);
}

}  // namespace

void MlaScoresAvx512(const MlaAttentionShape& shape, const float* q, int64_t q_stride,
                     const float* const* rows, int64_t n_rows, float* scores) {
  for (int64_t h = 0; h < shape.n_heads; h += kHeadTile) {
    const float* qh = q + h * q_stride;
    float* sh = scores + h * n_rows;
    const int64_t r = shape.row_dim;
    switch (std::min<int64_t>(kHeadTile, shape.n_heads - h)) {
      case 4:
        ScoresForHeads<4>(qh, q_stride, rows, n_rows, r, shape.scale, sh);
        break;
      case 3:
        ScoresForHeads<3>(qh, q_stride, rows, n_rows, r, shape.scale, sh);
        break;
      case 2:
        ScoresForHeads<2>(qh, q_stride, rows, n_rows, r, shape.scale, sh);
        break;
      default:
        ScoresForHeads<1>(qh, q_stride, rows, n_rows, r, shape.scale, sh);
        break;
    }
  }
}

void MlaContextAvx512(const MlaAttentionShape& shape, const float* p, const float* const* rows,
                      int64_t n_rows, float* out, int64_t out_stride) {
  for (int64_t h = 0; h < shape.n_heads; h += kHeadTile) {
    const float* ph = p + h * n_rows;
    float* oh = out + h * out_stride;
    const int64_t v = shape.v_dim;
    switch (std::min<int64_t>(kHeadTile, shape.n_heads - h)) {
      case 4:
        ContextForHeads<4>(ph, rows, n_rows, v, oh, out_stride);
        break;
      case 3:
        ContextForHeads<3>(ph, rows, n_rows, v, oh, out_stride);
        break;
      case 2:
        ContextForHeads<2>(ph, rows, n_rows, v, oh, out_stride);
        break;
      default:
        ContextForHeads<1>(ph, rows, n_rows, v, oh, out_stride);
        break;
    }
  }
}

}  // namespace internal
}  // namespace moeflow
