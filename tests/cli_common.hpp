#pragma once
// Running the bd3 program from tests: exit code, stdout and stderr.
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

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

}  // namespace bd3::test
