#!/usr/bin/env bash
# GCC compiles every target of the project (library headers, the bd3 program, tests,
# benchmarks) without a warning: -fsyntax-only -Werror over the release-gcc preset's
# compile commands. The release, ASan and TSan builds use clang; this keeps GCC honest
# in a few minutes instead of a full optimised build. Usage: scripts/gcc_check.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/deps.sh"
command -v python3 >/dev/null || "$root/scripts/deps.sh" python3
cd "$root"
cmake --preset release-gcc -DCMAKE_EXPORT_COMPILE_COMMANDS=ON >/dev/null
python3 scripts/gcc_check.py build/release-gcc "$(nproc)"
