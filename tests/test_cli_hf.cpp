// Hugging Face's own client reads what bd3 writes: the tokenizer files of
// Gpt2Tokenizer::save and `bd3 tokenizer train` (tokenizer.json with its model,
// pre-tokenizer, decoder and post-processor, tokenizer_config.json,
// special_tokens_map.json), and a checkpoint directory of `bd3 train`. The client is the
// npm package @huggingface/transformers, run by tests/hf/run.sh (which installs it from the
// npm registry): it must encode the GPT-2 cases and a corpus sample to bd3's ids and
// decode them back. Without node, npm or the registry this test fails and says so.
#include <sys/wait.h>

#include <bd3/text/tokenizer.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "cli_common.hpp"

namespace fs = std::filesystem;
using bd3::test::CliRun;
using bd3::test::TempDir;

namespace {

const fs::path kFixtures = BD3_FIXTURES_DIR;
const fs::path kPeer = fs::path(BD3_TEST_DATA_DIR).parent_path() / "hf" / "run.sh";

nlohmann::json read_json(const fs::path& p) {
  return nlohmann::json::parse(bd3::test::slurp(p));
}

std::string ok_out(const std::vector<std::string>& args) {
  bd3::test::CliOptions o;
  o.timeout_seconds = 300;
  const CliRun r = bd3::test::run_cli_measured(args, o);
  INFO(bd3::test::join_args(args) << "\nexit " << r.exit_code << "\nstderr: " << r.err);
  REQUIRE(r.exit_code == 0);
  return r.out;
}

// About 64 KB of the corpus (scripts/get_corpus.sh; BD3_CORPUS names it), cut at a line
// end; without it, a text of the same kind written here.
std::string corpus_sample() {
  const char* env = std::getenv("BD3_CORPUS");
  std::string text;
  if (env && fs::is_regular_file(env)) {
    std::ifstream in(env, std::ios::binary);
    text.resize(64 * 1024);
    in.read(text.data(), std::streamsize(text.size()));
    text.resize(size_t(in.gcount()));
    text.resize(text.rfind('\n') + 1);
  }
  if (text.size() < 1000) {
    text.clear();
    for (int i = 0; i < 400; ++i)
      text += "1:" + std::to_string(i) +
              " And God said, Let there be light: and there was light. " +
              "Ye're \"quoted\" — naïve café's " + std::to_string(i * 37) + " words\n";
  }
  return text;
}

nlohmann::json cases_for(const bd3::text::Tokenizer& tok, const std::vector<std::string>& texts) {
  nlohmann::json cases = nlohmann::json::array();
  // Hugging Face's clients always match added tokens such as <|endoftext|>: bd3 with
  // allow_special is the same tokenization.
  for (const auto& t : texts) cases.push_back({{"text", t}, {"ids", tok.encode(t, true)}});
  return cases;
}

}  // namespace

TEST_CASE("Hugging Face's client reads bd3's tokenizers and checkpoints", "[cli][hf]") {
  const TempDir root("hf");
  std::vector<std::string> texts;
  const auto fixture_cases = read_json(kFixtures / "gpt2" / "cases.json");
  for (const auto& c : fixture_cases["cases"]) texts.push_back(c["text"].get<std::string>());
  const std::string sample = corpus_sample();
  texts.push_back(sample);
  texts.push_back("<|endoftext|>two documents<|endoftext|>");
  const fs::path data = root / "corpus.txt";
  bd3::test::spit(data, sample);

  // GPT-2's tokenizer as Gpt2Tokenizer::save writes it.
  const auto gpt2 = bd3::text::Gpt2Tokenizer::from_files(kFixtures / "gpt2" / "vocab.json",
                                                         kFixtures / "gpt2" / "merges.txt");
  gpt2.save(root / "gpt2");
  for (const char* f : {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                        "special_tokens_map.json"})
    CHECK(fs::is_regular_file(root / "gpt2" / f));
  const auto tj = read_json(root / "gpt2" / "tokenizer.json");
  for (const char* k : {"model", "pre_tokenizer", "decoder", "post_processor", "added_tokens"})
    CHECK(tj.contains(k));
  // bd3 reads its own tokenizer.json back to the same tokenizer.
  CHECK(bd3::text::Gpt2Tokenizer::from_tokenizer_json(root / "gpt2" / "tokenizer.json")
            .fingerprint() == gpt2.fingerprint());

  // A BPE trained by `bd3 tokenizer train`, and a model trained with it (its checkpoint
  // holds the tokenizer too).
  ok_out({"tokenizer", "train", "--data", data.string(), "--vocab-size", "400", "-o",
          (root / "bpe").string(), "--quiet"});
  ok_out({"train",
          "--data",
          data.string(),
          "--tokenizer",
          (root / "bpe").string(),
          "--length",
          "32",
          "--layers",
          "1",
          "--hidden",
          "16",
          "--heads",
          "2",
          "--batch",
          "2",
          "--steps",
          "1",
          "-t",
          "1",
          "-o",
          (root / "run").string(),
          "--quiet"});
  const auto bpe = bd3::text::Tokenizer::load_from(root / "bpe");
  const auto config = read_json(root / "run" / "latest" / "config.json");

  nlohmann::json spec;
  spec["root"] = root.path().string();
  spec["tokenizers"] = {
      {{"name", "gpt2"}, {"cases", cases_for(gpt2, texts)}},
      {{"name", "bpe"}, {"cases", cases_for(bpe, texts)}},
      {{"name", "run/latest"}, {"cases", cases_for(bpe, {texts.front(), sample})}},
  };
  nlohmann::json expect = nlohmann::json::object();
  for (const char* k : {"model_type", "block_size", "vocab_size", "model_length", "hidden_dim",
                        "n_blocks", "n_heads", "mask_index"})
    if (config.contains(k)) expect[k] = config[k];
  CHECK(expect.size() >= 7);
  spec["configs"] = {{{"name", "run/latest"}, {"expect", expect}}};
  const fs::path spec_file = root / "cases.json";
  bd3::test::spit(spec_file, spec.dump());

  const std::string out_file = (root / "peer_out").string(),
                    err_file = (root / "peer_err").string();
  const std::string cmd =
      kPeer.string() + " " + spec_file.string() + " >" + out_file + " 2>" + err_file;
  const int status = std::system(cmd.c_str());
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  const std::string out = bd3::test::slurp(out_file), err = bd3::test::slurp(err_file);
  INFO("tests/hf/run.sh exit " << code << "\nstdout: " << out << "\nstderr: " << err);
  if (code == 3) FAIL("the Hugging Face client could not be installed: " << err);
  REQUIRE(code == 0);
  const auto summary = nlohmann::json::parse(out);
  CHECK(summary["failures"] == 0);
  CHECK(summary["tokenizers"]["gpt2"]["cases"] == texts.size());
  CHECK(summary["tokenizers"]["bpe"]["ids"].get<int64_t>() > 1000);
  CHECK(summary["configs"]["run/latest"] == expect.size());
}
