// Sampling throughput (include/bd3/sample/sampler.hpp) on random-weight models:
//  * BM_sample_mid: the "mid" preset (hidden 256, 4 layers, 4 heads, vocab 4096,
//    length 256, block 4), one 256-token sequence per sequence per iteration, for
//    first-hitting, DDPM (T = block size), threshold (tau 0.9 and 0.5), with and without
//    the KV cache, with and without fused commits, batch 1 and 4;
//  * BM_sample_mid_past_window: "mid", 1024 tokens (four windows), batch 1 and 4;
//  * BM_sample_small: the official "small" size (hidden 768, 12 layers, 12 heads, vocab
//    50258, length 1024, block 4), first-hitting with KV cache and fused commits.
// Counters: tokens_per_s = generated tokens (all sequences) / wall time;
// nfe_per_token = denoising calls a sequence needed per generated token;
// commits_per_token = separate cache-commit calls per generated token.
// Random weights give near-uniform p_x0, so the threshold sampler's NFE here is a worst
// case (a trained model is far more confident).
//   build/release/bench_sample --benchmark_min_time=1 [--benchmark_filter=small]
#include <bd3/bd3.hpp>
#include <bd3/sample/random.hpp>
#include <bd3/sample/sampler.hpp>

#include <benchmark/benchmark.h>
#include <omp.h>

#include <cmath>
#include <memory>
#include <string>

namespace {

using Model =
    bd3::BlockDiffusionModel<bd3::BlockSize<bd3::dynamic>, bd3::BlockSparseAttention, float>;
using bd3::sample::Method;

bd3::ModelConfig preset(const std::string& name) {
  bd3::ModelConfig c;
  if (name == "small") {
    c.hidden_dim = 768, c.n_blocks = 12, c.n_heads = 12, c.vocab_size = 50258,
    c.model_length = 1024;
  } else {
    c.hidden_dim = 256, c.n_blocks = 4, c.n_heads = 4, c.vocab_size = 4096, c.model_length = 256;
  }
  c.block_size = 4, c.cond_dim = 128, c.mask_index = c.vocab_size - 1;
  c.validate();
  return c;
}

// Uniform weights of scale 1/sqrt(fan_in) (a counter-based generator: fast for 124M).
const Model& model(const std::string& name) {
  static std::unique_ptr<Model> mid, small;
  auto& slot = name == "small" ? small : mid;
  if (!slot) {
    slot = std::make_unique<Model>(preset(name));
    auto params = slot->parameters();
    for (const auto& e : slot->layout().entries()) {
      const double fan_in = e.shape.size() == 2 ? double(e.shape[1]) : 1.0;
      const double scale = 1.0 / std::sqrt(fan_in);
      bd3::sample::RandomStream rng(uint64_t(e.offset) + 1);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < e.size; ++i)
        params[size_t(e.offset + i)] = float((2 * rng.uniform_at(uint64_t(i)) - 1) * scale);
    }
    slot->parameters_changed();
  }
  return *slot;
}

void run(benchmark::State& state, const std::string& preset_name, bd3::sample::SamplerOptions o) {
  const Model& m = model(preset_name);
  int64_t tokens = 0, nfe = 0, commits = 0, retries = 0;
  uint64_t seed = 1;
  for (auto _ : state) {
    o.seed = seed++;
    bd3::sample::Sampler<Model> sampler(m, o);
    for (const auto& r : sampler.generate()) {
      tokens += r.generated_tokens();
      nfe += r.nfe;
      commits += r.commit_calls;
      retries += r.retries;
    }
  }
  state.counters["tokens_per_s"] = benchmark::Counter(double(tokens), benchmark::Counter::kIsRate);
  state.counters["nfe_per_token"] = double(nfe) / double(tokens);
  state.counters["commits_per_token"] = double(commits) / double(tokens);
  state.counters["retries"] = double(retries);
  state.counters["threads"] = omp_get_max_threads();
}

// Args: method (0 first-hitting, 1 ddpm T = 4, 2 threshold 0.9, 3 threshold 0.5,
// 4 threshold 0 = one call per block, the parallel-decoding ceiling), kv cache, fused
// commit, batch.
void BM_sample_mid(benchmark::State& state) {
  bd3::sample::SamplerOptions o;
  const int method = int(state.range(0));
  o.method = method == 0 ? Method::first_hitting : method == 1 ? Method::ddpm : Method::threshold;
  o.steps = 4;
  o.threshold = method == 2 ? 0.9 : method == 3 ? 0.5 : 0.0;
  o.kv_cache = state.range(1) != 0;
  o.fused_commit = state.range(2) != 0;
  o.batch = int(state.range(3));
  o.length = 256;
  static const char* names[] = {"first_hitting", "ddpm_T4", "threshold_0.9", "threshold_0.5",
                                "threshold_0"};
  state.SetLabel(std::string(names[method]) + (o.kv_cache ? " kv" : " no-kv") +
                 (o.kv_cache ? (o.fused_commit ? " fused" : " separate") : "") + " batch " +
                 std::to_string(o.batch));
  run(state, "mid", o);
}
BENCHMARK(BM_sample_mid)
    ->ArgNames({"method", "kv", "fused", "batch"})
    ->ArgsProduct({{0, 1, 2, 3, 4}, {1}, {0, 1}, {1, 4}})
    ->ArgsProduct({{0, 1, 2, 3, 4}, {0}, {0}, {1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Sampling four windows long on "mid" (1024 tokens, window 256): 192 of the 256 blocks are
// committed to a full cache, whose window then slides (kv_cache.hpp).
void BM_sample_mid_past_window(benchmark::State& state) {
  bd3::sample::SamplerOptions o;
  o.length = 1024;
  o.batch = int(state.range(0));
  state.SetLabel("first_hitting kv fused batch " + std::to_string(o.batch));
  run(state, "mid", o);
}
BENCHMARK(BM_sample_mid_past_window)
    ->ArgNames({"batch"})
    ->Arg(1)
    ->Arg(4)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Arg: generated tokens per iteration (the window slides past 1024 for the longer one).
void BM_sample_small(benchmark::State& state) {
  bd3::sample::SamplerOptions o;
  o.length = state.range(0);
  o.batch = int(state.range(1));
  state.SetLabel("first_hitting kv fused batch " + std::to_string(o.batch));
  run(state, "small", o);
}
BENCHMARK(BM_sample_small)
    ->ArgNames({"length", "batch"})
    ->Args({128, 1})
    ->Args({128, 4})
    ->Args({1100, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(1);

}  // namespace

BENCHMARK_MAIN();
