#!/usr/bin/env bash
# GCC 12 builds everything (library, the bd3 program, tests, benchmarks) with our warnings
# as errors, and runs every test. The release, ASan and TSan builds use clang, but a
# header-only library is compiled by its users' compiler: a GCC run once caught a kernel
# whose bit-for-bit claim held only if the compiler fused a scalar multiply-add
# (docs/reliability.md). About 9 minutes on 2 cores. Usage: scripts/gcc_test.sh [build-dir]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
CXX=g++ CXXFLAGS=-Werror exec "$root/scripts/test.sh" "${1:-$root/build/gcc-test}"
