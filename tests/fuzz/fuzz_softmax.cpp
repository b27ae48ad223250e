// fuzz_softmax: attend::softmax on every path this CPU runs, in both of its forms:
//   masked   scores [B, H, Sq, Sk] -> probs, every ScoreOptions rule, LSE or none, out of
//            place or in place, any layout and row padding;
//   plain    x [rows, cols] -> y, out of place or in place;
// in float and double, against the oracle ref::softmax (tests/support/reference.hpp) with
// the tolerances of tests/support/tolerance.hpp. One case in eight is made invalid on
// purpose: the call must throw std::invalid_argument naming the broken argument and leave
// every buffer as it was.
#include "attend/softmax.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "score_options.hpp"

namespace {

using attend::index_t;
using attend::TensorView;
using fuzz::Case;
using fuzz::same_bits;
using fuzz::TensorBuffer;

// The oracle follows T only while no finite logit can overflow T (the long double oracle
// would not): |score| + what the options add must stay within fuzz::finite_limit.
template <class T>
bool representable(TensorBuffer<T>& s, const fuzz::ScoreOptionsCase& so) {
  ref::real score_max = 0;
  s.for_each([&](T& x) { score_max = std::max(score_max, fuzz::finite_abs(x)); });
  return score_max + so.finite_magnitude(s.view.seq, s.view.dim) < fuzz::finite_limit<T>();
}

// probs_match holds a weight of 0 in long double to exactly 0, as it is for a masked key.
// A visible key's weight can also underflow to 0 there (its logit far below the row's
// largest) while T, whose logits carry an error bound 2 slack u above 1, legitimately
// finds it comparable: huge logits (|s| near 1e30) leave T no digits for the gap. The
// oracle cannot tell such a zero from a masked one, so those rows are not compared; nor
// are rows whose weights T may order otherwise (fuzz::weights_predictable). Every other row
// is, one at a time.
template <class T>
void check_probs(const Case& c, TensorView<const T> p, const ref::Rows& r,
                 const attend::ScoreOptions& o) {
  const ref::real u = ref::unit_roundoff<T>();
  const index_t Sq = r.p.s, Sk = r.p.d;
  for (index_t b = 0; b < r.p.b; ++b)
    for (index_t h = 0; h < r.p.h; ++h)
      for (index_t i = 0; i < Sq; ++i) {
        bool exact_zeros = true;
        for (index_t j = 0; j < Sk && 2 * r.slack(b, h, i, 0) * u > 1; ++j)
          exact_zeros =
              exact_zeros && !(r.p(b, h, i, j) == 0 && ref::visible(o, b, h, i, j, Sq, Sk));
        if (!exact_zeros) continue;
        const ref::real sink =
            o.sinks.empty() ? -std::numeric_limits<ref::real>::infinity() : o.sinks[h];
        const auto visible = [&](index_t j) { return ref::visible(o, b, h, i, j, Sq, Sk); };
        if (!fuzz::weights_predictable<T>(r, b, h, i, sink, visible, [](index_t) {})) continue;
        ref::Rows row{ref::Tensor(1, 1, 1, Sk), ref::Tensor(1, 1, 1, 1), ref::Tensor(1, 1, 1, 1),
                      ref::Tensor{}};
        for (index_t j = 0; j < Sk; ++j) row.p(0, 0, 0, j) = r.p(b, h, i, j);
        row.lse(0, 0, 0, 0) = r.lse(b, h, i, 0), row.slack(0, 0, 0, 0) = r.slack(b, h, i, 0);
        const TensorView<const T> one{p.row(b, h, i), 1, 1, 1, Sk, 0, 0, Sk};
        c.check(ref::probs_match<T>(one, row),
                "probabilities of row " + ref::where(b, h, i, 0) + " against the oracle");
      }
}

// Masked softmax of [B, H, Sq, Sk] scores under decoded ScoreOptions.
template <class T>
void masked(Case& c, fuzz::Values& values, attend::Context ctx) {
  const index_t B = c.extent("B", 2, 3), H = c.extent("H", 2, 4);
  index_t Sq = c.extent("Sq", 9, 70), Sk = c.extent("Sk", 33, 300);
  c.fit(20000, {{"Sq", &Sq}, {"Sk", &Sk}}, [&] { return B * H * Sq * Sk; });
  fuzz::ScoreOptionsCase so;
  so.decode(c, B, H, Sq, Sk);
  const bool in_place = c.flag("in_place"), with_lse = c.flag("lse");
  const bool threads = c.flag("threads");
  const int broken = c.one_in(8, "invalid") ? c.pick<int>("break", 0, 5 + fuzz::kOptionBreaks) : -1;
  auto s = fuzz::make_tensor<T>(B, H, Sq, Sk, fuzz::decode_layout(c, "scores", false));
  auto p = fuzz::make_tensor<T>(B, H, Sq, Sk, fuzz::decode_layout(c, "probs", false));
  auto lse = fuzz::make_tensor<T>(B, H, Sq, 1, fuzz::decode_layout(c, "lse", false));
  values.take_pool(c);
  values.fill(*s);
  so.fill(values, H);

  TensorBuffer<T>& out = in_place ? *s : *p;  // the buffer holding the probabilities
  TensorView<T> probs = out.view;
  TensorView<T> lse_view = with_lse ? lse->view : TensorView<T>{};
  TensorView<const T> scores = s->in();
  auto call = [&](attend::Context on) {
    if (in_place)
      attend::softmax<T>(probs, so.opts, lse_view, on);
    else
      attend::softmax<T>(scores, probs, so.opts, lse_view, on);
  };

  if (broken >= 0) {
    const bool has_elements = B * H * Sq * Sk > 0;
    std::string arg;
    switch (broken) {
      case 0:
        if (!in_place) probs.seq += 1, arg = "probs";
        break;
      case 1:  // overlapping the scores (two elements or more) without being the same view
        if (!in_place && B * H * Sq * Sk > 1) probs.data = s->view.data + 1, arg = "probs";
        break;
      case 2:
        if (with_lse) lse_view.dim = 2, arg = "lse";
        break;
      case 3:
        if (with_lse && has_elements) lse_view.data = probs.data, arg = "lse";
        break;
      case 4:  // rows on top of each other
        if (!in_place && has_elements && Sq > 1) probs.seq_stride = 0, arg = "probs";
        break;
      case 5:
        scores.dim = probs.dim = -1, arg = "scores";
        break;
      default:
        arg = fuzz::break_option(broken - 6, so, B, H);
    }
    if (arg.empty()) arg = fuzz::break_option(0, so, B, H);
    c.rejected(
        "softmax", arg, [&] { call(ctx); }, s->storage, p->storage, lse->storage);
    return;
  }

  const bool comparable = representable(*s, so);
  const ref::Rows r = ref::softmax(ref::load<T>(s->in()), ref::Tensor{}, so.opts);
  const std::vector<T> scores_before = s->storage;
  c.valid("softmax", [&] { call(ctx); });
  c.check(out.canaries_intact(), "probs written outside its view");
  c.check(lse->canaries_intact(), "lse written outside its view");
  if (!in_place) c.check(same_bits(s->storage, scores_before), "the scores (an input) changed");
  if (comparable) {
    check_probs<T>(c, probs, r, so.opts);
    if (with_lse) c.check(ref::lse_matches<T>(lse_view, r), "log-sum-exp against the oracle");
  }

  if (threads) {  // the same bits on three threads
    const std::vector<T> serial = out.storage, serial_lse = lse->storage;
    if (in_place) s->storage = scores_before;
    ctx.executor = &fuzz::pool();
    c.valid("softmax on three threads", [&] { call(ctx); });
    c.check(fuzz::same_results(out.storage, serial) && fuzz::same_results(lse->storage, serial_lse),
            "three threads changed the bits of the result");
  }
}

// Plain row softmax of x [rows, cols] (a [1, 1, rows, cols] buffer seen as a matrix).
template <class T>
void plain(Case& c, fuzz::Values& values, attend::Context ctx) {
  index_t rows = c.extent("rows", 9, 70), cols = c.extent("cols", 33, 300);
  c.fit(20000, {{"rows", &rows}, {"cols", &cols}}, [&] { return rows * cols; });
  const bool in_place = c.flag("in_place");
  const int broken = c.one_in(8, "invalid") ? c.pick<int>("break", 0, 3) : -1;
  auto x = fuzz::make_tensor<T>(1, 1, rows, cols, fuzz::decode_layout(c, "x", false));
  auto y = fuzz::make_tensor<T>(1, 1, rows, cols, fuzz::decode_layout(c, "y", false));
  values.take_pool(c);
  values.fill(*x);
  attend::MatrixView<T> xm = x->view.head(0, 0), ym = in_place ? xm : y->view.head(0, 0);
  auto call = [&] {
    if (in_place)
      attend::softmax<T>(ym, ctx);
    else
      attend::softmax<T>(attend::MatrixView<const T>(xm), ym, ctx);
  };

  if (broken >= 0) {
    std::string arg;
    if (broken == 0 && !in_place) ym.rows += 1, arg = "y";
    if (broken == 1 && rows > 1 && cols > 0) xm.stride = ym.stride = cols - 1, arg = "x";
    if (broken == 2 && !in_place && rows * cols > 1) ym.data = xm.data + 1, arg = "y";
    if (arg.empty()) xm.rows = ym.rows = -1, arg = "x";
    c.rejected("softmax", arg, call, x->storage, y->storage);
    return;
  }
  const bool comparable = representable(*x, fuzz::ScoreOptionsCase{});
  const ref::Rows r = ref::softmax(ref::load<T>(x->in()), ref::Tensor{}, attend::ScoreOptions{});
  c.valid("softmax", call);
  TensorBuffer<T>& out = in_place ? *x : *y;
  c.check(out.canaries_intact(), "y written outside its view");
  if (comparable) check_probs<T>(c, out.in(), r, attend::ScoreOptions{});
}

template <class T>
void run(Case& c) {
  attend::Context ctx;
  ctx.isa = c.isa();
  fuzz::Values values(c);
  if (c.one_in(4, "plain"))
    plain<T>(c, values, ctx);
  else
    masked<T>(c, values, ctx);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Case c("fuzz_softmax", data, size);
  if (c.flag("double"))
    run<double>(c);
  else
    run<float>(c);
  return 0;
}
