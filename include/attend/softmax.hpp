// Row softmax: scores into probabilities, p_j = exp(s_j) / sum_k exp(s_k) along each row.
//
// Every row is shifted by its maximum before exp, so any finite input is safe. The masked
// form applies the ScoreOptions of attend/options.hpp (masks, bias, ALiBi, softcap, sinks)
// on the way: masked entries come out as exact zeros, a fully masked row as all zeros.
// The scale is not applied here: it belongs to scores().
//
// In place: pass the same view as input and output. Any other overlap is an error.
#pragma once

#include "attend/detail/config.hpp"

#include <vector>

#include "attend/context.hpp"
#include "attend/detail/check.hpp"
#include "attend/detail/dispatch.hpp"
#include "attend/detail/score_rule.hpp"
#include "attend/options.hpp"
#include "attend/view.hpp"

ATTEND_NAMESPACE_BEGIN

namespace detail {

// s_name and p_name are the arguments' names in the public call (in place, both are
// "scores").
template <class T>
void masked_softmax(const Checker& c, TensorView<const T> s, TensorView<T> p, const ScoreOptions& o,
                    TensorView<T> lse, const Context& ctx, const char* s_name = "scores",
                    const char* p_name = "probs") {
  c.tensor(s_name, s, {any, any, any, any});
  c.tensor(p_name, p, {s.batch, s.heads, s.seq, s.dim});
  c.distinct_elements(p_name, p);
  if (!same_view(s, p)) c.disjoint(p_name, p, s_name, s);
  check_score_options(c, o, s.batch, s.heads, s.seq, s.dim);
  check_clear_of_options(c, p_name, p, o);
  if (given(lse)) {
    c.tensor("lse", lse, {s.batch, s.heads, s.seq, 1});
    c.distinct_elements("lse", lse);
    c.disjoint("lse", lse, s_name, s);
    if (!same_view(s, p)) c.disjoint("lse", lse, p_name, p);
    check_clear_of_options(c, "lse", lse, o);
  }
  c.isa(ctx);
  // Tasks of up to 64 rows of one (batch, head).
  constexpr index_t rows_per_task = 64;
  const index_t chunks = (s.seq + rows_per_task - 1) / rows_per_task;
  if (s.batch * s.heads * chunks == 0) return;
  const Isa isa = resolve(ctx.isa);
  executor_of(ctx).parallel_for(s.batch * s.heads * chunks, [&](index_t task) {
    const index_t b = task / (s.heads * chunks), h = task / chunks % s.heads;
    const index_t first = task % chunks * rows_per_task;
    const ScoreRule<acc_t<T>> rule(o, b, h, s.seq, s.dim);
    std::vector<acc_t<T>> scratch(static_cast<std::size_t>(s.dim));
    for (index_t i = first; i < std::min(first + rows_per_task, s.seq); ++i) {
      const acc_t<T> row_lse =
          softmax_row<T>(isa, rule, i, s.row(b, h, i), s.dim, p.row(b, h, i), scratch.data());
      if (!lse.empty()) *lse.row(b, h, i) = static_cast<T>(row_lse);
    }
  });
}

}  // namespace detail

// Masked softmax of scores [B, H, Sq, Sk] into probs of the same shape, with the options'
// masks and logit modifications. lse, if given, is [B, H, Sq, 1] and receives each row's
// log-sum-exp (the sink included), -inf for a fully masked row.
template <class T>
void softmax(TensorIn<T> scores, TensorView<T> probs, const ScoreOptions& opts = {},
             TensorView<T> lse = {}, const Context& ctx = {}) {
  detail::masked_softmax<T>(detail::Checker("softmax"), scores, probs, opts, lse, ctx);
}

// In place: scores [B, H, Sq, Sk] become probabilities.
template <class T>
void softmax(TensorView<T> scores, const ScoreOptions& opts, TensorView<T> lse = {},
             const Context& ctx = {}) {
  detail::masked_softmax<T>(detail::Checker("softmax"), scores, scores, opts, lse, ctx, "scores",
                            "scores");
}

// Plain row softmax of a matrix x [rows, cols] into y [rows, cols] (y may be x).
template <class T>
void softmax(MatrixIn<T> x, MatrixView<T> y, const Context& ctx = {}) {
  const detail::Checker c("softmax");
  c.matrix("x", x, detail::any, detail::any);
  c.matrix("y", y, x.rows, x.cols);
  const bool in_place = x.data == y.data && x.stride == y.stride;
  if (!in_place) c.disjoint("y", y, "x", x);
  const TensorView<const T> xs{x.data, 1, 1, x.rows, x.cols, 0, 0, x.stride};
  const TensorView<T> ys{y.data, 1, 1, y.rows, y.cols, 0, 0, y.stride};
  detail::masked_softmax<T>(c, xs, ys, {}, {}, ctx, "x", "y");
}

// Plain row softmax of x [rows, cols] in place.
template <class T>
void softmax(MatrixView<T> x, const Context& ctx = {}) {
  softmax<T>(x, x, ctx);
}

ATTEND_NAMESPACE_END
