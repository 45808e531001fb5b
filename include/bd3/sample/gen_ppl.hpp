#pragma once
// Generative perplexity: how likely an autoregressive judge finds a set of samples, plus
// each sample's unigram entropy (low entropy flags repetitive samples a low perplexity
// would flatter). The judge is a BD3-LM with block size 1, which is autoregressive
// (SPEC "Likelihood"): one training forward over [xt, x0] with xt all MASK gives, at xt
// row l, p(x0_l | x0_<l) (row l sees itself, a MASK, and the clean tokens before it).
// Samples longer than the judge's context are scored in windows of model_length tokens
// that overlap by one token, so every token but the first is scored once, with the
// context of its window.
#include <bd3/error.hpp>
#include <bd3/model/model.hpp>
#include <bd3/sample/stopping.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

namespace bd3::sample {

struct GenerativePerplexity {
  double nll_sum = 0;  // nats, over the scored tokens
  int64_t tokens = 0;  // scored tokens
  int64_t samples = 0;
  std::vector<double> entropies;  // per sample, nats
  double gen_ppl() const { return tokens > 0 ? std::exp(nll_sum / double(tokens)) : std::nan(""); }
  double mean_entropy() const {
    double s = 0;
    for (double e : entropies) s += e;
    return entropies.empty() ? std::nan("") : s / double(entropies.size());
  }
};

// Scores the samples under the judge, `windows_per_call` windows per forward.
template <class Model>
GenerativePerplexity generative_perplexity(const Model& judge,
                                           const std::vector<std::vector<int32_t>>& samples,
                                           int windows_per_call = 8) {
  const auto& cfg = judge.config();
  if (judge.block_size() != 1)
    fail_usage(
        "generative perplexity: the judge must be autoregressive (block size 1), got block size " +
        std::to_string(judge.block_size()));
  if (windows_per_call < 1) fail_usage("generative perplexity: windows_per_call must be >= 1");
  const int L = cfg.model_length, V = cfg.vocab_size;
  const int32_t mask = cfg.mask_index;
  if (L < 2) fail_usage("generative perplexity: the judge's model_length must be >= 2");
  GenerativePerplexity out;
  struct Window {
    const std::vector<int32_t>* ids;
    size_t begin, size;
  };
  std::vector<Window> windows;
  for (size_t i = 0; i < samples.size(); ++i) {
    const auto& ids = samples[i];
    for (int32_t t : ids)
      if (t < 0 || t >= V || t == mask)
        fail("sample " + std::to_string(i) + " holds id " + std::to_string(t) +
             ", not a token of the judge (vocabulary [0, " + std::to_string(V) +
             "), MASK = " + std::to_string(mask) + ")");
    out.entropies.push_back(unigram_entropy(ids));
    ++out.samples;
    for (size_t begin = 0; begin + 1 < ids.size(); begin += size_t(L - 1))
      windows.push_back({&ids, begin, std::min(ids.size() - begin, size_t(L))});
  }
  using Scalar = typename Model::scalar_type;
  TrainActivations<Scalar> act;
  std::vector<int32_t> xt, x0;
  for (size_t w0 = 0; w0 < windows.size(); w0 += size_t(windows_per_call)) {
    const int batch = int(std::min(windows.size() - w0, size_t(windows_per_call)));
    xt.assign(size_t(batch) * L, mask);
    x0.assign(size_t(batch) * L, mask);  // padding after a short window: never attended to
    for (int b = 0; b < batch; ++b) {
      const Window& w = windows[w0 + b];
      std::copy_n(w.ids->begin() + ptrdiff_t(w.begin), w.size, x0.begin() + ptrdiff_t(b) * L);
      xt[size_t(b) * L] = x0[size_t(b) * L];
    }
    judge.forward_train(xt, x0, batch, act);
    for (int b = 0; b < batch; ++b) {
      const Window& w = windows[w0 + b];
      for (size_t l = 1; l < w.size; ++l) {
        const Scalar* row = act.logits.data() + (size_t(b) * L + l) * V;
        double lmax = -std::numeric_limits<double>::infinity();
        for (int v = 0; v < V; ++v)
          if (v != mask) lmax = std::max(lmax, double(row[v]));
        double sum = 0;
        for (int v = 0; v < V; ++v)
          if (v != mask) sum += std::exp(double(row[v]) - lmax);
        const double nll = lmax + std::log(sum) - double(row[x0[size_t(b) * L + l]]);
        if (!std::isfinite(nll))
          throw Error(ErrorKind::numerical, "generative perplexity: non-finite judge logits");
        out.nll_sum += nll;
        ++out.tokens;
      }
    }
  }
  return out;
}

}  // namespace bd3::sample
