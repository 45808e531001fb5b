#!/usr/bin/env bash
# Installs the Debian packages bd3 needs, only those that are missing.
# Usage: scripts/deps.sh [extra-package...]   (scripts that need more name them here)
set -euo pipefail
packages=(build-essential cmake ninja-build pkg-config libeigen3-dev libxsimd-dev xtl-dev catch2
  libbenchmark-dev nlohmann-json3-dev libpcre2-dev libcli11-dev libfmt-dev bible-kjv clang libomp-dev
  gnuplot-nox libopenmpi-dev openmpi-bin "$@")
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bd3: installing Debian packages: ${missing[*]}" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
