// bd3 tokenize | detokenize | tokenizer train: the text module from the command line.
//   bd3 tokenize (--vocab F --merges F | --tokenizer DIR) (--text S | --file F) [--allow-special]
//       prints the ids as one JSON array on one line.
//   bd3 detokenize (--vocab F --merges F | --tokenizer DIR) (--ids JSON | --ids-file F)
//       writes the decoded bytes to stdout exactly (no newline added).
//   bd3 tokenizer train --data F [--data F ...] --vocab-size N --out DIR
//       trains a byte-level BPE, writes DIR/vocab.json + DIR/merges.txt, progress on
//       stderr, one JSON summary line on stdout.
#include <bd3/error.hpp>
#include <bd3/text/bpe_trainer.hpp>
#include <bd3/text/detail/files.hpp>
#include <bd3/text/tokenizer.hpp>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"
#include "input.hpp"
#include "progress.hpp"

namespace {

using bd3::fail;
using bd3::fail_usage;
namespace text = bd3::text;

constexpr uint64_t kMaxInputBytes = uint64_t{4} << 30;

struct TokenizerFlags {
  std::string vocab, merges, dir;

  void add_to(CLI::App* cmd) {
    cmd->add_option("--vocab", vocab, "GPT-2 vocab.json (with --merges)");
    cmd->add_option("--merges", merges, "GPT-2 merges.txt (with --vocab)");
    cmd->add_option("--tokenizer", dir,
                    "tokenizer directory: vocab.json + merges.txt, or tokenizer.json (a training "
                    "--out: its checkpoint's)");
  }

  text::Tokenizer load() const {
    if (!dir.empty()) {
      if (!vocab.empty() || !merges.empty())
        fail_usage("--tokenizer cannot be combined with --vocab/--merges");
      return text::Tokenizer::load_from(bd3::cli::tokenizer_dir(dir));
    }
    if (vocab.empty() || merges.empty())
      fail_usage("give --vocab and --merges, or --tokenizer DIR");
    return text::Gpt2Tokenizer::from_files(vocab, merges);
  }
};

void write_stdout(std::string_view bytes) {
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), stdout) != bytes.size())
    bd3::fail_io("cannot write to stdout");
  if (std::fflush(stdout) != 0) bd3::fail_io("cannot write to stdout");
}

std::string ids_to_json(const std::vector<int32_t>& ids) {
  std::string out;
  out.reserve(ids.size() * 7 + 3);
  out += '[';
  char buffer[16];
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) out += ',';
    auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, ids[i]);
    out.append(buffer, end);
  }
  out += "]\n";
  return out;
}

std::vector<int32_t> ids_from_json(std::string_view json_text, const std::string& what,
                                   int32_t vocab_size) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text.begin(), json_text.end());
  } catch (const nlohmann::json::exception& e) {
    fail(what + ": malformed JSON: " + e.what());
  }
  if (!j.is_array()) fail(what + ": expected a JSON array of token ids");
  std::vector<int32_t> ids;
  ids.reserve(j.size());
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& v = j[i];
    if (!v.is_number_integer())
      fail(what + ": element " + std::to_string(i) + " is " + v.dump() + ", not an integer id");
    const int64_t id = v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)
                           ? INT64_MAX
                           : v.get<int64_t>();
    if (id < 0 || id >= vocab_size)
      fail("token id " + v.dump() + " is out of range (vocabulary size " +
           std::to_string(vocab_size) + ")");
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

bd3::cli::Registrar tokenize_command([](CLI::App& app) -> bd3::cli::Runner {
  struct Flags {
    TokenizerFlags tok;
    std::string text, file;
    bool text_given = false;
    bool allow_special = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand("tokenize", "Encode text to token ids (one JSON array)");
  f->tok.add_to(cmd);
  auto* text_opt = cmd->add_option("-p,--text", f->text, "the text to encode");
  cmd->add_option("-f,--file", f->file, "a file whose bytes to encode ('-': standard input)");
  cmd->add_flag("--allow-special", f->allow_special,
                "encode <|endoftext|> (and other special tokens) as special ids");
  return [f, text_opt] {
    const bool has_text = text_opt->count() > 0;
    if (has_text == !f->file.empty()) fail_usage("give exactly one of --text and --file");
    const text::Tokenizer tok = f->tok.load();
    std::string input =
        has_text ? f->text : bd3::cli::read_input(f->file, kMaxInputBytes, "input file");
    write_stdout(ids_to_json(tok.encode_parallel(input, f->allow_special)));
    return 0;
  };
});

bd3::cli::Registrar detokenize_command([](CLI::App& app) -> bd3::cli::Runner {
  struct Flags {
    TokenizerFlags tok;
    std::string ids, ids_file;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand("detokenize", "Decode token ids to bytes (written as they are)");
  f->tok.add_to(cmd);
  auto* ids_opt = cmd->add_option("--ids", f->ids, "a JSON array of token ids");
  cmd->add_option("-f,--ids-file", f->ids_file,
                  "a file holding a JSON array of token ids ('-': standard input)");
  return [f, ids_opt] {
    const bool has_ids = ids_opt->count() > 0;
    if (has_ids == !f->ids_file.empty()) fail_usage("give exactly one of --ids and --ids-file");
    const text::Tokenizer tok = f->tok.load();
    std::vector<int32_t> ids =
        has_ids ? ids_from_json(f->ids, "--ids", tok.vocab_size())
                : ids_from_json(bd3::cli::read_input(f->ids_file, kMaxInputBytes, "ids file"),
                                f->ids_file, tok.vocab_size());
    write_stdout(tok.decode(ids));
    return 0;
  };
});

bd3::cli::Registrar tokenizer_command([](CLI::App& app) -> bd3::cli::Runner {
  struct Flags {
    std::vector<std::string> data;
    int64_t vocab_size = 8192;
    int64_t min_pair_count = 2;
    int threads = 0;
    std::string out;
    bool quiet = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand("tokenizer", "Tokenizer tools");
  cmd->require_subcommand(1);
  auto* train = cmd->add_subcommand("train", "Train a GPT-2 style byte-level BPE tokenizer");
  train->add_option("--data", f->data, "training text file (repeatable)")->required();
  train
      ->add_option("--vocab-size", f->vocab_size,
                   "vocabulary size, including 256 bytes and <|endoftext|>")
      ->capture_default_str();
  train
      ->add_option("--min-pair-count", f->min_pair_count,
                   "stop early when the best pair occurs fewer times")
      ->capture_default_str();
  train->add_option("-t,--threads", f->threads, "threads for counting (0: all)");
  train
      ->add_option("-o,--out", f->out,
                   "output directory (vocab.json, merges.txt, and the Hugging Face files "
                   "tokenizer.json, tokenizer_config.json, special_tokens_map.json)")
      ->required();
  train->add_flag("--quiet", f->quiet, "no progress on stderr");
  return [f, train] {
    if (!train->parsed()) fail_usage("unknown tokenizer subcommand");
    if (f->vocab_size < 257 || f->vocab_size > int64_t(text::kMaxVocabSize))
      fail_usage(fmt::format("--vocab-size must be in 257..{}, got {}", text::kMaxVocabSize,
                             f->vocab_size));
    if (f->min_pair_count < 1) fail_usage("--min-pair-count must be at least 1");
    if (f->threads < 0 || f->threads > 1024) fail_usage("--threads must be in 0..1024");
    text::BpeTrainOptions options;
    options.vocab_size = static_cast<int32_t>(f->vocab_size);
    options.min_pair_count = f->min_pair_count;
    options.threads = f->threads;
    std::vector<std::filesystem::path> files(f->data.begin(), f->data.end());
    bd3::cli::check_data_files(files);
    // The merges' progress: the pair counting before them is reported as one line.
    auto progress = std::make_shared<bd3::cli::Progress>("bd3 tokenizer train", 1, f->quiet);
    progress->message("bd3 tokenizer train: counting the pairs of " + std::to_string(files.size()) +
                      " file(s)");
    // The ETA from the merges' own pace (the first report comes after the counting).
    options.on_progress = [progress, first = std::optional<std::pair<int32_t, double>>()](
                              const text::BpeTrainProgress& p) mutable {
      const double now =
          std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
              .count();
      if (!first) first.emplace(p.merges_done, now);
      const int32_t done = p.merges_done - first->first;
      const double eta =
          done > 0 ? (now - first->second) / done * (p.merges_target - p.merges_done) : -1.0;
      progress->set_total(p.merges_target);
      progress->update(p.merges_done, fmt::format("merges (last pair count {})", p.pair_count),
                       eta);
    };
    const auto start = std::chrono::steady_clock::now();
    text::BpeTrainStats stats;
    text::train_bpe_files(files, f->out, options, &stats);
    progress->finish();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    nlohmann::json summary = {{"vocab_size", stats.vocab_size},
                              {"merges", stats.merges},
                              {"bytes", stats.bytes},
                              {"pieces", stats.pieces},
                              {"unique_pieces", stats.unique_pieces},
                              {"seconds", std::round(seconds * 1000) / 1000},
                              {"out", f->out}};
    write_stdout(summary.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
    return 0;
  };
});

}  // namespace
