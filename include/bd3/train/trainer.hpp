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
//      loss_and_gradient computes g_m, the gradient of its mean loss;
//   3. the gradient G = ((g_0 + g_1) + ...) + g_{M-1} is averaged over the micro-batches,
//      clipped to grad_clip (norm), AdamW updates the weights at lr(s), the EMA follows.
//   With a ProcessGroup of N ranks (data_parallel.hpp), rank r computes micro-batches
//   r*M/N .. (r+1)*M/N - 1 of step 2 and the ranks form G in the same order, so every rank
//   ends the step with the single process's bits.
//   A NaN/Inf loss, gradient norm or updated weight throws ErrorKind::numerical naming the
//   step (1-based) before the EMA or any checkpoint sees it; the trainer then refuses to
//   continue, and to save broken weights.
// Every random number is a function of (seed, s, ...) and the data position is a
// counter, so a run resumed from a checkpoint repeats exactly what the uninterrupted run
// would have done (given the same thread count).
#include <bd3/diffusion/clip_search.hpp>
#include <bd3/diffusion/estimator.hpp>
#include <bd3/diffusion/evaluate.hpp>
#include <bd3/error.hpp>
#include <bd3/model/model.hpp>
#include <bd3/policies/noise.hpp>
#include <bd3/text/corpus.hpp>
#include <bd3/text/tokenizer.hpp>
#include <bd3/train/backward.hpp>
#include <bd3/train/data_parallel.hpp>
#include <bd3/train/init.hpp>
#include <bd3/train/optimizer.hpp>
#include <bd3/train/trainer_state.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstdio>
#include <cstring>
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
  double reduce_wait_seconds = 0;        // data-parallel: waiting for the gradient sum
  std::optional<ClipSearchResult> clip;  // when a clip search ran before this step
};

// Trains a Model with the noise schedule Noise (policies/noise.hpp): the schedule draws
// the training masks and weights, scores the clip search and the validation, and its
// name() is what checkpoints record (TrainOptions::noise follows it).
template <class Model, NoiseSchedule Noise = noise::LogLinear>
class Trainer {
  static_assert(std::is_same_v<typename Model::scalar_type, float>,
                "Trainer: the model must compute in float");

 public:
  using noise_type = Noise;

  // A new run: model already has its config (dropout, sampling interval) and weights
  // (call init_model first for a fresh run). The corpus must outlive the trainer, and so
  // must `group`, when given: this process is then one rank of a data-parallel run
  // (data_parallel.hpp), options.accumulate counts the micro-batches of all ranks, and
  // every rank must be given the same options, weights and data (checked here).
  Trainer(Model model, Noise noise, const TrainOptions& options, const text::Corpus& corpus,
          ProcessGroup* group = nullptr)
      : model_(std::move(model)),
        noise_(std::move(noise)),
        options_(options),
        corpus_(&corpus),
        group_(group) {
    options_.validate();
    const std::string schedule(noise_.name());
    if (options_.noise != schedule && options_.noise != TrainOptions{}.noise)
      fail_usage("the training options name the noise schedule '" + options_.noise +
                 "' but the trainer's schedule is '" + schedule + "'");
    options_.noise = schedule;
    options_.clip.resample = options_.resample;
    options_.clip.max_resample_tries = options_.max_resample_tries;
    options_.clip.count_bos = options_.resample_count_bos;
    check_corpus();
    const size_t n = model_.parameters().size();
    grads_.assign(n, 0.0f);
    adam_.reset(n);
    ema_.decay = options_.ema;
    ema_.reset(model_.parameters());
    state_.interval = options_.interval;
    state_.options = options_;
    check_estimator_options(estimator_options(), model_.config().model_length, model_.block_size());
    check_group();
  }

  // Resumes from a checkpoint: weights, moments, EMA, counters, interval. A checkpoint
  // resumes on any number of ranks that divides its options.accumulate.
  Trainer(Model model, Noise noise, const TrainingCheckpoint& ck, const text::Corpus& corpus,
          ProcessGroup* group = nullptr)
      : model_(std::move(model)),
        noise_(std::move(noise)),
        options_(ck.state.options),
        corpus_(&corpus),
        group_(group) {
    options_.validate();
    if (options_.noise != noise_.name())
      fail("the checkpoint was trained with the noise schedule '" + options_.noise +
           "' but the trainer's schedule is '" + std::string(noise_.name()) + "'");
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
    check_group();
  }

  // The same with a default-constructed schedule (Trainer<Model> trains with log-linear).
  Trainer(Model model, const TrainOptions& options, const text::Corpus& corpus,
          ProcessGroup* group = nullptr) requires std::default_initializable<Noise>
      : Trainer(std::move(model), Noise{}, options, corpus, group) {}
  Trainer(Model model, const TrainingCheckpoint& ck, const text::Corpus& corpus,
          ProcessGroup* group = nullptr) requires std::default_initializable<Noise>
      : Trainer(std::move(model), Noise{}, ck, corpus, group) {}

  const Model& model() const { return model_; }
  Model& model() { return model_; }
  const Noise& noise() const { return noise_; }
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
    o.count_bos = options_.resample_count_bos;
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
    const EstimatorOptions eo = estimator_options();
    // This rank's micro-batches: m = first + a, a < A (all of them in one process).
    const int ranks = group_ ? group_->size() : 1, A = options_.accumulate / ranks;
    const int first = (group_ ? group_->rank() : 0) * A;
    const int64_t position = state_.samples_seen;
    std::vector<double> losses(static_cast<size_t>(A));
    micro_grads_.resize(size_t(std::max(A, 2)));
    for (int a = 0; a < A; ++a) {
      const int micro = first + a;
      batch_at(position + int64_t(micro) * B, x0_);
      CounterRng rng(options_.seed,
                     {rng_stream::train_noise, uint64_t(state_.step), uint64_t(micro)});
      draw_noised_batch(x0_, B, L, model_.block_size(), c.mask_index, noise_, eo, rng, noised_);
      Dropout dropout;
      dropout.p = options_.dropout;
      dropout.seed = CounterRng::derive_key(
          options_.seed, {rng_stream::dropout, uint64_t(state_.step), uint64_t(micro)});
      const bool last = a == A - 1;
      std::vector<float>& g = micro_buffer(a);
      g.assign(grads_.size(), 0.0f);
      GradientReady ready;
      if (last && group_) {
        group_->reduce_begin(std::span<float>(grads_),
                             [this, A](std::span<float> dst, GradientRange range, bool onto) {
                               local_sum(dst, range, A, onto);
                             });
        ready = [this](GradientRange range) { group_->reduce_ready(range); };
      }
      losses[size_t(a)] = loss_and_gradient(model_, noised_.xt, x0_, B, noised_.weight,
                                            std::span<float>(g), dropout, &scratch_, ready);
      // One process sums into grads_ itself, rank 0 into buffer 0: the chain's order.
      if (a > 0 && (!group_ || (!last && first == 0)))
        add_to(group_ ? micro_buffer(0) : grads_, g, {0, int64_t(g.size())});
    }
    state_.samples_seen = position + int64_t(options_.accumulate) * B;
    if (group_) r.reduce_wait_seconds = group_->reduce_finish();
    double loss = 0;
    for (double l : gather_losses(losses)) loss += l;
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
    const ClipSearchResult r = with_published_weights([&] {
      return clip_search(model_, noise_, std::span<const std::vector<int32_t>>(batches),
                         std::span<const int>(sizes), options_.clip, options_.seed,
                         uint64_t(state_.step));
    });
    state_.interval = r.best_interval();
    return r;
  }

  // The validation NELBO (evaluate_nelbo over [1e-3, 1], the same masks every time) of the
  // published weights on the first `max_sequences` held-out sequences (0: all of them); a
  // collective call with a process group.
  EvalResult validate(int64_t max_sequences = 0) {
    auto sequences = split_sequences(*corpus_, text::Split::validation);
    if (sequences.empty())
      fail_usage("validation needs held-out sequences (--val-fraction > 0 and enough data)");
    if (max_sequences > 0 && int64_t(sequences.size()) > max_sequences)
      sequences.resize(size_t(max_sequences));
    EvalOptions eo;
    eo.batch = options_.batch;
    eo.seed = options_.seed;
    return with_published_weights([&] {
      return evaluate_nelbo(model_, noise_, *corpus_, std::span<const int64_t>(sequences), eo,
                            group_);
    });
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

  // Runs fn on the weights a checkpoint publishes: with EMA the model holds the EMA weights
  // meanwhile (the reference validates with them), and its own afterwards, also on a throw.
  template <class Fn>
  auto with_published_weights(Fn&& fn) {
    if (!ema_.enabled()) return fn();
    std::vector<float> saved(model_.parameters().begin(), model_.parameters().end());
    std::copy(ema_.shadow.begin(), ema_.shadow.end(), model_.parameters().begin());
    model_.parameters_changed();
    struct Restore {
      Trainer* t;
      std::vector<float>& saved;
      ~Restore() {
        std::copy(saved.begin(), saved.end(), t->model_.parameters().begin());
        t->model_.parameters_changed();
      }
    } restore{this, saved};
    return fn();
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

  // Buffer of micro-batch a: rank 0 sums into buffer 0 and computes the others in buffer 1
  // (it never needs them again); another rank keeps each until the chain reaches it; the
  // last micro-batch always has a buffer of its own (the chain reads it while it is made).
  // One process has no chain to feed: micro-batch 0 goes straight into grads_ and the
  // others through buffer 0, added on as they come (the same order, no extra copy).
  std::vector<float>& micro_buffer(int a) {
    if (!group_) return a == 0 ? grads_ : micro_grads_[0];
    const int A = options_.accumulate / group_->size();
    if (a == A - 1) return last_grads_;
    return micro_grads_[size_t(group_->rank() == 0 ? std::min(a, 1) : a)];
  }

  static void add_to(std::vector<float>& dst, const std::vector<float>& src, GradientRange r) {
    for (int64_t i = r.offset; i < r.offset + r.count; ++i) dst[size_t(i)] += src[size_t(i)];
  }

  // This rank's share of the chained sum (LocalGradients): its A micro-batch gradients, in
  // order, written into dst or added onto the partial sum dst holds.
  void local_sum(std::span<float> dst, GradientRange r, int A, bool onto) {
    const bool first_rank = !group_ || group_->rank() == 0;
    auto range = [&](const std::vector<float>& v) {
      return std::span<const float>(v).subspan(size_t(r.offset), size_t(r.count));
    };
    auto add = [&](std::span<const float> src) {
      for (size_t i = 0; i < src.size(); ++i) dst[i] += src[i];
    };
    if (!onto) {
      // Rank 0: buffer 0 holds g_0 + ... + g_{A-2} (or, with A = 1, there is none).
      const auto start = range(A > 1 ? micro_grads_[0] : last_grads_);
      std::copy(start.begin(), start.end(), dst.begin());
      if (A > 1) add(range(last_grads_));
      return;
    }
    if (first_rank) fail("Trainer: rank 0 starts the gradient chain; it adds onto nothing");
    for (int a = 0; a + 1 < A; ++a) add(range(micro_grads_[size_t(a)]));
    add(range(last_grads_));
  }

  // Every micro-batch's mean loss, in micro-batch order (the ranks' in rank order).
  std::vector<double> gather_losses(const std::vector<double>& mine) {
    if (!group_) return mine;
    std::string bytes(mine.size() * sizeof(double), '\0');
    std::memcpy(bytes.data(), mine.data(), bytes.size());
    std::vector<double> all;
    for (const auto& part : group_->all_gather(bytes)) {
      const size_t at = all.size();
      all.resize(at + part.size() / sizeof(double));
      std::memcpy(all.data() + at, part.data(), part.size());
    }
    return all;
  }

  // With a group: options.accumulate must split over the ranks, and every rank must hold
  // the same run (options, model, data, weights, position); a bad launch fails here, on
  // every rank, naming what differs.
  void check_group() const {
    if (!group_) return;
    const int n = group_->size();
    if (n < 1 || group_->rank() < 0 || group_->rank() >= n)
      fail("Trainer: the process group's rank and size are inconsistent");
    if (options_.accumulate % n != 0)
      fail_usage("the run's " + std::to_string(options_.accumulate) +
                 " micro-batches per step do not split over " + std::to_string(n) +
                 " ranks: the number of ranks must divide batch count x --accumulate");
    text::detail::Hasher weights, moments;
    auto bytes = [](std::span<const float> v) {
      return std::string_view(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
    };
    weights.add(bytes(model_.parameters()));
    moments.add(bytes(adam_.m)).add(bytes(adam_.v)).add(bytes(ema_.shadow));
    // In the order a mistake is most likely to show: a seed given to one rank only changes
    // the options, the weights and the moments; the options name it.
    const nlohmann::json mine = nlohmann::json::array(
        {nlohmann::json::array({"training options", options_.to_json()}),
         nlohmann::json::array({"model config", model_.config().to_json()}),
         nlohmann::json::array({"noise schedule", std::string(noise_.name())}),
         nlohmann::json::array({"data", corpus_->fingerprint()}),
         nlohmann::json::array({"step", state_.step}),
         nlohmann::json::array({"data position", state_.samples_seen}),
         nlohmann::json::array({"interval", {state_.interval.eps_min, state_.interval.eps_max}}),
         nlohmann::json::array({"weights", weights.hex()}),
         nlohmann::json::array({"optimizer state", moments.hex()})});
    const auto all = group_->all_gather(mine.dump());
    const auto root = nlohmann::json::parse(all[0]);
    for (int r = 1; r < n; ++r) {
      const auto other = nlohmann::json::parse(all[size_t(r)]);
      for (size_t i = 0; i < root.size(); ++i)
        if (i >= other.size() || other[i] != root[i])
          fail_usage("rank " + std::to_string(r) + " of " + std::to_string(n) +
                     " disagrees with rank 0 on the " + root[i][0].get<std::string>() +
                     difference(root[i][1], i < other.size() ? other[i][1] : nlohmann::json(), r) +
                     ": every rank must be launched with the same flags, data and checkpoint");
    }
  }

  // " (key: b on rank r, a on rank 0)" for the first differing key of two JSON objects.
  static std::string difference(const nlohmann::json& a, const nlohmann::json& b, int r) {
    if (!a.is_object() || !b.is_object()) return "";
    for (const auto& [key, value] : a.items())
      if (b.value(key, nlohmann::json()) != value)
        return " (" + key + ": " + b.value(key, nlohmann::json()).dump() + " on rank " +
               std::to_string(r) + ", " + value.dump() + " on rank 0)";
    return "";
  }

  // The `batch` training sequences at positions pos, pos + 1, ... of the shuffled epochs.
  void batch_at(int64_t position, std::vector<int32_t>& out) {
    const int L = model_.config().model_length, B = options_.batch;
    const int64_t n = corpus_->size(text::Split::train);
    std::vector<int64_t> idx(static_cast<size_t>(B));
    for (int k = 0; k < B; ++k) {
      const int64_t pos = position + k;
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
  Noise noise_;
  TrainOptions options_;
  const text::Corpus* corpus_;
  TrainerState state_;
  ProcessGroup* group_ = nullptr;
  std::vector<float> grads_;                     // the step's gradient G
  std::vector<std::vector<float>> micro_grads_;  // see micro_buffer()
  std::vector<float> last_grads_;
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
