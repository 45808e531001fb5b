// The paper's ladder in one screen: the perplexity bound of one text under block sizes 1
// (autoregressive), 4, 16 and L (MDLM), with the block size a compile-time policy.
//
// Usage: block_size_sweep MODEL_DIR TEXT_FILE   (a checkpoint of length L = 64 with a
// tokenizer, e.g. train_tiny's OUT/ckpt-N; edit kLength for another length).
//
// The network has no weight that depends on the block size (only the attention mask
// does), so one set of weights runs under every size. The paper trains one model per
// size, and so does scripts/reproduce.sh; weights trained at B' = 4 show here what
// the mask alone changes. For B' = 1 the row is the exact NLL (every token masked, eps
// = 1), and the program checks it against the autoregressive chain rule computed token by
// token with the KV cache: exits 1 unless they agree.
#include <bd3/inference.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <span>
#include <vector>

namespace fs = std::filesystem;
constexpr int kLength = 64;  // BlockSize<L> needs L at compile time

template <int N>
using Model = bd3::BlockDiffusionModel<bd3::BlockSize<N>, bd3::BlockSparseAttention>;

// The model of block size N on the checkpoint's weights. The checkpoint's config names the
// block size it was trained with; 0 leaves it to the type (another value than N would be
// refused as a mismatch).
template <int N>
Model<N> load(const bd3::LoadedCheckpoint& checkpoint) {
  bd3::ModelConfig config = checkpoint.config;
  config.block_size = 0;
  Model<N> model(config);
  std::ranges::copy(checkpoint.parameters, model.parameters().begin());
  model.parameters_changed();
  return model;
}

// The NELBO of every sequence of the text (one mask draw each, seed 0), per token.
// With exact_nll (block size 1 only) the noise interval is [1, 1]: every position is
// masked and the NELBO is the autoregressive NLL, with no Monte-Carlo noise.
template <int N>
double nelbo(const bd3::LoadedCheckpoint& checkpoint, const bd3::text::Corpus& corpus,
             bool exact_nll = false) {
  const Model<N> model = load<N>(checkpoint);
  bd3::EvalOptions options;
  if (exact_nll) options.estimator.eps_min = options.estimator.eps_max = 1.0;
  const auto sequences = bd3::split_sequences(corpus, bd3::text::Split::train);
  return bd3::evaluate_nelbo(model, bd3::noise::LogLinear{}, corpus, sequences, options).nelbo;
}

// -log p(x_l | x_<l) averaged over positions 1..L-1 of every sequence, the way an AR
// model generates: commit x_<l to the KV cache, ask for position l as a MASK token.
double chain_rule_nll(const Model<1>& model, const bd3::text::Corpus& corpus) {
  const auto& c = model.config();
  const int L = c.model_length, V = c.vocab_size, batch = 16;
  double total = 0;
  int64_t count = 0;
  std::vector<int32_t> x0, column, masks;
  std::vector<float> logits;
  for (int64_t lo = 0; lo < corpus.num_sequences(); lo += batch) {
    const int n = int(std::min<int64_t>(batch, corpus.num_sequences() - lo));
    x0.resize(size_t(n) * L);
    for (int b = 0; b < n; ++b) corpus.sequence_at(lo + b, std::span(x0).subspan(size_t(b) * L, L));
    bd3::KVCache<float> cache(c, n);
    column.resize(size_t(n)), masks.assign(size_t(n), c.mask_index);
    for (int l = 1; l < L; ++l) {
      for (int b = 0; b < n; ++b) column[size_t(b)] = x0[size_t(b) * L + size_t(l - 1)];
      model.commit_block(column, cache);          // x_{l-1} joins the context
      model.forward_block(masks, cache, logits);  // position l, masked
      for (int b = 0; b < n; ++b) {
        // SUBS: the MASK token is never predicted; log-softmax over the rest.
        const float* row = logits.data() + size_t(b) * V;
        double top = -INFINITY, sum = 0;
        for (int v = 0; v < V; ++v)
          if (v != c.mask_index) top = std::max(top, double(row[v]));
        for (int v = 0; v < V; ++v)
          if (v != c.mask_index) sum += std::exp(double(row[v]) - top);
        total -= double(row[x0[size_t(b) * L + size_t(l)]]) - top - std::log(sum);
        ++count;
      }
    }
  }
  return total / double(count);
}

int main(int argc, char** argv) try {
  if (argc != 3) return std::fprintf(stderr, "usage: %s MODEL_DIR TEXT_FILE\n", argv[0]), 2;
  const fs::path dir = argv[1];
  const auto checkpoint = bd3::load_checkpoint(dir);
  if (checkpoint.config.model_length != kLength)
    return std::fprintf(stderr, "the model's length is %d; this program is compiled for L = %d\n",
                        checkpoint.config.model_length, kLength),
           1;
  const auto tokenizer = bd3::text::Tokenizer::load_from(dir);
  bd3::text::CorpusOptions co;
  co.model_length = kLength, co.val_fraction = 0.0;  // every sequence of the text
  const std::vector<fs::path> files = {argv[2]};
  const auto corpus = bd3::text::Corpus::open(tokenizer, files, co);

  // One instantiation per block size: BlockSize<1>, <4>, <16>, <L>.
  struct Row {
    const char* name;
    int block_size;
    double nats;
  };
  const Row rows[] = {{"AR (exact NLL)", 1, nelbo<1>(checkpoint, corpus, true)},
                      {"BD3-LM", 4, nelbo<4>(checkpoint, corpus)},
                      {"BD3-LM", 16, nelbo<16>(checkpoint, corpus)},
                      {"MDLM", kLength, nelbo<kLength>(checkpoint, corpus)}};
  std::printf("%lld sequences of %d tokens\n%-16s %4s %10s %12s\n",
              (long long)corpus.num_sequences(), kLength, "model", "B'", "nats/token",
              "perplexity");
  for (const Row& r : rows)
    std::printf("%-16s %4d %10.4f %12.2f%s\n", r.name, r.block_size, r.nats, std::exp(r.nats),
                r.block_size == 1 ? "" : "  (bound)");

  // The B' = 1 row against the chain rule: the training pass over [xt, x0] with every xt
  // token masked computes the same conditionals as the KV-cached decode path.
  const double ar = chain_rule_nll(load<1>(checkpoint), corpus);
  const double diff = std::abs(ar - rows[0].nats);
  std::printf("chain rule with the KV cache: %.6f nats/token (difference %.2e)\n", ar, diff);
  if (!(diff <= 1e-5 * ar)) return std::fprintf(stderr, "B' = 1 differs from the AR NLL\n"), 1;
  std::printf("B' = 1 equals the autoregressive NLL\n");
  return 0;
} catch (const bd3::Error& e) {
  std::fprintf(stderr, "block_size_sweep: %s\n", e.what());
  return 1;
}
