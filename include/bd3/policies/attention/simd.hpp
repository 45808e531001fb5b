#pragma once
// SimdAttention: xsimd dot products and softmax over every key, masked keys at -inf.
// float32 only.
#include <bd3/policies/attention_backend.hpp>

#include <concepts>
#include <string_view>

namespace bd3 {

struct SimdAttention {
  static constexpr std::string_view name = "simd";
  template <std::same_as<float> T, class Mask>
  static void forward(const AttentionArgs<T>& args, const Mask& mask) {
    detail::attention_dense<T, Mask, true>(args, mask);
  }
  template <std::same_as<float> T, class Mask>
  static void backward(const AttentionGradArgs<T>& args, const Mask& mask) {
    detail::attention_dense_backward<T, Mask, true>(args, mask);
  }
};

}  // namespace bd3
