// attend::attention (attention.hpp) against the extended-precision oracle ref::attention:
// every option of AttentionOptions alone and all at once, the shapes attention meets in
// practice (GQA, Dk != Dv, Sq != Sk, decode, BHSD and BSHD, padded rows), the edge cases a
// kernel tends to get wrong (fully masked rows, keys past the key length, overflowing
// logits, NaN inputs, empty extents), an Eigen second oracle, and every error path.
//
// Tolerances come from the oracle (support/tolerance.hpp); the checks that pin exact
// behaviour (zeros, -inf, the sink, NaN placement) compare with ==.
//
// ctest runs this binary twice per path: as is, and with ATTEND_TEST_ENTRY=with_probs,
// which makes every test call attention_with_probs instead: its o and lse are held to the
// same checks, and its probabilities to the oracle's.

#include "attend/attention.hpp"
#include "attend/context.hpp"
#include "attend/isa.hpp"

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "support/buffers.hpp"
#include "support/reference.hpp"
#include "support/tolerance.hpp"

namespace {

using attend::Alignment;
using attend::AttentionOptions;
using attend::index_t;
using attend::TensorView;
using attend::Window;
using testing_support::Layout;
using testing_support::TensorBuffer;

using Lengths = std::pair<index_t, index_t>;  // (Sq, Sk)

// Whether this run tests attention_with_probs rather than attention (see the top).
bool with_probs() {
  static const bool on = [] {
    const char* entry = std::getenv("ATTEND_TEST_ENTRY");
    return entry != nullptr && std::string(entry) == "with_probs";
  }();
  return on;
}

constexpr Layout kLayouts[] = {Layout::bhsd, Layout::bshd};
constexpr Alignment kAlignments[] = {Alignment::bottom_right, Alignment::top_left};

const char* name(Alignment a) {
  return a == Alignment::bottom_right ? "bottom_right" : "top_left";
}

// The extents of one call: q [batch, q_heads, sq, dk], k [batch, kv_heads, sk, dk],
// v [batch, kv_heads, sk, dv], o [batch, q_heads, sq, dv], lse [batch, q_heads, sq, 1].
struct Shape {
  index_t batch = 1, q_heads = 1, kv_heads = 1, sq = 1, sk = 1, dk = 16, dv = 16;
  Layout layout = Layout::bhsd;
};

std::string describe(const Shape& s) {
  std::ostringstream os;
  os << "B=" << s.batch << " Hq=" << s.q_heads << " Hkv=" << s.kv_heads << " Sq=" << s.sq
     << " Sk=" << s.sk << " Dk=" << s.dk << " Dv=" << s.dv << " " << name(s.layout);
  return os.str();
}

// One call's tensors in padded buffers with canaries; q, k and v uniform in [-1, 1).
template <class T>
struct Problem {
  Shape shape;
  TensorBuffer<T> q, k, v, o, lse;
  TensorBuffer<T> probs;  // [B, Hq, Sq, Sk], written by attention_with_probs

  explicit Problem(const Shape& s, std::uint32_t seed = 7)
      : shape(s),
        q(s.batch, s.q_heads, s.sq, s.dk, s.layout),
        k(s.batch, s.kv_heads, s.sk, s.dk, s.layout),
        v(s.batch, s.kv_heads, s.sk, s.dv, s.layout),
        o(s.batch, s.q_heads, s.sq, s.dv, s.layout),
        lse(s.batch, s.q_heads, s.sq, 1, s.layout),
        probs(s.batch, s.q_heads, s.sq, s.sk, s.layout) {
    q.fill_random(seed);
    k.fill_random(seed + 1);
    v.fill_random(seed + 2);
  }

  // The call under test (see with_probs()).
  void run(const AttentionOptions& opts, const attend::Context& ctx = {}) {
    if (with_probs())
      attend::attention_with_probs<T>(q.in(), k.in(), v.in(), o.view, probs.view, opts, lse.view,
                                      ctx);
    else
      attend::attention<T>(q.in(), k.in(), v.in(), o.view, opts, lse.view, ctx);
  }
  // The probabilities against the oracle's, when the call wrote them.
  void check_probs(const ref::Attention& r) const {
    if (!with_probs()) return;
    EXPECT_TRUE(ref::probs_match<T>(probs.in(), r.rows));
    EXPECT_TRUE(probs.canaries_intact()) << "probs written outside its view";
  }
  ref::Attention oracle(const AttentionOptions& opts) const {
    return ref::attention(ref::load<T>(q.in()), ref::load<T>(k.in()), ref::load<T>(v.in()), opts);
  }
  T out(index_t b, index_t h, index_t i, index_t d) const { return o.view.row(b, h, i)[d]; }
  T row_lse(index_t b, index_t h, index_t i) const { return *lse.view.row(b, h, i); }
};

// Runs the call, holds o and lse to the oracle and checks that nothing was written outside
// their views. Returns the oracle's answer for further checks.
template <class T>
ref::Attention run_and_check(Problem<T>& p, const AttentionOptions& opts) {
  SCOPED_TRACE(describe(p.shape));
  p.run(opts);
  ref::Attention r = p.oracle(opts);
  EXPECT_TRUE(ref::output_matches<T>(p.o.view, r));
  EXPECT_TRUE(ref::lse_matches<T>(p.lse.view, r.rows));
  EXPECT_TRUE(p.o.canaries_intact()) << "o written outside its view";
  EXPECT_TRUE(p.lse.canaries_intact()) << "lse written outside its view";
  p.check_probs(r);
  return r;
}

// Row (b, h, i) of o is exact zeros and its lse is exactly `lse`: a fully masked row.
template <class T>
void expect_empty_row(const Problem<T>& p, index_t b, index_t h, index_t i, T lse) {
  bool zeros = true;
  for (index_t d = 0; d < p.shape.dv; ++d) zeros = zeros && p.out(b, h, i, d) == T(0);
  EXPECT_TRUE(zeros) << "o row [" << b << ", " << h << ", " << i << "] is not exact zeros";
  EXPECT_EQ(p.row_lse(b, h, i), lse) << "lse of row [" << b << ", " << h << ", " << i << "]";
}

// Whether row (b, h, i) of o is NaN; a row is expected to be all NaN or free of NaN.
template <class T>
bool nan_row(const Problem<T>& p, index_t b, index_t h, index_t i) {
  index_t nans = 0;
  for (index_t d = 0; d < p.shape.dv; ++d) nans += std::isnan(p.out(b, h, i, d)) ? 1 : 0;
  EXPECT_TRUE(nans == 0 || nans == p.shape.dv) << "row [" << b << ", " << h << ", " << i << "]";
  return nans > 0;
}

template <class T>
void fill_row(TensorBuffer<T>& t, index_t b, index_t h, index_t s, T value) {
  for (index_t d = 0; d < t.view.dim; ++d) t.view.row(b, h, s)[d] = value;
}

// ALiBi's geometric slopes 2^(-8 (h + 1) / H) (Press et al. 2022).
std::vector<float> alibi_slopes(index_t heads) {
  std::vector<float> s(static_cast<std::size_t>(heads));
  for (index_t h = 0; h < heads; ++h) s[h] = std::exp2(-8.0f * float(h + 1) / float(heads));
  return s;
}

// A boolean mask [batch, heads, sq, sk], dense BHSD (std::vector<bool> has no bool*), each
// entry true with probability p_true.
struct MaskBuffer {
  std::unique_ptr<bool[]> storage;
  TensorView<bool> view;

  MaskBuffer(index_t b, index_t h, index_t sq, index_t sk, std::uint32_t seed, double p_true)
      : storage(new bool[std::size_t(b * h * sq * sk)]),
        view(TensorView<bool>::bhsd(storage.get(), b, h, sq, sk)) {
    std::mt19937 gen(seed);
    std::bernoulli_distribution keep(p_true);
    for (index_t i = 0; i < b * h * sq * sk; ++i) storage[i] = keep(gen);
  }
};

struct TypeNames {
  template <class T>
  static std::string GetName(int) {
    return std::is_same_v<T, float> ? "float" : "double";
  }
};

template <class T>
class Attention : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Attention, Types, TypeNames);

// ---------------------------------------------------------------------------------------
// Shapes

TYPED_TEST(Attention, MatchesOracleAcrossSequenceLengths) {
  for (Layout layout : kLayouts)
    for (index_t s : {1, 7, 17, 63, 65, 129}) {
      Problem<TypeParam> p({2, 2, 1, s, s, 64, 64, layout});
      run_and_check(p, {});
    }
}

TYPED_TEST(Attention, MatchesOracleAcrossHeadDims) {
  for (Layout layout : kLayouts)
    for (index_t d : {1, 7, 16, 17, 63, 64, 65, 80, 128, 129}) {
      Problem<TypeParam> p({2, 2, 2, 17, 65, d, d, layout});
      run_and_check(p, {});
    }
}

TYPED_TEST(Attention, KeyAndValueWidthsMayDiffer) {
  for (Layout layout : kLayouts) {
    Problem<TypeParam> wide_v({2, 2, 1, 17, 63, 16, 80, layout});
    run_and_check(wide_v, {});
    Problem<TypeParam> narrow_v({2, 2, 1, 17, 63, 128, 1, layout});
    run_and_check(narrow_v, {});
  }
}

TYPED_TEST(Attention, QueryAndKeyLengthsMayDiffer) {
  for (Layout layout : kLayouts) {
    Problem<TypeParam> fewer_queries({2, 2, 2, 7, 65, 16, 16, layout});
    run_and_check(fewer_queries, {});
    Problem<TypeParam> more_queries({2, 2, 2, 65, 7, 16, 16, layout});
    run_and_check(more_queries, {});
  }
}

// Hq / Hkv = 1, 2, 4, 8: query head h reads key/value head h / (Hq / Hkv); Hkv = 1 is MQA.
TYPED_TEST(Attention, GroupedQueryHeadsShareTheirKeyValueHead) {
  for (Layout layout : kLayouts)
    for (index_t kv_heads : {8, 4, 2, 1}) {
      Problem<TypeParam> p({2, 8, kv_heads, 17, 17, 16, 16, layout});
      run_and_check(p, {});
    }
}

// Without lse the output is the same computation: bit-identical.
TYPED_TEST(Attention, LseIsOptionalAndDoesNotChangeTheOutput) {
  using T = TypeParam;
  Problem<T> p({2, 4, 2, 17, 17, 16, 16, Layout::bshd});
  p.run({});
  const std::vector<T> with_lse = p.o.storage;
  if (with_probs())
    attend::attention_with_probs<T>(p.q.in(), p.k.in(), p.v.in(), p.o.view, p.probs.view);
  else
    attend::attention<T>(p.q.in(), p.k.in(), p.v.in(), p.o.view);
  EXPECT_EQ(0, std::memcmp(with_lse.data(), p.o.storage.data(), with_lse.size() * sizeof(T)));
}

// ---------------------------------------------------------------------------------------
// Options, one at a time

TYPED_TEST(Attention, CausalMatchesOracleInBothAlignments) {
  for (Layout layout : kLayouts)
    for (Alignment alignment : kAlignments)
      for (auto [sq, sk] : {Lengths{17, 17}, Lengths{7, 63}, Lengths{63, 7}}) {
        SCOPED_TRACE(name(alignment));
        AttentionOptions opts;
        opts.causal = true;
        opts.alignment = alignment;
        Problem<TypeParam> p({2, 4, 2, sq, sk, 16, 16, layout});
        run_and_check(p, opts);
      }
}

// Bottom-right with Sq > Sk: row i sees keys j <= i - (Sq - Sk), so the first Sq - Sk rows
// see nothing.
TYPED_TEST(Attention, CausalBottomRightMasksTheFirstRowsWhenQueriesOutnumberKeys) {
  using T = TypeParam;
  AttentionOptions opts;
  opts.causal = true;
  Problem<T> p({2, 2, 1, 17, 7, 16, 16, Layout::bhsd});
  run_and_check(p, opts);
  for (index_t b = 0; b < 2; ++b)
    for (index_t h = 0; h < 2; ++h) {
      for (index_t i = 0; i < 10; ++i)
        expect_empty_row(p, b, h, i, -std::numeric_limits<T>::infinity());
      EXPECT_TRUE(std::isfinite(p.row_lse(b, h, 10)));
    }
}

// Decode: one new query against a cache of 129 keys sees every key under bottom-right
// causality (the same arithmetic as no mask: bit-identical), and only key 0 under top-left
// (probability exactly 1 on it, so the output is v's row 0 exactly).
TYPED_TEST(Attention, SingleQueryDecodeSeesEveryKeyUnderBottomRightCausal) {
  using T = TypeParam;
  for (Layout layout : kLayouts) {
    Problem<T> p({2, 4, 2, 1, 129, 64, 64, layout});
    run_and_check(p, {});
    const std::vector<T> unmasked = p.o.storage;
    AttentionOptions opts;
    opts.causal = true;
    run_and_check(p, opts);
    EXPECT_EQ(0, std::memcmp(unmasked.data(), p.o.storage.data(), unmasked.size() * sizeof(T)));

    opts.alignment = Alignment::top_left;
    run_and_check(p, opts);
    for (index_t b = 0; b < 2; ++b)
      for (index_t h = 0; h < 4; ++h)
        for (index_t d = 0; d < 64; ++d) ASSERT_EQ(p.out(b, h, 0, d), p.v.view.row(b, h / 2, 0)[d]);
  }
}

// key_lengths = {Sk, 5, 0}: the rows past each length hold NaN, which must never be read.
TYPED_TEST(Attention, KeysPastKeyLengthsAreNeverRead) {
  using T = TypeParam;
  const std::vector<std::int32_t> lengths{17, 5, 0};
  for (Layout layout : kLayouts)
    for (bool causal : {false, true})
      for (Alignment alignment : kAlignments) {
        Problem<T> p({3, 2, 2, 7, 17, 16, 16, layout});
        for (index_t b = 0; b < 3; ++b)
          for (index_t h = 0; h < 2; ++h)
            for (index_t j = lengths[b]; j < 17; ++j) {
              fill_row(p.k, b, h, j, std::numeric_limits<T>::quiet_NaN());
              fill_row(p.v, b, h, j, std::numeric_limits<T>::quiet_NaN());
            }
        AttentionOptions opts;
        opts.key_lengths = lengths;
        opts.causal = causal;
        opts.alignment = alignment;
        SCOPED_TRACE(std::string(causal ? "causal " : "") + name(alignment));
        run_and_check(p, opts);
        for (index_t b = 0; b < 2; ++b)  // batch 2 has no keys: checked below
          for (index_t h = 0; h < 2; ++h)
            for (index_t i = 0; i < 7; ++i) EXPECT_FALSE(nan_row(p, b, h, i));
        for (index_t h = 0; h < 2; ++h)
          for (index_t i = 0; i < 7; ++i)
            expect_empty_row(p, 2, h, i, -std::numeric_limits<T>::infinity());
      }
}

TYPED_TEST(Attention, SlidingWindowMatchesOracleOnEitherOrBothSides) {
  Window left_only, right_only, both, diagonal_only;
  left_only.left = 4;
  right_only.right = 3;
  both.left = 5, both.right = 2;
  diagonal_only.left = 0, diagonal_only.right = 0;
  for (Layout layout : kLayouts)
    for (Alignment alignment : kAlignments)
      for (const Window& w : {left_only, right_only, both, diagonal_only})
        for (auto [sq, sk] : {Lengths{17, 17}, Lengths{7, 17}, Lengths{17, 7}}) {
          SCOPED_TRACE(std::string(name(alignment)) + " window " + std::to_string(w.left) + ", " +
                       std::to_string(w.right));
          AttentionOptions opts;
          opts.window = w;
          opts.alignment = alignment;
          Problem<TypeParam> p({2, 2, 1, sq, sk, 16, 16, layout});
          run_and_check(p, opts);
        }
}

// Causal plus a left window: the local attention of Mistral-style models.
TYPED_TEST(Attention, SlidingWindowCombinesWithCausal) {
  for (Layout layout : kLayouts)
    for (Alignment alignment : kAlignments) {
      AttentionOptions opts;
      opts.causal = true;
      opts.alignment = alignment;
      opts.window.left = 6;
      opts.window.right = 2;  // redundant with causal: the causal bound is the tighter one
      Problem<TypeParam> p({2, 2, 2, 33, 65, 16, 16, layout});
      run_and_check(p, opts);
    }
}

// A bias [B or 1, H or 1, Sq, Sk] with some -inf entries, broadcast by extent 1 (the
// stride of a broadcast dimension is 0 in one case and arbitrary in the other).
TYPED_TEST(Attention, BiasBroadcastsOverBatchAndHeads) {
  const index_t B = 2, H = 4, Sq = 7, Sk = 17;
  for (Layout layout : kLayouts)
    for (index_t bb : {index_t(1), B})
      for (index_t bh : {index_t(1), H}) {
        SCOPED_TRACE("bias [" + std::to_string(bb) + ", " + std::to_string(bh) + "]");
        TensorBuffer<float> bias(bb, bh, Sq, Sk, layout);
        bias.fill_random(11, -2, 2);
        bias.view.row(0, 0, 3)[5] = -std::numeric_limits<float>::infinity();
        bias.view.row(bb - 1, bh - 1, 6)[0] = -std::numeric_limits<float>::infinity();
        TensorView<const float> view = bias.in();
        if (bb == 1) view.batch_stride = 0;
        AttentionOptions opts;
        opts.bias = view;
        Problem<TypeParam> p({B, H, 2, Sq, Sk, 16, 16, layout});
        run_and_check(p, opts);
      }
}

// A row whose every bias entry is -inf has no mass: zeros and an lse of -inf, never NaN.
TYPED_TEST(Attention, RowOfMinusInfinityScoresYieldsZeros) {
  using T = TypeParam;
  TensorBuffer<float> bias(1, 1, 7, 17);
  bias.fill_random(3);
  for (index_t j = 0; j < 17; ++j)
    bias.view.row(0, 0, 4)[j] = -std::numeric_limits<float>::infinity();
  AttentionOptions opts;
  opts.bias = bias.in();
  Problem<T> p({2, 2, 1, 7, 17, 16, 16, Layout::bhsd});
  run_and_check(p, opts);
  for (index_t b = 0; b < 2; ++b)
    for (index_t h = 0; h < 2; ++h)
      expect_empty_row(p, b, h, 4, -std::numeric_limits<T>::infinity());
}

// An additive -inf mask hides keys as the boolean mask does: a row whose every logit is
// -inf has no mass and is fully masked, zeros whatever the value rows hold (also with a
// sink of -inf, which weighs nothing); the rows that do see the NaN value row are NaN.
// Sq = 13 fills a whole micro-tile of the fused kernels.
TYPED_TEST(Attention, RowOfMinusInfinityScoresIgnoresWhatItsValuesHold) {
  using T = TypeParam;
  const float inf = std::numeric_limits<float>::infinity();
  TensorBuffer<float> bias(1, 1, 13, 17);
  bias.fill_random(3);
  for (index_t j = 0; j < 17; ++j) bias.view.row(0, 0, 4)[j] = -inf;
  const std::vector<float> sinks{-inf, -inf};
  for (bool with_sinks : {false, true}) {
    AttentionOptions opts;
    opts.bias = bias.in();
    if (with_sinks) opts.sinks = sinks;
    Problem<T> p({1, 2, 1, 13, 17, 16, 16, Layout::bhsd});
    fill_row(p.v, 0, 0, 3, std::numeric_limits<T>::quiet_NaN());
    run_and_check(p, opts);
    for (index_t h = 0; h < 2; ++h)
      for (index_t i = 0; i < 13; ++i) {
        if (i == 4)
          expect_empty_row(p, 0, h, i, -std::numeric_limits<T>::infinity());
        else
          EXPECT_TRUE(nan_row(p, 0, h, i)) << "row " << i;
      }
  }
}

TYPED_TEST(Attention, BooleanMaskBroadcastsOverBatchAndHeads) {
  const index_t B = 2, H = 4, Sq = 7, Sk = 17;
  for (Layout layout : kLayouts)
    for (index_t mb : {index_t(1), B})
      for (index_t mh : {index_t(1), H}) {
        SCOPED_TRACE("mask [" + std::to_string(mb) + ", " + std::to_string(mh) + "]");
        MaskBuffer mask(mb, mh, Sq, Sk, 5, 0.6);
        TensorView<const bool> view = mask.view;
        if (mh == 1) view.head_stride = 0;
        AttentionOptions opts;
        opts.mask = view;
        Problem<TypeParam> p({B, H, 1, Sq, Sk, 16, 16, layout});
        run_and_check(p, opts);
      }
}

TYPED_TEST(Attention, MaskHidingAWholeRowYieldsZerosAndMinusInfinityLse) {
  using T = TypeParam;
  MaskBuffer mask(2, 1, 7, 17, 9, 0.7);
  for (index_t j = 0; j < 17; ++j) mask.view.row(1, 0, 2)[j] = false;
  AttentionOptions opts;
  opts.mask = mask.view;
  Problem<T> p({2, 2, 2, 7, 17, 16, 16, Layout::bshd});
  run_and_check(p, opts);
  for (index_t h = 0; h < 2; ++h) expect_empty_row(p, 1, h, 2, -std::numeric_limits<T>::infinity());
}

// ALiBi measures distance from the aligned diagonal, so the alignment matters even without
// a causal mask.
TYPED_TEST(Attention, AlibiSlopesMatchOracle) {
  const std::vector<float> slopes = alibi_slopes(4);
  for (Layout layout : kLayouts)
    for (Alignment alignment : kAlignments)
      for (bool causal : {false, true}) {
        SCOPED_TRACE(std::string(causal ? "causal " : "") + name(alignment));
        AttentionOptions opts;
        opts.alibi_slopes = slopes;
        opts.alignment = alignment;
        opts.causal = causal;
        Problem<TypeParam> p({2, 4, 2, 17, 33, 16, 16, layout});
        run_and_check(p, opts);
      }
}

// A softcap of 2 with a scale of 8 bends most logits: the cap is doing real work.
TYPED_TEST(Attention, SoftcapMatchesOracle) {
  for (Layout layout : kLayouts) {
    AttentionOptions opts;
    opts.softcap = 2.0;
    opts.scale = 8.0;
    Problem<TypeParam> p({2, 2, 1, 17, 33, 16, 16, layout});
    run_and_check(p, opts);
  }
}

TYPED_TEST(Attention, SinksJoinTheDenominator) {
  const std::vector<float> sinks{-1.5f, 0.0f, 0.75f, 6.0f};  // the last one takes most mass
  for (Layout layout : kLayouts)
    for (bool causal : {false, true}) {
      AttentionOptions opts;
      opts.sinks = sinks;
      opts.causal = causal;
      Problem<TypeParam> p({2, 4, 1, 17, 17, 16, 16, layout});
      run_and_check(p, opts);
    }
}

// With sinks the denominator is exp(sink) alone: output zeros, lse exactly the sink.
TYPED_TEST(Attention, FullyMaskedRowWithSinkYieldsZerosAndTheSinkAsLse) {
  using T = TypeParam;
  const std::vector<float> sinks{0.5f, -2.25f};
  AttentionOptions opts;
  opts.sinks = sinks;
  opts.causal = true;  // Sq > Sk, bottom-right: rows 0..9 see no key
  Problem<T> p({2, 2, 1, 17, 7, 16, 16, Layout::bhsd});
  run_and_check(p, opts);
  for (index_t b = 0; b < 2; ++b)
    for (index_t h = 0; h < 2; ++h)
      for (index_t i = 0; i < 10; ++i) expect_empty_row(p, b, h, i, T(sinks[h]));
}

// A NaN sink joins every row's denominator z, seen keys or not, and o = (sum p v) / z: every
// row of its head is NaN, output and LSE, the rows that see no key included. The other
// head is untouched.
TYPED_TEST(Attention, NaNSinkMakesEveryRowOfItsHeadNaN) {
  using T = TypeParam;
  const std::vector<float> sinks{std::numeric_limits<float>::quiet_NaN(), 0.5f};
  AttentionOptions opts;
  opts.sinks = sinks;
  opts.causal = true;  // Sq > Sk, bottom-right: rows 0..9 see no key
  Problem<T> p({2, 2, 1, 17, 7, 16, 16, Layout::bhsd});
  run_and_check(p, opts);
  for (index_t b = 0; b < 2; ++b)
    for (index_t i = 0; i < 17; ++i) {
      EXPECT_TRUE(std::isnan(p.row_lse(b, 0, i))) << "row " << i;
      EXPECT_TRUE(nan_row(p, b, 0, i)) << "row " << i;
      EXPECT_FALSE(std::isnan(p.row_lse(b, 1, i))) << "row " << i;
      EXPECT_FALSE(nan_row(p, b, 1, i)) << "row " << i;
    }
}

TYPED_TEST(Attention, ScaleOverridesTheDefault) {
  for (Layout layout : kLayouts)
    for (double scale : {0.3, -0.5, 2.0}) {
      SCOPED_TRACE("scale " + std::to_string(scale));
      AttentionOptions opts;
      opts.scale = scale;
      Problem<TypeParam> p({2, 2, 2, 17, 17, 64, 64, layout});
      run_and_check(p, opts);
    }
}

// ---------------------------------------------------------------------------------------
// Options, all at once

TYPED_TEST(Attention, EveryOptionAtOnceOnGroupedQueryHeads) {
  using T = TypeParam;
  const index_t B = 2, Hq = 8, Hkv = 2, Sq = 17, Sk = 33;
  const std::vector<std::int32_t> lengths{33, 21};
  const std::vector<float> slopes = alibi_slopes(Hq);
  const std::vector<float> sinks = testing_support::random_vector<float>(Hq, 21, -1, 1);
  for (Layout layout : kLayouts)
    for (Alignment alignment : kAlignments) {
      SCOPED_TRACE(name(alignment));
      TensorBuffer<float> bias(1, Hq, Sq, Sk, layout);  // broadcast over batch
      bias.fill_random(17, -1, 1);
      MaskBuffer mask(B, 1, Sq, Sk, 19, 0.85);  // broadcast over heads
      AttentionOptions opts;
      opts.causal = true;
      opts.alignment = alignment;
      opts.window.left = 9;
      opts.window.right = 3;
      opts.key_lengths = lengths;
      opts.bias = bias.in();
      opts.mask = mask.view;
      opts.alibi_slopes = slopes;
      opts.softcap = 6.0;
      opts.sinks = sinks;
      opts.scale = 0.5;
      Problem<T> p({B, Hq, Hkv, Sq, Sk, 64, 80, layout});
      for (index_t h = 0; h < Hkv; ++h)
        for (index_t j = lengths[1]; j < Sk; ++j) {
          fill_row(p.k, 1, h, j, std::numeric_limits<T>::quiet_NaN());
          fill_row(p.v, 1, h, j, std::numeric_limits<T>::quiet_NaN());
        }
      run_and_check(p, opts);
    }
}

// ---------------------------------------------------------------------------------------
// Edge cases

// A scale of 1e30 makes logits of ~1e30: finite, but so far apart that the softmax is
// one-hot. Where the two largest scores differ by more than their rounding error bound
// ((Dk + 2) u sum |q k|, see tolerance.hpp) the arg max is the same in T and exactly, its
// probability is exactly 1 and the output is exactly its value row.
TYPED_TEST(Attention, HugeScaleGivesOneHotRowsAndNoNaN) {
  using T = TypeParam;
  const index_t sq = 17, sk = 33, d = 16;
  AttentionOptions opts;
  opts.scale = 1e30;
  Problem<T> p({1, 2, 1, sq, sk, d, d, Layout::bshd});
  run_and_check(p, opts);
  const ref::Tensor q = ref::load<T>(p.q.in()), k = ref::load<T>(p.k.in());
  int one_hot_rows = 0;
  for (index_t h = 0; h < 2; ++h)
    for (index_t i = 0; i < sq; ++i) {
      EXPECT_FALSE(nan_row(p, 0, h, i));
      EXPECT_FALSE(std::isnan(p.row_lse(0, h, i)));
      // The two largest dot products, exactly, and the largest sum |q k| among them all.
      ref::real best = -std::numeric_limits<ref::real>::infinity(), second = best, magnitude = 0;
      index_t arg = 0;
      for (index_t j = 0; j < sk; ++j) {
        ref::real dot = 0, mag = 0;
        for (index_t c = 0; c < d; ++c) dot += q(0, h, i, c) * k(0, 0, j, c);
        for (index_t c = 0; c < d; ++c) mag += std::fabs(q(0, h, i, c) * k(0, 0, j, c));
        magnitude = std::max(magnitude, mag);
        if (dot > best) {
          second = best, best = dot, arg = j;
        } else {
          second = std::max(second, dot);
        }
      }
      if (best - second <= 2 * ref::real(d + 2) * ref::unit_roundoff<T>() * magnitude) continue;
      ++one_hot_rows;
      for (index_t c = 0; c < d; ++c) ASSERT_EQ(p.out(0, h, i, c), p.v.view.row(0, 0, arg)[c]);
    }
  EXPECT_GT(one_hot_rows, 30);  // nearly all 34 rows of random data have a clear maximum
}

// The largest scale accepted (half of float's range) overflows the float logits of
// |q . k| > 2 to +-inf. Keys at +inf share the mass, keys at -inf get none; nothing becomes
// NaN and each output stays in the convex hull of the value rows.
TYPED_TEST(Attention, ScaleOverflowingLogitsToInfinityGivesNoNaN) {
  using T = TypeParam;
  AttentionOptions opts;
  opts.scale = double(std::numeric_limits<float>::max()) / 2;
  opts.causal = true;
  Problem<T> p({1, 2, 1, 17, 17, 16, 16, Layout::bhsd});
  p.run(opts);
  for (index_t h = 0; h < 2; ++h)
    for (index_t i = 0; i < 17; ++i) {
      EXPECT_FALSE(nan_row(p, 0, h, i));
      const T lse = p.row_lse(0, h, i);
      EXPECT_FALSE(std::isnan(lse));
      if (lse == -std::numeric_limits<T>::infinity()) continue;  // every logit was -inf
      for (index_t d = 0; d < 16; ++d) {
        T lo = std::numeric_limits<T>::infinity(), hi = -lo;
        for (index_t j = 0; j <= i; ++j) {
          lo = std::min(lo, p.v.view.row(0, 0, j)[d]);
          hi = std::max(hi, p.v.view.row(0, 0, j)[d]);
        }
        EXPECT_TRUE(lo <= p.out(0, h, i, d) && p.out(0, h, i, d) <= hi);
      }
    }
  EXPECT_TRUE(p.o.canaries_intact());
}

// Logits around +-1e4 from a large scale or from large inputs: the max shift keeps exp in
// range, and the result is as accurate as logits of that size allow.
TYPED_TEST(Attention, LogitsAroundTenThousandStillMatch) {
  using T = TypeParam;
  for (Layout layout : kLayouts) {
    AttentionOptions large_scale;
    large_scale.scale = 4000.0;  // |q.k| up to ~3 with 16 entries in [-1, 1)
    Problem<T> p({2, 2, 1, 17, 33, 16, 16, layout});
    run_and_check(p, large_scale);

    Problem<T> large_inputs({2, 2, 1, 17, 33, 16, 16, layout});
    large_inputs.q.fill_random(3, -100, 100);
    large_inputs.k.fill_random(4, -100, 100);
    const ref::Attention r = run_and_check(large_inputs, {});
    EXPECT_GT(std::fabs(r.lse(0, 0, 0, 0)), 1000) << "the logits are not as large as intended";
  }
}

// A NaN in query row i of one head makes exactly output row i of that head NaN.
TYPED_TEST(Attention, NaNInOneQueryRowPoisonsExactlyThatRow) {
  using T = TypeParam;
  for (Layout layout : kLayouts) {
    Problem<T> p({2, 4, 2, 17, 17, 16, 16, layout});
    p.q.view.row(1, 2, 5)[3] = std::numeric_limits<T>::quiet_NaN();
    run_and_check(p, {});
    for (index_t b = 0; b < 2; ++b)
      for (index_t h = 0; h < 4; ++h)
        for (index_t i = 0; i < 17; ++i) {
          const bool poisoned = b == 1 && h == 2 && i == 5;
          EXPECT_EQ(nan_row(p, b, h, i), poisoned) << "[" << b << ", " << h << ", " << i << "]";
          EXPECT_EQ(std::isnan(p.row_lse(b, h, i)), poisoned);
        }
  }
}

// A NaN in key row j of key head g reaches the rows that see key j, in the query heads that
// read g: under causal masking, rows i >= j only.
TYPED_TEST(Attention, NaNInOneKeyRowPoisonsExactlyTheRowsThatSeeIt) {
  using T = TypeParam;
  const index_t j = 6;
  for (Layout layout : kLayouts)
    for (bool causal : {false, true}) {
      SCOPED_TRACE(causal ? "causal" : "unmasked");
      Problem<T> p({2, 4, 2, 17, 17, 16, 16, layout});
      p.k.view.row(0, 1, j)[0] = std::numeric_limits<T>::quiet_NaN();
      AttentionOptions opts;
      opts.causal = causal;
      run_and_check(p, opts);
      for (index_t b = 0; b < 2; ++b)
        for (index_t h = 0; h < 4; ++h)
          for (index_t i = 0; i < 17; ++i) {
            const bool sees = b == 0 && h / 2 == 1 && (!causal || i >= j);
            EXPECT_EQ(nan_row(p, b, h, i), sees) << "[" << b << ", " << h << ", " << i << "]";
          }
    }
}

// The same for values: a NaN in value row j of value head g reaches the rows that see key
// j. Under causal masking the rows before j give key j a probability of exactly 0, and a
// masked key takes no part in the result (ref::attention; options.hpp: "NaN ... propagates
// to every output row whose visible keys it touches").
TYPED_TEST(Attention, NaNInOneValueRowPoisonsExactlyTheRowsThatSeeIt) {
  using T = TypeParam;
  const index_t j = 6;
  for (Layout layout : kLayouts)
    for (bool causal : {false, true}) {
      SCOPED_TRACE(causal ? "causal" : "unmasked");
      Problem<T> p({2, 4, 2, 17, 17, 16, 16, layout});
      p.v.view.row(1, 0, j)[2] = std::numeric_limits<T>::quiet_NaN();
      AttentionOptions opts;
      opts.causal = causal;
      run_and_check(p, opts);
      for (index_t b = 0; b < 2; ++b)
        for (index_t h = 0; h < 4; ++h)
          for (index_t i = 0; i < 17; ++i) {
            const bool sees = b == 1 && h / 2 == 0 && (!causal || i >= j);
            index_t nans = 0;
            for (index_t d = 0; d < 16; ++d) nans += std::isnan(p.out(b, h, i, d)) ? 1 : 0;
            // Only column 2 of v is NaN, so only column 2 of a row that sees it.
            EXPECT_EQ(nans, sees ? 1 : 0) << "[" << b << ", " << h << ", " << i << "]";
          }
    }
}

// A fully masked row is exact zeros "never NaN" (options.hpp), whatever the value rows it
// does not see hold: here Sq > Sk under bottom-right causality, rows 0..9 see no key, and
// value row 3 (inside the key length, seen from row 13 on) is NaN.
TYPED_TEST(Attention, FullyMaskedRowIgnoresWhatTheUnseenValuesHold) {
  using T = TypeParam;
  AttentionOptions opts;
  opts.causal = true;
  Problem<T> p({1, 2, 1, 17, 7, 16, 16, Layout::bhsd});
  fill_row(p.v, 0, 0, 3, std::numeric_limits<T>::quiet_NaN());
  run_and_check(p, opts);
  for (index_t h = 0; h < 2; ++h) {
    for (index_t i = 0; i < 10; ++i)
      expect_empty_row(p, 0, h, i, -std::numeric_limits<T>::infinity());
    for (index_t i = 10; i < 17; ++i) EXPECT_EQ(nan_row(p, 0, h, i), i >= 13) << "row " << i;
  }
}

// Under a causal mask a row never sees a value row past its diagonal, whatever it holds:
// with Sq = Sk = 161 the non-finite rows (NaN at key 40 of kv head 0, +inf at key 150 of kv
// head 1) lie in a tile, panel and micro-tile after the first, and rows on both sides of
// them share diagonal micro-tiles, where the fused kernels multiply hidden keys' values by
// zero probabilities only if those values are finite.
TYPED_TEST(Attention, CausalRowsIgnoreNonFiniteValuesPastTheirDiagonal) {
  using T = TypeParam;
  AttentionOptions opts;
  opts.causal = true;
  Problem<T> p({1, 2, 2, 161, 161, 16, 16, Layout::bhsd});
  fill_row(p.v, 0, 0, 40, std::numeric_limits<T>::quiet_NaN());
  fill_row(p.v, 0, 1, 150, std::numeric_limits<T>::infinity());
  run_and_check(p, opts);
  for (index_t i = 0; i < 161; ++i) {
    EXPECT_EQ(nan_row(p, 0, 0, i), i >= 40) << "row " << i;
    bool finite = true;
    for (index_t d = 0; d < 16; ++d) finite = finite && std::isfinite(p.out(0, 1, i, d));
    EXPECT_EQ(finite, i < 150) << "row " << i;
  }
}

// No keys at all (Sk = 0), or a key length of 0: every row is fully masked.
TYPED_TEST(Attention, NoKeysMasksEveryRow) {
  using T = TypeParam;
  const T minus_inf = -std::numeric_limits<T>::infinity();
  for (Layout layout : kLayouts) {
    Problem<T> empty_cache({2, 2, 1, 7, 0, 16, 16, layout});
    run_and_check(empty_cache, {});
    for (index_t b = 0; b < 2; ++b)
      for (index_t h = 0; h < 2; ++h)
        for (index_t i = 0; i < 7; ++i) expect_empty_row(empty_cache, b, h, i, minus_inf);

    const std::vector<std::int32_t> lengths{0, 0};
    AttentionOptions opts;
    opts.key_lengths = lengths;
    Problem<T> zero_lengths({2, 2, 1, 7, 17, 16, 16, layout});
    run_and_check(zero_lengths, opts);
    for (index_t b = 0; b < 2; ++b)
      for (index_t h = 0; h < 2; ++h)
        for (index_t i = 0; i < 7; ++i) expect_empty_row(zero_lengths, b, h, i, minus_inf);
  }
}

// Zero queries, heads or batches are valid calls that write nothing. The dense views of
// such shapes have zero strides (TensorView::bhsd with seq 0 has head_stride 0), which is
// fine: a view without elements cannot write an element twice.
TYPED_TEST(Attention, ZeroSizeExtentsWriteNothing) {
  using T = TypeParam;
  for (Layout layout : kLayouts)
    for (const Shape& s :
         {Shape{2, 2, 1, 0, 17, 16, 16, layout}, Shape{0, 2, 1, 7, 17, 16, 16, layout},
          Shape{2, 0, 0, 7, 17, 16, 16, layout}}) {
      SCOPED_TRACE(describe(s));
      Problem<T> p(s);
      EXPECT_NO_THROW(p.run({}));
      EXPECT_TRUE(p.o.canaries_intact());
      EXPECT_TRUE(p.lse.canaries_intact());
    }
}

// Values of width 0: an empty output, but every row still has its log-sum-exp.
TYPED_TEST(Attention, ZeroWidthValuesStillGiveLse) {
  Problem<TypeParam> p({2, 2, 1, 7, 17, 16, 0, Layout::bshd});
  run_and_check(p, {});
}

// Keys of width 0: every logit is 0, so each row averages the values it sees. The shapes
// fill whole micro-tiles (prefill) and whole grouped-query tiles (decode), where the fused
// kernels have no packed keys to read.
TYPED_TEST(Attention, ZeroWidthKeysAverageTheVisibleValues) {
  AttentionOptions causal;
  causal.causal = true;
  const std::vector<float> slopes = alibi_slopes(4);
  AttentionOptions alibi = causal;
  alibi.alibi_slopes = slopes;
  for (const Shape& s :
       {Shape{2, 4, 2, 29, 37, 0, 16, Layout::bhsd}, Shape{1, 32, 2, 1, 37, 0, 16, Layout::bshd},
        Shape{1, 32, 2, 3, 65, 0, 7, Layout::bhsd}}) {
    Problem<TypeParam> p(s);
    run_and_check(p, {});
    run_and_check(p, causal);
    if (s.q_heads == 4) run_and_check(p, alibi);
  }
}

// ---------------------------------------------------------------------------------------
// Eigen as a second oracle

using LongMatrix = Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>;

// One head [seq, dim] of a tensor, through an Eigen map with the tensor's row stride.
template <class T>
LongMatrix eigen_head(TensorView<const T> t, index_t b, index_t h) {
  using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const attend::MatrixView<const T> m = t.head(b, h);
  return Eigen::Map<const RowMajor, 0, Eigen::OuterStride<>>(m.data, m.rows, m.cols,
                                                             Eigen::OuterStride<>(m.stride))
      .template cast<long double>();
}

// Each head recomputed as softmax(scale Q K^T) V with Eigen's products and a max-shifted
// row softmax, in long double. The tolerance is tolerance.hpp's bound, its ingredients
// taken from Eigen: o_abs = P |V|, logit slack (Dk + 2) scale (|Q| |K|^T) + 4 |S|.
TYPED_TEST(Attention, MatchesAnEigenOracleHeadByHead) {
  using T = TypeParam;
  const index_t B = 2, Hq = 4, Hkv = 2, Sq = 65, Sk = 63, Dk = 80, Dv = 16;
  Problem<T> p({B, Hq, Hkv, Sq, Sk, Dk, Dv, Layout::bshd});
  p.run({});
  const long double scale = 1 / std::sqrt((long double)Dk), u = ref::unit_roundoff<T>();
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < Hq; ++h) {
      const LongMatrix q = eigen_head(p.q.in(), b, h), k = eigen_head(p.k.in(), b, h / 2),
                       v = eigen_head(p.v.in(), b, h / 2);
      const LongMatrix s = scale * q * k.transpose();
      const LongMatrix shifted = s.colwise() - s.rowwise().maxCoeff();
      LongMatrix prob = shifted.array().exp().matrix();
      prob = (prob.array().colwise() / prob.rowwise().sum().array()).matrix();
      const LongMatrix o = prob * v, o_abs = prob * v.cwiseAbs();
      const LongMatrix slack =
          ((Dk + 2) * scale * (q.cwiseAbs() * k.cwiseAbs().transpose()) + 4.0L * s.cwiseAbs())
              .rowwise()
              .maxCoeff();
      ref::Tensor expected(1, 1, Sq, Dv);
      for (index_t i = 0; i < Sq; ++i)
        for (index_t d = 0; d < Dv; ++d) expected(0, 0, i, d) = o(i, d);
      const TensorView<const T> o_head{p.o.view.row(b, h, 0), 1, 1, Sq, Dv, 0, 0,
                                       p.o.view.seq_stride};
      EXPECT_TRUE(ref::all_close<T>(
          o_head, expected,
          [&](index_t, index_t, index_t i, index_t d) {
            const long double bound = o_abs(i, d) * (2 * slack(i, 0) + 2 * Sk + 8) * u;
            return 2 * bound + 2 * (long double)std::numeric_limits<T>::min();
          }))
          << "head [" << b << ", " << h << "]";
    }
}

// ---------------------------------------------------------------------------------------
// Errors: std::invalid_argument naming the argument, and nothing written anywhere. (A view
// with null data is not an error for lse, bias or mask: that is how they are left out.)

template <class T>
struct Call {
  TensorView<const T> q, k, v;
  TensorView<T> o, lse;
  AttentionOptions opts;
  TensorView<T> probs;
};

// Breaks one argument of a valid call on `p` and expects the call to throw naming `arg`
// ("attend::attention: <arg>: ...", or attention_with_probs) without changing any of p's
// buffers.
template <class T>
void expect_rejected(Problem<T>& p, const std::string& arg,
                     const std::function<void(Call<T>&)>& break_it) {
  SCOPED_TRACE("argument " + arg);
  Call<T> c{p.q.in(), p.k.in(), p.v.in(), p.o.view, p.lse.view, {}, p.probs.view};
  break_it(c);
  const std::vector<T> before[] = {p.q.storage, p.k.storage,   p.v.storage,
                                   p.o.storage, p.lse.storage, p.probs.storage};
  const std::string function = with_probs() ? "attention_with_probs" : "attention";
  try {
    if (with_probs())
      attend::attention_with_probs<T>(c.q, c.k, c.v, c.o, c.probs, c.opts, c.lse);
    else
      attend::attention<T>(c.q, c.k, c.v, c.o, c.opts, c.lse);
    ADD_FAILURE() << "accepted a bad " << arg;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("attend::" + function + ": " + arg + ": "),
              std::string::npos)
        << e.what();
  }
  const std::vector<T>* after[] = {&p.q.storage, &p.k.storage,   &p.v.storage,
                                   &p.o.storage, &p.lse.storage, &p.probs.storage};
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(0, std::memcmp(before[i].data(), after[i]->data(), before[i].size() * sizeof(T)))
        << "buffer " << i << " (q, k, v, o, lse, probs) changed";
}

TYPED_TEST(Attention, RejectsBadTensorsWithoutWriting) {
  using T = TypeParam;
  using C = Call<T>;
  Problem<T> p({2, 4, 2, 5, 6, 8, 12, Layout::bshd});
  TensorBuffer<T> k3(2, 3, 6, 8), v3(2, 3, 6, 12);  // 3 key heads do not divide 4

  expect_rejected<T>(p, "q", [](C& c) { c.q.seq = -1; });
  expect_rejected<T>(p, "q", [](C& c) { c.q.data = nullptr; });
  expect_rejected<T>(p, "q", [](C& c) { c.q.head_stride = -8; });
  expect_rejected<T>(p, "q", [](C& c) { c.q.seq_stride = 7; });
  expect_rejected<T>(p, "k", [](C& c) { c.k.batch = 1; });
  expect_rejected<T>(p, "k", [](C& c) { c.k.dim = 7; });
  expect_rejected<T>(p, "k", [](C& c) { c.k.data = nullptr; });
  expect_rejected<T>(p, "k", [](C& c) { c.k.batch_stride = -1; });
  expect_rejected<T>(p, "k", [](C& c) { c.k.seq_stride = 4; });
  expect_rejected<T>(p, "k.heads", [&](C& c) { c.k = k3.in(), c.v = v3.in(); });
  expect_rejected<T>(p, "k.heads", [](C& c) { c.k.heads = 0, c.v.heads = 0; });
  expect_rejected<T>(p, "v", [](C& c) { c.v.heads = 1; });
  expect_rejected<T>(p, "v", [](C& c) { c.v.seq = 5; });
  expect_rejected<T>(p, "v", [](C& c) { c.v.data = nullptr; });
  expect_rejected<T>(p, "v", [](C& c) { c.v.seq_stride = -3; });
  expect_rejected<T>(p, "o", [](C& c) { c.o.dim = 8; });
  expect_rejected<T>(p, "o", [](C& c) { c.o.heads = 2; });
  expect_rejected<T>(p, "o", [](C& c) { c.o.seq = 6; });
  expect_rejected<T>(p, "o", [](C& c) { c.o.data = nullptr; });
  expect_rejected<T>(p, "o", [](C& c) { c.o.head_stride = -15; });
  expect_rejected<T>(p, "o", [](C& c) { c.o.seq_stride = 11; });
  // o writing some elements twice: heads on top of each other, or heads 1 element apart.
  expect_rejected<T>(p, "o", [](C& c) { c.o.head_stride = 0; });
  expect_rejected<T>(p, "o", [](C& c) { c.o.head_stride = 1; });
  expect_rejected<T>(p, "lse", [](C& c) { c.lse.dim = 2; });
  expect_rejected<T>(p, "lse", [](C& c) { c.lse.seq = 4; });
  expect_rejected<T>(p, "lse", [](C& c) { c.lse.batch_stride = -1; });
  expect_rejected<T>(p, "lse", [](C& c) { c.lse.head_stride = 0; });
}

// o and lse may share memory with nothing: Hq = Hkv, Sq = Sk and Dk = Dv here, so that o
// can be laid over q, k or v exactly (a missed check would write only inside buffers).
TYPED_TEST(Attention, RejectsAliasedOutputsWithoutWriting) {
  using T = TypeParam;
  using C = Call<T>;
  Problem<T> p({2, 2, 2, 5, 5, 8, 8, Layout::bhsd});
  const auto dense_lse = [](TensorBuffer<T>& over) {
    return TensorView<T>::bhsd(over.storage.data(), 2, 2, 5, 1);
  };
  expect_rejected<T>(p, "o", [&](C& c) { c.o = p.q.view; });
  expect_rejected<T>(p, "o", [&](C& c) { c.o = p.k.view; });
  expect_rejected<T>(p, "o", [&](C& c) { c.o = p.v.view; });
  expect_rejected<T>(p, "lse", [&](C& c) { c.lse = dense_lse(p.q); });
  expect_rejected<T>(p, "lse", [&](C& c) { c.lse = dense_lse(p.k); });
  expect_rejected<T>(p, "lse", [&](C& c) { c.lse = dense_lse(p.v); });
  expect_rejected<T>(p, "lse", [&](C& c) { c.lse = dense_lse(p.o); });
  // Arrays of the options laid over the outputs (only their addresses matter here).
  const float* over_o = reinterpret_cast<const float*>(p.o.storage.data());
  const float* over_lse = reinterpret_cast<const float*>(p.lse.storage.data());
  expect_rejected<T>(p, "o", [&](C& c) { c.opts.sinks = {over_o, 2}; });
  expect_rejected<T>(p, "o", [&](C& c) { c.opts.alibi_slopes = {over_o, 2}; });
  expect_rejected<T>(
      p, "o", [&](C& c) { c.opts.bias = TensorView<const float>::bhsd(over_o, 1, 1, 5, 5); });
  expect_rejected<T>(p, "lse", [&](C& c) { c.opts.sinks = {over_lse, 2}; });
}

// probs must be [B, Hq, Sq, Sk], each element once, and clear of every other array.
TYPED_TEST(Attention, RejectsBadProbsWithoutWriting) {
  if (!with_probs()) GTEST_SKIP() << "runs with ATTEND_TEST_ENTRY=with_probs";
  using T = TypeParam;
  using C = Call<T>;
  Problem<T> p({2, 2, 2, 5, 5, 8, 8, Layout::bhsd});
  expect_rejected<T>(p, "probs", [](C& c) { c.probs.dim = 4; });
  expect_rejected<T>(p, "probs", [](C& c) { c.probs.seq = 6; });
  expect_rejected<T>(p, "probs", [](C& c) { c.probs.heads = 1; });
  expect_rejected<T>(p, "probs", [](C& c) { c.probs.data = nullptr; });
  expect_rejected<T>(p, "probs", [](C& c) { c.probs.head_stride = 0; });
  const auto over = [](TensorBuffer<T>& t) {
    return TensorView<T>::bhsd(t.storage.data(), 2, 2, 5, 5);
  };
  expect_rejected<T>(p, "probs", [&](C& c) { c.probs = over(p.q); });
  expect_rejected<T>(p, "probs", [&](C& c) { c.probs = over(p.k); });
  expect_rejected<T>(p, "probs", [&](C& c) { c.probs = over(p.v); });
  expect_rejected<T>(p, "probs", [&](C& c) { c.probs = over(p.o); });
  expect_rejected<T>(
      p, "probs", [&](C& c) { c.lse = TensorView<T>::bhsd(p.probs.storage.data(), 2, 2, 5, 1); });
  const float* over_probs = reinterpret_cast<const float*>(p.probs.storage.data());
  expect_rejected<T>(p, "probs", [&](C& c) { c.opts.sinks = {over_probs, 2}; });
}

TYPED_TEST(Attention, RejectsBadOptionsWithoutWriting) {
  using T = TypeParam;
  using C = Call<T>;
  const index_t B = 2, Hq = 4, Sq = 5, Sk = 6;
  Problem<T> p({B, Hq, 2, Sq, Sk, 8, 8, Layout::bhsd});
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<std::int32_t> one_length{6}, too_long{6, 7}, negative{-1, 6};
  const std::vector<float> three(3, 0.5f);
  TensorBuffer<float> bias(B, Hq, Sq, Sk), bias3(3, Hq, Sq, Sk), bias2h(B, 2, Sq, Sk);
  MaskBuffer mask(B, Hq, Sq, Sk, 1, 0.5), mask3(3, 1, Sq, Sk, 1, 0.5), mask2h(1, 2, Sq, Sk, 1, 0.5);

  expect_rejected<T>(p, "window.left", [](C& c) { c.opts.window.left = -2; });
  expect_rejected<T>(p, "window.right", [](C& c) { c.opts.window.right = -5; });
  expect_rejected<T>(p, "softcap", [](C& c) { c.opts.softcap = -1.0; });
  expect_rejected<T>(p, "softcap", [&](C& c) { c.opts.softcap = nan; });
  expect_rejected<T>(p, "softcap", [&](C& c) { c.opts.softcap = inf; });
  expect_rejected<T>(p, "scale", [&](C& c) { c.opts.scale = nan; });
  expect_rejected<T>(p, "scale", [&](C& c) { c.opts.scale = -inf; });
  expect_rejected<T>(p, "key_lengths.size", [&](C& c) { c.opts.key_lengths = one_length; });
  expect_rejected<T>(p, "key_lengths", [&](C& c) { c.opts.key_lengths = too_long; });
  expect_rejected<T>(p, "key_lengths", [&](C& c) { c.opts.key_lengths = negative; });
  expect_rejected<T>(p, "bias", [&](C& c) { c.opts.bias = bias.in(), c.opts.bias.seq = Sq + 1; });
  expect_rejected<T>(p, "bias", [&](C& c) { c.opts.bias = bias.in(), c.opts.bias.dim = Sk - 1; });
  expect_rejected<T>(p, "bias", [&](C& c) { c.opts.bias = bias3.in(); });
  expect_rejected<T>(p, "bias", [&](C& c) { c.opts.bias = bias2h.in(); });
  expect_rejected<T>(p, "bias",
                     [&](C& c) { c.opts.bias = bias.in(), c.opts.bias.head_stride = -1; });
  expect_rejected<T>(p, "mask", [&](C& c) { c.opts.mask = mask.view, c.opts.mask.seq = Sq - 1; });
  expect_rejected<T>(p, "mask", [&](C& c) { c.opts.mask = mask.view, c.opts.mask.dim = Sk + 1; });
  expect_rejected<T>(p, "mask", [&](C& c) { c.opts.mask = mask3.view; });
  expect_rejected<T>(p, "mask", [&](C& c) { c.opts.mask = mask2h.view; });
  expect_rejected<T>(p, "alibi_slopes.size", [&](C& c) { c.opts.alibi_slopes = three; });
  expect_rejected<T>(p, "sinks.size", [&](C& c) { c.opts.sinks = three; });
}

// ---------------------------------------------------------------------------------------
// Every path, forced: sequences long enough for the fused kernel's tiles, blocks and tasks
// (several of each, with partial ones at every edge), and thread counts.

// Runs `p` on each path this CPU has, forcing it through the Context, and holds each
// result to the oracle.
template <class T>
void check_every_path(Problem<T>& p, const AttentionOptions& opts,
                      const attend::Executor* executor = nullptr) {
  const ref::Attention r = p.oracle(opts);
  for (attend::Isa isa : attend::supported_isas()) {
    SCOPED_TRACE(std::string("path ") + attend::name(isa) + ", " + describe(p.shape));
    attend::Context ctx;
    ctx.isa = isa;
    ctx.executor = executor;
    std::fill(p.o.storage.begin(), p.o.storage.end(), testing_support::canary<T>());
    p.run(opts, ctx);
    EXPECT_TRUE(ref::output_matches<T>(p.o.view, r));
    EXPECT_TRUE(ref::lse_matches<T>(p.lse.view, r.rows));
    EXPECT_TRUE(p.o.canaries_intact()) << "o written outside its view";
    p.check_probs(r);
  }
}

TYPED_TEST(Attention, EveryPathMatchesOnLongCausalGqa) {
  Problem<TypeParam> p({1, 4, 2, 300, 700, 64, 72, Layout::bshd});
  AttentionOptions opts;
  opts.causal = true;
  check_every_path(p, opts);
}

TYPED_TEST(Attention, EveryPathMatchesOnLongUnmaskedWithOddHeadWidths) {
  Problem<TypeParam> p({2, 2, 1, 130, 517, 17, 80, Layout::bhsd});
  check_every_path(p, {});
}

TYPED_TEST(Attention, EveryPathMatchesOnSlidingWindowWithLengthsAndSinks) {
  Problem<TypeParam> p({2, 2, 2, 513, 513, 80, 16, Layout::bhsd});
  AttentionOptions opts;
  opts.causal = true;
  opts.window.left = 100;
  const std::vector<std::int32_t> lengths{513, 401};
  const std::vector<float> sinks{0.5f, -1.0f};
  opts.key_lengths = lengths;
  opts.sinks = sinks;
  check_every_path(p, opts);
}

TYPED_TEST(Attention, EveryPathMatchesWithEveryModifierOnLongRows) {
  Problem<TypeParam> p({1, 4, 2, 97, 300, 32, 32, Layout::bhsd});
  MaskBuffer mask(1, 1, 97, 300, 11, 0.8);
  std::vector<float> bias(std::size_t(97 * 300));
  std::mt19937 gen(3);
  std::uniform_real_distribution<float> dist(-2, 2);
  for (float& x : bias) x = dist(gen);
  const std::vector<float> slopes = alibi_slopes(4);
  AttentionOptions opts;
  opts.causal = true;
  opts.alignment = Alignment::top_left;
  opts.mask = mask.view;
  opts.bias = TensorView<const float>::bhsd(bias.data(), 1, 1, 97, 300);
  opts.alibi_slopes = slopes;
  opts.softcap = 5.0;
  check_every_path(p, opts);
}

// Value rows holding NaN inside tiles that some rows of a block cannot see: the rows that
// cannot see them stay exact; the rows that can are NaN.
TYPED_TEST(Attention, EveryPathKeepsHiddenNaNValuesOutOfLongCausalRows) {
  using T = TypeParam;
  Problem<T> p({1, 1, 1, 400, 400, 32, 32, Layout::bhsd});
  for (index_t j : {5, 250, 399}) fill_row<T>(p.v, 0, 0, j, std::numeric_limits<T>::quiet_NaN());
  AttentionOptions opts;
  opts.causal = true;
  for (attend::Isa isa : attend::supported_isas()) {
    SCOPED_TRACE(attend::name(isa));
    attend::Context ctx;
    ctx.isa = isa;
    p.run(opts, ctx);
    for (index_t i = 0; i < 400; ++i) EXPECT_EQ(nan_row(p, 0, 0, i), i >= 5) << "row " << i;
  }
}

// On every path: the bits of a serial call, from thread pools of each of `threads`.
template <class T>
void expect_serial_bits(Problem<T>& p, const AttentionOptions& opts,
                        std::initializer_list<int> threads) {
  for (attend::Isa isa : attend::supported_isas()) {
    SCOPED_TRACE(attend::name(isa));
    attend::Context ctx;
    ctx.isa = isa;
    p.run(opts, ctx);
    const std::vector<T> serial = p.o.storage, serial_probs = p.probs.storage;
    for (int n : threads) {
      attend::ThreadPool pool(n);
      ctx.executor = &pool;
      std::fill(p.o.storage.begin(), p.o.storage.end(), testing_support::canary<T>());
      p.run(opts, ctx);
      EXPECT_EQ(std::memcmp(serial.data(), p.o.storage.data(), serial.size() * sizeof(T)), 0)
          << n << " threads";
      EXPECT_EQ(
          std::memcmp(serial_probs.data(), p.probs.storage.data(), serial_probs.size() * sizeof(T)),
          0)
          << n << " threads: probs";
    }
  }
}

// Tasks never depend on the thread count: the same bits for a serial call and for thread
// pools of 1, 2 and 3 threads, on every path. The 6 (batch, kv head) pairs are packed in
// waves of two per thread: 3 waves serially, 4 + 2 pairs with 2 threads, one wave with 3.
TYPED_TEST(Attention, ResultsAreBitIdenticalForAnyThreadCount) {
  Problem<TypeParam> p({3, 4, 2, 250, 250, 64, 64, Layout::bshd});
  AttentionOptions opts;
  opts.causal = true;
  expect_serial_bits(p, opts, {1, 2, 3});
}

// With 16 or more (batch, kv head) pairs per thread, each pair is one task, run longest
// keys first. 5 x 8 = 40 pairs: one task each with 2 threads, waves with 3; the key
// lengths (one empty, one of a single key) reorder the pairs. The oracle agrees on every
// path, and so do the bits of a serial call.
TYPED_TEST(Attention, ManyPairsPerThreadRunAsOneTaskEach) {
  Problem<TypeParam> p({5, 16, 8, 70, 70, 32, 24, Layout::bshd});
  AttentionOptions opts;
  opts.causal = true;
  const std::vector<std::int32_t> lengths{33, 70, 0, 1, 65};
  opts.key_lengths = lengths;
  const attend::ThreadPool two(2);
  check_every_path(p, opts, &two);
  expect_serial_bits(p, opts, {2, 3});
}

// Decode: a few queries per kv head read the keys unpacked. Every path, GQA, a window that
// leaves tiles partly visible, padded lengths, sinks, and NaN in value rows no query sees.
TYPED_TEST(Attention, EveryPathMatchesOnDecodeWithWindowAndHiddenNaNValues) {
  using T = TypeParam;
  for (index_t sq : {1, 2, 3}) {
    Problem<T> p({2, 8, 2, sq, 700, 128, 64, Layout::bshd});
    for (index_t j : {10, 600}) {
      fill_row<T>(p.v, 0, 1, j, std::numeric_limits<T>::quiet_NaN());
      fill_row<T>(p.k, 1, 0, j, std::numeric_limits<T>::infinity());
    }
    AttentionOptions opts;
    opts.causal = true;
    opts.window.left = 300;
    const std::vector<std::int32_t> lengths{700, 650};
    const std::vector<float> sinks(8, 0.25f);
    opts.key_lengths = lengths;
    opts.sinks = sinks;
    check_every_path(p, opts);
  }
}

}  // namespace
