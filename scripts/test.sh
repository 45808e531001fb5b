#!/usr/bin/env bash
# Builds bd3 and runs every test (ctest). Usage: scripts/test.sh [build-dir]
# CXX picks the compiler (default clang++), CXXFLAGS adds flags (scripts/gcc_test.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build/release}
"$root/scripts/deps.sh"
# The default corpus (King James Bible from Debian's bible-kjv), for the corpus tests.
export BD3_CORPUS=${BD3_CORPUS:-$build/corpus/kjv.txt}
"$root/scripts/get_corpus.sh" "$BD3_CORPUS"
# clang by default (CXX=g++ for GCC): GCC 12 compiles Eigen's GEMM kernel with spilled
# registers and re-loaded operands, which costs the forward and training passes a quarter
# of their speed (docs/performance.md, "Compilers").
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_COMPILER="${CXX:-clang++}" -DCMAKE_CXX_FLAGS="${CXXFLAGS:-}" >/dev/null
cmake --build "$build" -j "$(nproc)"
cd "$build"
ctest --output-on-failure -j "$(nproc)"
