// attend/partials.hpp: merge_partials of attention computed over disjoint sets of keys,
// against the oracle's attention over all the keys at once.
//
// The parts come from attention() (on the path ATTEND_ISA selects) over key subsets:
// contiguous ranges of K and V, or interleaved subsets picked by boolean masks (which keep
// the keys' positions, so causal masks, windows and ALiBi still apply).
//
// Tolerance. With a_p = exp(lse_p - lse) the exact weight of part p (sum_p a_p = 1), the
// merge computes O = sum_p a_p O_p from the parts' results, each off by its own bound
// (tolerance.hpp): err(O_p) <= bound_p, err(lse_p) <= lbound_p. Then
//   - the parts' output errors reach O weighted: sum_p a_p bound_p;
//   - a relative error e_p in the computed weight exp(lse_p - top) moves O by
//     sum_p a_p e_p (O_p - O), at most 2 max_p e_p o_abs (|O_p|, |O| <= the o_abs of the
//     whole problem once weighted, since sum_p a_p o_abs_p = o_abs), where e_p <= the lse
//     errors of part p and of the top part, plus the roundings of the subtraction and of
//     exp: e <= 2 max_p lbound_p + u (max_p |lse_p - top| + 1);
//   - the merge's own sums over P parts, the division and the conversion to T add
//     (2 P + 3) u o_abs.
// The merged lse = top + log(sum of weights) is off by e plus (P + 2) u (1 + |lse|).
// Nothing here is a magic factor: every term is one of the roundings listed.

#include "attend/attention.hpp"
#include "attend/context.hpp"
#include "attend/partials.hpp"

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "support/buffers.hpp"
#include "support/checks.hpp"
#include "support/reference.hpp"
#include "support/tolerance.hpp"

namespace {

using attend::AttentionOptions;
using attend::AttentionPart;
using attend::index_t;
using attend::TensorView;
using ref::real;
using testing_support::canary;
using testing_support::FloatingTypes;
using testing_support::Layout;
using testing_support::rejects;
using testing_support::same_bits;
using testing_support::TensorBuffer;
using testing_support::TypeNames;

constexpr Layout kLayouts[] = {Layout::bhsd, Layout::bshd};

struct Shape {
  index_t batch = 2, heads = 4, kv_heads = 2, sq = 17, sk = 65, dk = 32, dv = 32;
  Layout layout = Layout::bhsd;
};

std::string describe(const Shape& s) {
  return "B=" + std::to_string(s.batch) + " H=" + std::to_string(s.heads) +
         " Hkv=" + std::to_string(s.kv_heads) + " Sq=" + std::to_string(s.sq) +
         " Sk=" + std::to_string(s.sk) + " Dk=" + std::to_string(s.dk) +
         " Dv=" + std::to_string(s.dv) + " " + name(s.layout);
}

// A boolean mask [1, 1, sq, sk], dense.
struct MaskBuffer {
  std::unique_ptr<bool[]> storage;
  TensorView<bool> view;
  MaskBuffer(index_t sq, index_t sk)
      : storage(new bool[std::size_t(sq * sk)]),
        view(TensorView<bool>::bhsd(storage.get(), 1, 1, sq, sk)) {}
};

// One attention problem, its parts, and the merge's outputs.
template <class T>
struct Split {
  Shape shape;
  TensorBuffer<T> q, k, v, o, lse;
  std::vector<std::unique_ptr<TensorBuffer<T>>> part_o, part_lse;
  std::vector<ref::Attention> part_oracle;

  explicit Split(const Shape& s, std::uint32_t seed = 5)
      : shape(s),
        q(s.batch, s.heads, s.sq, s.dk, s.layout),
        k(s.batch, s.kv_heads, s.sk, s.dk, s.layout),
        v(s.batch, s.kv_heads, s.sk, s.dv, s.layout),
        o(s.batch, s.heads, s.sq, s.dv, s.layout),
        lse(s.batch, s.heads, s.sq, 1, s.layout) {
    q.fill_random(seed);
    k.fill_random(seed + 1);
    v.fill_random(seed + 2);
  }

  // A part: attention of all queries over keys [j0, j1) (contiguous views of K and V).
  void add_range(index_t j0, index_t j1, const AttentionOptions& opts) {
    TensorView<const T> kr = k.in(), vr = v.in();
    kr.data += j0 * kr.seq_stride, kr.seq = j1 - j0;
    vr.data += j0 * vr.seq_stride, vr.seq = j1 - j0;
    add(kr, vr, opts);
  }
  // A part: attention over all keys with opts (whose mask picks the part's keys).
  void add_masked(const AttentionOptions& opts) { add(k.in(), v.in(), opts); }

  std::vector<AttentionPart<T>> parts() const {
    std::vector<AttentionPart<T>> p;
    for (std::size_t i = 0; i < part_o.size(); ++i)
      p.push_back({part_o[i]->in(), part_lse[i]->in()});
    return p;
  }

  void merge(const attend::Context& ctx = {}) {
    std::fill(o.storage.begin(), o.storage.end(), canary<T>());
    std::fill(lse.storage.begin(), lse.storage.end(), canary<T>());
    attend::merge_partials<T>(parts(), o.view, lse.view, ctx);
  }

  ref::Attention whole(const AttentionOptions& opts) const {
    return ref::attention(ref::load<T>(q.in()), ref::load<T>(k.in()), ref::load<T>(v.in()), opts);
  }

 private:
  void add(TensorView<const T> kp, TensorView<const T> vp, const AttentionOptions& opts) {
    const Shape& s = shape;
    part_o.push_back(std::make_unique<TensorBuffer<T>>(s.batch, s.heads, s.sq, s.dv, s.layout));
    part_lse.push_back(std::make_unique<TensorBuffer<T>>(s.batch, s.heads, s.sq, 1, s.layout));
    attend::attention<T>(q.in(), kp, vp, part_o.back()->view, opts, part_lse.back()->view);
    part_oracle.push_back(
        ref::attention(ref::load<T>(q.in()), ref::load<T>(kp), ref::load<T>(vp), opts));
  }
};

// tolerance.hpp's bounds on one part's output element and lse.
template <class T>
real output_bound(const ref::Attention& r, index_t b, index_t h, index_t i, index_t d) {
  const real u = ref::unit_roundoff<T>();
  return 2 * r.o_abs(b, h, i, d) * (2 * r.slack(b, h, i, 0) + real(2 * r.rows.p.d + 8)) * u +
         2 * real(std::numeric_limits<T>::min());
}
template <class T>
real lse_bound(const ref::Attention& r, index_t b, index_t h, index_t i) {
  const real u = ref::unit_roundoff<T>();
  return 2 * (r.slack(b, h, i, 0) + real(r.rows.p.d + 4) + std::fabs(r.lse(b, h, i, 0))) * u;
}

// The merged o and lse against the oracle of the whole problem, within the bound derived
// at the top of this file.
template <class T>
::testing::AssertionResult merge_matches(const Split<T>& s, const ref::Attention& whole) {
  const real u = ref::unit_roundoff<T>(), inf = std::numeric_limits<real>::infinity();
  const real parts = real(s.part_oracle.size());
  // e of the top of the file, for row (b, h, i).
  const auto weight_error = [&](index_t b, index_t h, index_t i) {
    real top = -inf, worst = 0, spread = 0;
    for (const ref::Attention& p : s.part_oracle) top = std::max(top, p.lse(b, h, i, 0));
    for (const ref::Attention& p : s.part_oracle) {
      if (p.lse(b, h, i, 0) == -inf) continue;
      worst = std::max(worst, lse_bound<T>(p, b, h, i));
      spread = std::max(spread, std::fabs(p.lse(b, h, i, 0) - top));
    }
    return 2 * worst + u * (spread + 1);
  };
  const auto o_ok =
      ref::all_close<T>(s.o.in(), whole.o, [&](index_t b, index_t h, index_t i, index_t d) {
        real weighted = 0;
        for (const ref::Attention& p : s.part_oracle)
          if (p.lse(b, h, i, 0) > -inf)
            weighted += std::exp(p.lse(b, h, i, 0) - whole.lse(b, h, i, 0)) *
                        output_bound<T>(p, b, h, i, d);
        return weighted +
               (2 * weight_error(b, h, i) + (2 * parts + 3) * u) * whole.o_abs(b, h, i, d) +
               2 * real(std::numeric_limits<T>::min());
      });
  if (!o_ok) return ::testing::AssertionFailure() << "o: " << o_ok.message();
  const auto lse_ok =
      ref::all_close<T>(s.lse.in(), whole.lse, [&](index_t b, index_t h, index_t i, index_t) {
        return weight_error(b, h, i) + (parts + 2) * u * (1 + std::fabs(whole.lse(b, h, i, 0)));
      });
  if (!lse_ok) return ::testing::AssertionFailure() << "lse: " << lse_ok.message();
  if (!s.o.canaries_intact()) return ::testing::AssertionFailure() << "o written outside its view";
  if (!s.lse.canaries_intact())
    return ::testing::AssertionFailure() << "lse written outside its view";
  return ::testing::AssertionSuccess();
}

// Splits [0, sk) into `parts` contiguous ranges of uneven sizes (one of them empty when
// there are four) and merges them; sinks, when given, go to part 0 alone.
template <class T>
void check_ranges(const Shape& shape, index_t parts, const AttentionOptions& opts) {
  SCOPED_TRACE(describe(shape) + ", " + std::to_string(parts) + " ranges");
  Split<T> s(shape);
  std::vector<index_t> cut{0};
  if (parts == 2) cut.push_back(shape.sk / 3);
  if (parts == 3) cut.insert(cut.end(), {shape.sk / 2, shape.sk / 2 + 1});
  if (parts == 4) cut.insert(cut.end(), {shape.sk / 4, shape.sk / 4, shape.sk - 3});
  cut.push_back(shape.sk);
  for (index_t p = 0; p < parts; ++p) {
    AttentionOptions part = opts;
    if (p > 0) part.sinks = {};
    s.add_range(std::min(cut[std::size_t(p)], shape.sk),
                std::min(cut[std::size_t(p) + 1], shape.sk), part);
  }
  s.merge();
  EXPECT_TRUE(merge_matches(s, s.whole(opts)));
}

// Key j goes to part j % parts, through masks over the whole key range.
template <class T>
void check_interleaved(const Shape& shape, index_t parts, const AttentionOptions& opts) {
  SCOPED_TRACE(describe(shape) + ", " + std::to_string(parts) + " interleaved subsets");
  Split<T> s(shape);
  std::vector<std::unique_ptr<MaskBuffer>> masks;
  for (index_t p = 0; p < parts; ++p) {
    masks.push_back(std::make_unique<MaskBuffer>(shape.sq, shape.sk));
    for (index_t i = 0; i < shape.sq; ++i)
      for (index_t j = 0; j < shape.sk; ++j) masks.back()->view.row(0, 0, i)[j] = j % parts == p;
    AttentionOptions part = opts;
    part.mask = masks.back()->view;
    if (p > 0) part.sinks = {};
    s.add_masked(part);
  }
  s.merge();
  EXPECT_TRUE(merge_matches(s, s.whole(opts)));
}

// ALiBi's geometric slopes 2^(-8 (h + 1) / H) (Press et al. 2022).
std::vector<float> alibi_slopes(index_t heads) {
  std::vector<float> s(static_cast<std::size_t>(heads));
  for (index_t h = 0; h < heads; ++h)
    s[std::size_t(h)] = std::exp2(-8.0f * float(h + 1) / float(heads));
  return s;
}

template <class T>
class Partials : public ::testing::Test {};
TYPED_TEST_SUITE(Partials, FloatingTypes, TypeNames);

// ---------------------------------------------------------------------------------------
// Merging matches the whole attention

TYPED_TEST(Partials, ContiguousKeyRangesMergeIntoTheWholeAttention) {
  for (Layout layout : kLayouts)
    for (index_t parts : {1, 2, 3, 4}) {
      Shape s;
      s.sk = 129, s.layout = layout;
      check_ranges<TypeParam>(s, parts, {});
    }
}

TYPED_TEST(Partials, InterleavedKeySubsetsMergeIntoTheWholeAttention) {
  for (Layout layout : kLayouts)
    for (index_t parts : {2, 3, 4}) {
      Shape s;
      s.sq = 33, s.sk = 65, s.layout = layout;
      check_interleaved<TypeParam>(s, parts, {});
    }
}

// Positional options survive an interleaved split: causal rows (whose first rows see one
// key, so that most parts are empty there: lse -inf), a window, ALiBi, softcap and a bias.
TYPED_TEST(Partials, MaskedOptionsCarryOverToTheParts) {
  Shape s;
  s.sq = 33, s.sk = 33;
  const std::vector<float> slopes = alibi_slopes(s.heads);
  TensorBuffer<float> bias(1, s.heads, s.sq, s.sk);
  bias.fill_random(9, -2, 2);
  AttentionOptions opts;
  opts.causal = true;
  opts.window.left = 20;
  opts.alibi_slopes = slopes;
  opts.softcap = 4.0;
  opts.bias = bias.in();
  for (index_t parts : {2, 3, 4}) check_interleaved<TypeParam>(s, parts, opts);
}

// Sinks join exactly one part's denominator.
TYPED_TEST(Partials, SinksBelongToOnePart) {
  Shape s;
  s.sk = 63;
  const std::vector<float> sinks{0.5f, -1.0f, 3.0f, 0.0f};
  AttentionOptions opts;
  opts.sinks = sinks;
  for (index_t parts : {2, 3}) {
    check_ranges<TypeParam>(s, parts, opts);
    check_interleaved<TypeParam>(s, parts, opts);
  }
}

TYPED_TEST(Partials, AcrossSequenceLengths) {
  for (index_t n : {1, 7, 17, 63, 65, 129}) {
    Shape s;
    s.sq = n, s.sk = n, s.dk = 64, s.dv = 64;
    check_ranges<TypeParam>(s, n == 1 ? 1 : 2, {});
  }
}

TYPED_TEST(Partials, AcrossHeadWidths) {
  for (index_t d : {1, 16, 64, 80, 128}) {
    Shape s;
    s.dk = d, s.dv = d, s.layout = Layout::bshd;
    check_ranges<TypeParam>(s, 3, {});
  }
  Shape unequal;
  unequal.dk = 16, unequal.dv = 80;
  check_ranges<TypeParam>(unequal, 3, {});
}

// A second oracle: Eigen in long double computes the whole softmax(scale q K^T) V of each
// head, which the merge of three key ranges must reproduce.
TYPED_TEST(Partials, MergeMatchesAnEigenOracle) {
  using T = TypeParam;
  using Mat = Eigen::Matrix<real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Shape shape;
  shape.batch = 1, shape.heads = 2, shape.kv_heads = 1, shape.sq = 7, shape.sk = 65;
  Split<T> s(shape);
  s.add_range(0, 20, {}), s.add_range(20, 21, {}), s.add_range(21, 65, {});
  s.merge();
  const ref::Attention whole = s.whole({});
  const ref::Tensor q = ref::load<T>(s.q.in()), k = ref::load<T>(s.k.in()),
                    v = ref::load<T>(s.v.in());
  Mat km(shape.sk, shape.dk), vm(shape.sk, shape.dv);
  for (index_t j = 0; j < shape.sk; ++j) {
    for (index_t d = 0; d < shape.dk; ++d) km(j, d) = k(0, 0, j, d);
    for (index_t d = 0; d < shape.dv; ++d) vm(j, d) = v(0, 0, j, d);
  }
  ref::Tensor expected(1, shape.heads, shape.sq, shape.dv);
  for (index_t h = 0; h < shape.heads; ++h) {
    Mat qm(shape.sq, shape.dk);
    for (index_t i = 0; i < shape.sq; ++i)
      for (index_t d = 0; d < shape.dk; ++d) qm(i, d) = q(0, h, i, d);
    const Mat logits = (qm * km.transpose()) / std::sqrt(real(shape.dk));
    Mat w = logits;
    for (index_t i = 0; i < shape.sq; ++i)
      w.row(i) = (logits.row(i).array() - logits.row(i).maxCoeff()).exp().matrix();
    for (index_t i = 0; i < shape.sq; ++i) {
      const Mat out = w.row(i) * vm / w.row(i).sum();
      for (index_t d = 0; d < shape.dv; ++d) expected(0, h, i, d) = out(0, d);
    }
  }
  // Eigen's long double result stands in for the exact o (it agrees with the oracle's far
  // below T's rounding), with the oracle's error scales: the merge bound applies unchanged.
  ref::Attention eigen = whole;
  eigen.o = expected;
  EXPECT_TRUE(merge_matches(s, eigen));
}

// ---------------------------------------------------------------------------------------
// Aliasing, empty and non-finite parts

// o may be exactly one part's o, and lse that part's lse (ring attention accumulates so):
// the same bits as a merge into separate outputs.
TYPED_TEST(Partials, MergingInPlaceGivesTheSameBits) {
  using T = TypeParam;
  Shape shape;
  Split<T> s(shape);
  s.add_range(0, 30, {}), s.add_range(30, 31, {}), s.add_range(31, 65, {});
  s.merge();
  // The merge overwrites a part: keep copies to put back afterwards.
  const auto restore_after = [&](auto merge) {
    std::vector<std::vector<T>> o_before, lse_before;
    for (std::size_t p = 0; p < 3; ++p)
      o_before.push_back(s.part_o[p]->storage), lse_before.push_back(s.part_lse[p]->storage);
    merge();
    for (std::size_t p = 0; p < 3; ++p) {
      std::copy(o_before[p].begin(), o_before[p].end(), s.part_o[p]->storage.begin());
      std::copy(lse_before[p].begin(), lse_before[p].end(), s.part_lse[p]->storage.begin());
    }
  };
  for (std::size_t into : {std::size_t(0), std::size_t(2)})
    restore_after([&] {
      attend::merge_partials<T>(s.parts(), s.part_o[into]->view, s.part_lse[into]->view);
      EXPECT_TRUE(same_bits(s.part_o[into]->storage, s.o.storage)) << "into part " << into;
      EXPECT_TRUE(same_bits(s.part_lse[into]->storage, s.lse.storage)) << "into part " << into;
    });
  // o in place alone, lse elsewhere; lse in place alone, o elsewhere.
  TensorBuffer<T> o2(2, 4, 17, 32), lse2(2, 4, 17, 1);
  restore_after([&] {
    attend::merge_partials<T>(s.parts(), s.part_o[1]->view, lse2.view);
    EXPECT_TRUE(same_bits(s.part_o[1]->storage, s.o.storage));
    EXPECT_TRUE(same_bits(lse2.storage, s.lse.storage));
  });
  restore_after([&] {
    attend::merge_partials<T>(s.parts(), o2.view, s.part_lse[1]->view);
    EXPECT_TRUE(same_bits(o2.storage, s.o.storage));
    EXPECT_TRUE(same_bits(s.part_lse[1]->storage, s.lse.storage));
  });
}

// A part that saw no key (lse -inf) weighs nothing, whatever its o holds: the same bits as
// the merge without it.
TYPED_TEST(Partials, APartWithoutKeysWeighsNothing) {
  using T = TypeParam;
  Shape shape;
  Split<T> s(shape);
  s.add_range(0, 40, {}), s.add_range(40, 65, {});
  s.merge();
  const std::vector<T> o = s.o.storage, lse = s.lse.storage;
  TensorBuffer<T> empty_o(2, 4, 17, 32), empty_lse(2, 4, 17, 1);
  empty_o.for_each([](T& x) { x = std::numeric_limits<T>::quiet_NaN(); });
  empty_lse.for_each([](T& x) { x = -std::numeric_limits<T>::infinity(); });
  std::vector<AttentionPart<T>> parts = s.parts();
  parts.insert(parts.begin() + 1, AttentionPart<T>{empty_o.in(), empty_lse.in()});
  attend::merge_partials<T>(parts, s.o.view, s.lse.view);
  EXPECT_TRUE(same_bits(o, s.o.storage));
  EXPECT_TRUE(same_bits(lse, s.lse.storage));
}

// When every part is empty the row is zeros with lse -inf, as attention() gives for a
// fully masked row.
TYPED_TEST(Partials, AllPartsEmptyGiveZerosAndMinusInfinity) {
  using T = TypeParam;
  Shape shape;
  shape.sk = 20;
  Split<T> s(shape);
  s.add_range(0, 0, {}), s.add_range(20, 20, {});  // attention() over no key at all
  TensorBuffer<T> garbage_o(2, 4, 17, 32), empty_lse(2, 4, 17, 1);
  garbage_o.fill_random(3, -1e30, 1e30);
  empty_lse.for_each([](T& x) { x = -std::numeric_limits<T>::infinity(); });
  std::vector<AttentionPart<T>> parts = s.parts();
  parts.push_back({garbage_o.in(), empty_lse.in()});
  attend::merge_partials<T>(parts, s.o.view, s.lse.view);
  bool zeros = true, minus_inf = true;
  s.o.for_each([&](T& x) { zeros = zeros && x == T(0); });
  s.lse.for_each([&](T& x) { minus_inf = minus_inf && x == -std::numeric_limits<T>::infinity(); });
  EXPECT_TRUE(zeros);
  EXPECT_TRUE(minus_inf);
}

// NaN in one part's lse makes exactly its row NaN, o and lse; the other rows are as
// before.
TYPED_TEST(Partials, NaNLseMakesItsRowNaN) {
  using T = TypeParam;
  Shape shape;
  Split<T> s(shape);
  s.add_range(0, 40, {}), s.add_range(40, 65, {});
  s.merge();
  const std::vector<T> o = s.o.storage;
  *s.part_lse[1]->view.row(1, 2, 5) = std::numeric_limits<T>::quiet_NaN();
  s.merge();
  for (index_t b = 0; b < 2; ++b)
    for (index_t h = 0; h < 4; ++h)
      for (index_t i = 0; i < 17; ++i) {
        const bool poisoned = b == 1 && h == 2 && i == 5;
        EXPECT_EQ(std::isnan(*s.lse.view.row(b, h, i)), poisoned);
        for (index_t d = 0; d < 32; ++d) {
          const T* was = o.data() + (s.o.view.row(b, h, i) - s.o.storage.data());
          if (poisoned)
            EXPECT_TRUE(std::isnan(s.o.view.row(b, h, i)[d]));
          else
            EXPECT_EQ(s.o.view.row(b, h, i)[d], was[d]);
        }
      }
}

// Parts at lse +inf (overflowed logits) share the mass equally and the others get none;
// the merged lse is +inf.
TYPED_TEST(Partials, PartsAtPlusInfinityShareTheMassEqually) {
  using T = TypeParam;
  using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const T inf = std::numeric_limits<T>::infinity();
  std::vector<std::unique_ptr<TensorBuffer<T>>> o, lse;
  for (std::uint32_t p = 0; p < 3; ++p) {
    o.push_back(std::make_unique<TensorBuffer<T>>(1, 2, 3, 16));
    lse.push_back(std::make_unique<TensorBuffer<T>>(1, 2, 3, 1));
    o.back()->fill_random(p);
    lse.back()->fill_random(p + 10, -5, 5);
  }
  // Row (0, 0, 1): parts 0 and 2 at +inf. Row (0, 1, 2): part 1 alone at +inf.
  *lse[0]->view.row(0, 0, 1) = inf, *lse[2]->view.row(0, 0, 1) = inf;
  *lse[1]->view.row(0, 1, 2) = inf;
  TensorBuffer<T> out(1, 2, 3, 16), out_lse(1, 2, 3, 1);
  attend::merge_partials<T>(
      {{o[0]->in(), lse[0]->in()}, {o[1]->in(), lse[1]->in()}, {o[2]->in(), lse[2]->in()}},
      out.view, out_lse.view);
  EXPECT_EQ(*out_lse.view.row(0, 0, 1), inf);
  EXPECT_EQ(*out_lse.view.row(0, 1, 2), inf);
  for (index_t d = 0; d < 16; ++d) {
    const Acc pair = Acc(o[0]->view.row(0, 0, 1)[d]) + Acc(o[2]->view.row(0, 0, 1)[d]);
    EXPECT_EQ(out.view.row(0, 0, 1)[d], T(pair / Acc(2)));
    EXPECT_EQ(out.view.row(0, 1, 2)[d], o[1]->view.row(0, 1, 2)[d]);
  }
  EXPECT_FALSE(std::isinf(*out_lse.view.row(0, 0, 0)));
}

// ---------------------------------------------------------------------------------------
// Overloads, threads, empty extents

TYPED_TEST(Partials, InitializerListAndSpanGiveTheSameBits) {
  using T = TypeParam;
  Shape shape;
  Split<T> s(shape);
  s.add_range(0, 10, {}), s.add_range(10, 65, {});
  s.merge();
  TensorBuffer<T> o(2, 4, 17, 32), lse(2, 4, 17, 1);
  const std::vector<AttentionPart<T>> p = s.parts();
  attend::merge_partials<T>({p[0], p[1]}, o.view, lse.view);
  EXPECT_TRUE(same_bits(o.storage, s.o.storage));
  EXPECT_TRUE(same_bits(lse.storage, s.lse.storage));
  // Without lse, the same o.
  TensorBuffer<T> o_only(2, 4, 17, 32);
  attend::merge_partials<T>(p, o_only.view);
  EXPECT_TRUE(same_bits(o_only.storage, s.o.storage));
}

TYPED_TEST(Partials, AnyThreadCountGivesTheSameBits) {
  using T = TypeParam;
  Shape shape;
  shape.sq = 65;
  Split<T> s(shape);
  s.add_range(0, 33, {}), s.add_range(33, 65, {});
  s.merge();
  const std::vector<T> o = s.o.storage, lse = s.lse.storage;
  for (int threads : {1, 2, 3}) {
    attend::ThreadPool pool(threads);
    attend::Context ctx;
    ctx.executor = &pool;
    s.merge(ctx);
    EXPECT_TRUE(same_bits(o, s.o.storage)) << threads << " threads";
    EXPECT_TRUE(same_bits(lse, s.lse.storage)) << threads << " threads";
  }
}

TYPED_TEST(Partials, ZeroSizeExtentsWriteNothing) {
  using T = TypeParam;
  for (index_t sq : {0, 1}) {
    const index_t heads = sq == 0 ? 2 : 0;
    TensorBuffer<T> po(1, heads, sq, 8), pl(1, heads, sq, 1), o(1, heads, sq, 8),
        lse(1, heads, sq, 1);
    attend::merge_partials<T>({{po.in(), pl.in()}}, o.view, lse.view);
    EXPECT_TRUE(o.canaries_intact() && lse.canaries_intact());
  }
}

// ---------------------------------------------------------------------------------------
// Refusals: std::invalid_argument naming the argument, outputs unchanged

TYPED_TEST(Partials, RefusesBadPartsWithoutWriting) {
  using T = TypeParam;
  Shape shape;
  Split<T> s(shape);
  s.add_range(0, 30, {}), s.add_range(30, 65, {});
  std::fill(s.o.storage.begin(), s.o.storage.end(), canary<T>());
  const auto refuses = [&](const std::string& argument, const std::string& detail,
                           std::vector<AttentionPart<T>> parts, TensorView<T> o,
                           TensorView<T> lse) {
    return rejects(
        {"merge_partials", argument, detail}, [&] { attend::merge_partials<T>(parts, o, lse); },
        s.o.storage, s.lse.storage, s.part_o[0]->storage, s.part_lse[0]->storage,
        s.part_o[1]->storage, s.part_lse[1]->storage);
  };
  const std::vector<AttentionPart<T>> ok = s.parts();
  EXPECT_TRUE(refuses("parts", "expected at least one part", {}, s.o.view, s.lse.view));

  TensorBuffer<T> wide(2, 4, 17, 16), lse2(2, 4, 17, 2), short_lse(2, 4, 16, 1);
  std::vector<AttentionPart<T>> bad = ok;
  bad[1].o = wide.in();
  EXPECT_TRUE(refuses("parts[1].o", "expected shape [2, 4, 17, 32], got [2, 4, 17, 16]", bad,
                      s.o.view, s.lse.view));
  bad = ok, bad[0].lse = short_lse.in();
  EXPECT_TRUE(refuses("parts[0].lse", "expected shape [2, 4, 17, 1], got [2, 4, 16, 1]", bad,
                      s.o.view, s.lse.view));
  EXPECT_TRUE(
      refuses("lse", "expected shape [2, 4, 17, 1], got [2, 4, 17, 2]", ok, s.o.view, lse2.view));
}

TYPED_TEST(Partials, RefusesOverlappingOutputsWithoutWriting) {
  using T = TypeParam;
  // Part 0 lives in buffers with room around it, so that outputs can overlap it partly and
  // still address valid memory: its o is rows [0, 17) of an 18-row buffer, its lse column 0
  // of a [2, 4, 17, 32] buffer. Part 1 is plain.
  TensorBuffer<T> o0(2, 4, 18, 32), lse0(2, 4, 17, 32), o1(2, 4, 17, 32), lse1(2, 4, 17, 1);
  TensorBuffer<T> o(2, 4, 17, 32), lse(2, 4, 17, 1);
  TensorView<T> part0_o = o0.view, part0_lse = lse0.view;
  part0_o.seq = 17, part0_lse.dim = 1;
  const std::vector<AttentionPart<T>> parts{{part0_o, part0_lse}, {o1.in(), lse1.in()}};
  const auto refuses = [&](const std::string& argument, const std::string& detail,
                           TensorView<T> out, TensorView<T> out_lse) {
    return rejects(
        {"merge_partials", argument, detail},
        [&] { attend::merge_partials<T>(parts, out, out_lse); }, o.storage, lse.storage, o0.storage,
        lse0.storage, o1.storage, lse1.storage);
  };
  const auto column0 = [](TensorView<T> t) { return t.dim = 1, t; };
  const auto one_row_on = [](TensorView<T> t) { return t.data += t.seq_stride, t.seq = 17, t; };

  EXPECT_TRUE(refuses("o", "overlaps parts[0].o", one_row_on(o0.view), lse.view));
  EXPECT_TRUE(refuses("o", "overlaps parts[0].lse", lse0.view, lse.view));
  EXPECT_TRUE(refuses("lse", "overlaps parts[1].o", o.view, column0(o1.view)));
  EXPECT_TRUE(refuses("lse", "overlaps o", o.view, column0(o.view)));
  TensorView<T> lse0_on = lse0.view;
  lse0_on.data += 1, lse0_on.dim = 1;  // column 1: beside part 0's lse, inside its span
  EXPECT_TRUE(refuses("lse", "overlaps parts[0].lse", o.view, lse0_on));
  // Strides that make o write one element twice.
  EXPECT_TRUE(refuses("o", "strides make elements overlap", {o.view.data, 2, 4, 17, 32, 0, 0, 32},
                      lse.view));
  // In place is fine: o exactly part 0's o, lse exactly part 1's lse.
  EXPECT_NO_THROW(attend::merge_partials<T>(parts, part0_o, lse1.view));
}

}  // namespace
