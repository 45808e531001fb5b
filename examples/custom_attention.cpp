// An attention backend of one's own, defined in this file and plugged into training and
// sampling: dense masked attention that also records how peaked each head's attention is
// (the entropy of its softmax, in nats, averaged over queries).
//
// Usage: custom_attention [--steps N] [CORPUS]   (CORPUS: $BD3_CORPUS, else
// /tmp/bd3_corpus/kjv.txt). Exits 1 unless its logits equal BlockSparseAttention's.
#include <bd3/bd3.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <mutex>
#include <string_view>
#include <vector>

namespace fs = std::filesystem;

struct EntropyAttention {
  static constexpr std::string_view name = "dense_entropy";

  // A backend is a type with static members, so what it records lives in a static
  // object. Decode calls of a batch may run on several threads: sums go under a mutex.
  struct Recorder {
    std::mutex mutex;
    bool on = false;
    std::vector<double> entropy_sum;  // per head
    std::vector<double> queries;
  };
  static Recorder& recorder() {
    static Recorder r;
    return r;
  }

  // Every query against every key the mask allows, in double: out = softmax(q k^T /
  // sqrt(Dh)) v per head, lse = the log-sum-exp of the scores (the backward needs it).
  // The mask is TrainingMask (training, evaluation), BandedBlockCausalMask (the uncached
  // reference) or DecodeMask (KV-cached sampling); allowed(q, k) is all this code asks.
  template <class T, class Mask>
  static void forward(const bd3::AttentionArgs<T>& a, const Mask& mask) {
    const int Dh = a.head_dim;
    const double scale = 1.0 / std::sqrt(double(Dh));
    std::vector<double> s(size_t(a.nk)), entropy(size_t(a.n_heads), 0.0);
    for (int h = 0; h < a.n_heads; ++h)
      for (int i = 0; i < a.nq; ++i) {
        const T* q = a.q + int64_t(i) * a.ldq + h * Dh;
        double top = -std::numeric_limits<double>::infinity();
        for (int j = 0; j < a.nk; ++j) {
          s[j] = -std::numeric_limits<double>::infinity();
          if (!mask.allowed(i, j)) continue;
          const T* k = a.k_head(h) + int64_t(j) * a.ldk;
          double dot = 0;
          for (int d = 0; d < Dh; ++d) dot += double(q[d]) * double(k[d]);
          top = std::max(top, s[j] = dot * scale);
        }
        double sum = 0, weighted = 0;  // weighted: sum of e^(s - top) (s - top)
        for (int j = 0; j < a.nk; ++j) {
          const double e = mask.allowed(i, j) ? std::exp(s[j] - top) : 0.0;
          if (e > 0) weighted += e * (s[j] - top);
          sum += (s[j] = e);  // s now holds the unnormalised probabilities
        }
        // H = -sum p log p with p = e / sum: log(sum) - weighted / sum.
        entropy[size_t(h)] += std::log(sum) - weighted / sum;
        if (a.lse) a.lse[h * a.nq + i] = T(top + std::log(sum));
        T* out = a.out + int64_t(i) * a.ldo + h * Dh;
        for (int d = 0; d < Dh; ++d) {
          double o = 0;
          for (int j = 0; j < a.nk; ++j)
            if (s[j] > 0) o += s[j] / sum * double(a.v_head(h)[int64_t(j) * a.ldv + d]);
          out[d] = T(o);
        }
      }
    Recorder& r = recorder();
    std::lock_guard<std::mutex> lock(r.mutex);
    if (!r.on) return;
    r.entropy_sum.resize(size_t(a.n_heads), 0.0), r.queries.resize(size_t(a.n_heads), 0.0);
    for (int h = 0; h < a.n_heads; ++h)
      r.entropy_sum[size_t(h)] += entropy[size_t(h)], r.queries[size_t(h)] += a.nq;
  }

  // To train, a backend also needs a backward for the training mask. The built-in one
  // recomputes the probabilities from q, k and the log-sum-exp this forward wrote, so it
  // is the gradient of this forward (up to rounding).
  template <class T, class Mask>
  static void backward(const bd3::AttentionGradArgs<T>& a, const Mask& mask) {
    bd3::BlockSparseAttention::backward(a, mask);
  }
};
static_assert(bd3::TrainableAttention<EntropyAttention>);

template <class Attention>
using ModelWith = bd3::BlockDiffusionModel<bd3::BlockSize<4>, Attention>;
using Model = ModelWith<EntropyAttention>;

// max |a - b| / max |b|: float rounding differs between the two backends' sums.
double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < b.size(); ++i)
    diff = std::max(diff, double(std::abs(a[i] - b[i]))),
    scale = std::max(scale, double(std::abs(b[i])));
  return a.size() == b.size() && scale > 0 ? diff / scale : 1.0;
}

int main(int argc, char** argv) try {
  int64_t steps = 40;
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

  const auto tokenizer = bd3::text::Tokenizer::bytes();
  bd3::ModelConfig config;
  config.vocab_size = tokenizer.model_vocab_size(), config.mask_index = tokenizer.mask_id();
  config.model_length = 64;  // block size 4: the model type's
  config.hidden_dim = 64, config.n_heads = 4, config.n_blocks = 2, config.cond_dim = 32;
  bd3::text::CorpusOptions co;
  co.model_length = config.model_length;
  const std::vector<fs::path> files = {corpus_path};
  const auto corpus = bd3::text::Corpus::open(tokenizer, files, co);

  // Training: the trainer runs the backend's forward and backward in every layer.
  Model model(config);
  bd3::train::init_model(model, 0);
  bd3::train::TrainOptions options;
  options.steps = steps, options.batch = 8, options.adamw.lr = 3e-3, options.ema = 0.0;
  bd3::train::Trainer<Model> trainer(std::move(model), options, corpus);
  while (!trainer.done()) {
    const auto r = trainer.train_step();
    if (r.step % 10 == 0 || trainer.done())
      std::printf("step %3lld  loss %.4f\n", (long long)r.step + 1, r.loss);
  }
  const Model& trained = trainer.model();

  // Sampling with the KV cache, recording the attention entropy of every decode call.
  bd3::sample::SamplerOptions so;
  so.bos_id = tokenizer.bos_id(), so.length = 64, so.seed = 1;
  EntropyAttention::recorder().on = true;
  const auto sample = bd3::sample::Sampler<Model>(trained, so).generate().at(0);
  EntropyAttention::recorder().on = false;
  std::printf("sample (NFE %lld): %s\n", (long long)sample.nfe,
              tokenizer.decode(std::span<const int32_t>(sample.ids).subspan(1)).c_str());
  const auto& rec = EntropyAttention::recorder();
  for (size_t h = 0; h < rec.queries.size(); ++h)
    std::printf("head %zu: mean attention entropy %.3f nats over %.0f queries\n", h,
                rec.entropy_sum[h] / rec.queries[h], rec.queries[h]);

  // The same weights under the built-in backend: the logits must agree within rounding,
  // in the training pass (training mask) and in a KV-cached decode call (decode mask).
  ModelWith<bd3::BlockSparseAttention> reference(config);
  std::ranges::copy(trained.parameters(), reference.parameters().begin());
  reference.parameters_changed();
  const int batch = 4, L = config.model_length;
  std::vector<int32_t> x0(size_t(batch) * L);
  corpus.batch(bd3::text::Split::validation, std::vector<int64_t>{0, 1, 2, 3}, x0);
  bd3::CounterRng rng(7, {0});
  bd3::NoisedBatch nb;
  bd3::draw_noised_batch(x0, batch, L, trained.block_size(), config.mask_index, trainer.noise(),
                         bd3::EstimatorOptions{}, rng, nb);
  bd3::TrainActivations<float> ours, theirs;
  trained.forward_train(nb.xt, x0, batch, ours);
  reference.forward_train(nb.xt, x0, batch, theirs);
  const double train_diff = relative_difference(ours.logits, theirs.logits);

  // Decode: commit the first block of each sequence, then denoise the (noised) second.
  bd3::KVCache<float> cache_ours(trained.config(), batch), cache_theirs(reference.config(), batch);
  std::vector<int32_t> first(size_t(batch) * 4), second(size_t(batch) * 4);
  for (int b = 0; b < batch; ++b)
    for (int j = 0; j < 4; ++j)
      first[size_t(b * 4 + j)] = x0[size_t(b * L + j)],
                           second[size_t(b * 4 + j)] = nb.xt[size_t(b * L + 4 + j)];
  std::vector<float> decode_ours, decode_theirs;
  trained.commit_block(first, cache_ours);
  reference.commit_block(first, cache_theirs);
  trained.forward_block(second, cache_ours, decode_ours);
  reference.forward_block(second, cache_theirs, decode_theirs);
  const double decode_diff = relative_difference(decode_ours, decode_theirs);
  std::printf("max |logit difference| / max |logit|: training pass %.2e, decode call %.2e\n",
              train_diff, decode_diff);
  if (!(train_diff < 1e-5 && decode_diff < 1e-5))
    return std::fprintf(stderr, "the logits differ from BlockSparseAttention's\n"), 1;
  std::printf("the logits equal BlockSparseAttention's within rounding\n");
  return 0;
} catch (const bd3::Error& e) {
  std::fprintf(stderr, "custom_attention: %s\n", e.what());
  return 1;
}
