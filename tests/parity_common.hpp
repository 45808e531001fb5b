#pragma once
// Helpers shared by the tests that read the official code's parity fixtures.
#include <bd3/bd3.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

namespace bd3::test {

inline std::filesystem::path fixture_dir(const std::string& name) {
  return std::filesystem::path(BD3_FIXTURES_DIR) / "parity" / name;
}

inline nlohmann::json fixture_cases(const std::string& name) {
  return read_json_file(fixture_dir(name) / "cases.json");
}

// max |a - b| / max(1, max |ref|): the fixtures' agreement measure for logits.
template <class T, class U = float>
double relative_max_diff(const std::vector<T>& a, const std::vector<U>& ref) {
  double diff = 0, scale = 1;
  for (size_t i = 0; i < ref.size(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - double(ref[i])));
    scale = std::max(scale, std::abs(double(ref[i])));
  }
  return diff / scale;
}

template <class Model>
Model load_fixture_model(const std::string& name) {
  auto ck = load_checkpoint(fixture_dir(name));
  Model model(ck.config);
  std::copy(ck.parameters.begin(), ck.parameters.end(), model.parameters().begin());
  model.parameters_changed();
  return model;
}

inline std::vector<int32_t> ids(const nlohmann::json& j) {
  return j.get<std::vector<int32_t>>();
}

}  // namespace bd3::test
