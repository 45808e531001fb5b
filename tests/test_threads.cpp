// The threaded code paths, at sizes above every OpenMP threshold of the library (the
// parallel regions of model.hpp, backward.hpp, attention*.hpp, nelbo.hpp, gemm.hpp and
// optimizer.hpp switch on above 32768-4M elements), give the results of one thread.
// Under ThreadSanitizer (the tsan preset, scripts/tsan.sh) this file is what exercises
// every parallel region for data races.
#include <catch2/catch.hpp>

#include <bd3/bd3.hpp>
#include <bd3/train/backward.hpp>

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <random>
#include <thread>
#include <vector>

using namespace bd3;
using bd3::train::loss_and_gradient;
using bd3::train::TrainScratch;

namespace {

using Model = BlockDiffusionModel<BlockSize<dynamic>, BlockSparseAttention, float>;

// One layer of hidden 128 on 2 x 128 tokens: the [xt, x0] pass has N = 512 rows, so
// N*D = 65536 > 32768, N*in*out = 8.4M > 4M, and the 200k parameters exceed 65536.
ModelConfig threaded_config() {
  ModelConfig c;
  c.vocab_size = 300, c.mask_index = 299, c.model_length = 128, c.block_size = 4;
  c.hidden_dim = 128, c.n_heads = 2, c.n_blocks = 1, c.cond_dim = 32;
  c.validate();
  return c;
}

Model random_model(const ModelConfig& c, uint64_t seed) {
  Model m(c);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-0.1, 0.1);
  for (auto& p : m.parameters()) p = float(u(rng));
  m.parameters_changed();
  return m;
}

// Runs f with n OpenMP threads, then restores the previous count.
template <class F>
auto with_threads(int n, F&& f) {
  const int before = omp_get_max_threads();
  omp_set_num_threads(n);
  auto r = f();
  omp_set_num_threads(before);
  return r;
}

// max |a - b| / max(1, max |b|): the threads change only the order of float sums.
double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double diff = 0, scale = 1;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, double(std::fabs(a[i] - b[i])));
    scale = std::max(scale, double(std::fabs(b[i])));
  }
  return diff / scale;
}

struct StepResult {
  std::vector<float> logits, grads, params;
  double loss = 0;
};

// One training step: forward over [xt, x0], SUBS NELBO, backward, AdamW.
StepResult train_step(const ModelConfig& c, uint64_t seed) {
  Model model = random_model(c, seed);
  const int batch = 2, L = c.model_length;
  std::mt19937_64 rng(seed + 1);
  std::vector<int32_t> x0(size_t(batch) * L), xt;
  for (auto& x : x0) x = int32_t(rng() % uint64_t(c.vocab_size - 1));
  xt = x0;
  for (size_t i = 0; i < xt.size(); ++i)
    if (i % size_t(L) != 0 && rng() % 2) xt[i] = c.mask_index;
  std::vector<double> weight(xt.size(), 2.0);
  StepResult r;
  r.grads.assign(model.parameters().size(), 0.0f);
  TrainScratch<float> scratch;
  r.loss = loss_and_gradient(model, xt, x0, batch, weight, r.grads, Dropout{}, &scratch);
  r.logits = scratch.act.logits;
  train::AdamWState state;
  state.reset(r.grads.size());
  train::AdamWOptions o;
  o.lr = 1e-3, o.weight_decay = 0.1;
  std::vector<float> params(model.parameters().begin(), model.parameters().end());
  train::adamw_step(params, r.grads, state, o, o.lr);
  r.params = std::move(params);
  return r;
}

// Cached decoding: commit two clean blocks per sequence, then denoise a third.
std::vector<float> decode(const ModelConfig& c, uint64_t seed) {
  Model model = random_model(c, seed);
  const int batch = 16, Bp = c.block_size;
  KVCache<float> cache(c, batch);
  std::vector<int32_t> block(size_t(batch) * Bp);
  std::mt19937_64 rng(seed + 2);
  std::vector<float> logits;
  for (int k = 0; k < 3; ++k) {
    for (auto& x : block) x = int32_t(rng() % uint64_t(c.vocab_size - 1));
    if (k < 2)
      model.commit_block(block, cache);
    else
      model.forward_block(block, cache, logits);
  }
  return logits;
}

}  // namespace

TEST_CASE("a training step gives the same bits from run to run with 3 threads",
          "[threads][train]") {
  // Every reduction over rows or query tiles sums per thread and combines in thread order,
  // so nothing depends on which thread finishes first (a run resumed from a checkpoint
  // repeats the uninterrupted one at the same thread count).
  const auto c = threaded_config();
  // Three threads on this 2-core machine: the order in which they finish varies most.
  const auto first = with_threads(3, [&] { return train_step(c, 11); });
  for (int run = 0; run < 12; ++run) {
    INFO("run " << run);
    const auto again = with_threads(3, [&] { return train_step(c, 11); });
    CHECK(again.loss == first.loss);
    CHECK(again.grads == first.grads);
    CHECK(again.params == first.params);
  }
}

TEST_CASE("a training step gives one thread's numbers with 2 and 3 threads", "[threads]") {
  const auto c = threaded_config();
  const auto one = with_threads(1, [&] { return train_step(c, 7); });
  for (int n : {2, 3}) {
    INFO(n << " threads");
    const auto many = with_threads(n, [&] { return train_step(c, 7); });
    CHECK(std::fabs(many.loss - one.loss) <= 1e-6 * std::fabs(one.loss));
    CHECK(rel_diff(many.logits, one.logits) <= 1e-5);
    CHECK(rel_diff(many.grads, one.grads) <= 1e-4);
    CHECK(rel_diff(many.params, one.params) <= 1e-5);
  }
}

TEST_CASE("KV-cached decoding gives one thread's logits with 2 threads", "[threads]") {
  const auto c = threaded_config();
  const auto one = with_threads(1, [&] { return decode(c, 11); });
  const auto two = with_threads(2, [&] { return decode(c, 11); });
  CHECK(rel_diff(two, one) <= 1e-5);
}

TEST_CASE("batched sampling draws the same tokens with 1 and 2 threads", "[threads]") {
  auto c = threaded_config();
  c.model_length = 32;
  c.validate();
  const Model model = random_model(c, 5);
  sample::SamplerOptions o;
  o.method = sample::Method::threshold, o.threshold = 0.5, o.length = 40, o.batch = 4, o.seed = 3;
  auto run = [&] {
    sample::Sampler<Model> s(model, o);
    std::vector<std::vector<int32_t>> ids;
    for (auto& r : s.generate()) ids.push_back(r.ids);
    return ids;
  };
  CHECK(with_threads(1, run) == with_threads(2, run));
}

TEST_CASE("the split with stealing runs every index once, and idle threads take others' work",
          "[threads]") {
  for (int parts : {1, 2, 3, 5})
    for (int team : {1, 2, 3})
      for (int64_t n : {int64_t(0), int64_t(1), int64_t(7), int64_t(1000)}) {
        INFO(parts << " parts, a team of " << team << ", " << n << " indices");
        detail::SplitWithStealing split(n, parts);
        std::vector<std::atomic<int>> runs(static_cast<size_t>(n));
        int team_size = 0;
#pragma omp parallel num_threads(team)
        {
#pragma omp single
          team_size = omp_get_num_threads();
          split.run(omp_get_thread_num(), [&](int64_t i) { runs[size_t(i)]++; });
        }
        CHECK(team_size == team);
        CHECK(std::all_of(runs.begin(), runs.end(), [](const auto& r) { return r == 1; }));
      }
  // Thread 0 stalls on the first index it claims (if the other thread has not taken them
  // all before it starts): thread 1 ends its own share and takes the rest of thread 0's
  // from the end, so thread 0 runs at most that one index, whichever thread starts first.
  const int64_t n = 200;
  detail::SplitWithStealing split(n, 2);
  std::vector<int> ran_by(size_t(n), -1);
  bool stalled = false;  // thread 0's alone
#pragma omp parallel num_threads(2)
  split.run(omp_get_thread_num(), [&](int64_t i) {
    if (omp_get_thread_num() == 0 && !stalled) {
      stalled = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    ran_by[size_t(i)] = omp_get_thread_num();
  });
  CHECK(std::count(ran_by.begin(), ran_by.end(), -1) == 0);
  CHECK(std::count(ran_by.begin(), ran_by.end(), 0) <= 1);
  CHECK(std::count(ran_by.begin(), ran_by.begin() + n / 2, 1) >= n / 2 - 1);
  CHECK_THROWS_WITH(detail::SplitWithStealing(int64_t(1) << 33, 2), Catch::Contains("n < 2^32"));
  CHECK_THROWS_WITH(detail::SplitWithStealing(10, -1), Catch::Contains("parts >= 1"));
}

TEST_CASE("packed decode matrices give one thread's bits with 2 and 3 threads", "[threads]") {
  // N * K * M > 65536 (the kernel's threshold); 4 rows (the few-rows path) and 13 (4 at a
  // time, then a remainder); the last tile partial.
  const int64_t N = 1000, K = 96;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> W(static_cast<size_t>(N * K)), b(static_cast<size_t>(N)),
      P(static_cast<size_t>(kernels::packed_size(N, K)));
  for (auto& w : W) w = u(rng);
  for (auto& v : b) v = u(rng);
  kernels::pack_weights(W.data(), N, K, P.data());
  for (int64_t M : {4, 13}) {
    std::vector<float> x(static_cast<size_t>(M * K));
    for (auto& v : x) v = u(rng);
    auto run = [&] {
      std::vector<float> y(static_cast<size_t>(M * N));
      kernels::simd::linear_packed(x.data(), M, K, P.data(), b.data(), N, y.data());
      return y;
    };
    const auto one = with_threads(1, run);
    for (int n : {2, 3}) {
      INFO(M << " rows, " << n << " threads");
      CHECK(with_threads(n, run) == one);
    }
  }
}
