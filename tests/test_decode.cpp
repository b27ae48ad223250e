// attend/decode.hpp: decode_attention over contiguous and paged KV caches, against the
// extended-precision oracle ref::attention on the same logical inputs.
//
// The oracle never sees a cache: for each query batch b reading sequence s of L tokens it
// gets the dense keys and values [1, Hkv, L, d] of that sequence and the query rows of b,
// and computes attention with key length L (bottom-right causal by default: query i of Sq
// sees keys up to L - Sq + i). Tolerances are the oracle's (support/tolerance.hpp).
//
// Every cache here holds NaN wherever no token is: rows past each sequence's length, the
// tails of partly filled blocks and the spare blocks of a paged pool. Every comparison
// therefore also checks that nothing past a length reaches an output. One test goes
// further and makes that memory unreadable (RowsPastTheLengthAreNeverRead).

// GCC 12 at -O3 warns falsely (-Wnonnull, a memmove to null) inside the inlined
// std::vector<int32_t>::operator=(initializer_list) of the shapes below; the code is fine.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wnonnull"
#endif

#include "attend/attention.hpp"
#include "attend/context.hpp"
#include "attend/decode.hpp"
#include "attend/isa.hpp"
#include "attend/kv_cache.hpp"

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "support/buffers.hpp"
#include "support/caches.hpp"
#include "support/checks.hpp"
#include "support/reference.hpp"
#include "support/tolerance.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#define ATTEND_TEST_HAS_MPROTECT 1
#else
#define ATTEND_TEST_HAS_MPROTECT 0
#endif

namespace {

using attend::Alignment;
using attend::DecodeOptions;
using attend::index_t;
using attend::TensorView;
using testing_support::batch_of;
using testing_support::blocks_for;
using testing_support::canary;
using testing_support::ContiguousCacheBuffer;
using testing_support::FloatingTypes;
using testing_support::Layout;
using testing_support::nan_v;
using testing_support::PagedCacheBuffer;
using testing_support::rejects;
using testing_support::same_bits;
using testing_support::TensorBuffer;
using testing_support::TypeNames;
using testing_support::Unassigned;

// The logical problem: cache sequences holding lengths[s] tokens, and query batches of sq
// rows, batch b reading sequence sequences[b] (or b).
struct Shape {
  index_t q_heads = 4, kv_heads = 2, sq = 1, dk = 32, dv = 32;
  std::vector<std::int32_t> lengths;
  std::vector<std::int32_t> sequences;  // empty: batch b reads sequence b
  index_t capacity = 0;                 // contiguous capacity, and the paged table's reach
  Layout layout = Layout::bhsd;

  index_t batch() const { return index_t(sequences.empty() ? lengths.size() : sequences.size()); }
  index_t sequence(index_t b) const { return sequences.empty() ? b : sequences[std::size_t(b)]; }
};

std::string describe(const Shape& s) {
  std::ostringstream os;
  os << "Hq=" << s.q_heads << " Hkv=" << s.kv_heads << " Sq=" << s.sq << " Dk=" << s.dk
     << " Dv=" << s.dv << " capacity=" << s.capacity << " " << name(s.layout) << " lengths={";
  for (auto l : s.lengths) os << l << ",";
  os << "}";
  return os.str();
}

// The smallest capacity >= the longest length that every block size used here (1, 3, 16)
// divides, so that contiguous and paged caches share a capacity (the bias extent).
index_t capacity_for(const std::vector<std::int32_t>& lengths) {
  index_t longest = 1;
  for (auto l : lengths) longest = std::max<index_t>(longest, l);
  return (longest + 47) / 48 * 48;
}

using Oracle = std::vector<ref::Attention>;  // one per query batch

// A decode problem: the logical tokens of each sequence, queries and outputs, and caches
// built from the tokens on demand.
template <class T>
struct Decode {
  Shape shape;
  std::vector<std::vector<T>> keys, values;  // sequence s: [kv_heads, lengths[s], d], dense
  TensorBuffer<T> q, o, lse;

  explicit Decode(Shape s, std::uint32_t seed = 7)
      : shape(std::move(s)),
        q(shape.batch(), shape.q_heads, shape.sq, shape.dk, shape.layout),
        o(shape.batch(), shape.q_heads, shape.sq, shape.dv, shape.layout),
        lse(shape.batch(), shape.q_heads, shape.sq, 1, shape.layout) {
    if (shape.capacity == 0) shape.capacity = capacity_for(shape.lengths);
    q.fill_random(seed);
    for (std::size_t s = 0; s < shape.lengths.size(); ++s) {
      const index_t n = shape.kv_heads * shape.lengths[s];
      keys.push_back(testing_support::random_vector<T>(n * shape.dk, seed + 100 + 2 * s));
      values.push_back(testing_support::random_vector<T>(n * shape.dv, seed + 101 + 2 * s));
    }
  }

  T* key(index_t s, index_t g, index_t j) {
    return keys[std::size_t(s)].data() + (g * shape.lengths[std::size_t(s)] + j) * shape.dk;
  }
  T* value(index_t s, index_t g, index_t j) {
    return values[std::size_t(s)].data() + (g * shape.lengths[std::size_t(s)] + j) * shape.dv;
  }

  // Writes every token into the cache; everything else in its views becomes NaN.
  template <class CacheBuffer>
  void store(CacheBuffer& c) {
    c.k.for_each([](T& x) { x = nan_v<T>(); });
    c.v.for_each([](T& x) { x = nan_v<T>(); });
    for (std::size_t s = 0; s < shape.lengths.size(); ++s)
      for (index_t g = 0; g < shape.kv_heads; ++g)
        for (index_t j = 0; j < shape.lengths[s]; ++j) {
          std::copy_n(key(index_t(s), g, j), shape.dk, c.k_row(index_t(s), g, j));
          std::copy_n(value(index_t(s), g, j), shape.dv, c.v_row(index_t(s), g, j));
        }
    c.lengths = shape.lengths;
  }

  std::unique_ptr<ContiguousCacheBuffer<T>> contiguous() {
    auto c = std::make_unique<ContiguousCacheBuffer<T>>(index_t(shape.lengths.size()),
                                                        shape.kv_heads, shape.capacity, shape.dk,
                                                        shape.dv, shape.layout);
    store(*c);
    return c;
  }

  // A pool with two spare blocks; table entries past a sequence's blocks name a spare
  // block (holding NaN) unless `rest` says -1.
  std::unique_ptr<PagedCacheBuffer<T>> paged(index_t block_size, std::uint32_t seed = 3,
                                             Unassigned rest = Unassigned::spare) {
    std::vector<index_t> owned;
    index_t pool = 2;
    for (auto l : shape.lengths) owned.push_back(blocks_for(l, block_size)), pool += owned.back();
    auto c = std::make_unique<PagedCacheBuffer<T>>(index_t(shape.lengths.size()), shape.kv_heads,
                                                   block_size, shape.capacity / block_size, pool,
                                                   shape.dk, shape.dv, shape.layout);
    c->assign(owned, seed, rest);
    store(*c);
    return c;
  }

  DecodeOptions options() const {
    DecodeOptions opts;
    opts.sequences = shape.sequences;
    return opts;
  }

  template <class CacheBuffer>
  void run(CacheBuffer& c, const DecodeOptions& opts, const attend::Context& ctx = {}) {
    std::fill(o.storage.begin(), o.storage.end(), canary<T>());
    std::fill(lse.storage.begin(), lse.storage.end(), canary<T>());
    attend::decode_attention<T>(q.in(), c.cache(), o.view, opts, lse.view, ctx);
  }

  // Query batch b against the dense tokens [0, lengths[s]) of its sequence.
  ref::Attention oracle(index_t b, const attend::AttentionOptions& opts) {
    const index_t s = shape.sequence(b), len = shape.lengths[std::size_t(s)];
    ref::Tensor k(1, shape.kv_heads, len, shape.dk), v(1, shape.kv_heads, len, shape.dv);
    for (index_t g = 0; g < shape.kv_heads; ++g)
      for (index_t j = 0; j < len; ++j) {
        for (index_t d = 0; d < shape.dk; ++d) k(0, g, j, d) = key(s, g, j)[d];
        for (index_t d = 0; d < shape.dv; ++d) v(0, g, j, d) = value(s, g, j)[d];
      }
    attend::AttentionOptions one = opts;  // the bias and mask rows of batch b
    if (one.bias.batch > 1) one.bias = batch_of(one.bias, b);
    if (one.mask.batch > 1) one.mask = batch_of(one.mask, b);
    return ref::attention(ref::load<T>(batch_of(q.in(), b)), k, v, one);
  }
  Oracle oracle(const attend::AttentionOptions& opts) {
    Oracle r;
    for (index_t b = 0; b < shape.batch(); ++b) r.push_back(oracle(b, opts));
    return r;
  }

  // o and lse against the oracle, batch by batch, and nothing written outside them.
  ::testing::AssertionResult matches(const Oracle& r) const {
    for (index_t b = 0; b < shape.batch(); ++b) {
      const auto out = ref::output_matches<T>(batch_of(o.in(), b), r[std::size_t(b)]);
      if (!out)
        return ::testing::AssertionFailure() << "o of query batch " << b << ": " << out.message();
      const auto l = ref::lse_matches<T>(batch_of(lse.in(), b), r[std::size_t(b)].rows);
      if (!l)
        return ::testing::AssertionFailure() << "lse of query batch " << b << ": " << l.message();
    }
    if (!o.canaries_intact()) return ::testing::AssertionFailure() << "o written outside its view";
    if (!lse.canaries_intact())
      return ::testing::AssertionFailure() << "lse written outside its view";
    return ::testing::AssertionSuccess();
  }

  T out(index_t b, index_t h, index_t i, index_t d) const { return o.view.row(b, h, i)[d]; }
  T row_lse(index_t b, index_t h, index_t i) const { return *lse.view.row(b, h, i); }
};

// Runs on every path this CPU has (forced through the Context) and holds each to the oracle.
template <class T, class CacheBuffer>
void check_every_path(Decode<T>& p, CacheBuffer& c, const DecodeOptions& opts, const Oracle& r,
                      const std::string& what) {
  for (attend::Isa isa : attend::supported_isas()) {
    SCOPED_TRACE(what + ", path " + attend::name(isa) + ", " + describe(p.shape));
    attend::Context ctx;
    ctx.isa = isa;
    p.run(c, opts, ctx);
    EXPECT_TRUE(p.matches(r));
  }
}

// Both cache layouts of one problem, every path: contiguous, and paged with each block size.
template <class T>
void check_caches(Decode<T>& p, const DecodeOptions& opts, const std::vector<index_t>& block_sizes,
                  const std::string& what = "") {
  const Oracle r = p.oracle(opts);
  auto c = p.contiguous();
  check_every_path(p, *c, opts, r, what + " contiguous");
  for (index_t bs : block_sizes) {
    auto paged = p.paged(bs);
    check_every_path(p, *paged, opts, r, what + " paged, block size " + std::to_string(bs));
  }
}

// Whether row (b, h, i) of o is NaN; a row is expected to be all NaN or free of NaN.
template <class T>
bool nan_row(const Decode<T>& p, index_t b, index_t h, index_t i) {
  index_t nans = 0;
  for (index_t d = 0; d < p.shape.dv; ++d) nans += std::isnan(p.out(b, h, i, d)) ? 1 : 0;
  EXPECT_TRUE(nans == 0 || nans == p.shape.dv) << "row [" << b << ", " << h << ", " << i << "]";
  return nans > 0;
}

// tolerance.hpp's bound on |o - o_exact| for one element of the output of r.
template <class T>
ref::real output_bound(const ref::Attention& r, index_t h, index_t i, index_t d) {
  const ref::real u = ref::unit_roundoff<T>();
  return 2 * r.o_abs(0, h, i, d) * (2 * r.slack(0, h, i, 0) + ref::real(2 * r.rows.p.d + 8)) * u +
         2 * ref::real(std::numeric_limits<T>::min());
}

// ALiBi's geometric slopes 2^(-8 (h + 1) / H) (Press et al. 2022).
std::vector<float> alibi_slopes(index_t heads) {
  std::vector<float> s(static_cast<std::size_t>(heads));
  for (index_t h = 0; h < heads; ++h)
    s[std::size_t(h)] = std::exp2(-8.0f * float(h + 1) / float(heads));
  return s;
}

// A boolean mask [batch, heads, sq, sk], dense BHSD, each entry true with probability p.
struct MaskBuffer {
  std::unique_ptr<bool[]> storage;
  TensorView<bool> view;
  MaskBuffer(index_t b, index_t h, index_t sq, index_t sk, std::uint32_t seed, double p)
      : storage(new bool[std::size_t(b * h * sq * sk)]),
        view(TensorView<bool>::bhsd(storage.get(), b, h, sq, sk)) {
    std::mt19937 gen(seed);
    std::bernoulli_distribution keep(p);
    for (index_t i = 0; i < b * h * sq * sk; ++i) storage[std::size_t(i)] = keep(gen);
  }
};

template <class T>
class Decoding : public ::testing::Test {};
TYPED_TEST_SUITE(Decoding, FloatingTypes, TypeNames);

// ---------------------------------------------------------------------------------------
// Shapes and caches

// Lengths around each block size (1, 3, 16: bs - 1, bs, bs + 1), none at all, and one
// long sequence that the automatic split cuts into 256-key chunks, all in one call.
TYPED_TEST(Decoding, RaggedLengthsInOneCallMatchTheOracle) {
  for (index_t sq : {1, 3}) {
    Shape s;
    s.q_heads = 8, s.kv_heads = 2, s.sq = sq, s.dk = 64, s.dv = 64;
    s.lengths = {0, 1, 2, 3, 4, 15, 16, 17, 1500};
    s.layout = sq == 1 ? Layout::bhsd : Layout::bshd;
    Decode<TypeParam> p(s);
    check_caches(p, p.options(), {1, 3, 16});
  }
}

// split_keys forces the split: a chunk per key, odd chunks that end inside tiles, 128.
TYPED_TEST(Decoding, ForcedSplitsMatchTheOracle) {
  for (index_t split : {1, 7, 128}) {
    Shape s;
    s.q_heads = 8, s.kv_heads = 2, s.sq = 3;
    s.lengths = split == 128 ? std::vector<std::int32_t>{0, 5, 1500, 600}
                             : std::vector<std::int32_t>{0, 5, 130, 300};
    Decode<TypeParam> p(s);
    DecodeOptions opts = p.options();
    opts.split_keys = split;
    check_caches(p, opts, {3}, "split " + std::to_string(split));
  }
}

// The kv heads of a sequence take turns a tile of keys at a time, and each turn asks for
// the next turn's first rows: 5 kv heads (an odd count), sequences of 0 to 4 tiles, splits
// that end inside a tile, on one, or hold whole sequences, and 6 rows per kv head (AVX2
// packs them, AVX-512 reads keys directly), with each kv head's tokens side by side (bhsd)
// and each token's kv heads side by side (bshd).
TYPED_TEST(Decoding, KvHeadsTakeTurnsThroughTilesAndSplits) {
  for (Layout layout : {Layout::bhsd, Layout::bshd}) {
    Shape s;
    s.q_heads = 15, s.kv_heads = 5, s.sq = 2, s.dk = 24, s.dv = 40;
    s.lengths = {0, 1, 129, 300, 385};
    s.layout = layout;
    Decode<TypeParam> p(s);
    for (index_t split : {0, 100, 128, 512}) {
      DecodeOptions opts = p.options();
      opts.split_keys = split;
      check_caches(p, opts, {1, 16}, "split " + std::to_string(split));
    }
  }
}

// Hq / Hkv query heads share a kv head: groups 1, 2, 4, 8, with Sq 1 and 3 (up to 24 rows
// per kv head), unsplit and split.
TYPED_TEST(Decoding, GroupedQueryHeadsShareTheirKvHead) {
  for (index_t q_heads : {2, 4, 8, 16})
    for (index_t sq : {1, 3}) {
      Shape s;
      s.q_heads = q_heads, s.kv_heads = 2, s.sq = sq;
      s.lengths = {7, 700};
      s.layout = Layout::bshd;
      Decode<TypeParam> p(s);
      for (index_t split : {0, 128}) {
        DecodeOptions opts = p.options();
        opts.split_keys = split;
        check_caches(p, opts, {16}, "split " + std::to_string(split));
      }
    }
}

TYPED_TEST(Decoding, HeadWidthsFromOneTo128AndUnequalKeyAndValueWidths) {
  struct Widths {
    index_t dk, dv;
  };
  for (Widths w : {Widths{1, 1}, Widths{16, 16}, Widths{64, 64}, Widths{80, 80}, Widths{128, 128},
                   Widths{16, 80}, Widths{80, 16}, Widths{128, 1}}) {
    Shape s;
    s.q_heads = 4, s.kv_heads = 1, s.dk = w.dk, s.dv = w.dv;
    s.lengths = {65, 129, 600};
    Decode<TypeParam> p(s);
    check_caches(p, p.options(), {3});
  }
}

// Sq = 3 new tokens (speculative decoding): row i sees keys up to L - 3 + i, so a NaN key
// at L - 1 reaches the last row only, one at L - 2 the last two.
TYPED_TEST(Decoding, SpeculativeRowsSeeKeysUpToTheirOwnPosition) {
  using T = TypeParam;
  Shape s;
  s.q_heads = 4, s.kv_heads = 2, s.sq = 3;
  s.lengths = {40, 40};
  Decode<T> p(s);
  for (index_t d = 0; d < s.dk; ++d) p.key(0, 0, 39)[d] = nan_v<T>();  // heads 0, 1 of batch 0
  for (index_t d = 0; d < s.dk; ++d) p.key(1, 1, 38)[d] = nan_v<T>();  // heads 2, 3 of batch 1
  const Oracle r = p.oracle(p.options());
  auto c = p.contiguous();
  auto paged = p.paged(16);
  for (attend::Isa isa : attend::supported_isas()) {
    SCOPED_TRACE(attend::name(isa));
    attend::Context ctx;
    ctx.isa = isa;
    for (int which = 0; which < 2; ++which) {
      if (which == 0) p.run(*c, p.options(), ctx);
      if (which == 1) p.run(*paged, p.options(), ctx);
      EXPECT_TRUE(p.matches(r));
      for (index_t h = 0; h < 4; ++h)
        for (index_t i = 0; i < 3; ++i) {
          EXPECT_EQ(nan_row(p, 0, h, i), h < 2 && i == 2) << "batch 0, head " << h << ", row " << i;
          EXPECT_EQ(nan_row(p, 1, h, i), h >= 2 && i >= 1)
              << "batch 1, head " << h << ", row " << i;
        }
    }
  }
}

// Query batches map to cache sequences: beams 0 and 2 read sequence 2 with the same
// queries and so get the same bits; sequence 1 is read twice with different queries.
TYPED_TEST(Decoding, SequencesMapQueryBatchesToCacheSequences) {
  using T = TypeParam;
  Shape s;
  s.q_heads = 4, s.kv_heads = 2, s.sq = 2;
  s.lengths = {20, 700, 33};
  s.sequences = {2, 0, 2, 1, 1};
  Decode<T> p(s);
  for (index_t h = 0; h < 4; ++h)
    for (index_t i = 0; i < 2; ++i) std::copy_n(p.q.view.row(0, h, i), s.dk, p.q.view.row(2, h, i));
  const Oracle r = p.oracle(p.options());
  auto c = p.contiguous();
  auto paged = p.paged(3);
  for (attend::Isa isa : attend::supported_isas()) {
    SCOPED_TRACE(attend::name(isa));
    attend::Context ctx;
    ctx.isa = isa;
    for (int which = 0; which < 2; ++which) {
      if (which == 0) p.run(*c, p.options(), ctx);
      if (which == 1) p.run(*paged, p.options(), ctx);
      EXPECT_TRUE(p.matches(r));
      for (index_t h = 0; h < 4; ++h)
        for (index_t i = 0; i < 2; ++i)
          EXPECT_EQ(std::memcmp(p.o.view.row(0, h, i), p.o.view.row(2, h, i), sizeof(T) * s.dv), 0);
    }
  }
}

// A decoding loop as an engine runs it: caches start empty; each step appends the step's
// tokens (a prompt of several, then one at a time) and decodes the newest ones.
TYPED_TEST(Decoding, CachesFilledByAppendDecodeLikeTheOracle) {
  using T = TypeParam;
  Shape s;
  s.q_heads = 4, s.kv_heads = 2, s.sq = 1;
  s.lengths = {14, 11};  // the final lengths: prompts of 9 and 6, then 5 steps of one token
  s.capacity = 48;
  Decode<T> full(s);
  auto c = std::make_unique<ContiguousCacheBuffer<T>>(2, 2, 48, s.dk, s.dv, s.layout);
  auto paged = std::make_unique<PagedCacheBuffer<T>>(2, 2, 4, 12, 8, s.dk, s.dv, s.layout);
  paged->assign({4, 3}, 5);  // blocks enough for 16 and 12 tokens
  std::vector<std::int32_t> done{0, 0};
  for (index_t step = 0; step < 6; ++step) {
    for (index_t seq = 0; seq < 2; ++seq) {
      const index_t n = step == 0 ? full.shape.lengths[std::size_t(seq)] - 5 : 1;
      const index_t len = full.shape.lengths[std::size_t(seq)];
      // Tokens [done, done + n) of the sequence, straight from its dense [Hkv, L, d] rows.
      const TensorView<const T> k_new(full.key(seq, 0, done[std::size_t(seq)]), 1, 2, n, s.dk, 0,
                                      len * s.dk, s.dk);
      const TensorView<const T> v_new(full.value(seq, 0, done[std::size_t(seq)]), 1, 2, n, s.dv, 0,
                                      len * s.dv, s.dv);
      const std::vector<std::int32_t> which{std::int32_t(seq)};
      attend::append<T>(c->cache(), k_new, v_new, which);
      attend::append<T>(paged->cache(), k_new, v_new, which);
      done[std::size_t(seq)] += std::int32_t(n);
    }
    ASSERT_EQ(c->lengths, done);
    ASSERT_EQ(paged->lengths, done);
    // The oracle of this step: the same queries against the first done[s] tokens.
    Shape now = s;
    now.lengths = done;
    Decode<T> step_problem(now);
    step_problem.q.fill_random(std::uint32_t(50 + step));
    for (std::size_t seq = 0; seq < 2; ++seq) {  // the prefix of each sequence's tokens
      for (index_t g = 0; g < 2; ++g)
        for (index_t j = 0; j < done[seq]; ++j) {
          std::copy_n(full.key(index_t(seq), g, j), s.dk, step_problem.key(index_t(seq), g, j));
          std::copy_n(full.value(index_t(seq), g, j), s.dv, step_problem.value(index_t(seq), g, j));
        }
    }
    const Oracle r = step_problem.oracle(step_problem.options());
    step_problem.run(*c, step_problem.options());
    EXPECT_TRUE(step_problem.matches(r)) << "contiguous, step " << step;
    step_problem.run(*paged, step_problem.options());
    EXPECT_TRUE(step_problem.matches(r)) << "paged, step " << step;
  }
}

// ---------------------------------------------------------------------------------------
// Options: each alone and all at once, with and without a forced split

TYPED_TEST(Decoding, EveryOptionMatchesTheOracle) {
  using T = TypeParam;
  Shape s;
  s.q_heads = 4, s.kv_heads = 2, s.sq = 3, s.dk = 32, s.dv = 48;
  s.lengths = {0, 3, 17, 700};
  s.layout = Layout::bshd;
  Decode<T> p(s);
  const index_t B = s.batch(), cap = p.shape.capacity;
  TensorBuffer<float> bias(B, s.q_heads, s.sq, cap, Layout::bhsd);
  bias.fill_random(11, -2, 2);
  bias.view.row(3, 1, 2)[650] = -std::numeric_limits<float>::infinity();
  TensorBuffer<float> shared_bias(1, 1, s.sq, cap, Layout::bshd);
  shared_bias.fill_random(12, -2, 2);
  MaskBuffer mask(B, 1, s.sq, cap, 13, 0.7);
  const std::vector<float> slopes = alibi_slopes(s.q_heads);
  const std::vector<float> sinks{0.5f, -1.0f, 2.0f, 0.0f};

  struct Case {
    std::string name;
    std::function<void(DecodeOptions&)> set;
  };
  const std::vector<Case> cases{
      {"not causal", [](DecodeOptions& o) { o.causal = false; }},
      {"causal top-left", [](DecodeOptions& o) { o.alignment = Alignment::top_left; }},
      {"window left 100", [](DecodeOptions& o) { o.window.left = 100; }},
      {"window 5 / 2, not causal",
       [](DecodeOptions& o) { o.causal = false, o.window.left = 5, o.window.right = 2; }},
      {"alibi", [&](DecodeOptions& o) { o.alibi_slopes = slopes; }},
      {"softcap", [](DecodeOptions& o) { o.softcap = 2.0, o.scale = 3.0; }},
      {"sinks", [&](DecodeOptions& o) { o.sinks = sinks; }},
      {"bias", [&](DecodeOptions& o) { o.bias = bias.in(); }},
      {"shared bias", [&](DecodeOptions& o) { o.bias = shared_bias.in(); }},
      {"mask", [&](DecodeOptions& o) { o.mask = mask.view; }},
      {"scale", [](DecodeOptions& o) { o.scale = 0.3; }},
      {"everything", [&](DecodeOptions& o) {
         o.window.left = 200, o.alibi_slopes = slopes, o.softcap = 5.0, o.sinks = sinks;
         o.bias = bias.in(), o.mask = mask.view, o.scale = 0.5;
       }}};
  for (const Case& c : cases)
    for (index_t split : {0, 128}) {
      DecodeOptions opts = p.options();
      c.set(opts);
      opts.split_keys = split;
      check_caches(p, opts, {3}, c.name + ", split " + std::to_string(split));
    }
}

// Without lse the output is the same, bit for bit.
TYPED_TEST(Decoding, LseIsOptional) {
  using T = TypeParam;
  Shape s;
  s.lengths = {5, 900};
  Decode<T> p(s);
  auto c = p.contiguous();
  for (attend::Isa isa : attend::supported_isas()) {
    attend::Context ctx;
    ctx.isa = isa;
    p.run(*c, p.options(), ctx);
    const std::vector<T> with_lse = p.o.storage;
    std::fill(p.o.storage.begin(), p.o.storage.end(), canary<T>());
    attend::decode_attention<T>(p.q.in(), c->cache(), p.o.view, p.options(), {}, ctx);
    EXPECT_TRUE(same_bits(with_lse, p.o.storage)) << attend::name(isa);
  }
}

// ---------------------------------------------------------------------------------------
// Edge cases

// An empty sequence, and rows that see no key (Sq = 3 > L = 1: rows 0 and 1), give exact
// zeros and an lse of -inf, or the sink's logit with sinks; also when another sequence
// is long enough to be split.
TYPED_TEST(Decoding, RowsWithoutKeysGiveZerosAndMinusInfinityOrTheSink) {
  using T = TypeParam;
  Shape s;
  s.q_heads = 4, s.kv_heads = 2, s.sq = 3;
  s.lengths = {0, 1, 1100};
  Decode<T> p(s);
  const std::vector<float> sinks{0.5f, -2.25f, 1.0f, -0.75f};
  auto c = p.contiguous();
  auto paged = p.paged(16);
  for (bool with_sinks : {false, true}) {
    DecodeOptions opts = p.options();
    if (with_sinks) opts.sinks = sinks;
    const Oracle r = p.oracle(opts);
    for (attend::Isa isa : attend::supported_isas()) {
      attend::Context ctx;
      ctx.isa = isa;
      for (int which = 0; which < 2; ++which) {
        SCOPED_TRACE(std::string(attend::name(isa)) + (which ? " paged" : " contiguous") +
                     (with_sinks ? " with sinks" : ""));
        if (which == 0) p.run(*c, opts, ctx);
        if (which == 1) p.run(*paged, opts, ctx);
        EXPECT_TRUE(p.matches(r));
        for (index_t h = 0; h < 4; ++h)
          for (auto [b, i] :
               std::vector<std::pair<index_t, index_t>>{{0, 0}, {0, 1}, {0, 2}, {1, 0}, {1, 1}}) {
            for (index_t d = 0; d < s.dv; ++d) ASSERT_EQ(p.out(b, h, i, d), T(0));
            EXPECT_EQ(p.row_lse(b, h, i),
                      with_sinks ? T(sinks[std::size_t(h)]) : -std::numeric_limits<T>::infinity());
          }
      }
    }
  }
}

// A NaN inside the keys a row sees reaches exactly the rows that see it, also across
// split boundaries: a window of 1000 keys behind the diagonal with Sq = 3 makes key
// L - 1003 visible to row 0 only, and key L - 2 to rows 1 and 2 only.
TYPED_TEST(Decoding, NaNInVisibleKeysOrValuesReachesExactlyTheRowsThatSeeThem) {
  using T = TypeParam;
  Shape s;
  s.q_heads = 4, s.kv_heads = 2, s.sq = 3;
  s.lengths = {1500, 1500, 40};
  Decode<T> p(s);
  for (index_t d = 0; d < s.dk; ++d) p.key(0, 0, 497)[d] = nan_v<T>();  // batch 0, heads 0-1, row 0
  for (index_t d = 0; d < s.dv; ++d)
    p.value(1, 1, 1498)[d] = nan_v<T>();  // batch 1, heads 2-3, rows 1-2
  for (index_t d = 0; d < s.dv; ++d)
    p.value(2, 0, 39)[d] = nan_v<T>();  // batch 2, heads 0-1, row 2
  DecodeOptions opts = p.options();
  opts.window.left = 1000;
  const auto expected_nan = [](index_t b, index_t h, index_t i) {
    if (b == 0) return h < 2 && i == 0;
    if (b == 1) return h >= 2 && i >= 1;
    return h < 2 && i == 2;
  };
  const Oracle r = p.oracle(opts);
  auto c = p.contiguous();
  auto paged = p.paged(16);
  for (index_t split : {0, 128}) {
    opts.split_keys = split;
    for (attend::Isa isa : attend::supported_isas()) {
      attend::Context ctx;
      ctx.isa = isa;
      for (int which = 0; which < 2; ++which) {
        SCOPED_TRACE(std::string(attend::name(isa)) + (which ? " paged" : " contiguous") +
                     ", split " + std::to_string(split));
        if (which == 0) p.run(*c, opts, ctx);
        if (which == 1) p.run(*paged, opts, ctx);
        EXPECT_TRUE(p.matches(r));
        for (index_t b = 0; b < 3; ++b)
          for (index_t h = 0; h < 4; ++h)
            for (index_t i = 0; i < 3; ++i) {
              EXPECT_EQ(nan_row(p, b, h, i), expected_nan(b, h, i)) << b << ", " << h << ", " << i;
              EXPECT_EQ(std::isnan(p.row_lse(b, h, i)), b == 0 && expected_nan(b, h, i))
                  << "a NaN key makes the lse NaN, a NaN value does not";
            }
      }
    }
  }
}

// Keys and values past each sequence's length hold NaN and infinities in the slots the
// kernels' tiles straddle (the rest of the last block, the rest of a 128-key tile): none
// of it reaches an output. (Every other test has NaN there too; this one also puts
// infinities, which a 0 * x product would turn into NaN.)
TYPED_TEST(Decoding, NaNAndInfinityPastTheLengthNeverReachTheOutput) {
  using T = TypeParam;
  Shape s;
  s.q_heads = 8, s.kv_heads = 2, s.sq = 3;
  s.lengths = {129, 5, 700};
  Decode<T> p(s);
  auto c = p.contiguous();
  auto paged = p.paged(16);
  const T inf = std::numeric_limits<T>::infinity();
  for (index_t seq = 0; seq < 3; ++seq)
    for (index_t g = 0; g < 2; ++g)
      for (index_t j = s.lengths[std::size_t(seq)]; j < p.shape.capacity; ++j)
        for (index_t d = 0; d < s.dv; ++d) {
          c->v_row(seq, g, j)[d] = j % 2 ? inf : -inf;
          if (j < blocks_for(s.lengths[std::size_t(seq)], 16) * 16)
            paged->v_row(seq, g, j)[d] = j % 2 ? inf : -inf;
        }
  for (index_t split : {0, 128}) {
    DecodeOptions opts = p.options();
    opts.split_keys = split;
    const Oracle r = p.oracle(opts);
    check_every_path(p, *c, opts, r, "contiguous");
    check_every_path(p, *paged, opts, r, "paged");
  }
}

// Logits around +-1e4: the running maximum keeps exp in range, inside and across splits.
TYPED_TEST(Decoding, LogitsAroundTenThousandStillMatch) {
  Shape s;
  s.q_heads = 4, s.kv_heads = 2, s.sq = 2, s.dk = 16, s.dv = 16;
  s.lengths = {33, 900};
  Decode<TypeParam> p(s);
  DecodeOptions opts = p.options();
  opts.scale = 4000.0;  // |q.k| up to ~3 with 16 entries in [-1, 1)
  for (index_t split : {0, 128}) {
    opts.split_keys = split;
    check_caches(p, opts, {16}, "split " + std::to_string(split));
  }
  const Oracle r = p.oracle(opts);
  EXPECT_GT(std::fabs(r[1].lse(0, 0, 0, 0)), 1000) << "the logits are not as large as intended";
}

// The largest accepted scale overflows float logits to +-inf. Keys at +inf share the mass
// (across splits too), keys at -inf get none; nothing becomes NaN and each output stays
// in the convex hull of the value rows its row sees.
// Two sequences, the second long enough to split at 128 keys, for the largest accepted
// scale, which overflows float logits to +-inf.
Shape overflow_shape() {
  Shape s;
  s.q_heads = 4, s.kv_heads = 2, s.sq = 2, s.dk = 16, s.dv = 16;
  s.lengths = {17, 700};
  return s;
}
constexpr double kLargestScale = double(std::numeric_limits<float>::max()) / 2;

TYPED_TEST(Decoding, ScaleOverflowingLogitsGivesNoNaN) {
  using T = TypeParam;
  const Shape s = overflow_shape();
  Decode<T> p(s);
  auto c = p.contiguous();
  DecodeOptions opts = p.options();
  opts.scale = kLargestScale;
  for (index_t split : {0, 128})
    for (attend::Isa isa : attend::supported_isas()) {
      SCOPED_TRACE(std::string(attend::name(isa)) + ", split " + std::to_string(split));
      attend::Context ctx;
      ctx.isa = isa;
      opts.split_keys = split;
      p.run(*c, opts, ctx);
      for (index_t b = 0; b < 2; ++b)
        for (index_t h = 0; h < 4; ++h)
          for (index_t i = 0; i < 2; ++i) {
            ASSERT_FALSE(nan_row(p, b, h, i));
            ASSERT_FALSE(std::isnan(p.row_lse(b, h, i)));
            const index_t seen = s.lengths[std::size_t(b)] - 2 + i + 1;
            for (index_t d = 0; d < s.dv; ++d) {
              T lo = std::numeric_limits<T>::infinity(), hi = -lo;
              for (index_t j = 0; j < seen; ++j) {
                lo = std::min(lo, p.value(b, h / 2, j)[d]);
                hi = std::max(hi, p.value(b, h / 2, j)[d]);
              }
              EXPECT_TRUE(lo <= p.out(b, h, i, d) && p.out(b, h, i, d) <= hi);
            }
          }
    }
}

// A NaN sink makes its heads' rows NaN (output and lse), also when the sink's split (the
// first) sees no key (the window starts past it) and is merged with later splits whose
// logits overflowed to +inf: the merge must not let the +inf maximum hide the NaN. (Found
// by fuzz_decode.)
TYPED_TEST(Decoding, NaNSinkSurvivesTheMergeWithOverflowedSplits) {
  using T = TypeParam;
  Decode<T> p(overflow_shape());
  auto c = p.contiguous();
  auto paged = p.paged(16);
  DecodeOptions opts = p.options();
  opts.scale = kLargestScale;
  const std::vector<float> sinks{nan_v<float>(), 0.5f, 0.5f, 0.5f};
  opts.sinks = sinks;
  opts.window.left = 100;
  for (index_t split : {0, 128}) {
    opts.split_keys = split;
    for (attend::Isa isa : attend::supported_isas())
      for (int which = 0; which < 2; ++which) {
        SCOPED_TRACE(std::string(attend::name(isa)) + (which ? " paged" : " contiguous") +
                     ", split " + std::to_string(split));
        attend::Context ctx;
        ctx.isa = isa;
        if (which == 0) p.run(*c, opts, ctx);
        if (which == 1) p.run(*paged, opts, ctx);
        for (index_t b = 0; b < 2; ++b)
          for (index_t h = 0; h < 4; ++h)
            for (index_t i = 0; i < 2; ++i) {
              EXPECT_EQ(nan_row(p, b, h, i), h == 0) << b << ", " << h << ", " << i;
              EXPECT_EQ(std::isnan(p.row_lse(b, h, i)), h == 0) << b << ", " << h << ", " << i;
            }
      }
  }
}

// ---------------------------------------------------------------------------------------
// Equivalences

// Tasks never depend on the thread count: a serial call and pools of 1, 2 and 3 threads
// give the same bits on every path, split or not, contiguous or paged.
TYPED_TEST(Decoding, ResultsAreBitIdenticalForAnyThreadCount) {
  using T = TypeParam;
  Shape s;
  s.q_heads = 8, s.kv_heads = 2, s.sq = 3, s.dk = 64, s.dv = 64;
  s.lengths = {1500, 17, 0, 700};
  s.layout = Layout::bshd;
  Decode<T> p(s);
  auto c = p.contiguous();
  auto paged = p.paged(16);
  for (index_t split : {0, 128})
    for (attend::Isa isa : attend::supported_isas())
      for (int which = 0; which < 2; ++which) {
        SCOPED_TRACE(std::string(attend::name(isa)) + (which ? " paged" : " contiguous") +
                     ", split " + std::to_string(split));
        DecodeOptions opts = p.options();
        opts.split_keys = split;
        attend::Context ctx;
        ctx.isa = isa;
        const auto run = [&] { which ? p.run(*paged, opts, ctx) : p.run(*c, opts, ctx); };
        run();
        const std::vector<T> o = p.o.storage, lse = p.lse.storage;
        for (int threads : {1, 2, 3}) {
          attend::ThreadPool pool(threads);
          ctx.executor = &pool;
          run();
          EXPECT_TRUE(same_bits(o, p.o.storage)) << threads << " threads";
          EXPECT_TRUE(same_bits(lse, p.lse.storage)) << threads << " threads";
        }
      }
}

// A paged cache holds the same logical rows as a contiguous one, and the kernels read
// rows through pointers whatever their address: on one path the results are the same
// bits for every block size.
TYPED_TEST(Decoding, PagedCacheGivesTheSameBitsAsContiguous) {
  using T = TypeParam;
  Shape s;
  s.q_heads = 8, s.kv_heads = 2, s.sq = 1, s.dk = 80, s.dv = 64;
  s.lengths = {1, 16, 17, 1500, 333};
  Decode<T> p(s);
  DecodeOptions opts = p.options();
  opts.window.left = 600;
  auto c = p.contiguous();
  for (attend::Isa isa : attend::supported_isas()) {
    attend::Context ctx;
    ctx.isa = isa;
    p.run(*c, opts, ctx);
    const std::vector<T> o = p.o.storage, lse = p.lse.storage;
    for (index_t bs : {1, 3, 16}) {
      auto paged = p.paged(bs, std::uint32_t(bs));
      p.run(*paged, opts, ctx);
      EXPECT_TRUE(same_bits(o, p.o.storage)) << attend::name(isa) << ", block size " << bs;
      EXPECT_TRUE(same_bits(lse, p.lse.storage)) << attend::name(isa) << ", block size " << bs;
    }
  }
}

// decode_attention over a contiguous cache is attention() over the cache's buffers with
// the lengths as key_lengths: both match the oracle, so they agree within the sum of
// their two bounds.
TYPED_TEST(Decoding, ContiguousCacheAgreesWithAttentionOverItsBuffers) {
  using T = TypeParam;
  for (index_t sq : {1, 3}) {
    Shape s;
    s.q_heads = 8, s.kv_heads = 2, s.sq = sq, s.dk = 64, s.dv = 64;
    s.lengths = {0, 5, 1500, 300};
    Decode<T> p(s);
    DecodeOptions opts = p.options();
    opts.window.left = 700;
    const Oracle r = p.oracle(opts);
    auto c = p.contiguous();
    attend::AttentionOptions with_lengths = opts;
    with_lengths.key_lengths = c->lengths;
    for (attend::Isa isa : attend::supported_isas()) {
      SCOPED_TRACE(std::string(attend::name(isa)) + ", Sq " + std::to_string(sq));
      attend::Context ctx;
      ctx.isa = isa;
      TensorBuffer<T> o2(s.batch(), s.q_heads, sq, s.dv, s.layout);
      attend::attention<T>(p.q.in(), c->k.in(), c->v.in(), o2.view, with_lengths, {}, ctx);
      p.run(*c, opts, ctx);
      EXPECT_TRUE(p.matches(r));
      for (index_t b = 0; b < s.batch(); ++b) {
        const ref::Attention& rb = r[std::size_t(b)];
        EXPECT_TRUE(ref::output_matches<T>(batch_of(o2.in(), b), rb)) << "attention(), batch " << b;
        EXPECT_TRUE(ref::all_close<T>(batch_of(p.o.in(), b), ref::load<T>(batch_of(o2.in(), b)),
                                      [&](index_t, index_t h, index_t i, index_t d) {
                                        return 2 * output_bound<T>(rb, h, i, d);
                                      }))
            << "decode vs attention(), batch " << b;
      }
    }
  }
}

// A second oracle: Eigen in long double computes softmax(scale q K^T) V head by head for
// single-token decoding (every key visible), from the cache's rows.
TYPED_TEST(Decoding, MatchesAnEigenOracle) {
  using T = TypeParam;
  using Mat = Eigen::Matrix<ref::real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Shape s;
  s.q_heads = 4, s.kv_heads = 2, s.sq = 1, s.dk = 80, s.dv = 16;
  s.lengths = {63, 1025};
  Decode<T> p(s);
  auto paged = p.paged(16);
  p.run(*paged, p.options());
  const Oracle r = p.oracle(p.options());
  const ref::real scale = 1 / std::sqrt(ref::real(s.dk));
  for (index_t b = 0; b < 2; ++b)
    for (index_t h = 0; h < 4; ++h) {
      const index_t len = s.lengths[std::size_t(b)], g = h / 2;
      Mat q(1, s.dk), k(len, s.dk), v(len, s.dv);
      for (index_t d = 0; d < s.dk; ++d) q(0, d) = p.q.view.row(b, h, 0)[d];
      for (index_t j = 0; j < len; ++j) {
        for (index_t d = 0; d < s.dk; ++d) k(j, d) = paged->k_row(b, g, j)[d];
        for (index_t d = 0; d < s.dv; ++d) v(j, d) = paged->v_row(b, g, j)[d];
      }
      Mat logits = scale * q * k.transpose();
      const ref::real top = logits.maxCoeff();
      Mat w = (logits.array() - top).exp().matrix();
      const Mat out = (w * v) / w.sum();
      ref::Tensor expected(1, 1, 1, s.dv);
      for (index_t d = 0; d < s.dv; ++d) expected(0, 0, 0, d) = out(0, d);
      TensorView<const T> row = batch_of(p.o.in(), b);
      row.data += h * row.head_stride, row.heads = 1;
      const ref::Attention& rb = r[std::size_t(b)];
      EXPECT_TRUE(ref::all_close<T>(
          row, expected,
          [&](index_t, index_t, index_t, index_t d) { return output_bound<T>(rb, h, 0, d); }))
          << "batch " << b << ", head " << h;
    }
}

// ---------------------------------------------------------------------------------------
// Memory past the lengths is never read

#if ATTEND_TEST_HAS_MPROTECT && GTEST_HAS_DEATH_TEST
// A tensor [b, h, s, d] (BHSD) whose every row is a page of its own, between unreadable
// guard regions one batch long: rows can be made unreadable one range at a time, and a
// read of batch -1 or b (a block-table entry of -1 or the pool size) faults.
template <class T>
class PageRows {
 public:
  PageRows(index_t b, index_t h, index_t s, index_t d)
      : page_(index_t(sysconf(_SC_PAGESIZE))), rows_per_batch_(h * s) {
    const index_t row = page_ / index_t(sizeof(T));
    bytes_ = std::size_t((b + 2) * rows_per_batch_ * page_);
    void* base = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) throw std::runtime_error("mmap failed");
    base_ = static_cast<char*>(base);
    view = {
        reinterpret_cast<T*>(base_) + rows_per_batch_ * row, b, h, s, d, h * s * row, s * row, row};
    protect(base_, rows_per_batch_);
    protect(base_ + (b + 1) * rows_per_batch_ * page_, rows_per_batch_);
  }
  ~PageRows() { munmap(base_, bytes_); }
  PageRows(const PageRows&) = delete;
  PageRows& operator=(const PageRows&) = delete;

  // Rows [from, to) of (b, h) become unreadable.
  void hide(index_t b, index_t h, index_t from, index_t to) {
    if (from < to) protect(reinterpret_cast<char*>(view.row(b, h, from)), to - from);
  }

  TensorView<T> view;

 private:
  void protect(char* at, index_t pages) {
    if (mprotect(at, std::size_t(pages * page_), PROT_NONE) != 0)
      throw std::runtime_error("mprotect failed");
  }
  index_t page_, rows_per_batch_;
  std::size_t bytes_ = 0;
  char* base_ = nullptr;
};

// Caches of p's tokens in page-per-row memory: every row past a length unreadable, and
// paged table entries past a sequence's blocks alternately -1 and the pool size.
template <class T>
struct GuardedCaches {
  std::unique_ptr<PageRows<T>> ck, cv, pk, pv;
  std::vector<std::int32_t> table, lengths;
  index_t max_blocks = 0;

  GuardedCaches(Decode<T>& p, index_t bs) : lengths(p.shape.lengths) {
    const Shape& s = p.shape;
    const index_t seqs = index_t(s.lengths.size());
    ck = std::make_unique<PageRows<T>>(seqs, s.kv_heads, s.capacity, s.dk);
    cv = std::make_unique<PageRows<T>>(seqs, s.kv_heads, s.capacity, s.dv);
    max_blocks = s.capacity / bs;
    index_t pool = 0;
    for (auto l : s.lengths) pool += blocks_for(l, bs);
    pk = std::make_unique<PageRows<T>>(pool, s.kv_heads, bs, s.dk);
    pv = std::make_unique<PageRows<T>>(pool, s.kv_heads, bs, s.dv);
    table.assign(std::size_t(seqs * max_blocks), 0);
    index_t next = 0;
    for (index_t seq = 0; seq < seqs; ++seq) {
      const index_t len = s.lengths[std::size_t(seq)];
      for (index_t i = 0; i < max_blocks; ++i)
        table[std::size_t(seq * max_blocks + i)] =
            i < blocks_for(len, bs) ? std::int32_t(pool - 1 - next++)  // backwards through the pool
                                    : (i % 2 ? -1 : std::int32_t(pool));
      for (index_t g = 0; g < s.kv_heads; ++g)
        for (index_t j = 0; j < len; ++j) {
          std::copy_n(p.key(seq, g, j), s.dk, ck->view.row(seq, g, j));
          std::copy_n(p.value(seq, g, j), s.dv, cv->view.row(seq, g, j));
          const std::int32_t block = table[std::size_t(seq * max_blocks + j / bs)];
          std::copy_n(p.key(seq, g, j), s.dk, pk->view.row(block, g, j % bs));
          std::copy_n(p.value(seq, g, j), s.dv, pv->view.row(block, g, j % bs));
        }
      for (index_t g = 0; g < s.kv_heads; ++g) {
        ck->hide(seq, g, len, s.capacity), cv->hide(seq, g, len, s.capacity);
        if (len % bs == 0) continue;
        const std::int32_t last = table[std::size_t(seq * max_blocks + len / bs)];
        pk->hide(last, g, len % bs, bs), pv->hide(last, g, len % bs, bs);
      }
    }
  }

  attend::KvCache<const T> contiguous() const { return {ck->view, cv->view, lengths}; }
  attend::PagedKvCache<const T> paged() const {
    return {pk->view, pv->view, {table.data(), index_t(lengths.size()), max_blocks}, lengths};
  }
};

// Decodes p on every path from both guarded caches, each call first in a child process
// (a read of unreadable memory kills the child, not the test), then here, against the
// oracle.
template <class T>
void expect_no_read_past_lengths(Decode<T>& p, const DecodeOptions& opts, index_t bs) {
  GuardedCaches<T> g(p, bs);
  const Oracle r = p.oracle(opts);
  for (attend::Isa isa : attend::supported_isas())
    for (int which = 0; which < 2; ++which) {
      SCOPED_TRACE(std::string(attend::name(isa)) + (which ? " paged" : " contiguous") +
                   ", split " + std::to_string(opts.split_keys));
      attend::Context ctx;
      ctx.isa = isa;
      const auto run = [&] {
        std::fill(p.o.storage.begin(), p.o.storage.end(), canary<T>());
        if (which == 0)
          attend::decode_attention<T>(p.q.in(), g.contiguous(), p.o.view, opts, p.lse.view, ctx);
        if (which == 1)
          attend::decode_attention<T>(p.q.in(), g.paged(), p.o.view, opts, p.lse.view, ctx);
      };
      EXPECT_EXIT((run(), std::exit(0)), ::testing::ExitedWithCode(0), "")
          << "the call read memory past a sequence's length";
      if (::testing::Test::HasFailure()) return;
      run();
      EXPECT_TRUE(p.matches(r));
    }
}
#endif

// One task per sequence and kv head, or splits that every sequence fills; fewer and more
// rows per kv head than a register tile (the SIMD paths read K rows directly or pack them).
TYPED_TEST(Decoding, RowsPastTheLengthAreNeverRead) {
#if ATTEND_TEST_HAS_MPROTECT && GTEST_HAS_DEATH_TEST
  using T = TypeParam;
  for (index_t q_heads : {2, 16}) {
    Shape s;
    s.q_heads = q_heads, s.kv_heads = 2, s.sq = q_heads == 2 ? 1 : 3, s.dk = 16, s.dv = 16;
    s.lengths = {5, 300, 40};
    Decode<T> p(s);
    expect_no_read_past_lengths(p, p.options(), 16);  // one split: 300 < 512 keys
    Shape even = s;
    even.lengths = {300, 350};
    Decode<T> p2(even);
    DecodeOptions opts = p2.options();
    opts.split_keys = 128;
    expect_no_read_past_lengths(p2, opts, 3);  // every sequence reaches the last split
  }
#else
  GTEST_SKIP() << "needs mprotect and death tests";
#endif
}

// Splits are cut from the longest sequence; the short ones have none of their keys in the
// later splits.
TYPED_TEST(Decoding, RowsPastAShortSequencesLengthAreNeverReadWhenLongOnesSplit) {
#if ATTEND_TEST_HAS_MPROTECT && GTEST_HAS_DEATH_TEST
  using T = TypeParam;
  for (index_t q_heads : {2, 16}) {
    Shape s;
    s.q_heads = q_heads, s.kv_heads = 2, s.sq = q_heads == 2 ? 1 : 3, s.dk = 16, s.dv = 16;
    s.lengths = {5, 700, 40};
    Decode<T> p(s);
    DecodeOptions opts = p.options();
    opts.split_keys = 128;
    expect_no_read_past_lengths(p, opts, 16);
  }
#endif
}

// ---------------------------------------------------------------------------------------
// Refusals: std::invalid_argument naming the argument, o and lse unchanged

template <class T>
struct Refused {
  Decode<T> p;
  std::unique_ptr<ContiguousCacheBuffer<T>> c;
  std::unique_ptr<PagedCacheBuffer<T>> paged;

  Refused() : p(shape()), c(p.contiguous()), paged(p.paged(4, 3, Unassigned::minus_one)) {
    std::fill(p.o.storage.begin(), p.o.storage.end(), canary<T>());
  }
  static Shape shape() {
    Shape s;
    s.q_heads = 4, s.kv_heads = 2, s.sq = 1, s.dk = 16, s.dv = 8;
    s.lengths = {3, 8};
    s.capacity = 12;
    return s;
  }

  // decode_attention on the contiguous cache with one thing changed is refused.
  template <class Change>
  ::testing::AssertionResult refuses(const std::string& argument, const std::string& detail,
                                     Change change) {
    TensorView<const T> q = p.q.in();
    TensorView<T> o = p.o.view, lse = p.lse.view;
    attend::KvCache<const T> cache = c->cache();
    DecodeOptions opts = p.options();
    change(q, cache, o, lse, opts);
    return rejects(
        {"decode_attention", argument, detail},
        [&] { attend::decode_attention<T>(q, cache, o, opts, lse); }, p.o.storage, p.lse.storage,
        c->k.storage, c->v.storage);
  }
};

TYPED_TEST(Decoding, RefusesBadShapesWithoutWriting) {
  using T = TypeParam;
  using V = TensorView<const T>;
  using O = TensorView<T>;
  using C = attend::KvCache<const T>;
  Refused<T> f;
  TensorBuffer<T> wide_q(2, 4, 1, 32), three_heads(2, 3, 1, 16), o_dv(2, 4, 1, 16),
      three_batches(3, 4, 1, 16), lse2(2, 4, 1, 2);
  EXPECT_TRUE(f.refuses("q", "expected shape [*, *, *, 16], got [2, 4, 1, 32]",
                        [&](V& q, C&, O&, O&, DecodeOptions&) { q = wide_q.in(); }));
  EXPECT_TRUE(f.refuses("cache.k.heads", "expected a divisor of the 3 query heads",
                        [&](V& q, C&, O&, O&, DecodeOptions&) { q = three_heads.in(); }));
  EXPECT_TRUE(f.refuses("q.batch", "expected 2",
                        [&](V& q, C&, O&, O&, DecodeOptions&) { q = three_batches.in(); }));
  EXPECT_TRUE(f.refuses("o", "expected shape [2, 4, 1, 8], got [2, 4, 1, 16]",
                        [&](V&, C&, O& o, O&, DecodeOptions&) { o = o_dv.view; }));
  EXPECT_TRUE(f.refuses("lse", "expected shape [2, 4, 1, 1], got [2, 4, 1, 2]",
                        [&](V&, C&, O&, O& lse, DecodeOptions&) { lse = lse2.view; }));
  EXPECT_TRUE(f.refuses("cache.lengths", "expected every length in [0, 12], got 13",
                        [&](V&, C& c, O&, O&, DecodeOptions&) {
                          static const std::vector<std::int32_t> bad{3, 13};
                          c.lengths = bad;
                        }));
  EXPECT_TRUE(f.refuses("cache.v", "expected shape [2, 2, 12, *]",
                        [&](V&, C& c, O&, O&, DecodeOptions&) { c.v.heads = 1; }));
}

TYPED_TEST(Decoding, RefusesBadOptionsWithoutWriting) {
  using T = TypeParam;
  using V = TensorView<const T>;
  using O = TensorView<T>;
  using C = attend::KvCache<const T>;
  Refused<T> f;
  const std::vector<std::int32_t> one{0}, out_of_range{0, 2}, negative{-1, 0}, lengths{3, 8};
  const std::vector<float> three(3, 0.5f);
  TensorBuffer<float> bias_of_longest(2, 4, 1, 8), bias(2, 4, 1, 12);
  MaskBuffer mask_of_longest(1, 1, 1, 8, 1, 0.5);
  const auto set = [](auto apply) {
    return [apply](V&, C&, O&, O&, DecodeOptions& o) { apply(o); };
  };
  EXPECT_TRUE(f.refuses("opts.sequences.size", "expected 2",
                        set([&](DecodeOptions& o) { o.sequences = one; })));
  EXPECT_TRUE(f.refuses("opts.sequences", "entry 1 = 2 is not a sequence of the cache [0, 2)",
                        set([&](DecodeOptions& o) { o.sequences = out_of_range; })));
  EXPECT_TRUE(f.refuses("opts.sequences", "entry 0 = -1",
                        set([&](DecodeOptions& o) { o.sequences = negative; })));
  EXPECT_TRUE(f.refuses("opts.key_lengths", "expected none",
                        set([&](DecodeOptions& o) { o.key_lengths = lengths; })));
  EXPECT_TRUE(
      f.refuses("opts.split_keys", "got -1", set([&](DecodeOptions& o) { o.split_keys = -1; })));
  EXPECT_TRUE(f.refuses("bias", "expected shape [*, *, 1, 12], got [2, 4, 1, 8]",
                        set([&](DecodeOptions& o) { o.bias = bias_of_longest.in(); })));
  EXPECT_TRUE(f.refuses("mask", "expected shape [*, *, 1, 12], got [1, 1, 1, 8]",
                        set([&](DecodeOptions& o) { o.mask = mask_of_longest.view; })));
  EXPECT_TRUE(f.refuses("alibi_slopes.size", "expected 4",
                        set([&](DecodeOptions& o) { o.alibi_slopes = three; })));
  EXPECT_TRUE(
      f.refuses("sinks.size", "expected 4", set([&](DecodeOptions& o) { o.sinks = three; })));
  EXPECT_TRUE(
      f.refuses("window.left", "got -2", set([](DecodeOptions& o) { o.window.left = -2; })));
  EXPECT_TRUE(f.refuses("softcap", "expected a value in [0, 1.7e38]",
                        set([](DecodeOptions& o) { o.softcap = -1.0; })));
  EXPECT_TRUE(f.refuses("scale", "expected a finite value", set([](DecodeOptions& o) {
                          o.scale = std::numeric_limits<double>::infinity();
                        })));
  // The right bias is accepted: the shapes above fail for their own reason.
  DecodeOptions ok = f.p.options();
  ok.bias = bias.in();
  EXPECT_NO_THROW(attend::decode_attention<T>(f.p.q.in(), f.c->cache(), f.p.o.view, ok));
}

TYPED_TEST(Decoding, RefusesOutputsThatOverlapItsInputsWithoutWriting) {
  using T = TypeParam;
  using V = TensorView<const T>;
  using O = TensorView<T>;
  using C = attend::KvCache<const T>;
  Refused<T> f;
  // o inside the cache's K rows: [2, 4, 1, 8] with the cache's own strides.
  const TensorView<T> in_k(f.c->k.view.data, 2, 4, 1, 8, 4 * 24, 24, 24);
  const TensorView<T> in_v(f.c->v.view.data + 3, 2, 4, 1, 8, 4 * 24, 24, 24);
  EXPECT_TRUE(
      f.refuses("o", "overlaps cache.k", [&](V&, C&, O& o, O&, DecodeOptions&) { o = in_k; }));
  EXPECT_TRUE(
      f.refuses("o", "overlaps cache.v", [&](V&, C&, O& o, O&, DecodeOptions&) { o = in_v; }));
  EXPECT_TRUE(f.refuses("lse", "overlaps o", [&](V&, C&, O& o, O& lse, DecodeOptions&) {
    lse = {o.data, 2, 4, 1, 1, o.batch_stride, o.head_stride, o.seq_stride};
  }));
  TensorBuffer<T> shared(2, 4, 1, 16);
  EXPECT_TRUE(f.refuses("o", "overlaps q", [&](V& q, C&, O& o, O&, DecodeOptions&) {
    q = shared.in();
    o = shared.view, o.dim = 8;
  }));
}

// Paged: a block the lengths need that is not in the pool.
TYPED_TEST(Decoding, RefusesBlockTableEntriesOutsideThePoolWithoutWriting) {
  using T = TypeParam;
  Refused<T> f;
  auto& table = f.paged->table.view;
  const index_t pool = f.paged->k.view.batch;
  for (std::int32_t entry : {std::int32_t(-1), std::int32_t(pool)}) {
    const std::int32_t saved = table(1, 1);
    table(1, 1) = entry;  // sequence 1 holds 8 tokens in blocks of 4: entry 1 is needed
    EXPECT_TRUE(rejects(
        {"decode_attention", "cache.block_table",
         "entry (1, 1) = " + std::to_string(entry) + " is not a block of the pool"},
        [&] {
          attend::decode_attention<T>(f.p.q.in(), f.paged->cache(), f.p.o.view, f.p.options(),
                                      f.p.lse.view);
        },
        f.p.o.storage, f.p.lse.storage));
    table(1, 1) = saved;
  }
  // Entries past the needed blocks are not looked at: the -1 entries after them are fine.
  EXPECT_EQ(table(0, 1), -1);
  EXPECT_NO_THROW(attend::decode_attention<T>(f.p.q.in(), f.paged->cache(), f.p.o.view,
                                              f.p.options(), f.p.lse.view));
}

// Zero-size extents: nothing to compute, nothing written.
TYPED_TEST(Decoding, ZeroSizeExtentsWriteNothing) {
  using T = TypeParam;
  Shape s;
  s.lengths = {4, 9};
  s.sq = 0;
  Decode<T> p(s);
  auto c = p.contiguous();
  p.run(*c, p.options());
  EXPECT_TRUE(p.o.canaries_intact() && p.lse.canaries_intact());
  Shape none;
  none.lengths = {};
  none.capacity = 16;
  Decode<T> empty(none);
  auto ce = empty.contiguous();
  empty.run(*ce, empty.options());
  EXPECT_TRUE(empty.o.canaries_intact());
}

}  // namespace
