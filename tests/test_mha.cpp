// attend::multihead_attention (mha.hpp): the whole block against a reference composition
// of ref:: primitives (ref::linear for the projections, ref::attention for the heads,
// ref::linear for the output projection), bit for bit against the same composition of
// attend's public calls, against Eigen products, and on every error path.
//
// Tolerance. Attention amplifies input perturbations: an error e in a logit moves the
// probabilities by a relative ~2e, so the projections' rounding would have to be carried
// through scale * Q K^T, the softmax and P V to bound the block from the token matrices
// alone. Instead the reference takes attend's own projected Q, K, V (after checking them
// against ref::linear within its slack) and runs ref::attention on them exactly, so the
// attention step's bound is tolerance.hpp's output bound, tol_o. The output projection
// then adds |WO| tol_o (the attention error, carried through the product) plus the
// product's own rounding, 2 u slack with ref::linear's slack. Everything is derived;
// nothing is a magic factor.

#include "attend/mha.hpp"

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "attend/attention.hpp"
#include "attend/linear.hpp"
#include "data/torch_mha_golden.hpp"
#include "support/buffers.hpp"
#include "support/reference.hpp"
#include "support/tolerance.hpp"

namespace {

using attend::AttentionOptions;
using attend::index_t;
using attend::MatrixView;
using attend::TensorView;
using ref::real;
using testing_support::Layout;
using testing_support::MatrixBuffer;
using testing_support::TensorBuffer;

// One block: query tokens [batch * sq, E], key and value tokens [batch * sk, E] (the query
// tokens themselves for self-attention), E = heads * head_dim.
struct Shape {
  index_t batch = 2, sq = 7, sk = 7, heads = 4, kv_heads = 4, head_dim = 16;
  bool cross = false;  // key and value from other tokens than the query (else sq == sk)
  bool biases = true;
};

std::string describe(const Shape& s) {
  std::ostringstream os;
  os << "B=" << s.batch << " Sq=" << s.sq << " Sk=" << s.sk << " Hq=" << s.heads
     << " Hkv=" << s.kv_heads << " D=" << s.head_dim << (s.cross ? " cross" : " self")
     << (s.biases ? " biases" : " no biases");
  return os.str();
}

// The block's inputs, weights (uniform in +-1/sqrt(fan_in), as nn.Linear initialises them)
// and output, in padded buffers with canaries.
template <class T>
struct Block {
  Shape shape;
  index_t e;
  MatrixBuffer<T> query, key, value;
  MatrixBuffer<T> in_w, out_w;  // [(Hq + 2 Hkv) D, E], [E, Hq D]
  std::vector<T> in_b, out_b;   // [(Hq + 2 Hkv) D], [E]; empty without biases
  MatrixBuffer<T> y;            // [batch * sq, E]

  explicit Block(const Shape& s, std::uint32_t seed = 5)
      : shape(s),
        e(s.heads * s.head_dim),
        query(s.batch * s.sq, e),
        key(s.cross ? s.batch * s.sk : 0, e),
        value(s.cross ? s.batch * s.sk : 0, e),
        in_w((s.heads + 2 * s.kv_heads) * s.head_dim, e),
        out_w(e, e),
        y(s.batch * s.sq, e) {
    const double bound = 1 / std::sqrt(double(e));
    query.fill_random(seed);
    key.fill_random(seed + 1);
    value.fill_random(seed + 2);
    in_w.fill_random(seed + 3, -bound, bound);
    out_w.fill_random(seed + 4, -bound, bound);
    if (s.biases) {
      in_b = testing_support::random_vector<T>(in_w.view.rows, seed + 5, -bound, bound);
      out_b = testing_support::random_vector<T>(e, seed + 6, -bound, bound);
    }
  }

  attend::MatrixView<const T> key_tokens() const { return shape.cross ? key.in() : query.in(); }
  attend::MatrixView<const T> value_tokens() const { return shape.cross ? value.in() : query.in(); }
  attend::MhaWeights<T> weights() const {
    return {in_w.in(), in_b, out_w.in(), out_b, shape.heads, shape.kv_heads};
  }
  void run(const AttentionOptions& opts) {
    attend::multihead_attention<T>(query.in(), key_tokens(), value_tokens(), shape.batch, weights(),
                                   y.view, opts);
  }
};

// A matrix as a [1, 1, rows, cols] tensor, for ref::all_close.
template <class T>
TensorView<const T> as_tensor(MatrixView<const T> m) {
  return {m.data, 1, 1, m.rows, m.cols, 0, 0, m.stride};
}

// Rows [first, first + n) of a matrix and entries [first, first + n) of a vector.
ref::Matrix rows(const ref::Matrix& m, index_t first, index_t n) {
  ref::Matrix r(n, m.cols);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < m.cols; ++j) r(i, j) = m(first + i, j);
  return r;
}
template <class T>
std::vector<real> slice(const std::vector<T>& v, index_t first, index_t n) {
  if (v.empty()) return {};
  return std::vector<real>(v.begin() + first, v.begin() + first + n);
}

// Token rows (b, s) of a [batch * seq, heads * d] matrix as heads [batch, heads, seq, d],
// and back.
ref::Tensor split_heads(const ref::Matrix& m, index_t batch, index_t heads) {
  const index_t seq = m.rows / batch, d = m.cols / heads;
  ref::Tensor t(batch, heads, seq, d);
  for (index_t b = 0; b < batch; ++b)
    for (index_t h = 0; h < heads; ++h)
      for (index_t s = 0; s < seq; ++s)
        for (index_t j = 0; j < d; ++j) t(b, h, s, j) = m(b * seq + s, h * d + j);
  return t;
}
ref::Matrix merge_heads(const ref::Tensor& t) {
  ref::Matrix m(t.b * t.s, t.h * t.d);
  for (index_t b = 0; b < t.b; ++b)
    for (index_t h = 0; h < t.h; ++h)
      for (index_t s = 0; s < t.s; ++s)
        for (index_t j = 0; j < t.d; ++j) m(b * t.s + s, h * t.d + j) = t(b, h, s, j);
  return m;
}

ref::Matrix abs(const ref::Matrix& m) {
  ref::Matrix r = m;
  for (real& x : r.v) x = std::fabs(x);
  return r;
}

// A projection [B, H, S, D] computed by attend against ref::linear's product: within
// 2 u slack, tolerance.hpp's factor 2 for the roundings the count leaves out.
template <class T>
::testing::AssertionResult projection_matches(TensorView<const T> actual, const ref::Product& p) {
  const index_t batch = actual.batch, heads = actual.heads;
  const ref::Tensor y = split_heads(p.y, batch, heads);
  const ref::Tensor slack = split_heads(p.slack, batch, heads);
  return ref::all_close<T>(actual, y, [&](index_t b, index_t h, index_t s, index_t d) {
    return 2 * slack(b, h, s, d) * ref::unit_roundoff<T>() +
           2 * real(std::numeric_limits<T>::min());
  });
}

// tolerance.hpp's bound on one element of attention's output (see ref::output_matches).
template <class T>
real attention_tolerance(const ref::Attention& r, index_t b, index_t h, index_t s, index_t d) {
  const real u = ref::unit_roundoff<T>(), sk_terms = real(2 * r.rows.p.d + 8);
  return 2 * r.o_abs(b, h, s, d) * (2 * r.slack(b, h, s, 0) + sk_terms) * u +
         2 * real(std::numeric_limits<T>::min());
}

// The reference block and the bound on each element of y [batch * sq, E].
struct Expected {
  ref::Matrix y, tolerance;
  ref::Tensor q, k, v;  // the projected heads that entered attention (attend's own)
};

template <class T>
Expected reference(const Block<T>& blk, const AttentionOptions& opts) {
  const Shape& s = blk.shape;
  const index_t d = s.head_dim, q_rows = s.heads * d, kv_rows = s.kv_heads * d;
  const ref::Matrix w = ref::load<T>(blk.in_w.in());
  const ref::Product q_ref =
      ref::linear(ref::load<T>(blk.query.in()), rows(w, 0, q_rows), slice(blk.in_b, 0, q_rows));
  const ref::Product k_ref = ref::linear(ref::load<T>(blk.key_tokens()), rows(w, q_rows, kv_rows),
                                         slice(blk.in_b, q_rows, kv_rows));
  const ref::Product v_ref =
      ref::linear(ref::load<T>(blk.value_tokens()), rows(w, q_rows + kv_rows, kv_rows),
                  slice(blk.in_b, q_rows + kv_rows, kv_rows));

  // attend's projections, held to ref::linear, then given to ref::attention as they are.
  const auto qkv = attend::QkvWeights<T>::packed(blk.in_w.in(), blk.in_b, s.heads, s.kv_heads, d);
  TensorBuffer<T> q(s.batch, s.heads, s.sq, d), k(s.batch, s.kv_heads, s.sk, d),
      v(s.batch, s.kv_heads, s.sk, d);
  attend::project_heads<T>(blk.query.in(), qkv.wq, qkv.bq, q.view);
  attend::project_heads<T>(blk.key_tokens(), qkv.wk, qkv.bk, k.view);
  attend::project_heads<T>(blk.value_tokens(), qkv.wv, qkv.bv, v.view);
  EXPECT_TRUE(projection_matches<T>(q.in(), q_ref)) << "Q projection";
  EXPECT_TRUE(projection_matches<T>(k.in(), k_ref)) << "K projection";
  EXPECT_TRUE(projection_matches<T>(v.in(), v_ref)) << "V projection";

  Expected x{{}, {}, ref::load<T>(q.in()), ref::load<T>(k.in()), ref::load<T>(v.in())};
  const ref::Attention r = ref::attention(x.q, x.k, x.v, opts);
  ref::Tensor o_tolerance(r.o.b, r.o.h, r.o.s, r.o.d);
  for (index_t b = 0; b < r.o.b; ++b)
    for (index_t h = 0; h < r.o.h; ++h)
      for (index_t i = 0; i < r.o.s; ++i)
        for (index_t j = 0; j < r.o.d; ++j)
          o_tolerance(b, h, i, j) = attention_tolerance<T>(r, b, h, i, j);

  const ref::Matrix w_out = ref::load<T>(blk.out_w.in());
  const ref::Product out =
      ref::linear(merge_heads(r.o), w_out, std::vector<real>(blk.out_b.begin(), blk.out_b.end()));
  const ref::Product carried = ref::linear(merge_heads(o_tolerance), abs(w_out), {});
  x.y = out.y;
  x.tolerance = carried.y;
  for (std::size_t i = 0; i < x.tolerance.v.size(); ++i)
    x.tolerance.v[i] +=
        2 * out.slack.v[i] * ref::unit_roundoff<T>() + 2 * real(std::numeric_limits<T>::min());
  return x;
}

// Runs the block and holds y to the reference composition; returns the reference.
template <class T>
Expected run_and_check(Block<T>& blk, const AttentionOptions& opts) {
  SCOPED_TRACE(describe(blk.shape));
  blk.run(opts);
  Expected x = reference(blk, opts);
  ref::Tensor y(1, 1, x.y.rows, x.y.cols);
  y.v = x.y.v;
  EXPECT_TRUE(
      ref::all_close<T>(as_tensor<T>(blk.y.in()), y,
                        [&](index_t, index_t, index_t i, index_t j) { return x.tolerance(i, j); }));
  EXPECT_TRUE(blk.y.canaries_intact()) << "y written outside its view";
  return x;
}

struct TypeNames {
  template <class T>
  static std::string GetName(int) {
    return std::is_same_v<T, float> ? "float" : "double";
  }
};

template <class T>
class MultiheadAttention : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(MultiheadAttention, Types, TypeNames);

// ---------------------------------------------------------------------------------------
// Against the reference composition

TYPED_TEST(MultiheadAttention, SelfAttentionMatchesReferenceAcrossSequenceLengths) {
  for (bool biases : {true, false})
    for (index_t s : {1, 7, 17, 63, 65, 129}) {
      Block<TypeParam> blk({2, s, s, 2, 2, 16, false, biases});
      run_and_check(blk, {});
    }
}

TYPED_TEST(MultiheadAttention, SelfAttentionMatchesReferenceAcrossHeadDims) {
  for (index_t d : {1, 16, 64, 80, 128}) {
    Block<TypeParam> blk({2, 17, 17, 2, 2, d, false, true});
    run_and_check(blk, {});
  }
}

TYPED_TEST(MultiheadAttention, CrossAttentionMatchesReference) {
  for (bool biases : {true, false})
    for (auto [sq, sk] : {std::pair<index_t, index_t>{7, 65}, std::pair<index_t, index_t>{17, 7}}) {
      Block<TypeParam> blk({2, sq, sk, 4, 4, 16, true, biases});
      run_and_check(blk, {});
    }
}

TYPED_TEST(MultiheadAttention, GroupedQueryHeadsMatchReference) {
  for (bool cross : {false, true})
    for (index_t kv_heads : {8, 4, 2, 1}) {
      Block<TypeParam> blk({2, 17, cross ? 33 : 17, 8, kv_heads, 8, cross, true});
      run_and_check(blk, {});
    }
}

TYPED_TEST(MultiheadAttention, CausalMatchesReference) {
  for (attend::Alignment alignment : {attend::Alignment::bottom_right, attend::Alignment::top_left})
    for (bool cross : {false, true}) {
      AttentionOptions opts;
      opts.causal = true;
      opts.alignment = alignment;
      Block<TypeParam> blk({2, 17, cross ? 33 : 17, 4, 2, 16, cross, true});
      run_and_check(blk, opts);
    }
}

// Padded key tokens are NaN: their projected keys and values are NaN too, and must never
// be read by attention. Batch 1 has 9 real key tokens of 33.
TYPED_TEST(MultiheadAttention, PaddedKeyTokensAreNeverRead) {
  using T = TypeParam;
  const std::vector<std::int32_t> lengths{33, 9};
  for (bool causal : {false, true}) {
    Block<T> blk({2, 7, 33, 4, 2, 16, true, true});
    for (index_t s = lengths[1]; s < 33; ++s)
      for (index_t j = 0; j < blk.e; ++j) {
        blk.key.view(33 + s, j) = std::numeric_limits<T>::quiet_NaN();
        blk.value.view(33 + s, j) = std::numeric_limits<T>::quiet_NaN();
      }
    AttentionOptions opts;
    opts.key_lengths = lengths;
    opts.causal = causal;
    run_and_check(blk, opts);
    for (index_t i = 0; i < blk.y.view.rows; ++i)
      for (index_t j = 0; j < blk.e; ++j) ASSERT_TRUE(std::isfinite(blk.y.view(i, j)));
  }
}

// No key tokens: every query row is fully masked, attention gives exact zeros, and the
// block's output is the output bias exactly (zero without biases).
TYPED_TEST(MultiheadAttention, NoKeyTokensYieldTheOutputBias) {
  using T = TypeParam;
  for (bool biases : {true, false}) {
    Block<T> blk({2, 7, 0, 4, 2, 16, true, biases});
    blk.run({});
    for (index_t i = 0; i < blk.y.view.rows; ++i)
      for (index_t j = 0; j < blk.e; ++j)
        ASSERT_EQ(blk.y.view(i, j), biases ? blk.out_b[std::size_t(j)] : T(0)) << i << ", " << j;
    EXPECT_TRUE(blk.y.canaries_intact());
  }
}

// No query tokens: a valid call with nothing to write.
TYPED_TEST(MultiheadAttention, ZeroQueryTokensWriteNothing) {
  Block<TypeParam> blk({2, 0, 9, 4, 2, 16, true, true});
  EXPECT_NO_THROW(blk.run({}));
  EXPECT_TRUE(blk.y.canaries_intact());
}

// The same products, written with Eigen in long double from the same projected heads:
// an independent second computation of the expected block, held to the same bound.
TYPED_TEST(MultiheadAttention, MatchesEigenProducts) {
  using T = TypeParam;
  using LongMatrix = Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>;
  const Shape s{2, 17, 17, 4, 2, 16, false, true};
  Block<T> blk(s);
  AttentionOptions opts;
  opts.causal = true;
  const Expected x = run_and_check(blk, opts);

  auto head = [](const ref::Tensor& t, index_t b, index_t h) {
    LongMatrix m(t.s, t.d);
    for (index_t i = 0; i < t.s; ++i)
      for (index_t j = 0; j < t.d; ++j) m(i, j) = t(b, h, i, j);
    return m;
  };
  using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const LongMatrix w_out =
      Eigen::Map<const RowMajor, 0, Eigen::OuterStride<>>(
          blk.out_w.view.data, blk.e, blk.e, Eigen::OuterStride<>(blk.out_w.view.stride))
          .template cast<long double>();
  LongMatrix concat(s.batch * s.sq, blk.e);
  const long double scale = 1 / std::sqrt((long double)s.head_dim);
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t h = 0; h < s.heads; ++h) {
      const index_t g = h / (s.heads / s.kv_heads);
      LongMatrix scores = scale * head(x.q, b, h) * head(x.k, b, g).transpose();
      for (index_t i = 0; i < s.sq; ++i)
        for (index_t j = i + 1; j < s.sk; ++j)
          scores(i, j) = -std::numeric_limits<long double>::infinity();
      LongMatrix p = (scores.colwise() - scores.rowwise().maxCoeff()).array().exp().matrix();
      p = (p.array().colwise() / p.rowwise().sum().array()).matrix();
      concat.block(b * s.sq, h * s.head_dim, s.sq, s.head_dim) = p * head(x.v, b, g);
    }
  const Eigen::Matrix<long double, 1, Eigen::Dynamic> b_out =
      Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(blk.out_b.data(), blk.e)
          .template cast<long double>();
  const LongMatrix y = (concat * w_out.transpose()).rowwise() + b_out;

  ref::Tensor expected(1, 1, y.rows(), y.cols());
  for (index_t i = 0; i < y.rows(); ++i)
    for (index_t j = 0; j < y.cols(); ++j) expected(0, 0, i, j) = y(i, j);
  EXPECT_TRUE(
      ref::all_close<T>(as_tensor<T>(blk.y.in()), expected,
                        [&](index_t, index_t, index_t i, index_t j) { return x.tolerance(i, j); }));
}

// ---------------------------------------------------------------------------------------
// Against attend's own public calls: the same arithmetic in the same order, so the same
// bits. Self-attention projects with project_qkv into one fused BSHD buffer
// [B, S, Hq + 2 Hkv, D]; cross-attention projects queries and keys/values separately.

template <class T>
void expect_same_bits_as_public_calls(Block<T>& blk, const AttentionOptions& opts) {
  SCOPED_TRACE(describe(blk.shape));
  const Shape& s = blk.shape;
  const index_t d = s.head_dim, fused_heads = s.heads + 2 * s.kv_heads;
  blk.run(opts);

  const auto w = attend::QkvWeights<T>::packed(blk.in_w.in(), blk.in_b, s.heads, s.kv_heads, d);
  std::vector<T> fused(std::size_t(s.batch * s.sq * fused_heads * d));
  TensorBuffer<T> kc(s.batch, s.kv_heads, s.sk, d), vc(s.batch, s.kv_heads, s.sk, d);
  // Heads [0, Hq) of the fused buffer are Q, then Hkv heads of K, then Hkv of V.
  auto fused_heads_at = [&](index_t first, index_t count) {
    return TensorView<T>{fused.data() + first * d, s.batch, count,          s.sq, d,
                         s.sq * fused_heads * d,   d,       fused_heads * d};
  };
  const TensorView<T> q = fused_heads_at(0, s.heads);
  TensorView<T> k = fused_heads_at(s.heads, s.kv_heads),
                v = fused_heads_at(s.heads + s.kv_heads, s.kv_heads);
  if (s.cross) {
    k = kc.view, v = vc.view;
    attend::project_heads<T>(blk.query.in(), w.wq, w.bq, q);
    attend::project_heads<T>(blk.key.in(), w.wk, w.bk, k);
    attend::project_heads<T>(blk.value.in(), w.wv, w.bv, v);
  } else {
    attend::project_qkv<T>(blk.query.in(), w, q, k, v);
  }
  TensorBuffer<T> o(s.batch, s.heads, s.sq, d, Layout::bshd);
  attend::attention<T>(q, k, v, o.view, opts);
  MatrixBuffer<T> y(s.batch * s.sq, blk.e);
  attend::project_output<T>(o.in(), blk.out_w.in(), blk.out_b, y.view);

  for (index_t i = 0; i < y.view.rows; ++i)
    ASSERT_EQ(0, std::memcmp(y.view.row(i), blk.y.view.row(i), sizeof(T) * std::size_t(blk.e)))
        << "row " << i;
}

TYPED_TEST(MultiheadAttention, IsBitIdenticalToItsPublicComposition) {
  const std::vector<std::int32_t> lengths{17, 11};
  for (bool cross : {false, true})
    for (bool biases : {true, false})
      for (index_t kv_heads : {4, 2, 1}) {
        AttentionOptions opts;
        opts.causal = true;
        opts.key_lengths = lengths;
        Block<TypeParam> blk({2, cross ? 7 : 17, 17, 4, kv_heads, 16, cross, biases});
        expect_same_bits_as_public_calls(blk, opts);
      }
}

// ---------------------------------------------------------------------------------------
// Errors: std::invalid_argument naming the argument; y and every input unchanged.

template <class T>
struct Call {
  MatrixView<const T> query, key, value;
  index_t batch;
  attend::MhaWeights<T> w;
  MatrixView<T> y;
  AttentionOptions opts;
};

template <class T>
void expect_rejected(Block<T>& blk, const std::string& arg,
                     const std::function<void(Call<T>&)>& break_it) {
  SCOPED_TRACE("argument " + arg);
  Call<T> c{blk.query.in(),
            blk.key_tokens(),
            blk.value_tokens(),
            blk.shape.batch,
            blk.weights(),
            blk.y.view,
            {}};
  break_it(c);
  const std::vector<T> before[] = {blk.query.storage, blk.key.storage,   blk.value.storage,
                                   blk.in_w.storage,  blk.out_w.storage, blk.y.storage};
  try {
    attend::multihead_attention<T>(c.query, c.key, c.value, c.batch, c.w, c.y, c.opts);
    ADD_FAILURE() << "accepted a bad " << arg;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("attend::multihead_attention: " + arg + ": "),
              std::string::npos)
        << e.what();
  }
  const std::vector<T>* after[] = {&blk.query.storage, &blk.key.storage,   &blk.value.storage,
                                   &blk.in_w.storage,  &blk.out_w.storage, &blk.y.storage};
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(0, std::memcmp(before[i].data(), after[i]->data(), before[i].size() * sizeof(T)))
        << "buffer " << i << " (query, key, value, in_proj_weight, out_proj_weight, y) changed";
}

TYPED_TEST(MultiheadAttention, RejectsBadShapesWithoutWriting) {
  using T = TypeParam;
  using C = Call<T>;
  Block<T> blk({2, 7, 9, 4, 2, 16, true, true});  // E = 64, in_proj_weight [128, 64]
  MatrixBuffer<T> wide(14, 66), in_w_square(192, 64);
  const std::vector<T> short_bias(63), long_bias(129);

  expect_rejected<T>(blk, "batch", [](C& c) { c.batch = 0; });
  expect_rejected<T>(blk, "num_heads", [](C& c) { c.w.num_heads = 0; });
  expect_rejected<T>(blk, "num_kv_heads", [](C& c) { c.w.num_kv_heads = 3; });
  // E = 66 is not a multiple of 4 heads.
  expect_rejected<T>(blk, "query.cols", [&](C& c) { c.query = wide.in(); });
  expect_rejected<T>(blk, "query", [](C& c) { c.query.data = nullptr; });
  expect_rejected<T>(blk, "query", [](C& c) { c.query.stride = 63; });
  // 14 query rows and 18 key rows do not split into 4 batches, nor 17 key rows into 2.
  expect_rejected<T>(blk, "query.rows", [](C& c) { c.batch = 4; });
  expect_rejected<T>(blk, "key.rows", [](C& c) { c.key.rows = 17, c.value.rows = 17; });
  expect_rejected<T>(blk, "key", [](C& c) { c.key.cols = 32; });
  expect_rejected<T>(blk, "value", [](C& c) { c.value.rows = 16; });
  expect_rejected<T>(blk, "value", [](C& c) { c.value.cols = 65; });
  expect_rejected<T>(blk, "y", [](C& c) { c.y.rows = 13; });
  expect_rejected<T>(blk, "y", [](C& c) { c.y.cols = 60; });
  expect_rejected<T>(blk, "y", [](C& c) { c.y.stride = 10; });
  // in_proj_weight [(Hq + 2 Hkv) D, E] = [128, 64]: the MHA shape [3E, E] is wrong for GQA.
  expect_rejected<T>(blk, "in_proj_weight", [&](C& c) { c.w.in_proj_weight = in_w_square.in(); });
  expect_rejected<T>(blk, "in_proj_weight", [](C& c) { c.w.in_proj_weight.cols = 32; });
  expect_rejected<T>(blk, "in_proj_weight", [](C& c) { c.w.in_proj_weight.data = nullptr; });
  expect_rejected<T>(blk, "in_proj_bias.size", [&](C& c) { c.w.in_proj_bias = long_bias; });
  expect_rejected<T>(blk, "out_proj_weight", [](C& c) { c.w.out_proj_weight.rows = 63; });
  expect_rejected<T>(blk, "out_proj_weight", [](C& c) { c.w.out_proj_weight.cols = 65; });
  expect_rejected<T>(blk, "out_proj_bias.size", [&](C& c) { c.w.out_proj_bias = short_bias; });
}

TYPED_TEST(MultiheadAttention, RejectsAliasedOutputAndBadOptionsWithoutWriting) {
  using T = TypeParam;
  using C = Call<T>;
  Block<T> blk({2, 7, 9, 4, 2, 16, true, true});
  // y [14, 64] laid over each input: every input buffer is at least that large.
  auto y_over = [&](MatrixBuffer<T>& m) {
    return MatrixView<T>(m.storage.data(), blk.y.view.rows, blk.e, m.view.stride);
  };
  expect_rejected<T>(blk, "y", [&](C& c) { c.y = y_over(blk.query); });
  expect_rejected<T>(blk, "y", [&](C& c) { c.y = y_over(blk.key); });
  expect_rejected<T>(blk, "y", [&](C& c) { c.y = y_over(blk.value); });
  expect_rejected<T>(blk, "y", [&](C& c) { c.y = y_over(blk.in_w); });
  expect_rejected<T>(blk, "y", [&](C& c) { c.y = y_over(blk.out_w); });
  // Biases laid inside y (only read if the check were missing).
  expect_rejected<T>(blk, "y", [&](C& c) { c.w.in_proj_bias = {blk.y.storage.data() + 5, 128}; });
  expect_rejected<T>(blk, "y", [&](C& c) { c.w.out_proj_bias = {blk.y.storage.data() + 70, 64}; });

  const std::vector<std::int32_t> three_lengths{9, 9, 9}, too_long{9, 10};
  expect_rejected<T>(blk, "key_lengths.size", [&](C& c) { c.opts.key_lengths = three_lengths; });
  expect_rejected<T>(blk, "key_lengths", [&](C& c) { c.opts.key_lengths = too_long; });
  expect_rejected<T>(blk, "scale", [](C& c) { c.opts.scale = std::nan(""); });
  expect_rejected<T>(blk, "window.left", [](C& c) { c.opts.window.left = -3; });
}

// ---------------------------------------------------------------------------------------
// Against PyTorch: torch.nn.MultiheadAttention's own outputs (float64), recorded by
// tests/data/make_torch_mha_golden.py. They pin the conventions no self-consistent test
// can: the Q, K, V order of in_proj_weight's rows, the head split, the 1/sqrt(D) scale and
// the polarity of the masks. PyTorch's float64 result is within the double bound of the
// exact block, which is within the T bound, so attend's result is within twice the bound.

template <class T>
void expect_matches_torch(bool cross, const AttentionOptions& opts,
                          const std::vector<double>& expected) {
  namespace g = torch_mha_golden;
  const index_t sk = cross ? g::sk : g::sq;
  Block<T> blk({g::batch, g::sq, sk, g::heads, g::heads, g::embed / g::heads, cross, true});
  auto load = [](MatrixView<T> m, const std::vector<double>& values) {
    ASSERT_EQ(std::size_t(m.rows * m.cols), values.size());
    for (index_t i = 0; i < m.rows; ++i)
      for (index_t j = 0; j < m.cols; ++j) m(i, j) = T(values[std::size_t(i * m.cols + j)]);
  };
  load(blk.query.view, g::x);
  if (cross) load(blk.key.view, g::memory), load(blk.value.view, g::memory);
  load(blk.in_w.view, g::in_proj_weight);
  load(blk.out_w.view, g::out_proj_weight);
  blk.in_b.assign(g::in_proj_bias.begin(), g::in_proj_bias.end());
  blk.out_b.assign(g::out_proj_bias.begin(), g::out_proj_bias.end());

  const Expected x = run_and_check(blk, opts);
  ref::Tensor torch_y(1, 1, x.y.rows, x.y.cols);
  torch_y.v.assign(expected.begin(), expected.end());
  EXPECT_TRUE(ref::all_close<T>(
      as_tensor<T>(blk.y.in()), torch_y,
      [&](index_t, index_t, index_t i, index_t j) { return 2 * x.tolerance(i, j); }));
}

TYPED_TEST(MultiheadAttention, SelfAttentionMatchesPyTorch) {
  expect_matches_torch<TypeParam>(false, {}, torch_mha_golden::self_out);
}

// PyTorch's attn_mask = triu(ones, 1) (true = may not attend) is causal attention.
TYPED_TEST(MultiheadAttention, CausalSelfAttentionMatchesPyTorch) {
  AttentionOptions opts;
  opts.causal = true;
  expect_matches_torch<TypeParam>(false, opts, torch_mha_golden::causal_out);
}

// PyTorch's key_padding_mask (true = padding) is attend's key_lengths.
TYPED_TEST(MultiheadAttention, PaddedCrossAttentionMatchesPyTorch) {
  AttentionOptions opts;
  opts.key_lengths = torch_mha_golden::key_lengths;
  expect_matches_torch<TypeParam>(true, opts, torch_mha_golden::cross_out);
}

}  // namespace
