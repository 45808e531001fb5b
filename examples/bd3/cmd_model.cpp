// bd3 forward | inspect | bench: the core commands over a checkpoint or a preset.
#include <bd3/bd3.hpp>
#include <bd3/detail/huge_pages.hpp>
#include <bd3/io/parity_cases.hpp>
#include <bd3/kernels/simd.hpp>
#include <bd3/train/backward.hpp>

#include <fmt/format.h>
#include <omp.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <set>
#include <vector>

#include "cli.hpp"
#include "model_common.hpp"

namespace bd3::cli {
namespace {

using Clock = std::chrono::steady_clock;

// ---- bd3 forward ------------------------------------------------------------------
// The gradient of nelbo_mean for every parameter, under the parameter's own name.
void write_gradients(const CliModel& model, const std::vector<int32_t>& xt,
                     const std::vector<int32_t>& x0, const std::vector<double>& weight,
                     const std::string& out, nlohmann::json& result) {
  std::vector<float> grads(size_t(model.layout().total()), 0.0f);
  const double loss = train::loss_and_gradient(model, xt, x0, 1, weight, std::span<float>(grads));
  std::vector<io::TensorToWrite> tensors;
  for (const auto& e : model.layout().entries())
    tensors.push_back(
        {e.name, e.shape, std::span<const float>(grads).subspan(size_t(e.offset), size_t(e.size))});
  io::write_safetensors(std::filesystem::path(out) / "grads.safetensors", tensors,
                        {{"loss", "nelbo_mean"}, {"value", fmt::format("{:.17g}", loss)}});
  result["grads_file"] = "grads.safetensors";
}

struct ForwardOptions {
  std::string model, cases, out;
  bool grad = false;
  int threads = 0;
};

int run_forward(const ForwardOptions& o) {
  set_threads(o.threads);
  auto model = load_model(o.model);
  const auto& cfg = model.config();
  const int L = cfg.model_length, V = cfg.vocab_size, Bp = cfg.block_size;
  const auto cases = io::parse_parity_cases(read_json_file(o.cases), cfg);
  if (o.grad && !cases.train) fail_usage("--grad needs a \"train\" case in cases.json");
  std::error_code ec;
  std::filesystem::create_directories(o.out, ec);
  if (ec) fail_io("cannot create " + o.out + ": " + ec.message());
  nlohmann::json result = nlohmann::json::object();
  if (const auto& tr = cases.train) {
    const RuntimeNoise noise(recorded_noise(o.model));
    std::vector<double> weight(L);
    for (int l = 0; l < L; ++l) weight[l] = noise.w(tr->t_per_block[l / Bp]);
    TrainActivations<float> act;
    model.forward_train(tr->xt, tr->x0, 1, act);
    const int64_t shape[2] = {L, V};
    io::write_npy(std::filesystem::path(o.out) / "train_logits.npy", shape, act.logits);
    auto terms = subs_nelbo<float>(act.logits, tr->xt, tr->x0, weight, L, V, cfg.mask_index);
    result["nelbo_mean"] = terms.loss_sum / double(terms.tokens);
    if (o.grad) write_gradients(model, tr->xt, tr->x0, weight, o.out, result);
  }
  if (cases.kv_cache) {
    KVCache<float> cache(cfg, 1);
    std::vector<float> logits;
    int i = 0;
    for (const auto& step : *cases.kv_cache) {
      model.forward_block(step.noisy_block, cache, logits);
      const int64_t shape[2] = {Bp, V};
      io::write_npy(std::filesystem::path(o.out) / fmt::format("cache_logits_{}.npy", i), shape,
                    logits);
      model.commit_block(step.clean_block, cache);
      ++i;
    }
    result["kv_steps"] = i;
  }
  fmt::print("{}\n", result.dump());
  return 0;
}

// ---- bd3 inspect ------------------------------------------------------------------
int run_inspect(const std::string& given) {
  const auto dir = model_dir(given);
  auto config = load_config(dir);
  auto file = io::SafetensorsFile::open(dir / "model.safetensors");
  auto ck = load_checkpoint(dir);
  std::set<std::string> dtypes;
  for (const auto& t : file.tensors()) dtypes.insert(std::string(io::dtype_name(t.dtype)));
  int64_t non_finite = 0;
  std::string first_bad;
  const ParameterLayout layout(config);
  for (const auto& e : layout.entries())
    for (int64_t i = 0; i < e.size; ++i)
      if (!std::isfinite(ck.parameters[size_t(e.offset + i)])) {
        if (first_bad.empty()) first_bad = e.name;
        ++non_finite;
      }
  nlohmann::json out{{"config", config.to_json()},
                     {"parameters", layout.total()},
                     {"tensors", file.tensors().size()},
                     {"dtypes", dtypes},
                     {"non_finite", non_finite}};
  if (non_finite) out["first_non_finite_tensor"] = first_bad;
  fmt::print("{}\n", out.dump());
  // The summary still goes to stdout; the failure is one line on stderr, as every error.
  if (non_finite)
    fmt::print(stderr, "bd3: {}: {} non-finite weight value(s) (NaN/Inf), the first in tensor {}\n",
               (dir / "model.safetensors").string(), non_finite, first_bad);
  return non_finite ? 1 : 0;
}

// ---- bd3 bench --------------------------------------------------------------------
struct BenchOptions {
  std::string model, preset, what = "forward", decode_weights = "f32";
  int threads = 0, batch = 1;
  double seconds = 3.0;
};

// The machine's read bandwidth, as bench_machine's BM_mem_read measures it: every thread
// sums its share of a buffer 8 times the size of a 32 MiB L3 (simd::detail::sum_of), GB/s.
class ReadBandwidthProbe {
 public:
  static constexpr size_t bytes = size_t(256) << 20;

  ReadBandwidthProbe() : buffer_(bytes / sizeof(float), 1.0f) { (void)gb_per_s(); }

  double gb_per_s() const {
    const auto start = Clock::now();
    const auto n = std::ptrdiff_t(buffer_.size());
    float sum = 0;
#pragma omp parallel reduction(+ : sum)
    {
      const std::ptrdiff_t t = omp_get_thread_num(), nt = omp_get_num_threads();
      const std::ptrdiff_t begin = n * t / nt, end = n * (t + 1) / nt;
      sum += kernels::simd::detail::sum_of(buffer_.data() + begin, end - begin);
    }
    const double secs = std::chrono::duration<double>(Clock::now() - start).count();
    last_sum_ = sum;  // an observable result, so the reads stay
    return double(bytes) / secs / 1e9;
  }

 private:
  std::vector<float, detail::HugePageAllocator<float>> buffer_;
  mutable float last_sum_ = 0;
};

// Multiply-adds of the linear layers per row, and allowed (query, key) pairs of the masks.
double linear_flops_per_row(const ModelConfig& c) {
  return 24.0 * double(c.hidden_dim) * c.hidden_dim;
}

// `rows` per sequence: the training forward's (CliModel::train_rows_per_sequence()).
double training_mask_pairs(const ModelConfig& c, int rows) {
  const TrainingMask mask{c.model_length, c.block_size};
  double pairs = 0;
  for (int q = 0; q < rows; ++q) {
    KeyRange r[2];
    int n = mask.key_ranges(q, q + 1, r);
    for (int i = 0; i < n; ++i) pairs += r[i].size();
  }
  return pairs;
}

int run_bench(const BenchOptions& o) {
  set_threads(o.threads);
  if (o.model.empty() == o.preset.empty())
    fail_usage("bench: give exactly one of --model and --preset");
  if (o.batch < 1) fail_usage("--batch must be >= 1");
  if (!(o.seconds >= 0 && o.seconds <= 86400)) fail_usage("--seconds must be in [0, 86400]");
  const DecodeWeights storage = parse_decode_weights(o.decode_weights);
  {
    const auto c = o.model.empty() ? preset_config(o.preset) : load_config(model_dir(o.model));
    if (storage != DecodeWeights::f32 && o.what != "decode")
      fail_usage("--decode-weights " + o.decode_weights + " applies to --what decode");
    check_memory(o.what == "decode" ? sampling_bytes(c, o.batch, c.model_length, storage) +
                                          double(ReadBandwidthProbe::bytes)
                                    : training_bytes(c, o.batch),
                 fmt::format("bench --what {} --batch {}", o.what, o.batch));
  }
  CliModel model = o.model.empty() ? CliModel(preset_config(o.preset)) : load_model(o.model);
  if (!o.preset.empty()) randomize(model, 1234);
  model.set_decode_weights(storage);
  const auto& c = model.config();
  const int L = c.model_length, Bp = c.block_size, D = c.hidden_dim, V = c.vocab_size;
  const int train_rows = model.train_rows_per_sequence();  // 2L, or L at B' = L
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int32_t> tok(0, V - 2);
  nlohmann::json out{{"what", o.what},
                     {"threads", omp_get_max_threads()},
                     {"batch", o.batch},
                     {"preset", o.preset},
                     {"model", o.model}};
  auto time_loop = [&](auto&& body) {
    body();  // warm-up
    int iters = 0;
    auto start = Clock::now();
    double elapsed = 0;
    do {
      body();
      ++iters;
      elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    } while (elapsed < o.seconds);
    return std::pair{iters, elapsed};
  };
  if (o.what == "forward") {
    std::vector<int32_t> x0(size_t(o.batch) * L), xt(x0.size());
    for (size_t i = 0; i < x0.size(); ++i) {
      x0[i] = tok(rng);
      xt[i] = (rng() % 2) ? c.mask_index : x0[i];
    }
    TrainActivations<float> act;
    auto [iters, secs] = time_loop([&] { model.forward_train(xt, x0, o.batch, act); });
    const double flops = o.batch * (c.n_blocks * (linear_flops_per_row(c) * train_rows +
                                                  4.0 * training_mask_pairs(c, train_rows) * D) +
                                    2.0 * L * D * V);
    out["seconds"] = secs / iters;
    out["tokens_per_s"] = o.batch * L * iters / secs;
    out["gflops"] = flops * iters / secs / 1e9;
    out["flops_per_call"] = flops;
  } else if (o.what == "decode") {
    // One block against a full cache window (model_length - block_size cached tokens).
    KVCache<float> cache(c, o.batch);
    std::vector<int32_t> block(size_t(o.batch) * Bp);
    while (cache.length() < L - Bp) {
      for (auto& t : block) t = tok(rng);
      model.commit_block(block, cache);
    }
    for (auto& t : block) t = c.mask_index;
    std::vector<float> logits;
    // The fraction of the bandwidth bound needs the decode rate and the machine's read
    // bandwidth from the same stretch of time: this machine's memory speed swings between
    // 26 and 54 GB/s from one second to the next. A call that reads more than the probe's
    // buffer (small: 570 MB) streams from memory whatever ran before it, so each call is
    // paired with a probe pass right after it; a call whose bytes fit in the caches (mid)
    // would be slowed by the probe evicting them, so it runs in 5 rounds with a probe
    // before each and after the last instead. read_gb_per_s = probe bytes / probe seconds.
    const ReadBandwidthProbe probe;
    const double bytes_per_weight = storage == DecodeWeights::bf16 ? 2.0 : 4.0;
    const double weight_bytes =
        bytes_per_weight * (double(c.n_blocks) * 12.0 * D * D + double(V) * D);
    const double cache_bytes = 4.0 * 2.0 * double(c.n_blocks) * L * D * o.batch;
    const bool paired = weight_bytes + cache_bytes >= double(ReadBandwidthProbe::bytes);
    constexpr int rounds = 5;
    double probe_secs = 0;
    int probes = 0;
    double last_probe_gb_per_s = 0;
    auto run_probe = [&] {
      last_probe_gb_per_s = probe.gb_per_s();
      probe_secs += double(ReadBandwidthProbe::bytes) / 1e9 / last_probe_gb_per_s;
      ++probes;
    };
    // Paired: each call's own fraction (its bytes per second over the probe right after
    // it), so calls from the machine's fast and slow stretches are not averaged together.
    std::vector<double> call_fractions;
    int iters = 0;
    double secs = 0;
    model.forward_block(block, cache, logits);  // warm-up
    if (!paired) run_probe();
    for (int round = 0; round < (paired ? 1 : rounds); ++round) {
      const double budget = paired ? o.seconds : o.seconds / rounds;
      double elapsed = 0;
      do {
        const auto start = Clock::now();
        model.forward_block(block, cache, logits);
        const double call_secs = std::chrono::duration<double>(Clock::now() - start).count();
        elapsed += call_secs;
        ++iters;
        if (paired) {
          run_probe();
          call_fractions.push_back((weight_bytes + cache_bytes) / call_secs / 1e9 /
                                   last_probe_gb_per_s);
        }
      } while (elapsed < budget);
      secs += elapsed;
      if (!paired) run_probe();
    }
    const double rows = double(o.batch) * Bp;
    const double flops =
        rows * (c.n_blocks * (linear_flops_per_row(c) + 4.0 * L * D) + 2.0 * D * V);
    out["seconds"] = secs / iters;
    out["nfe_per_s"] = iters / secs;
    out["ms_per_nfe"] = 1e3 * secs / iters;
    out["gflops"] = flops * iters / secs / 1e9;
    out["bytes_per_nfe"] = weight_bytes + cache_bytes;
    out["gb_per_s"] = (weight_bytes + cache_bytes) * iters / secs / 1e9;
    out["read_gb_per_s"] = probes * double(ReadBandwidthProbe::bytes) / probe_secs / 1e9;
    out["bandwidth_probe"] = paired ? "after every call" : "between rounds";
    out["bandwidth_fraction"] = out["gb_per_s"].get<double>() / out["read_gb_per_s"].get<double>();
    if (!call_fractions.empty()) {
      std::sort(call_fractions.begin(), call_fractions.end());
      const size_t n = call_fractions.size();
      out["call_fraction"] = {{"min", call_fractions.front()},
                              {"median", call_fractions[n / 2]},
                              {"max", call_fractions.back()}};
    }
    out["decode_weights"] = o.decode_weights;
  } else if (o.what == "train") {
    // One training step's forward + backward (loss_and_gradient) at batch x model_length.
    std::vector<int32_t> x0(size_t(o.batch) * L), xt(x0.size());
    for (size_t i = 0; i < x0.size(); ++i) {
      x0[i] = tok(rng);
      xt[i] = (i % L != 0 && rng() % 2) ? c.mask_index : x0[i];
    }
    std::vector<double> weight(x0.size(), 2.0);
    std::vector<float> grads(size_t(model.layout().total()));
    train::TrainScratch<float> scratch;
    auto [iters, secs] = time_loop([&] {
      std::fill(grads.begin(), grads.end(), 0.0f);
      train::loss_and_gradient(model, xt, x0, o.batch, weight, std::span<float>(grads), Dropout{},
                               &scratch);
    });
    // Model FLOPs: backward = 2 x forward, the usual convention for MFU.
    const double forward_flops =
        o.batch * (c.n_blocks * (linear_flops_per_row(c) * train_rows +
                                 4.0 * training_mask_pairs(c, train_rows) * D) +
                   2.0 * L * D * V);
    out["seconds"] = secs / iters;
    out["tokens_per_s"] = o.batch * L * iters / secs;
    out["gflops"] = 3.0 * forward_flops * iters / secs / 1e9;
    out["flops_per_call"] = 3.0 * forward_flops;
  } else {
    fail_usage("--what must be forward, decode or train");
  }
  fmt::print("{}\n", out.dump());
  return 0;
}

Registrar forward_cmd([](CLI::App& app) -> Runner {
  auto o = std::make_shared<ForwardOptions>();
  auto* sub = app.add_subcommand("forward",
                                 "Run a checkpoint on the fixture cases format; write .npy logits");
  sub->add_option("-m,--model", o->model, "checkpoint directory (config.json + model.safetensors)")
      ->required();
  sub->add_option("--cases", o->cases, "cases.json")->required();
  sub->add_option("-o,--out", o->out, "output directory")->required();
  sub->add_flag("--grad", o->grad, "also write grads.safetensors (gradient of nelbo_mean)");
  sub->add_option("-t,--threads", o->threads, "threads (0 = all cores)");
  return [o] { return run_forward(*o); };
});

Registrar inspect_cmd([](CLI::App& app) -> Runner {
  auto dir = std::make_shared<std::string>();
  auto* sub = app.add_subcommand("inspect", "Validate a checkpoint and print its summary as JSON");
  sub->add_option("-m,--model", *dir, "checkpoint directory")->required();
  return [dir] { return run_inspect(*dir); };
});

Registrar bench_cmd([](CLI::App& app) -> Runner {
  auto o = std::make_shared<BenchOptions>();
  auto* sub =
      app.add_subcommand("bench", "Measure forward, decode or training throughput; one JSON line");
  sub->add_option("-m,--model", o->model, "checkpoint directory");
  sub->add_option("--preset", o->preset, "random-weight model: small or mid")
      ->check(CLI::IsMember({"small", "mid"}));
  sub->add_option("--what", o->what, "forward | decode | train")
      ->check(CLI::IsMember({"forward", "decode", "train"}));
  sub->add_option("-t,--threads", o->threads, "threads (0 = all cores)");
  sub->add_option("--batch", o->batch, "sequences per call");
  sub->add_option("--seconds", o->seconds, "minimum measuring time");
  sub->add_option("--decode-weights", o->decode_weights,
                  "decode: the parameters (f32), a packed copy (f32-packed) or a packed "
                  "bfloat16 copy (bf16, half the bytes)")
      ->check(CLI::IsMember(decode_weight_names));
  return [o] { return run_bench(*o); };
});

}  // namespace
}  // namespace bd3::cli
