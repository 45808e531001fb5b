#pragma once
// The training loop of a BD3-LM: data order, the NELBO estimator, backward, gradient
// accumulation and clipping, AdamW with its learning-rate schedule, the EMA of the
// weights, the data-driven clipped schedule, and checkpoints (trainer_state.hpp).
//
// One optimizer step s (0-based; `step()` is the number of steps done):
//   1. with clip search on, when s > 0 and s % clip_every == 0: score the candidate
//      intervals on the validation batches (with the EMA weights when EMA is on, as the
//      reference validates with them) and train on the argmin from now on;
//   2. for each of `accumulate` micro-batches m: the next `batch` training sequences in a
//      shuffled order (epoch e is the permutation Corpus::epoch_order(seed, e)); a noised
//      batch from CounterRng(seed, {train_noise, s, m}); dropout seeded by (seed, s, m);
//      loss_and_gradient accumulates the gradient of the mean loss;
//   3. the gradient is averaged over the micro-batches, clipped to grad_clip (norm),
//      AdamW updates the weights at lr(s), the EMA follows.
//   A NaN/Inf loss, gradient norm or updated weight throws ErrorKind::numerical naming the
//   step (1-based) before the EMA or any checkpoint sees it; the trainer then refuses to
//   continue, and to save broken weights.
// Every random number is a function of (seed, s, ...) and the data position is a
// counter, so a run resumed from a checkpoint repeats exactly what the uninterrupted run
// would have done (given the same thread count).
#include <bd3/diffusion/clip_search.hpp>
#include <bd3/diffusion/estimator.hpp>
#include <bd3/error.hpp>
#include <bd3/model/model.hpp>
#include <bd3/text/corpus.hpp>
#include <bd3/text/tokenizer.hpp>
#include <bd3/train/backward.hpp>
#include <bd3/train/init.hpp>
#include <bd3/train/optimizer.hpp>
#include <bd3/train/trainer_state.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace bd3::train {

struct StepResult {
  int64_t step = 0;  // the step number just done (0-based)
  double loss = 0;   // mean over the micro-batches of the mean loss over positions 1..L-1
  double lr = 0;
  double grad_norm = 0;                  // before clipping
  int64_t tokens = 0;                    // tokens processed (batch x accumulate x L)
  double seconds = 0;                    // wall time of the step
  std::optional<ClipSearchResult> clip;  // when a clip search ran before this step
};

template <class Model>
class Trainer {
  static_assert(std::is_same_v<typename Model::scalar_type, float>,
                "Trainer: the model must compute in float");

 public:
  // A new run: model already has its config (dropout, sampling interval) and weights
  // (call init_model first for a fresh run). The corpus must outlive the trainer.
  Trainer(Model model, const TrainOptions& options, const text::Corpus& corpus)
      : model_(std::move(model)), options_(options), corpus_(&corpus) {
    options_.validate();
    const std::string schedule(model_.noise().name());
    if (options_.noise != schedule && options_.noise != TrainOptions{}.noise)
      fail_usage("the training options name the noise schedule '" + options_.noise +
                 "' but the model's schedule is '" + schedule + "'");
    options_.noise = schedule;
    options_.clip.resample = options_.resample;
    options_.clip.max_resample_tries = options_.max_resample_tries;
    check_corpus();
    const size_t n = model_.parameters().size();
    grads_.assign(n, 0.0f);
    adam_.reset(n);
    ema_.decay = options_.ema;
    ema_.reset(model_.parameters());
    state_.interval = options_.interval;
    state_.options = options_;
    check_estimator_options(estimator_options(), model_.config().model_length, model_.block_size());
  }

  // Resumes from a checkpoint: weights, moments, EMA, counters, interval.
  Trainer(Model model, const TrainingCheckpoint& ck, const text::Corpus& corpus)
      : model_(std::move(model)), options_(ck.state.options), corpus_(&corpus) {
    options_.validate();
    if (options_.noise != model_.noise().name())
      fail("the checkpoint was trained with the noise schedule '" + options_.noise +
           "' but the model's schedule is '" + std::string(model_.noise().name()) + "'");
    check_corpus();
    const size_t n = model_.parameters().size();
    if (ck.weights.size() != n || ck.exp_avg.size() != n || ck.exp_avg_sq.size() != n ||
        ck.model.size() != n)
      fail("checkpoint tensors do not match the model's parameter count");
    std::copy(ck.weights.begin(), ck.weights.end(), model_.parameters().begin());
    model_.parameters_changed();
    grads_.assign(n, 0.0f);
    adam_.m = ck.exp_avg;
    adam_.v = ck.exp_avg_sq;
    adam_.step = ck.state.adam_step;
    ema_.decay = options_.ema;
    ema_.shadow = ema_.enabled() ? ck.model : ck.weights;
    ema_.updates = ck.state.ema_updates;
    state_ = ck.state;
    state_.options = options_;
  }

  const Model& model() const { return model_; }
  Model& model() { return model_; }
  const TrainOptions& options() const { return options_; }
  // Changes the horizon (total steps) of the run, e.g. when resuming with more --steps.
  void set_total_steps(int64_t steps) {
    if (steps < 0) fail_usage("--steps must be >= 0");
    options_.steps = steps;
    state_.options.steps = steps;
  }
  int64_t step() const { return state_.step; }
  const TrainerState& state() const { return state_; }
  TrainerState& state() { return state_; }
  ClipInterval interval() const { return state_.interval; }
  const std::vector<float>& ema_weights() const { return ema_.shadow; }
  const AdamWState& adam() const { return adam_; }
  bool done() const { return state_.step >= options_.steps; }

  // The weights a checkpoint's model.safetensors holds: the EMA, or the raw weights.
  std::span<const float> published_weights() const {
    return ema_.enabled() ? std::span<const float>(ema_.shadow)
                          : std::span<const float>(model_.parameters());
  }

  EstimatorOptions estimator_options() const {
    EstimatorOptions o;
    o.eps_min = state_.interval.eps_min, o.eps_max = state_.interval.eps_max;
    o.resample = options_.resample;
    o.max_resample_tries = options_.max_resample_tries;
    return o;
  }

  // One optimizer step (see the top of the file).
  StepResult train_step() {
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    if (failed_)
      fail_usage("Trainer: a numerical error stopped this run (" + failure_ +
                 "); it cannot continue");
    StepResult r;
    r.step = state_.step;
    const int64_t samples_before = state_.samples_seen;
    if (options_.clip_search && state_.step > 0 && state_.step % options_.clip_every == 0)
      r.clip = run_clip_search();
    const auto& c = model_.config();
    const int L = c.model_length, B = options_.batch;
    std::fill(grads_.begin(), grads_.end(), 0.0f);
    const EstimatorOptions eo = estimator_options();
    double loss = 0;
    for (int micro = 0; micro < options_.accumulate; ++micro) {
      next_batch(x0_);
      CounterRng rng(options_.seed,
                     {rng_stream::train_noise, uint64_t(state_.step), uint64_t(micro)});
      draw_noised_batch(x0_, B, L, model_.block_size(), c.mask_index, model_.noise(), eo, rng,
                        noised_);
      Dropout dropout;
      dropout.p = options_.dropout;
      dropout.seed = CounterRng::derive_key(
          options_.seed, {rng_stream::dropout, uint64_t(state_.step), uint64_t(micro)});
      loss += loss_and_gradient(model_, noised_.xt, x0_, B, noised_.weight,
                                std::span<float>(grads_), dropout, &scratch_);
    }
    if (options_.accumulate > 1) {
      const float inv = 1.0f / float(options_.accumulate);
      for (auto& g : grads_) g *= inv;
    }
    r.loss = loss / options_.accumulate;
    // Numerical guards: a non-finite loss, gradient norm or updated weight stops training
    // before anything is published; see numerical_failure().
    if (!std::isfinite(r.loss))
      numerical_failure(samples_before, "the loss is " + number_text(r.loss));
    r.grad_norm = gradient_norm(grads_);
    if (!std::isfinite(r.grad_norm))
      numerical_failure(samples_before, "the gradient norm is " + number_text(r.grad_norm) +
                                            " (loss " + number_text(r.loss) + ")");
    scale_gradient_to_norm(grads_, options_.grad_clip, r.grad_norm);
    r.lr = options_.lr_schedule().at(state_.step);
    adamw_step(model_.parameters(), grads_, adam_, options_.adamw, r.lr);
    if (const int64_t bad = first_non_finite(model_.parameters()); bad >= 0) {
      weights_broken_ = true;
      numerical_failure(samples_before, "the update made weight " + std::to_string(bad) +
                                            " (tensor " + tensor_of(bad) + ") " +
                                            number_text(model_.parameters()[size_t(bad)]) +
                                            " (learning rate " + number_text(r.lr) + ")");
    }
    model_.parameters_changed();
    ema_.update(model_.parameters());
    r.tokens = int64_t(B) * options_.accumulate * L;
    state_.step += 1;
    state_.adam_step = adam_.step;
    state_.ema_updates = ema_.updates;
    state_.tokens_seen += r.tokens;
    r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    state_.elapsed_seconds += r.seconds;
    return r;
  }

  // Scores the candidate intervals on the validation batches and adopts the best.
  ClipSearchResult run_clip_search() {
    const auto& c = model_.config();
    const int L = c.model_length, B = options_.batch;
    std::vector<std::vector<int32_t>> batches;
    std::vector<int> sizes;
    const text::Split split =
        corpus_->size(text::Split::validation) > 0 ? text::Split::validation : text::Split::train;
    const int64_t n = corpus_->size(split);
    int64_t next = 0;
    for (int j = 0; j < options_.clip_batches; ++j) {
      std::vector<int64_t> idx(static_cast<size_t>(B));
      for (auto& i : idx) i = (next++) % n;
      batches.emplace_back(size_t(B) * L);
      corpus_->batch(split, idx, batches.back());
      sizes.push_back(B);
    }
    // With EMA, the search runs on the EMA weights (the reference validates with them).
    std::vector<float> saved;
    if (ema_.enabled()) {
      saved.assign(model_.parameters().begin(), model_.parameters().end());
      std::copy(ema_.shadow.begin(), ema_.shadow.end(), model_.parameters().begin());
      model_.parameters_changed();
    }
    ClipSearchResult r;
    try {
      r = clip_search(model_, std::span<const std::vector<int32_t>>(batches),
                      std::span<const int>(sizes), options_.clip, options_.seed,
                      uint64_t(state_.step));
    } catch (...) {
      if (!saved.empty()) restore(saved);
      throw;
    }
    if (!saved.empty()) restore(saved);
    state_.interval = r.best_interval();
    return r;
  }

  // Writes a checkpoint of the current state into out_dir (crash-safe, see
  // trainer_state.hpp); returns its directory.
  // Refused after a numerical error, so a checkpoint never holds weights from a diverged
  // step.
  std::filesystem::path save(const std::filesystem::path& out_dir, const text::Tokenizer* tokenizer,
                             const std::function<void()>& after_rename_hook = {}) const {
    if (failed_ && weights_broken_)
      fail_usage("Trainer: not saving weights broken by a numerical error (" + failure_ + ")");
    return commit_checkpoint(
        out_dir, state_.step,
        [&](const std::filesystem::path& dir) {
          write_checkpoint_files(dir, published_config(), published_weights(), model_.parameters(),
                                 adam_.m, adam_.v, state_, tokenizer);
        },
        after_rename_hook);
  }

 private:
  static std::string number_text(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    return buf;
  }

  std::string tensor_of(int64_t index) const {
    for (const auto& e : model_.layout().entries())
      if (index >= e.offset && index < e.offset + e.size) return e.name;
    return "?";
  }

  // Throws the numerical error of the step being done (1-based, as metrics.jsonl counts).
  // A loss or gradient failure leaves the trainer at the end of the previous step (the
  // data position is rewound, weights and moments were not touched); a weight failure
  // leaves broken weights, which save() then refuses. Either way train_step() refuses to
  // go on.
  [[noreturn]] void numerical_failure(int64_t samples_before, const std::string& what) {
    state_.samples_seen = samples_before;
    failed_ = true;
    failure_ = "step " + std::to_string(state_.step + 1) + ": " + what;
    throw Error(ErrorKind::numerical, "training diverged at " + failure_);
  }

  void restore(const std::vector<float>& saved) {
    std::copy(saved.begin(), saved.end(), model_.parameters().begin());
    model_.parameters_changed();
  }

  // The model's config as a checkpoint records it: the run's sampling interval and
  // dropout (the model itself keeps the config it was built with).
  ModelConfig published_config() const {
    ModelConfig c = model_.config();
    c.sampling_eps_min = state_.interval.eps_min;
    c.sampling_eps_max = state_.interval.eps_max;
    c.dropout = options_.dropout;
    return c;
  }

  void check_corpus() const {
    if (corpus_->model_length() != model_.config().model_length)
      fail_usage("the corpus was cut into sequences of " + std::to_string(corpus_->model_length()) +
                 " tokens but the model's length is " +
                 std::to_string(model_.config().model_length));
    if (corpus_->size(text::Split::train) < 1) fail("the training split is empty");
  }

  // The next `batch` training sequences of the shuffled epochs.
  void next_batch(std::vector<int32_t>& out) {
    const int L = model_.config().model_length, B = options_.batch;
    const int64_t n = corpus_->size(text::Split::train);
    std::vector<int64_t> idx(static_cast<size_t>(B));
    for (int k = 0; k < B; ++k) {
      const int64_t pos = state_.samples_seen++;
      const int64_t epoch = pos / n;
      if (epoch != order_epoch_) {
        order_ = corpus_->epoch_order(text::Split::train, options_.seed, uint64_t(epoch));
        order_epoch_ = epoch;
      }
      idx[size_t(k)] = order_[size_t(pos % n)];
    }
    out.resize(size_t(B) * L);
    corpus_->batch(text::Split::train, idx, out);
  }

  Model model_;
  TrainOptions options_;
  const text::Corpus* corpus_;
  TrainerState state_;
  std::vector<float> grads_;
  AdamWState adam_;
  Ema ema_;
  std::vector<int32_t> x0_;
  NoisedBatch noised_;
  TrainScratch<float> scratch_;
  std::vector<int64_t> order_;
  int64_t order_epoch_ = -1;
  bool failed_ = false, weights_broken_ = false;
  std::string failure_;
};

}  // namespace bd3::train
