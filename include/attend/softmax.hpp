// Row softmax: scores into probabilities, p_j = exp(s_j) / sum_k exp(s_k) along each row.
//
// Every row is shifted by its maximum before exp, so any finite input is safe. The masked
// form applies the ScoreOptions of attend/options.hpp (masks, bias, ALiBi, softcap, sinks)
// on the way: masked entries come out as exact zeros, a fully masked row as all zeros.
// The scale is not applied here: it belongs to scores().
//
// In place: pass the same view as input and output. Any other overlap is an error.
#pragma once

#include <vector>

#include "attend/detail/check.hpp"
#include "attend/detail/portable/softmax.hpp"
#include "attend/detail/score_rule.hpp"
#include "attend/options.hpp"
#include "attend/view.hpp"

namespace attend {

namespace detail {

template <class T>
bool same_view(const TensorView<const T>& a, const TensorView<T>& b) {
  return a.data == b.data && a.batch == b.batch && a.heads == b.heads && a.seq == b.seq &&
         a.dim == b.dim && a.batch_stride == b.batch_stride && a.head_stride == b.head_stride &&
         a.seq_stride == b.seq_stride;
}

template <class T>
void masked_softmax(const Checker& c, TensorView<const T> s, TensorView<T> p, const ScoreOptions& o,
                    TensorView<T> lse) {
  c.tensor("scores", s, {any, any, any, any});
  c.tensor("probs", p, {s.batch, s.heads, s.seq, s.dim});
  c.distinct_elements("probs", p);
  if (!same_view(s, p)) c.disjoint("probs", p, "scores", s);
  check_score_options(c, o, s.batch, s.heads, s.seq, s.dim);
  check_clear_of_options(c, "probs", p, o);
  if (!lse.empty()) {
    c.tensor("lse", lse, {s.batch, s.heads, s.seq, 1});
    c.distinct_elements("lse", lse);
    c.disjoint("lse", lse, "scores", s);
    c.disjoint("lse", lse, "probs", p);
    check_clear_of_options(c, "lse", lse, o);
  }
  std::vector<acc_t<T>> scratch(static_cast<std::size_t>(s.dim));
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t h = 0; h < s.heads; ++h) {
      const ScoreRule<acc_t<T>> rule(o, b, h, s.seq, s.dim);
      for (index_t i = 0; i < s.seq; ++i) {
        const auto row_lse = portable::softmax_row<T>(rule, i, s.row(b, h, i), s.dim,
                                                      p.row(b, h, i), scratch.data());
        if (!lse.empty()) *lse.row(b, h, i) = static_cast<T>(row_lse);
      }
    }
}

}  // namespace detail

// Masked softmax of scores [B, H, Sq, Sk] into probs of the same shape, with the options'
// masks and logit modifications. lse, if given, is [B, H, Sq, 1] and receives each row's
// log-sum-exp (the sink included), -inf for a fully masked row.
template <class T>
void softmax(TensorIn<T> scores, TensorView<T> probs, const ScoreOptions& opts = {},
             TensorView<T> lse = {}) {
  detail::masked_softmax<T>(detail::Checker("softmax"), scores, probs, opts, lse);
}

// In place: scores [B, H, Sq, Sk] become probabilities.
template <class T>
void softmax(TensorView<T> scores, const ScoreOptions& opts, TensorView<T> lse = {}) {
  detail::masked_softmax<T>(detail::Checker("softmax"), scores, scores, opts, lse);
}

// Plain row softmax of a matrix x [rows, cols] into y [rows, cols] (y may be x).
template <class T>
void softmax(MatrixIn<T> x, MatrixView<T> y) {
  const detail::Checker c("softmax");
  c.matrix("x", x, detail::any, detail::any);
  c.matrix("y", y, x.rows, x.cols);
  const bool in_place = x.data == y.data && x.stride == y.stride;
  if (!in_place) c.disjoint("y", y, "x", x);
  const TensorView<const T> xs{x.data, 1, 1, x.rows, x.cols, 0, 0, x.stride};
  const TensorView<T> ys{y.data, 1, 1, y.rows, y.cols, 0, 0, y.stride};
  detail::masked_softmax<T>(c, xs, ys, {}, {});
}

// Plain row softmax of x [rows, cols] in place.
template <class T>
void softmax(MatrixView<T> x) {
  softmax<T>(x, x);
}

}  // namespace attend
