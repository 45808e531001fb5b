#pragma once
// GPT-2's pre-tokenizer: the text is cut into pieces by GPT-2's regular expression
// (PCRE2, UTF + UCP, JIT-compiled when available) and BPE runs inside each piece.
//
// Invalid UTF-8: the regular expression only sees valid UTF-8. The input is split into
// maximal runs of valid UTF-8 and maximal runs of bytes that start no valid character;
// every valid run is cut by the expression as if it were a whole text, and every invalid
// run is one piece of its own (BPE merges still apply inside it). So any byte string has
// an encoding, valid UTF-8 is encoded exactly as GPT-2 does, and decoding gives back the
// input bytes.
#include <bd3/error.hpp>
#include <bd3/text/detail/utf8.hpp>

// PCRE2's header requires the code unit width to be chosen before it is included.
#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace bd3::text::detail {

inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class Pretokenizer {
 public:
  // Per-thread match state; create one per thread (or per call) and reuse it.
  class Matcher {
   public:
    explicit Matcher(const Pretokenizer& p)
        : data_(pcre2_match_data_create_from_pattern(p.code_, nullptr)) {
      if (data_ == nullptr) throw std::bad_alloc();
    }
    Matcher(Matcher&& o) noexcept : data_(o.data_) { o.data_ = nullptr; }
    Matcher& operator=(Matcher&&) = delete;
    Matcher(const Matcher&) = delete;
    ~Matcher() { pcre2_match_data_free(data_); }

   private:
    friend class Pretokenizer;
    pcre2_match_data* data_;
  };

  explicit Pretokenizer(std::string_view pattern = kGpt2Pattern) {
    int code = 0;
    PCRE2_SIZE offset = 0;
    // Anchored: every character matches some alternative, so each match starts where the
    // previous one ended; anchoring makes that explicit and spares the scan ahead.
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &code, &offset, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR buffer[256];
      pcre2_get_error_message(code, buffer, sizeof buffer);
      fail("cannot compile the pre-tokenizer pattern at offset " + std::to_string(offset) + ": " +
           reinterpret_cast<const char*>(buffer));
    }
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  Pretokenizer(const Pretokenizer&) = delete;
  Pretokenizer& operator=(const Pretokenizer&) = delete;
  ~Pretokenizer() { pcre2_code_free(code_); }

  bool jit() const { return jit_; }

  // Calls f(piece) for every piece of `text`, in order; the pieces concatenate to text.
  template <class F>
  void for_each_piece(std::string_view text, Matcher& m, F&& f) const {
    for_each_utf8_run(
        text, [&](std::string_view run) { split_valid(run, m, f); },
        [&](std::string_view run) { f(run); });
  }

 private:
  template <class F>
  void split_valid(std::string_view run, Matcher& m, F& f) const {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(run.data());
    const size_t n = run.size();
    size_t offset = 0;
    while (offset < n) {
      const int rc =
          jit_ ? pcre2_jit_match(code_, subject, n, offset, 0, m.data_, nullptr)
               : pcre2_match(code_, subject, n, offset, PCRE2_NO_UTF_CHECK, m.data_, nullptr);
      size_t end = 0;
      if (rc > 0) {
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(m.data_);
        if (ov[0] == offset && ov[1] > offset && ov[1] <= n) end = ov[1];
      }
      // Cannot happen with GPT-2's pattern (it matches every character); a resource limit
      // of the regex engine would land here, and one character per piece keeps going.
      if (end == 0)
        end = offset + utf8_char_length(reinterpret_cast<const unsigned char*>(run.data()) + offset,
                                        n - offset);
      f(run.substr(offset, end - offset));
      offset = end;
    }
  }

  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

// The process-wide GPT-2 pre-tokenizer (compiled once; immutable and thread-safe).
inline const Pretokenizer& gpt2_pretokenizer() {
  static const Pretokenizer instance;
  return instance;
}

inline bool is_graphic_ascii(char c) {
  return c >= '!' && c <= '~';
}

// Cuts text into chunks of about `target` bytes (or more) at positions where encoding
// the chunks one by one gives the same pieces as encoding the whole text: just after a
// "\n" that has a printable ASCII character on both sides. There the newline is a piece
// of its own either way ("\s+" in the whole text, "\s+(?!\S)" at a chunk's end), nothing
// before it looks past it, and a fresh match starts right after it.
inline std::vector<std::string_view> split_at_safe_boundaries(std::string_view text,
                                                              size_t target) {
  std::vector<std::string_view> chunks;
  if (target == 0) target = 1;
  size_t start = 0;
  const size_t n = text.size();
  while (n - start > target) {
    size_t search = start + target, cut = std::string_view::npos;
    while (search < n) {
      const size_t nl = text.find('\n', search);
      if (nl == std::string_view::npos) break;
      if (nl >= 1 && nl + 1 < n && is_graphic_ascii(text[nl - 1]) &&
          is_graphic_ascii(text[nl + 1])) {
        cut = nl + 1;
        break;
      }
      search = nl + 1;
    }
    if (cut == std::string_view::npos) break;
    chunks.push_back(text.substr(start, cut - start));
    start = cut;
  }
  if (start < n || chunks.empty()) chunks.push_back(text.substr(start));
  return chunks;
}

}  // namespace bd3::text::detail
