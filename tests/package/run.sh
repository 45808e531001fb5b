#!/usr/bin/env bash
# Installs bd3 into a temporary prefix and builds the consumer project and the examples
# against it.
set -euo pipefail
src=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_INSTALL_PREFIX="$work/prefix" -DBUILD_TESTING=OFF \
  -DBD3_BUILD_BENCH=OFF -DBD3_BUILD_PROGRAMS=OFF >/dev/null
cmake --install "$work/build" >/dev/null
cmake -S "$src/tests/package" -B "$work/consumer" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/consumer" >/dev/null
"$work/consumer/consumer"
# With MPI on this machine, the package exports bd3::mpi and its gradient chain is exact.
if command -v mpicxx >/dev/null && command -v mpirun >/dev/null; then
  [ -x "$work/consumer/consumer_mpi" ] || { echo "bd3::mpi missing from the installed package" >&2; exit 1; }
  mpirun --allow-run-as-root --oversubscribe --bind-to none -np 3 "$work/consumer/consumer_mpi"
fi
# The example programs against the installed package, as a user copies them (they link
# bd3::native there).
cmake -S "$src/examples" -B "$work/examples" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/examples" -j 2 >/dev/null
for name in quickstart train_tiny custom_schedule custom_attention stream_generate block_size_sweep; do
  [ -x "$work/examples/example_$name" ] || { echo "not built: example_$name" >&2; exit 1; }
done
