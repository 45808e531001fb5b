// Forward (vectorized training pass) and KV-cached decode throughput of the model, per
// attention backend, on random weights of the "mid" and "small" presets.
// Run: build/release/bench_model --benchmark_counters_tabular=true
#include <bd3/bd3.hpp>

#include <benchmark/benchmark.h>

#include <random>

namespace {

bd3::ModelConfig preset(bool small) {
  bd3::ModelConfig c;
  if (small) {
    c.hidden_dim = 768, c.n_blocks = 12, c.n_heads = 12, c.vocab_size = 50258,
    c.model_length = 1024;
  } else {
    c.hidden_dim = 256, c.n_blocks = 4, c.n_heads = 4, c.vocab_size = 4096, c.model_length = 256;
  }
  c.block_size = 4, c.cond_dim = 128, c.mask_index = c.vocab_size - 1;
  return c;
}

template <class Model>
void randomize(Model& m) {
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<float> d(-0.05f, 0.05f);
  for (auto& p : m.parameters()) p = d(rng);
  m.parameters_changed();
}

template <class Attention>
void BM_Forward(benchmark::State& state) {
  using Model =
      bd3::BlockDiffusionModel<bd3::BlockSize<bd3::dynamic>, bd3::noise::LogLinear, Attention>;
  Model model(preset(state.range(0)));
  randomize(model);
  const auto& c = model.config();
  std::mt19937 rng(2);
  std::vector<int32_t> x0(c.model_length), xt(c.model_length);
  for (int i = 0; i < c.model_length; ++i) {
    x0[i] = int32_t(rng() % (c.vocab_size - 1));
    xt[i] = rng() % 2 ? c.mask_index : x0[i];
  }
  bd3::TrainActivations<float> act;
  for (auto _ : state) {
    model.forward_train(xt, x0, 1, act);
    benchmark::DoNotOptimize(act.logits.data());
  }
  state.counters["tokens/s"] =
      benchmark::Counter(double(c.model_length), benchmark::Counter::kIsIterationInvariantRate);
}

template <class Attention>
void BM_Decode(benchmark::State& state) {
  using Model =
      bd3::BlockDiffusionModel<bd3::BlockSize<bd3::dynamic>, bd3::noise::LogLinear, Attention>;
  Model model(preset(state.range(0)));
  randomize(model);
  const auto& c = model.config();
  bd3::KVCache<float> cache(c, 1);
  std::vector<int32_t> block(c.block_size, 1);
  // Second argument: 1 = a full window (the cache as long generation sees it), 0 = one block
  // (the weights alone: the difference is the attention over the cache).
  const int cached = state.range(1) ? c.model_length - c.block_size : c.block_size;
  while (cache.length() < cached) model.commit_block(block, cache);
  std::fill(block.begin(), block.end(), c.mask_index);
  std::vector<float> logits;
  for (auto _ : state) {
    model.forward_block(block, cache, logits);
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["NFE/s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

// First argument: 0 = mid preset, 1 = small preset.
BENCHMARK_TEMPLATE(BM_Forward, bd3::BlockSparseAttention)
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_Forward, bd3::SimdAttention)
    ->Arg(0)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_Forward, bd3::ScalarAttention)
    ->Arg(0)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_Decode, bd3::BlockSparseAttention)
    ->Args({0, 1})
    ->Args({1, 1})
    ->Args({1, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_Decode, bd3::SimdAttention)
    ->Args({0, 1})
    ->Args({1, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK_MAIN();
