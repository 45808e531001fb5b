// BPE training, the byte tokenizer and the Tokenizer wrapper (checkpoint directories).
#include <bd3/text/bpe_trainer.hpp>
#include <bd3/text/byte_tokenizer.hpp>
#include <bd3/text/corpus.hpp>
#include <bd3/text/tokenizer.hpp>

#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using bd3::text::ByteTokenizer;
using bd3::text::Gpt2Tokenizer;
using bd3::text::Tokenizer;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// English-like text with a skewed word distribution, a few non-ASCII words and blank
// lines, reproducible from the seed.
std::string synthetic_text(uint64_t seed, size_t bytes) {
  static const char* kWords[] = {
      "the",      "and",     "of",          "to",           "in",
      "that",     "he",      "shall",       "unto",         "for",
      "his",      "LORD",    "they",        "be",           "is",
      "him",      "not",     "them",        "with",         "all",
      "thou",     "was",     "which",       "my",           "me",
      "said",     "but",     "ye",          "their",        "have",
      "will",     "thee",    "from",        "as",           "are",
      "when",     "this",    "out",         "were",         "upon",
      "man",      "by",      "you",         "Israel",       "king",
      "son",      "up",      "there",       "hath",         "then",
      "people",   "came",    "had",         "house",        "into",
      "on",       "her",     "come",        "one",          "we",
      "children", "s",       "before",      "your",         "also",
      "day",      "land",    "men",         "let",          "go",
      "made",     "against", "caf\xc3\xa9", "na\xc3\xafve", "\xe6\xbc\xa2\xe5\xad\x97",
      "42",       "1,000",   "it's",        "we'll"};
  const size_t n = sizeof kWords / sizeof *kWords;
  std::mt19937_64 rng(seed);
  std::string s;
  while (s.size() < bytes) {
    const int words = 5 + static_cast<int>(rng() % 20);
    for (int w = 0; w < words; ++w) {
      // Zipf-like: small indices much more often.
      const size_t i = static_cast<size_t>(std::pow(double(rng() % 10000) / 10000.0, 3.0) * n);
      if (w > 0) s += ' ';
      s += kWords[std::min(i, n - 1)];
      if (rng() % 9 == 0) s += rng() % 2 ? "," : ";";
    }
    s += rng() % 3 == 0 ? ".\n\n" : ".\n";
  }
  return s;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const bd3::Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("bpe: training is deterministic and its files load back", "[text][bpe]") {
  const std::string text = synthetic_text(1, 400000);
  const auto base = fs::temp_directory_path() / "bd3_test_bpe";
  fs::remove_all(base);
  bd3::text::BpeTrainOptions options;
  options.vocab_size = 400;
  std::vector<std::string> vocab_files, merges_files;
  for (int threads : {1, 2, 2}) {
    options.threads = threads;
    bd3::text::BpeTrainStats stats;
    auto tok = bd3::text::train_bpe(text, options, &stats);
    CHECK(stats.vocab_size == 400);
    CHECK(stats.merges == 400 - 257);
    CHECK(stats.bytes == static_cast<int64_t>(text.size()));
    CHECK(stats.unique_pieces > 0);
    const auto dir = base / ("run" + std::to_string(vocab_files.size()));
    tok.save(dir);
    vocab_files.push_back(slurp(dir / "vocab.json"));
    merges_files.push_back(slurp(dir / "merges.txt"));
  }
  CHECK(vocab_files[0] == vocab_files[1]);
  CHECK(vocab_files[0] == vocab_files[2]);
  CHECK(merges_files[0] == merges_files[1]);
  CHECK(merges_files[0] == merges_files[2]);
  CHECK(merges_files[0].starts_with("#version"));

  auto tok = Gpt2Tokenizer::from_files(base / "run0" / "vocab.json", base / "run0" / "merges.txt");
  CHECK(tok.vocab_size() == 400);
  CHECK(tok.end_of_text_id() == 399);  // the vocabulary ends with <|endoftext|>
  CHECK(tok.is_special(399));
  CHECK(tok.token_bytes(399) == "<|endoftext|>");
  // Byte tokens first, in GPT-2's order ('!' is id 0).
  CHECK(tok.token_bytes(0) == "!");
  CHECK(tok.token_bytes(255).size() == 1);
  // Round trips, and the trained merges do compress the training text.
  auto ids = tok.encode(text);
  CHECK(tok.decode(ids) == text);
  CHECK(ids.size() < text.size() / 2);
  CHECK(tok.encode_parallel(text, false, 2) == ids);
  std::mt19937_64 rng(3);
  std::string bytes(5000, '\0');
  for (auto& c : bytes) c = static_cast<char>(rng());
  CHECK(tok.decode(tok.encode(bytes)) == bytes);
  CHECK(tok.encode("<|endoftext|>", true) == std::vector<int32_t>{399});
  // The most frequent word became one token.
  CHECK(tok.encode(" the").size() == 1);
  fs::remove_all(base);
}

TEST_CASE("bpe: the vocabulary size is validated and small corpora stop early", "[text][bpe]") {
  bd3::text::BpeTrainOptions options;
  options.vocab_size = 256;
  CHECK_THROWS_AS(bd3::text::train_bpe("abc", options), bd3::Error);
  try {
    bd3::text::train_bpe("abc", options);
  } catch (const bd3::Error& e) {
    CHECK(e.kind() == bd3::ErrorKind::usage);
  }
  options.vocab_size = 1000;
  bd3::text::BpeTrainStats stats;
  auto tok = bd3::text::train_bpe("ab ab ab cd", options, &stats);
  CHECK(stats.vocab_size < 1000);
  CHECK(tok.vocab_size() == stats.vocab_size);
  CHECK(tok.decode(tok.encode("ab ab ab cd")) == "ab ab ab cd");
  // Empty text: bytes + <|endoftext|> only.
  auto empty = bd3::text::train_bpe("", options, &stats);
  CHECK(empty.vocab_size() == 257);
  CHECK(empty.encode("hi").size() == 2);
}

// The 60 s target is a benchmark figure (docs/text.md); this test checks the result.
TEST_CASE("bpe: 8192 tokens from the default corpus", "[text][bpe][corpus]") {
  const auto path = bd3::text::default_corpus_path();
  if (!fs::exists(path)) {
    WARN("skipped: no default corpus at " << path << " (run scripts/get_corpus.sh)");
    return;
  }
  bd3::text::BpeTrainOptions options;
  options.vocab_size = 8192;
  const auto t0 = std::chrono::steady_clock::now();
  bd3::text::BpeTrainStats stats;
  const auto dir = fs::temp_directory_path() / "bd3_test_bpe_kjv";
  std::vector<fs::path> files = {path};
  auto tok = bd3::text::train_bpe_files(files, dir, options, &stats);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO("trained in " << seconds << " s");
  CHECK(stats.vocab_size == 8192);
  auto loaded = Gpt2Tokenizer::from_files(dir / "vocab.json", dir / "merges.txt");
  CHECK(loaded.fingerprint() == tok.fingerprint());
  const std::string text = slurp(path);
  auto ids = loaded.encode_parallel(text);
  CHECK(loaded.decode(ids) == text);
  fs::remove_all(dir);
}

TEST_CASE("bytes: ids are bytes, then BOS, EOS, MASK", "[text][bytes]") {
  ByteTokenizer tok;
  CHECK(tok.vocab_size() == 259);
  CHECK(tok.bos_id() == 256);
  CHECK(tok.eos_id() == 257);
  CHECK(tok.mask_id() == 258);
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  auto ids = tok.encode(all);
  REQUIRE(ids.size() == 256);
  for (int b = 0; b < 256; ++b) CHECK(ids[b] == b);
  CHECK(tok.decode(ids) == all);
  CHECK(tok.encode("").empty());
  CHECK(tok.encode("a<|bos|>b<|eos|>", true) == std::vector<int32_t>{97, 256, 98, 257});
  CHECK(tok.encode("<|bos|>").size() == 7);
  CHECK(tok.decode(std::vector<int32_t>{256, 104, 105, 257, 258}) == "<|bos|>hi<|eos|><|mask|>");
  CHECK(error_of([&] { tok.decode(std::vector<int32_t>{259}); }).find("259") != std::string::npos);
  CHECK(error_of([&] { tok.decode(std::vector<int32_t>{-1}); }).find("-1") != std::string::npos);
  // Streaming: a 3-byte character fed byte by byte.
  auto dec = tok.stream_decoder();
  CHECK(dec.feed(0xE6).empty());
  CHECK(dec.feed(0xBC).empty());
  CHECK(dec.feed(0xA2) == "\xe6\xbc\xa2");
  CHECK(dec.feed(0xFF) == "\xff");  // never part of a character: released at once
  CHECK(dec.feed(0xC3).empty());
  CHECK(dec.flush() == "\xc3");
}

TEST_CASE("tokenizer: the wrapper, its mask id and checkpoint directories", "[text][tokenizer]") {
  const auto base = fs::temp_directory_path() / "bd3_test_tokenizer";
  fs::remove_all(base);
  const fs::path gpt2_dir = fs::path(BD3_FIXTURES_DIR) / "gpt2";

  Tokenizer bytes = Tokenizer::bytes();
  CHECK(bytes.kind() == Tokenizer::Kind::bytes);
  CHECK(bytes.vocab_size() == 259);
  CHECK(bytes.mask_id() == 258);
  CHECK(bytes.model_vocab_size() == 259);
  CHECK(bytes.gpt2() == nullptr);
  bytes.save_to(base / "bytes");
  CHECK(slurp(base / "bytes" / "tokenizer.json").find("\"bytes\"") != std::string::npos);
  Tokenizer b2 = Tokenizer::load_from(base / "bytes");
  CHECK(b2.kind() == Tokenizer::Kind::bytes);
  CHECK(b2.fingerprint() == bytes.fingerprint());

  Tokenizer gpt2 = Tokenizer::load_from(gpt2_dir);
  CHECK(gpt2.kind() == Tokenizer::Kind::gpt2_bpe);
  CHECK(gpt2.vocab_size() == 50257);
  CHECK(gpt2.bos_id() == 50256);
  CHECK(gpt2.eos_id() == 50256);
  CHECK(gpt2.mask_id() == 50257);
  CHECK(gpt2.model_vocab_size() == 50258);
  CHECK(gpt2.encode("Hello, world!") == std::vector<int32_t>{15496, 11, 995, 0});
  CHECK(gpt2.decode(std::vector<int32_t>{15496, 11, 995, 0}) == "Hello, world!");
  CHECK_THROWS_AS(gpt2.decode(std::vector<int32_t>{gpt2.mask_id()}), bd3::Error);
  gpt2.save_to(base / "gpt2");
  Tokenizer g2 = Tokenizer::load_from(base / "gpt2");
  CHECK(g2.fingerprint() == gpt2.fingerprint());
  CHECK(g2.fingerprint() != bytes.fingerprint());

  // Streaming through the wrapper.
  auto ids = gpt2.encode("\xf0\x9f\x99\x82!");
  auto dec = gpt2.stream_decoder();
  std::string out;
  for (int32_t id : ids) out += dec.feed(id);
  CHECK(out + dec.flush() == "\xf0\x9f\x99\x82!");

  // One directory holds one kind of tokenizer.
  CHECK_THROWS_AS(bytes.save_to(base / "gpt2"), bd3::Error);
  CHECK_THROWS_AS(gpt2.save_to(base / "bytes"), bd3::Error);
  CHECK(error_of([&] { Tokenizer::load_from(base / "nothing"); }).find("does not exist") !=
        std::string::npos);
  fs::create_directories(base / "empty");
  CHECK(error_of([&] { Tokenizer::load_from(base / "empty"); }).find("no tokenizer") !=
        std::string::npos);
  fs::create_directories(base / "bad");
  std::ofstream(base / "bad" / "tokenizer.json") << "{\"type\": \"words\"}";
  CHECK(error_of([&] { Tokenizer::load_from(base / "bad"); }).find("unknown tokenizer type") !=
        std::string::npos);
  std::ofstream(base / "bad" / "tokenizer.json") << "{\"type\": ";
  CHECK(error_of([&] { Tokenizer::load_from(base / "bad"); }).find("malformed JSON") !=
        std::string::npos);
  fs::remove_all(base);
}
