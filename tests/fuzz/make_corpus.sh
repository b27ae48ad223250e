#!/usr/bin/env bash
# Writes the seed corpus of each fuzz target: tests/fuzz/corpus/<target>/seed-<n> for n =
# 1..5, pseudo-random bytes of 48 to 1536 bytes from a fixed linear congruential generator
# (the same files on every machine and bash version). Any bytes decode to a whole case
# (fuzz_support.hpp): the short seeds give small problems with default values, the long
# ones fill their tensors from the bytes; which shapes, options and paths each seed decodes
# to shows with
#   ATTEND_FUZZ_PRINT=1 build/fuzz/tests/fuzz/fuzz_attention -runs=0 tests/fuzz/corpus/fuzz_attention
#
#   tests/fuzz/make_corpus.sh            (re)writes every target's seeds
#   tests/fuzz/make_corpus.sh fuzz_x     one target (a new one: add it to the list below)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

targets=("$@")
((${#targets[@]})) || targets=(fuzz_softmax fuzz_attention fuzz_linear fuzz_decode)
sizes=(48 160 400 900 1536)

state=0
next_byte() {  # glibc's rand() constants; the byte is bits 16..23 of the state
  state=$(((state * 1103515245 + 12345) & 0x7fffffff))
  byte=$(((state >> 16) & 0xff))
}

for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  rm -f "corpus/$target"/seed-*
  state=$(printf '%s' "$target" | cksum | cut -d' ' -f1)  # one stream per target name
  for n in "${!sizes[@]}"; do
    escapes=""
    for ((i = 0; i < sizes[n]; ++i)); do
      next_byte
      printf -v hex '\\x%02x' "$byte"
      escapes+=$hex
    done
    printf '%b' "$escapes" >"corpus/$target/seed-$((n + 1))"
  done
  echo "corpus/$target: ${#sizes[@]} seeds, $(cat "corpus/$target"/seed-* | wc -c) bytes"
done
