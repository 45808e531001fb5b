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
# The example programs against the installed package, as a user copies them (they link
# bd3::native there).
cmake -S "$src/examples" -B "$work/examples" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/examples" -j 2 >/dev/null
for name in quickstart train_tiny custom_schedule custom_attention stream_generate block_size_sweep; do
  [ -x "$work/examples/example_$name" ] || { echo "not built: example_$name" >&2; exit 1; }
done
