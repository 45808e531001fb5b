// Faults during training, through the bd3 program (docs/reliability.md):
//   - SIGKILL at several moments (inside a checkpoint write, at the commit point, at
//     random): the checkpoint stays loadable and a resumed run ends byte-identical to an
//     uninterrupted one;
//   - a full disk: a file-size limit (RLIMIT_FSIZE, always) and, when this process may
//     mount (root), a small tmpfs in a private mount namespace;
//   - a read-only output directory;
//   - numerical guards: a diverging run stops naming the step, and nothing from the bad
//     step reaches the disk.
#include <bd3/io/safetensors.hpp>

#include <grp.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <optional>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "cli_common.hpp"

namespace {

namespace fs = std::filesystem;
using bd3::test::ChildProcess;
using bd3::test::CliOptions;
using bd3::test::CliRun;
using bd3::test::join_args;
using bd3::test::one_line;
using bd3::test::run_cli_measured;
using bd3::test::slurp;
using bd3::test::spit;
using bd3::test::TempDir;
using Args = std::vector<std::string>;

constexpr int kSteps = 24;  // of every run compared with the reference

std::string write_corpus(const TempDir& tmp) {
  std::mt19937_64 rng(3);
  static const char* kWords[] = {"in",    "the", "beginning", "was",  "the",
                                 "word,", "and", "light",     "upon", "waters."};
  std::string text;
  while (text.size() < 12000) text += std::string(kWords[rng() % 10]) + (rng() % 9 ? " " : "\n");
  const auto path = tmp / "data.txt";
  spit(path, text);
  return path.string();
}

// A small, fast, deterministic run (one thread): every resumed run must end identical. The
// warmup is explicit: its default depends on --steps, which the seeding runs change.
const Args kRun = {"--tokenizer=bytes", "--layers=1",     "--hidden=32", "--heads=2",   "--cond=16",
                   "--length=32",       "--block-size=4", "--batch=2",   "--threads=1", "--seed=7",
                   "--lr=3e-3",         "--warmup=2",     "--quiet"};

Args train_args(const std::string& data, const fs::path& out, int steps, int every,
                bool resume = false) {
  Args a = {"train",
            "--data",
            data,
            "--out",
            out.string(),
            "--steps",
            std::to_string(steps),
            "--checkpoint-every",
            std::to_string(every)};
  a.insert(a.end(), kRun.begin(), kRun.end());
  if (resume) a.push_back("--resume");
  return a;
}

// The step checkpoint.json points to, or -1 without one.
int64_t pointer_step(const fs::path& out) {
  if (!fs::exists(out / "checkpoint.json")) return -1;
  return nlohmann::json::parse(slurp(out / "checkpoint.json"))["step"].get<int64_t>();
}

// Files a crash or a failed write might leave: partial checkpoints, temporary files.
std::vector<std::string> debris(const fs::path& out) {
  std::vector<std::string> found;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(out, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    const auto name = it->path().filename().string();
    if (name.find(".partial") != std::string::npos || name.find(".tmp.") != std::string::npos)
      found.push_back(it->path().string());
  }
  return found;
}

void expect_loadable(const fs::path& out, const std::string& when) {
  const CliRun r = run_cli_measured({"inspect", "--model", out.string()});
  INFO(when << ": bd3 inspect " << out << " -> exit " << r.exit_code << ", stderr: " << r.err);
  CHECK(r.exit_code == 0);
}

// The final model and trainer tensors of a run, which a resumed run must reproduce.
struct Final {
  std::string model, trainer;
  explicit Final(const fs::path& out)
      : model(slurp(out / "latest" / "model.safetensors")),
        trainer(slurp(out / "latest" / "trainer_state.safetensors")) {}
};

void expect_identical(const fs::path& out, const Final& reference, const std::string& what) {
  INFO(what);
  CHECK(pointer_step(out) == kSteps);
  const Final got(out);
  CHECK(!got.model.empty());
  const bool same_model = got.model == reference.model,
             same_trainer = got.trainer == reference.trainer;
  CHECK(same_model);
  CHECK(same_trainer);
  // metrics.jsonl: every step exactly once, in order, whatever was cut off by the faults.
  std::ifstream in(out / "metrics.jsonl");
  std::string line;
  int64_t expected = 1;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("event")) continue;
    CHECK(j["step"].get<int64_t>() == expected);
    ++expected;
  }
  CHECK(expected == kSteps + 1);
}

// A test's directory, its corpus and the uninterrupted run every faulty run is compared with.
struct Setup {
  TempDir tmp;
  std::string data;
  std::optional<Final> reference;
  explicit Setup(const std::string& name, bool with_reference = true)
      : tmp(name), data(write_corpus(tmp)) {
    if (!with_reference) return;
    const CliRun r = run_cli_measured(train_args(data, tmp / "reference", kSteps, 0));
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    reference.emplace(tmp / "reference");
  }
};

// inotify on a directory: waits for an entry whose name matches.
class DirWatch {
 public:
  explicit DirWatch(const fs::path& dir) : fd_(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) {
    REQUIRE(fd_ >= 0);
    REQUIRE(::inotify_add_watch(fd_, dir.c_str(), IN_CREATE | IN_MOVED_TO) >= 0);
  }
  ~DirWatch() { ::close(fd_); }
  // True when `match(name)` held for the count-th matching event before the child ended.
  bool wait_for(const std::function<bool(const std::string&)>& match, int count,
                ChildProcess& child) {
    alignas(inotify_event) char buf[8192];
    int seen = 0;
    while (!child.finished()) {
      const ssize_t n = ::read(fd_, buf, sizeof buf);
      if (n <= 0) {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
        continue;
      }
      for (char* p = buf; p < buf + n;) {
        auto* ev = reinterpret_cast<inotify_event*>(p);
        if (ev->len > 0 && match(ev->name) && ++seen == count) return true;
        p += sizeof(inotify_event) + ev->len;
      }
    }
    return false;
  }

 private:
  int fd_;
};

}  // namespace

TEST_CASE("SIGKILL during training: the checkpoint loads, resume ends byte-identical",
          "[faults][crash]") {
  const Setup setup("faults_kill");
  const auto& [tmp, data, reference] = setup;
  const auto out = tmp / "out";
  fs::create_directories(out);
  const auto starts_with = [](const std::string& prefix) {
    return [prefix](const std::string& name) { return name.rfind(prefix, 0) == 0; };
  };
  const auto ends_with = [](const std::string& suffix) {
    return [suffix](const std::string& name) {
      return name.size() >= suffix.size() &&
             name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
  };
  struct Moment {
    std::string what;
    std::function<bool(const std::string&)> match;  // empty: after a delay
    int count = 1;
    int delay_ms = 0;
  };
  const std::vector<Moment> moments = {
      {"inside the 3rd checkpoint write (its .partial directory just appeared)",
       ends_with(".partial"), 3},
      {"at the commit point (checkpoint.json just renamed into place)",
       [](const std::string& n) { return n == "checkpoint.json"; }, 2},
      {"between the checkpoint directory's rename and the commit",
       starts_with("checkpoint.json.tmp."), 2},
      {"while the latest symlink is replaced", starts_with("latest.tmp."), 3},
      {"at random (40 ms)", {}, 1, 40},
      {"during start-up (2 ms)", {}, 1, 2},
      {"inside the next checkpoint write", ends_with(".partial"), 1},
  };
  int64_t last_step = -1;
  int kills = 0, mid_write = 0;
  for (const auto& m : moments) {
    INFO("kill " << m.what);
    const bool resume = pointer_step(out) >= 0;
    DirWatch watch(out);
    Args argv = train_args(data, out, kSteps, 1, resume);
    argv.insert(argv.begin(), BD3_CLI_PATH);
    ChildProcess child(argv, CliOptions{.in_child = {}, .timeout_seconds = 60});
    REQUIRE(child.started());
    bool hit = true;
    if (m.match)
      hit = watch.wait_for(m.match, m.count, child);
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(m.delay_ms));
    child.kill_group(SIGKILL);
    const CliRun r = child.wait();
    INFO("exit " << r.exit_code << ", stderr: " << r.err);
    if (!hit || r.signal != SIGKILL) {
      // The run finished before the moment came: nothing to test at this moment.
      CHECK(r.exit_code == 0);
      WARN("the run ended before the kill (" << m.what << ")");
      break;
    }
    ++kills;
    if (!debris(out).empty()) ++mid_write;  // killed with a partial checkpoint on disk
    const int64_t step = pointer_step(out);
    CHECK(step >= last_step);  // never back
    last_step = step;
    if (step >= 0) expect_loadable(out, m.what);
  }
  CHECK(kills >= 5);
  CHECK(mid_write >= 1);
  WARN(kills << " kills, " << mid_write
             << " of them inside a checkpoint write; last checkpoint step " << last_step);
  // Resume to the end, uninterrupted.
  const CliRun r = run_cli_measured(train_args(data, out, kSteps, 1, pointer_step(out) >= 0));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  for (const auto& f : debris(out)) UNSCOPED_INFO("left behind: " << f);
  CHECK(debris(out).empty());
  expect_identical(out, *reference, "after " + std::to_string(kills) + " kills");
}

namespace {

// Phase 1 of the disk tests: a checkpoint at step 4 to fail after and resume from.
void seed_checkpoint(const std::string& data, const fs::path& out) {
  const CliRun r = run_cli_measured(train_args(data, out, 4, 2));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  REQUIRE(pointer_step(out) == 4);
}

uint64_t pages(uint64_t bytes) {
  return (bytes + 4095) / 4096 * 4096;
}

uint64_t disk_use(const fs::path& dir) {
  uint64_t total = 0;
  for (auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && !e.is_symlink()) total += pages(e.file_size());
  return total;
}

bool can_mount_tmpfs(const fs::path& dir) {
  if (::geteuid() != 0 || !fs::exists("/usr/bin/unshare")) return false;
  fs::create_directories(dir);
  ChildProcess probe({"/usr/bin/unshare", "-m", "/bin/sh", "-c",
                      "mount -t tmpfs -o size=64k bd3probe '" + dir.string() + "'"});
  return probe.wait().exit_code == 0;
}

}  // namespace

TEST_CASE("a full disk: one clear line, the previous checkpoint intact, resume exact",
          "[faults][disk]") {
  const Setup setup("faults_disk");
  const auto& [tmp, data, reference] = setup;

  SECTION("file-size limit (RLIMIT_FSIZE: writes fail with EFBIG), unprivileged") {
    const auto out = tmp / "fsize";
    seed_checkpoint(data, out);
    const std::string before = slurp(out / "latest" / "model.safetensors");
    // Smaller than a checkpoint's weights, larger than everything else written on resume.
    const rlim_t limit = rlim_t(fs::file_size(out / "latest" / "model.safetensors") / 2);
    const CliRun r = run_cli_measured(train_args(data, out, kSteps, 2, true),
                                      CliOptions{.in_child =
                                                     [limit] {
                                                       struct rlimit rl {
                                                         limit, limit
                                                       };
                                                       return ::setrlimit(RLIMIT_FSIZE, &rl) == 0;
                                                     },
                                                 .timeout_seconds = 60});
    INFO("exit " << r.exit_code << " (signal " << r.signal << "), stderr: " << r.err);
    CHECK(r.exit_code == 1);  // not SIGXFSZ: bd3 ignores it and reports EFBIG
    CHECK(one_line(r.err));
    CHECK(r.err.find("File too large") != std::string::npos);
    CHECK(r.err.find(out.string()) != std::string::npos);  // names the file
    CHECK(pointer_step(out) == 4);
    CHECK((slurp(out / "latest" / "model.safetensors") == before));
    expect_loadable(out, "after EFBIG");
    CHECK(debris(out).empty());
    const CliRun ok = run_cli_measured(train_args(data, out, kSteps, 2, true));
    INFO(ok.err);
    REQUIRE(ok.exit_code == 0);
    expect_identical(out, *reference, "resumed after EFBIG");
  }

  SECTION("a full tmpfs (ENOSPC) in a private mount namespace, when permitted") {
    const auto mnt = tmp / "mnt";
    if (!can_mount_tmpfs(mnt)) {
      WARN(
          "tmpfs variant skipped: not root, or mount not permitted here (the RLIMIT_FSIZE variant "
          "ran)");
      return;
    }
    WARN("full-disk variant: a tmpfs in a private mount namespace (root), besides RLIMIT_FSIZE");
    const auto seed = tmp / "seed", report = tmp / "report";
    seed_checkpoint(data, seed);
    fs::create_directories(report);
    // Room for the seed directory and half a checkpoint more: the next checkpoint fails.
    const uint64_t ckpt = disk_use(seed / "latest");
    const uint64_t size_kb = (disk_use(seed) + ckpt / 2 + 16 * 1024) / 1024;
    auto quoted = [](const Args& args) {
      std::string s;
      for (const auto& a : args) s += " '" + a + "'";
      return s;
    };
    const auto in_tmpfs = mnt / "out";
    const std::string script =
        "mount -t tmpfs -o size=" + std::to_string(size_kb) + "k bd3full '" + mnt.string() +
        "' || exit 90\n" + "cp -a '" + seed.string() + "' '" + in_tmpfs.string() +
        "' || exit 91\n" + "'" + BD3_CLI_PATH + "'" +
        quoted(train_args(data, in_tmpfs, kSteps, 2, true)) + " >'" + (report / "out1").string() +
        "' 2>'" + (report / "err1").string() + "'\n" + "echo $? >'" + (report / "rc1").string() +
        "'\n" + "cp -a '" + in_tmpfs.string() + "' '" + (report / "after").string() +
        "' || exit 92\n" + "mount -o remount,size=64m '" + mnt.string() + "' || exit 93\n" + "'" +
        BD3_CLI_PATH + "'" + quoted(train_args(data, in_tmpfs, kSteps, 2, true)) + " >'" +
        (report / "out2").string() + "' 2>'" + (report / "err2").string() + "'\n" + "echo $? >'" +
        (report / "rc2").string() + "'\n" + "cp -a '" + in_tmpfs.string() + "' '" +
        (report / "final").string() + "' || exit 94\n";
    ChildProcess child({"/usr/bin/unshare", "-m", "/bin/sh", "-c", script},
                       CliOptions{.in_child = {}, .timeout_seconds = 120});
    const CliRun run = child.wait();
    INFO("namespace script: exit " << run.exit_code << ", stderr: " << run.err);
    REQUIRE(run.exit_code == 0);
    const std::string err1 = slurp(report / "err1");
    INFO("tmpfs of " << size_kb << " KB; first run: exit " << slurp(report / "rc1")
                     << ", stderr: " << err1);
    CHECK(std::stoi(slurp(report / "rc1")) == 1);
    CHECK(one_line(err1));
    CHECK(err1.find("No space left on device") != std::string::npos);
    CHECK(err1.find(in_tmpfs.string()) != std::string::npos);
    CHECK(pointer_step(report / "after") == 4);
    expect_loadable(report / "after", "after ENOSPC");
    CHECK(debris(report / "after").empty());
    INFO("second run: stderr: " << slurp(report / "err2"));
    CHECK(std::stoi(slurp(report / "rc2")) == 0);
    expect_identical(report / "final", *reference, "resumed after ENOSPC");
  }
}

TEST_CASE("a read-only output directory: exit 1, one clear line", "[faults][permissions]") {
  const Setup setup("faults_ro", false);
  const auto& [tmp, data, reference] = setup;
  const bool root = ::geteuid() == 0;
  // Root ignores permission bits: the child then runs as nobody, which cannot write into
  // root's 0755 directories. Otherwise the directories are made 0555.
  CliOptions as_nobody{.in_child =
                           [] {
                             return ::setgroups(0, nullptr) == 0 && ::setgid(65534) == 0 &&
                                    ::setuid(65534) == 0;
                           },
                       .timeout_seconds = 60};
  const CliOptions options = root ? as_nobody : CliOptions{};
  WARN("read-only variant: " << (root ? "running bd3 as user nobody (uid 65534)" : "chmod 0555"));
  auto read_only = [&](const fs::path& dir) {
    if (!root)
      fs::permissions(dir, fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                               fs::perms::group_exec | fs::perms::others_read |
                               fs::perms::others_exec);
  };
  const auto parent = tmp / "ro_parent";
  fs::create_directories(parent);
  const auto existing = tmp / "ro_out";
  fs::create_directories(existing);
  const auto trained = tmp / "trained";
  {
    const CliRun r = run_cli_measured(train_args(data, trained, 2, 1));
    REQUIRE(r.exit_code == 0);
  }
  const std::string before = slurp(trained / "latest" / "model.safetensors");
  for (const auto& d : {parent, existing, trained}) read_only(d);
  struct Case {
    std::string what;
    Args args;
  };
  for (const auto& c : std::vector<Case>{
           {"--out inside a read-only directory", train_args(data, parent / "o", 2, 1)},
           {"--out a read-only directory", train_args(data, existing, 2, 1)},
           {"--resume in a read-only directory", train_args(data, trained, 4, 1, true)}}) {
    const CliRun r = run_cli_measured(c.args, options);
    INFO(c.what << ": exit " << r.exit_code << ", stderr: " << r.err);
    CHECK(r.exit_code == 1);
    CHECK(one_line(r.err));
    CHECK(r.err.find("Permission denied") != std::string::npos);
    CHECK(r.err.find(tmp.path().string()) != std::string::npos);  // names the path
  }
  CHECK(!fs::exists(parent / "o"));
  CHECK(pointer_step(trained) == 2);
  CHECK((slurp(trained / "latest" / "model.safetensors") == before));
  expect_loadable(trained, "after the refused resume");
}

// ---- Numerical guards -------------------------------------------------------------------

namespace {

const std::regex kDiverged(
    R"(^bd3: training diverged at step (\d+): (the loss is|the gradient norm is|the update made weight) .*)");

struct Divergence {
  int64_t step = 0;
  std::string guard;
};

// A run that must stop on a numerical guard; checks the message and what is on disk.
Divergence expect_divergence(const CliRun& r, const fs::path& out) {
  INFO("exit " << r.exit_code << ", stderr: " << r.err);
  CHECK(r.exit_code == 1);
  CHECK(one_line(r.err));
  std::smatch m;
  const std::string line = r.err.substr(0, r.err.find('\n'));
  REQUIRE(std::regex_match(line, m, kDiverged));
  Divergence d{std::stoll(m[1].str()), m[2].str()};
  // Nothing from the bad step: the checkpoint is the previous step's (every step is
  // checkpointed in these runs), and it loads with finite weights.
  if (d.step > 1) {
    CHECK(pointer_step(out) == d.step - 1);
    CHECK(r.err.find("step " + std::to_string(d.step - 1) + ") is intact") != std::string::npos);
    expect_loadable(out, "after the divergence");
  } else {
    CHECK(pointer_step(out) == -1);
  }
  CHECK(debris(out).empty());
  return d;
}

// Sets one value of one tensor of a safetensors file (F32), keeping everything else.
void poke(const fs::path& file, const std::string& tensor, float value) {
  const auto f = bd3::io::SafetensorsFile::open(file);
  std::vector<std::vector<float>> values;
  std::vector<bd3::io::TensorToWrite> tensors;
  for (const auto& t : f.tensors()) values.push_back(f.load_float(t.name));
  size_t i = 0;
  bool found = false;
  for (const auto& t : f.tensors()) {
    if (t.name == tensor) values[i][0] = value, found = true;
    tensors.push_back({t.name, t.shape, values[i++]});
  }
  REQUIRE(found);
  bd3::io::write_safetensors(file, tensors, f.metadata());
}

}  // namespace

TEST_CASE("numerical guards: divergence stops naming the step, the last good checkpoint stays",
          "[faults][numerical]") {
  const Setup setup("faults_nan", false);
  const auto& [tmp, data, reference] = setup;
  // (A named reference: clang 14 cannot capture a structured binding in a lambda.)
  const auto& train_data = data;
  auto diverging = [&](const fs::path& out, const std::string& lr) {
    Args a = train_args(train_data, out, 30, 1);
    for (auto& arg : a) {
      if (arg.rfind("--lr=", 0) == 0) arg = "--lr=" + lr;
      if (arg.rfind("--warmup=", 0) == 0) arg = "--warmup=0";
    }
    a.push_back("--grad-clip=0");
    return run_cli_measured(a);
  };
  // Learning rates that blow up within a few steps: at these the backward overflows while
  // the loss is still finite (the gradient guard), or the forward does (the loss guard),
  // or the update itself overflows (the weight guard, at the first step).
  std::set<std::string> guards;
  for (const std::string lr : {"1e12", "2e12", "1e14", "1e20", "1e38"}) {
    INFO("--lr " << lr);
    const auto out = tmp / ("lr" + lr);
    const auto d = expect_divergence(diverging(out, lr), out);
    guards.insert(d.guard);
  }
  CHECK(guards.count("the loss is") == 1);
  CHECK(guards.count("the gradient norm is") == 1);
  CHECK(guards.count("the update made weight") == 1);

  // A checkpoint whose raw weights (trainer_state.safetensors) hold a NaN, or whose AdamW
  // moment does: the resumed run stops at its first step, the checkpoint is untouched.
  for (const auto& [tensor, guard] : std::vector<std::pair<std::string, std::string>>{
           {"weights/backbone.blocks.0.attn_qkv.weight", "the loss is"},
           {"exp_avg/backbone.blocks.0.attn_qkv.weight", "the update made weight"}}) {
    INFO("NaN in " << tensor);
    const auto out = tmp / ("poked_" + std::to_string(guard.size()));
    {
      const CliRun r = run_cli_measured(train_args(data, out, 3, 1));
      REQUIRE(r.exit_code == 0);
    }
    poke(out / "latest" / "trainer_state.safetensors", tensor, std::nanf(""));
    const std::string model = slurp(out / "latest" / "model.safetensors");
    const std::string state = slurp(out / "latest" / "trainer_state.safetensors");
    const auto d = expect_divergence(run_cli_measured(train_args(data, out, 6, 1, true)), out);
    CHECK(d.step == 4);
    CHECK(d.guard == guard);
    CHECK((slurp(out / "latest" / "model.safetensors") == model));
    CHECK((slurp(out / "latest" / "trainer_state.safetensors") == state));
  }
}
