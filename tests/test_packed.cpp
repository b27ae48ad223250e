// attend/packed.hpp: PackedWeight, and linear() with one, against linear() with the weight it
// was packed from (bit for bit, on every path this CPU runs) and against the oracle
// (ref::linear, with test_linear.cpp's tolerance: 2 slack u).
//
// A PackedWeight holds float weights only, so these tests run over the instruction-set
// paths, each forced through the Context, rather than over float and double.
#include "attend/packed.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "support/buffers.hpp"
#include "support/checks.hpp"
#include "support/reference.hpp"
#include "support/tolerance.hpp"

namespace {

using attend::index_t;
using attend::Isa;
using attend::MatrixView;
using attend::PackedWeight;
using attend::Span;
using attend::WeightLayout;
using testing_support::as_tensor;
using testing_support::MatrixBuffer;
using testing_support::random_vector;
using testing_support::rejects;
using testing_support::same_bits;

attend::Context on(Isa isa, const attend::Executor* executor = nullptr) {
  attend::Context ctx;
  ctx.isa = isa;
  ctx.executor = executor;
  return ctx;
}

std::string describe(index_t m, index_t n, index_t k, WeightLayout layout, bool bias) {
  return "M " + std::to_string(m) + ", N " + std::to_string(n) + ", K " + std::to_string(k) +
         (layout == WeightLayout::out_in ? ", out_in" : ", in_out") + (bias ? ", bias" : "");
}

// x [M, K], a weight of either layout and a bias, with random values.
struct Problem {
  index_t m, n, k;
  WeightLayout layout;
  MatrixBuffer<float> x, w;
  std::vector<float> bias;

  Problem(index_t m_, index_t n_, index_t k_, WeightLayout layout_, bool with_bias,
          std::uint32_t seed)
      : m(m_),
        n(n_),
        k(k_),
        layout(layout_),
        x(m_, k_),
        w(out_in() ? n_ : k_, out_in() ? k_ : n_),
        bias(with_bias ? random_vector<float>(n_, seed + 2) : std::vector<float>{}) {
    x.fill_random(seed);
    w.fill_random(seed + 1);
  }
  bool out_in() const { return layout == WeightLayout::out_in; }

  // y from linear() with the weight itself.
  void unpacked(MatrixBuffer<float>& y, const attend::Context& ctx) const {
    attend::linear<float>(x.in(), w.in(), bias, y.view, layout, ctx);
  }
  // y within 2 slack u of the oracle.
  ::testing::AssertionResult matches_oracle(const MatrixBuffer<float>& y) const {
    const ref::Matrix w_out_in = out_in() ? ref::load(w.in()) : ref::transpose(ref::load(w.in()));
    std::vector<ref::real> b(bias.begin(), bias.end());
    const ref::Product r = ref::linear(ref::load(x.in()), w_out_in, b);
    const ref::Tensor slack = as_tensor(r.slack);
    return ref::all_close<float>(as_tensor(y.in()), as_tensor(r.y),
                                 [&](index_t, index_t, index_t i, index_t j) {
                                   return 2 * slack(0, 0, i, j) * ref::unit_roundoff<float>();
                                 });
  }
};

TEST(PackedWeight, GivesTheBitsOfTheUnpackedWeightOnEveryPath) {
  struct Shape {
    index_t m, n, k;
  };
  // Around the register tiles (6 rows by 64 or 16 columns), several tasks of columns, and
  // K deeper than one pass over k (4096). Unpacked, up to 8 (AVX2) or 16 (AVX-512) rows
  // read W [N, K] in place (gemm-inl.hpp, multiply_direct), more pack it.
  std::vector<Shape> shapes;
  for (index_t m : {1, 7, 16, 17, 65})
    for (index_t n : {1, 15, 17, 64, 65, 129})
      for (index_t k : {1, 7, 33, 129}) shapes.push_back({m, n, k});
  shapes.push_back({300, 600, 70});
  shapes.push_back({5, 40, 4100});
  std::uint32_t seed = 1;
  for (const Shape& s : shapes)
    for (WeightLayout layout : {WeightLayout::out_in, WeightLayout::in_out}) {
      const bool with_bias = seed % 2 == 1;
      const Problem pr(s.m, s.n, s.k, layout, with_bias, seed += 3);
      for (Isa isa : attend::supported_isas()) {
        SCOPED_TRACE(describe(s.m, s.n, s.k, layout, with_bias) + ", " + attend::name(isa));
        const PackedWeight packed(pr.w.in(), layout, isa);
        MatrixBuffer<float> y(s.m, s.n), expected(s.m, s.n);
        attend::linear(pr.x.in(), packed, pr.bias, y.view, on(isa));
        pr.unpacked(expected, on(isa));
        ASSERT_TRUE(same_bits(y.storage, expected.storage));
        EXPECT_TRUE(pr.matches_oracle(y));
        EXPECT_TRUE(y.canaries_intact());
      }
    }
}

TEST(PackedWeight, ResultsDoNotDependOnTheThreadCount) {
  // 1600 x 600: two blocks of rows by three of columns, with tails.
  const attend::ThreadPool one(1), two(2), three(3);
  for (WeightLayout layout : {WeightLayout::out_in, WeightLayout::in_out}) {
    const Problem pr(1600, 600, 40, layout, true, 7);
    for (Isa isa : attend::supported_isas()) {
      SCOPED_TRACE(describe(pr.m, pr.n, pr.k, layout, true) + ", " + attend::name(isa));
      const PackedWeight packed(pr.w.in(), layout, isa);
      MatrixBuffer<float> expected(pr.m, pr.n);
      pr.unpacked(expected, on(isa));
      for (const attend::ThreadPool* pool : {&one, &two, &three}) {
        MatrixBuffer<float> y(pr.m, pr.n);
        attend::linear(pr.x.in(), packed, pr.bias, y.view, on(isa, pool));
        EXPECT_TRUE(same_bits(y.storage, expected.storage)) << pool->concurrency() << " threads";
      }
    }
  }
}

TEST(PackedWeight, ReportsItsShapeLayoutAndPath) {
  MatrixBuffer<float> w(5, 3);
  w.fill_random(1);
  const PackedWeight out_in(w.in());  // the defaults: out_in, the process's default path
  EXPECT_EQ(out_in.out_features(), 5);
  EXPECT_EQ(out_in.in_features(), 3);
  EXPECT_EQ(out_in.layout(), WeightLayout::out_in);
  EXPECT_EQ(out_in.isa(), attend::default_isa());
  for (Isa isa : attend::supported_isas()) {
    const PackedWeight in_out(w.in(), WeightLayout::in_out, isa);
    EXPECT_EQ(in_out.in_features(), 5);
    EXPECT_EQ(in_out.out_features(), 3);
    EXPECT_EQ(in_out.layout(), WeightLayout::in_out);
    EXPECT_EQ(in_out.isa(), isa);
  }
}

TEST(PackedWeight, OwnsItsCopyOfTheWeightAndCopiesWithIt) {
  for (Isa isa : attend::supported_isas()) {
    SCOPED_TRACE(attend::name(isa));
    Problem pr(9, 70, 20, WeightLayout::out_in, true, 11);
    const PackedWeight packed(pr.w.in(), pr.layout, isa);
    MatrixBuffer<float> expected(pr.m, pr.n);
    pr.unpacked(expected, on(isa));
    pr.w.fill_random(99);  // the original changes after packing

    const PackedWeight copy = packed;
    PackedWeight moved = PackedWeight(packed);
    PackedWeight assigned;
    assigned = std::move(moved);
    for (const PackedWeight* p : std::vector<const PackedWeight*>{&packed, &copy, &assigned}) {
      MatrixBuffer<float> y(pr.m, pr.n);
      attend::linear(pr.x.in(), *p, pr.bias, y.view, on(isa));
      EXPECT_TRUE(same_bits(y.storage, expected.storage));
    }
  }
}

TEST(PackedWeight, ZeroSizedExtentsAreAllowed) {
  for (Isa isa : attend::supported_isas()) {
    SCOPED_TRACE(attend::name(isa));
    // K = 0: every product is empty, so y is exactly the bias.
    MatrixBuffer<float> x(4, 0), w(3, 0), y(4, 3);
    const std::vector<float> bias{1.5f, -2.0f, 0.25f};
    attend::linear(x.in(), PackedWeight(w.in(), WeightLayout::out_in, isa), bias, y.view, on(isa));
    for (index_t i = 0; i < 4; ++i)
      for (index_t j = 0; j < 3; ++j) EXPECT_EQ(y.view(i, j), bias[std::size_t(j)]);
    // M = 0, N = 0, and the empty PackedWeight (K = N = 0).
    MatrixBuffer<float> x0(0, 5), w5(3, 5), y0(0, 3), x5(4, 5), w0(0, 5), y_no_cols(4, 0);
    attend::linear(x0.in(), PackedWeight(w5.in(), WeightLayout::out_in, isa), {}, y0.view, on(isa));
    attend::linear(x5.in(), PackedWeight(w0.in(), WeightLayout::out_in, isa), {}, y_no_cols.view,
                   on(isa));
    EXPECT_TRUE(y0.canaries_intact());
    EXPECT_TRUE(y_no_cols.canaries_intact());
  }
  const PackedWeight none;
  EXPECT_EQ(none.in_features(), 0);
  EXPECT_EQ(none.out_features(), 0);
  MatrixBuffer<float> x(2, 0), y(2, 0);
  attend::linear(x.in(), none, {}, y.view, on(none.isa()));
  EXPECT_TRUE(y.canaries_intact());
}

TEST(PackedWeight, RefusesEveryInvalidWeight) {
  MatrixBuffer<float> w(4, 6);
  w.fill_random(1);
  const MatrixView<const float> wv = w.in();
  auto refused = [&](const std::string& argument, const std::string& detail,
                     MatrixView<const float> w_, Isa isa = Isa::automatic) {
    return rejects({"PackedWeight", argument, detail},
                   [&] { (void)PackedWeight(w_, WeightLayout::out_in, isa); });
  };
  EXPECT_TRUE(refused("w", "negative extent", {wv.data, -1, 6, wv.stride}));
  EXPECT_TRUE(refused("w", "null data", {nullptr, 4, 6, 6}));
  EXPECT_TRUE(refused("w", "row stride", {wv.data, 4, 6, 5}));
  for (Isa isa : {Isa::avx2, Isa::avx512}) {
    if (!attend::supported(isa)) {
      EXPECT_TRUE(refused("isa", std::string("cannot run the ") + attend::name(isa), wv, isa));
    }
  }
}

TEST(PackedWeight, LinearRefusesEveryInvalidArgumentWithoutWriting) {
  constexpr index_t M = 5, N = 4, K = 6;
  MatrixBuffer<float> x(M, K), w(N, K), y(M, N);
  x.fill_random(1);
  w.fill_random(2);
  const std::vector<float> bias = random_vector<float>(N, 3),
                           short_bias = random_vector<float>(N - 1, 4);
  const MatrixView<const float> xv = x.in();
  const MatrixView<float> yv = y.view;
  const PackedWeight packed(w.in(), WeightLayout::out_in, attend::default_isa());
  auto refused = [&](const std::string& argument, const std::string& detail,
                     MatrixView<const float> x_, Span<const float> b_, MatrixView<float> y_,
                     const PackedWeight& w_, const attend::Context& ctx = {}) {
    return rejects(
        {"linear", argument, detail}, [&] { attend::linear(x_, w_, b_, y_, ctx); }, x.storage,
        y.storage);
  };
  EXPECT_TRUE(refused("x", "expected shape [*, 6]", xv.block(0, M, 0, K - 1), bias, yv, packed));
  EXPECT_TRUE(refused("x", "null data", {nullptr, M, K, K}, bias, yv, packed));
  EXPECT_TRUE(refused("y", "expected shape [5, 4]", xv, bias, yv.block(0, M, 0, N - 1), packed));
  EXPECT_TRUE(refused("y", "expected shape [5, 4]", xv, bias, yv.block(0, M - 1, 0, N), packed));
  EXPECT_TRUE(refused("y", "row stride", xv, bias, {yv.data, M, N, N - 1}, packed));
  EXPECT_TRUE(refused("bias.size", "y.cols", xv, short_bias, yv, packed));
  EXPECT_TRUE(refused("bias", "null data", xv, {nullptr, N}, yv, packed));
  const MatrixView<float> y_on_x(x.storage.data() + 1, M, N, x.view.stride);
  EXPECT_TRUE(refused("y", "overlaps x", xv, bias, y_on_x, packed));
  const Span<const float> bias_in_y{y.view.row(M - 1), N};
  EXPECT_TRUE(refused("y", "overlaps bias", xv, bias_in_y, yv, packed));

  // A weight packed for one path, called on another.
  for (Isa packed_for : attend::supported_isas())
    for (Isa runs_on : attend::supported_isas()) {
      if (packed_for == runs_on) continue;
      const PackedWeight other(w.in(), WeightLayout::out_in, packed_for);
      EXPECT_TRUE(refused("w",
                          std::string("packed for the ") + attend::name(packed_for) +
                              " path, but the call runs the " + attend::name(runs_on),
                          xv, bias, yv, other, on(runs_on)));
    }
}

}  // namespace
