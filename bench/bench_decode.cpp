// attend::decode_attention: one new token per sequence against its KV cache, contiguous and
// paged, on every path of attend.
//
// Shapes (fp32, D = 128, Hq = 32, Hkv = 8, one query per sequence):
//   D1  one sequence of 4096 tokens (K + V 33.5 MB: fits this machine's caches)
//   D2  16 sequences of 2048 tokens (268 MB: streams from DRAM)
//   DL  one sequence of 32768 tokens (268 MB): long context, split-KV across tasks
//   DR  a ragged batch of 8 sequences, 1 to 4096 tokens (capacity 4096 each)
//   DC  one sequence of 256 tokens (2 MB: stays in L2 between iterations): the kernel's
//       own ceiling, what it reaches when memory never stalls it
// D1 and D2 are the peers' shapes (/work/shared/peers/README.md).
//
// Counters: bytes of K and V that exist (the keys the sequences hold) per call: decode is
// bound by reading them, so GB/s against the machine's read bandwidth at the same working
// set (shared/peers `limits bw`) is the figure of merit; FLOPS = 4 Hq D per key.
//
// Three caches hold the same logical tokens:
//   Contiguous  k, v [B, Hkv, capacity, D]: each kv head's rows one run of memory.
//   Paged       blocks of 16 tokens (vLLM's default), [blocks, Hkv, 16, D], whose order in
//               the pool is shuffled, so consecutive blocks of a sequence are never adjacent.
//   TokenMajor  k, v [B, capacity, Hkv, D]: a token's kv heads side by side, as a fused QKV
//               projection writes them; one kv head's rows are Hkv * D floats apart.

#include <cmath>
#include <string>
#include <vector>

#include "decode_data.hpp"
#include "harness.hpp"
#include "tolerance.hpp"

namespace attend_bench {
namespace {

const char* name(Cache cache) {
  return cache == Cache::contiguous ? "Contiguous"
                                    : (cache == Cache::paged ? "Paged" : "TokenMajor");
}

// attend on `path` against attend's portable path (the unfused composition) on one thread.
Agreement check_decode(const DecodeShape& s, Cache cache, const Target& path) {
  const std::vector<float>& theirs = baseline_output("Decode/" + s.name, [&] {
    std::vector<float> o(std::size_t(s.batch * s.q_heads * s.head_dim));
    attend::Context portable;
    portable.isa = attend::Isa::portable;
    run_decode(s, Cache::contiguous, o.data(), portable);
    return o;
  });
  std::vector<float> ours(theirs.size());
  run_decode(s, cache, ours.data(), path.context);
  // A row's error: its logits' (dot products of D terms, magnitude <= D * 1 * 1 * scale)
  // move the probabilities, then a merge of up to `capacity` values of magnitude <= 1.
  const double logit_error =
      dot_error(s.head_dim, double(s.head_dim) / std::sqrt(double(s.head_dim)));
  const double tolerance = 2 * (2 * logit_error + softmax_relative_error(s.capacity) +
                                lambda * std::sqrt(double(s.capacity)) * unit_roundoff);
  return compare(ours, theirs, tolerance);
}

void decode_attend(benchmark::State& state, const DecodeShape& s, Cache cache, const Target& t) {
  const std::string key = std::string("Decode") + name(cache) + "/" + s.name;
  if (!validated(state, key, t, [&] { return check_decode(s, cache, t); })) return;
  time_kernel(state, std::size_t(s.batch * s.q_heads * s.head_dim),
              [&](float* o) { run_decode(s, cache, o, t.context); });
  report(state, t, s.flops(), s.bytes());
}

}  // namespace

void register_decode_benchmarks() {
  for (const DecodeShape& s : decode_shapes())
    for (const Target& t : attend_targets()) {
      if (t.context.isa == attend::Isa::portable) continue;  // the reference; minutes at DL
      for (Cache c : {Cache::contiguous, Cache::paged, Cache::token_major})
        register_benchmark(std::string("Decode_") + name(c), s.name, t,
                           [s, t, c](benchmark::State& st) { decode_attend(st, s, c, t); });
    }
}

}  // namespace attend_bench
