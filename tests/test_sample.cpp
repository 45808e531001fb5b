// The samplers (include/bd3/sample): cached and uncached paths agree, fused commits,
// NFE accounting, the exact distributions of first-hitting and DDPM on an enumerable
// model (chi-square), top-k / top-p supports, the stop rules, determinism across thread
// counts, generative perplexity, and the `bd3 sample` / `bd3 eval-gen` commands.
#include <bd3/bd3.hpp>
#include <bd3/sample/gen_ppl.hpp>
#include <bd3/sample/sampler.hpp>
#include <bd3/text/tokenizer.hpp>

#include <omp.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sys/wait.h>
#include <array>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

using namespace bd3;
using namespace bd3::sample;

namespace {

template <class Scalar = float>
using Model = BlockDiffusionModel<BlockSize<dynamic>, BlockSparseAttention, Scalar>;

ModelConfig tiny_config(int V, int L, int Bp, int D = 16, int layers = 2, int heads = 2) {
  ModelConfig c;
  c.vocab_size = V, c.model_length = L, c.block_size = Bp, c.hidden_dim = D, c.n_blocks = layers;
  c.n_heads = heads, c.cond_dim = 8, c.mask_index = V - 1;
  c.validate();
  return c;
}

template <class M>
M random_model(const ModelConfig& c, uint64_t seed, double scale) {
  M m(c);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-scale, scale);
  for (auto& p : m.parameters()) p = typename M::scalar_type(u(rng));
  m.parameters_changed();
  return m;
}

template <class M, class Noise = noise::LogLinear>
std::vector<SampleResult> run(const M& m, SamplerOptions o, Noise noise = {}) {
  Sampler<M, Noise> s(m, std::move(o), noise);
  return s.generate();
}

std::vector<std::vector<int32_t>> ids_of(const std::vector<SampleResult>& r) {
  std::vector<std::vector<int32_t>> out;
  for (auto& x : r) out.push_back(x.ids);
  return out;
}

// ---- chi-square ----------------------------------------------------------------------
// The regularised upper incomplete gamma function Q(a, x) (series / continued fraction).
double gamma_q(double a, double x) {
  if (x <= 0) return 1.0;
  const double front = std::exp(-x + a * std::log(x) - std::lgamma(a));
  if (x < a + 1) {
    double sum = 1.0 / a, term = sum;
    for (int n = 1; n < 10000 && term > sum * 1e-16; ++n) term *= x / (a + n), sum += term;
    return 1.0 - front * sum;
  }
  double b = x + 1 - a, c = 1e300, d = 1 / b, h = d;
  for (int i = 1; i < 10000; ++i) {
    const double an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (std::abs(d) < 1e-300) d = 1e-300;
    c = b + an / c;
    if (std::abs(c) < 1e-300) c = 1e-300;
    d = 1 / d;
    const double del = d * c;
    h *= del;
    if (std::abs(del - 1) < 1e-15) break;
  }
  return front * h;
}

// p-value of Pearson's chi-square test of the counts against the probabilities; cells
// expecting fewer than 5 draws are pooled. An observation outside the support gives 0.
double chi_square_pvalue(const std::map<std::vector<int32_t>, double>& prob,
                         const std::map<std::vector<int32_t>, int>& counts, int n,
                         double* stat_out = nullptr) {
  for (auto& [k, c] : counts)
    if (!prob.count(k) || prob.at(k) <= 0) return 0.0;
  double stat = 0, pooled_e = 0, pooled_o = 0;
  int cells = 0;
  for (auto& [k, p] : prob) {
    const double e = p * n;
    const double o = counts.count(k) ? counts.at(k) : 0;
    if (e < 5) {
      pooled_e += e, pooled_o += o;
      continue;
    }
    stat += (o - e) * (o - e) / e;
    ++cells;
  }
  if (pooled_e > 0) stat += (pooled_o - pooled_e) * (pooled_o - pooled_e) / pooled_e, ++cells;
  if (stat_out) *stat_out = stat;
  return gamma_q((cells - 1) / 2.0, stat / 2.0);
}

// SUBS probabilities (MASK excluded) at position pos of a whole sequence, via the banded
// full forward: the conditional p_x0 the samplers use.
template <class M>
std::vector<double> p_x0(const M& m, const std::vector<int32_t>& seq, int pos) {
  std::vector<typename M::scalar_type> logits;
  m.forward_banded(seq, logits);
  const int V = m.config().vocab_size, mask = m.config().mask_index;
  std::vector<double> p(V, 0.0);
  double mx = -1e300, sum = 0;
  for (int v = 0; v < V; ++v)
    if (v != mask) mx = std::max(mx, double(logits[size_t(pos) * V + v]));
  for (int v = 0; v < V; ++v)
    if (v != mask) sum += p[v] = std::exp(double(logits[size_t(pos) * V + v]) - mx);
  for (auto& x : p) x /= sum;
  return p;
}

}  // namespace

TEST_CASE("cached and uncached sampling draw the same tokens past the window", "[sample][kv]") {
  const auto cfg = tiny_config(12, 16, 4);
  auto model = random_model<Model<>>(cfg, 7, 0.5);
  for (Method method : {Method::first_hitting, Method::ddpm, Method::threshold}) {
    for (std::vector<int32_t> prompt :
         {std::vector<int32_t>{}, std::vector<int32_t>{0, 3, 5, 7, 2, 1}}) {
      INFO("method " << method_name(method) << ", prompt tokens " << prompt.size());
      SamplerOptions o;
      o.method = method, o.steps = 3, o.threshold = 0.5, o.batch = 2, o.seed = 11, o.length = 41;
      o.prompt = prompt;
      auto cached = run(model, o);
      o.kv_cache = false;
      auto uncached = run(model, o);
      CHECK(ids_of(cached) == ids_of(uncached));
      for (auto& r : cached) {
        REQUIRE(r.ids.size() == 41u);
        CHECK(r.ids[0] == 0);
        if (!prompt.empty()) CHECK(std::equal(prompt.begin(), prompt.end(), r.ids.begin()));
        for (int32_t t : r.ids) CHECK((t >= 0 && t < cfg.mask_index));
      }
      CHECK(ids_of(cached)[0] != ids_of(cached)[1]);
      for (size_t i = 0; i < cached.size(); ++i) CHECK(cached[i].nfe == uncached[i].nfe);
    }
  }
}

TEST_CASE("the KV cache window holds the last committed rows, in order", "[sample][kv]") {
  // Each scratch row gets a value naming its position, layer, sequence, head and lane;
  // after every commit the window's rows must be the newest ones, oldest first. 40 blocks
  // through a window of 16 (block 4): the window start moves and is copied back to the
  // front of the buffers many times. Also blocks of 1 and of the whole window (MDLM).
  const int block_size = GENERATE(4, 1, 16);
  INFO("block size " << block_size);
  const auto cfg = tiny_config(12, 16, block_size, 8, 2, 2);
  const int Bp = cfg.block_size, H = cfg.n_heads, Dh = cfg.head_dim();
  KVCache<double> cache(cfg, 2);
  auto tag = [&](int64_t pos, int l, int b, int h, int d, bool value) {
    return double(pos) * 1000 + l * 100 + b * 10 + h + d * 0.01 + (value ? 0.5 : 0.0);
  };
  for (int step = 0; step < 40; ++step) {
    const int64_t first = cache.next_position();
    for (int l = 0; l < cfg.n_blocks; ++l)
      for (int b = 0; b < 2; ++b)
        for (int h = 0; h < H; ++h)
          for (int r = 0; r < Bp; ++r)
            for (int d = 0; d < Dh; ++d) {
              const int64_t at = h * cache.head_stride() + int64_t(cache.length() + r) * Dh + d;
              cache.keys(l, b)[at] = tag(first + r, l, b, h, d, false);
              cache.values(l, b)[at] = tag(first + r, l, b, h, d, true);
            }
    cache.commit_scratch();
    const int n = std::min(int(cache.next_position()), cfg.model_length - Bp);
    REQUIRE(cache.length() == n);
    int wrong = 0;
    for (int l = 0; l < cfg.n_blocks; ++l)
      for (int b = 0; b < 2; ++b)
        for (int h = 0; h < H; ++h)
          for (int i = 0; i < n; ++i)
            for (int d = 0; d < Dh; ++d) {
              const int64_t pos = cache.next_position() - n + i;
              const int64_t at = h * cache.head_stride() + int64_t(i) * Dh + d;
              wrong += cache.keys(l, b)[at] != tag(pos, l, b, h, d, false);
              wrong += cache.values(l, b)[at] != tag(pos, l, b, h, d, true);
            }
    INFO("after commit " << step);
    CHECK(wrong == 0);
  }
}

TEST_CASE("decode calls without tokens are refused", "[sample][kv]") {
  const auto cfg = tiny_config(12, 16, 4);
  auto model = random_model<Model<>>(cfg, 7, 0.5);
  KVCache<float> cache(cfg, 1);
  std::vector<float> logits;
  REQUIRE_THROWS_WITH(model.forward_block({}, cache, logits),
                      "decode: expected batch x block_size = 4 tokens, got 0");
  REQUIRE_THROWS_WITH(model.commit_block({}, cache),
                      "decode: expected batch x block_size = 4 tokens, got 0");
  CHECK(cache.length() == 0);
}

TEST_CASE("fused commits give the same tokens and save every commit call", "[sample][fused]") {
  const auto cfg = tiny_config(12, 16, 4);
  auto model = random_model<Model<>>(cfg, 8, 0.5);
  for (Method method : {Method::first_hitting, Method::ddpm, Method::threshold}) {
    for (std::vector<int32_t> prompt :
         {std::vector<int32_t>{}, std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8}}) {
      INFO("method " << method_name(method) << ", prompt tokens " << prompt.size());
      SamplerOptions o;
      o.method = method, o.steps = 4, o.threshold = 0.3, o.batch = 2, o.seed = 5, o.length = 38;
      o.prompt = prompt;
      Sampler<Model<>> fused(model, o);
      auto a = fused.generate();
      o.fused_commit = false;
      Sampler<Model<>> separate(model, o);
      auto b = separate.generate();
      CHECK(ids_of(a) == ids_of(b));
      const int64_t blocks = (38 + 3) / 4, prompt_blocks = int64_t(prompt.size()) / 4;
      // Every block but the last joins the cache; fused, only the prompt's blocks before
      // its last whole one need a call of their own.
      CHECK(b[0].commit_calls == blocks - 1);
      CHECK(separate.stats().commit_calls == blocks - 1);
      CHECK(a[0].commit_calls == std::max<int64_t>(prompt_blocks - 1, 0));
      CHECK(fused.stats().model_calls == separate.stats().model_calls);
    }
  }
}

TEST_CASE("NFE accounting of each sampler", "[sample][nfe]") {
  const auto cfg = tiny_config(12, 16, 4);
  auto model = random_model<Model<>>(cfg, 9, 0.5);
  SamplerOptions o;
  o.length = 50, o.batch = 3, o.seed = 3;
  const int64_t gen_blocks = (50 + 3) / 4;  // BOS sits in block 0, which is generated too

  SECTION("first-hitting: one call per generated token") {
    Sampler<Model<>> s(model, o);
    for (auto& r : s.generate()) CHECK(r.nfe == 49);
    CHECK(s.stats().model_calls == 49);
  }
  SECTION("ddpm: at most T calls per block, and steps that reveal nothing reuse p_x0") {
    o.method = Method::ddpm, o.steps = 16;
    Sampler<Model<>> s(model, o);
    for (auto& r : s.generate()) {
      CHECK(r.nfe <= 16 * gen_blocks);
      CHECK(r.nfe >= gen_blocks);
      CHECK(r.nfe < 16 * gen_blocks);  // reuse happened
    }
    CHECK(s.stats().model_calls <= 16 * gen_blocks);
  }
  SECTION("ddpm with one step per block is one call per block") {
    o.method = Method::ddpm, o.steps = 1;
    for (auto& r : run(model, o)) CHECK(r.nfe == gen_blocks);
  }
  SECTION("threshold 0: one call per block; threshold 1: one token per call") {
    o.method = Method::threshold, o.threshold = 0.0;
    for (auto& r : run(model, o)) CHECK(r.nfe == gen_blocks);
    o.threshold = 1.0;
    for (auto& r : run(model, o)) CHECK(r.nfe == 49);
    o.threshold = 0.5;
    for (auto& r : run(model, o)) CHECK((r.nfe >= gen_blocks && r.nfe <= 49));
  }
  SECTION("threshold 1 with min_reveal k: ceil(masked / k) calls per block") {
    // Blocks: 3 masked (BOS first), 11 x 4, then 2 inside the length.
    o.method = Method::threshold, o.threshold = 1.0;
    for (int k : {2, 3, 4, 100}) {
      INFO("min_reveal " << k);
      o.min_reveal = k;
      const int64_t expect = (3 + k - 1) / k + 11 * ((4 + k - 1) / k) + (2 + k - 1) / k;
      for (auto& r : run(model, o)) CHECK(r.nfe == expect);
    }
  }
  SECTION("uncached: the same NFE and no commit calls") {
    o.kv_cache = false;
    for (auto& r : run(model, o)) CHECK((r.nfe == 49 && r.commit_calls == 0));
  }
}

TEST_CASE("threshold reveal set: every position >= tau, at least the k most confident",
          "[sample][threshold]") {
  std::vector<int> out;
  auto reveals = [&](std::vector<double> c, double tau, int k) {
    threshold_reveals(c, tau, k, out);
    return out;
  };
  using V = std::vector<int>;
  const std::vector<double> c{0.1, 0.5, 0.3, 0.5, 0.45};
  CHECK(reveals(c, 0.4, 1) == V{1, 3, 4});
  CHECK(reveals(c, 0.9, 1) == V{1});        // none >= tau: the most confident, earlier on ties
  CHECK(reveals(c, 0.9, 2) == V{1, 3});     // the two at 0.5
  CHECK(reveals(c, 0.9, 3) == V{1, 3, 4});  // then 0.45
  CHECK(reveals(c, 0.5, 4) == V{1, 2, 3, 4});
  CHECK(reveals(c, 0.0, 1) == V{0, 1, 2, 3, 4});
  CHECK(reveals(c, 1.0, 99) == V{0, 1, 2, 3, 4});
  CHECK(reveals({}, 0.5, 2).empty());

  // min_reveal = block size at tau = 1 decodes each block in one call, as tau = 0 does, and
  // draws in the same (position) order: the same tokens.
  const auto cfg = tiny_config(12, 16, 4);
  auto model = random_model<Model<>>(cfg, 9, 0.5);
  SamplerOptions o;
  o.method = Method::threshold, o.length = 30, o.batch = 2, o.seed = 17;
  o.threshold = 0.0;
  auto a = run(model, o);
  o.threshold = 1.0, o.min_reveal = 4;
  auto b = run(model, o);
  CHECK(ids_of(a) == ids_of(b));
  CHECK(a[0].nfe == b[0].nfe);
}

TEST_CASE("first-hitting and DDPM sample exactly their distributions", "[sample][distribution]") {
  // Vocabulary {0, 1, 2} + MASK, block size 2, length 4: [BOS x1 | x2 x3], 27 outcomes.
  const auto cfg = tiny_config(4, 4, 2, 8, 1, 2);
  auto check = [&](const auto& model, SamplerOptions o,
                   const std::map<std::vector<int32_t>, double>& prob, auto noise) {
    double total = 0;
    for (auto& [k, p] : prob) total += p;
    REQUIRE(total == Approx(1.0).margin(1e-9));
    const int n = 20000;
    o.batch = n, o.length = 4;
    // One thread: the model opens a parallel region per sequence in attention, which
    // costs more than this tiny model's work on a loaded machine.
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    auto results = run(model, o, noise);
    omp_set_num_threads(threads);
    std::map<std::vector<int32_t>, int> counts;
    for (auto& r : results) {
      REQUIRE(r.ids.size() == 4u);
      counts[{r.ids[1], r.ids[2], r.ids[3]}]++;
    }
    double stat = 0;
    const double pv = chi_square_pvalue(prob, counts, n, &stat);
    INFO("chi-square " << stat << ", p-value " << pv);
    CHECK(pv > 1e-3);
  };
  const int32_t M = 3;

  SECTION("first-hitting: a uniformly chosen position, then the other") {
    auto model = random_model<Model<>>(cfg, 21, 0.8);
    std::map<std::vector<int32_t>, double> prob;
    const auto q1 = p_x0(model, {0, M, M, M}, 1);
    for (int32_t a = 0; a < 3; ++a) {
      const auto first2 = p_x0(model, {0, a, M, M}, 2), first3 = p_x0(model, {0, a, M, M}, 3);
      for (int32_t b = 0; b < 3; ++b)
        for (int32_t c = 0; c < 3; ++c) {
          const double order23 = first2[b] * p_x0(model, {0, a, b, M}, 3)[c];
          const double order32 = first3[c] * p_x0(model, {0, a, M, c}, 2)[b];
          prob[{a, b, c}] = q1[a] * 0.5 * (order23 + order32);
        }
    }
    SamplerOptions o;
    o.seed = 1;
    check(model, o, prob, noise::LogLinear{});
  }

  // DDPM: a Markov chain over the block's states; each step keeps a masked position MASK
  // with probability p(s)/p(t), else draws it from p_x0 of the current state.
  auto ddpm_law = [&](const auto& model, const auto& noise, int T) {
    std::map<std::vector<int32_t>, double> prob;
    const auto q1 = p_x0(model, {0, M, M, M}, 1);
    for (int32_t a = 0; a < 3; ++a) {
      std::map<std::array<int32_t, 2>, double> state{{{M, M}, 1.0}};
      for (int i = 0; i < T; ++i) {
        const double t = 1.0 - double(i) / T, s = t - 1.0 / T;
        const double stay = i == T - 1 ? 0.0 : noise.p(s) / noise.p(t);
        std::map<std::array<int32_t, 2>, double> next;
        for (auto& [st, w] : state) {
          const auto q2 = p_x0(model, {0, a, st[0], st[1]}, 2),
                     q3 = p_x0(model, {0, a, st[0], st[1]}, 3);
          // Per position: the outcomes with their probabilities.
          auto outcomes = [&](int32_t cur, const std::vector<double>& q) {
            std::vector<std::pair<int32_t, double>> o;
            if (cur != M) return std::vector<std::pair<int32_t, double>>{{cur, 1.0}};
            if (stay > 0) o.push_back({M, stay});
            for (int32_t v = 0; v < 3; ++v) o.push_back({v, (1 - stay) * q[v]});
            return o;
          };
          for (auto [x, px] : outcomes(st[0], q2))
            for (auto [y, py] : outcomes(st[1], q3)) next[{x, y}] += w * px * py;
        }
        state = next;
      }
      for (auto& [st, w] : state) {
        REQUIRE(st[0] != M);
        REQUIRE(st[1] != M);
        prob[{a, st[0], st[1]}] += q1[a] * w;
      }
    }
    return prob;
  };
  SECTION("ddpm, loglinear, T = 3") {
    auto model = random_model<Model<>>(cfg, 22, 0.8);
    SamplerOptions o;
    o.method = Method::ddpm, o.steps = 3, o.seed = 2;
    check(model, o, ddpm_law(model, noise::LogLinear{}, 3), noise::LogLinear{});
  }
  SECTION("ddpm, cosine schedule, T = 2") {
    auto model = random_model<Model<>>(cfg, 23, 0.8);
    SamplerOptions o;
    o.method = Method::ddpm, o.steps = 2, o.seed = 3;
    check(model, o, ddpm_law(model, noise::Cosine{}, 2), noise::Cosine{});
  }
}

TEST_CASE("top-k and top-p keep the right support", "[sample][nucleus]") {
  // Probabilities 0.4, 0.3, 0.2, 0.1 (ids 0..3), MASK = 4 with a huge logit (ignored).
  const std::vector<double> logits = {std::log(0.4), std::log(0.3), std::log(0.2), std::log(0.1),
                                      50.0};
  auto support = [&](Filter f) {
    TokenDistribution d;
    make_distribution(logits.data(), 5, 4, f, d);
    std::vector<int32_t> s;
    for (int v = 0; v < 5; ++v)
      if (d.p[v] > 0) s.push_back(v);
    return std::make_pair(s, d);
  };
  CHECK(support({}).first == std::vector<int32_t>{0, 1, 2, 3});
  CHECK(support({1.0, 2, 1.0}).first == std::vector<int32_t>{0, 1});
  CHECK(support({1.0, 0, 0.75}).first == std::vector<int32_t>{0, 1});  // 0.4 + 0.3 <= 0.75
  CHECK(support({1.0, 0, 0.65}).first == std::vector<int32_t>{0});     // always the top one
  CHECK(support({1.0, 0, 0.1}).first == std::vector<int32_t>{0});
  CHECK(support({1.0, 0, 0.95}).first == std::vector<int32_t>{0, 1, 2});  // 0.9 <= 0.95 < 1
  CHECK(support({1.0, 3, 0.8}).first ==
        std::vector<int32_t>{0, 1});  // on the top-3: 4/9 + 3/9 <= 0.8
  auto [s, d] = support({1.0, 2, 1.0});
  CHECK(d.p[0] == Approx(4.0 / 7));
  CHECK(d.p[1] == Approx(3.0 / 7));
  CHECK(d.top == 0);
  CHECK(d.top_prob == Approx(4.0 / 7));
  // Temperature 0 is greedy but keeps the model's confidence.
  auto [gs, g] = support({0.0, 0, 1.0});
  CHECK(g.greedy);
  CHECK(g.confidence == Approx(0.4));
  CHECK(d.confidence == Approx(0.4));  // filters do not change the model's confidence
  auto [hs, hot] = support({0.5, 0, 1.0});
  CHECK(hot.confidence == Approx(0.4));
  CHECK(hot.top_prob == Approx(0.16 / 0.30));  // 0.4^2 / (0.16 + 0.09 + 0.04 + 0.01)
  RandomStream rng(1);
  CHECK(sample_token(g, rng, 0) == 0);

  // Draws follow the renormalised kept probabilities and never leave the support.
  std::map<std::vector<int32_t>, double> prob{{{0}, 4.0 / 9}, {{1}, 3.0 / 9}, {{2}, 2.0 / 9}};
  auto [s3, d3] = support({1.0, 3, 1.0});
  std::map<std::vector<int32_t>, int> counts;
  const int n = 30000;
  for (int i = 0; i < n; ++i) counts[{sample_token(d3, rng, rng.reserve(5))}]++;
  CHECK(chi_square_pvalue(prob, counts, n) > 1e-3);

  // End to end, greedy with one call per block (threshold 0, temperature 0): every token
  // is the argmax of p_x0 given the earlier blocks and an all-MASK block.
  const auto cfg = tiny_config(12, 16, 4);
  auto model = random_model<Model<>>(cfg, 10, 0.5);
  SamplerOptions o;
  o.length = 24, o.temperature = 0, o.method = Method::threshold, o.threshold = 0;
  auto greedy = run(model, o)[0].ids;
  REQUIRE(greedy.size() == 24u);
  o.top_k = 1, o.temperature = 1, o.seed = 77;
  CHECK(run(model, o)[0].ids == greedy);  // top-k = 1 is greedy too
  for (int b = 0; b < 6; ++b) {
    std::vector<int32_t> seq(greedy.begin(), greedy.begin() + 4 * (b + 1));
    for (int i = std::max(1, 4 * b); i < 4 * (b + 1); ++i) seq[i] = 11;
    std::vector<float> lg;
    model.forward_banded(seq, lg);
    for (int i = std::max(1, 4 * b); i < 4 * (b + 1); ++i) {
      const float* row = lg.data() + size_t(i) * 12;
      CHECK(greedy[i] == int32_t(std::max_element(row, row + 11) - row));
    }
  }
}

TEST_CASE("stop rules: degenerate samples, EOS, bounded retries", "[sample][stop]") {
  std::vector<int32_t> ids(300);
  for (int i = 0; i < 300; ++i) ids[i] = i % 16;  // 16 equally frequent tokens: log 16 < 4 nats
  CHECK(unigram_entropy(std::span<const int32_t>(ids).last(256)) == Approx(std::log(16.0)));
  CHECK(is_degenerate(ids));
  CHECK_FALSE(is_degenerate(std::span<const int32_t>(ids).first(256)));  // needs more than 256
  for (int i = 0; i < 300; ++i) ids[i] = (i * 7) % 300;  // 256 distinct: log 256 > 4
  CHECK(unigram_entropy(std::span<const int32_t>(ids).last(256)) == Approx(std::log(256.0)));
  CHECK_FALSE(is_degenerate(ids));
  CHECK(unigram_entropy(std::vector<int32_t>(10, 3)) == 0.0);
  const std::vector<int32_t> e = {5, 1, 2, 1, 3, 1};
  CHECK(second_eos_end(e, 1) == std::optional<size_t>(4));
  CHECK(second_eos_end(e, 1, 4) == std::optional<size_t>(6));
  CHECK(second_eos_end(e, 5) == std::nullopt);

  // A model that (almost) always says token 1.
  const auto cfg = tiny_config(12, 16, 4);
  auto model = random_model<Model<>>(cfg, 12, 0.3);
  model.parameters()[size_t(model.layout().out_b + 1)] = 40.0f;
  model.parameters_changed();

  SECTION("variable length stops after the second EOS") {
    SamplerOptions o;
    o.length = 100, o.length_mode = LengthMode::variable, o.bos_id = 0, o.eos_id = 1;
    auto r = run(model, o);
    CHECK(r[0].ids == std::vector<int32_t>{0, 1, 1});
    CHECK(r[0].stopped_early);
    o.bos_id = 1;  // BOS == EOS (GPT-2): the first generated EOS ends it
    CHECK(run(model, o)[0].ids == std::vector<int32_t>{1, 1});
  }
  SECTION("variable length drops the last 256 tokens of a degenerate sample") {
    SamplerOptions o;
    o.length = 400, o.length_mode = LengthMode::variable, o.eos_id = 2;
    o.method = Method::threshold, o.threshold = 0;
    auto r = run(model, o);
    CHECK(r[0].ids.size() == 260u - 256u);  // checked at the first block end past 256
    CHECK(r[0].stopped_early);
  }
  SECTION("fixed length retries degenerate samples, then fails") {
    SamplerOptions o;
    o.length = 300, o.method = Method::threshold, o.threshold = 0, o.max_retries = 2;
    int rejected = 0, last_attempt = -1;
    o.on_block = [&](const BlockEvent& ev) {
      if (ev.rejected) ++rejected, last_attempt = ev.attempt;
    };
    CHECK_THROWS_AS(run(model, o), bd3::Error);
    CHECK(rejected == 3);
    CHECK(last_attempt == 2);
  }
  SECTION("a healthy model is not rejected") {
    auto healthy = random_model<Model<>>(tiny_config(300, 16, 4), 13, 0.1);
    SamplerOptions o;
    o.length = 300, o.method = Method::threshold, o.threshold = 0, o.max_retries = 0;
    auto r = run(healthy, o);
    CHECK(r[0].ids.size() == 300u);
    CHECK(r[0].retries == 0);
  }
}

TEST_CASE("streaming callback sees every finished block in order", "[sample][stream]") {
  const auto cfg = tiny_config(12, 16, 4);
  auto model = random_model<Model<>>(cfg, 14, 0.5);
  SamplerOptions o;
  o.length = 30, o.batch = 2, o.prompt = {0, 4, 5, 6, 7, 8};
  std::vector<std::vector<int32_t>> streamed(2);
  std::vector<int64_t> next(2, 4);  // the prompt's whole block is not streamed
  o.on_block = [&](const BlockEvent& ev) {
    CHECK(ev.position == next[ev.sequence]);
    next[ev.sequence] += int64_t(ev.tokens.size());
    streamed[ev.sequence].insert(streamed[ev.sequence].end(), ev.tokens.begin(), ev.tokens.end());
  };
  auto r = run(model, o);
  for (int i = 0; i < 2; ++i) {
    CHECK(next[i] == 30);
    CHECK(std::equal(streamed[i].begin(), streamed[i].end(), r[i].ids.begin() + 4));
  }
}

TEST_CASE("same seed, same samples, for any thread count and batch size", "[sample][determinism]") {
  const auto cfg = tiny_config(40, 16, 4, 32, 2, 4);
  auto model = random_model<Model<>>(cfg, 15, 0.4);
  const auto storage = GENERATE(DecodeWeights::f32, DecodeWeights::f32_packed);
  INFO("decode weights " << int(storage));
  model.set_decode_weights(storage);
  for (Method method : {Method::first_hitting, Method::ddpm, Method::threshold}) {
    INFO("method " << method_name(method));
    SamplerOptions o;
    o.method = method, o.length = 45, o.batch = 3, o.seed = 99, o.threshold = 0.2, o.top_p = 0.9;
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    auto one = run(model, o);
    omp_set_num_threads(2);
    auto two = run(model, o);
    omp_set_num_threads(threads);
    CHECK(ids_of(one) == ids_of(two));
    // Each sequence has its own random stream: alone it draws what it drew in the batch.
    o.batch = 1;
    CHECK(run(model, o)[0].ids == one[0].ids);
    o.seed = 100;
    CHECK(run(model, o)[0].ids != one[0].ids);
  }
}

TEST_CASE("a batch changes no logit: decode rows are computed alone", "[sample][kv][batch]") {
  // Three sequences through one batched cache against each through its own: every
  // forward_block / fused / commit call gives bit-identical logits, past the window, on
  // 2 threads (the batched call takes the tiled kernel and the per-sequence attention
  // loop across threads; the single one the streaming kernel).
  // Also with the packed and bfloat16 decode weights (their own kernel, same property).
  const auto cfg = tiny_config(40, 16, 4, 32, 2, 4);
  auto model = random_model<Model<>>(cfg, 21, 0.4);
  const auto storage = GENERATE(DecodeWeights::f32, DecodeWeights::f32_packed, DecodeWeights::bf16);
  INFO("decode weights " << int(storage));
  model.set_decode_weights(storage);
  const int Bp = 4, V = cfg.vocab_size, batch = 3;
  const int threads = omp_get_max_threads();
  omp_set_num_threads(2);
  KVCache<float> together(cfg, batch);
  std::vector<KVCache<float>> alone;
  for (int b = 0; b < batch; ++b) alone.emplace_back(cfg, 1);
  std::mt19937 rng(8);
  std::uniform_int_distribution<int32_t> tok(0, V - 2);
  auto block = [&] {
    std::vector<int32_t> t(size_t(batch) * Bp);
    for (auto& x : t) x = tok(rng);
    return t;
  };
  std::vector<int32_t> previous;
  for (int step = 0; step < 8; ++step) {  // 8 blocks of 4: twice the 16-token window
    INFO("block " << step);
    const auto noisy = block();
    std::vector<float> all, one;
    if (step % 2 == 1)
      model.forward_block_fused(previous, noisy, together, all);
    else
      model.forward_block(noisy, together, all);
    for (int b = 0; b < batch; ++b) {
      const std::span<const int32_t> mine(noisy.data() + b * Bp, Bp);
      if (step % 2 == 1)
        model.forward_block_fused(std::span<const int32_t>(previous.data() + b * Bp, Bp), mine,
                                  alone[b], one);
      else
        model.forward_block(mine, alone[b], one);
      REQUIRE(one.size() == size_t(Bp) * V);
      CHECK(std::equal(one.begin(), one.end(), all.begin() + ptrdiff_t(b) * Bp * V));
    }
    previous = block();
    if (step % 2 == 1) {  // odd steps commit now; even steps inside the next (fused) call
      model.commit_block(previous, together);
      for (int b = 0; b < batch; ++b)
        model.commit_block(std::span<const int32_t>(previous.data() + b * Bp, Bp), alone[b]);
    }
  }
  omp_set_num_threads(threads);
}

TEST_CASE("bad sampler options are usage errors", "[sample][errors]") {
  auto model = random_model<Model<>>(tiny_config(12, 16, 4), 16, 0.5);
  auto usage = [&](auto tweak) {
    SamplerOptions o;
    o.length = 20;
    tweak(o);
    try {
      Sampler<Model<>> s(model, o);
      FAIL("no error");
    } catch (const bd3::Error& e) {
      CHECK(e.kind() == ErrorKind::usage);
    }
  };
  usage([](SamplerOptions& o) { o.length = 0; });
  usage([](SamplerOptions& o) { o.length = 1; });  // only BOS
  usage([](SamplerOptions& o) { o.threshold = 1.5; });
  usage([](SamplerOptions& o) { o.min_reveal = 0; });
  usage([](SamplerOptions& o) { o.top_p = 0; });
  usage([](SamplerOptions& o) { o.top_p = 1.1; });
  usage([](SamplerOptions& o) { o.temperature = -1; });
  usage([](SamplerOptions& o) { o.batch = 0; });
  usage([](SamplerOptions& o) { o.bos_id = 11; });  // MASK
  usage([](SamplerOptions& o) { o.prompt = {0, 12}; });
}

TEST_CASE("generative perplexity equals the judge's autoregressive likelihood",
          "[sample][genppl]") {
  const auto cfg = tiny_config(12, 8, 1);
  auto judge = random_model<Model<>>(cfg, 17, 0.5);
  std::vector<std::vector<int32_t>> samples = {
      {0, 3, 4, 5, 1, 2, 9, 9, 3, 4, 1, 0, 2}, {5, 6}, {7}};
  auto g = generative_perplexity(judge, samples, 2);
  // Reference: KV-cached decoding, one MASK query after the clean prefix of each window.
  double nll = 0;
  int64_t tokens = 0;
  for (auto& s : samples)
    for (size_t begin = 0; begin + 1 < s.size(); begin += 7) {
      KVCache<float> cache(cfg, 1);
      const size_t size = std::min<size_t>(8, s.size() - begin);
      std::vector<float> logits;
      for (size_t l = 1; l < size; ++l) {
        judge.commit_block(std::vector<int32_t>{s[begin + l - 1]}, cache);
        judge.forward_block(std::vector<int32_t>{11}, cache, logits);
        double mx = -1e300, sum = 0;
        for (int v = 0; v < 11; ++v) mx = std::max(mx, double(logits[v]));
        for (int v = 0; v < 11; ++v) sum += std::exp(double(logits[v]) - mx);
        nll += mx + std::log(sum) - logits[s[begin + l]];
        ++tokens;
      }
    }
  CHECK(g.tokens == 13);
  CHECK(tokens == 13);
  CHECK(g.nll_sum == Approx(nll).epsilon(1e-5));
  CHECK(g.gen_ppl() == Approx(std::exp(nll / 13)).epsilon(1e-5));
  CHECK(g.samples == 3);
  CHECK(g.entropies[2] == 0.0);
  CHECK(g.entropies[1] == Approx(std::log(2.0)));
  CHECK_THROWS_AS(
      generative_perplexity(random_model<Model<>>(tiny_config(12, 8, 4), 1, 0.5), samples),
      bd3::Error);
}

// ---- the command line ------------------------------------------------------------------
namespace {

struct CliRun {
  int code;
  std::string out, err;
};

CliRun run_cli(const std::string& args) {
  const auto dir = std::filesystem::temp_directory_path();
  const auto out = dir / "bd3_test_sample_out.txt", err = dir / "bd3_test_sample_err.txt";
  const std::string cmd =
      std::string(BD3_CLI_PATH) + " " + args + " > " + out.string() + " 2> " + err.string();
  const int status = std::system(cmd.c_str());
  auto slurp = [](const std::filesystem::path& p) {
    std::ifstream in(p);
    return std::string((std::istreambuf_iterator<char>(in)), {});
  };
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}

}  // namespace

TEST_CASE("bd3 sample and bd3 eval-gen", "[sample][cli]") {
  namespace fs = std::filesystem;
  const auto root = fs::temp_directory_path() / "bd3_test_sample_cli";
  fs::remove_all(root);
  const auto model_dir = root / "model", judge_dir = root / "judge", ids_dir = root / "ids_only";
  const int V = text::Tokenizer::bytes().model_vocab_size();
  auto model = random_model<Model<>>(tiny_config(V, 16, 4), 18, 0.5);
  save_checkpoint(model_dir, model.config(), model.parameters());
  text::Tokenizer::bytes().save_to(model_dir);
  save_checkpoint(ids_dir, model.config(), model.parameters());
  auto judge = random_model<Model<>>(tiny_config(V, 16, 1), 19, 0.5);
  save_checkpoint(judge_dir, judge.config(), judge.parameters());

  auto r = run_cli("sample --model " + model_dir.string() +
                   " --length 37 --seed 4 --batch 2 --json --threads 1");
  REQUIRE(r.code == 0);
  CHECK(r.err.empty());  // not a terminal: no progress
  std::istringstream lines(r.out);
  std::string line;
  std::vector<nlohmann::json> rows;
  while (std::getline(lines, line)) rows.push_back(nlohmann::json::parse(line));
  REQUIRE(rows.size() == 2u);
  for (auto& j : rows) {
    auto ids = j.at("ids").get<std::vector<int32_t>>();
    CHECK(ids.size() == 37u);
    CHECK(ids[0] == text::ByteTokenizer::kBos);
    // Random bytes are not UTF-8: the JSON line carries them with U+FFFD replacements.
    const auto text = nlohmann::json(text::Tokenizer::bytes().decode(ids))
                          .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    CHECK(j.at("text") == nlohmann::json::parse(text));
    CHECK(j.at("nfe").get<int>() == 36);
    CHECK(j.at("tokens").get<int>() == 37);
    CHECK(j.contains("commit_calls"));
    CHECK(j.at("tokens_per_s").get<double>() > 0);
  }
  // The library with the same options draws the same ids.
  SamplerOptions o;
  o.length = 37, o.seed = 4, o.batch = 2, o.bos_id = text::ByteTokenizer::kBos;
  auto lib = run(model, o);
  CHECK(rows[0]["ids"].get<std::vector<int32_t>>() == lib[0].ids);

  // Plain output: the text of each sample.
  auto plain = run_cli("sample --model " + model_dir.string() + " --length 37 --seed 4");
  CHECK(plain.code == 0);
  CHECK(plain.out.find(text::Tokenizer::bytes().decode(
            std::span<const int32_t>(lib[0].ids).subspan(1))) != std::string::npos);

  // No tokenizer: ids, BOS from --bos.
  auto ids_only =
      run_cli("sample --model " + ids_dir.string() + " --length 10 --bos 5 --json --steps 2");
  REQUIRE(ids_only.code == 0);
  auto j = nlohmann::json::parse(ids_only.out);
  CHECK(j["ids"][0] == 5);
  CHECK(j["text"].is_null());
  CHECK(run_cli("sample --model " + ids_dir.string() + " --length 10 --prompt hi").code == 2);

  // A prompt is encoded after BOS.
  auto prompted = run_cli("sample --model " + model_dir.string() +
                          " --length 12 --prompt hello --json --threshold 0.5");
  REQUIRE(prompted.code == 0);
  auto pj = nlohmann::json::parse(prompted.out);
  CHECK(pj["text"].get<std::string>().rfind("<|bos|>hello", 0) == 0);

  // Packed and bfloat16 decode weights: the library's draw with the same storage; refused
  // without the KV cache.
  for (auto [name, storage] : {std::pair{"f32-packed", DecodeWeights::f32_packed},
                               std::pair{"bf16", DecodeWeights::bf16}}) {
    INFO(name);
    auto cli = run_cli("sample --model " + model_dir.string() +
                       " --length 37 --seed 4 --batch 2 --json --decode-weights " + name);
    REQUIRE(cli.code == 0);
    auto stored = model;
    stored.set_decode_weights(storage);
    const auto lib_stored = run(stored, o);
    CHECK(nlohmann::json::parse(cli.out.substr(0, cli.out.find('\n')))["ids"] == lib_stored[0].ids);
    CHECK(run_cli("sample --model " + model_dir.string() + " --decode-weights " + name +
                  " --no-kv-cache")
              .code == 2);
  }
  CHECK(run_cli("sample --model " + model_dir.string() + " --decode-weights f16").code == 2);

  // Bad values and missing files.
  CHECK(run_cli("sample --model " + model_dir.string() + " --length 0").code == 2);
  CHECK(run_cli("sample --model " + model_dir.string() + " --threshold 1.5").code == 2);
  CHECK(run_cli("sample --model " + model_dir.string() + " --top-p 0").code == 2);
  CHECK(run_cli("sample --model " + model_dir.string() + " --steps 4 --first-hitting").code == 2);
  CHECK(run_cli("sample --model " + (root / "nope").string()).code == 1);

  // eval-gen over the samples written above.
  {
    std::ofstream f(root / "samples.jsonl");
    f << r.out;
  }
  auto ev = run_cli("eval-gen --judge " + judge_dir.string() + " --samples " +
                    (root / "samples.jsonl").string());
  REQUIRE(ev.code == 0);
  auto ej = nlohmann::json::parse(ev.out);
  std::vector<std::vector<int32_t>> samples;
  for (auto& row : rows) samples.push_back(row["ids"].get<std::vector<int32_t>>());
  auto g = generative_perplexity(judge, samples);
  CHECK(ej["gen_ppl"].get<double>() == Approx(g.gen_ppl()).epsilon(1e-6));
  CHECK(ej["entropy"].get<double>() == Approx(g.mean_entropy()));
  CHECK(ej["samples"] == 2);
  CHECK(ej["tokens"] == 72);
  CHECK(run_cli("eval-gen --judge " + model_dir.string() + " --samples " +
                (root / "samples.jsonl").string())
            .code == 2);
  CHECK(run_cli("eval-gen --judge " + judge_dir.string() + " --samples " +
                (root / "none.jsonl").string())
            .code == 1);
  fs::remove_all(root);
}
