#pragma once
// Tokenizer: the byte tokenizer or a GPT-2 byte-level BPE behind one value type, and how
// a model checkpoint directory records which one it uses:
//   - BPE:   DIR/vocab.json + DIR/merges.txt (GPT-2's formats) with Hugging Face's
//            tokenizer.json, tokenizer_config.json and special_tokens_map.json; only the
//            Hugging Face files when it has special tokens other than <|endoftext|>
//            (Gpt2Tokenizer::save);
//   - bytes: DIR/tokenizer.json containing {"type":"bytes"}.
// load_from() also accepts a Hugging Face tokenizer.json of a byte-level BPE model.
//
// The model's vocabulary is the tokenizer's plus the absorbing MASK token, which takes
// the last id: mask_id() == vocab_size() and model_vocab_size() == vocab_size() + 1.
// The byte tokenizer already has MASK (258) in its vocabulary of 259, so for it
// mask_id() == 258 and model_vocab_size() == 259.
#include <bd3/error.hpp>
#include <bd3/io/atomic_file.hpp>
#include <bd3/io/json.hpp>
#include <bd3/text/byte_tokenizer.hpp>
#include <bd3/text/detail/files.hpp>
#include <bd3/text/gpt2_tokenizer.hpp>
#include <bd3/text/streaming.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace bd3::text {

class Tokenizer {
  std::variant<ByteTokenizer, Gpt2Tokenizer> impl_;

  // Defined before its uses: its return type is deduced.
  template <class F>
  decltype(auto) visit(F&& f) const {
    return std::visit(std::forward<F>(f), impl_);
  }

 public:
  enum class Kind { bytes, gpt2_bpe };
  using StreamDecoder = StreamingDecoder<Tokenizer>;

  Tokenizer() : impl_(ByteTokenizer{}) {}
  Tokenizer(ByteTokenizer t) : impl_(t) {}             // NOLINT: a tokenizer is a tokenizer
  Tokenizer(Gpt2Tokenizer t) : impl_(std::move(t)) {}  // NOLINT
  static Tokenizer bytes() { return Tokenizer(ByteTokenizer{}); }

  Kind kind() const { return impl_.index() == 0 ? Kind::bytes : Kind::gpt2_bpe; }
  std::string_view kind_name() const { return kind() == Kind::bytes ? "bytes" : "gpt2-bpe"; }
  // The BPE tokenizer, or nullptr for the byte tokenizer.
  const Gpt2Tokenizer* gpt2() const { return std::get_if<Gpt2Tokenizer>(&impl_); }

  int32_t vocab_size() const {
    return visit([](auto& t) { return t.vocab_size(); });
  }
  int32_t bos_id() const {
    return visit([](auto& t) { return t.bos_id(); });
  }
  int32_t eos_id() const {
    return visit([](auto& t) { return t.eos_id(); });
  }
  int32_t mask_id() const { return kind() == Kind::bytes ? ByteTokenizer::kMask : vocab_size(); }
  int32_t model_vocab_size() const { return mask_id() + 1; }
  bool is_special(int32_t id) const {
    return visit([&](auto& t) { return t.is_special(id); });
  }
  // Changes whenever the ids of any text could change (used to detect stale caches).
  const std::string& fingerprint() const {
    return visit([](auto& t) -> const std::string& { return t.fingerprint(); });
  }

  std::vector<int32_t> encode(std::string_view bytes, bool allow_special = false) const {
    return visit([&](auto& t) { return t.encode(bytes, allow_special); });
  }
  // Same ids as encode(), on several threads for large texts.
  std::vector<int32_t> encode_parallel(std::string_view bytes, bool allow_special = false,
                                       int threads = 0) const {
    if (auto* g = gpt2()) return g->encode_parallel(bytes, allow_special, threads);
    return ByteTokenizer{}.encode(bytes, allow_special);
  }
  std::vector<std::vector<int32_t>> encode_batch(std::span<const std::string_view> texts,
                                                 bool allow_special = false,
                                                 int threads = 0) const {
    if (auto* g = gpt2()) return g->encode_batch(texts, allow_special, threads);
    std::vector<std::vector<int32_t>> out;
    out.reserve(texts.size());
    for (auto t : texts) out.push_back(ByteTokenizer{}.encode(t, allow_special));
    return out;
  }
  std::string decode(std::span<const int32_t> ids) const {
    return visit([&](auto& t) { return t.decode(ids); });
  }
  void append_token_bytes(int32_t id, std::string& out) const {
    visit([&](auto& t) { t.append_token_bytes(id, out); });
  }
  StreamDecoder stream_decoder() const { return StreamDecoder(*this); }

  // Records this tokenizer in a checkpoint directory (created if needed). Refuses a
  // directory that already records the other kind of tokenizer.
  void save_to(const std::filesystem::path& dir) const {
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) fail_io("cannot create directory " + dir.string() + ": " + ec.message());
    if (kind() == Kind::bytes) {
      if (fs::exists(dir / "vocab.json") || fs::exists(dir / "merges.txt"))
        fail(dir.string() + " already holds a BPE tokenizer (vocab.json, merges.txt)");
      io::write_file_atomic(dir / "tokenizer.json", "{\"type\":\"bytes\"}\n");
    } else {
      if (is_bytes_marker(dir / "tokenizer.json"))
        fail(dir.string() + " already holds a byte tokenizer (tokenizer.json)");
      gpt2()->save(dir);
    }
  }

  static Tokenizer load_from(const std::filesystem::path& dir) {
    namespace fs = std::filesystem;
    if (!fs::is_directory(dir)) fail("tokenizer directory " + dir.string() + " does not exist");
    const bool has_bpe = fs::exists(dir / "vocab.json") && fs::exists(dir / "merges.txt");
    if (is_bytes_marker(dir / "tokenizer.json")) {
      if (has_bpe)
        fail(dir.string() + " holds both a byte tokenizer marker and vocab.json + merges.txt");
      return bytes();
    }
    if (has_bpe) return Gpt2Tokenizer::from_files(dir / "vocab.json", dir / "merges.txt");
    if (fs::exists(dir / "tokenizer.json"))
      return Gpt2Tokenizer::from_tokenizer_json(dir / "tokenizer.json");
    fail(dir.string() + " has no tokenizer (expected vocab.json + merges.txt, or tokenizer.json)");
  }

 private:
  // True when path is our {"type":"bytes"} marker; false when absent or another JSON
  // document (e.g. a Hugging Face tokenizer.json); bd3::Error when it is not JSON.
  static bool is_bytes_marker(const std::filesystem::path& path) {
    if (!std::filesystem::exists(path)) return false;
    // The marker is a few bytes; a BPE's tokenizer.json (written next to vocab.json and
    // merges.txt) holds its whole vocabulary and need not be parsed to tell.
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    if (!ec && size > 4096) return false;
    const std::string text = detail::read_file(path, kMaxTokenizerFileBytes, "tokenizer file");
    io::check_json_depth(text, path.string());
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      fail(path.string() + ": malformed JSON: " + e.what());
    }
    if (!j.is_object()) fail(path.string() + ": expected a JSON object");
    auto type = j.find("type");
    if (type == j.end()) return false;
    if (*type == "bytes") return true;
    fail(path.string() + ": unknown tokenizer type " + type->dump());
  }
};

}  // namespace bd3::text
