#pragma once
// y[M, N] = x[M, K] W[N, K]^T (+ b), all row-major, on one thread: the linear layers of
// the vectorized training forward (2,048 rows against each weight matrix). Eigen's GEMM
// (48 x 4 tiles) ran these shapes at 60-67 % of a Granite Rapids' FMA peak and its
// packing took another 8 % of the forward; this kernel is the classic blocked GEMM
// (docs/performance.md, "A GEMM of our own"):
//  - the x rows are packed per KC-deep slab into panels of MR = 12 rows, k-major (12
//    floats per k, broadcast one by one: an L1-resident micro-panel of 18 KiB);
//  - W is packed per (NC columns x KC) block into panels of NR = 32 columns, k-major (two
//    16-lane vectors per k, streamed from L2), by 16 x 16 register transposes;
//  - the micro-kernel keeps a 12 x 32 tile of y in 24 accumulators: per k, 2 loads, 12
//    broadcasts and 24 FMAs (92 % of the FMA peak when everything is in L1).
// Every output is, for each KC-slab of k in order, one FMA chain from zero, added to the
// output (the first slab's chain is added to the bias, or to zero): scalar::gemm_nt does
// the same operations in the same order, so the two agree bit for bit.
// simd::gemm also takes x^T, W[K, N] and accumulation (GemmOperands): the backward's
// dW += dY^T X and dX = dY W. AVX-512 only (has_gemm_nt); elsewhere the model and the
// backward keep Eigen's GEMM.
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace bd3::kernels {

// The blocking, shared by the kernel and its scalar twin (the slab depth decides the
// order of the sums). KC x NR x 4 bytes of W panel (48 KiB) per micro-kernel call come
// from L2; an NC x KC block of W (720 KiB) stays there; 12 x KC of x (18 KiB) stays in L1.
struct GemmBlocking {
  static constexpr int64_t rows = 12;          // MR: rows of x per micro-panel
  static constexpr int64_t cols = 32;          // NR: columns of W per micro-panel
  static constexpr int64_t depth = 384;        // KC: k per slab
  static constexpr int64_t block_cols = 480;   // NC: columns of W per packed block
  static constexpr int64_t block_rows = 1020;  // rows of x packed at once (85 panels)
};

// y[M, N] (row stride ldy) = sum_k x(i, k) w(j, k) (+ b[j], or + y when accumulating).
// x(i, k) is x[i * ldx + k], or x[k * ldx + i] when x_transposed; w(j, k) is
// w[j * ldw + k] (W[N, K] as a linear layer stores it), or w[k * ldw + j] when
// w_transposed (W[K, N]). The backward's products are the transposed forms:
// dW += dY^T X (x_transposed, w_transposed, accumulate) and dX = dY W (w_transposed).
struct GemmOperands {
  const float* x = nullptr;
  int64_t ldx = 0;
  bool x_transposed = false;
  const float* w = nullptr;
  int64_t ldw = 0;
  bool w_transposed = false;
  const float* b = nullptr;  // ignored when accumulating
  float* y = nullptr;
  int64_t ldy = 0;
  bool accumulate = false;
  float x_at(int64_t i, int64_t k) const { return x_transposed ? x[k * ldx + i] : x[i * ldx + k]; }
  float w_at(int64_t j, int64_t k) const { return w_transposed ? w[k * ldw + j] : w[j * ldw + k]; }
};

namespace scalar {
// The twin of simd::gemm (see there for the operands): the same FMA chains in the same order.
inline void gemm(const GemmOperands& o, int64_t M, int64_t K, int64_t N) {
  constexpr int64_t KC = GemmBlocking::depth;
  if (K <= 0 && o.accumulate) return;  // nothing to add (y keeps even the sign of a zero)
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      float& y = o.y[i * o.ldy + j];
      float out = o.accumulate ? y : 0.0f;
      for (int64_t k0 = 0; k0 < K || k0 == 0; k0 += KC) {
        float acc = 0;
        for (int64_t k = k0; k < std::min(K, k0 + KC); ++k)
          acc = std::fma(o.x_at(i, k), o.w_at(j, k), acc);
        out = acc + (k0 == 0 && !o.accumulate ? (o.b ? o.b[j] : 0.0f) : out);
      }
      y = out;
    }
}
inline void gemm_nt(const float* x, int64_t M, int64_t K, const float* W, const float* b, int64_t N,
                    float* y) {
  gemm({.x = x, .ldx = K, .w = W, .ldw = K, .b = b, .y = y, .ldy = N}, M, K, N);
}
}  // namespace scalar

namespace simd {
#if defined(__AVX512F__)
inline constexpr bool has_gemm_nt = true;

namespace detail {
// r[0..16) (16 floats each) -> r[k] = column k of the 16 x 16 block.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
    t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xDD);
    t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
    t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xDD);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xDD);
    r[4 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0x88);
    r[12 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0xDD);
  }
}

// `count` (<= 16) rows src[r * ld + k], k in [0, kc), into dst[k * ld_dst + r]; rows past
// count are zeros. Whole 16-deep runs of k go through a register transpose.
inline void pack_transposed(const float* src, int64_t ld, int count, int64_t kc, float* dst,
                            int64_t ld_dst, int store_lanes) {
  const __mmask16 mask = __mmask16((1u << store_lanes) - 1);
  int64_t k = 0;
  for (; k + 16 <= kc; k += 16) {
    __m512 r[16];
    for (int i = 0; i < 16; ++i)
      r[i] = i < count ? _mm512_loadu_ps(src + i * ld + k) : _mm512_setzero_ps();
    transpose16(r);
    for (int i = 0; i < 16; ++i) _mm512_mask_storeu_ps(dst + (k + i) * ld_dst, mask, r[i]);
  }
  for (; k < kc; ++k)
    for (int i = 0; i < store_lanes; ++i) dst[k * ld_dst + i] = i < count ? src[i * ld + k] : 0.0f;
}

// x rows [i0, i0 + m), k in [k0, k0 + kc) -> panels of 12 rows, k-major.
inline void pack_x(const GemmOperands& o, int64_t i0, int64_t m, int64_t k0, int64_t kc,
                   float* Xp) {
  constexpr int64_t MR = GemmBlocking::rows;
  for (int64_t p = 0; p * MR < m; ++p) {
    const int count = int(std::min(MR, m - p * MR));
    float* dst = Xp + p * kc * MR;
    if (!o.x_transposed) {
      pack_transposed(o.x + (i0 + p * MR) * o.ldx + k0, o.ldx, count, kc, dst, MR, int(MR));
      continue;
    }
    // x(i, k) = x[k * ldx + i]: the panel's rows are contiguous at each k already.
    const __mmask16 load = __mmask16((1u << count) - 1), store = __mmask16((1u << MR) - 1);
    for (int64_t k = 0; k < kc; ++k)
      _mm512_mask_storeu_ps(dst + k * MR, store,
                            _mm512_maskz_loadu_ps(load, o.x + (k0 + k) * o.ldx + i0 + p * MR));
  }
}

// w columns [j0, j0 + nc), k in [k0, k0 + kc) -> panels of 32 columns, k-major (two
// 16-column halves), zeros past nc.
inline void pack_w(const GemmOperands& o, int64_t j0, int64_t nc, int64_t k0, int64_t kc,
                   float* Wp) {
  constexpr int64_t NR = GemmBlocking::cols;
  for (int64_t p = 0; p * NR < nc; ++p)
    for (int64_t h = 0; h < NR; h += 16) {
      const int64_t c0 = p * NR + h;
      const int count = int(std::clamp<int64_t>(nc - c0, 0, 16));
      float* dst = Wp + p * kc * NR + h;
      if (o.w_transposed) {  // w(j, k) = w[k * ldw + j]: contiguous in j at each k
        const __mmask16 load = __mmask16((1u << count) - 1);
        for (int64_t k = 0; k < kc; ++k)
          _mm512_store_ps(dst + k * NR,
                          count > 0 ? _mm512_maskz_loadu_ps(load, o.w + (k0 + k) * o.ldw + j0 + c0)
                                    : _mm512_setzero_ps());
        continue;
      }
      // (no address past w is formed for a half that lies past nc)
      pack_transposed(count > 0 ? o.w + (j0 + c0) * o.ldw + k0 : o.w, o.ldw, count, kc, dst, NR,
                      16);
    }
}

// y tile [rows x cols] (at most 12 x 32, stride ldy) = acc + (first ? bias (or 0) : y).
inline void micro_kernel(const float* __restrict xp, const float* __restrict wp, int64_t kc,
                         float* y, int64_t ldy, const float* bias, bool first, int rows, int cols) {
  constexpr int MR = int(GemmBlocking::rows), NR = int(GemmBlocking::cols);
  __m512 acc[MR][2];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 w0 = _mm512_load_ps(wp + k * NR), w1 = _mm512_load_ps(wp + k * NR + 16);
    for (int r = 0; r < MR; ++r) {
      const __m512 xv = _mm512_set1_ps(xp[k * MR + r]);
      acc[r][0] = _mm512_fmadd_ps(xv, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(xv, w1, acc[r][1]);
    }
  }
  if (rows == MR && cols == NR) {
    const __m512 b0 = first && bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
    const __m512 b1 = first && bias ? _mm512_loadu_ps(bias + 16) : _mm512_setzero_ps();
    for (int r = 0; r < MR; ++r) {
      float* yr = y + r * ldy;
      const __m512 o0 = first ? b0 : _mm512_loadu_ps(yr);
      const __m512 o1 = first ? b1 : _mm512_loadu_ps(yr + 16);
      _mm512_storeu_ps(yr, _mm512_add_ps(acc[r][0], o0));
      _mm512_storeu_ps(yr + 16, _mm512_add_ps(acc[r][1], o1));
    }
    return;
  }
  alignas(64) float t[MR][NR];
  for (int r = 0; r < MR; ++r) {
    _mm512_store_ps(t[r], acc[r][0]);
    _mm512_store_ps(t[r] + 16, acc[r][1]);
  }
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      float& out = y[r * ldy + c];
      out = t[r][c] + (first ? (bias ? bias[c] : 0.0f) : out);
    }
}

// Packing buffers, one pair per thread, kept between calls (at most 1.5 MiB + 720 KiB).
struct GemmBuffers {
  std::vector<float> x, w;
  float* aligned(std::vector<float>& v, int64_t n) {
    if (int64_t(v.size()) < n + 16) v.resize(size_t(n + 16));
    auto p = reinterpret_cast<std::uintptr_t>(v.data());
    return reinterpret_cast<float*>((p + 63) & ~std::uintptr_t(63));
  }
};
inline GemmBuffers& gemm_buffers() {
  static thread_local GemmBuffers buffers;
  return buffers;
}
}  // namespace detail

// One thread's y = x w^T (+ b, or + y): see GemmOperands and the top of this file.
inline void gemm(const GemmOperands& o, int64_t M, int64_t K, int64_t N) {
  using B = GemmBlocking;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // no products: the bias (or zeros, or y itself), as the twin gives
    if (!o.accumulate)
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) o.y[i * o.ldy + j] = 0.0f + (o.b ? o.b[j] : 0.0f);
    return;
  }
  auto& buffers = detail::gemm_buffers();
  const int64_t kc_max = std::min(B::depth, K);
  float* Wp = buffers.aligned(buffers.w, B::block_cols * kc_max);
  float* Xp = buffers.aligned(buffers.x, B::block_rows * kc_max);
  for (int64_t i0 = 0; i0 < M; i0 += B::block_rows) {
    const int64_t m = std::min(B::block_rows, M - i0);
    for (int64_t k0 = 0; k0 < K; k0 += B::depth) {
      const int64_t kc = std::min(B::depth, K - k0);
      const bool first = k0 == 0 && !o.accumulate;
      detail::pack_x(o, i0, m, k0, kc, Xp);
      for (int64_t j0 = 0; j0 < N; j0 += B::block_cols) {
        const int64_t nc = std::min(B::block_cols, N - j0);
        detail::pack_w(o, j0, nc, k0, kc, Wp);
        for (int64_t p = 0; p * B::rows < m; ++p)
          for (int64_t q = 0; q * B::cols < nc; ++q) {
            const int64_t i = i0 + p * B::rows, j = j0 + q * B::cols;
            detail::micro_kernel(Xp + p * kc * B::rows, Wp + q * kc * B::cols, kc,
                                 o.y + i * o.ldy + j, o.ldy, o.b ? o.b + j : nullptr, first,
                                 int(std::min(B::rows, M - i)), int(std::min(B::cols, N - j)));
          }
      }
    }
  }
}

// y[M, N] = x[M, K] W[N, K]^T (+ b), all row-major and dense: the forward's linear layer.
inline void gemm_nt(const float* x, int64_t M, int64_t K, const float* W, const float* b, int64_t N,
                    float* y) {
  gemm({.x = x, .ldx = K, .w = W, .ldw = K, .b = b, .y = y, .ldy = N}, M, K, N);
}

#else
inline constexpr bool has_gemm_nt = false;
// Without AVX-512 the names stay callable (the twin, correct but slow); the model and the
// backward check has_gemm_nt and run Eigen's GEMM instead.
inline void gemm(const GemmOperands& o, int64_t M, int64_t K, int64_t N) {
  scalar::gemm(o, M, K, N);
}
inline void gemm_nt(const float* x, int64_t M, int64_t K, const float* W, const float* b, int64_t N,
                    float* y) {
  scalar::gemm_nt(x, M, K, W, b, N, y);
}
#endif
}  // namespace simd

}  // namespace bd3::kernels
