// GPT-2 byte-level BPE: the reference cases, invalid UTF-8, huge inputs, streaming,
// special tokens, parallel encode and loader validation.
#include <bd3/text/gpt2_tokenizer.hpp>

#include <sys/resource.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

using bd3::text::Gpt2Tokenizer;
namespace fs = std::filesystem;

const fs::path kGpt2Dir = fs::path(BD3_FIXTURES_DIR) / "gpt2";

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

const Gpt2Tokenizer& gpt2() {
  static const Gpt2Tokenizer tok =
      Gpt2Tokenizer::from_files(kGpt2Dir / "vocab.json", kGpt2Dir / "merges.txt");
  return tok;
}

struct Case {
  std::string text;
  std::vector<int32_t> ids;
};

std::vector<Case> cases() {
  auto j = nlohmann::json::parse(slurp(kGpt2Dir / "cases.json"));
  std::vector<Case> out;
  for (auto& c : j.at("cases"))
    out.push_back({c.at("text").get<std::string>(), c.at("ids").get<std::vector<int32_t>>()});
  return out;
}

std::string random_bytes(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xFF);
  return s;
}

// Text that mixes ASCII words, whitespace runs, UTF-8 of 2-4 bytes and invalid bytes.
std::string mixed_text(std::mt19937_64& rng, size_t n) {
  static const char* kParts[] = {"the",
                                 " The",
                                 " of",
                                 "  ",
                                 "\n",
                                 "\n\n",
                                 " 123",
                                 "'s",
                                 "'ll",
                                 " caf\xc3\xa9",
                                 " \xe6\xbc\xa2\xe5\xad\x97",
                                 "\xf0\x9f\x99\x82",
                                 "!!",
                                 " --",
                                 "\t",
                                 "\r\n",
                                 "\xff",
                                 "\xe2\x82",
                                 " \xc3",
                                 "x",
                                 "   ",
                                 "\xc2\xa0",
                                 "\xe3\x80\x80",
                                 "\n ",
                                 "A.",
                                 "zz"};
  std::string s;
  while (s.size() < n) s += kParts[rng() % (sizeof kParts / sizeof *kParts)];
  return s;
}

long max_rss_kb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
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

TEST_CASE("gpt2: every reference case encodes to its ids and decodes back", "[text][gpt2]") {
  const auto& tok = gpt2();
  CHECK(tok.vocab_size() == 50257);
  CHECK(tok.end_of_text_id() == 50256);
  CHECK(tok.bos_id() == 50256);
  CHECK(tok.eos_id() == 50256);
  auto all = cases();
  REQUIRE(all.size() >= 10);
  for (const auto& c : all) {
    INFO("text: " << c.text);
    CHECK(tok.encode(c.text) == c.ids);
    CHECK(tok.decode(c.ids) == c.text);
  }
}

TEST_CASE("gpt2: a Hugging Face tokenizer.json of the same model gives the same ids",
          "[text][gpt2]") {
  auto vocab = nlohmann::json::parse(slurp(kGpt2Dir / "vocab.json"));
  std::string merges_text = slurp(kGpt2Dir / "merges.txt");
  nlohmann::json string_merges = nlohmann::json::array(), list_merges = nlohmann::json::array();
  std::istringstream lines(merges_text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line.starts_with("#version")) continue;
    string_merges.push_back(line);
    auto sp = line.find(' ');
    list_merges.push_back({line.substr(0, sp), line.substr(sp + 1)});
  }
  for (auto* merges : {&string_merges, &list_merges}) {
    nlohmann::json root = {
        {"version", "1.0"},
        {"added_tokens", {{{"id", 50256}, {"content", "<|endoftext|>"}, {"special", true}}}},
        {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", *merges}}}};
    auto tok = Gpt2Tokenizer::from_tokenizer_json_string(root.dump());
    CHECK(tok.fingerprint() == gpt2().fingerprint());
    for (const auto& c : cases()) CHECK(tok.encode(c.text) == c.ids);
    CHECK(tok.encode("<|endoftext|>", true) == std::vector<int32_t>{50256});
  }
}

TEST_CASE("gpt2: empty input", "[text][gpt2]") {
  CHECK(gpt2().encode("").empty());
  CHECK(gpt2().encode("", true).empty());
  CHECK(gpt2().decode({}).empty());
  CHECK(gpt2().encode_parallel("").empty());
}

TEST_CASE("gpt2: arbitrary bytes, invalid UTF-8 included, round-trip exactly", "[text][gpt2]") {
  const auto& tok = gpt2();
  std::mt19937_64 rng(1234);
  for (size_t n : {1, 2, 3, 7, 64, 65, 300, 5000, 100000}) {
    for (int rep = 0; rep < 3; ++rep) {
      std::string b = random_bytes(rng, n);
      auto ids = tok.encode(b);
      for (int32_t id : ids) REQUIRE((id >= 0 && id < tok.vocab_size()));
      REQUIRE(tok.decode(ids) == b);
      std::string m = mixed_text(rng, n);
      REQUIRE(tok.decode(tok.encode(m)) == m);
    }
  }
  // Every single byte is one token.
  for (int b = 0; b < 256; ++b) {
    std::string s(1, static_cast<char>(b));
    auto ids = tok.encode(s);
    REQUIRE(ids.size() == 1);
    CHECK(tok.decode(ids) == s);
  }
}

TEST_CASE("gpt2: invalid UTF-8 runs are pieces of their own", "[text][gpt2]") {
  const auto& tok = gpt2();
  // The valid text around an invalid byte is encoded as if the byte were a boundary.
  auto hello = tok.encode("Hello");
  auto world = tok.encode(" world");
  auto ff = tok.encode("\xff");
  REQUIRE(ff.size() == 1);
  std::vector<int32_t> expected = hello;
  expected.push_back(ff[0]);
  expected.insert(expected.end(), world.begin(), world.end());
  CHECK(tok.encode("Hello\xff world") == expected);
  // A truncated character at the end, a stray continuation byte, an overlong form and a
  // UTF-16 surrogate are all kept byte for byte.
  for (std::string s :
       {std::string("caf\xc3"), std::string("\x80\x80 a"), std::string("\xc0\xaf"),
        std::string("\xed\xa0\x80x"), std::string("\xf4\x90\x80\x80"), std::string("a\0b", 3)})
    CHECK(tok.decode(tok.encode(s)) == s);
}

TEST_CASE("gpt2: a 16 MB line and 3 MB of spaces encode fast with flat memory",
          "[text][gpt2][large]") {
  const auto& tok = gpt2();
  std::mt19937_64 rng(7);
  std::string line;
  line.reserve(16u << 20);
  static const char* kWords[] = {"the", "and", "of", "LORD", "unto",        "caf\xc3\xa9",
                                 "42",  "!!",  "x",  "it's", "\xe6\xbc\xa2"};
  while (line.size() < (16u << 20)) {
    line += kWords[rng() % 11];
    line += (rng() % 8 == 0) ? "  " : " ";
  }
  const long rss0 = max_rss_kb();
  auto t0 = std::chrono::steady_clock::now();
  auto ids = tok.encode(line);
  const double line_seconds = seconds_since(t0);
  CHECK(line_seconds < 20);
  CHECK(tok.decode(ids) == line);
  ids = {};
  // One piece of 3 MB: the heap-based merge loop, no quadratic work.
  std::string spaces(3u << 20, ' ');
  t0 = std::chrono::steady_clock::now();
  auto sids = tok.encode(spaces);
  const double spaces_seconds = seconds_since(t0);
  CHECK(spaces_seconds < 20);
  CHECK(tok.decode(sids) == spaces);
  // One piece of 2 MB of a single letter.
  std::string letters(2u << 20, 'a');
  t0 = std::chrono::steady_clock::now();
  auto lids = tok.encode(letters);
  CHECK(seconds_since(t0) < 20);
  CHECK(tok.decode(lids) == letters);
  const long grown_mb = (max_rss_kb() - rss0) / 1024;
  INFO("16 MB line " << line_seconds << " s, 3 MB spaces " << spaces_seconds << " s, peak +"
                     << grown_mb << " MB");
  CHECK(grown_mb < 512);
}

TEST_CASE("gpt2: streaming decode holds back a character split across tokens", "[text][gpt2]") {
  const auto& tok = gpt2();
  const std::string text = "Emoji: \xf0\x9f\x99\x82 and \xe6\xbc\xa2\xe5\xad\x97!";
  auto ids = tok.encode(text);
  // The emoji is split across tokens: some token ends inside it.
  bool split_seen = false;
  auto dec = tok.stream_decoder();
  std::string streamed;
  for (int32_t id : ids) {
    std::string out = dec.feed(id);
    CHECK(bd3::text::detail::is_valid_utf8(out));
    split_seen |= dec.pending_bytes() > 0;
    streamed += out;
  }
  CHECK(split_seen);
  CHECK(dec.pending_bytes() == 0);
  streamed += dec.flush();
  CHECK(streamed == text);

  // The emoji alone: nothing comes out until its last byte is in.
  auto emoji = tok.encode("\xf0\x9f\x99\x82");
  REQUIRE(emoji.size() >= 2);
  auto d2 = tok.stream_decoder();
  for (size_t i = 0; i + 1 < emoji.size(); ++i) CHECK(d2.feed(emoji[i]).empty());
  CHECK(d2.feed(emoji.back()) == "\xf0\x9f\x99\x82");

  // A stream cut inside a character: flush returns the rest.
  auto d3 = tok.stream_decoder();
  CHECK(d3.feed(emoji[0]).empty());
  CHECK(d3.flush() == tok.decode(std::span<const int32_t>(emoji.data(), 1)));

  // Random text and bytes: the pieces always concatenate to decode().
  std::mt19937_64 rng(99);
  for (int rep = 0; rep < 20; ++rep) {
    std::string s = rep % 2 ? mixed_text(rng, 500) : random_bytes(rng, 200);
    auto sids = tok.encode(s);
    auto d = tok.stream_decoder();
    std::string acc;
    for (size_t i = 0; i < sids.size();) {
      const size_t k = std::min<size_t>(sids.size() - i, 1 + rng() % 3);
      acc += d.feed(std::span<const int32_t>(sids.data() + i, k));
      i += k;
    }
    CHECK(acc + d.flush() == s);
    auto d4 = tok.stream_decoder();
    std::string acc2;
    for (int32_t id : sids) acc2 += d4.feed(id);
    acc2 += d4.flush();
    CHECK(acc2 == s);
  }
}

TEST_CASE("gpt2: <|endoftext|> is special only with allow_special", "[text][gpt2]") {
  const auto& tok = gpt2();
  CHECK(tok.encode("<|endoftext|>", true) == std::vector<int32_t>{50256});
  auto plain = tok.encode("<|endoftext|>");
  CHECK(plain.size() > 1);
  CHECK(std::find(plain.begin(), plain.end(), 50256) == plain.end());
  auto a = tok.encode("Hello"), b = tok.encode(" world");
  std::vector<int32_t> expected = a;
  expected.push_back(50256);
  expected.insert(expected.end(), b.begin(), b.end());
  expected.push_back(50256);
  expected.push_back(50256);
  CHECK(tok.encode("Hello<|endoftext|> world<|endoftext|><|endoftext|>", true) == expected);
  CHECK(tok.decode(std::vector<int32_t>{50256}) == "<|endoftext|>");
  CHECK(tok.is_special(50256));
  CHECK_FALSE(tok.is_special(0));
  CHECK(tok.decode(tok.encode("x<|endoftext|>y", true)) == "x<|endoftext|>y");
}

TEST_CASE("gpt2: ids out of range are errors naming the id", "[text][gpt2]") {
  const auto& tok = gpt2();
  CHECK(error_of([&] {
          tok.decode(std::vector<int32_t>{1, 50257});
        }).find("50257") != std::string::npos);
  CHECK(error_of([&] { tok.decode(std::vector<int32_t>{-3}); }).find("-3") != std::string::npos);
  auto dec = tok.stream_decoder();
  CHECK_THROWS_AS(dec.feed(99999), bd3::Error);
  CHECK_THROWS_AS(tok.token_bytes(50257), bd3::Error);
}

TEST_CASE("gpt2: parallel encode gives the serial ids", "[text][gpt2]") {
  const auto& tok = gpt2();
  std::mt19937_64 rng(5);
  std::string text;
  while (text.size() < (3u << 20)) {
    text += mixed_text(rng, 200);
    text += ".\nAnd the Lord said, \n";
  }
  auto serial = tok.encode(text);
  for (int threads : {1, 2, 3}) CHECK(tok.encode_parallel(text, false, threads) == serial);
  text += "<|endoftext|>tail";
  CHECK(tok.encode_parallel(text, true, 2) == tok.encode(text, true));
  // Batch encode matches one by one.
  std::vector<std::string_view> texts = {"a", "", "Hello, world!",
                                         std::string_view(text).substr(0, 1000)};
  auto batch = tok.encode_batch(texts, false, 2);
  for (size_t i = 0; i < texts.size(); ++i) CHECK(batch[i] == tok.encode(texts[i]));
}

TEST_CASE("gpt2: safe boundaries restart the pre-tokenizer identically", "[text][gpt2]") {
  std::mt19937_64 rng(11);
  std::string text = mixed_text(rng, 200000);
  auto chunks = bd3::text::detail::split_at_safe_boundaries(text, 1000);
  CHECK(chunks.size() > 1);
  std::string joined;
  for (auto c : chunks) joined += c;
  CHECK(joined == text);
}

TEST_CASE("gpt2: save writes files that load back to the same tokenizer", "[text][gpt2]") {
  auto dir = fs::temp_directory_path() / "bd3_test_gpt2_save";
  fs::remove_all(dir);
  gpt2().save(dir);
  auto tok = Gpt2Tokenizer::from_files(dir / "vocab.json", dir / "merges.txt");
  CHECK(tok.fingerprint() == gpt2().fingerprint());
  CHECK(tok.encode("Hello, world!") == std::vector<int32_t>{15496, 11, 995, 0});
  fs::remove_all(dir);
}

TEST_CASE("gpt2: malformed tokenizer files are errors, never crashes", "[text][gpt2]") {
  // A tiny valid model: the 256 byte tokens, "ab", <|endoftext|>.
  std::vector<std::string> tokens;
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b)
    vocab[bd3::text::detail::to_byte_level(std::string(1, static_cast<char>(b)))] = b;
  vocab["ab"] = 256;
  vocab["<|endoftext|>"] = 257;
  const std::string good_vocab = vocab.dump();
  const std::string good_merges = "#version: 0.2\na b\n";
  auto tok = Gpt2Tokenizer::from_strings(good_vocab, good_merges);
  CHECK(tok.encode("abab") == std::vector<int32_t>{256, 256});
  CHECK(tok.vocab_size() == 258);

  auto vocab_error = [&](const std::string& v) {
    return error_of([&] { Gpt2Tokenizer::from_strings(v, good_merges); });
  };
  auto merges_error = [&](const std::string& m) {
    return error_of([&] { Gpt2Tokenizer::from_strings(good_vocab, m); });
  };
  auto with = [&](const std::string& key, nlohmann::json value) {
    auto v = vocab;
    v[key] = value;
    return v.dump();
  };
  CHECK(vocab_error("").find("malformed JSON") != std::string::npos);
  CHECK(vocab_error("{\"a\": 1").find("malformed JSON") != std::string::npos);
  CHECK(vocab_error("[1, 2]").find("expected an object") != std::string::npos);
  CHECK(vocab_error("{\"a\": {\"b\": 1}}").find("instead of an integer") != std::string::npos);
  CHECK(vocab_error(with("ab", 999)).find("out of range") != std::string::npos);
  CHECK(vocab_error(with("ab", -1)).find("negative") != std::string::npos);
  CHECK(vocab_error(with("ab", 1.5)).find("fraction") != std::string::npos);
  CHECK(vocab_error(with("ab", "x")).find("a string") != std::string::npos);
  CHECK(vocab_error(with("ab", 5)).find("given to both") != std::string::npos);
  CHECK(vocab_error(good_vocab.substr(0, good_vocab.size() - 1) + ", \"ab\": 258}")
            .find("appears twice") != std::string::npos);
  CHECK(vocab_error(with("ab", 1e10)).find("id") != std::string::npos);
  {
    auto v = vocab;
    v.erase("<|endoftext|>");
    CHECK(vocab_error(v.dump()).find("<|endoftext|>") != std::string::npos);
    v = vocab;
    v.erase("a");
    v["zz"] = 97;  // byte 'a' missing: ids stay dense
    CHECK(error_of([&] {
            Gpt2Tokenizer::from_strings(v.dump(), "");
          }).find("no token for byte 0x61") != std::string::npos);
  }
  CHECK(vocab_error(with("\xe6\xbc\xa2", 258)).find("outside GPT-2's byte alphabet") !=
        std::string::npos);
  CHECK(merges_error("#version: 0.2\nb a\n").find("not in the vocabulary") != std::string::npos);
  CHECK(merges_error("#version: 0.2\na \xc3\xa9\xc3\xa9\n").find("unknown token") !=
        std::string::npos);
  CHECK(merges_error("#version: 0.2\nab\n").find("line 2") != std::string::npos);
  CHECK(merges_error("#version: 0.2\na b c\n").find("one space") != std::string::npos);
  CHECK(merges_error("#version: 0.2\na b\na b\n").find("repeats") != std::string::npos);
  CHECK(merges_error("#version: 0.2\r\na b\r\n").find("(no error)") != std::string::npos);
  // Messages name the file and line (merges.txt) or index (tokenizer.json) of the merge.
  CHECK(merges_error("#version: 0.2\na b\n\nz a\n") ==
        "merges.txt line 4: the merged token \"za\" is not in the vocabulary");
  CHECK(error_of([&] {
          nlohmann::json root = {{"model", {{"vocab", vocab}, {"merges", {"a b", "a qq"}}}}};
          Gpt2Tokenizer::from_tokenizer_json_string(root.dump());
        }) == "tokenizer.json: model.merges[1]: unknown token \"qq\"");
  // One vocabulary read once, paired with several merge tables: the same tokenizers.
  const auto read_tokens = Gpt2Tokenizer::read_vocab_json(good_vocab);
  CHECK(read_tokens.size() == 258);
  CHECK(Gpt2Tokenizer::from_vocab_tokens(read_tokens, good_merges).fingerprint() ==
        tok.fingerprint());
  CHECK(Gpt2Tokenizer::from_vocab_tokens(read_tokens, "").fingerprint() ==
        Gpt2Tokenizer::from_strings(good_vocab, "").fingerprint());

  auto dir = fs::temp_directory_path() / "bd3_test_gpt2_bad";
  fs::create_directories(dir);
  CHECK(error_of([&] {
          Gpt2Tokenizer::from_files(dir / "missing.json", dir / "m.txt");
        }).find("cannot open") != std::string::npos);
  {  // An over-long file is refused from its size, before it is read.
    std::ofstream(dir / "huge.json").put('{');
    fs::resize_file(dir / "huge.json", bd3::text::kMaxTokenizerFileBytes + 1);
    std::ofstream(dir / "merges.txt") << good_merges;
    CHECK(error_of([&] {
            Gpt2Tokenizer::from_files(dir / "huge.json", dir / "merges.txt");
          }).find("too large") != std::string::npos);
  }
  {  // tokenizer.json problems.
    CHECK(error_of([] { Gpt2Tokenizer::from_tokenizer_json_string("{"); }).find("malformed") !=
          std::string::npos);
    CHECK(error_of([] { Gpt2Tokenizer::from_tokenizer_json_string("{}"); }).find("model") !=
          std::string::npos);
    nlohmann::json root = {{"model", {{"type", "WordPiece"}, {"vocab", vocab}}}};
    CHECK(error_of([&] { Gpt2Tokenizer::from_tokenizer_json_string(root.dump()); }).find("BPE") !=
          std::string::npos);
    root = {{"model", {{"vocab", vocab}, {"merges", {"a b", {"a"}}}}}};
    CHECK(error_of([&] {
            Gpt2Tokenizer::from_tokenizer_json_string(root.dump());
          }).find("merges[1]") != std::string::npos);
    root = {{"model", {{"vocab", vocab}, {"merges", {"a b"}}}},
            {"added_tokens", {{{"id", 300}, {"content", "<x>"}}}}};
    CHECK(error_of([&] {
            Gpt2Tokenizer::from_tokenizer_json_string(root.dump());
          }).find("out of range") != std::string::npos);
    root = {{"model", {{"vocab", {{"a", 0}, {"b", 2}}}}},
            {"added_tokens", {{{"id", 2}, {"content", "b"}}}}};
    CHECK(error_of([&] {
            Gpt2Tokenizer::from_tokenizer_json_string(root.dump());
          }).find("no token has id 1") != std::string::npos);
    root = {{"model", {{"vocab", vocab}, {"merges", {"a b"}}}},
            {"added_tokens", {{{"id", 258}, {"content", "<|pad|>"}, {"special", true}}}}};
    auto t = Gpt2Tokenizer::from_tokenizer_json_string(root.dump());
    CHECK(t.vocab_size() == 259);
    CHECK(t.encode("a<|pad|>", true) == std::vector<int32_t>{t.encode("a")[0], 258});
  }
  fs::remove_all(dir);
}

TEST_CASE("gpt2: fingerprints tell tokenizers apart", "[text][gpt2]") {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b)
    vocab[bd3::text::detail::to_byte_level(std::string(1, static_cast<char>(b)))] = b;
  vocab["ab"] = 256;
  vocab["<|endoftext|>"] = 257;
  auto a = Gpt2Tokenizer::from_strings(vocab.dump(), "a b\n");
  auto b = Gpt2Tokenizer::from_strings(vocab.dump(), "a b\n");
  vocab.erase("ab");
  vocab["ba"] = 256;
  auto c = Gpt2Tokenizer::from_strings(vocab.dump(), "b a\n");
  CHECK(a.fingerprint() == b.fingerprint());
  CHECK(a.fingerprint() != c.fingerprint());
  CHECK(a.fingerprint() != gpt2().fingerprint());
}
