#pragma once
// adaLN conditioning, forward and backward. BD3-LMs run without time conditioning
// (sigma = 0), so every modulation vector is a constant of the weights, computed once per
// weight change and constant over rows; its gradient is a sum over rows.
//
//   Conditioning MLP:  e = [cos(0) x128, sin(0) x128] = [1 x128, 0 x128]
//                      hid = W1 e + b1 [C] (sigma_hidden);  out = W2 silu(hid) + b2 [C]
//                      (sigma_out);  c = silu(out)
//   Modulation:        [shift1 scale1 gate1 shift2 scale2 gate2] = W_ada c + b_ada [6D]
//                      per layer; [shift_f scale_f] = W_ada_f c + b_ada_f [2D] (output)
//   Norm scales:       a = norm_w * (1 + scale) (layers/norm.hpp)
// Without adaLN (config.adaln false): shifts 0, scales 0, gates 1, a = norm_w.
//
//   Backward:  modulation_backward: dW_ada += dmod (x) c;  db_ada += dmod;  dc += W_ada^T dmod
//              conditioning_backward: dout = dc silu'(out);  dW2 += dout (x) silu(hid);
//              db2 += dout;  dhid = (W2^T dout) silu'(hid);  dW1 += dhid (x) e;  db1 += dhid
#include <bd3/kernels/kernels.hpp>
#include <bd3/layers/linear.hpp>
#include <bd3/layers/norm.hpp>
#include <bd3/model/config.hpp>
#include <bd3/model/parameters.hpp>

#include <cmath>
#include <vector>

namespace bd3 {

// The modulation vectors of one layer.
template <class T>
struct Modulation {
  std::vector<T> shift1, scale1, gate1, shift2, scale2, gate2;  // [D] each
  std::vector<T> a1, a2;                                        // norm weight * (1 + scale)
};

// Everything the weights determine before any token is seen.
template <class T>
struct Conditioning {
  std::vector<T> cond;                               // [C] c
  std::vector<T> sigma_hidden, sigma_out;            // [C] hid, out (for the backward)
  std::vector<Modulation<T>> layers;                 // one per layer
  std::vector<T> final_shift, final_scale, final_a;  // [D] the output layer's

  // Forward: from the flat parameters `p` of layout `lay`.
  void forward(const ModelConfig& config, const ParameterLayout& lay, const T* p) {
    const int D = config.hidden_dim, C = config.cond_dim;
    layers.assign(config.n_blocks, {});
    if (!config.adaln) {
      for (int l = 0; l < config.n_blocks; ++l) {
        auto& m = layers[l];
        m.shift1.assign(D, 0), m.scale1.assign(D, 0), m.gate1.assign(D, 1);
        m.shift2.assign(D, 0), m.scale2.assign(D, 0), m.gate2.assign(D, 1);
        m.a1.assign(p + lay.layers[l].norm1, p + lay.layers[l].norm1 + D);
        m.a2.assign(p + lay.layers[l].norm2, p + lay.layers[l].norm2 + D);
      }
      final_shift.assign(D, 0), final_scale.assign(D, 0);
      final_a.assign(p + lay.norm_final, p + lay.norm_final + D);
      return;
    }
    std::vector<T> e(256, T(0));
    std::fill(e.begin(), e.begin() + 128, T(1));
    std::vector<T> h1(C), h2(C);
    layers::linear_forward<T>(e.data(), 1, 256, p + lay.sigma0_w, p + lay.sigma0_b, C, h1.data());
    sigma_hidden = h1;
    for (auto& v : h1) v = kernels::scalar::silu(v);
    layers::linear_forward<T>(h1.data(), 1, C, p + lay.sigma2_w, p + lay.sigma2_b, C, h2.data());
    sigma_out = h2;
    cond.resize(C);
    for (int i = 0; i < C; ++i) cond[i] = kernels::scalar::silu(h2[i]);
    std::vector<T> mod(6 * D);
    for (int l = 0; l < config.n_blocks; ++l) {
      const auto& o = lay.layers[l];
      layers::linear_forward<T>(cond.data(), 1, C, p + o.ada_w, p + o.ada_b, 6 * D, mod.data());
      auto& m = layers[l];
      auto chunk = [&](int i) {
        return std::vector<T>(mod.begin() + i * D, mod.begin() + (i + 1) * D);
      };
      m.shift1 = chunk(0), m.scale1 = chunk(1), m.gate1 = chunk(2);
      m.shift2 = chunk(3), m.scale2 = chunk(4), m.gate2 = chunk(5);
      m.a1.resize(D), m.a2.resize(D);
      layers::norm_scale_forward<T>(p + o.norm1, m.scale1.data(), D, m.a1.data());
      layers::norm_scale_forward<T>(p + o.norm2, m.scale2.data(), D, m.a2.data());
    }
    std::vector<T> fmod(2 * D);
    layers::linear_forward<T>(cond.data(), 1, C, p + lay.out_ada_w, p + lay.out_ada_b, 2 * D,
                              fmod.data());
    final_shift.assign(fmod.begin(), fmod.begin() + D);
    final_scale.assign(fmod.begin() + D, fmod.end());
    final_a.resize(D);
    layers::norm_scale_forward<T>(p + lay.norm_final, final_scale.data(), D, final_a.data());
  }
};

namespace layers {

inline double silu_grad(double x) {
  const double s = 1.0 / (1.0 + std::exp(-x));
  return s * (1.0 + x * (1.0 - s));
}

// dmod [M] (double) -> dW [M, C] +=, db [M] +=, dc [C] +=.
template <class T>
void modulation_backward(const double* dmod, int M, const T* W, const std::vector<T>& c, T* dW,
                         T* db, std::vector<double>& dc) {
  const int C = int(c.size());
  for (int i = 0; i < M; ++i) {
    const double g = dmod[i];
    db[i] += T(g);
    T* dw = dW + int64_t(i) * C;
    const T* w = W + int64_t(i) * C;
    for (int j = 0; j < C; ++j) {
      dw[j] += T(g * double(c[j]));
      dc[j] += g * double(w[j]);
    }
  }
}

// dc [C] -> the conditioning MLP's weight gradients (+=).
template <class T>
void conditioning_backward(const std::vector<double>& dc, const std::vector<T>& hid,
                           const std::vector<T>& out, const T* W2, T* dW1, T* db1, T* dW2, T* db2) {
  const int C = int(dc.size());
  std::vector<double> dout(C), dc1(C, 0.0);
  for (int i = 0; i < C; ++i) dout[i] = dc[i] * silu_grad(double(out[i]));
  for (int i = 0; i < C; ++i) {
    db2[i] += T(dout[i]);
    for (int j = 0; j < C; ++j) {
      const double c1 = double(kernels::scalar::silu(hid[j]));
      dW2[int64_t(i) * C + j] += T(dout[i] * c1);
      dc1[j] += dout[i] * double(W2[int64_t(i) * C + j]);
    }
  }
  for (int i = 0; i < C; ++i) {
    const double dh = dc1[i] * silu_grad(double(hid[i]));
    db1[i] += T(dh);
    for (int j = 0; j < 128; ++j)
      dW1[int64_t(i) * 256 + j] += T(dh);  // e_j = 1 for j < 128, 0 after
  }
}

}  // namespace layers
}  // namespace bd3
