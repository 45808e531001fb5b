#pragma once
// Running the bd3 program from tests: exit code, stdout and stderr; and, for the hostile
// input and fault tests, the child's wall time and peak memory, a hook that runs in the
// child before exec (rlimits, another user), a timeout, and a handle to kill it.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace bd3::test {

struct CliResult {
  int exit_code = -1;
  std::string out, err;
};

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void spit(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// Runs `bd3 <args>` (args already shell-quoted as needed).
inline CliResult run_cli(const std::string& args) {
  static int counter = 0;
  auto dir = std::filesystem::temp_directory_path() / ("bd3_cli_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto out = dir / ("out" + std::to_string(counter));
  auto err = dir / ("err" + std::to_string(counter++));
  std::string cmd = std::string(BD3_CLI_PATH) + " " + args + " >" + out.string() + " 2>" +
                    err.string() + " </dev/null";
  int status = std::system(cmd.c_str());
  CliResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

inline int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

// Exactly one non-empty line, newline-terminated: what every bd3 error must be.
inline bool one_line(const std::string& s) {
  return s.size() > 1 && s.back() == '\n' && count_lines(s) == 1;
}

// A fresh directory for a test, removed (recursively, permissions restored) at the end.
class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(std::filesystem::temp_directory_path() /
              ("bd3_" + name + "_" + std::to_string(::getpid()))) {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(path_, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec))
      if (it->is_directory(ec))
        std::filesystem::permissions(it->path(), std::filesystem::perms::owner_all,
                                     std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// ---- Measured runs ----------------------------------------------------------------------

struct CliRun {
  int exit_code = -1;  // 128 + signal number when a signal ended it
  int signal = 0;      // the signal that ended it, or 0
  bool timed_out = false;
  std::string out, err;
  double seconds = 0;   // wall time from fork to exit
  long max_rss_kb = 0;  // peak resident set of the child (wait4's rusage); it includes the
                        // pages shared with the test process at fork, so it is at least
                        // the test's own RSS at that moment
};

struct CliOptions {
  // Runs in the child between fork and exec: only async-signal-safe calls (setrlimit,
  // signal, setuid...). Returning false makes the child exit with code 127.
  std::function<bool()> in_child;
  double timeout_seconds = 60;           // SIGKILL (to its process group) after this long; 0: never
  std::string stdin_path = "/dev/null";  // the child's standard input
};

// A child process: `argv[0]` is the program (a path), started at construction in its own
// process group with stdin from CliOptions::stdin_path and stdout/stderr in files.
class ChildProcess {
 public:
  ChildProcess(const std::vector<std::string>& argv, CliOptions options = {})
      : options_(std::move(options)) {
    static std::atomic<int> counter{0};
    static const TempDir outputs("child_output");  // removed at exit
    const auto& dir = outputs.path();
    const int k = counter++;
    out_path_ = dir / ("out" + std::to_string(k));
    err_path_ = dir / ("err" + std::to_string(k));
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    start_ = std::chrono::steady_clock::now();
    pid_ = ::fork();
    if (pid_ == 0) {
      ::setpgid(0, 0);
      const int in = ::open(options_.stdin_path.c_str(), O_RDONLY);
      const int out = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int err = ::open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (in < 0 || out < 0 || err < 0) ::_exit(127);
      ::dup2(in, 0), ::dup2(out, 1), ::dup2(err, 2);
      if (options_.in_child && !options_.in_child()) ::_exit(127);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    if (pid_ > 0) ::setpgid(pid_, pid_);  // also here: no race with kill_group()
  }
  ~ChildProcess() {
    if (pid_ > 0 && !reaped_) {
      kill_group(SIGKILL);
      wait();
    }
    std::error_code ec;
    std::filesystem::remove(out_path_, ec);
    std::filesystem::remove(err_path_, ec);
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  bool started() const { return pid_ > 0; }

  // Sends `sig` to the child's process group (the child and anything it started).
  void kill_group(int sig) {
    if (pid_ > 0 && !reaped_) ::kill(-pid_, sig);
  }

  // True once the child has exited (then wait() returns at once).
  bool finished() {
    if (reaped_) return true;
    return reap(WNOHANG);
  }

  // Waits for the exit (killing the group at the timeout) and collects the output.
  CliRun wait() {
    const auto deadline = start_ + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                       std::chrono::duration<double>(options_.timeout_seconds));
    while (!reaped_ && !reap(WNOHANG)) {
      if (options_.timeout_seconds > 0 && std::chrono::steady_clock::now() > deadline &&
          !run_.timed_out) {
        run_.timed_out = true;
        kill_group(SIGKILL);
        reap(0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    run_.out = slurp(out_path_);
    run_.err = slurp(err_path_);
    return run_;
  }

 private:
  bool reap(int flags) {
    if (pid_ <= 0) return reaped_ = true;
    int status = 0;
    struct rusage ru {};
    const pid_t r = ::wait4(pid_, &status, flags, &ru);
    if (r == 0) return false;
    reaped_ = true;
    run_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    if (r < 0) return true;
    run_.max_rss_kb = ru.ru_maxrss;
    if (WIFEXITED(status)) {
      run_.exit_code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
      run_.signal = WTERMSIG(status);
      run_.exit_code = 128 + run_.signal;
    }
    return true;
  }

  CliOptions options_;
  std::filesystem::path out_path_, err_path_;
  std::chrono::steady_clock::time_point start_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  CliRun run_;
};

// `bd3 <args>` (no shell: each element is one argument), measured.
inline CliRun run_cli_measured(const std::vector<std::string>& args, CliOptions options = {}) {
  std::vector<std::string> argv{BD3_CLI_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  ChildProcess child(argv, std::move(options));
  return child.wait();
}

inline std::string join_args(const std::vector<std::string>& args) {
  std::string s = "bd3";
  for (const auto& a : args) s += " " + a;
  return s;
}

}  // namespace bd3::test
