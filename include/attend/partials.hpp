// Merging attention computed over disjoint sets of keys.
//
// Attention over keys split into disjoint parts K = K_1 + K_2 + ... can be computed one part
// at a time and merged afterwards, if each part keeps its log-sum-exp: with O_i and lse_i
// the output row and log-sum-exp of part i (attention(..., lse) gives both),
//
//   lse = log sum_i exp(lse_i)        O = sum_i exp(lse_i - lse) O_i
//
// because each part's softmax differs from the whole one only by its denominator. This is
// how ring attention combines the key blocks passed around a ring of devices, how an engine
// merges attention over an offloaded cache with attention over the resident one, and how
// split-KV decoding (decode.hpp) combines its splits.
//
// Shapes: every part's o is [B, H, S, Dv] and its lse [B, H, S, 1], like the outputs o and
// lse (optional). A part whose lse row is -inf saw no keys and weighs nothing; if every part
// is empty the row is zeros with lse -inf, as attention() gives for a fully masked row.
// Parts at lse +inf (overflowed logits) share the mass equally; NaN in an lse makes its row
// NaN. Sinks (options.hpp) belong to exactly one part: compute the others without them.
//
// Aliasing: o may be exactly the view of one part's o, and lse of one part's lse (merging in
// place, as ring attention accumulates); otherwise outputs overlap no input.
#pragma once

#include "attend/detail/config.hpp"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "attend/context.hpp"
#include "attend/detail/check.hpp"
#include "attend/detail/types.hpp"
#include "attend/view.hpp"

ATTEND_NAMESPACE_BEGIN

// The result of attention over one part of the keys.
template <class T>
struct AttentionPart {
  TensorView<const T> o;    // [B, H, S, Dv]
  TensorView<const T> lse;  // [B, H, S, 1]
};

namespace detail {

template <class T>
void check_partials(const Checker& c, Span<const AttentionPart<T>> parts, TensorView<T> o,
                    TensorView<T> lse) {
  if (parts.size < 1) c.fail("parts", "expected at least one part");
  c.require(parts.data != nullptr, "parts", "null data");
  c.tensor("o", o, {any, any, any, any});
  c.distinct_elements("o", o);
  if (given(lse)) {
    c.tensor("lse", lse, {o.batch, o.heads, o.seq, 1});
    c.distinct_elements("lse", lse);
    c.disjoint("lse", lse, "o", o);
  }
  for (index_t i = 0; i < parts.size; ++i) {
    const std::string name = "parts[" + std::to_string(i) + "]";
    c.tensor(name + ".o", parts[i].o, {o.batch, o.heads, o.seq, o.dim});
    c.tensor(name + ".lse", parts[i].lse, {o.batch, o.heads, o.seq, 1});
    if (!same_view(parts[i].o, o)) c.disjoint("o", o, name + ".o", parts[i].o);
    c.disjoint("o", o, name + ".lse", parts[i].lse);
    if (given(lse)) {
      if (!same_view(parts[i].lse, lse)) c.disjoint("lse", lse, name + ".lse", parts[i].lse);
      c.disjoint("lse", lse, name + ".o", parts[i].o);
    }
  }
}

// Row (b, h, i) of the merge; the result is formed in `acc` before anything is written, so
// an output that is one of the parts is read completely first.
template <class T>
void merge_row(Span<const AttentionPart<T>> parts, TensorView<T> o, TensorView<T> lse, index_t b,
               index_t h, index_t i, std::vector<acc_t<T>>& acc) {
  using Acc = acc_t<T>;
  const Acc inf = std::numeric_limits<Acc>::infinity();
  Acc top = -inf;
  bool nan = false;
  for (index_t p = 0; p < parts.size; ++p) {
    const Acc l = Acc(*parts[p].lse.row(b, h, i));
    nan = nan || std::isnan(l);
    top = std::max(top, l);
  }
  std::fill(acc.begin(), acc.end(), Acc(0));
  Acc total = 0;
  if (!nan && top > -inf) {
    for (index_t p = 0; p < parts.size; ++p) {
      const Acc l = Acc(*parts[p].lse.row(b, h, i));
      // exp(lse_p - top); at top = +inf exactly the parts at +inf weigh 1.
      const Acc w = top == inf ? Acc(l == inf) : std::exp(l - top);
      if (w == 0) continue;
      total += w;
      const T* row = parts[p].o.row(b, h, i);
      for (index_t d = 0; d < o.dim; ++d) acc[std::size_t(d)] += w * Acc(row[d]);
    }
  }
  const Acc nothing = nan ? std::numeric_limits<Acc>::quiet_NaN() : Acc(0);
  T* out = o.row(b, h, i);
  for (index_t d = 0; d < o.dim; ++d)
    out[d] = static_cast<T>(total > 0 ? acc[std::size_t(d)] / total : nothing);
  if (!lse.empty())
    *lse.row(b, h, i) = static_cast<T>(nan ? nothing : (total > 0 ? top + std::log(total) : -inf));
}

}  // namespace detail

// o (and lse) = the attention over the union of the parts' keys; see the top of this file.
template <class T>
void merge_partials(SpanIn<AttentionPart<T>> parts, TensorView<T> o, TensorView<T> lse = {},
                    const Context& ctx = {}) {
  detail::check_partials<T>(detail::Checker("merge_partials"), parts, o, lse);
  if (o.batch == 0 || o.heads == 0 || o.seq == 0) return;
  detail::executor_of(ctx).parallel_for(o.batch * o.heads, [&](index_t bh) {
    std::vector<detail::acc_t<T>> acc(static_cast<std::size_t>(o.dim));
    for (index_t i = 0; i < o.seq; ++i)
      detail::merge_row<T>(parts, o, lse, bh / o.heads, bh % o.heads, i, acc);
  });
}

template <class T>
void merge_partials(std::initializer_list<AttentionPart<T>> parts, TensorView<T> o,
                    TensorView<T> lse = {}, const Context& ctx = {}) {
  merge_partials<T>(Span<const AttentionPart<T>>(parts.begin(), index_t(parts.size())), o, lse,
                    ctx);
}

ATTEND_NAMESPACE_END
