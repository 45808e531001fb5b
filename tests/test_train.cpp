// Training: AdamW, the learning-rate schedule, gradient clipping, EMA, initialisation,
// the loss going down on a small corpus, bit-identical resumption from a checkpoint, and
// at B' = L the same steps from the xt-only training pass as from [xt, x0].
#include <bd3/bd3.hpp>
#include <bd3/text/corpus.hpp>
#include <bd3/text/tokenizer.hpp>
#include <bd3/train/init.hpp>
#include <bd3/train/optimizer.hpp>
#include <bd3/train/trainer.hpp>
#include <bd3/train/trainer_state.hpp>

#include <omp.h>
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

using namespace bd3;
using namespace bd3::train;
namespace fs = std::filesystem;

namespace {

using Model = BlockDiffusionModel<BlockSize<dynamic>, BlockSparseAttention, float>;

fs::path fresh_dir(const std::string& name) {
  auto d =
      fs::temp_directory_path() / ("bd3_test_train_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string repeated_text() {
  std::string s;
  for (int i = 0; i < 60; ++i)
    s += "the quick brown fox jumps over the lazy dog. a stitch in time saves nine.\n";
  return s;
}

text::Corpus make_corpus(const text::Tokenizer& tok, int L, double val_fraction = 0.1) {
  static const std::string text = repeated_text();
  std::string_view views[1] = {text};
  text::CorpusOptions o;
  o.model_length = L;
  o.val_fraction = val_fraction;
  return text::Corpus::from_texts(tok, views, o);
}

ModelConfig small_config(const text::Tokenizer& tok, int L, int block, int hidden = 32,
                         int layers = 2) {
  ModelConfig c;
  c.block_size = block, c.model_length = L;
  c.vocab_size = tok.model_vocab_size(), c.mask_index = tok.mask_id();
  c.hidden_dim = hidden, c.n_heads = 2, c.n_blocks = layers, c.cond_dim = 16;
  c.validate();
  return c;
}

bool bitwise_equal(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

// Tiny models: one thread is fastest, and immune to a loaded machine.
struct OneThread {
  int saved = omp_get_max_threads();
  OneThread() { omp_set_num_threads(1); }
  ~OneThread() { omp_set_num_threads(saved); }
};

}  // namespace

TEST_CASE("AdamW: two steps against a hand computation", "[optim]") {
  std::vector<float> p{1.0f, -2.0f, 0.5f, 3.0f};
  const std::vector<float> g1{0.1f, -0.3f, 0.0f, 2.0f}, g2{-0.2f, 0.1f, 0.05f, 1.0f};
  AdamWOptions o;
  o.lr = 0.01, o.beta1 = 0.9, o.beta2 = 0.999, o.eps = 1e-8, o.weight_decay = 0.1;
  AdamWState s;
  s.reset(p.size());
  // By hand, in double.
  std::vector<double> hp(p.begin(), p.end()), m(4, 0), v(4, 0);
  auto hand = [&](const std::vector<float>& g, int t, double lr) {
    for (int i = 0; i < 4; ++i) {
      hp[i] *= 1 - lr * o.weight_decay;
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g[i];
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * double(g[i]) * g[i];
      const double mh = m[i] / (1 - std::pow(o.beta1, t)), vh = v[i] / (1 - std::pow(o.beta2, t));
      hp[i] -= lr * mh / (std::sqrt(vh) + o.eps);
    }
  };
  adamw_step(p, g1, s, o, 0.01);
  hand(g1, 1, 0.01);
  for (int i = 0; i < 4; ++i) CHECK(p[i] == Approx(hp[i]).epsilon(1e-6));
  // Step 1 moves each weight by lr * sign(g) (plus decay).
  CHECK(p[0] == Approx(1.0 * (1 - 0.001) - 0.01).epsilon(1e-6));
  CHECK(p[2] == Approx(0.5 * (1 - 0.001)).epsilon(1e-7));
  adamw_step(p, g2, s, o, 0.005);
  hand(g2, 2, 0.005);
  for (int i = 0; i < 4; ++i) CHECK(p[i] == Approx(hp[i]).epsilon(1e-6));
  CHECK(s.step == 2);
  std::vector<float> bad(3);
  CHECK_THROWS_AS(adamw_step(p, bad, s, o, 0.01), Error);
}

TEST_CASE("learning-rate schedule values", "[optim]") {
  LrSchedule c{1.0, 10, LrShape::constant, 110, 0.0};
  CHECK(c.at(0) == Approx(0.1));
  CHECK(c.at(4) == Approx(0.5));
  CHECK(c.at(9) == Approx(1.0));
  CHECK(c.at(10) == 1.0);
  CHECK(c.at(1000) == 1.0);
  LrSchedule cos{1.0, 10, LrShape::cosine, 110, 0.1};
  CHECK(cos.at(0) == Approx(0.1));
  CHECK(cos.at(10) == Approx(1.0));
  CHECK(cos.at(60) == Approx(0.55));  // half-way: (1 + 0.1) / 2
  CHECK(cos.at(35) == Approx(0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * 0.25))));
  CHECK(cos.at(110) == Approx(0.1));
  CHECK(cos.at(500) == Approx(0.1));
  LrSchedule none{2e-3, 0, LrShape::constant, 5, 0};
  CHECK(none.at(0) == 2e-3);
  // The official count (LambdaLR over constant_schedule_with_warmup): step / warmup.
  LrSchedule official{1.0, 10, LrShape::constant, 110, 0.0, /*warmup_from_zero=*/true};
  CHECK(official.at(0) == 0.0);
  CHECK(official.at(1) == Approx(0.1));
  CHECK(official.at(9) == Approx(0.9));
  CHECK(official.at(10) == 1.0);
}

TEST_CASE("gradient clipping", "[optim]") {
  std::vector<float> g{3.0f, 4.0f};
  CHECK(clip_gradient(g, 10.0) == Approx(5.0));
  CHECK(g[0] == 3.0f);
  CHECK(clip_gradient(g, 1.0) == Approx(5.0));
  CHECK(g[0] == Approx(0.6).epsilon(1e-5));
  CHECK(g[1] == Approx(0.8).epsilon(1e-5));
  CHECK(gradient_norm(g) == Approx(1.0).epsilon(1e-5));
  std::vector<float> h{3.0f, 4.0f};
  clip_gradient(h, 0.0);  // off
  CHECK(h[1] == 4.0f);
  std::vector<float> nan{1.0f, std::nanf("")};
  CHECK_THROWS_AS(clip_gradient(nan, 1.0), Error);
  // Large buffers: the norm in double, independent of the chunking.
  std::vector<float> big(100003, 0.5f);
  CHECK(gradient_norm(big) == Approx(0.5 * std::sqrt(100003.0)));
}

TEST_CASE("EMA follows the reference's decay warm-up", "[optim]") {
  Ema e;
  e.decay = 0.9999;
  std::vector<float> p{0.0f};
  e.reset(p);
  p[0] = 1.0f;
  CHECK(e.next_decay() == Approx(2.0 / 11.0));
  e.update(p);
  CHECK(e.shadow[0] == Approx(1 - 2.0 / 11.0));
  CHECK(e.next_decay() == Approx(3.0 / 12.0));
  for (int i = 0; i < 100000; ++i) e.updates++;
  CHECK(e.next_decay() == 0.9999);
  Ema off;
  off.decay = 0;
  off.reset(p);
  p[0] = 5.0f;
  off.update(p);
  CHECK(off.shadow[0] == 1.0f);
}

TEST_CASE("initialisation as the official code", "[init]") {
  auto tok = text::Tokenizer::bytes();
  auto c = small_config(tok, 32, 4, 64);
  Model m(c);
  init_model(m, 1);
  const auto& lay = m.layout();
  const auto P = m.parameters();
  auto stats = [&](const ParameterEntry& e) {
    double lo = 1e9, hi = -1e9, s2 = 0;
    for (int64_t i = 0; i < e.size; ++i) {
      const double x = P[size_t(e.offset + i)];
      lo = std::min(lo, x), hi = std::max(hi, x), s2 += x * x;
    }
    return std::tuple{lo, hi, s2 / double(e.size)};
  };
  for (const auto& e : lay.entries()) {
    INFO(e.name);
    auto [lo, hi, ms] = stats(e);
    if (e.name.find("adaLN_modulation") != std::string::npos ||
        e.name.find("output_layer.linear") != std::string::npos) {
      CHECK(lo == 0.0);
      CHECK(hi == 0.0);
    } else if (e.name.find("norm") != std::string::npos) {
      CHECK(lo == 1.0);
      CHECK(hi == 1.0);
    } else {
      const double fan_in = e.shape.size() == 2 ? double(e.shape[1])
                            : e.name.find("sigma_map.mlp.0") != std::string::npos ? 256.0
                            : e.name.find("sigma_map.mlp.2") != std::string::npos
                                ? double(c.cond_dim)
                            : e.name.find("mlp.2") != std::string::npos ? 4.0 * c.hidden_dim
                                                                        : double(c.hidden_dim);
      const double bound = 1.0 / std::sqrt(fan_in);
      CHECK(lo >= -bound);
      CHECK(hi <= bound);
      if (e.size >= 1000)
        CHECK(ms == Approx(bound * bound / 3).epsilon(0.1));  // variance of U(-b, b)
    }
  }
  // Deterministic per seed.
  Model m2(c), m3(c);
  init_model(m2, 1);
  init_model(m3, 2);
  CHECK(bitwise_equal(m.parameters(), m2.parameters()));
  CHECK_FALSE(bitwise_equal(m.parameters(), m3.parameters()));
  // At init every block is the identity and the logits are 0: loss = log(V - 1) on masked tokens.
  const int L = c.model_length;
  std::vector<int32_t> x0(size_t(L), 65), xt(size_t(L), c.mask_index);
  x0[0] = xt[0] = tok.bos_id();
  TrainActivations<float> act;
  m.forward_train(xt, x0, 1, act);
  for (float v : act.logits) REQUIRE(v == 0.0f);
}

TEST_CASE("the loss goes down on a small repeated corpus", "[train]") {
  OneThread one_thread;
  auto tok = text::Tokenizer::bytes();
  const int L = 32;
  auto corpus = make_corpus(tok, L);
  Model model(small_config(tok, L, 4, 32, 2));
  init_model(model, 0);
  TrainOptions o;
  o.batch = 8, o.steps = 100, o.seed = 1;
  o.adamw.lr = 3e-3, o.warmup = 10;
  o.ema = 0;  // judge the raw weights
  Trainer<Model> trainer(std::move(model), o, corpus);
  // The NELBO on validation sequences before and after, same masks.
  std::vector<int32_t> val(size_t(8) * L);
  std::vector<int64_t> idx{0, 1, 2, 3, 0, 1, 2, 3};
  corpus.batch(text::Split::validation, idx, val);
  auto nelbo = [&] {
    double s = 0;
    for (int d = 0; d < 8; ++d) {
      CounterRng rng(5, {uint64_t(d)});
      auto t = estimate_nelbo(trainer.model(), trainer.noise(), val, 8, EstimatorOptions{}, rng);
      s += t.loss_sum / double(t.tokens);
    }
    return s / 8;
  };
  const double before = nelbo();
  double first = 0, last = 0;
  for (int s = 0; s < 100; ++s) {
    auto r = trainer.train_step();
    REQUIRE(std::isfinite(r.loss));
    if (s < 10) first += r.loss / 10;
    if (s >= 90) last += r.loss / 10;
  }
  const double after = nelbo();
  INFO("train loss " << first << " -> " << last << ", validation NELBO " << before << " -> "
                     << after);
  CHECK(last < 0.75 * first);
  CHECK(after < 0.7 * before);
  CHECK(trainer.step() == 100);
  CHECK(trainer.state().samples_seen == 800);
}

TEST_CASE("a resumed run is bit-identical to an uninterrupted one", "[train][resume]") {
  auto tok = text::Tokenizer::bytes();
  const int L = 32;
  auto corpus = make_corpus(tok, L);
  TrainOptions o;
  o.batch = 4, o.steps = 6, o.seed = 7;
  o.adamw.lr = 2e-3, o.adamw.weight_decay = 0.01, o.warmup = 2;
  o.lr_shape = LrShape::cosine, o.min_lr = 1e-4;
  o.accumulate = 2, o.dropout = 0.1, o.ema = 0.99;
  o.clip_search = true, o.clip_every = 2, o.clip_batches = 1;  // searches at steps 2 and 4
  o.clip.widths = {0.5, 0.8};
  auto cfg = small_config(tok, L, 4, 32, 1);
  cfg.dropout = o.dropout;

  Model m1(cfg);
  init_model(m1, o.seed);
  Trainer<Model, RuntimeNoise> straight(std::move(m1), RuntimeNoise("loglinear"), o, corpus);
  while (!straight.done()) straight.train_step();

  const auto dir = fresh_dir("resume");
  Model m2(cfg);
  init_model(m2, o.seed);
  {
    Trainer<Model, RuntimeNoise> first(std::move(m2), RuntimeNoise("loglinear"), o, corpus);
    for (int s = 0; s < 3; ++s) first.train_step();
    first.save(dir, &tok);
  }
  auto ck = load_training_checkpoint(dir);
  CHECK(ck.state.step == 3);
  CHECK(ck.state.samples_seen == 3 * 2 * 4);
  REQUIRE(ck.tokenizer.has_value());
  CHECK(ck.tokenizer->kind() == text::Tokenizer::Kind::bytes);
  CHECK(ck.config.sampling_eps_min == ck.state.interval.eps_min);
  Model m3(ck.config);
  Trainer<Model, RuntimeNoise> resumed(std::move(m3), RuntimeNoise(ck.state.options.noise), ck,
                                       corpus);
  while (!resumed.done()) resumed.train_step();

  CHECK(resumed.step() == 6);
  CHECK(straight.interval() == resumed.interval());
  CHECK(bitwise_equal(straight.model().parameters(), resumed.model().parameters()));
  CHECK(bitwise_equal(straight.ema_weights(), resumed.ema_weights()));
  CHECK(bitwise_equal(straight.adam().m, resumed.adam().m));
  CHECK(bitwise_equal(straight.adam().v, resumed.adam().v));
  // The published checkpoint holds the EMA weights and the interval.
  resumed.save(dir, &tok);
  auto ck2 = load_training_checkpoint(dir);
  CHECK(ck2.state.step == 6);
  CHECK(bitwise_equal(ck2.model, straight.ema_weights()));
  CHECK(bitwise_equal(ck2.weights, straight.model().parameters()));
  CHECK(ck2.config.sampling_eps_min == straight.interval().eps_min);
  CHECK(ck2.config.sampling_eps_max == straight.interval().eps_max);
  // Old checkpoints are gone, the pointer and the symlink name the new one.
  int dirs = 0;
  for (auto& e : fs::directory_iterator(dir))
    dirs += e.path().filename().string().starts_with("ckpt-");
  CHECK(dirs == 1);
  CHECK(fs::read_symlink(dir / "latest") == checkpoint_name(6));
  CHECK(resolve_checkpoint_dir(dir) == dir / checkpoint_name(6));
  CHECK(load_checkpoint(dir / "latest").parameters.size() == straight.model().parameters().size());
  fs::remove_all(dir);
}

TEST_CASE("at B' = L the trainer's steps on the xt rows alone equal those on [xt, x0]",
          "[train][layout]") {
  OneThread one_thread;
  auto tok = text::Tokenizer::bytes();
  const int L = 32;
  auto corpus = make_corpus(tok, L);
  TrainOptions o;
  o.batch = 3, o.steps = 4, o.seed = 11;
  o.adamw.lr = 2e-3, o.adamw.weight_decay = 0.01, o.warmup = 1;
  o.accumulate = 2, o.dropout = 0.1, o.ema = 0.99;
  auto cfg = small_config(tok, L, L, 32, 2);  // one block: MDLM
  cfg.dropout = o.dropout;
  Model fast_model(cfg), full_model(cfg);
  init_model(fast_model, o.seed);
  init_model(full_model, o.seed);
  full_model.set_train_layout(TrainLayout::xt_x0);
  Trainer<Model> fast(std::move(fast_model), o, corpus), full(std::move(full_model), o, corpus);
  REQUIRE(fast.model().train_rows_per_sequence() == L);
  REQUIRE(full.model().train_rows_per_sequence() == 2 * L);
  while (!fast.done()) {
    const auto a = fast.train_step(), b = full.train_step();
    CHECK(a.loss == Approx(b.loss).epsilon(1e-6));
    CHECK(a.grad_norm == Approx(b.grad_norm).epsilon(1e-5));
  }
  // Within rounding: max |difference| per tensor against the tensor's largest weight.
  const auto pf = fast.model().parameters(), px = full.model().parameters();
  double worst = 0;
  for (const auto& e : fast.model().layout().entries()) {
    double diff = 0, scale = 0;
    for (int64_t i = e.offset; i < e.offset + e.size; ++i) {
      diff = std::max(diff, double(std::abs(pf[size_t(i)] - px[size_t(i)])));
      scale = std::max(scale, double(std::abs(px[size_t(i)])));
    }
    INFO("tensor " << e.name << ": max|diff| " << diff << ", max|weight| " << scale);
    CHECK(diff <= 1e-5 * scale);
    worst = std::max(worst, scale > 0 ? diff / scale : diff);
  }
  const bool same = bitwise_equal(pf, px) && bitwise_equal(fast.ema_weights(), full.ema_weights());
  std::printf(
      "[train] %lld steps at B' = L, xt only vs [xt, x0]: weights differ by at most %.3g "
      "(relative per tensor); %s\n",
      (long long)fast.step(), worst, same ? "bit-identical" : "not bit-identical");
}

TEST_CASE("trainer state JSON round-trips exactly", "[train][resume]") {
  TrainerState s;
  s.step = 12345, s.samples_seen = 987654321, s.interval = {0.1 + 0.2, 0.95};
  s.options.seed = 0xFFFFFFFFFFFFFFFFull;
  s.options.adamw.lr = 1.0 / 3.0;
  s.options.clip.widths = {0.55, 0.65};
  s.elapsed_seconds = M_PI;
  auto back = TrainerState::from_json(nlohmann::json::parse(s.to_json().dump()), "test");
  CHECK(back.step == s.step);
  CHECK(back.samples_seen == s.samples_seen);
  CHECK(back.interval == s.interval);
  CHECK(back.options.seed == s.options.seed);
  CHECK(back.options.adamw.lr == s.options.adamw.lr);
  CHECK(back.options.clip.widths == s.options.clip.widths);
  CHECK(back.elapsed_seconds == s.elapsed_seconds);
  CHECK_THROWS_AS(TrainerState::from_json(nlohmann::json::parse("{\"format\":\"x\"}"), "t"), Error);
  CHECK_THROWS_AS(TrainerState::from_json(nlohmann::json::parse("{}"), "t"), Error);
}

TEST_CASE("training options are validated", "[train]") {
  auto tok = text::Tokenizer::bytes();
  auto corpus = make_corpus(tok, 32);
  TrainOptions o;
  o.batch = 0;
  Model m(small_config(tok, 32, 4));
  CHECK_THROWS_AS(Trainer<Model>(m, o, corpus), Error);
  o.batch = 2, o.interval = {0.5, 0.4};
  CHECK_THROWS_AS(Trainer<Model>(m, o, corpus), Error);
  o.interval = {0.3, 0.32}, o.resample = true;  // no k/4 in it
  CHECK_THROWS_AS(Trainer<Model>(m, o, corpus), Error);
  auto other = make_corpus(tok, 64);
  o.interval = {1e-3, 1}, o.resample = false;
  CHECK_THROWS_AS(Trainer<Model>(m, o, other), Error);
}
