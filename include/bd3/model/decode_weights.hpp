#pragma once
// How KV-cached decode calls store the weight matrices of the linear layers they stream
// (qkv, attention output, MLP in and out, output layer):
//  - f32: the parameters themselves, row by row (the default; no copy);
//  - f32_packed: a float32 copy in the packed tiles of kernels/gemm.hpp (4 more bytes per
//    weight; streams nearer the memory bandwidth: docs/performance.md);
//  - bf16: a packed bfloat16 copy, half the bytes of f32, each weight rounded to the
//    nearest bfloat16 (2 more bytes per weight).
// The arithmetic stays float32; embeddings, biases and norms stay float32. f32 and
// f32_packed sum in different orders (equal up to rounding); bf16 gives exactly what
// f32_packed gives on the model with those matrices rounded to bfloat16
// (tests/test_decode_bf16.cpp).
#include <bd3/detail/huge_pages.hpp>
#include <bd3/error.hpp>
#include <bd3/kernels/bfloat16.hpp>
#include <bd3/kernels/gemm.hpp>
#include <bd3/layers/gelu.hpp>
#include <bd3/layers/linear.hpp>
#include <bd3/model/config.hpp>
#include <bd3/model/parameters.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace bd3 {

enum class DecodeWeights { f32, f32_packed, bf16 };

// The packed copies of the matrices decode calls stream (empty with DecodeWeights::f32),
// and the linear layer of a decode call that reads them.
template <class T>
class DecodeWeightStore {
 public:
  DecodeWeights storage() const { return storage_; }

  // Packs the matrices of `params` (layout `lay`) for `storage`.
  void pack(DecodeWeights storage, const ModelConfig& config, const ParameterLayout& lay,
            const T* params) {
    if constexpr (!std::is_same_v<T, float>)
      if (storage != DecodeWeights::f32)
        fail_usage("packed and bfloat16 decode weights need a float32 model");
    storage_ = storage;
    offsets_.clear();
    f32_ = {};
    bf16_ = {};
    if constexpr (std::is_same_v<T, float>) {
      if (storage_ == DecodeWeights::f32) return;
      const int64_t D = config.hidden_dim, F = 4 * D, V = config.vocab_size;
      struct Matrix {
        int64_t offset, rows, cols;
      };
      std::vector<Matrix> matrices;
      for (const auto& o : lay.layers)
        for (Matrix m : {Matrix{o.attn_qkv, 3 * D, D}, Matrix{o.attn_out, D, D},
                         Matrix{o.mlp0_w, F, D}, Matrix{o.mlp2_w, D, F}})
          matrices.push_back(m);
      matrices.push_back({lay.out_w, V, D});
      int64_t total = 0;
      for (const auto& m : matrices) {
        offsets_.emplace_back(m.offset, total);
        total += kernels::packed_size(m.rows, m.cols);
      }
      std::sort(offsets_.begin(), offsets_.end());
      auto fill = [&](auto& buffer) {
        buffer.resize(size_t(total));
        for (const auto& m : matrices)
          kernels::pack_weights(params + m.offset, m.rows, m.cols,
                                buffer.data() + packed_offset(m.offset));
      };
      if (storage_ == DecodeWeights::bf16)
        fill(bf16_);
      else
        fill(f32_);
    }
  }

  // y[N, out] = x[N, in] W^T + b with W at `w_offset` in `params` (or its packed copy);
  // `gelu`: y = gelu_tanh of that (in the packed kernel's epilogue, else a pass after it;
  // the same bits).
  void linear(const T* params, const T* x, int64_t N, int64_t in, int64_t w_offset, const T* b,
              int64_t out, T* y, bool gelu = false) const {
    if constexpr (std::is_same_v<T, float>) {
      if (storage_ != DecodeWeights::f32) {
        const int64_t at = packed_offset(w_offset);
        auto run = [&](const auto* P) {
          if (gelu)
            kernels::simd::linear_packed_gelu(x, N, in, P, b, out, y);
          else
            kernels::simd::linear_packed(x, N, in, P, b, out, y);
        };
        if (storage_ == DecodeWeights::bf16)
          run(bf16_.data() + at);
        else
          run(f32_.data() + at);
        return;
      }
    }
    layers::linear_forward<T>(x, N, in, params + w_offset, b, out, y, layers::LinearKernel::rows);
    if (gelu) layers::gelu_forward<T>(y, N, out, y);
  }

 private:
  int64_t packed_offset(int64_t w_offset) const {
    const auto it = std::lower_bound(offsets_.begin(), offsets_.end(),
                                     std::pair<int64_t, int64_t>{w_offset, 0});
    if (it == offsets_.end() || it->first != w_offset)
      fail("decode: no packed copy of the weights at offset " + std::to_string(w_offset));
    return it->second;
  }

  DecodeWeights storage_ = DecodeWeights::f32;
  // (offset in the parameters, offset in the packed copy) of each matrix, sorted.
  std::vector<std::pair<int64_t, int64_t>> offsets_;
  std::vector<float, detail::HugePageAllocator<float>> f32_;
  std::vector<kernels::bfloat16, detail::HugePageAllocator<kernels::bfloat16>> bf16_;
};

}  // namespace bd3
