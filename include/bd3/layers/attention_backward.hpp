#pragma once
// Backward of the masked multi-head softmax attention (layers/attention.hpp), for the
// three backends, flash-attention style: the probabilities are recomputed from q, k and
// the log-sum-exp the forward stored, P = exp(q k^T * scale - lse), never kept.
//
// Per head, with O = P V and D_i = rowsum(dO * O)_i:
//   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - D),  dQ = dS K * scale,  dK = dS^T Q * scale.
//
// Shapes (per call, one sequence): q [nq, ldq], k, v [nk, ld], out/dout [nq, ld] with head h
// at columns [h*Dh, (h+1)*Dh); lse [n_heads, nq]. The gradients are accumulated (+=) into
// dq [nq, lddq], dk, dv [nk, ld].
//
// Parallelism: OpenMP over (head x query tile) for the block-sparse backend and over
// (head x query) for the dense ones. dQ rows belong to one work item; dK and dV are
// shared by every query tile, so each thread accumulates them in its own [nk, H*Dh]
// buffers, summed into dk/dv at the end (rows split across threads: no races).
#include <bd3/kernels/kernels.hpp>
#include <bd3/layers/attention.hpp>

#include <omp.h>
#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace bd3 {

template <class T>
struct AttentionGradArgs {
  const T* q = nullptr;
  int64_t ldq = 0;
  const T* k = nullptr;
  int64_t ldk = 0;
  const T* v = nullptr;
  int64_t ldv = 0;
  const T* out = nullptr;  // the forward's output O
  int64_t ldo = 0;
  const T* dout = nullptr;  // dL/dO
  int64_t lddo = 0;
  const T* lse = nullptr;  // [n_heads, nq] from the forward
  T* dq = nullptr;
  int64_t lddq = 0;
  T* dk = nullptr;
  int64_t lddk = 0;
  T* dv = nullptr;
  int64_t lddv = 0;
  int nq = 0, nk = 0, n_heads = 0, head_dim = 0;
};

namespace detail {

// Per-thread dK/dV accumulators and their reduction into the caller's dk/dv.
template <class T>
struct KVGradAccumulators {
  int nk = 0, width = 0;  // width = n_heads * Dh
  std::vector<T> buf;     // [threads][2][nk][width]
  T* dk(int tid) { return buf.data() + size_t(tid) * 2 * nk * width; }
  T* dv(int tid) { return dk(tid) + size_t(nk) * width; }
};

template <class T>
void reduce_kv_grads(KVGradAccumulators<T>& acc, int threads, const AttentionGradArgs<T>& a) {
#pragma omp for schedule(static)
  for (int j = 0; j < a.nk; ++j) {
    T* dk = a.dk + int64_t(j) * a.lddk;
    T* dv = a.dv + int64_t(j) * a.lddv;
    for (int t = 0; t < threads; ++t) {
      const T* sk = acc.dk(t) + size_t(j) * acc.width;
      const T* sv = acc.dv(t) + size_t(j) * acc.width;
      for (int c = 0; c < acc.width; ++c) dk[c] += sk[c], dv[c] += sv[c];
    }
  }
}

// Dense backends: every (query, key) pair, masked pairs skipped.
//   D_i = dO_i . O_i;  for allowed j: p = exp(q_i.k_j scale - lse_i), dp = dO_i . v_j,
//   ds = p (dp - D_i) scale;  dq_i += ds k_j;  dk_j += ds q_i;  dv_j += p dO_i.
template <class T, class Mask, bool UseSimd>
void attention_dense_backward(const AttentionGradArgs<T>& a, const Mask& mask) {
  const int Dh = a.head_dim, W = a.n_heads * Dh;
  const T scale = T(1) / std::sqrt(T(Dh));
  auto dot = [](const T* x, const T* y, int n) {
    return UseSimd ? kernels::dot<T>(x, y, n) : kernels::scalar::dot<T>(x, y, n);
  };
  auto axpy = [](T alpha, const T* x, T* y, int n) {
    if (UseSimd)
      kernels::axpy<T>(alpha, x, y, n);
    else
      kernels::scalar::axpy<T>(alpha, x, y, n);
  };
  KVGradAccumulators<T> acc;
  acc.nk = a.nk, acc.width = W;
  int threads = 1;
#pragma omp parallel
  {
#pragma omp single
    {
      threads = omp_get_num_threads();
      acc.buf.assign(size_t(threads) * 2 * a.nk * W, T(0));
    }
    const int tid = omp_get_thread_num();
    T* my_dk = acc.dk(tid);
    T* my_dv = acc.dv(tid);
#pragma omp for collapse(2) schedule(static)
    for (int h = 0; h < a.n_heads; ++h) {
      for (int i = 0; i < a.nq; ++i) {
        const T* qi = a.q + i * a.ldq + h * Dh;
        const T* doi = a.dout + i * a.lddo + h * Dh;
        T* dqi = a.dq + i * a.lddq + h * Dh;
        const T Di = dot(doi, a.out + i * a.ldo + h * Dh, Dh);
        const T lse = a.lse[h * a.nq + i];
        for (int j = 0; j < a.nk; ++j) {
          if (!mask.allowed(i, j)) continue;
          const T* kj = a.k + j * a.ldk + h * Dh;
          const T* vj = a.v + j * a.ldv + h * Dh;
          const T p = std::exp(dot(qi, kj, Dh) * scale - lse);
          const T ds = p * (dot(doi, vj, Dh) - Di) * scale;
          axpy(ds, kj, dqi, Dh);
          axpy(ds, qi, my_dk + size_t(j) * W + h * Dh, Dh);
          axpy(p, doi, my_dv + size_t(j) * W + h * Dh, Dh);
        }
      }
    }
    reduce_kv_grads(acc, threads, a);
  }
}

// Block-sparse backend: only the non-empty (query tile x key range) tiles, each with
// Eigen GEMMs. Tile of tq queries and nk keys (the ranges side by side):
//   S = Q K^T scale [tq, nk] -> P = exp(S - lse) (masked 0);  dV_r += P_r^T dO;
//   dP = dO V^T;  dS = P * (dP - D);  dQ += dS K scale;  dK_r += dS_r^T Q scale.
template <class T, class Mask>
void attention_block_sparse_backward(const AttentionGradArgs<T>& a, const Mask& mask) {
  const int Dh = a.head_dim, W = a.n_heads * Dh;
  const T scale = T(1) / std::sqrt(T(Dh));
  const auto tiles = query_tiles(mask, a.nq, 64);
  const int n_tiles = static_cast<int>(tiles.size());
  KVGradAccumulators<T> acc;
  acc.nk = a.nk, acc.width = W;
  int threads = 1;
  using Mat = RowMat<T>;
  using Stride = Eigen::OuterStride<>;
#pragma omp parallel
  {
#pragma omp single
    {
      threads = omp_get_num_threads();
      acc.buf.assign(size_t(threads) * 2 * a.nk * W, T(0));
    }
    const int tid = omp_get_thread_num();
    T* my_dk = acc.dk(tid);
    T* my_dv = acc.dv(tid);
    Mat S, dP, dQ;
    Eigen::Matrix<T, Eigen::Dynamic, 1> Dvec;
    // A static round-robin split: which tiles a thread sums into its dK/dV accumulators,
    // and in which order, depends only on the thread count, so the gradients are the same
    // bits from run to run (a dynamic schedule balances as well but sums in arrival order).
#pragma omp for collapse(2) schedule(static, 1)
    for (int h = 0; h < a.n_heads; ++h) {
      for (int t = 0; t < n_tiles; ++t) {
        const int q0 = tiles[t].begin, tq = tiles[t].size();
        StridedMap<T> dO(a.dout + int64_t(q0) * a.lddo + h * Dh, tq, Dh, Stride(a.lddo));
        if (dO.cwiseAbs().maxCoeff() == T(0)) continue;  // no gradient reaches these queries
        StridedMap<T> Q(a.q + int64_t(q0) * a.ldq + h * Dh, tq, Dh, Stride(a.ldq));
        StridedMap<T> O(a.out + int64_t(q0) * a.ldo + h * Dh, tq, Dh, Stride(a.ldo));
        KeyRange ranges[2];
        const int nr = mask.key_ranges(q0, q0 + tq, ranges);
        int nk = 0;
        for (int r = 0; r < nr; ++r) nk += ranges[r].size();
        Dvec = (dO.cwiseProduct(O)).rowwise().sum();
        S.resize(tq, nk);
        dP.resize(tq, nk);
        for (int r = 0, col = 0; r < nr; col += ranges[r].size(), ++r) {
          StridedMap<T> K(a.k + int64_t(ranges[r].begin) * a.ldk + h * Dh, ranges[r].size(), Dh,
                          Stride(a.ldk));
          StridedMap<T> V(a.v + int64_t(ranges[r].begin) * a.ldv + h * Dh, ranges[r].size(), Dh,
                          Stride(a.ldv));
          // (scale on the left, folded into the GEMM, as in attention_block_sparse)
          S.middleCols(col, ranges[r].size()).noalias() = scale * (Q * K.transpose());
          dP.middleCols(col, ranges[r].size()).noalias() = dO * V.transpose();
        }
        // S <- P = exp(S - lse) on the allowed keys, 0 elsewhere; dP <- dS = P (dP - D).
        for (int i = 0; i < tq; ++i) {
          const T lse = a.lse[h * a.nq + q0 + i];
          T* s = S.row(i).data();
          KeyRange allowed[2];
          const int na = allowed_intervals(mask, q0 + i, allowed);
          if (na < 0) {
            for (int r = 0, col = 0; r < nr; col += ranges[r].size(), ++r)
              for (int j = 0; j < ranges[r].size(); ++j)
                s[col + j] =
                    mask.allowed(q0 + i, ranges[r].begin + j) ? std::exp(s[col + j] - lse) : T(0);
          } else {  // exp(S - lse) in the allowed columns, 0 in the others
            for_each_column_run(
                allowed, na, ranges, nr, nk,
                [&](int c0, int n) {
                  auto seg = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(s + c0, n);
                  seg = (seg - lse).exp();
                },
                [&](int c0, int n) { std::fill(s + c0, s + c0 + n, T(0)); });
          }
        }
        dP.array() = S.array() * (dP.array().colwise() - Dvec.array());
        dQ.setZero(tq, Dh);
        for (int r = 0, col = 0; r < nr; col += ranges[r].size(), ++r) {
          const int n = ranges[r].size();
          StridedMap<T> K(a.k + int64_t(ranges[r].begin) * a.ldk + h * Dh, n, Dh, Stride(a.ldk));
          StridedMapMut<T> dK(my_dk + size_t(ranges[r].begin) * W + h * Dh, n, Dh, Stride(W));
          StridedMapMut<T> dV(my_dv + size_t(ranges[r].begin) * W + h * Dh, n, Dh, Stride(W));
          dV.noalias() += S.middleCols(col, n).transpose() * dO;
          dK.noalias() += scale * (dP.middleCols(col, n).transpose() * Q);
          dQ.noalias() += dP.middleCols(col, n) * K;
        }
        StridedMapMut<T>(a.dq + int64_t(q0) * a.lddq + h * Dh, tq, Dh, Stride(a.lddq)) +=
            dQ * scale;
      }
    }
    reduce_kv_grads(acc, threads, a);
  }
}

}  // namespace detail

}  // namespace bd3
