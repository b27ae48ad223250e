// attend/options.hpp: what each ScoreOptions rule does to a row of scores, checked through
// attend::softmax on [B, H, Sq, Sk] scores against the oracle (ref::softmax) and against
// expectations written out by hand on tiny problems.
#include "attend/options.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "attend/softmax.hpp"
#include "support/buffers.hpp"
#include "support/checks.hpp"
#include "support/reference.hpp"
#include "support/tolerance.hpp"

namespace {

using attend::Alignment;
using attend::index_t;
using attend::ScoreOptions;
using attend::TensorView;
using attend::Window;
using testing_support::FloatingTypes;
using testing_support::Layout;
using testing_support::rejects;
using testing_support::TensorBuffer;
using testing_support::TypeNames;

constexpr double kInf = std::numeric_limits<double>::infinity();

// A dense boolean tensor [b, h, s, d]. (TensorBuffer<bool> would sit on std::vector<bool>,
// which has no bool* to view.)
struct MaskBuffer {
  std::unique_ptr<bool[]> data;
  TensorView<bool> view;

  template <class F>
  MaskBuffer(index_t b, index_t h, index_t s, index_t d, F allowed)
      : data(new bool[std::size_t(b * h * s * d)]),
        view(TensorView<bool>::bhsd(data.get(), b, h, s, d)) {
    for (index_t i0 = 0; i0 < b; ++i0)
      for (index_t i1 = 0; i1 < h; ++i1)
        for (index_t i2 = 0; i2 < s; ++i2)
          for (index_t i3 = 0; i3 < d; ++i3) view.row(i0, i1, i2)[i3] = allowed(i0, i1, i2, i3);
  }
};

// A float tensor [b, h, s, d] with element f(b, h, s, d): biases.
template <class F>
void fill(TensorBuffer<float>& t, F f) {
  const auto& v = t.view;
  for (index_t b = 0; b < v.batch; ++b)
    for (index_t h = 0; h < v.heads; ++h)
      for (index_t s = 0; s < v.seq; ++s)
        for (index_t d = 0; d < v.dim; ++d) v.row(b, h, s)[d] = f(b, h, s, d);
}

// The probabilities and LSE of softmax(scores, opts), in buffers of `layout`.
template <class T>
struct Softmaxed {
  TensorBuffer<T> p, lse;
  Softmaxed(TensorView<const T> s, const ScoreOptions& o, Layout layout = Layout::bhsd)
      : p(s.batch, s.heads, s.seq, s.dim, layout), lse(s.batch, s.heads, s.seq, 1, layout) {
    attend::softmax<T>(s, p.view, o, lse.view);
  }
  T prob(index_t b, index_t h, index_t i, index_t j) const { return p.view.row(b, h, i)[j]; }
  T logsumexp(index_t b, index_t h, index_t i) const { return *lse.view.row(b, h, i); }
};

// Which keys each row of (b, h) attends to: '1' where p > 0, '0' where p is exactly zero.
template <class T>
std::vector<std::string> pattern(const Softmaxed<T>& r, index_t b, index_t h) {
  const auto& p = r.p.view;
  std::vector<std::string> rows;
  for (index_t i = 0; i < p.seq; ++i) {
    std::string row;
    for (index_t j = 0; j < p.dim; ++j) {
      const T x = p.row(b, h, i)[j];
      row += x > 0 ? '1' : x == 0 ? '0' : '?';
    }
    rows.push_back(row);
  }
  return rows;
}

// With equal scores every visible key of a row gets exactly fl(1 / count): each exp is of
// 0 (exactly 1), the denominator is the exact count.
template <class T>
::testing::AssertionResult uniform_over_visible(const Softmaxed<T>& r) {
  const auto& p = r.p.view;
  for (index_t b = 0; b < p.batch; ++b)
    for (index_t h = 0; h < p.heads; ++h)
      for (index_t i = 0; i < p.seq; ++i) {
        index_t count = 0;
        for (index_t j = 0; j < p.dim; ++j) count += p.row(b, h, i)[j] != 0;
        for (index_t j = 0; j < p.dim; ++j) {
          const T x = p.row(b, h, i)[j];
          if (x != 0 && x != T(1) / T(count))
            return ::testing::AssertionFailure()
                   << "p" << ref::where(b, h, i, j) << " = " << x << ", expected 1/" << count;
        }
      }
  return ::testing::AssertionSuccess();
}

// The library's softmax of `s` under `o` against the oracle: probabilities, LSE, canaries.
template <class T>
::testing::AssertionResult matches_oracle(const TensorBuffer<T>& s, const ScoreOptions& o,
                                          Layout layout = Layout::bhsd) {
  const Softmaxed<T> r(s.in(), o, layout);
  const ref::Rows rows = ref::softmax(ref::load(s.in()), ref::Tensor{}, o);
  if (auto ok = ref::probs_match<T>(r.p.in(), rows); !ok) return ok << " (probabilities)";
  if (auto ok = ref::lse_matches<T>(r.lse.in(), rows); !ok) return ok << " (log-sum-exp)";
  if (!r.p.canaries_intact() || !r.lse.canaries_intact())
    return ::testing::AssertionFailure() << "wrote outside the output views";
  return ::testing::AssertionSuccess();
}

template <class T>
class Options : public ::testing::Test {
 protected:
  // Scores [b, h, sq, sk] all equal to 0, so that a pattern shows the mask alone.
  static std::unique_ptr<TensorBuffer<T>> zeros(index_t b, index_t h, index_t sq, index_t sk) {
    auto s = std::make_unique<TensorBuffer<T>>(b, h, sq, sk);
    s->for_each([](T& x) { x = 0; });
    return s;
  }
  static std::unique_ptr<TensorBuffer<T>> random(index_t b, index_t h, index_t sq, index_t sk,
                                                 std::uint32_t seed, Layout l = Layout::bhsd) {
    auto s = std::make_unique<TensorBuffer<T>>(b, h, sq, sk, l);
    s->fill_random(seed, -4, 4);
    return s;
  }
};
TYPED_TEST_SUITE(Options, FloatingTypes, TypeNames);

using Rows = std::vector<std::string>;

TYPED_TEST(Options, CausalBottomRightLetsTheLastQuerySeeTheLastKey) {
  const auto s = this->zeros(1, 1, 3, 5);
  ScoreOptions o;
  o.causal = true;  // bottom_right by default: d = Sk - Sq = 2
  const Softmaxed<TypeParam> r(s->in(), o);
  EXPECT_EQ(pattern(r, 0, 0), (Rows{"11100", "11110", "11111"}));
  EXPECT_TRUE(uniform_over_visible(r));
  EXPECT_TRUE(matches_oracle(*this->random(1, 1, 3, 5, 1), o));
}

TYPED_TEST(Options, CausalTopLeftLetsQueryISeeKeysUpToI) {
  const auto s = this->zeros(1, 1, 3, 5);
  ScoreOptions o;
  o.causal = true;
  o.alignment = Alignment::top_left;
  const Softmaxed<TypeParam> r(s->in(), o);
  EXPECT_EQ(pattern(r, 0, 0), (Rows{"10000", "11000", "11100"}));
  EXPECT_TRUE(uniform_over_visible(r));
  EXPECT_TRUE(matches_oracle(*this->random(1, 1, 3, 5, 2), o));
}

TYPED_TEST(Options, CausalBottomRightWithMoreQueriesThanKeysMasksEarlyRowsFully) {
  const auto s = this->zeros(1, 1, 5, 3);
  ScoreOptions o;
  o.causal = true;  // d = 3 - 5 = -2: rows 0 and 1 see no key
  const Softmaxed<TypeParam> r(s->in(), o);
  EXPECT_EQ(pattern(r, 0, 0), (Rows{"000", "000", "100", "110", "111"}));
  EXPECT_EQ(r.logsumexp(0, 0, 0), -kInf);
  EXPECT_EQ(r.logsumexp(0, 0, 1), -kInf);
  EXPECT_EQ(r.logsumexp(0, 0, 2), 0);  // one visible key with logit 0
  EXPECT_TRUE(matches_oracle(*this->random(1, 1, 5, 3, 3), o));
}

TYPED_TEST(Options, WindowBoundsKeysAroundTheAlignedDiagonal) {
  const auto s = this->zeros(1, 1, 3, 5);
  struct Case {
    Window window;
    Alignment alignment;
    Rows expected;
  };
  // Row i sees keys [i + d - left, i + d + right]; d = 2 bottom-right, 0 top-left.
  const Case cases[] = {
      {{1, 0}, Alignment::bottom_right, {"01100", "00110", "00011"}},
      {{0, 1}, Alignment::bottom_right, {"00110", "00011", "00001"}},
      {{2, Window::unbounded}, Alignment::bottom_right, {"11111", "01111", "00111"}},
      {{Window::unbounded, 0}, Alignment::bottom_right, {"11100", "11110", "11111"}},
      {{1, 1}, Alignment::top_left, {"11000", "11100", "01110"}},
      {{0, 0}, Alignment::top_left, {"10000", "01000", "00100"}},
  };
  for (const Case& c : cases) {
    ScoreOptions o;
    o.window = c.window;
    o.alignment = c.alignment;
    SCOPED_TRACE("window {" + std::to_string(c.window.left) + ", " +
                 std::to_string(c.window.right) + "}");
    const Softmaxed<TypeParam> r(s->in(), o);
    EXPECT_EQ(pattern(r, 0, 0), c.expected);
    EXPECT_TRUE(uniform_over_visible(r));
    EXPECT_TRUE(matches_oracle(*this->random(1, 1, 3, 5, 4), o));
  }
}

TYPED_TEST(Options, KeyLengthsMaskPaddingAndMoveTheBottomRightDiagonal) {
  using T = TypeParam;
  // Batch 1 has 3 real keys; its padding holds NaN, which must never be read.
  const auto s = this->zeros(3, 1, 2, 5);
  for (index_t i = 0; i < 2; ++i)
    for (index_t j = 3; j < 5; ++j) s->view.row(1, 0, i)[j] = std::numeric_limits<T>::quiet_NaN();
  const std::vector<std::int32_t> lengths{5, 3, 0};
  ScoreOptions o;
  o.key_lengths = lengths;
  {
    const Softmaxed<T> r(s->in(), o);
    EXPECT_EQ(pattern(r, 0, 0), (Rows{"11111", "11111"}));
    EXPECT_EQ(pattern(r, 1, 0), (Rows{"11100", "11100"}));
    EXPECT_EQ(pattern(r, 2, 0), (Rows{"00000", "00000"}));
    EXPECT_EQ(r.logsumexp(2, 0, 0), -kInf);
    EXPECT_TRUE(uniform_over_visible(r));
  }
  o.causal = true;  // bottom-right: d = key_lengths[b] - Sq, i.e. 3, 1 and -2
  {
    const Softmaxed<T> r(s->in(), o);
    EXPECT_EQ(pattern(r, 0, 0), (Rows{"11110", "11111"}));
    EXPECT_EQ(pattern(r, 1, 0), (Rows{"11000", "11100"}));
    EXPECT_EQ(pattern(r, 2, 0), (Rows{"00000", "00000"}));
    EXPECT_TRUE(uniform_over_visible(r));
  }
  o.alignment = Alignment::top_left;  // d = 0 whatever the length
  {
    const Softmaxed<T> r(s->in(), o);
    EXPECT_EQ(pattern(r, 0, 0), (Rows{"10000", "11000"}));
    EXPECT_EQ(pattern(r, 1, 0), (Rows{"10000", "11000"}));
    EXPECT_EQ(pattern(r, 2, 0), (Rows{"00000", "00000"}));
  }
  EXPECT_TRUE(matches_oracle(*this->random(3, 2, 2, 5, 5), o));
}

TYPED_TEST(Options, AlibiEqualsABiasOfMinusSlopeTimesDistanceToTheDiagonal) {
  using T = TypeParam;
  constexpr index_t B = 2, H = 2, Sq = 3, Sk = 6;
  const auto s = this->random(B, H, Sq, Sk, 6);
  const std::vector<std::int32_t> lengths{6, 4};
  const std::vector<float> slopes{0.5f, 0.25f};  // powers of two: slope * distance is exact
  for (Alignment a : {Alignment::bottom_right, Alignment::top_left}) {
    ScoreOptions with_alibi;
    with_alibi.key_lengths = lengths;
    with_alibi.alignment = a;
    with_alibi.alibi_slopes = slopes;
    TensorBuffer<float> bias(B, H, Sq, Sk);
    fill(bias, [&](index_t b, index_t h, index_t i, index_t j) {
      const index_t d = a == Alignment::bottom_right ? lengths[b] - Sq : 0;
      return -slopes[h] * float(std::abs(i + d - j));
    });
    ScoreOptions with_bias;
    with_bias.key_lengths = lengths;
    with_bias.alignment = a;
    with_bias.bias = bias.in();

    // s - slope*|.| and s + (-slope*|.|) round identically: the results are bitwise equal.
    const Softmaxed<T> r_alibi(s->in(), with_alibi), r_bias(s->in(), with_bias);
    EXPECT_TRUE(testing_support::same_bits(r_alibi.p.storage, r_bias.p.storage));
    EXPECT_TRUE(testing_support::same_bits(r_alibi.lse.storage, r_bias.lse.storage));
    EXPECT_TRUE(matches_oracle(*s, with_alibi));
  }
}

TYPED_TEST(Options, SoftcapEqualsCTimesTanhOfScoreOverC) {
  using T = TypeParam;
  constexpr double c = 20;
  auto s = this->random(2, 2, 7, 17, 7);
  s->for_each([](T& x) { x *= 25; });  // [-100, 100]: well into the saturation of tanh
  s->view.row(0, 0, 0)[0] = T(1e4);
  s->view.row(0, 0, 0)[1] = T(-1e4);
  TensorBuffer<T> capped(2, 2, 7, 17);
  for (index_t b = 0; b < 2; ++b)
    for (index_t h = 0; h < 2; ++h)
      for (index_t i = 0; i < 7; ++i)
        for (index_t j = 0; j < 17; ++j)
          capped.view.row(b, h, i)[j] =
              T(ref::real(c) * std::tanh(ref::real(s->view.row(b, h, i)[j]) / ref::real(c)));

  ScoreOptions o;
  o.softcap = c;
  // Both are within the oracle's bound of softmax(c * tanh(s / c)) (its slack allows for the
  // rounding of tanh, 4c).
  const ref::Rows rows = ref::softmax(ref::load(s->in()), ref::Tensor{}, o);
  const Softmaxed<T> with_softcap(s->in(), o), precapped(capped.in(), ScoreOptions{});
  EXPECT_TRUE(ref::probs_match<T>(with_softcap.p.in(), rows));
  EXPECT_TRUE(ref::lse_matches<T>(with_softcap.lse.in(), rows));
  EXPECT_TRUE(ref::probs_match<T>(precapped.p.in(), rows));
  EXPECT_TRUE(ref::lse_matches<T>(precapped.lse.in(), rows));
  // Capped to -20, the logit -1e4 keeps a share exp(-40) of the row's largest; uncapped,
  // exp(-2e4) would be zero.
  EXPECT_GT(with_softcap.prob(0, 0, 0, 1), 0);
}

TYPED_TEST(Options, SinksTakeTheirShareOfTheMass) {
  using T = TypeParam;
  const ref::real u = ref::unit_roundoff<T>();
  {
    // Three keys and a sink all at logit 0: each key gets exactly 1/4, lse = log 4.
    const auto s = this->zeros(1, 1, 1, 3);
    const std::vector<float> sinks{0.0f};
    ScoreOptions o;
    o.sinks = sinks;
    const Softmaxed<T> r(s->in(), o);
    for (index_t j = 0; j < 3; ++j) EXPECT_EQ(r.prob(0, 0, 0, j), T(0.25));
    EXPECT_NEAR(r.logsumexp(0, 0, 0), std::log(4.0), 2 * u * std::log(4.0));
  }
  {
    // A fully masked row: no key takes any mass, the lse is the sink's logit.
    const auto s = this->zeros(1, 1, 2, 3);
    const std::vector<float> sinks{1.5f};
    const std::vector<std::int32_t> lengths{0};
    ScoreOptions o;
    o.sinks = sinks;
    o.key_lengths = lengths;
    const Softmaxed<T> r(s->in(), o);
    EXPECT_EQ(pattern(r, 0, 0), (Rows{"000", "000"}));
    EXPECT_EQ(r.logsumexp(0, 0, 1), T(1.5));
  }
  // Random rows: sum_j p_j = 1 - exp(sink - lse).
  constexpr index_t B = 2, H = 3, Sq = 7, Sk = 17;
  const auto s = this->random(B, H, Sq, Sk, 8);
  const std::vector<float> sinks{-1.0f, 0.5f, 3.0f};
  ScoreOptions o;
  o.sinks = sinks;
  o.causal = true;
  EXPECT_TRUE(matches_oracle(*s, o));
  const Softmaxed<T> r(s->in(), o);
  const ref::Rows rows = ref::softmax(ref::load(s->in()), ref::Tensor{}, o);
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < Sq; ++i) {
        ref::real sum = 0;
        for (index_t j = 0; j < Sk; ++j) sum += r.prob(b, h, i, j);
        const ref::real lse = r.logsumexp(b, h, i), sink_mass = std::exp(sinks[h] - lse);
        // Each p_j is within a relative e_p of exact and lse within e_lse (the bounds of
        // tolerance.hpp); an error e_lse in lse is a relative error e_lse in exp(sink - lse).
        const ref::real slack = rows.slack(b, h, i, 0);
        const ref::real e_p = 2 * (2 * slack + Sk + 4) * u;
        const ref::real e_lse = 2 * (slack + Sk + 4 + std::fabs(lse)) * u;
        EXPECT_NEAR(double(sum), double(1 - sink_mass), double(e_p * sum + e_lse * sink_mass))
            << "row " << ref::where(b, h, i, 0);
      }
}

// A bias or mask of extent 1 (or of stride 0) on batch or heads means the same as the
// tensor expanded to [B, H, Sq, Sk]: the results are bitwise equal.
TYPED_TEST(Options, BiasBroadcastsOverBatchAndHeads) {
  using T = TypeParam;
  constexpr index_t B = 2, H = 3, Sq = 7, Sk = 9;
  const auto s = this->random(B, H, Sq, Sk, 9);
  auto value = [](index_t b, index_t h, index_t i, index_t j) {
    return float(std::sin(double(1 + 3 * b + 5 * h + 7 * i + 11 * j)));
  };
  struct Shape {
    index_t batch, heads;
  };
  for (Shape shape : {Shape{1, H}, Shape{B, 1}, Shape{1, 1}, Shape{B, H}}) {
    SCOPED_TRACE("bias [" + std::to_string(shape.batch) + ", " + std::to_string(shape.heads) +
                 ", Sq, Sk]");
    TensorBuffer<float> small(shape.batch, shape.heads, Sq, Sk, Layout::bshd);
    fill(small, value);
    TensorBuffer<float> expanded(B, H, Sq, Sk);
    fill(expanded, [&](index_t b, index_t h, index_t i, index_t j) {
      return value(shape.batch == 1 ? 0 : b, shape.heads == 1 ? 0 : h, i, j);
    });
    ScoreOptions o_small, o_expanded;
    o_small.bias = small.in();
    o_expanded.bias = expanded.in();
    if (shape.batch == B && shape.heads == H) {
      // Stride 0 broadcasts as well: head 0 of batch 0 for every (b, h).
      o_small.bias =
          TensorView<const float>{small.view.data, B, H, Sq, Sk, 0, 0, small.view.seq_stride};
      fill(expanded, [&](index_t, index_t, index_t i, index_t j) { return value(0, 0, i, j); });
    }
    const Softmaxed<T> r_small(s->in(), o_small), r_expanded(s->in(), o_expanded);
    EXPECT_TRUE(testing_support::same_bits(r_small.p.storage, r_expanded.p.storage));
    EXPECT_TRUE(testing_support::same_bits(r_small.lse.storage, r_expanded.lse.storage));
    EXPECT_TRUE(matches_oracle(*s, o_small, Layout::bshd));
  }
}

TYPED_TEST(Options, MaskBroadcastsOverBatchAndHeadsAndHidesWhatItMasks) {
  using T = TypeParam;
  constexpr index_t B = 2, H = 3, Sq = 7, Sk = 9;
  const auto s = this->random(B, H, Sq, Sk, 10);
  auto allowed = [](index_t b, index_t h, index_t i, index_t j) {
    return (b + 2 * h + 3 * i + 5 * j) % 4 != 0 || i == 6;  // row 6 fully visible
  };
  // A hidden NaN must not leak into its row.
  s->view.row(0, 0, 0)[0] = std::numeric_limits<T>::quiet_NaN();
  ASSERT_FALSE(allowed(0, 0, 0, 0));
  struct Shape {
    index_t batch, heads;
  };
  for (Shape shape : {Shape{1, H}, Shape{B, 1}, Shape{1, 1}, Shape{B, H}}) {
    SCOPED_TRACE("mask [" + std::to_string(shape.batch) + ", " + std::to_string(shape.heads) +
                 ", Sq, Sk]");
    const MaskBuffer small(shape.batch, shape.heads, Sq, Sk, allowed);
    const MaskBuffer expanded(B, H, Sq, Sk, [&](index_t b, index_t h, index_t i, index_t j) {
      return allowed(shape.batch == 1 ? 0 : b, shape.heads == 1 ? 0 : h, i, j);
    });
    ScoreOptions o_small, o_expanded;
    o_small.mask = small.view;
    o_expanded.mask = expanded.view;
    const Softmaxed<T> r_small(s->in(), o_small), r_expanded(s->in(), o_expanded);
    EXPECT_TRUE(testing_support::same_bits(r_small.p.storage, r_expanded.p.storage));
    EXPECT_TRUE(testing_support::same_bits(r_small.lse.storage, r_expanded.lse.storage));
    EXPECT_FALSE(std::isnan(r_small.prob(0, 0, 0, 1)));
    EXPECT_EQ(r_small.prob(0, 0, 0, 0), 0);
    EXPECT_TRUE(matches_oracle(*s, o_small));
  }
}

TYPED_TEST(Options, EveryRuleTogetherMatchesTheOracle) {
  const std::vector<float> slopes{0.5f, 0.125f, 0.03125f}, sinks{0.25f, -2.0f, 1.0f};
  constexpr index_t B = 2, H = 3;
  index_t seed = 100;
  for (index_t sq : {1, 7, 17, 63, 65, 129}) {
    const index_t sk = sq + 5;
    const std::vector<std::int32_t> lengths{std::int32_t(sk), std::int32_t(2 * sk / 3)};
    const Layout layout = sq % 2 ? Layout::bhsd : Layout::bshd;
    const auto s = this->random(B, H, sq, sk, std::uint32_t(seed++), layout);
    TensorBuffer<float> bias(B, 1, sq, sk);
    bias.fill_random(std::uint32_t(seed++), -2, 2);
    const MaskBuffer mask(1, H, sq, sk, [](index_t, index_t h, index_t i, index_t j) {
      return (h + i * 7 + j * 3) % 9 != 0;
    });
    for (Alignment a : {Alignment::bottom_right, Alignment::top_left}) {
      SCOPED_TRACE("Sq " + std::to_string(sq) + ", " +
                   (a == Alignment::bottom_right ? "bottom_right" : "top_left"));
      ScoreOptions o1;  // causal LLM decoding: padding, ALiBi, a bias, sinks
      o1.alignment = a;
      o1.causal = true;
      o1.key_lengths = lengths;
      o1.alibi_slopes = slopes;
      o1.bias = bias.in();
      o1.sinks = sinks;
      EXPECT_TRUE(matches_oracle(*s, o1, layout));
      ScoreOptions o2;  // local attention: a window, a boolean mask, a soft cap
      o2.alignment = a;
      o2.window = {sq / 3, 2};
      o2.mask = mask.view;
      o2.softcap = 3.0;
      EXPECT_TRUE(matches_oracle(*s, o2, layout));
    }
  }
}

TYPED_TEST(Options, InvalidOptionsAreRefusedBeforeAnythingIsWritten) {
  using T = TypeParam;
  constexpr index_t B = 2, H = 3, Sq = 4, Sk = 5;
  const auto s = this->random(B, H, Sq, Sk, 11);
  TensorBuffer<T> p(B, H, Sq, Sk), lse(B, H, Sq, 1);
  auto refused = [&](const std::string& argument, const std::string& detail,
                     const ScoreOptions& o) {
    return rejects(
        {"softmax", argument, detail}, [&] { attend::softmax<T>(s->in(), p.view, o, lse.view); },
        p.storage, lse.storage);
  };
  ScoreOptions o;
  o.window.left = -2;
  EXPECT_TRUE(refused("window.left", "-2", o));
  o = {};
  o.window.right = -7;
  EXPECT_TRUE(refused("window.right", "-7", o));
  for (double c : {-1.0, kInf, std::numeric_limits<double>::quiet_NaN()}) {
    o = {};
    o.softcap = c;
    EXPECT_TRUE(refused("softcap", "", o));
  }

  const std::vector<std::int32_t> three_lengths{1, 2, 3}, too_long{5, 6}, negative{-1, 5};
  o = {};
  o.key_lengths = three_lengths;
  EXPECT_TRUE(refused("key_lengths.size", "", o));
  o.key_lengths = too_long;
  EXPECT_TRUE(refused("key_lengths", "at batch 1", o));
  o.key_lengths = negative;
  EXPECT_TRUE(refused("key_lengths", "at batch 0", o));
  o.key_lengths = {nullptr, B};
  EXPECT_TRUE(refused("key_lengths", "null data", o));

  TensorBuffer<float> wrong_sq(1, 1, Sq + 1, Sk), three_batches(3, 1, Sq, Sk),
      two_heads(1, 2, Sq, Sk);
  for (const auto* bias : {&wrong_sq, &three_batches, &two_heads}) {
    o = {};
    o.bias = bias->in();
    EXPECT_TRUE(refused("bias", "", o));
  }
  const MaskBuffer mask_wrong_sk(1, 1, Sq, Sk - 1, [](auto...) { return true; });
  const MaskBuffer mask_two_heads(B, 2, Sq, Sk, [](auto...) { return true; });
  for (const auto* mask : {&mask_wrong_sk, &mask_two_heads}) {
    o = {};
    o.mask = mask->view;
    EXPECT_TRUE(refused("mask", "", o));
  }

  const std::vector<float> two{0.5f, 0.25f};
  o = {};
  o.alibi_slopes = two;
  EXPECT_TRUE(refused("alibi_slopes.size", "", o));
  o.alibi_slopes = {nullptr, H};
  EXPECT_TRUE(refused("alibi_slopes", "null data", o));
  o = {};
  o.sinks = two;
  EXPECT_TRUE(refused("sinks.size", "", o));
  o.sinks = {nullptr, H};
  EXPECT_TRUE(refused("sinks", "null data", o));

  // Outputs may not overlap the options' arrays (of the same element type as the output).
  if constexpr (std::is_same_v<T, float>) {
    o = {};
    o.bias = TensorView<const float>(p.view.data, 1, 1, Sq, Sk, 0, 0, p.view.seq_stride);
    EXPECT_TRUE(refused("probs", "overlaps bias", o));
    o = {};
    o.sinks = {lse.view.data, H};
    EXPECT_TRUE(refused("lse", "overlaps sinks", o));
    o = {};
    o.alibi_slopes = {p.view.row(1, 2, 3), H};
    EXPECT_TRUE(refused("probs", "overlaps alibi_slopes", o));
  }
}

}  // namespace
