// Extending bd3 from one's own files (docs/extending.md): an attention backend and a noise
// schedule defined under tests/extending/, not in the library, plugged into training,
// evaluation and sampling, and checked to be the ones used.
#include <catch2/catch.hpp>

#include <bd3/sample/sampler.hpp>
#include <bd3/train/init.hpp>
#include <bd3/train/trainer.hpp>

#include "extending/cubic_schedule.hpp"
#include "extending/reference_attention.hpp"
#include "parity_common.hpp"

#include <omp.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

using namespace bd3;
using bd3::test::fixture_cases;
using bd3::test::ids;
using bd3::test::relative_max_diff;
using bd3::train::loss_and_gradient;

namespace {

template <class Attention>
using FixtureModel = BlockDiffusionModel<BlockSize<dynamic>, Attention, float>;

struct TrainCase {
  std::vector<int32_t> xt, x0;
  std::vector<double> weight;
};

TrainCase train_case(const std::string& name, const ModelConfig& cfg) {
  const auto cases = fixture_cases(name);
  const auto& tr = cases["train"];
  TrainCase c{ids(tr["xt"]), ids(tr["x0"]), {}};
  const auto t_block = tr["t_per_block"].get<std::vector<double>>();
  for (int l = 0; l < cfg.model_length; ++l)
    c.weight.push_back(noise::LogLinear::w(t_block[size_t(l / cfg.block_size)]));
  return c;
}

}  // namespace

TEST_CASE("an attention backend of one's own equals the built-in one on the fixtures",
          "[extending][parity]") {
  static_assert(TrainableAttention<ReferenceAttention> &&
                TrainableAttention<ReferenceAttention, double>);
  for (std::string name : {"b4", "b1", "b16_full"}) {
    INFO("fixture " << name);
    auto mine = test::load_fixture_model<FixtureModel<ReferenceAttention>>(name);
    auto builtin = test::load_fixture_model<FixtureModel<BlockSparseAttention>>(name);
    const auto& cfg = mine.config();
    const auto c = train_case(name, cfg);

    // Training forward: logits, and the official code's logits.
    TrainActivations<float> a, b;
    mine.forward_train(c.xt, c.x0, 1, a);
    builtin.forward_train(c.xt, c.x0, 1, b);
    CHECK(relative_max_diff(a.logits, b.logits) < 1e-5);
    const auto cases = fixture_cases(name);
    const auto& tr = cases["train"];
    const auto ref = io::read_npy(test::fixture_dir(name) / tr["logits_file"].get<std::string>());
    CHECK(relative_max_diff(a.logits, ref.data) < 1e-4);

    // Gradients, tensor by tensor.
    std::vector<float> ga(size_t(mine.layout().total()), 0.f), gb(ga.size(), 0.f);
    const double la = loss_and_gradient(mine, c.xt, c.x0, 1, c.weight, std::span<float>(ga));
    const double lb = loss_and_gradient(builtin, c.xt, c.x0, 1, c.weight, std::span<float>(gb));
    CHECK(la == Approx(lb).epsilon(1e-6));
    for (const auto& e : mine.layout().entries()) {
      INFO("tensor " << e.name);
      double diff = 0, scale = 0;
      for (int64_t i = e.offset; i < e.offset + e.size; ++i) {
        diff = std::max(diff, std::abs(double(ga[size_t(i)]) - double(gb[size_t(i)])));
        scale = std::max(scale, std::abs(double(gb[size_t(i)])));
      }
      CHECK(diff <= 1e-4 * scale + 1e-12);
    }

    // KV-cached decode.
    KVCache<float> ca(cfg, 1), cb(cfg, 1);
    std::vector<float> da, db;
    for (const auto& s : cases["kv_cache"]["steps"]) {
      mine.forward_block(ids(s["noisy_block"]), ca, da);
      builtin.forward_block(ids(s["noisy_block"]), cb, db);
      CHECK(relative_max_diff(da, db) < 1e-5);
      mine.commit_block(ids(s["clean_block"]), ca);
      builtin.commit_block(ids(s["clean_block"]), cb);
    }
  }
}

TEST_CASE("a backend without a backward samples and evaluates, and cannot train", "[extending]") {
  static_assert(AttentionBackend<ForwardOnlyAttention>);
  static_assert(!TrainableAttention<ForwardOnlyAttention>);  // bd3::train::backward static_asserts
  static_assert(!AttentionBackend<SimdAttention, double>);   // float only
  auto fwd = test::load_fixture_model<FixtureModel<ForwardOnlyAttention>>("b4");
  auto ref = test::load_fixture_model<FixtureModel<ReferenceAttention>>("b4");
  const auto c = train_case("b4", fwd.config());
  TrainActivations<float> a, b;
  fwd.forward_train(c.xt, c.x0, 1, a);
  ref.forward_train(c.xt, c.x0, 1, b);
  CHECK(a.logits == b.logits);
}

namespace {

using ByteModel = BlockDiffusionModel<BlockSize<dynamic>, BlockSparseAttention>;

ModelConfig tiny_byte_config(int L, int block) {
  auto tok = text::Tokenizer::bytes();
  ModelConfig c;
  c.block_size = block, c.model_length = L;
  c.vocab_size = tok.model_vocab_size(), c.mask_index = tok.mask_id();
  c.hidden_dim = 32, c.n_heads = 2, c.n_blocks = 2, c.cond_dim = 16;
  c.validate();
  return c;
}

text::Corpus repeated_corpus(const text::Tokenizer& tok, int L) {
  static std::string text;
  if (text.empty())
    for (int i = 0; i < 60; ++i)
      text += "the quick brown fox jumps over the lazy dog. a stitch in time saves nine.\n";
  std::string_view views[1] = {text};
  text::CorpusOptions o;
  o.model_length = L;
  o.val_fraction = 0.1;
  return text::Corpus::from_texts(tok, views, o);
}

}  // namespace

TEST_CASE("a noise schedule of one's own masks by its p(t) and weighs by its w(t)",
          "[extending][noise]") {
  const int L = 32, block = 4, batch = 256;
  ByteModel model(tiny_byte_config(L, block));
  std::vector<int32_t> x0(size_t(batch) * L, 7);
  CounterRng rng(3, {1});
  NoisedBatch nb;
  draw_noised_batch(x0, batch, L, block, model.config().mask_index, CubicNoise{},
                    EstimatorOptions{}, rng, nb);
  // Masked count against its expectation under p(t) = t^3 and under log-linear's p(t) = t.
  double masked = 0, cubic = 0, cubic_var = 0, loglinear = 0;
  for (int b = 0; b < batch; ++b)
    for (int k = 0; k < L / block; ++k) {
      const double t = nb.t[size_t(b) * (L / block) + k], p = CubicNoise::p(t);
      const int maskable = k == 0 ? block - 1 : block;  // BOS is never masked
      cubic += maskable * p, cubic_var += maskable * p * (1 - p), loglinear += maskable * t;
      for (int j = 0; j < block; ++j) {
        const size_t i = size_t(b) * L + size_t(k) * block + j;
        masked += nb.xt[i] == model.config().mask_index;
        CHECK(nb.weight[i] == 3.0 / t);
      }
    }
  INFO("masked " << masked << ", expected " << cubic << " (cubic), " << loglinear
                 << " (loglinear)");
  CHECK(std::abs(masked - cubic) < 5 * std::sqrt(cubic_var));
  CHECK(std::abs(masked - loglinear) > 50 * std::sqrt(cubic_var));
}

TEST_CASE("a noise schedule of one's own trains, evaluates, samples, and names its checkpoint",
          "[extending][noise][train]") {
  const int saved_threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const int L = 32;
  auto tok = text::Tokenizer::bytes();
  auto corpus = repeated_corpus(tok, L);
  ByteModel model(tiny_byte_config(L, 4));
  train::init_model(model, 0);
  train::TrainOptions o;
  o.batch = 4, o.steps = 30, o.seed = 2, o.adamw.lr = 3e-3, o.warmup = 5, o.ema = 0;
  train::Trainer trainer(std::move(model), CubicNoise{}, o, corpus);
  static_assert(std::is_same_v<decltype(trainer)::noise_type, CubicNoise>);
  double first = 0, last = 0;
  for (int s = 0; s < 30; ++s) {
    const auto r = trainer.train_step();
    REQUIRE(std::isfinite(r.loss));
    if (s < 5) first += r.loss / 5;
    if (s >= 25) last += r.loss / 5;
  }
  CHECK(last < first);
  CHECK(trainer.options().noise == "cubic");

  // The checkpoint records the schedule; it resumes only into a trainer of that schedule,
  // and a program that does not know the name says so.
  const auto dir =
      std::filesystem::temp_directory_path() / ("bd3_test_extending_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  trainer.save(dir, &tok);
  const auto ck = train::load_training_checkpoint(dir);
  CHECK(ck.state.options.noise == "cubic");
  CHECK_NOTHROW(train::Trainer<ByteModel, CubicNoise>(ByteModel(ck.config), ck, corpus));
  CHECK_THROWS_WITH(train::Trainer<ByteModel>(ByteModel(ck.config), ck, corpus),
                    Catch::Contains("trained with the noise schedule 'cubic' but the trainer's "
                                    "schedule is 'loglinear'"));
  CHECK_THROWS_WITH(RuntimeNoise(ck.state.options.noise),
                    Catch::Contains("unknown noise schedule 'cubic'"));
  std::filesystem::remove_all(dir);

  // Evaluation draws its masks from the schedule it is given.
  std::vector<int32_t> val(size_t(4) * L);
  std::vector<int64_t> idx{0, 1, 2, 3};
  corpus.batch(text::Split::validation, idx, val);
  const auto& m = trainer.model();
  CounterRng r1(9, {4}), r2(9, {4});
  const auto est = estimate_nelbo(m, CubicNoise{}, val, 4, EstimatorOptions{}, r1);
  NoisedBatch nb;
  draw_noised_batch(val, 4, L, 4, m.config().mask_index, CubicNoise{}, EstimatorOptions{}, r2, nb);
  TrainActivations<float> act;
  const auto manual = nelbo_of_draw(m, val, nb, act);
  CHECK(est.loss_sum == manual.loss_sum);
  CHECK(std::isfinite(est.loss_sum / double(est.tokens)));

  // DDPM sampling reveals tokens at the rate p(s) / p(t) of the sampler's schedule: the
  // same model under log-linear draws another sample from the same seed.
  sample::SamplerOptions so;
  so.method = sample::Method::ddpm, so.steps = 4, so.length = 4 * L, so.seed = 5;
  sample::Sampler cubic_sampler(m, so, CubicNoise{});
  const auto mine = cubic_sampler.generate();
  REQUIRE(mine.size() == 1);
  CHECK(mine[0].ids.size() == size_t(4 * L));
  sample::Sampler loglinear_sampler(m, so);
  CHECK(loglinear_sampler.generate()[0].ids != mine[0].ids);
  // And the same schedule twice draws the same sample.
  CHECK(sample::Sampler(m, so, CubicNoise{}).generate()[0].ids == mine[0].ids);
  omp_set_num_threads(saved_threads);
}

TEST_CASE("every schedule's weight is p'(t) / p(t)", "[extending][noise]") {
  auto check = [](auto s, double tolerance) {
    INFO("schedule " << s.name());
    for (double t = 0.05; t < 0.96; t += 0.05) {
      const double h = 1e-6, dp = (s.p(t + h) - s.p(t - h)) / (2 * h);
      CHECK(s.w(t) == Approx(dp / s.p(t)).epsilon(tolerance));
    }
  };
  check(CubicNoise{}, 1e-6);
  check(noise::LogLinear{}, 1e-6);
  check(noise::Square{}, 1e-6);
  check(noise::SquareRoot{}, 1e-6);
  check(noise::Log{}, 1e-6);
  // The official cosine schedule divides by p(t) + eps (eps = 1e-3).
  noise::Cosine cosine;
  for (double t = 0.05; t < 0.96; t += 0.05) {
    const double h = 1e-6, dp = (cosine.p(t + h) - cosine.p(t - h)) / (2 * h);
    CHECK(cosine.w(t) == Approx(dp / (cosine.p(t) + noise::eps)).epsilon(1e-6));
  }
}

TEST_CASE("the run-time schedule list names every built-in schedule", "[extending][noise]") {
  CHECK(noise_names() == "loglinear, cosine, square, square_root or log");
  for (std::string n : {"loglinear", "cosine", "square", "square_root", "log"})
    CHECK(RuntimeNoise(n).name() == n);
  CHECK_THROWS_WITH(noise_from_name("cubic"),
                    "unknown noise schedule 'cubic' (expected loglinear, cosine, square, "
                    "square_root or log)");
}

namespace {
std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
}  // namespace

TEST_CASE("docs/extending.md shows the files this test compiles", "[extending][docs]") {
  const std::filesystem::path root = std::filesystem::path(BD3_TEST_DATA_DIR) / ".." / "..";
  const std::string doc = slurp(root / "docs" / "extending.md");
  int shown = 0;
  for (std::string file :
       {"tests/extending/cubic_schedule.hpp", "tests/extending/reference_attention.hpp"}) {
    INFO("file " << file);
    const std::string marker = "<!-- " + file + " -->\n```cpp\n";
    const size_t at = doc.find(marker);
    REQUIRE(at != std::string::npos);
    const size_t begin = at + marker.size(), end = doc.find("```\n", begin);
    REQUIRE(end != std::string::npos);
    CHECK(doc.substr(begin, end - begin) == slurp(root / file));
    ++shown;
  }
  CHECK(shown == 2);
}

TEST_CASE("a fixed block size is stated once: the config follows the type", "[extending][block]") {
  ModelConfig c = tiny_byte_config(32, 4);
  c.block_size = 0;  // not stated: the type's
  const BlockDiffusionModel<BlockSize<8>, BlockSparseAttention> fixed(c);
  CHECK(fixed.block_size() == 8);
  CHECK(fixed.config().block_size == 8);
  c.block_size = 8;  // stated again, the same: accepted
  CHECK(BlockDiffusionModel<BlockSize<8>, BlockSparseAttention>(c).config().block_size == 8);
  c.block_size = 4;  // a checkpoint of another block size
  CHECK_THROWS_WITH((BlockDiffusionModel<BlockSize<8>, BlockSparseAttention>(c)),
                    "block size 4 does not match the model type's BlockSize<8>");
  c.block_size = 0;  // a run-time block size must be stated
  CHECK_THROWS_WITH(ByteModel(c), Catch::Contains("config.block_size is not set"));
  c.block_size = 16;
  CHECK(ByteModel(c).config().block_size == 16);
}
