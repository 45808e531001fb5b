#include <bd3/io/safetensors.hpp>

#include <catch2/catch.hpp>

#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using bd3::io::DType;
using bd3::io::SafetensorsFile;
using bd3::io::TensorToWrite;

namespace {

const fs::path kModel = fs::path(BD3_FIXTURES_DIR) / "parity" / "b4" / "model.safetensors";

// A fresh directory per test, removed on scope exit.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() /
             ("bd3_test_safetensors_" + name + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string u64_le(uint64_t n) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &n, 8);
  return s;
}

// Length prefix + header + data, exactly as given (no padding).
std::string st_file(const std::string& header, const std::string& data = "") {
  return u64_le(header.size()) + header + data;
}

template <class T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// Parses `bytes`, requires an invalid_input bd3::Error, and returns its message.
std::string reject(const std::string& bytes) {
  try {
    SafetensorsFile::parse(bytes, "bad.safetensors");
  } catch (const bd3::Error& e) {
    CHECK(e.kind() == bd3::ErrorKind::invalid_input);
    std::string msg = e.what();
    CHECK(msg.find("bad.safetensors") != std::string::npos);
    CHECK(msg.find('\n') == std::string::npos);
    return msg;
  }
  FAIL("malformed file was accepted");
  return "";
}

bool same_bits(float a, float b) {
  return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
}

// Reference half -> float by arithmetic, independent of the bit-twiddling implementation.
float f16_reference(uint16_t h) {
  int sign = h >> 15, exp = (h >> 10) & 31, mant = h & 1023;
  float v;
  if (exp == 31) {
    v = mant ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else if (exp == 0) {
    v = std::ldexp(static_cast<float>(mant), -24);
  } else {
    v = std::ldexp(static_cast<float>(1024 + mant), exp - 25);
  }
  return sign ? -v : v;
}

const std::string kOneF32 = R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";

}  // namespace

TEST_CASE("safetensors: loads the parity fixture", "[io][safetensors]") {
  auto f = SafetensorsFile::open(kModel);
  REQUIRE(f.tensors().size() == 31);
  const auto* emb = f.find("backbone.vocab_embed.embedding");
  REQUIRE(emb != nullptr);
  CHECK(emb->dtype == DType::F32);
  CHECK(emb->shape == std::vector<int64_t>{97, 64});
  CHECK(emb->numel() == 97 * 64);
  CHECK(f.find("backbone.blocks.0.attn_qkv.weight")->shape == std::vector<int64_t>{192, 64});
  CHECK(f.find("backbone.rotary_emb.inv_freq")->shape == std::vector<int64_t>{8});
  CHECK(f.find("backbone.blocks.1.norm2.weight")->shape == std::vector<int64_t>{64});
  CHECK(f.find("no.such.tensor") == nullptr);
  CHECK(f.metadata().at("format") == "pt");

  // Offset order, contiguous.
  uint64_t at = 0;
  for (const auto& t : f.tensors()) {
    CHECK(t.begin == at);
    at = t.end;
  }
  CHECK(at + 8 + 3048 == fs::file_size(kModel));

  auto v = f.load_float("backbone.vocab_embed.embedding");
  REQUIRE(v.size() == 97 * 64);
  CHECK(std::memcmp(v.data(), f.raw("backbone.vocab_embed.embedding").data(), v.size() * 4) == 0);
  for (float x : v) REQUIRE(std::isfinite(x));
  std::vector<float> wrong(10);
  CHECK_THROWS_WITH(f.load_float_into("backbone.vocab_embed.embedding", wrong),
                    Catch::Contains("6208 elements"));
  CHECK_THROWS_WITH(f.raw("missing"), Catch::Contains("no tensor named 'missing'"));

  // parse() on the same bytes agrees with open().
  auto g = SafetensorsFile::parse(read_bytes(kModel), "model");
  REQUIRE(g.tensors().size() == f.tensors().size());
  for (size_t i = 0; i < g.tensors().size(); ++i) CHECK(g.tensors()[i].name == f.tensors()[i].name);

  auto grads = SafetensorsFile::open(kModel.parent_path() / "grads.safetensors");
  CHECK(!grads.tensors().empty());
}

TEST_CASE("safetensors: write -> read is bit-exact", "[io][safetensors]") {
  TempDir dir("roundtrip");
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> a(37), b(6), empty;
  for (float& x : a) x = normal(rng);
  // Special values must survive bit for bit, including a NaN payload.
  b = {-0.0f,
       std::numeric_limits<float>::infinity(),
       -std::numeric_limits<float>::infinity(),
       std::numeric_limits<float>::denorm_min(),
       std::bit_cast<float>(0x7FC12345u),
       std::numeric_limits<float>::max()};
  std::vector<TensorToWrite> tensors = {
      {"z.last", {37}, a}, {"a.first", {2, 3}, b}, {"m.empty", {0, 5}, empty}};
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "h\xC3\xA9llo"}};
  auto path = dir.path / "out.safetensors";
  bd3::io::write_safetensors(path, tensors, meta);

  std::string file = read_bytes(path);
  CHECK(file == bd3::io::serialize_safetensors(tensors, meta));
  uint64_t n;
  std::memcpy(&n, file.data(), 8);
  CHECK(n % 8 == 0);  // data starts 8-aligned

  auto f = SafetensorsFile::open(path);
  CHECK(f.metadata() == meta);
  REQUIRE(f.tensors().size() == 3);
  // Data is laid out in name order.
  CHECK(f.tensors()[0].name == "a.first");
  CHECK(f.tensors()[1].name == "m.empty");
  CHECK(f.tensors()[2].name == "z.last");
  for (const auto& t : tensors) {
    const auto* info = f.find(t.name);
    REQUIRE(info);
    CHECK(info->shape == t.shape);
    auto raw = f.raw(t.name);
    REQUIRE(raw.size() == t.data.size_bytes());
    CHECK((raw.empty() || std::memcmp(raw.data(), t.data.data(), raw.size()) == 0));
    auto loaded = f.load_float(t.name);
    REQUIRE(loaded.size() == t.data.size());
    for (size_t i = 0; i < loaded.size(); ++i) CHECK(same_bits(loaded[i], t.data[i]));
  }

  // Re-serialising what was read gives identical file bytes.
  std::vector<std::vector<float>> storage;
  std::vector<TensorToWrite> again;
  for (const auto& t : f.tensors()) storage.push_back(f.load_float(t.name));
  for (size_t i = 0; i < f.tensors().size(); ++i) {
    again.push_back({f.tensors()[i].name, f.tensors()[i].shape, storage[i]});
  }
  CHECK(bd3::io::serialize_safetensors(again, f.metadata()) == file);

  // The fixture too: every tensor's bytes survive a rewrite, and rewriting is deterministic.
  auto model = SafetensorsFile::open(kModel);
  std::vector<std::vector<float>> values;
  std::vector<TensorToWrite> copy;
  for (const auto& t : model.tensors()) values.push_back(model.load_float(t.name));
  for (size_t i = 0; i < model.tensors().size(); ++i) {
    copy.push_back({model.tensors()[i].name, model.tensors()[i].shape, values[i]});
  }
  auto copy_path = dir.path / "model_copy.safetensors";
  bd3::io::write_safetensors(copy_path, copy, model.metadata());
  auto reread = SafetensorsFile::open(copy_path);
  REQUIRE(reread.tensors().size() == model.tensors().size());
  for (const auto& t : model.tensors()) {
    auto x = model.raw(t.name), y = reread.raw(t.name);
    REQUIRE(x.size() == y.size());
    CHECK((x.empty() || std::memcmp(x.data(), y.data(), x.size()) == 0));
    CHECK(reread.find(t.name)->shape == t.shape);
  }
  CHECK(bd3::io::serialize_safetensors(copy, model.metadata()) == read_bytes(copy_path));
}

TEST_CASE("safetensors: atomic write leaves no temp file, failures throw", "[io][safetensors]") {
  TempDir dir("atomic");
  std::vector<float> v = {1, 2, 3};
  std::vector<TensorToWrite> t = {{"v", {3}, v}};
  auto path = dir.path / "x.safetensors";
  bd3::io::write_safetensors(path, t);
  bd3::io::write_safetensors(path, t);
  int entries = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) {
    ++entries;
    CHECK(e.path() == path);
  }
  CHECK(entries == 1);

  try {
    bd3::io::write_safetensors(dir.path / "missing_dir" / "x.safetensors", t);
    FAIL("write into a missing directory succeeded");
  } catch (const bd3::Error& e) {
    CHECK(e.kind() == bd3::ErrorKind::io);
  }
  CHECK(!fs::exists(dir.path / "missing_dir"));

  // Caller mistakes are rejected before anything is written.
  std::vector<TensorToWrite> mismatch = {{"v", {4}, v}};
  CHECK_THROWS_WITH(bd3::io::serialize_safetensors(mismatch), Catch::Contains("3 values"));
  std::vector<TensorToWrite> dup = {{"v", {3}, v}, {"v", {3}, v}};
  CHECK_THROWS_WITH(bd3::io::serialize_safetensors(dup), Catch::Contains("duplicate"));
  std::vector<TensorToWrite> reserved = {{"__metadata__", {3}, v}};
  CHECK_THROWS_AS(bd3::io::serialize_safetensors(reserved), bd3::Error);
  std::vector<TensorToWrite> negative = {{"v", {-3}, v}};
  CHECK_THROWS_WITH(bd3::io::serialize_safetensors(negative), Catch::Contains("invalid shape"));

  // A missing input file is an io error.
  try {
    SafetensorsFile::open(dir.path / "nope.safetensors");
    FAIL("opened a missing file");
  } catch (const bd3::Error& e) {
    CHECK(e.kind() == bd3::ErrorKind::io);
  }
}

TEST_CASE("safetensors: F16 conversion is exact", "[io][safetensors]") {
  // Every half value, checked against an arithmetic reference.
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  std::string header = R"({"h":{"dtype":"F16","shape":[256,256],"data_offsets":[0,131072]}})";
  auto f = SafetensorsFile::parse(st_file(header, bytes_of(all)));
  auto v = f.load_float("h");
  REQUIRE(v.size() == 65536);
  for (uint32_t i = 0; i < 65536; ++i) {
    float ref = f16_reference(static_cast<uint16_t>(i));
    if (std::isnan(ref)) {
      REQUIRE(std::isnan(v[i]));
      REQUIRE(std::signbit(v[i]) == std::signbit(ref));
    } else {
      REQUIRE(same_bits(v[i], ref));
    }
  }
  // Named cases.
  CHECK(same_bits(v[0x0000], 0.0f));
  CHECK(same_bits(v[0x8000], -0.0f));
  CHECK(v[0x0001] == std::ldexp(1.0f, -24));     // smallest subnormal
  CHECK(v[0x03FF] == std::ldexp(1023.0f, -24));  // largest subnormal
  CHECK(v[0x8001] == -std::ldexp(1.0f, -24));
  CHECK(v[0x0400] == std::ldexp(1.0f, -14));  // smallest normal
  CHECK(v[0x3C00] == 1.0f);
  CHECK(v[0xC000] == -2.0f);
  CHECK(v[0x3555] == 0.333251953125f);
  CHECK(v[0x7BFF] == 65504.0f);
  CHECK(v[0x7C00] == std::numeric_limits<float>::infinity());
  CHECK(v[0xFC00] == -std::numeric_limits<float>::infinity());
  CHECK(std::bit_cast<uint32_t>(v[0x7E00]) == 0x7FC00000u);  // quiet NaN
  CHECK(std::bit_cast<uint32_t>(v[0x7C01]) == 0x7F802000u);  // signalling NaN payload kept
}

TEST_CASE("safetensors: BF16 and F64 conversion is exact", "[io][safetensors]") {
  std::vector<uint16_t> h = {0x0000, 0x8000, 0x0001, 0x807F, 0x0080, 0x3F80,
                             0xC040, 0x7F7F, 0x7F80, 0xFF80, 0x7FC1, 0x3EAB};
  std::string header = R"({"b":{"dtype":"BF16","shape":[12],"data_offsets":[0,24]}})";
  auto v = SafetensorsFile::parse(st_file(header, bytes_of(h))).load_float("b");
  REQUIRE(v.size() == 12);
  CHECK(same_bits(v[0], 0.0f));
  CHECK(same_bits(v[1], -0.0f));
  CHECK(v[2] == std::ldexp(1.0f, -133));     // smallest subnormal
  CHECK(v[3] == -std::ldexp(127.0f, -133));  // largest negative subnormal
  CHECK(v[4] == std::ldexp(1.0f, -126));     // smallest normal
  CHECK(v[5] == 1.0f);
  CHECK(v[6] == -3.0f);
  CHECK(v[7] == std::bit_cast<float>(0x7F7F0000u));
  CHECK(v[8] == std::numeric_limits<float>::infinity());
  CHECK(v[9] == -std::numeric_limits<float>::infinity());
  CHECK(std::bit_cast<uint32_t>(v[10]) == 0x7FC10000u);
  CHECK(v[11] == 0.333984375f);

  std::vector<double> d = {1.5,
                           -0.0,
                           1e300,
                           -1e300,
                           1e-50,
                           0.1,
                           std::numeric_limits<double>::quiet_NaN(),
                           0x1.ffffffp+127,                        // halfway to 2^128: ties to inf
                           std::nextafter(0x1.ffffffp+127, 0.0)};  // just below: FLT_MAX
  header = R"({"d":{"dtype":"F64","shape":[3,3],"data_offsets":[0,72]}})";
  auto w = SafetensorsFile::parse(st_file(header, bytes_of(d))).load_float("d");
  CHECK(w[0] == 1.5f);
  CHECK(same_bits(w[1], -0.0f));
  CHECK(w[2] == std::numeric_limits<float>::infinity());
  CHECK(w[3] == -std::numeric_limits<float>::infinity());
  CHECK(w[4] == 0.0f);
  CHECK(w[5] == 0.1f);
  CHECK(std::isnan(w[6]));
  CHECK(w[7] == std::numeric_limits<float>::infinity());
  CHECK(w[8] == std::numeric_limits<float>::max());

  // Non-float dtypes are readable raw but not as float.
  std::vector<int32_t> ints = {1, -2};
  header = R"({"i":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})";
  auto fi = SafetensorsFile::parse(st_file(header, bytes_of(ints)), "ints.safetensors");
  CHECK(fi.find("i")->dtype == DType::I32);
  CHECK(fi.raw("i").size() == 8);
  CHECK_THROWS_WITH(fi.load_float("i"), Catch::Contains("ints.safetensors") &&
                                            Catch::Contains("'i'") && Catch::Contains("I32"));
}

TEST_CASE("safetensors: unaligned data loads correctly", "[io][safetensors]") {
  TempDir dir("unaligned");
  std::vector<float> f32 = {1.25f, -7.5f, 3.0e-40f};
  std::vector<uint16_t> f16 = {0x3C00, 0x0001};
  std::string header = R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                       R"("b":{"dtype":"F16","shape":[2],"data_offsets":[12,16]}})";
  if (header.size() % 2 == 0) header += ' ';  // odd length: data starts at an odd offset
  REQUIRE((8 + header.size()) % 2 == 1);
  std::string bytes = st_file(header, bytes_of(f32) + bytes_of(f16));
  auto path = dir.path / "odd.safetensors";
  write_bytes(path, bytes);
  for (const auto& f : {SafetensorsFile::parse(bytes), SafetensorsFile::open(path)}) {
    auto a = f.load_float("a");
    REQUIRE(a.size() == 3);
    for (size_t i = 0; i < 3; ++i) CHECK(same_bits(a[i], f32[i]));
    auto b = f.load_float("b");
    CHECK(b[0] == 1.0f);
    CHECK(b[1] == std::ldexp(1.0f, -24));
  }
}

TEST_CASE("safetensors: header with no tensors", "[io][safetensors]") {
  auto f = SafetensorsFile::parse(st_file("{}      "));
  CHECK(f.tensors().empty());
  auto g = SafetensorsFile::parse(st_file(R"({"__metadata__":{"k":"v"}})"));
  CHECK(g.metadata().at("k") == "v");
}

// One test per rejection rule.

TEST_CASE("safetensors rejects: file shorter than 8 bytes", "[io][safetensors][reject]") {
  CHECK_THAT(reject(std::string(7, '\0')), Catch::Contains("shorter than the 8-byte"));
  CHECK_THAT(reject(""), Catch::Contains("0 bytes"));
  TempDir dir("short");
  write_bytes(dir.path / "s", "abc");
  CHECK_THROWS_WITH(SafetensorsFile::open(dir.path / "s"), Catch::Contains("shorter"));
}

TEST_CASE("safetensors rejects: header length over 100 MB", "[io][safetensors][reject]") {
  CHECK_THAT(reject(u64_le(100'000'001) + "{}"), Catch::Contains("exceeds the limit"));
  CHECK_THAT(reject(u64_le(~uint64_t{0}) + "{}"), Catch::Contains("exceeds the limit"));
  // From a file, rejected before the header is allocated.
  TempDir dir("huge");
  write_bytes(dir.path / "h", u64_le(100'000'001) + "{}");
  CHECK_THROWS_WITH(SafetensorsFile::open(dir.path / "h"), Catch::Contains("exceeds the limit"));
}

TEST_CASE("safetensors rejects: header past end of file", "[io][safetensors][reject]") {
  CHECK_THAT(reject(u64_le(100) + "{}"), Catch::Contains("runs past the end of the file"));
  TempDir dir("past");
  write_bytes(dir.path / "p", u64_le(50'000'000) + "{}");
  CHECK_THROWS_WITH(SafetensorsFile::open(dir.path / "p"), Catch::Contains("runs past the end"));
}

TEST_CASE("safetensors rejects: header not UTF-8", "[io][safetensors][reject]") {
  CHECK_THAT(reject(st_file("{\"a\xFF\":1}")), Catch::Contains("not valid UTF-8"));
  CHECK_THAT(reject(st_file("{\"\xC0\xAF\":1}")), Catch::Contains("not valid UTF-8"));  // overlong
  CHECK_THAT(reject(st_file("{\"\xED\xA0\x80\":1}")), Catch::Contains("UTF-8"));        // surrogate
}

TEST_CASE("safetensors rejects: header not JSON", "[io][safetensors][reject]") {
  CHECK_THAT(reject(st_file("{\"a\": }")), Catch::Contains("not valid JSON"));
  CHECK_THAT(reject(st_file("{} trailing")), Catch::Contains("not valid JSON"));
}

TEST_CASE("safetensors rejects: header JSON not an object", "[io][safetensors][reject]") {
  CHECK_THAT(reject(st_file("[1, 2]")), Catch::Contains("not a JSON object"));
  CHECK_THAT(reject(st_file("\"str\"")), Catch::Contains("not a JSON object"));
  CHECK_THAT(reject(st_file(R"({"t":[1,2]})")), Catch::Contains("entry must be a JSON object"));
}

TEST_CASE("safetensors rejects: duplicate key", "[io][safetensors][reject]") {
  CHECK_THAT(reject(st_file(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                            R"("t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                            std::string(8, '\0'))),
             Catch::Contains("duplicate key 't'"));
  CHECK_THAT(reject(st_file(R"({"t":{"dtype":"F32","dtype":"F32","shape":[1],)"
                            R"("data_offsets":[0,4]}})",
                            std::string(4, '\0'))),
             Catch::Contains("duplicate key 'dtype'"));
}

TEST_CASE("safetensors rejects: missing dtype/shape/data_offsets", "[io][safetensors][reject]") {
  std::string data(4, '\0');
  SECTION("dtype") {
    CHECK_THAT(reject(st_file(R"({"t":{"shape":[1],"data_offsets":[0,4]}})", data)),
               Catch::Contains("'t': missing field 'dtype'"));
  }
  SECTION("shape") {
    CHECK_THAT(reject(st_file(R"({"t":{"dtype":"F32","data_offsets":[0,4]}})", data)),
               Catch::Contains("missing field 'shape'"));
  }
  SECTION("data_offsets") {
    CHECK_THAT(reject(st_file(R"({"t":{"dtype":"F32","shape":[1]}})", data)),
               Catch::Contains("missing field 'data_offsets'"));
  }
  SECTION("extra field") {
    CHECK_THAT(
        reject(st_file(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", data)),
        Catch::Contains("unexpected field 'x'"));
  }
  SECTION("wrong types") {
    CHECK_THAT(reject(st_file(R"({"t":{"dtype":5,"shape":[1],"data_offsets":[0,4]}})", data)),
               Catch::Contains("dtype must be a string"));
    CHECK_THAT(reject(st_file(R"({"t":{"dtype":"F32","shape":"1","data_offsets":[0,4]}})", data)),
               Catch::Contains("shape must be an array"));
    CHECK_THAT(reject(st_file(R"({"t":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}})", data)),
               Catch::Contains("non-negative integer"));
    CHECK_THAT(reject(st_file(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}})", data)),
               Catch::Contains("data_offsets must be an array [begin, end]"));
  }
}

TEST_CASE("safetensors rejects: unknown dtype", "[io][safetensors][reject]") {
  CHECK_THAT(reject(st_file(R"({"t":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})",
                            std::string(16, '\0'))),
             Catch::Contains("unknown or unsupported dtype \"F128\""));
  CHECK_THAT(reject(st_file(R"({"t":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})",
                            std::string(4, '\0'))),
             Catch::Contains("dtype"));
}

TEST_CASE("safetensors rejects: negative shape", "[io][safetensors][reject]") {
  CHECK_THAT(reject(st_file(R"({"t":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,0]}})")),
             Catch::Contains("shape dimension is negative (-1)"));
}

TEST_CASE("safetensors rejects: shape product overflow", "[io][safetensors][reject]") {
  CHECK_THAT(reject(st_file(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],)"
                            R"("data_offsets":[0,0]}})")),
             Catch::Contains("overflows"));
  CHECK_THAT(reject(st_file(R"({"t":{"dtype":"F32","shape":[18446744073709551615],)"
                            R"("data_offsets":[0,0]}})")),
             Catch::Contains("overflows"));
  // numel fits but numel x 8 bytes does not.
  CHECK_THAT(reject(st_file(R"({"t":{"dtype":"F64","shape":[4611686018427387904],)"
                            R"("data_offsets":[0,0]}})")),
             Catch::Contains("needs 4611686018427387904 x 8 bytes"));
}

TEST_CASE("safetensors rejects: byte size != numel x dtype size", "[io][safetensors][reject]") {
  CHECK_THAT(reject(st_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})",
                            std::string(4, '\0'))),
             Catch::Contains("span 4 bytes but shape [2] of F32 needs 2 x 4 bytes"));
}

TEST_CASE("safetensors rejects: offsets with a gap", "[io][safetensors][reject]") {
  CHECK_THAT(reject(st_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                            R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                            std::string(12, '\0'))),
             Catch::Contains("tensor 'b' begins at data offset 8, leaving a gap of 4 bytes"));
}

TEST_CASE("safetensors rejects: offsets overlapping", "[io][safetensors][reject]") {
  CHECK_THAT(reject(st_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                            std::string(12, '\0'))),
             Catch::Contains("overlapping tensor 'a'"));
  // Two tensors sharing the same bytes.
  CHECK_THAT(reject(st_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                            R"("b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                            std::string(4, '\0'))),
             Catch::Contains("overlapping"));
}

TEST_CASE("safetensors rejects: offsets not starting at 0", "[io][safetensors][reject]") {
  CHECK_THAT(reject(st_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                            std::string(8, '\0'))),
             Catch::Contains("must start at offset 0"));
}

TEST_CASE("safetensors rejects: trailing bytes", "[io][safetensors][reject]") {
  CHECK_THAT(reject(st_file(kOneF32, std::string(5, '\0'))),
             Catch::Contains("1 trailing bytes after the last tensor"));
  TempDir dir("trailing");
  write_bytes(dir.path / "t", st_file(kOneF32, std::string(4 + 1000, '\0')));
  CHECK_THROWS_WITH(SafetensorsFile::open(dir.path / "t"), Catch::Contains("1000 trailing bytes"));
}

TEST_CASE("safetensors rejects: data truncated", "[io][safetensors][reject]") {
  CHECK_THAT(reject(st_file(kOneF32, std::string(3, '\0'))),
             Catch::Contains("data truncated: header needs 4 data bytes but only 3"));
  // A header claiming terabytes of data is refused from the file size alone.
  TempDir dir("truncated");
  write_bytes(dir.path / "t", st_file(R"({"t":{"dtype":"U8","shape":[1099511627776],)"
                                      R"("data_offsets":[0,1099511627776]}})"));
  CHECK_THROWS_WITH(SafetensorsFile::open(dir.path / "t"), Catch::Contains("truncated"));
}

TEST_CASE("safetensors rejects: non-string metadata value", "[io][safetensors][reject]") {
  CHECK_THAT(reject(st_file(R"({"__metadata__":{"epoch":3}})")),
             Catch::Contains("__metadata__ value for 'epoch' must be a string, got 3"));
  CHECK_THAT(reject(st_file(R"({"__metadata__":["x"]})")),
             Catch::Contains("__metadata__ must be a JSON object"));
}

TEST_CASE("safetensors rejects: begin > end", "[io][safetensors][reject]") {
  CHECK_THAT(reject(st_file(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})",
                            std::string(8, '\0'))),
             Catch::Contains("data_offsets begin 8 > end 4"));
}
