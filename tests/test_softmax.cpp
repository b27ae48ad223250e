// attend/softmax.hpp: the plain matrix softmax and the masked tensor softmax, out of place
// and in place, against the oracle (ref::softmax), and their behaviour at the edges:
// -inf and +inf logits, fully masked rows, huge logits, NaN.
#include "attend/softmax.hpp"

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "support/buffers.hpp"
#include "support/checks.hpp"
#include "support/reference.hpp"
#include "support/tolerance.hpp"

namespace {

using attend::Alignment;
using attend::index_t;
using attend::MatrixView;
using attend::ScoreOptions;
using attend::TensorView;
using testing_support::as_tensor;
using testing_support::FloatingTypes;
using testing_support::Layout;
using testing_support::MatrixBuffer;
using testing_support::rejects;
using testing_support::TensorBuffer;
using testing_support::TypeNames;

template <class T>
constexpr T kInf = std::numeric_limits<T>::infinity();
template <class T>
constexpr T kNaN = std::numeric_limits<T>::quiet_NaN();

template <class T>
void copy(TensorView<const T> from, TensorView<T> to) {
  for (index_t b = 0; b < from.batch; ++b)
    for (index_t h = 0; h < from.heads; ++h)
      for (index_t s = 0; s < from.seq; ++s)
        for (index_t d = 0; d < from.dim; ++d) to.row(b, h, s)[d] = from.row(b, h, s)[d];
}

// Every element of a and b has the same bits (NaN included).
template <class T>
::testing::AssertionResult identical(TensorView<const T> a, TensorView<const T> b) {
  for (index_t i0 = 0; i0 < a.batch; ++i0)
    for (index_t i1 = 0; i1 < a.heads; ++i1)
      for (index_t i2 = 0; i2 < a.seq; ++i2)
        for (index_t i3 = 0; i3 < a.dim; ++i3)
          if (std::memcmp(a.row(i0, i1, i2) + i3, b.row(i0, i1, i2) + i3, sizeof(T)) != 0)
            return ::testing::AssertionFailure() << "differ at " << ref::where(i0, i1, i2, i3);
  return ::testing::AssertionSuccess();
}

// One row of a [rows, cols] matrix softmax, for hand-written expectations.
template <class T>
std::vector<T> softmax_row(std::vector<T> row) {
  const index_t n = index_t(row.size());
  attend::softmax<T>(MatrixView<T>(row.data(), 1, n));
  return row;
}

// y = softmax(x) against Eigen's softmax, in T: each is within the oracle's bound of the
// exact probabilities (tolerance.hpp), so within twice it of each other.
template <class T>
::testing::AssertionResult agrees_with_eigen(MatrixView<const T> x, MatrixView<const T> y,
                                             const ref::Rows& r) {
  using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>> xe(x.data, x.rows, x.cols,
                                                                Eigen::OuterStride<>(x.stride));
  const RowMatrix e = (xe.colwise() - xe.rowwise().maxCoeff()).array().exp().matrix();
  const RowMatrix p = e.array().colwise() / e.rowwise().sum().array();
  const ref::real u = ref::unit_roundoff<T>();
  return ref::all_close<T>(as_tensor(y), as_tensor(ref::load<T>({p.data(), x.rows, x.cols})),
                           [&](index_t b, index_t h, index_t i, index_t j) {
                             const ref::real bound =
                                 2 * r.p(b, h, i, j) * (2 * r.slack(b, h, i, 0) + x.cols + 4) * u;
                             return 2 * bound + 4 * ref::real(std::numeric_limits<T>::min());
                           });
}

template <class T>
class Softmax : public ::testing::Test {};
TYPED_TEST_SUITE(Softmax, FloatingTypes, TypeNames);

TYPED_TEST(Softmax, MatrixOutOfPlaceAndInPlaceMatchTheOracle) {
  using T = TypeParam;
  struct Shape {
    index_t rows, cols;
  };
  std::vector<Shape> shapes;
  for (index_t n : {1, 7, 17, 63, 65, 129}) shapes.push_back({7, n}), shapes.push_back({n, 17});
  std::uint32_t seed = 1;
  for (const Shape& sh : shapes) {
    SCOPED_TRACE(std::to_string(sh.rows) + " x " + std::to_string(sh.cols));
    MatrixBuffer<T> x(sh.rows, sh.cols), y(sh.rows, sh.cols), z(sh.rows, sh.cols);
    x.fill_random(seed++, -8, 8);
    attend::softmax<T>(x.in(), y.view);
    const ref::Rows r = ref::softmax(as_tensor(ref::load(x.in())), ref::Tensor{}, {});
    EXPECT_TRUE(ref::probs_match<T>(as_tensor(y.in()), r));
    EXPECT_TRUE(y.canaries_intact());
    EXPECT_TRUE(agrees_with_eigen(x.in(), y.in(), r));

    // In place, through either overload: the same arithmetic, the same bits.
    copy<T>(as_tensor(x.in()), as_tensor(z.view));
    attend::softmax<T>(z.view);
    EXPECT_TRUE(identical<T>(as_tensor(z.in()), as_tensor(y.in())));
    copy<T>(as_tensor(x.in()), as_tensor(z.view));
    attend::softmax<T>(z.in(), z.view);
    EXPECT_TRUE(identical<T>(as_tensor(z.in()), as_tensor(y.in())));
    EXPECT_TRUE(z.canaries_intact());
  }
}

TYPED_TEST(Softmax, MaskedTensorMatchesTheOracleUnderEachOption) {
  using T = TypeParam;
  constexpr index_t B = 2, H = 3, Sq = 7, Sk = 17;
  const std::vector<std::int32_t> lengths{17, 9};
  const std::vector<float> slopes{0.5f, 0.25f, 0.125f}, sinks{0.0f, 2.0f, -1.0f};
  TensorBuffer<float> bias(1, H, Sq, Sk);
  bias.fill_random(7, -3, 3);
  std::unique_ptr<bool[]> mask_data(new bool[B * Sq * Sk]);
  const auto mask = TensorView<bool>::bhsd(mask_data.get(), B, 1, Sq, Sk);
  for (index_t i = 0; i < B * Sq * Sk; ++i) mask_data[i] = i % 5 != 2;

  struct Case {
    const char* name;
    ScoreOptions o;
  };
  std::vector<Case> cases(10);
  cases[0].name = "none";
  cases[1].name = "causal", cases[1].o.causal = true;
  cases[2].name = "causal top_left", cases[2].o.causal = true;
  cases[2].o.alignment = Alignment::top_left;
  cases[3].name = "window", cases[3].o.window = {3, 1};
  cases[4].name = "key_lengths", cases[4].o.key_lengths = lengths;
  cases[5].name = "bias", cases[5].o.bias = bias.in();
  cases[6].name = "mask", cases[6].o.mask = mask;
  cases[7].name = "alibi", cases[7].o.alibi_slopes = slopes;
  cases[8].name = "softcap", cases[8].o.softcap = 2.5;
  cases[9].name = "sinks", cases[9].o.sinks = sinks;

  std::uint32_t seed = 20;
  for (const Case& c : cases)
    for (Layout layout : {Layout::bhsd, Layout::bshd}) {
      SCOPED_TRACE(std::string(c.name) + ", " + testing_support::name(layout));
      TensorBuffer<T> s(B, H, Sq, Sk, layout), p(B, H, Sq, Sk, layout), lse(B, H, Sq, 1, layout);
      s.fill_random(seed++, -5, 5);
      attend::softmax<T>(s.in(), p.view, c.o, lse.view);
      const ref::Rows r = ref::softmax(ref::load(s.in()), ref::Tensor{}, c.o);
      EXPECT_TRUE(ref::probs_match<T>(p.in(), r));
      EXPECT_TRUE(ref::lse_matches<T>(lse.in(), r));
      EXPECT_TRUE(p.canaries_intact() && lse.canaries_intact());

      // In place, with and without lse: the same bits.
      TensorBuffer<T> z(B, H, Sq, Sk, layout), z_lse(B, H, Sq, 1, layout);
      copy<T>(s.in(), z.view);
      attend::softmax<T>(z.view, c.o, z_lse.view);
      EXPECT_TRUE(identical<T>(z.in(), p.in()));
      EXPECT_TRUE(identical<T>(z_lse.in(), lse.in()));
      copy<T>(s.in(), z.view);
      attend::softmax<T>(z.in(), z.view, c.o);
      EXPECT_TRUE(identical<T>(z.in(), p.in()));
      EXPECT_TRUE(z.canaries_intact() && z_lse.canaries_intact());
    }
}

TYPED_TEST(Softmax, CausalTensorMatchesTheOracleAtEverySize) {
  using T = TypeParam;
  std::uint32_t seed = 40;
  for (index_t n : {1, 7, 17, 63, 65, 129}) {
    SCOPED_TRACE("Sq = Sk = " + std::to_string(n));
    TensorBuffer<T> s(2, 2, n, n), p(2, 2, n, n, Layout::bshd), lse(2, 2, n, 1);
    s.fill_random(seed++, -5, 5);
    ScoreOptions o;
    o.causal = true;
    attend::softmax<T>(s.in(), p.view, o, lse.view);
    const ref::Rows r = ref::softmax(ref::load(s.in()), ref::Tensor{}, o);
    EXPECT_TRUE(ref::probs_match<T>(p.in(), r));
    EXPECT_TRUE(ref::lse_matches<T>(lse.in(), r));
    EXPECT_TRUE(p.canaries_intact() && lse.canaries_intact());
  }
}

// Sum_j p_j = sum_j e_j / z with z = sum_j e_j computed in n - 1 additions and each p_j one
// division: |sum - 1| <= n u to first order (the e_j's own errors cancel, being the same in
// numerator and denominator); one more u covers the second-order terms.
TYPED_TEST(Softmax, RowsSumToOneWithinNUnitRoundoffs) {
  using T = TypeParam;
  const ref::real u = ref::unit_roundoff<T>();
  std::uint32_t seed = 60;
  for (index_t n : {1, 7, 17, 63, 65, 129}) {
    MatrixBuffer<T> x(33, n), y(33, n);
    x.fill_random(seed++, -20, 20);
    attend::softmax<T>(x.in(), y.view);
    for (index_t i = 0; i < x.view.rows; ++i) {
      ref::real sum = 0;
      for (index_t j = 0; j < n; ++j) sum += y.view(i, j);
      EXPECT_LE(std::fabs(sum - 1), (n + 1) * u) << "row " << i << " of " << n << " columns";
    }
  }
}

TYPED_TEST(Softmax, MinusInfinityEntriesGetExactZeros) {
  using T = TypeParam;
  const std::vector<T> p = softmax_row<T>({-kInf<T>, 0, -kInf<T>, 0, -kInf<T>});
  EXPECT_EQ(p, (std::vector<T>{0, 0.5, 0, 0.5, 0}));
}

TYPED_TEST(Softmax, FullyMaskedRowYieldsZerosAndMinusInfinityLse) {
  using T = TypeParam;
  TensorBuffer<T> s(1, 2, 3, 4), p(1, 2, 3, 4), lse(1, 2, 3, 1);
  s.fill_random(1);
  for (index_t j = 0; j < 4; ++j) s.view.row(0, 1, 2)[j] = -kInf<T>;
  attend::softmax<T>(s.in(), p.view, {}, lse.view);
  for (index_t j = 0; j < 4; ++j) EXPECT_EQ(p.view.row(0, 1, 2)[j], T(0));
  EXPECT_EQ(*lse.view.row(0, 1, 2), -kInf<T>);
  EXPECT_TRUE(ref::probs_match<T>(p.in(), ref::softmax(ref::load(s.in()), ref::Tensor{}, {})));
  // The matrix form too, in place.
  EXPECT_EQ(softmax_row<T>({-kInf<T>, -kInf<T>, -kInf<T>}), (std::vector<T>{0, 0, 0}));
}

TYPED_TEST(Softmax, HugeLogitsDoNotOverflow) {
  using T = TypeParam;
  MatrixBuffer<T> x(4, 9), y(4, 9);
  x.fill_random(3, -1, 1);
  for (index_t j = 0; j < 9; ++j) {
    x.view(0, j) += T(1e4);                 // all huge: shifted by the maximum, harmless
    x.view(1, j) -= T(1e4);                 // all tiny: exp would underflow unshifted
    x.view(2, j) += T(j % 2 ? 1e4 : -1e4);  // both: the -1e4 keys get exactly zero
  }
  attend::softmax<T>(x.in(), y.view);
  const ref::Rows r = ref::softmax(as_tensor(ref::load(x.in())), ref::Tensor{}, {});
  EXPECT_TRUE(ref::probs_match<T>(as_tensor(y.in()), r));
  for (index_t j = 0; j < 9; ++j) {
    EXPECT_GT(y.view(1, j), 0);
    if (j % 2 == 0) {
      EXPECT_EQ(y.view(2, j), T(0));
    }
  }
}

TYPED_TEST(Softmax, PlusInfinityLogitsShareTheMassEqually) {
  using T = TypeParam;
  EXPECT_EQ(softmax_row<T>({kInf<T>, 1, kInf<T>, -kInf<T>}), (std::vector<T>{0.5, 0, 0.5, 0}));
  EXPECT_EQ(softmax_row<T>({kInf<T>, kInf<T>, kInf<T>, kInf<T>}),
            (std::vector<T>{0.25, 0.25, 0.25, 0.25}));
  EXPECT_EQ(softmax_row<T>({-kInf<T>, kInf<T>}), (std::vector<T>{0, 1}));
  EXPECT_EQ(softmax_row<T>({-kInf<T>, T(1e4), -kInf<T>}), (std::vector<T>{0, 1, 0}));

  // The log-sum-exp of a row with +inf is +inf; rows without are untouched.
  TensorBuffer<T> s(1, 1, 2, 3), p(1, 1, 2, 3), lse(1, 1, 2, 1);
  s.fill_random(2);
  s.view.row(0, 0, 0)[1] = kInf<T>;
  attend::softmax<T>(s.in(), p.view, {}, lse.view);
  EXPECT_EQ(*lse.view.row(0, 0, 0), kInf<T>);
  const ref::Rows r = ref::softmax(ref::load(s.in()), ref::Tensor{}, {});
  EXPECT_TRUE(ref::probs_match<T>(p.in(), r));
  EXPECT_TRUE(ref::lse_matches<T>(lse.in(), r));
}

TYPED_TEST(Softmax, NaNSpoilsExactlyTheRowsItIsIn) {
  using T = TypeParam;
  TensorBuffer<T> s(2, 3, 5, 6), p(2, 3, 5, 6), lse(2, 3, 5, 1);
  s.fill_random(4);
  s.view.row(1, 2, 3)[4] = kNaN<T>;
  // A NaN among -inf only: no finite maximum, still a NaN row.
  for (index_t j = 0; j < 6; ++j) s.view.row(0, 1, 1)[j] = j == 2 ? kNaN<T> : -kInf<T>;
  attend::softmax<T>(s.in(), p.view, {}, lse.view);
  for (index_t j = 0; j < 6; ++j) {
    EXPECT_TRUE(std::isnan(p.view.row(1, 2, 3)[j])) << j;
    EXPECT_TRUE(std::isnan(p.view.row(0, 1, 1)[j])) << j;
  }
  EXPECT_TRUE(std::isnan(*lse.view.row(1, 2, 3)));
  EXPECT_TRUE(std::isnan(*lse.view.row(0, 1, 1)));
  // Every other row is as if the NaN were not there (the oracle's NaN row matches NaN).
  const ref::Rows r = ref::softmax(ref::load(s.in()), ref::Tensor{}, {});
  EXPECT_TRUE(ref::probs_match<T>(p.in(), r));
  EXPECT_TRUE(ref::lse_matches<T>(lse.in(), r));
  int nan_rows = 0;
  for (index_t b = 0; b < 2; ++b)
    for (index_t h = 0; h < 3; ++h)
      for (index_t i = 0; i < 5; ++i) nan_rows += std::isnan(*lse.view.row(b, h, i));
  EXPECT_EQ(nan_rows, 2);
}

TYPED_TEST(Softmax, ZeroSizedExtentsAreAllowed) {
  using T = TypeParam;
  // No keys: every row is fully masked.
  TensorBuffer<T> s(1, 2, 3, 0), p(1, 2, 3, 0), lse(1, 2, 3, 1);
  attend::softmax<T>(s.in(), p.view, {}, lse.view);
  for (index_t h = 0; h < 2; ++h)
    for (index_t i = 0; i < 3; ++i) EXPECT_EQ(*lse.view.row(0, h, i), -kInf<T>);
  EXPECT_TRUE(p.canaries_intact() && lse.canaries_intact());
  MatrixBuffer<T> x(0, 5), y(0, 5);
  attend::softmax<T>(x.in(), y.view);
  EXPECT_TRUE(y.canaries_intact());
}

TYPED_TEST(Softmax, TensorRefusesEveryInvalidArgumentWithoutWriting) {
  using T = TypeParam;
  constexpr index_t B = 2, H = 3, Sq = 4, Sk = 5;
  TensorBuffer<T> s(B, H, Sq, Sk), p(B, H, Sq, Sk), lse(B, H, Sq, 1);
  s.fill_random(1);
  auto refused = [&](const std::string& argument, const std::string& detail, TensorView<const T> s_,
                     TensorView<T> p_, TensorView<T> lse_) {
    return rejects(
        {"softmax", argument, detail}, [&] { attend::softmax<T>(s_, p_, {}, lse_); }, s.storage,
        p.storage, lse.storage);
  };
  TensorView<const T> s_bad = s.in();
  s_bad.heads = -1;
  EXPECT_TRUE(refused("scores", "negative extent", s_bad, p.view, lse.view));
  s_bad = s.in();
  s_bad.seq_stride = Sk - 1;
  EXPECT_TRUE(refused("scores", "seq stride", s_bad, p.view, lse.view));
  s_bad = s.in();
  s_bad.data = nullptr;
  EXPECT_TRUE(refused("scores", "null data", s_bad, p.view, lse.view));
  TensorView<T> p_bad = p.view;
  p_bad.seq = Sq - 1;
  EXPECT_TRUE(refused("probs", "expected shape [2, 3, 4, 5]", s.in(), p_bad, lse.view));
  p_bad = p.view;
  p_bad.batch_stride = p.view.head_stride;  // batch 1 would rewrite heads of batch 0
  EXPECT_TRUE(refused("probs", "overlap", s.in(), p_bad, lse.view));
  TensorView<T> lse_bad = lse.view;
  lse_bad.dim = 2;
  EXPECT_TRUE(refused("lse", "expected shape [2, 3, 4, 1]", s.in(), p.view, lse_bad));
  lse_bad = lse.view;
  lse_bad.seq_stride = 0;
  EXPECT_TRUE(refused("lse", "seq stride", s.in(), p.view, lse_bad));
  const TensorView<T> lse_on_p{p.view.row(1, 0, 0), B, H, Sq, 1, 0, 0, 1};
  EXPECT_TRUE(refused("lse", "distinct elements", s.in(), p.view, lse_on_p));
  const TensorView<T> lse_in_p{p.view.row(1, 0, 0), B, H, Sq, 1, H * Sq, Sq, 1};
  EXPECT_TRUE(refused("lse", "overlaps probs", s.in(), p.view, lse_in_p));
  const TensorView<T> lse_in_s{s.view.row(1, 0, 0), B, H, Sq, 1, H * Sq, Sq, 1};
  EXPECT_TRUE(refused("lse", "overlaps scores", s.in(), p.view, lse_in_s));
}

// In place means the same view; any other overlap of input and output is an error.
TYPED_TEST(Softmax, PartiallyOverlappingInputAndOutputAreRefused) {
  using T = TypeParam;
  constexpr index_t B = 2, H = 3, Sq = 4, Sk = 5;
  TensorBuffer<T> s(B, H, Sq, Sk);
  s.fill_random(1);
  TensorView<T> shifted = s.view;
  shifted.data += 1;
  EXPECT_TRUE(rejects(
      {"softmax", "probs", "overlaps scores"}, [&] { attend::softmax<T>(s.in(), shifted); },
      s.storage));
  // The same memory read with other strides (heads interleaved) is not the same view.
  const TensorView<T> restrided{
      s.view.data, B, H, Sq, Sk, s.view.batch_stride, s.view.seq_stride, H * s.view.seq_stride};
  EXPECT_TRUE(rejects(
      {"softmax", "probs", "overlaps scores"}, [&] { attend::softmax<T>(s.in(), restrided); },
      s.storage));
}

// The matrix form names its own arguments, x and y.
TYPED_TEST(Softmax, MatrixPartialOverlapIsRefusedNamingYAndX) {
  using T = TypeParam;
  MatrixBuffer<T> x(6, 5);
  x.fill_random(2);
  const MatrixView<T> y_one_row_down(x.view.row(1), 5, 5, x.view.stride);
  const MatrixView<const T> x_top(x.view.data, 5, 5, x.view.stride);
  EXPECT_TRUE(rejects(
      {"softmax", "y", "overlaps x"}, [&] { attend::softmax<T>(x_top, y_one_row_down); },
      x.storage));
}

TYPED_TEST(Softmax, MatrixRefusesEveryInvalidArgumentWithoutWriting) {
  using T = TypeParam;
  MatrixBuffer<T> x(4, 5), y(4, 5);
  x.fill_random(1);
  auto refused = [&](const std::string& argument, const std::string& detail, MatrixView<const T> x_,
                     MatrixView<T> y_) {
    return rejects(
        {"softmax", argument, detail}, [&] { attend::softmax<T>(x_, y_); }, x.storage, y.storage);
  };
  EXPECT_TRUE(refused("x", "null data", {nullptr, 4, 5, 8}, y.view));
  EXPECT_TRUE(refused("x", "row stride", {x.view.data, 4, 5, 4}, y.view));
  EXPECT_TRUE(refused("x", "negative extent", {x.view.data, -4, 5, 8}, y.view));
  EXPECT_TRUE(refused("y", "expected shape [4, 5]", x.in(), y.view.block(0, 4, 0, 4)));
  EXPECT_TRUE(refused("y", "expected shape [4, 5]", x.in(), y.view.block(1, 3, 0, 5)));
  EXPECT_TRUE(refused("y", "null data", x.in(), {nullptr, 4, 5, 8}));
  EXPECT_TRUE(refused("y", "row stride", x.in(), {y.view.data, 4, 5, 3}));
}

// The forced paths: every path this CPU runs (attend::supported_isas), through Context, on
// rows whose visible keys start and end at many offsets from a multiple of the vector width
// (8 or 16 lanes), under every kind of mask and logit rule.

// One ScoreOptions per kind of rule for scores [2, 3, sq, sk], with the arrays they view.
struct RuleKinds {
  static constexpr index_t B = 2, H = 3;
  std::vector<std::int32_t> lengths;
  std::vector<float> slopes{0.5f, 0.25f, 0.125f}, sinks{0.0f, 2.0f, -1.0f};
  TensorBuffer<float> bias;
  std::unique_ptr<bool[]> mask_data;
  std::vector<std::pair<std::string, ScoreOptions>> cases;

  RuleKinds(index_t sq, index_t sk)
      : lengths{std::int32_t(sk), std::int32_t(2 * sk / 3)},
        bias(1, H, sq, sk),
        mask_data(new bool[std::size_t(B * sq * sk)]) {
    bias.fill_random(7, -3, 3);
    for (index_t i = 0; i < B * sq * sk; ++i) mask_data[std::size_t(i)] = i % 5 != 2;
    const auto mask = TensorView<const bool>::bhsd(mask_data.get(), B, 1, sq, sk);
    ScoreOptions o;
    add("none", o);
    o.causal = true;
    add("causal", o);
    o.alignment = Alignment::top_left;
    add("causal top_left", o);
    o = {};
    o.window = {sk / 3, 2};
    add("window", o);
    o = {};
    o.key_lengths = lengths;
    add("key_lengths", o);
    o = {};
    o.bias = bias.in();
    add("bias", o);
    o = {};
    o.mask = mask;
    add("mask", o);
    o = {};
    o.alibi_slopes = slopes;
    add("alibi", o);
    o = {};
    o.softcap = 2.5;
    add("softcap", o);
    o = {};
    o.sinks = sinks;
    add("sinks", o);
    o.causal = true, o.key_lengths = lengths, o.alibi_slopes = slopes, o.bias = bias.in();
    add("causal, key_lengths, alibi, bias, sinks", o);
    o = {};
    o.window = {sk / 3, 2}, o.mask = mask, o.softcap = 3.0, o.sinks = sinks;
    add("window, mask, softcap, sinks", o);
  }
  void add(const char* name, const ScoreOptions& o) { cases.emplace_back(name, o); }
};

TYPED_TEST(Softmax, EveryPathAndThreadCountMatchesTheOracleUnderEveryRule) {
  using T = TypeParam;
  constexpr index_t Sq = 9;
  const attend::ThreadPool pools[] = {attend::ThreadPool(1), attend::ThreadPool(2),
                                      attend::ThreadPool(3)};
  std::uint32_t seed = 80;
  for (index_t sk : {1, 7, 15, 16, 17, 31, 33, 63, 65, 129, 1000}) {
    const RuleKinds kinds(Sq, sk);
    const Layout layout = sk % 2 ? Layout::bhsd : Layout::bshd;
    TensorBuffer<T> s(RuleKinds::B, RuleKinds::H, Sq, sk, layout);
    s.fill_random(seed++, -8, 8);
    for (const auto& [rule, o] : kinds.cases) {
      const ref::Rows r = ref::softmax(ref::load(s.in()), ref::Tensor{}, o);
      for (attend::Isa isa : attend::supported_isas()) {
        SCOPED_TRACE(std::string(attend::name(isa)) + ", Sk = " + std::to_string(sk) + ", " + rule);
        attend::Context ctx;
        ctx.isa = isa;
        TensorBuffer<T> p(RuleKinds::B, RuleKinds::H, Sq, sk, layout);
        TensorBuffer<T> lse(RuleKinds::B, RuleKinds::H, Sq, 1, layout);
        attend::softmax<T>(s.in(), p.view, o, lse.view, ctx);
        EXPECT_TRUE(ref::probs_match<T>(p.in(), r));
        EXPECT_TRUE(ref::lse_matches<T>(lse.in(), r));
        EXPECT_TRUE(p.canaries_intact() && lse.canaries_intact());

        // In place: the same bits.
        TensorBuffer<T> z(RuleKinds::B, RuleKinds::H, Sq, sk, layout);
        copy<T>(s.in(), z.view);
        attend::softmax<T>(z.view, o, {}, ctx);
        EXPECT_TRUE(identical<T>(z.in(), p.in()));

        // Any number of threads: the same bits.
        for (const attend::ThreadPool& pool : pools) {
          ctx.executor = &pool;
          TensorBuffer<T> pt(RuleKinds::B, RuleKinds::H, Sq, sk, layout);
          TensorBuffer<T> lse_t(RuleKinds::B, RuleKinds::H, Sq, 1, layout);
          attend::softmax<T>(s.in(), pt.view, o, lse_t.view, ctx);
          EXPECT_TRUE(testing_support::same_bits(pt.storage, p.storage))
              << pool.concurrency() << " threads";
          EXPECT_TRUE(testing_support::same_bits(lse_t.storage, lse.storage))
              << pool.concurrency() << " threads";
        }
      }
    }
  }
}

// Softmax does not see a shift of its row: p(s + c) = p(s) and lse(s + c) = lse(s) + c,
// for shifts where s + c is exact. The SIMD paths shift by fl(m log2e) inside exp2 while
// |m| < 2^20 and hand larger rows to the portable row; both sides of that limit, and
// logits near the ends of the float range, must keep the unshifted row's accuracy.
TYPED_TEST(Softmax, EveryPathIsShiftInvariantForLogitsOfAnySize) {
  using T = TypeParam;
  constexpr index_t Sq = 4, Sk = 37;
  const ref::real u = ref::unit_roundoff<T>();
  std::uint32_t seed = 90;
  for (double c : {0.0, 1e3, 1e5, 1048544.0, 1048608.0, 16777216.0, 1e30, 3e38}) {
    for (const T shift : {T(c), T(-c)}) {
      // Offsets k q for integers |k| <= 64, with q the spacing of T above |shift| (so that
      // shift + k q is exact) but at least 1/8 (so that small shifts keep a spread of
      // weights).
      const double q =
          std::max(0.125, double(std::nextafter(std::fabs(shift), kInf<T>) - std::fabs(shift)));
      TensorBuffer<T> d(1, 1, Sq, Sk), shifted(1, 1, Sq, Sk);
      std::mt19937 gen(seed++);
      std::uniform_int_distribution<int> k(-64, 64);
      d.for_each([&](T& x) { x = T(k(gen) * q); });
      for (index_t i = 0; i < Sq; ++i)
        for (index_t j = 0; j < Sk; ++j)
          shifted.view.row(0, 0, i)[j] = shift + d.view.row(0, 0, i)[j];
      const ref::Rows r = ref::softmax(ref::load(d.in()), ref::Tensor{}, {});
      for (attend::Isa isa : attend::supported_isas()) {
        SCOPED_TRACE(std::string(attend::name(isa)) + ", shift " + std::to_string(double(shift)));
        attend::Context ctx;
        ctx.isa = isa;
        TensorBuffer<T> p(1, 1, Sq, Sk), lse(1, 1, Sq, 1);
        attend::softmax<T>(shifted.in(), p.view, {}, lse.view, ctx);
        EXPECT_TRUE(ref::probs_match<T>(p.in(), r));
        // lse_matches' bound, with the unshifted row's slack and the shifted lse's size.
        for (index_t i = 0; i < Sq; ++i) {
          const ref::real got = *lse.view.row(0, 0, i),
                          expected = ref::real(shift) + r.lse(0, 0, i, 0);
          const ref::real tol = 2 * (r.slack(0, 0, i, 0) + Sk + 4 + std::fabs(expected)) * u;
          EXPECT_NEAR(double(got), double(expected), double(tol)) << "row " << i;
        }
      }
    }
  }
}

}  // namespace
