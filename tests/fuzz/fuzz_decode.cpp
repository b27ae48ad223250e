// fuzz_decode: attend::decode_attention, the newest Sq (1 to 4) query tokens of each
// sequence against its KV cache (kv_cache.hpp), on every path this CPU runs, in float and
// double. The cache is contiguous or paged (a shuffled pool of blocks of 1 to 17 tokens; a
// block table whose entries past each sequence's blocks are -1, spare blocks, blocks of
// other sequences or junk; sometimes prefix blocks shared between sequences), padded or
// not, BHSD or BSHD, filled by append() or written directly, with ragged lengths. Heads
// are grouped up to 16 query heads per kv head (so the SIMD paths' packed tiles of 12 and
// more rows come up), beams may read one sequence (DecodeOptions::sequences), the split of
// the keys is sometimes forced, and every ScoreOptions rule applies (bias and mask over
// the capacity). Each query batch is held to the oracle ref::attention on the dense keys
// and values of its sequence, as tests/test_decode.cpp does, with the tolerances of
// tests/support/tolerance.hpp.
//
// Beyond the oracle it checks what decode.hpp, kv_cache.hpp and options.hpp promise
// whatever the data: a row that sees no key is exact zeros with LSE -inf (the sink's
// logit with sinks); cache rows that hold no token are never read (NaN, and poisoned for
// AddressSanitizer during the call); append() writes exactly the rows the documented
// layout names; nothing is written outside o and lse; the inputs stay as they were; three
// threads give the serial bits. One case in eight is made invalid on purpose:
// decode_attention (or append) must throw std::invalid_argument naming the broken argument
// and leave every buffer as it was.
#include "attend/decode.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "attend/kv_cache.hpp"
#include "fuzz_support.hpp"
#include "score_options.hpp"
#include "support/caches.hpp"

namespace {

using attend::index_t;
using attend::TensorView;
using fuzz::Case;
using fuzz::same_bits;
using fuzz::TensorBuffer;
using testing_support::batch_of;
using testing_support::blocks_for;
using testing_support::MatrixBuffer;
using testing_support::nan_v;

// What a paged cache's block table holds past the blocks each sequence owns: none of it
// may be read.
enum class Unassigned { minus_one, spare, owned, junk };

// The cache: contiguous k [S, Hkv, capacity, dk], or a pool k [blocks, Hkv, block_size, dk]
// with a block table [S, max_blocks]; v likewise with dv. Row addresses come from the
// layout kv_cache.hpp documents, not from the library.
template <class T>
struct Cache {
  bool paged = false;
  index_t block_size = 1, capacity = 0;
  std::unique_ptr<TensorBuffer<T>> k, v;
  std::unique_ptr<MatrixBuffer<std::int32_t>> table;  // [S, max_blocks]; paged only
  std::vector<std::int32_t> lengths;                  // [S]

  T* row(const TensorBuffer<T>& t, index_t s, index_t g, index_t j) const {
    if (!paged) return t.view.row(s, g, j);
    return t.view.row(table->view(s, j / block_size), g, j % block_size);
  }
};

// The views a call gets (a refused call gets broken ones); f receives the library's
// KvCache<T> or PagedKvCache<T>.
template <class T>
struct CacheViews {
  TensorView<T> k, v;
  attend::MatrixView<const std::int32_t> table;
  attend::Span<std::int32_t> lengths;

  explicit CacheViews(Cache<T>& c)
      : k(c.k->view),
        v(c.v->view),
        table(c.paged ? c.table->in() : attend::MatrixView<const std::int32_t>{}),
        lengths(c.lengths) {}
  template <class F>
  void visit(bool paged, F&& f) const {
    if (paged)
      f(attend::PagedKvCache<T>{k, v, table, lengths});
    else
      f(attend::KvCache<T>{k, v, lengths});
  }
};

template <class T>
struct Problem {
  index_t S = 0, B = 0, Hkv = 0, Hq = 0, Sq = 0, Dk = 0, Dv = 0;
  std::vector<std::int32_t> lengths;    // [S]: the tokens each sequence ends up holding
  std::vector<std::int32_t> sequences;  // [B], or empty: query batch b reads sequence b
  // The logical tokens, dense: token j of sequence s, kv head g is row (s, g, j) of
  // [S, Hkv, longest, d]; the oracle reads them, and append() takes its rows from them.
  std::unique_ptr<TensorBuffer<T>> tokens_k, tokens_v;
  Cache<T> cache;
  std::unique_ptr<TensorBuffer<T>> q, o, lse;
  fuzz::ScoreOptionsCase so;

  index_t sequence(index_t b) const { return sequences.empty() ? b : sequences[std::size_t(b)]; }
  index_t length(index_t b) const { return lengths[std::size_t(sequence(b))]; }

  // Rows of the cache's k or v that hold no token of any sequence: {first element, count}.
  std::vector<std::pair<const T*, index_t>> empty_rows(const TensorBuffer<T>& t) const {
    std::set<const T*> tokens;
    for (index_t s = 0; s < S; ++s)
      for (index_t g = 0; g < Hkv; ++g)
        for (index_t j = 0; j < lengths[std::size_t(s)]; ++j) tokens.insert(cache.row(t, s, g, j));
    std::vector<std::pair<const T*, index_t>> empty;
    const TensorView<T>& x = t.view;
    for (index_t b = 0; b < x.batch; ++b)
      for (index_t h = 0; h < x.heads; ++h)
        for (index_t j = 0; j < x.seq; ++j)
          if (!tokens.count(x.row(b, h, j))) empty.emplace_back(x.row(b, h, j), x.dim);
    return empty;
  }
};

// ---------------------------------------------------------------------------------------
// The cache: its shape from the case, then its contents

// Decodes the cache's structure for `pb.lengths` and allocates it; a paged cache gets its
// block table here (blocks drawn from a shuffle of the pool, as an engine's free list
// hands them out). `share`: a sequence may reuse prefix blocks of the one before it.
template <class T>
void make_cache(Case& c, Problem<T>& pb, bool share) {
  Cache<T>& cache = pb.cache;
  const index_t longest =
      pb.lengths.empty() ? 0 : *std::max_element(pb.lengths.begin(), pb.lengths.end());
  const auto k_layout = fuzz::decode_layout(c, "cache.k", false);
  const auto v_layout = fuzz::decode_layout(c, "cache.v", false);
  if (!cache.paged) {
    cache.capacity = longest + c.pick<index_t>("extra_capacity", 0, 5);
    cache.k = fuzz::make_tensor<T>(pb.S, pb.Hkv, cache.capacity, pb.Dk, k_layout);
    cache.v = fuzz::make_tensor<T>(pb.S, pb.Hkv, cache.capacity, pb.Dv, v_layout);
    return;
  }
  const index_t bs = cache.block_size = c.pick<index_t>("block_size", 1, 17);
  const index_t max_blocks = blocks_for(longest, bs) + c.pick<index_t>("extra_blocks", 0, 2);
  cache.capacity = max_blocks * bs;
  std::vector<index_t> owned, shared(std::size_t(pb.S), 0);
  index_t fresh = 0;  // blocks owned by one sequence first
  for (index_t s = 0; s < pb.S; ++s) {
    owned.push_back(blocks_for(pb.lengths[std::size_t(s)], bs));
    if (share && s > 0)
      shared[std::size_t(s)] =
          c.pick<index_t>("shared_blocks", 0, std::min(owned[s - 1], owned[s]));
    fresh += owned.back() - shared[std::size_t(s)];
  }
  const index_t spare = c.pick<index_t>("spare_blocks", 0, 3), blocks = fresh + spare;
  const Unassigned rest = c.choose<Unassigned>("unassigned", {{Unassigned::minus_one, "minus_one"},
                                                              {Unassigned::spare, "spare"},
                                                              {Unassigned::owned, "owned"},
                                                              {Unassigned::junk, "junk"}});
  const index_t table_pad = c.pick<index_t>("table.pad", 0, 3);
  std::vector<std::int32_t> pool(static_cast<std::size_t>(blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), std::mt19937(c.pick<std::uint32_t>("table.seed", 0, 255)));
  c.note("blocks", std::to_string(blocks));

  cache.k = fuzz::make_tensor<T>(blocks, pb.Hkv, bs, pb.Dk, k_layout);
  cache.v = fuzz::make_tensor<T>(blocks, pb.Hkv, bs, pb.Dv, v_layout);
  cache.table = std::make_unique<MatrixBuffer<std::int32_t>>(pb.S, max_blocks, table_pad);
  attend::MatrixView<std::int32_t>& table = cache.table->view;
  const auto unassigned = [&](index_t s, index_t i) -> std::int32_t {
    const std::size_t n = std::size_t(s + i);
    switch (rest) {
      case Unassigned::spare:
        return spare > 0 ? pool[std::size_t(fresh) + n % std::size_t(spare)] : -1;
      case Unassigned::owned:
        return fresh > 0 ? pool[n % std::size_t(fresh)] : -1;
      case Unassigned::junk: {
        const std::int32_t junk[] = {std::int32_t(blocks), std::numeric_limits<std::int32_t>::min(),
                                     std::numeric_limits<std::int32_t>::max(), -2};
        return junk[n % 4];
      }
      default:
        return -1;
    }
  };
  std::size_t next = 0;
  for (index_t s = 0; s < pb.S; ++s)
    for (index_t i = 0; i < max_blocks; ++i)
      table(s, i) = i < shared[std::size_t(s)]  ? table(s - 1, i)
                    : i < owned[std::size_t(s)] ? pool[next++]
                                                : unassigned(s, i);
}

// Writes every token into its cache row, in sequence order (a block shared by two
// sequences ends up holding the later one's rows, and pb.tokens are made to agree), after
// filling every element of the cache's views with NaN.
template <class T>
void write_tokens(Problem<T>& pb) {
  Cache<T>& c = pb.cache;
  c.k->for_each([](T& x) { x = nan_v<T>(); });
  c.v->for_each([](T& x) { x = nan_v<T>(); });
  for (int pass = 0; pass < 2; ++pass)  // write, then read back what the rows hold
    for (index_t s = 0; s < pb.S; ++s)
      for (index_t g = 0; g < pb.Hkv; ++g)
        for (index_t j = 0; j < pb.lengths[std::size_t(s)]; ++j) {
          T *tk = pb.tokens_k->view.row(s, g, j), *ck = c.row(*c.k, s, g, j);
          T *tv = pb.tokens_v->view.row(s, g, j), *cv = c.row(*c.v, s, g, j);
          pass == 0 ? std::copy_n(tk, pb.Dk, ck) : std::copy_n(ck, pb.Dk, tk);
          pass == 0 ? std::copy_n(tv, pb.Dv, cv) : std::copy_n(cv, pb.Dv, tv);
        }
}

// How append() fills the cache: first `all` tokens of every sequence in one call (no
// sequences argument), then each sequence s in two calls, up to split[s] and the rest.
struct AppendPlan {
  index_t all = 0;
  std::vector<index_t> split;
};

template <class T>
TensorView<const T> token_rows(const TensorBuffer<T>& tokens, index_t s, index_t count, index_t j0,
                               index_t n) {
  TensorView<const T> t = tokens.view;
  t.data = tokens.view.row(s, 0, j0);
  t.batch = count, t.seq = n;
  return t;
}

// Fills the cache through append() as planned, starting from every length 0, and checks
// that it wrote what write_tokens() writes: the documented layout, nothing else.
template <class T>
void append_tokens(const Case& c, Problem<T>& pb, const AppendPlan& plan,
                   const attend::Context& ctx) {
  Cache<T>& cache = pb.cache;
  const std::vector<T> expected_k = cache.k->storage, expected_v = cache.v->storage;
  cache.k->for_each([](T& x) { x = nan_v<T>(); });
  cache.v->for_each([](T& x) { x = nan_v<T>(); });
  cache.lengths.assign(std::size_t(pb.S), 0);
  const CacheViews<T> views(cache);
  const auto append = [&](index_t s, index_t count, index_t j0, index_t n,
                          const std::vector<std::int32_t>& which) {
    const auto k_new = token_rows(*pb.tokens_k, s, count, j0, n);
    const auto v_new = token_rows(*pb.tokens_v, s, count, j0, n);
    c.valid("append", [&] {
      views.visit(cache.paged,
                  [&](const auto& view) { attend::append<T>(view, k_new, v_new, which, ctx); });
    });
  };
  if (pb.S > 0) append(0, pb.S, 0, plan.all, {});
  for (index_t s = 0; s < pb.S; ++s) {
    const std::vector<std::int32_t> which{std::int32_t(s)};
    const index_t split = plan.split[std::size_t(s)], length = pb.lengths[std::size_t(s)];
    append(s, 1, plan.all, split - plan.all, which);
    append(s, 1, split, length - split, which);
  }
  c.check(cache.lengths == pb.lengths, "append() left lengths other than the tokens appended");
  c.check(same_bits(cache.k->storage, expected_k) && same_bits(cache.v->storage, expected_v),
          "append() wrote the cache other than its documented layout says");
}

// ---------------------------------------------------------------------------------------
// The oracle, one query batch at a time

// Query batch b as the oracle sees it: its queries [1, Hq, Sq, Dk], the dense keys and
// values of its sequence [1, Hkv, L, d], its options (the bias and mask rows of b) and the
// oracle's result.
struct Batch {
  ref::Tensor q, k, v;
  attend::AttentionOptions opts;
  ref::Attention r;
  bool comparable = false, nan_free = false;
};

// Can T follow the long double oracle on this batch? fuzz_attention.cpp's representable()
// explains each condition (a finite intermediate that overflows T, a weight that may leave
// T's range next to large values, an infinite bound, logits too large for T to keep their
// gaps); here over the L keys of one batch.
template <class T>
bool representable(const Batch& x, double scale, ref::real added) {
  const ref::real limit = fuzz::finite_limit<T>(), log2e = 1.4426950408889634L;
  const ref::real tiny = std::numeric_limits<T>::min(), u = ref::unit_roundoff<T>();
  const index_t Hq = x.q.h, Sq = x.q.s, Dk = x.q.d, L = x.k.s, Dv = x.v.d, group = Hq / x.k.h;
  ref::real v_max = 0;
  for (ref::real e : x.v.v) v_max = std::max(v_max, fuzz::finite_abs(e));
  if (v_max * ref::real(L + 1) >= limit) return false;
  std::vector<bool> small(static_cast<std::size_t>(L));  // keys of weight < tiny in the row
  for (index_t h = 0; h < Hq; ++h)
    for (index_t i = 0; i < Sq; ++i) {
      const ref::real slack = x.r.slack(0, h, i, 0);
      if (!std::isfinite(slack)) return false;
      const auto visible = [&](index_t j) { return ref::visible(x.opts, 0, h, i, j, Sq, L); };
      std::fill(small.begin(), small.end(), false);
      const ref::real sink =
          x.opts.sinks.empty() ? -std::numeric_limits<ref::real>::infinity() : x.opts.sinks[h];
      if (!fuzz::weights_predictable<T>(x.r.rows, 0, h, i, sink, visible,
                                        [&](index_t j) { small[std::size_t(j)] = true; }))
        return false;
      ref::real underflowing = 0;  // sum of max_d |v_jd| over the keys of weight < tiny
      for (index_t j = 0; j < L; ++j) {
        if (!visible(j)) continue;
        ref::real dot = 0;
        for (index_t d = 0; d < Dk; ++d)
          dot += fuzz::finite_abs(x.q(0, h, i, d) * x.k(0, h / group, j, d));
        if (dot >= limit || (std::fabs(scale) * dot + added) * log2e >= limit) return false;
        const ref::real p = x.r.rows.p(0, h, i, j), rel = 2 * (2 * slack + ref::real(L + 4)) * u;
        if (!(p > 0 && p * (1 - rel) < tiny) && !small[std::size_t(j)]) continue;
        ref::real row_max = 0;
        for (index_t d = 0; d < Dv; ++d) {
          if (std::isinf(x.v(0, h / group, j, d))) return false;
          row_max = std::max(row_max, fuzz::finite_abs(x.v(0, h / group, j, d)));
        }
        underflowing += row_max;
      }
      if (underflowing > 1) return false;
    }
  return true;
}

// With finite queries, tokens and options, o and lse hold no NaN (options.hpp), unless a
// dot product or a sum of value rows overflows T on its own.
template <class T>
bool nan_free(const Batch& x) {
  const ref::real limit = fuzz::finite_limit<T>();
  const attend::AttentionOptions& o = x.opts;
  bool finite = true;
  for (const ref::Tensor* t : {&x.q, &x.k, &x.v})
    for (ref::real e : t->v) finite = finite && std::isfinite(e);
  for (const auto& a : {o.alibi_slopes, o.sinks})
    for (index_t h = 0; h < a.size; ++h) finite = finite && std::isfinite(a[h]);
  const index_t L = x.k.s;
  for (index_t h = 0; h < o.bias.heads; ++h)  // the bias columns of keys that exist
    for (index_t i = 0; i < o.bias.seq; ++i)
      for (index_t j = 0; j < L; ++j) finite = finite && std::isfinite(o.bias.row(0, h, i)[j]);
  ref::real v_sum = 0;
  for (ref::real e : x.v.v) v_sum += std::fabs(e);
  if (!finite || v_sum >= limit) return false;
  const index_t group = x.q.h / x.k.h;
  for (index_t h = 0; h < x.q.h; ++h)
    for (index_t i = 0; i < x.q.s; ++i)
      for (index_t j = 0; j < L; ++j) {
        ref::real dot = 0;
        for (index_t d = 0; d < x.q.d; ++d)
          dot += std::fabs(x.q(0, h, i, d) * x.k(0, h / group, j, d));
        if (dot >= limit) return false;
      }
  return true;
}

template <class T>
std::vector<Batch> oracle(const Problem<T>& pb) {
  std::vector<Batch> batches(std::size_t(pb.B));
  if (pb.Hkv == 0) return batches;  // no heads: nothing to compare (the oracle divides by Hkv)
  const ref::real added = pb.so.finite_magnitude(pb.Sq, pb.cache.capacity);
  for (index_t b = 0; b < pb.B; ++b) {
    Batch& x = batches[std::size_t(b)];
    const index_t s = pb.sequence(b), L = pb.length(b);
    x.q = ref::load<T>(batch_of(pb.q->in(), b));
    x.k = ref::load<T>(token_rows(*pb.tokens_k, s, 1, 0, L));
    x.v = ref::load<T>(token_rows(*pb.tokens_v, s, 1, 0, L));
    x.opts = pb.so.opts;
    if (x.opts.bias.batch > 1) x.opts.bias = batch_of(x.opts.bias, b);
    if (x.opts.mask.batch > 1) x.opts.mask = batch_of(x.opts.mask, b);
    x.r = ref::attention(x.q, x.k, x.v, x.opts);
    x.comparable = representable<T>(x, x.opts.scale.value_or(attend::default_scale(pb.Dk)), added);
    x.nan_free = nan_free<T>(x);
  }
  return batches;
}

// ---------------------------------------------------------------------------------------
// Checks of one call's outputs

template <class T>
void check_outputs(const Case& c, const Problem<T>& pb, const std::vector<Batch>& batches,
                   bool with_lse, const std::string& path) {
  const TensorView<const T> o = pb.o->in(), lse = pb.lse->in();
  const ref::real u = ref::unit_roundoff<T>();
  c.check(pb.o->canaries_intact(), path + ": o written outside its view");
  c.check(pb.lse->canaries_intact(), path + ": lse written outside its view");
  for (index_t b = 0; b < pb.B && pb.Hkv > 0; ++b) {
    const Batch& x = batches[std::size_t(b)];
    const std::string batch = path + ", query batch " + std::to_string(b);
    if (x.comparable) {
      c.check(ref::output_matches<T>(batch_of(o, b), x.r), batch + ": o against the oracle");
      if (with_lse)
        c.check(ref::lse_matches<T>(batch_of(lse, b), x.r.rows),
                batch + ": lse against the oracle");
    }
    for (index_t h = 0; h < pb.Hq; ++h)
      for (index_t i = 0; i < pb.Sq; ++i) {
        const std::string row = batch + ", row " + ref::where(b, h, i, 0);
        const T* oi = o.row(b, h, i);
        const T li = with_lse ? *lse.row(b, h, i) : T(0);
        if (x.nan_free)
          c.check(
              std::none_of(oi, oi + pb.Dv, [](T e) { return std::isnan(e); }) && !std::isnan(li),
              row + ": NaN in o or lse from finite inputs");
        bool sees = false;
        for (index_t j = 0; j < x.k.s && !sees; ++j)
          sees = ref::visible(x.opts, 0, h, i, j, pb.Sq, x.k.s);
        if (sees) continue;
        // A row that sees no key: exact zeros and LSE -inf; with sinks, LSE is the sink's
        // logit (to rounding: sink * log2(e) * ln(2) on the SIMD paths, four roundings with
        // the two constants', doubled as tolerance.hpp does), and a NaN sink, which joins
        // every row's denominator, makes the row NaN, o and LSE.
        const T sink =
            x.opts.sinks.empty() ? -std::numeric_limits<T>::infinity() : T(x.opts.sinks[h]);
        const bool nan_sink = std::isnan(sink);
        c.check(
            std::all_of(oi, oi + pb.Dv, [&](T e) { return nan_sink ? std::isnan(e) : e == T(0); }),
            row + (nan_sink ? ": sees no key and has a NaN sink, but o is not NaN"
                            : ": sees no key but o is not zeros"));
        if (!with_lse) continue;
        bool lse_ok = li == sink;  // -inf without sinks, or an infinite sink
        if (nan_sink) lse_ok = std::isnan(li);
        if (std::isfinite(sink))
          lse_ok = ref::close(
              li, sink, 8 * u * std::fabs(sink) + 2 * ref::real(std::numeric_limits<T>::min()));
        c.check(lse_ok, row + ": sees no key, but its lse " + std::to_string(double(li)) +
                            " is not " + (x.opts.sinks.empty() ? "-inf" : "the sink's logit"));
      }
  }
  // Beams that read one sequence with the same queries (a batch-shared q) and the same
  // bias and mask rows compute the same thing: the same bits.
  const bool same_inputs =
      pb.q->view.batch_stride == 0 && pb.so.opts.bias.batch <= 1 && pb.so.opts.mask.batch <= 1;
  for (index_t b = 1; b < pb.B && same_inputs; ++b)
    for (index_t a = 0; a < b; ++a) {
      if (pb.sequence(a) != pb.sequence(b)) continue;
      for (index_t h = 0; h < pb.Hq; ++h)
        for (index_t i = 0; i < pb.Sq; ++i) {
          const std::vector<T> ra(o.row(a, h, i), o.row(a, h, i) + pb.Dv),
              rb(o.row(b, h, i), o.row(b, h, i) + pb.Dv);
          c.check(fuzz::same_results(ra, rb), path + ": beams " + std::to_string(a) + " and " +
                                                  std::to_string(b) +
                                                  " read one sequence alike but differ");
        }
      break;
    }
}

// ---------------------------------------------------------------------------------------
// Refusals

// The ways a call is broken. Each needs something of the case (a sequence with tokens, an
// output with elements...); without it the call gets a negative split_keys instead.
enum Break : int {
  kBlockOutsidePool,  // paged: a block the lengths need is not in the pool
  kLengthPastCapacity,
  kSequenceOutOfRange,
  kSequencesSize,
  kHeadsNotAMultiple,
  kOutputOverlapsCache,
  kOutputOverlapsQ,
  kLseOverlapsOutput,
  kLseShape,
  kOutputShape,
  kQueryWidth,
  kKeyLengthsGiven,
  kScaleTooLarge,
  kCacheValueHeads,
  kLengthsSize,
  kCacheKeysOverlapValues,
  kAppendNoRoom,  // append: one token more than a sequence has room for
  kAppendSequence,
  kAppendOverlap,
  kOptions,  // + fuzz::break_option's kinds
  kBreaks = kOptions + fuzz::kOptionBreaks
};

template <class T>
void refused(Case& c, Problem<T>& pb, int broken, double bad_scale, attend::DecodeOptions opts,
             bool with_lse, bool by_append) {
  CacheViews<T> cache(pb.cache);
  TensorView<const T> q = pb.q->in();
  TensorView<T> o = pb.o->view, lse = with_lse ? pb.lse->view : TensorView<T>{};
  std::vector<std::int32_t> bad_sequences, bad_lengths;
  const auto elements = [](const auto& t) { return t.batch * t.heads * t.seq * t.dim; };
  const bool o_elements = elements(o) > 0, q_elements = elements(q) > 0;
  const bool kv_elements = elements(cache.k) > 0 && elements(cache.v) > 0;
  // The first sequence holding a token, for the breaks that need one.
  const index_t s =
      std::find_if(pb.lengths.begin(), pb.lengths.end(), [](auto l) { return l > 0; }) -
      pb.lengths.begin();
  // append() breaks: one more call after the cache is full, of n tokens to sequence `into`.
  bool appending = false;
  TensorView<const T> k_new, v_new;
  std::string arg;
  switch (broken) {
    case kBlockOutsidePool:
      if (pb.cache.paged && s < pb.S) {  // the block of the sequence's last token
        const index_t i = (pb.lengths[std::size_t(s)] - 1) / pb.cache.block_size;
        pb.cache.table->view(s, i) = (s + i) % 2 ? -1 : std::int32_t(cache.k.batch);
        arg = "cache.block_table";
      }
      break;
    case kLengthPastCapacity:  // on either side
      if (pb.S > 0) {
        pb.cache.lengths.back() = pb.B % 2 ? std::int32_t(pb.cache.capacity + 1) : -1;
        arg = "cache.lengths";
      }
      break;
    case kSequenceOutOfRange:
      if (pb.B > 0) {
        bad_sequences = pb.sequences;
        if (bad_sequences.empty()) bad_sequences.assign(std::size_t(pb.B), 0);
        bad_sequences.back() = pb.Hq % 2 ? std::int32_t(pb.S) : -1;
        opts.sequences = bad_sequences, arg = "opts.sequences";
      }
      break;
    case kSequencesSize:
      bad_sequences.assign(std::size_t(pb.B + 1), 0);
      opts.sequences = bad_sequences, arg = "opts.sequences.size";
      break;
    case kHeadsNotAMultiple:  // or query heads without kv heads
      if (pb.Hkv != 1) q.heads += 1, arg = "cache.k.heads";
      break;
    case kOutputOverlapsCache:
      if (o_elements && kv_elements) o.data = cache.v.data, arg = "o";
      break;
    case kOutputOverlapsQ:
      if (o_elements && q_elements) o.data = const_cast<T*>(q.data), arg = "o";
      break;
    case kLseOverlapsOutput:
      if (with_lse && o_elements) lse.data = o.data, arg = "lse";
      break;
    case kLseShape:
      if (with_lse) lse.dim = 2, arg = "lse";
      break;
    case kOutputShape:
      o.dim += 1, arg = "o";
      break;
    case kQueryWidth:
      q.dim += 1, arg = "q";
      break;
    case kKeyLengthsGiven:
      bad_lengths.assign(std::size_t(std::max<index_t>(pb.B, 1)), 0);
      opts.key_lengths = bad_lengths, arg = "opts.key_lengths";
      break;
    case kScaleTooLarge:
      opts.scale = bad_scale, arg = "scale";
      break;
    case kCacheValueHeads:
      cache.v.heads += 1, arg = "cache.v";
      break;
    case kLengthsSize:
      bad_lengths.assign(std::size_t(pb.S + 1), 0);
      cache.lengths = bad_lengths, arg = "cache.lengths.size";
      break;
    case kCacheKeysOverlapValues:
      if (kv_elements) cache.v.data = cache.k.data, arg = "cache.k";
      break;
    case kAppendNoRoom:
    case kAppendSequence:
    case kAppendOverlap: {
      if (!by_append || pb.S == 0) break;
      const index_t length = pb.lengths[0],
                    n = broken == kAppendNoRoom ? pb.cache.capacity - length + 1 : 1;
      k_new = token_rows(*pb.tokens_k, 0, 1, 0, 0), v_new = token_rows(*pb.tokens_v, 0, 1, 0, 0);
      k_new.seq = v_new.seq = n;  // its rows are never read: the call is refused first
      bad_sequences = {broken == kAppendSequence ? std::int32_t(pb.S) : 0};
      if (broken == kAppendNoRoom) arg = "cache";
      if (broken == kAppendSequence) arg = "sequences";
      // An overlap is only noticed once the new token has a row: room in an assigned block.
      const bool room =
          pb.cache.paged ? length % pb.cache.block_size != 0 : length < pb.cache.capacity;
      if (broken == kAppendOverlap && room && elements(k_new) > 0 && elements(cache.k) > 0)
        k_new.data = cache.k.data, arg = "k_new";
      appending = !arg.empty();
      break;
    }
    default:
      arg = fuzz::break_option(broken - kOptions, pb.so, pb.B, pb.Hq);
      // decode_attention refuses any key_lengths before it looks at their size or values.
      if (arg == "key_lengths.size" || arg == "key_lengths") arg = "opts.key_lengths";
      static_cast<attend::AttentionOptions&>(opts) = pb.so.opts;
  }
  if (arg.empty()) opts.split_keys = -1, arg = "opts.split_keys";
  const auto call = [&] {
    cache.visit(pb.cache.paged, [&](const auto& view) {
      if (appending)
        attend::append<T>(view, k_new, v_new, bad_sequences);
      else
        attend::decode_attention<T>(q, view, o, opts, lse);
    });
  };
  c.rejected(appending ? "append" : "decode_attention", arg, call, pb.q->storage, pb.o->storage,
             pb.lse->storage, pb.cache.k->storage, pb.cache.v->storage, pb.cache.lengths,
             pb.cache.paged ? pb.cache.table->storage : std::vector<std::int32_t>{});
}

// ---------------------------------------------------------------------------------------
// One input

template <class T>
void run(Case& c) {
  fuzz::Values values(c);
  Problem<T> pb;
  pb.cache.paged = c.flag("paged");
  const bool by_append = c.flag("append");
  pb.S = c.extent("S", 3, 6);
  pb.Hkv = c.extent("Hkv", 2, 3);
  pb.Hq = pb.Hkv * c.pick<index_t>("group", 1, 16);
  pb.Sq = c.pick<index_t>("Sq", 1, 4);
  pb.Dk = c.extent("Dk", 20, 80), pb.Dv = c.extent("Dv", 20, 80);
  c.note("Hq", std::to_string(pb.Hq));
  if (pb.S > 0 && c.one_in(3, "beams"))  // several query batches may read one sequence
    for (index_t b = c.pick<index_t>("B", 1, 6); b > 0; --b)
      pb.sequences.push_back(c.pick<std::int32_t>("sequence", 0, std::int32_t(pb.S - 1)));
  pb.B = pb.sequences.empty() ? pb.S : index_t(pb.sequences.size());
  index_t max_length = c.extent("max_length", 40, 300);
  c.fit(200000, {{"max_length", &max_length}, {"Dk", &pb.Dk}, {"Dv", &pb.Dv}},
        [&] { return pb.B * pb.Hq * pb.Sq * max_length * (pb.Dk + pb.Dv + 1); });
  for (index_t s = 0; s < pb.S; ++s)
    pb.lengths.push_back(c.pick<std::int32_t>("length", 0, std::int32_t(max_length)));
  make_cache(c, pb, pb.cache.paged && !by_append && c.one_in(4, "shared_prefix"));
  c.note("capacity", std::to_string(pb.cache.capacity));

  pb.so.decode(c, pb.B, pb.Hq, pb.Sq, pb.cache.capacity, /*for_decode=*/true);
  pb.so.opts.scale = fuzz::pick_scale(c);
  const index_t split_keys =
      c.flag("split") ? c.pick<index_t>("split_keys", 1, std::max<index_t>(1, max_length)) : 0;
  const bool with_lse = c.flag("lse"), threads = c.flag("threads");
  const int broken = c.one_in(8, "invalid") ? c.pick<int>("break", 0, kBreaks - 1) : -1;
  const double bad_scale =
      broken != kScaleTooLarge
          ? 0.0
          : c.choose<double>("bad_scale", {{2e38, "2e38"},
                                           {-1e39, "-1e39"},
                                           {std::numeric_limits<double>::infinity(), "inf"},
                                           {std::numeric_limits<double>::quiet_NaN(), "nan"}});
  pb.q = fuzz::make_tensor<T>(pb.B, pb.Hq, pb.Sq, pb.Dk, fuzz::decode_layout(c, "q", true));
  pb.o = fuzz::make_tensor<T>(pb.B, pb.Hq, pb.Sq, pb.Dv, fuzz::decode_layout(c, "o", false));
  pb.lse = fuzz::make_tensor<T>(pb.B, pb.Hq, pb.Sq, 1, fuzz::decode_layout(c, "lse", false));
  AppendPlan plan;
  if (by_append && pb.S > 0) {
    plan.all =
        c.pick<index_t>("append.all", 0, *std::min_element(pb.lengths.begin(), pb.lengths.end()));
    for (index_t s = 0; s < pb.S; ++s)
      plan.split.push_back(c.pick<index_t>("append.split", plan.all, pb.lengths[std::size_t(s)]));
  }

  values.take_pool(c);
  pb.tokens_k =
      std::make_unique<TensorBuffer<T>>(pb.S, pb.Hkv, max_length, pb.Dk, fuzz::Layout::bhsd, 0);
  pb.tokens_v =
      std::make_unique<TensorBuffer<T>>(pb.S, pb.Hkv, max_length, pb.Dv, fuzz::Layout::bhsd, 0);
  values.fill(*pb.q);
  for (index_t s = 0; s < pb.S; ++s)
    for (index_t g = 0; g < pb.Hkv; ++g)
      for (index_t j = 0; j < pb.lengths[std::size_t(s)]; ++j) {
        for (index_t d = 0; d < pb.Dk; ++d) pb.tokens_k->view.row(s, g, j)[d] = values.next<T>();
        for (index_t d = 0; d < pb.Dv; ++d) pb.tokens_v->view.row(s, g, j)[d] = values.next<T>();
      }
  pb.so.fill(values, pb.Hq);
  if (pb.so.bias) {  // bias columns of keys no batch sharing the row has: NaN, never to be read
    const TensorView<float>& bias = pb.so.bias->view;
    for (index_t bb = 0; bb < bias.batch; ++bb) {
      index_t keys = 0;
      for (index_t b = 0; b < pb.B; ++b)
        if (bias.batch == 1 || b == bb) keys = std::max(keys, pb.length(b));
      for (index_t h = 0; h < bias.heads; ++h)
        for (index_t i = 0; i < bias.seq; ++i)
          std::fill(bias.row(bb, h, i) + keys, bias.row(bb, h, i) + bias.dim, nan_v<float>());
    }
  }

  attend::Context ctx;
  if (threads) ctx.executor = &fuzz::pool();
  write_tokens(pb);
  pb.cache.lengths = pb.lengths;
  if (by_append) append_tokens(c, pb, plan, ctx);
  attend::DecodeOptions opts;
  static_cast<attend::AttentionOptions&>(opts) = pb.so.opts;
  opts.sequences = pb.sequences;
  opts.split_keys = split_keys;
  if (broken >= 0) return refused(c, pb, broken, bad_scale, opts, with_lse, by_append);

  const std::vector<Batch> batches = oracle(pb);
  const auto empty_k = pb.empty_rows(*pb.cache.k), empty_v = pb.empty_rows(*pb.cache.v);
  const std::vector<T> q_before = pb.q->storage, k_before = pb.cache.k->storage,
                       v_before = pb.cache.v->storage;
  const std::vector<std::int32_t> table_before =
      pb.cache.paged ? pb.cache.table->storage : std::vector<std::int32_t>{};
  const CacheViews<T> views(pb.cache);
  const TensorView<T> lse = with_lse ? pb.lse->view : TensorView<T>{};
  // One call with the empty rows unreadable; o and lse start as canaries.
  const auto call = [&](const std::string& what, const attend::Context& on) {
    std::fill(pb.o->storage.begin(), pb.o->storage.end(), testing_support::canary<T>());
    std::fill(pb.lse->storage.begin(), pb.lse->storage.end(), testing_support::canary<T>());
    for (const auto& rows : {empty_k, empty_v})
      for (const auto& [row, n] : rows) fuzz::poison(row, n);
    c.valid(what.c_str(), [&] {
      views.visit(pb.cache.paged, [&](const auto& cache) {
        attend::decode_attention<T>(pb.q->in(), cache, pb.o->view, opts, lse, on);
      });
    });
    for (const auto& rows : {empty_k, empty_v})
      for (const auto& [row, n] : rows) fuzz::unpoison(row, n);
  };
  for (attend::Isa isa : attend::supported_isas()) {
    attend::Context on;
    on.isa = isa;
    const std::string path = std::string("decode_attention on ") + attend::name(isa);
    call(path, on);
    c.check(same_bits(pb.q->storage, q_before) && same_bits(pb.cache.k->storage, k_before) &&
                same_bits(pb.cache.v->storage, v_before) && pb.cache.lengths == pb.lengths &&
                (!pb.cache.paged || same_bits(pb.cache.table->storage, table_before)),
            path + ": an input changed");
    check_outputs(c, pb, batches, with_lse, path);
    if (!threads) continue;
    const std::vector<T> serial = pb.o->storage, serial_lse = pb.lse->storage;
    on.executor = &fuzz::pool();
    call(path + " on three threads", on);
    c.check(fuzz::same_results(pb.o->storage, serial) &&
                fuzz::same_results(pb.lse->storage, serial_lse),
            path + ": three threads changed the bits of the result");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Case c("fuzz_decode", data, size);
  if (c.flag("double"))
    run<double>(c);
  else
    run<float>(c);
  return 0;
}
