#!/usr/bin/env bash
# `cmake --install` of a configured and built tree into a temporary prefix installs the bd3
# program and bd3.pc: the installed program runs (`bd3 --version`), and pkg-config finds
# the headers (a file that includes one compiles with `pkg-config --cflags bd3` alone).
# Usage: tests/package/install_program.sh BUILD_DIR
set -euo pipefail
build=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
bin="$work/prefix/bin/bd3"
[[ -x "$bin" ]] || { echo "install_program: no $bin after cmake --install" >&2; exit 1; }
version=$("$bin" --version)
echo "$version"
[[ "$version" == "bd3 "* ]] || { echo "install_program: unexpected --version output" >&2; exit 1; }
[[ "$("$bin" version)" == "$version" ]] || { echo "install_program: bd3 version differs from --version" >&2; exit 1; }

pc_dir=$(dirname "$(find "$work/prefix" -name bd3.pc | head -n 1)")
[[ -f "$pc_dir/bd3.pc" ]] || { echo "install_program: no bd3.pc installed" >&2; exit 1; }
export PKG_CONFIG_PATH="$pc_dir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
[[ "$(pkg-config --modversion bd3)" == "$(echo "$version" | head -n 1 | cut -d' ' -f2)" ]] ||
  { echo "install_program: bd3.pc's version is not the program's" >&2; exit 1; }
cflags=$(pkg-config --cflags bd3)
# The include directory is named relative to bd3.pc's own place (relocatable).
found=""
for flag in $cflags; do
  [[ $flag == -I* && -f ${flag#-I}/bd3/error.hpp ]] || continue
  [[ $(readlink -f "${flag#-I}") == "$(readlink -f "$work/prefix")"/* ]] && found=1
done
[[ -n $found ]] ||
  { echo "install_program: pkg-config --cflags bd3 does not name the prefix's headers: $cflags" >&2; exit 1; }
# Only the installed headers: compiled from an empty directory, with the flags bd3.pc gives.
cd "$work"
printf '#include <bd3/error.hpp>\n#include <bd3/io/npy.hpp>\nint main() { return 0; }\n' >main.cpp
"${CXX:-c++}" -fsyntax-only $cflags main.cpp
echo "install_program: ok"
