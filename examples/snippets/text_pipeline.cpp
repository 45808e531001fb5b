// docs/text.md's examples as one program: a GPT-2 tokenizer from its files, a BPE trained
// on a text, and the corpus pipeline that cuts a text into training sequences.
// Usage: text_pipeline VOCAB_JSON MERGES_TXT TEXT OUT_DIR
#include <bd3/text/bpe_trainer.hpp>
#include <bd3/text/corpus.hpp>
#include <bd3/text/tokenizer.hpp>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace fs = std::filesystem;

int main(int argc, char** argv) try {
  if (argc != 5) return std::fprintf(stderr, "usage: %s VOCAB MERGES TEXT OUT_DIR\n", argv[0]), 2;
  const fs::path out_dir = argv[4];
  std::ifstream in(argv[3], std::ios::binary);
  const std::string corpus_text{std::istreambuf_iterator<char>(in), {}};

  // [gpt2]
  auto tok = bd3::text::Gpt2Tokenizer::from_files(argv[1], argv[2]);
  std::vector<int32_t> ids = tok.encode("Hello, world!");        // {15496, 11, 995, 0}
  std::string text = tok.decode(ids);                             // exact bytes back
  auto big = tok.encode_parallel(corpus_text);                    // same ids, all threads
  auto eot = tok.encode("<|endoftext|>", /*allow_special=*/true);  // {50256}
  auto dec = tok.stream_decoder();                                // dec.feed(id), dec.flush()
  // [gpt2]
  std::string streamed;
  for (int32_t id : big) streamed += dec.feed(id);
  streamed += dec.flush();
  if (text != "Hello, world!" || big != tok.encode(corpus_text) || streamed != corpus_text ||
      eot != std::vector<int32_t>{50256})
    return std::fprintf(stderr, "the GPT-2 tokenizer did not round-trip\n"), 1;
  std::printf("Hello, world! -> %zu ids; the text: %zu ids\n", ids.size(), big.size());

  const std::vector<fs::path> files = {argv[3]};
  bd3::text::BpeTrainStats stats;
  // [bpe]
  bd3::text::BpeTrainOptions options;
  options.vocab_size = 300;  // 256 bytes + merges + <|endoftext|>
  auto bpe = bd3::text::train_bpe_files(files, out_dir / "bpe", options, &stats);
  // [bpe]
  std::printf("BPE of %d tokens from %lld bytes\n", int(bpe.vocab_size()),
              (long long)stats.bytes);

  const bd3::text::Tokenizer tokenizer(std::move(bpe));
  std::vector<int32_t> out(32), buffer(4 * 32);
  const int64_t batch = 4, i = 0;
  const uint64_t seed = 1, step = 0;
  // [corpus]
  bd3::text::CorpusOptions o;
  o.model_length = 32;
  o.cache_path = out_dir / "tokens.bin";
  auto corpus = bd3::text::Corpus::open(tokenizer, files, o);
  corpus.sequence(bd3::text::Split::train, i, out);  // out.size() == 32
  auto idx = corpus.sample_indices(bd3::text::Split::train, batch, seed, step);
  corpus.batch(bd3::text::Split::train, idx, buffer);
  // [corpus]
  std::printf("%lld training sequences of %d tokens\n",
              (long long)corpus.size(bd3::text::Split::train), o.model_length);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "text_pipeline: %s\n", e.what());
  return 1;
}
