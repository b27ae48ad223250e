// Attention scores S = scale * Q K^T: how well each query matches each key.
//
// Entry (i, j) is the dot product of query row i with key row j, scaled (by default) by
// 1/sqrt(Dk) so that the logits of random unit-variance vectors keep unit variance
// whatever the head width (Vaswani et al. 2017, section 3.2.1).
#pragma once

#include "attend/detail/config.hpp"

#include <cmath>
#include <iomanip>
#include <limits>
#include <sstream>
#include <string>

#include "attend/context.hpp"
#include "attend/detail/check.hpp"
#include "attend/detail/dispatch.hpp"
#include "attend/detail/score_rule.hpp"
#include "attend/view.hpp"

ATTEND_NAMESPACE_BEGIN

namespace detail {
// A finite scale with |scale| <= limit (NaN fails the comparison): T's largest value for
// scores, which compute in T; kMaxFactor for attention (see score_rule.hpp).
inline void check_scale(const Checker& c, double scale, double limit) {
  if (std::abs(scale) <= limit) return;
  std::ostringstream what;
  what << "expected a finite value with |scale| <= " << std::setprecision(2) << limit << ", got "
       << std::setprecision(17) << scale;
  c.fail("scale", what.str());
}
}  // namespace detail

// One head: s [Sq, Sk] = scale * q [Sq, D] . k [Sk, D]^T.
template <class T>
void scores(MatrixIn<T> q, MatrixIn<T> k, double scale, MatrixView<T> s, const Context& ctx = {}) {
  const detail::Checker c("scores");
  detail::check_scale(c, scale, double(std::numeric_limits<T>::max()));
  c.matrix("q", q, detail::any, detail::any);
  c.matrix("k", k, detail::any, q.cols);
  c.matrix("s", s, q.rows, k.rows);
  c.disjoint("s", s, "q", q);
  c.disjoint("s", s, "k", k);
  detail::gemm<T>(c.isa(ctx), detail::executor_of(ctx), q, k, true, detail::acc_t<T>(scale),
                  nullptr, false, s);
}

// All heads: s [B, Hq, Sq, Sk] from q [B, Hq, Sq, D] and k [B, Hkv, Sk, D]; query head h
// reads key head h / (Hq / Hkv).
template <class T>
void scores(TensorIn<T> q, TensorIn<T> k, double scale, TensorView<T> s, const Context& ctx = {}) {
  const detail::Checker c("scores");
  detail::check_scale(c, scale, double(std::numeric_limits<T>::max()));
  c.tensor("q", q, {detail::any, detail::any, detail::any, detail::any});
  c.tensor("k", k, {q.batch, detail::any, detail::any, q.dim});
  detail::check_head_groups(c, q.heads, k.heads, "k");
  c.tensor("s", s, {q.batch, q.heads, q.seq, k.seq});
  c.distinct_elements("s", s);
  c.disjoint("s", s, "q", q);
  c.disjoint("s", s, "k", k);
  c.isa(ctx);
  detail::gemm_per_head<T>(ctx, q, k, true, detail::acc_t<T>(scale), s);
}

ATTEND_NAMESPACE_END
