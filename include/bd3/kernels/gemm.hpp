#pragma once
// Linear layers y[M, N] = x[M, K] W[N, K]^T + b for the rows of a decode call (the block,
// for one or a batch of sequences). A general GEMM packs W on every call, which costs as
// much as the product when M is small:
//  - linear_small_m (M <= 8): each row of W is streamed once and dotted with all M rows of
//    x (kept in L1), so the layer runs at the speed of reading the weights;
//  - linear_tiled (any M): 2 x 4 tiles of (x rows, W rows) keep 8 accumulators busy, so a
//    W row loaded into L1 serves every row of a 64-row panel of x: compute-bound where
//    linear_small_m is load-bound (bench_kernels BM_linear: ~50-60 GFLOP/s on one thread
//    from M = 16, as Eigen's GEMM, which packs W and gives no such row independence).
// Both compute every output element with the same operations in the same order (one
// lane-wise FMA chain over k, then a horizontal add, then the tail): a row's result does
// not depend on which other rows share the call, so a batch of sequences samples exactly
// what each sequence samples alone.
// Packed weights (linear_packed, the model's DecodeWeights::f32_packed and bf16): W copied
// once into tiles of packed_cols output columns, each tile K rows of packed_cols weights
// (k-major). A tile is one contiguous run, and each x value, broadcast, serves a whole
// row of it: per 64-byte line of W, 2 loads and R broadcasts instead of 2 loads and
// 2R loads of x, so more of the W stream is in flight (the load queue holds every load
// until it retires, behind the oldest W miss): on `small`'s 49 decode matrices, 4 rows,
// 2 threads, 0.94-1.02 of the machine's read bandwidth against 0.78-0.89 row by row.
// Every output is one FMA chain over k in order, then the bias, whatever the row count.
// Scalar tails call std::fma, not `s += a * b`: whether a compiler fuses that depends on
// it and its flags (GCC fuses in its GNU modes, not in ISO ones; clang within an
// expression), and the bit-for-bit claims above must not.
// W may be float or bfloat16 (kernels/bfloat16.hpp): a bfloat16 weight is widened to float
// exactly before the same FMA, so the bfloat16 kernels give bit for bit what the float
// kernels give on the widened weights, from half the bytes.
#include <omp.h>
#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <bd3/detail/split_with_stealing.hpp>

#include "bfloat16.hpp"
#include "simd.hpp"

namespace bd3::kernels {

inline constexpr int small_m_max_rows = 8;

// Packed weights (see the top of this file): tiles of packed_cols output columns, each K
// rows of packed_cols weights, zeros past N.
inline constexpr int64_t packed_cols = 16;
inline int64_t packed_size(int64_t N, int64_t K) {
  return (N + packed_cols - 1) / packed_cols * packed_cols * K;
}
inline int64_t packed_index(int64_t j, int64_t k, int64_t K) {
  return ((j / packed_cols) * K + k) * packed_cols + j % packed_cols;
}

inline float widen(float w) {
  return w;
}
inline float widen(bfloat16 w) {
  return to_float(w);
}

// Weight types the decode kernels stream.
template <class W>
concept DecodeWeight = std::same_as<W, float> || std::same_as<W, bfloat16>;

namespace scalar {
template <class T, class Wt = T>
void linear_small_m(const T* x, int64_t M, int64_t K, const Wt* W, const T* b, int64_t N, T* y) {
  for (int64_t j = 0; j < N; ++j)
    for (int64_t r = 0; r < M; ++r) {
      T s = b ? b[j] : T(0);
      for (int64_t k = 0; k < K; ++k) s = std::fma(x[r * K + k], T(widen(W[j * K + k])), s);
      y[r * N + j] = s;
    }
}

template <class T, class Wt = T>
void linear_packed(const T* x, int64_t M, int64_t K, const Wt* P, const T* b, int64_t N, T* y) {
  for (int64_t j = 0; j < N; ++j)
    for (int64_t r = 0; r < M; ++r) {
      T s = T(0);
      for (int64_t k = 0; k < K; ++k)
        s = std::fma(x[r * K + k], T(widen(P[packed_index(j, k, K)])), s);
      y[r * N + j] = s + (b ? b[j] : T(0));
    }
}
}  // namespace scalar

// P[packed_size(N, K)] = W[N, K] packed (bfloat16: each weight rounded to nearest even).
template <DecodeWeight Wt>
void pack_weights(const float* W, int64_t N, int64_t K, Wt* P) {
  const int64_t tiles = (N + packed_cols - 1) / packed_cols;
#pragma omp parallel for schedule(static) if (N * K > (int64_t(1) << 20))
  for (int64_t t = 0; t < tiles; ++t)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t c = 0; c < packed_cols; ++c) {
        const int64_t j = t * packed_cols + c;
        const float w = j < N ? W[j * K + k] : 0.0f;
        if constexpr (std::is_same_v<Wt, float>)
          P[(t * K + k) * packed_cols + c] = w;
        else
          P[(t * K + k) * packed_cols + c] = to_bfloat16(w);
      }
}

namespace simd {
namespace detail {
// How far ahead (in bytes) dot_rows asks for W: the hardware prefetcher alone leaves the
// FMA loop waiting on memory. On the `small` output layer (768 x 50258, 154 MB, 2 threads,
// W on 4 KiB pages; bench_kernels BM_linear): 4 rows 25.0 -> 26.5 GB/s, 8 rows 17.4 ->
// 21.1; a scan of distances put the best at 1 KiB for 4 rows and 2 KiB for 8, farther
// being slower. (Streaming two W rows at once instead, for more FMA chains, was slower from
// memory: 25 -> 15 GB/s for 4 rows.) The same distance serves bfloat16 weights: 2 and 4
// times farther measured even on the same layer. With AVX-512 a line is one load, so the
// same lead in time is more bytes: on a Granite Rapids (small's 49 decode matrices, 4 rows,
// 2 threads, paired with a read probe) 1 KiB read at 0.80-0.82 of the probe, 2 KiB
// 0.91-0.92, 4 KiB 0.95.
using batch = xsimd::batch<float>;
template <int R>
inline constexpr int64_t prefetch_bytes = batch::size >= 16 ? 4096
                                          : R <= 4          ? 1024
                                                            : 2048;

// The prefetches ask for L2 (prefetcht1), not L1 only (prefetchnta): a Granite Rapids core
// reaches memory through many more L2 than L1 misses in flight, and prefetchnta held both
// decode kernels there to 0.42-0.54 of the read probe against 0.93-0.96 with prefetcht1
// or prefetcht2 (0.74-0.76 with no prefetch at all); on a Zen 4 the hints measure the
// same.
inline constexpr int prefetch_locality = 2;

// The packed kernel's distance. With AVX-512 a 64-byte line of a tile is one load and 4
// FMAs for 4 rows, half the AVX2 kernel's time per line, so the same distance in time is
// twice as many bytes; measured on a Zen 4 (small's 49 decode matrices, 4 rows, 2 threads,
// each pass paired with a read-bandwidth probe): fraction of the probe's
// bandwidth 0.78-0.80 at 1 KiB, 0.83-0.85 at 4 KiB (2, 3, 6, 8 and 16 KiB lower) when the
// probe read 43 GB/s; all within 0.92-0.96 when it read 33. The T0-T2 hints were no
// better than NTA there; on a Granite Rapids 4 KiB with prefetcht1 read at 0.93-0.95 of
// the probe (prefetchnta 0.42-0.44, 1 KiB with prefetcht0 0.88).
inline constexpr int64_t packed_prefetch_bytes = batch::size >= 16 ? 4096 : 1024;

// A batch of weights as floats. bfloat16 is widened by a shift of the 16-bit lanes; with
// AVX2 or AVX-512 in one widening load and a shift (vpmovzxwd + vpslld), else lane by lane.
inline batch load_weights(const float* w) {
  return batch::load_unaligned(w);
}
inline batch load_weights(const bfloat16* w) {
#if defined(__AVX512F__)
  if constexpr (batch::size == 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    return batch(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  }
#elif defined(__AVX2__)  // (exclusive: outside a template a discarded branch still compiles)
  if constexpr (batch::size == 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
    return batch(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
  }
#endif
  alignas(64) float wide[batch::size];
  for (std::size_t i = 0; i < batch::size; ++i) wide[i] = to_float(w[i]);
  return batch::load_aligned(wide);
}

// Calls f.template operator()<R>() with R = rows (1 to small_m_max_rows) as a constant.
template <class F>
void with_row_count(int64_t rows, F&& f) {
  static_assert(small_m_max_rows == 8, "with_row_count: one case per row count");
  switch (rows) {
    case 1:
      return f.template operator()<1>();
    case 2:
      return f.template operator()<2>();
    case 3:
      return f.template operator()<3>();
    case 4:
      return f.template operator()<4>();
    case 5:
      return f.template operator()<5>();
    case 6:
      return f.template operator()<6>();
    case 7:
      return f.template operator()<7>();
    default:
      return f.template operator()<8>();
  }
}

// Rows of x handled together, as a compile-time count so the accumulators stay in registers.
template <int R, class Wt>
void dot_rows(const float* x, int64_t K, const Wt* w, float* out) {
  constexpr int64_t lanes = batch::size;
  constexpr int64_t per_line = 64 / int64_t(sizeof(Wt));  // weights per 64-byte line
  static_assert(per_line % lanes == 0, "dot_rows: a cache line holds whole batches");
  batch acc[R];
  for (int r = 0; r < R; ++r) acc[r] = batch(0.0f);
  int64_t k = 0;
  for (; k + lanes <= K; k += lanes) {
    // One request per 64-byte line. The address is made as an integer: near the end of W
    // it lies past the array (a prefetch never faults; pointer arithmetic there is UB).
    if (k % per_line == 0)
      __builtin_prefetch(
          reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(w + k) + prefetch_bytes<R>), 0,
          prefetch_locality);
    const batch wv = load_weights(w + k);
    for (int r = 0; r < R; ++r)
      acc[r] = simd::fma(batch::load_unaligned(x + r * K + k), wv, acc[r]);
  }
  for (int r = 0; r < R; ++r) {
    float s = xsimd::hadd(acc[r]);
    for (int64_t kk = k; kk < K; ++kk) s = std::fma(x[r * K + kk], widen(w[kk]), s);
    out[r] = s;
  }
}

template <int R, class Wt>
void linear_rows(const float* x, int64_t K, const Wt* W, const float* b, int64_t N, float* y,
                 int64_t ldy) {
  // (Two rows of W per step, for more FMA chains, measure slower: 36 vs 29 ms per NFE on
  // "small", 31 vs 25 ms with huge pages; memory-bound rows gain nothing from more chains. With bfloat16 weights too: 1 row 3.0-3.5 -> 4.4-5.4 ms on
  // the `small` output layer.)
#pragma omp parallel for schedule(static) if (N * K > 65536)
  for (int64_t j = 0; j < N; ++j) {
    float o[R];
    dot_rows<R, Wt>(x, K, W + j * K, o);
    for (int r = 0; r < R; ++r) y[r * ldy + j] = o[r] + (b ? b[j] : 0.0f);
  }
}
// Output tile [R, C]: rows x[0..R) against W rows w[0..C), both with row stride K.
template <int R, int C, class Wt>
void dot_tile(const float* x, int64_t K, const Wt* w, const float* b, float* y, int64_t ldy) {
  constexpr int64_t lanes = batch::size;
  batch acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = batch(0.0f);
  int64_t k = 0;
  for (; k + lanes <= K; k += lanes) {
    batch wv[C];
    for (int c = 0; c < C; ++c) wv[c] = load_weights(w + c * K + k);
    for (int r = 0; r < R; ++r) {
      const batch xv = batch::load_unaligned(x + r * K + k);
      for (int c = 0; c < C; ++c) acc[r][c] = simd::fma(xv, wv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      float s = xsimd::hadd(acc[r][c]);
      for (int64_t kk = k; kk < K; ++kk) s = std::fma(x[r * K + kk], widen(w[c * K + kk]), s);
      y[r * ldy + c] = s + (b ? b[c] : 0.0f);
    }
}

// Tiles of the shape linear_tiled uses (2 x 4 measured faster than 4 x 3 here: 50 against
// 45 GFLOP/s on one thread), and its row and column remainders.
inline constexpr int64_t tile_rows = 2, tile_cols = 4;

template <int R, class Wt>
void dot_tile_cols(const float* x, int64_t K, const Wt* w, const float* b, float* y, int64_t ldy,
                   int cols) {
  static_assert(tile_cols == 4, "dot_tile_cols: one case per column count");
  switch (cols) {
    case 1:
      dot_tile<R, 1, Wt>(x, K, w, b, y, ldy);
      break;
    case 2:
      dot_tile<R, 2, Wt>(x, K, w, b, y, ldy);
      break;
    case 3:
      dot_tile<R, 3, Wt>(x, K, w, b, y, ldy);
      break;
    default:
      dot_tile<R, 4, Wt>(x, K, w, b, y, ldy);
      break;
  }
}

template <class Wt>
void dot_tile_any(const float* x, int64_t K, const Wt* w, const float* b, float* y, int64_t ldy,
                  int rows, int cols) {
  static_assert(tile_rows == 2, "dot_tile_any: one case per row count");
  if (rows == 1)
    dot_tile_cols<1, Wt>(x, K, w, b, y, ldy, cols);
  else
    dot_tile_cols<2, Wt>(x, K, w, b, y, ldy, cols);
}
}  // namespace detail

template <DecodeWeight Wt>
void linear_small_m(const float* x, int64_t M, int64_t K, const Wt* W, const float* b, int64_t N,
                    float* y) {
  for (int64_t r0 = 0; r0 < M; r0 += small_m_max_rows) {
    const int64_t rows = std::min<int64_t>(small_m_max_rows, M - r0);
    const float* xr = x + r0 * K;
    float* yr = y + r0 * N;
    detail::with_row_count(rows, [&]<int R> { detail::linear_rows<R, Wt>(xr, K, W, b, N, yr, N); });
  }
}
// Any M. Threads split W's rows. Each thread walks x in panels of 64 rows and, inside a
// panel, reuses each group of tile_cols W rows (in L1) for every tile_rows rows of x:
// 8 accumulators (the FMA latency times its two pipes), 6 loads per 8 FMAs. (Panels sized
// to L1, 16 KiB of x, measured slower for K = 1024: 53 against 62 GFLOP/s.)
template <DecodeWeight Wt>
void linear_tiled(const float* x, int64_t M, int64_t K, const Wt* W, const float* b, int64_t N,
                  float* y) {
  using detail::tile_cols;
  using detail::tile_rows;
  constexpr int64_t panel_rows = 64;
  const int64_t groups = (N + tile_cols - 1) / tile_cols;
#pragma omp parallel if (M * N * K > (int64_t(1) << 20))
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t g0 = groups * t / nt, g1 = groups * (t + 1) / nt;
    for (int64_t p0 = 0; p0 < M; p0 += panel_rows) {
      const int64_t p1 = std::min(M, p0 + panel_rows);
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t j = g * tile_cols;
        const int cols = int(std::min(tile_cols, N - j));
        const float* bj = b ? b + j : nullptr;
        for (int64_t r = p0; r < p1; r += tile_rows)
          detail::dot_tile_any(x + r * K, K, W + j * K, bj, y + r * N + j, N,
                               int(std::min(tile_rows, p1 - r)), cols);
      }
    }
  }
}

// The decode kernel: few rows stream W, more rows use tiles (same numbers either way).
template <DecodeWeight Wt>
void linear_few_rows(const float* x, int64_t M, int64_t K, const Wt* W, const float* b, int64_t N,
                     float* y) {
  if (M <= small_m_max_rows)
    linear_small_m(x, M, K, W, b, N, y);
  else
    linear_tiled(x, M, K, W, b, N, y);
}

// What linear_packed applies to each output after the bias: nothing, or gelu_tanh (the
// MLP's first layer in decode calls: the activation computed from the accumulators, on
// every thread, instead of in a pass of its own on one; the same function on the same
// values, so the same bits as linear_packed and then gelu_tanh).
enum class Epilogue { none, gelu_tanh };

namespace detail {
// Rows x[0..R) (row stride K) against one packed tile, columns [c0, c0 + C * lanes) of it:
// R x C accumulators, one FMA chain over k each. y[r * ldy + c] = Ep(the sums + b[c]) (b
// may be null): the tile's outputs, written as vectors.
template <int R, int C, class Wt, Epilogue Ep = Epilogue::none>
void packed_rows(const float* x, int64_t K, const Wt* tile, int64_t c0, const float* b, float* y,
                 int64_t ldy) {
  constexpr int64_t lanes = batch::size;
  // One prefetch per 64-byte line of the tile, on the pass that reads it from memory.
  constexpr int64_t k_per_line = 64 / (packed_cols * int64_t(sizeof(Wt)));
  static_assert(k_per_line >= 1, "packed_rows: a tile row fits in a cache line");
  batch acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = batch(0.0f);
  for (int64_t k = 0; k < K; ++k) {
    const Wt* wk = tile + k * packed_cols + c0;
    if (c0 == 0 && k % k_per_line == 0)
      __builtin_prefetch(
          reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(wk) + packed_prefetch_bytes), 0,
          prefetch_locality);
    batch w[C];
    for (int c = 0; c < C; ++c) w[c] = load_weights(wk + c * lanes);
    for (int r = 0; r < R; ++r) {
      const batch xv(x[r * K + k]);
      for (int c = 0; c < C; ++c) acc[r][c] = simd::fma(xv, w[c], acc[r][c]);
    }
  }
  for (int c = 0; c < C; ++c) {
    const batch bias = b ? batch::load_unaligned(b + c0 + c * lanes) : batch(0.0f);
    for (int r = 0; r < R; ++r) {
      batch out = acc[r][c] + bias;
      if constexpr (Ep == Epilogue::gelu_tanh) out = gelu_tanh(out);
      out.store_unaligned(y + r * ldy + c0 + c * lanes);
    }
  }
}

// All packed_cols columns of a tile for R rows, C batches at a time: at most 8 accumulators
// (16 vector registers hold them, the weights and the broadcast).
template <int R, class Wt, Epilogue Ep = Epilogue::none>
void packed_tile(const float* x, int64_t K, const Wt* tile, const float* b, float* y, int64_t ldy) {
  constexpr int64_t per_tile = packed_cols / int64_t(batch::size);
  static_assert(per_tile >= 1 && packed_cols % int64_t(batch::size) == 0,
                "packed_tile: a tile row holds whole batches");
  constexpr int64_t C = std::min<int64_t>(per_tile, std::max(1, 8 / R));
  for (int64_t c0 = 0; c0 < packed_cols; c0 += C * int64_t(batch::size))
    packed_rows<R, int(C), Wt, Ep>(x, K, tile, c0, b, y, ldy);
}
}  // namespace detail

// y[M, N] = x[M, K] W^T + b with W packed (pack_weights). Each thread reads its own share
// of the tiles as one stream and then helps with the others' from their ends
// (detail::SplitWithStealing): a thread whose memory runs slower takes fewer tiles instead
// of keeping the other waiting at the barrier (perf of a small decode call: 11 % of the time
// in libomp's wait with a static split), without the restarted streams of a guided
// schedule. Each tile's sums are one thread's whatever the split, so the numbers do not
// depend on it. Up to small_m_max_rows rows read each tile
// once from memory; more rows go 4 at a time over the tile (then in L1 or L2), 6 loads
// per 8 FMAs. The row count's kernel is picked once, outside the loop, and a whole tile's
// outputs go from the accumulators (+ bias) straight into y; only the last, partial tile
// goes through a buffer. (Picking the kernel per tile and storing every tile through a
// buffer costs: the 49 matrices of a `small` decode call, 4 rows, read at 0.69-0.74 of a
// 52-55 GB/s read bandwidth that way against 0.80-0.83 this way. docs/performance.md.)
template <DecodeWeight Wt, Epilogue Ep = Epilogue::none>
void linear_packed(const float* x, int64_t M, int64_t K, const Wt* P, const float* b, int64_t N,
                   float* y) {
  if (M <= 0) return;  // (with_row_count would take 0 rows for 8)
  const int64_t tiles = (N + packed_cols - 1) / packed_cols;
  // Rows [r0, r0 + R) against tile t: straight into y when the tile is whole.
  auto tile_rows = [&]<int R>(int64_t t, int64_t r0) {
    const Wt* tile = P + t * K * packed_cols;
    const int64_t j0 = t * packed_cols, cols = std::min(packed_cols, N - j0);
    const float* bj = b ? b + j0 : nullptr;
    const float* xr = x + r0 * K;
    if (cols == packed_cols)
      return detail::packed_tile<R, Wt, Ep>(xr, K, tile, bj, y + r0 * N + j0, N);
    alignas(64) float out[R * packed_cols];
    detail::packed_tile<R, Wt>(xr, K, tile, nullptr, out, packed_cols);
    for (int64_t r = 0; r < R; ++r) {
      float* yr = y + (r0 + r) * N + j0;
      for (int64_t c = 0; c < cols; ++c) yr[c] = out[r * packed_cols + c] + (bj ? bj[c] : 0.0f);
      // j0 is a multiple of the lanes, so this splits the columns into vectors and a
      // scalar tail exactly where a gelu_tanh pass over the whole row would.
      if constexpr (Ep == Epilogue::gelu_tanh) gelu_tanh(yr, yr, cols);
    }
  };
  // Tiles t of one call, in the order that each thread's share is read.
  auto for_each_tile = [&](auto&& body) {
    if (M * N * K <= 65536) {
      for (int64_t t = 0; t < tiles; ++t) body(t);
      return;
    }
    bd3::detail::SplitWithStealing split(tiles, omp_get_max_threads());
#pragma omp parallel
    split.run(omp_get_thread_num(), body);
  };
  if (M <= small_m_max_rows)
    return detail::with_row_count(M, [&]<int R> {
      for_each_tile([&](int64_t t) { tile_rows.template operator()<R>(t, 0); });
    });
  for_each_tile([&](int64_t t) {
    int64_t r0 = 0;
    for (; r0 + 4 <= M; r0 += 4) tile_rows.template operator()<4>(t, r0);
    if (r0 < M)
      detail::with_row_count(M - r0, [&]<int R> { tile_rows.template operator()<R>(t, r0); });
  });
}

// linear_packed, then gelu_tanh on every output (Epilogue::gelu_tanh).
template <DecodeWeight Wt>
void linear_packed_gelu(const float* x, int64_t M, int64_t K, const Wt* P, const float* b,
                        int64_t N, float* y) {
  linear_packed<Wt, Epilogue::gelu_tanh>(x, M, K, P, b, N, y);
}
}  // namespace simd

}  // namespace bd3::kernels
