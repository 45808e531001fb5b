// bd3 train | bd3 eval: training BD3-LMs on text and measuring their NELBO.
//   bd3 train --data FILE --out DIR [model, optimizer, schedule flags] [--resume]
//       progress on stderr, OUT/metrics.jsonl, crash-safe checkpoints in OUT (see
//       include/bd3/train/trainer_state.hpp and docs/training.md).
//   bd3 eval --model DIR --data FILE [--samples K] [--split validation|train|all]
//       one JSON line: nelbo, ppl, bits_per_token, tokens.
#include <bd3/diffusion/estimator.hpp>
#include <bd3/diffusion/evaluate.hpp>
#include <bd3/text/bpe_trainer.hpp>
#include <bd3/text/corpus.hpp>
#include <bd3/text/detail/files.hpp>
#include <bd3/text/tokenizer.hpp>
#include <bd3/train/trainer.hpp>

#include <fmt/core.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "cli.hpp"
#include "input.hpp"
#include "launch.hpp"
#include "model_common.hpp"
#include "progress.hpp"

namespace {

namespace fs = std::filesystem;
namespace text = bd3::text;
namespace train = bd3::train;
using bd3::fail;
using bd3::fail_usage;
using bd3::RuntimeNoise;
using bd3::cli::CliModel;
using Clock = std::chrono::steady_clock;

volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" void on_stop_signal(int sig) {
  g_stop_signal = sig;
}

using bd3::cli::Progress;

// --tokenizer bytes | gpt2:DIR | DIR | bpe:N (or bpe with --tokenizer-vocab N).
text::Tokenizer make_tokenizer(const std::string& spec, int64_t bpe_vocab,
                               const std::vector<fs::path>& data, int threads, Progress& progress) {
  auto train_bpe = [&](int64_t n) {
    if (n < 257 || n > int64_t(text::kMaxVocabSize))
      fail_usage(
          fmt::format("BPE vocabulary size must be in 257..{}, got {}", text::kMaxVocabSize, n));
    std::vector<std::string> contents;
    for (const auto& f : data)
      contents.push_back(text::detail::read_file(f, uint64_t{4} << 30, "training data"));
    std::vector<std::string_view> views(contents.begin(), contents.end());
    text::BpeTrainOptions o;
    o.vocab_size = int32_t(n);
    o.threads = threads;
    progress.message(
        fmt::format("bd3 train: training a BPE tokenizer of {} tokens on the data", n));
    return text::Tokenizer(text::train_bpe(views, o));
  };
  if (spec == "bytes") {
    if (bpe_vocab > 0) fail_usage("--tokenizer-vocab goes with --tokenizer bpe (or bpe:N)");
    return text::Tokenizer::bytes();
  }
  if (spec == "bpe") {
    if (bpe_vocab <= 0) fail_usage("--tokenizer bpe needs --tokenizer-vocab N");
    return train_bpe(bpe_vocab);
  }
  if (spec.starts_with("bpe:")) {
    int64_t n = 0;
    try {
      size_t pos = 0;
      n = std::stoll(spec.substr(4), &pos);
      if (pos != spec.size() - 4) throw std::invalid_argument("trailing");
    } catch (const std::exception&) {
      fail_usage("--tokenizer bpe:N needs an integer N, got '" + spec + "'");
    }
    if (bpe_vocab > 0 && bpe_vocab != n)
      fail_usage("--tokenizer-vocab differs from the N of --tokenizer bpe:N");
    return train_bpe(n);
  }
  if (bpe_vocab > 0) fail_usage("--tokenizer-vocab goes with --tokenizer bpe (or bpe:N)");
  const std::string dir = spec.starts_with("gpt2:") ? spec.substr(5) : spec;
  if (dir.empty()) fail_usage("--tokenizer: expected bytes, gpt2:DIR, DIR or bpe:N");
  if (!fs::is_directory(dir))
    fail_usage("--tokenizer '" + spec + "': expected bytes, gpt2:DIR, DIR or bpe:N (no directory " +
               dir + ")");
  return text::Tokenizer::load_from(bd3::cli::tokenizer_dir(dir));
}

// Keeps the lines of metrics.jsonl written before the checkpoint of `step` (after a
// resume): step and validation lines up to `step`, clip-search events (logged at the start
// of step `step`) before it.
void trim_metrics(const fs::path& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string kept, line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step")) continue;  // a torn last line
    if (!j["step"].is_number_integer()) continue;
    const int64_t s = j["step"].get<int64_t>();
    if (j.value("event", "") == "clip_search" ? s < step : s <= step) kept += line + "\n";
  }
  bd3::io::write_file_atomic(path, kept);
}

struct TrainFlags {
  std::vector<std::string> data;
  std::string tokenizer = "bytes";
  int64_t tokenizer_vocab = 0;
  int block_size = 4, length = 128, layers = 4, hidden = 256, heads = 4, cond = 128;
  int batch = 8;
  int64_t steps = 1000;
  double lr = 3e-4;
  uint64_t seed = 0;
  int threads = 0;
  std::string out;
  int64_t checkpoint_every = 500;
  bool resume = false;
  double max_seconds = 0;
  std::string noise = "loglinear";
  bool clip_search = false;
  int64_t clip_every = 500;
  int clip_batches = 4;
  std::vector<double> clip_widths{0.5, 0.6, 0.7, 0.8, 0.9};
  int64_t warmup = -1;
  bool cosine = false;
  double min_lr = 0;
  double weight_decay = 0;
  double grad_clip = 1.0;
  double ema = 0.9999;
  int accumulate = 1;
  double dropout = 0;
  double val_fraction = 0.05;
  double eps_min = 1e-3, eps_max = 1.0;
  bool resample = false;
  double beta1 = 0.9, beta2 = 0.999, adam_eps = 1e-8;
  int64_t log_every = 1;
  bool quiet = false;
  bool no_overlap = false;
  std::string init_from;
  int64_t eval_every = 0, eval_sequences = 256;
  std::string recipe = "bd3";
};

// --recipe official: the official scripts' training settings (SPEC "Training recipe"), each
// the default of its flag, which still overrides it.
struct OfficialRecipe {
  static constexpr double dropout = 0.1;
  static constexpr int64_t warmup = 2500;    // counted as LambdaLR does: step 0 at lr 0
  static constexpr bool resample = true;     // first block counted over all B' positions
  static constexpr bool clip_search = true;  // widths 0.5..0.9 (--clip-widths' default)
};

// Options that define a run; on --resume they must not be given with another value.
struct Fixed {
  const char* flag;
  std::function<bool(const train::TrainOptions&, const bd3::ModelConfig&, const TrainFlags&)> same;
};

// What a run is: its options and model shape (from the flags, or from the checkpoint it
// resumes, which the flags must then agree with), its tokenizer and its data files.
struct RunPlan {
  train::TrainOptions opts;
  bd3::ModelConfig config;
  std::optional<text::Tokenizer> tokenizer;
  std::optional<train::TrainingCheckpoint> ck;
  std::vector<fs::path> data;
  // --init-from: the parent model (its directory and weights).
  fs::path parent_dir;
  std::optional<bd3::LoadedCheckpoint> parent;
};

RunPlan plan_run(const TrainFlags& f, CLI::App* cmd, int ranks, Progress& progress) {
  const fs::path out = f.out;
  auto given = [&](const char* name) { return cmd->get_option(name)->count() > 0; };
  RunPlan plan;
  auto& opts = plan.opts;
  auto& config = plan.config;
  auto& tokenizer = plan.tokenizer;
  auto& ck = plan.ck;
  auto& data = plan.data;
  data.assign(f.data.begin(), f.data.end());
  if (f.resume && given("--init-from"))
    fail_usage("--init-from starts a new run from a model's weights; --resume continues --out's");
  if (f.resume) {
    ck = train::load_training_checkpoint(out);
    if (!ck->tokenizer) fail(ck->dir.string() + " has no tokenizer");
    tokenizer = ck->tokenizer;
    opts = ck->state.options;
    config = ck->config;
    if (data.empty()) {
      for (const auto& p : ck->state.extra.value("data", std::vector<std::string>{}))
        data.emplace_back(p);
      if (data.empty())
        fail_usage("--resume: give --data (the checkpoint does not name its data files)");
    }
    // Flags that define the run must agree with the checkpoint. --accumulate counts one
    // rank's micro-batches; the checkpoint, every rank's.
    const std::vector<Fixed> fixed = {
        {"--block-size", [](auto&, auto& c, auto& f) { return c.block_size == f.block_size; }},
        {"--length", [](auto&, auto& c, auto& f) { return c.model_length == f.length; }},
        {"--layers", [](auto&, auto& c, auto& f) { return c.n_blocks == f.layers; }},
        {"--hidden", [](auto&, auto& c, auto& f) { return c.hidden_dim == f.hidden; }},
        {"--heads", [](auto&, auto& c, auto& f) { return c.n_heads == f.heads; }},
        {"--cond", [](auto&, auto& c, auto& f) { return c.cond_dim == f.cond; }},
        {"--batch", [](auto& o, auto&, auto& f) { return o.batch == f.batch; }},
        {"--lr", [](auto& o, auto&, auto& f) { return o.adamw.lr == f.lr; }},
        {"--seed", [](auto& o, auto&, auto& f) { return o.seed == f.seed; }},
        {"--noise", [](auto& o, auto&, auto& f) { return o.noise == f.noise; }},
        {"--clip-search", [](auto& o, auto&, auto& f) { return o.clip_search == f.clip_search; }},
        {"--clip-every", [](auto& o, auto&, auto& f) { return o.clip_every == f.clip_every; }},
        {"--warmup", [](auto& o, auto&, auto& f) { return o.warmup == f.warmup; }},
        {"--cosine", [](auto& o, auto&,
                        auto& f) { return (o.lr_shape == train::LrShape::cosine) == f.cosine; }},
        {"--weight-decay",
         [](auto& o, auto&, auto& f) { return o.adamw.weight_decay == f.weight_decay; }},
        {"--grad-clip", [](auto& o, auto&, auto& f) { return o.grad_clip == f.grad_clip; }},
        {"--ema", [](auto& o, auto&, auto& f) { return o.ema == f.ema; }},
        {"--accumulate",
         [ranks](auto& o, auto&, auto& f) { return o.accumulate == f.accumulate * ranks; }},
        {"--dropout", [](auto& o, auto&, auto& f) { return o.dropout == f.dropout; }},
        {"--val-fraction",
         [](auto& o, auto&, auto& f) { return o.val_fraction == f.val_fraction; }},
        {"--resample", [](auto& o, auto&, auto& f) { return o.resample == f.resample; }},
        {"--recipe",
         [](auto& o, auto&, auto& f) {
           return o.warmup_from_zero == (f.recipe == "official") &&
                  o.resample_count_bos == (f.recipe == "official");
         }},
    };
    for (const auto& fx : fixed)
      if (given(fx.flag) && !fx.same(opts, config, f))
        fail_usage(std::string("--resume: ") + fx.flag + " differs from the checkpoint's value (" +
                   ck->dir.string() + "/trainer_state.json" +
                   (ranks > 1 ? fmt::format(", with {} ranks", ranks) : std::string()) + ")");
    if (opts.accumulate % ranks != 0)
      fail_usage(fmt::format(
          "--resume: the checkpoint's step holds {} micro-batches of {} sequences, which do "
          "not split over {} ranks",
          opts.accumulate, opts.batch, ranks));
    const auto& extra = ck->state.extra;
    const bool same_tokenizer =
        (!given("--tokenizer") || extra.value("tokenizer", std::string()) == f.tokenizer) &&
        (!given("--tokenizer-vocab") ||
         extra.value("tokenizer_vocab", int64_t(0)) == f.tokenizer_vocab);
    if (!same_tokenizer)
      fail_usage("--resume: --tokenizer differs from the checkpoint's (it keeps its tokenizer)");
    if ((given("--eps-min") && f.eps_min != opts.interval.eps_min) ||
        (given("--eps-max") && f.eps_max != opts.interval.eps_max))
      fail_usage("--resume: --eps-min/--eps-max differ from the checkpoint's initial interval");
    opts.steps = f.steps;
    if (!given("--steps")) opts.steps = std::max(ck->state.options.steps, ck->state.step);
    progress.set_total(opts.steps);
    return plan;
  }
  if (data.empty()) fail_usage("--data is required");
  bd3::cli::check_data_files(data);
  if (f.block_size < 1) fail_usage("--block-size must be >= 1");
  if (f.length < 2) fail_usage("--length must be >= 2");
  if (f.length % f.block_size != 0)
    fail_usage(fmt::format("--block-size {} does not divide --length {}", f.block_size, f.length));
  if (f.layers < 1 || f.hidden < 2 || f.heads < 1 || f.cond < 1)
    fail_usage("--layers, --hidden, --heads, --cond must be positive");
  if (f.hidden % f.heads != 0 || (f.hidden / f.heads) % 2 != 0)
    fail_usage(fmt::format("--hidden {} must be a multiple of --heads {} with an even head size",
                           f.hidden, f.heads));
  (void)bd3::noise_from_name(f.noise);  // usage error when unknown
  // The model's shape: the flags', or with --init-from the parent's (a flag that differs
  // from it is refused when the weights are copied).
  int layers = f.layers, hidden = f.hidden, heads = f.heads, cond = f.cond;
  if (!f.init_from.empty()) {
    plan.parent_dir = train::resolve_checkpoint_dir(f.init_from);
    plan.parent = bd3::load_checkpoint(plan.parent_dir);
    const auto& p = plan.parent->config;
    if (!given("--layers")) layers = p.n_blocks;
    if (!given("--hidden")) hidden = p.hidden_dim;
    if (!given("--heads")) heads = p.n_heads;
    if (!given("--cond")) cond = p.cond_dim;
  }
  if (!f.init_from.empty() && !given("--tokenizer") && !given("--tokenizer-vocab"))
    tokenizer = text::Tokenizer::load_from(plan.parent_dir);
  else
    tokenizer = make_tokenizer(f.tokenizer, f.tokenizer_vocab, data, f.threads, progress);
  opts.noise = f.noise;
  opts.batch = f.batch;
  opts.accumulate = f.accumulate * ranks;
  opts.steps = f.steps;
  opts.seed = f.seed;
  opts.adamw.lr = f.lr;
  opts.adamw.beta1 = f.beta1, opts.adamw.beta2 = f.beta2, opts.adamw.eps = f.adam_eps;
  opts.adamw.weight_decay = f.weight_decay;
  // A flag given wins; otherwise the recipe's value (official) or the flag's default.
  const bool official = f.recipe == "official";
  auto recipe_or = [&](const char* flag, auto value, auto official_value) {
    return official && !given(flag) ? official_value : value;
  };
  opts.warmup = f.warmup >= 0 ? f.warmup
                              : recipe_or("--warmup", std::min<int64_t>(2500, f.steps / 10),
                                          OfficialRecipe::warmup);
  opts.warmup_from_zero = official;
  opts.lr_shape = f.cosine ? train::LrShape::cosine : train::LrShape::constant;
  opts.min_lr = f.min_lr;
  opts.grad_clip = f.grad_clip;
  opts.ema = f.ema;
  opts.dropout = recipe_or("--dropout", f.dropout, OfficialRecipe::dropout);
  opts.interval = {f.eps_min, f.eps_max};
  opts.resample = recipe_or("--resample", f.resample, OfficialRecipe::resample);
  opts.resample_count_bos = official;
  opts.clip_search = recipe_or("--clip-search", f.clip_search, OfficialRecipe::clip_search);
  opts.clip_every = f.clip_every;
  opts.clip_batches = f.clip_batches;
  opts.clip.widths = f.clip_widths;
  opts.val_fraction = f.val_fraction;
  opts.validate();
  config.block_size = f.block_size;
  config.model_length = f.length;
  config.n_blocks = layers;
  config.hidden_dim = hidden;
  config.n_heads = heads;
  config.cond_dim = cond;
  config.vocab_size = tokenizer->model_vocab_size();
  config.mask_index = tokenizer->mask_id();
  config.dropout = opts.dropout;
  config.sampling_eps_min = f.eps_min, config.sampling_eps_max = f.eps_max;
  try {
    config.validate();
  } catch (const bd3::Error& e) {
    fail_usage(e.what());
  }
  return plan;
}

using CliTrainer = train::Trainer<CliModel, RuntimeNoise>;

// The run's corpus. Rank 0 writes the token cache; the other ranks read it after it (and
// never write it).
text::Corpus open_corpus(const TrainFlags& f, const RunPlan& plan, const fs::path& out,
                         train::ProcessGroup* group, Progress& progress) {
  const bool root = !group || group->rank() == 0;
  text::CorpusOptions co;
  co.model_length = plan.config.model_length;
  co.val_fraction = plan.opts.val_fraction;
  co.threads = f.threads;
  co.cache_path = out / "tokens.cache";
  co.write_cache = root;
  const auto t_data = Clock::now();
  if (!root) group->all_gather({});
  text::Corpus corpus = text::Corpus::open(*plan.tokenizer, plan.data, co);
  if (root && group) group->all_gather({});
  if (plan.ck) {
    const auto want = plan.ck->state.extra.value("corpus_fingerprint", std::string());
    if (!want.empty() && want != corpus.fingerprint())
      fail("--resume: the data differ from the data the checkpoint was trained on");
  }
  progress.message(fmt::format(
      "bd3 train: {} tokens, {} documents, {} training / {} validation sequences of {} ({:.1f}s)",
      corpus.stream().size(), corpus.documents(), corpus.size(text::Split::train),
      corpus.size(text::Split::validation), plan.config.model_length,
      std::chrono::duration<double>(Clock::now() - t_data).count()));
  return corpus;
}

// The trainer: resumed from the plan's checkpoint, or a new run from fresh weights or
// (--init-from) the parent's, with what the checkpoint records of the run in `extra`.
std::unique_ptr<CliTrainer> make_trainer(const TrainFlags& f, CLI::App* cmd, const RunPlan& plan,
                                         const text::Corpus& corpus, train::ProcessGroup* group,
                                         Progress& progress) {
  const auto& opts = plan.opts;
  if (plan.ck) {
    auto trainer = std::make_unique<CliTrainer>(CliModel(plan.ck->config), RuntimeNoise(opts.noise),
                                                *plan.ck, corpus, group);
    trainer->set_total_steps(opts.steps);
    progress.message(
        fmt::format("bd3 train: resumed {} at step {}", plan.ck->dir.string(), trainer->step()));
    return trainer;
  }
  CliModel model(plan.config);
  nlohmann::json extra;
  if (plan.parent) {
    // Fine-tuning: the parent's weights, fresh optimizer state and schedule.
    train::init_from_weights(model, plan.parent->config, plan.parent->parameters,
                             "--init-from " + plan.parent_dir.string());
    nlohmann::json provenance = {{"dir", fs::absolute(plan.parent_dir).string()},
                                 {"block_size", plan.parent->config.block_size},
                                 {"model_length", plan.parent->config.model_length}};
    const fs::path parent_state = plan.parent_dir / "trainer_state.json";
    if (fs::exists(parent_state))
      provenance["step"] =
          train::TrainerState::from_json(bd3::read_json_file(parent_state), parent_state.string())
              .step;
    extra["init_from"] = provenance;
    progress.message(fmt::format(
        "bd3 train: starting from the weights of {}{}", plan.parent_dir.string(),
        provenance.contains("step") ? fmt::format(" (step {})", provenance["step"].get<int64_t>())
                                    : std::string()));
  } else {
    train::init_model(model, opts.seed);
  }
  auto trainer =
      std::make_unique<CliTrainer>(std::move(model), RuntimeNoise(opts.noise), opts, corpus, group);
  std::vector<std::string> files;
  for (const auto& d : plan.data) files.push_back(fs::absolute(d).string());
  extra["data"] = files;
  extra["corpus_fingerprint"] = corpus.fingerprint();
  // With --init-from and no --tokenizer, the parent's.
  extra["tokenizer"] = plan.parent && cmd->get_option("--tokenizer")->count() == 0
                           ? plan.parent_dir.string()
                           : f.tokenizer;
  extra["tokenizer_vocab"] = f.tokenizer_vocab;
  extra["tokenizer_kind"] = std::string(plan.tokenizer->kind_name());
  extra["threads"] = f.threads;
  trainer->state().extra = extra;
  return trainer;
}

// metrics.jsonl, one JSON object per line, flushed line by line (rank 0 only: the other
// ranks hold a closed log that writes nothing). On a resume, the lines after the
// checkpoint's step go (trim_metrics); a new run starts an empty file.
class MetricsLog {
 public:
  MetricsLog(const fs::path& path, bool open, std::optional<int64_t> resumed_step) : path_(path) {
    if (!open) return;
    if (resumed_step)
      trim_metrics(path_, *resumed_step);
    else
      bd3::io::write_file_atomic(path_, "");
    file_ = std::fopen(path_.c_str(), "a");
    if (!file_) bd3::fail_io("cannot open " + path_.string());
  }
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  ~MetricsLog() {
    if (file_) std::fclose(file_);
  }
  void write(const nlohmann::json& j) {
    if (!file_) return;
    const std::string line = j.dump() + "\n";
    if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0)
      bd3::fail_io("cannot write " + path_.string());
  }

 private:
  fs::path path_;
  std::FILE* file_ = nullptr;
};

// The metrics line of a clip search and its stderr message.
void report_clip_search(const bd3::ClipSearchResult& clip, int64_t step, MetricsLog& metrics,
                        Progress& progress) {
  nlohmann::json cands = nlohmann::json::array();
  for (size_t i = 0; i < clip.candidates.size(); ++i)
    cands.push_back({{"eps_min", clip.candidates[i].eps_min},
                     {"eps_max", clip.candidates[i].eps_max},
                     {"variance", clip.variance[i]},
                     {"nelbo", clip.nelbo[i]}});
  const auto best = clip.best_interval();
  metrics.write({{"step", step},
                 {"event", "clip_search"},
                 {"best", {best.eps_min, best.eps_max}},
                 {"candidates", cands}});
  progress.message(
      fmt::format("bd3 train: step {}: clip search chose [{}, {}] (variance {:.4g}; full [1e-3, "
                  "1]: {:.4g})",
                  step, best.eps_min, best.eps_max, clip.variance[clip.best], clip.variance[0]));
}

// The metrics line of a validation and its stderr message.
void report_validation(const bd3::EvalResult& v, int64_t step, MetricsLog& metrics,
                       Progress& progress) {
  metrics.write({{"step", step},
                 {"event", "eval"},
                 {"val_nelbo", v.nelbo},
                 {"val_ppl", v.ppl()},
                 {"val_standard_error", v.standard_error},
                 {"val_sequences", v.sequences}});
  progress.message(
      fmt::format("bd3 train: step {}: validation NELBO {:.4f} (ppl {:.1f}, {} sequences)", step,
                  v.nelbo, v.ppl(), v.sequences));
}

int run_train(const TrainFlags& f, CLI::App* cmd) {
  bd3::cli::set_threads(f.threads);
  if (f.out.empty()) fail_usage("--out is required");
  if (f.log_every < 1) fail_usage("--log-every must be >= 1");
  if (f.eval_every < 0) fail_usage("--eval-every must be >= 0");
  if (f.eval_sequences < 0) fail_usage("--eval-sequences must be >= 0");
  if (f.checkpoint_every < 0) fail_usage("--checkpoint-every must be >= 0");
  if (!(f.max_seconds >= 0)) fail_usage("--max-seconds must be >= 0");
  bd3::cli::check_count("--accumulate", f.accumulate, 1);
  bd3::cli::check_count("--clip-batches", f.clip_batches, 1);
  if (f.tokenizer_vocab < 0) fail_usage("--tokenizer-vocab must be >= 257");
  if (cmd->get_option("--warmup")->count() > 0 && f.warmup < 0) fail_usage("--warmup must be >= 0");
  const fs::path out = f.out;
  const bool has_pointer = fs::exists(out / train::kPointerFile);
  if (!f.resume && has_pointer)
    fail_usage(out.string() +
               " already holds a training checkpoint: add --resume, or choose another --out");
  if (f.resume && !has_pointer)
    fail_usage("--resume: " + out.string() + " holds no checkpoint (checkpoint.json)");
  // Under mpirun, rank 0 owns --out (lock, checkpoints, metrics) and speaks; the other
  // ranks compute and stay silent unless they fail.
  train::ProcessGroup* group = bd3::cli::launch_group(!f.no_overlap);
  const int ranks = group ? group->size() : 1;
  const bool root = !group || group->rank() == 0;
  std::optional<train::DirectoryLock> lock;
  if (root) lock.emplace(out);
  Progress progress("bd3 train", f.steps, f.quiet || !root);
  const RunPlan plan = plan_run(f, cmd, ranks, progress);
  const auto& opts = plan.opts;
  const auto& config = plan.config;
  // Before any model buffer is allocated: a shape or batch that cannot fit is a usage error.
  bd3::cli::check_memory(
      bd3::cli::training_bytes(config, opts.batch) +
          (opts.clip_search ? 4.0 * opts.clip_batches * opts.batch * config.model_length : 0.0),
      fmt::format("training {} layers x hidden {} x --length {} at --batch {}", config.n_blocks,
                  config.hidden_dim, config.model_length, opts.batch));
  const text::Corpus corpus = open_corpus(f, plan, out, group, progress);
  const std::unique_ptr<CliTrainer> trainer = make_trainer(f, cmd, plan, corpus, group, progress);
  const auto& cfg = trainer->model().config();
  progress.message(fmt::format(
      "bd3 train: model {} parameters (L {}, block {}, {} layers, hidden {}, {} heads, vocab {}), "
      "batch {} x {}{}, lr {} ({}, warmup {}), noise {}, interval [{}, {}]",
      trainer->model().parameters().size(), cfg.model_length, cfg.block_size, cfg.n_blocks,
      cfg.hidden_dim, cfg.n_heads, cfg.vocab_size, opts.batch, opts.accumulate,
      ranks > 1 ? fmt::format(" over {} ranks", ranks) : std::string(), opts.adamw.lr,
      opts.lr_schedule().shape_name(), opts.warmup, opts.noise, trainer->interval().eps_min,
      trainer->interval().eps_max));
  MetricsLog metrics(out / "metrics.jsonl", root,
                     plan.ck ? std::optional<int64_t>(trainer->step()) : std::nullopt);

  g_stop_signal = 0;
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  const auto session_start = Clock::now();
  const int64_t first_step = trainer->step();
  int64_t window_tokens = 0;
  double window_seconds = 0, loss_window = 0;
  int window_steps = 0;
  std::string stop_reason = "steps";
  auto save = [&]() { return root ? trainer->save(out, &*plan.tokenizer) : fs::path(); };
  while (!trainer->done()) {
    train::StepResult r;
    try {
      r = trainer->train_step();
    } catch (const bd3::Error& e) {
      if (e.kind() != bd3::ErrorKind::numerical) throw;
      // Nothing from the diverged step was saved: say which checkpoint is there.
      const auto p = train::read_pointer(out);
      throw bd3::Error(e.kind(),
                       std::string(e.what()) + "; nothing was saved from it" +
                           (p ? fmt::format(", the last checkpoint ({}/{}, step {}) is intact",
                                            out.string(), p->current, p->step)
                              : std::string(", and there is no checkpoint yet")));
    }
    if (r.clip) report_clip_search(*r.clip, r.step, metrics, progress);
    window_tokens += r.tokens, window_seconds += r.seconds, loss_window += r.loss, ++window_steps;
    const int64_t done = trainer->step();
    const double session = std::chrono::duration<double>(Clock::now() - session_start).count();
    const double tps = window_seconds > 0 ? double(window_tokens) / window_seconds : 0.0;
    if (done % f.log_every == 0 || trainer->done()) {
      nlohmann::json line = {{"step", done},
                             {"loss", r.loss},
                             {"loss_avg", loss_window / window_steps},
                             {"lr", r.lr},
                             {"grad_norm", r.grad_norm},
                             {"tokens_per_s", tps},
                             {"seconds", trainer->state().elapsed_seconds},
                             {"eps_min", trainer->interval().eps_min},
                             {"eps_max", trainer->interval().eps_max}};
      if (group) line["reduce_wait_s"] = r.reduce_wait_seconds;
      metrics.write(line);
    }
    const double per_step = session / double(std::max<int64_t>(1, done - first_step));
    progress.update(done, fmt::format("loss {:.4f} lr {:.2e} {:.0f} tok/s", r.loss, r.lr, tps),
                    per_step * double(trainer->options().steps - done));
    if (done % f.log_every == 0)
      window_tokens = 0, window_seconds = 0, loss_window = 0, window_steps = 0;
    if (f.eval_every > 0 && done % f.eval_every == 0)
      report_validation(trainer->validate(f.eval_sequences), done, metrics, progress);
    if (f.checkpoint_every > 0 && done % f.checkpoint_every == 0 && !trainer->done()) save();
    if (f.max_seconds > 0 && session >= f.max_seconds) stop_reason = "max_seconds";
    if (g_stop_signal) stop_reason = g_stop_signal == SIGINT ? "interrupted" : "terminated";
    // Every rank stops after the same step: the first reason any rank has.
    if (group)
      for (const auto& why : group->all_gather(stop_reason == "steps" ? "" : stop_reason))
        if (!why.empty() && stop_reason == "steps") stop_reason = why;
    if (stop_reason != "steps") break;
  }
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  progress.finish();
  const auto dir = save();
  const double session = std::chrono::duration<double>(Clock::now() - session_start).count();
  const int64_t session_tokens =
      trainer->state().tokens_seen - (plan.ck ? plan.ck->state.tokens_seen : 0);
  nlohmann::json summary = {{"step", trainer->step()},
                            {"stopped", stop_reason},
                            {"checkpoint", dir.string()},
                            {"eps_min", trainer->interval().eps_min},
                            {"eps_max", trainer->interval().eps_max},
                            {"tokens", session_tokens},
                            {"tokens_per_s", session > 0 ? double(session_tokens) / session : 0.0},
                            {"seconds", session}};
  if (root) fmt::print("{}\n", summary.dump());
  std::fflush(stdout);
  return 0;
}

struct EvalFlags {
  std::string model;
  std::vector<std::string> data;
  uint64_t seed = 0;
  int samples = 1;
  int batch = 8;
  std::string split = "validation";
  int threads = 0;
  double eps_min = 1e-3, eps_max = 1.0;
  double val_fraction = -1;
  std::string noise;
  std::string tokenizer;
  int64_t max_sequences = 0;
  bool quiet = false;
};

int run_eval(const EvalFlags& f) {
  bd3::cli::set_threads(f.threads);
  bd3::cli::check_count("--samples", f.samples, 1);
  if (f.batch < 1) fail_usage("--batch must be >= 1");
  if (f.max_sequences < 0) fail_usage("--max-sequences must be >= 0");
  if (!(f.val_fraction == -1 || (f.val_fraction >= 0 && f.val_fraction < 1)))
    fail_usage("--val-fraction must be in [0, 1)");
  if (f.split != "validation" && f.split != "train" && f.split != "all")
    fail_usage("--split must be validation, train or all");
  bd3::EstimatorOptions eo;
  eo.eps_min = f.eps_min, eo.eps_max = f.eps_max;
  eo.shuffle_strata = true;  // unbiased for the fixed order of the evaluated sequences
  if (!((eo.eps_min > 0 && eo.eps_min <= eo.eps_max && eo.eps_max <= 1.0)))
    fail_usage("need 0 < --eps-min <= --eps-max <= 1");
  const fs::path dir = train::resolve_checkpoint_dir(f.model);
  // What training recorded: the noise schedule and the validation split.
  std::string noise = "loglinear";
  double val_fraction = 0.05;
  if (fs::exists(dir / "trainer_state.json")) {
    auto st = train::TrainerState::from_json(bd3::read_json_file(dir / "trainer_state.json"),
                                             (dir / "trainer_state.json").string());
    noise = st.options.noise;
    val_fraction = st.options.val_fraction;
  }
  if (!f.noise.empty()) noise = f.noise;
  if (f.val_fraction >= 0) val_fraction = f.val_fraction;
  const text::Tokenizer tokenizer = [&] {
    if (f.tokenizer.empty()) return text::Tokenizer::load_from(dir);
    if (f.tokenizer == "bytes") return text::Tokenizer::bytes();
    return text::Tokenizer::load_from(bd3::cli::tokenizer_dir(
        f.tokenizer.starts_with("gpt2:") ? f.tokenizer.substr(5) : f.tokenizer));
  }();
  auto ck = bd3::load_checkpoint(dir);
  if (tokenizer.model_vocab_size() != ck.config.vocab_size)
    fail(fmt::format("the tokenizer has {} ids with MASK but the model's vocabulary is {}",
                     tokenizer.model_vocab_size(), ck.config.vocab_size));
  CliModel model(ck.config);
  std::copy(ck.parameters.begin(), ck.parameters.end(), model.parameters().begin());
  model.parameters_changed();
  bd3::check_estimator_options(eo, ck.config.model_length, ck.config.block_size);

  if (f.data.empty()) fail_usage("--data is required");
  std::vector<fs::path> data(f.data.begin(), f.data.end());
  bd3::cli::check_data_files(data);
  text::CorpusOptions co;
  co.model_length = ck.config.model_length;
  co.val_fraction = f.split == "all" ? 0.0 : val_fraction;
  co.threads = f.threads;
  const text::Corpus corpus = text::Corpus::open(tokenizer, data, co);
  // Under mpirun the ranks share the batches and all get rank 0's result; rank 0 prints.
  train::ProcessGroup* group = bd3::cli::launch_group();
  const bool root = !group || group->rank() == 0;
  std::vector<int64_t> sequences;  // global indices
  if (f.split == "all") {
    for (int64_t g = 0; g < corpus.num_sequences(); ++g) sequences.push_back(g);
  } else {
    const auto s = f.split == "train" ? text::Split::train : text::Split::validation;
    for (int64_t i = 0; i < corpus.size(s); ++i) sequences.push_back(corpus.global_index(s, i));
  }
  if (f.max_sequences > 0 && int64_t(sequences.size()) > f.max_sequences)
    sequences.resize(size_t(f.max_sequences));
  if (sequences.empty())
    fail("the " + f.split + " split of the data holds no sequence of " +
         std::to_string(ck.config.model_length) + " tokens");
  bd3::cli::check_memory(
      bd3::cli::training_bytes(ck.config, std::min<int64_t>(f.batch, int64_t(sequences.size()))) +
          8.0 * double(sequences.size()) * f.samples,
      fmt::format("eval of {} sequences x --samples {} at --batch {}", sequences.size(), f.samples,
                  f.batch));
  bd3::EvalOptions eval;
  eval.batch = f.batch, eval.samples = f.samples, eval.seed = f.seed, eval.estimator = eo;
  const int64_t batches = (int64_t(sequences.size()) + f.batch - 1) / f.batch;
  Progress progress("bd3 eval", batches * f.samples, f.quiet || !root);
  const auto start = Clock::now();
  eval.on_batch = [&](int64_t done, int64_t total, double running) {
    progress.set_total(total);  // this rank's batches
    const double el = std::chrono::duration<double>(Clock::now() - start).count();
    progress.update(done, fmt::format("nelbo {:.4f}", running),
                    el / double(done) * double(total - done));
  };
  bd3::EvalResult r;
  try {
    r = bd3::evaluate_nelbo(model, RuntimeNoise(noise), corpus, sequences, eval, group);
  } catch (const bd3::Error& e) {
    if (e.kind() != bd3::ErrorKind::numerical) throw;
    throw bd3::Error(
        bd3::ErrorKind::numerical,
        fmt::format("eval: {} (bd3 inspect --model {} checks the weights)",
                    std::string(e.what()).substr(sizeof("evaluate_nelbo: ") - 1), f.model));
  }
  progress.finish();
  const double nelbo = r.nelbo;
  nlohmann::json j = {
      {"nelbo", nelbo},
      {"ppl", std::exp(nelbo)},
      {"bits_per_token", nelbo / std::log(2.0)},
      {"tokens", r.tokens},
      {"sequences", sequences.size()},
      {"samples", f.samples},
      {"nelbo_variance", r.variance},
      {"mask_variance", f.samples >= 2 ? nlohmann::json(r.mask_variance) : nlohmann::json(nullptr)},
      {"standard_error", r.standard_error},
      {"split", f.split},
      {"eps_min", eo.eps_min},
      {"eps_max", eo.eps_max},
      {"noise", noise},
      {"model", dir.string()},
      {"seconds", std::chrono::duration<double>(Clock::now() - start).count()}};
  if (group) j["ranks"] = group->size();
  if (root) fmt::print("{}\n", j.dump());
  std::fflush(stdout);
  return 0;
}

bd3::cli::Registrar train_command([](CLI::App& app) -> bd3::cli::Runner {
  auto f = std::make_shared<TrainFlags>();
  auto* cmd = app.add_subcommand(
      "train", "Train a BD3-LM on text (progress on stderr, checkpoints in --out)");
  cmd->add_option("--data", f->data, "training text file (repeatable)");
  cmd->add_option("--tokenizer", f->tokenizer,
                  "bytes | gpt2:DIR | DIR (a training --out: its checkpoint's) | bpe:N (train a "
                  "BPE of N tokens on the data)")
      ->capture_default_str();
  cmd->add_option("--tokenizer-vocab", f->tokenizer_vocab,
                  "vocabulary size of the BPE to train (with --tokenizer bpe)");
  cmd->add_option("--block-size", f->block_size, "block size B' (divides --length)")
      ->capture_default_str();
  cmd->add_option("--length", f->length, "sequence length L (BOS included)")->capture_default_str();
  cmd->add_option("--layers", f->layers, "transformer layers")->capture_default_str();
  cmd->add_option("--hidden", f->hidden, "hidden size D")->capture_default_str();
  cmd->add_option("--heads", f->heads, "attention heads")->capture_default_str();
  cmd->add_option("--cond", f->cond, "adaLN conditioning size")->capture_default_str();
  cmd->add_option("--batch", f->batch, "sequences per micro-batch")->capture_default_str();
  cmd->add_option("--steps", f->steps, "total optimizer steps")->capture_default_str();
  cmd->add_option("--lr", f->lr, "peak learning rate")->capture_default_str();
  cmd->add_option("-s,--seed", f->seed, "seed of every random choice")->capture_default_str();
  cmd->add_option("-t,--threads", f->threads, "threads (0: all cores)")->capture_default_str();
  cmd->add_option("-o,--out", f->out, "output directory (checkpoints, metrics.jsonl)")->required();
  cmd->add_option("--checkpoint-every", f->checkpoint_every,
                  "steps between checkpoints (0: only at the end)")
      ->capture_default_str();
  cmd->add_flag("--resume", f->resume, "continue from --out's checkpoint up to --steps");
  cmd->add_option("--init-from", f->init_from,
                  "start from this model's weights (a checkpoint or training --out; fine-tuning: "
                  "block size, length and interval are this run's, optimizer state is fresh)");
  cmd->add_option("--max-seconds", f->max_seconds,
                  "stop (with a checkpoint) after this many seconds");
  cmd->add_option("--noise", f->noise, "loglinear | cosine | square | square_root | log")
      ->capture_default_str();
  cmd->add_option("--recipe", f->recipe,
                  "bd3 | official: the official scripts' settings (resample with the first "
                  "block counted over B' positions, clip search, dropout 0.1, warmup 2500 from "
                  "lr 0); a flag given overrides its part")
      ->check(CLI::IsMember({"bd3", "official"}))
      ->capture_default_str();
  cmd->add_flag("--clip-search,!--no-clip-search", f->clip_search,
                "data-driven clipped schedule: search the interval every --clip-every steps");
  cmd->add_option("--clip-every", f->clip_every, "steps between clip searches")
      ->capture_default_str();
  cmd->add_option("--clip-batches", f->clip_batches, "validation batches per clip search")
      ->capture_default_str();
  cmd->add_option("--clip-widths", f->clip_widths, "candidate interval widths")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--warmup", f->warmup, "linear warmup steps (default: min(2500, steps/10))");
  cmd->add_flag("--cosine", f->cosine, "cosine decay after the warmup (default: constant)");
  cmd->add_option("--min-lr", f->min_lr, "floor of the cosine decay")->capture_default_str();
  cmd->add_option("--weight-decay", f->weight_decay, "AdamW decoupled weight decay")
      ->capture_default_str();
  cmd->add_option("--beta1", f->beta1, "AdamW beta1")->capture_default_str();
  cmd->add_option("--beta2", f->beta2, "AdamW beta2")->capture_default_str();
  cmd->add_option("--adam-eps", f->adam_eps, "AdamW eps")->capture_default_str();
  cmd->add_option("--grad-clip", f->grad_clip, "gradient-norm clipping (0: off)")
      ->capture_default_str();
  cmd->add_option("--ema", f->ema, "EMA decay of the weights (0: off)")->capture_default_str();
  cmd->add_option("--accumulate", f->accumulate, "micro-batches per optimizer step")
      ->capture_default_str();
  cmd->add_option("--dropout", f->dropout, "dropout of the attention and MLP branches")
      ->capture_default_str();
  cmd->add_option("--val-fraction", f->val_fraction, "fraction of the sequences held out")
      ->capture_default_str();
  cmd->add_option("--eps-min", f->eps_min, "lower end of the noise interval")
      ->capture_default_str();
  cmd->add_option("--eps-max", f->eps_max, "upper end of the noise interval")
      ->capture_default_str();
  cmd->add_flag("--resample,!--no-resample", f->resample,
                "redraw masks whose masked fraction is outside the interval (bounded)");
  cmd->add_option("--log-every", f->log_every, "steps between metrics.jsonl lines")
      ->capture_default_str();
  cmd->add_flag("--quiet", f->quiet, "no progress on stderr");
  cmd->add_option("--eval-every", f->eval_every,
                  "steps between validation NELBOs (metrics.jsonl, stderr; 0: none)")
      ->capture_default_str();
  cmd->add_option("--eval-sequences", f->eval_sequences,
                  "held-out sequences per validation (0: all)")
      ->capture_default_str();
  cmd->add_flag("--no-overlap", f->no_overlap,
                "under mpirun: sum the gradients after the backward instead of during it");
  return [f, cmd] { return run_train(*f, cmd); };
});

bd3::cli::Registrar eval_command([](CLI::App& app) -> bd3::cli::Runner {
  auto f = std::make_shared<EvalFlags>();
  auto* cmd =
      app.add_subcommand("eval", "NELBO / perplexity bound of a model on text (one JSON line)");
  cmd->add_option("-m,--model", f->model,
                  "model directory (a checkpoint, or a training --out directory)")
      ->required();
  cmd->add_option("--data", f->data, "text file (repeatable)")->required();
  cmd->add_option("-s,--seed", f->seed, "seed of the masks")->capture_default_str();
  cmd->add_option("--samples", f->samples, "mask draws averaged over")->capture_default_str();
  cmd->add_option("--batch", f->batch, "sequences per forward")->capture_default_str();
  cmd->add_option("--split", f->split, "validation | train | all")->capture_default_str();
  cmd->add_option("-t,--threads", f->threads, "threads (0: all cores)")->capture_default_str();
  cmd->add_option("--eps-min", f->eps_min,
                  "noise interval (1e-3, 1: the NELBO; with block size 1, 1 1: the exact NLL)")
      ->capture_default_str();
  cmd->add_option("--eps-max", f->eps_max, "noise interval upper end")->capture_default_str();
  cmd->add_option("--val-fraction", f->val_fraction,
                  "held-out fraction (default: the training run's, else 0.05)");
  cmd->add_option("--noise", f->noise,
                  "noise schedule (default: the training run's, else loglinear)");
  cmd->add_option("--tokenizer", f->tokenizer,
                  "tokenizer (default: the model directory's): bytes | gpt2:DIR | DIR (a training "
                  "--out: its checkpoint's)");
  cmd->add_option("--max-sequences", f->max_sequences,
                  "evaluate at most this many sequences (0: all)");
  cmd->add_flag("--quiet", f->quiet, "no progress on stderr");
  return [f] { return run_eval(*f); };
});

}  // namespace
