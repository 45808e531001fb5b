#pragma once
// Layer norm without affine, then the adaLN modulation; forward and backward.
//   Forward (row r):  n = (x - mean_r) rstd_r;  y = n * a + b        a, b [D], constant over rows
//   Backward:         dn = dy * a;  dx += rstd (dn - mean(dn) - n mean(dn n));
//                     da += sum_r dy * n;  db += sum_r dy             (da, db in double)
// The model folds the norm weight and the modulation scale into a = norm_w * (1 + scale)
// (layers/conditioning.hpp); norm_scale_backward splits da back.
#include <bd3/kernels/kernels.hpp>

#include <omp.h>

#include <cstdint>
#include <vector>

namespace bd3::layers {

inline constexpr double norm_eps = 1e-5;

// y[N, D] = LN(x) * a + b; stores mean[N] and rstd[N] when they are not null.
template <class T>
void norm_modulate_forward(const T* x, int64_t N, int D, const T* a, const T* b, T* y, T* mean,
                           T* rstd) {
#pragma omp parallel for schedule(static) if (N * D > 32768)
  for (int64_t i = 0; i < N; ++i) {
    T m;
    T r = kernels::layer_norm<T>(x + i * D, y + i * D, D, T(norm_eps), &m);
    kernels::scale_shift<T>(y + i * D, a, b, D);
    if (mean) mean[i] = m, rstd[i] = r;
  }
}

// One row of the backward: its input, statistics, output gradient and input gradient.
template <class T>
struct NormRow {
  const T* x;
  T mean, rstd;
  const T* dy;
  T* dx;
};

// `row(r)` gives the NormRow of row r in [0, N) (the rows need not be contiguous).
// Each thread sums its rows' da, db in a buffer of its own; the buffers are added in thread
// order after the loop, so the result does not depend on which thread finishes first.
template <class T, class RowFn>
void norm_modulate_backward(int64_t N, int D, const T* a, RowFn row, double* da, double* db) {
  std::vector<std::vector<double>> partial;  // per thread: [da, db]
#pragma omp parallel if (N * D > 32768)
  {
#pragma omp single
    partial.assign(size_t(omp_get_num_threads()), std::vector<double>(2 * size_t(D), 0.0));
    double* la = partial[size_t(omp_get_thread_num())].data();
    double* lb = la + D;
    std::vector<T> n(D), dn(D);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N; ++r) {
      const NormRow<T> w = row(r);
      double s_dn = 0, s_dnn = 0;
      for (int j = 0; j < D; ++j) {
        n[j] = (w.x[j] - w.mean) * w.rstd;
        dn[j] = w.dy[j] * a[j];
        s_dn += dn[j];
        s_dnn += double(dn[j]) * n[j];
        la[j] += double(w.dy[j]) * n[j];
        lb[j] += w.dy[j];
      }
      const T m_dn = T(s_dn / D), m_dnn = T(s_dnn / D);
      for (int j = 0; j < D; ++j) w.dx[j] += w.rstd * (dn[j] - m_dn - n[j] * m_dnn);
    }
  }
  for (const auto& p : partial)
    for (int j = 0; j < D; ++j) da[j] += p[size_t(j)], db[j] += p[size_t(D + j)];
}

// Norm weight and modulation scale.
//   Forward:  a = norm_w * (1 + scale)
//   Backward: dnorm_w += da * (1 + scale);  dscale = da * norm_w (written)
template <class T>
void norm_scale_forward(const T* norm_w, const T* scale, int D, T* a) {
  for (int i = 0; i < D; ++i) a[i] = norm_w[i] * (T(1) + scale[i]);
}

template <class T>
void norm_scale_backward(const double* da, int D, const T* norm_w, const T* scale, T* dnorm_w,
                         double* dscale) {
  for (int j = 0; j < D; ++j) {
    dnorm_w[j] += T(da[j] * (1.0 + double(scale[j])));
    dscale[j] = da[j] * double(norm_w[j]);
  }
}

}  // namespace bd3::layers
