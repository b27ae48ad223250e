#!/usr/bin/env bash
# Builds attend's examples in build/demo and runs the demo: the step-by-step walkthrough,
# an encoder block over a padded batch and a token-by-token decoder with a KV cache.
#
#   ./demo.sh
#
# On Debian or Ubuntu, as root, it first installs what the project's builds use and is
# missing (Eigen, GoogleTest, Google Benchmark, and cmake and g++ if absent); otherwise it
# says what to install. The demo itself needs only cmake and a C++17 compiler.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
for package in libeigen3-dev libgtest-dev libbenchmark-dev; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
command -v cmake >/dev/null || missing+=(cmake)
command -v c++ >/dev/null || missing+=(g++)

if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "demo.sh: running as root, installing with apt-get: ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  else
    echo "demo.sh: not installed: ${missing[*]}"
    echo "demo.sh: install them with: sudo apt-get install ${missing[*]}"
    echo "demo.sh: trying the demo anyway (it needs only cmake and a C++17 compiler)"
  fi
fi

cmake -S . -B build/demo -DCMAKE_BUILD_TYPE=Release -DATTEND_BUILD_TESTS=OFF \
  -DATTEND_BUILD_BENCH=OFF -DATTEND_BUILD_EXAMPLES=ON
# Building the target `demo` builds the examples and runs them in reading order.
cmake --build build/demo --target demo -j"$(nproc)"
