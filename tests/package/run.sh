#!/usr/bin/env bash
# Installs bd3 into a temporary prefix and builds the consumer project against it.
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
