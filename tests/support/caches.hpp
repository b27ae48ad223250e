// KV caches for the tests of kv_cache.hpp and decode.hpp: contiguous and paged caches in
// padded buffers (canaries outside the views, as in buffers.hpp), paged ones with random,
// non-monotonic block tables, and each cache's row addresses computed here from the layout
// the headers document, not through the library's own row sources.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "attend/kv_cache.hpp"
#include "support/buffers.hpp"

namespace testing_support {

// A contiguous cache: k [sequences, kv_heads, capacity, dk], v [..., dv], BHSD or BSHD
// ([sequences, capacity, kv_heads, d], the layout a fused QKV projection writes).
template <class T>
struct ContiguousCacheBuffer {
  TensorBuffer<T> k, v;
  std::vector<std::int32_t> lengths;

  ContiguousCacheBuffer(index_t sequences, index_t kv_heads, index_t capacity, index_t dk,
                        index_t dv, Layout layout)
      : k(sequences, kv_heads, capacity, dk, layout),
        v(sequences, kv_heads, capacity, dv, layout),
        lengths(std::size_t(sequences), 0) {}

  attend::KvCache<T> cache() { return {k.view, v.view, lengths}; }
  index_t capacity() const { return k.view.seq; }

  // Token t of sequence s, kv head g: row t of the sequence's own slots.
  T* k_row(index_t s, index_t g, index_t t) { return k.view.row(s, g, t); }
  T* v_row(index_t s, index_t g, index_t t) { return v.view.row(s, g, t); }
};

// Entries of a block-table row past the blocks its sequence owns.
enum class Unassigned {
  minus_one,  // what an engine leaves there (kv_cache.hpp)
  spare,      // a pool block no sequence owns (its rows hold whatever the test puts there)
};

// A paged cache: a pool k [blocks, kv_heads, block_size, dk] (BHSD or BSHD), v likewise,
// and a block table [sequences, max_blocks] with padded rows.
template <class T>
struct PagedCacheBuffer {
  TensorBuffer<T> k, v;
  MatrixBuffer<std::int32_t> table;
  std::vector<std::int32_t> lengths;

  PagedCacheBuffer(index_t sequences, index_t kv_heads, index_t block_size, index_t max_blocks,
                   index_t pool_blocks, index_t dk, index_t dv, Layout layout)
      : k(pool_blocks, kv_heads, block_size, dk, layout),
        v(pool_blocks, kv_heads, block_size, dv, layout),
        table(sequences, max_blocks),
        lengths(std::size_t(sequences), 0) {}

  // Sequence s owns owned[s] blocks, drawn without replacement from a shuffle of the pool
  // (so a sequence's blocks are neither consecutive nor increasing); the rest of its row
  // is `rest` (-1 when no block is spare). Returns the blocks no sequence owns.
  std::vector<std::int32_t> assign(const std::vector<index_t>& owned, std::uint32_t seed,
                                   Unassigned rest = Unassigned::minus_one) {
    std::vector<std::int32_t> pool(std::size_t(k.view.batch));
    std::iota(pool.begin(), pool.end(), 0);
    std::mt19937 gen(seed);
    std::shuffle(pool.begin(), pool.end(), gen);
    std::size_t next = 0;
    for (index_t s = 0; s < table.view.rows; ++s)
      for (index_t i = 0; i < owned[std::size_t(s)]; ++i) table.view(s, i) = pool.at(next++);
    const std::vector<std::int32_t> spare(pool.begin() + std::ptrdiff_t(next), pool.end());
    for (index_t s = 0; s < table.view.rows; ++s)
      for (index_t i = owned[std::size_t(s)]; i < table.view.cols; ++i)
        table.view(s, i) = rest == Unassigned::spare && !spare.empty()
                               ? spare[std::size_t(s + i) % spare.size()]
                               : -1;
    return spare;
  }

  attend::PagedKvCache<T> cache() { return {k.view, v.view, table.view, lengths}; }
  index_t block_size() const { return k.view.seq; }
  index_t capacity() const { return table.view.cols * block_size(); }

  // Token t of sequence s, kv head g: row t % block_size of block table(s, t / block_size).
  T* k_row(index_t s, index_t g, index_t t) {
    return k.view.row(table.view(s, t / block_size()), g, t % block_size());
  }
  T* v_row(index_t s, index_t g, index_t t) {
    return v.view.row(table.view(s, t / block_size()), g, t % block_size());
  }
};

// Blocks needed for `tokens` tokens.
inline index_t blocks_for(index_t tokens, index_t block_size) {
  return (tokens + block_size - 1) / block_size;
}

template <class T>
constexpr T nan_v() {
  return std::numeric_limits<T>::quiet_NaN();
}

// Batch b of a tensor as a tensor of batch 1 (decode's oracle runs one sequence at a time).
template <class T>
attend::TensorView<T> batch_of(attend::TensorView<T> t, attend::index_t b) {
  t.data += b * t.batch_stride;
  t.batch = 1;
  return t;
}

}  // namespace testing_support
