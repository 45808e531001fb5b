// The NELBO estimator (diffusion/estimator.hpp) and the clipped-schedule search
// (diffusion/clip_search.hpp): statistics of t and of the masks, the special cases, the
// bounded resampling, and the estimator's mean against an exactly computable expectation.
#include <bd3/bd3.hpp>
#include <bd3/diffusion/clip_search.hpp>
#include <bd3/diffusion/estimator.hpp>
#include <bd3/train/init.hpp>

#include <omp.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

using namespace bd3;

namespace {

std::vector<int32_t> random_tokens(int batch, int L, int vocab_without_mask, uint64_t seed,
                                   int32_t bos) {
  CounterRng rng(seed, {99});
  std::vector<int32_t> x(size_t(batch) * L);
  for (size_t i = 0; i < x.size(); ++i) x[i] = int32_t(rng.next() % uint64_t(vocab_without_mask));
  for (int b = 0; b < batch; ++b) x[size_t(b) * L] = bos;
  return x;
}

ModelConfig tiny_config(int L, int block, int vocab) {
  ModelConfig c;
  c.block_size = block, c.model_length = L, c.vocab_size = vocab, c.mask_index = vocab - 1;
  c.hidden_dim = 16, c.n_heads = 2, c.n_blocks = 2, c.cond_dim = 8;
  c.validate();
  return c;
}

template <class Model>
void randomize_weights(Model& m, uint64_t seed, double scale) {
  CounterRng rng(seed, {7});
  for (auto& p : m.parameters()) p = float((2 * rng.uniform() - 1) * scale);
  m.parameters_changed();
}

// The mean of w(t) p(t) over t in [a, b] (Simpson's rule, n intervals, n even).
template <class Noise>
double mean_wp(const Noise& noise, double a, double b, int n) {
  const double h = (b - a) / n;
  double s = 0;
  for (int i = 0; i <= n; ++i) {
    const double t = a + i * h;
    s += noise.w(t) * noise.p(t) * (i == 0 || i == n ? 1 : (i % 2 ? 4 : 2));
  }
  return s * h / 3 / (b - a);
}

// Tiny models: one thread is fastest, and immune to a loaded machine.
struct OneThread {
  int saved = omp_get_max_threads();
  OneThread() { omp_set_num_threads(1); }
  ~OneThread() { omp_set_num_threads(saved); }
};

}  // namespace

TEST_CASE("CounterRng is a pure function of its key and counter", "[estimator]") {
  CounterRng a(42, {1, 2}), b(42, {1, 2}), c(42, {1, 3});
  for (int i = 0; i < 100; ++i) {
    const auto x = a.next();
    CHECK(x == b.next());
    CHECK(x != c.next());
  }
  auto d = CounterRng::from_state(a.key(), a.counter());
  CHECK(d.next() == a.next());
  double mean = 0;
  CounterRng u(1, {});
  for (int i = 0; i < 100000; ++i) {
    const double v = u.uniform();
    REQUIRE(v >= 0.0);
    REQUIRE(v < 1.0);
    mean += v;
  }
  CHECK(mean / 100000 == Approx(0.5).margin(0.005));
}

TEST_CASE("antithetic t's put one value in each stratum of [beta, omega]", "[estimator]") {
  const int batch = 3, L = 32, Bp = 4, K = L / Bp, N = batch * K;
  auto x0 = random_tokens(batch, L, 50, 1, 50);
  for (auto [lo, hi] : {std::pair{1e-3, 1.0}, std::pair{0.3, 0.8}, std::pair{0.45, 0.95}}) {
    for (uint64_t seed = 0; seed < 20; ++seed) {
      EstimatorOptions o;
      o.eps_min = lo, o.eps_max = hi;
      CounterRng rng(seed, {1});
      NoisedBatch nb;
      draw_noised_batch(x0, batch, L, Bp, 51, noise::LogLinear{}, o, rng, nb);
      REQUIRE(nb.t.size() == size_t(N));
      // The pair i = b*K + k owns stratum i.
      for (int i = 0; i < N; ++i) {
        CHECK(int(std::floor(nb.u[size_t(i)] * N)) == i);
        CHECK(nb.t[size_t(i)] >= lo);
        CHECK(nb.t[size_t(i)] <= hi);
        CHECK(nb.t[size_t(i)] == Approx(lo + nb.u[size_t(i)] * (hi - lo)));
      }
      std::vector<double> u = nb.u;
      std::sort(u.begin(), u.end());
      for (int i = 0; i < N; ++i) CHECK(int(std::floor(u[size_t(i)] * N)) == i);
      // Every position of a block carries its block's weight; w = 1 when beta > 0.5.
      for (int b = 0; b < batch; ++b)
        for (int l = 0; l < L; ++l) {
          const double t = nb.t[size_t(b) * K + l / Bp];
          CHECK(nb.weight[size_t(b) * L + l] == Approx(lo > 0.5 ? 1.0 : 1.0 / t));
        }
    }
  }
  // Shuffled strata: still one u per stratum, no longer pair i in stratum i.
  {
    EstimatorOptions o;
    o.shuffle_strata = true;
    CounterRng rng(4, {1});
    NoisedBatch nb;
    draw_noised_batch(x0, batch, L, Bp, 51, noise::LogLinear{}, o, rng, nb);
    std::vector<double> u = nb.u;
    std::sort(u.begin(), u.end());
    for (int i = 0; i < N; ++i) CHECK(int(std::floor(u[size_t(i)] * N)) == i);
    int own = 0;
    for (int i = 0; i < N; ++i) own += int(std::floor(nb.u[size_t(i)] * N)) == i;
    CHECK(own < N);
  }
  // Without antithetic sampling the u's are plain uniforms.
  EstimatorOptions o;
  o.antithetic = false;
  CounterRng rng(3, {1});
  NoisedBatch nb;
  draw_noised_batch(x0, batch, L, Bp, 51, noise::LogLinear{}, o, rng, nb);
  int in_own_stratum = 0;
  for (int i = 0; i < N; ++i) in_own_stratum += int(std::floor(nb.u[size_t(i)] * N)) == i;
  CHECK(in_own_stratum < N);
}

TEST_CASE("masked fraction matches p(t) and BOS is never masked", "[estimator]") {
  const int batch = 64, L = 64, Bp = 8;
  auto x0 = random_tokens(batch, L, 20, 2, 20);
  const int32_t mask = 21;
  auto check = [&](auto noise, double t) {
    INFO("schedule " << noise.name() << ", t = " << t);
    EstimatorOptions o;
    o.eps_min = o.eps_max = t;
    int64_t masked = 0, total = 0;
    for (uint64_t seed = 0; seed < 10; ++seed) {
      CounterRng rng(seed, {2});
      NoisedBatch nb;
      draw_noised_batch(x0, batch, L, Bp, mask, noise, o, rng, nb);
      for (int b = 0; b < batch; ++b) {
        CHECK(nb.xt[size_t(b) * L] == x0[size_t(b) * L]);
        for (int l = 1; l < L; ++l) {
          const auto i = size_t(b) * L + l;
          if (nb.xt[i] != mask) REQUIRE(nb.xt[i] == x0[i]);
          masked += nb.xt[i] == mask;
          ++total;
        }
      }
    }
    const double p = noise.p(t), frac = double(masked) / double(total);
    const double sd = std::sqrt(p * (1 - p) / double(total));
    CHECK(std::abs(frac - p) < 5 * sd + 1e-12);
  };
  for (double t : {0.05, 0.37, 0.8}) {
    check(noise::LogLinear{}, t);
    check(noise::Cosine{}, t);
    check(noise::Square{}, t);
    check(noise::SquareRoot{}, t);
    check(noise::Log{}, t);
  }
}

TEST_CASE("block size 1 with beta = omega = 1 masks everything with weight 1", "[estimator]") {
  const int batch = 4, L = 16;
  auto x0 = random_tokens(batch, L, 30, 3, 30);
  EstimatorOptions o;
  o.eps_min = o.eps_max = 1.0;
  CounterRng rng(5, {1});
  NoisedBatch nb;
  draw_noised_batch(x0, batch, L, 1, 31, noise::Cosine{}, o, rng, nb);
  for (int b = 0; b < batch; ++b)
    for (int l = 0; l < L; ++l) {
      const auto i = size_t(b) * L + l;
      CHECK(nb.xt[i] == (l == 0 ? x0[i] : 31));
      CHECK(nb.weight[i] == 1.0);
    }
  for (double t : nb.t) CHECK(t == 1.0);
}

TEST_CASE("bounded mask resampling keeps fractions in the interval, rejects unreachable intervals",
          "[estimator]") {
  const int batch = 16, L = 32, Bp = 4, K = L / Bp;
  auto x0 = random_tokens(batch, L, 20, 4, 20);
  EstimatorOptions o;
  o.eps_min = 0.45, o.eps_max = 0.95, o.resample = true, o.max_resample_tries = 1000;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    CounterRng rng(seed, {3});
    NoisedBatch nb;
    draw_noised_batch(x0, batch, L, Bp, 21, noise::LogLinear{}, o, rng, nb);
    CHECK(nb.unresolved_blocks == 0);
    for (int b = 0; b < batch; ++b)
      for (int k = 0; k < K; ++k) {
        const int first = k == 0 ? 1 : 0;
        int m = 0;
        for (int j = first; j < Bp; ++j) m += nb.xt[size_t(b) * L + k * Bp + j] == 21;
        const double f = double(m) / (Bp - first);
        CHECK(f >= 0.45);
        CHECK(f <= 0.95);
      }
  }
  // No k/4 nor k/3 lies in [0.3, 0.32]; no k/2 in [0.6, 0.9]: errors, not hangs.
  o.eps_min = 0.3, o.eps_max = 0.32;
  CounterRng rng(1, {});
  NoisedBatch nb;
  CHECK_THROWS_AS(draw_noised_batch(x0, batch, L, Bp, 21, noise::LogLinear{}, o, rng, nb), Error);
  o.eps_min = 0.6, o.eps_max = 0.9;
  auto x2 = random_tokens(batch, L, 20, 4, 20);
  CHECK_THROWS_AS(draw_noised_batch(x2, batch, L, 2, 21, noise::LogLinear{}, o, rng, nb), Error);
  o.eps_min = 0.02, o.eps_max = 0.03;
  CHECK_THROWS_AS(draw_noised_batch(x0, batch, L, Bp, 21, noise::LogLinear{}, o, rng, nb), Error);
  // Bounded: k/4 = 0.25 is reachable but rarely drawn with p = t^2 ~ 0.06; after two
  // tries the last draw is kept. (No k/3 lies in [0.2, 0.3]: the first block is not
  // resampled.)
  o.eps_min = 0.2, o.eps_max = 0.3, o.max_resample_tries = 2;
  draw_noised_batch(x0, batch, L, Bp, 21, noise::Square{}, o, rng, nb);
  CHECK(nb.resampled_blocks > 0);
  CHECK(nb.unresolved_blocks > 0);
}

TEST_CASE("the estimator's mean equals the analytic expectation (block size 1)", "[estimator]") {
  OneThread one_thread;
  // With block size 1, the prediction at a masked position l depends only on x0_{<l} and
  // the MASK token at l, not on which other positions are masked. So
  // E[loss_l] = E[w(t_l) p(t_l)] c_l with c_l = -log p(x0_l | masked), and c_l is what
  // the all-masked draw (beta = omega = 1, weight 1) measures. Without antithetic
  // sampling t_l ~ U[beta, omega]; with it, pair i = (b, l) draws u in its own stratum
  // [i/N, (i+1)/N), so for fixed data E[loss_l] = c_l * mean of w p over that stratum
  // (the strata average to U[beta, omega] only over random data orders).
  const int batch = 32, L = 16, V = 12, N = batch * L;
  const double lo = 1e-3, hi = 1.0;
  using Model = BlockDiffusionModel<BlockSize<dynamic>, BlockSparseAttention, float>;
  enum Mode { antithetic_fixed, antithetic_shuffled, independent };
  auto check = [&](const std::string& schedule, Mode mode) {
    const bool antithetic = mode == antithetic_fixed;
    INFO("schedule " << schedule << ", mode " << int(mode));
    const RuntimeNoise noise(schedule);
    Model model(tiny_config(L, 1, V));
    randomize_weights(model, 11, 0.5);
    auto x0 = random_tokens(batch, L, V - 1, 5, 3);
    EstimatorOptions exact_o;
    exact_o.eps_min = exact_o.eps_max = 1.0;
    CounterRng r0(0, {});
    std::vector<double> c;  // c_l per position
    const auto exact = estimate_nelbo(model, noise, x0, batch, exact_o, r0, &c);
    REQUIRE(exact.masked == exact.tokens);
    double expected = 0;
    const double full = mean_wp(noise, lo, hi, 200000);
    for (int i = 0; i < N; ++i) {
      if (i % L == 0) continue;  // BOS
      const double u0 = double(i) / N, u1 = double(i + 1) / N;
      expected +=
          c[size_t(i)] *
          (antithetic ? mean_wp(noise, lo + u0 * (hi - lo), lo + u1 * (hi - lo), 400) : full);
    }
    expected /= double(exact.tokens);
    if (schedule == "loglinear")
      CHECK(expected == Approx(exact.loss_sum / double(exact.tokens)).epsilon(1e-9));
    EstimatorOptions o;  // [1e-3, 1]
    o.antithetic = mode != independent;
    o.shuffle_strata = mode == antithetic_shuffled;
    const int draws = mode == independent ? 600 : 300;
    double sum = 0, sum2 = 0;
    for (int d = 0; d < draws; ++d) {
      CounterRng rng(77, {uint64_t(d)});
      const auto terms = estimate_nelbo(model, noise, x0, batch, o, rng);
      const double v = terms.loss_sum / double(terms.tokens);
      sum += v, sum2 += v * v;
    }
    const double mean = sum / draws;
    const double se = std::sqrt((sum2 / draws - mean * mean) / (draws - 1));
    INFO("mean " << mean << " expected " << expected << " se " << se);
    CHECK(std::abs(mean - expected) < 4 * se);
    CHECK(std::abs(mean - expected) < 0.03 * expected);
  };
  for (Mode mode : {antithetic_fixed, antithetic_shuffled, independent}) {
    check("loglinear", mode);  // w p = 1: the expectation is the exact NLL
    check("cosine", mode);
    check("square", mode);
  }
}

TEST_CASE("clip-search candidates", "[clip]") {
  ClipSearchOptions o;
  auto c = clip_candidates(o, 4);
  CHECK(c.size() == 1 + 11 + 9 + 7 + 5 + 3);
  CHECK(c[0] == ClipInterval{1e-3, 1.0});
  auto has = [&](double lo, double hi) {
    for (auto& x : c)
      if (std::abs(x.eps_min - lo) < 1e-9 && std::abs(x.eps_max - hi) < 1e-9) return true;
    return false;
  };
  CHECK(has(0.45, 0.95));
  CHECK(has(0.3, 0.8));
  CHECK(has(1e-3, 0.5));
  CHECK(has(0.5, 1.0));
  CHECK(has(0.1, 1.0));
  CHECK_FALSE(has(0.55, 1.05));
  for (auto& x : c) {
    CHECK(x.eps_min >= 1e-3);
    CHECK(x.eps_max <= 1.0);
    CHECK(x.eps_min < x.eps_max);
  }
  auto c1 = clip_candidates(o, 1);
  REQUIRE(c1.size() == 2);
  CHECK(c1[1] == ClipInterval{1.0, 1.0});
}

TEST_CASE("clip search scores every candidate and picks the smallest variance", "[clip]") {
  OneThread one_thread;
  const int batch = 4, L = 32, Bp = 4, V = 20;
  using Model = BlockDiffusionModel<BlockSize<dynamic>, BlockSparseAttention, float>;
  Model model(tiny_config(L, Bp, V));
  train::init_model(model, 3);
  randomize_weights(model, 5, 0.3);
  std::vector<std::vector<int32_t>> batches{random_tokens(batch, L, V - 1, 8, 0),
                                            random_tokens(batch, L, V - 1, 9, 0)};
  std::vector<int> sizes{batch, batch};
  ClipSearchOptions o;
  auto r = clip_search(model, noise::LogLinear{}, std::span<const std::vector<int32_t>>(batches),
                       std::span<const int>(sizes), o, 1, 0);
  REQUIRE(r.variance.size() == r.candidates.size());
  for (size_t i = 0; i < r.variance.size(); ++i) {
    CHECK(std::isfinite(r.variance[i]));
    CHECK(r.variance[i] >= r.variance[r.best]);
  }
  // The full interval's weight 1/t makes it the noisiest of all.
  CHECK(r.best != 0);
  // Same seed, same answer.
  auto r2 = clip_search(model, noise::LogLinear{}, std::span<const std::vector<int32_t>>(batches),
                        std::span<const int>(sizes), o, 1, 0);
  CHECK(r2.variance == r.variance);
  o.resample = true;
  auto r3 = clip_search(model, noise::LogLinear{}, std::span<const std::vector<int32_t>>(batches),
                        std::span<const int>(sizes), o, 1, 0);
  CHECK(r3.candidates.size() == r.candidates.size());
}

TEST_CASE("count_bos: the first block's resampling counts BOS as the official code does",
          "[estimator][resample]") {
  // Interval [0.5, 0.5], B' = 4: a block is accepted when exactly 2 of its 4 draws are
  // masked. Counted as the official code does, BOS is one of the 4 (drawn, then put back):
  // the first block keeps 1 or 2 real masks, 1 exactly when BOS drew a mask, which has
  // probability 3/6 = 1/2 given 2 of 4, whatever p. Counted over the B' - 1 = 3 maskable
  // positions, 1/2 is unreachable and the first block is not resampled.
  const int batch = 4000, L = 16, Bp = 4, K = L / Bp;
  std::vector<int32_t> x0(size_t(batch) * L, 3);
  for (int b = 0; b < batch; ++b) x0[size_t(b) * L] = 1;  // BOS
  EstimatorOptions o;
  o.eps_min = o.eps_max = 0.5;
  o.resample = true, o.count_bos = true, o.max_resample_tries = 1000;
  CounterRng rng(4, {2});
  NoisedBatch nb;
  draw_noised_batch(x0, batch, L, Bp, 21, noise::LogLinear{}, o, rng, nb);
  CHECK(nb.unresolved_blocks == 0);
  int one = 0;
  for (int b = 0; b < batch; ++b) {
    REQUIRE(nb.xt[size_t(b) * L] == 1);  // BOS is put back
    for (int k = 0; k < K; ++k) {
      int masked = 0;
      for (int j = 0; j < Bp; ++j) masked += nb.xt[size_t(b) * L + size_t(k) * Bp + j] == 21;
      if (k > 0) {
        REQUIRE(masked == 2);
      } else {
        REQUIRE((masked == 1 || masked == 2));
        one += masked == 1;
      }
    }
  }
  // Binomial(4000, 1/2): standard deviation 31.6.
  INFO("first blocks with one real mask: " << one << " of " << batch);
  CHECK(std::abs(one - batch / 2) < 5 * 31.7);

  // Without count_bos the first block is left as drawn (any count), the others as above;
  // the other blocks' law is the same either way.
  o.count_bos = false;
  CounterRng rng2(4, {2});
  draw_noised_batch(x0, batch, L, Bp, 21, noise::LogLinear{}, o, rng2, nb);
  int three = 0;
  for (int b = 0; b < batch; ++b) {
    int masked = 0;
    for (int j = 1; j < Bp; ++j) masked += nb.xt[size_t(b) * L + j] == 21;
    three += masked == 3 || masked == 0;
  }
  CHECK(three > 0);  // counts 2 of 4 cannot give: the first block was not resampled

  // Without resampling the option changes nothing (the stream is the default one).
  o.resample = false, o.eps_min = 1e-3, o.eps_max = 1.0;
  NoisedBatch with, without;
  CounterRng r1(9, {1}), r2(9, {1});
  o.count_bos = true;
  const auto few = std::span<const int32_t>(x0).first(size_t(64) * L);
  draw_noised_batch(few, 64, L, Bp, 21, noise::LogLinear{}, o, r1, with);
  o.count_bos = false;
  draw_noised_batch(few, 64, L, Bp, 21, noise::LogLinear{}, o, r2, without);
  CHECK(with.xt == without.xt);
}
