#pragma once
// ScalarAttention: plain loops over every (query, key) pair, masked pairs skipped. The
// reference the other backends are tested against; any scalar type (double for
// finite-difference checks).
#include <bd3/policies/attention_backend.hpp>

#include <string_view>

namespace bd3 {

struct ScalarAttention {
  static constexpr std::string_view name = "scalar";
  template <class T, class Mask>
  static void forward(const AttentionArgs<T>& args, const Mask& mask) {
    detail::attention_dense<T, Mask, false>(args, mask);
  }
  template <class T, class Mask>
  static void backward(const AttentionGradArgs<T>& args, const Mask& mask) {
    detail::attention_dense_backward<T, Mask, false>(args, mask);
  }
};

}  // namespace bd3
