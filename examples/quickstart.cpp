// Quickstart: load a checkpoint, measure a text's perplexity bound, continue a prompt.
//
// Usage: quickstart MODEL_DIR TEXT_FILE [PROMPT]
//   MODEL_DIR: the official Hugging Face layout (config.json + model.safetensors) with a
//   tokenizer (tokenizer.json, or vocab.json + merges.txt), e.g. train_tiny's OUT/ckpt-N.
// Prints the NELBO of the whole text (what `bd3 eval --model MODEL_DIR --data TEXT_FILE
// --split all` prints: same estimator, seed, batch and random streams), then a continuation
// of the prompt sampled with the KV cache and the number of model calls (NFE) it took.
// docs/quickstart.md shows the lines between the [model], [load], [nelbo] and [sample] marks.
#include <bd3/inference.hpp>  // model, cache, samplers, evaluation, tokenizers; no trainer

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace fs = std::filesystem;

// The three compile-time policies: the block size is read from the checkpoint
// (BlockSize<bd3::dynamic>), the masking schedule is log-linear (the official models'),
// and attention visits only the non-empty tiles of the block-diffusion mask.
// [model]
using Model = bd3::BlockDiffusionModel<bd3::BlockSize<bd3::dynamic>, bd3::BlockSparseAttention>;
// [model]

int main(int argc, char** argv) try {
  if (argc < 3 || argc > 4)
    return std::fprintf(stderr, "usage: %s MODEL_DIR TEXT_FILE [PROMPT]\n", argv[0]), 2;
  const fs::path dir = argv[1], text_file = argv[2];
  const std::string prompt = argc > 3 ? argv[3] : "In the beginning";

  // [load]
  auto checkpoint = bd3::load_checkpoint(dir);  // config.json + model.safetensors
  Model model(checkpoint.config);
  std::ranges::copy(checkpoint.parameters, model.parameters().begin());
  model.parameters_changed();  // the conditioning and adaLN modulations depend on the weights
  const auto tokenizer = bd3::text::Tokenizer::load_from(dir);
  // [load]

  // [nelbo]
  // The text cut into sequences of L tokens (BOS + L-1), all of them evaluated: no
  // validation split is held out of a file given for evaluation.
  bd3::text::CorpusOptions co;
  co.model_length = model.config().model_length;
  co.val_fraction = 0.0;
  const std::vector<fs::path> files = {text_file};
  const auto corpus = bd3::text::Corpus::open(tokenizer, files, co);
  const auto sequences = bd3::split_sequences(corpus, bd3::text::Split::train);  // every one

  // One mask draw per sequence, 8 sequences per forward, seed 0: bd3 eval's defaults.
  bd3::EvalOptions eval;
  const bd3::EvalResult r =
      bd3::evaluate_nelbo(model, bd3::noise::LogLinear{}, corpus, sequences, eval);
  std::printf("NELBO %.17g nats/token over %lld tokens (%lld sequences)\n", r.nelbo,
              (long long)r.tokens, (long long)r.sequences);
  std::printf("perplexity bound %.3f, %.4f bits/token, standard error %.4f\n", r.ppl(),
              r.bits_per_token(), r.standard_error);
  // [nelbo]

  // [sample]
  bd3::sample::SamplerOptions options;
  options.bos_id = tokenizer.bos_id();
  options.prompt = {tokenizer.bos_id()};  // the prompt is the prefix: BOS, then its tokens
  for (int32_t id : tokenizer.encode(prompt)) options.prompt.push_back(id);
  options.length = int64_t(options.prompt.size()) + 96;  // 96 tokens after the prompt
  options.method = bd3::sample::Method::first_hitting;   // one token per model call
  options.top_p = 0.9;
  options.seed = 1;
  options.kv_cache = true;  // the default: each call runs one block against the cached window
  bd3::sample::Sampler<Model> sampler(model, options);
  const auto sample = sampler.generate().at(0);
  // [sample]

  const std::span<const int32_t> ids(sample.ids);
  std::printf("prompt: %s\n", prompt.c_str());
  std::printf("continuation: %s\n",
              tokenizer.decode(ids.subspan(size_t(sample.prompt_tokens))).c_str());
  std::printf("%lld tokens generated with %lld model calls (NFE), %lld cache commits\n",
              (long long)sample.generated_tokens(), (long long)sample.nfe,
              (long long)sample.commit_calls);
  return 0;
} catch (const bd3::Error& e) {
  std::fprintf(stderr, "quickstart: %s\n", e.what());
  return 1;
}
