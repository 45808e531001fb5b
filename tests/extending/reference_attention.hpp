// An attention backend of one's own: dense masked softmax attention written from scratch
// (every query against every key it may see, in double), with its backward, so the model
// can train with it. docs/extending.md shows this file.
#pragma once
#include <bd3/policies/attention_backend.hpp>

#include <cmath>
#include <limits>
#include <string_view>
#include <vector>

struct ReferenceAttention {
  static constexpr std::string_view name = "reference";

  // out = softmax(q k^T / sqrt(Dh), masked) v per head; lse = log-sum-exp of the scores.
  template <class T, class Mask>
  static void forward(const bd3::AttentionArgs<T>& a, const Mask& mask) {
    const int Dh = a.head_dim;
    const double scale = 1.0 / std::sqrt(double(Dh));
    std::vector<double> s(size_t(a.nk));
    for (int h = 0; h < a.n_heads; ++h)
      for (int i = 0; i < a.nq; ++i) {
        const T* q = a.q + int64_t(i) * a.ldq + h * Dh;
        double top = -std::numeric_limits<double>::infinity();
        for (int j = 0; j < a.nk; ++j) {
          s[j] = -std::numeric_limits<double>::infinity();
          if (!mask.allowed(i, j)) continue;
          const T* k = a.k_head(h) + int64_t(j) * a.ldk;
          double dot = 0;
          for (int d = 0; d < Dh; ++d) dot += double(q[d]) * double(k[d]);
          s[j] = dot * scale;
          top = std::max(top, s[j]);
        }
        double sum = 0;
        for (int j = 0; j < a.nk; ++j) sum += (s[j] = std::exp(s[j] - top));  // masked: 0
        if (a.lse) a.lse[h * a.nq + i] = T(top + std::log(sum));
        T* out = a.out + int64_t(i) * a.ldo + h * Dh;
        for (int d = 0; d < Dh; ++d) {
          double o = 0;
          for (int j = 0; j < a.nk; ++j)
            if (s[j] > 0) o += s[j] / sum * double(a.v_head(h)[int64_t(j) * a.ldv + d]);
          out[d] = T(o);
        }
      }
  }

  // With P = softmax(S), D_i = dO_i . O_i:  dV += P^T dO;  dS = P (dO V^T - D);
  // dQ += dS K scale;  dK += dS^T Q scale.
  template <class T, class Mask>
  static void backward(const bd3::AttentionGradArgs<T>& a, const Mask& mask) {
    const int Dh = a.head_dim;
    const double scale = 1.0 / std::sqrt(double(Dh));
    for (int h = 0; h < a.n_heads; ++h)
      for (int i = 0; i < a.nq; ++i) {
        const T* q = a.q + int64_t(i) * a.ldq + h * Dh;
        const T* dout = a.dout + int64_t(i) * a.lddo + h * Dh;
        const T* out = a.out + int64_t(i) * a.ldo + h * Dh;
        double Di = 0;
        for (int d = 0; d < Dh; ++d) Di += double(dout[d]) * double(out[d]);
        for (int j = 0; j < a.nk; ++j) {
          if (!mask.allowed(i, j)) continue;
          const T* k = a.k + int64_t(j) * a.ldk + h * Dh;
          const T* v = a.v + int64_t(j) * a.ldv + h * Dh;
          double qk = 0, dp = 0;
          for (int d = 0; d < Dh; ++d) qk += double(q[d]) * double(k[d]);
          for (int d = 0; d < Dh; ++d) dp += double(dout[d]) * double(v[d]);
          const double p = std::exp(qk * scale - double(a.lse[h * a.nq + i]));
          const double ds = p * (dp - Di) * scale;
          T* dq = a.dq + int64_t(i) * a.lddq + h * Dh;
          T* dk = a.dk + int64_t(j) * a.lddk + h * Dh;
          T* dv = a.dv + int64_t(j) * a.lddv + h * Dh;
          for (int d = 0; d < Dh; ++d) {
            dq[d] += T(ds * double(k[d]));
            dk[d] += T(ds * double(q[d]));
            dv[d] += T(p * double(dout[d]));
          }
        }
      }
  }
};

// A backend with a forward only: the model samples and evaluates with it; training with
// it stops at compile time (bd3::train::backward's static_assert).
struct ForwardOnlyAttention {
  static constexpr std::string_view name = "forward_only";
  template <class T, class Mask>
  static void forward(const bd3::AttentionArgs<T>& a, const Mask& mask) {
    ReferenceAttention::forward(a, mask);
  }
};
