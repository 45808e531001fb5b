#pragma once
// GPT-2's byte-level alphabet: every byte is shown as one printable Unicode character so
// that vocab.json and merges.txt are text. Printable Latin-1 bytes stand for themselves;
// the other 68 bytes (controls, space, 0x7F-0xA0, 0xAD) map, in byte order, to U+0100...
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace bd3::text::detail {

struct ByteLevelAlphabet {
  std::array<char32_t, 256> code_point{};  // byte -> code point
  std::array<std::string, 256> utf8;       // byte -> its character, UTF-8 encoded
  std::array<int16_t, 512> byte{};         // code point (< 512) -> byte, or -1
  std::array<uint8_t, 256> gpt2_order{};   // GPT-2's token id i (< 256) -> its byte
};

inline bool byte_stands_for_itself(unsigned b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

inline const ByteLevelAlphabet& byte_level_alphabet() {
  static const ByteLevelAlphabet alphabet = [] {
    ByteLevelAlphabet a;
    a.byte.fill(-1);
    char32_t next = 256;
    int id = 0;
    // GPT-2 numbers its byte tokens printable bytes first, then the remapped ones.
    for (unsigned b = 0; b < 256; ++b)
      if (byte_stands_for_itself(b)) a.gpt2_order[id++] = static_cast<uint8_t>(b);
    for (unsigned b = 0; b < 256; ++b) {
      char32_t cp = byte_stands_for_itself(b) ? char32_t(b) : next++;
      if (!byte_stands_for_itself(b)) a.gpt2_order[id++] = static_cast<uint8_t>(b);
      a.code_point[b] = cp;
      a.byte[cp] = static_cast<int16_t>(b);
      std::string& s = a.utf8[b];
      if (cp < 0x80) {
        s.push_back(static_cast<char>(cp));
      } else {  // all code points here are below U+0800: two bytes
        s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
    }
    return a;
  }();
  return alphabet;
}

// Raw bytes -> their byte-level text (as in vocab.json / merges.txt).
inline std::string to_byte_level(std::string_view bytes) {
  const auto& a = byte_level_alphabet();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += a.utf8[b];
  return out;
}

// Byte-level text -> raw bytes. Returns false when the text holds a character outside
// the alphabet (or is not UTF-8).
inline bool from_byte_level(std::string_view text, std::string& out) {
  const auto& a = byte_level_alphabet();
  out.clear();
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    char32_t cp;
    if (c < 0x80) {
      cp = c;
      i += 1;
    } else if (c >= 0xC2 && c < 0xE0 && i + 1 < text.size() &&
               (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80) {
      cp = (char32_t(c & 0x1F) << 6) | (static_cast<unsigned char>(text[i + 1]) & 0x3F);
      i += 2;
    } else {
      return false;  // three- and four-byte characters are never in the alphabet
    }
    if (cp >= a.byte.size() || a.byte[cp] < 0) return false;
    out.push_back(static_cast<char>(a.byte[cp]));
  }
  return true;
}

}  // namespace bd3::text::detail
