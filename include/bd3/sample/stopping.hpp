#pragma once
// The stop rules of the official sampler (SPEC "Stop rules"): a sample whose last 256
// tokens have a unigram entropy below 4 nats is degenerate; in variable-length mode a
// sample also ends at its second EOS.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace bd3::sample {

struct StopRule {
  int window = 256;          // tokens whose entropy is checked (once there are more)
  double min_entropy = 4.0;  // nats
};

// Unigram entropy, in nats, of the empirical token distribution of ids.
inline double unigram_entropy(std::span<const int32_t> ids) {
  if (ids.empty()) return 0.0;
  std::vector<int32_t> sorted(ids.begin(), ids.end());
  std::sort(sorted.begin(), sorted.end());
  const double n = double(sorted.size());
  double h = 0;
  for (size_t i = 0; i < sorted.size();) {
    size_t j = i;
    while (j < sorted.size() && sorted[j] == sorted[i]) ++j;
    const double q = double(j - i) / n;
    h -= q * std::log(q);
    i = j;
  }
  return h;
}

// True when the sequence is longer than the window and its last `window` tokens have an
// entropy below the limit.
inline bool is_degenerate(std::span<const int32_t> ids, const StopRule& rule = {}) {
  if (ids.size() <= size_t(rule.window)) return false;
  return unigram_entropy(ids.subspan(ids.size() - size_t(rule.window))) < rule.min_entropy;
}

// Variable-length stop: the length to keep (up to and including the EOS) when ids holds
// a second EOS at a position >= `from` (the generated part: a prompt is never cut). EOS
// tokens of the prompt count, so when BOS == EOS (GPT-2) the first generated EOS ends it.
inline std::optional<size_t> second_eos_end(std::span<const int32_t> ids, int32_t eos,
                                            size_t from = 0) {
  int seen = 0;
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] == eos && ++seen >= 2 && i >= from) return i + 1;
  return std::nullopt;
}

}  // namespace bd3::sample
