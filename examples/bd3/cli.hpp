#pragma once
// The bd3 program's subcommand registry. Each examples/bd3/cmd_*.cpp registers its
// subcommands with a static Registrar, so adding a command touches no other file.
#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace bd3::cli {

// `setup` adds a subcommand (with its options) to the app and returns the function
// that runs it; that function returns the process exit code. Errors are thrown as
// bd3::Error and turned into one line on stderr by main().
using Runner = std::function<int()>;
using Setup = std::function<Runner(CLI::App& app)>;

inline std::vector<Setup>& registry() {
  static std::vector<Setup> commands;
  return commands;
}

struct Registrar {
  explicit Registrar(Setup setup) { registry().push_back(std::move(setup)); }
};

}  // namespace bd3::cli
