#pragma once
// Sampling from a BD3-LM (SPEC "Sampling"; the official _semi_ar_sampler and
// _ddpm_caching_update). Blocks are generated left to right after a prefix (BOS or a
// prompt); each block starts all MASK (except prompt tokens that fall into it) and is
// denoised by one of:
//  - first_hitting: each model call reveals exactly one uniformly chosen masked position,
//    with a token drawn from p_x0 (so NFE = generated tokens). The SPEC's clock
//    t <- t u^(1/#masked) is not kept: the models are not time-conditioned, so t never
//    reaches the network.
//  - ddpm: T steps per block, t_i = 1 - i/T, s = t - 1/T; each masked position stays MASK
//    with probability p(s)/p(t) (the noise schedule, Sampler's Noise) and otherwise takes a token
//    from p_x0; the last step (s = 0) reveals everything. When a step reveals nothing
//    the next step reuses p_x0 without a model call.
//  - threshold (Fast-dLLM-style parallel decoding): each call reveals every masked
//    position whose top probability is >= tau, and at least the `min_reveal` most
//    confident ones (default 1); the tokens are drawn from p_x0 (greedy with temperature 0).
//    tau = 0: one call per block; tau = 1 with min_reveal = k: k tokens per call, most
//    confident first (a fixed NFE budget of 1/k per token).
//    The confidence is the model's own (temperature 1, before top-k/top-p), so filters
//    change the tokens, not the schedule.
// p_x0 is the SUBS distribution (MASK excluded) after temperature, top-k and top-p.
// With the KV cache each call runs the current block against the cached window; without
// it, model.forward_banded recomputes the whole sequence so far, which gives the same
// numbers (SPEC "KV cache"), so both paths draw the same tokens for the same seed.
// A last block that overhangs `length` keeps its extra positions MASK: they are never
// revealed (the model sees them as masked context).
#include <bd3/error.hpp>
#include <bd3/model/kv_cache.hpp>
#include <bd3/policies/noise.hpp>
#include <bd3/sample/distribution.hpp>
#include <bd3/sample/random.hpp>
#include <bd3/sample/stopping.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace bd3::sample {

// The threshold sampler's reveal set for one call: the indices i of `confidence` (one per
// masked position, in position order) with confidence[i] >= tau, and at least the
// min(min_reveal, n) most confident (ties: the earlier position). Written to `out` in
// ascending order, so the random draws follow position order whatever the rule picked.
// Empty input: empty output.
inline void threshold_reveals(std::span<const double> confidence, double tau, int min_reveal,
                              std::vector<int>& out) {
  const size_t n = confidence.size();
  out.resize(n);
  for (size_t i = 0; i < n; ++i) out[i] = int(i);
  std::stable_sort(out.begin(), out.end(),
                   [&](int a, int b) { return confidence[size_t(a)] > confidence[size_t(b)]; });
  size_t take = std::min(n, size_t(std::max(min_reveal, 0)));
  while (take < n && confidence[size_t(out[take])] >= tau) ++take;
  out.resize(take);
  std::sort(out.begin(), out.end());
}

enum class Method { first_hitting, ddpm, threshold };
enum class LengthMode { fixed, variable };

inline std::string_view method_name(Method m) {
  switch (m) {
    case Method::first_hitting:
      return "first_hitting";
    case Method::ddpm:
      return "ddpm";
    case Method::threshold:
      return "threshold";
  }
  return "?";
}

// A finished block of one sequence, as it is produced (the streaming callback).
struct BlockEvent {
  int sequence = 0;                 // index in the batch
  int attempt = 0;                  // 0, then 1, 2, ... for retries of a degenerate sample
  int64_t position = 0;             // position of tokens[0] in the sequence
  std::span<const int32_t> tokens;  // the block, clipped to the sequence's final length
  bool rejected = false;            // fixed length: this attempt is degenerate (no tokens);
                                    // the sequence restarts with attempt + 1
};

struct SamplerOptions {
  Method method = Method::first_hitting;
  int steps = 0;             // ddpm: T steps per block (0: the block size)
  double threshold = 0.9;    // threshold: tau in [0, 1]
  int min_reveal = 1;        // threshold: reveal at least this many per call (most confident)
  double top_p = 1.0;        // nucleus, in (0, 1]; 1 = off
  int top_k = 0;             // 0 = off
  double temperature = 1.0;  // 0 = greedy
  bool kv_cache = true;
  bool fused_commit = true;  // commit a finished block inside the next block's first call
  int batch = 1;
  uint64_t seed = 0;
  int32_t bos_id = 0;
  std::vector<int32_t> prompt;  // the prefix (BOS included if wanted); empty: {bos_id}
  int64_t length = 0;           // total tokens, prefix included
  LengthMode length_mode = LengthMode::fixed;
  int32_t eos_id = -1;   // variable length: stop at the second EOS; -1: bos_id
  int max_retries = 10;  // fixed length: degenerate samples redrawn at most this often
  StopRule stop;         // the degenerate-sample rule (256 tokens, 4 nats)
  std::function<void(const BlockEvent&)> on_block;
};

struct SampleResult {
  std::vector<int32_t> ids;  // every token, prefix included
  int64_t prompt_tokens = 0;
  int64_t nfe = 0;             // denoising model calls this sequence needed
  int64_t commit_calls = 0;    // separate cache-commit calls (fused commits are free)
  double seconds = 0;          // wall time of the batches this sequence was part of
  int retries = 0;             // rejected degenerate attempts (fixed length)
  bool stopped_early = false;  // variable length: a stop rule ended it before `length`
  int64_t generated_tokens() const { return int64_t(ids.size()) - prompt_tokens; }
};

// Totals of the last generate(), counting batched calls once.
struct SamplerStats {
  int64_t model_calls = 0;
  int64_t commit_calls = 0;
  int64_t batches = 0;  // 1 + retry batches
  double seconds = 0;
};

// Noise: the schedule the DDPM sampler follows (the one the model was trained with); the
// first-hitting and threshold samplers do not use one.
template <class Model, NoiseSchedule Noise = noise::LogLinear>
class Sampler {
 public:
  using Scalar = typename Model::scalar_type;

  // Keeps a reference to the model: it must outlive the sampler.
  Sampler(const Model& model, SamplerOptions options, Noise noise = {})
      : model_(model), noise_(std::move(noise)), o_(std::move(options)) {
    validate();
  }

  const SamplerOptions& options() const { return o_; }
  const SamplerStats& stats() const { return stats_; }
  const std::vector<int32_t>& prefix() const { return prefix_; }

  // Generates options().batch sequences.
  std::vector<SampleResult> generate() {
    stats_ = {};
    std::vector<SampleResult> results(size_t(o_.batch));
    std::vector<int> todo(size_t(o_.batch)), attempt(size_t(o_.batch), 0);
    for (int i = 0; i < o_.batch; ++i) todo[i] = i;
    while (!todo.empty()) {
      std::vector<Seq> seqs(todo.size());
      for (size_t i = 0; i < todo.size(); ++i) {
        seqs[i].index = todo[i];
        seqs[i].attempt = attempt[todo[i]];
        seqs[i].rng = RandomStream::derive(o_.seed, uint64_t(todo[i]), uint64_t(attempt[todo[i]]));
      }
      const auto start = std::chrono::steady_clock::now();
      run(seqs);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      stats_.seconds += seconds;
      ++stats_.batches;
      todo.clear();
      for (auto& s : seqs) {
        auto& r = results[size_t(s.index)];
        r.seconds += seconds;
        if (s.rejected) {
          if (attempt[s.index] >= o_.max_retries)
            fail("sampling failed: sequence " + std::to_string(s.index) +
                 " was degenerate (unigram entropy of its last " + std::to_string(o_.stop.window) +
                 " tokens below " + fmt_double(o_.stop.min_entropy) + " nats) in " +
                 std::to_string(attempt[s.index] + 1) + " attempts");
          ++attempt[s.index];
          ++r.retries;
          todo.push_back(s.index);
          continue;
        }
        s.ids.resize(size_t(s.length));
        r.ids = std::move(s.ids);
        r.prompt_tokens = int64_t(prefix_.size());
        r.nfe = s.nfe;
        r.commit_calls = s.commit_calls;
        r.stopped_early = s.stopped;
      }
    }
    return results;
  }

 private:
  struct Seq {
    int index = 0, attempt = 0;
    RandomStream rng;
    std::vector<int32_t> ids;  // whole blocks; MASK where nothing is generated yet
    int64_t length = 0;        // final length, set when the sequence finishes
    int64_t nfe = 0, commit_calls = 0;
    bool active = true, rejected = false, stopped = false;
    bool need = false;                    // this call needs the sequence's logits
    bool fresh = false;                   // logits describe the block's current state (ddpm reuse)
    std::vector<Scalar> logits;           // [B', V] of the current block
    std::vector<TokenDistribution> dist;  // per block position, built from logits on demand
    std::vector<char> dist_ok;
  };
  struct Task {
    Seq* s;
    int pos;         // row in the block
    int64_t at;      // position in the sequence
    uint64_t first;  // the reserved stream values of the Gumbel draw
  };

  static std::string fmt_double(double v) {
    std::string s = std::to_string(v);
    while (s.size() > 1 && s.back() == '0') s.pop_back();
    if (!s.empty() && s.back() == '.') s.pop_back();
    return s;
  }

  void validate() {
    const auto& cfg = model_.config();
    const int V = cfg.vocab_size;
    const int32_t mask = cfg.mask_index;
    if (o_.batch < 1) fail_usage("sampler: batch must be >= 1");
    if (o_.length < 1) fail_usage("sampler: length must be >= 1");
    filter_ = Filter{o_.temperature, o_.top_k, o_.top_p};
    filter_.validate();
    if (!(o_.threshold >= 0.0 && o_.threshold <= 1.0))
      fail_usage("sampler: threshold must be in [0, 1]");
    if (o_.min_reveal < 1) fail_usage("sampler: min_reveal must be >= 1");
    if (o_.steps < 0) fail_usage("sampler: steps must be >= 1 (or 0 for the block size)");
    steps_ = o_.steps > 0 ? o_.steps : model_.block_size();
    if (o_.max_retries < 0) fail_usage("sampler: max_retries must be >= 0");
    if (o_.stop.window < 1) fail_usage("sampler: the stop rule's window must be >= 1");
    auto check_id = [&](int32_t id, const std::string& what) {
      if (id < 0 || id >= V || id == mask)
        fail_usage("sampler: " + what + " " + std::to_string(id) +
                   " is not a token of the model (vocabulary [0, " + std::to_string(V) +
                   "), MASK = " + std::to_string(mask) + ")");
    };
    prefix_ = o_.prompt.empty() ? std::vector<int32_t>{o_.bos_id} : o_.prompt;
    for (int32_t id : prefix_) check_id(id, o_.prompt.empty() ? "BOS id" : "prompt token");
    if (o_.length <= int64_t(prefix_.size()))
      fail_usage("sampler: length " + std::to_string(o_.length) +
                 " leaves nothing to generate after the " + std::to_string(prefix_.size()) +
                 "-token prefix");
    eos_ = o_.eos_id >= 0 ? o_.eos_id : o_.bos_id;
    if (o_.length_mode == LengthMode::variable) check_id(eos_, "EOS id");
  }

  // Runs one batch of sequence attempts to the end.
  void run(std::vector<Seq>& seqs) {
    const auto& cfg = model_.config();
    const int Bp = model_.block_size(), V = cfg.vocab_size, n = int(seqs.size());
    const int32_t mask = cfg.mask_index;
    const int64_t P = int64_t(prefix_.size()), N = o_.length;
    const int64_t blocks = (N + Bp - 1) / Bp, prompt_blocks = P / Bp;
    const bool kv = o_.kv_cache, fused = kv && o_.fused_commit;
    for (auto& s : seqs) {
      s.ids.assign(size_t(blocks * Bp), mask);
      std::copy(prefix_.begin(), prefix_.end(), s.ids.begin());
      s.logits.assign(size_t(Bp) * V, Scalar(0));
      s.dist.resize(size_t(Bp));
      s.dist_ok.assign(size_t(Bp), 0);
    }
    KVCache<Scalar> cache;
    if (kv) cache.reset(cfg, n);
    std::vector<int32_t> tokens(size_t(n) * Bp), pending;
    std::vector<Scalar> logits;
    int64_t commits = 0;
    auto gather = [&](int64_t b) {
      for (int i = 0; i < n; ++i)
        std::copy_n(seqs[i].ids.begin() + b * Bp, Bp, tokens.begin() + int64_t(i) * Bp);
    };
    // A finished block joins the cache: now, or inside the next block's first call.
    auto commit = [&](int64_t b, bool next_is_generated) {
      gather(b);
      if (fused && next_is_generated) {
        pending = tokens;
      } else {
        model_.commit_block(tokens, cache);
        ++commits;
        ++stats_.commit_calls;
      }
    };
    if (kv)
      for (int64_t b = 0; b < prompt_blocks; ++b) commit(b, b == prompt_blocks - 1);

    std::vector<Task> tasks;
    std::vector<int> masked;
    for (int64_t b = prompt_blocks; b < blocks; ++b) {
      const int64_t lo = b * Bp;
      const BlockSpan blk{lo, std::max(lo, P), std::min(lo + Bp, N)};
      for (auto& s : seqs) s.fresh = false;
      for (int step = 0;; ++step) {
        bool any = false, call = false;
        for (auto& s : seqs) {
          s.need = false;
          if (!s.active || masked_positions(s, blk, masked) == 0) continue;
          any = true;
          s.need = !(o_.method == Method::ddpm && s.fresh);
          call = call || s.need;
        }
        if (!any) break;
        if (call) {
          evaluate(seqs, b, tokens, pending, cache, logits, gather);
          ++stats_.model_calls;
        }
        tasks.clear();
        switch (o_.method) {
          case Method::first_hitting:
            plan_first_hitting(seqs, blk, masked, tasks);
            break;
          case Method::ddpm:
            plan_ddpm(seqs, step, blk, masked, tasks);
            break;
          case Method::threshold:
            plan_threshold(seqs, blk, masked, tasks);
            break;
        }
        run_tasks(tasks, true);
        if (o_.method == Method::ddpm && step >= steps_ - 1) break;  // all revealed
      }
      if (!finish_block(seqs, b, blk, blocks, commits)) break;
      if (kv) commit(b, true);
    }
  }

  // The positions of one block: [lo, lo + B'), of which [glo, ghi) are generated (past the
  // prefix, before the length).
  struct BlockSpan {
    int64_t lo, glo, ghi;
  };

  // The masked positions of s in the block (offsets from lo) into `masked`; their count.
  size_t masked_positions(const Seq& s, const BlockSpan& blk, std::vector<int>& masked) const {
    const int32_t mask = model_.config().mask_index;
    masked.clear();
    for (int64_t i = blk.glo; i < blk.ghi; ++i)
      if (s.ids[size_t(i)] == mask) masked.push_back(int(i - blk.lo));
    return masked.size();
  }

  // First-hitting: each sequence just evaluated reveals one masked position, chosen
  // uniformly.
  void plan_first_hitting(std::vector<Seq>& seqs, const BlockSpan& blk, std::vector<int>& masked,
                          std::vector<Task>& tasks) {
    const int V = model_.config().vocab_size;
    for (auto& s : seqs) {
      if (!s.need) continue;
      const size_t m = masked_positions(s, blk, masked);
      const size_t j = std::min(m - 1, size_t(s.rng.uniform() * double(m)));
      tasks.push_back({&s, masked[j], blk.lo + masked[j], s.rng.reserve(uint64_t(V))});
    }
  }

  // DDPM, step `step` of T: from t = 1 - step/T to s = t - 1/T each masked position stays
  // masked with probability p(s) / p(t) of the schedule; the last step reveals every
  // remaining position. A sequence whose block did not change keeps its logits (no call).
  void plan_ddpm(std::vector<Seq>& seqs, int step, const BlockSpan& blk, std::vector<int>& masked,
                 std::vector<Task>& tasks) {
    const int V = model_.config().vocab_size;
    const double t = 1.0 - double(step) / steps_, sm = t - 1.0 / steps_;
    double stay = step >= steps_ - 1 ? 0.0 : noise_.p(sm) / noise_.p(t);
    stay = std::clamp(std::isfinite(stay) ? stay : 0.0, 0.0, 1.0);
    for (auto& s : seqs) {
      if (!s.active || masked_positions(s, blk, masked) == 0) continue;
      bool changed = false;
      for (int pos : masked) {
        if (s.rng.uniform() < stay) continue;
        tasks.push_back({&s, pos, blk.lo + pos, s.rng.reserve(uint64_t(V))});
        changed = true;
      }
      if (changed) s.fresh = false;
    }
  }

  // Threshold decoding: every masked position's confidence first, then the reveal set
  // (threshold_reveals: at least min_reveal, the most confident, and every one above tau).
  void plan_threshold(std::vector<Seq>& seqs, const BlockSpan& blk, std::vector<int>& masked,
                      std::vector<Task>& tasks) {
    const int V = model_.config().vocab_size;
    for (auto& s : seqs)
      if (s.need && masked_positions(s, blk, masked) > 0)
        for (int pos : masked) tasks.push_back({&s, pos, blk.lo + pos, 0});
    run_tasks(tasks, false);
    tasks.clear();
    std::vector<double> confidence;  // of each masked position
    std::vector<int> reveal;         // indices into `masked`
    for (auto& s : seqs) {
      if (!s.need) continue;
      masked_positions(s, blk, masked);
      confidence.clear();
      for (int pos : masked) confidence.push_back(s.dist[size_t(pos)].confidence);
      threshold_reveals(confidence, o_.threshold, o_.min_reveal, reveal);
      for (int j : reveal)
        tasks.push_back(
            {&s, masked[size_t(j)], blk.lo + masked[size_t(j)], s.rng.reserve(uint64_t(V))});
    }
  }

  // Block b is finished: the stop rules, the streaming callback, the end of finished
  // sequences. Returns whether a sequence goes on.
  bool finish_block(std::vector<Seq>& seqs, int64_t b, const BlockSpan& blk, int64_t blocks,
                    int64_t commits) {
    const int64_t P = int64_t(prefix_.size()), lo = blk.lo, ghi = blk.ghi;
    bool any_active = false;
    for (auto& s : seqs) {
      if (!s.active) continue;
      const std::span<const int32_t> seq(s.ids.data(), size_t(ghi));
      int64_t end = ghi;
      if (o_.length_mode == LengthMode::fixed) {
        if (is_degenerate(seq, o_.stop)) s.rejected = true;
      } else if (is_degenerate(seq, o_.stop)) {
        end = std::max(P, ghi - o_.stop.window);
        s.stopped = true;
      } else if (auto e = second_eos_end(seq, eos_, size_t(P))) {
        end = int64_t(*e);
        s.stopped = true;
      }
      if (o_.on_block) {
        BlockEvent ev;
        ev.sequence = s.index;
        ev.attempt = s.attempt;
        ev.position = lo;
        ev.rejected = s.rejected;
        if (!s.rejected && end > lo)
          ev.tokens = std::span<const int32_t>(s.ids.data() + lo, size_t(end - lo));
        o_.on_block(ev);
      }
      if (s.rejected || s.stopped || b == blocks - 1) {
        s.active = false;
        s.length = end;
        s.commit_calls = commits;
      } else {
        any_active = true;
      }
    }
    return any_active;
  }

  // One denoising call for the sequences that need it.
  template <class Gather>
  void evaluate(std::vector<Seq>& seqs, int64_t b, std::vector<int32_t>& tokens,
                std::vector<int32_t>& pending, KVCache<Scalar>& cache, std::vector<Scalar>& logits,
                Gather& gather) {
    const int Bp = model_.block_size(), V = model_.config().vocab_size;
    const size_t rows = size_t(Bp) * V;
    if (o_.kv_cache) {
      gather(b);
      if (!pending.empty()) {
        model_.forward_block_fused(pending, tokens, cache, logits);
        pending.clear();
      } else {
        model_.forward_block(tokens, cache, logits);
      }
      for (size_t i = 0; i < seqs.size(); ++i)
        if (seqs[i].need) std::copy_n(logits.begin() + i * rows, rows, seqs[i].logits.begin());
    } else {
      for (auto& s : seqs) {
        if (!s.need) continue;
        const size_t upto = size_t(b + 1) * Bp;
        model_.forward_banded(std::span<const int32_t>(s.ids.data(), upto), logits);
        std::copy_n(logits.end() - ptrdiff_t(rows), rows, s.logits.begin());
      }
    }
    for (auto& s : seqs) {
      if (!s.need) continue;
      ++s.nfe;
      s.fresh = true;
      std::fill(s.dist_ok.begin(), s.dist_ok.end(), 0);
    }
  }

  // Builds the distributions the tasks need and, when draw is set, reveals their tokens.
  // Each task owns its (sequence, position), so the tasks run in parallel.
  void run_tasks(const std::vector<Task>& tasks, bool draw) {
    const auto& cfg = model_.config();
    const int V = cfg.vocab_size;
    std::exception_ptr error;
    // Threads only pay off on real vocabularies (a parallel region costs microseconds).
    const bool parallel = tasks.size() > 1 && tasks.size() * size_t(V) >= 65536;
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
    for (size_t i = 0; i < tasks.size(); ++i) {
      try {
        const Task& t = tasks[i];
        Seq& s = *t.s;
        if (!s.dist_ok[t.pos]) {
          make_distribution(s.logits.data() + size_t(t.pos) * V, V, cfg.mask_index, filter_,
                            s.dist[t.pos]);
          s.dist_ok[t.pos] = 1;
        }
        if (draw) s.ids[size_t(t.at)] = sample_token(s.dist[t.pos], s.rng, t.first);
      } catch (...) {
#pragma omp critical(bd3_sampler_error)
        if (!error) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
  }

  const Model& model_;
  Noise noise_;
  SamplerOptions o_;
  Filter filter_;
  int steps_ = 1;
  int32_t eos_ = 0;
  std::vector<int32_t> prefix_;
  SamplerStats stats_;
};

}  // namespace bd3::sample
