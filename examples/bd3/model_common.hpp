#pragma once
// What several subcommands share: the CLI's model type, presets, thread setup.
#include <bd3/bd3.hpp>
#include <bd3/train/trainer_state.hpp>

#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <random>
#include <string>

namespace bd3::cli {

using CliModel = BlockDiffusionModel<BlockSize<dynamic>, BlockSparseAttention, float>;

// Far above any machine's cores; libgomp crashes when asked for ~10^5 threads.
inline constexpr int kMaxThreads = 1024;
// Counts that multiply work without allocating (DDPM steps, retries, micro-batches, mask
// draws): a bound that turns a typo into an error instead of a run that never ends.
inline constexpr int64_t kMaxWorkCount = int64_t{1} << 20;

inline void set_threads(int threads) {
  if (threads < 0 || threads > kMaxThreads)
    fail_usage(fmt::format("--threads must be in 1..{} (or 0 for all cores), got {}", kMaxThreads,
                           threads));
  if (threads > 0) {
    omp_set_num_threads(threads);
    Eigen::setNbThreads(threads);
  }
}

inline void check_count(const char* flag, int64_t value, int64_t lo, int64_t hi = kMaxWorkCount) {
  if (value < lo || value > hi)
    fail_usage(fmt::format("{} must be in {}..{}, got {}", flag, lo, hi, value));
}

// ---- Memory estimates: refuse a job that cannot fit before allocating for it ----------

// Physical memory, or the cgroup (v2) limit when lower: what this process may use.
inline double memory_available_bytes() {
  double bytes = double(::sysconf(_SC_PHYS_PAGES)) * double(::sysconf(_SC_PAGE_SIZE));
  std::ifstream cg("/sys/fs/cgroup/memory.max");
  std::string limit;
  if (cg >> limit && !limit.empty() &&
      std::all_of(limit.begin(), limit.end(),
                  [](unsigned char ch) { return ch >= '0' && ch <= '9'; }))
    bytes = std::min(bytes, std::stod(limit));
  return bytes > 0 ? bytes : 1e18;
}

inline std::string bytes_text(double b) {
  if (b >= 1e12) return fmt::format("{:.1f} TB", b / 1e12);
  if (b >= 1e9) return fmt::format("{:.1f} GB", b / 1e9);
  return fmt::format("{:.0f} MB", b / 1e6);
}

// Usage error when `bytes` (an estimate of the job's peak) exceed the memory available.
inline void check_memory(double bytes, const std::string& job) {
  const double available = memory_available_bytes();
  if (bytes > available)
    fail_usage(fmt::format("{} needs about {} of memory, more than the {} available", job,
                           bytes_text(bytes), bytes_text(available)));
}

// Training (and the forward/backward of eval, bench, eval-gen): the parameters with
// gradient, AdamW moments, EMA and a checkpoint's copies, the activations kept for
// backward over batch x [xt, x0] rows, and the logits with their gradient.
inline double training_bytes(const ModelConfig& c, int64_t batch) {
  const double P = double(ParameterLayout(c).total()), D = c.hidden_dim, L = c.model_length;
  const double rows = double(batch) * 2 * L;
  return 4.0 *
         (9 * P + rows * (18 * D * c.n_blocks + 10 * D) + 2 * double(batch) * L * c.vocab_size);
}

// --decode-weights: the names of DecodeWeights.
inline constexpr std::initializer_list<const char*> decode_weight_names = {"f32", "f32-packed",
                                                                           "bf16"};
inline DecodeWeights parse_decode_weights(const std::string& name) {
  if (name == "f32") return DecodeWeights::f32;
  if (name == "f32-packed") return DecodeWeights::f32_packed;
  if (name == "bf16") return DecodeWeights::bf16;
  fail_usage("--decode-weights must be f32, f32-packed or bf16, not " + name);
}
// Bytes per parameter of the packed decode copy (an upper bound: it holds the matrices).
inline double decode_copy_bytes(DecodeWeights storage) {
  return storage == DecodeWeights::f32_packed ? 4 : storage == DecodeWeights::bf16 ? 2 : 0;
}

// Sampling: the weights, and per sequence its tokens, the KV cache, the current block's
// logits and distributions, the forward's rows.
inline double sampling_bytes(const ModelConfig& c, int64_t batch, int64_t length,
                             DecodeWeights storage = DecodeWeights::f32) {
  const double P = double(ParameterLayout(c).total()), D = c.hidden_dim, Bp = c.block_size;
  const double per_sequence = 4.0 * double(length) + 16 * Bp * c.vocab_size +
                              8.0 * c.n_blocks * (double(c.model_length) + 2 * Bp) * D +
                              4.0 * 2 * Bp * 24 * D;
  return (8 + decode_copy_bytes(storage)) * P + double(batch) * per_sequence;
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
  // Uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)) from the top 24 bits of each draw
  // (std::uniform_real_distribution<float> takes a long double logarithm per value in
  // libstdc++: 25 s for the 162 M weights of `small`).
  std::mt19937_64 rng(seed);
  for (const auto& e : model.layout().entries()) {
    const double fan_in = e.shape.size() == 2 ? double(e.shape[1]) : 1.0;
    const float bound = float(1.0 / std::sqrt(fan_in));
    for (int64_t i = 0; i < e.size; ++i) {
      const float unit = float(rng() >> 40) * 0x1p-24f;  // [0, 1)
      model.parameters()[size_t(e.offset + i)] = bound * (2.0f * unit - 1.0f);
    }
  }
  model.parameters_changed();
}

// A model directory, or a training output directory (its checkpoint.json names the model).
inline std::filesystem::path model_dir(const std::string& dir) {
  return train::resolve_checkpoint_dir(dir);
}

// The noise schedule a checkpoint was trained with (its trainer_state.json), else
// loglinear (the official checkpoints' schedule).
inline std::string recorded_noise(const std::filesystem::path& dir) {
  const auto state = dir / "trainer_state.json";
  if (!std::filesystem::exists(state)) return "loglinear";
  return train::TrainerState::from_json(read_json_file(state), state.string()).options.noise;
}

inline CliModel load_model(const std::string& dir) {
  auto ck = load_checkpoint(model_dir(dir));
  CliModel model(ck.config);
  std::copy(ck.parameters.begin(), ck.parameters.end(), model.parameters().begin());
  model.parameters_changed();
  return model;
}

}  // namespace bd3::cli
