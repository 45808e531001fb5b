// Tokenizer throughput on the default corpus (King James Bible, scripts/get_corpus.sh):
// GPT-2 BPE encode on one thread and on all threads, the pre-tokenizer alone, decode,
// and training an 8,192-token BPE. The corpus comes from $BD3_CORPUS or
// /tmp/bd3_corpus/kjv.txt; GPT-2's files from $BD3_GPT2_DIR or tests/data/fixtures/gpt2.
// Peer: bench/tiktoken_peer.js (see docs/text.md).
#include <bd3/text/bpe_trainer.hpp>
#include <bd3/text/corpus.hpp>
#include <bd3/text/gpt2_tokenizer.hpp>

#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

const std::string* corpus() {
  static const std::unique_ptr<std::string> text = []() -> std::unique_ptr<std::string> {
    const fs::path path = bd3::text::default_corpus_path();
    std::ifstream in(path, std::ios::binary);
    if (!in) return nullptr;
    return std::make_unique<std::string>(std::istreambuf_iterator<char>(in),
                                         std::istreambuf_iterator<char>());
  }();
  return text.get();
}

const bd3::text::Gpt2Tokenizer& gpt2() {
  static const bd3::text::Gpt2Tokenizer tok = [] {
    const char* env = std::getenv("BD3_GPT2_DIR");
    const fs::path dir = env != nullptr ? fs::path(env)
                                        : fs::path(__FILE__).parent_path().parent_path() / "tests" /
                                              "data" / "fixtures" / "gpt2";
    return bd3::text::Gpt2Tokenizer::from_files(dir / "vocab.json", dir / "merges.txt");
  }();
  return tok;
}

bool have_corpus(benchmark::State& state) {
  if (corpus() != nullptr) return true;
  state.SkipWithError(("no corpus at " + bd3::text::default_corpus_path().string() +
                       " (run scripts/get_corpus.sh or set BD3_CORPUS)")
                          .c_str());
  return false;
}

void report(benchmark::State& state, size_t tokens) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(corpus()->size()));
  state.counters["tokens"] = static_cast<double>(tokens);
  state.counters["threads"] = static_cast<double>(state.range(0));
}

// Each call starts with an empty piece cache: the figure includes warming it.
void BM_Gpt2EncodeSerial(benchmark::State& state) {
  if (!have_corpus(state)) return;
  const auto& tok = gpt2();
  size_t tokens = 0;
  for (auto _ : state) {
    auto ids = tok.encode(*corpus());
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  report(state, tokens);
}
BENCHMARK(BM_Gpt2EncodeSerial)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Gpt2EncodeParallel(benchmark::State& state) {
  if (!have_corpus(state)) return;
  const auto& tok = gpt2();
  size_t tokens = 0;
  for (auto _ : state) {
    auto ids = tok.encode_parallel(*corpus(), false, static_cast<int>(state.range(0)));
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  report(state, tokens);
}
BENCHMARK(BM_Gpt2EncodeParallel)
    ->Arg(omp_get_max_threads())
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime();

// The pre-tokenizer alone (PCRE2 JIT), to see how the encode time splits.
void BM_Gpt2Pretokenize(benchmark::State& state) {
  if (!have_corpus(state)) return;
  const auto& pre = bd3::text::detail::gpt2_pretokenizer();
  bd3::text::detail::Pretokenizer::Matcher matcher(pre);
  size_t pieces = 0;
  for (auto _ : state) {
    pieces = 0;
    pre.for_each_piece(*corpus(), matcher, [&](std::string_view) { ++pieces; });
    benchmark::DoNotOptimize(pieces);
  }
  report(state, pieces);
}
BENCHMARK(BM_Gpt2Pretokenize)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Gpt2Decode(benchmark::State& state) {
  if (!have_corpus(state)) return;
  const auto& tok = gpt2();
  const auto ids = tok.encode_parallel(*corpus());
  for (auto _ : state) {
    auto text = tok.decode(ids);
    benchmark::DoNotOptimize(text.data());
  }
  report(state, ids.size());
}
BENCHMARK(BM_Gpt2Decode)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();

// Training a GPT-2 style BPE of 8,192 tokens on the corpus (target: under 60 s).
void BM_TrainBpe8192(benchmark::State& state) {
  if (!have_corpus(state)) return;
  bd3::text::BpeTrainOptions options;
  options.vocab_size = 8192;
  options.threads = static_cast<int>(state.range(0));
  bd3::text::BpeTrainStats stats;
  for (auto _ : state) {
    auto tok = bd3::text::train_bpe(*corpus(), options, &stats);
    benchmark::DoNotOptimize(tok.vocab_size());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(corpus()->size()));
  state.counters["vocab"] = stats.vocab_size;
  state.counters["count_s"] = stats.count_seconds;
  state.counters["merge_s"] = stats.merge_seconds;
}
BENCHMARK(BM_TrainBpe8192)
    ->Arg(omp_get_max_threads())
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->Iterations(3);

}  // namespace

BENCHMARK_MAIN();
