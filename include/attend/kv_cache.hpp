// KV caches: where the keys and values of past tokens wait for the next decode step.
//
// Generating token t needs the keys and values of tokens 0..t of its sequence. They never
// change once computed, so an engine keeps them in a cache and appends one row per token.
// attend reads and writes two layouts, each a non-owning view over the engine's buffers:
//
// KvCache, contiguous: each sequence owns `capacity` token slots.
//   k [sequences, kv_heads, capacity, dk]   v [sequences, kv_heads, capacity, dv]
//   lengths [sequences]: sequence s holds tokens [0, lengths[s]).
//
// PagedKvCache (PagedAttention: Kwon et al. 2023, as in vLLM): tokens live in fixed-size
// blocks drawn from one pool, so memory is handed out block by block as sequences grow.
//   k [blocks, kv_heads, block_size, dk]    v [blocks, kv_heads, block_size, dv]
//   block_table [sequences, max_blocks]: token t of sequence s is row t % block_size of
//                pool block block_table(s, t / block_size); entries past the sequence's
//                last block are not read (the engine may leave them -1).
//   lengths [sequences]
//
// Blocks may be shared by several sequences (a common prefix): reading them is safe, but
// append() writes into the block that holds a sequence's next token, so before appending
// to a shared block the engine copies it (copy-on-write, as vLLM does).
//
// Any strides work (TensorView), so [sequences, capacity, kv_heads, d] caches written by a
// fused QKV projection are views too. The engine owns allocation: attend never grows a
// cache, and append() refuses (std::invalid_argument, nothing written) to write past a
// sequence's capacity or its last assigned block.
//
// Decode streams the whole cache on every step, so how the engine allocates it shows. Rows
// of 128 floats that start on 64-byte boundaries touch 8 cache lines each, not 9. A pool on
// 2 MiB pages (aligned_alloc(2 << 20, ...) and madvise(MADV_HUGEPAGE) before the first
// touch) spares the TLB misses of blocks scattered over it: on Zen 4, a 268 MB cache read
// 10-15% faster that way (bench/RESULTS.md). Decode reads a paged block's kv heads back to
// back (decode-inl.hpp), so blocks of 16 tokens of 8 kv heads already stream as 64 KiB runs.
#pragma once

#include "attend/detail/config.hpp"

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "attend/context.hpp"
#include "attend/detail/check.hpp"
#include "attend/view.hpp"

ATTEND_NAMESPACE_BEGIN

namespace detail {
// A cache whose elements are const has const lengths too: readers never change them.
template <class T>
using length_t = std::conditional_t<std::is_const_v<T>, const std::int32_t, std::int32_t>;
}  // namespace detail

template <class T>
struct KvCache {
  TensorView<T> k;                    // [sequences, kv_heads, capacity, dk]
  TensorView<T> v;                    // [sequences, kv_heads, capacity, dv]
  Span<detail::length_t<T>> lengths;  // [sequences]

  index_t sequences() const { return k.batch; }
  index_t capacity() const { return k.seq; }

  operator KvCache<const T>() const {  // NOLINT(google-explicit-constructor): read-only view
    return {k, v, {lengths.data, lengths.size}};
  }
};

template <class T>
struct PagedKvCache {
  TensorView<T> k;                             // [blocks, kv_heads, block_size, dk]
  TensorView<T> v;                             // [blocks, kv_heads, block_size, dv]
  MatrixView<const std::int32_t> block_table;  // [sequences, max_blocks]
  Span<detail::length_t<T>> lengths;           // [sequences]

  index_t sequences() const { return block_table.rows; }
  index_t block_size() const { return k.seq; }
  // The most tokens a sequence can hold: every entry of its block-table row assigned.
  index_t capacity() const { return block_table.cols * k.seq; }

  operator PagedKvCache<const T>() const {  // NOLINT(google-explicit-constructor)
    return {k, v, block_table, {lengths.data, lengths.size}};
  }
};

// Read-only caches as function parameters (the element type is deduced from the output).
template <class T>
using KvCacheIn = typename detail::identity<KvCache<const T>>::type;
template <class T>
using PagedKvCacheIn = typename detail::identity<PagedKvCache<const T>>::type;

namespace detail {

// Where row j of sequence s, kv head g lives, for both layouts: the kernels read caches
// through these, one row pointer at a time.
// gather(s, g, j0, n, kp, vp) writes the row pointers of keys [j0, j0 + n) at once, as the
// kernels read them a tile at a time: one block-table lookup per block, not per row.
template <class T>
struct ContiguousRows {
  TensorView<T> k, v;
  // Which cache row token j of sequence s is, as one number (distinct rows, distinct slots).
  index_t slot(index_t s, index_t j) const { return s * k.seq + j; }
  T* k_row(index_t s, index_t g, index_t j) const { return k.row(s, g, j); }
  T* v_row(index_t s, index_t g, index_t j) const { return v.row(s, g, j); }
  void gather(index_t s, index_t g, index_t j0, index_t n, T** kp, T** vp) const {
    T* kr = k.row(s, g, j0);
    T* vr = v.row(s, g, j0);
    for (index_t i = 0; i < n; ++i) kp[i] = kr + i * k.seq_stride, vp[i] = vr + i * v.seq_stride;
  }
};

template <class T>
struct PagedRows {
  TensorView<T> k, v;
  MatrixView<const std::int32_t> table;
  index_t slot(index_t s, index_t j) const { return table(s, j / k.seq) * k.seq + j % k.seq; }
  T* k_row(index_t s, index_t g, index_t j) const {
    return k.row(table(s, j / k.seq), g, j % k.seq);
  }
  T* v_row(index_t s, index_t g, index_t j) const {
    return v.row(table(s, j / k.seq), g, j % k.seq);
  }
  void gather(index_t s, index_t g, index_t j0, index_t n, T** kp, T** vp) const {
    const index_t bs = k.seq;
    for (index_t i = 0; i < n;) {
      const index_t j = j0 + i, block = table(s, j / bs), in_block = std::min(n - i, bs - j % bs);
      T* kr = k.row(block, g, j % bs);
      T* vr = v.row(block, g, j % bs);
      for (index_t r = 0; r < in_block; ++r, ++i)
        kp[i] = kr + r * k.seq_stride, vp[i] = vr + r * v.seq_stride;
    }
  }
};

// The block table of a paged cache; none for a contiguous one.
template <class T>
MatrixView<const std::int32_t> table_of(const KvCache<T>&) {
  return {};
}
template <class T>
MatrixView<const std::int32_t> table_of(const PagedKvCache<T>& c) {
  return c.block_table;
}

template <class T>
ContiguousRows<T> rows_of(const KvCache<T>& c) {
  return {c.k, c.v};
}
template <class T>
PagedRows<T> rows_of(const PagedKvCache<T>& c) {
  return {c.k, c.v, c.block_table};
}

// The checks shared by both layouts: k and v agree, one length per sequence, each in
// [0, capacity].
template <class Cache>
void check_cache_common(const Checker& c, const Cache& cache, index_t batch_extent,
                        const char* batch_what) {
  c.tensor("cache.k", cache.k, {batch_extent, any, any, any});
  c.tensor("cache.v", cache.v, {cache.k.batch, cache.k.heads, cache.k.seq, any});
  c.distinct_elements("cache.k", cache.k);  // append writes them; decode never aliases
  c.distinct_elements("cache.v", cache.v);
  c.disjoint("cache.k", cache.k, "cache.v", cache.v);
  c.expect(cache.lengths.size, cache.sequences(), "cache.lengths.size",
           std::string("one length per sequence, ") + batch_what);
  if (cache.lengths.size > 0)
    c.require(cache.lengths.data != nullptr, "cache.lengths", "null data");
  for (index_t s = 0; s < cache.lengths.size; ++s)
    if (cache.lengths[s] < 0 || cache.lengths[s] > cache.capacity())
      c.fail("cache.lengths", "expected every length in [0, " + std::to_string(cache.capacity()) +
                                  "], got " + std::to_string(cache.lengths[s]) + " at sequence " +
                                  std::to_string(s));
}

template <class T>
void check_cache(const Checker& c, const KvCache<T>& cache) {
  check_cache_common(c, cache, any, "the batch extent of cache.k");
}

// Paged: also the block table, whose entries for tokens [0, up_to[s]) must name pool
// blocks; up_to defaults to the lengths.
template <class T>
void check_cache(const Checker& c, const PagedKvCache<T>& cache,
                 const std::vector<index_t>& up_to = {}) {
  c.matrix("cache.block_table", cache.block_table, any, any);
  check_cache_common(c, cache, any, "the rows of cache.block_table");
  const index_t bs = cache.block_size(), blocks = cache.k.batch;
  if (bs <= 0 && cache.block_table.cols > 0)
    c.fail("cache.k", "expected a block size (extent 2) of at least 1, got " + std::to_string(bs));
  for (index_t s = 0; s < cache.sequences(); ++s) {
    const index_t tokens = up_to.empty() ? cache.lengths[s] : up_to[std::size_t(s)];
    for (index_t i = 0; i * bs < tokens; ++i) {
      const std::int32_t block = cache.block_table(s, i);
      if (block < 0 || block >= blocks)
        c.fail("cache.block_table",
               "entry (" + std::to_string(s) + ", " + std::to_string(i) +
                   ") = " + std::to_string(block) + " is not a block of the pool [0, " +
                   std::to_string(blocks) + ") but sequence " + std::to_string(s) +
                   " needs it for " + std::to_string(tokens) + " tokens");
    }
  }
}

// Appended rows may not land twice on one cache row (two sequences sharing a block, or a
// repeated sequence index): the second write would silently win. Rows are compared by
// slot, not address: rows of no elements (Dk = 0) may share one address.
template <class Rows>
void check_distinct_targets(const Checker& c, const Rows& rows, const std::vector<index_t>& seqs,
                            const std::vector<index_t>& first, index_t n) {
  std::vector<index_t> targets;
  targets.reserve(seqs.size() * std::size_t(n));
  for (std::size_t b = 0; b < seqs.size(); ++b)
    for (index_t t = 0; t < n; ++t) targets.push_back(rows.slot(seqs[b], first[b] + t));
  std::sort(targets.begin(), targets.end());
  if (std::adjacent_find(targets.begin(), targets.end()) != targets.end())
    c.fail("sequences",
           "two appended tokens map to the same cache row (a repeated sequence, or "
           "sequences sharing a block)");
}

template <class T, class Cache>
void append_rows(const Checker& c, const Cache& cache, TensorView<const T> k_new,
                 TensorView<const T> v_new, Span<const std::int32_t> sequences,
                 const Context& ctx) {
  if (sequences.size < 0)
    c.fail("sequences.size", "expected a count >= 0, got " + std::to_string(sequences.size));
  c.tensor(
      "k_new", k_new,
      {sequences.empty() ? cache.sequences() : sequences.size, cache.k.heads, any, cache.k.dim});
  c.tensor("v_new", v_new, {k_new.batch, k_new.heads, k_new.seq, cache.v.dim});
  if (!sequences.empty()) c.require(sequences.data != nullptr, "sequences", "null data");
  const index_t n = k_new.seq;
  std::vector<index_t> seqs(std::size_t(k_new.batch)), first(seqs.size());
  for (index_t b = 0; b < k_new.batch; ++b) {
    const index_t s = sequences.empty() ? b : sequences[b];
    if (s < 0 || s >= cache.sequences())
      c.fail("sequences", "entry " + std::to_string(b) + " = " + std::to_string(s) +
                              " is not a sequence of the cache [0, " +
                              std::to_string(cache.sequences()) + ")");
    if (cache.lengths[s] + n > cache.capacity())
      c.fail("cache", "sequence " + std::to_string(s) + " holds " +
                          std::to_string(cache.lengths[s]) + " of " +
                          std::to_string(cache.capacity()) + " tokens: no room for " +
                          std::to_string(n) + " more");
    seqs[std::size_t(b)] = s, first[std::size_t(b)] = cache.lengths[s];
  }
  if constexpr (std::is_same_v<Cache, PagedKvCache<T>>) {
    // The new tokens need their blocks assigned too.
    std::vector<index_t> up_to(std::size_t(cache.sequences()));
    for (index_t s = 0; s < cache.sequences(); ++s) up_to[std::size_t(s)] = cache.lengths[s];
    for (std::size_t b = 0; b < seqs.size(); ++b) up_to[std::size_t(seqs[b])] = first[b] + n;
    check_cache(c, cache, up_to);
  }
  const auto rows = rows_of(cache);
  check_distinct_targets(c, rows, seqs, first, n);
  for (const auto& [arg, t] : {std::pair{"k_new", k_new}, std::pair{"v_new", v_new}}) {
    c.disjoint(arg, t, "cache.k", cache.k);  // an input read while the cache is written
    c.disjoint(arg, t, "cache.v", cache.v);
  }
  c.disjoint("cache.lengths", cache.lengths, "sequences", sequences);
  for (const auto& [arg, t] : {std::pair{"cache.k", cache.k}, std::pair{"cache.v", cache.v}}) {
    c.disjoint(arg, t, "cache.lengths", cache.lengths);
    c.disjoint(arg, t, "cache.block_table", table_of(cache));
  }

  // Validated: now write. Rows first, lengths last, one task per appended sequence.
  executor_of(ctx).parallel_for(k_new.batch, [&](index_t b) {
    const index_t s = seqs[std::size_t(b)];
    for (index_t g = 0; g < k_new.heads; ++g)
      for (index_t t = 0; t < n; ++t) {
        std::copy_n(k_new.row(b, g, t), k_new.dim, rows.k_row(s, g, first[std::size_t(b)] + t));
        std::copy_n(v_new.row(b, g, t), v_new.dim, rows.v_row(s, g, first[std::size_t(b)] + t));
      }
  });
  for (std::size_t b = 0; b < seqs.size(); ++b) cache.lengths[seqs[b]] = std::int32_t(first[b] + n);
}

}  // namespace detail

// Appends n tokens to sequences of the cache: k_new [B, kv_heads, n, dk] and v_new
// [B, kv_heads, n, dv] (e.g. the K and V heads of a QKV projection, any strides) become
// rows lengths[s] .. lengths[s] + n - 1 of sequence s = sequences[b] (s = b when sequences
// is empty, then B must equal the cache's sequence count), and lengths[s] grows by n.
// Throws, writing nothing, when a sequence lacks room, a needed block-table entry is not a
// pool block, two tokens would land on one row, or k_new/v_new overlap the cache.
template <class T>
void append(const KvCache<T>& cache, TensorIn<T> k_new, TensorIn<T> v_new,
            SpanIn<std::int32_t> sequences = {}, const Context& ctx = {}) {
  static_assert(!std::is_const_v<T>, "append writes the cache: pass a KvCache<float>");
  const detail::Checker c("append");
  detail::check_cache(c, cache);
  detail::append_rows<T>(c, cache, k_new, v_new, sequences, ctx);
}

template <class T>
void append(const PagedKvCache<T>& cache, TensorIn<T> k_new, TensorIn<T> v_new,
            SpanIn<std::int32_t> sequences = {}, const Context& ctx = {}) {
  static_assert(!std::is_const_v<T>, "append writes the cache: pass a PagedKvCache<float>");
  const detail::Checker c("append");
  detail::check_cache(c, cache);
  detail::append_rows<T>(c, cache, k_new, v_new, sequences, ctx);
}

ATTEND_NAMESPACE_END
