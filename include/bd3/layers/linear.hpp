#pragma once
// Linear layer, forward and backward.
//   Forward:  y[N, out] = x[N, in] W^T + b          W [out, in], b [out] (optional)
//   Backward: dW[out, in] += dy^T x;  db[out] += sum_rows dy;  dx[N, in] = dy W
//
// Many rows (training, evaluation, the uncached reference) run a GEMM: one slab of rows
// per thread, each a single-threaded GEMM (kernels/sgemm.hpp for float with AVX-512,
// Eigen's elsewhere). On this project's shapes that beats Eigen's own OpenMP split, which
// re-packs W per thread and synchronises per panel (up to 4x on dW += dy^T x).
// Few rows (decode calls) run the row kernels of kernels/gemm.hpp: a row's result does not
// depend on the other rows of the call, so batched sampling draws what unbatched draws.
#include <bd3/kernels/gemm.hpp>
#include <bd3/kernels/sgemm.hpp>

#include <omp.h>
#include <Eigen/Dense>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace bd3::layers {

namespace detail {
template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
template <class T>
using MapM = Eigen::Map<RowMat<T>>;
template <class T>
using MapCM = Eigen::Map<const RowMat<T>>;
template <class T>
using MapV = Eigen::Map<Vec<T>>;
template <class T>
using MapCV = Eigen::Map<const Vec<T>>;
template <class T>
using StridedCMap = Eigen::Map<const RowMat<T>, 0, Eigen::OuterStride<>>;

// Slab [begin, end) of n rows for thread t of nt, in multiples of 16 rows.
inline std::pair<int64_t, int64_t> thread_slab(int64_t n, int t, int nt) {
  const int64_t chunk = ((n + nt - 1) / nt + 15) / 16 * 16;
  const int64_t b = std::min<int64_t>(n, int64_t(t) * chunk);
  return {b, std::min<int64_t>(n, b + chunk)};
}

template <class T>
inline constexpr bool use_own_gemm = std::is_same_v<T, float>&& kernels::simd::has_gemm_nt;

// dW[out, in] += dY[N, out]^T X[N, in], split over the rows of dW.
template <class T>
void gemm_tn_accumulate(const T* dY, const T* X, int64_t N, int64_t in, int64_t out, T* dW) {
#pragma omp parallel if (N * in * out > (int64_t(1) << 22))
  {
    const auto [o0, o1] = thread_slab(out, omp_get_thread_num(), omp_get_num_threads());
    if constexpr (use_own_gemm<T>) {
      // dY^T and X are read in place by the GEMM's packing.
      if (o1 > o0)
        kernels::simd::gemm({.x = dY + o0,
                             .ldx = out,
                             .x_transposed = true,
                             .w = X,
                             .ldw = in,
                             .w_transposed = true,
                             .y = dW + o0 * in,
                             .ldy = in,
                             .accumulate = true},
                            o1 - o0, N, in);
    } else if (o1 > o0)
      MapM<T>(dW + o0 * in, o1 - o0, in).noalias() +=
          StridedCMap<T>(dY + o0, N, o1 - o0, Eigen::OuterStride<>(out)).transpose() *
          MapCM<T>(X, N, in);
  }
}

// dX[N, in] = dY[N, out] W[out, in], split over the rows of dX.
template <class T>
void gemm_nn(const T* dY, const T* W, int64_t N, int64_t in, int64_t out, T* dX) {
#pragma omp parallel if (N * in * out > (int64_t(1) << 22))
  {
    const auto [r0, r1] = thread_slab(N, omp_get_thread_num(), omp_get_num_threads());
    if constexpr (use_own_gemm<T>) {
      if (r1 > r0)
        kernels::simd::gemm({.x = dY + r0 * out,
                             .ldx = out,
                             .w = W,
                             .ldw = in,
                             .w_transposed = true,
                             .y = dX + r0 * in,
                             .ldy = in},
                            r1 - r0, out, in);
    } else if (r1 > r0)
      MapM<T>(dX + r0 * in, r1 - r0, in).noalias() =
          MapCM<T>(dY + r0 * out, r1 - r0, out) * MapCM<T>(W, out, in);
  }
}
}  // namespace detail

// Which kernel a linear layer runs: `gemm` chooses by row count (few rows take the row
// kernels), `rows` always takes the row kernels (decode calls: per-row results).
enum class LinearKernel { gemm, rows };

// y[N, out] = x[N, in] W^T (+ b).
template <class T>
void linear_forward(const T* x, int64_t N, int64_t in, const T* W, const T* b, int64_t out, T* y,
                    LinearKernel kernel = LinearKernel::gemm) {
  if constexpr (std::is_same_v<T, float>) {
    if (kernel == LinearKernel::rows || N <= 4 * kernels::small_m_max_rows) {
      kernels::simd::linear_few_rows(x, N, in, W, b, out, y);
      return;
    }
  }
#pragma omp parallel if (N * in * out > (int64_t(1) << 22))
  {
    const auto [r0, r1] = detail::thread_slab(N, omp_get_thread_num(), omp_get_num_threads());
    if (r1 > r0) {
      if constexpr (detail::use_own_gemm<T>) {
        kernels::simd::gemm_nt(x + r0 * in, r1 - r0, in, W, b, out, y + r0 * out);
      } else {
        detail::MapM<T> Y(y + r0 * out, r1 - r0, out);
        Y.noalias() =
            detail::MapCM<T>(x + r0 * in, r1 - r0, in) * detail::MapCM<T>(W, out, in).transpose();
        if (b) Y.rowwise() += detail::MapCV<T>(b, out).transpose();
      }
    }
  }
}

// dW += dy^T x;  db += sum_rows dy (db optional);  dx = dy W (overwritten; skipped when
// dx is null).
template <class T>
void linear_backward(const T* dy, const T* x, int64_t N, int64_t in, int64_t out, const T* W, T* dW,
                     T* db, T* dx) {
  if (N == 0) return;
  detail::gemm_tn_accumulate<T>(dy, x, N, in, out, dW);
  if (db)
    detail::MapV<T>(db, out).noalias() +=
        detail::MapCM<T>(dy, N, out).transpose() * detail::Vec<T>::Ones(N);
  if (dx) detail::gemm_nn<T>(dy, W, N, in, out, dx);
}

}  // namespace bd3::layers
