// The Eigen adapter (eigen.hpp): attend::eigen::view, linear, softmax and attention on
// RowMatrix, on Maps with an outer stride, on blocks, and on column-major inputs (which
// the adapter copies), each against the plain Eigen expression of the same maths
// evaluated in long double.
//
// Outputs must be row-major storage: passing a column-major matrix as y or o does not
// compile (Eigen::Ref<RowMatrix> refuses it with STORAGE_LAYOUT_DOES_NOT_MATCH), so there
// is nothing to test at run time.
//
// Tolerances are tolerance.hpp's bounds with their ingredients taken from Eigen products
// of magnitudes: a dot product of K terms is within (K + 2) u sum |x w| (ref::linear's
// slack), a softmax over n logits within a relative (2 slack + n + 4) u.

#include "attend/eigen.hpp"

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
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

using attend::index_t;
using attend::eigen::ConstRef;
using attend::eigen::Ref;
using attend::eigen::RowMatrix;
using ref::real;

using LongMatrix = Eigen::Matrix<real, Eigen::Dynamic, Eigen::Dynamic>;
template <class T>
using ColMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;  // Eigen's default order
template <class T>
using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;
template <class T>
using StridedMap = Eigen::Map<RowMatrix<T>, 0, Eigen::OuterStride<>>;

// Uniform values in [lo, hi) from a fixed seed, in any Eigen matrix (of either order).
template <class M>
void fill_random(M& m, std::uint32_t seed, double lo = -1, double hi = 1) {
  using T = typename M::Scalar;
  const std::vector<T> v = testing_support::random_vector<T>(m.rows() * m.cols(), seed, lo, hi);
  for (index_t i = 0; i < m.rows(); ++i)
    for (index_t j = 0; j < m.cols(); ++j) m(i, j) = v[std::size_t(i * m.cols() + j)];
}

template <class M>
LongMatrix widen(const Eigen::MatrixBase<M>& m) {
  return m.template cast<real>();
}

// Every element of `actual` within tol of `expected` (ref::close: NaN and inf must match).
template <class M>
::testing::AssertionResult all_close(const Eigen::MatrixBase<M>& actual, const LongMatrix& expected,
                                     const LongMatrix& tol) {
  int misses = 0;
  std::ostringstream report;
  for (index_t i = 0; i < expected.rows(); ++i)
    for (index_t j = 0; j < expected.cols(); ++j) {
      const real a = actual(i, j), e = expected(i, j);
      if (ref::close(a, e, tol(i, j))) continue;
      if (++misses <= 5)
        report << "\n  at (" << i << ", " << j << "): got " << double(a) << ", expected "
               << double(e) << " (tolerance " << double(tol(i, j)) << ")";
    }
  if (misses == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << misses << " elements out of tolerance" << report.str();
}

// A buffer [rows + 2, cols + 3] filled with canaries, whose interior block (1, 1, rows,
// cols) serves as an output: its outer stride exceeds its width, and untouched() says
// whether anything outside the block was written.
template <class T>
struct Canvas {
  RowMatrix<T> full;
  index_t rows, cols;
  Canvas(index_t r, index_t c) : full(r + 2, c + 3), rows(r), cols(c) {
    full.setConstant(testing_support::canary<T>());
  }
  auto block() { return full.block(1, 1, rows, cols); }
  bool untouched() const {
    for (index_t i = 0; i < full.rows(); ++i)
      for (index_t j = 0; j < full.cols(); ++j) {
        const bool inside = i >= 1 && i <= rows && j >= 1 && j <= cols;
        if (!inside && full(i, j) != testing_support::canary<T>()) return false;
      }
    return true;
  }
};

// The oracles, from plain Eigen expressions in long double ---------------------------------

// y = x W^T + b and its bound 2 u ((K + 2) |x| |W|^T + 2 |b|) + 2 min (ref::linear's slack,
// doubled as in tolerance.hpp).
template <class T>
struct LinearOracle {
  LongMatrix y, tol;
  LinearOracle(const LongMatrix& x, const LongMatrix& w, const LongMatrix& b) {
    y = x * w.transpose();
    LongMatrix slack = real(x.cols() + 2) * (x.cwiseAbs() * w.cwiseAbs().transpose());
    if (b.size()) {
      y.rowwise() += b.transpose().row(0);
      slack.rowwise() += real(2) * b.cwiseAbs().transpose().row(0);
    }
    tol = (2 * ref::unit_roundoff<T>() * slack.array() + 2 * real(std::numeric_limits<T>::min()))
              .matrix();
  }
};

// Row softmax of scores (masked entries -inf), with tolerance.hpp's probability bound
// 2 p (2 slack + n + 4) u + 2 min for logits that each carry slack u of error (one slack
// per row).
template <class T>
struct SoftmaxOracle {
  LongMatrix p, tol;
  SoftmaxOracle(const LongMatrix& s, const LongMatrix& slack) {
    const LongMatrix shifted = s.colwise() - s.rowwise().maxCoeff();
    p = shifted.array().exp().matrix();
    p = (p.array().colwise() / p.rowwise().sum().array()).matrix();
    const Eigen::Array<real, Eigen::Dynamic, 1> relative =
        2 * ref::unit_roundoff<T>() * (real(2) * slack.array() + real(s.cols() + 4));
    tol = ((p.array().colwise() * relative) + 2 * real(std::numeric_limits<T>::min())).matrix();
  }
};

// Plain row softmax: each logit is exact on input, slack 4 |s| from the shift and the exp.
template <class T>
SoftmaxOracle<T> plain_softmax(const LongMatrix& x) {
  return SoftmaxOracle<T>(x, real(4) * x.cwiseAbs().rowwise().maxCoeff());
}

// softmax(scale q k^T, causal bottom-right when asked) v, with tolerance.hpp's output
// bound 2 o_abs (2 slack + 2 Sk + 8) u + 2 min, o_abs = p |v|, and the logit slack
// (Dk + 2) |scale| |q| |k|^T + 4 |s| (its row maximum).
template <class T>
struct AttentionOracle {
  LongMatrix o, tol;
  AttentionOracle(const LongMatrix& q, const LongMatrix& k, const LongMatrix& v, real scale,
                  bool causal) {
    const index_t sq = q.rows(), sk = k.rows();
    LongMatrix s = scale * q * k.transpose();
    const LongMatrix slack =
        (real(q.cols() + 2) * std::fabs(scale) * (q.cwiseAbs() * k.cwiseAbs().transpose()) +
         real(4) * s.cwiseAbs())
            .rowwise()
            .maxCoeff();
    if (causal)  // row i sees keys j <= i + sk - sq
      for (index_t i = 0; i < sq; ++i)
        for (index_t j = std::max<index_t>(0, i + sk - sq + 1); j < sk; ++j)
          s(i, j) = -std::numeric_limits<real>::infinity();
    const SoftmaxOracle<T> p(s, slack);
    o = p.p * v;
    const LongMatrix o_abs = p.p * v.cwiseAbs();
    const Eigen::Array<real, Eigen::Dynamic, 1> relative =
        2 * ref::unit_roundoff<T>() * (real(2) * slack.array() + real(2 * sk + 8));
    tol = ((o_abs.array().colwise() * relative) + 2 * real(std::numeric_limits<T>::min())).matrix();
  }
};

struct TypeNames {
  template <class T>
  static std::string GetName(int) {
    return std::is_same_v<T, float> ? "float" : "double";
  }
};

template <class T>
class Eigen_ : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Eigen_, Types, TypeNames);

// ---------------------------------------------------------------------------------------
// view

// view() reads Eigen's storage in place: same data, extents and row stride; const storage
// gives a read-only view.
TYPED_TEST(Eigen_, ViewSharesStorageOfMatricesMapsAndBlocks) {
  using T = TypeParam;
  RowMatrix<T> m(7, 17);
  fill_random(m, 1);

  const attend::MatrixView<const T> whole = attend::eigen::view(std::as_const(m));
  EXPECT_EQ(whole.data, m.data());
  EXPECT_EQ(whole.rows, 7);
  EXPECT_EQ(whole.cols, 17);
  EXPECT_EQ(whole.stride, 17);

  const attend::MatrixView<T> block = attend::eigen::view(m.block(2, 3, 4, 5));
  EXPECT_EQ(block.data, &m(2, 3));
  EXPECT_EQ(block.rows, 4);
  EXPECT_EQ(block.cols, 5);
  EXPECT_EQ(block.stride, 17);
  block(1, 2) = T(42);
  EXPECT_EQ(m(3, 5), T(42));

  std::vector<T> storage(6 * 20);
  StridedMap<T> map(storage.data() + 1, 6, 16, Eigen::OuterStride<>(20));
  const attend::MatrixView<T> mapped = attend::eigen::view(map);
  EXPECT_EQ(mapped.data, storage.data() + 1);
  EXPECT_EQ(mapped.rows, 6);
  EXPECT_EQ(mapped.cols, 16);
  EXPECT_EQ(mapped.stride, 20);
  for (index_t i = 0; i < 6; ++i)
    for (index_t j = 0; j < 16; ++j) EXPECT_EQ(&mapped(i, j), &map(i, j));
}

// ---------------------------------------------------------------------------------------
// linear

TYPED_TEST(Eigen_, LinearMatchesEigenProductAcrossSizes) {
  using T = TypeParam;
  for (index_t m : {1, 7, 17, 63, 65, 129})
    for (index_t k : {1, 16, 64, 80, 128}) {
      SCOPED_TRACE("M=" + std::to_string(m) + " K=" + std::to_string(k));
      const index_t n = 17;
      RowMatrix<T> x(m, k), w(n, k), y(m, n);
      Vector<T> b(n);
      fill_random(x, 1), fill_random(w, 2), fill_random(b, 3);
      attend::eigen::linear(x, w, b, y);
      const LinearOracle<T> oracle(widen(x), widen(w), widen(b));
      EXPECT_TRUE(all_close(y, oracle.y, oracle.tol));
    }
}

TYPED_TEST(Eigen_, LinearWithoutBiasTakesAnEmptyVector) {
  using T = TypeParam;
  RowMatrix<T> x(17, 64), w(80, 64), y(17, 80);
  fill_random(x, 4), fill_random(w, 5);
  attend::eigen::linear(x, w, Vector<T>(), y);
  const LinearOracle<T> oracle(widen(x), widen(w), LongMatrix());
  EXPECT_TRUE(all_close(y, oracle.y, oracle.tol));
}

// Inputs as blocks and strided maps, the output as a block or a strided map of a larger
// buffer: nothing outside the output is written.
TYPED_TEST(Eigen_, LinearReadsAndWritesBlocksAndStridedMaps) {
  using T = TypeParam;
  RowMatrix<T> big_x(20, 70);
  fill_random(big_x, 6);
  std::vector<T> w_storage(16 * 70);
  StridedMap<T> w(w_storage.data(), 16, 64, Eigen::OuterStride<>(70));
  fill_random(w, 7);
  Vector<T> b(16);
  fill_random(b, 8);
  const auto x = big_x.block(2, 3, 17, 64);
  const LinearOracle<T> oracle(widen(x), widen(w), widen(b));

  Canvas<T> into_block(17, 16);
  attend::eigen::linear(x, w, b, into_block.block());
  EXPECT_TRUE(all_close(into_block.block(), oracle.y, oracle.tol));
  EXPECT_TRUE(into_block.untouched());

  std::vector<T> y_storage(17 * 19, testing_support::canary<T>());
  StridedMap<T> y(y_storage.data(), 17, 16, Eigen::OuterStride<>(19));
  attend::eigen::linear(x, w, b, y);
  EXPECT_TRUE(all_close(y, oracle.y, oracle.tol));
  for (index_t i = 0; i < 17; ++i)
    for (index_t j = 16; j < 19; ++j)
      EXPECT_EQ(y_storage[std::size_t(i * 19 + j)], testing_support::canary<T>());
}

// Column-major inputs (Eigen's default) and expressions are copied into row-major
// temporaries; the result is the same as from row-major storage, bit for bit.
TYPED_TEST(Eigen_, LinearAcceptsColumnMajorInputsAndExpressions) {
  using T = TypeParam;
  ColMatrix<T> x(17, 64), w(16, 64);
  Vector<T> b(16);
  fill_random(x, 9), fill_random(w, 10), fill_random(b, 11);
  const RowMatrix<T> x_rows = x, w_rows = w;
  RowMatrix<T> from_cols(17, 16), from_rows(17, 16), from_expr(17, 16);
  attend::eigen::linear(x, w, b, from_cols);
  attend::eigen::linear(x_rows, w_rows, b, from_rows);
  EXPECT_TRUE(from_cols == from_rows);
  const LinearOracle<T> oracle(widen(x), widen(w), widen(b));
  EXPECT_TRUE(all_close(from_cols, oracle.y, oracle.tol));

  // An expression: 2x, evaluated for the call (exact: doubling does not round).
  attend::eigen::linear(T(2) * x, w, b, from_expr);
  const LinearOracle<T> doubled(2 * widen(x), widen(w), widen(b));
  EXPECT_TRUE(all_close(from_expr, doubled.y, doubled.tol));
}

// ---------------------------------------------------------------------------------------
// softmax

TYPED_TEST(Eigen_, SoftmaxMatchesEigenRowSoftmaxAcrossSizes) {
  using T = TypeParam;
  for (index_t rows : {1, 7, 17})
    for (index_t cols : {1, 7, 17, 63, 65, 129}) {
      SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(cols));
      RowMatrix<T> x(rows, cols), y(rows, cols);
      fill_random(x, 12, -8, 8);
      attend::eigen::softmax(x, y);
      const SoftmaxOracle<T> oracle = plain_softmax<T>(widen(x));
      EXPECT_TRUE(all_close(y, oracle.p, oracle.tol));
    }
}

// In place, into a block, and from a column-major matrix or a strided map.
TYPED_TEST(Eigen_, SoftmaxInPlaceIntoBlocksAndFromColumnMajor) {
  using T = TypeParam;
  RowMatrix<T> x(17, 65);
  fill_random(x, 13, -8, 8);
  const SoftmaxOracle<T> oracle = plain_softmax<T>(widen(x));

  RowMatrix<T> in_place = x;
  attend::eigen::softmax(in_place, in_place);
  EXPECT_TRUE(all_close(in_place, oracle.p, oracle.tol));

  Canvas<T> canvas(17, 65);
  attend::eigen::softmax(x, canvas.block());
  EXPECT_TRUE(all_close(canvas.block(), oracle.p, oracle.tol));
  EXPECT_TRUE(canvas.untouched());

  const ColMatrix<T> cols = x;
  RowMatrix<T> from_cols(17, 65);
  attend::eigen::softmax(cols, from_cols);
  EXPECT_TRUE(from_cols == in_place);

  std::vector<T> storage(17 * 70);
  StridedMap<T> map(storage.data(), 17, 65, Eigen::OuterStride<>(70));
  map = x;
  RowMatrix<T> from_map(17, 65);
  attend::eigen::softmax(map, from_map);
  EXPECT_TRUE(from_map == in_place);
}

// -inf logits get exactly zero probability, a row of nothing but -inf has no mass at all
// (exact zeros, not NaN), and a NaN poisons its own row only.
TYPED_TEST(Eigen_, SoftmaxHandlesInfiniteAndNaNLogitsRowByRow) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity();
  RowMatrix<T> x(3, 17), y(3, 17);
  fill_random(x, 28, -8, 8);
  x(0, 3) = -inf, x(0, 9) = -inf;
  x.row(1).setConstant(-inf);
  x(2, 5) = std::numeric_limits<T>::quiet_NaN();
  attend::eigen::softmax(x, y);

  // Row 0: the oracle's exp(-inf - max) is 0 too; the slack is that of the finite logits.
  const LongMatrix row = widen(x.topRows(1));
  const real largest =
      row.cwiseAbs().unaryExpr([](real a) { return std::isinf(a) ? 0 : a; }).maxCoeff();
  const SoftmaxOracle<T> oracle(row, LongMatrix::Constant(1, 1, 4 * largest));
  EXPECT_TRUE(all_close(y.topRows(1), oracle.p, oracle.tol));
  EXPECT_EQ(y(0, 3), T(0));
  EXPECT_EQ(y(0, 9), T(0));
  EXPECT_TRUE((y.row(1).array() == T(0)).all());
  EXPECT_TRUE(y.row(2).array().isNaN().all());
}

// ---------------------------------------------------------------------------------------
// attention

TYPED_TEST(Eigen_, AttentionMatchesEigenAcrossSizes) {
  using T = TypeParam;
  for (bool causal : {false, true})
    for (index_t s : {1, 7, 17, 63, 65, 129}) {
      SCOPED_TRACE("S=" + std::to_string(s) + (causal ? " causal" : ""));
      RowMatrix<T> q(s, 64), k(s, 64), v(s, 80), o(s, 80);
      fill_random(q, 14), fill_random(k, 15), fill_random(v, 16);
      attend::AttentionOptions opts;
      opts.causal = causal;
      attend::eigen::attention(q, k, v, o, opts);
      const AttentionOracle<T> oracle(widen(q), widen(k), widen(v), 1 / std::sqrt(real(64)),
                                      causal);
      EXPECT_TRUE(all_close(o, oracle.o, oracle.tol));
    }
}

TYPED_TEST(Eigen_, AttentionMatchesEigenAcrossHeadDims) {
  using T = TypeParam;
  for (index_t d : {1, 16, 64, 80, 128}) {
    SCOPED_TRACE("D=" + std::to_string(d));
    RowMatrix<T> q(17, d), k(33, d), v(33, d), o(17, d);
    fill_random(q, 17), fill_random(k, 18), fill_random(v, 19);
    attend::eigen::attention(q, k, v, o);
    const AttentionOracle<T> oracle(widen(q), widen(k), widen(v), 1 / std::sqrt(real(d)), false);
    EXPECT_TRUE(all_close(o, oracle.o, oracle.tol));
  }
}

// q, k, v as blocks, strided maps and column-major copies; o as a block of a larger buffer.
TYPED_TEST(Eigen_, AttentionReadsBlocksMapsAndColumnMajorInputs) {
  using T = TypeParam;
  RowMatrix<T> big_q(20, 20);
  fill_random(big_q, 20);
  const auto q = big_q.block(1, 2, 17, 16);
  std::vector<T> k_storage(33 * 21);
  StridedMap<T> k(k_storage.data(), 33, 16, Eigen::OuterStride<>(21));
  fill_random(k, 21);
  ColMatrix<T> v(33, 7);
  fill_random(v, 22);
  attend::AttentionOptions opts;
  opts.causal = true;  // 17 queries, 33 keys, bottom-right: the last query sees every key
  opts.scale = 0.7;

  Canvas<T> o(17, 7);
  attend::eigen::attention(q, k, v, o.block(), opts);
  const AttentionOracle<T> oracle(widen(q), widen(k), widen(v), 0.7L, true);
  EXPECT_TRUE(all_close(o.block(), oracle.o, oracle.tol));
  EXPECT_TRUE(o.untouched());
}

// The options' per-batch and per-head arrays have one entry for the adapter's one head:
// held to the oracle ref::attention with key lengths, ALiBi, softcap, sinks, bias and mask.
TYPED_TEST(Eigen_, AttentionTakesEveryOptionForOneHead) {
  using T = TypeParam;
  const index_t sq = 17, sk = 33, dk = 16, dv = 16;
  RowMatrix<T> q(sq, dk), k(sk, dk), v(sk, dv), o(sq, dv);
  fill_random(q, 23), fill_random(k, 24), fill_random(v, 25);
  const std::vector<std::int32_t> lengths{29};
  const std::vector<float> slope{0.25f}, sink{0.5f};
  testing_support::TensorBuffer<float> bias(1, 1, sq, sk);
  bias.fill_random(26);
  std::unique_ptr<bool[]> mask(new bool[std::size_t(sq * sk)]);
  for (index_t i = 0; i < sq * sk; ++i) mask[i] = (i * 7) % 5 != 0;
  attend::AttentionOptions opts;
  opts.causal = true;
  opts.window.left = 12;
  opts.key_lengths = lengths;
  opts.alibi_slopes = slope;
  opts.softcap = 5.0;
  opts.sinks = sink;
  opts.bias = bias.in();
  opts.mask = attend::TensorView<const bool>::bhsd(mask.get(), 1, 1, sq, sk);
  attend::eigen::attention(q, k, v, o, opts);

  auto as_tensor = [](const auto& m) {
    using E = typename std::decay_t<decltype(m)>::Scalar;
    return attend::TensorView<const E>{m.data(), 1, 1, m.rows(), m.cols(), 0, 0, m.cols()};
  };
  const ref::Attention r = ref::attention(ref::load<T>(as_tensor(q)), ref::load<T>(as_tensor(k)),
                                          ref::load<T>(as_tensor(v)), opts);
  EXPECT_TRUE(ref::output_matches<T>(as_tensor(o), r));
}

// ---------------------------------------------------------------------------------------
// Errors come from the wrapped calls: std::invalid_argument naming the argument, and the
// output untouched.

template <class F, class Out>
void expect_rejected(F call, const std::string& what, const Out& out) {
  const Out before = out;
  try {
    call();
    ADD_FAILURE() << "accepted a bad " << what;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
  EXPECT_TRUE(out == before) << "output changed";
}

TYPED_TEST(Eigen_, RejectsMismatchedShapesWithoutWriting) {
  using T = TypeParam;
  RowMatrix<T> x(7, 16), w(8, 15), y(7, 8), q(7, 16), k(9, 15), v(9, 4), o(7, 4), p(7, 9);
  Vector<T> b(8);
  for (RowMatrix<T>* m : {&x, &w, &q, &k, &v}) fill_random(*m, 27);
  b.setOnes(), y.setConstant(T(3)), o.setConstant(T(3)), p.setConstant(T(3));
  expect_rejected([&] { attend::eigen::linear(x, w, b, y); }, "attend::linear: w: ", y);
  const RowMatrix<T> w_ok = RowMatrix<T>::Ones(8, 16);
  const Vector<T> b_long = Vector<T>::Ones(9);
  expect_rejected([&] { attend::eigen::linear(x, w_ok, b_long, y); },
                  "attend::linear: bias.size: ", y);
  expect_rejected([&] { attend::eigen::softmax(x, p); }, "attend::softmax: y: ", p);
  expect_rejected([&] { attend::eigen::attention(q, k, v, o); }, "attend::attention: k: ", o);
}

}  // namespace
