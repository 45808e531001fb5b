#pragma once
// Streaming decode: ids arrive one at a time (e.g. from a sampler) and only complete
// UTF-8 characters are released, so a multi-byte character split across tokens is never
// printed half. Bytes that can never complete a character are released as they are, so
// the concatenation of every feed() and the final flush() equals decode(all ids).
#include <bd3/text/detail/utf8.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <utility>

namespace bd3::text {

// Tok provides append_token_bytes(int32_t id, std::string& out) (throwing bd3::Error for an
// id out of range, before appending anything). Tok is held by value: both tokenizers are
// cheap to copy.
template <class Tok>
class StreamingDecoder {
 public:
  explicit StreamingDecoder(Tok tokenizer) : tokenizer_(std::move(tokenizer)) {}

  // Adds one id; returns the bytes that are now complete characters (maybe empty).
  std::string feed(int32_t id) {
    tokenizer_.append_token_bytes(id, pending_);
    return release();
  }
  std::string feed(std::span<const int32_t> ids) {
    for (int32_t id : ids) tokenizer_.append_token_bytes(id, pending_);
    return release();
  }
  // Returns whatever is held back (an incomplete character at the end of the stream).
  std::string flush() {
    std::string rest;
    rest.swap(pending_);
    return rest;
  }
  size_t pending_bytes() const { return pending_.size(); }

 private:
  std::string release() {
    const size_t n = detail::utf8_complete_prefix(pending_);
    std::string out = pending_.substr(0, n);
    pending_.erase(0, n);
    return out;
  }

  Tok tokenizer_;
  std::string pending_;
};

}  // namespace bd3::text
