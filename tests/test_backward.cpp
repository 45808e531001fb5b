// The hand-written backward pass (train/backward.hpp, layers/attention_backward.hpp):
//  - finite differences in double on a tiny random model, every entry of every parameter
//    tensor, for the scalar and block-sparse attention backends, with and without dropout;
//  - the official code's autograd gradients (fixtures' grads.safetensors) for every backend;
//  - block size 1 with every position masked is the autoregressive NLL;
//  - the SIMD GELU backward against its scalar twin; dropout masks independent of threads;
//  - at B' = L, the xt-only training pass against the [xt, x0] one (logits, loss, every
//    gradient entry, keep masks), and finite differences of the xt-only gradient.
#include <catch2/catch.hpp>

#include <bd3/train/backward.hpp>

#include "parity_common.hpp"

#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>

using namespace bd3;
using namespace bd3::train;
using bd3::test::fixture_cases;
using bd3::test::fixture_dir;
using bd3::test::ids;

namespace {

ModelConfig tiny_config(int block_size = 2, int length = 8) {
  ModelConfig c;
  c.block_size = block_size;
  c.vocab_size = 11;
  c.model_length = length;
  c.hidden_dim = 8;
  c.cond_dim = 4;
  c.n_blocks = 2;
  c.n_heads = 2;
  c.mask_index = c.vocab_size - 1;
  c.validate();
  return c;
}

// Random weights of scale ~0.5 (every term of the network matters); the conditioning's
// first layer sums 128 inputs, so it is scaled down to keep silu out of saturation.
template <class Model>
void randomize(Model& model, uint64_t seed, double scale = 0.5) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (const auto& e : model.layout().entries()) {
    double s = scale;
    if (e.name.find("sigma_map.mlp.0.weight") != std::string::npos) s = scale / 8;
    if (e.name.find("norm") != std::string::npos && e.shape.size() == 1) {
      for (int64_t i = 0; i < e.size; ++i)
        model.param(e.offset)[i] = typename Model::scalar_type(1.0 + s * normal(rng));
      continue;
    }
    for (int64_t i = 0; i < e.size; ++i)
      model.param(e.offset)[i] = typename Model::scalar_type(s * normal(rng));
  }
  model.parameters_changed();
}

struct Batch {
  std::vector<int32_t> xt, x0;
  std::vector<double> weight;
  int batch = 1;
};

// x0 random (no MASK), t ~ U[0.1, 1] per block, each position but 0 masked with prob t,
// weight 1/t (loglinear).
Batch random_batch(const ModelConfig& c, int batch, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> tok(0, c.vocab_size - 2);
  std::uniform_real_distribution<double> unif(0.0, 1.0);
  Batch b;
  b.batch = batch;
  const int L = c.model_length, Bp = c.block_size;
  for (int s = 0; s < batch; ++s) {
    std::vector<double> t(L / Bp);
    for (auto& v : t) v = 0.1 + 0.9 * unif(rng);
    for (int l = 0; l < L; ++l) {
      const int32_t x = tok(rng);
      b.x0.push_back(x);
      const bool masked = l > 0 && unif(rng) < t[l / Bp];
      b.xt.push_back(masked ? c.mask_index : x);
      b.weight.push_back(noise::LogLinear::w(t[l / Bp]));
    }
  }
  return b;
}

template <class Model>
double loss_only(const Model& model, const Batch& b, Dropout dropout = {}) {
  TrainActivations<typename Model::scalar_type> act;
  model.forward_train(b.xt, b.x0, b.batch, act, false, dropout);
  const auto& c = model.config();
  auto terms = subs_nelbo<typename Model::scalar_type>(act.logits, b.xt, b.x0, b.weight,
                                                       c.model_length, c.vocab_size, c.mask_index);
  return terms.loss_sum / double(terms.tokens);
}

// Central differences on every entry of every parameter tensor. Returns the largest
// per-tensor error max |analytic - numeric| / max |numeric|.
template <class Model>
double finite_difference_check(Model& model, const Batch& b, Dropout dropout, const char* label) {
  // Thousands of forwards of a tiny model: one thread (OpenMP barriers would dominate).
  struct OneThread {
    int saved = omp_get_max_threads();
    OneThread() { omp_set_num_threads(1); }
    ~OneThread() { omp_set_num_threads(saved); }
  } one_thread;
  std::vector<double> grads(size_t(model.layout().total()), 0.0);
  const double loss =
      loss_and_gradient(model, b.xt, b.x0, b.batch, b.weight, std::span<double>(grads), dropout);
  CHECK(loss == Approx(loss_only(model, b, dropout)).epsilon(1e-12));
  const double h = 1e-5;
  double worst = 0;
  std::string worst_name;
  for (const auto& e : model.layout().entries()) {
    double max_diff = 0, max_ref = 0;
    for (int64_t i = 0; i < e.size; ++i) {
      double& p = model.parameters()[size_t(e.offset + i)];
      const double saved = p;
      p = saved + h;
      model.parameters_changed();
      const double lp = loss_only(model, b, dropout);
      p = saved - h;
      model.parameters_changed();
      const double lm = loss_only(model, b, dropout);
      p = saved;
      const double fd = (lp - lm) / (2 * h);
      max_diff = std::max(max_diff, std::abs(fd - grads[size_t(e.offset + i)]));
      max_ref = std::max(max_ref, std::abs(fd));
    }
    model.parameters_changed();
    INFO(label << ": tensor " << e.name << " max|fd| " << max_ref << " max|diff| " << max_diff);
    CHECK(max_ref > 0);  // every tensor takes part (none is dead in this set-up)
    const double rel = max_diff / std::max(max_ref, 1e-300);
    CHECK(rel < 1e-6);
    if (rel > worst) worst = rel, worst_name = e.name;
  }
  std::printf("[backward] finite differences (%s): max per-tensor relative error %.3g (%s)\n",
              label, worst, worst_name.c_str());
  return worst;
}

}  // namespace

TEST_CASE("backward matches finite differences in double (scalar attention)", "[backward][fd]") {
  using Model = BlockDiffusionModel<BlockSize<dynamic>, ScalarAttention, double>;
  Model model(tiny_config());
  randomize(model, 1);
  auto b = random_batch(model.config(), 2, 2);
  finite_difference_check(model, b, {}, "scalar, block 2, batch 2");
}

TEST_CASE("backward matches finite differences in double (block-sparse attention)",
          "[backward][fd]") {
  using Model = BlockDiffusionModel<BlockSize<dynamic>, BlockSparseAttention, double>;
  Model model(tiny_config());
  randomize(model, 3);
  auto b = random_batch(model.config(), 2, 4);
  finite_difference_check(model, b, {}, "block-sparse, block 2, batch 2");
  Model single(tiny_config(1));
  randomize(single, 5);
  finite_difference_check(single, random_batch(single.config(), 1, 6), {}, "block-sparse, block 1");
  Model full(tiny_config(8));
  randomize(full, 7);
  finite_difference_check(full, random_batch(full.config(), 1, 8), {}, "block-sparse, block = L");
}

TEST_CASE("backward with dropout matches finite differences (same masks)",
          "[backward][fd][dropout]") {
  {
    using Model = BlockDiffusionModel<BlockSize<dynamic>, ScalarAttention, double>;
    Model model(tiny_config());
    randomize(model, 11);
    finite_difference_check(model, random_batch(model.config(), 2, 12), Dropout{0.3, 1234},
                            "scalar, dropout 0.3");
  }
  {
    using Model = BlockDiffusionModel<BlockSize<dynamic>, BlockSparseAttention, double>;
    Model model(tiny_config());
    randomize(model, 13);
    finite_difference_check(model, random_batch(model.config(), 2, 14), Dropout{0.5, 99},
                            "block-sparse, dropout 0.5");
  }
}

TEST_CASE("block-sparse and dense attention backward agree over many tiles", "[backward]") {
  // L = 96: 2L = 192 rows, several 64-row query tiles per half, blocks crossing tiles.
  auto cfg = tiny_config(4, 96);
  cfg.hidden_dim = 16, cfg.n_heads = 4;
  BlockDiffusionModel<BlockSize<dynamic>, ScalarAttention, double> dense(cfg);
  BlockDiffusionModel<BlockSize<dynamic>, BlockSparseAttention, double> sparse(cfg);
  randomize(dense, 21);
  std::copy(dense.parameters().begin(), dense.parameters().end(), sparse.parameters().begin());
  sparse.parameters_changed();
  auto b = random_batch(cfg, 3, 22);
  std::vector<double> gd(size_t(dense.layout().total()), 0.0), gs(gd.size(), 0.0);
  const double ld = loss_and_gradient(dense, b.xt, b.x0, b.batch, b.weight, std::span<double>(gd));
  const double ls = loss_and_gradient(sparse, b.xt, b.x0, b.batch, b.weight, std::span<double>(gs));
  CHECK(ld == Approx(ls).epsilon(1e-12));
  double diff = 0, ref = 0;
  for (size_t i = 0; i < gd.size(); ++i)
    diff = std::max(diff, std::abs(gd[i] - gs[i])), ref = std::max(ref, std::abs(gd[i]));
  CHECK(diff <= 1e-11 * ref);
}

namespace {

template <class Attention>
double check_fixture_gradients(const std::string& name, bool print_names) {
  using Model = BlockDiffusionModel<BlockSize<dynamic>, Attention, float>;
  INFO("fixture " << name << ", backend " << Attention::name);
  auto model = test::load_fixture_model<Model>(name);
  const auto& cfg = model.config();
  const int L = cfg.model_length, Bp = cfg.block_size;
  const auto cases = fixture_cases(name);
  const auto& tr = cases["train"];
  const auto xt = ids(tr["xt"]), x0 = ids(tr["x0"]);
  const auto t_block = tr["t_per_block"].get<std::vector<double>>();
  std::vector<double> weight(L);
  for (int l = 0; l < L; ++l) weight[l] = noise::LogLinear::w(t_block[l / Bp]);
  std::vector<float> grads(size_t(model.layout().total()), 0.0f);
  const double loss = loss_and_gradient(model, xt, x0, 1, weight, std::span<float>(grads));
  CHECK(loss == Approx(tr["nelbo_mean"].get<double>()).epsilon(1e-5));

  auto file = io::SafetensorsFile::open(fixture_dir(name) / "grads.safetensors");
  if (print_names) {
    std::printf("[backward] %s/grads.safetensors: %zu tensors (metadata:", name.c_str(),
                file.tensors().size());
    for (const auto& [k, v] : file.metadata()) std::printf(" %s=%s", k.c_str(), v.c_str());
    std::printf(")\n");
    for (const auto& t : file.tensors())
      if (!model.layout().find(t.name))
        std::printf("[backward]   not a parameter: %s\n", t.name.c_str());
  }
  double worst = 0;
  std::string worst_name;
  for (const auto& e : model.layout().entries()) {
    INFO("tensor " << e.name);
    REQUIRE(file.find(e.name) != nullptr);  // every parameter has its reference gradient
    const auto ref = file.load_float(e.name);
    REQUIRE(ref.size() == size_t(e.size));
    double diff = 0, scale = 0;
    for (int64_t i = 0; i < e.size; ++i) {
      diff = std::max(diff, std::abs(double(grads[size_t(e.offset + i)]) - double(ref[size_t(i)])));
      scale = std::max(scale, std::abs(double(ref[size_t(i)])));
    }
    INFO("max|diff| " << diff << " max|ref| " << scale);
    CHECK(diff <= 1e-3 * scale);
    const double rel = scale > 0 ? diff / scale : diff;
    if (rel > worst) worst = rel, worst_name = e.name;
  }
  std::printf(
      "[backward] fixture %s, %s attention: loss %.7f, max per-tensor |diff|/max|ref| %.3g (%s)\n",
      name.c_str(), std::string(Attention::name).c_str(), loss, worst, worst_name.c_str());
  return worst;
}

}  // namespace

TEST_CASE("gradients match the official code's autograd (fixtures)", "[backward][parity]") {
  for (std::string name : {"b4", "b1", "b16_full"}) {
    check_fixture_gradients<ScalarAttention>(name, true);
    check_fixture_gradients<SimdAttention>(name, false);
    check_fixture_gradients<BlockSparseAttention>(name, false);
  }
}

namespace {

// -log p(x0_l | x0_<l) for l = 1..L-1, computed with forward_banded on [x0_<l, MASK]: with
// block size 1 the last row is the query at l seeing x0_0..x0_{l-1} and itself (MASK),
// exactly what the training mask gives the xt row l when every xt position is masked.
template <class Model>
double autoregressive_nll(const Model& model, const std::vector<int32_t>& x0) {
  using T = typename Model::scalar_type;
  const auto& c = model.config();
  const int V = c.vocab_size;
  double total = 0;
  std::vector<T> logits;
  for (int l = 1; l < c.model_length; ++l) {
    std::vector<int32_t> seq(x0.begin(), x0.begin() + l);
    seq.push_back(c.mask_index);
    model.forward_banded(seq, logits);
    std::vector<double> row(logits.end() - V, logits.end());
    row[size_t(c.mask_index)] += subs_neg_infinity;
    double m = *std::max_element(row.begin(), row.end()), s = 0;
    for (double v : row) s += std::exp(v - m);
    total += -(row[size_t(x0[size_t(l)])] - m - std::log(s));
  }
  return total / (c.model_length - 1);
}

template <class Model>
void check_autoregressive(Model& model, const std::vector<int32_t>& x0, double tol) {
  const auto& c = model.config();
  REQUIRE(c.block_size == 1);
  std::vector<int32_t> xt(x0.size(), c.mask_index);
  xt[0] = x0[0];
  std::vector<double> weight(x0.size(), 1.0);
  std::vector<typename Model::scalar_type> grads(size_t(model.layout().total()), 0);
  const double loss = loss_and_gradient(model, xt, x0, 1, weight, std::span(grads));
  const double ar = autoregressive_nll(model, x0);
  std::printf("[backward] block size 1, all masked: NELBO %.9f, autoregressive NLL %.9f\n", loss,
              ar);
  CHECK(loss == Approx(ar).epsilon(tol));
}

}  // namespace

TEST_CASE("block size 1 with every position masked is the autoregressive NLL", "[backward][ar]") {
  {
    using Model = BlockDiffusionModel<BlockSize<dynamic>, BlockSparseAttention, double>;
    Model model(tiny_config(1, 12));
    randomize(model, 31);
    auto b = random_batch(model.config(), 1, 32);
    check_autoregressive(model, b.x0, 1e-12);
  }
  {
    using Model = BlockDiffusionModel<BlockSize<dynamic>, ScalarAttention, double>;
    auto model = test::load_fixture_model<Model>("b1");
    check_autoregressive(model, ids(fixture_cases("b1")["train"]["x0"]), 1e-12);
  }
}

TEST_CASE("SIMD GELU backward matches its scalar twin", "[backward][kernels]") {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 3.f);
  std::vector<float> x(1003), d(x.size()), ds(x.size()), dv(x.size());
  for (auto& v : x) v = normal(rng);
  x[0] = 0.f, x[1] = -0.f, x[2] = 30.f, x[3] = -30.f, x[4] = 1e-20f, x[5] = -1e30f, x[6] = 1e30f;
  for (auto& v : d) v = normal(rng);
  ds = d, dv = d;
  layers::gelu_backward_scalar<float>(x.data(), ds.data(), int64_t(x.size()));
  layers::gelu_backward_simd(x.data(), dv.data(), int64_t(x.size()));
  std::vector<double> dd(d.begin(), d.end());
  std::vector<double> xd(x.begin(), x.end());
  layers::gelu_backward_scalar<double>(xd.data(), dd.data(), int64_t(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    INFO("x = " << x[i]);
    REQUIRE(std::isfinite(dv[i]));
    // The float scalar twin overflows x^3 past |x| ~ 1e12 (NaN): compared where finite.
    if (std::isfinite(ds[i])) CHECK(std::abs(dv[i] - ds[i]) <= 1e-5f * std::abs(d[i]));
    CHECK(std::abs(double(dv[i]) - dd[i]) <= 1e-6 * std::abs(d[i]));
  }
}

TEST_CASE("dropout: masks depend on the seed only, p = 0 changes nothing", "[backward][dropout]") {
  using Model = BlockDiffusionModel<BlockSize<dynamic>, BlockSparseAttention, float>;
  auto cfg = tiny_config(4, 64);
  cfg.hidden_dim = 64, cfg.n_heads = 4;  // N D = 8192 per sequence: the mask loop goes parallel
  Model model(cfg);
  randomize(model, 41);
  auto b = random_batch(cfg, 4, 42);
  TrainActivations<float> a1, a2, a3, plain, zero;
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  model.forward_train(b.xt, b.x0, b.batch, a1, true, Dropout{0.25, 7});
  omp_set_num_threads(std::max(2, threads));
  model.forward_train(b.xt, b.x0, b.batch, a2, true, Dropout{0.25, 7});
  omp_set_num_threads(threads);
  model.forward_train(b.xt, b.x0, b.batch, a3, true, Dropout{0.25, 8});
  size_t kept = 0, total = 0;
  for (int l = 0; l < cfg.n_blocks; ++l) {
    CHECK(a1.arena.layers[l].keep_attn == a2.arena.layers[l].keep_attn);
    CHECK(a1.arena.layers[l].keep_mlp == a2.arena.layers[l].keep_mlp);
    CHECK(a1.arena.layers[l].keep_attn != a3.arena.layers[l].keep_attn);
    CHECK(a1.arena.layers[l].keep_attn != a1.arena.layers[l].keep_mlp);
    for (auto k : a1.arena.layers[l].keep_attn) kept += k, ++total;
  }
  CHECK(double(kept) / double(total) == Approx(0.75).margin(0.01));
  model.forward_train(b.xt, b.x0, b.batch, plain, true);
  model.forward_train(b.xt, b.x0, b.batch, zero, true, Dropout{0.0, 7});
  CHECK(plain.logits == zero.logits);
  CHECK(plain.arena.layers[0].keep_attn.empty());
  CHECK(a1.logits != plain.logits);
}

namespace {

// The xt-only pass (automatic layout, B' = L) against the [xt, x0] pass (TrainLayout::xt_x0)
// of the same weights and batch: logits, loss and every gradient entry, each compared with
// the largest magnitude of its tensor (relative error returned), and the dropout keep
// masks of the xt rows bit for bit. `bitwise`: whether logits and gradients are the same
// bits.
struct LayoutComparison {
  double logits = 0, loss = 0, grads = 0;
  bool bitwise = false;
};

template <class T, class Attention>
LayoutComparison compare_train_layouts(ModelConfig cfg, int batch, Dropout dropout, uint64_t seed) {
  using Model = BlockDiffusionModel<BlockSize<dynamic>, Attention, T>;
  const int L = cfg.model_length, V = cfg.vocab_size;
  REQUIRE(cfg.block_size == L);
  Model fast(cfg), full(cfg);
  randomize(fast, seed);
  std::copy(fast.parameters().begin(), fast.parameters().end(), full.parameters().begin());
  full.parameters_changed();
  full.set_train_layout(TrainLayout::xt_x0);
  REQUIRE(fast.train_layout() == TrainLayout::automatic);
  REQUIRE(fast.train_rows_per_sequence() == L);
  REQUIRE(full.train_rows_per_sequence() == 2 * L);
  const auto b = random_batch(cfg, batch, seed + 1);
  TrainScratch<T> sf, sx;
  std::vector<T> gf(size_t(fast.layout().total()), T(0)), gx(gf.size(), T(0));
  const double lf =
      loss_and_gradient(fast, b.xt, b.x0, batch, b.weight, std::span<T>(gf), dropout, &sf);
  const double lx =
      loss_and_gradient(full, b.xt, b.x0, batch, b.weight, std::span<T>(gx), dropout, &sx);
  REQUIRE(sf.act.rows_per_sequence == L);
  REQUIRE(sx.act.rows_per_sequence == 2 * L);
  REQUIRE(sf.act.arena.layout.N == int64_t(batch) * L);
  LayoutComparison r;
  r.loss = std::abs(lf - lx) / std::abs(lx);
  REQUIRE(sf.act.logits.size() == size_t(batch) * L * V);
  r.logits = test::relative_max_diff(sf.act.logits, sx.act.logits);
  bool same = sf.act.logits == sx.act.logits;
  for (const auto& e : fast.layout().entries()) {
    double diff = 0, scale = 0;
    for (int64_t i = e.offset; i < e.offset + e.size; ++i) {
      diff = std::max(diff, std::abs(double(gf[size_t(i)]) - double(gx[size_t(i)])));
      scale = std::max(scale, std::abs(double(gx[size_t(i)])));
      same = same && gf[size_t(i)] == gx[size_t(i)];
    }
    INFO("tensor " << e.name);
    CHECK(scale > 0);  // every tensor takes part
    r.grads = std::max(r.grads, diff / std::max(scale, 1e-300));
  }
  r.bitwise = same;
  // Dropout: xt row (b, i) keeps the elements of row b 2L + i of [xt, x0].
  for (int l = 0; l < cfg.n_blocks; ++l) {
    const auto& af = sf.act.arena.layers[size_t(l)];
    const auto& ax = sx.act.arena.layers[size_t(l)];
    REQUIRE(af.keep_attn.size() == (dropout.active() ? size_t(batch) * L * cfg.hidden_dim : 0));
    for (const auto& [kf, kx] :
         {std::pair{&af.keep_attn, &ax.keep_attn}, std::pair{&af.keep_mlp, &ax.keep_mlp}})
      for (int s = 0; s < batch && dropout.active(); ++s) {
        const auto row = size_t(L) * cfg.hidden_dim;
        CHECK(std::equal(kf->begin() + ptrdiff_t(s * row), kf->begin() + ptrdiff_t((s + 1) * row),
                         kx->begin() + ptrdiff_t(2 * s * row)));
      }
  }
  return r;
}

template <class T, class Attention>
void check_train_layouts(const ModelConfig& cfg, double tol, const char* label) {
  for (int batch : {1, 2})
    for (const Dropout dropout : {Dropout{}, Dropout{0.3, 77}}) {
      INFO(label << ", batch " << batch << ", dropout " << dropout.p);
      const auto r = compare_train_layouts<T, Attention>(cfg, batch, dropout, 60 + uint64_t(batch));
      std::printf(
          "[backward] xt-only vs [xt, x0] at B' = L (%s, batch %d, dropout %.1f): logits %.3g, "
          "loss %.3g, gradients %.3g (relative); %s\n",
          label, batch, dropout.p, r.logits, r.loss, r.grads,
          r.bitwise ? "bit-identical" : "not bit-identical");
      CHECK(r.logits <= tol);
      CHECK(r.loss <= tol);
      CHECK(r.grads <= tol);
    }
}

}  // namespace

TEST_CASE("at B' = L the xt-only pass equals the [xt, x0] pass (double)", "[backward][layout]") {
  check_train_layouts<double, ScalarAttention>(tiny_config(8, 8), 1e-12, "scalar, L 8");
  check_train_layouts<double, BlockSparseAttention>(tiny_config(8, 8), 1e-12, "block-sparse, L 8");
  auto wide = tiny_config(96, 96);  // two 64-row query tiles per half
  wide.hidden_dim = 32, wide.n_heads = 4;
  check_train_layouts<double, BlockSparseAttention>(wide, 1e-12, "block-sparse, L 96");
}

TEST_CASE("at B' = L the xt-only pass equals the [xt, x0] pass (float)", "[backward][layout]") {
  check_train_layouts<float, BlockSparseAttention>(tiny_config(8, 8), 1e-5,
                                                   "float block-sparse, L 8");
  check_train_layouts<float, SimdAttention>(tiny_config(8, 8), 1e-5, "float simd, L 8");
  // GEMMs rather than row kernels, several query tiles, parallel loops over rows.
  auto wide = tiny_config(160, 160);
  wide.hidden_dim = 64, wide.n_heads = 4;
  check_train_layouts<float, BlockSparseAttention>(wide, 1e-5, "float block-sparse, L 160");
}

TEST_CASE("the xt-only pass at B' = L matches finite differences", "[backward][fd][layout]") {
  using Model = BlockDiffusionModel<BlockSize<dynamic>, BlockSparseAttention, double>;
  Model model(tiny_config(8, 8));
  REQUIRE(model.train_rows_per_sequence() == 8);
  randomize(model, 71);
  const auto b = random_batch(model.config(), 2, 72);
  finite_difference_check(model, b, {}, "xt only, block = L, batch 2");
  finite_difference_check(model, b, Dropout{0.3, 5}, "xt only, block = L, batch 2, dropout 0.3");
  // A backward refuses activations of the wrong layout for the model.
  Model blocks(tiny_config(4, 8));
  randomize(blocks, 73);
  TrainActivations<double> act;
  model.forward_train(b.xt, b.x0, b.batch, act, true);
  std::vector<double> dlogits(act.logits.size(), 0.0), grads(size_t(blocks.layout().total()), 0.0);
  CHECK_THROWS_AS(
      backward(blocks, b.xt, b.x0, act, std::span<const double>(dlogits), std::span<double>(grads)),
      Error);
}

namespace {

template <class Model>
void time_training_step(const ModelConfig& cfg, int batch, int reps) {
  Model model(cfg);
  randomize(model, 51, 0.02);
  auto b = random_batch(cfg, batch, 52);
  std::vector<float> grads(size_t(model.layout().total()), 0.0f);
  TrainScratch<float> scratch;
  using clock = std::chrono::steady_clock;
  loss_and_gradient(model, b.xt, b.x0, b.batch, b.weight, std::span<float>(grads), {},
                    &scratch);  // warm-up
  double best = 1e30, best_fwd = 1e30, cpu = 0;
  scratch.backward.seconds = {};
  for (int r = 0; r < reps; ++r) {
    auto t0 = clock::now();
    model.forward_train(b.xt, b.x0, b.batch, scratch.act, true);
    auto t1 = clock::now();
    const std::clock_t c1 = std::clock();
    loss_and_gradient(model, b.xt, b.x0, b.batch, b.weight, std::span<float>(grads), {}, &scratch);
    cpu += double(std::clock() - c1) / CLOCKS_PER_SEC;
    auto t2 = clock::now();
    best_fwd = std::min(best_fwd, std::chrono::duration<double>(t1 - t0).count());
    best = std::min(best, std::chrono::duration<double>(t2 - t1).count());
  }
  const double tokens = double(batch) * cfg.model_length;
  std::printf(
      "[bench] D %d, %d layers, %d heads, V %d, L %d, block %d, batch %d, %d threads: forward %.3f "
      "s, "
      "forward+backward %.3f s = %.1f tokens/s (CPU %.2f s per step)\n",
      cfg.hidden_dim, cfg.n_blocks, cfg.n_heads, cfg.vocab_size, cfg.model_length, cfg.block_size,
      batch, omp_get_max_threads(), best_fwd, best, tokens / best, cpu / reps);
  const auto& ph = scratch.backward.seconds;
  std::printf(
      "[bench]   backward phases (mean s): output %.3f, MLP %.3f, attention projections %.3f, "
      "attention %.3f, "
      "norms/gates/rotary %.3f, embedding+conditioning %.3f\n",
      ph[0] / reps, ph[1] / reps, ph[2] / reps, ph[3] / reps, ph[4] / reps, ph[5] / reps);
}

}  // namespace

// Timing only (hidden: run with `test_backward "[.bench]"`; BD3_BENCH_SMALL=1 adds the
// small preset, hidden 768, 12 layers, vocab 50258, L 1024).
TEST_CASE("training step throughput", "[.bench]") {
  using Model = BlockDiffusionModel<BlockSize<dynamic>, BlockSparseAttention, float>;
  ModelConfig mid;
  mid.block_size = 4, mid.vocab_size = 4096, mid.model_length = 256, mid.hidden_dim = 256,
  mid.cond_dim = 128;
  mid.n_blocks = 4, mid.n_heads = 4, mid.mask_index = mid.vocab_size - 1;
  time_training_step<Model>(mid, 4, 3);
  if (const char* e = std::getenv("BD3_BENCH_SMALL"); e && std::string(e) == "1") {
    ModelConfig small;
    small.block_size = 4, small.vocab_size = 50258, small.model_length = 1024,
    small.hidden_dim = 768;
    small.cond_dim = 128, small.n_blocks = 12, small.n_heads = 12,
    small.mask_index = small.vocab_size - 1;
    time_training_step<Model>(small, 1, 2);
  }
}
