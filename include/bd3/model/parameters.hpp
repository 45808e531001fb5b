#pragma once
// Parameters, gradients and optimizer state live in flat buffers that share one layout
// table (llm.c style). Names and shapes are the official checkpoints' keys.
#include <bd3/error.hpp>
#include <bd3/model/config.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace bd3 {

struct ParameterEntry {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;  // in elements
  int64_t size = 0;
};

// Offsets (in elements) of one transformer layer's tensors.
struct LayerOffsets {
  int64_t norm1, attn_qkv, attn_out, norm2, mlp0_w, mlp0_b, mlp2_w, mlp2_b, ada_w, ada_b;
};

class ParameterLayout {
 public:
  ParameterLayout() = default;
  explicit ParameterLayout(const ModelConfig& c) {
    const int64_t V = c.vocab_size, D = c.hidden_dim, C = c.cond_dim, F = 4 * D;
    embedding = add("backbone.vocab_embed.embedding", {V, D});
    if (c.adaln) {
      sigma0_w = add("backbone.sigma_map.mlp.0.weight", {C, 256});
      sigma0_b = add("backbone.sigma_map.mlp.0.bias", {C});
      sigma2_w = add("backbone.sigma_map.mlp.2.weight", {C, C});
      sigma2_b = add("backbone.sigma_map.mlp.2.bias", {C});
    }
    for (int i = 0; i < c.n_blocks; ++i) {
      std::string p = "backbone.blocks." + std::to_string(i) + ".";
      LayerOffsets l{};
      l.norm1 = add(p + "norm1.weight", {D});
      l.attn_qkv = add(p + "attn_qkv.weight", {3 * D, D});
      l.attn_out = add(p + "attn_out.weight", {D, D});
      l.norm2 = add(p + "norm2.weight", {D});
      l.mlp0_w = add(p + "mlp.0.weight", {F, D});
      l.mlp0_b = add(p + "mlp.0.bias", {F});
      l.mlp2_w = add(p + "mlp.2.weight", {D, F});
      l.mlp2_b = add(p + "mlp.2.bias", {D});
      l.ada_w = l.ada_b = -1;
      if (c.adaln) {
        l.ada_w = add(p + "adaLN_modulation.weight", {6 * D, C});
        l.ada_b = add(p + "adaLN_modulation.bias", {6 * D});
      }
      layers.push_back(l);
    }
    norm_final = add("backbone.output_layer.norm_final.weight", {D});
    out_w = add("backbone.output_layer.linear.weight", {V, D});
    out_b = add("backbone.output_layer.linear.bias", {V});
    if (c.adaln) {
      out_ada_w = add("backbone.output_layer.adaLN_modulation.weight", {2 * D, C});
      out_ada_b = add("backbone.output_layer.adaLN_modulation.bias", {2 * D});
    }
  }

  const std::vector<ParameterEntry>& entries() const { return entries_; }
  int64_t total() const { return total_; }
  const ParameterEntry* find(std::string_view name) const {
    for (auto& e : entries_)
      if (e.name == name) return &e;
    return nullptr;
  }

  int64_t embedding = -1, sigma0_w = -1, sigma0_b = -1, sigma2_w = -1, sigma2_b = -1;
  std::vector<LayerOffsets> layers;
  int64_t norm_final = -1, out_w = -1, out_b = -1, out_ada_w = -1, out_ada_b = -1;

 private:
  int64_t add(std::string name, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (auto s : shape)
      if (__builtin_mul_overflow(n, s, &n)) fail("parameter " + name + ": size overflows");
    if (n > (int64_t(1) << 36))
      fail("parameter " + name + " has " + std::to_string(n) + " elements: too large");
    int64_t offset = total_;
    entries_.push_back({std::move(name), std::move(shape), offset, n});
    total_ += n;
    return offset;
  }
  std::vector<ParameterEntry> entries_;
  int64_t total_ = 0;
};

// Number of parameters a config implies, computed without allocating (for validation).
inline int64_t parameter_count(const ModelConfig& c) {
  return ParameterLayout(c).total();
}

}  // namespace bd3
