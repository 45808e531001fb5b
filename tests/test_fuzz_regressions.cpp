// What the fuzz targets (fuzz/) found: every input saved under
// tests/data/fuzz_regressions/<target>/ goes through that target's entry point
// (fuzz/targets.hpp) and must end in success or a clean bd3::Error; plus one precise
// check per fix (docs/reliability.md, "Fuzzing").
#include "../fuzz/targets.hpp"

#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <string>

namespace fs = std::filesystem;

namespace {

using EntryPoint = void (*)(std::string_view);

const std::map<std::string, EntryPoint>& entry_points() {
  static const std::map<std::string, EntryPoint> entries = {
      {"fuzz_safetensors", bd3::fuzz::safetensors},
      {"fuzz_config_json", bd3::fuzz::config_json},
      {"fuzz_gpt2_vocab", bd3::fuzz::gpt2_vocab},
      {"fuzz_gpt2_merges", bd3::fuzz::gpt2_merges},
      {"fuzz_tokenizer_json", bd3::fuzz::tokenizer_json},
      {"fuzz_encode_decode", bd3::fuzz::encode_decode},
      {"fuzz_token_cache", bd3::fuzz::token_cache},
      {"fuzz_trainer_state", bd3::fuzz::trainer_state},
      {"fuzz_cases_json", bd3::fuzz::cases_json},
      {"fuzz_npy", bd3::fuzz::npy},
  };
  return entries;
}

const fs::path kRegressions = fs::path(BD3_TEST_DATA_DIR) / "fuzz_regressions";

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// The message of the bd3::Error that f throws ("" when it throws none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const bd3::Error& e) {
    return e.what();
  }
  return "";
}

std::string nested_arrays(size_t depth) {
  return std::string(depth, '[') + std::string(depth, ']');
}

}  // namespace

TEST_CASE("fuzz regressions: every saved input ends in success or bd3::Error", "[fuzz]") {
  REQUIRE(fs::is_directory(kRegressions));
  size_t inputs = 0;
  for (const auto& dir : fs::directory_iterator(kRegressions)) {
    const std::string target = dir.path().filename().string();
    INFO("folder " << target);
    REQUIRE(entry_points().count(target) == 1);  // named after a fuzz target
    for (const auto& file : fs::directory_iterator(dir.path())) {
      INFO("input " << file.path().string());
      CHECK_NOTHROW(entry_points().at(target)(read_bytes(file.path())));
      ++inputs;
    }
  }
  CHECK(inputs > 0);
}

TEST_CASE("fuzz regressions: deeply nested JSON is refused before it is used", "[fuzz]") {
  const std::string deep = nested_arrays(100000);
  const std::string header = "{\"a\":" + deep + "}";
  std::string file(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(file.data(), &n, 8);
  CHECK_THAT(error_of([&] { bd3::io::SafetensorsFile::parse(file + header); }),
             Catch::Contains("safetensors header nests JSON deeper than 128 levels"));
  CHECK_THAT(error_of([&] { bd3::parse_config_json("{\"n_heads\":" + deep + "}", "config.json"); }),
             Catch::Contains("config.json: JSON nested deeper than 128 levels"));
  CHECK_THAT(
      error_of([&] {
        bd3::text::Gpt2Tokenizer::from_tokenizer_json_string("{\"model\":{\"type\":" + deep + "}}");
      }),
      Catch::Contains("tokenizer.json: JSON nested deeper than 128 levels"));
  // 128 levels are fine; brackets inside strings do not count.
  CHECK_FALSE(bd3::io::json_nests_deeper_than(nested_arrays(128), 128));
  CHECK(bd3::io::json_nests_deeper_than(nested_arrays(129), 128));
  CHECK_FALSE(bd3::io::json_nests_deeper_than("[\"" + std::string(500, '[') + "\\\"\"]", 128));
}

TEST_CASE("fuzz regressions: trainer_state.json integers and hyper-parameters are checked",
          "[fuzz]") {
  nlohmann::json state = bd3::train::TrainerState{}.to_json();
  auto error_with = [&](auto&& change) {
    nlohmann::json j = state;
    change(j);
    return error_of([&] { bd3::train::TrainerState::from_json(j, "trainer_state.json"); });
  };
  CHECK(error_with([](nlohmann::json&) {}).empty());
  // A fraction or an out-of-range number must not reach get<int64_t>() (undefined behaviour).
  CHECK_THAT(error_with([](nlohmann::json& j) { j["step"] = 1e300; }),
             Catch::Contains("trainer_state.json: \"step\" must be an integer"));
  CHECK_THAT(error_with([](nlohmann::json& j) { j["options"]["batch"] = 2.5; }),
             Catch::Contains("bad hyper-parameters: \"batch\" must be an integer"));
  // warmup = INT64_MIN overflowed the learning-rate schedule (signed overflow).
  CHECK_THAT(error_with([](nlohmann::json& j) {
               j["options"]["warmup"] = std::numeric_limits<int64_t>::min();
             }),
             Catch::Contains("bad hyper-parameters: --warmup must be >= 0"));
  const nlohmann::json pointer = {
      {"format", "bd3-checkpoint-pointer"}, {"version", 1}, {"current", "ckpt-1"}, {"step", 0.5}};
  CHECK_THAT(error_of([&] { bd3::train::parse_checkpoint_pointer(pointer, "checkpoint.json"); }),
             Catch::Contains("checkpoint.json: \"step\" must be an integer"));
}

TEST_CASE("fuzz regressions: messages name the values as written", "[fuzz]") {
  // Integers above INT64_MAX are printed as written, not wrapped around (as -1).
  CHECK_THAT(error_of([] {
               bd3::parse_config_json(
                   R"({"block_size": 4, "vocab_size": 18446744073709551615, "model_length": 32,
                       "hidden_dim": 64, "n_blocks": 2, "n_heads": 4})",
                   "config.json");
             }),
             Catch::Contains("\"vocab_size\" = 18446744073709551615 is out of range"));
  const auto config = bd3::load_config(bd3::fuzz::fixtures() / "parity" / "b4");
  CHECK_THAT(error_of([&] {
               bd3::io::parse_parity_cases_text(R"({"kv_cache": {"steps": [{"noisy_block":
                   [18446744073709551615, 1, 2, 3], "clean_block": [0, 1, 2, 3]}]}})",
                                                config);
             }),
             Catch::Contains("noisy_block holds id 18446744073709551615, outside [0, 97)"));
  // A "train" that is not an object is our error, not nlohmann's type_error.
  CHECK_THAT(error_of([&] { bd3::io::parse_parity_cases_text(R"({"train": [1, 2]})", config); }),
             Catch::Equals("cases.json: train must be an object"));
}

TEST_CASE("fuzz regressions: a tokenizer with added special tokens saves and loads back",
          "[fuzz]") {
  const std::string json =
      read_bytes(kRegressions / "fuzz_tokenizer_json" / "added_special_token.json");
  const auto tokenizer = bd3::text::Gpt2Tokenizer::from_tokenizer_json_string(json);
  CHECK_FALSE(tokenizer.fits_gpt2_files());
  const fs::path dir =
      fs::temp_directory_path() / ("bd3_fuzz_regression_tok_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  bd3::text::Tokenizer(tokenizer).save_to(dir);
  CHECK(fs::exists(dir / "tokenizer.json"));
  CHECK_FALSE(fs::exists(dir / "vocab.json"));
  const auto loaded = bd3::text::Tokenizer::load_from(dir);
  CHECK(loaded.fingerprint() == tokenizer.fingerprint());
  const std::string text = "a<|pad|>b<|endoftext|>";
  CHECK(loaded.encode(text, true) == tokenizer.encode(text, true));
  fs::remove_all(dir);
}

TEST_CASE("fuzz regressions: .npy sizes that overflow are refused before allocating", "[fuzz]") {
  const fs::path dir = kRegressions / "fuzz_npy";
  CHECK_THAT(error_of([&] { bd3::io::read_npy(dir / "shape_overflow.npy"); }),
             Catch::Contains("overflows 64-bit element count"));
  CHECK_THAT(error_of([&] { bd3::io::read_npy(dir / "byte_count_overflow.npy"); }),
             Catch::Contains("overflows 64-bit byte count"));
  CHECK_THAT(error_of([&] { bd3::io::read_npy(dir / "header_past_end.npy"); }),
             Catch::Contains("runs past the end of the file"));
  // float64 beyond float's range narrows to infinity (a plain cast would be undefined).
  const auto a = bd3::io::read_npy(dir / "f64_out_of_float_range.npy");
  REQUIRE(a.data.size() == 2);
  CHECK(a.data[0] == std::numeric_limits<float>::infinity());
  CHECK(a.data[1] == -std::numeric_limits<float>::infinity());
}
