// NFE and throughput across block sizes and samplers (the design card's "benchmarks of NFE
// and throughput"): one random-weight model (hidden 256, 4 layers, 4 heads, vocabulary
// 4096, length L = 128; the "mid" preset of bench_sample at half its length), the same
// weights under block sizes B' = 1 (autoregressive), 4, 16 and L (MDLM), each sampler
// (first-hitting, DDPM with T = B' steps per block, threshold decoding with tau = 0.9),
// with the KV cache on and off (off: every call recomputes the sequence so far with
// forward_banded). One iteration generates one sequence of L tokens, BOS included.
// Counters (per case):
//   tokens_per_s  generated tokens / wall time;
//   nfe_per_token denoising model calls / generated tokens (first-hitting: 1; DDPM:
//                 at most T / B' per token, fewer when a step reveals nothing; threshold:
//                 1 here, see below);
//   ms_per_nfe    wall time / model calls: the cost of one call, which grows with B'
//                 (more rows) and without the cache (the whole prefix);
//   commits_per_token  separate cache-commit calls (fused commits ride along for free).
// Random weights give near-uniform p_x0, so the threshold sampler reveals one token per
// call here (its worst case; docs/sampling.md has a trained model's NFE).
//   build/release/bench_nfe --benchmark_min_time=0.5 [--benchmark_filter=kv:1]
#include <bd3/inference.hpp>
#include <bd3/sample/random.hpp>

#include <benchmark/benchmark.h>
#include <omp.h>

#include <cmath>
#include <map>
#include <memory>
#include <string>

namespace {

using Model =
    bd3::BlockDiffusionModel<bd3::BlockSize<bd3::dynamic>, bd3::BlockSparseAttention, float>;
using bd3::sample::Method;
constexpr int kLength = 128;

// The model of block size B' (one per size, built once); the weights depend only on the
// layout, which does not depend on B', so every size holds the same weights.
const Model& model(int block_size) {
  static std::map<int, std::unique_ptr<Model>> models;
  auto& slot = models[block_size];
  if (!slot) {
    bd3::ModelConfig c;
    c.hidden_dim = 256, c.n_blocks = 4, c.n_heads = 4, c.vocab_size = 4096, c.cond_dim = 128;
    c.model_length = kLength, c.block_size = block_size, c.mask_index = c.vocab_size - 1;
    slot = std::make_unique<Model>(c);
    auto params = slot->parameters();
    for (const auto& e : slot->layout().entries()) {  // uniform, scale 1/sqrt(fan_in)
      const double scale = 1.0 / std::sqrt(e.shape.size() == 2 ? double(e.shape[1]) : 1.0);
      bd3::sample::RandomStream rng(uint64_t(e.offset) + 1);
      for (int64_t i = 0; i < e.size; ++i)
        params[size_t(e.offset + i)] = float((2 * rng.uniform_at(uint64_t(i)) - 1) * scale);
    }
    slot->parameters_changed();
  }
  return *slot;
}

// Args: block size, method (0 first-hitting, 1 DDPM T = B', 2 threshold 0.9), KV cache.
void BM_nfe(benchmark::State& state) {
  const int block_size = int(state.range(0)), method = int(state.range(1));
  bd3::sample::SamplerOptions o;
  o.method = method == 0 ? Method::first_hitting : method == 1 ? Method::ddpm : Method::threshold;
  o.steps = 0;  // DDPM: T = B'
  o.threshold = 0.9;
  o.kv_cache = state.range(2) != 0;
  o.length = kLength;  // BOS + L-1 tokens: one window
  const Model& m = model(block_size);
  static const char* names[] = {"first_hitting", "ddpm_T=B'", "threshold_0.9"};
  state.SetLabel("B'=" + std::to_string(block_size) + " " + names[method] +
                 (o.kv_cache ? " kv" : " no-kv"));
  int64_t tokens = 0, calls = 0, commits = 0;
  double seconds = 0;
  uint64_t seed = 1;
  for (auto _ : state) {
    o.seed = seed++;
    bd3::sample::Sampler<Model> sampler(m, o);
    for (const auto& r : sampler.generate()) tokens += r.generated_tokens();
    calls += sampler.stats().model_calls;
    commits += sampler.stats().commit_calls;
    seconds += sampler.stats().seconds;
  }
  state.counters["tokens_per_s"] = benchmark::Counter(double(tokens), benchmark::Counter::kIsRate);
  state.counters["nfe_per_token"] = double(calls) / double(tokens);
  state.counters["ms_per_nfe"] = 1e3 * seconds / double(calls);
  state.counters["commits_per_token"] = double(commits) / double(tokens);
  state.counters["threads"] = omp_get_max_threads();
}
BENCHMARK(BM_nfe)
    ->ArgNames({"block", "method", "kv"})
    ->ArgsProduct({{1, 4, 16, kLength}, {0, 1, 2}, {1, 0}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
