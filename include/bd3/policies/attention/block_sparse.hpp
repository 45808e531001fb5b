#pragma once
// BlockSparseAttention: visits only the non-empty (query tile x key range) tiles of the
// mask and does each tile with GEMMs (about a quarter of the dense work for the training
// mask). Decode calls of at most detail::decode_kernel_max_rows rows per block run the
// decode kernel (scores and weighted values streamed from the KV cache).
#include <bd3/policies/attention_backend.hpp>

#include <string_view>
#include <type_traits>

namespace bd3 {

struct BlockSparseAttention {
  static constexpr std::string_view name = "block_sparse";
  template <class T, class Mask>
  static void forward(const AttentionArgs<T>& args, const Mask& mask) {
    if constexpr (std::is_same_v<Mask, DecodeMask>)
      if (mask.block_size <= detail::decode_kernel_max_rows)
        return detail::attention_decode(args, mask);
    detail::attention_block_sparse<T>(args, mask);
  }
  template <class T, class Mask>
  static void backward(const AttentionGradArgs<T>& args, const Mask& mask) {
    detail::attention_block_sparse_backward<T>(args, mask);
  }
};

}  // namespace bd3
