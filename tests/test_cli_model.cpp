// End-to-end: `bd3 forward` reproduces the fixtures' logits and gradients; `bd3 inspect`
// and `bd3 bench` report; bad input and bad usage give one line on stderr and exit 1 / 2.
#include <catch2/catch.hpp>

#include "cli_common.hpp"
#include "parity_common.hpp"

using namespace bd3;
using bd3::test::run_cli;

TEST_CASE("bd3 forward --grad reproduces the fixtures", "[cli][parity]") {
  for (std::string name : {"b4", "b1", "b16_full"}) {
    INFO("fixture " << name);
    auto dir = test::fixture_dir(name);
    auto out = std::filesystem::temp_directory_path() / ("bd3_forward_" + name);
    std::filesystem::remove_all(out);
    auto r = run_cli("forward --model " + dir.string() + " --cases " +
                     (dir / "cases.json").string() + " --out " + out.string() + " --grad");
    REQUIRE(r.exit_code == 0);
    auto line = nlohmann::json::parse(r.out);
    auto cases = test::fixture_cases(name);
    CHECK(line["nelbo_mean"].get<double>() ==
          Approx(cases["train"]["nelbo_mean"].get<double>()).epsilon(1e-5));
    auto logits = io::read_npy(out / "train_logits.npy");
    auto ref = io::read_npy(dir / "train_logits.npy");
    CHECK(logits.shape == ref.shape);
    CHECK(test::relative_max_diff(logits.data, ref.data) < 1e-4);
    int steps = 0;
    for (const auto& s : cases["kv_cache"]["steps"]) {
      auto file = s["logits_file"].get<std::string>();
      auto a = io::read_npy(out / file), b = io::read_npy(dir / file);
      CHECK(test::relative_max_diff(a.data, b.data) < 1e-4);
      ++steps;
    }
    CHECK(line["kv_steps"].get<int>() == steps);
    auto grads = io::SafetensorsFile::open(out / "grads.safetensors");
    auto ref_grads = io::SafetensorsFile::open(dir / "grads.safetensors");
    REQUIRE(!ref_grads.tensors().empty());
    for (const auto& t : ref_grads.tensors()) {
      INFO("gradient " << t.name);
      REQUIRE(grads.find(t.name) != nullptr);
      auto g = grads.load_float(t.name), rg = ref_grads.load_float(t.name);
      REQUIRE(g.size() == rg.size());
      double diff = 0, scale = 0;
      for (size_t i = 0; i < g.size(); ++i) {
        diff = std::max(diff, std::abs(double(g[i]) - rg[i]));
        scale = std::max(scale, std::abs(double(rg[i])));
      }
      CHECK(diff <= 1e-3 * scale);
    }
    std::filesystem::remove_all(out);
  }
}

TEST_CASE("bd3 inspect summarises a checkpoint", "[cli]") {
  auto r = run_cli("inspect --model " + test::fixture_dir("b4").string());
  REQUIRE(r.exit_code == 0);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j["parameters"].get<int64_t>() == 150625);
  CHECK(j["tensors"].get<int>() == 31);
  CHECK(j["non_finite"].get<int>() == 0);
  CHECK(j["config"]["block_size"].get<int>() == 4);
}

TEST_CASE("bd3 bench prints one JSON line", "[cli]") {
  auto r = run_cli("bench --model " + test::fixture_dir("b4").string() +
                   " --what decode --seconds 0.05 --threads 1");
  REQUIRE(r.exit_code == 0);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j["nfe_per_s"].get<double>() > 0);
  // The read bandwidth measured between the decode rounds (a call this small fits in the
  // caches: no probe pass after each call), and the fraction of it the decode calls
  // reached (on this tiny model a figure of call overheads, not of memory).
  CHECK(j["bandwidth_probe"] == "between rounds");
  CHECK(j["read_gb_per_s"].get<double>() > 0);
  CHECK(j["bandwidth_fraction"].get<double>() ==
        Approx(j["gb_per_s"].get<double>() / j["read_gb_per_s"].get<double>()));
  r = run_cli("bench --model " + test::fixture_dir("b4").string() +
              " --what forward --seconds 0.05 --threads 1");
  REQUIRE(r.exit_code == 0);
  CHECK(nlohmann::json::parse(r.out)["tokens_per_s"].get<double>() > 0);
  // bfloat16 decode weights: half the weight bytes in the bytes read per NFE.
  auto f32 = j;
  r = run_cli("bench --model " + test::fixture_dir("b4").string() +
              " --what decode --seconds 0.05 --threads 1 --decode-weights bf16");
  REQUIRE(r.exit_code == 0);
  j = nlohmann::json::parse(r.out);
  CHECK(j["decode_weights"] == "bf16");
  CHECK(f32["decode_weights"] == "f32");
  CHECK(j["bytes_per_nfe"].get<double>() < f32["bytes_per_nfe"].get<double>());
  r = run_cli("bench --model " + test::fixture_dir("b4").string() +
              " --what decode --seconds 0.05 --threads 1 --decode-weights f32-packed");
  REQUIRE(r.exit_code == 0);
  j = nlohmann::json::parse(r.out);
  CHECK(j["decode_weights"] == "f32-packed");
  CHECK(j["bytes_per_nfe"].get<double>() == f32["bytes_per_nfe"].get<double>());
}

TEST_CASE("core commands reject bad input and bad usage with one line", "[cli][errors]") {
  auto tmp = std::filesystem::temp_directory_path() / "bd3_cli_bad";
  std::filesystem::remove_all(tmp);
  std::filesystem::create_directories(tmp);
  struct Case {
    std::string args;
    int code;
  };
  std::ofstream(tmp / "config.json") << "{not json";
  std::vector<Case> cases = {
      {"inspect --model /nonexistent/dir", 1},
      {"inspect --model " + tmp.string(), 1},
      {"inspect", 2},
      {"inspect --model x --bogus-flag", 2},
      {"bench --preset huge", 2},
      {"bench --preset mid --model x", 2},
      {"bench --preset mid --what nothing", 2},
      {"bench --preset mid --what forward --decode-weights bf16", 2},
      {"bench --preset mid --what train --decode-weights f32-packed", 2},
      {"bench --preset mid --what decode --decode-weights f64", 2},
      {"forward --model " + test::fixture_dir("b4").string() + " --cases /nonexistent.json --out " +
           tmp.string(),
       1},
      {"frobnicate", 2},
  };
  for (const auto& c : cases) {
    INFO("bd3 " << c.args << "\nstderr: " << bd3::test::run_cli(c.args).err);
    auto r = run_cli(c.args);
    CHECK(r.exit_code == c.code);
    CHECK(test::count_lines(r.err) == 1);
    CHECK(r.out.empty());
  }
  std::filesystem::remove_all(tmp);
}
