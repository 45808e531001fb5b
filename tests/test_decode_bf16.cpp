// Packed decode weights (DecodeWeights::f32_packed: the float32 decode equal up to
// rounding) and bfloat16 ones (DecodeWeights::bf16): every decode call gives the bits
// packed float32 decoding gives on the same model with its linear layers' weight matrices
// rounded to bfloat16, past the window, alone and batched; the copies follow
// parameters_changed(); the training forward is untouched; sampling draws the rounded
// model's tokens.
#include <bd3/bd3.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <random>
#include <span>
#include <vector>

using namespace bd3;

namespace {

template <class Scalar = float>
using Model = BlockDiffusionModel<BlockSize<dynamic>, BlockSparseAttention, Scalar>;

ModelConfig config() {
  ModelConfig c;
  // D = 40: rows of 40 and 160 (MLP) floats leave a tail after the 8-lane steps.
  c.vocab_size = 37, c.model_length = 16, c.block_size = 4, c.hidden_dim = 40, c.n_blocks = 2;
  c.n_heads = 4, c.cond_dim = 8, c.mask_index = 36;
  c.validate();
  return c;
}

Model<> random_model(uint64_t seed) {
  Model<> m(config());
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  for (auto& p : m.parameters()) p = u(rng);
  m.parameters_changed();
  return m;
}

// The model with the matrices decode calls stream (qkv, attention output, MLP in and out,
// output layer) rounded to bfloat16; embeddings, biases and norms stay float32.
Model<> rounded_copy(const Model<>& m) {
  Model<> r(m.config());
  std::ranges::copy(m.parameters(), r.parameters().begin());
  const auto& c = m.config();
  const int64_t D = c.hidden_dim, F = 4 * D;
  auto round = [&](int64_t offset, int64_t size) {
    for (float& p : r.parameters().subspan(size_t(offset), size_t(size)))
      p = kernels::to_float(kernels::to_bfloat16(p));
  };
  for (const auto& o : m.layout().layers) {
    round(o.attn_qkv, 3 * D * D), round(o.attn_out, D * D);
    round(o.mlp0_w, F * D), round(o.mlp2_w, D * F);
  }
  round(m.layout().out_w, int64_t(c.vocab_size) * D);
  r.set_decode_weights(DecodeWeights::f32_packed);
  r.parameters_changed();
  return r;
}

// The logits of a decode session: 8 blocks of 4 (twice the 16-token window), alternating
// plain and fused calls, for `batch` sequences.
std::vector<std::vector<float>> decode_session(const Model<>& m, int batch) {
  const auto& cfg = m.config();
  KVCache<float> cache(cfg, batch);
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> tok(0, cfg.vocab_size - 2);
  auto block = [&] {
    std::vector<int32_t> t(size_t(batch) * cfg.block_size);
    for (auto& x : t) x = tok(rng);
    return t;
  };
  std::vector<std::vector<float>> out;
  std::vector<int32_t> previous;
  for (int step = 0; step < 8; ++step) {
    const auto noisy = block();
    std::vector<float> logits;
    if (step % 2 == 1)
      m.forward_block_fused(previous, noisy, cache, logits);
    else
      m.forward_block(noisy, cache, logits);
    out.push_back(logits);
    previous = block();
    if (step % 2 == 1) m.commit_block(previous, cache);
  }
  return out;
}

}  // namespace

TEST_CASE("bf16 decode weights: exactly the packed float32 decode of the rounded model",
          "[decode][bf16]") {
  auto model = random_model(3);
  const auto rounded = rounded_copy(model);
  for (int batch : {1, 3}) {  // 4 rows per call (one pass per tile), 12 and 24 (row groups)
    INFO("batch " << batch);
    const auto f32 = decode_session(model, batch);
    model.set_decode_weights(DecodeWeights::f32_packed);
    const auto packed = decode_session(model, batch);
    model.set_decode_weights(DecodeWeights::bf16);
    REQUIRE(model.decode_weights() == DecodeWeights::bf16);
    const auto bf16 = decode_session(model, batch);
    CHECK(bf16 == decode_session(rounded, batch));
    // The rounding is real: the float32 weights give other logits.
    CHECK(bf16 != packed);
    // Packed float32: the row-by-row decode's logits up to the summation order.
    REQUIRE(packed.size() == f32.size());
    for (size_t i = 0; i < f32.size(); ++i) {
      REQUIRE(packed[i].size() == f32[i].size());
      for (size_t j = 0; j < f32[i].size(); ++j)
        CHECK(packed[i][j] == Approx(f32[i][j]).margin(1e-4).epsilon(1e-4));
    }
    model.set_decode_weights(DecodeWeights::f32);
    CHECK(decode_session(model, batch) == f32);
  }
}

TEST_CASE("packed and bf16 decode weights follow parameters_changed", "[decode][bf16]") {
  auto model = random_model(4);
  model.set_decode_weights(DecodeWeights::bf16);
  auto params = model.parameters();
  for (size_t i = 0; i < params.size(); i += 7) params[i] = -params[i] + 0.01f;
  model.parameters_changed();
  CHECK(decode_session(model, 1) == decode_session(rounded_copy(model), 1));
  // A packed float32 copy of the changed parameters: the same logits as a fresh model's.
  model.set_decode_weights(DecodeWeights::f32_packed);
  for (size_t i = 0; i < params.size(); i += 5) params[i] *= 0.5f;
  model.parameters_changed();
  Model<> fresh(model.config());
  std::ranges::copy(model.parameters(), fresh.parameters().begin());
  fresh.set_decode_weights(DecodeWeights::f32_packed);
  fresh.parameters_changed();
  CHECK(decode_session(model, 1) == decode_session(fresh, 1));
}

TEST_CASE("bf16 decode weights leave the training forward in float32", "[decode][bf16]") {
  auto model = random_model(6);
  const auto& cfg = model.config();
  std::vector<int32_t> xt(size_t(cfg.model_length)), x0(xt.size());
  for (size_t i = 0; i < xt.size(); ++i) x0[i] = int32_t(i % 30), xt[i] = i % 3 ? x0[i] : 36;
  TrainActivations<float> before, after;
  model.forward_train(xt, x0, 1, before);
  model.set_decode_weights(DecodeWeights::bf16);
  model.forward_train(xt, x0, 1, after);
  CHECK(before.logits == after.logits);
  model.set_decode_weights(DecodeWeights::f32_packed);
  model.forward_train(xt, x0, 1, after);
  CHECK(before.logits == after.logits);
}

TEST_CASE("sampling with bf16 decode weights draws the rounded model's tokens",
          "[decode][bf16][sample]") {
  auto model = random_model(8);
  const auto rounded = rounded_copy(model);
  model.set_decode_weights(DecodeWeights::bf16);
  sample::SamplerOptions o;
  o.length = 41, o.batch = 2, o.seed = 9;
  for (auto method : {sample::Method::first_hitting, sample::Method::ddpm}) {
    o.method = method;
    const auto a = sample::Sampler<Model<>>(model, o).generate();
    const auto b = sample::Sampler<Model<>>(rounded, o).generate();
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) CHECK(a[i].ids == b[i].ids);
  }
}

TEST_CASE("packed and bf16 decode weights need a float32 model", "[decode][bf16][errors]") {
  Model<double> model(config());
  for (auto storage : {DecodeWeights::bf16, DecodeWeights::f32_packed})
    CHECK_THROWS_MATCHES(model.set_decode_weights(storage), Error,
                         Catch::Matchers::Predicate<Error>(
                             [](const Error& e) { return e.kind() == ErrorKind::usage; }));
  CHECK(model.decode_weights() == DecodeWeights::f32);
}
