#pragma once
// The masked-diffusion NELBO with the SUBS parameterization (SPEC "NELBO"): for a masked
// position l of block b, loss_l = w(t_b) * (-log p_theta(x0_l | xt)); the MASK logit is
// set to -1e6 before the log-softmax; unmasked positions copy their token (loss 0).
#include <bd3/error.hpp>
#include <bd3/kernels/kernels.hpp>

#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

namespace bd3 {

inline constexpr double subs_neg_infinity = -1e6;

struct NelboTerms {
  double loss_sum = 0;  // sum of per-token losses over the counted positions
  int64_t tokens = 0;   // counted positions (1..L-1 of every sequence)
  int64_t masked = 0;   // masked positions among them
};

// logits: [batch*L, V] raw logits of the xt half. weight: [batch*L] the loss weight of
// each position (w(t) of its block; ignored where xt is not MASK). Position 0 of each
// sequence (BOS) is never counted. per_token (optional, [batch*L]) receives each loss.
// dlogits (optional, [batch*L, V]) receives d(loss_sum * grad_scale)/d(logits).
template <class T>
NelboTerms subs_nelbo(std::span<const T> logits, std::span<const int32_t> xt,
                      std::span<const int32_t> x0, std::span<const double> weight, int length,
                      int vocab, int mask_index, double* per_token = nullptr, T* dlogits = nullptr,
                      double grad_scale = 1.0) {
  const int64_t rows = int64_t(xt.size());
  if (rows % length != 0 || x0.size() != xt.size() || weight.size() != xt.size() ||
      logits.size() != size_t(rows) * vocab)
    fail("subs_nelbo: inconsistent shapes");
  NelboTerms terms;
  std::vector<double> losses(size_t(rows), 0.0);
#pragma omp parallel
  {
    std::vector<T> row(static_cast<size_t>(vocab));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      T* g = dlogits ? dlogits + i * vocab : nullptr;
      if (g) std::fill(g, g + vocab, T(0));
      const bool counted = (i % length) != 0;
      if (!counted || xt[i] != mask_index) continue;
      const int32_t target = x0[i];
      if (target < 0 || target >= vocab) continue;
      std::copy(logits.begin() + i * vocab, logits.begin() + (i + 1) * vocab, row.begin());
      row[mask_index] += T(subs_neg_infinity);
      const T lse = kernels::logsumexp<T>(row.data(), vocab);
      const double logp = double(row[target]) - double(lse);
      losses[i] = -weight[i] * logp;
      if (g) {
        // d(-w log softmax(z)_y)/dz = w (softmax(z) - onehot(y))
        const T scale = T(weight[i] * grad_scale);
        for (int v = 0; v < vocab; ++v) g[v] = scale * std::exp(row[v] - lse);
        g[target] -= scale;
      }
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    if (per_token) per_token[i] = losses[i];
    if ((i % length) == 0) continue;
    terms.tokens += 1;
    terms.masked += xt[i] == mask_index;
    terms.loss_sum += losses[i];
  }
  return terms;
}

}  // namespace bd3
