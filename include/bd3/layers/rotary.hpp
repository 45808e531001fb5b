#pragma once
// Rotary position embedding of q and k, forward and backward.
//   Table:    angle(p, j) = p * inv_freq_j, inv_freq_j = 1 / 10000^(2j / Dh)   [n, Dh/2]
//   Forward:  q and k of every head of row r rotated by the angles of position pos(r)
//             (qkv [N, 3D]: q at columns [0, D), k at [D, 2D), v untouched)
//   Backward: dq and dk rotated back (the transpose of the rotation)
#include <bd3/kernels/kernels.hpp>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <vector>

namespace bd3::layers {

// cos/sin for positions [pos0, pos0 + n): [n, Dh/2] each. inv_freq as the reference
// computes it (float32); the angle in double, so long generations keep their precision.
template <class T>
void rotary_table(int head_dim, int64_t pos0, int n, std::vector<T>& cos, std::vector<T>& sin) {
  const int half = head_dim / 2;
  cos.resize(size_t(n) * half);
  sin.resize(size_t(n) * half);
  for (int j = 0; j < half; ++j) {
    const float inv = 1.0f / std::pow(10000.0f, float(2 * j) / float(head_dim));
    for (int i = 0; i < n; ++i) {
      const double angle = double(pos0 + i) * double(inv);
      cos[size_t(i) * half + j] = T(std::cos(angle));
      sin[size_t(i) * half + j] = T(std::sin(angle));
    }
  }
}

namespace detail {
// Rotates q and k of every head of every row by the angles of its position (Transpose:
// by their negatives, the backward).
template <bool Transpose, class T, class PosFn>
void rotate_qk(T* qkv, int64_t N, int D, int H, int Dh, PosFn pos, const std::vector<T>& cos,
               const std::vector<T>& sin) {
  const int half = Dh / 2;
#pragma omp parallel for schedule(static) if (N * D > 32768)
  for (int64_t i = 0; i < N; ++i) {
    const int p = pos(i);
    const T* c = cos.data() + size_t(p) * half;
    const T* s = sin.data() + size_t(p) * half;
    for (int h = 0; h < H; ++h)
      for (T* x : {qkv + i * 3 * D + h * Dh, qkv + i * 3 * D + D + h * Dh}) {  // q, k
        if constexpr (Transpose)
          kernels::rotary_transpose<T>(x, c, s, Dh);
        else
          kernels::rotary<T>(x, c, s, Dh);
      }
  }
}
}  // namespace detail

// pos(r) -> int: the row of the table that row r of qkv uses.
template <class T, class PosFn>
void rotary_forward(T* qkv, int64_t N, int D, int H, int Dh, PosFn pos, const std::vector<T>& cos,
                    const std::vector<T>& sin) {
  detail::rotate_qk<false>(qkv, N, D, H, Dh, pos, cos, sin);
}

// dqkv: the gradient of the rotated q and k in, of the unrotated ones out (v untouched).
template <class T, class PosFn>
void rotary_backward(T* dqkv, int64_t N, int D, int H, int Dh, PosFn pos, const std::vector<T>& cos,
                     const std::vector<T>& sin) {
  detail::rotate_qk<true>(dqkv, N, D, H, Dh, pos, cos, sin);
}

}  // namespace bd3::layers
