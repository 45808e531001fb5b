#pragma once
// Masked multi-head softmax attention, forward: the masks, the argument block and the
// kernels the attention backends run (policies/attention/*.hpp). Shapes: q [nq, ldq] (head h at
// columns [h*Dh, (h+1)*Dh)), k, v [nk, ld], out [nq, ldo]; the mask says which keys each query may
// see.
#include <bd3/kernels/kernels.hpp>

#include <omp.h>
#include <Eigen/Dense>
#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

namespace bd3 {

struct KeyRange {
  int begin = 0, end = 0;
  int size() const { return end - begin; }
};

// The training mask over the 2L sequence [xt, x0] (SPEC "Vectorized training forward").
// forward_train also applies it, with block_size = length, to the xt rows alone (L rows):
// there it allows every pair and key_ranges gives the one range [0, L).
struct TrainingMask {
  int length;      // L
  int block_size;  // B'
  bool allowed(int q, int k) const {
    const bool qx0 = q >= length, kx0 = k >= length;
    const int bq = (q % length) / block_size, bk = (k % length) / block_size;
    if (bq == bk && qx0 == kx0) return true;  // block-diagonal
    if (!qx0 && kx0 && bk < bq) return true;  // offset block-causal
    return qx0 && kx0 && bk <= bq;            // block-causal
  }
  // Query tiles never straddle the two halves.
  int half_boundary() const { return length; }
  // Key ranges covering every allowed key of the queries [q0, q1) (one half).
  int key_ranges(int q0, int q1, KeyRange* r) const {
    const int b0 = (q0 % length) / block_size, b1 = ((q1 - 1) % length) / block_size;
    if (q0 >= length) {
      r[0] = {length, length + (b1 + 1) * block_size};
      return 1;
    }
    int n = 0;
    r[n++] = {b0 * block_size, (b1 + 1) * block_size};
    if (b1 > 0) r[n++] = {length, length + b1 * block_size};
    return n;
  }
};

// Every query sees every key (decode of one block against its cache window).
struct FullMask {
  int n_keys;
  bool allowed(int, int) const { return true; }
  int half_boundary() const { return std::numeric_limits<int>::max(); }
  int key_ranges(int, int, KeyRange* r) const {
    r[0] = {0, n_keys};
    return 1;
  }
};

// Block-causal with a band: a query in block b sees blocks <= b, and only the keys
// k >= (b+1)B' - window (what the sliding-window KV cache computes). Queries and keys
// are the same sequence; `first_block` is the block index of row 0 (for offset calls).
struct BandedBlockCausalMask {
  int block_size;
  int window;
  bool allowed(int q, int k) const {
    const int bq = q / block_size, bk = k / block_size;
    return bk <= bq && k >= (bq + 1) * block_size - window;
  }
  int half_boundary() const { return std::numeric_limits<int>::max(); }
  int key_ranges(int q0, int q1, KeyRange* r) const {
    const int b0 = q0 / block_size, b1 = (q1 - 1) / block_size;
    r[0] = {std::max(0, (b0 + 1) * block_size - window), (b1 + 1) * block_size};
    return 1;
  }
};

// Decode: the query rows come in groups of one block; group g sees the keys ranges[g].
struct DecodeMask {
  int block_size;
  int groups;
  KeyRange ranges[2];
  bool allowed(int q, int k) const {
    const KeyRange& r = ranges[q / block_size];
    return k >= r.begin && k < r.end;
  }
  int half_boundary() const { return block_size; }
  int key_ranges(int q0, int, KeyRange* r) const {
    r[0] = ranges[q0 / block_size];
    return 1;
  }
};

template <class T>
struct AttentionArgs {
  const T* q = nullptr;
  int64_t ldq = 0;
  const T* k = nullptr;
  int64_t ldk = 0;
  const T* v = nullptr;
  int64_t ldv = 0;
  // Distance between heads in k and v: 0 = head_dim (the heads side by side in a row, as
  // the qkv projection writes them); the KV cache keeps each head's rows together instead
  // (head stride = its capacity x head_dim, ldk = ldv = head_dim).
  int64_t head_stride_k = 0, head_stride_v = 0;
  T* out = nullptr;
  int64_t ldo = 0;
  T* lse = nullptr;  // optional [n_heads, nq]: log-sum-exp of each query's scores (for backward)
  int nq = 0, nk = 0, n_heads = 0, head_dim = 0;

  const T* k_head(int h) const {
    return k + int64_t(h) * (head_stride_k ? head_stride_k : head_dim);
  }
  const T* v_head(int h) const {
    return v + int64_t(h) * (head_stride_v ? head_stride_v : head_dim);
  }
};

namespace detail {

// Query tiles: consecutive rows, at most `rows` long, never crossing the half boundary.
template <class Mask>
std::vector<KeyRange> query_tiles(const Mask& mask, int nq, int rows) {
  std::vector<KeyRange> tiles;
  for (int q0 = 0; q0 < nq;) {
    int limit = q0 < mask.half_boundary() ? std::min(nq, mask.half_boundary()) : nq;
    int q1 = std::min(q0 + rows, limit);
    tiles.push_back({q0, q1});
    q0 = q1;
  }
  return tiles;
}

template <class T, class Mask, bool UseSimd>
void attention_dense(const AttentionArgs<T>& a, const Mask& mask) {
  const int Dh = a.head_dim;
  const T scale = T(1) / std::sqrt(T(Dh));
  const T neg_inf = -std::numeric_limits<T>::infinity();
#pragma omp parallel
  {
    std::vector<T> s(a.nk);
#pragma omp for collapse(2) schedule(static)
    for (int h = 0; h < a.n_heads; ++h) {
      for (int i = 0; i < a.nq; ++i) {
        const T* qi = a.q + i * a.ldq + h * Dh;
        for (int j = 0; j < a.nk; ++j) {
          if (!mask.allowed(i, j)) {
            s[j] = neg_inf;
            continue;
          }
          const T* kj = a.k_head(h) + j * a.ldk;
          s[j] =
              (UseSimd ? kernels::dot<T>(qi, kj, Dh) : kernels::scalar::dot<T>(qi, kj, Dh)) * scale;
        }
        if (a.lse)
          a.lse[h * a.nq + i] = UseSimd ? kernels::logsumexp<T>(s.data(), a.nk)
                                        : kernels::scalar::logsumexp<T>(s.data(), a.nk);
        if (UseSimd)
          kernels::softmax<T>(s.data(), a.nk);
        else
          kernels::scalar::softmax<T>(s.data(), a.nk);
        T* oi = a.out + i * a.ldo + h * Dh;
        std::fill(oi, oi + Dh, T(0));
        for (int j = 0; j < a.nk; ++j) {
          if (s[j] == T(0)) continue;
          const T* vj = a.v_head(h) + j * a.ldv;
          if (UseSimd)
            kernels::axpy<T>(s[j], vj, oi, Dh);
          else
            kernels::scalar::axpy<T>(s[j], vj, oi, Dh);
        }
      }
    }
  }
}

// The keys query q may see, as at most two intervals, for the masks whose rows are such
// unions (the training mask: its own block of its half, plus the x0 blocks before it, or
// up to it for an x0 query). Returns the count, or -1 when the mask has no such form
// (then every entry is asked through mask.allowed).
template <class Mask>
int allowed_intervals(const Mask& mask, int q, KeyRange* out) {
  if constexpr (std::is_same_v<Mask, TrainingMask>) {
    const int L = mask.length, B = mask.block_size;
    if (q < L) {
      const int b = q / B;
      out[0] = {b * B, (b + 1) * B};  // block-diagonal (xt)
      out[1] = {L, L + b * B};        // offset block-causal (x0 blocks before b)
      return 2;
    }
    const int b = (q - L) / B;
    out[0] = {L, L + (b + 1) * B};  // block-causal (x0)
    return 1;
  } else {
    (void)mask, (void)q, (void)out;
    return -1;
  }
}

// A row of a tile whose columns are the key ranges[0, nr) side by side (nk in all), with
// its allowed keys as the intervals allowed[0, na): calls seen(c0, n) for every run of
// columns the query may see and unseen(c0, n) for every run it may not, left to right.
template <class Seen, class Unseen>
void for_each_column_run(const KeyRange* allowed, int na, const KeyRange* ranges, int nr, int nk,
                         Seen&& seen, Unseen&& unseen) {
  int done = 0;  // columns [0, done) are handed out
  for (int r = 0, col = 0; r < nr; col += ranges[r].size(), ++r)
    for (int k = 0; k < na; ++k) {
      const int lo = std::max(ranges[r].begin, allowed[k].begin);
      const int hi = std::min(ranges[r].end, allowed[k].end);
      if (hi <= lo) continue;
      const int c0 = col + lo - ranges[r].begin;
      if (c0 > done) unseen(done, c0 - done);
      seen(c0, hi - lo);
      done = c0 + hi - lo;
    }
  if (nk > done) unseen(done, nk - done);
}

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using StridedMap = Eigen::Map<const RowMat<T>, 0, Eigen::OuterStride<>>;
template <class T>
using StridedMapMut = Eigen::Map<RowMat<T>, 0, Eigen::OuterStride<>>;

// Only the tiles the mask needs, each as two small GEMMs (scores, then weighted values).
template <class T, class Mask>
void attention_block_sparse(const AttentionArgs<T>& a, const Mask& mask) {
  const int Dh = a.head_dim;
  const T scale = T(1) / std::sqrt(T(Dh));
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const auto tiles = query_tiles(mask, a.nq, 64);
  const int n_tiles = static_cast<int>(tiles.size());
#pragma omp parallel
  {
    RowMat<T> S, O;
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int h = 0; h < a.n_heads; ++h) {
      for (int t = 0; t < n_tiles; ++t) {
        const int q0 = tiles[t].begin, tq = tiles[t].size();
        KeyRange ranges[2];
        const int nr = mask.key_ranges(q0, q0 + tq, ranges);
        int nk = 0;
        for (int r = 0; r < nr; ++r) nk += ranges[r].size();
        StridedMap<T> Q(a.q + int64_t(q0) * a.ldq + h * Dh, tq, Dh, Eigen::OuterStride<>(a.ldq));
        S.resize(tq, nk);
        for (int r = 0, col = 0; r < nr; col += ranges[r].size(), ++r) {
          StridedMap<T> K(a.k_head(h) + int64_t(ranges[r].begin) * a.ldk, ranges[r].size(), Dh,
                          Eigen::OuterStride<>(a.ldk));
          // The scale on the left: Eigen folds it into the GEMM's alpha. On the right it
          // evaluated the product into a temporary and copied it, scaled, element by
          // element (the forward of `small` spent 3 % there; 2.3x slower on this shape).
          S.middleCols(col, ranges[r].size()).noalias() = scale * (Q * K.transpose());
        }
        for (int i = 0; i < tq; ++i) {
          T* row = S.row(i).data();
          KeyRange allowed[2];
          const int na = allowed_intervals(mask, q0 + i, allowed);
          if (na < 0) {
            for (int r = 0, col = 0; r < nr; col += ranges[r].size(), ++r)
              for (int j = 0; j < ranges[r].size(); ++j)
                if (!mask.allowed(q0 + i, ranges[r].begin + j)) row[col + j] = neg_inf;
          } else {
            for_each_column_run(
                allowed, na, ranges, nr, nk, [](int, int) {},
                [&](int c0, int n) { std::fill(row + c0, row + c0 + n, neg_inf); });
          }
          if (a.lse) a.lse[h * a.nq + q0 + i] = kernels::logsumexp<T>(row, nk);
          kernels::softmax<T>(row, nk);
        }
        O.setZero(tq, Dh);
        for (int r = 0, col = 0; r < nr; col += ranges[r].size(), ++r) {
          StridedMap<T> V(a.v_head(h) + int64_t(ranges[r].begin) * a.ldv, ranges[r].size(), Dh,
                          Eigen::OuterStride<>(a.ldv));
          O.noalias() += S.middleCols(col, ranges[r].size()) * V;
        }
        StridedMapMut<T>(a.out + int64_t(q0) * a.ldo + h * Dh, tq, Dh,
                         Eigen::OuterStride<>(a.ldo)) = O;
      }
    }
  }
}

// Rows per decode group up to which attention_decode replaces the tiles (whose GEMMs, for
// a few rows, spend about as long packing a head's keys and values as multiplying them).
// bench_model BM_DecodeAttention on the `small` cache, head-major (medians, ms): 4 rows
// 4.9 against 5.5, 16 rows 8.7 against 10.9, 32 rows 18.5 against 19.2.
inline constexpr int decode_kernel_max_rows = 32;

// How far ahead of its loads the decode attention asks for keys and values, and into which
// cache. Each line of keys costs a row's FMAs and its share of the reductions, so the
// out-of-order window alone holds too few lines in flight for memory. On a Zen 4 (small's 12
// layers, 4 rows, 2 threads, each pass alternating with a read-bandwidth probe; see
// docs/performance.md) it read 17-19 GB/s without prefetching when the probe read 49-54, and
// 26-27 GB/s with prefetcht1 or prefetcht2 4-16 KiB ahead; the hints that fill L1
// (prefetchnta, prefetcht0) were no faster than none, and 2 KiB was too short. (The linear
// kernels prefetch into L2 too, for the same reason: kernels/gemm.hpp.)
inline constexpr int64_t decode_prefetch_bytes = 4096;
template <class T>
inline void prefetch_to_l2(const T* p) {
  __builtin_prefetch(reinterpret_cast<const char*>(p) + decode_prefetch_bytes, 0, 2);
}

// Calls f(std::integral_constant<int, i>{}) for i in [0, N) as straight-line code, so the
// small arrays it indexes stay in registers (GCC turns a loop that fills or stores such an
// array into a memset or memcpy call, which costs as much as a short pass over the keys).
template <int N, class F>
inline void for_each_index(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    (f(std::integral_constant<int, I>{}), ...);
  }
  (std::make_integer_sequence<int, N>{});
}

// For NR rows r: out_r[0, NV lanes) = sum_j p_r[j] v[j][0, NV lanes), with p_r = p + r ldp
// and out_r = out + r ldo. Each value vector loaded serves every row; the NR x NV
// accumulators stay in registers for the whole pass. `prefetch`: on the pass that reads
// the values from memory.
template <int NR, int NV, class T>
void weighted_value_tile(const T* p, int64_t ldp, const T* v, int64_t ldv, int nk, T* out,
                         int64_t ldo, bool prefetch) {
  using batch = xsimd::batch<T>;
  constexpr int L = int(batch::size);
  batch acc[NR][NV];
  for_each_index<NR>([&](auto r) { for_each_index<NV>([&](auto c) { acc[r][c] = batch(T(0)); }); });
  for (int j = 0; j < nk; ++j) {
    const T* vj = v + int64_t(j) * ldv;
    if (prefetch) for_each_index<NV>([&](auto c) { prefetch_to_l2(vj + c * L); });
    batch vv[NV];
    for_each_index<NV>([&](auto c) { vv[c] = batch::load_unaligned(vj + c * L); });
    for_each_index<NR>([&](auto r) {
      const batch pr(p[r * ldp + j]);
      for_each_index<NV>([&](auto c) { acc[r][c] = kernels::simd::fma(pr, vv[c], acc[r][c]); });
    });
  }
  for_each_index<NR>([&](auto r) {
    for_each_index<NV>([&](auto c) { acc[r][c].store_unaligned(out + r * ldo + c * L); });
  });
}

// weighted_value_tile<NR, nv> for a run-time nv in [1, MaxNV].
template <int NR, int MaxNV, int NV = 1, class T>
void weighted_value_tile_n(int nv, const T* p, int64_t ldp, const T* v, int64_t ldv, int nk, T* out,
                           int64_t ldo, bool prefetch) {
  if constexpr (NV < MaxNV)
    if (nv > NV)
      return weighted_value_tile_n<NR, MaxNV, NV + 1>(nv, p, ldp, v, ldv, nk, out, ldo, prefetch);
  weighted_value_tile<NR, NV>(p, ldp, v, ldv, nk, out, ldo, prefetch);
}

// Vector registers of the target: AVX-512 has 32, AVX2 and SSE 16. Decides how many
// rows the decode tiles below take at once.
template <class T>
constexpr int vector_registers() {
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_base_of_v<xsimd::avx512f, typename xsimd::batch<T>::arch_type>) return 32;
#endif
  return 16;
}

// For rows r < nr: out_r[0, Dh) = sum_j p_r[j] v[j][0, Dh). With 32 registers, quads of
// rows take tiles of 4 rows x 4 vectors (small's 64-wide heads: each value line is read
// from memory once for a whole block of 4 rows, instead of once per pair of rows). Pairs
// of rows take 2 x 4, a last odd row 1 x 8, then the last Dh % lanes columns go one by
// one. Each output is one chain over j in key order, whatever the tiling, so results do
// not depend on the row count. The first tile of rows prefetches the values (later ones
// find them in L2).
template <class T>
void weighted_values(const T* p, int64_t ldp, int nr, const T* v, int64_t ldv, int nk, int Dh,
                     T* out, int64_t ldo) {
  constexpr int L = int(xsimd::batch<T>::size);
  const int dv = Dh - Dh % L;
  int r = 0;
  if constexpr (vector_registers<T>() >= 32)
    for (; r + 4 <= nr; r += 4)
      for (int d = 0; d < dv; d += 4 * L)
        weighted_value_tile_n<4, 4>(std::min(4, (dv - d) / L), p + r * ldp, ldp, v + d, ldv, nk,
                                    out + r * ldo + d, ldo, r == 0);
  for (; r + 2 <= nr; r += 2)
    for (int d = 0; d < dv; d += 4 * L)
      weighted_value_tile_n<2, 4>(std::min(4, (dv - d) / L), p + r * ldp, ldp, v + d, ldv, nk,
                                  out + r * ldo + d, ldo, r == 0);
  for (; r < nr; ++r)
    for (int d = 0; d < dv; d += 8 * L)
      weighted_value_tile_n<1, 8>(std::min(8, (dv - d) / L), p + r * ldp, ldp, v + d, ldv, nk,
                                  out + r * ldo + d, ldo, r == 0);
  for (r = 0; r < nr; ++r)
    for (int d = dv; d < Dh; ++d) {
      T s = T(0);
      for (int j = 0; j < nk; ++j) s = std::fma(p[r * ldp + j], v[int64_t(j) * ldv + d], s);
      out[r * ldo + d] = s;
    }
}

// s[r * lds + c] = scale * q_r . k_c for NQ rows q_r = q + r * ldq and NK keys
// k_c = k + c * ldk, NQ x NK = lanes: one accumulator per (row, key), each key vector
// loaded once for all NQ rows, the lanes accumulators reduced together (lane_sums), then
// the last Dh % lanes terms in scalar order. Every score is the same chain of operations
// whatever NQ and NK are, so the scores do not depend on the tiling (the scalar tails
// call std::fma, as in kernels/gemm.hpp, so no compiler flag decides whether they fuse).
// StaticDh: the head dimension as a constant (0: Dh at run time).
template <int NQ, int NK, int StaticDh, class T>
void scores_tile(const T* q, int64_t ldq, int head_dim, const T* k, int64_t ldk, T scale, T* s,
                 int64_t lds, bool prefetch) {
  using batch = xsimd::batch<T>;
  constexpr int L = int(batch::size);
  const int Dh = StaticDh ? StaticDh : head_dim;
  static_assert(NQ * NK == L, "scores_tile: one accumulator per lane of the reduction");
  const int dv = Dh - Dh % L;
  batch acc[L];
  for_each_index<L>([&](auto i) { acc[i] = batch(T(0)); });
  for (int d = 0; d < dv; d += L) {
    if (prefetch) for_each_index<NK>([&](auto c) { prefetch_to_l2(k + c * ldk + d); });
    batch kv[NK];
    for_each_index<NK>([&](auto c) { kv[c] = batch::load_unaligned(k + c * ldk + d); });
    for_each_index<NQ>([&](auto r) {
      const batch qv = batch::load_unaligned(q + r * ldq + d);
      for_each_index<NK>(
          [&](auto c) { acc[r * NK + c] = kernels::simd::fma(qv, kv[c], acc[r * NK + c]); });
    });
  }
  alignas(64) T sums[L];
  if (dv == Dh) {  // one vector multiply, then each row's NK scores in one copy
    (kernels::simd::lane_sums(acc) * batch(scale)).store_aligned(sums);
    for_each_index<NQ>([&](auto r) { std::copy_n(sums + r * NK, NK, s + r * lds); });
    return;
  }
  kernels::simd::lane_sums(acc).store_aligned(sums);
  for (int r = 0; r < NQ; ++r)
    for (int c = 0; c < NK; ++c) {
      T t = sums[r * NK + c];
      for (int d = dv; d < Dh; ++d) t = std::fma(q[r * ldq + d], k[c * ldk + d], t);
      s[r * lds + c] = t * scale;
    }
}

// s[r * nk + j] = scale * q_r . k_j for rows q_r = q + r * ldq (r < nq) and keys
// k_j = k + j * ldk (j < nk). A lanes-wide group of keys at a time (in L1 for every row),
// as scores_tile's of 4 rows x lanes/4 keys, then 2 x lanes/2, then 1 x lanes: the rows of
// a block share each key line read from memory (the first tile of rows prefetches it).
// Remainder: the last nk % lanes keys, one at a time, in scalar order.
template <int StaticDh, class T>
void scores_rows(const T* q, int64_t ldq, int nq, int Dh, const T* k, int64_t ldk, int nk, T scale,
                 T* s) {
  using batch = xsimd::batch<T>;
  constexpr int L = int(batch::size);
  const int dv = Dh - Dh % L;
  int j = 0;
  for (; j + L <= nk; j += L) {
    const T* kj = k + int64_t(j) * ldk;
    int r = 0;
    if constexpr (L % 4 == 0)
      for (; r + 4 <= nq; r += 4)
        for (int c = 0; c < L; c += L / 4)
          scores_tile<4, L / 4, StaticDh>(q + int64_t(r) * ldq, ldq, Dh, kj + int64_t(c) * ldk, ldk,
                                          scale, s + int64_t(r) * nk + j + c, nk, r == 0);
    if constexpr (L % 2 == 0)
      for (; r + 2 <= nq; r += 2)
        for (int c = 0; c < L; c += L / 2)
          scores_tile<2, L / 2, StaticDh>(q + int64_t(r) * ldq, ldq, Dh, kj + int64_t(c) * ldk, ldk,
                                          scale, s + int64_t(r) * nk + j + c, nk, r == 0);
    for (; r < nq; ++r)
      scores_tile<1, L, StaticDh>(q + int64_t(r) * ldq, ldq, Dh, kj, ldk, scale,
                                  s + int64_t(r) * nk + j, nk, r == 0);
  }
  for (; j < nk; ++j) {
    const T* kj = k + int64_t(j) * ldk;
    for (int r = 0; r < nq; ++r) {
      const T* qr = q + int64_t(r) * ldq;
      batch acc(T(0));
      for (int d = 0; d < dv; d += L)
        acc = kernels::simd::fma(batch::load_unaligned(qr + d), batch::load_unaligned(kj + d), acc);
      T t = xsimd::hadd(acc);
      for (int d = dv; d < Dh; ++d) t = std::fma(qr[d], kj[d], t);
      s[int64_t(r) * nk + j] = t * scale;
    }
  }
}

// Decode (DecodeMask: groups of block_size query rows, each against one contiguous key
// range, so no score is masked): per head, the scores of the group's rows against all of
// its keys, their softmax, then the weighted values, with the keys and values read in
// place (no packing). With the KV cache's layout (each head's rows together) a head's
// keys and values are two sequential runs, prefetched into L2 (decode_prefetch_bytes). Threads
// take contiguous ranges of heads; a head is one thread's work whatever the thread count,
// so the numbers do not depend on it. The scores kernel has a copy for the official models'
// 64-wide heads, where its d loop unrolls and its tiles inline: in cache (one layer's keys
// and values of `small`, 4 rows, 2 threads) 10 % faster than with Dh known at run time.
template <class T>
void attention_decode(const AttentionArgs<T>& a, const DecodeMask& mask) {
  const int Dh = a.head_dim, H = a.n_heads;
  const T scale = T(1) / std::sqrt(T(Dh));
#pragma omp parallel if (H > 1)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int h0 = H * t / nt, h1 = H * (t + 1) / nt;
    std::vector<T> s;  // [rows][keys]: scores, then probabilities
    for (int g = 0; g < mask.groups; ++g) {
      const int i0 = g * mask.block_size, ni = std::min(mask.block_size, a.nq - i0);
      const KeyRange keys = mask.ranges[g];
      const int nk = keys.size();
      s.resize(size_t(ni) * nk);
      for (int h = h0; h < h1; ++h) {
        const T* q = a.q + int64_t(i0) * a.ldq + h * Dh;
        T* out = a.out + int64_t(i0) * a.ldo + h * Dh;
        const T* k = a.k_head(h) + int64_t(keys.begin) * a.ldk;
        if (Dh == 64)
          scores_rows<64>(q, a.ldq, ni, Dh, k, a.ldk, nk, scale, s.data());
        else
          scores_rows<0>(q, a.ldq, ni, Dh, k, a.ldk, nk, scale, s.data());
        for (int r = 0; r < ni; ++r) {
          T* row = s.data() + size_t(r) * nk;
          if (a.lse) a.lse[h * a.nq + i0 + r] = kernels::logsumexp<T>(row, nk);
          kernels::softmax<T>(row, nk);
        }
        weighted_values(s.data(), nk, ni, a.v_head(h) + int64_t(keys.begin) * a.ldv, a.ldv, nk, Dh,
                        out, a.ldo);
      }
    }
  }
}

}  // namespace detail

}  // namespace bd3
