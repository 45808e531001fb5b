// A noise schedule of one's own: p(t) = t^3, so w(t) = p'(t) / p(t) = 3 / t. Few tokens
// are masked until late in the diffusion. docs/extending.md shows this file.
#pragma once
#include <bd3/policies/noise.hpp>

#include <string_view>

struct CubicNoise {
  static constexpr std::string_view name() { return "cubic"; }
  static double p(double t) { return t * t * t; }
  static double w(double t) { return 3.0 / t; }
};
static_assert(bd3::NoiseSchedule<CubicNoise>);
