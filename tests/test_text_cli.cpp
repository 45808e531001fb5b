// The bd3 program's text commands end to end: tokenize, detokenize, tokenizer train,
// and their exit codes (1 for bad input, 2 for bad usage).
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

const fs::path kGpt2Dir = fs::path(BD3_FIXTURES_DIR) / "gpt2";

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

void spit(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'')
      q.append("'\\''");
    else
      q.push_back(c);
  }
  q.push_back('\'');
  return q;
}

struct Result {
  int code;
  std::string out, err;
};

// A directory for this process's files, removed at exit.
fs::path scratch() {
  static const struct Dir {
    fs::path path = fs::temp_directory_path() / ("bd3_test_text_cli_" + std::to_string(::getpid()));
    Dir() { fs::create_directories(path); }
    ~Dir() {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  } dir;
  return dir.path;
}

Result run(const std::vector<std::string>& args) {
  std::string cmd = shell_quote(BD3_CLI_PATH);
  for (const auto& a : args) {
    cmd += ' ';
    cmd += shell_quote(a);
  }
  const fs::path out = scratch() / "stdout", err = scratch() / "stderr";
  cmd.append(" >").append(shell_quote(out.string()));
  cmd.append(" 2>").append(shell_quote(err.string())).append(" </dev/null");
  const int status = std::system(cmd.c_str());
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return {code, slurp(out), slurp(err)};
}

std::vector<std::string> gpt2_flags() {
  return {"--vocab", (kGpt2Dir / "vocab.json").string(), "--merges",
          (kGpt2Dir / "merges.txt").string()};
}

std::vector<std::string> cat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

TEST_CASE("cli: tokenize prints the ids as one JSON array on one line", "[text][cli]") {
  auto r = run(cat({"tokenize"}, cat(gpt2_flags(), {"--text", "Hello, world!"})));
  CHECK(r.code == 0);
  CHECK(r.out == "[15496,11,995,0]\n");
  CHECK(r.err.empty());
  r = run(
      {"tokenize", "--tokenizer", kGpt2Dir.string(), "--text", "<|endoftext|>", "--allow-special"});
  CHECK(r.out == "[50256]\n");
  r = run({"tokenize", "--tokenizer", kGpt2Dir.string(), "--text", "<|endoftext|>"});
  CHECK(r.out == "[27,91,437,1659,5239,91,29]\n");
  r = run({"tokenize", "--tokenizer", kGpt2Dir.string(), "--text", ""});
  CHECK(r.out == "[]\n");
}

TEST_CASE("cli: tokenize --file and detokenize round-trip arbitrary bytes", "[text][cli]") {
  std::mt19937_64 rng(17);
  std::string bytes(20000, '\0');
  for (auto& c : bytes) c = static_cast<char>(rng());
  bytes += "\nplain text, then a NUL\0 and \xff\xfe.";
  const fs::path in = scratch() / "input.bin";
  spit(in, bytes);
  auto r = run(cat({"tokenize", "--file", in.string()}, gpt2_flags()));
  REQUIRE(r.code == 0);
  REQUIRE(r.out.size() > 2);
  CHECK(r.out.back() == '\n');
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
  auto ids = nlohmann::json::parse(r.out);
  REQUIRE(ids.is_array());
  spit(scratch() / "ids.json", r.out);
  auto d = run(cat({"detokenize", "--ids-file", (scratch() / "ids.json").string()}, gpt2_flags()));
  CHECK(d.code == 0);
  CHECK(d.out == bytes);  // exactly: binary-safe, no newline added
  // --ids on the command line.
  d = run(cat({"detokenize", "--ids", "[15496, 11, 995, 0]"}, gpt2_flags()));
  CHECK(d.code == 0);
  CHECK(d.out == "Hello, world!");
  d = run({"detokenize", "--tokenizer", kGpt2Dir.string(), "--ids", "[50256]"});
  CHECK(d.out == "<|endoftext|>");
}

TEST_CASE("cli: tokenizer train writes a tokenizer that tokenize reads", "[text][cli]") {
  std::string text;
  std::mt19937_64 rng(2);
  static const char* kWords[] = {"in",    "the",   "beginning", "God", "created", "heaven", "and",
                                 "earth", "light", "darkness",  "was", "upon",    "face"};
  while (text.size() < 100000) {
    text += kWords[rng() % 13];
    text += rng() % 10 == 0 ? ".\n" : " ";
  }
  const fs::path data = scratch() / "train.txt", out = scratch() / "tok";
  spit(data, text);
  auto r = run({"tokenizer", "train", "--data", data.string(), "--vocab-size", "300", "--out",
                out.string()});
  REQUIRE(r.code == 0);
  CHECK(r.err.find("merges") != std::string::npos);  // progress on stderr
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
  auto summary = nlohmann::json::parse(r.out);
  CHECK(summary.at("vocab_size") == 300);
  CHECK(summary.at("merges") == 300 - 257);
  CHECK(summary.at("bytes") == text.size());
  CHECK(fs::exists(out / "vocab.json"));
  CHECK(fs::exists(out / "merges.txt"));
  const std::string vocab1 = slurp(out / "vocab.json"), merges1 = slurp(out / "merges.txt");
  // Deterministic: a second run writes the same files.
  r = run({"tokenizer", "train", "--data", data.string(), "--vocab-size", "300", "--out",
           out.string()});
  CHECK(r.code == 0);
  CHECK(slurp(out / "vocab.json") == vocab1);
  CHECK(slurp(out / "merges.txt") == merges1);

  auto t = run({"tokenize", "--tokenizer", out.string(), "--text", "In the beginning"});
  REQUIRE(t.code == 0);
  auto d = run({"detokenize", "--tokenizer", out.string(), "--ids", t.out});
  CHECK(d.out == "In the beginning");
  t = run({"tokenize", "--vocab", (out / "vocab.json").string(), "--merges",
           (out / "merges.txt").string(), "--text", "<|endoftext|>", "--allow-special"});
  CHECK(t.out == "[299]\n");
}

TEST_CASE("cli: bad input exits 1, bad usage exits 2, one line on stderr", "[text][cli]") {
  auto one_line = [](const Result& r) {
    return !r.err.empty() && r.err.find('\n') == r.err.size() - 1;
  };
  const fs::path bad_json = scratch() / "bad.json";
  spit(bad_json, "{\"a\": ");
  const std::vector<std::vector<std::string>> input_errors = {
      cat({"detokenize", "--ids", "[50257]"}, gpt2_flags()),
      cat({"detokenize", "--ids", "[-1]"}, gpt2_flags()),
      cat({"detokenize", "--ids", "[1,"}, gpt2_flags()),
      cat({"detokenize", "--ids", "{\"a\": 1}"}, gpt2_flags()),
      cat({"detokenize", "--ids", "[1.5]"}, gpt2_flags()),
      cat({"detokenize", "--ids", "[99999999999999999999]"}, gpt2_flags()),
      {"tokenize", "--vocab", bad_json.string(), "--merges", (kGpt2Dir / "merges.txt").string(),
       "--text", "a"},
      {"tokenize", "--vocab", (scratch() / "missing.json").string(), "--merges",
       (kGpt2Dir / "merges.txt").string(), "--text", "a"},
      cat({"tokenize", "--file", (scratch() / "missing.txt").string()}, gpt2_flags()),
      {"tokenize", "--tokenizer", (scratch() / "no_dir").string(), "--text", "a"},
      {"tokenizer", "train", "--data", (scratch() / "missing.txt").string(), "--vocab-size", "300",
       "--out", (scratch() / "o").string()},
  };
  for (const auto& args : input_errors) {
    auto r = run(args);
    INFO(args[0] << " " << args[1] << " " << args[2] << ": " << r.err);
    CHECK(r.code == 1);
    CHECK(one_line(r));
    CHECK(r.out.empty());
  }
  auto r = run(cat({"detokenize", "--ids", "[50257]"}, gpt2_flags()));
  CHECK(r.err.find("50257") != std::string::npos);

  const std::vector<std::vector<std::string>> usage_errors = {
      cat({"tokenize"}, gpt2_flags()),                                     // no text
      cat({"tokenize", "--text", "a", "--file", "f"}, gpt2_flags()),       // both
      {"tokenize", "--text", "a"},                                         // no tokenizer
      {"tokenize", "--vocab", "v.json", "--text", "a"},                    // no merges
      cat({"tokenize", "--tokenizer", "d", "--text", "a"}, gpt2_flags()),  // both kinds
      cat({"detokenize"}, gpt2_flags()),                                   // no ids
      cat({"tokenize", "--text", "a", "--bogus"}, gpt2_flags()),           // unknown flag
      {"tokenizer"},                                                       // no subcommand
      {"tokenizer", "train", "--data", "x", "--vocab-size", "100", "--out", "o"},
      {"tokenizer", "train", "--data", "x", "--vocab-size", "abc", "--out", "o"},
      {"tokenizer", "train", "--vocab-size", "300", "--out", "o"},  // no data
  };
  for (const auto& args : usage_errors) {
    auto u = run(args);
    INFO(args[0] << " " << (args.size() > 1 ? args[1] : "") << ": " << u.err);
    CHECK(u.code == 2);
    CHECK(!u.err.empty());
    CHECK(u.out.empty());
  }
}
