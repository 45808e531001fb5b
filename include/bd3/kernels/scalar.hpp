#pragma once
// Scalar reference kernels: the twins every SIMD kernel in kernels/simd.hpp is tested
// against, and the kernels used for non-float scalars (double, for finite differences).
// All arrays are contiguous; n is the element count.
#include <cmath>
#include <cstddef>

namespace bd3::kernels::scalar {

// Layer norm without affine: y = (x - mean) / sqrt(var + eps). Returns rstd; mean via out.
template <class T>
T layer_norm(const T* x, T* y, std::ptrdiff_t n, T eps, T* mean_out) {
  T mean = 0;
  for (std::ptrdiff_t i = 0; i < n; ++i) mean += x[i];
  mean /= T(n);
  T var = 0;
  for (std::ptrdiff_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= T(n);
  T rstd = T(1) / std::sqrt(var + eps);
  for (std::ptrdiff_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * rstd;
  if (mean_out) *mean_out = mean;
  return rstd;
}

// y = y * a + b (the adaLN modulation with a = norm.weight * (1 + scale), b = shift).
template <class T>
void scale_shift(T* y, const T* a, const T* b, std::ptrdiff_t n) {
  for (std::ptrdiff_t i = 0; i < n; ++i) y[i] = y[i] * a[i] + b[i];
}

// PyTorch's gelu(approximate='tanh').
template <class T>
T gelu_tanh(T x) {
  const T k = T(0.7978845608028654);  // sqrt(2/pi)
  return T(0.5) * x * (T(1) + std::tanh(k * (x + T(0.044715) * x * x * x)));
}
template <class T>
T gelu_tanh_grad(T x) {
  const T k = T(0.7978845608028654);
  T inner = k * (x + T(0.044715) * x * x * x);
  T th = std::tanh(inner);
  return T(0.5) * (T(1) + th) +
         T(0.5) * x * (T(1) - th * th) * k * (T(1) + T(3 * 0.044715) * x * x);
}
template <class T>
void gelu_tanh(const T* x, T* y, std::ptrdiff_t n) {
  for (std::ptrdiff_t i = 0; i < n; ++i) y[i] = gelu_tanh(x[i]);
}

template <class T>
T silu(T x) {
  return x / (T(1) + std::exp(-x));
}

// In-place softmax over n entries; entries equal to -inf get probability 0.
template <class T>
void softmax(T* x, std::ptrdiff_t n) {
  T m = x[0];
  for (std::ptrdiff_t i = 1; i < n; ++i) m = x[i] > m ? x[i] : m;
  T s = 0;
  for (std::ptrdiff_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    s += x[i];
  }
  T inv = T(1) / s;
  for (std::ptrdiff_t i = 0; i < n; ++i) x[i] *= inv;
}

// log(sum(exp(x))) computed stably.
template <class T>
T logsumexp(const T* x, std::ptrdiff_t n) {
  T m = x[0];
  for (std::ptrdiff_t i = 1; i < n; ++i) m = x[i] > m ? x[i] : m;
  T s = 0;
  for (std::ptrdiff_t i = 0; i < n; ++i) s += std::exp(x[i] - m);
  return m + std::log(s);
}

// Rotary (NeoX half-split): x' = x * cos + rotate_half(x) * sin on one head of size dh;
// cos/sin hold dh/2 entries (the angle table is duplicated across the halves).
template <class T>
void rotary(T* x, const T* cos, const T* sin, std::ptrdiff_t dh) {
  std::ptrdiff_t h = dh / 2;
  for (std::ptrdiff_t j = 0; j < h; ++j) {
    T a = x[j], b = x[j + h];
    x[j] = a * cos[j] - b * sin[j];
    x[j + h] = b * cos[j] + a * sin[j];
  }
}
// The transpose of rotary (rotation by -angle): the backward of rotary.
template <class T>
void rotary_transpose(T* g, const T* cos, const T* sin, std::ptrdiff_t dh) {
  std::ptrdiff_t h = dh / 2;
  for (std::ptrdiff_t j = 0; j < h; ++j) {
    T a = g[j], b = g[j + h];
    g[j] = a * cos[j] + b * sin[j];
    g[j + h] = b * cos[j] - a * sin[j];
  }
}

// x += g * y (the gated residual).
template <class T>
void gated_add(T* x, const T* g, const T* y, std::ptrdiff_t n) {
  for (std::ptrdiff_t i = 0; i < n; ++i) x[i] += g[i] * y[i];
}

template <class T>
T dot(const T* a, const T* b, std::ptrdiff_t n) {
  T s = 0;
  for (std::ptrdiff_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y += alpha * x
template <class T>
void axpy(T alpha, const T* x, T* y, std::ptrdiff_t n) {
  for (std::ptrdiff_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

}  // namespace bd3::kernels::scalar
