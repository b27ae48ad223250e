// attend/varlen.hpp: attention_varlen over sequences packed back to back, against the
// oracle run on each sequence alone, and against attention() called on each sequence.
//
// Each sequence is an independent attention() problem (varlen.hpp), and attention_varlen
// runs the same kernel on row views of each sequence: on one path each sequence's rows
// are the same bits as attention() on a copy of that sequence laid out the same way
// (same strides). Those comparisons are exact; the oracle comparisons use tolerance.hpp.

#include "attend/attention.hpp"
#include "attend/context.hpp"
#include "attend/isa.hpp"
#include "attend/varlen.hpp"

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "support/buffers.hpp"
#include "support/checks.hpp"
#include "support/reference.hpp"
#include "support/tolerance.hpp"

namespace {

using attend::Alignment;
using attend::AttentionOptions;
using attend::index_t;
using attend::TensorView;
using testing_support::canary;
using testing_support::FloatingTypes;
using testing_support::Layout;
using testing_support::rejects;
using testing_support::same_bits;
using testing_support::TensorBuffer;
using testing_support::TypeNames;

constexpr Layout kLayouts[] = {Layout::bhsd, Layout::bshd};
const std::vector<std::int32_t> kLengths{0, 1, 7, 17, 63, 65, 129};

// Rows [first, first + count) of a [1, H, total, D] tensor.
template <class T>
TensorView<T> rows(TensorView<T> t, index_t first, index_t count) {
  t.data += first * t.seq_stride;
  t.seq = count;
  return t;
}

std::vector<std::int32_t> offsets(const std::vector<std::int32_t>& lengths) {
  std::vector<std::int32_t> cu{0};
  for (auto l : lengths) cu.push_back(cu.back() + l);
  return cu;
}

struct Shape {
  index_t q_heads = 4, kv_heads = 2, dk = 32, dv = 32;
  std::vector<std::int32_t> q_lengths = kLengths, k_lengths = kLengths;
  Layout layout = Layout::bshd;  // [total, heads, dim]: a packed QKV projection's layout
};

// Packed q [1, Hq, total_q, Dk], k [1, Hkv, total_k, Dk], v, o, lse.
template <class T>
struct Packed {
  Shape shape;
  std::vector<std::int32_t> cu_q, cu_k;
  TensorBuffer<T> q, k, v, o, lse;

  explicit Packed(const Shape& s, std::uint32_t seed = 3)
      : shape(s),
        cu_q(offsets(s.q_lengths)),
        cu_k(offsets(s.k_lengths)),
        q(1, s.q_heads, cu_q.back(), s.dk, s.layout),
        k(1, s.kv_heads, cu_k.back(), s.dk, s.layout),
        v(1, s.kv_heads, cu_k.back(), s.dv, s.layout),
        o(1, s.q_heads, cu_q.back(), s.dv, s.layout),
        lse(1, s.q_heads, cu_q.back(), 1, s.layout) {
    q.fill_random(seed);
    k.fill_random(seed + 1);
    v.fill_random(seed + 2);
  }
  index_t sequences() const { return index_t(shape.q_lengths.size()); }

  void run(const AttentionOptions& opts, const attend::Context& ctx = {}) {
    std::fill(o.storage.begin(), o.storage.end(), canary<T>());
    std::fill(lse.storage.begin(), lse.storage.end(), canary<T>());
    attend::attention_varlen<T>(q.in(), k.in(), v.in(), cu_q, cu_k, o.view, opts, lse.view, ctx);
  }

  // Sequence s's rows of a packed tensor.
  template <class U>
  TensorView<U> q_rows(TensorView<U> t, index_t s) const {
    return rows(t, cu_q[std::size_t(s)], shape.q_lengths[std::size_t(s)]);
  }
  template <class U>
  TensorView<U> k_rows(TensorView<U> t, index_t s) const {
    return rows(t, cu_k[std::size_t(s)], shape.k_lengths[std::size_t(s)]);
  }

  ref::Attention oracle(index_t s, const AttentionOptions& opts) const {
    return ref::attention(ref::load<T>(q_rows(q.in(), s)), ref::load<T>(k_rows(k.in(), s)),
                          ref::load<T>(k_rows(v.in(), s)), opts);
  }

  std::vector<ref::Attention> oracle(const AttentionOptions& opts) const {
    std::vector<ref::Attention> r;
    for (index_t s = 0; s < sequences(); ++s) r.push_back(oracle(s, opts));
    return r;
  }

  // Every sequence's rows against its oracle r[s]; nothing written outside o and lse.
  ::testing::AssertionResult matches(const std::vector<ref::Attention>& r) const {
    for (index_t s = 0; s < sequences(); ++s) {
      const auto out = ref::output_matches<T>(q_rows(o.in(), s), r[std::size_t(s)]);
      if (!out)
        return ::testing::AssertionFailure() << "o of sequence " << s << ": " << out.message();
      const auto l = ref::lse_matches<T>(q_rows(lse.in(), s), r[std::size_t(s)].rows);
      if (!l)
        return ::testing::AssertionFailure() << "lse of sequence " << s << ": " << l.message();
    }
    if (!o.canaries_intact()) return ::testing::AssertionFailure() << "o written outside its view";
    if (!lse.canaries_intact())
      return ::testing::AssertionFailure() << "lse written outside its view";
    return ::testing::AssertionSuccess();
  }
};

// Sequence s of p copied into buffers of its own, same layout (so the same strides), and
// attention() on them; its o and lse must be the bits varlen wrote for the sequence.
template <class T>
::testing::AssertionResult same_as_alone(const Packed<T>& p, index_t s,
                                         const AttentionOptions& opts, const attend::Context& ctx) {
  const Shape& sh = p.shape;
  const index_t sq = sh.q_lengths[std::size_t(s)], sk = sh.k_lengths[std::size_t(s)];
  TensorBuffer<T> q(1, sh.q_heads, sq, sh.dk, sh.layout), k(1, sh.kv_heads, sk, sh.dk, sh.layout),
      v(1, sh.kv_heads, sk, sh.dv, sh.layout), o(1, sh.q_heads, sq, sh.dv, sh.layout),
      lse(1, sh.q_heads, sq, 1, sh.layout);
  const auto copy = [](TensorView<const T> from, TensorView<T> to) {
    for (index_t h = 0; h < to.heads; ++h)
      for (index_t i = 0; i < to.seq; ++i) std::copy_n(from.row(0, h, i), to.dim, to.row(0, h, i));
  };
  copy(p.q_rows(p.q.in(), s), q.view);
  copy(p.k_rows(p.k.in(), s), k.view);
  copy(p.k_rows(p.v.in(), s), v.view);
  attend::attention<T>(q.in(), k.in(), v.in(), o.view, opts, lse.view, ctx);
  const TensorView<const T> po = p.q_rows(p.o.in(), s), pl = p.q_rows(p.lse.in(), s);
  for (index_t h = 0; h < sh.q_heads; ++h)
    for (index_t i = 0; i < sq; ++i) {
      if (std::memcmp(po.row(0, h, i), o.view.row(0, h, i), sizeof(T) * sh.dv) != 0)
        return ::testing::AssertionFailure()
               << "o row [" << h << ", " << i << "] of sequence " << s;
      if (std::memcmp(pl.row(0, h, i), lse.view.row(0, h, i), sizeof(T)) != 0)
        return ::testing::AssertionFailure()
               << "lse row [" << h << ", " << i << "] of sequence " << s;
    }
  return ::testing::AssertionSuccess();
}

// On every path: against the oracle, and each sequence against attention() alone.
template <class T>
void check_every_path(Packed<T>& p, const AttentionOptions& opts, const std::string& what) {
  const std::vector<ref::Attention> r = p.oracle(opts);
  for (attend::Isa isa : attend::supported_isas()) {
    SCOPED_TRACE(what + ", path " + attend::name(isa) + ", " + name(p.shape.layout));
    attend::Context ctx;
    ctx.isa = isa;
    p.run(opts, ctx);
    EXPECT_TRUE(p.matches(r));
    for (index_t s = 0; s < p.sequences(); ++s) EXPECT_TRUE(same_as_alone(p, s, opts, ctx));
  }
}

// ALiBi's geometric slopes 2^(-8 (h + 1) / H) (Press et al. 2022).
std::vector<float> alibi_slopes(index_t heads) {
  std::vector<float> s(static_cast<std::size_t>(heads));
  for (index_t h = 0; h < heads; ++h)
    s[std::size_t(h)] = std::exp2(-8.0f * float(h + 1) / float(heads));
  return s;
}

template <class T>
class Varlen : public ::testing::Test {};
TYPED_TEST_SUITE(Varlen, FloatingTypes, TypeNames);

// ---------------------------------------------------------------------------------------
// Packed sequences

// Self-attention prefill: lengths 0, 1, 7, 17, 63, 65, 129 in one call, the same offsets
// for queries and keys.
TYPED_TEST(Varlen, PackedPrefillMatchesTheOracleAndEachSequenceAlone) {
  for (Layout layout : kLayouts)
    for (bool causal : {false, true}) {
      Shape s;
      s.layout = layout;
      Packed<TypeParam> p(s);
      AttentionOptions opts;
      opts.causal = causal;
      check_every_path(p, opts, causal ? "causal" : "not causal");
    }
}

// Query and key lengths differ per sequence (more queries than keys, fewer, a sequence
// with queries but no key), and every option aligns per sequence.
TYPED_TEST(Varlen, EveryOptionAlignsPerSequenceWhenQueryAndKeyLengthsDiffer) {
  Shape s;
  s.q_lengths = {0, 1, 7, 17, 63, 65, 129, 3};
  s.k_lengths = {5, 0, 17, 7, 129, 63, 65, 3};
  Packed<TypeParam> p(s);
  const std::vector<float> slopes = alibi_slopes(s.q_heads);
  const std::vector<float> sinks{0.5f, -1.0f, 2.0f, 0.0f};
  struct Case {
    std::string name;
    std::function<void(AttentionOptions&)> set;
  };
  const std::vector<Case> cases{
      {"not causal", [](AttentionOptions&) {}},
      {"causal", [](AttentionOptions& o) { o.causal = true; }},
      {"causal top-left",
       [](AttentionOptions& o) { o.causal = true, o.alignment = Alignment::top_left; }},
      {"window 4 / 2", [](AttentionOptions& o) { o.window.left = 4, o.window.right = 2; }},
      {"causal window 10", [](AttentionOptions& o) { o.causal = true, o.window.left = 10; }},
      {"alibi", [&](AttentionOptions& o) { o.alibi_slopes = slopes; }},
      {"sinks", [&](AttentionOptions& o) { o.sinks = sinks, o.causal = true; }},
      {"softcap", [](AttentionOptions& o) { o.softcap = 2.0, o.scale = 4.0; }},
      {"everything", [&](AttentionOptions& o) {
         o.causal = true, o.window.left = 30, o.alibi_slopes = slopes, o.sinks = sinks;
         o.softcap = 5.0;
       }}};
  for (const Case& c : cases) {
    AttentionOptions opts;
    c.set(opts);
    check_every_path(p, opts, c.name);
  }
}

// A sequence with queries and no key gives zeros and -inf (or the sink), whatever the
// sequences around it hold.
TYPED_TEST(Varlen, QueriesWithoutKeysGiveZerosAndMinusInfinityOrTheSink) {
  using T = TypeParam;
  Shape s;
  s.q_lengths = {3, 4, 2};
  s.k_lengths = {5, 0, 6};
  Packed<T> p(s);
  const std::vector<float> sinks{0.5f, -2.25f, 1.0f, -0.75f};
  for (bool with_sinks : {false, true}) {
    AttentionOptions opts;
    if (with_sinks) opts.sinks = sinks;
    p.run(opts);
    EXPECT_TRUE(p.matches(p.oracle(opts)));
    for (index_t h = 0; h < s.q_heads; ++h)
      for (index_t i = 3; i < 7; ++i) {  // sequence 1's rows
        for (index_t d = 0; d < s.dv; ++d) EXPECT_EQ(p.o.view.row(0, h, i)[d], T(0));
        EXPECT_EQ(*p.lse.view.row(0, h, i),
                  with_sinks ? T(sinks[std::size_t(h)]) : -std::numeric_limits<T>::infinity());
      }
  }
}

TYPED_TEST(Varlen, GroupedAndMultiQueryHeads) {
  for (index_t kv_heads : {1, 2, 8}) {
    Shape s;
    s.q_heads = 8, s.kv_heads = kv_heads;
    Packed<TypeParam> p(s);
    AttentionOptions opts;
    opts.causal = true;
    check_every_path(p, opts, "Hkv " + std::to_string(kv_heads));
  }
}

TYPED_TEST(Varlen, HeadWidthsFromOneTo128AndUnequalKeyAndValueWidths) {
  struct Widths {
    index_t dk, dv;
  };
  for (Widths w : {Widths{1, 1}, Widths{16, 16}, Widths{64, 64}, Widths{80, 80}, Widths{128, 128},
                   Widths{16, 80}, Widths{128, 1}}) {
    Shape s;
    s.dk = w.dk, s.dv = w.dv;
    s.q_lengths = {3, 17, 65}, s.k_lengths = {3, 17, 65};
    Packed<TypeParam> p(s);
    AttentionOptions opts;
    opts.causal = true;
    check_every_path(p, opts, "dk " + std::to_string(w.dk) + ", dv " + std::to_string(w.dv));
  }
}

// A NaN key row reaches only the rows of its own sequence that see it.
TYPED_TEST(Varlen, NaNStaysInsideItsSequence) {
  using T = TypeParam;
  Shape s;
  Packed<T> p(s);
  const index_t seq = 3, key = 10;  // sequence 3 holds 17 tokens
  for (index_t d = 0; d < s.dk; ++d)
    p.k.view.row(0, 1, p.cu_k[seq] + key)[d] = std::numeric_limits<T>::quiet_NaN();
  AttentionOptions opts;
  opts.causal = true;
  p.run(opts);
  EXPECT_TRUE(p.matches(p.oracle(opts)));
  for (index_t h = 0; h < s.q_heads; ++h)
    for (index_t t = 0; t < p.cu_q.back(); ++t) {
      const bool sees = h / 2 == 1 && t >= p.cu_q[seq] + key && t < p.cu_q[seq + 1];
      EXPECT_EQ(std::isnan(p.o.view.row(0, h, t)[0]), sees) << "head " << h << ", row " << t;
    }
}

// Sequences run one after another, each split into tasks whose boundaries never depend on
// the thread count: the same bits for 1, 2 and 3 threads on every path.
TYPED_TEST(Varlen, ResultsAreBitIdenticalForAnyThreadCount) {
  using T = TypeParam;
  Shape s;
  s.q_lengths = {129, 1, 300, 65};
  s.k_lengths = {129, 200, 300, 65};
  Packed<T> p(s);
  AttentionOptions opts;
  opts.causal = true;
  for (attend::Isa isa : attend::supported_isas()) {
    attend::Context ctx;
    ctx.isa = isa;
    p.run(opts, ctx);
    const std::vector<T> o = p.o.storage, lse = p.lse.storage;
    for (int threads : {1, 2, 3}) {
      attend::ThreadPool pool(threads);
      ctx.executor = &pool;
      p.run(opts, ctx);
      EXPECT_TRUE(same_bits(o, p.o.storage)) << attend::name(isa) << ", " << threads << " threads";
      EXPECT_TRUE(same_bits(lse, p.lse.storage))
          << attend::name(isa) << ", " << threads << " threads";
    }
  }
}

// Without lse, the same o.
TYPED_TEST(Varlen, LseIsOptional) {
  using T = TypeParam;
  Shape s;
  Packed<T> p(s);
  p.run({});
  const std::vector<T> o = p.o.storage;
  std::fill(p.o.storage.begin(), p.o.storage.end(), canary<T>());
  attend::attention_varlen<T>(p.q.in(), p.k.in(), p.v.in(), p.cu_q, p.cu_k, p.o.view);
  EXPECT_TRUE(same_bits(o, p.o.storage));
}

TYPED_TEST(Varlen, NoRowsWriteNothing) {
  using T = TypeParam;
  Shape s;
  s.q_lengths = {0, 0}, s.k_lengths = {0, 4};
  Packed<T> p(s);
  p.run({});
  EXPECT_TRUE(p.o.canaries_intact() && p.lse.canaries_intact());
  // No sequence at all: offsets {0}.
  s.q_lengths = {}, s.k_lengths = {};
  Packed<T> none(s);
  none.run({});
  EXPECT_TRUE(none.o.canaries_intact());
}

// A second oracle: Eigen in long double, softmax(scale Q K^T) V of each sequence and head
// (not causal).
TYPED_TEST(Varlen, MatchesAnEigenOracle) {
  using T = TypeParam;
  using Mat = Eigen::Matrix<ref::real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Shape s;
  s.q_lengths = {7, 17}, s.k_lengths = {65, 3};
  Packed<T> p(s);
  p.run({});
  for (index_t seq = 0; seq < 2; ++seq) {
    const ref::Attention r = p.oracle(seq, {});
    const TensorView<const T> q = p.q_rows(p.q.in(), seq), k = p.k_rows(p.k.in(), seq),
                              v = p.k_rows(p.v.in(), seq);
    ref::Tensor expected(1, s.q_heads, q.seq, s.dv);
    for (index_t h = 0; h < s.q_heads; ++h) {
      Mat qm(q.seq, s.dk), km(k.seq, s.dk), vm(k.seq, s.dv);
      for (index_t i = 0; i < q.seq; ++i)
        for (index_t d = 0; d < s.dk; ++d) qm(i, d) = q.row(0, h, i)[d];
      for (index_t j = 0; j < k.seq; ++j) {
        for (index_t d = 0; d < s.dk; ++d) km(j, d) = k.row(0, h / 2, j)[d];
        for (index_t d = 0; d < s.dv; ++d) vm(j, d) = v.row(0, h / 2, j)[d];
      }
      const Mat logits = qm * km.transpose() / std::sqrt(ref::real(s.dk));
      for (index_t i = 0; i < q.seq; ++i) {
        const Mat w = (logits.row(i).array() - logits.row(i).maxCoeff()).exp().matrix();
        const Mat out = w * vm / w.sum();
        for (index_t d = 0; d < s.dv; ++d) expected(0, h, i, d) = out(0, d);
      }
    }
    // The oracle's error scales with Eigen's values: output_matches' bound.
    ref::Attention eigen = r;
    eigen.o = expected;
    EXPECT_TRUE(ref::output_matches<T>(p.q_rows(p.o.in(), seq), eigen)) << "sequence " << seq;
  }
}

// ---------------------------------------------------------------------------------------
// Refusals: std::invalid_argument naming the argument, o and lse unchanged

TYPED_TEST(Varlen, RefusesBadOffsetsWithoutWriting) {
  using T = TypeParam;
  Shape s;
  s.q_lengths = {3, 4}, s.k_lengths = {5, 6};
  Packed<T> p(s);
  const auto refuses = [&](const std::string& argument, const std::string& detail,
                           const std::vector<std::int32_t>& cu_q,
                           const std::vector<std::int32_t>& cu_k) {
    return rejects(
        {"attention_varlen", argument, detail},
        [&] {
          attend::attention_varlen<T>(p.q.in(), p.k.in(), p.v.in(), cu_q, cu_k, p.o.view, {},
                                      p.lse.view);
        },
        p.o.storage, p.lse.storage);
  };
  const std::vector<std::int32_t> q_ok{0, 3, 7}, k_ok{0, 5, 11};
  EXPECT_TRUE(refuses("cu_seqlens_q", "expected the first offset 0, got 1", {1, 3, 7}, k_ok));
  EXPECT_TRUE(refuses("cu_seqlens_k", "expected the first offset 0, got -1", q_ok, {-1, 5, 11}));
  EXPECT_TRUE(refuses("cu_seqlens_q", "offsets decrease at entry 2: 5 then 4", {0, 5, 4, 7},
                      {0, 5, 5, 11}));
  EXPECT_TRUE(refuses("cu_seqlens_k", "offsets decrease at entry 1", q_ok, {0, -2, 11}));
  EXPECT_TRUE(
      refuses("cu_seqlens_q", "expected the last offset to be the 7 rows, got 6", {0, 3, 6}, k_ok));
  EXPECT_TRUE(refuses("cu_seqlens_k", "expected the last offset to be the 11 rows, got 12", q_ok,
                      {0, 5, 12}));
  EXPECT_TRUE(refuses("cu_seqlens_q", "expected n + 1 >= 1 offsets, got none", {}, k_ok));
  EXPECT_TRUE(refuses("cu_seqlens_k.size", "expected 3", q_ok, {0, 2, 5, 11}));
}

TYPED_TEST(Varlen, RefusesOptionsAndShapesItCannotTakeWithoutWriting) {
  using T = TypeParam;
  Shape s;
  s.q_lengths = {3, 4}, s.k_lengths = {5, 6};
  Packed<T> p(s);
  const auto refuses = [&](const std::string& argument, const std::string& detail,
                           TensorView<const T> q, TensorView<T> o, const AttentionOptions& opts) {
    return rejects(
        {"attention_varlen", argument, detail},
        [&] {
          attend::attention_varlen<T>(q, p.k.in(), p.v.in(), p.cu_q, p.cu_k, o, opts, p.lse.view);
        },
        p.o.storage, p.lse.storage);
  };
  const std::vector<std::int32_t> lengths{1};
  TensorBuffer<float> bias(1, 1, 7, 11);
  std::unique_ptr<bool[]> mask_storage(new bool[7 * 11]());
  AttentionOptions with_lengths, with_bias, with_mask;
  with_lengths.key_lengths = lengths;
  with_bias.bias = bias.in();
  with_mask.mask = TensorView<const bool>::bhsd(mask_storage.get(), 1, 1, 7, 11);
  EXPECT_TRUE(refuses("opts.key_lengths", "expected none", p.q.in(), p.o.view, with_lengths));
  EXPECT_TRUE(refuses("opts.bias", "expected none", p.q.in(), p.o.view, with_bias));
  EXPECT_TRUE(refuses("opts.mask", "expected none", p.q.in(), p.o.view, with_mask));

  // Batch 2: two halves of the packed rows as a batch are not a packed tensor.
  TensorView<const T> two = p.q.in();
  two.batch = 2, two.seq = 3, two.batch_stride = 4 * two.seq_stride;
  EXPECT_TRUE(refuses("q", "expected shape [1, *, *, *], got [2, 4, 3, 32]", two, p.o.view, {}));
  TensorBuffer<T> o_dv(1, 4, 7, 16);
  EXPECT_TRUE(
      refuses("o", "expected shape [1, 4, 7, 32], got [1, 4, 7, 16]", p.q.in(), o_dv.view, {}));
  AttentionOptions bad_window;
  bad_window.window.left = -3;
  EXPECT_TRUE(refuses("window.left", "got -3", p.q.in(), p.o.view, bad_window));
  // o over q.
  TensorBuffer<T> shared(1, 4, 7, 32);
  EXPECT_TRUE(refuses("o", "overlaps q", shared.in(), shared.view, {}));
}

}  // namespace
