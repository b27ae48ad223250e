// attend/scores.hpp: S = scale * Q K^T per head and for all heads (grouped-query), against
// dot products in extended precision and Eigen.
//
// Tolerance. s_ij is a dot product of Dk terms, then one product with the scale (itself
// rounded to the accumulation type): its rounding error is at most (Dk + 2) |scale|
// sum_d |q_d k_d| u, the oracle's slack; like tolerance.hpp we allow twice that.
#include "attend/scores.hpp"

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

// One head of the oracle: s = scale * q k^T with the slack of each entry.
struct Expected {
  ref::Tensor s, slack;
};
Expected expected_scores(const ref::Matrix& q, const ref::Matrix& k, double scale) {
  const ref::Product qk = ref::linear(q, k, {});  // q . k^T, slack (Dk + 2) sum |q k|
  Expected e{as_tensor(qk.y), as_tensor(qk.slack)};
  for (auto& x : e.s.v) x *= ref::real(scale);
  for (auto& x : e.slack.v) x *= std::fabs(ref::real(scale));
  return e;
}

template <class T>
::testing::AssertionResult head_matches(MatrixView<const T> s, const Expected& e) {
  const ref::real u = ref::unit_roundoff<T>();
  return ref::all_close<T>(as_tensor(s), e.s, [&](index_t, index_t, index_t i, index_t j) {
    return 2 * e.slack(0, 0, i, j) * u;
  });
}

template <class T>
ref::Matrix head(TensorView<const T> t, index_t b, index_t h) {
  return ref::load<T>(t.head(b, h));
}

template <class T>
class Scores : public ::testing::Test {};
TYPED_TEST_SUITE(Scores, FloatingTypes, TypeNames);

TYPED_TEST(Scores, OneHeadMatchesScaledDotProducts) {
  using T = TypeParam;
  struct Shape {
    index_t sq, sk, dk;
  };
  std::vector<Shape> shapes;
  for (index_t n : {1, 7, 17, 63, 65, 129}) shapes.push_back({n, n == 1 ? 1 : n - 2, 64});
  for (index_t d : {1, 16, 64, 80, 128}) shapes.push_back({7, 17, d});
  std::uint32_t seed = 1;
  for (const Shape& sh : shapes)
    for (double scale : {attend::default_scale(sh.dk), 0.5, -3.0}) {
      SCOPED_TRACE("Sq " + std::to_string(sh.sq) + ", Sk " + std::to_string(sh.sk) + ", Dk " +
                   std::to_string(sh.dk) + ", scale " + std::to_string(scale));
      MatrixBuffer<T> q(sh.sq, sh.dk), k(sh.sk, sh.dk), s(sh.sq, sh.sk);
      q.fill_random(seed++);
      k.fill_random(seed++);
      attend::scores<T>(q.in(), k.in(), scale, s.view);
      EXPECT_TRUE(
          head_matches(s.in(), expected_scores(ref::load(q.in()), ref::load(k.in()), scale)));
      EXPECT_TRUE(s.canaries_intact());
    }
}

TYPED_TEST(Scores, AgreesWithEigen) {
  using T = TypeParam;
  using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Map = Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>>;
  constexpr index_t Sq = 17, Sk = 65, Dk = 80;
  const double scale = attend::default_scale(Dk);
  MatrixBuffer<T> q(Sq, Dk), k(Sk, Dk), s(Sq, Sk);
  q.fill_random(3);
  k.fill_random(4);
  attend::scores<T>(q.in(), k.in(), scale, s.view);
  const RowMatrix eigen =
      T(scale) * (Map(q.view.data, Sq, Dk, Eigen::OuterStride<>(q.view.stride)) *
                  Map(k.view.data, Sk, Dk, Eigen::OuterStride<>(k.view.stride)).transpose());
  // Each is within the oracle's slack of the exact product, so within twice it of the other.
  const Expected e = expected_scores(ref::load(q.in()), ref::load(k.in()), scale);
  const ref::real u = ref::unit_roundoff<T>();
  for (index_t i = 0; i < Sq; ++i)
    for (index_t j = 0; j < Sk; ++j)
      ASSERT_LE(std::fabs(ref::real(s.view(i, j)) - ref::real(eigen(i, j))),
                4 * e.slack(0, 0, i, j) * u)
          << "at [" << i << ", " << j << "]";
}

TYPED_TEST(Scores, AllHeadsReadTheirKeyHeadUnderGroupedQueries) {
  using T = TypeParam;
  constexpr index_t B = 2, Sk = 17, Dk = 16;
  const double scale = 0.25;
  std::uint32_t seed = 10;
  struct Heads {
    index_t q, kv;
  };
  for (index_t Sq : {1, 7})
    for (Heads heads : {Heads{4, 4}, Heads{6, 2}, Heads{3, 1}})
      for (Layout layout : {Layout::bhsd, Layout::bshd}) {
        SCOPED_TRACE("Sq " + std::to_string(Sq) + ", Hq " + std::to_string(heads.q) + ", Hkv " +
                     std::to_string(heads.kv) + ", " + testing_support::name(layout));
        TensorBuffer<T> q(B, heads.q, Sq, Dk, layout), k(B, heads.kv, Sk, Dk, layout),
            s(B, heads.q, Sq, Sk, layout);
        q.fill_random(seed++);
        k.fill_random(seed++);
        attend::scores<T>(q.in(), k.in(), scale, s.view);
        const index_t group = heads.q / heads.kv;
        for (index_t b = 0; b < B; ++b)
          for (index_t h = 0; h < heads.q; ++h) {
            EXPECT_TRUE(head_matches<T>(
                s.view.head(b, h),
                expected_scores(head(q.in(), b, h), head(k.in(), b, h / group), scale)))
                << "batch " << b << ", head " << h;
            // Heads whose rows stack are one product for their group: the same bits as a
            // product per head.
            MatrixBuffer<T> one(Sq, Sk);
            attend::scores<T>(q.in().head(b, h), k.in().head(b, h / group), scale, one.view);
            EXPECT_TRUE(testing_support::same_bits<T>(one.view, s.view.head(b, h)))
                << "batch " << b << ", head " << h;
          }
        EXPECT_TRUE(s.canaries_intact());
      }
}

TYPED_TEST(Scores, HugeScaleGivesInfinitiesNotNaN) {
  using T = TypeParam;
  // Small integer data: every dot product is an exact integer, so which entries overflow is
  // known: |scale * dot| > max for |dot| >= 5, finite and exact for |dot| <= 3.
  const T scale = std::numeric_limits<T>::max() / 4;
  const std::vector<T> q{1, 2, -1, 0, 0, 1}, k{3, 1, 1, 0, 0, -1, -2, 2, 1};
  std::vector<T> s(6);
  attend::scores<T>(MatrixView<const T>(q.data(), 2, 3), MatrixView<const T>(k.data(), 3, 3),
                    double(scale), MatrixView<T>(s.data(), 2, 3));
  constexpr T inf = std::numeric_limits<T>::infinity();
  // dots [[4, 1, 1], [1, -1, 1]]: 4 * (max / 4) is max itself, not past it.
  EXPECT_EQ(s, (std::vector<T>{scale * 4, scale, scale, scale, -scale, scale}));
  const std::vector<T> q_big{3, 2, 0, -3, -2, 0};  // dots [[11, 0, -2], [-11, 0, 2]]
  attend::scores<T>(MatrixView<const T>(q_big.data(), 2, 3), MatrixView<const T>(k.data(), 3, 3),
                    double(scale), MatrixView<T>(s.data(), 2, 3));
  EXPECT_EQ(s, (std::vector<T>{inf, 0, -scale * 2, -inf, 0, scale * 2}));
  for (T x : s) EXPECT_FALSE(std::isnan(x));
}

TYPED_TEST(Scores, NaNInAQueryOrKeyRowSpoilsExactlyItsRowOrColumn) {
  using T = TypeParam;
  constexpr index_t Sq = 5, Sk = 6, Dk = 8;
  MatrixBuffer<T> q(Sq, Dk), k(Sk, Dk), s(Sq, Sk);
  q.fill_random(5);
  k.fill_random(6);
  q.view(2, 3) = std::numeric_limits<T>::quiet_NaN();
  k.view(4, 0) = std::numeric_limits<T>::quiet_NaN();
  attend::scores<T>(q.in(), k.in(), 1.0, s.view);
  for (index_t i = 0; i < Sq; ++i)
    for (index_t j = 0; j < Sk; ++j)
      EXPECT_EQ(std::isnan(s.view(i, j)), i == 2 || j == 4) << "at [" << i << ", " << j << "]";
}

TYPED_TEST(Scores, ZeroSizedExtentsAreAllowed) {
  using T = TypeParam;
  // Dk = 0: every dot product is empty, exactly zero.
  MatrixBuffer<T> q(3, 0), k(4, 0), s(3, 4);
  attend::scores<T>(q.in(), k.in(), 0.5, s.view);
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 4; ++j) EXPECT_EQ(s.view(i, j), T(0));
  // No queries, no keys, no batch: nothing to write.
  MatrixBuffer<T> q0(0, 8), k8(4, 8), s0(0, 4), q8(3, 8), k0(0, 8), s_no_keys(3, 0);
  attend::scores<T>(q0.in(), k8.in(), 0.5, s0.view);
  attend::scores<T>(q8.in(), k0.in(), 0.5, s_no_keys.view);
  EXPECT_TRUE(s0.canaries_intact() && s_no_keys.canaries_intact());
  TensorBuffer<T> qt(0, 2, 3, 8), kt(0, 1, 4, 8), st(0, 2, 3, 4);
  attend::scores<T>(qt.in(), kt.in(), 0.5, st.view);
  EXPECT_TRUE(st.canaries_intact());
}

TYPED_TEST(Scores, OneHeadRefusesEveryInvalidArgumentWithoutWriting) {
  using T = TypeParam;
  constexpr index_t Sq = 4, Sk = 5, Dk = 6;
  MatrixBuffer<T> q(Sq, Dk), k(Sk, Dk), s(Sq, Sk);
  q.fill_random(1);
  k.fill_random(2);
  auto refused = [&](const std::string& argument, const std::string& detail, MatrixView<const T> q_,
                     MatrixView<const T> k_, double scale, MatrixView<T> s_) {
    return rejects(
        {"scores", argument, detail}, [&] { attend::scores<T>(q_, k_, scale, s_); }, s.storage,
        q.storage, k.storage);
  };
  const MatrixView<const T> qv = q.in(), kv = k.in();
  const MatrixView<T> sv = s.view;
  for (double scale :
       {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()})
    EXPECT_TRUE(refused("scale", "finite", qv, kv, scale, sv));
  EXPECT_TRUE(refused("q", "null data", {nullptr, Sq, Dk, Dk}, kv, 1, sv));
  EXPECT_TRUE(refused("q", "row stride", {qv.data, Sq, Dk, 2}, kv, 1, sv));
  EXPECT_TRUE(refused("q", "negative extent", {qv.data, Sq, -1, Dk}, kv, 1, sv));
  EXPECT_TRUE(refused("k", "expected shape [*, 6]", qv, kv.block(0, Sk, 0, Dk - 1), 1, sv));
  EXPECT_TRUE(refused("k", "null data", qv, {nullptr, Sk, Dk, Dk}, 1, sv));
  EXPECT_TRUE(refused("s", "expected shape [4, 5]", qv, kv, 1, sv.block(0, Sq, 0, Sk - 1)));
  EXPECT_TRUE(refused("s", "expected shape [4, 4]", qv, kv.block(0, Sk - 1, 0, Dk), 1, sv));
  EXPECT_TRUE(refused("s", "row stride", qv, kv, 1, {sv.data, Sq, Sk, Sk - 1}));
  EXPECT_TRUE(refused("s", "null data", qv, kv, 1, {nullptr, Sq, Sk, Sk}));
  EXPECT_TRUE(refused("s", "overlaps q", qv, kv, 1, {q.view.row(1), Sq, Sk, Sk}));
  EXPECT_TRUE(refused("s", "overlaps k", qv, kv, 1, {k.view.data, Sq, Sk, Sk}));
}

TYPED_TEST(Scores, AllHeadsRefuseEveryInvalidArgumentWithoutWriting) {
  using T = TypeParam;
  constexpr index_t B = 2, Hq = 4, Hkv = 2, Sq = 3, Sk = 5, Dk = 6;
  TensorBuffer<T> q(B, Hq, Sq, Dk), k(B, Hkv, Sk, Dk), s(B, Hq, Sq, Sk);
  q.fill_random(1);
  k.fill_random(2);
  auto refused = [&](const std::string& argument, const std::string& detail, TensorView<const T> q_,
                     TensorView<const T> k_, TensorView<T> s_) {
    return rejects(
        {"scores", argument, detail}, [&] { attend::scores<T>(q_, k_, 1.0, s_); }, s.storage,
        q.storage, k.storage);
  };
  const TensorView<const T> qv = q.in(), kv = k.in();
  const TensorView<T> sv = s.view;
  EXPECT_TRUE(rejects(
      {"scores", "scale", ""},
      [&] { attend::scores<T>(qv, kv, std::numeric_limits<double>::infinity(), sv); }, s.storage));
  TensorView<const T> bad = qv;
  bad.seq_stride = Dk - 1;
  EXPECT_TRUE(refused("q", "seq stride", bad, kv, sv));
  bad = qv;
  bad.batch_stride = -1;
  EXPECT_TRUE(refused("q", "negative stride", bad, kv, sv));
  bad = kv;
  bad.batch = 1;
  EXPECT_TRUE(refused("k", "expected shape [2, *, *, 6]", qv, bad, sv));
  bad = kv;
  bad.dim = Dk - 1;
  EXPECT_TRUE(refused("k", "expected shape [2, *, *, 6]", qv, bad, sv));
  TensorBuffer<T> k3(B, 3, Sk, Dk), k0(B, 0, Sk, Dk);
  EXPECT_TRUE(refused("k.heads", "divisor", qv, k3.in(), sv));
  EXPECT_TRUE(refused("k.heads", "at least one head", qv, k0.in(), sv));
  TensorView<T> s_bad = sv;
  s_bad.dim = Sk - 1;
  EXPECT_TRUE(refused("s", "expected shape [2, 4, 3, 5]", qv, kv, s_bad));
  s_bad = sv;
  s_bad.head_stride = 0;  // all heads into one: elements would be written twice
  EXPECT_TRUE(refused("s", "overlap", qv, kv, s_bad));
  const auto s_on_q = TensorView<T>::bhsd(q.storage.data() + 2, B, Hq, Sq, Sk);
  EXPECT_TRUE(refused("s", "overlaps q", qv, kv, s_on_q));
  const auto s_on_k = TensorView<T>::bhsd(k.storage.data(), B, Hq, Sq, Sk);
  EXPECT_TRUE(refused("s", "overlaps k", qv, kv, s_on_k));
}

}  // namespace
