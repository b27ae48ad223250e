#!/usr/bin/env bash
# Builds bench/ab (ab.hpp says why): build/ab/ab, holding attend at revision OLD as "old"
# and at NEW, or the working tree, as "new".
#
#   bench/ab/ab.sh OLD [NEW]
#   build/ab/ab decode DL isa=avx512 threads=1 cache=paged calls=30
#   build/ab/ab attention P1 isa=avx2
#
# Each side is the working tree's bench/ab/side.cpp compiled against its revision's
# include/, with baseline flags as a user's program would be; both read the inputs of one
# copy of bench/data.cpp.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
(($# >= 1 && $# <= 2)) || {
  echo "usage: bench/ab/ab.sh OLD [NEW]" >&2
  exit 2
}
out=build/ab
rm -rf "$out"
mkdir -p "$out/old" "$out/new"
git archive "$1" include | tar -x -C "$out/old"
if (($# == 2)); then git archive "$2" include | tar -x -C "$out/new"; else cp -r include "$out/new"; fi

flags=(-std=c++17 -O3 -DNDEBUG -Wall -Wextra -Werror -pthread)
for side in old new; do
  # A namespace of its own for each copy of attend: rename its ABI namespaces.
  config=$out/$side/include/attend/detail/config.hpp
  grep -q '#define ATTEND_ABI v0_' "$config" || {
    echo "ab.sh: $config does not name its ABI namespace as ab.sh expects" >&2
    exit 1
  }
  sed -i "s/#define ATTEND_ABI v0_/#define ATTEND_ABI ab_${side}_v0_/" "$config"
done
# data.cpp once, so that both sides read the same inputs (the same pages of memory).
build() { g++ "${flags[@]}" -I"$out/$1/include" -Ibench "${@:2}"; }
build old -DAB_SIDE=ab_old -c bench/ab/side.cpp -o "$out/side_old.o" &
old_job=$!
build new -DAB_SIDE=ab_new -c bench/ab/side.cpp -o "$out/side_new.o" &
new_job=$!
build new -c bench/data.cpp -o "$out/data.o"
wait "$old_job"
wait "$new_job"
g++ "${flags[@]}" bench/ab/main.cpp "$out"/*.o -o "$out/ab"
echo "built $out/ab: old = $1, new = ${2:-the working tree}"
