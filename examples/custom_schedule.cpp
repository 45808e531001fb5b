// A noise schedule of one's own, defined in this file, used by training, evaluation and
// sampling: the trainer, the evaluation and the sampler each take it as their Noise.
//
// Usage: custom_schedule [--steps N] [CORPUS]   (CORPUS: $BD3_CORPUS, else
// /tmp/bd3_corpus/kjv.txt). Exits 1 when the masks do not follow this schedule's p(t).
#include <bd3/bd3.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace fs = std::filesystem;

// p(t) = (e^{kt} - 1) / (e^k - 1): few tokens are masked until late in the diffusion (at
// t = 1/2 about 12 %, against log-linear's 50 %). The NELBO weight is w = p'(t) / p(t) =
// k / (1 - e^{-kt}); any other weight and the loss is no longer a likelihood bound.
struct ExponentialNoise {
  static constexpr double k = 4.0;
  static constexpr std::string_view name() { return "exponential"; }  // recorded in checkpoints
  static double p(double t) { return std::expm1(k * t) / std::expm1(k); }
  static double w(double t) { return k / -std::expm1(-k * t); }
};
static_assert(bd3::NoiseSchedule<ExponentialNoise>);

// Block size 16 (the config follows the type): many tokens share each block's t, so the
// masked fraction per t is sharp.
using Model = bd3::BlockDiffusionModel<bd3::BlockSize<16>, bd3::BlockSparseAttention>;

int main(int argc, char** argv) try {
  int64_t steps = 30;
  fs::path corpus_path = bd3::text::default_corpus_path();
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--steps") && i + 1 < argc)
      steps = std::stoll(argv[++i]);
    else
      corpus_path = argv[i];
  }
  if (!fs::exists(corpus_path))
    return std::fprintf(stderr, "no corpus at %s (scripts/get_corpus.sh)\n", corpus_path.c_str()),
           77;

  // w must be p'/p: checked against a central difference.
  for (double t : {0.05, 0.3, 0.7, 0.95}) {
    const double h = 1e-6, dp = (ExponentialNoise::p(t + h) - ExponentialNoise::p(t - h)) / (2 * h);
    if (std::abs(dp / ExponentialNoise::p(t) - ExponentialNoise::w(t)) >
        1e-6 * ExponentialNoise::w(t))
      return std::fprintf(stderr, "w(%g) is not p'/p\n", t), 1;
  }

  const auto tokenizer = bd3::text::Tokenizer::bytes();
  bd3::ModelConfig config;
  config.vocab_size = tokenizer.model_vocab_size(), config.mask_index = tokenizer.mask_id();
  config.model_length = 64;
  config.hidden_dim = 64, config.n_heads = 2, config.n_blocks = 2, config.cond_dim = 32;
  bd3::text::CorpusOptions co;
  co.model_length = config.model_length;
  const std::vector<fs::path> files = {corpus_path};
  const auto corpus = bd3::text::Corpus::open(tokenizer, files, co);

  // Training: the trainer draws each block's masks with p(t) and weighs them with w(t).
  Model model(config);
  bd3::train::init_model(model, 0);
  bd3::train::TrainOptions options;
  options.steps = steps, options.batch = 16, options.adamw.lr = 3e-3, options.ema = 0.0;
  bd3::train::Trainer trainer(std::move(model), ExponentialNoise{}, options, corpus);
  while (!trainer.done()) {
    const auto r = trainer.train_step();
    if (trainer.done()) std::printf("trained %lld steps, loss %.4f\n", (long long)steps, r.loss);
  }
  std::printf("the trainer records the schedule '%s'\n", trainer.options().noise.c_str());

  // The masks the trainer draws (draw_noised_batch, with the trainer's schedule and
  // interval), binned by t: the masked fraction must follow p(t), not log-linear's p(t) = t.
  const Model& trained = trainer.model();
  constexpr int bins = 10, batch = 64, draws = 40;
  const int L = config.model_length, B = trained.block_size(), K = L / B;  // K blocks each
  std::vector<double> masked(bins), maskable(bins), expected(bins), linear(bins);
  std::vector<int32_t> x0(size_t(batch) * L);
  std::vector<int64_t> idx(batch);
  bd3::NoisedBatch nb;
  for (int d = 0; d < draws; ++d) {
    for (int b = 0; b < batch; ++b)
      idx[size_t(b)] = (int64_t(d) * batch + b) % corpus.size(bd3::text::Split::train);
    corpus.batch(bd3::text::Split::train, idx, x0);
    bd3::CounterRng rng(1, {uint64_t(d)});
    bd3::draw_noised_batch(x0, batch, L, B, config.mask_index, trainer.noise(),
                           trainer.estimator_options(), rng, nb);
    for (int b = 0; b < batch; ++b)
      for (int k = 0; k < K; ++k) {
        const double t = nb.t[size_t(b * K + k)];
        const int bin = std::min(bins - 1, int(t * bins)), first = k == 0;  // BOS: never masked
        for (int j = first; j < B; ++j)
          masked[bin] += nb.xt[size_t(b * L + k * B + j)] == config.mask_index;
        maskable[bin] += B - first;
        expected[bin] += (B - first) * ExponentialNoise::p(t);
        linear[bin] += (B - first) * t;
      }
  }
  bool ok = true;
  std::printf("  t bin      masked   p(t)   log-linear p(t)\n");
  for (int i = 0; i < bins; ++i) {
    const double n = maskable[i], f = masked[i] / n, e = expected[i] / n, lin = linear[i] / n;
    const double tol = 4 * std::sqrt(e * (1 - e) / n) + 1e-3;  // 4 binomial standard errors
    const bool good = std::abs(f - e) <= tol;
    ok = ok && good;
    std::printf("  %.1f-%.1f   %.4f   %.4f   %.4f%s\n", i / 10.0, (i + 1) / 10.0, f, e, lin,
                good ? "" : "   <- does not follow p(t)");
  }

  // Evaluation: the NELBO's masks and weights come from the same schedule.
  auto sequences = bd3::split_sequences(corpus, bd3::text::Split::validation);
  sequences.resize(std::min<size_t>(sequences.size(), 64));
  const auto r = bd3::evaluate_nelbo(trained, ExponentialNoise{}, corpus, sequences, {});
  std::printf("validation NELBO %.4f (%lld sequences)\n", r.nelbo, (long long)r.sequences);

  // Sampling: DDPM keeps a masked token masked from t to s with probability p(s) / p(t).
  bd3::sample::SamplerOptions so;
  so.method = bd3::sample::Method::ddpm;
  so.bos_id = tokenizer.bos_id(), so.length = 64, so.seed = 1;
  bd3::sample::Sampler sampler(trained, so, ExponentialNoise{});
  const auto sample = sampler.generate().at(0);
  std::printf("DDPM sample (NFE %lld): %s\n", (long long)sample.nfe,
              tokenizer.decode(std::span<const int32_t>(sample.ids).subspan(1)).c_str());

  if (!ok) return std::fprintf(stderr, "the masks do not follow the schedule's p(t)\n"), 1;
  std::printf("the masks follow p(t)\n");
  return 0;
} catch (const bd3::Error& e) {
  std::fprintf(stderr, "custom_schedule: %s\n", e.what());
  return 1;
}
