#pragma once
// UTF-8 helpers for the tokenizers: strict validation (no overlongs, no surrogates, nothing
// above U+10FFFF), splitting bytes into maximal valid and invalid runs, and finding where
// a byte stream stops being complete characters (for streaming decode).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace bd3::text::detail {

// Length (1..4) of the valid UTF-8 character starting at p[0], or 0 when the bytes there
// do not form one: a stray continuation byte, an overlong form, a surrogate, a code point
// above U+10FFFF, or a sequence cut short by the end of the buffer.
inline size_t utf8_char_length(const unsigned char* p, size_t n) {
  const unsigned c = p[0];
  if (c < 0x80) return 1;
  if (c < 0xC2) return 0;
  if (c < 0xE0) return n >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
  if (c < 0xF0) {
    if (n < 3) return 0;
    const unsigned lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    return p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80 ? 3 : 0;
  }
  if (c < 0xF5) {
    if (n < 4) return 0;
    const unsigned lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    return p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80 && (p[3] & 0xC0) == 0x80 ? 4 : 0;
  }
  return 0;
}

inline bool is_valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0, n = s.size(); i < n;) {
    size_t len = utf8_char_length(p + i, n - i);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

// Calls on_valid(run) and on_invalid(run), in text order, for the maximal runs of valid
// UTF-8 and of bytes that start no valid character. Empty runs are never reported.
template <class OnValid, class OnInvalid>
void for_each_utf8_run(std::string_view s, OnValid&& on_valid, OnInvalid&& on_invalid) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t start = 0, i = 0;
  bool in_valid = true;
  while (i < n) {
    if (in_valid && i + 8 <= n) {  // ASCII is the common case: skip 8 bytes at a time
      uint64_t word;
      std::memcpy(&word, p + i, 8);
      if ((word & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    const size_t len = utf8_char_length(p + i, n - i);
    if ((len != 0) != in_valid) {
      if (i > start) {
        if (in_valid)
          on_valid(s.substr(start, i - start));
        else
          on_invalid(s.substr(start, i - start));
      }
      start = i;
      in_valid = len != 0;
    }
    i += len != 0 ? len : 1;
  }
  if (n > start) {
    if (in_valid)
      on_valid(s.substr(start));
    else
      on_invalid(s.substr(start));
  }
}

// How many leading bytes of s can be released by a streaming decoder: everything except
// a trailing, still incomplete prefix of a valid multi-byte character (at most 3 bytes).
// Bytes that can never become part of a valid character are released at once.
inline size_t utf8_complete_prefix(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const unsigned c = p[n - back];
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: its lead is further back
    const size_t need = c >= 0xF5 ? 0 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
    if (need <= back) return n;  // complete, or not a lead byte at all
    if (back >= 2) {             // the second byte narrows the range for some leads
      const unsigned c1 = p[n - back + 1];
      const unsigned lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
      const unsigned hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
      if (c1 < lo || c1 > hi) return n;
    }
    return n - back;
  }
  return n;
}

}  // namespace bd3::text::detail
