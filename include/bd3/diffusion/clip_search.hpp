#pragma once
// Data-driven clipped noise schedules (SPEC "Clipped schedules"): the training interval
// [beta, omega] that minimises the variance of the NELBO estimator.
//
// Candidates: [max(i, 1e-3), i + w] for every width w of a list (the paper: 0.5 .. 0.9)
// and offsets i = 0, delta, 2 delta, ..., 1 - w; plus the full interval [1e-3, 1]. For
// block size 1 the candidates are [1e-3, 1] and [1, 1] (as in the reference).
// Score of a candidate: for each validation batch, the (unbiased) variance across the
// batch x blocks values of the per-block mean loss (BOS counts as a zero loss, as in the
// reference), summed over the batches. The argmin (first on ties) wins.
//
// Every candidate sees the same random numbers (common random numbers: the same r_i and
// token uniforms), so the comparison between candidates is not blurred by independent
// noise; the masks of two candidates differ only through their t's.
#include <bd3/diffusion/estimator.hpp>
#include <bd3/error.hpp>

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace bd3 {

struct ClipInterval {
  double eps_min = 1e-3, eps_max = 1.0;
  friend bool operator==(const ClipInterval&, const ClipInterval&) = default;
};

struct ClipSearchOptions {
  std::vector<double> widths{0.5, 0.6, 0.7, 0.8, 0.9};
  double delta = 0.05;
  bool resample = false;
  int max_resample_tries = 100;
  bool count_bos = false;  // EstimatorOptions::count_bos
};

inline std::vector<ClipInterval> clip_candidates(const ClipSearchOptions& o, int block_size) {
  std::vector<ClipInterval> out{{1e-3, 1.0}};
  if (block_size == 1) {
    out.push_back({1.0, 1.0});
    return out;
  }
  if (!(o.delta > 0.0 && o.delta <= 1.0)) fail_usage("clip search: delta must be in (0, 1]");
  for (double w : o.widths) {
    if (!(w > 0.0 && w <= 1.0))
      fail_usage("clip search: width " + std::to_string(w) + " is not in (0, 1]");
    // i = 0, delta, ..., 1 - w: count the offsets in integers to avoid float drift.
    const int n = int(std::floor((1.0 - w) / o.delta + 1e-9));
    for (int k = 0; k <= n; ++k) {
      const double i = k * o.delta;
      ClipInterval c{std::max(i, 1e-3), std::min(1.0, i + w)};
      // Round to 1e-12 so 0.05 * 3 + 0.5 prints as 0.65.
      c.eps_min = std::round(c.eps_min * 1e12) / 1e12;
      c.eps_max = std::round(c.eps_max * 1e12) / 1e12;
      bool dup = false;
      for (auto& e : out) dup = dup || e == c;
      if (!dup) out.push_back(c);
    }
  }
  return out;
}

struct ClipSearchResult {
  std::vector<ClipInterval> candidates;
  std::vector<double> variance;  // summed over batches, one per candidate
  std::vector<double> nelbo;     // mean loss over positions 1..L-1, one per candidate
  size_t best = 0;
  ClipInterval best_interval() const { return candidates.at(best); }
};

// Unbiased variance of values.
inline double sample_variance(std::span<const double> v) {
  if (v.size() < 2) return 0.0;
  double mean = 0;
  for (double x : v) mean += x;
  mean /= double(v.size());
  double s = 0;
  for (double x : v) s += (x - mean) * (x - mean);
  return s / double(v.size() - 1);
}

// Scores every candidate on the validation batches (each [batch, L], concatenated in
// `batches`, batch sizes in `batch_sizes`). The random numbers of batch j come from
// CounterRng(seed, {clip_search, stream, j}).
template <class Model, NoiseSchedule Noise>
ClipSearchResult clip_search(const Model& model, const Noise& noise,
                             std::span<const std::vector<int32_t>> batches,
                             std::span<const int> batch_sizes, const ClipSearchOptions& o,
                             uint64_t seed, uint64_t stream) {
  if (batches.size() != batch_sizes.size() || batches.empty())
    fail("clip_search: need at least one validation batch");
  const auto& c = model.config();
  const int L = c.model_length, Bp = model.block_size(), K = L / Bp;
  ClipSearchResult r;
  r.candidates = clip_candidates(o, Bp);
  r.variance.assign(r.candidates.size(), 0.0);
  r.nelbo.assign(r.candidates.size(), 0.0);
  std::vector<int64_t> tokens(r.candidates.size(), 0);
  TrainActivations<typename Model::scalar_type> act;
  NoisedBatch nb;
  std::vector<double> per_token, block_means;
  for (size_t ci = 0; ci < r.candidates.size(); ++ci) {
    EstimatorOptions eo;
    eo.eps_min = r.candidates[ci].eps_min, eo.eps_max = r.candidates[ci].eps_max;
    eo.resample = o.resample, eo.max_resample_tries = o.max_resample_tries;
    eo.count_bos = o.count_bos;
    // An interval no block can reach is scored without resampling, not an error, here.
    if (eo.resample) eo.resample = detail::fraction_reachable(Bp, eo.eps_min, eo.eps_max);
    double total = 0;
    for (size_t j = 0; j < batches.size(); ++j) {
      const int batch = batch_sizes[j];
      CounterRng rng(seed, {rng_stream::clip_search, stream, uint64_t(j)});
      draw_noised_batch(batches[j], batch, L, Bp, c.mask_index, noise, eo, rng, nb);
      per_token.assign(size_t(batch) * L, 0.0);
      auto terms = nelbo_of_draw(model, batches[j], nb, act, per_token.data());
      r.nelbo[ci] += terms.loss_sum;
      tokens[ci] += terms.tokens;
      block_means.assign(size_t(batch) * K, 0.0);
      for (int b = 0; b < batch; ++b)
        for (int k = 0; k < K; ++k) {
          double s = 0;
          for (int q = 0; q < Bp; ++q) s += per_token[size_t(b) * L + size_t(k) * Bp + q];
          block_means[size_t(b) * K + k] = s / Bp;
        }
      total += sample_variance(block_means);
    }
    r.variance[ci] = total;
    r.nelbo[ci] = tokens[ci] > 0 ? r.nelbo[ci] / double(tokens[ci]) : 0.0;
  }
  for (size_t ci = 1; ci < r.candidates.size(); ++ci)
    if (r.variance[ci] < r.variance[r.best]) r.best = ci;
  return r;
}

}  // namespace bd3
