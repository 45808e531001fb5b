// Forward (vectorized training pass) and KV-cached decode throughput of the model, per
// attention backend, on random weights of the "mid" and "small" presets; decode attention
// alone, decode kernel against tiles; the training pass's layouts (xt alone at B' = L
// against [xt, x0]; B' = 1) with and without the backward.
// Run: build/release/bench_model --benchmark_counters_tabular=true
#include <bd3/bd3.hpp>

#include <benchmark/benchmark.h>

#include <random>
#include <span>
#include <vector>

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
  using Model = bd3::BlockDiffusionModel<bd3::BlockSize<bd3::dynamic>, Attention>;
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
  using Model = bd3::BlockDiffusionModel<bd3::BlockSize<bd3::dynamic>, Attention>;
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

// Decode attention alone: one group of `rows` query rows (the block) against a full window
// of the `small` preset (1024 keys, 12 heads of 64) in each of 12 layers' caches (75 MB,
// so from memory as in decode; head-major, as the KV cache keeps them), with the decode
// kernel or with the tiles' GEMMs.
template <bool Kernel>
void BM_DecodeAttention(benchmark::State& state) {
  const int rows = int(state.range(0)), nk = 1024, H = 12, Dh = 64, D = H * Dh, layers = 12;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> d(-1, 1);
  std::vector<std::vector<float, bd3::detail::HugePageAllocator<float>>> K(layers), V(layers);
  for (int l = 0; l < layers; ++l) {
    K[l].resize(size_t(nk) * D), V[l].resize(size_t(nk) * D);
    for (auto& x : K[l]) x = d(rng);
    for (auto& x : V[l]) x = d(rng);
  }
  std::vector<float> q(size_t(rows) * 3 * D), out(size_t(rows) * D);
  for (auto& x : q) x = d(rng);
  bd3::DecodeMask mask{rows, 1, {{0, nk}, {}}};
  for (auto _ : state) {
    for (int l = 0; l < layers; ++l) {
      bd3::AttentionArgs<float> a;
      a.q = q.data(), a.ldq = 3 * D, a.k = K[l].data(), a.v = V[l].data();
      a.ldk = a.ldv = Dh, a.head_stride_k = a.head_stride_v = int64_t(nk) * Dh;  // as the cache
      a.out = out.data(), a.ldo = D, a.nq = rows, a.nk = nk, a.n_heads = H, a.head_dim = Dh;
      if constexpr (Kernel)
        bd3::detail::attention_decode(a, mask);
      else
        bd3::detail::attention_block_sparse(a, mask);
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GB/s"] = benchmark::Counter(2.0 * layers * nk * D * sizeof(float),
                                              benchmark::Counter::kIsIterationInvariantRate);
}

// The block size fixed in the model's type (BlockSize<B>) against the same size at run time
// (BlockSize<dynamic>), mid preset: argument 0 = training forward, 1 = decode of one block
// against a full window. Whatever differs is what the compiler makes of a constant B'.
template <class Block, int B>
void BM_BlockSizePolicy(benchmark::State& state) {
  using Model = bd3::BlockDiffusionModel<Block, bd3::BlockSparseAttention>;
  auto config = preset(false);
  config.block_size = B;
  Model model(config);
  randomize(model);
  const auto& c = model.config();
  std::mt19937 rng(2);
  std::vector<int32_t> x0(c.model_length), xt(c.model_length), block(B, 1);
  for (int i = 0; i < c.model_length; ++i) {
    x0[i] = int32_t(rng() % (c.vocab_size - 1));
    xt[i] = rng() % 2 ? c.mask_index : x0[i];
  }
  bd3::TrainActivations<float> act;
  bd3::KVCache<float> cache(c, 1);
  while (cache.length() < c.model_length - B) model.commit_block(block, cache);
  std::fill(block.begin(), block.end(), c.mask_index);
  std::vector<float> logits;
  for (auto _ : state) {
    if (state.range(0) == 0) {
      model.forward_train(xt, x0, 1, act);
      benchmark::DoNotOptimize(act.logits.data());
    } else {
      model.forward_block(block, cache, logits);
      benchmark::DoNotOptimize(logits.data());
    }
  }
}

// The training pass of the `small` preset, batch 1, by its layout (model.hpp, TrainLayout).
// Arguments: block = the block size (model_length: MDLM, or 1); xt_x0 = 0 for the automatic
// layout (xt rows alone at B' = L, [xt, x0] otherwise), 1 for [xt, x0] whatever the block
// size; backward = 0 for the training forward alone (forward_train keeping activations),
// 1 for one step's forward + backward (train::loss_and_gradient). The same tokens for all
// (half of the positions masked: the output layer's backward skips unmasked rows).
void BM_TrainPass(benchmark::State& state) {
  using Model = bd3::BlockDiffusionModel<bd3::BlockSize<bd3::dynamic>, bd3::BlockSparseAttention>;
  auto config = preset(true);
  config.block_size = int(state.range(0));
  Model model(config);
  randomize(model);
  if (state.range(1)) model.set_train_layout(bd3::TrainLayout::xt_x0);
  const auto& c = model.config();
  std::mt19937 rng(2);
  std::vector<int32_t> x0(c.model_length), xt(c.model_length);
  for (int i = 0; i < c.model_length; ++i) {
    x0[i] = int32_t(rng() % (c.vocab_size - 1));
    xt[i] = i > 0 && rng() % 2 ? c.mask_index : x0[i];
  }
  const std::vector<double> weight(size_t(c.model_length), 2.0);
  bd3::train::TrainScratch<float> scratch;
  // Accumulated over the iterations, never read: zeroing it would be timed too.
  std::vector<float> grads(size_t(model.layout().total()), 0.0f);
  for (auto _ : state) {
    if (state.range(2)) {
      bd3::train::loss_and_gradient(model, xt, x0, 1, weight, std::span<float>(grads), {},
                                    &scratch);
      benchmark::DoNotOptimize(grads.data());
    } else {
      model.forward_train(xt, x0, 1, scratch.act, /*keep_for_backward=*/true);
      benchmark::DoNotOptimize(scratch.act.logits.data());
    }
  }
  state.counters["rows/seq"] = double(model.train_rows_per_sequence());
  state.counters["tokens/s"] =
      benchmark::Counter(double(c.model_length), benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

// B' = L: the xt-only pass against [xt, x0]; B' = 1 ([xt, x0]) against both.
BENCHMARK(BM_TrainPass)
    ->ArgNames({"block", "xt_x0", "backward"})
    ->ArgsProduct({{1024}, {0, 1}, {0, 1}})
    ->ArgsProduct({{1}, {1}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK_TEMPLATE(BM_BlockSizePolicy, bd3::BlockSize<4>, 4)
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_BlockSizePolicy, bd3::BlockSize<bd3::dynamic>, 4)
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_BlockSizePolicy, bd3::BlockSize<16>, 16)
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_BlockSizePolicy, bd3::BlockSize<bd3::dynamic>, 16)
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

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

// Rows per block (the decode kernel is used up to detail::decode_kernel_max_rows), in
// milliseconds of real time.
void decode_attention_rows(benchmark::internal::Benchmark* b) {
  for (int rows : {1, 2, 4, 8, 16, 32}) b->Arg(rows);
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}
BENCHMARK_TEMPLATE(BM_DecodeAttention, true)->Apply(decode_attention_rows);
BENCHMARK_TEMPLATE(BM_DecodeAttention, false)->Apply(decode_attention_rows);

BENCHMARK_MAIN();
