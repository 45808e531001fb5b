#pragma once
// What several subcommands share: the CLI's model type, presets, thread setup.
#include <bd3/bd3.hpp>
#include <bd3/train/trainer_state.hpp>

#include <omp.h>

#include <Eigen/Core>

#include <cstdint>
#include <random>
#include <string>

namespace bd3::cli {

using CliModel = BlockDiffusionModel<BlockSize<dynamic>, RuntimeNoise, BlockSparseAttention, float>;

inline void set_threads(int threads) {
  if (threads < 0) fail_usage("--threads must be >= 1 (or 0 for all cores)");
  if (threads > 0) {
    omp_set_num_threads(threads);
    Eigen::setNbThreads(threads);
  }
}

// Random-weight models of the official small size and of a mid size, for benchmarks.
inline ModelConfig preset_config(const std::string& name) {
  ModelConfig c;
  if (name == "small") {
    c.hidden_dim = 768, c.n_blocks = 12, c.n_heads = 12, c.vocab_size = 50258,
    c.model_length = 1024;
    c.block_size = 4, c.cond_dim = 128;
  } else if (name == "mid") {
    c.hidden_dim = 256, c.n_blocks = 4, c.n_heads = 4, c.vocab_size = 4096, c.model_length = 256;
    c.block_size = 4, c.cond_dim = 128;
  } else {
    fail_usage("unknown preset '" + name + "' (expected small or mid)");
  }
  c.mask_index = c.vocab_size - 1;
  c.validate();
  return c;
}

// Fills every parameter with uniform values in [-scale/sqrt(fan), scale/sqrt(fan)]-ish;
// good enough for timing (no zero weights, finite activations).
inline void randomize(CliModel& model, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (const auto& e : model.layout().entries()) {
    const double fan_in = e.shape.size() == 2 ? double(e.shape[1]) : 1.0;
    std::uniform_real_distribution<float> dist(-float(1.0 / std::sqrt(fan_in)),
                                               float(1.0 / std::sqrt(fan_in)));
    for (int64_t i = 0; i < e.size; ++i) model.parameters()[size_t(e.offset + i)] = dist(rng);
  }
  model.parameters_changed();
}

// A model directory, or a training output directory (its checkpoint.json names the model).
inline std::filesystem::path model_dir(const std::string& dir) {
  return train::resolve_checkpoint_dir(dir);
}

inline CliModel load_model(const std::string& dir) {
  auto ck = load_checkpoint(model_dir(dir));
  CliModel model(ck.config);
  std::copy(ck.parameters.begin(), ck.parameters.end(), model.parameters().begin());
  model.parameters_changed();
  return model;
}

}  // namespace bd3::cli
