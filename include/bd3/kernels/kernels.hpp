#pragma once
// Kernel dispatch: float runs the xsimd kernels (kernels/simd.hpp); any other scalar
// type (double, for finite-difference checks) runs the scalar twins (kernels/scalar.hpp).
//
// Call with T explicit, e.g. bd3::kernels::layer_norm<float>(x, y, n, eps, &mean); T is
// also deduced from the pointer arguments. Scalar parameters (eps, alpha) are
// non-deduced, so a double literal such as 1e-5 converts to T instead of clashing.
#include <bd3/kernels/scalar.hpp>
#include <bd3/kernels/simd.hpp>

#include <cstddef>
#include <type_traits>

namespace bd3::kernels {

template <class T>
inline constexpr bool use_simd = std::is_same_v<T, float>;

template <class T>
inline T layer_norm(const T* x, T* y, std::ptrdiff_t n, std::type_identity_t<T> eps, T* mean_out) {
  if constexpr (use_simd<T>) return simd::layer_norm(x, y, n, eps, mean_out);
  else return scalar::layer_norm<T>(x, y, n, eps, mean_out);
}

template <class T>
inline void scale_shift(T* y, const T* a, const T* b, std::ptrdiff_t n) {
  if constexpr (use_simd<T>) simd::scale_shift(y, a, b, n);
  else scalar::scale_shift<T>(y, a, b, n);
}

template <class T>
inline void gelu_tanh(const T* x, T* y, std::ptrdiff_t n) {
  if constexpr (use_simd<T>) simd::gelu_tanh(x, y, n);
  else scalar::gelu_tanh<T>(x, y, n);
}

// One element (any T; the scalar formula, as under the former dispatch macro for double).
template <class T>
inline T gelu_tanh(T x) {
  return scalar::gelu_tanh<T>(x);
}

template <class T>
inline void softmax(T* x, std::ptrdiff_t n) {
  if constexpr (use_simd<T>) simd::softmax(x, n);
  else scalar::softmax<T>(x, n);
}

template <class T>
inline T logsumexp(const T* x, std::ptrdiff_t n) {
  if constexpr (use_simd<T>) return simd::logsumexp(x, n);
  else return scalar::logsumexp<T>(x, n);
}

template <class T>
inline void rotary(T* x, const T* cos, const T* sin, std::ptrdiff_t dh) {
  if constexpr (use_simd<T>) simd::rotary(x, cos, sin, dh);
  else scalar::rotary<T>(x, cos, sin, dh);
}

template <class T>
inline void rotary_transpose(T* g, const T* cos, const T* sin, std::ptrdiff_t dh) {
  if constexpr (use_simd<T>) simd::rotary_transpose(g, cos, sin, dh);
  else scalar::rotary_transpose<T>(g, cos, sin, dh);
}

template <class T>
inline void gated_add(T* x, const T* g, const T* y, std::ptrdiff_t n) {
  if constexpr (use_simd<T>) simd::gated_add(x, g, y, n);
  else scalar::gated_add<T>(x, g, y, n);
}

template <class T>
inline T dot(const T* a, const T* b, std::ptrdiff_t n) {
  if constexpr (use_simd<T>) return simd::dot(a, b, n);
  else return scalar::dot<T>(a, b, n);
}

template <class T>
inline void axpy(std::type_identity_t<T> alpha, const T* x, T* y, std::ptrdiff_t n) {
  if constexpr (use_simd<T>) simd::axpy(alpha, x, y, n);
  else scalar::axpy<T>(alpha, x, y, n);
}

}  // namespace bd3::kernels
