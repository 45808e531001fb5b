// Crash safety of training checkpoints (train/trainer_state.hpp): a process killed with
// SIGKILL at any moment while writing checkpoints leaves a directory that loads, and
// what it loads is one consistent checkpoint.
#include <bd3/bd3.hpp>
#include <bd3/text/tokenizer.hpp>
#include <bd3/train/trainer_state.hpp>

#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <set>
#include <thread>
#include <vector>

using namespace bd3;
using namespace bd3::train;
namespace fs = std::filesystem;

namespace {

ModelConfig crash_config() {
  ModelConfig c;
  c.block_size = 4, c.model_length = 64, c.vocab_size = 259, c.mask_index = 258;
  c.hidden_dim = 64, c.n_heads = 2, c.n_blocks = 2, c.cond_dim = 32;
  c.validate();
  return c;
}

// A checkpoint whose every value says which step wrote it.
void write_step(const fs::path& out, int64_t step, const text::Tokenizer& tok) {
  const auto c = crash_config();
  const size_t n = size_t(ParameterLayout(c).total());
  std::vector<float> w(n, float(step)), m(n, float(step) + 0.25f), v(n, float(step) + 0.5f),
      ema(n, float(step) + 0.75f);
  TrainerState st;
  st.step = step, st.samples_seen = step * 10, st.adam_step = step, st.ema_updates = step;
  st.interval = {0.001 + 0.01 * double(step % 50), 1.0};
  auto cfg = c;
  cfg.sampling_eps_min = st.interval.eps_min, cfg.sampling_eps_max = st.interval.eps_max;
  commit_checkpoint(out, step, [&](const fs::path& dir) {
    write_checkpoint_files(dir, cfg, ema, w, m, v, st, &tok);
  });
}

// Loads OUT and checks that every part comes from the same step. Returns the step.
int64_t load_and_check(const fs::path& out) {
  auto ck = load_training_checkpoint(out);
  const int64_t s = ck.state.step;
  const auto p = read_pointer(out);
  REQUIRE(p.has_value());
  CHECK(p->step == s);
  CHECK(ck.state.samples_seen == s * 10);
  CHECK(ck.config.sampling_eps_min == Approx(0.001 + 0.01 * double(s % 50)));
  REQUIRE(ck.weights.size() == ck.model.size());
  for (size_t i = 0; i < ck.weights.size(); i += 97) {
    REQUIRE(ck.weights[i] == float(s));
    REQUIRE(ck.exp_avg[i] == float(s) + 0.25f);
    REQUIRE(ck.exp_avg_sq[i] == float(s) + 0.5f);
    REQUIRE(ck.model[i] == float(s) + 0.75f);
  }
  REQUIRE(ck.tokenizer.has_value());
  return s;
}

}  // namespace

TEST_CASE("a checkpoint survives SIGKILL at any moment of the write", "[train][crash]") {
  const auto out = fs::temp_directory_path() / ("bd3_test_crash_" + std::to_string(::getpid()));
  fs::remove_all(out);
  const auto tok = text::Tokenizer::bytes();
  write_step(out, 0, tok);
  REQUIRE(load_and_check(out) == 0);

  std::set<int64_t> seen;
  uint64_t rng = 12345;
  int64_t base = 0;
  const int rounds = 30;
  for (int round = 0; round < rounds; ++round) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      // The child writes checkpoints back to back until it is killed.
      try {
        DirectoryLock lock(out);
        for (int64_t s = base + 1;; ++s) write_step(out, s, tok);
      } catch (...) {
        ::_exit(3);
      }
    }
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    const int delay_us = round == rounds - 1 ? 400000 : int((rng >> 33) % 250000);
    std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    REQUIRE(WIFSIGNALED(status));  // killed while writing, not failed
    const int64_t s = load_and_check(out);
    CHECK(s >= base);
    base = s;
    seen.insert(s);
  }
  INFO("checkpoints observed after the kills: " << seen.size() << ", last step " << base);
  CHECK(base > 0);  // the writer made progress
  // The kernel released the dead writer's lock.
  DirectoryLock lock(out);
  // A healthy save cleans up what the kills left behind.
  write_step(out, base + 1, tok);
  int stray = 0;
  for (auto& e : fs::directory_iterator(out)) {
    const auto f = e.path().filename().string();
    stray += (f.starts_with("ckpt-") && f != checkpoint_name(base + 1)) ||
             f.find(".tmp.") != std::string::npos;
  }
  CHECK(stray == 0);
  CHECK(load_and_check(out) == base + 1);
  fs::remove_all(out);
}

TEST_CASE("temporary files of interrupted atomic writes are recognised", "[train][crash]") {
  CHECK(io::is_atomic_temporary_name("tokens.cache.tmp.4242.0"));
  CHECK(io::is_atomic_temporary_name("metrics.jsonl.tmp.1.17"));
  CHECK(io::is_atomic_temporary_name("checkpoint.json.tmp.9.3"));
  CHECK_FALSE(io::is_atomic_temporary_name("notes.tmp.txt"));
  CHECK_FALSE(io::is_atomic_temporary_name("tokens.cache"));
  CHECK_FALSE(io::is_atomic_temporary_name(".tmp.1.2"));
  CHECK_FALSE(io::is_atomic_temporary_name("a.tmp.1"));
  CHECK_FALSE(io::is_atomic_temporary_name("a.tmp.1."));
  CHECK_FALSE(io::is_atomic_temporary_name("a.tmp..2"));
  CHECK_FALSE(io::is_atomic_temporary_name("a.tmp.1x.2"));
}

TEST_CASE("a checkpoint save removes what killed atomic writes left in the directory",
          "[train][crash]") {
  // A SIGKILL inside write_file_atomic (the token cache, the metrics log) leaves its
  // temporary file next to the target; the next checkpoint removes it and nothing else.
  const auto out = fs::temp_directory_path() / ("bd3_test_crash_tmp_" + std::to_string(::getpid()));
  fs::remove_all(out);
  const auto tok = text::Tokenizer::bytes();
  write_step(out, 1, tok);
  for (const char* f : {"tokens.cache.tmp.4242.0", "metrics.jsonl.tmp.4242.3"})
    io::write_file_atomic(out / f, "left by a killed writer");
  io::write_file_atomic(out / "notes.tmp.txt", "the user's");
  write_step(out, 2, tok);
  CHECK_FALSE(fs::exists(out / "tokens.cache.tmp.4242.0"));
  CHECK_FALSE(fs::exists(out / "metrics.jsonl.tmp.4242.3"));
  CHECK(fs::exists(out / "notes.tmp.txt"));
  CHECK(load_and_check(out) == 2);
  fs::remove_all(out);
}

TEST_CASE("a failure before the commit point leaves the previous checkpoint", "[train][crash]") {
  const auto out = fs::temp_directory_path() / ("bd3_test_crash_det_" + std::to_string(::getpid()));
  fs::remove_all(out);
  const auto tok = text::Tokenizer::bytes();
  write_step(out, 5, tok);
  // Fails half-way through the files.
  CHECK_THROWS(commit_checkpoint(out, 6, [&](const fs::path& dir) {
    io::write_file_atomic(dir / "config.json", "{}");
    throw Error(ErrorKind::io, "disk full (simulated)");
  }));
  CHECK(load_and_check(out) == 5);
  // Fails after the new directory is in place but before the pointer moves.
  CHECK_THROWS(commit_checkpoint(
      out, 7, [&](const fs::path& dir) { io::write_file_atomic(dir / "x", "y"); },
      [] { throw Error(ErrorKind::io, "killed (simulated)"); }));
  CHECK(fs::is_directory(out / checkpoint_name(7)));
  CHECK(load_and_check(out) == 5);
  // Saving the same step again is a no-op; a later step replaces everything.
  write_step(out, 5, tok);
  write_step(out, 8, tok);
  CHECK(load_and_check(out) == 8);
  CHECK_FALSE(fs::exists(out / checkpoint_name(7)));
  CHECK_FALSE(fs::exists(out / checkpoint_name(5)));
  // A pointer to a missing directory, or a bad pointer, is an error, not a crash.
  io::write_file_atomic(
      out / kPointerFile,
      R"({"format":"bd3-checkpoint-pointer","version":1,"current":"ckpt-00000099","step":99})");
  CHECK_THROWS_AS(load_training_checkpoint(out), Error);
  io::write_file_atomic(
      out / kPointerFile,
      R"({"format":"bd3-checkpoint-pointer","version":1,"current":"../etc","step":1})");
  CHECK_THROWS_AS(load_training_checkpoint(out), Error);
  fs::remove_all(out);
}
