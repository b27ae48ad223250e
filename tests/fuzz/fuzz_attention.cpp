// fuzz_attention: attend::attention and attend::attention_with_probs on every path this CPU
// runs (the fused kernels of the SIMD paths, the unfused composition of the portable path
// and of attention_with_probs; double always runs the latter), with every AttentionOptions
// rule, grouped-query heads, BHSD, BSHD, padded rows
// and batch-shared inputs, with and without LSE, in float and double, against the oracle
// ref::attention (tests/support/reference.hpp) with the tolerances of
// tests/support/tolerance.hpp; attention_with_probs's probabilities against the oracle's.
//
// Beyond the oracle it checks what attention.hpp and options.hpp promise whatever the data:
// a fully masked row is exact zeros with LSE -inf; keys past key_lengths are never read
// (their K and V rows hold NaN and, under AddressSanitizer, are poisoned during the call);
// nothing is written outside o, lse and probs; three threads give the serial bits. One case in
// eight is made invalid on purpose: the call must throw std::invalid_argument naming the
// broken argument and leave every buffer as it was.
#include "attend/attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <set>
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

template <class T>
struct Problem {
  index_t B = 0, Hq = 0, Hkv = 0, Sq = 0, Sk = 0, Dk = 0, Dv = 0;
  std::unique_ptr<TensorBuffer<T>> q, k, v, o, lse, probs;
  fuzz::ScoreOptionsCase so;

  // Key rows no batch reads (j >= key_lengths[b] for every batch b that views the row):
  // {first element, count} in the storage of k or v.
  std::vector<std::pair<const T*, index_t>> unread_rows(const TensorBuffer<T>& t) const {
    std::set<const T*> read;
    std::vector<std::pair<const T*, index_t>> unread;
    const TensorView<T>& x = t.view;
    for (int pass = 0; pass < 2; ++pass)
      for (index_t b = 0; b < x.batch; ++b)
        for (index_t h = 0; h < x.heads; ++h)
          for (index_t j = 0; j < x.seq; ++j) {
            const bool exists = so.key_lengths.empty() || j < so.key_lengths[std::size_t(b)];
            if (pass == 0 && exists) read.insert(x.row(b, h, j));
            if (pass == 1 && !exists && !read.count(x.row(b, h, j)))
              unread.emplace_back(x.row(b, h, j), x.dim);
          }
    return unread;
  }
};

// Can T follow the long double oracle on this input? Not when a finite intermediate could
// overflow T: a dot product (sum_d |q_d k_d| over finite products), a logit (scale times
// that, times log2(e) on the fused paths, plus what the options add) or a sum of value
// rows. Nor when a weight that is positive in long double may come out of T's range:
// below T's smallest normal, a weight is off by up to that much, and output_matches allows
// for 2 * min<T> in all; so the value rows of such keys must sum to at most 1 in
// magnitude, and an infinite value must not meet one at all (inf * 0 is NaN). Nor when the
// oracle's own error bound is infinite (softcap maps an infinite score to a finite logit
// whose bound stays infinite): output_matches would make a tolerance of 0 * inf there. Nor
// when logits so large that T keeps none of their gaps leave T free to weigh alike keys
// that long double tells apart (fuzz::weights_predictable).
template <class T>
bool representable(const Problem<T>& pb, double scale, const ref::Attention& r) {
  const ref::real limit = fuzz::finite_limit<T>(), log2e = 1.4426950408889634L;
  const ref::real added = pb.so.finite_magnitude(pb.Sq, pb.Sk);
  const ref::real tiny = std::numeric_limits<T>::min(), u = ref::unit_roundoff<T>();
  const index_t group = pb.Hq / pb.Hkv;
  const TensorView<T>&q = pb.q->view, &k = pb.k->view, &v = pb.v->view;
  ref::real v_max = 0;
  for (index_t b = 0; b < pb.B; ++b)
    for (index_t g = 0; g < pb.Hkv; ++g)
      for (index_t j = 0; j < pb.Sk; ++j)
        for (index_t d = 0; d < pb.Dv; ++d)
          v_max = std::max(v_max, fuzz::finite_abs(v.row(b, g, j)[d]));
  if (v_max * ref::real(pb.Sk + 1) >= limit) return false;
  std::vector<bool> small(static_cast<std::size_t>(pb.Sk));  // keys of weight < tiny in a row
  for (index_t b = 0; b < pb.B; ++b)
    for (index_t h = 0; h < pb.Hq; ++h)
      for (index_t i = 0; i < pb.Sq; ++i) {
        if (!std::isfinite(r.slack(b, h, i, 0))) return false;
        const auto visible = [&](index_t j) {
          return ref::visible(pb.so.opts, b, h, i, j, pb.Sq, pb.Sk);
        };
        std::fill(small.begin(), small.end(), false);
        const ref::real sink = pb.so.opts.sinks.empty()
                                   ? -std::numeric_limits<ref::real>::infinity()
                                   : pb.so.opts.sinks[h];
        if (!fuzz::weights_predictable<T>(r.rows, b, h, i, sink, visible,
                                          [&](index_t j) { small[std::size_t(j)] = true; }))
          return false;
        ref::real underflowing = 0;  // sum of max_d |v_jd| over the keys of weight < tiny
        for (index_t j = 0; j < pb.Sk; ++j) {
          if (!visible(j)) continue;
          ref::real dot = 0;
          for (index_t d = 0; d < pb.Dk; ++d)
            dot += fuzz::finite_abs(ref::real(q.row(b, h, i)[d]) * k.row(b, h / group, j)[d]);
          if (dot >= limit || (std::fabs(scale) * dot + added) * log2e >= limit) return false;
          const T* vj = v.row(b, h / group, j);
          const ref::real p = r.rows.p(b, h, i, j);
          const ref::real rel = 2 * (2 * r.slack(b, h, i, 0) + ref::real(pb.Sk + 4)) * u;
          if (!(p > 0 && p * (1 - rel) < tiny) && !small[std::size_t(j)]) continue;
          ref::real row_max = 0;
          for (index_t d = 0; d < pb.Dv; ++d) {
            if (std::isinf(vj[d])) return false;
            row_max = std::max(row_max, fuzz::finite_abs(vj[d]));
          }
          underflowing += row_max;
        }
        if (underflowing > 1) return false;
      }
  return true;
}

// options.hpp and attention.hpp promise NaN only where an input holds one: with finite q,
// k, v and options, a logit may overflow to +-inf (a huge scale) but o and lse stay free of
// NaN, unless a dot product or a sum of value rows overflows T on its own.
template <class T>
bool nan_free(const Problem<T>& pb) {
  const ref::real limit = fuzz::finite_limit<T>();
  bool finite = true;
  ref::real v_sum = 0;
  for (auto* t : {pb.q.get(), pb.k.get(), pb.v.get()})
    t->for_each([&](T& x) { finite = finite && std::isfinite(x); });
  pb.v->for_each([&](T& x) { v_sum += std::fabs(ref::real(x)); });
  if (pb.so.bias) pb.so.bias->for_each([&](float& x) { finite = finite && std::isfinite(x); });
  for (const auto* a : {&pb.so.slopes, &pb.so.sink_logits})
    for (float x : *a) finite = finite && std::isfinite(x);
  if (!finite || v_sum >= limit || pb.Hkv == 0) return false;
  const index_t group = pb.Hq / pb.Hkv;
  for (index_t b = 0; b < pb.B; ++b)
    for (index_t h = 0; h < pb.Hq; ++h)
      for (index_t i = 0; i < pb.Sq; ++i)
        for (index_t j = 0; j < pb.Sk; ++j) {
          ref::real dot = 0;
          for (index_t d = 0; d < pb.Dk; ++d)
            dot += std::fabs(ref::real(pb.q->view.row(b, h, i)[d]) *
                             pb.k->view.row(b, h / group, j)[d]);
          if (dot >= limit) return false;
        }
  return true;
}

template <class T>
void run(Case& c) {
  attend::Context ctx;
  ctx.isa = c.isa();
  fuzz::Values values(c);
  Problem<T> pb;
  pb.B = c.extent("B", 2, 3);
  pb.Hkv = c.extent("Hkv", 2, 3);
  pb.Hq = pb.Hkv * c.pick<index_t>("group", 1, 3);
  pb.Sq = c.extent("Sq", 17, 110), pb.Sk = c.extent("Sk", 40, 200);
  pb.Dk = c.extent("Dk", 20, 80), pb.Dv = c.extent("Dv", 20, 80);
  c.note("Hq", std::to_string(pb.Hq));
  c.fit(300000, {{"Sq", &pb.Sq}, {"Sk", &pb.Sk}, {"Dk", &pb.Dk}, {"Dv", &pb.Dv}},
        [&] { return pb.B * pb.Hq * pb.Sq * pb.Sk * (pb.Dk + pb.Dv + 1); });
  const index_t B = pb.B, Hq = pb.Hq, Hkv = pb.Hkv, Sq = pb.Sq, Sk = pb.Sk, Dk = pb.Dk, Dv = pb.Dv;
  pb.so.decode(c, B, Hq, Sq, Sk);
  attend::AttentionOptions& opts = pb.so.opts;
  opts.scale = fuzz::pick_scale(c);
  const bool with_lse = c.flag("lse"), threads = c.flag("threads");
  const int broken =
      c.one_in(8, "invalid") ? c.pick<int>("break", 0, 11 + fuzz::kOptionBreaks) : -1;
  // Scales past options.hpp's largest (1.7e38, half of float's range) are refused too.
  const double bad_scale =
      broken != 10
          ? 0.0
          : c.choose<double>("bad_scale", {{std::numeric_limits<double>::infinity(), "inf"},
                                           {std::numeric_limits<double>::quiet_NaN(), "nan"},
                                           {2e38, "2e38"},
                                           {-1e39, "-1e39"}});
  pb.q = fuzz::make_tensor<T>(B, Hq, Sq, Dk, fuzz::decode_layout(c, "q", true));
  pb.k = fuzz::make_tensor<T>(B, Hkv, Sk, Dk, fuzz::decode_layout(c, "k", true));
  pb.v = fuzz::make_tensor<T>(B, Hkv, Sk, Dv, fuzz::decode_layout(c, "v", true));
  const fuzz::TensorLayout o_layout = fuzz::decode_layout(c, "o", false);
  pb.o = fuzz::make_tensor<T>(B, Hq, Sq, Dv, o_layout);
  pb.lse = fuzz::make_tensor<T>(B, Hq, Sq, 1, fuzz::decode_layout(c, "lse", false));
  // o's layout, decoding no bytes of its own: the corpus's inputs keep their meaning.
  pb.probs = fuzz::make_tensor<T>(B, Hq, Sq, Sk, o_layout);
  values.take_pool(c);
  values.fill(*pb.q), values.fill(*pb.k), values.fill(*pb.v);
  pb.so.fill(values, Hq);

  TensorView<const T> q = pb.q->in(), k = pb.k->in(), v = pb.v->in();
  TensorView<T> o = pb.o->view, lse = with_lse ? pb.lse->view : TensorView<T>{};
  const TensorView<T> probs = pb.probs->view;
  bool via_probs = false;  // which of the two calls `call` makes
  auto call = [&](const attend::Context& on) {
    if (via_probs)
      attend::attention_with_probs<T>(q, k, v, o, probs, opts, lse, on);
    else
      attend::attention<T>(q, k, v, o, opts, lse, on);
  };

  if (broken >= 0) {
    const bool q_elements = B * Hq * Sq * Dk > 0, o_elements = B * Hq * Sq * Dv > 0;
    std::string arg;
    switch (broken) {
      case 0:
        k.dim += 1, arg = "k";
        break;
      case 1:
        if (Hq > 0) k.heads = v.heads = Hq + 1, arg = "k.heads";
        break;
      case 2:
        v.seq += 1, arg = "v";
        break;
      case 3:
        o.dim += 1, arg = "o";
        break;
      case 4:
        if (with_lse) lse.dim = 2, arg = "lse";
        break;
      case 5:
        q.seq = -1, arg = "q";
        break;
      case 6:
        if (B * Hkv * Dk > 0 && Sk > 1) k.seq_stride = Dk - 1, arg = "k";
        break;
      case 7:
        if (o_elements && Hq > 1) o.head_stride = 0, arg = "o";
        break;
      case 8:
        if (o_elements && q_elements) o.data = const_cast<T*>(q.data), arg = "o";
        break;
      case 9:
        if (with_lse && o_elements) lse.data = o.data, arg = "lse";
        break;
      case 10:
        opts.scale = bad_scale, arg = "scale";
        break;
      case 11:
        if (q_elements) q.data = nullptr, arg = "q";
        break;
      default:
        arg = fuzz::break_option(broken - 12, pb.so, B, Hq);
    }
    if (arg.empty()) arg = fuzz::break_option(0, pb.so, B, Hq);
    for (bool p : {false, true}) {
      via_probs = p;
      c.rejected(
          p ? "attention_with_probs" : "attention", arg, [&] { call(ctx); }, pb.q->storage,
          pb.k->storage, pb.v->storage, pb.o->storage, pb.lse->storage, pb.probs->storage);
    }
    return;
  }

  const bool no_nan = nan_free(pb);  // before the NaN below, which no row may see
  // Keys past their batch's length: NaN, which must not reach any row.
  const auto unread_k = pb.unread_rows(*pb.k), unread_v = pb.unread_rows(*pb.v);
  for (const auto& rows : {unread_k, unread_v})
    for (const auto& [row, n] : rows)
      std::fill_n(const_cast<T*>(row), n, std::numeric_limits<T>::quiet_NaN());

  // Without heads (Hq = Hkv = 0) there is nothing to compare, and the oracle would divide
  // by Hkv.
  const ref::Attention r =
      Hkv == 0 ? ref::Attention{}
               : ref::attention(ref::load<T>(q), ref::load<T>(k), ref::load<T>(v), opts);
  const bool comparable =
      Hkv > 0 && representable(pb, opts.scale.value_or(attend::default_scale(Dk)), r);
  const std::vector<T> q_before = pb.q->storage, k_before = pb.k->storage, v_before = pb.v->storage;
  auto poisoned_call = [&](const char* what, const attend::Context& on) {
    for (const auto& rows : {unread_k, unread_v})
      for (const auto& [row, n] : rows) fuzz::poison(row, n);
    c.valid(what, [&] { call(on); });
    for (const auto& rows : {unread_k, unread_v})
      for (const auto& [row, n] : rows) fuzz::unpoison(row, n);
  };
  // Every check of one call's results; p: the call was attention_with_probs.
  auto check_call = [&](const std::string& name, bool p) {
    c.check(pb.o->canaries_intact(), name + ": o written outside its view");
    c.check(pb.lse->canaries_intact(), name + ": lse written outside its view");
    if (p) c.check(pb.probs->canaries_intact(), name + ": probs written outside its view");
    c.check(same_bits(pb.q->storage, q_before) && same_bits(pb.k->storage, k_before) &&
                same_bits(pb.v->storage, v_before),
            name + ": an input changed");
    if (comparable) {
      c.check(ref::output_matches<T>(o, r), name + ": o against the oracle");
      if (with_lse) c.check(ref::lse_matches<T>(lse, r.rows), name + ": lse against the oracle");
      if (p) c.check(ref::probs_match<T>(probs, r.rows), name + ": probs against the oracle");
    }
    if (no_nan) {
      bool clean = true;
      pb.o->for_each([&](T& x) { clean = clean && !std::isnan(x); });
      pb.lse->for_each([&](T& x) { clean = clean && !std::isnan(x); });
      if (p) pb.probs->for_each([&](T& x) { clean = clean && !std::isnan(x); });
      c.check(clean, name + ": NaN in o, lse or probs from finite inputs");
    }
    // Rows that see no key, whatever the data: exact zeros, and LSE -inf without sinks; a NaN
    // sink joins every row's denominator and makes the row NaN, o and LSE.
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < Hq; ++h)
        for (index_t i = 0; i < Sq; ++i) {
          bool sees = false;
          for (index_t j = 0; j < Sk && !sees; ++j) sees = ref::visible(opts, b, h, i, j, Sq, Sk);
          if (sees) continue;
          const std::string row = ref::where(b, h, i, 0);
          const bool nan_sink = !opts.sinks.empty() && std::isnan(opts.sinks[h]);
          for (index_t d = 0; d < Dv; ++d)
            c.check(nan_sink ? std::isnan(o.row(b, h, i)[d]) : o.row(b, h, i)[d] == T(0),
                    name + ": o row " + row + " sees no key but is not " +
                        (nan_sink ? "NaN" : "zeros"));
          if (with_lse && (opts.sinks.empty() || nan_sink))
            c.check(nan_sink ? std::isnan(*lse.row(b, h, i))
                             : *lse.row(b, h, i) == -std::numeric_limits<T>::infinity(),
                    name + ": lse of row " + row + " that sees no key is not " +
                        (nan_sink ? "NaN" : "-inf"));
        }

    if (threads) {  // the same bits on three threads
      const std::vector<T> serial = pb.o->storage, serial_lse = pb.lse->storage,
                           serial_probs = pb.probs->storage;
      attend::Context on = ctx;
      on.executor = &fuzz::pool();
      poisoned_call((name + " on three threads").c_str(), on);
      c.check(fuzz::same_results(pb.o->storage, serial) &&
                  fuzz::same_results(pb.lse->storage, serial_lse) &&
                  fuzz::same_results(pb.probs->storage, serial_probs),
              name + ": three threads changed the bits of the result");
    }
  };
  for (bool p : {false, true}) {
    via_probs = p;
    const std::string name = p ? "attention_with_probs" : "attention";
    for (auto* t : {&pb.o, &pb.lse, &pb.probs})  // an element left unwritten stays a canary
      std::fill((*t)->storage.begin(), (*t)->storage.end(), testing_support::canary<T>());
    poisoned_call(name.c_str(), ctx);
    check_call(name, p);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Case c("fuzz_attention", data, size);
  if (c.flag("double"))
    run<double>(c);
  else
    run<float>(c);
  return 0;
}
