#!/usr/bin/env bash
# Builds attend and runs all of its tests: the unit tests, the consumer tests (install then
# find_package, add_subdirectory), the header checks and the ODR test. Release build with
# warnings as errors, in build/test.
#
#   ./test.sh [cmake options]     e.g. ./test.sh -DCMAKE_CXX_COMPILER=clang++
#
# On Debian or Ubuntu it first looks for the packages the build needs; run as root, it
# installs the missing ones with apt-get.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

build_dir=build/test
packages=(cmake g++ ninja-build libgtest-dev libbenchmark-dev libeigen3-dev)

section() { printf '\n==== %s ====\n' "$*"; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

section "Dependencies"
if command -v dpkg-query >/dev/null; then
  missing=()
  for package in "${packages[@]}"; do
    installed "$package" || missing+=("$package")
  done
  if ((${#missing[@]} == 0)); then
    echo "all installed: ${packages[*]}"
  elif ((EUID == 0)); then
    echo "installing: ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  else
    echo "warning: not installed: ${missing[*]}" >&2
    echo "  sudo apt-get install ${missing[*]}   (or run this script as root)" >&2
  fi
else
  echo "not Debian: needs CMake >= 3.16, a C++17 compiler, GoogleTest, Google Benchmark, Eigen 3"
fi

section "Configure: $build_dir, Release, warnings as errors"
# Ninja when there is one, for a build tree made fresh (an existing one keeps its generator).
if command -v ninja >/dev/null; then export CMAKE_GENERATOR="${CMAKE_GENERATOR:-Ninja}"; fi
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DATTEND_WERROR=ON "$@"

section "Build"
cmake --build "$build_dir" -j"$(nproc)"

section "Test"
cd "$build_dir"
ctest --output-on-failure -j2
