#pragma once
// Block size policy: BlockSize<N> fixes B' at compile time; BlockSize<dynamic> (like
// Eigen's Dynamic) carries it at run time. Block size 1 is autoregressive, B' = L is MDLM.
#include <bd3/error.hpp>

#include <concepts>
#include <string>

namespace bd3 {

inline constexpr int dynamic = -1;

template <int N>
struct BlockSize {
  static_assert(N >= 1, "BlockSize<N>: N must be >= 1 (or bd3::dynamic for a run-time size)");
  static constexpr bool is_dynamic = false;
  constexpr BlockSize() = default;
  // Accepts the size read from a checkpoint and checks it against N.
  explicit BlockSize(int runtime_value) {
    if (runtime_value != N)
      fail_usage("block size " + std::to_string(runtime_value) +
                 " does not match the model type's BlockSize<" + std::to_string(N) + ">");
  }
  constexpr int get() const noexcept { return N; }
};

template <>
struct BlockSize<dynamic> {
  static constexpr bool is_dynamic = true;
  BlockSize() = default;
  explicit BlockSize(int runtime_value) : value(runtime_value) {
    if (runtime_value < 1)
      fail_usage("block size must be >= 1, got " + std::to_string(runtime_value));
  }
  int get() const noexcept { return value; }
  int value = 1;
};

template <class P>
concept BlockSizePolicy = requires(const P p, int v) {
  { P::is_dynamic } -> std::convertible_to<bool>;
  { p.get() } -> std::convertible_to<int>;
  P(v);
};

}  // namespace bd3
