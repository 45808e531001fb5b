#pragma once
// Training checkpoints: what a run needs to continue bit-identically, and how it is
// written so that a SIGKILL at any moment leaves the previous checkpoint loadable.
//
// Layout of a training output directory OUT:
//   OUT/checkpoint.json          the pointer: {"format": "bd3-checkpoint-pointer",
//                                "version": 1, "current": "ckpt-00001234", "step": 1234}
//   OUT/latest -> ckpt-00001234  a symlink to the same directory (convenience: any tool
//                                that reads a Hugging Face directory can use OUT/latest)
//   OUT/ckpt-00001234/           one complete checkpoint:
//       config.json              BD3LMConfig (sampling_eps_min/max = the training interval)
//       model.safetensors        the EMA weights (the raw weights without EMA), official names
//       tokenizer.json | vocab.json + merges.txt   the tokenizer (Tokenizer::save_to)
//       trainer_state.safetensors  raw weights ("weights/<name>"), AdamW moments
//                                ("exp_avg/<name>", "exp_avg_sq/<name>"), F32
//       trainer_state.json       step, data position, RNG, schedule interval, learning-rate
//                                schedule and every hyper-parameter needed to resume
//
// Writing a checkpoint of step s (save_checkpoint_dir):
//   1. files go into OUT/ckpt-s.partial/ (created fresh), each written with
//      io::write_file_atomic (temporary file, fsync, rename, fsync of the directory);
//   2. OUT/ckpt-s.partial is renamed to OUT/ckpt-s and OUT is fsynced;
//   3. OUT/checkpoint.json is replaced atomically (temporary, fsync, rename, fsync OUT):
//      this rename is the commit point;
//   4. OUT/latest is replaced atomically (new symlink, rename over the old one);
//   5. every other ckpt-* entry (older checkpoints, partial directories left by a
//      crash) and stray temporary files are removed.
// Until step 3 the pointer names the previous, complete directory, which is never
// touched before step 5; after step 3 it names the new one, complete and durable. So a
// SIGKILL at any moment leaves a pointer to a complete, consistent checkpoint. Loading
// goes through the pointer only (resolve_checkpoint_dir). One writer per directory: a
// run holds an exclusive lock on OUT/.lock (DirectoryLock).
#include <bd3/diffusion/clip_search.hpp>
#include <bd3/error.hpp>
#include <bd3/io/atomic_file.hpp>
#include <bd3/io/safetensors.hpp>
#include <bd3/model/checkpoint.hpp>
#include <bd3/model/config.hpp>
#include <bd3/model/parameters.hpp>
#include <bd3/text/tokenizer.hpp>
#include <bd3/train/optimizer.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace bd3::train {

namespace fs = std::filesystem;

namespace detail {

// object[key] as an Int. nlohmann's get<Int>() would truncate a fraction (undefined
// behaviour when it is out of range) and wrap a value that does not fit. A missing key or a
// non-object throws nlohmann's exception, as at() does.
template <class Int>
Int json_integer(const nlohmann::json& object, const char* key, const std::string& where) {
  const auto& v = object.at(key);
  if (v.is_number_unsigned() && std::in_range<Int>(v.get<uint64_t>()))
    return Int(v.get<uint64_t>());
  if (v.is_number_integer() && !v.is_number_unsigned() && std::in_range<Int>(v.get<int64_t>()))
    return Int(v.get<int64_t>());
  fail(where + ": \"" + key + "\" must be an integer in [" +
       std::to_string(std::numeric_limits<Int>::min()) + ", " +
       std::to_string(std::numeric_limits<Int>::max()) + "]");
}

}  // namespace detail

// Every hyper-parameter of a run (the model's shape is in ModelConfig).
struct TrainOptions {
  // The noise schedule's name. The trainer records its own (its Noise type's name()), so a
  // checkpoint names the schedule that trained it; another name here than the default or
  // the trainer's is refused.
  std::string noise = "loglinear";
  int batch = 8;
  int accumulate = 1;    // micro-batches per optimizer step
  int64_t steps = 1000;  // total optimizer steps
  uint64_t seed = 0;
  AdamWOptions adamw;
  int64_t warmup = 0;
  bool warmup_from_zero = false;  // LrSchedule::warmup_from_zero (the official count)
  LrShape lr_shape = LrShape::constant;
  double min_lr = 0.0;
  double grad_clip = 1.0;  // <= 0: off
  double ema = 0.9999;     // 0: off
  double dropout = 0.0;
  ClipInterval interval{1e-3, 1.0};  // initial training interval [beta, omega]
  bool resample = false;             // bounded mask resampling into the interval
  int max_resample_tries = 100;
  bool resample_count_bos = false;  // EstimatorOptions::count_bos (the official count)
  bool clip_search = false;
  int64_t clip_every = 500;  // optimizer steps between searches
  int clip_batches = 4;      // validation batches per search
  ClipSearchOptions clip;
  double val_fraction = 0.05;

  LrSchedule lr_schedule() const {
    return LrSchedule{adamw.lr, warmup, lr_shape, steps, min_lr, warmup_from_zero};
  }

  void validate() const {
    if (batch < 1) fail_usage("--batch must be >= 1");
    if (accumulate < 1) fail_usage("--accumulate must be >= 1");
    if (steps < 0) fail_usage("--steps must be >= 0");
    adamw.validate();
    if (warmup < 0) fail_usage("--warmup must be >= 0");
    if (!(min_lr >= 0.0)) fail_usage("--min-lr must be >= 0");
    if (!(ema >= 0.0 && ema < 1.0)) fail_usage("--ema must be in [0, 1)");
    if (!(dropout >= 0.0 && dropout < 1.0)) fail_usage("--dropout must be in [0, 1)");
    if (!(interval.eps_min > 0.0 && interval.eps_min <= interval.eps_max &&
          interval.eps_max <= 1.0))
      fail_usage("need 0 < --eps-min <= --eps-max <= 1");
    if (max_resample_tries < 1) fail_usage("max resample tries must be >= 1");
    if (clip_search && clip_every < 1) fail_usage("--clip-every must be >= 1");
    if (clip_search && clip_batches < 1) fail_usage("--clip-batches must be >= 1");
    if (clip_search)
      (void)clip_candidates(clip, 2);  // checks --clip-widths now, not at the first search
    if (std::isnan(grad_clip)) fail_usage("--grad-clip must be a number (<= 0: off)");
    if (!(val_fraction >= 0.0 && val_fraction < 1.0))
      fail_usage("--val-fraction must be in [0, 1)");
  }

  nlohmann::json to_json() const {
    return {{"noise", noise},
            {"batch", batch},
            {"accumulate", accumulate},
            {"steps", steps},
            {"seed", seed},
            {"lr", adamw.lr},
            {"beta1", adamw.beta1},
            {"beta2", adamw.beta2},
            {"adam_eps", adamw.eps},
            {"weight_decay", adamw.weight_decay},
            {"warmup", warmup},
            {"warmup_from_zero", warmup_from_zero},
            {"lr_schedule", lr_shape == LrShape::constant ? "constant" : "cosine"},
            {"min_lr", min_lr},
            {"grad_clip", grad_clip},
            {"ema", ema},
            {"dropout", dropout},
            {"eps_min", interval.eps_min},
            {"eps_max", interval.eps_max},
            {"resample", resample},
            {"max_resample_tries", max_resample_tries},
            {"resample_count_bos", resample_count_bos},
            {"clip_search", clip_search},
            {"clip_every", clip_every},
            {"clip_batches", clip_batches},
            {"clip_widths", clip.widths},
            {"clip_delta", clip.delta},
            {"val_fraction", val_fraction}};
  }

  static TrainOptions from_json(const nlohmann::json& j) {
    static const std::string kWhere = "trainer_state.json: bad hyper-parameters";
    TrainOptions o;
    try {
      o.noise = j.at("noise").get<std::string>();
      o.batch = detail::json_integer<int>(j, "batch", kWhere);
      o.accumulate = detail::json_integer<int>(j, "accumulate", kWhere);
      o.steps = detail::json_integer<int64_t>(j, "steps", kWhere);
      o.seed = detail::json_integer<uint64_t>(j, "seed", kWhere);
      o.adamw.lr = j.at("lr").get<double>();
      o.adamw.beta1 = j.at("beta1").get<double>();
      o.adamw.beta2 = j.at("beta2").get<double>();
      o.adamw.eps = j.at("adam_eps").get<double>();
      o.adamw.weight_decay = j.at("weight_decay").get<double>();
      o.warmup = detail::json_integer<int64_t>(j, "warmup", kWhere);
      // Absent from checkpoints written before these options existed: off.
      o.warmup_from_zero = j.value("warmup_from_zero", false);
      o.resample_count_bos = j.value("resample_count_bos", false);
      const auto shape = j.at("lr_schedule").get<std::string>();
      if (shape != "constant" && shape != "cosine") fail("unknown lr_schedule '" + shape + "'");
      o.lr_shape = shape == "constant" ? LrShape::constant : LrShape::cosine;
      o.min_lr = j.at("min_lr").get<double>();
      o.grad_clip = j.at("grad_clip").get<double>();
      o.ema = j.at("ema").get<double>();
      o.dropout = j.at("dropout").get<double>();
      o.interval.eps_min = j.at("eps_min").get<double>();
      o.interval.eps_max = j.at("eps_max").get<double>();
      o.resample = j.at("resample").get<bool>();
      o.max_resample_tries = detail::json_integer<int>(j, "max_resample_tries", kWhere);
      o.clip_search = j.at("clip_search").get<bool>();
      o.clip_every = detail::json_integer<int64_t>(j, "clip_every", kWhere);
      o.clip_batches = detail::json_integer<int>(j, "clip_batches", kWhere);
      o.clip.widths = j.at("clip_widths").get<std::vector<double>>();
      o.clip.delta = j.at("clip_delta").get<double>();
      o.clip.resample = o.resample;
      o.clip.max_resample_tries = o.max_resample_tries;
      o.clip.count_bos = o.resample_count_bos;
      o.val_fraction = j.at("val_fraction").get<double>();
    } catch (const nlohmann::json::exception& e) {
      fail(std::string("trainer_state.json: bad hyper-parameters: ") + e.what());
    }
    // As the command line's: out-of-range values (e.g. warmup < 0) would overflow the
    // learning-rate schedule's arithmetic.
    try {
      o.validate();
    } catch (const Error& e) {
      fail(kWhere + ": " + e.what());
    }
    return o;
  }
};

// The scalar state of a run at a checkpoint (the tensors travel separately).
struct TrainerState {
  int64_t step = 0;          // optimizer steps done
  int64_t samples_seen = 0;  // data position: training sequences consumed so far
  ClipInterval interval;     // the current training interval
  int64_t adam_step = 0;
  int64_t ema_updates = 0;
  int64_t tokens_seen = 0;
  double elapsed_seconds = 0;  // training time over all sessions
  TrainOptions options;
  nlohmann::json extra = nlohmann::json::object();  // free-form (data files, tokenizer spec...)

  nlohmann::json to_json() const {
    return {{"format", "bd3-trainer-state"},
            {"version", 1},
            {"step", step},
            {"samples_seen", samples_seen},
            {"interval", {interval.eps_min, interval.eps_max}},
            {"adam_step", adam_step},
            {"ema_updates", ema_updates},
            {"tokens_seen", tokens_seen},
            {"elapsed_seconds", elapsed_seconds},
            // Every random number of step s comes from CounterRng(seed, {stream, s, ...}):
            // (seed, step) is the generator's whole state.
            {"rng", {{"kind", "splitmix64-counter"}, {"seed", options.seed}, {"step", step}}},
            {"lr_schedule",
             {{"shape", options.lr_schedule().shape_name()},
              {"lr", options.adamw.lr},
              {"warmup", options.warmup},
              {"total_steps", options.steps},
              {"min_lr", options.min_lr},
              {"next_lr", options.lr_schedule().at(step)}}},
            {"options", options.to_json()},
            {"extra", extra}};
  }

  static TrainerState from_json(const nlohmann::json& j, const std::string& source) {
    TrainerState s;
    try {
      if (j.at("format") != "bd3-trainer-state") fail(source + ": not a bd3 trainer state");
      if (j.at("version") != 1)
        fail(source + ": unsupported trainer state version " + j.at("version").dump());
      s.step = detail::json_integer<int64_t>(j, "step", source);
      s.samples_seen = detail::json_integer<int64_t>(j, "samples_seen", source);
      s.interval.eps_min = j.at("interval").at(0).get<double>();
      s.interval.eps_max = j.at("interval").at(1).get<double>();
      s.adam_step = detail::json_integer<int64_t>(j, "adam_step", source);
      s.ema_updates = detail::json_integer<int64_t>(j, "ema_updates", source);
      s.tokens_seen = detail::json_integer<int64_t>(j, "tokens_seen", source);
      s.elapsed_seconds = j.at("elapsed_seconds").get<double>();
      s.options = TrainOptions::from_json(j.at("options"));
      if (j.contains("extra")) s.extra = j.at("extra");
    } catch (const nlohmann::json::exception& e) {
      fail(source + ": " + e.what());
    }
    if (s.step < 0 || s.samples_seen < 0 || s.adam_step < 0 || s.ema_updates < 0)
      fail(source + ": negative counters");
    return s;
  }
};

// ---- Crash-safe directory protocol ------------------------------------------------------

inline constexpr const char* kPointerFile = "checkpoint.json";
inline constexpr const char* kLatestLink = "latest";

inline std::string checkpoint_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "ckpt-%08lld", static_cast<long long>(step));
  return buf;
}

// An exclusive advisory lock on DIR/.lock for the life of the object (released by the
// kernel if the process dies).
class DirectoryLock {
 public:
  explicit DirectoryLock(const fs::path& dir) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) fail_io("cannot create " + dir.string() + ": " + ec.message());
    const auto path = dir / ".lock";
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) fail_io("cannot open " + path.string() + ": " + std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd_);
      fd_ = -1;
      fail_usage(dir.string() + " is in use by another bd3 train (lock " + path.string() + ")");
    }
  }
  ~DirectoryLock() {
    if (fd_ >= 0) ::close(fd_);
  }
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

 private:
  int fd_ = -1;
};

// The pointer of OUT, if any: {current directory name, step}.
struct CheckpointPointer {
  std::string current;
  int64_t step = 0;
};

// checkpoint.json (parsed); `source` names it in messages.
inline CheckpointPointer parse_checkpoint_pointer(const nlohmann::json& j,
                                                  const std::string& source) {
  CheckpointPointer p;
  try {
    if (j.at("format") != "bd3-checkpoint-pointer") fail(source + ": not a bd3 checkpoint pointer");
    p.current = j.at("current").get<std::string>();
    p.step = detail::json_integer<int64_t>(j, "step", source);
  } catch (const nlohmann::json::exception& e) {
    fail(source + ": " + e.what());
  }
  if (p.current.empty() || p.current.find('/') != std::string::npos || p.current == "." ||
      p.current == "..")
    fail(source + ": bad checkpoint name '" + p.current + "'");
  return p;
}

inline std::optional<CheckpointPointer> read_pointer(const fs::path& out_dir) {
  const auto path = out_dir / kPointerFile;
  if (!fs::exists(path)) return std::nullopt;
  return parse_checkpoint_pointer(read_json_file(path, 1 << 20), path.string());
}

// The directory holding a model: DIR itself when it has config.json, else the checkpoint
// that DIR/checkpoint.json points to.
inline fs::path resolve_checkpoint_dir(const fs::path& dir) {
  if (!fs::is_directory(dir)) fail("model directory " + dir.string() + " does not exist");
  if (auto p = read_pointer(dir)) {
    auto d = dir / p->current;
    if (!fs::is_directory(d))
      fail(dir.string() + "/checkpoint.json points to a missing directory " + p->current);
    return d;
  }
  if (fs::exists(dir / "config.json")) return dir;
  fail(dir.string() +
       " holds neither a model (config.json) nor a training checkpoint (checkpoint.json)");
}

// Writes one checkpoint of `step` into out_dir with the protocol above; `write_files`
// fills the (new, empty) directory it is given, every file through write_file_atomic.
// Returns the checkpoint's directory. Does nothing (returns the current directory) when
// the pointer already names this step.
inline fs::path commit_checkpoint(const fs::path& out_dir, int64_t step,
                                  const std::function<void(const fs::path&)>& write_files,
                                  const std::function<void()>& after_rename_hook = {}) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) fail_io("cannot create " + out_dir.string() + ": " + ec.message());
  const std::string name = checkpoint_name(step);
  const auto previous = read_pointer(out_dir);
  if (previous && previous->current == name && fs::is_directory(out_dir / name))
    return out_dir / name;
  const auto partial = out_dir / (name + ".partial");
  fs::remove_all(partial, ec);
  if (ec) fail_io("cannot remove " + partial.string() + ": " + ec.message());
  fs::create_directories(partial, ec);
  if (ec) fail_io("cannot create " + partial.string() + ": " + ec.message());
  try {
    write_files(partial);
  } catch (...) {
    fs::remove_all(partial, ec);  // best effort: give the space back (a full disk), leave no debris
    throw;
  }
  io::detail::fsync_directory(partial);
  const auto final_dir = out_dir / name;
  fs::remove_all(final_dir, ec);  // a stale directory of this step that the pointer does not name
  if (ec) fail_io("cannot remove " + final_dir.string() + ": " + ec.message());
  fs::rename(partial, final_dir, ec);
  if (ec)
    fail_io("cannot rename " + partial.string() + " to " + final_dir.string() + ": " +
            ec.message());
  io::detail::fsync_directory(out_dir);
  if (after_rename_hook) after_rename_hook();
  // Commit point.
  const nlohmann::json pointer{
      {"format", "bd3-checkpoint-pointer"}, {"version", 1}, {"current", name}, {"step", step}};
  io::write_file_atomic(out_dir / kPointerFile, pointer.dump(2) + "\n");
  // Convenience symlink, replaced atomically.
  const auto link_tmp = out_dir / (std::string(kLatestLink) + ".tmp." + std::to_string(::getpid()));
  ::unlink(link_tmp.c_str());
  if (::symlink(name.c_str(), link_tmp.c_str()) == 0) {
    if (::rename(link_tmp.c_str(), (out_dir / kLatestLink).c_str()) != 0)
      ::unlink(link_tmp.c_str());
    io::detail::fsync_directory(out_dir);
  }
  // Garbage: older checkpoints, partial directories, stray temporary files (of the pointer
  // and the link, and of any atomic write a kill interrupted: the token cache, the
  // metrics log). One writer per directory, so none of them is in flight.
  for (const auto& e : fs::directory_iterator(out_dir, ec)) {
    const std::string f = e.path().filename().string();
    const bool old_ckpt = f.starts_with("ckpt-") && f != name;
    const bool stray_tmp = f.starts_with(std::string(kPointerFile) + ".tmp.") ||
                           f.starts_with(std::string(kLatestLink) + ".tmp.") ||
                           io::is_atomic_temporary_name(f);
    if (old_ckpt || stray_tmp) {
      std::error_code ec2;
      fs::remove_all(e.path(), ec2);  // best effort
    }
  }
  return final_dir;
}

// ---- Files of one checkpoint directory ---------------------------------------------------

inline void write_trainer_tensors(const fs::path& path, const ParameterLayout& layout,
                                  std::span<const float> weights, std::span<const float> m,
                                  std::span<const float> v) {
  const size_t n = size_t(layout.total());
  if (weights.size() != n || m.size() != n || v.size() != n)
    fail("write_trainer_tensors: buffer sizes differ");
  std::vector<io::TensorToWrite> tensors;
  for (const auto& e : layout.entries()) {
    tensors.push_back(
        {"weights/" + e.name, e.shape, weights.subspan(size_t(e.offset), size_t(e.size))});
    tensors.push_back({"exp_avg/" + e.name, e.shape, m.subspan(size_t(e.offset), size_t(e.size))});
    tensors.push_back(
        {"exp_avg_sq/" + e.name, e.shape, v.subspan(size_t(e.offset), size_t(e.size))});
  }
  io::write_safetensors(path, tensors, {{"format", "bd3-trainer-state"}});
}

// The tensors of trainer_state.safetensors (already opened and validated) into the three
// flat buffers of `layout`.
inline void read_trainer_tensors(const io::SafetensorsFile& file, const ParameterLayout& layout,
                                 std::vector<float>& weights, std::vector<float>& m,
                                 std::vector<float>& v) {
  const std::string& source = file.source_name();
  const size_t n = size_t(layout.total());
  weights.assign(n, 0.0f), m.assign(n, 0.0f), v.assign(n, 0.0f);
  for (const auto& e : layout.entries()) {
    for (auto [prefix, buf] : {std::pair<const char*, std::vector<float>*>{"weights/", &weights},
                               {"exp_avg/", &m},
                               {"exp_avg_sq/", &v}}) {
      const std::string key = prefix + e.name;
      const auto* info = file.find(key);
      if (!info) fail(source + ": missing tensor " + key);
      if (info->shape != e.shape) fail(source + ": tensor " + key + " has the wrong shape");
      file.load_float_into(key, std::span<float>(*buf).subspan(size_t(e.offset), size_t(e.size)));
    }
  }
}

inline void read_trainer_tensors(const fs::path& path, const ParameterLayout& layout,
                                 std::vector<float>& weights, std::vector<float>& m,
                                 std::vector<float>& v) {
  read_trainer_tensors(io::SafetensorsFile::open(path), layout, weights, m, v);
}

// Everything a checkpoint holds, in memory.
struct TrainingCheckpoint {
  ModelConfig config;          // sampling_eps_min/max = state.interval
  std::vector<float> model;    // model.safetensors: EMA weights (raw without EMA)
  std::vector<float> weights;  // raw weights
  std::vector<float> exp_avg, exp_avg_sq;
  TrainerState state;
  std::optional<text::Tokenizer> tokenizer;
  fs::path dir;  // where it was read from
};

// Writes the files of one checkpoint into dir (used inside commit_checkpoint).
inline void write_checkpoint_files(const fs::path& dir, const ModelConfig& config,
                                   std::span<const float> model_weights,
                                   std::span<const float> raw_weights, std::span<const float> m,
                                   std::span<const float> v, const TrainerState& state,
                                   const text::Tokenizer* tokenizer) {
  const ParameterLayout layout(config);
  if (tokenizer) tokenizer->save_to(dir);
  write_trainer_tensors(dir / "trainer_state.safetensors", layout, raw_weights, m, v);
  io::write_file_atomic(dir / "trainer_state.json", state.to_json().dump(2) + "\n");
  // The loadable model last inside the directory (the directory is published whole anyway).
  save_checkpoint(dir, config, model_weights,
                  {{"format", "pt"},
                   {"bd3_noise", state.options.noise},
                   {"bd3_step", std::to_string(state.step)}});
}

// Reads a training checkpoint from OUT (through its pointer) or from a checkpoint
// directory itself.
inline TrainingCheckpoint load_training_checkpoint(const fs::path& dir) {
  TrainingCheckpoint ck;
  ck.dir = resolve_checkpoint_dir(dir);
  if (!fs::exists(ck.dir / "trainer_state.json"))
    fail(ck.dir.string() + " is a model but not a training checkpoint (no trainer_state.json)");
  auto loaded = load_checkpoint(ck.dir);
  ck.config = loaded.config;
  ck.model = std::move(loaded.parameters);
  ck.state = TrainerState::from_json(read_json_file(ck.dir / "trainer_state.json"),
                                     (ck.dir / "trainer_state.json").string());
  read_trainer_tensors(ck.dir / "trainer_state.safetensors", ParameterLayout(ck.config), ck.weights,
                       ck.exp_avg, ck.exp_avg_sq);
  const bool has_tokenizer =
      fs::exists(ck.dir / "tokenizer.json") || fs::exists(ck.dir / "vocab.json");
  if (has_tokenizer) ck.tokenizer = text::Tokenizer::load_from(ck.dir);
  return ck;
}

}  // namespace bd3::train
