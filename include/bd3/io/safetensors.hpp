#pragma once
// Safetensors reader and writer. The format: an 8-byte little-endian header length N, N bytes
// of JSON (name -> {dtype, shape, data_offsets}, plus an optional "__metadata__" of strings),
// then the tensor data. Files are validated as strictly as the reference implementation
// (huggingface/safetensors): every byte of the data region belongs to exactly one tensor.
#include <bd3/error.hpp>
#include <bd3/io/atomic_file.hpp>
#include <bd3/io/json.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

namespace bd3::io {

// Byte-order conversions below assume a little-endian host, as the format is little-endian.
static_assert(std::endian::native == std::endian::little, "bd3 requires a little-endian host");

// Every byte-sized dtype of the format. Sub-byte ones (F4, F6_*) are rejected as unsupported.
enum class DType {
  F64,
  F32,
  F16,
  BF16,
  I64,
  I32,
  I16,
  I8,
  U8,
  BOOL,
  U64,
  U32,
  U16,
  F8_E5M2,
  F8_E4M3,
  F8_E8M0,
};

inline size_t dtype_size(DType d) {
  switch (d) {
    case DType::F64:
    case DType::I64:
    case DType::U64:
      return 8;
    case DType::F32:
    case DType::I32:
    case DType::U32:
      return 4;
    case DType::F16:
    case DType::BF16:
    case DType::I16:
    case DType::U16:
      return 2;
    case DType::I8:
    case DType::U8:
    case DType::BOOL:
    case DType::F8_E5M2:
    case DType::F8_E4M3:
    case DType::F8_E8M0:
      return 1;
  }
  return 0;
}

inline std::string_view dtype_name(DType d) {
  switch (d) {
    case DType::F64:
      return "F64";
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::I64:
      return "I64";
    case DType::I32:
      return "I32";
    case DType::I16:
      return "I16";
    case DType::I8:
      return "I8";
    case DType::U8:
      return "U8";
    case DType::BOOL:
      return "BOOL";
    case DType::U64:
      return "U64";
    case DType::U32:
      return "U32";
    case DType::U16:
      return "U16";
    case DType::F8_E5M2:
      return "F8_E5M2";
    case DType::F8_E4M3:
      return "F8_E4M3";
    case DType::F8_E8M0:
      return "F8_E8M0";
  }
  return "?";
}

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets into the data region (after the header)

  // Overflow was ruled out when the file was validated.
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

namespace detail {

inline constexpr uint64_t kSafetensorsMaxHeader = 100'000'000;  // as the reference reader

// Built by appending: GCC 12 warns falsely (-Wrestrict) on "'" + std::string(s).
inline std::string quote_name(std::string_view s) {
  std::string out(1, '\'');
  out += s;
  out += '\'';
  return out;
}

inline uint64_t read_u64_le(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. Returns the offset
// of the first bad byte, or npos.
inline size_t find_invalid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (s.size() - i < len) return i;
    auto c1 = static_cast<unsigned char>(s[i + 1]);
    if (c1 < lo || c1 > hi) return i;
    for (size_t k = 2; k < len; ++k) {
      auto ck = static_cast<unsigned char>(s[i + k]);
      if (ck < 0x80 || ck > 0xBF) return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

inline bool parse_dtype(std::string_view s, DType* out) {
  static constexpr DType kAll[] = {DType::F64, DType::F32,     DType::F16,     DType::BF16,
                                   DType::I64, DType::I32,     DType::I16,     DType::I8,
                                   DType::U8,  DType::BOOL,    DType::U64,     DType::U32,
                                   DType::U16, DType::F8_E5M2, DType::F8_E4M3, DType::F8_E8M0};
  for (DType d : kAll) {
    if (dtype_name(d) == s) {
      *out = d;
      return true;
    }
  }
  return false;
}

// Exact IEEE half -> float: every half value, including subnormals, is a float.
inline float f16_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf, or nan keeping its payload
  } else if (exp != 0) {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;  // signed zero
  } else {
    // Subnormal half (mant * 2^-24) is a normal float: shift the leading one into place.
    int e = -14;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (static_cast<uint32_t>(e + 127) << 23) | ((mant & 0x3FFu) << 13);
  }
  return std::bit_cast<float>(bits);
}

// bfloat16 is the top half of a float, so widening is a shift.
inline float bf16_to_float(uint16_t h) {
  return std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
}

// Rounds to nearest float; magnitudes beyond float's range become infinities explicitly,
// because an out-of-range double -> float conversion is undefined behaviour in C++.
inline float f64_to_float(double d) {
  constexpr double kOverflow = 0x1.ffffffp+127;  // halfway between FLT_MAX and 2^128
  if (d >= kOverflow) return std::numeric_limits<float>::infinity();
  if (d <= -kOverflow) return -std::numeric_limits<float>::infinity();
  return static_cast<float>(d);
}

// Checked product of dimensions; false on overflow or a negative dimension.
inline bool checked_numel(std::span<const int64_t> shape, int64_t* out) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return false;
  }
  *out = n;
  return true;
}

inline std::string shape_text(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Rejects duplicate keys in any JSON object (nlohmann would silently keep the last one).
class DuplicateKeyCheck {
 public:
  explicit DuplicateKeyCheck(std::string source) : source_(std::move(source)) {}
  bool operator()(int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (event == E::object_start) {
      keys_.emplace_back();
    } else if (event == E::object_end) {
      keys_.pop_back();
    } else if (event == E::key) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!keys_.back().insert(key).second) {
        fail(source_ + ": safetensors header has duplicate key " + quote_name(key));
      }
    }
    return true;
  }

 private:
  std::string source_;
  std::vector<std::set<std::string>> keys_;
};

struct ParsedHeader {
  std::vector<TensorInfo> tensors;  // sorted by data offset
  std::map<std::string, std::string> metadata;
  uint64_t data_size = 0;  // bytes the data region must hold exactly
};

inline uint64_t json_u64(const nlohmann::json& v, const std::string& what,
                         const std::string& where) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) {
    if (v.get<int64_t>() < 0) fail(where + ": " + what + " is negative (" + v.dump() + ")");
    return 0;  // "-0"
  }
  fail(where + ": " + what + " must be a non-negative integer, got " + v.dump());
}

inline TensorInfo parse_tensor_entry(const std::string& name, const nlohmann::json& entry,
                                     const std::string& source) {
  const std::string where = source + ": tensor " + quote_name(name);
  if (!entry.is_object()) fail(where + ": entry must be a JSON object, got " + entry.dump());
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(field)) fail(where + ": missing field '" + field + "'");
  }
  for (const auto& [key, value] : entry.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      fail(where + ": unexpected field " + quote_name(key));
    }
  }
  TensorInfo t;
  t.name = name;

  const auto& dtype = entry["dtype"];
  if (!dtype.is_string()) fail(where + ": dtype must be a string, got " + dtype.dump());
  if (!parse_dtype(dtype.get_ref<const std::string&>(), &t.dtype)) {
    fail(where + ": unknown or unsupported dtype " + dtype.dump());
  }

  const auto& shape = entry["shape"];
  if (!shape.is_array()) fail(where + ": shape must be an array, got " + shape.dump());
  int64_t numel = 1;
  for (const auto& d : shape) {
    uint64_t dim = json_u64(d, "shape dimension", where);
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(numel, static_cast<int64_t>(dim), &numel)) {
      fail(where + ": shape " + shape.dump() + " overflows 64-bit element count");
    }
    t.shape.push_back(static_cast<int64_t>(dim));
  }

  const auto& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2) {
    fail(where + ": data_offsets must be an array [begin, end], got " + offsets.dump());
  }
  t.begin = json_u64(offsets[0], "data_offsets begin", where);
  t.end = json_u64(offsets[1], "data_offsets end", where);
  if (t.begin > t.end) {
    fail(where + ": data_offsets begin " + std::to_string(t.begin) + " > end " +
         std::to_string(t.end));
  }
  uint64_t bytes;
  if (__builtin_mul_overflow(static_cast<uint64_t>(numel), dtype_size(t.dtype), &bytes) ||
      t.end - t.begin != bytes) {
    fail(where + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
         "] span " + std::to_string(t.end - t.begin) + " bytes but shape " + shape.dump() + " of " +
         std::string(dtype_name(t.dtype)) + " needs " + std::to_string(numel) + " x " +
         std::to_string(dtype_size(t.dtype)) + " bytes");
  }
  return t;
}

// Validates the JSON header; the caller checks data_size against the bytes that follow.
inline ParsedHeader parse_header(std::string_view header, const std::string& source) {
  if (size_t bad = find_invalid_utf8(header); bad != std::string_view::npos) {
    fail(source + ": safetensors header is not valid UTF-8 (bad byte at header offset " +
         std::to_string(bad) + ")");
  }
  if (header.empty() || header.front() != '{') {
    fail(source + ": safetensors header is not a JSON object (must start with '{')");
  }
  if (json_nests_deeper_than(header, kMaxJsonDepth)) {
    fail(source + ": safetensors header nests JSON deeper than " + std::to_string(kMaxJsonDepth) +
         " levels");
  }
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(header, DuplicateKeyCheck(source));
  } catch (const nlohmann::json::exception& e) {
    fail(source + ": safetensors header is not valid JSON: " + e.what());
  }
  if (!root.is_object()) fail(source + ": safetensors header is not a JSON object");

  ParsedHeader out;
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) {
        fail(source + ": __metadata__ must be a JSON object, got " + value.dump());
      }
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) {
          fail(source + ": __metadata__ value for " + quote_name(mk) + " must be a string, got " +
               mv.dump());
        }
        out.metadata.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    out.tensors.push_back(parse_tensor_entry(key, value, source));
  }

  std::sort(out.tensors.begin(), out.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  uint64_t expected = 0;
  for (size_t i = 0; i < out.tensors.size(); ++i) {
    const TensorInfo& t = out.tensors[i];
    if (t.begin == expected) {
      expected = t.end;
      continue;
    }
    std::string where = source + ": tensor " + quote_name(t.name) + " begins at data offset " +
                        std::to_string(t.begin);
    if (i == 0) fail(where + " but the data must start at offset 0");
    const std::string prev = quote_name(out.tensors[i - 1].name);
    if (t.begin < expected) {
      fail(where + ", overlapping tensor " + prev + " which ends at " + std::to_string(expected));
    }
    fail(where + ", leaving a gap of " + std::to_string(t.begin - expected) +
         " bytes after tensor " + prev + " which ends at " + std::to_string(expected));
  }
  out.data_size = expected;
  return out;
}

// The header length from the 8-byte prefix, checked against the bytes available.
inline uint64_t checked_header_length(const char* prefix, uint64_t file_size,
                                      const std::string& source) {
  uint64_t n = read_u64_le(prefix);
  if (n > kSafetensorsMaxHeader) {
    fail(source + ": safetensors header length " + std::to_string(n) + " exceeds the limit of " +
         std::to_string(kSafetensorsMaxHeader) + " bytes");
  }
  if (n > file_size - 8) {
    fail(source + ": safetensors header length " + std::to_string(n) +
         " runs past the end of the file (" + std::to_string(file_size) + " bytes)");
  }
  return n;
}

inline void check_data_size(uint64_t needed, uint64_t available, const std::string& source) {
  if (needed > available) {
    fail(source + ": safetensors data truncated: header needs " + std::to_string(needed) +
         " data bytes but only " + std::to_string(available) + " follow the header");
  }
  if (needed < available) {
    fail(source + ": safetensors file has " + std::to_string(available - needed) +
         " trailing bytes after the last tensor (data needs " + std::to_string(needed) + ")");
  }
}

}  // namespace detail

// A parsed, validated safetensors file held in memory.
class SafetensorsFile {
 public:
  // Reads the header first and checks that the file size is exactly what it claims before
  // reading the data, so a hostile file never makes us read or allocate more than its size.
  static SafetensorsFile open(const std::filesystem::path& path) {
    const std::string source = path.string();
    std::error_code ec;
    uint64_t size = std::filesystem::file_size(path, ec);
    if (ec) fail_io("cannot stat " + source + ": " + ec.message());
    if (size < 8) {
      fail(source + ": file is " + std::to_string(size) + " bytes, shorter than the 8-byte " +
           "safetensors header length");
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) fail_io("cannot open " + source);
    char prefix[8];
    read_exact(in, prefix, 8, source);
    uint64_t n = detail::checked_header_length(prefix, size, source);
    std::string bytes(static_cast<size_t>(8 + n), '\0');
    std::memcpy(bytes.data(), prefix, 8);
    read_exact(in, bytes.data() + 8, n, source);
    detail::ParsedHeader header = detail::parse_header(std::string_view(bytes).substr(8), source);
    detail::check_data_size(header.data_size, size - 8 - n, source);
    bytes.resize(static_cast<size_t>(size));
    read_exact(in, bytes.data() + 8 + n, header.data_size, source);
    if (in.peek() != std::char_traits<char>::eof()) {
      fail(source + ": file grew while it was being read");
    }
    return SafetensorsFile(std::move(bytes), 8 + n, std::move(header), source);
  }

  static SafetensorsFile parse(std::string bytes, std::string source_name = "<memory>") {
    if (bytes.size() < 8) {
      fail(source_name + ": file is " + std::to_string(bytes.size()) +
           " bytes, shorter than the 8-byte safetensors header length");
    }
    uint64_t n = detail::checked_header_length(bytes.data(), bytes.size(), source_name);
    detail::ParsedHeader header =
        detail::parse_header(std::string_view(bytes).substr(8, n), source_name);
    detail::check_data_size(header.data_size, bytes.size() - 8 - n, source_name);
    return SafetensorsFile(std::move(bytes), 8 + n, std::move(header), std::move(source_name));
  }

  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  const TensorInfo* find(std::string_view name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }

  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  const std::string& source_name() const { return source_; }

  std::vector<float> load_float(std::string_view name) const {
    const TensorInfo& t = get(name);
    std::vector<float> out(static_cast<size_t>(t.numel()));
    load_float_into(name, out);
    return out;
  }

  void load_float_into(std::string_view name, std::span<float> out) const {
    const TensorInfo& t = get(name);
    const size_t n = static_cast<size_t>(t.numel());
    if (out.size() != n) {
      fail(source_ + ": tensor " + detail::quote_name(name) + " has " + std::to_string(n) +
           " elements (shape " + detail::shape_text(t.shape) + ") but the output holds " +
           std::to_string(out.size()));
    }
    // The data may sit at any byte offset, so every element is copied out with memcpy.
    const char* p = bytes_.data() + data_start_ + t.begin;
    switch (t.dtype) {
      case DType::F32:
        if (n) std::memcpy(out.data(), p, n * sizeof(float));
        return;
      case DType::F64:
        for (size_t i = 0; i < n; ++i) {
          double d;
          std::memcpy(&d, p + i * sizeof d, sizeof d);
          out[i] = detail::f64_to_float(d);
        }
        return;
      case DType::F16:
      case DType::BF16:
        for (size_t i = 0; i < n; ++i) {
          uint16_t h;
          std::memcpy(&h, p + i * sizeof h, sizeof h);
          out[i] = t.dtype == DType::F16 ? detail::f16_to_float(h) : detail::bf16_to_float(h);
        }
        return;
      default:
        fail(source_ + ": tensor " + detail::quote_name(name) + " has dtype " +
             std::string(dtype_name(t.dtype)) + "; only F64, F32, F16 and BF16 load as float");
    }
  }

  std::span<const std::byte> raw(std::string_view name) const {
    const TensorInfo& t = get(name);
    const auto* base = reinterpret_cast<const std::byte*>(bytes_.data());
    return {base + data_start_ + t.begin, static_cast<size_t>(t.end - t.begin)};
  }

 private:
  SafetensorsFile(std::string bytes, uint64_t data_start, detail::ParsedHeader header,
                  std::string source)
      : bytes_(std::move(bytes)),
        data_start_(static_cast<size_t>(data_start)),
        tensors_(std::move(header.tensors)),
        metadata_(std::move(header.metadata)),
        source_(std::move(source)) {
    for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  }

  static void read_exact(std::ifstream& in, char* dst, uint64_t n, const std::string& source) {
    in.read(dst, static_cast<std::streamsize>(n));
    if (static_cast<uint64_t>(in.gcount()) != n) {
      fail_io("cannot read " + source + ": got " + std::to_string(in.gcount()) + " of " +
              std::to_string(n) + " bytes (file shrank or read error)");
    }
  }

  const TensorInfo& get(std::string_view name) const {
    const TensorInfo* t = find(name);
    if (!t) fail(source_ + ": no tensor named " + detail::quote_name(name));
    return *t;
  }

  std::string bytes_;
  size_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
  std::string source_;
};

struct TensorToWrite {
  std::string name;
  std::vector<int64_t> shape;
  std::span<const float> data;  // written as F32
};

namespace detail {

// The 8-byte length prefix plus the JSON header, padded with spaces so the data starts at a
// multiple of 8. Data offsets follow name order so the output depends only on the input.
inline std::string safetensors_prefix(std::span<const TensorToWrite> tensors,
                                      const std::map<std::string, std::string>& metadata,
                                      std::vector<size_t>* order) {
  order->resize(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) (*order)[i] = i;
  std::sort(order->begin(), order->end(),
            [&](size_t a, size_t b) { return tensors[a].name < tensors[b].name; });

  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) {
    nlohmann::json meta = nlohmann::json::object();
    for (const auto& [k, v] : metadata) {
      if (find_invalid_utf8(k) != std::string_view::npos ||
          find_invalid_utf8(v) != std::string_view::npos) {
        fail("safetensors metadata entry " + quote_name(k) + " is not valid UTF-8");
      }
      meta[k] = v;
    }
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (size_t k = 0; k < order->size(); ++k) {
    const TensorToWrite& t = tensors[(*order)[k]];
    if (t.name.empty() || t.name == "__metadata__") {
      fail("cannot write a tensor named " + quote_name(t.name));
    }
    if (find_invalid_utf8(t.name) != std::string_view::npos) {
      fail("tensor name " + quote_name(t.name) + " is not valid UTF-8");
    }
    if (k > 0 && tensors[(*order)[k - 1]].name == t.name) {
      fail("duplicate tensor name " + quote_name(t.name));
    }
    int64_t numel;
    if (!checked_numel(t.shape, &numel)) {
      fail("tensor " + quote_name(t.name) + " has an invalid shape " + shape_text(t.shape));
    }
    if (t.data.size() != static_cast<uint64_t>(numel)) {
      fail("tensor " + quote_name(t.name) + " has shape " + shape_text(t.shape) + " (" +
           std::to_string(numel) + " elements) but " + std::to_string(t.data.size()) + " values");
    }
    uint64_t end = offset + t.data.size() * sizeof(float);
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  return out + json;
}

inline std::string_view float_bytes(std::span<const float> data) {
  return {reinterpret_cast<const char*>(data.data()), data.size_bytes()};
}

}  // namespace detail

// The complete file contents that write_safetensors would write.
inline std::string serialize_safetensors(std::span<const TensorToWrite> tensors,
                                         const std::map<std::string, std::string>& metadata = {}) {
  std::vector<size_t> order;
  std::string out = detail::safetensors_prefix(tensors, metadata, &order);
  for (size_t i : order) out += detail::float_bytes(tensors[i].data);
  return out;
}

// Writes tensors as F32 atomically (temporary file, fsync, rename), streaming the data from
// the caller's buffers rather than assembling the whole file in memory.
inline void write_safetensors(const std::filesystem::path& path,
                              std::span<const TensorToWrite> tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
  std::vector<size_t> order;
  std::string prefix = detail::safetensors_prefix(tensors, metadata, &order);
  std::vector<std::string_view> chunks{prefix};
  for (size_t i : order) chunks.push_back(detail::float_bytes(tensors[i].data));
  write_file_atomic_chunks(path, chunks);
}

}  // namespace bd3::io
