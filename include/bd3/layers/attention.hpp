#pragma once
// Masked multi-head softmax attention, forward, for the three backends
// (policies/attention.hpp). Shapes: q [nq, ldq] (head h at columns [h*Dh, (h+1)*Dh)),
// k, v [nk, ld], out [nq, ldo]; the mask says which keys each query may see.
#include <bd3/kernels/kernels.hpp>
#include <bd3/policies/attention.hpp>

#include <omp.h>
#include <Eigen/Dense>
#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace bd3 {

struct KeyRange {
  int begin = 0, end = 0;
  int size() const { return end - begin; }
};

// The training mask over the 2L sequence [xt, x0] (SPEC "Vectorized training forward").
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
  T* out = nullptr;
  int64_t ldo = 0;
  T* lse = nullptr;  // optional [n_heads, nq]: log-sum-exp of each query's scores (for backward)
  int nq = 0, nk = 0, n_heads = 0, head_dim = 0;
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
          const T* kj = a.k + j * a.ldk + h * Dh;
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
          const T* vj = a.v + j * a.ldv + h * Dh;
          if (UseSimd)
            kernels::axpy<T>(s[j], vj, oi, Dh);
          else
            kernels::scalar::axpy<T>(s[j], vj, oi, Dh);
        }
      }
    }
  }
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
          StridedMap<T> K(a.k + int64_t(ranges[r].begin) * a.ldk + h * Dh, ranges[r].size(), Dh,
                          Eigen::OuterStride<>(a.ldk));
          S.middleCols(col, ranges[r].size()).noalias() = (Q * K.transpose()) * scale;
        }
        for (int i = 0; i < tq; ++i) {
          T* row = S.row(i).data();
          for (int r = 0, col = 0; r < nr; col += ranges[r].size(), ++r)
            for (int j = 0; j < ranges[r].size(); ++j)
              if (!mask.allowed(q0 + i, ranges[r].begin + j)) row[col + j] = neg_inf;
          if (a.lse) a.lse[h * a.nq + q0 + i] = kernels::logsumexp<T>(row, nk);
          kernels::softmax<T>(row, nk);
        }
        O.setZero(tq, Dh);
        for (int r = 0, col = 0; r < nr; col += ranges[r].size(), ++r) {
          StridedMap<T> V(a.v + int64_t(ranges[r].begin) * a.ldv + h * Dh, ranges[r].size(), Dh,
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
// bench_model BM_DecodeAttention on the `small` cache: faster up to 8 rows, even at 16.
inline constexpr int decode_kernel_max_rows = 8;

// out[d] = sum_j p[j] v[j * ldv + d] for d in [0, NV lanes): NV vectors of accumulators
// stay in registers for the whole pass over the keys.
template <int NV, class T>
void weighted_value_chunk(const T* p, const T* v, int64_t ldv, int nk, T* out) {
  using batch = xsimd::batch<T>;
  constexpr int L = int(batch::size);
  batch acc[NV];
  for (int c = 0; c < NV; ++c) acc[c] = batch(T(0));
  for (int j = 0; j < nk; ++j) {
    const batch pj(p[j]);
    const T* vj = v + int64_t(j) * ldv;
    for (int c = 0; c < NV; ++c) acc[c] = xsimd::fma(pj, batch::load_unaligned(vj + c * L), acc[c]);
  }
  for (int c = 0; c < NV; ++c) acc[c].store_unaligned(out + c * L);
}

// out[0, Dh) = sum_j p[j] v[j][0, Dh): chunks of up to 8 vectors, then the last Dh % lanes
// columns one by one (each column is one chain over j, in key order, whatever the chunking).
template <class T>
void weighted_values(const T* p, const T* v, int64_t ldv, int nk, int Dh, T* out) {
  using batch = xsimd::batch<T>;
  constexpr int L = int(batch::size);
  int d = 0;
  for (; d + L <= Dh;) {
    const int nv = std::min(8, (Dh - d) / L);
    switch (nv) {
      case 1:
        weighted_value_chunk<1>(p, v + d, ldv, nk, out + d);
        break;
      case 2:
        weighted_value_chunk<2>(p, v + d, ldv, nk, out + d);
        break;
      case 3:
        weighted_value_chunk<3>(p, v + d, ldv, nk, out + d);
        break;
      case 4:
        weighted_value_chunk<4>(p, v + d, ldv, nk, out + d);
        break;
      case 5:
        weighted_value_chunk<5>(p, v + d, ldv, nk, out + d);
        break;
      case 6:
        weighted_value_chunk<6>(p, v + d, ldv, nk, out + d);
        break;
      case 7:
        weighted_value_chunk<7>(p, v + d, ldv, nk, out + d);
        break;
      default:
        weighted_value_chunk<8>(p, v + d, ldv, nk, out + d);
        break;
    }
    d += nv * L;
  }
  for (; d < Dh; ++d) {
    T s = T(0);
    for (int j = 0; j < nk; ++j) s += p[j] * v[int64_t(j) * ldv + d];
    out[d] = s;
  }
}

// s[r * nk + j] = scale * q_r . k_j for rows q_r = q + r * ldq (r < nq) and keys
// k_j = k + j * ldk (j < nk). A lanes-wide group of keys at a time (in L1 for every row):
// one accumulator per key, reduced together by haddp into a vector of scores, one
// horizontal reduction per group instead of one per key. Remainders: the last Dh % lanes
// terms, then the last nk % lanes keys, in scalar order.
template <class T>
void scores_rows(const T* q, int64_t ldq, int nq, int Dh, const T* k, int64_t ldk, int nk, T scale,
                 T* s) {
  using batch = xsimd::batch<T>;
  constexpr int L = int(batch::size);
  const int dv = Dh - Dh % L;
  int j = 0;
  for (; j + L <= nk; j += L) {
    const T* kj = k + int64_t(j) * ldk;
    for (int r = 0; r < nq; ++r) {
      const T* qr = q + int64_t(r) * ldq;
      batch acc[L];
      for (int c = 0; c < L; ++c) acc[c] = batch(T(0));
      for (int d = 0; d < dv; d += L) {
        const batch qv = batch::load_unaligned(qr + d);
        for (int c = 0; c < L; ++c)
          acc[c] = xsimd::fma(qv, batch::load_unaligned(kj + int64_t(c) * ldk + d), acc[c]);
      }
      T* out = s + int64_t(r) * nk + j;
      if (dv == Dh) {
        (xsimd::haddp(acc) * batch(scale)).store_unaligned(out);
        continue;
      }
      alignas(64) T sums[L];
      xsimd::haddp(acc).store_aligned(sums);
      for (int c = 0; c < L; ++c) {
        T t = sums[c];
        for (int d = dv; d < Dh; ++d) t += qr[d] * kj[int64_t(c) * ldk + d];
        out[c] = t * scale;
      }
    }
  }
  for (; j < nk; ++j) {
    const T* kj = k + int64_t(j) * ldk;
    for (int r = 0; r < nq; ++r) {
      const T* qr = q + int64_t(r) * ldq;
      batch acc(T(0));
      for (int d = 0; d < dv; d += L)
        acc = xsimd::fma(batch::load_unaligned(qr + d), batch::load_unaligned(kj + d), acc);
      T t = xsimd::hadd(acc);
      for (int d = dv; d < Dh; ++d) t += qr[d] * kj[d];
      s[int64_t(r) * nk + j] = t * scale;
    }
  }
}

// Decode (DecodeMask: groups of block_size query rows, each against one contiguous key
// range, so no score is masked): per head, the scores of a row, its softmax, then its
// weighted values, all with register-blocked loops over the head's keys and values in
// place (no packing). Threads take contiguous ranges of heads; a head is one thread's
// work whatever the thread count, so the numbers do not depend on it.
template <class T>
void attention_decode(const AttentionArgs<T>& a, const DecodeMask& mask) {
  const int Dh = a.head_dim, H = a.n_heads;
  const T scale = T(1) / std::sqrt(T(Dh));
#pragma omp parallel if (H > 1)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int h0 = H * t / nt, h1 = H * (t + 1) / nt;
    std::vector<T> s;
    for (int g = 0; g < mask.groups; ++g) {
      const int i0 = g * mask.block_size, ni = std::min(mask.block_size, a.nq - i0);
      const KeyRange keys = mask.ranges[g];
      const int nk = keys.size();
      s.resize(size_t(ni) * nk);
      for (int h = h0; h < h1; ++h) {
        const T* kh = a.k + int64_t(keys.begin) * a.ldk + h * Dh;
        const T* vh = a.v + int64_t(keys.begin) * a.ldv + h * Dh;
        scores_rows(a.q + int64_t(i0) * a.ldq + h * Dh, a.ldq, ni, Dh, kh, a.ldk, nk, scale,
                    s.data());
        for (int r = 0; r < ni; ++r) {
          T* row = s.data() + size_t(r) * nk;
          if (a.lse) a.lse[h * a.nq + i0 + r] = kernels::logsumexp<T>(row, nk);
          kernels::softmax<T>(row, nk);
          weighted_values(row, vh, a.ldv, nk, Dh, a.out + int64_t(i0 + r) * a.ldo + h * Dh);
        }
      }
    }
  }
}

}  // namespace detail

template <AttentionBackend A, class T, class Mask>
void attention_forward(const AttentionArgs<T>& args, const Mask& mask) {
  if constexpr (A::kind == AttentionKind::scalar) {
    detail::attention_dense<T, Mask, false>(args, mask);
  } else if constexpr (A::kind == AttentionKind::simd) {
    detail::attention_dense<T, Mask, true>(args, mask);
  } else {
    if constexpr (std::is_same_v<Mask, DecodeMask>)
      if (mask.block_size <= detail::decode_kernel_max_rows)
        return detail::attention_decode(args, mask);
    detail::attention_block_sparse<T>(args, mask);
  }
}

}  // namespace bd3
