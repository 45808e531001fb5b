#pragma once
// NumPy .npy files of floats: read v1.0/v2.0 little-endian float32 (or float64, narrowed) in C
// order; write v1.0 float32. The header, a Python dict literal, is parsed strictly and every
// size is checked against the file size before anything is allocated.
#include <bd3/error.hpp>
#include <bd3/io/atomic_file.hpp>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace bd3::io {

static_assert(std::endian::native == std::endian::little, "bd3 requires a little-endian host");

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;  // C order
};

namespace detail {

inline constexpr char kNpyMagic[] = "\x93NUMPY";  // 6 bytes, then major and minor version

struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  std::vector<int64_t> shape;
};

// A cursor over the header dict, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (3,), }
class NpyHeaderParser {
 public:
  NpyHeaderParser(std::string_view text, const std::string& source) : s_(text), source_(source) {}

  NpyHeader parse() {
    if (s_.empty() || s_.back() != '\n') bad("header does not end with a newline");
    NpyHeader h;
    bool seen_descr = false, seen_order = false, seen_shape = false;
    skip_spaces();
    expect('{');
    while (true) {
      skip_spaces();
      if (peek() == '}') break;
      std::string key = parse_string();
      skip_spaces();
      expect(':');
      skip_spaces();
      if (key == "descr") {
        if (seen_descr) bad("duplicate key 'descr'");
        seen_descr = true;
        h.descr = parse_string();
      } else if (key == "fortran_order") {
        if (seen_order) bad("duplicate key 'fortran_order'");
        seen_order = true;
        h.fortran_order = parse_bool();
      } else if (key == "shape") {
        if (seen_shape) bad("duplicate key 'shape'");
        seen_shape = true;
        h.shape = parse_shape();
      } else {
        bad("unexpected key '" + key + "'");
      }
      skip_spaces();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() != '}') bad("expected ',' or '}' at header offset " + std::to_string(pos_));
    }
    ++pos_;  // '}'
    while (pos_ + 1 < s_.size() && s_[pos_] == ' ') ++pos_;
    if (pos_ + 1 != s_.size()) bad("unexpected text after the dict");
    if (!seen_descr) bad("missing key 'descr'");
    if (!seen_order) bad("missing key 'fortran_order'");
    if (!seen_shape) bad("missing key 'shape'");
    return h;
  }

 private:
  [[noreturn]] void bad(const std::string& what) const {
    fail(source_ + ": malformed .npy header: " + what);
  }

  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }

  void skip_spaces() {
    while (pos_ < s_.size() && s_[pos_] == ' ') ++pos_;
  }

  void expect(char c) {
    if (peek() != c) {
      bad(std::string("expected '") + c + "' at header offset " + std::to_string(pos_));
    }
    ++pos_;
  }

  // A quoted Python string without escapes, which is all numpy ever writes here.
  std::string parse_string() {
    char q = peek();
    if (q != '\'' && q != '"')
      bad("expected a quoted string at header offset " + std::to_string(pos_));
    size_t close = s_.find(q, pos_ + 1);
    if (close == std::string_view::npos) bad("unterminated string");
    std::string out(s_.substr(pos_ + 1, close - pos_ - 1));
    if (out.find('\\') != std::string::npos) bad("escapes in strings are not supported");
    pos_ = close + 1;
    return out;
  }

  bool parse_bool() {
    if (s_.substr(pos_, 4) == "True") {
      pos_ += 4;
      return true;
    }
    if (s_.substr(pos_, 5) == "False") {
      pos_ += 5;
      return false;
    }
    bad("fortran_order must be True or False");
  }

  // A Python tuple of non-negative integers: (), (n,), (n, m), (n, m,) ...
  std::vector<int64_t> parse_shape() {
    std::vector<int64_t> shape;
    expect('(');
    skip_spaces();
    bool trailing_comma = false;
    while (peek() != ')') {
      if (peek() < '0' || peek() > '9') {
        bad("shape entries must be non-negative integers (at header offset " +
            std::to_string(pos_) + ")");
      }
      int64_t v = 0;
      while (peek() >= '0' && peek() <= '9') {
        if (__builtin_mul_overflow(v, int64_t{10}, &v) ||
            __builtin_add_overflow(v, int64_t{peek() - '0'}, &v)) {
          bad("shape dimension overflows 64 bits");
        }
        ++pos_;
      }
      shape.push_back(v);
      skip_spaces();
      trailing_comma = peek() == ',';
      if (trailing_comma) {
        ++pos_;
        skip_spaces();
      } else if (peek() != ')') {
        bad("expected ',' or ')' in shape at header offset " + std::to_string(pos_));
      }
    }
    ++pos_;
    // "(5)" is an int in Python, not a tuple.
    if (shape.size() == 1 && !trailing_comma) bad("one-element shape needs a trailing comma");
    return shape;
  }

  std::string_view s_;
  const std::string& source_;
  size_t pos_ = 0;
};

inline float npy_f64_to_float(double d) {
  // Out-of-range double -> float is undefined behaviour in C++; round those to infinity.
  constexpr double kOverflow = 0x1.ffffffp+127;  // halfway between FLT_MAX and 2^128
  if (d >= kOverflow) return std::numeric_limits<float>::infinity();
  if (d <= -kOverflow) return -std::numeric_limits<float>::infinity();
  return static_cast<float>(d);
}

inline void npy_read_exact(std::ifstream& in, char* dst, uint64_t n, const std::string& source) {
  in.read(dst, static_cast<std::streamsize>(n));
  if (static_cast<uint64_t>(in.gcount()) != n) {
    fail_io("cannot read " + source + ": got " + std::to_string(in.gcount()) + " of " +
            std::to_string(n) + " bytes (file shrank or read error)");
  }
}

inline std::string npy_shape_text(std::span<const int64_t> shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

}  // namespace detail

inline NpyArray read_npy(const std::filesystem::path& path) {
  const std::string source = path.string();
  std::error_code ec;
  uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) fail_io("cannot stat " + source + ": " + ec.message());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_io("cannot open " + source);

  if (size < 10) fail(source + ": file is " + std::to_string(size) + " bytes, too short for .npy");
  char prefix[12];
  detail::npy_read_exact(in, prefix, 8, source);
  if (std::memcmp(prefix, detail::kNpyMagic, 6) != 0)
    fail(source + ": not a .npy file (bad magic)");
  const int major = static_cast<unsigned char>(prefix[6]);
  const int minor = static_cast<unsigned char>(prefix[7]);
  if ((major != 1 && major != 2) || minor != 0) {
    fail(source + ": unsupported .npy version " + std::to_string(major) + "." +
         std::to_string(minor) + " (expected 1.0 or 2.0)");
  }
  const uint64_t prefix_size = major == 1 ? 10 : 12;
  if (size < prefix_size) fail(source + ": file too short for a .npy v2.0 prefix");
  detail::npy_read_exact(in, prefix + 8, prefix_size - 8, source);
  uint64_t header_len = 0;
  if (major == 1) {
    uint16_t v;
    std::memcpy(&v, prefix + 8, 2);
    header_len = v;
  } else {
    uint32_t v;
    std::memcpy(&v, prefix + 8, 4);
    header_len = v;
  }
  if (header_len > size - prefix_size) {
    fail(source + ": .npy header length " + std::to_string(header_len) +
         " runs past the end of the file (" + std::to_string(size) + " bytes)");
  }
  std::string header_text(static_cast<size_t>(header_len), '\0');
  detail::npy_read_exact(in, header_text.data(), header_len, source);
  detail::NpyHeader header = detail::NpyHeaderParser(header_text, source).parse();

  size_t item;
  if (header.descr == "<f4") {
    item = 4;
  } else if (header.descr == "<f8") {
    item = 8;
  } else {
    fail(source + ": unsupported .npy dtype '" + header.descr + "' (expected '<f4' or '<f8')");
  }
  if (header.fortran_order) fail(source + ": Fortran-order .npy arrays are not supported");
  int64_t numel = 1;
  uint64_t bytes = 0;
  for (int64_t d : header.shape) {
    if (__builtin_mul_overflow(numel, d, &numel)) {
      fail(source + ": .npy shape " + detail::npy_shape_text(header.shape) +
           " overflows 64-bit element count");
    }
  }
  if (__builtin_mul_overflow(static_cast<uint64_t>(numel), uint64_t{item}, &bytes)) {
    fail(source + ": .npy shape " + detail::npy_shape_text(header.shape) +
         " overflows 64-bit byte count");
  }
  const uint64_t available = size - prefix_size - header_len;
  if (bytes != available) {
    fail(source + ": .npy shape " + detail::npy_shape_text(header.shape) + " of '" + header.descr +
         "' needs " + std::to_string(bytes) + " data bytes but the file has " +
         std::to_string(available) + (bytes > available ? " (truncated)" : " (trailing bytes)"));
  }

  NpyArray out;
  out.shape = header.shape;
  out.data.resize(static_cast<size_t>(numel));
  if (item == 4) {
    detail::npy_read_exact(in, reinterpret_cast<char*>(out.data.data()), bytes, source);
  } else {
    // Narrow through a small buffer so float64 files never need a second full-size copy.
    constexpr size_t kChunk = 8192;
    std::vector<double> buf(std::min<size_t>(kChunk, out.data.size()));
    for (size_t done = 0; done < out.data.size();) {
      size_t n = std::min(buf.size(), out.data.size() - done);
      detail::npy_read_exact(in, reinterpret_cast<char*>(buf.data()), n * sizeof(double), source);
      for (size_t i = 0; i < n; ++i) out.data[done + i] = detail::npy_f64_to_float(buf[i]);
      done += n;
    }
  }
  if (in.peek() != std::char_traits<char>::eof()) {
    fail(source + ": file grew while it was being read");
  }
  return out;
}

inline void write_npy(const std::filesystem::path& path, std::span<const int64_t> shape,
                      std::span<const float> data) {
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(numel, d, &numel)) {
      fail("cannot write " + path.string() + ": invalid shape " + detail::npy_shape_text(shape));
    }
  }
  if (static_cast<uint64_t>(numel) != data.size()) {
    fail("cannot write " + path.string() + ": shape " + detail::npy_shape_text(shape) + " has " +
         std::to_string(numel) + " elements but " + std::to_string(data.size()) + " values given");
  }
  std::string dict =
      "{'descr': '<f4', 'fortran_order': False, 'shape': " + detail::npy_shape_text(shape) + ", }";
  // numpy pads so the data starts at a multiple of 64 bytes; the header ends in '\n'.
  size_t header_len = dict.size() + 1;
  header_len += (64 - (10 + header_len) % 64) % 64;
  if (header_len > std::numeric_limits<uint16_t>::max()) {
    fail("cannot write " + path.string() + ": .npy v1.0 header too long for shape " +
         detail::npy_shape_text(shape));
  }
  std::string prefix(detail::kNpyMagic, 6);
  prefix += '\x01';
  prefix += '\x00';
  prefix += static_cast<char>(header_len & 0xFF);
  prefix += static_cast<char>(header_len >> 8);
  prefix += dict;
  prefix.append(header_len - dict.size() - 1, ' ');
  prefix += '\n';
  std::string_view chunks[2] = {prefix,
                                {reinterpret_cast<const char*>(data.data()), data.size_bytes()}};
  write_file_atomic_chunks(path, chunks);
}

}  // namespace bd3::io
