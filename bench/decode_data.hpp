// The decode benchmarks' shapes and caches (bench_decode.cpp describes them), apart from
// Google Benchmark so that bench/ab can build them too.
#pragma once

#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "attend/context.hpp"
#include "attend/decode.hpp"
#include "attend/kv_cache.hpp"
#include "attend/view.hpp"

namespace attend_bench {

using attend::index_t;

struct DecodeShape {
  std::string name;
  index_t batch, q_heads, kv_heads, head_dim, capacity;
  std::vector<std::int32_t> lengths;  // [batch]

  double keys() const { return std::accumulate(lengths.begin(), lengths.end(), 0.0); }
  double bytes() const { return 2.0 * kv_heads * head_dim * sizeof(float) * keys(); }
  double flops() const { return 4.0 * q_heads * head_dim * keys(); }
};

inline std::vector<DecodeShape> decode_shapes() {
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
};

// The caches of shape `s` (by name), created on first use and kept for the run.
const DecodeData& decode_data(const DecodeShape& s);

// What follows makes attend's types, so it lives in attend's ABI namespace
// (detail/config.hpp), as attend does: bench/ab builds it against two revisions of attend
// into one program, in which both read the same DecodeData.
inline namespace ATTEND_ABI {

// Each cache of `d` as attend sees it.
inline attend::KvCache<const float> contiguous_cache(const DecodeShape& s, const DecodeData& d) {
  using View = attend::TensorView<const float>;
  return {View::bhsd(d.k.data(), s.batch, s.kv_heads, s.capacity, s.head_dim),
          View::bhsd(d.v.data(), s.batch, s.kv_heads, s.capacity, s.head_dim), d.lengths};
}
inline attend::KvCache<const float> token_major_cache(const DecodeShape& s, const DecodeData& d) {
  using View = attend::TensorView<const float>;
  return {View::bshd(d.k_tokens.data(), s.batch, s.capacity, s.kv_heads, s.head_dim),
          View::bshd(d.v_tokens.data(), s.batch, s.capacity, s.kv_heads, s.head_dim), d.lengths};
}
inline attend::PagedKvCache<const float> paged_cache(const DecodeShape& s, const DecodeData& d) {
  using View = attend::TensorView<const float>;
  const index_t blocks = index_t(d.k_pool.size()) / (s.kv_heads * kBlockSize * s.head_dim);
  return {View::bhsd(d.k_pool.data(), blocks, s.kv_heads, kBlockSize, s.head_dim),
          View::bhsd(d.v_pool.data(), blocks, s.kv_heads, kBlockSize, s.head_dim),
          {d.table.data(), s.batch, s.capacity / kBlockSize},
          d.lengths};
}

// Views of the output o [B, Hq, 1, D] and the queries q [B, Hq, 1, D].
inline attend::TensorView<float> out_view(const DecodeShape& s, float* o) {
  return attend::TensorView<float>::bhsd(o, s.batch, s.q_heads, 1, s.head_dim);
}
inline attend::TensorView<const float> q_in(const DecodeShape& s, const DecodeData& d) {
  return attend::TensorView<const float>::bhsd(d.q.data(), s.batch, s.q_heads, 1, s.head_dim);
}

// One decode step of every sequence of `s` against its `cache`.
inline void run_decode(const DecodeShape& s, Cache cache, float* o, const attend::Context& ctx) {
  const DecodeData& d = decode_data(s);
  if (cache == Cache::paged)
    attend::decode_attention<float>(q_in(s, d), paged_cache(s, d), out_view(s, o), {}, {}, ctx);
  else
    attend::decode_attention<float>(
        q_in(s, d), cache == Cache::contiguous ? contiguous_cache(s, d) : token_major_cache(s, d),
        out_view(s, o), {}, {}, ctx);
}

}  // namespace ATTEND_ABI

}  // namespace attend_bench
