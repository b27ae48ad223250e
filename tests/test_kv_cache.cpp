// attend/kv_cache.hpp: append() on contiguous and paged caches.
//
// Every check compares the whole storage of the cache (views, padding and canaries) with
// what it must hold: the old contents, plus the new rows written at the addresses the
// layout in kv_cache.hpp gives (computed in support/caches.hpp, not by the library). Copies
// are exact, so the comparisons are bitwise. Refused calls must leave the storage and the
// lengths bitwise unchanged.

#include "attend/context.hpp"
#include "attend/kv_cache.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "support/buffers.hpp"
#include "support/caches.hpp"
#include "support/checks.hpp"

namespace {

using attend::index_t;
using attend::TensorView;
using testing_support::ContiguousCacheBuffer;
using testing_support::FloatingTypes;
using testing_support::Layout;
using testing_support::PagedCacheBuffer;
using testing_support::Refusal;
using testing_support::rejects;
using testing_support::same_bits;
using testing_support::TensorBuffer;
using testing_support::TypeNames;

constexpr Layout kLayouts[] = {Layout::bhsd, Layout::bshd};

// The tokens of one append: k_new [batch, kv_heads, n, dk], v_new [batch, kv_heads, n, dv].
template <class T>
struct NewTokens {
  TensorBuffer<T> k, v;
  NewTokens(index_t batch, index_t kv_heads, index_t n, index_t dk, index_t dv, Layout layout,
            std::uint32_t seed)
      : k(batch, kv_heads, n, dk, layout), v(batch, kv_heads, n, dv, layout) {
    k.fill_random(seed);
    v.fill_random(seed + 1);
  }
};

// A cache whose every slot already holds a (random) value, so that a write to the wrong
// slot changes something visible.
template <class Cache>
void fill_slots(Cache& c, std::uint32_t seed) {
  c.k.fill_random(seed);
  c.v.fill_random(seed + 1);
}

// Appends x to the cache (query batch b to sequence sequences[b], or b) and checks the
// result against the documented layout: row lengths[s] + t of sequence s holds token t,
// every other element of the storage (padding, canaries, other slots) is unchanged, and
// lengths[s] grew by n.
template <class T, class CacheBuffer>
::testing::AssertionResult appends_as_documented(CacheBuffer& c, const NewTokens<T>& x,
                                                 const std::vector<std::int32_t>& sequences = {},
                                                 const attend::Context& ctx = {}) {
  std::vector<T> want_k = c.k.storage, want_v = c.v.storage;
  std::vector<std::int32_t> want_lengths = c.lengths;
  const TensorView<T> kn = x.k.view, vn = x.v.view;
  for (index_t b = 0; b < kn.batch; ++b) {
    const index_t s = sequences.empty() ? b : sequences[std::size_t(b)];
    for (index_t g = 0; g < kn.heads; ++g)
      for (index_t t = 0; t < kn.seq; ++t) {
        const index_t slot = c.lengths[std::size_t(s)] + t;
        std::copy_n(kn.row(b, g, t), kn.dim,
                    want_k.data() + (c.k_row(s, g, slot) - c.k.storage.data()));
        std::copy_n(vn.row(b, g, t), vn.dim,
                    want_v.data() + (c.v_row(s, g, slot) - c.v.storage.data()));
      }
    want_lengths[std::size_t(s)] += std::int32_t(kn.seq);
  }
  attend::append<T>(c.cache(), x.k.in(), x.v.in(), sequences, ctx);
  if (!same_bits(c.k.storage, want_k)) return ::testing::AssertionFailure() << "cache.k differs";
  if (!same_bits(c.v.storage, want_v)) return ::testing::AssertionFailure() << "cache.v differs";
  if (c.lengths != want_lengths) return ::testing::AssertionFailure() << "lengths differ";
  return ::testing::AssertionSuccess();
}

template <class T>
class KvCacheAppend : public ::testing::Test {};
TYPED_TEST_SUITE(KvCacheAppend, FloatingTypes, TypeNames);

// ---------------------------------------------------------------------------------------
// Where rows land

TYPED_TEST(KvCacheAppend, ContiguousRowsLandInTheSequencesNextSlots) {
  using T = TypeParam;
  for (Layout cache_layout : kLayouts)
    for (Layout token_layout : kLayouts) {
      SCOPED_TRACE(std::string("cache ") + name(cache_layout) + ", tokens " + name(token_layout));
      ContiguousCacheBuffer<T> c(3, 2, 24, 16, 80, cache_layout);
      fill_slots(c, 1);
      c.lengths = {0, 7, 17};
      EXPECT_TRUE(appends_as_documented(c, NewTokens<T>(3, 2, 1, 16, 80, token_layout, 10)));
      EXPECT_TRUE(appends_as_documented(c, NewTokens<T>(3, 2, 3, 16, 80, token_layout, 20)));
      EXPECT_EQ(c.lengths, (std::vector<std::int32_t>{4, 11, 21}));
      // Up to the last slot exactly.
      EXPECT_TRUE(appends_as_documented(c, NewTokens<T>(3, 2, 3, 16, 80, token_layout, 30)));
      EXPECT_EQ(c.lengths[2], 24);
    }
}

// Block sizes 1 (every token its own block), 3 and 16; tables in shuffled block order;
// appends of one token and of several crossing block boundaries.
TYPED_TEST(KvCacheAppend, PagedRowsLandInTheBlocksTheTableNames) {
  using T = TypeParam;
  for (index_t bs : {1, 3, 16})
    for (Layout layout : kLayouts) {
      SCOPED_TRACE("block size " + std::to_string(bs) + ", " + name(layout));
      const index_t max_blocks = testing_support::blocks_for(4 * bs + 8, bs);
      PagedCacheBuffer<T> c(3, 2, bs, max_blocks, 3 * max_blocks + 2, 16, 16, layout);
      c.assign({max_blocks, max_blocks, max_blocks}, 5);
      fill_slots(c, 1);
      c.lengths = {0, std::int32_t(bs - 1), std::int32_t(bs + 1)};
      EXPECT_TRUE(appends_as_documented(c, NewTokens<T>(3, 2, 1, 16, 16, layout, 10)));
      EXPECT_TRUE(appends_as_documented(c, NewTokens<T>(3, 2, bs + 2, 16, 16, layout, 20)));
      EXPECT_TRUE(appends_as_documented(c, NewTokens<T>(3, 2, 2 * bs + 1, 16, 16, layout, 30)));
      EXPECT_EQ(c.lengths[0], 3 * bs + 4);
    }
}

// Only the blocks a sequence needs must be assigned: a table row may end in -1 entries.
TYPED_TEST(KvCacheAppend, PagedAppendNeedsOnlyTheBlocksItWrites) {
  using T = TypeParam;
  const index_t bs = 4;
  PagedCacheBuffer<T> c(2, 1, bs, 6, 5, 8, 8, Layout::bhsd);
  c.assign({2, 3}, 7);  // capacity 24 tokens each, but only 8 and 12 backed by blocks
  fill_slots(c, 1);
  c.lengths = {3, 9};
  EXPECT_TRUE(appends_as_documented(c, NewTokens<T>(2, 1, 3, 8, 8, Layout::bhsd, 10)));
  EXPECT_EQ(c.lengths, (std::vector<std::int32_t>{6, 12}));
}

// Sequences that share their first blocks (a common prompt, as vLLM's prefix caching
// shares them) each append into their own later blocks.
TYPED_TEST(KvCacheAppend, SequencesMayShareTheirFullPrefixBlocks) {
  using T = TypeParam;
  const index_t bs = 4;
  PagedCacheBuffer<T> c(2, 2, bs, 3, 6, 16, 16, Layout::bshd);
  c.assign({3, 3}, 3);
  c.table.view(1, 0) = c.table.view(0, 0);  // the shared prompt block
  fill_slots(c, 1);
  c.lengths = {4, 4};
  EXPECT_TRUE(appends_as_documented(c, NewTokens<T>(2, 2, 5, 16, 16, Layout::bhsd, 10)));
}

TYPED_TEST(KvCacheAppend, SequencesSelectWhichCacheSequencesGrow) {
  using T = TypeParam;
  for (Layout layout : kLayouts) {
    SCOPED_TRACE(name(layout));
    ContiguousCacheBuffer<T> c(4, 2, 16, 16, 16, layout);
    fill_slots(c, 1);
    c.lengths = {1, 2, 3, 4};
    EXPECT_TRUE(appends_as_documented(c, NewTokens<T>(2, 2, 2, 16, 16, layout, 10), {3, 0}));
    EXPECT_EQ(c.lengths, (std::vector<std::int32_t>{3, 2, 3, 6}));
    EXPECT_TRUE(appends_as_documented(c, NewTokens<T>(1, 2, 1, 16, 16, layout, 20), {2}));

    PagedCacheBuffer<T> p(4, 2, 3, 6, 30, 16, 16, layout);
    p.assign({6, 6, 6, 6}, 9);
    fill_slots(p, 1);
    p.lengths = {1, 2, 3, 4};
    EXPECT_TRUE(appends_as_documented(p, NewTokens<T>(3, 2, 4, 16, 16, layout, 30), {1, 3, 0}));
    EXPECT_EQ(p.lengths, (std::vector<std::int32_t>{5, 6, 3, 8}));
  }
}

// n = 0 writes nothing, even to a full sequence or one with no block left.
TYPED_TEST(KvCacheAppend, AppendingNoTokensChangesNothing) {
  using T = TypeParam;
  ContiguousCacheBuffer<T> c(2, 2, 8, 16, 16, Layout::bhsd);
  fill_slots(c, 1);
  c.lengths = {8, 0};
  EXPECT_TRUE(appends_as_documented(c, NewTokens<T>(2, 2, 0, 16, 16, Layout::bhsd, 10)));
  EXPECT_EQ(c.lengths, (std::vector<std::int32_t>{8, 0}));

  PagedCacheBuffer<T> p(2, 2, 4, 3, 4, 16, 16, Layout::bshd);
  p.assign({2, 1}, 3);
  fill_slots(p, 1);
  p.lengths = {8, 4};  // both fill every block they own
  EXPECT_TRUE(appends_as_documented(p, NewTokens<T>(2, 2, 0, 16, 16, Layout::bshd, 10)));
  EXPECT_EQ(p.lengths, (std::vector<std::int32_t>{8, 4}));
}

TYPED_TEST(KvCacheAppend, HeadWidthsFromOneTo128) {
  using T = TypeParam;
  struct Widths {
    index_t dk, dv;
  };
  for (Widths w : {Widths{1, 1}, Widths{16, 16}, Widths{64, 64}, Widths{80, 80}, Widths{128, 128},
                   Widths{16, 80}, Widths{128, 1}}) {
    SCOPED_TRACE("dk " + std::to_string(w.dk) + ", dv " + std::to_string(w.dv));
    ContiguousCacheBuffer<T> c(2, 3, 9, w.dk, w.dv, Layout::bshd);
    fill_slots(c, 1);
    c.lengths = {0, 5};
    EXPECT_TRUE(appends_as_documented(c, NewTokens<T>(2, 3, 2, w.dk, w.dv, Layout::bhsd, 10)));

    PagedCacheBuffer<T> p(2, 3, 3, 3, 7, w.dk, w.dv, Layout::bhsd);
    p.assign({3, 3}, 4);
    fill_slots(p, 1);
    p.lengths = {0, 5};
    EXPECT_TRUE(appends_as_documented(p, NewTokens<T>(2, 3, 2, w.dk, w.dv, Layout::bshd, 10)));
  }
}

// k_new and v_new as the K and V heads of a fused QKV projection: one buffer
// [B, n, Hq + 2 Hkv, d] whose head slices are strided views, appended without copies.
TYPED_TEST(KvCacheAppend, KeysAndValuesMayBeSlicesOfAFusedProjection) {
  using T = TypeParam;
  const index_t batch = 2, n = 3, hq = 4, hkv = 2, d = 16, heads = hq + 2 * hkv;
  std::vector<T> qkv = testing_support::random_vector<T>(batch * n * heads * d, 3);
  const TensorView<T> all = TensorView<T>::bshd(qkv.data(), batch, n, heads, d);
  NewTokens<T> x(batch, hkv, n, d, d, Layout::bhsd, 1);  // holds copies, for the expectation
  for (index_t b = 0; b < batch; ++b)
    for (index_t g = 0; g < hkv; ++g)
      for (index_t t = 0; t < n; ++t) {
        std::copy_n(all.row(b, hq + g, t), d, x.k.view.row(b, g, t));
        std::copy_n(all.row(b, hq + hkv + g, t), d, x.v.view.row(b, g, t));
      }
  ContiguousCacheBuffer<T> c(batch, hkv, 8, d, d, Layout::bshd);
  fill_slots(c, 1);
  c.lengths = {2, 5};
  ContiguousCacheBuffer<T> expected(batch, hkv, 8, d, d, Layout::bshd);
  fill_slots(expected, 1);
  expected.lengths = c.lengths;
  ASSERT_TRUE(appends_as_documented(expected, x));

  TensorView<const T> k_new = all, v_new = all;
  k_new.data += hq * all.head_stride, k_new.heads = hkv;
  v_new.data += (hq + hkv) * all.head_stride, v_new.heads = hkv;
  attend::append<T>(c.cache(), k_new, v_new);
  EXPECT_TRUE(same_bits(c.k.storage, expected.k.storage));
  EXPECT_TRUE(same_bits(c.v.storage, expected.v.storage));
  EXPECT_EQ(c.lengths, expected.lengths);
}

// One task per appended sequence: any thread count writes the same rows.
TYPED_TEST(KvCacheAppend, AnyThreadCountWritesTheSameRows) {
  using T = TypeParam;
  for (int threads : {1, 2, 3}) {
    attend::ThreadPool pool(threads);
    attend::Context ctx;
    ctx.executor = &pool;
    PagedCacheBuffer<T> p(5, 2, 3, 5, 30, 16, 16, Layout::bshd);
    p.assign({5, 5, 5, 5, 5}, 11);
    fill_slots(p, 1);
    p.lengths = {0, 1, 2, 3, 4};
    EXPECT_TRUE(appends_as_documented(p, NewTokens<T>(5, 2, 4, 16, 16, Layout::bhsd, 10), {}, ctx))
        << threads << " threads";
  }
}

// ---------------------------------------------------------------------------------------
// Refusals: std::invalid_argument naming the argument, nothing written

template <class T, class CacheBuffer>
::testing::AssertionResult refuses(const std::string& argument, const std::string& detail,
                                   CacheBuffer& c, TensorView<const T> k_new,
                                   TensorView<const T> v_new,
                                   const std::vector<std::int32_t>& sequences = {}) {
  return rejects(
      {"append", argument, detail}, [&] { attend::append<T>(c.cache(), k_new, v_new, sequences); },
      c.k.storage, c.v.storage, c.lengths);
}

TYPED_TEST(KvCacheAppend, RefusesToWritePastAContiguousSequencesCapacity) {
  using T = TypeParam;
  ContiguousCacheBuffer<T> c(3, 2, 8, 16, 16, Layout::bhsd);
  fill_slots(c, 1);
  c.lengths = {0, 7, 2};
  NewTokens<T> two(3, 2, 2, 16, 16, Layout::bhsd, 10);
  EXPECT_TRUE(refuses<T>("cache", "sequence 1 holds 7 of 8 tokens: no room for 2 more", c,
                         two.k.in(), two.v.in()));
  // Through the sequence map too, even when another sequence has room.
  NewTokens<T> one(2, 2, 1, 16, 16, Layout::bhsd, 10);
  c.lengths = {8, 0, 0};
  EXPECT_TRUE(refuses<T>("cache", "no room for 1 more", c, one.k.in(), one.v.in(), {1, 0}));
}

TYPED_TEST(KvCacheAppend, RefusesToWritePastAPagedSequencesLastAssignedBlock) {
  using T = TypeParam;
  const index_t bs = 3;
  PagedCacheBuffer<T> c(2, 2, bs, 4, 6, 16, 16, Layout::bhsd);
  c.assign({2, 2}, 5);  // 6 tokens backed per sequence, then -1 entries
  fill_slots(c, 1);
  c.lengths = {5, 0};
  NewTokens<T> two(2, 2, 2, 16, 16, Layout::bhsd, 10);
  EXPECT_TRUE(refuses<T>("cache.block_table", "entry (0, 2) = -1 is not a block of the pool", c,
                         two.k.in(), two.v.in()));
  // An entry past the pool.
  c.table.view(0, 2) = 6;
  EXPECT_TRUE(refuses<T>("cache.block_table", "entry (0, 2) = 6 is not a block of the pool [0, 6)",
                         c, two.k.in(), two.v.in()));
  // Past the table's last column: the capacity.
  c.assign({4, 2}, 5);
  c.lengths = {11, 0};
  EXPECT_TRUE(refuses<T>("cache", "sequence 0 holds 11 of 12 tokens: no room for 2 more", c,
                         two.k.in(), two.v.in()));
}

TYPED_TEST(KvCacheAppend, RefusesSequencesOutsideTheCache) {
  using T = TypeParam;
  ContiguousCacheBuffer<T> c(3, 2, 8, 16, 16, Layout::bhsd);
  fill_slots(c, 1);
  NewTokens<T> x(2, 2, 1, 16, 16, Layout::bhsd, 10);
  EXPECT_TRUE(refuses<T>("sequences", "entry 1 = 3 is not a sequence of the cache [0, 3)", c,
                         x.k.in(), x.v.in(), {0, 3}));
  EXPECT_TRUE(
      refuses<T>("sequences", "entry 0 = -1 is not a sequence", c, x.k.in(), x.v.in(), {-1, 0}));
  // One sequence per batch entry of k_new.
  EXPECT_TRUE(refuses<T>("k_new", "expected shape [1, 2, *, 16]", c, x.k.in(), x.v.in(), {0}));
  EXPECT_TRUE(refuses<T>("k_new", "expected shape [3, 2, *, 16]", c, x.k.in(), x.v.in()));
}

TYPED_TEST(KvCacheAppend, RefusesTwoTokensLandingOnOneRow) {
  using T = TypeParam;
  ContiguousCacheBuffer<T> c(3, 2, 8, 16, 16, Layout::bhsd);
  fill_slots(c, 1);
  NewTokens<T> x(2, 2, 1, 16, 16, Layout::bhsd, 10);
  EXPECT_TRUE(refuses<T>("sequences", "two appended tokens map to the same cache row", c, x.k.in(),
                         x.v.in(), {1, 1}));

  // Sequences 0 and 1 both name block b for their first tokens.
  PagedCacheBuffer<T> p(2, 2, 4, 2, 5, 16, 16, Layout::bshd);
  p.assign({2, 2}, 3);
  fill_slots(p, 1);
  p.table.view(1, 0) = p.table.view(0, 0);
  EXPECT_TRUE(refuses<T>("sequences", "two appended tokens map to the same cache row", p, x.k.in(),
                         x.v.in()));
  // Nothing collides while one of them appends nothing: n = 0 is fine.
  NewTokens<T> none(2, 2, 0, 16, 16, Layout::bhsd, 10);
  EXPECT_TRUE(appends_as_documented(p, none));
}

// Keys of width 0 (rows of no elements, which may all share one address, stride 0): the
// values still land, and a repeated sequence is still refused.
TYPED_TEST(KvCacheAppend, KeysOfWidthZeroStillAppendTheirValues) {
  using T = TypeParam;
  std::vector<T> k_storage(1);
  ContiguousCacheBuffer<T> c(2, 1, 4, 1, 2, Layout::bhsd);
  fill_slots(c, 1);
  const TensorView<T> k(k_storage.data(), 2, 1, 4, 0, 0, 0, 0);
  const TensorView<const T> k_new(k_storage.data(), 2, 1, 2, 0, 0, 0, 0);
  TensorBuffer<T> v_new(2, 1, 2, 2);
  v_new.fill_random(5);
  attend::append<T>(attend::KvCache<T>{k, c.v.view, c.lengths}, k_new, v_new.in());
  EXPECT_EQ(c.lengths, (std::vector<std::int32_t>{2, 2}));
  for (index_t s = 0; s < 2; ++s)
    for (index_t t = 0; t < 2; ++t)
      for (index_t d = 0; d < 2; ++d)
        EXPECT_EQ(c.v.view.row(s, 0, t)[d], v_new.view.row(s, 0, t)[d]);
  const std::vector<std::int32_t> twice{1, 1};
  EXPECT_THROW(
      attend::append<T>(attend::KvCache<T>{k, c.v.view, c.lengths}, k_new, v_new.in(), twice),
      std::invalid_argument);
  EXPECT_EQ(c.lengths, (std::vector<std::int32_t>{2, 2}));
}

TYPED_TEST(KvCacheAppend, RefusesNewTokensOfTheWrongShape) {
  using T = TypeParam;
  ContiguousCacheBuffer<T> c(2, 2, 8, 16, 80, Layout::bhsd);
  fill_slots(c, 1);
  NewTokens<T> ok(2, 2, 1, 16, 80, Layout::bhsd, 10);
  NewTokens<T> heads(2, 1, 1, 16, 80, Layout::bhsd, 10), dk(2, 2, 1, 80, 80, Layout::bhsd, 10),
      dv(2, 2, 1, 16, 16, Layout::bhsd, 10), n(2, 2, 2, 16, 80, Layout::bhsd, 10);
  EXPECT_TRUE(refuses<T>("k_new", "expected shape [2, 2, *, 16], got [2, 1, 1, 16]", c,
                         heads.k.in(), ok.v.in()));
  EXPECT_TRUE(refuses<T>("k_new", "expected shape [2, 2, *, 16], got [2, 2, 1, 80]", c, dk.k.in(),
                         ok.v.in()));
  EXPECT_TRUE(refuses<T>("v_new", "expected shape [2, 2, 1, 80], got [2, 1, 1, 80]", c, ok.k.in(),
                         heads.v.in()));
  EXPECT_TRUE(refuses<T>("v_new", "expected shape [2, 2, 1, 80], got [2, 2, 1, 16]", c, ok.k.in(),
                         dv.v.in()));
  EXPECT_TRUE(refuses<T>("v_new", "expected shape [2, 2, 1, 80], got [2, 2, 2, 80]", c, ok.k.in(),
                         n.v.in()));
}

TYPED_TEST(KvCacheAppend, RefusesNewTokensThatOverlapTheCache) {
  using T = TypeParam;
  ContiguousCacheBuffer<T> c(2, 2, 8, 16, 16, Layout::bhsd);
  fill_slots(c, 1);
  c.lengths = {1, 1};
  NewTokens<T> ok(2, 2, 1, 16, 16, Layout::bhsd, 10);
  // Row 0 of each sequence: tokens already in the cache, passed back as new ones.
  TensorView<const T> from_k = c.k.view, from_v = c.v.view;
  from_k.seq = 1, from_v.seq = 1;
  EXPECT_TRUE(refuses<T>("k_new", "overlaps cache.k", c, from_k, ok.v.in()));
  EXPECT_TRUE(refuses<T>("v_new", "overlaps cache.v", c, ok.k.in(), from_v));
  EXPECT_TRUE(refuses<T>("k_new", "overlaps cache.v", c, from_v, ok.v.in()));
}

TYPED_TEST(KvCacheAppend, RefusesInvalidCaches) {
  using T = TypeParam;
  ContiguousCacheBuffer<T> c(2, 2, 8, 16, 16, Layout::bhsd);
  fill_slots(c, 1);
  NewTokens<T> x(2, 2, 1, 16, 16, Layout::bhsd, 10);
  c.lengths = {0, -1};
  EXPECT_TRUE(refuses<T>("cache.lengths", "expected every length in [0, 8], got -1 at sequence 1",
                         c, x.k.in(), x.v.in()));
  c.lengths = {9, 0};
  EXPECT_TRUE(refuses<T>("cache.lengths", "got 9 at sequence 0", c, x.k.in(), x.v.in()));
  c.lengths = {0, 0, 0};
  EXPECT_TRUE(refuses<T>("cache.lengths.size", "expected 2", c, x.k.in(), x.v.in()));
  c.lengths = {0, 0};

  // k and v disagree, or share memory.
  attend::KvCache<T> bad = c.cache();
  bad.v.heads = 1;
  EXPECT_TRUE(rejects(
      {"append", "cache.v", "expected shape [2, 2, 8, *]"},
      [&] { attend::append<T>(bad, x.k.in(), x.v.in()); }, c.k.storage, c.v.storage, c.lengths));
  bad = c.cache();
  bad.v = bad.k;
  EXPECT_TRUE(rejects(
      {"append", "cache.k", "overlaps cache.v"},
      [&] { attend::append<T>(bad, x.k.in(), x.v.in()); }, c.k.storage, c.v.storage, c.lengths));

  // A paged pool whose blocks hold no token.
  PagedCacheBuffer<T> p(2, 2, 0, 3, 4, 16, 16, Layout::bhsd);
  p.assign({0, 0}, 1);
  EXPECT_TRUE(refuses<T>("cache.k", "expected a block size (extent 2) of at least 1, got 0", p,
                         x.k.in(), x.v.in()));
  // A paged cache whose current tokens already need a missing block.
  PagedCacheBuffer<T> q(2, 2, 4, 3, 4, 16, 16, Layout::bhsd);
  q.assign({1, 1}, 1);
  q.lengths = {5, 0};
  EXPECT_TRUE(refuses<T>("cache.block_table", "entry (0, 1) = -1", q, x.k.in(), x.v.in()));
  // The lengths may not double as the sequence map.
  c.lengths = {0, 1};
  EXPECT_TRUE(rejects(
      {"append", "cache.lengths", "overlaps sequences"},
      [&] {
        attend::append<T>(c.cache(), x.k.in(), x.v.in(),
                          attend::Span<const std::int32_t>(c.lengths.data(), 2));
      },
      c.k.storage, c.v.storage, c.lengths));
}

}  // namespace
