#pragma once
// Gated residual with optional dropout of the branch output, forward and backward.
//   Forward:  x_out = x_in + gate * drop(y)        gate [D], constant over rows; y [N, D]
//             drop(y) = keep * s * y with keep ~ Bernoulli(1 - p), s = 1 / (1 - p)
//             (training only; the identity without dropout)
//   Backward: dx_in = dx_out (the caller keeps dx);  dgate += sum_r dx * drop(y);
//             dy = dx * gate * keep * s   [N, D] (overwritten)
#include <bd3/detail/random.hpp>
#include <bd3/kernels/kernels.hpp>

#include <omp.h>

#include <cstdint>
#include <vector>

namespace bd3 {

// Row r of a layout of sequences of `rows` rows each, placed in sequences of `stride`
// rows: row (r / rows) * stride + r % rows (rows = 0: r itself). The training pass uses
// it both ways: an xt row's place among the activations of either layout, and the row of
// the [xt, x0] layout whose dropout bits a row draws (model.hpp, train/backward.hpp).
struct RowMap {
  int64_t rows = 0, stride = 0;
  int64_t operator()(int64_t r) const { return rows ? (r / rows) * stride + r % rows : r; }
};

// Dropout of the two branch outputs (attention projection, MLP output) before their
// gates, training only. Off by default (p = 0). The keep mask of element (row, column) of
// branch `branch` (0 attention, 1 MLP) of layer `layer` is a counter-based hash of
// (seed, layer, branch, hash_row(row), column): the same for a seed whatever the number
// of threads.
struct Dropout {
  double p = 0.0;  // drop probability in [0, 1)
  uint64_t seed = 0;
  // The row whose bits a row draws. forward_train sets it (whatever it was) so that both
  // of its layouts draw the bits of the row's [xt, x0] row: they drop the same elements.
  RowMap hash_row{};
  bool active() const { return p > 0.0; }
};

namespace layers {

// keep[r * D + c] = 1 with probability 1 - p for rows [0, N) of one branch (the bits of
// row d.hash_row(r)).
inline void dropout_keep_mask(const Dropout& d, int layer, int branch, int64_t N, int D,
                              uint8_t* keep) {
  using bd3::detail::splitmix64;
  const uint64_t stream =
      splitmix64(d.seed ^ splitmix64(uint64_t(layer) * 2 + uint64_t(branch) + 1));
  const uint64_t threshold = uint64_t(d.p * 4294967296.0);  // keep iff 32-bit uniform >= p 2^32
#pragma omp parallel for schedule(static) if (N * D > 32768)
  for (int64_t r = 0; r < N; ++r) {
    const int64_t first = d.hash_row(r) * D;  // the hash counter of the row's column 0
    for (int c = 0; c < D; ++c)
      keep[r * D + c] = uint8_t((splitmix64(stream + uint64_t(first + c)) >> 32) >= threshold);
  }
}

// x[N, D] += gate * drop(y). With dropout active, draws branch `branch` of layer `layer`'s
// keep mask into keep ([N, D], for the backward); without, leaves keep empty.
template <class T>
void gated_residual_forward(T* x, int64_t N, int D, const T* gate, const T* y,
                            const Dropout& dropout, int layer, int branch,
                            std::vector<uint8_t>& keep) {
  if (dropout.active()) {
    keep.resize(size_t(N) * D);
    dropout_keep_mask(dropout, layer, branch, N, D, keep.data());
    const T s = T(1.0 / (1.0 - dropout.p));
#pragma omp parallel for schedule(static) if (N * D > 32768)
    for (int64_t i = 0; i < N; ++i)
      for (int j = 0; j < D; ++j)
        x[i * D + j] += gate[j] * (keep[i * D + j] ? s * y[i * D + j] : T(0));
  } else {
    keep.clear();
#pragma omp parallel for schedule(static) if (N * D > 32768)
    for (int64_t i = 0; i < N; ++i) kernels::gated_add<T>(x + i * D, gate, y + i * D, D);
  }
}

// keep: the forward's mask (null without dropout); s = 1 / (1 - p). Each thread sums its
// rows' dgate in a buffer of its own, added in thread order after the loop (the same bits
// whichever thread finishes first).
template <class T>
void gated_residual_backward(const T* dx, const T* y, const T* gate, const uint8_t* keep, T s,
                             int64_t N, int D, T* dy, double* dgate) {
  std::vector<std::vector<double>> partial;
#pragma omp parallel if (N * D > 32768)
  {
#pragma omp single
    partial.assign(size_t(omp_get_num_threads()), std::vector<double>(size_t(D), 0.0));
    double* lg = partial[size_t(omp_get_thread_num())].data();
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N; ++r) {
      const T* dxr = dx + r * D;
      const T* yr = y + r * D;
      T* dyr = dy + r * D;
      if (keep) {
        const uint8_t* kr = keep + r * D;
        for (int j = 0; j < D; ++j) {
          const T m = kr[j] ? s : T(0);
          lg[j] += double(dxr[j]) * (m * yr[j]);
          dyr[j] = dxr[j] * gate[j] * m;
        }
      } else {
        for (int j = 0; j < D; ++j) {
          lg[j] += double(dxr[j]) * yr[j];
          dyr[j] = dxr[j] * gate[j];
        }
      }
    }
  }
  for (const auto& p : partial)
    for (int j = 0; j < D; ++j) dgate[j] += p[size_t(j)];
}

}  // namespace layers
}  // namespace bd3
