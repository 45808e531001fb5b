#include <bd3/io/npy.hpp>

#include <catch2/catch.hpp>

#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() /
             ("bd3_test_npy_" + name + "_" + std::to_string(::getpid()))) {
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

// A hand-built .npy: magic, version, header length, the dict padded to 64 bytes, data.
std::string npy_bytes(const std::string& dict, const std::string& data, int major = 1) {
  size_t prefix = major == 1 ? 10 : 12;
  std::string header = dict;
  while ((prefix + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  uint32_t n = static_cast<uint32_t>(header.size());
  out.append(reinterpret_cast<const char*>(&n), major == 1 ? 2 : 4);
  return out + header + data;
}

template <class T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

std::string reject(TempDir& dir, const std::string& bytes) {
  auto path = dir.path / "bad.npy";
  write_bytes(path, bytes);
  try {
    bd3::io::read_npy(path);
  } catch (const bd3::Error& e) {
    CHECK(e.kind() == bd3::ErrorKind::invalid_input);
    std::string msg = e.what();
    CHECK(msg.find("bad.npy") != std::string::npos);
    return msg;
  }
  FAIL("malformed .npy was accepted");
  return "";
}

const std::string kDict23 = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";

}  // namespace

TEST_CASE("npy: write -> read round trip", "[io][npy]") {
  TempDir dir("roundtrip");
  struct Case {
    std::vector<int64_t> shape;
    std::vector<float> data;
  };
  std::vector<Case> cases = {
      {{2, 3}, {1, -2, 3.5f, -0.0f, std::numeric_limits<float>::infinity(), 1e-42f}},
      {{5}, {0, 1, 2, 3, 4}},
      {{}, {42.0f}},
      {{0, 4}, {}},
      {{1, 2, 1, 2}, {std::bit_cast<float>(0x7FC12345u), 2, 3, 4}},
  };
  for (const auto& c : cases) {
    auto path = dir.path / "a.npy";
    bd3::io::write_npy(path, c.shape, c.data);
    std::string bytes = read_bytes(path);
    size_t header_end =
        10 + (static_cast<unsigned char>(bytes[8]) | static_cast<unsigned char>(bytes[9]) << 8);
    CHECK(header_end % 64 == 0);
    CHECK(bytes[header_end - 1] == '\n');
    CHECK(bytes.size() == header_end + c.data.size() * 4);
    auto a = bd3::io::read_npy(path);
    CHECK(a.shape == c.shape);
    REQUIRE(a.data.size() == c.data.size());
    CHECK((c.data.empty() || std::memcmp(a.data.data(), c.data.data(), c.data.size() * 4) == 0));
  }
  // The header is the one numpy itself writes.
  std::vector<int64_t> shape = {5};
  std::vector<float> data(5);
  bd3::io::write_npy(dir.path / "b.npy", shape, data);
  CHECK(read_bytes(dir.path / "b.npy").substr(10, 61) ==
        "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }    ");

  int entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path)) ++entries;
  CHECK(entries == 2);  // no temporary files left behind

  CHECK_THROWS_WITH(bd3::io::write_npy(dir.path / "c.npy", std::vector<int64_t>{4}, data),
                    Catch::Contains("5 values"));
  CHECK_THROWS_AS(bd3::io::write_npy(dir.path / "no_dir" / "c.npy", shape, data), bd3::Error);
}

TEST_CASE("npy: reads every parity fixture", "[io][npy]") {
  fs::path dir = fs::path(BD3_FIXTURES_DIR) / "parity" / "b4";
  int count = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".npy") continue;
    INFO(e.path());
    auto a = bd3::io::read_npy(e.path());
    int64_t numel = 1;
    for (int64_t d : a.shape) numel *= d;
    CHECK(static_cast<size_t>(numel) == a.data.size());
    for (float x : a.data) REQUIRE(std::isfinite(x));
    ++count;
  }
  CHECK(count == 13);
  auto logits = bd3::io::read_npy(dir / "train_logits.npy");
  CHECK(logits.shape == std::vector<int64_t>{32, 97});
  CHECK(logits.data.size() == 32 * 97);
}

TEST_CASE("npy: accepts v2.0, double quotes, any key order and <f8", "[io][npy]") {
  TempDir dir("variants");
  std::vector<float> f = {1, 2, 3, 4, 5, 6};
  write_bytes(dir.path / "v2.npy", npy_bytes(kDict23, bytes_of(f), 2));
  auto a = bd3::io::read_npy(dir.path / "v2.npy");
  CHECK(a.shape == std::vector<int64_t>{2, 3});
  CHECK(a.data == f);

  std::vector<double> d = {0.1, -1e300, 1e-50, 2.5};
  write_bytes(
      dir.path / "f8.npy",
      npy_bytes("{\"shape\": (4,), \"fortran_order\": False, \"descr\": \"<f8\"}", bytes_of(d)));
  auto b = bd3::io::read_npy(dir.path / "f8.npy");
  CHECK(b.shape == std::vector<int64_t>{4});
  CHECK(b.data[0] == 0.1f);
  CHECK(b.data[1] == -std::numeric_limits<float>::infinity());
  CHECK(b.data[2] == 0.0f);
  CHECK(b.data[3] == 2.5f);
}

TEST_CASE("npy rejects malformed files", "[io][npy][reject]") {
  TempDir dir("reject");
  std::string six(24, '\0');
  SECTION("bad magic") {
    std::string bytes = npy_bytes(kDict23, six);
    bytes[1] = 'X';
    CHECK_THAT(reject(dir, bytes), Catch::Contains("bad magic"));
    CHECK_THAT(reject(dir, "\x93NUM"), Catch::Contains("too short"));
  }
  SECTION("unsupported version") {
    std::string bytes = npy_bytes(kDict23, six);
    bytes[6] = 3;
    CHECK_THAT(reject(dir, bytes), Catch::Contains("unsupported .npy version 3.0"));
  }
  SECTION("truncated data") {
    CHECK_THAT(reject(dir, npy_bytes(kDict23, std::string(23, '\0'))),
               Catch::Contains("needs 24 data bytes but the file has 23 (truncated)"));
  }
  SECTION("trailing data") {
    CHECK_THAT(reject(dir, npy_bytes(kDict23, std::string(28, '\0'))),
               Catch::Contains("(trailing bytes)"));
  }
  SECTION("header past end of file") {
    std::string bytes = npy_bytes(kDict23, six);
    bytes[9] = '\x7F';
    CHECK_THAT(reject(dir, bytes), Catch::Contains("runs past the end of the file"));
  }
  SECTION("fortran order") {
    CHECK_THAT(
        reject(dir, npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", six)),
        Catch::Contains("Fortran-order"));
  }
  SECTION("unsupported dtype") {
    for (const char* descr : {"<i4", ">f4", "<f2", "|u1"}) {
      std::string dict =
          std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (2, 3), }";
      CHECK_THAT(reject(dir, npy_bytes(dict, six)),
                 Catch::Contains(std::string("unsupported .npy dtype '") + descr + "'"));
    }
  }
  SECTION("shape overflow") {
    CHECK_THAT(reject(dir, npy_bytes("{'descr': '<f4', 'fortran_order': False, "
                                     "'shape': (4294967296, 4294967296), }",
                                     six)),
               Catch::Contains("overflows 64-bit element count"));
    CHECK_THAT(reject(dir, npy_bytes("{'descr': '<f4', 'fortran_order': False, "
                                     "'shape': (99999999999999999999,), }",
                                     six)),
               Catch::Contains("overflows 64 bits"));
    CHECK_THAT(reject(dir, npy_bytes("{'descr': '<f4', 'fortran_order': False, "
                                     "'shape': (4611686018427387904,), }",
                                     six)),
               Catch::Contains("overflows 64-bit byte count"));
  }
  SECTION("malformed header text") {
    CHECK_THAT(reject(dir, npy_bytes("{'descr': '<f4', 'shape': (2, 3), }", six)),
               Catch::Contains("missing key 'fortran_order'"));
    CHECK_THAT(
        reject(dir, npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (6), }", six)),
        Catch::Contains("trailing comma"));
    CHECK_THAT(
        reject(dir, npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-6,), }", six)),
        Catch::Contains("non-negative integers"));
    CHECK_THAT(reject(dir, npy_bytes("{'descr': '<f4', 'fortran_order': 0, 'shape': (6,), }", six)),
               Catch::Contains("True or False"));
    CHECK_THAT(reject(dir, npy_bytes(kDict23 + " x", six)),
               Catch::Contains("unexpected text after the dict"));
    CHECK_THAT(reject(dir, npy_bytes("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, "
                                     "'shape': (2, 3), }",
                                     six)),
               Catch::Contains("duplicate key 'descr'"));
    CHECK_THAT(reject(dir, npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), "
                                     "'extra': 1}",
                                     six)),
               Catch::Contains("unexpected key 'extra'"));
    std::string no_newline = npy_bytes(kDict23, six);
    no_newline[10 + static_cast<unsigned char>(no_newline[8]) - 1] = ' ';
    CHECK_THAT(reject(dir, no_newline), Catch::Contains("does not end with a newline"));
  }
}
