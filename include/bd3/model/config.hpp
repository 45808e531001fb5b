#pragma once
// The model's dimensions and options: the BD3LMConfig fields of the official Hugging Face
// checkpoints (config.json), validated before anything is allocated.
#include <bd3/error.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace bd3 {

struct ModelConfig {
  int block_size = 0;    // B'; 0: the model type's BlockSize<N> (model.hpp)
  int vocab_size = 0;    // V, MASK included
  int model_length = 0;  // L, the training context (and the sampling window)
  int hidden_dim = 0;    // D
  int cond_dim = 128;    // C
  int n_blocks = 0;      // transformer layers
  int n_heads = 0;       // H
  bool adaln = true;
  bool time_conditioning = false;
  bool cross_attn = true;
  bool causal = false;
  double dropout = 0.0;
  bool var_min = true;
  double sampling_eps_min = 1e-3;  // the clipped noise interval [beta, omega]
  double sampling_eps_max = 1.0;
  int mask_index = -1;  // defaults to vocab_size - 1

  // Hard limits against hostile files: far above any real model, far below overflow.
  static constexpr int64_t max_dim = 1 << 16;
  static constexpr int64_t max_vocab = 1 << 22;
  static constexpr int64_t max_length = 1 << 20;
  static constexpr int64_t max_layers = 1024;

  int head_dim() const { return hidden_dim / n_heads; }
  int num_blocks_per_sequence() const { return model_length / block_size; }

  void validate() const {
    auto in_range = [](const char* name, int64_t v, int64_t lo, int64_t hi) {
      if (v < lo || v > hi)
        fail(std::string("config: ") + name + " = " + std::to_string(v) + " is outside [" +
             std::to_string(lo) + ", " + std::to_string(hi) + "]");
    };
    in_range("vocab_size", vocab_size, 2, max_vocab);
    in_range("hidden_dim", hidden_dim, 2, max_dim);
    in_range("cond_dim", cond_dim, 1, max_dim);
    in_range("n_heads", n_heads, 1, max_dim);
    in_range("n_blocks", n_blocks, 1, max_layers);
    in_range("model_length", model_length, 1, max_length);
    in_range("block_size", block_size, 1, model_length);
    in_range("mask_index", mask_index, 0, vocab_size - 1);
    if (hidden_dim % n_heads != 0)
      fail("config: hidden_dim " + std::to_string(hidden_dim) + " is not divisible by n_heads " +
           std::to_string(n_heads));
    if (head_dim() % 2 != 0)
      fail("config: the head size hidden_dim/n_heads = " + std::to_string(head_dim()) +
           " must be even (rotary embedding)");
    if (model_length % block_size != 0)
      fail("config: block_size " + std::to_string(block_size) + " does not divide model_length " +
           std::to_string(model_length));
    if (!cross_attn)
      fail("config: cross_attn = false is not a BD3-LM (the [xt, x0] pass needs it)");
    if (causal)
      fail("config: causal = true is not supported (BD3-LMs use the block-diffusion mask)");
    if (time_conditioning)
      fail(
          "config: time_conditioning = true is not supported (the official BD3-LMs train without "
          "it)");
    if (!(dropout >= 0.0 && dropout < 1.0)) fail("config: dropout must be in [0, 1)");
    if (!(sampling_eps_min > 0.0 && sampling_eps_min <= sampling_eps_max &&
          sampling_eps_max <= 1.0))
      fail("config: need 0 < sampling_eps_min <= sampling_eps_max <= 1");
  }

  static ModelConfig from_json(const nlohmann::json& j) {
    if (!j.is_object()) fail("config.json: not a JSON object");
    ModelConfig c;
    auto get_int = [&](const char* key, int& out, bool required) {
      auto it = j.find(key);
      if (it == j.end()) {
        if (required) fail(std::string("config.json: missing \"") + key + "\"");
        return;
      }
      if (!it->is_number_integer())
        fail(std::string("config.json: \"") + key + "\" must be an integer");
      // A value above INT64_MAX is unsigned in nlohmann and would wrap in get<int64_t>().
      const bool huge = it->is_number_unsigned() && it->get<uint64_t>() > (uint64_t(1) << 30);
      const int64_t v = huge ? 0 : it->get<int64_t>();
      if (huge || v < -1 || v > (int64_t(1) << 30))
        fail(std::string("config.json: \"") + key + "\" = " + it->dump() + " is out of range");
      out = static_cast<int>(v);
    };
    auto get_bool = [&](const char* key, bool& out) {
      auto it = j.find(key);
      if (it == j.end()) return;
      if (!it->is_boolean())
        fail(std::string("config.json: \"") + key + "\" must be true or false");
      out = it->get<bool>();
    };
    auto get_double = [&](const char* key, double& out) {
      auto it = j.find(key);
      if (it == j.end()) return;
      if (!it->is_number()) fail(std::string("config.json: \"") + key + "\" must be a number");
      out = it->get<double>();
    };
    get_int("block_size", c.block_size, true);
    get_int("vocab_size", c.vocab_size, true);
    get_int("model_length", c.model_length, true);
    get_int("hidden_dim", c.hidden_dim, true);
    get_int("cond_dim", c.cond_dim, false);
    get_int("n_blocks", c.n_blocks, true);
    get_int("n_heads", c.n_heads, true);
    get_bool("adaln", c.adaln);
    get_bool("time_conditioning", c.time_conditioning);
    get_bool("cross_attn", c.cross_attn);
    get_bool("causal", c.causal);
    get_double("dropout", c.dropout);
    get_bool("var_min", c.var_min);
    get_double("sampling_eps_min", c.sampling_eps_min);
    get_double("sampling_eps_max", c.sampling_eps_max);
    c.mask_index = c.vocab_size - 1;
    get_int("mask_index", c.mask_index, false);
    c.validate();
    return c;
  }

  nlohmann::json to_json() const {
    return nlohmann::json{{"model_type", "bd3lm"},
                          {"architectures", {"BD3LM"}},
                          {"auto_map",
                           {{"AutoConfig", "configuration_bd3lm.BD3LMConfig"},
                            {"AutoModelForMaskedLM", "modeling_bd3lm.BD3LM"}}},
                          {"block_size", block_size},
                          {"vocab_size", vocab_size},
                          {"model_length", model_length},
                          {"hidden_dim", hidden_dim},
                          {"cond_dim", cond_dim},
                          {"n_blocks", n_blocks},
                          {"n_heads", n_heads},
                          {"adaln", adaln},
                          {"time_conditioning", time_conditioning},
                          {"cross_attn", cross_attn},
                          {"causal", causal},
                          {"dropout", dropout},
                          {"attn_backend", "sdpa"},
                          {"var_min", var_min},
                          {"sampling_eps_min", sampling_eps_min},
                          {"sampling_eps_max", sampling_eps_max},
                          {"mask_index", mask_index}};
  }
};

}  // namespace bd3
