#pragma once
// Attention backend policies. All compute the same masked softmax attention
// (layers/attention.hpp); they differ in how:
//  - ScalarAttention: plain loops over every (query, key) pair, the reference;
//  - SimdAttention: xsimd dot products and softmax over every key, masked keys at -inf;
//  - BlockSparseAttention: visits only the non-empty (query tile x key range) tiles of
//    the mask and does each tile with GEMMs (about a quarter of the dense work for the
//    training mask).
#include <concepts>
#include <string_view>
#include <type_traits>

namespace bd3 {

enum class AttentionKind { scalar, simd, block_sparse };

struct ScalarAttention {
  static constexpr AttentionKind kind = AttentionKind::scalar;
  static constexpr std::string_view name = "scalar";
  static constexpr bool float_only = false;
};
struct SimdAttention {
  static constexpr AttentionKind kind = AttentionKind::simd;
  static constexpr std::string_view name = "simd";
  static constexpr bool float_only = true;
};
struct BlockSparseAttention {
  static constexpr AttentionKind kind = AttentionKind::block_sparse;
  static constexpr std::string_view name = "block_sparse";
  static constexpr bool float_only = false;
};

template <class A>
concept AttentionBackend = requires {
  { A::kind } -> std::convertible_to<AttentionKind>;
  { A::name } -> std::convertible_to<std::string_view>;
  { A::float_only } -> std::convertible_to<bool>;
};

}  // namespace bd3
