#pragma once
// Noise schedule policies (SPEC "Noise schedules"): each maps t in (0, 1] to a masking
// probability p(t) and a positive NELBO weight w(t) (the reference returns -w).
#include <bd3/error.hpp>

#include <cmath>
#include <concepts>
#include <numbers>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace bd3 {

namespace noise {
inline constexpr double eps = 1e-3;

struct LogLinear {
  static constexpr std::string_view name() { return "loglinear"; }
  static double p(double t) { return t; }
  static double w(double t) { return 1.0 / t; }
};

struct Cosine {
  static constexpr std::string_view name() { return "cosine"; }
  static double p(double t) { return 1.0 - (1.0 - eps) * std::cos(std::numbers::pi * t / 2.0); }
  static double w(double t) {
    return (1.0 - eps) * std::sin(std::numbers::pi * t / 2.0) * (std::numbers::pi / 2.0) /
           (p(t) + eps);
  }
};

struct Square {
  static constexpr std::string_view name() { return "square"; }
  static double p(double t) { return std::max(t * t, eps); }
  static double w(double t) { return 2.0 * t / p(t); }
};

struct SquareRoot {
  static constexpr std::string_view name() { return "square_root"; }
  static double p(double t) { return std::max(std::sqrt(t), eps); }
  static double w(double t) { return 0.5 / std::sqrt(t) / p(t); }
};

struct Log {
  static constexpr std::string_view name() { return "log"; }
  static double p(double t) { return std::log1p(t) / std::numbers::ln2; }
  static double w(double t) { return 1.0 / (p(t) * std::numbers::ln2 * (1.0 + t)); }
};
}  // namespace noise

// The contract of a noise schedule. A schedule is used through an instance (so a
// run-time choice, RuntimeNoise, is a policy too):
//   s.name()  its name, recorded in checkpoints and parsed back (unique among schedules);
//   s.p(t)    the masking probability at time t in (0, 1], increasing, p(1) close to 1;
//   s.w(t)    the positive NELBO weight, w(t) = p'(t) / p(t) (the reference returns -w;
//             its cosine schedule divides by p(t) + eps); with another w the loss is no
//             longer a bound on the likelihood. tests/test_extending.cpp checks every
//             built-in schedule against a finite difference of p.
// A schedule of one's own is a type with these three members (docs/extending.md); to
// choose it at run time (CLI, checkpoints) add it to AnyNoise below.
template <class S>
concept NoiseSchedule = std::copyable<S> && requires(const S s, double t) {
  { s.name() } -> std::convertible_to<std::string_view>;
  { s.p(t) } -> std::convertible_to<double>;
  { s.w(t) } -> std::convertible_to<double>;
};

// The schedules a run-time choice can name: one list, from which parsing, the error
// message and RuntimeNoise follow.
using AnyNoise =
    std::variant<noise::LogLinear, noise::Cosine, noise::Square, noise::SquareRoot, noise::Log>;

// The names of AnyNoise's schedules, "a, b, c or d".
inline std::string noise_names() {
  std::string out;
  constexpr size_t n = std::variant_size_v<AnyNoise>;
  [&]<size_t... I>(std::index_sequence<I...>) {
    ((out += (I == 0 ? "" : I + 1 == n ? " or " : ", "),
      out += std::variant_alternative_t<I, AnyNoise>{}.name()),
     ...);
  }(std::make_index_sequence<n>{});
  return out;
}

// The schedule named `name`; a usage error naming the known ones otherwise.
inline AnyNoise noise_from_name(std::string_view name) {
  std::optional<AnyNoise> found;
  [&]<size_t... I>(std::index_sequence<I...>) {
    ((!found && std::variant_alternative_t<I, AnyNoise>{}.name() == name
          ? void(found = std::variant_alternative_t<I, AnyNoise>{})
          : void()),
     ...);
  }(std::make_index_sequence<std::variant_size_v<AnyNoise>>{});
  if (!found)
    fail_usage("unknown noise schedule '" + std::string(name) + "' (expected " + noise_names() +
               ")");
  return *found;
}

// The schedule chosen at run time, as a policy (the CLI's models use it).
struct RuntimeNoise {
  AnyNoise schedule = noise::LogLinear{};
  RuntimeNoise() = default;
  explicit RuntimeNoise(AnyNoise s) : schedule(s) {}
  explicit RuntimeNoise(std::string_view name) : schedule(noise_from_name(name)) {}
  std::string_view name() const {
    return std::visit([](auto s) { return s.name(); }, schedule);
  }
  double p(double t) const {
    return std::visit([t](auto s) { return s.p(t); }, schedule);
  }
  double w(double t) const {
    return std::visit([t](auto s) { return s.w(t); }, schedule);
  }
};

}  // namespace bd3
