// The bd3 program as llama.cpp users type it: short flags and aliases (-m, -p, -f, -n, -s,
// -t, --temp, -o) give the output of their long forms; `-` reads standard input;
// `bd3 --version`; `bd3 sample` streams each block to stdout as it is committed; progress
// on stderr for sample, eval-gen and tokenizer train (none under --quiet); --data naming a
// directory; --tokenizer naming a training output directory.
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <sys/wait.h>
#include <unistd.h>

#include <bd3/text/tokenizer.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cli_common.hpp"

namespace fs = std::filesystem;
using bd3::test::CliOptions;
using bd3::test::CliRun;
using bd3::test::run_cli_measured;
using bd3::test::TempDir;

namespace {

CliRun bd3_run(const std::vector<std::string>& args, const std::string& stdin_path = "/dev/null") {
  CliOptions o;
  o.timeout_seconds = 120;
  o.stdin_path = stdin_path;
  return run_cli_measured(args, o);
}

// The stdout of a run that must succeed.
std::string ok_out(const std::vector<std::string>& args,
                   const std::string& stdin_path = "/dev/null") {
  const CliRun r = bd3_run(args, stdin_path);
  INFO(bd3::test::join_args(args) << "\nexit " << r.exit_code << "\nstderr: " << r.err);
  REQUIRE(r.exit_code == 0);
  return r.out;
}

nlohmann::json json_line(const std::string& out) {
  return nlohmann::json::parse(out.substr(0, out.find('\n')));
}

// Shared by the tests of this process: text, a tiny trained model (byte tokenizer), a BPE
// tokenizer, samples for eval-gen.
struct World {
  TempDir dir{"cli_flags"};
  fs::path data = dir / "data.txt", model = dir / "run", bpe = dir / "bpe",
           samples = dir / "samples.jsonl", judge = dir / "judge", slow_model = dir / "slow";
  World() {
    {
      std::ofstream f(data);
      for (int i = 0; i < 300; ++i)
        f << "In the beginning was the word " << i << ", and the word was with the text.\n";
    }
    const std::vector<std::string> common = {
        "train",    "--data",  data.string(), "--tokenizer", "bytes",   "--length", "64",
        "--layers", "1",       "--hidden",    "32",          "--heads", "2",        "--batch",
        "4",        "--steps", "3",           "--threads",   "1",       "--quiet"};
    auto with = [&](std::vector<std::string> extra) {
      auto a = common;
      a.insert(a.end(), extra.begin(), extra.end());
      return a;
    };
    (void)ok_out(with({"--out", model.string(), "--block-size", "4"}));
    (void)ok_out(with({"--out", judge.string(), "--block-size", "1"}));
    (void)ok_out({"train", "--data",   data.string(), "--tokenizer",      "bytes", "--length",
                  "128",   "--layers", "2",           "--hidden",         "128",   "--heads",
                  "2",     "--batch",  "1",           "--steps",          "1",     "--threads",
                  "1",     "--quiet",  "--out",       slow_model.string()});
    (void)ok_out({"tokenizer", "train", "--data", data.string(), "--vocab-size", "300", "--out",
                  bpe.string(), "--quiet"});
    std::ofstream(samples) << ok_out({"sample", "--model", model.string(), "--length", "64",
                                      "--batch", "3", "--json", "--threads", "1", "--seed", "2"});
  }
};

const World& world() {
  static const World w;
  return w;
}

}  // namespace

TEST_CASE("bd3 --version and bd3 version", "[cli][flags]") {
  const std::string a = ok_out({"--version"}), b = ok_out({"version"});
  CHECK(a == b);
  CHECK(a.rfind("bd3 ", 0) == 0);
  for (const char* key : {"git revision: ", "compiler: ", "simd: ", "openmp: ", "mpi: "})
    CHECK(a.find(key) != std::string::npos);
  CHECK(bd3::test::count_lines(a) == 6);
  // The version with the subcommand's flags is still a usage error, one line.
  const CliRun r = bd3_run({"version", "--bogus"});
  CHECK(r.exit_code == 2);
  CHECK(bd3::test::one_line(r.err));
}

TEST_CASE("sample: short flags give the long forms' output", "[cli][flags]") {
  const auto& w = world();
  const std::string m = w.model.string();
  // "In the": BOS + 6 bytes, so -n 33 is --length 40.
  const std::string long_form =
      ok_out({"sample", "--model", m, "--seed", "3", "--length", "40", "--threads", "1",
              "--temperature", "0.7", "--prompt", "In the"});
  CHECK(long_form.rfind("In the", 0) == 0);
  CHECK(ok_out({"sample", "-m", m, "-s", "3", "-n", "33", "-t", "1", "--temp", "0.7", "-p",
                "In the"}) == long_form);
  // The prompt from a file, and from standard input.
  const fs::path prompt = w.dir / "prompt.txt";
  bd3::test::spit(prompt, "In the");
  CHECK(ok_out({"sample", "-m", m, "-s", "3", "-n", "33", "-t", "1", "--temp", "0.7", "-f",
                prompt.string()}) == long_form);
  CHECK(ok_out({"sample", "-m", m, "-s", "3", "-n", "33", "-t", "1", "--temp", "0.7", "-f", "-"},
               prompt.string()) == long_form);
  // Another seed or temperature gives another sample: the flags reach the sampler.
  CHECK(ok_out({"sample", "-m", m, "-s", "4", "-n", "33", "-t", "1", "--temp", "0.7", "-p",
                "In the"}) != long_form);
  // -n counts the new tokens only; --length and -n, -p and -f exclude each other.
  const auto j = json_line(ok_out({"sample", "-m", m, "-n", "5", "-p", "abc", "--json"}));
  CHECK(j["ids"].size() == 1 + 3 + 5);
  CHECK(j["generated"] == 5);
  for (const auto& bad :
       std::vector<std::vector<std::string>>{{"sample", "-m", m, "-n", "5", "--length", "9"},
                                             {"sample", "-m", m, "-p", "a", "-f", prompt.string()},
                                             {"sample", "-m", m, "-n", "0"}}) {
    const CliRun r = bd3_run(bad);
    INFO(bd3::test::join_args(bad) << ": " << r.err);
    CHECK(r.exit_code == 2);
    CHECK(bd3::test::one_line(r.err));
  }
}

TEST_CASE("train, eval, forward, inspect, bench, eval-gen: short flags", "[cli][flags]") {
  const auto& w = world();
  const std::string m = w.model.string();
  // train: -s -t -o give the same weights as --seed --threads --out.
  const std::vector<std::string> base = {"train",       "--data",   w.data.string(),
                                         "--tokenizer", "bytes",    "--length",
                                         "32",          "--layers", "1",
                                         "--hidden",    "16",       "--heads",
                                         "2",           "--batch",  "2",
                                         "--steps",     "2",        "--quiet"};
  auto train = [&](std::vector<std::string> extra) {
    auto a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return ok_out(a);
  };
  train({"--seed", "9", "--threads", "1", "--out", (w.dir / "t_long").string()});
  train({"-s", "9", "-t", "1", "-o", (w.dir / "t_short").string()});
  train({"-s", "10", "-t", "1", "-o", (w.dir / "t_other").string()});
  const auto weights = [&](const char* name) {
    return bd3::test::slurp(w.dir / name / "latest" / "model.safetensors");
  };
  CHECK(!weights("t_long").empty());
  CHECK(weights("t_short") == weights("t_long"));
  CHECK(weights("t_other") != weights("t_long"));

  // eval: -m -s -t.
  const auto e_long = json_line(ok_out({"eval", "--model", m, "--data", w.data.string(), "--seed",
                                        "5", "--threads", "1", "--quiet", "--max-sequences", "8"}));
  const auto e_short = json_line(ok_out({"eval", "-m", m, "--data", w.data.string(), "-s", "5",
                                         "-t", "1", "--quiet", "--max-sequences", "8"}));
  CHECK(e_short["nelbo"] == e_long["nelbo"]);
  CHECK(e_short["model"] == e_long["model"]);

  // forward: -m -o -t write the same logits.
  const fs::path b4 = fs::path(BD3_FIXTURES_DIR) / "parity" / "b4";
  const std::string cases = (b4 / "cases.json").string();
  const std::string f_long = ok_out({"forward", "--model", b4.string(), "--cases", cases, "--out",
                                     (w.dir / "f_long").string(), "--threads", "1"});
  const std::string f_short = ok_out({"forward", "-m", b4.string(), "--cases", cases, "-o",
                                      (w.dir / "f_short").string(), "-t", "1"});
  CHECK(f_short == f_long);
  CHECK(bd3::test::slurp(w.dir / "f_short" / "train_logits.npy") ==
        bd3::test::slurp(w.dir / "f_long" / "train_logits.npy"));

  // inspect -m; bench -m -t.
  CHECK(ok_out({"inspect", "-m", m}) == ok_out({"inspect", "--model", m}));
  const auto bench =
      json_line(ok_out({"bench", "-m", m, "-t", "1", "--what", "forward", "--seconds", "0"}));
  CHECK(bench["threads"] == 1);
  CHECK(bench["model"] == m);

  // eval-gen -t.
  const auto g_long = json_line(ok_out({"eval-gen", "--judge", w.judge.string(), "--samples",
                                        w.samples.string(), "--threads", "1", "--quiet"}));
  const auto g_short = json_line(ok_out({"eval-gen", "--judge", w.judge.string(), "--samples",
                                         w.samples.string(), "-t", "1", "--quiet"}));
  CHECK(g_short == g_long);
  CHECK(g_long["samples"] == 3);
}

TEST_CASE("tokenize, detokenize, tokenizer train: short flags and standard input", "[cli][flags]") {
  const auto& w = world();
  const std::string tok = w.bpe.string();
  const std::string text = "In the beginning was the word 7.";
  const fs::path text_file = w.dir / "text.txt";
  bd3::test::spit(text_file, text);
  const std::string ids = ok_out({"tokenize", "--tokenizer", tok, "--text", text});
  CHECK(ids.size() > 3);
  CHECK(ok_out({"tokenize", "--tokenizer", tok, "-p", text}) == ids);
  CHECK(ok_out({"tokenize", "--tokenizer", tok, "--file", text_file.string()}) == ids);
  CHECK(ok_out({"tokenize", "--tokenizer", tok, "-f", text_file.string()}) == ids);
  CHECK(ok_out({"tokenize", "--tokenizer", tok, "-f", "-"}, text_file.string()) == ids);

  const fs::path ids_file = w.dir / "ids.json";
  bd3::test::spit(ids_file, ids);
  CHECK(ok_out({"detokenize", "--tokenizer", tok, "--ids-file", ids_file.string()}) == text);
  CHECK(ok_out({"detokenize", "--tokenizer", tok, "-f", ids_file.string()}) == text);
  CHECK(ok_out({"detokenize", "--tokenizer", tok, "-f", "-"}, ids_file.string()) == text);

  // tokenizer train: -o -t write the same files as --out --threads.
  ok_out({"tokenizer", "train", "--data", w.data.string(), "--vocab-size", "280", "--threads", "1",
          "--out", (w.dir / "tok_long").string(), "--quiet"});
  ok_out({"tokenizer", "train", "--data", w.data.string(), "--vocab-size", "280", "-t", "1", "-o",
          (w.dir / "tok_short").string(), "--quiet"});
  for (const char* file : {"vocab.json", "merges.txt", "tokenizer.json"}) {
    INFO(file);
    CHECK(!bd3::test::slurp(w.dir / "tok_long" / file).empty());
    CHECK(bd3::test::slurp(w.dir / "tok_short" / file) ==
          bd3::test::slurp(w.dir / "tok_long" / file));
  }
}

TEST_CASE("a directory given as --data is refused as one, and --tokenizer takes a training output",
          "[cli][flags]") {
  const auto& w = world();
  const std::string dir = w.dir.path().string();
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"train", "--data", dir, "--out", (w.dir / "never").string(), "--quiet"},
           {"eval", "-m", w.model.string(), "--data", dir, "--quiet"},
           {"tokenizer", "train", "--data", dir, "-o", (w.dir / "never2").string()},
           {"tokenize", "--tokenizer", w.bpe.string(), "-f", dir}}) {
    const CliRun r = bd3_run(args);
    INFO(bd3::test::join_args(args) << "\nstderr: " << r.err);
    CHECK(r.exit_code == 1);
    CHECK(bd3::test::one_line(r.err));
    CHECK(r.err.find("is a directory") != std::string::npos);
    CHECK(r.err.find("no such file") == std::string::npos);
  }

  // A training output directory holds its tokenizer in the checkpoint (OUT/latest): the
  // same ids as from the checkpoint directory itself.
  const std::string in_ckpt = (w.model / "latest").string();
  const std::string ids = ok_out({"tokenize", "--tokenizer", in_ckpt, "-p", "word"});
  CHECK(ok_out({"tokenize", "--tokenizer", w.model.string(), "-p", "word"}) == ids);
  const auto e1 =
      json_line(ok_out({"eval", "-m", w.model.string(), "--data", w.data.string(), "--tokenizer",
                        w.model.string(), "--quiet", "-t", "1", "--max-sequences", "4"}));
  const auto e2 = json_line(ok_out({"eval", "-m", w.model.string(), "--data", w.data.string(),
                                    "--quiet", "-t", "1", "--max-sequences", "4"}));
  CHECK(e1["nelbo"] == e2["nelbo"]);
}

namespace {

// `bd3 args` with stdout into a pipe this process reads: every chunk with the time it
// arrived (seconds since the start). stderr goes to a pseudo-terminal (as when a user
// watches the progress) whose output is collected too.
struct Chunk {
  double at;
  std::string bytes;
};
struct StreamedRun {
  int exit_code = -1;
  std::vector<Chunk> chunks;
  double end = 0;  // when stdout reached its end
  std::string out, err;
};

StreamedRun run_streamed(const std::vector<std::string>& args) {
  using Clock = std::chrono::steady_clock;
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  int pty_master = -1, pty_slave = -1;
  REQUIRE(::openpty(&pty_master, &pty_slave, nullptr, nullptr, nullptr) == 0);
  std::vector<std::string> argv{BD3_CLI_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> cargs;
  for (auto& a : argv) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  const auto start = Clock::now();
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int in = ::open("/dev/null", O_RDONLY);
    ::dup2(in, 0), ::dup2(fds[1], 1), ::dup2(pty_slave, 2);
    ::close(fds[0]), ::close(fds[1]), ::close(pty_master), ::close(pty_slave);
    ::execv(cargs[0], cargs.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  ::close(pty_slave);
  StreamedRun r;
  char buffer[1 << 16];
  bool out_open = true, err_open = true;
  while (out_open) {
    pollfd p[2] = {{fds[0], POLLIN, 0}, {err_open ? pty_master : -1, POLLIN, 0}};
    if (::poll(p, 2, 60000) <= 0) break;  // a minute without output: give up
    if (p[1].revents) {
      const ssize_t n = ::read(pty_master, buffer, sizeof buffer);
      if (n > 0)
        r.err.append(buffer, size_t(n));
      else
        err_open = false;  // EIO once the child's end is closed
    }
    if (!p[0].revents) continue;
    const ssize_t n = ::read(fds[0], buffer, sizeof buffer);
    const double at = std::chrono::duration<double>(Clock::now() - start).count();
    if (n <= 0) {
      r.end = at;
      out_open = false;
      break;
    }
    r.chunks.push_back({at, std::string(buffer, size_t(n))});
    r.out.append(buffer, size_t(n));
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  // What the child wrote to the terminal after its stdout closed.
  while (err_open) {
    pollfd p{pty_master, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) break;
    const ssize_t n = ::read(pty_master, buffer, sizeof buffer);
    if (n <= 0) break;
    r.err.append(buffer, size_t(n));
  }
  ::close(fds[0]);
  ::close(pty_master);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

}  // namespace

TEST_CASE("sample streams each block to stdout as it is committed", "[cli][stream]") {
  const auto& w = world();
  // A model of 2 layers x 128 recomputing its whole window at every step (no KV cache):
  // each block takes a while, about 1.5 s for the 60 blocks on one thread. 240 tokens stay
  // below the degenerate-sample rule's 256-token window.
  const std::vector<std::string> args = {
      "sample", "-m", w.slow_model.string(), "-n", "240",   "-s", "1",
      "-t",     "1",  "--no-kv-cache",       "-p", "In the"};
  const StreamedRun r = run_streamed(args);
  INFO("exit " << r.exit_code << ", " << r.chunks.size() << " chunks, end at " << r.end
               << " s\nstderr: " << r.err);
  REQUIRE(r.exit_code == 0);
  REQUIRE(r.chunks.size() >= 2);
  INFO("first chunk at " << r.chunks.front().at << " s, last at " << r.chunks.back().at << " s");
  // The prompt and the first blocks arrive long before the last block: they were written
  // as they were generated, not at the end.
  CHECK(r.chunks.front().bytes.rfind("In the", 0) == 0);
  double generated_at = -1;  // when the first generated byte (after the prompt) arrived
  size_t received = 0;
  for (const auto& c : r.chunks)
    if ((received += c.bytes.size()) > 6 && generated_at < 0) generated_at = c.at;
  INFO("first generated bytes at " << generated_at << " s");
  CHECK(r.chunks.size() >= 10);
  CHECK(r.chunks.back().at - generated_at > 0.5 * r.end);

  // What streamed is the sample: the text of the same draw's ids (after BOS), and a newline.
  std::vector<std::string> json_args = args;
  json_args.push_back("--json");
  const auto j = json_line(ok_out(json_args));
  auto ids = j["ids"].get<std::vector<int32_t>>();
  REQUIRE(ids.size() == 1 + 6 + 240);
  const auto bytes = bd3::text::Tokenizer::bytes();
  CHECK(r.out == bytes.decode(std::span<const int32_t>(ids).subspan(1)) + "\n");

  // Progress on the terminal (stdout is not one: the bar is drawn), with an ETA.
  CHECK(r.err.find("bd3 sample") != std::string::npos);
  CHECK(r.err.find("ETA") != std::string::npos);
  CHECK(r.err.find("\033[K") != std::string::npos);
  // --quiet: nothing on the terminal, the same stdout.
  std::vector<std::string> quiet_args = args;
  quiet_args.push_back("--quiet");
  const StreamedRun q = run_streamed(quiet_args);
  CHECK(q.exit_code == 0);
  CHECK(q.err.empty());
  CHECK(q.out == r.out);
  // A fixed-length sample the degenerate-sample rule rejects (greedy decoding repeats
  // itself: a unigram entropy below 4 nats over 256 tokens): each attempt's streamed line ends, the
  // redraw starts on the next; after the last attempt, the error.
  const CliRun d = bd3_run({"sample", "-m", w.model.string(), "-n", "300", "-t", "1",
                            "--max-retries", "1", "--temp", "0"});
  INFO("stdout: " << d.out << "\nstderr: " << d.err);
  CHECK(d.exit_code == 1);
  CHECK(bd3::test::count_lines(d.out) == 2);
  CHECK(d.err.find("degenerate sample (attempt 1), redrawing\n") != std::string::npos);
  CHECK(d.err.find("degenerate sample (attempt 2)\n") != std::string::npos);
  CHECK(d.err.rfind("bd3: sampling failed") != std::string::npos);
  const CliRun dq = bd3_run({"sample", "-m", w.model.string(), "-n", "300", "-t", "1",
                             "--max-retries", "1", "--temp", "0", "--quiet"});
  CHECK(dq.exit_code == 1);
  CHECK(bd3::test::one_line(dq.err));
  CHECK(dq.out == d.out);
  // stderr not a terminal: a run this short (under a second) writes nothing there.
  const CliRun f = bd3_run({"sample", "-m", w.model.string(), "-n", "20", "-t", "1"});
  CHECK(f.exit_code == 0);
  CHECK(f.err.empty());
}

TEST_CASE("eval-gen and tokenizer train report progress with an ETA, none under --quiet",
          "[cli][stream]") {
  const auto& w = world();
  const CliRun g = bd3_run(
      {"eval-gen", "--judge", w.judge.string(), "--samples", w.samples.string(), "-t", "1"});
  CHECK(g.exit_code == 0);
  CHECK(g.err.find("bd3 eval-gen") != std::string::npos);
  CHECK(g.err.find("ETA") != std::string::npos);
  // Scored in chunks of whole samples: an id the judge does not have is still reported
  // with its sample's place in the file.
  {
    std::ifstream in(w.samples);
    const std::string first = [&] {
      std::string line;
      std::getline(in, line);
      return line;
    }();
    std::string lines;
    for (int i = 0; i < 20; ++i) {
      auto row = nlohmann::json::parse(first);
      if (i == 13) row["ids"][5] = 258;  // the byte tokenizer's MASK
      lines += row.dump() + "\n";
    }
    bd3::test::spit(w.dir / "bad_samples.jsonl", lines);
    const CliRun bad = bd3_run({"eval-gen", "--judge", w.judge.string(), "--samples",
                                (w.dir / "bad_samples.jsonl").string(), "-t", "1", "--batch", "2"});
    INFO(bad.err);
    CHECK(bad.exit_code == 1);
    CHECK(bd3::test::one_line(bad.err));
    CHECK(bad.err.find("sample 13 holds id 258") != std::string::npos);
  }
  const CliRun t = bd3_run({"tokenizer", "train", "--data", w.data.string(), "--vocab-size", "300",
                            "-o", (w.dir / "tok_progress").string()});
  CHECK(t.exit_code == 0);
  CHECK(t.err.find("merges") != std::string::npos);
  CHECK(t.err.find("ETA") != std::string::npos);
  const CliRun tq = bd3_run({"tokenizer", "train", "--data", w.data.string(), "--vocab-size", "300",
                             "-o", (w.dir / "tok_quiet").string(), "--quiet"});
  CHECK(tq.exit_code == 0);
  CHECK(tq.err.empty());
}
