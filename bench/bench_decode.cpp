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

#include <attend/decode.hpp>
#include <attend/kv_cache.hpp>

#include <algorithm>
#include <cstdint>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "harness.hpp"
#include "tolerance.hpp"

namespace attend_bench {
namespace {

struct DecodeShape {
  std::string name;
  index_t batch, q_heads, kv_heads, head_dim, capacity;
  std::vector<std::int32_t> lengths;  // [batch]

  double keys() const { return std::accumulate(lengths.begin(), lengths.end(), 0.0); }
  double bytes() const { return 2.0 * kv_heads * head_dim * sizeof(float) * keys(); }
  double flops() const { return 4.0 * q_heads * head_dim * keys(); }
};

std::vector<DecodeShape> decode_shapes() {
  return {
      {"D1", 1, 32, 8, 128, 4096, {4096}},
      {"D2", 16, 32, 8, 128, 2048, std::vector<std::int32_t>(16, 2048)},
      {"DL", 1, 32, 8, 128, 32768, {32768}},
      {"DR", 8, 32, 8, 128, 4096, {4096, 1, 2048, 512, 3000, 17, 1024, 1500}},
      {"DC", 1, 32, 8, 128, 256, {256}},
  };
}

constexpr index_t kBlockSize = 16;

enum class Cache { contiguous, paged, token_major };

// The three caches of one shape with the same logical contents, and the queries.
struct DecodeData {
  std::vector<float> q, k, v;             // q [B, Hq, 1, D]; contiguous k, v [B, Hkv, cap, D]
  std::vector<float> k_pool, v_pool;      // [blocks, Hkv, kBlockSize, D]
  std::vector<float> k_tokens, v_tokens;  // [B, cap, Hkv, D]
  std::vector<std::int32_t> table;        // [B, cap / kBlockSize]
  std::vector<std::int32_t> lengths;

  attend::KvCache<const float> contiguous(const DecodeShape& s) const {
    return {attend::TensorView<const float>::bhsd(k.data(), s.batch, s.kv_heads, s.capacity,
                                                  s.head_dim),
            attend::TensorView<const float>::bhsd(v.data(), s.batch, s.kv_heads, s.capacity,
                                                  s.head_dim),
            lengths};
  }
  attend::KvCache<const float> token_major(const DecodeShape& s) const {
    return {attend::TensorView<const float>::bshd(k_tokens.data(), s.batch, s.capacity, s.kv_heads,
                                                  s.head_dim),
            attend::TensorView<const float>::bshd(v_tokens.data(), s.batch, s.capacity, s.kv_heads,
                                                  s.head_dim),
            lengths};
  }
  attend::PagedKvCache<const float> paged(const DecodeShape& s) const {
    const index_t blocks = index_t(k_pool.size()) / (s.kv_heads * kBlockSize * s.head_dim);
    return {attend::TensorView<const float>::bhsd(k_pool.data(), blocks, s.kv_heads, kBlockSize,
                                                  s.head_dim),
            attend::TensorView<const float>::bhsd(v_pool.data(), blocks, s.kv_heads, kBlockSize,
                                                  s.head_dim),
            {table.data(), s.batch, s.capacity / kBlockSize},
            lengths};
  }
};

const DecodeData& decode_data(const DecodeShape& s) {
  static std::map<std::string, DecodeData> all;
  auto [it, fresh] = all.try_emplace(s.name);
  DecodeData& d = it->second;
  if (!fresh) return d;
  const index_t row = s.head_dim, per_seq = s.kv_heads * s.capacity * row;
  d.q = uniform(std::size_t(s.batch * s.q_heads * row), 1);
  d.k = uniform(std::size_t(s.batch * per_seq), 2);
  d.v = uniform(std::size_t(s.batch * per_seq), 3);
  d.lengths = s.lengths;
  const index_t per_table = s.capacity / kBlockSize, blocks = s.batch * per_table;
  std::vector<std::int32_t> order(static_cast<std::size_t>(blocks));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(4));
  d.table = order;
  d.k_pool.resize(d.k.size()), d.v_pool.resize(d.v.size());
  d.k_tokens.resize(d.k.size()), d.v_tokens.resize(d.v.size());
  const auto contiguous = d.contiguous(s);
  const auto paged = d.paged(s);
  const auto tokens = d.token_major(s);
  const attend::detail::PagedRows<const float> rows{paged.k, paged.v, paged.block_table};
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t g = 0; g < s.kv_heads; ++g)
      for (index_t j = 0; j < s.capacity; ++j) {
        const index_t at = rows.k_row(b, g, j) - d.k_pool.data();
        std::copy_n(contiguous.k.row(b, g, j), row, d.k_pool.data() + at);
        std::copy_n(contiguous.v.row(b, g, j), row, d.v_pool.data() + at);
        const index_t token = tokens.k.row(b, g, j) - d.k_tokens.data();
        std::copy_n(contiguous.k.row(b, g, j), row, d.k_tokens.data() + token);
        std::copy_n(contiguous.v.row(b, g, j), row, d.v_tokens.data() + token);
      }
  return d;
}

attend::TensorView<float> out_view(const DecodeShape& s, float* o) {
  return attend::TensorView<float>::bhsd(o, s.batch, s.q_heads, 1, s.head_dim);
}

attend::TensorView<const float> q_in(const DecodeShape& s, const DecodeData& d) {
  return attend::TensorView<const float>::bhsd(d.q.data(), s.batch, s.q_heads, 1, s.head_dim);
}

void run_decode(const DecodeShape& s, Cache cache, float* o, const attend::Context& ctx) {
  const DecodeData& d = decode_data(s);
  if (cache == Cache::paged)
    attend::decode_attention<float>(q_in(s, d), d.paged(s), out_view(s, o), {}, {}, ctx);
  else
    attend::decode_attention<float>(q_in(s, d),
                                    cache == Cache::contiguous ? d.contiguous(s) : d.token_major(s),
                                    out_view(s, o), {}, {}, ctx);
}

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
