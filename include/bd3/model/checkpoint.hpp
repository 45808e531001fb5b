#pragma once
// Hugging Face checkpoint directories, as the official BD3-LMs ship them:
// config.json (BD3LMConfig) + model.safetensors (official key names).
#include <bd3/error.hpp>
#include <bd3/io/atomic_file.hpp>
#include <bd3/io/json.hpp>
#include <bd3/io/safetensors.hpp>
#include <bd3/model/config.hpp>
#include <bd3/model/parameters.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace bd3 {

// Parses JSON text held in memory; `source` names it in the message.
inline nlohmann::json parse_json_text(std::string_view text, const std::string& source) {
  io::check_json_depth(text, source);
  auto j = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail(source + ": not valid JSON");
  return j;
}

inline nlohmann::json read_json_file(const std::filesystem::path& path,
                                     uintmax_t max_bytes = 64u << 20) {
  std::error_code ec;
  auto size = std::filesystem::file_size(path, ec);
  if (ec) fail("cannot read " + path.string() + ": " + ec.message());
  if (size > max_bytes)
    fail(path.string() + " is " + std::to_string(size) + " bytes: too large for a JSON file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open " + path.string());
  std::string text(size, '\0');
  in.read(text.data(), std::streamsize(size));
  return parse_json_text(text, path.string());
}

namespace detail {
// Runs f(); a bd3::Error whose message does not already start with `source` is prefixed by it.
template <class F>
auto prefix_errors_with(const std::string& source, F&& f) {
  try {
    return f();
  } catch (const Error& e) {
    std::string msg = e.what();
    if (msg.rfind(source, 0) == 0) throw;
    fail(source + ": " + msg);
  }
}
}  // namespace detail

// config.json text held in memory, parsed and validated; `source` prefixes the messages.
inline ModelConfig parse_config_json(std::string_view text, const std::string& source) {
  return detail::prefix_errors_with(
      source, [&] { return ModelConfig::from_json(parse_json_text(text, source)); });
}

inline ModelConfig load_config(const std::filesystem::path& dir) {
  auto path = dir / "config.json";
  return detail::prefix_errors_with(path.string(),
                                    [&] { return ModelConfig::from_json(read_json_file(path)); });
}

// Loads every parameter of `layout` from an open safetensors file into `out` (the flat
// buffer), checking each tensor's presence and shape first.
template <class T>
void load_parameters(const io::SafetensorsFile& file, const ParameterLayout& layout,
                     std::span<T> out, const std::string& source) {
  if (out.size() != size_t(layout.total()))
    fail("load_parameters: buffer size does not match the layout");
  std::vector<float> tmp;
  for (const auto& e : layout.entries()) {
    const auto* info = file.find(e.name);
    auto shape_text = [](const std::vector<int64_t>& s) {
      std::string t = "[";
      for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
      return t + "]";
    };
    if (!info)
      fail(source + ": missing tensor " + e.name + " (expected shape " + shape_text(e.shape) + ")");
    if (info->shape != e.shape)
      fail(source + ": tensor " + e.name + " has shape " + shape_text(info->shape) + ", expected " +
           shape_text(e.shape));
    if constexpr (std::is_same_v<T, float>) {
      file.load_float_into(e.name, out.subspan(size_t(e.offset), size_t(e.size)));
    } else {
      tmp.resize(size_t(e.size));
      file.load_float_into(e.name, tmp);
      std::copy(tmp.begin(), tmp.end(), out.begin() + e.offset);
    }
  }
}

// Reads config.json and model.safetensors of a checkpoint directory. The config is
// validated and the file size checked against the parameter count before any tensor
// is allocated.
struct LoadedCheckpoint {
  ModelConfig config;
  std::vector<float> parameters;  // flat, in ParameterLayout(config) order
};

inline LoadedCheckpoint load_checkpoint(const std::filesystem::path& dir) {
  if (!std::filesystem::is_directory(dir))
    fail("model directory " + dir.string() + " does not exist");
  LoadedCheckpoint ck;
  ck.config = load_config(dir);
  const ParameterLayout layout(ck.config);
  const auto weights = dir / "model.safetensors";
  std::error_code ec;
  auto size = std::filesystem::file_size(weights, ec);
  if (ec) fail("cannot read " + weights.string() + ": " + ec.message());
  // The smallest dtype we load is 2 bytes: a file smaller than that cannot hold the model.
  if (uintmax_t(layout.total()) * 2 > size)
    fail(weights.string() + " has " + std::to_string(size) + " bytes but config.json implies " +
         std::to_string(layout.total()) + " parameters");
  auto file = io::SafetensorsFile::open(weights);
  ck.parameters.assign(size_t(layout.total()), 0.0f);
  load_parameters<float>(file, layout, ck.parameters, weights.string());
  return ck;
}

// Writes config.json and model.safetensors (each atomically), plus the rotary buffer the
// official code stores, so the official code loads the directory.
inline void save_checkpoint(const std::filesystem::path& dir, const ModelConfig& config,
                            std::span<const float> parameters,
                            const std::map<std::string, std::string>& metadata = {}) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail_io("cannot create " + dir.string() + ": " + ec.message());
  const ParameterLayout layout(config);
  if (parameters.size() != size_t(layout.total()))
    fail("save_checkpoint: parameter count does not match the config");
  std::vector<io::TensorToWrite> tensors;
  for (const auto& e : layout.entries())
    tensors.push_back({e.name, e.shape, parameters.subspan(size_t(e.offset), size_t(e.size))});
  const int half = config.head_dim() / 2;
  std::vector<float> inv_freq(half);
  for (int j = 0; j < half; ++j)
    inv_freq[j] = 1.0f / std::pow(10000.0f, float(2 * j) / float(config.head_dim()));
  tensors.push_back({"backbone.rotary_emb.inv_freq", {half}, inv_freq});
  io::write_safetensors(dir / "model.safetensors", tensors, metadata);
  io::write_file_atomic(dir / "config.json", config.to_json().dump(2) + "\n");
}

}  // namespace bd3
