#pragma once
// `bd3 --version` / `bd3 version`: what a bug report needs to know about this binary.
#include <xsimd/xsimd.hpp>

#include <fmt/format.h>

#include <string>

#include "launch.hpp"

#ifndef BD3_VERSION
#define BD3_VERSION "unknown"
#endif
#ifndef BD3_GIT_REVISION
#define BD3_GIT_REVISION "unknown"
#endif

namespace bd3::cli {

inline std::string compiler_name() {
#if defined(__clang__)
  return fmt::format("clang {}.{}.{}", __clang_major__, __clang_minor__, __clang_patchlevel__);
#elif defined(__GNUC__)
  return fmt::format("gcc {}.{}.{}", __GNUC__, __GNUC_MINOR__, __GNUC_PATCHLEVEL__);
#else
  return "unknown";
#endif
}

// The OpenMP specification the compiler implements, from its _OPENMP date.
inline std::string openmp_name() {
#if defined(_OPENMP)
  constexpr long date = _OPENMP;
  const char* spec = date >= 202111   ? "5.2"
                     : date >= 202011 ? "5.1"
                     : date >= 201811 ? "5.0"
                     : date >= 201511 ? "4.5"
                     : date >= 201307 ? "4.0"
                                      : "3.x or older";
  return fmt::format("yes (OpenMP {}, _OPENMP {})", spec, date);
#else
  return "no";
#endif
}

// Lines of "key: value" (the first is "bd3 VERSION").
inline std::string version_text() {
  return fmt::format(
      "bd3 {}\n"
      "git revision: {}\n"
      "compiler: {}\n"
      "simd: {} (xsimd {}.{}.{})\n"
      "openmp: {}\n"
      "mpi: {}",
      BD3_VERSION, BD3_GIT_REVISION, compiler_name(), xsimd::default_arch::name(),
      XSIMD_VERSION_MAJOR, XSIMD_VERSION_MINOR, XSIMD_VERSION_PATCH, openmp_name(), mpi_text());
}

}  // namespace bd3::cli
