# Sourced by .ci/fuzz, .ci/lint and .ci/sanitizers.
#
# need_packages PACKAGE...: on Debian or Ubuntu, installs the packages that are missing
# when run as root (as test.sh does), else names them. Elsewhere it does nothing: the
# tools must then be on PATH.
need_packages() {
  command -v dpkg-query >/dev/null || return 0
  local missing=() package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$package")
  done
  ((${#missing[@]} == 0)) && return 0
  if ((EUID == 0)); then
    echo "installing: ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  else
    echo "warning: not installed: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
  fi
}

# The packages every build needs (test.sh's list), and clang with its sanitizer and
# libFuzzer runtimes.
build_packages=(cmake g++ ninja-build libgtest-dev libeigen3-dev)
clang_packages=(clang libclang-rt-14-dev)

# Parallel build jobs: ATTEND_CI_JOBS, else one per core.
jobs=${ATTEND_CI_JOBS:-$(nproc)}

section() { printf '\n==== %s ====\n' "$*"; }

# Runs a command and says how long it took (wall clock, and CPU time of its processes).
timed() {
  local TIMEFORMAT="[$(basename "$0")] ${*:1:3}: %0R s wall, %0U s user + %0S s system"
  time "$@"
}
