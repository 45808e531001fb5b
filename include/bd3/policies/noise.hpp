#pragma once
// Noise schedule policies (SPEC "Noise schedules"): each maps t in (0, 1] to a masking
// probability p(t) and a positive NELBO weight w(t) (the reference returns -w).
#include <bd3/error.hpp>

#include <cmath>
#include <concepts>
#include <numbers>
#include <string>
#include <string_view>
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

// A schedule is used through an instance (so a run-time choice, RuntimeNoise, is a
// policy too): s.p(t), s.w(t), s.name().
template <class S>
concept NoiseSchedule = std::copyable<S> && requires(const S s, double t) {
  { s.name() } -> std::convertible_to<std::string_view>;
  { s.p(t) } -> std::convertible_to<double>;
  { s.w(t) } -> std::convertible_to<double>;
};

// A schedule chosen at run time (CLI, checkpoints): one of the five policy types.
using AnyNoise =
    std::variant<noise::LogLinear, noise::Cosine, noise::Square, noise::SquareRoot, noise::Log>;

inline AnyNoise noise_from_name(std::string_view name) {
  if (name == noise::LogLinear::name()) return noise::LogLinear{};
  if (name == noise::Cosine::name()) return noise::Cosine{};
  if (name == noise::Square::name()) return noise::Square{};
  if (name == noise::SquareRoot::name()) return noise::SquareRoot{};
  if (name == noise::Log::name()) return noise::Log{};
  fail_usage("unknown noise schedule '" + std::string(name) +
             "' (expected loglinear, cosine, square, square_root or log)");
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
