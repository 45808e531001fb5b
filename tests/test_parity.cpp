// Parity with the official BD3-LM code: the fixtures' logits and losses, for every
// attention backend, on the vectorized training pass and on KV-cached decoding.
#include <catch2/catch.hpp>

#include "parity_common.hpp"

using namespace bd3;
using bd3::test::fixture_cases;
using bd3::test::fixture_dir;
using bd3::test::ids;

namespace {

template <class Attention>
void check_fixture(const std::string& name) {
  using Model = BlockDiffusionModel<BlockSize<dynamic>, Attention, float>;
  INFO("fixture " << name << ", backend " << Attention::name);
  auto model = test::load_fixture_model<Model>(name);
  auto cases = fixture_cases(name);
  const auto& cfg = model.config();
  const int L = cfg.model_length, V = cfg.vocab_size, Bp = cfg.block_size;

  // (a) The vectorized training forward over [xt, x0].
  const auto& tr = cases["train"];
  auto xt = ids(tr["xt"]), x0 = ids(tr["x0"]);
  TrainActivations<float> act;
  model.forward_train(xt, x0, 1, act);
  auto ref = io::read_npy(fixture_dir(name) / tr["logits_file"].get<std::string>());
  REQUIRE(ref.shape == std::vector<int64_t>{L, V});
  CHECK(test::relative_max_diff(act.logits, ref.data) < 1e-4);

  // The NELBO with the loglinear weight 1/t of each position's block.
  auto t_block = tr["t_per_block"].get<std::vector<double>>();
  std::vector<double> weight(L), per_token(L);
  for (int l = 0; l < L; ++l) weight[l] = noise::LogLinear::w(t_block[l / Bp]);
  auto terms =
      subs_nelbo<float>(act.logits, xt, x0, weight, L, V, cfg.mask_index, per_token.data());
  auto ref_loss = tr["per_token_loss"].get<std::vector<double>>();
  for (int l = 0; l < L; ++l) CHECK(per_token[l] == Approx(ref_loss[l]).epsilon(1e-4).margin(1e-4));
  CHECK(terms.loss_sum / terms.tokens == Approx(tr["nelbo_mean"].get<double>()).epsilon(1e-5));

  // (b, c) KV-cached decoding with the sliding window.
  KVCache<float> cache(cfg, 1);
  std::vector<float> logits;
  int step = 0;
  for (const auto& s : cases["kv_cache"]["steps"]) {
    INFO("kv step " << step);
    model.forward_block(ids(s["noisy_block"]), cache, logits);
    auto ref_step = io::read_npy(fixture_dir(name) / s["logits_file"].get<std::string>());
    REQUIRE(ref_step.shape == std::vector<int64_t>{Bp, V});
    CHECK(test::relative_max_diff(logits, ref_step.data) < 1e-4);
    model.commit_block(ids(s["clean_block"]), cache);
    ++step;
  }
}

}  // namespace

TEST_CASE("parity with the official code: block size 4", "[parity]") {
  check_fixture<ScalarAttention>("b4");
  check_fixture<SimdAttention>("b4");
  check_fixture<BlockSparseAttention>("b4");
}

TEST_CASE("parity with the official code: block size 1 (autoregressive)", "[parity]") {
  check_fixture<ScalarAttention>("b1");
  check_fixture<SimdAttention>("b1");
  check_fixture<BlockSparseAttention>("b1");
}

TEST_CASE("parity with the official code: block size = length (MDLM)", "[parity]") {
  check_fixture<ScalarAttention>("b16_full");
  check_fixture<SimdAttention>("b16_full");
  check_fixture<BlockSparseAttention>("b16_full");
}

TEST_CASE("KV-cached decode equals the full forward under the banded mask", "[parity][kv]") {
  for (std::string name : {"b4", "b1", "b16_full"}) {
    using Model = BlockDiffusionModel<BlockSize<dynamic>, BlockSparseAttention, double>;
    INFO("fixture " << name);
    auto model = test::load_fixture_model<Model>(name);
    const auto& cfg = model.config();
    const int Bp = cfg.block_size, V = cfg.vocab_size;
    auto cases = fixture_cases(name);
    KVCache<double> cache(cfg, 1);
    std::vector<int32_t> sequence;
    std::vector<double> cached, full;
    int step = 0;
    for (const auto& s : cases["kv_cache"]["steps"]) {
      INFO("step " << step << " (position " << sequence.size() << ", window " << cfg.model_length
                   << ")");
      auto noisy = ids(s["noisy_block"]);
      model.forward_block(noisy, cache, cached);
      auto seq = sequence;
      seq.insert(seq.end(), noisy.begin(), noisy.end());
      model.forward_banded(seq, full);
      double diff = 0;
      for (int i = 0; i < Bp * V; ++i)
        diff = std::max(diff, std::abs(cached[i] - full[(seq.size() - Bp) * V + i]));
      CHECK(diff < 1e-9);
      auto clean = ids(s["clean_block"]);
      model.commit_block(clean, cache);
      sequence.insert(sequence.end(), clean.begin(), clean.end());
      ++step;
    }
    CHECK(int(sequence.size()) >= cfg.model_length);  // the window slid
  }
}

TEST_CASE("fused commit equals commit then decode", "[kv][fused]") {
  for (std::string name : {"b4", "b1", "b16_full"}) {
    using Model = BlockDiffusionModel<BlockSize<dynamic>, BlockSparseAttention, double>;
    INFO("fixture " << name);
    auto model = test::load_fixture_model<Model>(name);
    auto cases = fixture_cases(name);
    KVCache<double> separate(model.config(), 1), fused(model.config(), 1);
    std::vector<double> a, b;
    std::vector<int32_t> previous_clean;
    for (const auto& s : cases["kv_cache"]["steps"]) {
      auto noisy = ids(s["noisy_block"]);
      model.forward_block(noisy, separate, a);
      if (previous_clean.empty())
        model.forward_block(noisy, fused, b);
      else
        model.forward_block_fused(previous_clean, noisy, fused, b);
      REQUIRE(a.size() == b.size());
      double diff = 0;
      for (size_t i = 0; i < a.size(); ++i) diff = std::max(diff, std::abs(a[i] - b[i]));
      CHECK(diff < 1e-9);
      previous_clean = ids(s["clean_block"]);
      model.commit_block(previous_clean, separate);
      CHECK(fused.length() + model.block_size() >= separate.length());
    }
  }
}
