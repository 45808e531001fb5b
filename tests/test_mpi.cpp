// Data-parallel training and evaluation under mpirun (include/bd3/mpi.hpp,
// train/data_parallel.hpp): N ranks give the bits of one process accumulating their
// micro-batches, checkpoints move between rank counts, a killed rank ends the run, and bad
// launches fail at once. Built only when CMake finds MPI; every run is `mpirun -np 2`.
#include <bd3/model/parameters.hpp>
#include <bd3/train/trainer_state.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "cli_common.hpp"

namespace fs = std::filesystem;
using bd3::test::ChildProcess;
using bd3::test::CliOptions;
using bd3::test::CliRun;
using bd3::test::TempDir;

namespace {

// `mpirun -np <ranks> bd3 <args>`; several programs (MPMD, one rank each) when `per_rank`
// is not empty.
CliRun mpirun(int ranks, const std::vector<std::string>& args,
              const std::vector<std::vector<std::string>>& per_rank = {}, double timeout = 300) {
  std::vector<std::string> argv{BD3_MPIEXEC, "--allow-run-as-root", "--oversubscribe", "--bind-to",
                                "none"};
  if (per_rank.empty()) {
    argv.insert(argv.end(), {"-np", std::to_string(ranks), BD3_CLI_PATH});
    argv.insert(argv.end(), args.begin(), args.end());
  } else {
    for (size_t r = 0; r < per_rank.size(); ++r) {
      if (r > 0) argv.push_back(":");
      argv.insert(argv.end(), {"-np", "1", BD3_CLI_PATH});
      argv.insert(argv.end(), args.begin(), args.end());
      argv.insert(argv.end(), per_rank[r].begin(), per_rank[r].end());
    }
  }
  CliOptions o;
  o.timeout_seconds = timeout;
  ChildProcess child(argv, o);
  return child.wait();
}

CliRun alone(const std::vector<std::string>& args) {
  CliOptions o;
  o.timeout_seconds = 300;
  return bd3::test::run_cli_measured(args, o);
}

// A small text whose sequences differ (numbers), enough for a few hundred sequences.
fs::path write_corpus(const TempDir& dir) {
  std::string text;
  for (int i = 0; i < 600; ++i)
    text += "Verse " + std::to_string(i) + ": and the " + std::to_string(i * 7919 % 1000) +
            " lights of the firmament divided the day from the night.\n";
  const auto path = dir / "corpus.txt";
  bd3::test::spit(path, text);
  return path;
}

std::vector<std::string> tiny_run(const fs::path& data, const fs::path& out) {
  return {"train",    "--data",   data.string(),  "--out",   out.string(),
          "--length", "32",       "--block-size", "4",       "--layers",
          "2",        "--hidden", "32",           "--heads", "2",
          "--cond",   "16",       "--batch",      "2",       "--threads",
          "1",        "--quiet",  "--dropout",    "0.1",     "--checkpoint-every",
          "0"};
}

std::vector<std::string> plus(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Every tensor of two training checkpoints (weights, EMA, both moments) and the trainer's
// counters, equal bit for bit; a difference names the tensor.
void require_same_checkpoint(const fs::path& a, const fs::path& b) {
  const auto x = bd3::train::load_training_checkpoint(a);
  const auto y = bd3::train::load_training_checkpoint(b);
  REQUIRE(x.config.to_json() == y.config.to_json());
  CHECK(x.state.step == y.state.step);
  CHECK(x.state.samples_seen == y.state.samples_seen);
  CHECK(x.state.adam_step == y.state.adam_step);
  CHECK(x.state.ema_updates == y.state.ema_updates);
  const bd3::ParameterLayout layout(x.config);
  const std::pair<const char*, std::pair<const std::vector<float>*, const std::vector<float>*>>
      buffers[] = {{"weights", {&x.weights, &y.weights}},
                   {"EMA", {&x.model, &y.model}},
                   {"exp_avg", {&x.exp_avg, &y.exp_avg}},
                   {"exp_avg_sq", {&x.exp_avg_sq, &y.exp_avg_sq}}};
  int compared = 0;
  for (const auto& [what, pair] : buffers) {
    REQUIRE(pair.first->size() == pair.second->size());
    for (const auto& e : layout.entries()) {
      INFO(what << " " << e.name);
      CHECK(std::memcmp(pair.first->data() + e.offset, pair.second->data() + e.offset,
                        size_t(e.size) * sizeof(float)) == 0);
      ++compared;
    }
  }
  CHECK(compared == 4 * int(layout.entries().size()));
}

}  // namespace

TEST_CASE(
    "2 ranks end with the weights and optimizer state of one process accumulating their "
    "micro-batches",
    "[cli][mpi]") {
  const TempDir dir("mpi_identity");
  const auto data = write_corpus(dir);
  for (int per_rank : {1, 2}) {
    INFO("--accumulate " << per_rank << " per rank");
    const auto one = dir / ("one" + std::to_string(per_rank));
    const auto two = dir / ("two" + std::to_string(per_rank));
    const auto a = alone(
        plus(tiny_run(data, one), {"--steps", "3", "--accumulate", std::to_string(2 * per_rank)}));
    REQUIRE(a.exit_code == 0);
    const auto b = mpirun(
        2, plus(tiny_run(data, two), {"--steps", "3", "--accumulate", std::to_string(per_rank)}));
    INFO(b.err);
    REQUIRE(b.exit_code == 0);
    require_same_checkpoint(one, two);
    // Rank 0 alone printed the summary and wrote metrics (the loss of every step equal).
    CHECK(bd3::test::count_lines(b.out) == 1);
    std::ifstream ma(one / "metrics.jsonl"), mb(two / "metrics.jsonl");
    std::string la, lb;
    int lines = 0;
    while (std::getline(ma, la) && std::getline(mb, lb)) {
      const auto ja = nlohmann::json::parse(la), jb = nlohmann::json::parse(lb);
      CHECK(ja["loss"] == jb["loss"]);
      CHECK(ja["grad_norm"] == jb["grad_norm"]);
      CHECK(jb.contains("reduce_wait_s"));
      ++lines;
    }
    CHECK(lines == 3);
  }
  // Summed after the backward instead of during it: the same bits.
  const auto late = dir / "late";
  REQUIRE(mpirun(2, plus(tiny_run(data, late), {"--steps", "3", "--no-overlap"})).exit_code == 0);
  require_same_checkpoint(dir / "one1", late);
}

TEST_CASE("a checkpoint moves between 1 and 2 ranks with the same global batch, bit for bit",
          "[cli][mpi]") {
  const TempDir dir("mpi_resume");
  const auto data = write_corpus(dir);
  const auto straight = dir / "straight", from_two = dir / "from_two", from_one = dir / "from_one";
  REQUIRE(alone(plus(tiny_run(data, straight), {"--steps", "4", "--accumulate", "2"})).exit_code ==
          0);
  // 2 ranks x batch 2 for 2 steps, then 1 rank x batch 2 x accumulate 2.
  REQUIRE(mpirun(2, plus(tiny_run(data, from_two), {"--steps", "2"})).exit_code == 0);
  const auto r1 = alone({"train", "--out", from_two.string(), "--resume", "--steps", "4",
                         "--threads", "1", "--quiet", "--accumulate", "2"});
  INFO(r1.err);
  REQUIRE(r1.exit_code == 0);
  require_same_checkpoint(straight, from_two);
  // And back: 1 rank x accumulate 2, then 2 ranks.
  REQUIRE(alone(plus(tiny_run(data, from_one), {"--steps", "2", "--accumulate", "2"})).exit_code ==
          0);
  const auto r2 = mpirun(2, {"train", "--out", from_one.string(), "--resume", "--steps", "4",
                             "--threads", "1", "--quiet"});
  INFO(r2.err);
  REQUIRE(r2.exit_code == 0);
  require_same_checkpoint(straight, from_one);
  // A global batch that does not split over the ranks is refused, clearly.
  const auto three = mpirun(3, {"train", "--out", from_one.string(), "--resume", "--steps", "6",
                                "--threads", "1", "--quiet"});
  CHECK(three.exit_code == 2);
  // Every rank finds it; the first to end the job prints it ("bd3: " or "bd3: rank r: ").
  CHECK(three.err.find("--resume: the checkpoint's step holds 2 micro-batches of 2 "
                       "sequences, which do not split over 3 ranks") != std::string::npos);
}

TEST_CASE("mpirun bd3 eval gives one process's NELBO, bit for bit", "[cli][mpi]") {
  const TempDir dir("mpi_eval");
  const auto data = write_corpus(dir);
  const auto model = dir / "model";
  REQUIRE(alone(plus(tiny_run(data, model), {"--steps", "2"})).exit_code == 0);
  const std::vector<std::string> eval = {
      "eval",      "--model", model.string(), "--data", data.string(), "--batch", "3",
      "--samples", "2",       "--threads",    "1",      "--quiet"};
  const auto a = alone(eval);
  const auto b = mpirun(2, eval);
  INFO(b.err);
  REQUIRE(a.exit_code == 0);
  REQUIRE(b.exit_code == 0);
  REQUIRE(bd3::test::count_lines(b.out) == 1);  // rank 0 prints
  const auto ja = nlohmann::json::parse(a.out), jb = nlohmann::json::parse(b.out);
  for (const char* key : {"nelbo", "nelbo_variance", "mask_variance", "standard_error", "tokens"})
    CHECK(ja[key].dump() == jb[key].dump());
  CHECK(jb["ranks"] == 2);
}

TEST_CASE(
    "a rank killed with SIGKILL ends the run within seconds, naming it, and the checkpoint "
    "resumes",
    "[cli][mpi]") {
  const TempDir dir("mpi_kill");
  const auto data = write_corpus(dir);
  const auto out = dir / "out";
  std::vector<std::string> argv{
      BD3_MPIEXEC, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np",
      "2",         BD3_CLI_PATH};
  for (const auto& a : plus(tiny_run(data, out), {"--steps", "100000000"})) argv.push_back(a);
  *(std::find(argv.begin(), argv.end(), "--checkpoint-every") + 1) = "5";
  CliOptions o;
  o.timeout_seconds = 120;
  ChildProcess run(argv, o);
  // Wait for a checkpoint, then kill rank 1 (the bd3 process whose environment says so).
  const auto t0 = std::chrono::steady_clock::now();
  while (!fs::exists(out / "checkpoint.json") && !run.finished() &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  REQUIRE(fs::exists(out / "checkpoint.json"));
  pid_t victim = -1;
  for (const auto& e : fs::directory_iterator("/proc")) {
    std::ifstream env(e.path() / "environ", std::ios::binary);
    const std::string vars((std::istreambuf_iterator<char>(env)), std::istreambuf_iterator<char>());
    std::ifstream cmd(e.path() / "cmdline", std::ios::binary);
    const std::string line((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
    if (line.find(out.string()) != std::string::npos && line.rfind(BD3_CLI_PATH, 0) == 0 &&
        vars.find(std::string("OMPI_COMM_WORLD_RANK=1") + '\0') != std::string::npos)
      victim = pid_t(std::stoi(e.path().filename().string()));
  }
  REQUIRE(victim > 0);
  const auto killed = std::chrono::steady_clock::now();
  REQUIRE(::kill(victim, SIGKILL) == 0);
  const auto r = run.wait();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  INFO(r.err);
  CHECK_FALSE(r.timed_out);
  CHECK(seconds < 30);
  CHECK(r.exit_code != 0);
  CHECK(r.err.find("rank 1") != std::string::npos);
  CHECK(r.err.find("signal 9") != std::string::npos);
  // The last complete checkpoint loads, and the run resumes from it on 2 ranks.
  const auto ck = bd3::train::load_training_checkpoint(out);
  CHECK(ck.state.step % 5 == 0);
  const auto resumed = mpirun(2, {"train", "--out", out.string(), "--resume", "--steps",
                                  std::to_string(ck.state.step + 2), "--threads", "1", "--quiet"});
  INFO(resumed.err);
  CHECK(resumed.exit_code == 0);
  CHECK(bd3::train::load_training_checkpoint(out).state.step == ck.state.step + 2);
}

TEST_CASE("ranks launched with different flags or data fail at once, naming the difference",
          "[cli][mpi]") {
  const TempDir dir("mpi_launch");
  const auto data = write_corpus(dir);
  const auto other = dir / "other.txt";
  bd3::test::spit(other, bd3::test::slurp(data) + "One more line.\n");
  struct Case {
    std::vector<std::string> rank1;
    std::string message;
  };
  const Case cases[] = {
      {{"--lr", "0.001"}, "disagrees with rank 0 on the training options (lr: 0.001 on rank 1"},
      {{"--seed", "7"}, "disagrees with rank 0 on the training options (seed: 7 on rank 1"},
      {{"--hidden", "64"}, "disagrees with rank 0 on the model config"},
      {{"--data", other.string()}, "disagrees with rank 0 on the data"},
  };
  int k = 0;
  for (const auto& c : cases) {
    const auto out = dir / ("out" + std::to_string(k++));
    // --hidden given per rank (rank 1's case may change it).
    auto both = plus(tiny_run(data, out), {"--steps", "2"});
    both.erase(std::find(both.begin(), both.end(), "--hidden"),
               std::find(both.begin(), both.end(), "--hidden") + 2);
    auto rank1 = c.rank1;
    if (std::find(rank1.begin(), rank1.end(), "--hidden") == rank1.end())
      rank1.insert(rank1.end(), {"--hidden", "32"});
    const auto r = mpirun(2, both, {{"--hidden", "32"}, rank1}, 60);
    INFO(c.message << "\n" << r.err);
    CHECK(r.exit_code == 2);
    CHECK_FALSE(r.timed_out);
    CHECK(r.seconds < 30);
    // One line from the first rank to fail (mpirun's own notice may come first).
    CHECK(("\n" + r.err).find("\nbd3: rank 1 of 2 " + c.message) != std::string::npos);
  }
}

TEST_CASE("with --max-seconds every rank stops after the same step, with a checkpoint",
          "[cli][mpi]") {
  // Each rank reads its own clock; without agreeing, one would stop while the other waits
  // in the next step's gradient sum for ever (the timeout would end the test).
  const TempDir dir("mpi_stop");
  const auto data = write_corpus(dir);
  const auto out = dir / "out";
  const auto r =
      mpirun(2, plus(tiny_run(data, out), {"--steps", "100000000", "--max-seconds", "1"}), {}, 60);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const auto summary = nlohmann::json::parse(r.out);
  CHECK(summary["stopped"] == "max_seconds");
  CHECK(bd3::train::load_training_checkpoint(out).state.step == summary["step"].get<int64_t>());
}
