#pragma once
// GELU (tanh approximation), the MLP's activation, forward and backward.
//   Forward:  y = gelu_tanh(x)                                         [N, F]
//   Backward: dx = dy * gelu'(x), in place on d (dy in, dx out)
// The float backward writes gelu(x) = x s with s = 1 / (1 + exp(t)), t = x (-2k - 2kc x^2)
// (as the forward kernel), so gelu'(x) = s - x s (1 - s) (-2k - 6kc x^2) with
// s (1 - s) = exp(t) s^2: no tanh, no cancellation, no NaN. Other types use the scalar
// formula (kernels::scalar::gelu_tanh_grad).
#include <bd3/kernels/kernels.hpp>

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace bd3::layers {

// y[N, F] = gelu_tanh(x[N, F]), row by row (y may be x).
template <class T>
void gelu_forward(const T* x, int64_t N, int64_t F, T* y) {
#pragma omp parallel for schedule(static) if (N * F > 32768)
  for (int64_t i = 0; i < N; ++i) kernels::gelu_tanh<T>(x + i * F, y + i * F, F);
}

// The scalar twin and the float SIMD kernel of the backward (tests compare them).
template <class T>
void gelu_backward_scalar(const T* x, T* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] *= kernels::scalar::gelu_tanh_grad<T>(x[i]);
}

inline void gelu_backward_simd(const float* x, float* d, int64_t n) {
  using batch = xsimd::batch<float>;
  constexpr int64_t lanes = int64_t(batch::size);
  constexpr float m2k = float(-2.0 * 0.7978845608028654);
  constexpr float m2kc = float(-2.0 * 0.7978845608028654 * 0.044715);
  constexpr float m6kc = float(-6.0 * 0.7978845608028654 * 0.044715);
  // Past |x| = 10, gelu' is 0 or 1 to float precision; the clamp keeps exp(t) finite
  // (|t| < 88), so no 0 * inf.
  auto one = [&](auto x_in) {
    using V = decltype(x_in);
    V xv;
    if constexpr (std::is_same_v<V, float>)
      xv = std::clamp(x_in, -10.f, 10.f);
    else
      xv = xsimd::min(xsimd::max(x_in, V(-10.f)), V(10.f));
    const V x2 = xv * xv;
    const V t = xv * (V(m2k) + V(m2kc) * x2);
    V e;
    if constexpr (std::is_same_v<V, float>)
      e = std::exp(t);
    else
      e = xsimd::exp(t);
    const V s = V(1.f) / (V(1.f) + e);
    return s - xv * (e * s * s) * (V(m2k) + V(m6kc) * x2);
  };
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const batch g = one(batch::load_unaligned(x + i));
    (batch::load_unaligned(d + i) * g).store_unaligned(d + i);
  }
  for (; i < n; ++i) d[i] *= one(x[i]);
}

// d[n] *= gelu'(x[n]) (x: the forward's input).
template <class T>
void gelu_backward(const T* x, T* d, int64_t n) {
  constexpr int64_t chunk = 16384;
#pragma omp parallel for schedule(static) if (n > 4 * chunk)
  for (int64_t c = 0; c < n; c += chunk) {
    const int64_t m = std::min(chunk, n - c);
    if constexpr (kernels::use_simd<T>)
      gelu_backward_simd(x + c, d + c, m);
    else
      gelu_backward_scalar<T>(x + c, d + c, m);
  }
}

}  // namespace bd3::layers
