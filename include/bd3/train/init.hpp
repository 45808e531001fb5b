#pragma once
// Parameter initialisation as the official code (models/hf/modeling_bd3lm.py) does it:
//  - vocab_embed.embedding [V, D]: kaiming_uniform_(a = sqrt(5)), i.e. U(-1/sqrt(D), 1/sqrt(D));
//  - every nn.Linear left at PyTorch's default: weight U(-1/sqrt(in), 1/sqrt(in)) (also
//    kaiming_uniform_ with a = sqrt(5)), bias U(-1/sqrt(in), 1/sqrt(in));
//    that is attn_qkv, attn_out, mlp.0, mlp.2 and the sigma_map MLP;
//  - LayerNorm weights (norm1, norm2, norm_final) = 1;
//  - zero: every adaLN_modulation (weight and bias) and the output linear (weight and
//    bias), so that at step 0 each block is the identity and the logits are 0.
// The random numbers come from CounterRng(seed, {init, tensor index}): one stream per
// tensor, so the values of a tensor do not depend on the others or on the thread count.
#include <bd3/diffusion/estimator.hpp>
#include <bd3/model/config.hpp>
#include <bd3/model/parameters.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <utility>

namespace bd3::train {

inline void init_parameters(const ModelConfig& config, std::span<float> params, uint64_t seed) {
  const ParameterLayout layout(config);
  if (params.size() != size_t(layout.total()))
    fail("init_parameters: buffer size does not match the config");
  const auto& entries = layout.entries();
  for (size_t e = 0; e < entries.size(); ++e) {
    const auto& ent = entries[e];
    auto out = params.subspan(size_t(ent.offset), size_t(ent.size));
    const std::string& name = ent.name;
    auto ends_with = [&](std::string_view s) {
      return name.size() >= s.size() && name.ends_with(s);
    };
    double bound = 0;
    if (name.find("adaLN_modulation") != std::string::npos ||
        name.starts_with("backbone.output_layer.linear.")) {
      std::fill(out.begin(), out.end(), 0.0f);
      continue;
    }
    if (ends_with("norm1.weight") || ends_with("norm2.weight") || ends_with("norm_final.weight")) {
      std::fill(out.begin(), out.end(), 1.0f);
      continue;
    }
    if (name == "backbone.vocab_embed.embedding") {
      bound = 1.0 / std::sqrt(double(ent.shape[1]));
    } else if (ends_with(".weight")) {
      bound = 1.0 / std::sqrt(double(ent.shape[1]));  // [out, in]
    } else if (ends_with(".bias")) {
      // The bias of a Linear: fan_in of its weight (the previous entry).
      const auto* w = layout.find(name.substr(0, name.size() - 5) + ".weight");
      if (!w) fail("init_parameters: no weight for bias " + name);
      bound = 1.0 / std::sqrt(double(w->shape[1]));
    } else {
      fail("init_parameters: do not know how to initialise " + name);
    }
    CounterRng rng(seed, {rng_stream::init, uint64_t(e)});
    for (auto& x : out) x = float((2.0 * rng.uniform() - 1.0) * bound);
  }
}

template <class Model>
void init_model(Model& model, uint64_t seed) {
  init_parameters(model.config(), model.parameters(), seed);
  model.parameters_changed();
}

// Starts `model` from a trained model's weights (fine-tuning; the official
// training.from_pretrained). No weight depends on the block size, the sequence length or
// the noise interval, so those are the new run's choice; every tensor's shape and the MASK
// id must match. `source` names the parent in the error.
template <class Model>
void init_from_weights(Model& model, const ModelConfig& parent, std::span<const float> weights,
                       const std::string& source) {
  const ModelConfig& c = model.config();
  const std::pair<const char*, std::pair<int64_t, int64_t>> shape[] = {
      {"layers", {parent.n_blocks, c.n_blocks}},
      {"hidden", {parent.hidden_dim, c.hidden_dim}},
      {"heads", {parent.n_heads, c.n_heads}},
      {"cond", {parent.cond_dim, c.cond_dim}},
      {"vocabulary", {parent.vocab_size, c.vocab_size}},
      {"MASK id", {parent.mask_index, c.mask_index}},
      {"adaLN", {parent.adaln, c.adaln}}};
  for (const auto& [what, v] : shape)
    if (v.first != v.second)
      fail_usage(source + ": the parent's " + what + " is " + std::to_string(v.first) +
                 " and this model's " + std::to_string(v.second) +
                 " (the weights have the parent's shape)");
  const ParameterLayout a(parent), b(c);
  if (a.total() != b.total() || weights.size() != size_t(a.total()) ||
      model.parameters().size() != size_t(b.total()))
    fail(source + ": the parent's weights do not match its config");
  std::copy(weights.begin(), weights.end(), model.parameters().begin());
  model.parameters_changed();
}

}  // namespace bd3::train
