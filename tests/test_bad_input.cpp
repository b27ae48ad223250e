// Bad input to every public call of attend: one catalogue per call (issue 5, "Bad input and
// limits").
//
// A catalogue starts from one set of valid arguments; each case changes one thing and must
// raise std::invalid_argument("attend::<call>: <argument>: ...") with every buffer of the
// test bitwise unchanged, the canaries around the views included (for append: the cache
// and its lengths). Beside the refusals each test makes the valid call (the fixture is
// known good: it succeeds and writes inside its views only) and the calls the headers
// accept although they look suspect: empty extents, which must write nothing, and exact
// in-place outputs where a header allows them.
//
// The generators below add the cases every argument of a kind gets (malformed views, one
// extent short, an input laid inside an output, bad options); each test lists the rest.
// A case with a bug (the list in namespace `bugs`) is one the library gets wrong today: it
// is reported rather than bent to, listed on every run and checked only when the
// environment sets ATTEND_TEST_KNOWN_BUGS=1, where it fails until the library is fixed.
// (Not --gtest_also_run_disabled_tests: ctest passes that flag to every test.)

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "attend/attend.hpp"
#include "attend/eigen.hpp"
#include "support/buffers.hpp"
#include "support/caches.hpp"
#include "support/checks.hpp"

namespace {

using attend::AttentionOptions;
using attend::AttentionPart;
using attend::DecodeOptions;
using attend::index_t;
using attend::Isa;
using attend::MatrixView;
using attend::PackedWeight;
using attend::ScoreOptions;
using attend::Span;
using attend::TensorView;
using attend::WeightLayout;
using testing_support::Layout;
using testing_support::MatrixBuffer;
using testing_support::random_vector;
using testing_support::TensorBuffer;
using Ints = std::vector<std::int32_t>;

// The shapes of most catalogues: B batches, Hq query heads over Hkv kv heads, Sq queries,
// Sk keys, head widths Dk and Dv (different, so that a swap shows).
constexpr index_t B = 2, Hq = 4, Hkv = 2, Sq = 3, Sk = 5, Dk = 4, Dv = 3;
constexpr double nan = std::numeric_limits<double>::quiet_NaN();
constexpr double inf = std::numeric_limits<double>::infinity();

// Known gaps in the checks: the cases that carry one are listed on every run, and checked
// (failing) only with ATTEND_TEST_KNOWN_BUGS=1. The others this catalogue found are fixed.
namespace bugs {
// Not checked by design: interleaved q, k, v views share one address range (linear.hpp).
const char* const qkv_outputs = "project_qkv never checks q, k, v against each other (linear.hpp)";
}  // namespace bugs

// One case of a catalogue: a call with one bad argument and the error it must raise.
struct Case {
  std::string name;
  testing_support::Refusal expected;
  std::function<void()> call;
  const char* bug;  // non-null: the library gets this case wrong today
};

// The catalogue of one public call: valid arguments, the call, and the cases.
template <class Args>
class Catalogue {
 public:
  using Change = std::function<void(Args&)>;

  Catalogue(std::string function, Args valid, std::function<void(const Args&)> call)
      : function_(std::move(function)), valid_(std::move(valid)), call_(std::move(call)) {}

  // The call on a copy of the valid arguments changed by `change` (none: the valid call).
  std::function<void()> bind(Change change = {}) const {
    return [valid = valid_, call = call_, change = std::move(change)] {
      Args a = valid;
      if (change) change(a);
      call(a);
    };
  }
  void refuses(std::string name, std::string argument, std::string detail, Change change,
               const char* bug = nullptr) {
    refuses_in(function_, std::move(name), std::move(argument), std::move(detail),
               std::move(change), bug);
  }
  // A refusal raised by another public function (QkvWeights::packed building the weights).
  void refuses_in(std::string function, std::string name, std::string argument, std::string detail,
                  Change change, const char* bug = nullptr) {
    cases_.push_back({std::move(name),
                      {std::move(function), std::move(argument), std::move(detail)},
                      bind(std::move(change)),
                      bug});
  }
  const std::vector<Case>& cases() const { return cases_; }
  const std::string& function() const { return function_; }

 private:
  std::string function_;
  Args valid_;
  std::function<void(const Args&)> call_;
  std::vector<Case> cases_;
};

// Runs every case: each must be refused with every watched storage unchanged. The cases
// with a known bug run last, so that a wrongly accepted call cannot spoil the others.
template <class Args, class... Storage>
void expect_refusals(const Catalogue<Args>& catalogue, const std::vector<Storage>&... watched) {
  const char* const env = std::getenv("ATTEND_TEST_KNOWN_BUGS");
  const bool check_known_bugs = env && std::string(env) == "1";
  std::string skipped;
  for (bool with_bug : {false, true})
    for (const Case& c : catalogue.cases()) {
      if (bool(c.bug) != with_bug) continue;
      if (with_bug && !check_known_bugs) {
        skipped += (skipped.empty() ? "" : " | ") + c.name;
        continue;
      }
      SCOPED_TRACE(c.name);
      EXPECT_TRUE(testing_support::rejects(c.expected, c.call, watched...)) << (c.bug ? c.bug : "");
    }
  if (!skipped.empty())
    std::cout << "[ KNOWN BUG ] " << catalogue.function() << ": " << skipped << '\n';
}

// The valid call succeeds and writes every output buffer, inside its view only.
template <class... Buffer>
::testing::AssertionResult writes_views_only(const std::function<void()>& call,
                                             const Buffer&... outputs) {
  const auto before = std::make_tuple(outputs.storage...);
  try {
    call();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "the valid call threw: " << e.what();
  }
  const bool written =
      std::apply([&](const auto&... old) { return ((old != outputs.storage) && ...); }, before);
  if (!written) return ::testing::AssertionFailure() << "the valid call left an output unwritten";
  if (!(outputs.canaries_intact() && ...))
    return ::testing::AssertionFailure() << "the valid call wrote outside a view";
  return ::testing::AssertionSuccess();
}

// A call the headers allow that has nothing to write: it succeeds and changes nothing.
template <class... Storage>
::testing::AssertionResult accepts_writing_nothing(const std::function<void()>& call,
                                                   const std::vector<Storage>&... watched) {
  const auto before = std::make_tuple(watched...);
  try {
    call();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "refused: " << e.what();
  }
  const bool unchanged = std::apply(
      [&](const auto&... old) { return (testing_support::same_bits(old, watched) && ...); },
      before);
  if (!unchanged) return ::testing::AssertionFailure() << "accepted, but wrote something";
  return ::testing::AssertionSuccess();
}

template <class... Buffer>
void fill(std::uint32_t seed, Buffer&... buffers) {
  (buffers.fill_random(seed++), ...);
}

// ---------------------------------------------------------------------------------------
// Generators

// What malformed() checks of a tensor: an output has distinct elements, and an optional
// output (lse) refuses null data with extents as any view does.
enum class Role { input, output, optional_output };

// A tensor with a negative extent, null data, rows closer than a row, a negative stride;
// an output also with strides that give two elements one address.
template <class A, class V>
void malformed(Catalogue<A>& c, const std::string& arg, TensorView<V> A::*t,
               Role role = Role::input, const char* overlap_bug = nullptr) {
  c.refuses(arg + ".seq = -1", arg, "negative extent", [t](A& a) { (a.*t).seq = -1; });
  c.refuses(arg + " null", arg, "null data", [t](A& a) { (a.*t).data = nullptr; });
  c.refuses(arg + " rows overlap", arg, "seq stride",
            [t](A& a) { (a.*t).seq_stride = (a.*t).dim - 1; });
  c.refuses(arg + ".batch_stride = -1", arg, "negative stride",
            [t](A& a) { (a.*t).batch_stride = -1; });
  if (role != Role::input)
    c.refuses(
        arg + ".head_stride = 0", arg, "strides make elements overlap",
        [t](A& a) { (a.*t).head_stride = 0; }, overlap_bug);
}

// A matrix with a negative extent, null data, a row stride below a row.
template <class A, class V>
void malformed(Catalogue<A>& c, const std::string& arg, MatrixView<V> A::*m) {
  c.refuses(arg + ".rows = -1", arg, "negative extent", [m](A& a) { (a.*m).rows = -1; });
  c.refuses(arg + " null", arg, "null data", [m](A& a) { (a.*m).data = nullptr; });
  c.refuses(arg + " rows overlap", arg, "row stride",
            [m](A& a) { (a.*m).stride = (a.*m).cols - 1; });
}

// Extents by letter: b, h, s, d of a tensor; r, c of a matrix.
template <class V>
index_t& extent(TensorView<V>& t, char e) {
  return e == 'b' ? t.batch : e == 'h' ? t.heads : e == 's' ? t.seq : t.dim;
}
template <class V>
index_t& extent(MatrixView<V>& m, char e) {
  return e == 'r' ? m.rows : m.cols;
}
std::string extent_name(char e) {
  const char* const names[] = {"batch", "heads", "seq", "dim", "rows", "cols"};
  return names[std::string("bhsdrc").find(e)];
}

// `arg` one short in each extent named in `which`: not of the `shape` the call expects.
template <class A, class View>
void mismatch(Catalogue<A>& c, const std::string& arg, View A::*v, const std::string& shape,
              const std::string& which) {
  for (char e : which)
    c.refuses(arg + "." + extent_name(e) + " one short", arg, "expected shape " + shape,
              [v, e](A& a) { --extent(a.*v, e); });
}

// Each input `in` laid one element into the storage of the output `out`.
template <class A, class Out>
void inside(Catalogue<A>&, const std::string&, Out A::*) {}
template <class A, class Out, class In, class... More>
void inside(Catalogue<A>& c, const std::string& out, Out A::*o, const std::string& in, In A::*i,
            More... more) {
  c.refuses(in + " inside " + out, out, "overlaps " + in,
            [o, i](A& a) { (a.*i).data = (a.*o).data + 1; });
  inside(c, out, o, more...);
}

// Valid option arrays for scores [batch, heads, sq, sk]: key lengths sk, sk - 1, ..., a
// bias over every head and a mask, both broadcast over the batch, ALiBi slopes and sinks.
struct OptionArrays {
  index_t batch, heads, sq, sk;
  Ints key_lengths;
  TensorBuffer<float> bias;
  std::unique_ptr<bool[]> mask;
  std::vector<float> alibi, sinks;

  OptionArrays(index_t batch_, index_t heads_, index_t sq_, index_t sk_)
      : batch(batch_),
        heads(heads_),
        sq(sq_),
        sk(sk_),
        bias(1, heads_, sq_, sk_),
        mask(new bool[std::size_t(sq_ * sk_)]),
        alibi(random_vector<float>(heads_, 7, 0, 1)),
        sinks(random_vector<float>(heads_, 8)) {
    for (index_t b = 0; b < batch; ++b) key_lengths.push_back(std::int32_t(sk - b));
    bias.fill_random(9);
    std::fill_n(mask.get(), sq * sk, true);
  }
  template <class Options>
  Options options(bool with_key_lengths, bool with_bias_and_mask = true) const {
    Options o;
    o.softcap = 30;
    if (with_key_lengths) o.key_lengths = key_lengths;
    if (with_bias_and_mask) o.bias = bias.in(), o.mask = {mask.get(), 1, 1, sq, sk, 0, 0, sk};
    o.alibi_slopes = alibi;
    o.sinks = sinks;
    return o;
  }
};

// What a call takes of the options, for bad_options().
struct Takes {
  bool key_lengths = true, bias_and_mask = true;
  const char* overlap_bug = nullptr;  // where the call does not keep `out` clear of them
};

// Bad options (member `opts`) for scores shaped as `arrays`; `out` names the output, whose
// storage starts at out_data.
template <class A>
void bad_options(Catalogue<A>& c, const OptionArrays& arrays, const std::string& out,
                 const void* out_data, const Takes& takes = {}) {
  const auto str = [](index_t n) { return std::to_string(n); };
  const auto in_out = static_cast<const float*>(out_data);
  c.refuses("window.left = -2", "window.left", "got -2", [](A& a) { a.opts.window.left = -2; });
  c.refuses("window.right = -5", "window.right", "(-1), got -5",
            [](A& a) { a.opts.window.right = -5; });
  for (double cap : {-1.0, nan, inf, 2e38})
    c.refuses("softcap = " + std::to_string(cap), "softcap", "expected a value in [0, 1.7e38]",
              [cap](A& a) { a.opts.softcap = cap; });
  c.refuses("alibi_slopes one long", "alibi_slopes.size", "expected " + str(arrays.heads),
            [](A& a) { ++a.opts.alibi_slopes.size; });
  c.refuses("alibi_slopes null", "alibi_slopes", "null data",
            [](A& a) { a.opts.alibi_slopes.data = nullptr; });
  c.refuses("sinks one long", "sinks.size", "one sink logit per query head",
            [](A& a) { ++a.opts.sinks.size; });
  c.refuses("sinks null", "sinks", "null data", [](A& a) { a.opts.sinks.data = nullptr; });
  c.refuses(
      "sinks inside " + out, out, "overlaps sinks", [in_out](A& a) { a.opts.sinks.data = in_out; },
      takes.overlap_bug);
  if (takes.key_lengths) {
    Ints too_long(arrays.key_lengths), negative(arrays.key_lengths);
    too_long.back() = std::int32_t(arrays.sk + 1);
    negative.front() = -1;
    c.refuses("key_lengths one long", "key_lengths.size", "one length per batch",
              [](A& a) { ++a.opts.key_lengths.size; });
    c.refuses("key_lengths null", "key_lengths", "null data",
              [](A& a) { a.opts.key_lengths.data = nullptr; });
    c.refuses("key length above Sk", "key_lengths",
              "expected every length in [0, " + str(arrays.sk) + "], got " + str(arrays.sk + 1) +
                  " at batch " + str(arrays.batch - 1),
              [too_long](A& a) { a.opts.key_lengths = too_long; });
    c.refuses("key length -1", "key_lengths", "got -1 at batch 0",
              [negative](A& a) { a.opts.key_lengths = negative; });
  }
  if (!takes.bias_and_mask) return;
  const std::string shape = "expected shape [*, *, " + str(arrays.sq) + ", " + str(arrays.sk);
  c.refuses("bias.seq one long", "bias", shape, [](A& a) { ++a.opts.bias.seq; });
  c.refuses("bias.batch = B + 1", "bias", "batch extent 1 or " + str(arrays.batch),
            [b = arrays.batch](A& a) { a.opts.bias.batch = b + 1; });
  c.refuses("bias.heads = Hq + 1", "bias", "heads extent 1 or " + str(arrays.heads),
            [](A& a) { ++a.opts.bias.heads; });
  c.refuses("bias rows overlap", "bias", "seq stride",
            [](A& a) { a.opts.bias.seq_stride = a.opts.bias.dim - 1; });
  c.refuses("bias null", "bias", "null data", [](A& a) { a.opts.bias.data = nullptr; });
  c.refuses("mask.dim one long", "mask", shape, [](A& a) { ++a.opts.mask.dim; });
  c.refuses("mask null", "mask", "null data", [](A& a) { a.opts.mask.data = nullptr; });
  c.refuses(
      "bias inside " + out, out, "overlaps bias", [in_out](A& a) { a.opts.bias.data = in_out; },
      takes.overlap_bug);
}

// An output view shaped like `like` over int storage: how a case makes an output overlap an
// int array (lengths, offsets) whose values must still pass their own checks. attend only
// compares addresses before it refuses; it never reads or writes through this view then.
template <class T>
TensorView<T> over(Ints& ints, TensorView<T> like, index_t first = 0) {
  like.data = reinterpret_cast<T*>(ints.data() + first);
  return like;
}

// A path this CPU can run other than the default one (portable where that is all), and
// one it cannot run (on x86-64, neon).
Isa another_path() {
  for (Isa isa : attend::supported_isas())
    if (isa != attend::default_isa()) return isa;
  return Isa::portable;
}
Isa unsupported_path() {
  for (Isa isa : {Isa::avx2, Isa::avx512, Isa::neon})
    if (!attend::supported(isa)) return isa;
  return Isa::automatic;
}

template <class T>
class BadInput : public ::testing::Test {};
TYPED_TEST_SUITE(BadInput, testing_support::FloatingTypes, testing_support::TypeNames);

// ---------------------------------------------------------------------------------------
// Projections: linear.hpp, packed.hpp

TYPED_TEST(BadInput, Linear) {
  using T = TypeParam;
  MatrixBuffer<T> x(3, 4), w(5, 4), y(3, 5);
  fill(1, x, w);
  const std::vector<T> bias = random_vector<T>(5, 3);
  struct A {
    MatrixView<const T> x, w;
    Span<const T> bias;
    MatrixView<T> y;
    WeightLayout layout;
  };
  Catalogue<A> c("linear", {x.in(), w.in(), bias, y.view, WeightLayout::out_in},
                 [](const A& a) { attend::linear<T>(a.x, a.w, a.bias, a.y, a.layout); });
  malformed(c, "x", &A::x);
  malformed(c, "w", &A::w);
  malformed(c, "y", &A::y);
  mismatch(c, "y", &A::y, "[3, *]", "r");
  mismatch(c, "w", &A::w, "[5, 4]", "rc");
  c.refuses("an [out, in] weight as in_out", "w", "expected shape [4, 5]",
            [](A& a) { a.layout = WeightLayout::in_out; });
  c.refuses("bias one short", "bias.size", "expected 5 (y.cols), got 4",
            [](A& a) { --a.bias.size; });
  c.refuses("bias null", "bias", "null data", [](A& a) { a.bias.data = nullptr; });
  inside(c, "y", &A::y, "x", &A::x, "w", &A::w, "bias", &A::bias);

  EXPECT_TRUE(writes_views_only(c.bind(), y));
  const auto no_rows = [](A& a) { a.x.rows = a.y.rows = 0; };
  EXPECT_TRUE(accepts_writing_nothing(c.bind(no_rows), y.storage));
  expect_refusals(c, x.storage, w.storage, y.storage);
}

TEST(BadInput, LinearWithPackedWeight) {
  MatrixBuffer<float> x(3, 4), w(5, 4), y(3, 5);
  fill(1, x, w);
  const std::vector<float> bias = random_vector<float>(5, 3);
  const PackedWeight packed(w.in()), none, elsewhere(w.in(), WeightLayout::out_in, another_path());
  struct A {
    MatrixView<const float> x;
    const PackedWeight* w;
    Span<const float> bias;
    MatrixView<float> y;
  };
  Catalogue<A> c("linear", {x.in(), &packed, bias, y.view},
                 [](const A& a) { attend::linear(a.x, *a.w, a.bias, a.y); });
  malformed(c, "x", &A::x);
  malformed(c, "y", &A::y);
  mismatch(c, "x", &A::x, "[*, 4]", "c");
  mismatch(c, "y", &A::y, "[3, 5]", "rc");
  c.refuses("bias one short", "bias.size", "(y.cols)", [](A& a) { --a.bias.size; });
  c.refuses("bias null", "bias", "null data", [](A& a) { a.bias.data = nullptr; });
  inside(c, "y", &A::y, "x", &A::x, "bias", &A::bias);
  c.refuses("a weight packed from nothing", "x", "expected shape [*, 0]",
            [&](A& a) { a.w = &none; });
  if (elsewhere.isa() != packed.isa())  // there is another path to pack for
    c.refuses("a weight packed for another path", "w",
              std::string("packed for the ") + attend::name(elsewhere.isa()) +
                  " path, but the call runs the " + attend::name(packed.isa()) + " path",
              [&](A& a) { a.w = &elsewhere; });

  EXPECT_TRUE(writes_views_only(c.bind(), y));
  const auto no_rows = [](A& a) { a.x.rows = a.y.rows = 0; };
  EXPECT_TRUE(accepts_writing_nothing(c.bind(no_rows), y.storage));
  expect_refusals(c, x.storage, w.storage, y.storage);
}

TEST(BadInput, PackedWeightConstructor) {
  MatrixBuffer<float> w(5, 4);
  w.fill_random(1);
  struct A {
    MatrixView<const float> w;
    Isa isa;
  };
  Catalogue<A> c("PackedWeight", {w.in(), Isa::automatic},
                 [](const A& a) { (void)PackedWeight(a.w, WeightLayout::out_in, a.isa); });
  malformed(c, "w", &A::w);
  const Isa cannot = unsupported_path();
  c.refuses("a path this CPU cannot run", "isa",
            std::string("this CPU cannot run the ") + attend::name(cannot) + " path",
            [cannot](A& a) { a.isa = cannot; });

  EXPECT_NO_THROW(c.bind()());
  EXPECT_TRUE(accepts_writing_nothing(c.bind([](A& a) { a.w.rows = 0; }), w.storage));
  expect_refusals(c, w.storage);
}

TYPED_TEST(BadInput, ProjectHeads) {
  using T = TypeParam;
  MatrixBuffer<T> x(B * Sq, 6), w(Hkv * Dk, 6);
  TensorBuffer<T> out(B, Hkv, Sq, Dk, Layout::bshd);
  fill(1, x, w);
  const std::vector<T> bias = random_vector<T>(Hkv * Dk, 3);
  struct A {
    MatrixView<const T> x, w;
    Span<const T> bias;
    TensorView<T> out;
  };
  Catalogue<A> c("project_heads", {x.in(), w.in(), bias, out.view},
                 [](const A& a) { attend::project_heads<T>(a.x, a.w, a.bias, a.out); });
  malformed(c, "x", &A::x);
  malformed(c, "w", &A::w);
  malformed(c, "out", &A::out, Role::output);
  c.refuses("out.seq != x.rows / batch", "x.rows", "expected 4 (out.batch * out.seq), got 6",
            [](A& a) { a.out.seq = 2; });
  mismatch(c, "w", &A::w, "[8, 6]", "rc");
  c.refuses("bias one short", "bias.size", "expected 8 (heads * dim), got 7",
            [](A& a) { --a.bias.size; });
  c.refuses("bias null", "bias", "null data", [](A& a) { a.bias.data = nullptr; });
  inside(c, "out", &A::out, "x", &A::x, "w", &A::w, "bias", &A::bias);

  EXPECT_TRUE(writes_views_only(c.bind(), out));
  const auto no_batch = [](A& a) { a.x.rows = a.out.batch = 0; };
  EXPECT_TRUE(accepts_writing_nothing(c.bind(no_batch), out.storage));
  expect_refusals(c, x.storage, w.storage, out.storage);
}

TYPED_TEST(BadInput, ProjectQkv) {
  using T = TypeParam;
  constexpr index_t E = 6, D = 4, Rows = (Hq + 2 * Hkv) * D;  // one head width: packable
  MatrixBuffer<T> x(B * Sq, E), wq(Hq * D, E), wk(Hkv * D, E), wv(Hkv * D, E), wqkv(Rows, E);
  TensorBuffer<T> q(B, Hq, Sq, D, Layout::bshd), k(B, Hkv, Sq, D, Layout::bshd), v(B, Hkv, Sq, D);
  fill(1, x, wq, wk, wv, wqkv);
  const std::vector<T> bq = random_vector<T>(Hq * D, 6), bk = random_vector<T>(Hkv * D, 7),
                       bv = random_vector<T>(Hkv * D, 8), bqkv = random_vector<T>(Rows, 9);
  struct A {
    MatrixView<const T> x;
    attend::QkvWeights<T> w;
    TensorView<T> q, k, v;
  };
  Catalogue<A> c("project_qkv",
                 {x.in(), {wq.in(), wk.in(), wv.in(), bq, bk, bv}, q.view, k.view, v.view},
                 [](const A& a) { attend::project_qkv<T>(a.x, a.w, a.q, a.k, a.v); });
  malformed(c, "x", &A::x);
  malformed(c, "q", &A::q, Role::output);
  malformed(c, "k", &A::k, Role::output);
  malformed(c, "v", &A::v, Role::output);
  c.refuses("q.seq != x.rows / batch", "x.rows", "(q.batch * q.seq)", [](A& a) { a.q.seq = 2; });
  c.refuses("k.seq != x.rows / batch", "x.rows", "(k.batch * k.seq)", [](A& a) { a.k.seq = 2; });
  c.refuses("v.batch != x.rows / seq", "x.rows", "(v.batch * v.seq)", [](A& a) { a.v.batch = 1; });
  c.refuses("wq one row short", "wq", "expected shape [16, 6]", [](A& a) { --a.w.wq.rows; });
  c.refuses("wk one column short", "wk", "expected shape [8, 6]", [](A& a) { --a.w.wk.cols; });
  c.refuses("wv null", "wv", "null data", [](A& a) { a.w.wv.data = nullptr; });
  c.refuses("bq one short", "bq.size", "(heads * dim)", [](A& a) { --a.w.bq.size; });
  c.refuses("bk null", "bk", "null data", [](A& a) { a.w.bk.data = nullptr; });
  c.refuses("bv one long", "bv.size", "(heads * dim)", [](A& a) { ++a.w.bv.size; });
  inside(c, "q", &A::q, "x", &A::x);
  c.refuses("wk inside k", "k", "overlaps wk", [](A& a) { a.w.wk.data = a.k.data + 1; });
  c.refuses("bv inside v", "v", "overlaps bv", [](A& a) { a.w.bv.data = a.v.data; });
  c.refuses("wv inside q", "q", "overlaps wv", [](A& a) { a.w.wv.data = a.q.data + 1; });
  c.refuses(
      "k inside q", "k", "overlaps q", [](A& a) { a.k.data = a.q.data + 1; }, bugs::qkv_outputs);
  // nn.MultiheadAttention's in_proj_weight, split by QkvWeights::packed.
  const auto packed = [&](MatrixView<const T> w, Span<const T> b, index_t hq) {
    return [=](A& a) { a.w = attend::QkvWeights<T>::packed(w, b, hq, Hkv, D); };
  };
  const MatrixView<const T> w_all = wqkv.in();
  const std::string qkv_packed = "QkvWeights::packed";
  c.refuses_in(qkv_packed, "packed weight one row short", "w", "expected shape [32, *]",
               packed(w_all.block(0, Rows - 1, 0, E), bqkv, Hq));
  c.refuses_in(qkv_packed, "packed weight null", "w", "null data",
               packed({nullptr, Rows, E, E}, bqkv, Hq));
  c.refuses_in(qkv_packed, "packed bias one short", "b.size",
               "expected 32 ((Hq + 2*Hkv) * D), got 31",
               packed(w_all, {bqkv.data(), Rows - 1}, Hq));
  c.refuses_in(qkv_packed, "negative head count", "q_heads, kv_heads, head_dim",
               "expected non-negative counts", packed(w_all, bqkv, -1));
  c.refuses_in(qkv_packed, "packed bias null", "b", "null data",
               packed(w_all, {nullptr, Rows}, Hq));
  c.refuses("weight packed for 2 query heads", "wq", "expected shape [16, 6]",
            packed(w_all.block(0, (2 + 2 * Hkv) * D, 0, E), {}, 2));

  EXPECT_TRUE(writes_views_only(c.bind(), q, k, v));
  EXPECT_TRUE(writes_views_only(c.bind(packed(w_all, bqkv, Hq)), q, k, v));
  const auto no_batch = [](A& a) { a.x.rows = a.q.batch = a.k.batch = a.v.batch = 0; };
  EXPECT_TRUE(accepts_writing_nothing(c.bind(no_batch), q.storage, k.storage, v.storage));
  expect_refusals(c, x.storage, wq.storage, wk.storage, wv.storage, q.storage, k.storage,
                  v.storage);
}

TYPED_TEST(BadInput, ProjectOutput) {
  using T = TypeParam;
  TensorBuffer<T> o(B, Hkv, Sq, Dk, Layout::bshd);
  MatrixBuffer<T> w(5, Hkv * Dk), y(B * Sq, 5);
  fill(1, o, w);
  const std::vector<T> bias = random_vector<T>(5, 3);
  struct A {
    TensorView<const T> o;
    MatrixView<const T> w;
    Span<const T> bias;
    MatrixView<T> y;
  };
  Catalogue<A> c("project_output", {o.in(), w.in(), bias, y.view},
                 [](const A& a) { attend::project_output<T>(a.o, a.w, a.bias, a.y); });
  malformed(c, "o", &A::o);
  malformed(c, "w", &A::w);
  malformed(c, "y", &A::y);
  c.refuses("o without heads", "o", "expected at least one head", [](A& a) { a.o.heads = 0; });
  mismatch(c, "y", &A::y, "[6, *]", "r");
  mismatch(c, "w", &A::w, "[5, 8]", "rc");
  c.refuses("bias one short", "bias.size", "expected 5 (y.cols), got 4",
            [](A& a) { --a.bias.size; });
  c.refuses("bias null", "bias", "null data", [](A& a) { a.bias.data = nullptr; });
  inside(c, "y", &A::y, "o", &A::o, "w", &A::w, "bias", &A::bias);

  EXPECT_TRUE(writes_views_only(c.bind(), y));
  const auto no_batch = [](A& a) { a.o.batch = a.y.rows = 0; };
  EXPECT_TRUE(accepts_writing_nothing(c.bind(no_batch), y.storage));
  expect_refusals(c, o.storage, w.storage, y.storage);
}

// ---------------------------------------------------------------------------------------
// The unfused steps: scores.hpp, softmax.hpp, merge.hpp

TYPED_TEST(BadInput, ScoresOfOneHead) {
  using T = TypeParam;
  MatrixBuffer<T> q(Sq, Dk), k(Sk, Dk), s(Sq, Sk);
  fill(1, q, k);
  struct A {
    MatrixView<const T> q, k;
    double scale;
    MatrixView<T> s;
  };
  Catalogue<A> c("scores", {q.in(), k.in(), 0.5, s.view},
                 [](const A& a) { attend::scores<T>(a.q, a.k, a.scale, a.s); });
  for (double scale : {nan, inf, -inf, -2 * double(std::numeric_limits<T>::max())})
    c.refuses("scale = " + std::to_string(scale), "scale", "expected a finite value",
              [scale](A& a) { a.scale = scale; });
  malformed(c, "q", &A::q);
  malformed(c, "k", &A::k);
  malformed(c, "s", &A::s);
  mismatch(c, "k", &A::k, "[*, 4]", "c");
  mismatch(c, "s", &A::s, "[3, 5]", "rc");
  inside(c, "s", &A::s, "q", &A::q, "k", &A::k);

  EXPECT_TRUE(writes_views_only(c.bind(), s));
  EXPECT_TRUE(accepts_writing_nothing(c.bind([](A& a) { a.q.rows = a.s.rows = 0; }), s.storage));
  expect_refusals(c, q.storage, k.storage, s.storage);
}

TYPED_TEST(BadInput, Scores) {
  using T = TypeParam;
  TensorBuffer<T> q(B, Hq, Sq, Dk, Layout::bshd), k(B, Hkv, Sk, Dk), s(B, Hq, Sq, Sk);
  fill(1, q, k);
  struct A {
    TensorView<const T> q, k;
    double scale;
    TensorView<T> s;
  };
  Catalogue<A> c("scores", {q.in(), k.in(), 0.5, s.view},
                 [](const A& a) { attend::scores<T>(a.q, a.k, a.scale, a.s); });
  for (double scale : {nan, inf, 2 * double(std::numeric_limits<T>::max())})
    c.refuses("scale = " + std::to_string(scale), "scale", "expected a finite value",
              [scale](A& a) { a.scale = scale; });
  malformed(c, "q", &A::q);
  malformed(c, "k", &A::k);
  malformed(c, "s", &A::s, Role::output);
  mismatch(c, "k", &A::k, "[2, *, *, 4]", "bd");
  c.refuses("Hq not a multiple of Hkv", "k.heads", "expected a divisor of the 4 query heads",
            [](A& a) { a.k.heads = 3; });
  c.refuses("k without heads", "k.heads", "expected at least one head",
            [](A& a) { a.k.heads = 0; });
  mismatch(c, "s", &A::s, "[2, 4, 3, 5]", "bhsd");
  inside(c, "s", &A::s, "q", &A::q, "k", &A::k);

  EXPECT_TRUE(writes_views_only(c.bind(), s));
  const auto no_batch = [](A& a) { a.q.batch = a.k.batch = a.s.batch = 0; };
  EXPECT_TRUE(accepts_writing_nothing(c.bind(no_batch), s.storage));
  expect_refusals(c, q.storage, k.storage, s.storage);
}

TYPED_TEST(BadInput, MaskedSoftmax) {
  using T = TypeParam;
  TensorBuffer<T> scores(B, Hq, Sq, Sk, Layout::bshd), probs(B, Hq, Sq, Sk), lse(B, Hq, Sq, 1);
  scores.fill_random(1, -4, 4);
  const OptionArrays arrays(B, Hq, Sq, Sk);
  struct A {
    TensorView<const T> scores;
    TensorView<T> probs;
    ScoreOptions opts;
    TensorView<T> lse;
  };
  Catalogue<A> c("softmax", {scores.in(), probs.view, arrays.options<ScoreOptions>(true), lse.view},
                 [](const A& a) { attend::softmax<T>(a.scores, a.probs, a.opts, a.lse); });
  malformed(c, "scores", &A::scores);
  malformed(c, "probs", &A::probs, Role::output);
  malformed(c, "lse", &A::lse, Role::optional_output);
  mismatch(c, "probs", &A::probs, "[2, 4, 3, 5]", "bhsd");
  mismatch(c, "lse", &A::lse, "[2, 4, 3, 1]", "bhsd");
  bad_options(c, arrays, "probs", probs.storage.data());
  inside(c, "probs", &A::probs, "scores", &A::scores);
  c.refuses("lse inside scores", "lse", "overlaps scores",
            [](A& a) { a.lse.data = const_cast<T*>(a.scores.data) + 1; });
  c.refuses("lse inside probs", "lse", "overlaps probs",
            [](A& a) { a.lse.data = a.probs.data + 1; });

  EXPECT_TRUE(writes_views_only(c.bind(), probs, lse));
  EXPECT_NO_THROW(c.bind([](A& a) { a.scores = a.probs; })()) << "exactly in place";
  const auto no_batch = [](A& a) {
    a.scores.batch = a.probs.batch = a.lse.batch = 0;
    a.opts.key_lengths = {};
  };
  EXPECT_TRUE(accepts_writing_nothing(c.bind(no_batch), probs.storage, lse.storage));
  expect_refusals(c, scores.storage, probs.storage, lse.storage);
}

TYPED_TEST(BadInput, MaskedSoftmaxInPlace) {
  using T = TypeParam;
  TensorBuffer<T> scores(B, Hq, Sq, Sk, Layout::bshd), lse(B, Hq, Sq, 1);
  scores.fill_random(1, -4, 4);
  const OptionArrays arrays(B, Hq, Sq, Sk);
  struct A {
    TensorView<T> scores;
    ScoreOptions opts;
    TensorView<T> lse;
  };
  Catalogue<A> c("softmax", {scores.view, arrays.options<ScoreOptions>(true), lse.view},
                 [](const A& a) { attend::softmax<T>(a.scores, a.opts, a.lse); });
  malformed(c, "scores", &A::scores, Role::output);
  malformed(c, "lse", &A::lse, Role::optional_output);
  mismatch(c, "lse", &A::lse, "[2, 4, 3, 1]", "s");
  bad_options(c, arrays, "scores", scores.storage.data(), {true, true, nullptr});
  c.refuses("lse inside scores", "lse", "overlaps scores",
            [](A& a) { a.lse.data = a.scores.data + 1; });

  EXPECT_TRUE(writes_views_only(c.bind(), scores, lse));
  const auto no_queries = [](A& a) {
    a.scores.seq = a.lse.seq = a.opts.bias.seq = a.opts.mask.seq = 0;
  };
  EXPECT_TRUE(accepts_writing_nothing(c.bind(no_queries), scores.storage, lse.storage));
  expect_refusals(c, scores.storage, lse.storage);
}

TYPED_TEST(BadInput, RowSoftmax) {
  using T = TypeParam;
  MatrixBuffer<T> x(Sq, Sk), y(Sq, Sk);
  x.fill_random(1, -4, 4);
  struct A {
    MatrixView<const T> x;
    MatrixView<T> y;
  };
  Catalogue<A> c("softmax", {x.in(), y.view}, [](const A& a) { attend::softmax<T>(a.x, a.y); });
  malformed(c, "x", &A::x);
  malformed(c, "y", &A::y);
  mismatch(c, "y", &A::y, "[3, 5]", "rc");
  inside(c, "y", &A::y, "x", &A::x);

  EXPECT_TRUE(writes_views_only(c.bind(), y));
  EXPECT_NO_THROW(c.bind([](A& a) { a.x = a.y; })()) << "exactly in place";
  EXPECT_TRUE(accepts_writing_nothing(c.bind([](A& a) { a.x.rows = a.y.rows = 0; }), y.storage));
  expect_refusals(c, x.storage, y.storage);
}

TYPED_TEST(BadInput, RowSoftmaxInPlace) {
  using T = TypeParam;
  MatrixBuffer<T> x(Sq, Sk);
  x.fill_random(1, -4, 4);
  struct A {
    MatrixView<T> x;
  };
  Catalogue<A> c("softmax", {x.view}, [](const A& a) { attend::softmax<T>(a.x); });
  malformed(c, "x", &A::x);

  EXPECT_TRUE(writes_views_only(c.bind(), x));
  EXPECT_TRUE(accepts_writing_nothing(c.bind([](A& a) { a.x.rows = 0; }), x.storage));
  expect_refusals(c, x.storage);
}

TYPED_TEST(BadInput, MergeValuesOfOneHead) {
  using T = TypeParam;
  MatrixBuffer<T> p(Sq, Sk), v(Sk, Dv), o(Sq, Dv);
  fill(1, p, v);
  struct A {
    MatrixView<const T> p, v;
    MatrixView<T> o;
  };
  Catalogue<A> c("merge_values", {p.in(), v.in(), o.view},
                 [](const A& a) { attend::merge_values<T>(a.p, a.v, a.o); });
  malformed(c, "p", &A::p);
  malformed(c, "v", &A::v);
  malformed(c, "o", &A::o);
  mismatch(c, "v", &A::v, "[5, *]", "r");
  mismatch(c, "o", &A::o, "[3, 3]", "rc");
  inside(c, "o", &A::o, "p", &A::p, "v", &A::v);

  EXPECT_TRUE(writes_views_only(c.bind(), o));
  EXPECT_TRUE(accepts_writing_nothing(c.bind([](A& a) { a.p.rows = a.o.rows = 0; }), o.storage));
  expect_refusals(c, p.storage, v.storage, o.storage);
}

TYPED_TEST(BadInput, MergeValues) {
  using T = TypeParam;
  TensorBuffer<T> p(B, Hq, Sq, Sk, Layout::bshd), v(B, Hkv, Sk, Dv), o(B, Hq, Sq, Dv);
  fill(1, p, v);
  struct A {
    TensorView<const T> p, v;
    TensorView<T> o;
  };
  Catalogue<A> c("merge_values", {p.in(), v.in(), o.view},
                 [](const A& a) { attend::merge_values<T>(a.p, a.v, a.o); });
  malformed(c, "p", &A::p);
  malformed(c, "v", &A::v);
  malformed(c, "o", &A::o, Role::output);
  mismatch(c, "v", &A::v, "[2, *, 5, *]", "bs");
  c.refuses("Hq not a multiple of Hkv", "v.heads", "expected a divisor of the 4 query heads",
            [](A& a) { a.v.heads = 3; });
  c.refuses("v without heads", "v.heads", "expected at least one head",
            [](A& a) { a.v.heads = 0; });
  mismatch(c, "o", &A::o, "[2, 4, 3, 3]", "bhsd");
  inside(c, "o", &A::o, "p", &A::p, "v", &A::v);

  EXPECT_TRUE(writes_views_only(c.bind(), o));
  const auto no_batch = [](A& a) { a.p.batch = a.v.batch = a.o.batch = 0; };
  EXPECT_TRUE(accepts_writing_nothing(c.bind(no_batch), o.storage));
  expect_refusals(c, p.storage, v.storage, o.storage);
}

// ---------------------------------------------------------------------------------------
// Attention: attention.hpp, mha.hpp, varlen.hpp

TYPED_TEST(BadInput, Attention) {
  using T = TypeParam;
  TensorBuffer<T> q(B, Hq, Sq, Dk, Layout::bshd), k(B, Hkv, Sk, Dk),
      v(B, Hkv, Sk, Dv, Layout::bshd), o(B, Hq, Sq, Dv), lse(B, Hq, Sq, 1);
  fill(1, q, k, v);
  const OptionArrays arrays(B, Hq, Sq, Sk);
  Ints ints(o.storage.size() * sizeof(T));  // the key lengths, under an output
  std::copy(arrays.key_lengths.begin(), arrays.key_lengths.end(), ints.begin());
  struct A {
    TensorView<const T> q, k, v;
    TensorView<T> o;
    AttentionOptions opts;
    TensorView<T> lse;
    Isa isa;
  };
  Catalogue<A> c(
      "attention",
      {q.in(), k.in(), v.in(), o.view, arrays.options<AttentionOptions>(true), lse.view, Isa{}},
      [](const A& a) { attend::attention<T>(a.q, a.k, a.v, a.o, a.opts, a.lse, {a.isa}); });
  malformed(c, "q", &A::q);
  malformed(c, "k", &A::k);
  malformed(c, "v", &A::v);
  malformed(c, "o", &A::o, Role::output);
  malformed(c, "lse", &A::lse, Role::optional_output);
  mismatch(c, "k", &A::k, "[2, *, *, 4]", "bd");
  c.refuses("Hq not a multiple of Hkv", "k.heads", "expected a divisor of the 4 query heads",
            [](A& a) { a.k.heads = a.v.heads = 3; });
  c.refuses("k without heads", "k.heads", "expected at least one head",
            [](A& a) { a.k.heads = 0; });
  mismatch(c, "v", &A::v, "[2, 2, 5, *]", "bhs");
  mismatch(c, "o", &A::o, "[2, 4, 3, 3]", "bhsd");
  mismatch(c, "lse", &A::lse, "[2, 4, 3, 1]", "bhsd");
  for (double scale : {nan, inf, 2e38})
    c.refuses("scale = " + std::to_string(scale), "scale", "expected a finite value",
              [scale](A& a) { a.opts.scale = scale; });
  bad_options(c, arrays, "o", o.storage.data());
  inside(c, "o", &A::o, "q", &A::q, "k", &A::k, "v", &A::v);
  c.refuses("o over key_lengths", "o", "overlaps key_lengths", [&ints](A& a) {
    a.o = over(ints, a.o);
    a.opts.key_lengths = {ints.data(), B};
  });
  c.refuses("lse inside q", "lse", "overlaps q",
            [](A& a) { a.lse.data = const_cast<T*>(a.q.data) + 1; });
  c.refuses("lse inside o", "lse", "overlaps o", [](A& a) { a.lse.data = a.o.data + 1; });
  c.refuses("alibi_slopes inside lse", "lse", "overlaps alibi_slopes",
            [](A& a) { a.opts.alibi_slopes.data = reinterpret_cast<float*>(a.lse.data); });
  const Isa cannot = unsupported_path();
  c.refuses("a path this CPU cannot run", "ctx.isa",
            std::string("cannot run the ") + attend::name(cannot),
            [cannot](A& a) { a.isa = cannot; });

  EXPECT_TRUE(writes_views_only(c.bind(), o, lse));
  const auto no_batch = [](A& a) {
    a.q.batch = a.k.batch = a.v.batch = a.o.batch = a.lse.batch = 0;
    a.opts.key_lengths = {};
  };
  EXPECT_TRUE(accepts_writing_nothing(c.bind(no_batch), o.storage, lse.storage));
  expect_refusals(c, q.storage, k.storage, v.storage, o.storage, lse.storage, ints);
}

TYPED_TEST(BadInput, MultiheadAttention) {
  using T = TypeParam;
  constexpr index_t E = 8, D = E / Hq, InRows = (Hq + 2 * Hkv) * D;
  MatrixBuffer<T> query(B * Sq, E), key(B * Sk, E), value(B * Sk, E), w_in(InRows, E), w_out(E, E),
      y(B * Sq, E);
  fill(1, query, key, value, w_in, w_out);
  const std::vector<T> b_in = random_vector<T>(InRows, 6), b_out = random_vector<T>(E, 7);
  const OptionArrays arrays(B, Hq, Sq, Sk);
  struct A {
    MatrixView<const T> query, key, value;
    index_t batch;
    attend::MhaWeights<T> w;
    MatrixView<T> y;
    AttentionOptions opts;
  };
  Catalogue<A> c("multihead_attention",
                 {query.in(),
                  key.in(),
                  value.in(),
                  B,
                  {w_in.in(), b_in, w_out.in(), b_out, Hq, Hkv},
                  y.view,
                  arrays.options<AttentionOptions>(true)},
                 [](const A& a) {
                   attend::multihead_attention<T>(a.query, a.key, a.value, a.batch, a.w, a.y,
                                                  a.opts);
                 });
  for (index_t batch : {0, -1})
    c.refuses("batch = " + std::to_string(batch), "batch", "expected at least 1",
              [batch](A& a) { a.batch = batch; });
  c.refuses("no heads", "num_heads", "expected at least 1", [](A& a) { a.w.num_heads = 0; });
  c.refuses("Hq not a multiple of num_kv_heads", "num_kv_heads",
            "a divisor of num_heads = 4, got 3", [](A& a) { a.w.num_kv_heads = 3; });
  c.refuses("num_kv_heads = -1", "num_kv_heads", "a divisor of num_heads = 4, got -1",
            [](A& a) { a.w.num_kv_heads = -1; });
  malformed(c, "query", &A::query);
  malformed(c, "key", &A::key);
  malformed(c, "value", &A::value);
  malformed(c, "y", &A::y);
  c.refuses("E not a multiple of num_heads", "query.cols",
            "expected a multiple of num_heads = 4, got 6", [](A& a) { a.query.cols = 6; });
  c.refuses("query.rows not a multiple of batch", "query.rows", "expected a multiple of batch",
            [](A& a) { a.query.rows = 5; });
  mismatch(c, "key", &A::key, "[*, 8]", "c");
  c.refuses("key.rows not a multiple of batch", "key.rows", "expected a multiple of batch",
            [](A& a) { a.key.rows = 9; });
  mismatch(c, "value", &A::value, "[10, 8]", "r");
  mismatch(c, "y", &A::y, "[6, 8]", "r");
  c.refuses("in_proj_weight one row short", "in_proj_weight", "expected shape [16, 8]",
            [](A& a) { --a.w.in_proj_weight.rows; });
  c.refuses("in_proj_weight null", "in_proj_weight", "null data",
            [](A& a) { a.w.in_proj_weight.data = nullptr; });
  c.refuses("out_proj_weight one column short", "out_proj_weight", "expected shape [8, 8]",
            [](A& a) { --a.w.out_proj_weight.cols; });
  c.refuses("out_proj_weight rows overlap", "out_proj_weight", "row stride",
            [](A& a) { a.w.out_proj_weight.stride = E - 1; });
  c.refuses("in_proj_bias one short", "in_proj_bias.size", "(Hq + 2*Hkv) * D",
            [](A& a) { --a.w.in_proj_bias.size; });
  c.refuses("out_proj_bias one long", "out_proj_bias.size", "expected 8 (E), got 9",
            [](A& a) { ++a.w.out_proj_bias.size; });
  c.refuses("in_proj_bias null", "in_proj_bias", "null data",
            [](A& a) { a.w.in_proj_bias.data = nullptr; });
  c.refuses("out_proj_bias null", "out_proj_bias", "null data",
            [](A& a) { a.w.out_proj_bias.data = nullptr; });
  c.refuses("scale = -inf", "scale", "expected a finite value", [](A& a) { a.opts.scale = -inf; });
  bad_options(c, arrays, "y", y.storage.data(), {true, true, nullptr});
  inside(c, "y", &A::y, "query", &A::query, "key", &A::key, "value", &A::value);
  c.refuses("in_proj_weight inside y", "y", "overlaps in_proj_weight",
            [](A& a) { a.w.in_proj_weight.data = a.y.data + 1; });
  c.refuses("out_proj_weight inside y", "y", "overlaps out_proj_weight",
            [](A& a) { a.w.out_proj_weight.data = a.y.data + 1; });
  c.refuses("in_proj_bias inside y", "y", "overlaps in_proj_bias",
            [](A& a) { a.w.in_proj_bias.data = a.y.data; });
  c.refuses("out_proj_bias inside y", "y", "overlaps out_proj_bias",
            [](A& a) { a.w.out_proj_bias.data = a.y.row(1); });

  EXPECT_TRUE(writes_views_only(c.bind(), y));
  const auto no_queries = [](A& a) {  // batch 0 is refused; no queries per batch is not
    a.query.rows = a.y.rows = 0;
    a.opts.bias.seq = a.opts.mask.seq = 0;
  };
  EXPECT_TRUE(accepts_writing_nothing(c.bind(no_queries), y.storage));
  expect_refusals(c, query.storage, key.storage, value.storage, w_in.storage, w_out.storage,
                  y.storage);
}

TYPED_TEST(BadInput, AttentionVarlen) {
  using T = TypeParam;
  constexpr index_t TotalQ = 5, TotalK = 7;  // two sequences: 2 and 3 queries, 3 and 4 keys
  TensorBuffer<T> q(1, Hq, TotalQ, Dk, Layout::bshd), k(1, Hkv, TotalK, Dk, Layout::bshd),
      v(1, Hkv, TotalK, Dv, Layout::bshd), o(1, Hq, TotalQ, Dv, Layout::bshd),
      lse(1, Hq, TotalQ, 1);
  fill(1, q, k, v);
  const Ints cu_q{0, 2, 5}, cu_k{0, 3, 7};
  const OptionArrays arrays(1, Hq, TotalQ, TotalK);
  // The query offsets under an output, between lse's elements (lse rows are 4 apart): an lse
  // written there leaves them intact.
  constexpr index_t at = sizeof(T) / sizeof(std::int32_t);
  Ints ints(o.storage.size() * sizeof(T));
  std::copy(cu_q.begin(), cu_q.end(), ints.begin() + at);
  struct A {
    TensorView<const T> q, k, v;
    Span<const std::int32_t> cu_q, cu_k;
    TensorView<T> o;
    AttentionOptions opts;
    TensorView<T> lse;
  };
  Catalogue<A> c("attention_varlen",
                 {q.in(), k.in(), v.in(), cu_q, cu_k, o.view,
                  arrays.options<AttentionOptions>(false, false), lse.view},
                 [](const A& a) {
                   attend::attention_varlen<T>(a.q, a.k, a.v, a.cu_q, a.cu_k, a.o, a.opts, a.lse);
                 });
  malformed(c, "q", &A::q);
  malformed(c, "k", &A::k);
  malformed(c, "v", &A::v);
  malformed(c, "o", &A::o, Role::output);
  malformed(c, "lse", &A::lse, Role::optional_output);
  c.refuses("q.batch = 2", "q", "expected shape [1, *, *, *]", [](A& a) { a.q.batch = 2; });
  c.refuses("Hq not a multiple of Hkv", "k.heads", "expected a divisor of the 4 query heads",
            [](A& a) { a.k.heads = a.v.heads = 3; });
  mismatch(c, "v", &A::v, "[1, 2, 7, *]", "hs");
  mismatch(c, "o", &A::o, "[1, 4, 5, 3]", "hsd");
  mismatch(c, "lse", &A::lse, "[1, 4, 5, 1]", "s");
  c.refuses("key lengths given", "opts.key_lengths", "expected none",
            [&](A& a) { a.opts.key_lengths = arrays.key_lengths; });
  c.refuses("a bias given", "opts.bias", "expected none",
            [&](A& a) { a.opts.bias = arrays.bias.in(); });
  c.refuses("a mask given", "opts.mask", "expected none",
            [&](A& a) { a.opts.mask = {arrays.mask.get(), 1, 1, TotalQ, TotalK, 0, 0, TotalK}; });
  // The offsets: n + 1 entries from 0 to the total, never decreasing.
  const auto q_offsets = [](Ints cu) { return [cu](A& a) { a.cu_q = cu; }; };
  const auto k_offsets = [](Ints cu) { return [cu](A& a) { a.cu_k = cu; }; };
  c.refuses("cu_seqlens_q empty", "cu_seqlens_q", "expected n + 1 >= 1 offsets, got none",
            q_offsets({}));
  c.refuses("cu_seqlens_q null", "cu_seqlens_q", "null data", [](A& a) { a.cu_q.data = nullptr; });
  c.refuses("cu_seqlens_q from 1", "cu_seqlens_q", "expected the first offset 0, got 1",
            q_offsets({1, 2, 5}));
  c.refuses("cu_seqlens_q decreasing", "cu_seqlens_q", "offsets decrease at entry 2: 3 then 2",
            q_offsets({0, 3, 2, 5}));
  c.refuses("cu_seqlens_q short of total_q", "cu_seqlens_q",
            "expected the last offset to be the 5 rows, got 4", q_offsets({0, 2, 4}));
  c.refuses("cu_seqlens_q past total_q", "cu_seqlens_q", "got 6", q_offsets({0, 2, 6}));
  c.refuses("cu_seqlens_k null", "cu_seqlens_k", "null data", [](A& a) { a.cu_k.data = nullptr; });
  c.refuses("cu_seqlens_k from -1", "cu_seqlens_k", "expected the first offset 0, got -1",
            k_offsets({-1, 3, 7}));
  c.refuses("cu_seqlens_k decreasing", "cu_seqlens_k", "offsets decrease at entry 2: 4 then 3",
            k_offsets({0, 4, 3, 7}));
  c.refuses("cu_seqlens_k past total_k", "cu_seqlens_k",
            "expected the last offset to be the 7 rows, got 8", k_offsets({0, 3, 8}));
  c.refuses("one sequence of keys for two of queries", "cu_seqlens_k.size",
            "expected 3 (one offset per sequence of cu_seqlens_q, plus one), got 2",
            k_offsets({0, 7}));
  c.refuses("scale = nan", "scale", "expected a finite value", [](A& a) { a.opts.scale = nan; });
  bad_options(c, arrays, "o", o.storage.data(), {false, false});
  inside(c, "o", &A::o, "q", &A::q, "k", &A::k, "v", &A::v);
  c.refuses("lse inside o", "lse", "overlaps o", [](A& a) { a.lse.data = a.o.data + 1; });
  c.refuses("o over cu_seqlens_q", "o", "overlaps cu_seqlens_q", [&ints](A& a) {
    a.o = over(ints, a.o);
    a.cu_q = {ints.data() + at, 3};
  });
  c.refuses("lse over cu_seqlens_q", "lse", "overlaps cu_seqlens_q", [&ints](A& a) {
    a.lse = over(ints, a.lse);
    a.cu_q = {ints.data() + at, 3};
  });

  EXPECT_TRUE(writes_views_only(c.bind(), o, lse));
  const auto no_sequences = [](A& a) {
    a.q.seq = a.k.seq = a.v.seq = a.o.seq = a.lse.seq = 0;
    a.cu_q.size = a.cu_k.size = 1;  // {0}
  };
  EXPECT_TRUE(accepts_writing_nothing(c.bind(no_sequences), o.storage, lse.storage));
  expect_refusals(c, q.storage, k.storage, v.storage, o.storage, lse.storage, ints);
}

// ---------------------------------------------------------------------------------------
// Serving: kv_cache.hpp (append), decode.hpp, partials.hpp

// Caches of 3 sequences over Hkv kv heads, capacity 6 tokens: contiguous, or paged in
// blocks of 2 from a pool of 8.
constexpr index_t Seqs = 3, Capacity = 6, BlockSize = 2, MaxBlocks = 3, PoolBlocks = 8;
using testing_support::ContiguousCacheBuffer;
using testing_support::PagedCacheBuffer;

// A copy of the block table in `table` with entry (s, i) = block.
template <class A>
std::function<void(A&)> table_with(const MatrixBuffer<std::int32_t>& table, index_t s, index_t i,
                                   std::int32_t block) {
  const index_t stride = table.view.stride;
  return [t = table.storage, s, i, block, stride](A& a) mutable {
    t[std::size_t(s * stride + i)] = block;
    a.table = {t.data(), a.table.rows, a.table.cols, stride};
  };
}

template <class T>
struct AppendArgs {
  TensorView<T> k, v;
  Span<std::int32_t> lengths;
  MatrixView<const std::int32_t> table;  // paged only
  TensorView<const T> k_new, v_new;
  Span<const std::int32_t> sequences;
};

// The bad appends of both layouts: two tokens to each sequence of a cache holding {2, 1, 0},
// `cache_shape` its k's; `ints` starts with lengths {2, 1, 6} (sequence 2 full) and
// {0, 0, 0}, and has room for a cache.k laid over it.
template <class T>
void bad_appends(Catalogue<AppendArgs<T>>& c, const std::string& cache_shape, Ints& ints) {
  using A = AppendArgs<T>;
  malformed(c, "cache.k", &A::k, Role::output);
  malformed(c, "cache.v", &A::v, Role::output);
  malformed(c, "k_new", &A::k_new);
  malformed(c, "v_new", &A::v_new);
  mismatch(c, "cache.v", &A::v, cache_shape, "bhs");
  c.refuses("cache.v inside cache.k", "cache.k", "overlaps cache.v",
            [](A& a) { a.v.data = a.k.data + 1; });
  c.refuses("cache.lengths one short", "cache.lengths.size", "one length per sequence",
            [](A& a) { --a.lengths.size; });
  c.refuses("cache.lengths null", "cache.lengths", "null data",
            [](A& a) { a.lengths.data = nullptr; });
  const auto lengths = [](Ints l) { return [l](A& a) mutable { a.lengths = l; }; };
  c.refuses("a length above capacity", "cache.lengths",
            "expected every length in [0, 6], got 7 at sequence 1", lengths({2, 7, 0}));
  c.refuses("a negative length", "cache.lengths", "got -1 at sequence 2", lengths({2, 1, -1}));
  mismatch(c, "k_new", &A::k_new, "[3, 2, *, 4]", "bhd");
  mismatch(c, "v_new", &A::v_new, "[3, 2, 2, 3]", "bhsd");
  const auto to = [](Ints s) {
    return [s](A& a) {
      a.sequences = s;
      a.k_new.batch = a.v_new.batch = index_t(s.size());
    };
  };
  c.refuses("sequence index 3 of 3", "sequences",
            "entry 1 = 3 is not a sequence of the cache [0, 3)", to({1, 3}));
  c.refuses("sequence index -1", "sequences", "entry 0 = -1", to({-1, 0}));
  c.refuses("a sequence twice", "sequences", "two appended tokens map to the same cache row",
            to({1, 1}));
  c.refuses("sequences null", "sequences", "null data", [](A& a) {
    a.sequences = {nullptr, 2};
    a.k_new.batch = a.v_new.batch = 2;
  });
  c.refuses("sequences.size = -1", "sequences.size", "-1", [s = Ints{1, 0}](A& a) {
    a.sequences = {s.data(), -1};
    a.k_new.batch = a.v_new.batch = 2;
  });
  c.refuses("past capacity", "cache", "sequence 2 holds 6 of 6 tokens: no room for 2 more",
            [&ints](A& a) {
              a.lengths = {ints.data(), Seqs};
            });
  c.refuses("k_new inside cache.k", "k_new", "overlaps cache.k",
            [](A& a) { a.k_new.data = a.k.data + 1; });
  c.refuses("k_new inside cache.v", "k_new", "overlaps cache.v",
            [](A& a) { a.k_new.data = a.v.data + 1; });
  c.refuses("v_new inside cache.v", "v_new", "overlaps cache.v",
            [](A& a) { a.v_new.data = a.v.data + 1; });
  c.refuses("sequences inside cache.lengths", "cache.lengths", "overlaps sequences", [](A& a) {
    a.sequences = {a.lengths.data + 1, 2};  // {1, 0}
    a.k_new.batch = a.v_new.batch = 2;
  });
  c.refuses("cache.k over cache.lengths", "cache.k", "overlaps cache.lengths", [&ints](A& a) {
    a.k = over(ints, a.k);
    a.lengths = {ints.data() + Seqs, Seqs};
  });
}

// The valid append writes the new rows and lengths, which are then put back, so that every
// case starts from the same cache; an append of no tokens writes nothing.
template <class T, class Cache>
void expect_valid_appends(const Catalogue<AppendArgs<T>>& c, Cache& cache) {
  EXPECT_TRUE(writes_views_only(c.bind(), cache.k, cache.v));
  EXPECT_EQ(cache.lengths, Ints({4, 3, 2}));
  cache.lengths = {2, 1, 0};
  const auto no_tokens = [](AppendArgs<T>& a) { a.k_new.seq = a.v_new.seq = 0; };
  EXPECT_TRUE(
      accepts_writing_nothing(c.bind(no_tokens), cache.k.storage, cache.v.storage, cache.lengths));
}

TYPED_TEST(BadInput, AppendToContiguousCache) {
  using T = TypeParam;
  ContiguousCacheBuffer<T> cache(Seqs, Hkv, Capacity, Dk, Dv, Layout::bshd);
  TensorBuffer<T> k_new(Seqs, Hkv, 2, Dk), v_new(Seqs, Hkv, 2, Dv);
  fill(1, k_new, v_new);
  cache.lengths = {2, 1, 0};
  Ints ints(cache.k.storage.size() * sizeof(T));
  std::copy_n(Ints{2, 1, 6, 0, 0, 0}.begin(), 2 * Seqs, ints.begin());
  using A = AppendArgs<T>;
  Catalogue<A> c(
      "append", {cache.k.view, cache.v.view, cache.lengths, {}, k_new.in(), v_new.in(), {}},
      [](const A& a) {
        attend::append<T>(attend::KvCache<T>{a.k, a.v, a.lengths}, a.k_new, a.v_new, a.sequences);
      });
  bad_appends<T>(c, "[3, 2, 6, *]", ints);

  expect_valid_appends(c, cache);
  expect_refusals(c, cache.k.storage, cache.v.storage, cache.lengths, ints, k_new.storage,
                  v_new.storage);
}

TYPED_TEST(BadInput, AppendToPagedCache) {
  using T = TypeParam;
  PagedCacheBuffer<T> cache(Seqs, Hkv, BlockSize, MaxBlocks, PoolBlocks, Dk, Dv, Layout::bshd);
  cache.assign({2, 2, 3}, 5);  // blocks owned per sequence; -1 past them
  TensorBuffer<T> k_new(Seqs, Hkv, 2, Dk), v_new(Seqs, Hkv, 2, Dv);
  fill(1, k_new, v_new);
  cache.lengths = {2, 1, 0};
  Ints ints(cache.k.storage.size() * sizeof(T));
  std::copy_n(Ints{2, 1, 6, 0, 0, 0}.begin(), 2 * Seqs, ints.begin());
  using A = AppendArgs<T>;
  Catalogue<A> c(
      "append",
      {cache.k.view, cache.v.view, cache.lengths, cache.table.in(), k_new.in(), v_new.in(), {}},
      [](const A& a) {
        attend::append<T>(attend::PagedKvCache<T>{a.k, a.v, a.table, a.lengths}, a.k_new, a.v_new,
                          a.sequences);
      });
  bad_appends<T>(c, "[8, 2, 2, *]", ints);
  malformed(c, "cache.block_table", &A::table);
  const MatrixBuffer<std::int32_t>& table = cache.table;
  c.refuses("the new tokens' block -1", "cache.block_table",
            "entry (0, 1) = -1 is not a block of the pool [0, 8) but sequence 0 needs it for 4 "
            "tokens",
            table_with<A>(table, 0, 1, -1));
  c.refuses("a stored token's block past the pool", "cache.block_table",
            "entry (1, 0) = 8 is not a block of the pool [0, 8)", table_with<A>(table, 1, 0, 8));
  c.refuses("two sequences sharing a block", "sequences", "map to the same cache row",
            table_with<A>(table, 2, 0, table.view(0, 1)));
  c.refuses("block size 0", "cache.k", "expected a block size (extent 2) of at least 1, got 0",
            [&ints](A& a) {
              a.k.seq = a.v.seq = 0;
              a.lengths = {ints.data() + Seqs, Seqs};
            });
  // The block table dense after the lengths in `ints`, under cache.k.
  for (index_t s = 0; s < Seqs; ++s)
    for (index_t i = 0; i < MaxBlocks; ++i)
      ints[std::size_t(2 * Seqs + s * MaxBlocks + i)] = table.view(s, i);
  c.refuses("cache.k over cache.block_table", "cache.k", "overlaps cache.block_table",
            [&ints](A& a) {
              a.k = over(ints, a.k);
              a.table = {ints.data() + 2 * Seqs, Seqs, MaxBlocks, MaxBlocks};
            });

  expect_valid_appends(c, cache);
  expect_refusals(c, cache.k.storage, cache.v.storage, cache.lengths, ints, k_new.storage,
                  v_new.storage);
}

template <class T>
struct DecodeArgs {
  TensorView<const T> q, k, v;
  Span<const std::int32_t> lengths;
  MatrixView<const std::int32_t> table;  // paged only
  TensorView<T> o;
  DecodeOptions opts;
  TensorView<T> lse;
};

// The bad decodes of both layouts: 2 new tokens per sequence against caches holding
// {6, 1, 4} tokens, `cache_shape` their k's; `ints` starts with the lengths, then sequences
// {0, 1, 2}, for an output laid over them.
template <class T>
void bad_decodes(Catalogue<DecodeArgs<T>>& c, const OptionArrays& arrays,
                 const std::string& cache_shape, const void* o_data, Ints& ints) {
  using A = DecodeArgs<T>;
  malformed(c, "q", &A::q);
  malformed(c, "cache.k", &A::k, Role::output);  // distinct elements: append writes caches
  malformed(c, "o", &A::o, Role::output);
  malformed(c, "lse", &A::lse, Role::optional_output);
  mismatch(c, "q", &A::q, "[*, *, *, 4]", "d");
  c.refuses("Hq not a multiple of Hkv", "cache.k.heads", "expected a divisor of the 3 query heads",
            [](A& a) { a.q.heads = 3; });
  mismatch(c, "cache.v", &A::v, cache_shape, "bhs");
  c.refuses("cache.v inside cache.k", "cache.k", "overlaps cache.v",
            [](A& a) { a.v.data = a.k.data + 1; });
  c.refuses("cache.lengths one short", "cache.lengths.size", "one length per sequence",
            [](A& a) { --a.lengths.size; });
  c.refuses("cache.lengths null", "cache.lengths", "null data",
            [](A& a) { a.lengths.data = nullptr; });
  const auto lengths = [](Ints l) { return [l](A& a) { a.lengths = l; }; };
  c.refuses("a length above capacity", "cache.lengths",
            "expected every length in [0, 6], got 7 at sequence 1", lengths({6, 7, 4}));
  c.refuses("a negative length", "cache.lengths", "got -1 at sequence 0", lengths({-1, 1, 4}));
  c.refuses("key lengths given", "opts.key_lengths", "expected none",
            [&arrays](A& a) { a.opts.key_lengths = arrays.key_lengths; });
  c.refuses("split_keys = -1", "opts.split_keys", "got -1", [](A& a) { a.opts.split_keys = -1; });
  c.refuses("q.batch != cache sequences", "q.batch",
            "expected 3 (one query batch per cache sequence",
            [](A& a) { a.q.batch = a.o.batch = a.lse.batch = 2; });
  const auto reads = [](Ints s) { return [s](A& a) { a.opts.sequences = s; }; };
  c.refuses("opts.sequences one short", "opts.sequences.size",
            "expected 3 (one sequence per query batch), got 2", reads({2, 0}));
  c.refuses("opts.sequences null", "opts.sequences", "null data", [](A& a) {
    a.opts.sequences = {nullptr, 3};
  });
  c.refuses("sequence index 3 of 3", "opts.sequences",
            "entry 1 = 3 is not a sequence of the cache [0, 3)", reads({0, 3, 1}));
  c.refuses("sequence index -1", "opts.sequences", "entry 0 = -1", reads({-1, 0, 1}));
  mismatch(c, "o", &A::o, "[3, 4, 2, 3]", "bhsd");
  mismatch(c, "lse", &A::lse, "[3, 4, 2, 1]", "bhsd");
  c.refuses("scale = nan", "scale", "expected a finite value", [](A& a) { a.opts.scale = nan; });
  bad_options(c, arrays, "o", o_data, {false, true});
  inside(c, "o", &A::o, "q", &A::q);
  c.refuses("o inside cache.k", "o", "overlaps cache.k",
            [](A& a) { a.o.data = const_cast<T*>(a.k.data) + 1; });
  c.refuses("o inside cache.v", "o", "overlaps cache.v",
            [](A& a) { a.o.data = const_cast<T*>(a.v.data) + 1; });
  c.refuses("o over cache.lengths", "o", "overlaps cache.lengths", [&ints](A& a) {
    a.o = over(ints, a.o);
    a.lengths = {ints.data(), Seqs};
  });
  c.refuses("o over opts.sequences", "o", "overlaps opts.sequences", [&ints](A& a) {
    a.o = over(ints, a.o);
    a.opts.sequences = {ints.data() + Seqs, Seqs};
  });
  c.refuses("lse inside o", "lse", "overlaps o", [](A& a) { a.lse.data = a.o.data + 1; });
  c.refuses("lse inside cache.v", "lse", "overlaps cache.v",
            [](A& a) { a.lse.data = const_cast<T*>(a.v.data) + 1; });
}

// Decode's valid call, and a call with no new tokens, which writes nothing.
template <class T, class... Buffer>
void expect_valid_decodes(const Catalogue<DecodeArgs<T>>& c, Buffer&... outputs) {
  EXPECT_TRUE(writes_views_only(c.bind(), outputs...));
  const auto no_tokens = [](DecodeArgs<T>& a) {
    a.q.seq = a.o.seq = a.lse.seq = a.opts.bias.seq = a.opts.mask.seq = 0;
  };
  EXPECT_TRUE(accepts_writing_nothing(c.bind(no_tokens), outputs.storage...));
}

constexpr index_t NewTokens = 2;

TYPED_TEST(BadInput, DecodeFromContiguousCache) {
  using T = TypeParam;
  ContiguousCacheBuffer<T> cache(Seqs, Hkv, Capacity, Dk, Dv, Layout::bhsd);
  TensorBuffer<T> q(Seqs, Hq, NewTokens, Dk, Layout::bshd), o(Seqs, Hq, NewTokens, Dv),
      lse(Seqs, Hq, NewTokens, 1);
  fill(1, cache.k, cache.v, q);
  cache.lengths = {6, 1, 4};
  Ints ints(o.storage.size() * sizeof(T));
  std::copy_n(Ints{6, 1, 4, 0, 1, 2}.begin(), 6, ints.begin());
  const OptionArrays arrays(Seqs, Hq, NewTokens, Capacity);
  using A = DecodeArgs<T>;
  Catalogue<A> c("decode_attention",
                 {q.in(),
                  cache.k.in(),
                  cache.v.in(),
                  cache.lengths,
                  {},
                  o.view,
                  arrays.options<DecodeOptions>(false),
                  lse.view},
                 [](const A& a) {
                   attend::decode_attention<T>(a.q, attend::KvCache<const T>{a.k, a.v, a.lengths},
                                               a.o, a.opts, a.lse);
                 });
  bad_decodes<T>(c, arrays, "[3, 2, 6, *]", o.storage.data(), ints);

  expect_valid_decodes(c, o, lse);
  expect_refusals(c, q.storage, cache.k.storage, cache.v.storage, o.storage, lse.storage, ints);
}

TYPED_TEST(BadInput, DecodeFromPagedCache) {
  using T = TypeParam;
  PagedCacheBuffer<T> cache(Seqs, Hkv, BlockSize, MaxBlocks, PoolBlocks, Dk, Dv, Layout::bhsd);
  cache.assign({3, 1, 2}, 5);  // blocks owned per sequence; -1 past them
  TensorBuffer<T> q(Seqs, Hq, NewTokens, Dk, Layout::bshd), o(Seqs, Hq, NewTokens, Dv),
      lse(Seqs, Hq, NewTokens, 1);
  fill(1, cache.k, cache.v, q);
  cache.lengths = {6, 1, 4};
  Ints ints(o.storage.size() * sizeof(T));
  std::copy_n(Ints{6, 1, 4, 0, 1, 2}.begin(), 6, ints.begin());
  const OptionArrays arrays(Seqs, Hq, NewTokens, Capacity);
  using A = DecodeArgs<T>;
  Catalogue<A> c("decode_attention",
                 {q.in(), cache.k.in(), cache.v.in(), cache.lengths, cache.table.in(), o.view,
                  arrays.options<DecodeOptions>(false), lse.view},
                 [](const A& a) {
                   attend::decode_attention<T>(
                       a.q, attend::PagedKvCache<const T>{a.k, a.v, a.table, a.lengths}, a.o,
                       a.opts, a.lse);
                 });
  bad_decodes<T>(c, arrays, "[8, 2, 2, *]", o.storage.data(), ints);
  malformed(c, "cache.block_table", &A::table);
  const MatrixBuffer<std::int32_t>& table = cache.table;
  c.refuses("a stored token's block -1", "cache.block_table",
            "entry (0, 2) = -1 is not a block of the pool [0, 8) but sequence 0 needs it for 6 "
            "tokens",
            table_with<A>(table, 0, 2, -1));
  c.refuses("a stored token's block past the pool", "cache.block_table",
            "entry (2, 1) = 8 is not a block of the pool [0, 8)", table_with<A>(table, 2, 1, 8));
  c.refuses("block size 0", "cache.k", "expected a block size (extent 2) of at least 1, got 0",
            [](A& a) {  // an empty cache: the lengths would be refused first
              a.k.seq = a.v.seq = 0;
              a.lengths.size = a.table.rows = a.q.batch = a.o.batch = a.lse.batch = 0;
            });
  // The table dense at the start of `under_o`, o from its last entry on: an entry no
  // sequence reads (sequence 2 owns 2 blocks), so a call that wrote o would not go astray.
  Ints under_o(ints.size() + Seqs * MaxBlocks);
  for (index_t s = 0; s < Seqs; ++s)
    for (index_t i = 0; i < MaxBlocks; ++i)
      under_o[std::size_t(s * MaxBlocks + i)] = table.view(s, i);
  c.refuses("o over the block table", "o", "overlaps cache.block_table", [&under_o](A& a) {
    a.table = {under_o.data(), Seqs, MaxBlocks, MaxBlocks};
    a.o = over(under_o, a.o, Seqs * MaxBlocks - 1);
  });

  expect_valid_decodes(c, o, lse);
  expect_refusals(c, q.storage, cache.k.storage, cache.v.storage, o.storage, lse.storage, ints,
                  under_o);
}

TYPED_TEST(BadInput, MergePartials) {
  using T = TypeParam;
  TensorBuffer<T> o1(B, Hkv, Sq, Dk), lse1(B, Hkv, Sq, 1), o2(B, Hkv, Sq, Dk, Layout::bshd),
      lse2(B, Hkv, Sq, 1), o(B, Hkv, Sq, Dk, Layout::bshd), lse(B, Hkv, Sq, 1);
  fill(1, o1, lse1, o2, lse2);
  struct A {
    std::vector<AttentionPart<T>> parts;
    bool null_parts;
    TensorView<T> o, lse;
  };
  Catalogue<A> c("merge_partials",
                 {{{o1.in(), lse1.in()}, {o2.in(), lse2.in()}}, false, o.view, lse.view},
                 [](const A& a) {
                   const Span<const AttentionPart<T>> parts{a.null_parts ? nullptr : a.parts.data(),
                                                            index_t(a.parts.size())};
                   attend::merge_partials<T>(parts, a.o, a.lse);
                 });
  malformed(c, "o", &A::o, Role::output);
  malformed(c, "lse", &A::lse, Role::optional_output);
  mismatch(c, "lse", &A::lse, "[2, 2, 3, 1]", "bhsd");
  c.refuses("no parts", "parts", "expected at least one part", [](A& a) { a.parts.clear(); });
  c.refuses("parts null", "parts", "null data", [](A& a) { a.null_parts = true; });
  c.refuses("parts[1].o.dim one short", "parts[1].o", "expected shape [2, 2, 3, 4]",
            [](A& a) { --a.parts[1].o.dim; });
  c.refuses("parts[1].o rows overlap", "parts[1].o", "seq stride",
            [](A& a) { a.parts[1].o.seq_stride = 3; });
  c.refuses("parts[0].lse.heads one short", "parts[0].lse", "expected shape [2, 2, 3, 1]",
            [](A& a) { --a.parts[0].lse.heads; });
  c.refuses("parts[0].lse null", "parts[0].lse", "null data",
            [](A& a) { a.parts[0].lse.data = nullptr; });
  c.refuses("parts[1].o inside o", "o", "overlaps parts[1].o",
            [](A& a) { a.parts[1].o.data = a.o.data + 1; });
  c.refuses("parts[0].lse inside o", "o", "overlaps parts[0].lse",
            [](A& a) { a.parts[0].lse.data = a.o.data + 1; });
  c.refuses("lse inside parts[0].o", "lse", "overlaps parts[0].o",
            [](A& a) { a.lse.data = const_cast<T*>(a.parts[0].o.data) + 1; });
  c.refuses("parts[1].lse inside lse", "lse", "overlaps parts[1].lse",
            [](A& a) { a.parts[1].lse.data = a.lse.data + 1; });
  c.refuses("lse inside o", "lse", "overlaps o", [](A& a) { a.lse.data = a.o.data + 1; });

  EXPECT_TRUE(writes_views_only(c.bind(), o, lse));
  EXPECT_NO_THROW(c.bind([&](A& a) { a.o = o1.view, a.lse = lse2.view; })()) << "in place";
  const auto no_batch = [](A& a) {
    a.o.batch = a.lse.batch = 0;
    for (AttentionPart<T>& p : a.parts) p.o.batch = p.lse.batch = 0;
  };
  EXPECT_TRUE(accepts_writing_nothing(c.bind(no_batch), o.storage, lse.storage, o1.storage,
                                      lse1.storage, o2.storage, lse2.storage));
  expect_refusals(c, o1.storage, lse1.storage, o2.storage, lse2.storage, o.storage, lse.storage);
}

// ---------------------------------------------------------------------------------------
// The Eigen adapter, eigen.hpp: its calls are refused as the calls they wrap.

template <class T>
using StridedMap = Eigen::Map<attend::eigen::RowMatrix<T>, 0, Eigen::OuterStride<>>;
template <class T>
StridedMap<T> map(MatrixView<T> m) {
  return {m.data, m.rows, m.cols, Eigen::OuterStride<>(m.stride)};
}
template <class T>
Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>> map(Span<const T> s) {
  return {s.data, s.size};
}

TYPED_TEST(BadInput, EigenLinear) {
  using T = TypeParam;
  MatrixBuffer<T> x(3, 4), w(5, 4), y(3, 5);
  fill(1, x, w);
  const std::vector<T> bias = random_vector<T>(5, 3);
  struct A {
    MatrixView<T> x, w;
    Span<const T> bias;
    MatrixView<T> y;
  };
  Catalogue<A> c("linear", {x.view, w.view, bias, y.view}, [](const A& a) {
    attend::eigen::linear(map(a.x), map(a.w), map(a.bias), map(a.y));
  });
  mismatch(c, "y", &A::y, "[3, *]", "r");
  mismatch(c, "w", &A::w, "[5, 4]", "c");
  c.refuses("w outer stride < cols", "w", "row stride", [](A& a) { a.w.stride = 3; });
  c.refuses("x a Map of null", "x", "null data", [](A& a) { a.x.data = nullptr; });
  c.refuses("bias one short", "bias.size", "(y.cols)", [](A& a) { --a.bias.size; });
  c.refuses("bias a Map of null", "bias", "null data", [](A& a) { a.bias.data = nullptr; });
  inside(c, "y", &A::y, "x", &A::x);

  EXPECT_TRUE(writes_views_only(c.bind(), y));
  EXPECT_TRUE(accepts_writing_nothing(c.bind([](A& a) { a.x.rows = a.y.rows = 0; }), y.storage));
  expect_refusals(c, x.storage, w.storage, y.storage);
}

TYPED_TEST(BadInput, EigenSoftmax) {
  using T = TypeParam;
  MatrixBuffer<T> x(Sq, Sk), y(Sq, Sk);
  x.fill_random(1, -4, 4);
  struct A {
    MatrixView<T> x, y;
  };
  Catalogue<A> c("softmax", {x.view, y.view},
                 [](const A& a) { attend::eigen::softmax(map(a.x), map(a.y)); });
  mismatch(c, "y", &A::y, "[3, 5]", "rc");
  c.refuses("x a Map of null", "x", "null data", [](A& a) { a.x.data = nullptr; });
  inside(c, "y", &A::y, "x", &A::x);

  EXPECT_TRUE(writes_views_only(c.bind(), y));
  EXPECT_NO_THROW(c.bind([](A& a) { a.x = a.y; })()) << "exactly in place";
  EXPECT_TRUE(accepts_writing_nothing(c.bind([](A& a) { a.x.rows = a.y.rows = 0; }), y.storage));
  expect_refusals(c, x.storage, y.storage);
}

TYPED_TEST(BadInput, EigenAttention) {
  using T = TypeParam;
  MatrixBuffer<T> q(Sq, Dk), k(Sk, Dk), v(Sk, Dv), o(Sq, Dv);
  fill(1, q, k, v);
  const OptionArrays arrays(1, 1, Sq, Sk);
  struct A {
    MatrixView<T> q, k, v, o;
    AttentionOptions opts;
  };
  Catalogue<A> c(
      "attention", {q.view, k.view, v.view, o.view, arrays.options<AttentionOptions>(true)},
      [](const A& a) { attend::eigen::attention(map(a.q), map(a.k), map(a.v), map(a.o), a.opts); });
  mismatch(c, "k", &A::k, "[1, *, *, 4]", "c");
  mismatch(c, "v", &A::v, "[1, 1, 5, *]", "r");
  mismatch(c, "o", &A::o, "[1, 1, 3, 3]", "rc");
  c.refuses("scale = inf", "scale", "expected a finite value", [](A& a) { a.opts.scale = inf; });
  bad_options(c, arrays, "o", o.storage.data());
  inside(c, "o", &A::o, "q", &A::q, "k", &A::k, "v", &A::v);

  EXPECT_TRUE(writes_views_only(c.bind(), o));
  const auto no_queries = [](A& a) { a.q.rows = a.o.rows = a.opts.bias.seq = a.opts.mask.seq = 0; };
  EXPECT_TRUE(accepts_writing_nothing(c.bind(no_queries), o.storage));
  expect_refusals(c, q.storage, k.storage, v.storage, o.storage);
}

}  // namespace
