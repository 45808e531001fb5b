#pragma once
// bfloat16: the top 16 bits of an IEEE float32 (same exponent range, 8 bits of mantissa).
// Used to store the weights that KV-cached decoding streams, which halves the bytes a
// decode call reads; arithmetic stays float32 (a weight is widened exactly before its FMA).
#include <bit>
#include <cstdint>

namespace bd3::kernels {

struct bfloat16 {
  uint16_t bits = 0;
};

// Exact: every bfloat16 is a float.
inline float to_float(bfloat16 h) {
  return std::bit_cast<float>(uint32_t(h.bits) << 16);
}

// Round to nearest, ties to even (as PyTorch's float -> bfloat16). NaN stays a quiet NaN of
// the same sign; finite values past the largest bfloat16 round to infinity.
inline bfloat16 to_bfloat16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return {uint16_t((u >> 16) | 0x0040u)};
  const uint32_t rounded = u + 0x7FFFu + ((u >> 16) & 1u);
  return {uint16_t(rounded >> 16)};
}

}  // namespace bd3::kernels
