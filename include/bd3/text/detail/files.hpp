#pragma once
// Small helpers shared by the text module: bounded whole-file reads, a 64-bit content
// hash for fingerprints, and quoting of untrusted strings inside one-line messages.
#include <bd3/error.hpp>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>

namespace bd3::text::detail {

// Reads a whole file. Files larger than max_bytes are refused before anything is read,
// so a hostile size never turns into an allocation.
inline std::string read_file(const std::filesystem::path& path, uint64_t max_bytes,
                             std::string_view what) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr)
    fail_io("cannot open " + std::string(what) + " " + path.string() + ": " + std::strerror(errno));
  std::string data;
  try {
    if (std::fseek(f, 0, SEEK_END) != 0) fail_io("cannot seek in " + path.string());
    const long size = std::ftell(f);
    if (size < 0) fail_io("cannot read " + path.string() + " (not a regular file?)");
    if (static_cast<uint64_t>(size) > max_bytes)
      fail(std::string(what) + " " + path.string() + " is too large (" + std::to_string(size) +
           " bytes; the limit is " + std::to_string(max_bytes) + ")");
    std::rewind(f);
    data.resize(static_cast<size_t>(size));
    if (size > 0 && std::fread(data.data(), 1, data.size(), f) != data.size())
      fail_io("cannot read " + path.string() + ": " + std::strerror(errno));
  } catch (...) {
    std::fclose(f);
    throw;
  }
  std::fclose(f);
  return data;
}

// A 64-bit hash of a byte string, 8 bytes per step (multiply, xor-shift). Used for
// fingerprints that detect stale caches, not for security.
class Hasher {
 public:
  Hasher& add(std::string_view bytes) {
    const char* p = bytes.data();
    size_t n = bytes.size();
    while (n >= 8) {
      uint64_t w;
      std::memcpy(&w, p, 8);
      mix(w);
      p += 8;
      n -= 8;
    }
    uint64_t tail = 0;
    std::memcpy(&tail, p, n);
    mix(tail ^ (uint64_t(n) << 56));
    return *this;
  }
  Hasher& add_u64(uint64_t v) {
    mix(v);
    return *this;
  }
  uint64_t value() const {
    uint64_t h = h_;
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 33;
    return h;
  }
  std::string hex() const {
    static constexpr char kDigits[] = "0123456789abcdef";
    std::string s(16, '0');
    uint64_t v = value();
    for (int i = 15; i >= 0; --i, v >>= 4) s[i] = kDigits[v & 15];
    return s;
  }

 private:
  void mix(uint64_t w) {
    h_ = (h_ ^ w) * 0x9E3779B97F4A7C15ull;
    h_ ^= h_ >> 29;
  }
  uint64_t h_ = 0x243F6A8885A308D3ull;
};

// Quotes an untrusted string for a one-line error message: control characters and
// non-ASCII bytes escaped, long strings cut.
inline std::string quote(std::string_view s, size_t max_chars = 48) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out = "\"";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i == max_chars) {
      out += "...";
      break;
    }
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kDigits[c >> 4];
      out += kDigits[c & 15];
    }
  }
  return out + "\"";
}

}  // namespace bd3::text::detail
