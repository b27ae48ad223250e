// Decode attention: the newest query tokens of each sequence against its KV cache.
//
//   O = softmax(scale * Q K^T, masked and modified by the options) V,  K, V = the cache
//
// Shapes:
//   q [B, Hq, Sq, Dk]: Sq new tokens per query batch, usually 1 (more for speculative or
//                      chunked decoding). Their K and V rows must already be in the cache
//                      (append() them first): with the default bottom-right causal mask,
//                      query i of a sequence holding L tokens sees keys 0 .. L - Sq + i.
//   cache: a KvCache or PagedKvCache (kv_cache.hpp) with Hkv heads; Hq a multiple of Hkv.
//   o [B, Hq, Sq, Dv];  lse (optional) [B, Hq, Sq, 1].
// Query batch b reads cache sequence opts.sequences[b], or b when sequences is empty (then B
// is the cache's sequence count). Several queries may read one sequence: beams sharing a
// prompt's cache. Sequences of any lengths mix in one call; keys past a sequence's length
// are never read.
//
// Every option of attention() applies, with the cache's lengths in place of key_lengths
// (which must stay empty); the bias and mask have Sk = the cache's capacity columns.
//
// On SIMD paths the query heads sharing a kv head are computed together (each cache row
// is read once per step), the kv heads of a sequence take turns a tile at a time (a paged
// block is read whole), and long caches are split across tasks whose partial results are
// merged by log-sum-exp (flash-decoding); see detail/simd/decode-inl.hpp. The split
// depends on the shapes and lengths only: results are bit-identical for any thread count.
#pragma once

#include "attend/detail/config.hpp"

#include <cstdint>
#include <vector>

#include "attend/context.hpp"
#include "attend/detail/check.hpp"
#include "attend/detail/dispatch.hpp"
#include "attend/detail/score_rule.hpp"
#include "attend/kv_cache.hpp"
#include "attend/options.hpp"
#include "attend/scores.hpp"
#include "attend/view.hpp"

ATTEND_NAMESPACE_BEGIN

struct DecodeOptions : AttentionOptions {
  DecodeOptions() { causal = true; }  // the queries are the newest tokens of the cache

  // [B] or empty: query batch b reads cache sequence sequences[b] (empty: sequence b).
  Span<const std::int32_t> sequences{};
  // Keys per split-KV task (a task runs that many keys of every kv head of one query
  // batch); 0 chooses from the shapes: about 64 tasks in all, at least 256 keys each.
  // Results depend on it only through rounding.
  index_t split_keys = 0;
};

namespace detail {

// Validates a decode call and returns its options with key_lengths = the length of each
// query batch's sequence (stored in `lengths`).
template <class T, class Cache>
AttentionOptions check_decode(const Checker& c, TensorView<const T> q, const Cache& cache,
                              TensorView<T> o, const DecodeOptions& opts, TensorView<T> lse,
                              std::vector<std::int32_t>& lengths) {
  c.tensor("q", q, {any, any, any, any});
  check_cache(c, cache);
  c.tensor("q", q, {any, any, any, cache.k.dim});
  check_head_groups(c, q.heads, cache.k.heads, "cache.k");
  if (!opts.key_lengths.empty())
    c.fail("opts.key_lengths", "expected none: the cache's lengths say which keys exist");
  if (opts.split_keys < 0)
    c.fail("opts.split_keys",
           "expected 0 (automatic) or a key count, got " + std::to_string(opts.split_keys));
  if (opts.sequences.empty()) {
    c.expect(q.batch, cache.sequences(), "q.batch",
             "one query batch per cache sequence, unless opts.sequences maps them");
  } else {
    c.expect(opts.sequences.size, q.batch, "opts.sequences.size", "one sequence per query batch");
    c.require(opts.sequences.data != nullptr, "opts.sequences", "null data");
  }
  lengths.resize(std::size_t(q.batch));
  for (index_t b = 0; b < q.batch; ++b) {
    const index_t s = opts.sequences.empty() ? b : opts.sequences[b];
    if (s < 0 || s >= cache.sequences())
      c.fail("opts.sequences", "entry " + std::to_string(b) + " = " + std::to_string(s) +
                                   " is not a sequence of the cache [0, " +
                                   std::to_string(cache.sequences()) + ")");
    lengths[std::size_t(b)] = cache.lengths[s];
  }
  c.tensor("o", o, {q.batch, q.heads, q.seq, cache.v.dim});
  c.distinct_elements("o", o);
  if (opts.scale) check_scale(c, *opts.scale, kMaxFactor);
  AttentionOptions eff = static_cast<const AttentionOptions&>(opts);  // the score options
  eff.key_lengths = {lengths.data(), index_t(lengths.size())};
  check_score_options(c, eff, q.batch, q.heads, q.seq, cache.capacity());
  const auto clear = [&](const char* name, const TensorView<T>& out) {
    c.disjoint(name, out, "q", q);
    c.disjoint(name, out, "cache.k", cache.k);
    c.disjoint(name, out, "cache.v", cache.v);
    c.disjoint(name, out, "cache.lengths", cache.lengths);
    c.disjoint(name, out, "cache.block_table", table_of(cache));
    c.disjoint(name, out, "opts.sequences", opts.sequences);
    check_clear_of_options(c, name, out, opts);
  };
  clear("o", o);
  if (given(lse)) {
    c.tensor("lse", lse, {q.batch, q.heads, q.seq, 1});
    c.distinct_elements("lse", lse);
    c.disjoint("lse", lse, "o", o);
    clear("lse", lse);
  }
  return eff;
}

template <class T, class Cache>
void decode_attention(TensorView<const T> q, const Cache& cache, TensorView<T> o,
                      const DecodeOptions& opts, TensorView<T> lse, const Context& ctx) {
  std::vector<std::int32_t> lengths;
  const Checker c("decode_attention");
  const AttentionOptions eff = check_decode<T>(c, q, cache, o, opts, lse, lengths);
  decode<T>(c.isa(ctx), executor_of(ctx), q, rows_of(cache), cache.k.heads, cache.v.dim,
            opts.sequences.empty() ? nullptr : opts.sequences.data, eff, cache.capacity(), o, lse,
            opts.split_keys);
}

}  // namespace detail

// o = attention of q against a contiguous KV cache; see the top of this file.
template <class T>
void decode_attention(TensorIn<T> q, KvCacheIn<T> cache, TensorView<T> o,
                      const DecodeOptions& opts = {}, TensorView<T> lse = {},
                      const Context& ctx = {}) {
  detail::decode_attention<T>(q, cache, o, opts, lse, ctx);
}

// o = attention of q against a paged KV cache; see the top of this file.
template <class T>
void decode_attention(TensorIn<T> q, PagedKvCacheIn<T> cache, TensorView<T> o,
                      const DecodeOptions& opts = {}, TensorView<T> lse = {},
                      const Context& ctx = {}) {
  detail::decode_attention<T>(q, cache, o, opts, lse, ctx);
}

ATTEND_NAMESPACE_END
