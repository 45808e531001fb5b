#pragma once
// One position's token distribution as the samplers use it (SPEC "Sampling"): SUBS
// (the MASK logit is -inf), temperature, top-k, nucleus (top-p), renormalised, in double;
// and Gumbel-max sampling from it with a counter-based stream.
#include <bd3/error.hpp>
#include <bd3/sample/random.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

namespace bd3::sample {

struct Filter {
  double temperature = 1.0;  // 0: greedy (the most probable token)
  int top_k = 0;             // 0: off
  double top_p = 1.0;        // 1: off

  void validate() const {
    if (!(temperature >= 0.0 && std::isfinite(temperature)))
      fail_usage("temperature must be a finite number >= 0");
    if (top_k < 0) fail_usage("top-k must be >= 0 (0 = off)");
    if (!(top_p > 0.0 && top_p <= 1.0)) fail_usage("top-p must be in (0, 1]");
  }
};

struct TokenDistribution {
  std::vector<double> p;         // [V], zero for MASK and outside the kept support
  std::vector<int32_t> support;  // the kept ids when filtered; empty: every id with p > 0
  int32_t top = 0;               // the most probable kept id (lowest id on ties)
  double top_prob = 0;           // its probability here
  double confidence = 0;         // the model's top probability (temperature 1, unfiltered):
                                 // what the threshold sampler compares with tau
  bool greedy = false;           // temperature 0: sampling returns `top`
};

namespace detail {
// Descending probability, then ascending id: a total order, so filtering is deterministic.
struct ByProbability {
  const double* p;
  bool operator()(int32_t a, int32_t b) const { return p[a] > p[b] || (p[a] == p[b] && a < b); }
};
}  // namespace detail

// Builds the distribution of one position from its raw logits [V]. Filtering changes
// which tokens can be drawn, not how confident the model is: `confidence` ignores it.
template <class T>
void make_distribution(const T* logits, int V, int32_t mask_id, const Filter& f,
                       TokenDistribution& d) {
  // Greedy decoding still reports the model's (temperature 1) confidence.
  const double inv_temp = f.temperature > 0 ? 1.0 / f.temperature : 1.0;
  double lmax = -std::numeric_limits<double>::infinity();
  for (int v = 0; v < V; ++v)
    if (v != mask_id) lmax = std::max(lmax, double(logits[v]));
  if (!std::isfinite(lmax))
    throw Error(ErrorKind::numerical, "sampling: the model produced non-finite logits");
  d.p.resize(size_t(V));
  d.support.clear();
  d.greedy = f.temperature == 0;
  double sum = 0;
  for (int v = 0; v < V; ++v) {
    const double e = v == mask_id ? 0.0 : std::exp((double(logits[v]) - lmax) * inv_temp);
    d.p[v] = e;
    sum += e;
  }
  if (!std::isfinite(sum))
    throw Error(ErrorKind::numerical, "sampling: the model produced non-finite logits");
  // The top logit contributes exp(0) = 1, so at temperature 1 the confidence is 1 / sum.
  if (inv_temp == 1.0) {
    d.confidence = 1.0 / sum;
  } else {
    double sum1 = 0;
    for (int v = 0; v < V; ++v)
      if (v != mask_id) sum1 += std::exp(double(logits[v]) - lmax);
    d.confidence = 1.0 / sum1;
  }
  const int real = mask_id >= 0 && mask_id < V ? V - 1 : V;
  const bool use_k = f.top_k > 0 && f.top_k < real;
  const bool use_p = f.top_p < 1.0;
  if (use_k || use_p) {
    std::vector<int32_t>& c = d.support;
    c.reserve(size_t(real));
    for (int v = 0; v < V; ++v)
      if (d.p[v] > 0) c.push_back(v);
    const detail::ByProbability order{d.p.data()};
    if (use_k && int(c.size()) > f.top_k) {
      std::nth_element(c.begin(), c.begin() + (f.top_k - 1), c.end(), order);
      c.resize(size_t(f.top_k));
    }
    if (use_p) {
      // Keep the most probable ids whose cumulative probability is <= p (always the top
      // one). Sort only as far as needed: a nucleus is usually a small part of V.
      double total = 0;
      for (int32_t v : c) total += d.p[v];
      const double limit = f.top_p * total;
      size_t m = std::min<size_t>(c.size(), 64), kept = 0;
      while (true) {
        std::partial_sort(c.begin(), c.begin() + ptrdiff_t(m), c.end(), order);
        double cum = 0;
        kept = 0;
        while (kept < m && cum + d.p[c[kept]] <= limit) cum += d.p[c[kept++]];
        if (kept < m || m == c.size()) break;
        m = std::min(c.size(), m * 8);
      }
      c.resize(std::max<size_t>(kept, 1));
    }
    std::sort(c.begin(), c.end());
    std::vector<double> kept_p(c.size());
    for (size_t i = 0; i < c.size(); ++i) kept_p[i] = d.p[c[i]];
    std::fill(d.p.begin(), d.p.end(), 0.0);
    sum = 0;
    for (size_t i = 0; i < c.size(); ++i) d.p[c[i]] = kept_p[i], sum += kept_p[i];
  }
  const double inv = 1.0 / sum;
  d.top = -1;
  d.top_prob = -1;
  for (int v = 0; v < V; ++v) {
    d.p[v] *= inv;
    if (d.p[v] > d.top_prob) d.top_prob = d.p[v], d.top = v;
  }
}

// Gumbel-max in double: argmax_v log p_v + G_v, G_v = -log(-log u_v), written as
// argmax p_v / E_v with E_v = -log u_v. u_v is value `first + v` of the stream, so the
// caller reserves V values per draw and the result does not depend on the thread.
inline int32_t sample_token(const TokenDistribution& d, const RandomStream& rng, uint64_t first) {
  if (d.greedy) return d.top;
  int32_t best = d.top;
  double best_score = -1;
  auto consider = [&](int32_t v) {
    const double score = d.p[v] / -std::log(rng.uniform_at(first + uint64_t(v)));
    if (score > best_score) best_score = score, best = v;
  };
  if (d.support.empty()) {
    for (int32_t v = 0, V = int32_t(d.p.size()); v < V; ++v)
      if (d.p[v] > 0) consider(v);
  } else {
    for (int32_t v : d.support) consider(v);
  }
  return best;
}

}  // namespace bd3::sample
