#pragma once
// The NELBO of a model on a corpus split (what `bd3 eval` prints): every sequence of the
// split evaluated `samples` times with independent masks, batch by batch, with the
// estimator of diffusion/estimator.hpp. Draw s of batch b uses the random stream
// CounterRng(seed, {rng_stream::eval, s, b}), so a result is a function of (model,
// sequences, options) alone. With a ProcessGroup (train/data_parallel.hpp), the ranks
// share the (draw, batch) pairs and every rank returns the single process's result, bit
// for bit: each pair's sums are computed by one rank and added up in the same order.
#include <bd3/diffusion/clip_search.hpp>
#include <bd3/diffusion/estimator.hpp>
#include <bd3/error.hpp>
#include <bd3/text/corpus.hpp>
#include <bd3/train/data_parallel.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace bd3 {

struct EvalOptions {
  int batch = 8;    // sequences per forward pass
  int samples = 1;  // independent mask draws per sequence
  uint64_t seed = 0;
  // The estimator; shuffle_strata keeps it unbiased for a fixed order of sequences.
  EstimatorOptions estimator = [] {
    EstimatorOptions o;
    o.shuffle_strata = true;
    return o;
  }();
  // Called after each batch with (batches done, batches in all, running NELBO); with a
  // process group, for this rank's batches.
  std::function<void(int64_t, int64_t, double)> on_batch;
};

struct EvalResult {
  double nelbo = 0;    // per token, over positions 1..L-1 of every sequence
  int64_t tokens = 0;  // tokens of one draw
  int64_t sequences = 0;
  // Variances of a sequence's per-token NELBO: over every (sequence, draw) pair (data and
  // masks), and over the draws of one sequence, averaged (the masks alone: the noise
  // schedule's share, which clipping reduces; 0 with one sample).
  double variance = 0, mask_variance = 0;
  double standard_error = 0;  // of nelbo
  double ppl() const { return std::exp(nelbo); }
  double bits_per_token() const { return nelbo / std::log(2.0); }
};

// The global indices of a split's sequences (text::Corpus::global_index order).
inline std::vector<int64_t> split_sequences(const text::Corpus& corpus, text::Split split) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < corpus.size(split); ++i) out.push_back(corpus.global_index(split, i));
  return out;
}

// The NELBO of `model` (trained with the schedule `noise`) on the corpus sequences
// `sequences` (global indices); with `group`, a collective call of every rank, each given
// the same arguments.
template <class Model, NoiseSchedule Noise>
EvalResult evaluate_nelbo(const Model& model, const Noise& noise, const text::Corpus& corpus,
                          std::span<const int64_t> sequences, const EvalOptions& o,
                          train::ProcessGroup* group = nullptr) {
  if (o.batch < 1) fail_usage("evaluate_nelbo: batch must be >= 1");
  if (o.samples < 1) fail_usage("evaluate_nelbo: samples must be >= 1");
  const int L = model.config().model_length;
  check_estimator_options(o.estimator, L, model.block_size());
  if (sequences.empty()) fail("evaluate_nelbo: no sequence to evaluate");
  const size_t N = sequences.size();
  const int64_t batches = (int64_t(N) + o.batch - 1) / o.batch;
  const int64_t pairs = batches * o.samples;
  const int rank = group ? group->rank() : 0, ranks = group ? group->size() : 1;
  // One buffer the ranks sum: per pair j = s * batches + b, its loss sum and token count,
  // then seq_nelbo[s * N + i], the per-token NELBO of sequence i in draw s.
  std::vector<double> sums(size_t(2 * pairs) + N * size_t(o.samples), 0.0);
  double* pair_loss = sums.data();
  double* pair_tokens = pair_loss + pairs;
  double* seq_nelbo = pair_tokens + pairs;
  std::vector<int32_t> x0;
  std::vector<double> per_token;
  double running_loss = 0, running_tokens = 0;
  const int64_t mine = pairs > rank ? (pairs - rank + ranks - 1) / ranks : 0;  // pairs here
  for (int64_t j = rank, done = 0; j < pairs; j += ranks) {
    const int s = int(j / batches);
    const int64_t b = j % batches;
    const int64_t lo = b * o.batch, hi = std::min<int64_t>(lo + o.batch, int64_t(N));
    const int n = int(hi - lo);
    x0.resize(size_t(n) * L);
    for (int k = 0; k < n; ++k)
      corpus.sequence_at(sequences[size_t(lo + k)],
                         std::span<int32_t>(x0).subspan(size_t(k) * L, L));
    CounterRng rng(o.seed, {rng_stream::eval, uint64_t(s), uint64_t(b)});
    const auto terms = estimate_nelbo(model, noise, x0, n, o.estimator, rng, &per_token);
    for (int k = 0; k < n; ++k) {
      double sum = 0;
      for (int q = 1; q < L; ++q) sum += per_token[size_t(k) * L + size_t(q)];
      seq_nelbo[size_t(s) * N + size_t(lo + k)] = sum / double(L - 1);
    }
    pair_loss[j] = terms.loss_sum;
    pair_tokens[j] = double(terms.tokens);
    running_loss += terms.loss_sum, running_tokens += double(terms.tokens);
    if (o.on_batch) o.on_batch(++done, mine, running_loss / running_tokens);
  }
  if (group) group->sum_disjoint(sums);
  double loss_sum = 0;
  int64_t tokens = 0;
  for (int64_t j = 0; j < pairs; ++j) loss_sum += pair_loss[j], tokens += int64_t(pair_tokens[j]);
  EvalResult r;
  r.nelbo = loss_sum / double(tokens);
  if (!std::isfinite(r.nelbo))
    throw Error(ErrorKind::numerical, "evaluate_nelbo: the NELBO is not finite (" +
                                          std::to_string(r.nelbo) +
                                          "): the model's weights or outputs are not finite");
  r.tokens = tokens / o.samples;
  r.sequences = int64_t(N);
  r.variance = sample_variance(std::span<const double>(seq_nelbo, N * size_t(o.samples)));
  if (o.samples >= 2) {
    std::vector<double> draws(size_t(o.samples));
    for (size_t i = 0; i < N; ++i) {
      for (int s = 0; s < o.samples; ++s) draws[size_t(s)] = seq_nelbo[size_t(s) * N + i];
      r.mask_variance += sample_variance(draws) / double(N);
    }
  }
  r.standard_error = std::sqrt(r.variance / double(N * size_t(o.samples)));
  return r;
}

}  // namespace bd3
