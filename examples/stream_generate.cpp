// Streaming generation: each block is printed as soon as it is finished, through the
// sampler's on_block callback and a streaming UTF-8 decoder, with threshold decoding
// (several tokens per model call when the model is confident), variable length (stop at
// the second EOS or on a degenerate tail) and the number of model calls of each block.
//
// Usage: stream_generate MODEL_DIR [PROMPT]   (a checkpoint with a tokenizer, e.g.
// train_tiny's OUT/ckpt-N). Exits 1 unless the streamed text equals the decoded sample.
// docs/quickstart.md shows the lines between the [options] and [stream] marks.
#include <bd3/inference.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

using Model = bd3::BlockDiffusionModel<bd3::BlockSize<bd3::dynamic>, bd3::BlockSparseAttention>;

int main(int argc, char** argv) try {
  if (argc < 2 || argc > 3)
    return std::fprintf(stderr, "usage: %s MODEL_DIR [PROMPT]\n", argv[0]), 2;
  const std::filesystem::path dir = argv[1];
  auto checkpoint = bd3::load_checkpoint(dir);
  Model model(checkpoint.config);
  std::ranges::copy(checkpoint.parameters, model.parameters().begin());
  model.parameters_changed();
  const auto tokenizer = bd3::text::Tokenizer::load_from(dir);

  // [options]
  bd3::sample::SamplerOptions options;
  options.method = bd3::sample::Method::threshold;
  options.threshold = 0.5;  // reveal every masked position whose top probability >= 0.5
  options.min_reveal = 1;   // and at least the most confident one per call
  options.length_mode = bd3::sample::LengthMode::variable;  // stop at the second EOS...
  options.length = 4 * model.config().model_length;         // ...or here (past the window)
  options.bos_id = tokenizer.bos_id();
  options.eos_id = tokenizer.eos_id();
  options.prompt = {tokenizer.bos_id()};
  for (int32_t id : tokenizer.encode(argc > 2 ? argv[2] : "And God said"))
    options.prompt.push_back(id);
  options.seed = 2;
  // [options]

  // [stream]
  // A block's tokens may end inside a multi-byte character: the decoder holds its bytes
  // back until the character is complete, so nothing is ever printed half.
  auto decoder = tokenizer.stream_decoder();
  std::string streamed = decoder.feed(options.prompt);
  int64_t fed = int64_t(options.prompt.size());  // a block may start inside the prompt
  const bd3::sample::Sampler<Model>* sampler = nullptr;
  int64_t calls_before = 0;
  std::vector<int64_t> block_nfe;
  std::printf("%s", streamed.c_str());
  options.on_block = [&](const bd3::sample::BlockEvent& event) {
    // The sampler's running count of model calls (batch 1: this sequence's NFE).
    const int64_t calls = sampler->stats().model_calls;
    block_nfe.push_back(calls - calls_before);
    calls_before = calls;
    const int64_t end = event.position + int64_t(event.tokens.size());
    std::string piece;
    for (int64_t p = std::max(fed, event.position); p < end; ++p)
      piece += decoder.feed(event.tokens[size_t(p - event.position)]);
    fed = std::max(fed, end);
    streamed += piece;
    std::printf("%s[%lld]", piece.c_str(), (long long)block_nfe.back());  // [NFE of the block]
    std::fflush(stdout);
  };
  bd3::sample::Sampler<Model> s(model, options);
  sampler = &s;
  const auto result = s.generate().at(0);
  const std::string rest = decoder.flush();
  streamed += rest;
  std::printf("%s\n", rest.c_str());
  // [stream]

  int64_t total = 0;
  for (int64_t n : block_nfe) total += n;
  std::printf("%zu blocks, %lld tokens generated with %lld model calls (%.2f per token)%s\n",
              block_nfe.size(), (long long)result.generated_tokens(), (long long)result.nfe,
              double(result.nfe) / double(result.generated_tokens()),
              result.stopped_early ? ", stopped early" : "");
  const std::string decoded = tokenizer.decode(result.ids);
  if (streamed != decoded || total != result.nfe)
    return std::fprintf(stderr, "the streamed text or NFE differs from the final sample\n"), 1;
  std::printf("the streamed text equals the decoded sample, the blocks' NFE sum to %lld\n",
              (long long)total);
  return 0;
} catch (const bd3::Error& e) {
  std::fprintf(stderr, "stream_generate: %s\n", e.what());
  return 1;
}
