#pragma once
// The parity fixtures' cases.json (tests/data/fixtures/README.md): the inputs of the
// training forward ("train": xt, x0, t_per_block) and of sampling with the KV cache
// ("kv_cache": steps of noisy_block, clean_block), validated against the model's config.
// Other fields (the reference results: nelbo_mean, logits_file...) are ignored here.
#include <bd3/error.hpp>
#include <bd3/model/checkpoint.hpp>
#include <bd3/model/config.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bd3::io {

struct ParityTrainCase {
  std::vector<int32_t> xt, x0;      // model_length ids each
  std::vector<double> t_per_block;  // model_length / block_size times, each in (0, 1]
};

struct ParityCacheStep {
  std::vector<int32_t> noisy_block, clean_block;  // block_size ids each
};

struct ParityCases {
  std::optional<ParityTrainCase> train;                  // when cases.json has "train"
  std::optional<std::vector<ParityCacheStep>> kv_cache;  // when it has "kv_cache"
};

namespace detail {

inline std::vector<int32_t> parity_ids(const nlohmann::json* j, const char* what, int vocab) {
  if (j == nullptr || !j->is_array())
    fail(std::string("cases.json: ") + what + " must be an array of token ids");
  std::vector<int32_t> out;
  out.reserve(j->size());
  for (const auto& v : *j) {
    if (!v.is_number_integer()) fail(std::string("cases.json: ") + what + " holds a non-integer");
    // A value above INT64_MAX is unsigned in nlohmann: print it as it is written.
    const bool huge = v.is_number_unsigned() && v.get<uint64_t>() >= uint64_t(vocab);
    const int64_t id = huge ? vocab : v.get<int64_t>();
    if (id < 0 || id >= vocab)
      fail(std::string("cases.json: ") + what + " holds id " + v.dump() + ", outside [0, " +
           std::to_string(vocab) + ")");
    out.push_back(int32_t(id));
  }
  return out;
}

// The member `key` of an object, or nullptr when absent.
inline const nlohmann::json* parity_member(const nlohmann::json& object, const char* key) {
  auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

inline ParityTrainCase parse_parity_train(const nlohmann::json& tr, const ModelConfig& config) {
  const int L = config.model_length, V = config.vocab_size, Bp = config.block_size;
  if (!tr.is_object()) fail("cases.json: train must be an object");
  ParityTrainCase c;
  c.xt = parity_ids(parity_member(tr, "xt"), "train.xt", V);
  c.x0 = parity_ids(parity_member(tr, "x0"), "train.x0", V);
  if (int64_t(c.xt.size()) != L || int64_t(c.x0.size()) != L)
    fail("cases.json: train.xt and train.x0 must hold model_length = " + std::to_string(L) +
         " ids");
  const nlohmann::json* t = parity_member(tr, "t_per_block");
  if (t == nullptr || !t->is_array() || int64_t(t->size()) != L / Bp)
    fail("cases.json: train.t_per_block must hold " + std::to_string(L / Bp) + " numbers");
  for (const auto& v : *t) {
    if (!v.is_number()) fail("cases.json: train.t_per_block holds a non-number");
    const double time = v.get<double>();
    if (!(time > 0 && time <= 1)) fail("cases.json: train.t_per_block values must be in (0, 1]");
    c.t_per_block.push_back(time);
  }
  return c;
}

inline std::vector<ParityCacheStep> parse_parity_kv_cache(const nlohmann::json& kv,
                                                          const ModelConfig& config) {
  const int V = config.vocab_size, Bp = config.block_size;
  const nlohmann::json* steps = kv.is_object() ? parity_member(kv, "steps") : nullptr;
  if (steps == nullptr || !steps->is_array()) fail("cases.json: kv_cache.steps must be an array");
  std::vector<ParityCacheStep> out;
  for (const auto& s : *steps) {
    if (!s.is_object()) fail("cases.json: kv_cache.steps must hold objects");
    ParityCacheStep step;
    step.noisy_block = parity_ids(parity_member(s, "noisy_block"), "noisy_block", V);
    step.clean_block = parity_ids(parity_member(s, "clean_block"), "clean_block", V);
    if (int64_t(step.noisy_block.size()) != Bp || int64_t(step.clean_block.size()) != Bp)
      fail("cases.json: kv_cache blocks must hold block_size = " + std::to_string(Bp) + " ids");
    out.push_back(std::move(step));
  }
  return out;
}

}  // namespace detail

// Validates parsed cases.json against `config` (a validated ModelConfig).
inline ParityCases parse_parity_cases(const nlohmann::json& cases, const ModelConfig& config) {
  if (!cases.is_object()) fail("cases.json: not a JSON object");
  ParityCases out;
  if (auto* tr = detail::parity_member(cases, "train"))
    out.train = detail::parse_parity_train(*tr, config);
  if (auto* kv = detail::parity_member(cases, "kv_cache"))
    out.kv_cache = detail::parse_parity_kv_cache(*kv, config);
  return out;
}

// The same from JSON text; `source` names it when the text is not JSON.
inline ParityCases parse_parity_cases_text(std::string_view text, const ModelConfig& config,
                                           const std::string& source = "cases.json") {
  return parse_parity_cases(parse_json_text(text, source), config);
}

}  // namespace bd3::io
