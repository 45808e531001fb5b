#!/usr/bin/env bash
# The whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer (the asan
# preset: our own targets instrumented, -fno-sanitize-recover, leak checking on).
# clang at -O1 -g1: GCC's -O2 -g build of the same took 3.5x as long to compile and its
# tests ran 3x slower (xsimd's functions stay out of line under GCC's ASan), which pushed
# CI past its 90 minutes; scripts/gcc_test.sh keeps GCC in CI (an optimised build).
# Usage: scripts/asan.sh [ctest-args...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build/asan
"$root/scripts/deps.sh"
export BD3_CORPUS=${BD3_CORPUS:-$build/corpus/kjv.txt}
"$root/scripts/get_corpus.sh" "$BD3_CORPUS"
cd "$root"
cmake --preset asan >/dev/null
cmake --build build/asan -j "$(nproc)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cd "$build"
ctest --output-on-failure -j "$(nproc)" -LE mpi "$@"
# The mpirun tests (label mpi) without leak checking: Open MPI keeps allocations alive past
# MPI_Finalize by design, and the leak report would be about them, not about bd3.
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 ctest --output-on-failure -j "$(nproc)" -L mpi "$@"
