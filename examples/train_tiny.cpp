// Train a tiny BD3-LM through the library API, print its loss, save a checkpoint that
// `bd3 sample --model OUT/ckpt-N` (and the other examples) load.
//
// Usage: train_tiny [--steps N] [--out DIR] [CORPUS]
//   CORPUS defaults to $BD3_CORPUS, else /tmp/bd3_corpus/kjv.txt (scripts/get_corpus.sh
//   writes the King James Bible there). The checkpoint goes to DIR/ckpt-<N, 8 digits>.
// Exits 1 when the loss did not go down, 77 when there is no corpus.
// docs/quickstart.md shows the lines between the two [train] marks.
#include <bd3/bd3.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace fs = std::filesystem;

// Block size 4, a run-time size: the checkpoint records it and `bd3 sample` reads it back.
using Model = bd3::BlockDiffusionModel<bd3::BlockSize<bd3::dynamic>, bd3::BlockSparseAttention>;

int main(int argc, char** argv) try {
  int64_t steps = 300;
  fs::path out = "tiny_bd3", corpus_path = bd3::text::default_corpus_path();
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--steps") && i + 1 < argc)
      steps = std::stoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--out") && i + 1 < argc)
      out = argv[++i];
    else
      corpus_path = argv[i];
  }
  if (!fs::exists(corpus_path)) {
    std::fprintf(stderr, "no corpus at %s (run scripts/get_corpus.sh, or pass a text file)\n",
                 corpus_path.c_str());
    return 77;
  }

  // Bytes as tokens: no tokenizer to train, and every text can be encoded (259 ids with
  // BOS, EOS and MASK). A BPE (bd3::text::train_bpe) learns faster per step but costs
  // a minute to train on the whole corpus.
  // [train]
  const auto tokenizer = bd3::text::Tokenizer::bytes();

  bd3::ModelConfig config;  // fields one by one: GCC warns on designated initializers
  config.vocab_size = tokenizer.model_vocab_size();  // MASK included
  config.mask_index = tokenizer.mask_id();
  config.model_length = 64;  // L: BOS + 63 bytes per training sequence
  config.block_size = 4;     // B': 16 blocks per sequence
  config.hidden_dim = 64, config.n_heads = 2, config.n_blocks = 2, config.cond_dim = 32;

  // The corpus cut into sequences of L tokens (the last 5 % held out for validation).
  bd3::text::CorpusOptions co;
  co.model_length = config.model_length;
  const std::vector<fs::path> files = {corpus_path};
  const auto corpus = bd3::text::Corpus::open(tokenizer, files, co);

  Model model(config);
  bd3::train::init_model(model, /*seed=*/0);  // the official code's initialisation

  bd3::train::TrainOptions options;
  options.steps = steps;
  options.batch = 8;
  options.adamw.lr = 3e-3;  // a tiny model tolerates a large learning rate
  options.warmup = 10;
  // The checkpoint publishes the EMA of the weights when it is on; with decay 0.9999 a run
  // of a few hundred steps would publish weights close to the initial ones.
  options.ema = 0.0;
  bd3::train::Trainer<Model> trainer(std::move(model), options, corpus);

  std::printf("%lld training sequences of %d tokens, %lld parameters\n",
              (long long)corpus.size(bd3::text::Split::train), config.model_length,
              (long long)trainer.model().parameters().size());
  // The loss of one step is a one-draw Monte-Carlo estimate of the NELBO: noisy, so the
  // check compares the means of the first and last tenth of the run.
  std::vector<double> losses;
  while (!trainer.done()) {
    const auto r = trainer.train_step();
    losses.push_back(r.loss);
    if (r.step % 25 == 0 || trainer.done())
      std::printf("step %4lld  loss %.4f  lr %.2e  %.0f tokens/s\n", (long long)r.step + 1, r.loss,
                  r.lr, double(r.tokens) / r.seconds);
  }
  const fs::path dir = trainer.save(out, &tokenizer);  // config, weights, tokenizer, state
  std::printf("saved %s\n", dir.c_str());
  // [train]

  const size_t tenth = std::max<size_t>(1, losses.size() / 10);
  double first = 0, last = 0;
  for (size_t i = 0; i < tenth; ++i) first += losses[i], last += losses[losses.size() - 1 - i];
  first /= double(tenth), last /= double(tenth);
  std::printf("mean loss: first tenth %.4f, last tenth %.4f\n", first, last);
  if (!(last < 0.8 * first)) {
    std::fprintf(stderr, "the loss did not go down by 20 %%\n");
    return 1;
  }
  std::printf("the loss went down\n");
  return 0;
} catch (const bd3::Error& e) {
  std::fprintf(stderr, "train_tiny: %s\n", e.what());
  return 1;
}
