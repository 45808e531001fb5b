#pragma once
// Errors: library code never prints or exits; it throws bd3::Error with a precise,
// one-line message. The CLI maps the kind to an exit code (input -> 1, usage -> 2).
#include <stdexcept>
#include <string>

namespace bd3 {

enum class ErrorKind {
  invalid_input,  // malformed file, wrong shape, hostile size, bad data
  usage,          // a bad argument or a bad combination of options
  io,             // the operating system refused (open, write, rename, disk full)
  numerical,      // NaN/Inf where a finite value is required
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

[[noreturn]] inline void fail(const std::string& message) {
  throw Error(ErrorKind::invalid_input, message);
}
[[noreturn]] inline void fail_usage(const std::string& message) {
  throw Error(ErrorKind::usage, message);
}
[[noreturn]] inline void fail_io(const std::string& message) {
  throw Error(ErrorKind::io, message);
}

// Checks a condition on input data; the message names what was wrong.
inline void require(bool condition, const std::string& message) {
  if (!condition) fail(message);
}

}  // namespace bd3
