#pragma once
// The output layer, forward and backward.
//   Forward:  hf = LN(x) * a_f + shift_f  [R, D];  logits = hf W_out^T + b_out  [R, V]
//   Backward: rows whose dlogits are all zero (unmasked positions under SUBS) are skipped;
//             dW_out += dlogits^T hf;  db_out += sum_rows dlogits;  dhf = dlogits W_out;
//             then the norm's backward into dx, da_f and dshift_f (layers/norm.hpp), and
//             a_f = norm_final (1 + scale_f) split into dnorm_final and dscale_f.
#include <bd3/layers/linear.hpp>
#include <bd3/layers/norm.hpp>

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

namespace bd3::layers {

// What the output layer's forward keeps for the backward.
template <class T>
struct OutputActivations {
  std::vector<T> mean, rstd;  // [R]
  std::vector<T> hf;          // [R, D] the modulated final norm
};

// logits [R, V] of the rows x [R, D]; linear(hf, R, D, logits) applies W_out and b_out.
template <class T, class LinearFn>
void output_forward(const T* x, int64_t R, int D, const T* a_f, const T* shift_f, int V,
                    OutputActivations<T>& act, std::vector<T>& logits, LinearFn linear) {
  act.mean.resize(R), act.rstd.resize(R), act.hf.resize(R * D);
  norm_modulate_forward<T>(x, R, D, a_f, shift_f, act.hf.data(), act.mean.data(), act.rstd.data());
  logits.resize(size_t(R) * V);
  linear(act.hf.data(), R, D, logits.data());
}

// Scratch of the output layer's backward.
template <class T>
struct OutputBackwardScratch {
  std::vector<int64_t> active;      // rows with a nonzero dlogits row
  std::vector<T> dlogits, hf, dhf;  // those rows, gathered
};

// Accumulates the output layer's gradients. x_row(r): the forward's input row r (a pointer
// to D values); dx_row(r): where row r's input gradient is added. dmod [2D] receives
// (dshift_f, dscale_f) (written).
template <class T, class XRowFn, class DxRowFn>
void output_backward(std::span<const T> dlogits, const OutputActivations<T>& act, int64_t R, int D,
                     int V, const T* W_out, const T* norm_final, const T* a_f, const T* scale_f,
                     XRowFn x_row, DxRowFn dx_row, T* dW_out, T* db_out, T* dnorm_final,
                     std::vector<double>& dmod, OutputBackwardScratch<T>& s) {
  std::vector<uint8_t> nonzero(size_t(R), 0);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    const T* d = dlogits.data() + r * V;
    for (int v = 0; v < V; ++v)
      if (d[v] != T(0)) {
        nonzero[r] = 1;
        break;
      }
  }
  s.active.clear();
  for (int64_t r = 0; r < R; ++r)
    if (nonzero[r]) s.active.push_back(r);
  const int64_t A = int64_t(s.active.size());
  const T* G = dlogits.data();
  const T* Hf = act.hf.data();
  if (A < R) {
    s.dlogits.resize(size_t(A) * V);
    s.hf.resize(size_t(A) * D);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < A; ++i) {
      const int64_t r = s.active[i];
      std::copy(dlogits.data() + r * V, dlogits.data() + (r + 1) * V, s.dlogits.data() + i * V);
      std::copy(act.hf.data() + r * D, act.hf.data() + (r + 1) * D, s.hf.data() + i * D);
    }
    G = s.dlogits.data();
    Hf = s.hf.data();
  }
  s.dhf.resize(size_t(A) * D);
  linear_backward<T>(G, Hf, A, D, V, W_out, dW_out, db_out, s.dhf.data());
  std::vector<double> da(D, 0.0), dshift(D, 0.0);
  norm_modulate_backward<T>(
      A, D, a_f,
      [&](int64_t i) {
        const int64_t r = s.active[i];
        return NormRow<T>{x_row(r), act.mean[r], act.rstd[r], s.dhf.data() + i * D, dx_row(r)};
      },
      da.data(), dshift.data());
  dmod.assign(2 * size_t(D), 0.0);
  std::copy(dshift.begin(), dshift.end(), dmod.begin());
  norm_scale_backward<T>(da.data(), D, norm_final, scale_f, dnorm_final, dmod.data() + D);
}

}  // namespace bd3::layers
