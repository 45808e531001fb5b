// bd3 sample | eval-gen: draw samples from a checkpoint (include/bd3/sample/sampler.hpp),
// and score samples under an autoregressive judge (generative perplexity).
#include <bd3/bd3.hpp>
#include <bd3/sample/gen_ppl.hpp>
#include <bd3/sample/sampler.hpp>
#include <bd3/text/tokenizer.hpp>

#include <fmt/format.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"
#include "input.hpp"
#include "model_common.hpp"
#include "progress.hpp"

namespace bd3::cli {
namespace {

namespace fs = std::filesystem;

// The checkpoint's tokenizer, when the directory records one.
std::optional<text::Tokenizer> find_tokenizer(const fs::path& dir) {
  if (fs::exists(dir / "tokenizer.json") ||
      (fs::exists(dir / "vocab.json") && fs::exists(dir / "merges.txt")))
    return text::Tokenizer::load_from(dir);
  return std::nullopt;
}

std::string dump(const nlohmann::ordered_json& j) {
  // Samples may end inside a multi-byte character: never fail on invalid UTF-8.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// ---- bd3 sample ----------------------------------------------------------------------
// Tokens per sequence: the KV cache slides, so any length works; this bounds the work.
constexpr int64_t kMaxSampleLength = int64_t{1} << 24;

struct SampleArgs {
  std::string model, prompt, prompt_file, noise, decode_weights = "f32";
  int64_t length = 0, n_predict = 0, bos = -1, eos = -1;
  uint64_t seed = 0;
  int steps = 0, top_k = 0, batch = 1, threads = 0, max_retries = 10, min_reveal = 1;
  double top_p = 1.0, temperature = 1.0, threshold = 0.9;
  bool first_hitting = false, no_kv = false, no_fused = false, var_length = false, json = false,
       quiet = false;
  CLI::Option *length_opt = nullptr, *n_predict_opt = nullptr, *prompt_opt = nullptr,
              *prompt_file_opt = nullptr, *steps_opt = nullptr, *threshold_opt = nullptr,
              *min_reveal_opt = nullptr;
  CLI::Option *bos_opt = nullptr, *eos_opt = nullptr;
};

void write_stdout(std::string_view bytes) {
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), stdout) != bytes.size())
    fail_io("cannot write to stdout");
  if (std::fflush(stdout) != 0) fail_io("cannot write to stdout");
}

// The text of one sequence written to stdout as its blocks are committed: the prefix
// first (the prompt, without BOS), then each block. With a tokenizer, through the
// streaming decoder, so a character split across blocks is written whole; without one,
// the ids separated by spaces (BOS included), as the non-streamed output prints them.
// With a variable length, the last `hold_back` ids are written only at the end: the
// degenerate-tail stop rule may cut that many already committed tokens, and what was
// streamed must equal the final sample.
class SampleStream {
 public:
  SampleStream(const std::optional<text::Tokenizer>& tokenizer, int32_t bos, int64_t hold_back)
      : tokenizer_(tokenizer), bos_(bos), hold_back_(hold_back) {}

  void start(std::span<const int32_t> prefix) {
    ids_.assign(prefix.begin(), prefix.end());
    written_ = tokenizer_ && !ids_.empty() && ids_[0] == bos_ ? 1 : 0;  // BOS is markup
    if (tokenizer_) decoder_.emplace(tokenizer_->stream_decoder());
    first_id_ = true;
    write_upto(int64_t(ids_.size()));
  }
  // A committed block at `position` (it may overlap the prefix).
  void block(int64_t position, std::span<const int32_t> tokens) {
    for (size_t i = 0; i < tokens.size(); ++i)
      if (position + int64_t(i) >= int64_t(ids_.size())) ids_.push_back(tokens[i]);
    write_upto(int64_t(ids_.size()) - hold_back_);
  }
  // The attempt was rejected: end its line; the redraw starts on the next one.
  void restart(std::span<const int32_t> prefix) {
    finish_line();
    start(prefix);
  }
  // The last attempt was rejected (an error follows): end its line.
  void end_line() { finish_line(); }
  // The final sample: what is still held back, then the end of the line.
  void finish(std::span<const int32_t> final_ids) {
    ids_.assign(final_ids.begin(), final_ids.end());
    write_upto(int64_t(ids_.size()));
    finish_line();
  }

 private:
  void write_upto(int64_t end) {
    if (end <= written_) return;
    const auto ids =
        std::span<const int32_t>(ids_).subspan(size_t(written_), size_t(end - written_));
    std::string out;
    if (decoder_) {
      out = decoder_->feed(ids);
    } else {
      for (int32_t id : ids) {
        if (!first_id_) out += ' ';
        out += std::to_string(id);
        first_id_ = false;
      }
    }
    written_ = end;
    write_stdout(out);
  }
  void finish_line() {
    std::string rest = decoder_ ? decoder_->flush() : std::string();
    write_stdout(rest + "\n");
  }

  const std::optional<text::Tokenizer>& tokenizer_;
  int32_t bos_;
  int64_t hold_back_;
  std::vector<int32_t> ids_;
  int64_t written_ = 0;
  bool first_id_ = true;
  std::optional<text::Tokenizer::StreamDecoder> decoder_;
};

int run_sample(const SampleArgs& a) {
  // Flag values first: no model load for a typo.
  if (a.length_opt->count() && a.length < 1)
    fail_usage("--length must be >= 1 (it counts every token, BOS included)");
  if (a.length_opt->count()) check_count("--length", a.length, 1, kMaxSampleLength);
  if (a.n_predict_opt->count()) check_count("--n-predict", a.n_predict, 1, kMaxSampleLength);
  if (a.prompt_opt->count() && a.prompt_file_opt->count())
    fail_usage("--prompt and --file exclude each other");
  if (a.steps_opt->count()) check_count("--steps", a.steps, 1);
  if (a.steps_opt->count() && a.first_hitting)
    fail_usage("--steps (DDPM) and --first-hitting exclude each other");
  if (a.threshold_opt->count() && (a.steps_opt->count() || a.first_hitting))
    fail_usage("--threshold excludes --steps and --first-hitting");
  if (!(a.threshold >= 0 && a.threshold <= 1)) fail_usage("--threshold must be in [0, 1]");
  if (a.min_reveal_opt->count() && !a.threshold_opt->count())
    fail_usage("--min-reveal applies to --threshold decoding");
  check_count("--min-reveal", a.min_reveal, 1);
  if (!(a.top_p > 0 && a.top_p <= 1)) fail_usage("--top-p must be in (0, 1]");
  if (a.top_k < 0) fail_usage("--top-k must be >= 0 (0 = off)");
  if (!(a.temperature >= 0 && std::isfinite(a.temperature)))
    fail_usage("--temperature must be finite and >= 0 (0 = greedy)");
  if (a.batch < 1) fail_usage("--batch must be >= 1");
  check_count("--max-retries", a.max_retries, 0);
  const DecodeWeights storage = parse_decode_weights(a.decode_weights);
  if (storage != DecodeWeights::f32 && a.no_kv)
    fail_usage("--decode-weights " + a.decode_weights +
               " applies to KV-cached decoding: not with --no-kv-cache");
  set_threads(a.threads);
  if (!a.noise.empty()) (void)bd3::noise_from_name(a.noise);  // unknown: usage error now

  std::string prompt = a.prompt;
  const bool has_prompt = a.prompt_opt->count() || a.prompt_file_opt->count();
  if (a.prompt_file_opt->count())
    prompt = read_input(a.prompt_file, uint64_t{1} << 26, "prompt file");

  const fs::path dir = model_dir(a.model);  // a model directory or a training output directory
  const RuntimeNoise noise(a.noise.empty() ? recorded_noise(dir) : a.noise);
  const auto config = load_config(dir);
  // Before the weights are read: a length or batch that cannot fit is a usage error (with
  // --n-predict, the prompt's bytes bound its tokens).
  const int64_t planned = a.length_opt->count()      ? a.length
                          : a.n_predict_opt->count() ? a.n_predict + int64_t(prompt.size()) + 1
                                                     : config.model_length;
  check_memory(sampling_bytes(config, a.batch, planned, storage),
               fmt::format("sampling --batch {} x {} tokens", a.batch, planned));
  auto ck = load_checkpoint(dir);
  CliModel model(ck.config);
  std::copy(ck.parameters.begin(), ck.parameters.end(), model.parameters().begin());
  model.parameters_changed();
  ck.parameters = {};
  model.set_decode_weights(storage);
  const auto& cfg = model.config();
  const auto tokenizer = find_tokenizer(dir);
  if (tokenizer && tokenizer->model_vocab_size() != cfg.vocab_size)
    fail(a.model + ": the tokenizer's vocabulary (" +
         std::to_string(tokenizer->model_vocab_size()) +
         " ids with MASK) does not match the model's vocab_size " + std::to_string(cfg.vocab_size));

  auto as_id = [&](int64_t v, const char* what) {
    if (v < 0 || v >= cfg.vocab_size || v == cfg.mask_index)
      fail_usage(std::string(what) + " " + std::to_string(v) +
                 " is not a token of the model (vocabulary [0, " + std::to_string(cfg.vocab_size) +
                 "), MASK = " + std::to_string(cfg.mask_index) + ")");
    return int32_t(v);
  };
  sample::SamplerOptions o;
  o.method = a.steps_opt->count()       ? sample::Method::ddpm
             : a.threshold_opt->count() ? sample::Method::threshold
                                        : sample::Method::first_hitting;
  o.steps = a.steps;
  o.threshold = a.threshold;
  o.min_reveal = a.min_reveal;
  o.top_p = a.top_p, o.top_k = a.top_k, o.temperature = a.temperature;
  o.kv_cache = !a.no_kv, o.fused_commit = !a.no_fused;
  o.batch = a.batch, o.seed = a.seed, o.max_retries = a.max_retries;
  o.length = a.length_opt->count() ? a.length : cfg.model_length;
  o.bos_id = a.bos_opt->count() ? as_id(a.bos, "--bos") : tokenizer ? tokenizer->bos_id() : 0;
  o.eos_id = a.eos_opt->count() ? as_id(a.eos, "--eos") : tokenizer ? tokenizer->eos_id() : -1;
  o.length_mode = a.var_length ? sample::LengthMode::variable : sample::LengthMode::fixed;
  if (has_prompt) {
    if (!tokenizer)
      fail_usage("--prompt needs a tokenizer in " + a.model +
                 " (tokenizer.json or vocab.json + merges.txt)");
    o.prompt = {o.bos_id};
    auto ids = tokenizer->encode(prompt);
    o.prompt.insert(o.prompt.end(), ids.begin(), ids.end());
  }
  const std::vector<int32_t> prefix = o.prompt.empty() ? std::vector<int32_t>{o.bos_id} : o.prompt;
  if (a.n_predict_opt->count()) {
    o.length = int64_t(prefix.size()) + a.n_predict;
    check_count("--n-predict plus the prompt's tokens", o.length, 1, kMaxSampleLength);
  }
  const int64_t to_generate = std::max<int64_t>(0, o.length - int64_t(prefix.size()));

  // One sequence in text form streams to stdout; JSON lines and batches print at the end.
  const bool stream = !a.json && a.batch == 1;
  // Streamed text on a terminal is its own progress: no bar drawn over it.
  const bool stderr_tty = isatty(STDERR_FILENO) == 1;
  const bool bar_over_text = stream && stderr_tty && isatty(STDOUT_FILENO) == 1;
  Progress progress("bd3 sample", to_generate * a.batch, a.quiet || bar_over_text,
                    /*log_after_seconds=*/1.0);
  SampleStream out(tokenizer, o.bos_id,
                   o.length_mode == sample::LengthMode::variable ? o.stop.window : 0);
  std::vector<int64_t> done(size_t(a.batch), 0);
  int64_t done_total = 0;
  o.on_block = [&](const sample::BlockEvent& ev) {
    auto& d = done[size_t(ev.sequence)];
    const int64_t now = ev.rejected ? 0
                                    : std::max<int64_t>(d, ev.position + int64_t(ev.tokens.size()) -
                                                               int64_t(prefix.size()));
    done_total += now - d, d = now;
    if (ev.rejected) {
      // Said even when no bar is drawn over the streamed text: that text's line ends here.
      const bool redraw = ev.attempt < o.max_retries;
      const std::string line =
          fmt::format("bd3 sample: sequence {}: degenerate sample (attempt {}){}", ev.sequence,
                      ev.attempt + 1, redraw ? ", redrawing" : "");
      if (!progress.quiet())
        progress.message(line);
      else if (!a.quiet)
        fmt::print(stderr, "{}\n", line);
      if (stream) redraw ? out.restart(prefix) : out.end_line();
    } else if (stream) {
      out.block(ev.position, ev.tokens);
    }
    progress.update(done_total, "tokens");
  };
  if (stream) out.start(prefix);
  sample::Sampler<CliModel, RuntimeNoise> sampler(model, o, noise);
  const auto results = sampler.generate();
  progress.clear();
  if (stream) out.finish(results.at(0).ids);
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    const double rate = r.seconds > 0 ? double(r.generated_tokens()) / r.seconds : 0.0;
    if (a.json) {
      nlohmann::ordered_json j;
      j["ids"] = r.ids;
      j["text"] = tokenizer ? nlohmann::ordered_json(tokenizer->decode(r.ids))
                            : nlohmann::ordered_json(nullptr);
      j["tokens"] = r.ids.size();
      j["generated"] = r.generated_tokens();
      j["nfe"] = r.nfe;
      j["commit_calls"] = r.commit_calls;
      j["retries"] = r.retries;
      j["seconds"] = r.seconds;
      j["tokens_per_s"] = rate;
      j["method"] = sample::method_name(o.method);
      fmt::print("{}\n", dump(j));
    } else if (!stream) {
      if (results.size() > 1) fmt::print("=== sample {} ===\n", i);
      if (tokenizer) {
        // The leading BOS is markup, not text.
        std::span<const int32_t> ids(r.ids);
        if (!ids.empty() && ids[0] == o.bos_id) ids = ids.subspan(1);
        fmt::print("{}\n", tokenizer->decode(ids));
      } else {
        fmt::print("{}\n", fmt::join(r.ids, " "));
      }
    }
    if (stderr_tty && !a.quiet)
      fmt::print(stderr,
                 "sample {}: {} tokens, nfe {}, commit calls {}, {:.2f} s, {:.1f} tokens/s{}\n", i,
                 r.ids.size(), r.nfe, r.commit_calls, r.seconds, rate,
                 r.retries ? fmt::format(", {} retries", r.retries) : std::string());
  }
  std::fflush(stdout);
  return 0;
}

const Registrar sample_command([](CLI::App& app) -> Runner {
  auto a = std::make_shared<SampleArgs>();
  auto* sub = app.add_subcommand("sample", "Generate samples from a checkpoint (block by block)");
  sub->add_option("-m,--model", a->model,
                  "Checkpoint directory (config.json, model.safetensors), or a training --out")
      ->required();
  a->length_opt = sub->add_option("--length", a->length,
                                  "Total tokens, BOS/prompt included (default: model_length)");
  a->n_predict_opt = sub->add_option("-n,--n-predict", a->n_predict,
                                     "Tokens to generate after BOS and the prompt (instead of "
                                     "--length)");
  a->length_opt->excludes(a->n_predict_opt);
  sub->add_option("-s,--seed", a->seed, "Random seed (same seed, same samples)");
  a->prompt_opt = sub->add_option("-p,--prompt", a->prompt,
                                  "Prompt text (needs a tokenizer); generation continues it");
  a->prompt_file_opt = sub->add_option("-f,--file", a->prompt_file,
                                       "Read the prompt from a file ('-': standard input)");
  a->steps_opt = sub->add_option("--steps", a->steps, "DDPM sampler with T steps per block");
  sub->add_flag("--first-hitting", a->first_hitting, "First-hitting sampler (the default)");
  a->threshold_opt = sub->add_option("--threshold", a->threshold,
                                     "Confidence-threshold parallel decoding with tau in [0, 1]");
  a->min_reveal_opt =
      sub->add_option("--min-reveal", a->min_reveal,
                      "Threshold decoding: reveal at least K tokens per call, most confident "
                      "first (default 1; --threshold 1 --min-reveal K: K tokens per call)");
  sub->add_option("--top-p", a->top_p, "Nucleus sampling: keep this much probability mass (0, 1]");
  sub->add_option("--top-k", a->top_k, "Keep the k most probable tokens (0 = off)");
  sub->add_option("--temp,--temperature", a->temperature, "Softmax temperature (0 = greedy)");
  sub->add_flag("--no-kv-cache", a->no_kv, "Recompute the whole sequence at every step");
  sub->add_flag("--no-fused-commit", a->no_fused,
                "Commit finished blocks to the cache in separate calls");
  sub->add_flag("--var-length", a->var_length,
                "Variable length: stop after the second EOS (or on a degenerate tail)");
  sub->add_option("--batch", a->batch, "Sequences sampled together");
  a->bos_opt = sub->add_option("--bos", a->bos, "BOS id (default: the tokenizer's, else 0)");
  a->eos_opt = sub->add_option("--eos", a->eos,
                               "EOS id for --var-length (default: the tokenizer's, else BOS)");
  sub->add_option(
      "--noise", a->noise,
      "Noise schedule of the DDPM sampler (default: the one the model was trained with, else "
      "loglinear)");
  sub->add_option("--max-retries", a->max_retries,
                  "Redraws of a degenerate fixed-length sample before failing");
  sub->add_flag("--json", a->json,
                "One JSON line per sequence at the end: ids, text, tokens, nfe, commit_calls, "
                "seconds, ... (else the text of a single sequence streams as it is generated)");
  sub->add_option("--decode-weights", a->decode_weights,
                  "Weights the KV-cached decode calls read: f32 (the parameters), "
                  "f32-packed (a copy in tiles, faster from memory) or bf16 (a packed copy "
                  "rounded to bfloat16, half the bytes)")
      ->check(CLI::IsMember(decode_weight_names));
  sub->add_option("-t,--threads", a->threads, "Threads (0 = all cores)");
  sub->add_flag("--quiet", a->quiet, "No progress on stderr");
  return [a] { return run_sample(*a); };
});

// ---- bd3 eval-gen --------------------------------------------------------------------
struct EvalGenArgs {
  std::string judge, samples;
  int threads = 0, batch = 8;
  bool quiet = false;
};

std::vector<std::vector<int32_t>> read_samples(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("cannot open " + path);
  std::vector<std::vector<int32_t>> out;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    const std::string where = path + ":" + std::to_string(n);
    if (j.is_discarded() || !j.is_object()) fail(where + ": not a JSON object");
    auto it = j.find("ids");
    if (it == j.end() || !it->is_array()) fail(where + ": expected an \"ids\" array");
    std::vector<int32_t> ids;
    for (const auto& v : *it) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
        fail(where + ": \"ids\" holds something that is not a token id");
      ids.push_back(int32_t(v.get<int64_t>()));
    }
    out.push_back(std::move(ids));
  }
  if (out.empty()) fail(path + " holds no samples");
  return out;
}

int run_eval_gen(const EvalGenArgs& a) {
  if (a.batch < 1) fail_usage("--batch must be >= 1");
  set_threads(a.threads);
  check_memory(training_bytes(load_config(model_dir(a.judge)), a.batch),
               fmt::format("eval-gen --batch {}", a.batch));
  auto samples = read_samples(a.samples);
  auto judge = load_model(a.judge);
  if (judge.block_size() != 1)
    fail_usage("--judge must be autoregressive (block size 1); " + a.judge + " has block size " +
               std::to_string(judge.block_size()));
  // Scored in chunks of about 2% of the judge's windows, for the progress line; a chunk
  // holds whole samples, and the totals add up as one call's would. The ids are checked
  // here first, so that an error names the sample's place in the file, not in its chunk.
  const int64_t L = judge.config().model_length;
  const int32_t V = judge.config().vocab_size, mask = judge.config().mask_index;
  for (size_t i = 0; i < samples.size(); ++i)
    for (int32_t t : samples[i])
      if (t < 0 || t >= V || t == mask)
        fail(
            fmt::format("{}: sample {} holds id {}, not a token of the judge (vocabulary [0, {}), "
                        "MASK = {})",
                        a.samples, i, t, V, mask));
  auto windows_of = [L](const std::vector<int32_t>& ids) {
    return ids.size() < 2 ? int64_t(0) : (int64_t(ids.size()) - 2) / (L - 1) + 1;
  };
  int64_t total_windows = 0;
  for (const auto& ids : samples) total_windows += windows_of(ids);
  Progress progress("bd3 eval-gen", total_windows, a.quiet);
  const int64_t chunk_windows = std::max<int64_t>(int64_t(a.batch), total_windows / 50);
  sample::GenerativePerplexity g;
  int64_t scored = 0;
  for (size_t begin = 0; begin < samples.size();) {
    size_t end = begin;
    int64_t windows = 0;
    while (end < samples.size() && (windows < chunk_windows || end == begin))
      windows += windows_of(samples[end++]);
    const std::vector<std::vector<int32_t>> chunk(samples.begin() + ptrdiff_t(begin),
                                                  samples.begin() + ptrdiff_t(end));
    const auto part = sample::generative_perplexity(judge, chunk, a.batch);
    g.nll_sum += part.nll_sum, g.tokens += part.tokens, g.samples += part.samples;
    g.entropies.insert(g.entropies.end(), part.entropies.begin(), part.entropies.end());
    scored += windows, begin = end;
    progress.update(scored, fmt::format("gen ppl {:.3f}", g.gen_ppl()));
  }
  progress.finish();
  nlohmann::ordered_json j;
  j["gen_ppl"] = g.gen_ppl();
  j["entropy"] = g.mean_entropy();
  j["samples"] = g.samples;
  j["tokens"] = g.tokens;
  fmt::print("{}\n", dump(j));
  return 0;
}

const Registrar eval_gen_command([](CLI::App& app) -> Runner {
  auto a = std::make_shared<EvalGenArgs>();
  auto* sub = app.add_subcommand("eval-gen",
                                 "Generative perplexity of samples under an autoregressive judge");
  sub->add_option("--judge", a->judge, "Checkpoint of an autoregressive BD3-LM (block size 1)")
      ->required();
  sub->add_option("--samples", a->samples,
                  "JSONL file with an \"ids\" array per line (as sample --json writes)")
      ->required();
  sub->add_option("--batch", a->batch, "Windows per judge forward");
  sub->add_option("-t,--threads", a->threads, "Threads (0 = all cores)");
  sub->add_flag("--quiet", a->quiet, "No progress on stderr");
  return [a] { return run_eval_gen(*a); };
});

}  // namespace
}  // namespace bd3::cli
