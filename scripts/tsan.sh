#!/usr/bin/env bash
# ThreadSanitizer run of the threaded code: builds the tsan preset (clang++, LLVM's
# libomp, whose archer tool tells TSan about OpenMP's synchronisation) and runs the tests
# that drive every parallel region with 2-3 threads. Usage: scripts/tsan.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/deps.sh" clang libomp-14-dev
tests=(test_threads test_kernels test_gemm test_attention test_sample test_text_gpt2 test_text_bpe)
cd "$root"
cmake --preset tsan >/dev/null
cmake --build build/tsan -j "$(nproc)" --target "${tests[@]}"
export OMP_TOOL_LIBRARIES=/usr/lib/llvm-14/lib/libarcher.so
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ignore_noninstrumented_modules=1"
export OMP_NUM_THREADS=2
for t in "${tests[@]}"; do
  echo "tsan: $t" >&2
  # [cli] tests run the bd3 program, which is not part of this build.
  "build/tsan/$t" "~[cli]" >"build/tsan/$t.log" 2>&1 || { tail -40 "build/tsan/$t.log" >&2; exit 1; }
  tail -2 "build/tsan/$t.log" | head -1 >&2
done
echo "tsan: no data race reported" >&2
