// attend/linear.hpp: linear, project_heads, project_qkv and project_output against the
// oracle (ref::linear) and Eigen.
//
// Tolerance. Each output is a sum of K products plus a bias; in any order of summation its
// rounding error is at most about (K + 1) u sum_k |x_k w_k| + u |b|. ref::linear's slack,
// (K + 2) sum |x w| + 2 |b|, bounds that; like tolerance.hpp we allow twice it:
// |y - y_ref| <= 2 slack u. Eigen's product obeys the same bound, so the two libraries are
// within twice that of each other: |y - y_eigen| <= 4 slack u.
#include "attend/linear.hpp"

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "support/buffers.hpp"
#include "support/checks.hpp"
#include "support/reference.hpp"
#include "support/tolerance.hpp"

namespace {

using attend::index_t;
using attend::MatrixView;
using attend::QkvWeights;
using attend::Span;
using attend::TensorView;
using attend::WeightLayout;
using testing_support::as_tensor;
using testing_support::FloatingTypes;
using testing_support::Layout;
using testing_support::MatrixBuffer;
using testing_support::random_vector;
using testing_support::rejects;
using testing_support::TensorBuffer;
using testing_support::TypeNames;

template <class T>
std::vector<ref::real> widen(const std::vector<T>& v) {
  return {v.begin(), v.end()};
}

// y [M, N] against an oracle product, within k * slack * u.
template <class T>
::testing::AssertionResult within(MatrixView<const T> y, const ref::Product& r, ref::real k) {
  const ref::real u = ref::unit_roundoff<T>();
  const ref::Tensor slack = as_tensor(r.slack);
  return ref::all_close<T>(
      as_tensor(y), as_tensor(r.y),
      [&](index_t, index_t, index_t i, index_t j) { return k * slack(0, 0, i, j) * u; });
}

// Concatenates the heads of o [B, H, S, D] into the token matrix [B*S, H*D].
template <class T>
ref::Matrix concat_heads(TensorView<const T> o) {
  ref::Matrix m(o.batch * o.seq, o.heads * o.dim);
  for (index_t b = 0; b < o.batch; ++b)
    for (index_t h = 0; h < o.heads; ++h)
      for (index_t s = 0; s < o.seq; ++s)
        for (index_t d = 0; d < o.dim; ++d) m(b * o.seq + s, h * o.dim + d) = o.row(b, h, s)[d];
  return m;
}

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
Eigen::Map<const RowMatrix<T>, 0, Eigen::OuterStride<>> eigen(MatrixView<const T> m) {
  return {m.data, Eigen::Index(m.rows), Eigen::Index(m.cols), Eigen::OuterStride<>(m.stride)};
}

template <class T>
class Linear : public ::testing::Test {};
TYPED_TEST_SUITE(Linear, FloatingTypes, TypeNames);

struct Size {
  index_t m, n, k;
};
// Each extent over 1, 7, 17, 63, 65, 129 while the other two stay put.
std::vector<Size> sizes() {
  std::vector<Size> all;
  for (index_t e : {1, 7, 17, 63, 65, 129}) {
    all.push_back({e, 17, 65});
    all.push_back({7, e, 63});
    all.push_back({17, 7, e});
  }
  return all;
}

TYPED_TEST(Linear, MatchesTheOracleAndEigenInBothWeightLayouts) {
  using T = TypeParam;
  const ref::real u = ref::unit_roundoff<T>();
  std::uint32_t seed = 1;
  for (const Size& sz : sizes())
    for (WeightLayout layout : {WeightLayout::out_in, WeightLayout::in_out})
      for (bool with_bias : {true, false}) {
        SCOPED_TRACE("M " + std::to_string(sz.m) + ", N " + std::to_string(sz.n) + ", K " +
                     std::to_string(sz.k) +
                     (layout == WeightLayout::out_in ? ", out_in" : ", in_out") +
                     (with_bias ? ", bias" : ""));
        const bool out_in = layout == WeightLayout::out_in;
        MatrixBuffer<T> x(sz.m, sz.k), w(out_in ? sz.n : sz.k, out_in ? sz.k : sz.n), y(sz.m, sz.n);
        x.fill_random(seed++);
        w.fill_random(seed++);
        const std::vector<T> bias = with_bias ? random_vector<T>(sz.n, seed++) : std::vector<T>{};
        attend::linear<T>(x.in(), w.in(), bias, y.view, layout);

        const ref::Matrix w_out_in = out_in ? ref::load(w.in()) : ref::transpose(ref::load(w.in()));
        const ref::Product r = ref::linear(ref::load(x.in()), w_out_in, widen(bias));
        EXPECT_TRUE(within(y.in(), r, 2));
        EXPECT_TRUE(y.canaries_intact());

        RowMatrix<T> expected = out_in ? RowMatrix<T>(eigen(x.in()) * eigen(w.in()).transpose())
                                       : RowMatrix<T>(eigen(x.in()) * eigen(w.in()));
        if (with_bias)
          expected.rowwise() += Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(
              bias.data(), Eigen::Index(sz.n));
        for (index_t i = 0; i < sz.m; ++i)
          for (index_t j = 0; j < sz.n; ++j)
            ASSERT_LE(std::fabs(ref::real(y.view(i, j)) - ref::real(expected(i, j))),
                      4 * r.slack(i, j) * u)
                << "against Eigen at [" << i << ", " << j << "]";
      }
}

TYPED_TEST(Linear, ZeroSizedExtentsAreAllowed) {
  using T = TypeParam;
  // K = 0: every product is empty, so y is exactly the bias.
  MatrixBuffer<T> x(4, 0), w(3, 0), y(4, 3);
  const std::vector<T> bias{1.5, -2, 0.25};
  attend::linear<T>(x.in(), w.in(), bias, y.view);
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 3; ++j) EXPECT_EQ(y.view(i, j), bias[j]);
  // M = 0 and N = 0: nothing to write.
  MatrixBuffer<T> x0(0, 5), w5(3, 5), y0(0, 3), x5(4, 5), w0(0, 5), y_no_cols(4, 0);
  attend::linear<T>(x0.in(), w5.in(), {}, y0.view);
  attend::linear<T>(x5.in(), w0.in(), {}, y_no_cols.view);
  EXPECT_TRUE(y0.canaries_intact());
  EXPECT_TRUE(y_no_cols.canaries_intact());
}

TYPED_TEST(Linear, RefusesEveryInvalidArgumentWithoutWriting) {
  using T = TypeParam;
  constexpr index_t M = 5, N = 4, K = 6;
  MatrixBuffer<T> x(M, K), w(N, K), y(M, N);
  x.fill_random(1);
  w.fill_random(2);
  const std::vector<T> bias = random_vector<T>(N, 3), short_bias = random_vector<T>(N - 1, 4);
  auto refused = [&](const std::string& argument, const std::string& detail, MatrixView<const T> x_,
                     MatrixView<const T> w_, Span<const T> b_, MatrixView<T> y_,
                     WeightLayout layout = WeightLayout::out_in) {
    return rejects(
        {"linear", argument, detail}, [&] { attend::linear<T>(x_, w_, b_, y_, layout); }, x.storage,
        w.storage, y.storage);
  };
  const MatrixView<const T> xv = x.in(), wv = w.in();
  const MatrixView<T> yv = y.view;
  EXPECT_TRUE(refused("x", "negative extent", {xv.data, -1, K, xv.stride}, wv, bias, yv));
  EXPECT_TRUE(refused("x", "null data", {nullptr, M, K, xv.stride}, wv, bias, yv));
  EXPECT_TRUE(refused("x", "row stride", {xv.data, M, K, K - 1}, wv, bias, yv));
  EXPECT_TRUE(refused("y", "expected shape [5, *]", xv, wv, bias, yv.block(0, M - 1, 0, N)));
  EXPECT_TRUE(refused("y", "null data", xv, wv, bias, {nullptr, M, N, yv.stride}));
  EXPECT_TRUE(refused("y", "row stride", xv, wv, bias, {yv.data, M, N, N - 1}));
  EXPECT_TRUE(refused("w", "expected shape [4, 6]", xv, wv.block(0, N - 1, 0, K), {}, yv));
  EXPECT_TRUE(refused("w", "expected shape [4, 6]", xv, wv.block(0, N, 0, K - 1), bias, yv));
  EXPECT_TRUE(refused("w", "expected shape [6, 4]", xv, wv, bias, yv, WeightLayout::in_out));
  EXPECT_TRUE(refused("w", "null data", xv, {nullptr, N, K, K}, bias, yv));
  EXPECT_TRUE(refused("w", "row stride", xv, {wv.data, N, K, 2}, bias, yv));
  EXPECT_TRUE(refused("bias.size", "", xv, wv, short_bias, yv));
  EXPECT_TRUE(refused("bias", "null data", xv, wv, {nullptr, N}, yv));

  // y may not overlap any input.
  const MatrixView<T> y_on_x(x.storage.data() + 1, M, N, x.view.stride);
  EXPECT_TRUE(refused("y", "overlaps x", xv, wv, bias, y_on_x));
  const MatrixView<T> y_on_w(w.storage.data() + w.view.stride, M, N, 1 + N);
  EXPECT_TRUE(refused("y", "overlaps w", xv, wv, bias, y_on_w));
  const Span<const T> bias_in_y{y.view.row(M - 1), N};
  EXPECT_TRUE(refused("y", "overlaps bias", xv, wv, bias_in_y, yv));
}

// project_heads: out[b, h, s, :] = x[b*S + s, :] . W[h*D : (h+1)*D, :]^T + b[h*D : (h+1)*D],
// i.e. the heads of out, side by side, are the matrix linear(x, W, b).
template <class T>
::testing::AssertionResult heads_match(TensorView<const T> out, const ref::Product& r) {
  const ref::real u = ref::unit_roundoff<T>();
  ref::Tensor expected(out.batch, out.heads, out.seq, out.dim), slack = expected;
  for (index_t b = 0; b < out.batch; ++b)
    for (index_t h = 0; h < out.heads; ++h)
      for (index_t s = 0; s < out.seq; ++s)
        for (index_t d = 0; d < out.dim; ++d) {
          expected(b, h, s, d) = r.y(b * out.seq + s, h * out.dim + d);
          slack(b, h, s, d) = r.slack(b * out.seq + s, h * out.dim + d);
        }
  return ref::all_close<T>(out, expected, [&](index_t b, index_t h, index_t s, index_t d) {
    return 2 * slack(b, h, s, d) * u;
  });
}

TYPED_TEST(Linear, ProjectHeadsWritesEachHeadOfEitherLayout) {
  using T = TypeParam;
  constexpr index_t B = 2, H = 3, E = 33;
  struct Shape {
    index_t seq, dim;
  };
  std::vector<Shape> shapes;
  for (index_t s : {1, 7, 17, 63, 65, 129}) shapes.push_back({s, 16});
  for (index_t d : {1, 64, 80, 128}) shapes.push_back({7, d});
  std::uint32_t seed = 10;
  for (const Shape& sh : shapes)
    for (Layout layout : {Layout::bhsd, Layout::bshd})
      for (bool with_bias : {true, false}) {
        SCOPED_TRACE("S " + std::to_string(sh.seq) + ", D " + std::to_string(sh.dim) + ", " +
                     testing_support::name(layout) + (with_bias ? ", bias" : ""));
        MatrixBuffer<T> x(B * sh.seq, E), w(H * sh.dim, E);
        x.fill_random(seed++);
        w.fill_random(seed++);
        const std::vector<T> bias =
            with_bias ? random_vector<T>(H * sh.dim, seed++) : std::vector<T>{};
        TensorBuffer<T> out(B, H, sh.seq, sh.dim, layout);
        attend::project_heads<T>(x.in(), w.in(), bias, out.view);
        EXPECT_TRUE(
            heads_match(out.in(), ref::linear(ref::load(x.in()), ref::load(w.in()), widen(bias))));
        EXPECT_TRUE(out.canaries_intact());
      }
}

TYPED_TEST(Linear, ProjectQkvWithSeparateWeightsServesGroupedQueryHeads) {
  using T = TypeParam;
  constexpr index_t B = 2, S = 7, E = 24, Hq = 6, Hkv = 2, Dk = 16, Dv = 8;
  MatrixBuffer<T> x(B * S, E), wq(Hq * Dk, E), wk(Hkv * Dk, E), wv(Hkv * Dv, E);
  x.fill_random(1);
  wq.fill_random(2);
  wk.fill_random(3);
  wv.fill_random(4);
  const std::vector<T> bq = random_vector<T>(Hq * Dk, 5), bv = random_vector<T>(Hkv * Dv, 6);
  const QkvWeights<T> weights{wq.in(), wk.in(), wv.in(), bq, {}, bv};  // K without bias
  for (Layout layout : {Layout::bhsd, Layout::bshd}) {
    SCOPED_TRACE(testing_support::name(layout));
    TensorBuffer<T> q(B, Hq, S, Dk, layout), k(B, Hkv, S, Dk, layout), v(B, Hkv, S, Dv, layout);
    attend::project_qkv<T>(x.in(), weights, q.view, k.view, v.view);
    const ref::Matrix xr = ref::load(x.in());
    EXPECT_TRUE(heads_match(q.in(), ref::linear(xr, ref::load(wq.in()), widen(bq))));
    EXPECT_TRUE(heads_match(k.in(), ref::linear(xr, ref::load(wk.in()), {})));
    EXPECT_TRUE(heads_match(v.in(), ref::linear(xr, ref::load(wv.in()), widen(bv))));
    EXPECT_TRUE(q.canaries_intact() && k.canaries_intact() && v.canaries_intact());
  }
}

// The fused layout of GQA models: one weight [(Hq + 2 Hkv) D, E] whose output rows,
// [B, S, Hq + 2 Hkv, D], are Q, K and V heads side by side. Written through three BSHD
// views of one buffer, the buffer read as [B*S, (Hq + 2 Hkv) D] is linear(x, W, b).
TYPED_TEST(Linear, ProjectQkvFromPackedWeightsFillsOneInterleavedBuffer) {
  using T = TypeParam;
  constexpr index_t B = 2, S = 17, E = 40, Hq = 4, Hkv = 2, D = 16, Ht = Hq + 2 * Hkv;
  MatrixBuffer<T> x(B * S, E), w(Ht * D, E);
  x.fill_random(7);
  w.fill_random(8);
  const std::vector<T> b = random_vector<T>(Ht * D, 9);
  const auto packed = QkvWeights<T>::packed(w.in(), b, Hq, Hkv, D);

  // [B*S, Ht*D] dense, then canaries.
  constexpr index_t canaries = 5;
  std::vector<T> fused(B * S * Ht * D + canaries, testing_support::canary<T>());
  auto heads = [&](index_t first, index_t count) {
    return TensorView<T>{fused.data() + first * D, B, count, S, D, S * Ht * D, D, Ht * D};
  };
  attend::project_qkv<T>(x.in(), packed, heads(0, Hq), heads(Hq, Hkv), heads(Hq + Hkv, Hkv));
  const ref::Product r = ref::linear(ref::load(x.in()), ref::load(w.in()), widen(b));
  EXPECT_TRUE(within(MatrixView<const T>(fused.data(), B * S, Ht * D), r, 2));
  for (index_t i = 0; i < canaries; ++i)
    EXPECT_EQ(fused[B * S * Ht * D + i], testing_support::canary<T>());

  // The same weights given separately produce the same bits.
  TensorBuffer<T> q(B, Hq, S, D), k(B, Hkv, S, D), v(B, Hkv, S, D);
  const QkvWeights<T> separate{w.in().block(0, Hq * D, 0, E),
                               w.in().block(Hq * D, Hkv * D, 0, E),
                               w.in().block((Hq + Hkv) * D, Hkv * D, 0, E),
                               {b.data(), Hq * D},
                               {b.data() + Hq * D, Hkv * D},
                               {b.data() + (Hq + Hkv) * D, Hkv * D}};
  attend::project_qkv<T>(x.in(), separate, q.view, k.view, v.view);
  for (index_t bb = 0; bb < B; ++bb)
    for (index_t s = 0; s < S; ++s)
      for (index_t h = 0; h < Ht; ++h)
        for (index_t d = 0; d < D; ++d) {
          const T got = h < Hq         ? q.view.row(bb, h, s)[d]
                        : h < Hq + Hkv ? k.view.row(bb, h - Hq, s)[d]
                                       : v.view.row(bb, h - Hq - Hkv, s)[d];
          ASSERT_EQ(got, fused[((bb * S + s) * Ht + h) * D + d]);
        }

  // No bias: an empty span packs into empty spans.
  const auto unbiased = QkvWeights<T>::packed(w.in(), {}, Hq, Hkv, D);
  EXPECT_TRUE(unbiased.bq.empty() && unbiased.bk.empty() && unbiased.bv.empty());
  attend::project_qkv<T>(x.in(), unbiased, heads(0, Hq), heads(Hq, Hkv), heads(Hq + Hkv, Hkv));
  EXPECT_TRUE(within(MatrixView<const T>(fused.data(), B * S, Ht * D),
                     ref::linear(ref::load(x.in()), ref::load(w.in()), {}), 2));
}

TYPED_TEST(Linear, ProjectOutputSumsTheConcatenatedHeads) {
  using T = TypeParam;
  constexpr index_t B = 2, H = 4, E = 24;
  std::uint32_t seed = 30;
  for (index_t s : {1, 7, 17, 65})
    for (index_t d : {1, 16, 80})
      for (Layout layout : {Layout::bhsd, Layout::bshd})
        for (bool with_bias : {true, false}) {
          SCOPED_TRACE("S " + std::to_string(s) + ", Dv " + std::to_string(d) + ", " +
                       testing_support::name(layout) + (with_bias ? ", bias" : ""));
          TensorBuffer<T> o(B, H, s, d, layout);
          o.fill_random(seed++);
          MatrixBuffer<T> w(E, H * d), y(B * s, E);
          w.fill_random(seed++);
          const std::vector<T> bias = with_bias ? random_vector<T>(E, seed++) : std::vector<T>{};
          attend::project_output<T>(o.in(), w.in(), bias, y.view);
          EXPECT_TRUE(
              within(y.in(), ref::linear(concat_heads(o.in()), ref::load(w.in()), widen(bias)), 2));
          EXPECT_TRUE(y.canaries_intact());
        }
}

TYPED_TEST(Linear, ProjectionsRefuseEveryInvalidArgumentWithoutWriting) {
  using T = TypeParam;
  constexpr index_t B = 2, S = 3, E = 8, Hq = 4, Hkv = 2, D = 4, Ht = Hq + 2 * Hkv;
  MatrixBuffer<T> x(B * S, E), w(Ht * D, E);
  x.fill_random(1);
  w.fill_random(2);
  const std::vector<T> b = random_vector<T>(Ht * D, 3);
  TensorBuffer<T> q(B, Hq, S, D), k(B, Hkv, S, D), v(B, Hkv, S, D);
  const auto weights = QkvWeights<T>::packed(w.in(), b, Hq, Hkv, D);

  // project_heads
  auto heads_refused = [&](const std::string& argument, const std::string& detail,
                           MatrixView<const T> x_, MatrixView<const T> w_, Span<const T> b_,
                           TensorView<T> out) {
    return rejects(
        {"project_heads", argument, detail}, [&] { attend::project_heads<T>(x_, w_, b_, out); },
        q.storage, x.storage, w.storage);
  };
  const MatrixView<const T> wq = weights.wq;
  const Span<const T> bq = weights.bq;
  EXPECT_TRUE(
      heads_refused("x.rows", "out.batch * out.seq", x.in().block(0, 5, 0, E), wq, bq, q.view));
  EXPECT_TRUE(heads_refused("x", "null data", {nullptr, B * S, E, E}, wq, bq, q.view));
  EXPECT_TRUE(heads_refused("w", "expected shape [16, 8]", x.in(), w.in(), bq, q.view));
  EXPECT_TRUE(heads_refused("bias.size", "", x.in(), wq, weights.bk, q.view));
  EXPECT_TRUE(heads_refused("bias", "null data", x.in(), wq, {nullptr, Hq * D}, q.view));
  TensorView<T> q_bad = q.view;
  q_bad.seq_stride = D - 1;
  EXPECT_TRUE(heads_refused("out", "seq stride", x.in(), wq, bq, q_bad));
  q_bad = q.view;
  q_bad.head_stride = 1;  // heads would share elements
  EXPECT_TRUE(heads_refused("out", "overlap", x.in(), wq, bq, q_bad));
  q_bad = q.view;
  q_bad.data = nullptr;
  EXPECT_TRUE(heads_refused("out", "null data", x.in(), wq, bq, q_bad));
  const TensorView<T> out_on_x{x.storage.data(), 1, 1, B * S, D, 0, 0, x.view.stride};
  EXPECT_TRUE(heads_refused("out", "overlaps x", x.in(), wq.block(0, D, 0, E), {}, out_on_x));
  const TensorView<T> out_on_w{w.storage.data(), 1, 1, B * S, D, 0, 0, w.view.stride};
  EXPECT_TRUE(heads_refused("out", "overlaps w", x.in(), wq.block(0, D, 0, E), {}, out_on_w));

  // project_qkv: every output against every weight and bias.
  MatrixBuffer<T> writable(Ht * D, E);  // weights living where outputs are written
  writable.fill_random(4);
  std::vector<T> bias_store(B * Hq * S * D + Ht * D);
  auto qkv_refused = [&](const std::string& argument, const std::string& detail,
                         const QkvWeights<T>& w_, TensorView<T> q_, TensorView<T> k_,
                         TensorView<T> v_) {
    return rejects(
        {"project_qkv", argument, detail}, [&] { attend::project_qkv<T>(x.in(), w_, q_, k_, v_); },
        q.storage, k.storage, v.storage, w.storage, writable.storage, bias_store);
  };
  QkvWeights<T> bad = weights;
  bad.wk = weights.wq;
  EXPECT_TRUE(qkv_refused("wk", "expected shape [8, 8]", bad, q.view, k.view, v.view));
  bad = weights;
  bad.bv = weights.bq;
  EXPECT_TRUE(qkv_refused("bv.size", "", bad, q.view, k.view, v.view));
  EXPECT_TRUE(qkv_refused("wq", "expected shape", weights, k.view, k.view, v.view));
  const auto in_buffer = QkvWeights<T>::packed(writable.in(), {}, Hq, Hkv, D);
  const TensorView<T> k_on_wq{writable.storage.data(), B, Hkv, S, D, Hkv * S * D, S * D, D};
  EXPECT_TRUE(qkv_refused("k", "overlaps wq", in_buffer, q.view, k_on_wq, v.view));
  const TensorView<T> v_on_wk{writable.view.row(Hq * D), B, Hkv, S, D, Hkv * S * D, S * D, D};
  EXPECT_TRUE(qkv_refused("v", "overlaps wk", in_buffer, q.view, k.view, v_on_wk));
  // Biases [bq | bk | bv] at the front of bias_store, q from the start of bk on.
  const auto biased = QkvWeights<T>::packed(w.in(), {bias_store.data(), Ht * D}, Hq, Hkv, D);
  const auto q_on_bk = TensorView<T>::bhsd(bias_store.data() + Hq * D, B, Hq, S, D);
  EXPECT_TRUE(qkv_refused("q", "overlaps bk", biased, q_on_bk, k.view, v.view));

  // QkvWeights::packed
  for (auto bad_rows : {Ht * D - 1, Ht * D + D}) {
    MatrixBuffer<T> w_bad(bad_rows, E);
    EXPECT_TRUE(rejects({"QkvWeights::packed", "w", "expected shape"},
                        [&] { (void)QkvWeights<T>::packed(w_bad.in(), {}, Hq, Hkv, D); }));
  }
  EXPECT_TRUE(rejects({"QkvWeights::packed", "b.size", "(Hq + 2*Hkv) * D"}, [&] {
    (void)QkvWeights<T>::packed(w.in(), {b.data(), Ht * D - 1}, Hq, Hkv, D);
  }));
  EXPECT_TRUE(rejects({"QkvWeights::packed", "q_heads, kv_heads, head_dim", ""},
                      [&] { (void)QkvWeights<T>::packed(w.in(), {}, -1, Hkv, D); }));

  // project_output
  MatrixBuffer<T> wo(E, Hq * D), y(B * S, E);
  wo.fill_random(5);
  q.fill_random(6);
  const std::vector<T> bo = random_vector<T>(E, 7);
  auto output_refused = [&](const std::string& argument, const std::string& detail,
                            TensorView<const T> o_, MatrixView<const T> w_, Span<const T> b_,
                            MatrixView<T> y_) {
    return rejects(
        {"project_output", argument, detail}, [&] { attend::project_output<T>(o_, w_, b_, y_); },
        y.storage, q.storage, wo.storage);
  };
  TensorView<const T> no_heads = q.in();
  no_heads.heads = 0;
  EXPECT_TRUE(output_refused("o", "at least one head", no_heads, wo.in(), bo, y.view));
  TensorView<const T> o_bad = q.in();
  o_bad.seq_stride = 1;
  EXPECT_TRUE(output_refused("o", "seq stride", o_bad, wo.in(), bo, y.view));
  EXPECT_TRUE(output_refused("y", "expected shape [6, *]", q.in(), wo.in(), bo,
                             y.view.block(0, B * S - 1, 0, E)));
  EXPECT_TRUE(output_refused("w", "expected shape [8, 16]", q.in(), wo.in().block(0, E, 0, 15), bo,
                             y.view));
  EXPECT_TRUE(output_refused("bias.size", "", q.in(), wo.in(), {bo.data(), E - 1}, y.view));
  EXPECT_TRUE(output_refused("bias", "null data", q.in(), wo.in(), {nullptr, E}, y.view));
  const MatrixView<T> y_on_o{q.storage.data(), B * S, E, E};
  EXPECT_TRUE(output_refused("y", "overlaps o", q.in(), wo.in(), bo, y_on_o));
  const MatrixView<T> y_on_w{wo.storage.data(), B * S, E, wo.view.stride};
  EXPECT_TRUE(output_refused("y", "overlaps w", q.in(), wo.in(), bo, y_on_w));
}

// ---- Every instruction-set path, forced through the Context --------------------------------
//
// The SIMD paths cut a product into register tiles (6 rows by 64 or 16 columns), tasks
// (1536 rows by 256 columns) and passes over k (at most 4096 deep); a few rows (up to 16
// on AVX-512, 8 on AVX2) read an out_in W directly, 8 rows at a time, and up to 4 rows read
// an in_out W with rows of 4 KiB or more in passes of 8, tasks of 1024 columns: see
// detail/simd/gemm-inl.hpp. These tests force each path this CPU runs and aim at those
// boundaries. Every SIMD path computes each element as the same chain of fused
// multiply-adds in the order of k, so the SIMD paths must also agree bit for bit.

// Runs linear on `isa` into a fresh buffer with `executor`, or the calling thread alone.
struct PathRun {
  MatrixBuffer<float> y;
  PathRun(attend::Isa isa, MatrixView<const float> x, MatrixView<const float> w,
          const std::vector<float>& bias, WeightLayout layout, index_t n,
          const attend::Executor* executor = nullptr)
      : y(x.rows, n) {
    attend::Context ctx;
    ctx.isa = isa;
    ctx.executor = executor;
    attend::linear<float>(x, w, bias, y.view, layout, ctx);
  }
};

bool is_simd(attend::Isa isa) {
  return isa == attend::Isa::avx2 || isa == attend::Isa::avx512;
}

// Each product on every path against the oracle; the SIMD paths' bits against each other.
void expect_every_path_matches(const std::vector<Size>& shapes, std::uint32_t seed) {
  for (std::size_t s = 0; s < shapes.size(); ++s)
    for (WeightLayout layout : {WeightLayout::out_in, WeightLayout::in_out}) {
      const Size& sz = shapes[s];
      const bool out_in = layout == WeightLayout::out_in, with_bias = s % 2 == 0;
      SCOPED_TRACE("M " + std::to_string(sz.m) + ", N " + std::to_string(sz.n) + ", K " +
                   std::to_string(sz.k) + (out_in ? ", out_in" : ", in_out") +
                   (with_bias ? ", bias" : ""));
      MatrixBuffer<float> x(sz.m, sz.k), w(out_in ? sz.n : sz.k, out_in ? sz.k : sz.n);
      x.fill_random(seed++);
      w.fill_random(seed++);
      const std::vector<float> bias =
          with_bias ? random_vector<float>(sz.n, seed++) : std::vector<float>{};
      const ref::Matrix w_out_in = out_in ? ref::load(w.in()) : ref::transpose(ref::load(w.in()));
      const ref::Product r = ref::linear(ref::load(x.in()), w_out_in, widen(bias));
      const std::vector<float>* simd_bits = nullptr;
      std::vector<std::unique_ptr<PathRun>> runs;
      for (attend::Isa isa : attend::supported_isas()) {
        SCOPED_TRACE(attend::name(isa));
        runs.push_back(std::make_unique<PathRun>(isa, x.in(), w.in(), bias, layout, sz.n));
        const MatrixBuffer<float>& y = runs.back()->y;
        EXPECT_TRUE(within(y.in(), r, 2));
        EXPECT_TRUE(y.canaries_intact());
        if (!is_simd(isa)) continue;
        if (simd_bits)
          EXPECT_TRUE(testing_support::same_bits(*simd_bits, y.storage)) << "differs from avx2";
        else
          simd_bits = &y.storage;
      }
    }
}

TEST(LinearPaths, EveryPathMatchesTheOracleAroundTheRegisterTiles) {
  // Each extent over the list while the other two stay put, and all three together.
  std::vector<Size> shapes;
  for (index_t e : {1, 7, 15, 16, 17, 31, 33, 63, 65, 129, 200}) {
    shapes.push_back({e, 65, 33});
    shapes.push_back({17, e, 129});
    shapes.push_back({63, 31, e});
    shapes.push_back({e, e, e});
  }
  expect_every_path_matches(shapes, 100);
}

TEST(LinearPaths, LargeAndDeepProductsMatchTheOracleOnEveryPath) {
  // Several tasks of columns; K deeper than one pass (two and three passes); in_out weights
  // over 1 MiB per pass, packed for 13 rows of x and read in place by one tile of 5 rows;
  // and by 2 and 3 rows, rows of W over 4 KiB, in passes of 8 (two tasks, then three).
  expect_every_path_matches({{300, 257, 520},
                             {7, 33, 4100},
                             {13, 70, 8193},
                             {5, 300, 1000},
                             {2, 1100, 50},
                             {3, 2100, 40}},
                            200);
}

TEST(LinearPaths, ResultsDoNotDependOnTheThreadCount) {
  // 1600 x 600: two blocks of rows by three of columns, and tails in both. A decode step's
  // few rows: 9 x 600 read an out_in W in place (on AVX-512), 3 x 2100 an in_out W in
  // shallow passes, three tasks of columns.
  constexpr index_t K = 40;
  const attend::ThreadPool one(1), two(2), three(3);
  for (const auto& [M, N] : {std::pair<index_t, index_t>{1600, 600}, {9, 600}, {3, 2100}})
    for (WeightLayout layout : {WeightLayout::out_in, WeightLayout::in_out}) {
      const bool out_in = layout == WeightLayout::out_in;
      MatrixBuffer<float> x(M, K), w(out_in ? N : K, out_in ? K : N);
      x.fill_random(1);
      w.fill_random(2);
      const std::vector<float> bias = random_vector<float>(N, 3);
      for (attend::Isa isa : attend::supported_isas()) {
        SCOPED_TRACE(std::string(attend::name(isa)) + (out_in ? ", out_in" : ", in_out") + ", M " +
                     std::to_string(M));
        const PathRun serial(isa, x.in(), w.in(), bias, layout, N);
        for (const attend::ThreadPool* pool : {&one, &two, &three}) {
          const PathRun threaded(isa, x.in(), w.in(), bias, layout, N, pool);
          EXPECT_TRUE(testing_support::same_bits(serial.y.storage, threaded.y.storage))
              << pool->concurrency() << " threads";
        }
      }
    }
}

TEST(LinearPaths, NanInOneRowOfXReachesOnlyThatRowOfY) {
  constexpr index_t M = 13, N = 70, K = 20, bad_row = 7;
  MatrixBuffer<float> x(M, K), w(N, K);
  x.fill_random(1);
  w.fill_random(2);
  x.view(bad_row, 11) = std::numeric_limits<float>::quiet_NaN();
  for (attend::Isa isa : attend::supported_isas()) {
    SCOPED_TRACE(attend::name(isa));
    const PathRun run(isa, x.in(), w.in(), {}, WeightLayout::out_in, N);
    for (index_t i = 0; i < M; ++i)
      for (index_t j = 0; j < N; ++j)
        ASSERT_EQ(std::isnan(run.y.view(i, j)), i == bad_row) << "at [" << i << ", " << j << "]";
  }
}

}  // namespace
