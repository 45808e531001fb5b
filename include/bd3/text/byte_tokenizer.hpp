#pragma once
// The byte tokenizer: ids 0..255 are the bytes themselves, 256 = BOS, 257 = EOS and
// 258 = MASK (vocabulary 259). Any byte string encodes and decodes back exactly.
// With allow_special, the texts "<|bos|>" and "<|eos|>" become BOS and EOS; decode shows
// the three special ids as "<|bos|>", "<|eos|>" and "<|mask|>".
#include <bd3/error.hpp>
#include <bd3/text/streaming.hpp>

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace bd3::text {

class ByteTokenizer {
 public:
  using StreamDecoder = StreamingDecoder<ByteTokenizer>;
  static constexpr int32_t kBos = 256;
  static constexpr int32_t kEos = 257;
  static constexpr int32_t kMask = 258;
  static constexpr int32_t kVocabSize = 259;

  int32_t vocab_size() const { return kVocabSize; }
  int32_t bos_id() const { return kBos; }
  int32_t eos_id() const { return kEos; }
  int32_t mask_id() const { return kMask; }
  bool is_special(int32_t id) const { return id >= 256 && id < kVocabSize; }
  const std::string& fingerprint() const {
    static const std::string kFingerprint = "bytes-259-v1";
    return kFingerprint;
  }

  static std::string_view special_text(int32_t id) {
    static constexpr std::array<std::string_view, 3> kText = {"<|bos|>", "<|eos|>", "<|mask|>"};
    return kText[static_cast<size_t>(id - 256)];
  }

  std::vector<int32_t> encode(std::string_view bytes, bool allow_special = false) const {
    std::vector<int32_t> out;
    out.reserve(bytes.size());
    for (size_t i = 0; i < bytes.size(); ++i) {
      if (allow_special && bytes[i] == '<') {
        const std::string_view rest = bytes.substr(i);
        if (rest.starts_with(special_text(kBos))) {
          out.push_back(kBos);
          i += special_text(kBos).size() - 1;
          continue;
        }
        if (rest.starts_with(special_text(kEos))) {
          out.push_back(kEos);
          i += special_text(kEos).size() - 1;
          continue;
        }
      }
      out.push_back(static_cast<unsigned char>(bytes[i]));
    }
    return out;
  }

  void append_token_bytes(int32_t id, std::string& out) const {
    check(id);
    if (id < 256)
      out.push_back(static_cast<char>(id));
    else
      out += special_text(id);
  }

  std::string decode(std::span<const int32_t> ids) const {
    for (int32_t id : ids) check(id);
    std::string out;
    out.reserve(ids.size());
    for (int32_t id : ids) append_token_bytes(id, out);
    return out;
  }

  StreamDecoder stream_decoder() const { return StreamDecoder(*this); }

 private:
  static void check(int32_t id) {
    if (id < 0 || id >= kVocabSize)
      fail("token id " + std::to_string(id) + " is out of range (vocabulary size " +
           std::to_string(kVocabSize) + ")");
  }
};

}  // namespace bd3::text
