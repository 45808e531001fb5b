#pragma once
// Masked multi-head softmax attention, forward, for the three backends
// (policies/attention.hpp). Shapes: q [nq, ldq] (head h at columns [h*Dh, (h+1)*Dh)),
// k, v [nk, ld], out [nq, ldo]; the mask says which keys each query may see.
#include <bd3/kernels/kernels.hpp>
#include <bd3/policies/attention.hpp>

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <limits>
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

}  // namespace detail

template <AttentionBackend A, class T, class Mask>
void attention_forward(const AttentionArgs<T>& args, const Mask& mask) {
  if constexpr (A::kind == AttentionKind::scalar)
    detail::attention_dense<T, Mask, false>(args, mask);
  else if constexpr (A::kind == AttentionKind::simd)
    detail::attention_dense<T, Mask, true>(args, mask);
  else
    detail::attention_block_sparse<T>(args, mask);
}

}  // namespace bd3
