// attend/merge.hpp: O = P V per head and for all heads (grouped-query), against the oracle
// and Eigen.
//
// Tolerance. o_id is a sum of Sk products p_ij v_jd: its rounding error is at most about
// Sk u sum_j |p_ij v_jd|. The oracle's slack, (Sk + 2) sum |p v|, bounds it, and like
// tolerance.hpp we allow twice that: |o - o_ref| <= 2 (Sk + 2) sum_j |p_ij v_jd| u.
#include "attend/merge.hpp"

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "support/buffers.hpp"
#include "support/checks.hpp"
#include "support/reference.hpp"
#include "support/tolerance.hpp"

namespace {

using attend::index_t;
using attend::MatrixView;
using attend::TensorView;
using testing_support::as_tensor;
using testing_support::FloatingTypes;
using testing_support::Layout;
using testing_support::MatrixBuffer;
using testing_support::rejects;
using testing_support::TensorBuffer;
using testing_support::TypeNames;

// The oracle for one head: p [Sq, Sk] . v [Sk, Dv], i.e. linear(p, v^T) with its slack.
ref::Product merged(const ref::Matrix& p, const ref::Matrix& v) {
  return ref::linear(p, ref::transpose(v), {});
}

template <class T>
::testing::AssertionResult head_matches(MatrixView<const T> o, const ref::Product& r) {
  const ref::real u = ref::unit_roundoff<T>();
  const ref::Tensor slack = as_tensor(r.slack);
  return ref::all_close<T>(
      as_tensor(o), as_tensor(r.y),
      [&](index_t, index_t, index_t i, index_t d) { return 2 * slack(0, 0, i, d) * u; });
}

template <class T>
class Merge : public ::testing::Test {};
TYPED_TEST_SUITE(Merge, FloatingTypes, TypeNames);

TYPED_TEST(Merge, OneHeadMatchesTheOracle) {
  using T = TypeParam;
  struct Shape {
    index_t sq, sk, dv;
  };
  std::vector<Shape> shapes;
  for (index_t n : {1, 7, 17, 63, 65, 129}) shapes.push_back({n, n, 64});
  for (index_t d : {1, 16, 64, 80, 128}) shapes.push_back({7, 17, d});
  std::uint32_t seed = 1;
  for (const Shape& sh : shapes) {
    SCOPED_TRACE("Sq " + std::to_string(sh.sq) + ", Sk " + std::to_string(sh.sk) + ", Dv " +
                 std::to_string(sh.dv));
    MatrixBuffer<T> p(sh.sq, sh.sk), v(sh.sk, sh.dv), o(sh.sq, sh.dv);
    p.fill_random(seed++, 0, 1);  // weights as a softmax makes them: non-negative
    v.fill_random(seed++);
    attend::merge_values<T>(p.in(), v.in(), o.view);
    EXPECT_TRUE(head_matches(o.in(), merged(ref::load(p.in()), ref::load(v.in()))));
    EXPECT_TRUE(o.canaries_intact());
  }
}

TYPED_TEST(Merge, AgreesWithEigen) {
  using T = TypeParam;
  using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Map = Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>>;
  constexpr index_t Sq = 17, Sk = 65, Dv = 80;
  MatrixBuffer<T> p(Sq, Sk), v(Sk, Dv), o(Sq, Dv);
  p.fill_random(3, 0, 1);
  v.fill_random(4);
  attend::merge_values<T>(p.in(), v.in(), o.view);
  const RowMatrix eigen = Map(p.view.data, Sq, Sk, Eigen::OuterStride<>(p.view.stride)) *
                          Map(v.view.data, Sk, Dv, Eigen::OuterStride<>(v.view.stride));
  // Each is within the oracle's slack of the exact product, so within twice it of the other.
  const ref::Product r = merged(ref::load(p.in()), ref::load(v.in()));
  const ref::real u = ref::unit_roundoff<T>();
  for (index_t i = 0; i < Sq; ++i)
    for (index_t d = 0; d < Dv; ++d)
      ASSERT_LE(std::fabs(ref::real(o.view(i, d)) - ref::real(eigen(i, d))), 4 * r.slack(i, d) * u)
          << "at [" << i << ", " << d << "]";
}

TYPED_TEST(Merge, AllHeadsReadTheirValueHeadUnderGroupedQueries) {
  using T = TypeParam;
  constexpr index_t B = 2, Sk = 17, Dv = 16;
  std::uint32_t seed = 10;
  struct Heads {
    index_t q, kv;
  };
  for (index_t Sq : {1, 7})
    for (Heads heads : {Heads{4, 4}, Heads{6, 2}, Heads{3, 1}})
      for (Layout layout : {Layout::bhsd, Layout::bshd}) {
        SCOPED_TRACE("Sq " + std::to_string(Sq) + ", Hq " + std::to_string(heads.q) + ", Hkv " +
                     std::to_string(heads.kv) + ", " + testing_support::name(layout));
        TensorBuffer<T> p(B, heads.q, Sq, Sk, layout), v(B, heads.kv, Sk, Dv, layout),
            o(B, heads.q, Sq, Dv, layout);
        p.fill_random(seed++, 0, 1);
        v.fill_random(seed++);
        attend::merge_values<T>(p.in(), v.in(), o.view);
        const index_t group = heads.q / heads.kv;
        for (index_t b = 0; b < B; ++b)
          for (index_t h = 0; h < heads.q; ++h) {
            EXPECT_TRUE(head_matches<T>(
                o.view.head(b, h),
                merged(ref::load(p.in().head(b, h)), ref::load(v.in().head(b, h / group)))))
                << "batch " << b << ", head " << h;
            // Heads whose rows stack are one product for their group: the same bits as a
            // product per head.
            MatrixBuffer<T> one(Sq, Dv);
            attend::merge_values<T>(p.in().head(b, h), v.in().head(b, h / group), one.view);
            EXPECT_TRUE(testing_support::same_bits<T>(one.view, o.view.head(b, h)))
                << "batch " << b << ", head " << h;
          }
        EXPECT_TRUE(o.canaries_intact());
      }
}

TYPED_TEST(Merge, NaNInAProbabilityRowSpoilsExactlyThatOutputRow) {
  using T = TypeParam;
  MatrixBuffer<T> p(5, 6), v(6, 4), o(5, 4);
  p.fill_random(5, 0, 1);
  v.fill_random(6);
  p.view(3, 2) = std::numeric_limits<T>::quiet_NaN();
  attend::merge_values<T>(p.in(), v.in(), o.view);
  for (index_t i = 0; i < 5; ++i)
    for (index_t d = 0; d < 4; ++d)
      EXPECT_EQ(std::isnan(o.view(i, d)), i == 3) << "at [" << i << ", " << d << "]";
}

TYPED_TEST(Merge, ZeroSizedExtentsAreAllowed) {
  using T = TypeParam;
  // No keys: every output is an empty sum, exactly zero.
  MatrixBuffer<T> p(3, 0), v(0, 4), o(3, 4);
  attend::merge_values<T>(p.in(), v.in(), o.view);
  for (index_t i = 0; i < 3; ++i)
    for (index_t d = 0; d < 4; ++d) EXPECT_EQ(o.view(i, d), T(0));
  TensorBuffer<T> pt(2, 2, 3, 0), vt(2, 1, 0, 4), ot(2, 2, 3, 4);
  attend::merge_values<T>(pt.in(), vt.in(), ot.view);
  for (index_t b = 0; b < 2; ++b)
    for (index_t h = 0; h < 2; ++h)
      for (index_t i = 0; i < 3; ++i)
        for (index_t d = 0; d < 4; ++d) EXPECT_EQ(ot.view.row(b, h, i)[d], T(0));
  // No queries, no value columns: nothing to write.
  MatrixBuffer<T> p0(0, 5), v5(5, 4), o0(0, 4), p5(3, 5), v_no_cols(5, 0), o_no_cols(3, 0);
  attend::merge_values<T>(p0.in(), v5.in(), o0.view);
  attend::merge_values<T>(p5.in(), v_no_cols.in(), o_no_cols.view);
  EXPECT_TRUE(o0.canaries_intact() && o_no_cols.canaries_intact());
}

TYPED_TEST(Merge, OneHeadRefusesEveryInvalidArgumentWithoutWriting) {
  using T = TypeParam;
  constexpr index_t Sq = 4, Sk = 5, Dv = 6;
  MatrixBuffer<T> p(Sq, Sk), v(Sk, Dv), o(Sq, Dv);
  p.fill_random(1, 0, 1);
  v.fill_random(2);
  auto refused = [&](const std::string& argument, const std::string& detail, MatrixView<const T> p_,
                     MatrixView<const T> v_, MatrixView<T> o_) {
    return rejects(
        {"merge_values", argument, detail}, [&] { attend::merge_values<T>(p_, v_, o_); }, o.storage,
        p.storage, v.storage);
  };
  const MatrixView<const T> pv = p.in(), vv = v.in();
  const MatrixView<T> ov = o.view;
  EXPECT_TRUE(refused("p", "null data", {nullptr, Sq, Sk, Sk}, vv, ov));
  EXPECT_TRUE(refused("p", "row stride", {pv.data, Sq, Sk, Sk - 1}, vv, ov));
  EXPECT_TRUE(refused("p", "negative extent", {pv.data, -1, Sk, Sk}, vv, ov));
  EXPECT_TRUE(refused("v", "expected shape [5, *]", pv, vv.block(0, Sk - 1, 0, Dv), ov));
  EXPECT_TRUE(refused("v", "null data", pv, {nullptr, Sk, Dv, Dv}, ov));
  EXPECT_TRUE(refused("o", "expected shape [4, 6]", pv, vv, ov.block(0, Sq - 1, 0, Dv)));
  EXPECT_TRUE(refused("o", "expected shape [4, 6]", pv, vv, ov.block(0, Sq, 0, Dv - 1)));
  EXPECT_TRUE(refused("o", "row stride", pv, vv, {ov.data, Sq, Dv, Dv - 1}));
  EXPECT_TRUE(refused("o", "null data", pv, vv, {nullptr, Sq, Dv, Dv}));
  EXPECT_TRUE(refused("o", "overlaps p", pv, vv, {p.view.row(1), Sq, Dv, Dv}));
  EXPECT_TRUE(refused("o", "overlaps v", pv, vv, {v.view.data, Sq, Dv, Dv}));
}

TYPED_TEST(Merge, AllHeadsRefuseEveryInvalidArgumentWithoutWriting) {
  using T = TypeParam;
  constexpr index_t B = 2, Hq = 4, Hkv = 2, Sq = 3, Sk = 5, Dv = 6;
  TensorBuffer<T> p(B, Hq, Sq, Sk), v(B, Hkv, Sk, Dv), o(B, Hq, Sq, Dv);
  p.fill_random(1, 0, 1);
  v.fill_random(2);
  auto refused = [&](const std::string& argument, const std::string& detail, TensorView<const T> p_,
                     TensorView<const T> v_, TensorView<T> o_) {
    return rejects(
        {"merge_values", argument, detail}, [&] { attend::merge_values<T>(p_, v_, o_); }, o.storage,
        p.storage, v.storage);
  };
  const TensorView<const T> pv = p.in(), vv = v.in();
  const TensorView<T> ov = o.view;
  TensorView<const T> bad = pv;
  bad.seq_stride = Sk - 1;
  EXPECT_TRUE(refused("p", "seq stride", bad, vv, ov));
  bad = pv;
  bad.head_stride = -3;
  EXPECT_TRUE(refused("p", "negative stride", bad, vv, ov));
  bad = vv;
  bad.batch = 1;
  EXPECT_TRUE(refused("v", "expected shape [2, *, 5, *]", pv, bad, ov));
  bad = vv;
  bad.seq = Sk - 1;
  EXPECT_TRUE(refused("v", "expected shape [2, *, 5, *]", pv, bad, ov));
  TensorBuffer<T> v3(B, 3, Sk, Dv), v0(B, 0, Sk, Dv);
  EXPECT_TRUE(refused("v.heads", "divisor", pv, v3.in(), ov));
  EXPECT_TRUE(refused("v.heads", "at least one head", pv, v0.in(), ov));
  TensorView<T> o_bad = ov;
  o_bad.dim = Dv - 1;
  EXPECT_TRUE(refused("o", "expected shape [2, 4, 3, 6]", pv, vv, o_bad));
  o_bad = ov;
  o_bad.batch_stride = 0;  // both batches into one: elements would be written twice
  EXPECT_TRUE(refused("o", "overlap", pv, vv, o_bad));
  o_bad = ov;
  o_bad.data = nullptr;
  EXPECT_TRUE(refused("o", "null data", pv, vv, o_bad));
  const auto o_on_p = TensorView<T>::bhsd(p.storage.data() + 1, B, Hq, Sq, Dv);
  EXPECT_TRUE(refused("o", "overlaps p", pv, vv, o_on_p));
  const auto o_on_v = TensorView<T>::bhsd(v.storage.data(), B, Hq, Sq, Dv);
  EXPECT_TRUE(refused("o", "overlaps v", pv, vv, o_on_v));
}

}  // namespace
