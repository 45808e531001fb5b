// bd3: train, evaluate and sample block diffusion language models.
// Exit codes: 0 success, 1 bad input (files, data), 2 bad usage (flags, values).
#include <bd3/error.hpp>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <new>
#include <string>

#include "cli.hpp"
#include "launch.hpp"
#include "version.hpp"

namespace {

// Every error is exactly one line on stderr, whatever the message holds (a file name with
// a newline, a multi-line message from a library).
// Under mpirun with other ranks, a rank other than 0 names itself, and the error ends
// every rank (the others would wait for this one).
int report_error(const char* message, int code) {
  std::string line = message;
  for (char& c : line)
    if (c == '\n' || c == '\r') c = ' ';
  if (bd3::cli::launched_with_others() && bd3::cli::launch_rank() > 0 && !line.starts_with("rank "))
    std::fprintf(stderr, "bd3: rank %d: %s\n", bd3::cli::launch_rank(), line.c_str());
  else
    std::fprintf(stderr, "bd3: %s\n", line.c_str());
  std::fflush(stderr);
  bd3::cli::abort_launch(code);
  return code;
}

// CLI11 reads an empty value ("--batch ''") as 0, and an integer beyond 64 bits as the
// largest one ("--steps 99999999999999999999" would train for ever): both are usage errors.
void check_numbers(CLI::App* app) {
  for (CLI::Option* opt : app->get_options()) {
    const std::string type = opt->get_type_name();
    const bool is_uint = type.rfind("UINT", 0) == 0, is_int = type.rfind("INT", 0) == 0;
    if (!is_uint && !is_int && type.rfind("FLOAT", 0) != 0) continue;
    opt->check(CLI::Validator(
        [is_uint, is_int](std::string& value) {
          if (value.empty()) return std::string("an empty value is not a number");
          if (is_int || is_uint) {
            errno = 0;
            char* end = nullptr;
            if (is_uint)
              (void)std::strtoull(value.c_str(), &end, 0);
            else
              (void)std::strtoll(value.c_str(), &end, 0);
            if (errno == ERANGE) return value + " is out of the 64-bit integer range";
          }
          return std::string();
        },
        ""));
  }
  for (CLI::App* sub : app->get_subcommands({})) check_numbers(sub);
}

}  // namespace

int main(int argc, char** argv) {
  // Past a file-size limit (ulimit -f), write() fails with EFBIG and the error is reported
  // like a full disk, instead of SIGXFSZ killing the process mid-write.
  std::signal(SIGXFSZ, SIG_IGN);
  CLI::App app{"bd3: block diffusion language models (BD3-LMs) in C++"};
  app.require_subcommand(1);
  app.set_version_flag("--version", bd3::cli::version_text(),
                       "Print the version, git revision, compiler, SIMD level and exit");
  app.add_subcommand("version", "Print the version, git revision, compiler, SIMD level");
  std::vector<std::pair<CLI::App*, bd3::cli::Runner>> runners;
  for (auto& setup : bd3::cli::registry()) {
    auto before = app.get_subcommands({}).size();
    auto runner = setup(app);
    auto subs = app.get_subcommands({});
    if (subs.size() > before) runners.emplace_back(subs.back(), std::move(runner));
  }
  check_numbers(&app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return report_error(e.what(), 2);
  }
  try {
    for (auto& [sub, run] : runners)
      if (sub->parsed()) return run();
    if (app.got_subcommand("version")) {
      std::printf("%s\n", bd3::cli::version_text().c_str());
      return std::fflush(stdout) == 0 ? 0 : 1;
    }
    std::fprintf(stderr, "bd3: no command given (try --help)\n");
    return 2;
  } catch (const bd3::Error& e) {
    return report_error(e.what(), e.kind() == bd3::ErrorKind::usage ? 2 : 1);
  } catch (const std::bad_alloc&) {
    return report_error("out of memory", 1);
  } catch (const std::exception& e) {
    return report_error(e.what(), 1);
  }
}
