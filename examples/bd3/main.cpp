// bd3: train, evaluate and sample block diffusion language models.
// Exit codes: 0 success, 1 bad input (files, data), 2 bad usage (flags, values).
#include <bd3/error.hpp>

#include <cstdio>
#include <exception>
#include <new>

#include "cli.hpp"

int main(int argc, char** argv) {
  CLI::App app{"bd3: block diffusion language models (BD3-LMs) in C++"};
  app.require_subcommand(1);
  std::vector<std::pair<CLI::App*, bd3::cli::Runner>> runners;
  for (auto& setup : bd3::cli::registry()) {
    auto before = app.get_subcommands({}).size();
    auto runner = setup(app);
    auto subs = app.get_subcommands({});
    if (subs.size() > before) runners.emplace_back(subs.back(), std::move(runner));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "bd3: %s\n", e.what());
    return 2;
  }
  try {
    for (auto& [sub, run] : runners)
      if (sub->parsed()) return run();
    std::fprintf(stderr, "bd3: no command given (try --help)\n");
    return 2;
  } catch (const bd3::Error& e) {
    std::fprintf(stderr, "bd3: %s\n", e.what());
    return e.kind() == bd3::ErrorKind::usage ? 2 : 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "bd3: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bd3: %s\n", e.what());
    return 1;
  }
}
