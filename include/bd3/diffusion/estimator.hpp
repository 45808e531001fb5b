#pragma once
// The NELBO estimator (SPEC "NELBO"): how a batch of clean sequences x0 becomes the
// noised input xt and the per-position loss weights of one Monte-Carlo draw.
//
//  - One t per (sequence, block). Antithetic (stratified) across the N = batch x blocks
//    pairs, pair i = b * blocks + k: u_i = (r_i / N + i / N) mod 1, r_i ~ U[0, 1), so
//    the sorted u's hold exactly one value per stratum [i/N, (i+1)/N); then
//    t = beta + u (omega - beta). With beta >= 1 and omega >= 1, t = 1. Optionally
//    (shuffle_strata, used by evaluation) the strata go to the pairs in a random order.
//  - Every token of block b is masked independently with probability p(t_b) of the
//    noise schedule. Position 0 (BOS) is never masked.
//  - The loss weight of a position is w(t_b), or 1 when beta > 0.5 (the reference's
//    special case for clipped intervals far from 0).
//  - Block size 1 with beta >= 1 masks every position: the NELBO is then the exact
//    autoregressive NLL.
//  - Optional bounded mask resampling: a block's mask is redrawn until its masked
//    fraction lies in [beta, omega], at most max_resample_tries times (the last draw is
//    kept). As in the reference, a lower bound of 1e-3 (or less) and an upper bound of 1
//    are treated as "no bound". The fraction is counted over the block's maskable
//    positions (the first block of a sequence has one fewer: BOS). An interval that no
//    fraction k/B' can reach is a bd3::Error up front; the first block is not resampled
//    when no k/(B'-1) lies in the interval.
//
// Randomness comes from CounterRng, a counter-based generator keyed by (seed, stream
// ids): every draw is a function of its key and position in the stream, never of the
// thread count, and its whole state is two integers.
#include <bd3/detail/random.hpp>
#include <bd3/diffusion/nelbo.hpp>
#include <bd3/error.hpp>
#include <bd3/model/model.hpp>
#include <bd3/policies/noise.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <vector>

namespace bd3 {

// SplitMix64 as a counter-based generator: output k is mix(key + k * gamma).
class CounterRng {
 public:
  CounterRng() = default;
  // Key derived from a seed and any number of stream ids (step, micro-batch, purpose...).
  CounterRng(uint64_t seed, std::initializer_list<uint64_t> stream)
      : key_(derive_key(seed, stream)) {}
  static CounterRng from_state(uint64_t key, uint64_t counter) {
    CounterRng r;
    r.key_ = key, r.counter_ = counter;
    return r;
  }

  uint64_t next() {
    ++counter_;
    return mix(key_ + counter_ * kGamma);
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }
  // Uniform in (0, 1].
  double uniform_open0() { return (double(next() >> 11) + 1.0) * 0x1.0p-53; }
  // Standard normal (Box-Muller; one value per call).
  double normal() {
    const double u1 = uniform_open0(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

  uint64_t key() const { return key_; }
  uint64_t counter() const { return counter_; }

  static uint64_t mix(uint64_t z) { return detail::mix64(z); }
  static uint64_t derive_key(uint64_t seed, std::initializer_list<uint64_t> stream) {
    uint64_t k = mix(seed + kGamma);
    for (uint64_t s : stream) k = mix(k ^ mix(s + 0x632BE59BD9B4E019ull));
    return k;
  }

 private:
  static constexpr uint64_t kGamma = detail::golden_gamma;
  uint64_t key_ = 0;
  uint64_t counter_ = 0;
};

// Stream ids that separate the uses of one seed.
namespace rng_stream {
inline constexpr uint64_t train_noise = 1;
inline constexpr uint64_t dropout = 2;
inline constexpr uint64_t clip_search = 3;
inline constexpr uint64_t eval = 4;
inline constexpr uint64_t init = 5;
inline constexpr uint64_t data = 6;
}  // namespace rng_stream

struct EstimatorOptions {
  double eps_min = 1e-3;  // beta
  double eps_max = 1.0;   // omega
  bool antithetic = true;
  // Antithetic with the strata dealt to the pairs in a random order (u_i = (r_i + pi(i))/N
  // for a random permutation pi): still one u per stratum, but each pair's u is uniform
  // on [0, 1), so the estimate is unbiased for fixed data. Without it, pair i always gets
  // stratum i, which is unbiased only on average over the data order (as in training,
  // where batches are random); evaluation turns it on.
  bool shuffle_strata = false;
  bool resample = false;  // bounded mask resampling into [beta, omega]
  int max_resample_tries = 100;
  // How resampling counts the first block's masked fraction. Off: over its B' - 1 maskable
  // positions (BOS is never drawn). On, as the official _resample_q_xt: BOS is drawn like
  // any position, the fraction is over all B' positions, and BOS is put back afterwards,
  // so the first block's accepted masks follow the official (conditional) law. Changes the
  // random stream of the first block only, and only when resampling is on.
  bool count_bos = false;
};

// One draw of the forward process for a batch.
struct NoisedBatch {
  int batch = 0, length = 0, block_size = 0;
  std::vector<int32_t> xt;        // [batch * L]
  std::vector<double> u;          // [batch * blocks] the stratified uniforms
  std::vector<double> t;          // [batch * blocks]
  std::vector<double> weight;     // [batch * L] loss weight of each position's block
  int64_t resampled_blocks = 0;   // blocks whose mask was redrawn at least once
  int64_t unresolved_blocks = 0;  // blocks still outside the interval after the last try

  int blocks_per_sequence() const { return length / block_size; }
};

namespace detail {
inline bool has_lower_bound(double beta) {
  return beta > 1e-3;
}
inline bool has_upper_bound(double omega) {
  return omega < 1.0;
}

// True when some k/n (k = 0..n) lies in the (effective) interval.
inline bool fraction_reachable(int n, double beta, double omega) {
  if (n <= 0) return true;
  for (int k = 0; k <= n; ++k) {
    const double f = double(k) / n;
    if ((!has_lower_bound(beta) || f >= beta) && (!has_upper_bound(omega) || f <= omega))
      return true;
  }
  return false;
}
}  // namespace detail

inline void check_estimator_options(const EstimatorOptions& o, int length, int block_size) {
  if (!(o.eps_min > 0.0 && o.eps_min <= o.eps_max && o.eps_max <= 1.0) &&
      !(o.eps_min >= 1.0 && o.eps_max >= 1.0))
    fail_usage("noise interval [" + std::to_string(o.eps_min) + ", " + std::to_string(o.eps_max) +
               "] must satisfy 0 < eps_min <= eps_max <= 1");
  if (block_size < 1 || length < 1 || length % block_size != 0)
    fail_usage("block size " + std::to_string(block_size) + " does not divide the length " +
               std::to_string(length));
  if (o.resample) {
    if (o.max_resample_tries < 1) fail_usage("max_resample_tries must be >= 1");
    if (!detail::fraction_reachable(block_size, o.eps_min, o.eps_max))
      fail_usage("mask resampling: no masked fraction k/" + std::to_string(block_size) +
                 " lies in [" + std::to_string(o.eps_min) + ", " + std::to_string(o.eps_max) +
                 "] (block size " + std::to_string(block_size) +
                 "); widen the interval or disable resampling");
  }
}

// Draws t, xt and the weights for x0 [batch, L]. Position 0 of each sequence is BOS.
template <NoiseSchedule Noise>
void draw_noised_batch(std::span<const int32_t> x0, int batch, int length, int block_size,
                       int32_t mask_id, const Noise& noise, const EstimatorOptions& o,
                       CounterRng& rng, NoisedBatch& out) {
  check_estimator_options(o, length, block_size);
  if (batch < 1 || x0.size() != size_t(batch) * size_t(length))
    fail("draw_noised_batch: x0 must hold batch x length tokens");
  const int K = length / block_size;
  const int64_t N = int64_t(batch) * K;
  out.batch = batch, out.length = length, out.block_size = block_size;
  out.xt.assign(x0.begin(), x0.end());
  out.u.resize(size_t(N));
  out.t.resize(size_t(N));
  out.weight.resize(x0.size());
  out.resampled_blocks = out.unresolved_blocks = 0;
  const bool nll = o.eps_min >= 1.0 && o.eps_max >= 1.0;
  const bool unit_weight = o.eps_min > 0.5;
  std::vector<int64_t> stratum;
  if (o.antithetic && o.shuffle_strata) {
    stratum.resize(size_t(N));
    for (int64_t i = 0; i < N; ++i) stratum[size_t(i)] = i;
    for (int64_t i = N - 1; i > 0; --i)
      std::swap(stratum[size_t(i)], stratum[size_t(rng.next() % uint64_t(i + 1))]);
  }
  for (int64_t i = 0; i < N; ++i) {
    const double r = rng.uniform();
    const double s = stratum.empty() ? double(i) : double(stratum[size_t(i)]);
    double u = o.antithetic ? r / double(N) + s / double(N) : r;
    if (u >= 1.0) u -= 1.0;
    out.u[size_t(i)] = u;
    out.t[size_t(i)] = nll ? 1.0 : o.eps_min + u * (o.eps_max - o.eps_min);
  }
  const bool all_masked = block_size == 1 && o.eps_min >= 1.0;
  const bool resample = o.resample && !(o.eps_min == 1e-3 && o.eps_max == 1.0) && !all_masked;
  const bool lo = detail::has_lower_bound(o.eps_min), hi = detail::has_upper_bound(o.eps_max);
  const bool resample_first =
      resample && (o.count_bos || detail::fraction_reachable(block_size - 1, o.eps_min, o.eps_max));
  for (int b = 0; b < batch; ++b)
    for (int k = 0; k < K; ++k) {
      const double t = out.t[size_t(b) * K + k];
      const double p = noise.p(t);
      const double w = unit_weight ? 1.0 : noise.w(t);
      const size_t base = size_t(b) * length + size_t(k) * block_size;
      const int first = (k == 0) ? 1 : 0;  // BOS is never masked
      const int maskable = block_size - first;
      // The count's denominator: with count_bos, BOS is drawn and counted (never written).
      const bool bos_drawn = first == 1 && o.count_bos && resample;
      const int counted = bos_drawn ? block_size : maskable;
      for (int j = 0; j < block_size; ++j) out.weight[base + j] = w;
      if (maskable == 0) continue;
      for (int attempt = 0;; ++attempt) {
        int masked = bos_drawn && rng.uniform() < p ? 1 : 0;
        for (int j = first; j < block_size; ++j) {
          const bool m = all_masked || rng.uniform() < p;
          out.xt[base + j] = m ? mask_id : x0[base + j];
          masked += m;
        }
        if (!resample || (k == 0 && !resample_first)) break;
        const double f = double(masked) / counted;
        const bool ok = (!lo || f >= o.eps_min) && (!hi || f <= o.eps_max);
        if (ok) break;
        if (attempt == 0) ++out.resampled_blocks;
        if (attempt + 1 >= o.max_resample_tries) {
          ++out.unresolved_blocks;
          break;
        }
      }
    }
}

// The result of evaluating the NELBO of one draw: sums over positions 1..L-1.
struct NelboDraw {
  NelboTerms terms;
  std::vector<double> per_token;  // [batch * L] (0 where unmasked and at BOS), when asked
};

// Forward pass of `model` on one noised batch; the SUBS NELBO terms.
template <class Model>
NelboTerms nelbo_of_draw(const Model& model, std::span<const int32_t> x0, const NoisedBatch& nb,
                         TrainActivations<typename Model::scalar_type>& act,
                         double* per_token = nullptr) {
  using T = typename Model::scalar_type;
  const auto& c = model.config();
  model.forward_train(nb.xt, x0, nb.batch, act, false);
  return subs_nelbo<T>(std::span<const T>(act.logits), nb.xt, x0, nb.weight, c.model_length,
                       c.vocab_size, c.mask_index, per_token);
}

// Draws a noised batch with the noise schedule `noise` and evaluates it.
template <class Model, NoiseSchedule Noise>
NelboTerms estimate_nelbo(const Model& model, const Noise& noise, std::span<const int32_t> x0,
                          int batch, const EstimatorOptions& o, CounterRng& rng,
                          std::vector<double>* per_token = nullptr) {
  const auto& c = model.config();
  NoisedBatch nb;
  draw_noised_batch(x0, batch, c.model_length, model.block_size(), c.mask_index, noise, o, rng, nb);
  TrainActivations<typename Model::scalar_type> act;
  if (per_token) per_token->assign(x0.size(), 0.0);
  return nelbo_of_draw(model, x0, nb, act, per_token ? per_token->data() : nullptr);
}

}  // namespace bd3
